"""Shared test utilities: random compressed weights, the dense masked reference, compressed modules
and their state dicts."""
import copy

import torch
import torch.nn.functional as F
from torch import nn

from torch_patsparse import constraints as C
from torch_patsparse import format as fmt
from torch_patsparse import ops
from torch_patsparse.nn import PatternConv2d, SparseConv2d, SparseLinear
from torch_patsparse.patterns import PatternSet

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


def with_duplicate_kernel():
    """Compressed arrays of a 3x4 weight in which filter 1 names one input channel twice."""
    arrays = compressed(random_pattern_weight(3, 4, keep=1.0, seed=3))
    kc = arrays["kernel_channel"].clone()
    kc[5] = kc[7]  # filter 1 (kernels 4..7) now names one input channel twice
    arrays["kernel_channel"] = kc
    return arrays


def pconv(cin=16, cout=16, bits=None, keep=0.5, **kw):
    """A PatternConv2d over PATTERNS8 from a random pattern-fitting 3x3 conv."""
    return PatternConv2d.from_dense(pattern_weight_conv(cin, cout, keep=keep, **kw), PatternSet(PATTERNS8), bits=bits)


def sd_of(m):
    """A deep copy of ``m.state_dict()`` that a test may corrupt."""
    return {k: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v) for k, v in m.state_dict().items()}


def snapshot(m):
    """Everything the module holds: parameters, buffers (persistent or not), metadata."""
    out = {k: v.detach().clone() for k, v in list(m.named_parameters()) + list(m.named_buffers())}
    out["_meta"] = {k: getattr(m, k, None) for k in ("bits", "scheme")} if isinstance(m, PatternConv2d) else {}
    return out


def assert_same_snapshot(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


# Tolerances of a half-precision forward against the float32 dense reference.
HALF_TOL = {torch.float16: dict(rtol=1e-2, atol=2e-2), torch.bfloat16: dict(rtol=4e-2, atol=8e-2)}


def pruned_on_grid(shape, keep, seed=0, levels=None, q=0.037):
    """Random weight with ~keep of entries nonzero; if levels, on the uniform grid c*q, |c|<=levels."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=g) < keep
    if levels is None:
        w = torch.randn(shape, generator=g)
    else:
        c = torch.randint(1, levels + 1, shape, generator=g) * (torch.randint(0, 2, shape, generator=g) * 2 - 1)
        w = c.float() * q
    return w * mask


def linear_with(w, bias=True, seed=0):
    """An nn.Linear holding weight ``w`` and a seeded random bias."""
    lin = nn.Linear(w.shape[1], w.shape[0], bias=bias)
    with torch.no_grad():
        lin.weight.copy_(w)
        if bias:
            lin.bias.copy_(torch.randn(w.shape[0], generator=torch.Generator().manual_seed(seed + 1)))
    return lin


def conv_with(w, stride=1, padding=0, dilation=1, groups=1, bias=True, seed=0):
    """An nn.Conv2d holding weight ``w`` and a seeded random bias."""
    cout, cin_g, kh, kw = w.shape
    conv = nn.Conv2d(cin_g * groups, cout, (kh, kw), stride, padding, dilation, groups, bias)
    with torch.no_grad():
        conv.weight.copy_(w)
        if bias:
            conv.bias.copy_(torch.randn(cout, generator=torch.Generator().manual_seed(seed + 1)))
    return conv


def assert_same_model_output(got, want, rtol=1e-5):
    """Outputs equal to float rounding: relative error (norm) and elementwise, at 1e-5."""
    assert got.shape == want.shape and got.dtype == want.dtype
    err = float((got - want).norm() / want.norm().clamp_min(1e-30))
    assert err <= rtol, err
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * float(want.abs().max()))


def tiny_net(seed=0):
    """The small conv net the ADMM tests train (layers 0 and 3: 3x3 convs, 8: the linear)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


def batch(i, n=8):
    """Batch ``i`` of a seeded random classification stream for tiny_net."""
    g = torch.Generator().manual_seed(1000 + i)
    return torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, 4, (n,), generator=g)


# The constraint lists the ADMM tests put on tiny_net's convs and its linear layer.
CONV_SPEC = [C.Pattern(k=4), C.Connectivity(keep=0.5), C.Quantize(bits=4)]


FC_SPEC = [C.Unstructured(keep=0.25), C.Quantize(bits=3, scheme="pow2")]


def train(model, opt, steps, start=0):
    """``steps`` cross-entropy steps of ``opt`` over batches ``start``...; the ADMM tests' training loop."""
    for i in range(start, start + steps):
        x, y = batch(i)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def in_pattern_set(w, pset):
    """Every kernel's nonzeros fit inside at least one pattern of the set."""
    nz = (w != 0).reshape(-1, 9)
    m = pset.masks.reshape(-1, 9)
    fits = (nz[:, None, :] & ~m[None]).any(-1).logical_not().any(-1)
    return bool(fits.all())


def check_in_set(c, w, pset):
    """The weight ``w`` satisfies constraint ``c`` (pattern set ``pset`` for Pattern)."""
    if isinstance(c, C.Pattern):
        assert in_pattern_set(w, pset)
        assert ((w != 0).reshape(-1, 9).sum(1) <= c.entries).all()
    elif isinstance(c, C.Connectivity):
        kept = (w != 0).reshape(w.shape[0], w.shape[1], 9).any(-1)
        n = c.keep if isinstance(c.keep, int) else round(c.keep * kept.numel())
        g = kept.reshape(-1, c.group, kept.shape[1])  # G consecutive filters keep the same channels
        assert (g == g[:, :1]).all()
        assert int(g[:, 0].sum()) <= n
    elif isinstance(c, C.Unstructured):
        assert int((w != 0).sum()) <= max(1, round(c.keep * w.numel()))
    elif isinstance(c, C.Filter):
        n = c.keep if isinstance(c.keep, int) else round(c.keep * w.shape[0])
        assert int((w.reshape(w.shape[0], -1) != 0).any(1).sum()) <= n
    elif isinstance(c, C.Channel):
        assert int((w.transpose(0, 1).reshape(w.shape[1], -1) != 0).any(1).sum()) <= round(c.keep * w.shape[1])
    elif isinstance(c, C.Quantize):
        assert w.unique().numel() <= 2 ** c.bits - 1 + (c.bits == 1)


def small_cnn(seed=0, quantized=False):
    """3x3 convs with stride 1/2, padding 1/2, dilation 2, with and without bias, whose weights
    already satisfy PATTERNS8 (one layer with filter groups of 2, one with int8 codes * scale)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=2, dilation=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()
    with torch.no_grad():
        for i, (idx, group) in enumerate([(0, 1), (2, 2), (4, 1)]):
            conv = model[idx]
            w = random_pattern_weight(conv.out_channels, conv.in_channels, keep=0.6, group=group, seed=seed + i)
            if quantized:  # values = int8 codes * scale
                scale = w.abs().max() / 7
                w = torch.round(w / scale).clamp(-7, 7) * scale
            conv.weight.copy_(w)
    return model


def pattern_conv(conv):
    """PatternConv2d built directly from the compressed arrays (no pattern selection needed)."""
    arrays = fmt.compress(conv.weight, PATTERNS8)
    m = PatternConv2d(conv.in_channels, conv.out_channels, stride=conv.stride, padding=conv.padding,
                      dilation=conv.dilation, bias=conv.bias is not None, patterns=PATTERNS8,
                      kept_kernels=arrays["values"].shape[0])
    with torch.no_grad():
        for name in ("filter_ptr", "kernel_channel", "kernel_pattern", "values"):
            getattr(m, name).copy_(arrays[name])
        if conv.bias is not None:
            m.bias.copy_(conv.bias)
    return m


def converted(quantized=False):
    """small_cnn with its three convs as PatternConv2d (test_export.py, test_cpp_runner.py)."""
    model = small_cnn(quantized=quantized)
    for idx in (0, 2, 4):
        model[idx] = pattern_conv(model[idx])
    return model.eval()


# The tiny main-job run of test_cli.py: 2k train / 1k test images, 2 epochs per stage, batch 64 (32 steps an
# epoch).
TINY = """
batch_size = 64
train_limit = 2000
test_limit = 1000
[dense]
epochs = 2
lr = 0.05
[admm]   # ADMM's default (proximal) rho schedule over the phase's 16 Z-updates
method = "admm"   # the end-to-end path with ADMM state (the default one-shot is covered by test_methods)
epochs = 2
updates_per_epoch = 8
[retrain]
epochs = 2
lr = 0.02
[latency]
batches = [1, 8]
repeats = 3
[[layers]]
match = "features.0.weight"
constraints = [{ type = "pattern", k = 8 }, { type = "quantize", bits = 4 }]
[[layers]]
match = "features.*.weight"
constraints = [{ type = "pattern", k = 8 }, { type = "connectivity", keep = 0.2 }, { type = "quantize", bits = 4 }]
[[layers]]
match = "classifier.1.weight"
constraints = [{ type = "unstructured", keep = 0.3 }, { type = "quantize", bits = 4 }]
"""


def write(tmp_path, text, name="cfg.toml"):
    """Writes a config file under tmp_path; returns its path."""
    p = tmp_path / name
    p.write_text(text)
    return str(p)


class SmallNet(nn.Module):
    """Three 3x3 convs (BatchNorm optional) and a linear layer on 1x16x16 inputs (test_convert.py, test_report.py)."""

    def __init__(self, bn: bool = True):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), norm(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), norm(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), norm(32), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


def small_net_and_converted():
    """(a function building a small conv net, its converted form: layers="all" on random sparsity)."""
    import warnings
    import torch_patsparse as ps
    from torch_patsparse import models

    def net():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return net, ps.convert(models.sparsify_random(net()), layers="all")
