from .pattern_conv import PatternConv2d  # noqa: F401
