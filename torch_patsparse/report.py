def compression_report(model): raise NotImplementedError
