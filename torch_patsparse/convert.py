def convert(model, pattern_set=None): raise NotImplementedError
