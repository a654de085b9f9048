class PatternConv2d: pass
