from .pattern_conv import PatternConv2d  # noqa: F401
from .sparse import SparseConv2d, SparseLinear, compress_module  # noqa: F401
