"""Shared test utilities: random compressed weights and the dense masked reference."""
import torch
import torch.nn.functional as F
from torch import nn

from torch_patsparse import format as fmt
from torch_patsparse import ops
from torch_patsparse.nn import SparseConv2d, SparseLinear

# A fixed 8-pattern set (centre kept), so the kernel tests do not depend on pattern selection.
PATTERNS8 = torch.tensor([[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8],
                          [1, 3, 4, 5], [1, 4, 5, 7], [3, 4, 5, 7], [1, 3, 4, 7]], dtype=torch.uint8)


def random_pattern_weight(cout, cin, keep=0.5, patterns=PATTERNS8, group=1, dtype=torch.float32, seed=0):
    """Dense [Cout, Cin, 3, 3] weight: each kernel kept with probability `keep`, supported on a random
    pattern; with group=G, G consecutive filters share the (channel, pattern) set."""
    g = torch.Generator().manual_seed(seed)
    groups = (cout + group - 1) // group
    keep_mask = torch.rand(groups, cin, generator=g) < keep
    pid = torch.randint(0, patterns.shape[0], (groups, cin), generator=g)
    masks = torch.zeros(patterns.shape[0], 9, dtype=torch.bool)
    masks.scatter_(1, patterns.long(), True)
    m = (masks[pid] & keep_mask.unsqueeze(-1)).repeat_interleave(group, dim=0)[:cout]
    w = torch.randn(cout, cin, 9, generator=g, dtype=torch.float64).to(dtype) * m
    return w.view(cout, cin, 3, 3)


def compressed(weight, patterns=PATTERNS8):
    return fmt.compress(weight, patterns)


def reference_conv(x, weight, bias, stride, padding, dilation):
    """The one reference every native path is pinned to: dense F.conv2d with the masked weight."""
    return F.conv2d(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), stride, padding, dilation)


def run_op(x, arrays, bias=None, stride=1, padding=1, dilation=1):
    """The native pattern conv on compressed ``arrays`` (fmt.compress's dict)."""
    return ops.pattern_conv2d(x, *(arrays[k] for k in fmt.ARRAY_NAMES), bias, stride, padding, dilation)


# (N, Cin, H, W, Cout, stride, padding, dilation, bias)
SHAPES = [
    (2, 3, 8, 8, 4, 1, 1, 1, True),
    (1, 5, 9, 7, 6, 1, 0, 1, False),
    (3, 4, 11, 13, 5, 2, 1, 1, True),
    (2, 6, 10, 9, 8, 2, 0, 1, False),
    (1, 3, 12, 12, 4, 1, 2, 1, True),
    (2, 4, 13, 11, 3, 1, 2, 2, False),
    (1, 8, 15, 17, 16, 2, 2, 2, True),
    (0, 3, 8, 8, 4, 1, 1, 1, True),
    (1, 16, 7, 7, 32, 1, 1, 1, True),
    (2, 32, 16, 16, 24, 1, 1, 1, False),
    (1, 1, 3, 3, 1, 1, 0, 1, False),
    (1, 2, 1, 1, 2, 1, 1, 1, True),
    (1, 7, 30, 33, 9, 2, 1, 1, True),
]


def pattern_weight_conv(cin=6, cout=8, keep=0.6, bias=True, group=1, seed=0, **conv_kwargs):
    """An nn.Conv2d (3x3) whose weight fits PATTERNS8 (random_pattern_weight)."""
    conv = nn.Conv2d(cin, cout, 3, bias=bias, **conv_kwargs)
    with torch.no_grad():
        conv.weight.copy_(random_pattern_weight(cout, cin, keep=keep, group=group, seed=seed))
    return conv


def pruned_weight(shape, keep, seed, empty_rows=False):
    """Unstructured-pruned random weight; ``empty_rows`` zeroes two output rows."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) < keep)
    if empty_rows and shape[0] > 2:
        w[1] = 0
        w[-1] = 0
    return w


def sparse_conv(cin, cout, stride, keep, bits=None, seed=0, empty_rows=False, bias=True):
    """(dense 1x1 nn.Conv2d, its SparseConv2d)."""
    conv = nn.Conv2d(cin, cout, 1, stride=stride, bias=bias)
    with torch.no_grad():
        conv.weight.copy_(pruned_weight(conv.weight.shape, keep, seed, empty_rows))
        if bias:
            conv.bias.copy_(torch.randn(cout, generator=torch.Generator().manual_seed(seed + 1)))
    return conv, SparseConv2d.from_dense(conv, bits=bits)


def sparse_linear(cin, cout, keep, bits=None, seed=0, empty_rows=False, bias=True):
    """(dense nn.Linear, its SparseLinear)."""
    lin = nn.Linear(cin, cout, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(pruned_weight(lin.weight.shape, keep, seed, empty_rows))
    return lin, SparseLinear.from_dense(lin, bits=bits)
