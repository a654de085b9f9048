"""nn/_sparse_storage.py, the stored form of SparseLinear / SparseConv2d: exact round trips, forward vs
dense F.linear / F.conv2d, compact state_dict (weights_only load, file size), load validation (bad
scale or _extra_state, another shape, a rejected load leaves the module unchanged). Decode's checks
of corrupt arrays: test_sparse_format.py; nn/sparse.py's inputs and compress_module: test_sparse.py."""
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torch_patsparse import project
from torch_patsparse.nn import SparseConv2d, SparseLinear

from helpers import assert_same_snapshot, conv_with, linear_with, pruned_on_grid, sd_of, snapshot


# ------------------------------------------------------------------------------------------ helpers
# SparseLinear and 1x1 SparseConv2d run the native sparse op: the dense reference sums in another order.


def assert_sum_order_close(got, ref, magnitude):
    """``got`` equals ``ref`` up to another summation order: per element within 1e-5 of the sum of
    the terms' magnitudes (``magnitude``: the same op on |x| and |w|), so an output that cancels to
    near zero is judged by the size of what was summed, not by its own."""
    assert got.shape == ref.shape and got.dtype == ref.dtype
    excess = ((got - ref).abs() - 1e-5 * magnitude - 1e-6).max().item() if ref.numel() else 0.0
    assert excess <= 0, f"error exceeds the sum-order bound by {excess}"

KEEPS = [0.0, 0.003, 0.05, 0.5, 1.0]
LEVELS = [None, 1, 3, 7, 100]


# ------------------------------------------------------------------------------------------ linear
@pytest.mark.parametrize("keep", KEEPS)
@pytest.mark.parametrize("levels", LEVELS)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_round_trip_and_forward(keep, levels, bias):
    w = pruned_on_grid((37, 211), keep, levels=levels)
    lin = linear_with(w, bias)
    s = SparseLinear.from_dense(lin)
    assert torch.equal(s.to_dense().weight, lin.weight)
    assert s.nnz == int((w != 0).sum())
    if levels is not None and s.nnz:
        assert s.bits is not None and s.bits <= 8  # detected the grid: stored as codes, not fp32
        assert s.storage_bits()["values"] == 0
    x = torch.randn(5, 211, generator=torch.Generator().manual_seed(1))
    assert_sum_order_close(s(x), F.linear(x, w, lin.bias), F.linear(x.abs(), w.abs()))  # native op
    assert "weight" not in s.state_dict()


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_ternary_codes_take_one_bit(bits):
    w = pruned_on_grid((50, 64), 0.2, levels=1)
    s = SparseLinear.from_dense(linear_with(w))
    nnz = s.nnz
    assert s.bits == 1 and s.storage_bits()["codes"] == 8 * math.ceil(nnz / 8)
    w = pruned_on_grid((50, 64), 0.2, levels=(1 << (bits - 1)) - 1)
    s = SparseLinear.from_dense(linear_with(w))
    assert s.bits == (1 if bits == 2 else bits) and torch.equal(s.to_dense().weight, w)


@pytest.mark.parametrize("q", [0.01, 1e-3, 0.1, 3.3])
def test_grid_detection_exact(q):
    w = pruned_on_grid((20, 30), 0.3, levels=3, q=q)
    s = SparseLinear.from_dense(linear_with(w))
    assert s.bits == 3 and s.scheme == "uniform"
    assert torch.equal(s.to_dense().weight, w)


def test_pow2_grid_detection():
    g = torch.Generator().manual_seed(3)
    j = torch.randint(0, 3, (20, 30), generator=g)
    sign = torch.randint(0, 2, (20, 30), generator=g) * 2 - 1
    w = sign * 0.75 * torch.pow(2.0, -j.float()) * (torch.rand(20, 30, generator=g) < 0.3)
    for scheme in ("pow2", "uniform"):  # found under either argument (the default: uniform first)
        s = SparseLinear.from_dense(linear_with(w), scheme=scheme)
        assert s.scheme == "pow2" and s.bits == 3
        assert torch.equal(s.to_dense().weight, w)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("scheme", ["uniform", "pow2"])
def test_from_dense_quantizes(bits, scheme):
    w = pruned_on_grid((30, 40), 0.1, seed=bits)
    s = SparseLinear.from_dense(linear_with(w), bits=bits, scheme=scheme)
    wq = project.quantize(w, bits, scheme)
    assert s.bits == bits
    assert torch.equal(s.to_dense().weight, wq)
    # quantizing an already quantized weight again is exact too
    s2 = SparseLinear.from_dense(linear_with(wq), bits=bits, scheme=scheme)
    assert torch.equal(s2.to_dense().weight, wq)


def test_index_choice_bitmap_vs_relative():
    dense = SparseLinear.from_dense(linear_with(pruned_on_grid((64, 64), 0.6)))
    assert dense.index_kind == "bitmap" and dense.storage_bits()["index"] == 64 * 64
    sparse = SparseLinear.from_dense(linear_with(pruned_on_grid((64, 64), 0.01)))
    assert sparse.index_kind.startswith("relative")
    assert sparse.storage_bits()["index"] < 64 * 64


def test_relative_index_long_gaps():
    """Gaps far longer than the index width need padding (escape) entries."""
    w = torch.zeros(10, 1000)
    w[0, 0] = 1.0
    w[9, 999] = -2.0
    w[5, 17] = 0.5
    s = SparseLinear.from_dense(linear_with(w))
    assert s.index_kind.startswith("relative")
    assert torch.equal(s.to_dense().weight, w)


# ------------------------------------------------------------------------------------------ conv
CONV_CASES = [
    # (cin, cout, k, stride, padding, dilation, groups, bias, hw)
    (1, 6, 5, 1, 2, 1, 1, True, (28, 28)),
    (6, 16, 5, 1, 0, 1, 1, True, (14, 14)),
    (8, 16, 1, 1, 0, 1, 1, False, (7, 9)),
    (8, 8, 3, 1, 1, 1, 8, True, (10, 10)),   # depthwise 3x3: PatternConv2d does not take it
    (4, 6, (3, 5), (2, 1), (1, 2), (1, 2), 2, True, (13, 11)),
    (3, 4, 7, 2, 3, 1, 1, False, (16, 15)),
    (4, 4, 3, 1, "same", 2, 1, True, (9, 9)),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("keep,levels", [(0.3, None), (0.05, 3), (1.0, None), (0.0, None), (0.5, 1)])
def test_conv_round_trip_and_forward(case, keep, levels):
    cin, cout, k, stride, padding, dilation, groups, bias, hw = case
    ks = k if isinstance(k, tuple) else (k, k)
    w = pruned_on_grid((cout, cin // groups, *ks), keep, levels=levels, seed=cout)
    conv = conv_with(w, stride, padding, dilation, groups, bias)
    s = SparseConv2d.from_dense(conv)
    assert torch.equal(s.to_dense().weight, w)
    x = torch.randn(2, cin, *hw, generator=torch.Generator().manual_seed(cin))
    ref = F.conv2d(x, w, conv.bias, conv.stride, conv.padding, conv.dilation, groups)
    if s._native:  # another summation order
        geometry = (conv.stride, conv.padding, conv.dilation, groups)
        assert_sum_order_close(s(x), ref, F.conv2d(x.abs(), w.abs(), None, *geometry))
    else:
        torch.testing.assert_close(s(x), ref, rtol=0, atol=0)
    assert s.to_dense()(x).shape == ref.shape
    assert s.output_hw(hw) == tuple(ref.shape[2:])
    dense_macs, kept_macs = s.macs(ref.shape[2:])
    assert dense_macs == w.numel() * ref.shape[2] * ref.shape[3]
    assert kept_macs == int((w != 0).sum()) * ref.shape[2] * ref.shape[3]
    assert s.dense_bits() == 32 * (w.numel() + (cout if bias else 0))


def test_linear_macs_and_bits():
    w = pruned_on_grid((120, 400), 0.01, levels=1)
    s = SparseLinear.from_dense(linear_with(w))
    assert s.macs(None) == s.macs(()) == (48000, s.nnz)
    b = s.storage_bits()
    assert b["bias"] == 120 * 32 and b["scale"] == 32 and b["values"] == 0
    assert s.dense_bits() == 32 * (48000 + 120)
    assert sum(b.values()) < s.dense_bits() / 30


# ------------------------------------------------------------------------------------------ state dict
def save_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load(b: bytes):
    return torch.load(io.BytesIO(b), weights_only=True)


@pytest.mark.parametrize("levels,keep", [(None, 0.05), (1, 0.01), (3, 0.2), (None, 0.0)])
def test_state_dict_round_trip_weights_only(levels, keep):
    w = pruned_on_grid((16, 6, 5, 5), keep, levels=levels)
    conv = conv_with(w)
    s = SparseConv2d.from_dense(conv)
    sd = load(save_bytes(s.state_dict()))
    fresh = SparseConv2d(6, 16, 5)
    fresh.load_state_dict(sd)
    x = torch.randn(2, 6, 12, 12)
    assert torch.equal(fresh(x), s(x))
    assert torch.equal(fresh.to_dense().weight, w)
    assert fresh.storage_bits() == s.storage_bits()
    # a whole model
    fc = SparseLinear.from_dense(linear_with(pruned_on_grid((10, 16 * 64), 0.02, levels=1)))
    model = nn.Sequential(s, nn.Flatten(), fc)
    sd = load(save_bytes(model.state_dict()))
    model2 = nn.Sequential(SparseConv2d(6, 16, 5), nn.Flatten(), SparseLinear(16 * 64, 10))
    model2.load_state_dict(sd)
    assert torch.equal(model2(x), model(x))


def test_decoded_weight_not_persistent():
    s = SparseLinear.from_dense(linear_with(pruned_on_grid((10, 20), 0.3)))
    s(torch.randn(1, 20))  # fills the cache
    assert set(s.state_dict()) == {"header", "index", "codes", "values", "scale", "bias", "_extra_state"}


PER_TENSOR_OVERHEAD = 600  # bytes of zip entry + pickle record per tensor in torch.save
FIXED_OVERHEAD = 1500


@pytest.mark.parametrize("shape,keep,levels", [((120, 400), 0.005, 1), ((120, 400), 0.05, 3),
                                               ((84, 120), 0.3, None), ((120, 400), 0.9, 7)])
def test_file_size_tracks_counted_bits(shape, keep, levels):
    s = SparseLinear.from_dense(linear_with(pruned_on_grid(shape, keep, levels=levels)))
    sd = s.state_dict()
    counted_bytes = sum(s.storage_bits().values()) / 8
    size = len(save_bytes(sd))
    assert size <= counted_bytes + FIXED_OVERHEAD + PER_TENSOR_OVERHEAD * len(sd), (size, counted_bytes)
    # and the counted bits are the real data: dense fp32 file is ~dense_bits/8
    if keep < 0.1:
        dense_size = len(save_bytes(linear_with(pruned_on_grid(shape, keep, levels=levels)).state_dict()))
        assert size < dense_size / 5


# ------------------------------------------------------------------------------------------ load validation
@pytest.mark.parametrize("scale", [float("nan"), float("inf"), 0.0, -0.5])
def test_sparse_bad_scale_is_rejected(scale):
    lin = nn.Linear(30, 6)
    with torch.no_grad():
        lin.weight.mul_(torch.rand(6, 30) < 0.2)
    sl = SparseLinear.from_dense(lin, bits=3)
    sd = sd_of(sl)
    sd["scale"] = torch.tensor([scale])
    with pytest.raises(RuntimeError, match="scale"):
        SparseLinear(30, 6).load_state_dict(sd)


def test_sparse_checkpoint_of_another_shape_is_rejected():
    lin = nn.Linear(16, 8)
    with torch.no_grad():
        lin.weight.mul_(torch.rand(8, 16) < 0.3)
    sd = sd_of(SparseLinear.from_dense(lin))
    with pytest.raises(RuntimeError, match="size mismatch for"):
        SparseLinear(8, 8).load_state_dict(sd)
    with pytest.raises(RuntimeError, match="size mismatch for"):
        SparseLinear(16, 4).load_state_dict(sd)
    conv = nn.Conv2d(4, 6, 5)
    sd = sd_of(SparseConv2d.from_dense(conv))
    with pytest.raises(RuntimeError, match="size mismatch for"):
        SparseConv2d(8, 6, 5).load_state_dict(sd)


@pytest.mark.parametrize("key", ["index", "codes", "scale", "bias", "header"])
def test_sparse_rejected_load_leaves_module_unchanged(key):
    def make(seed, keep):
        g = torch.Generator().manual_seed(seed)
        lin = nn.Linear(40, 10)
        with torch.no_grad():
            lin.weight.mul_(torch.rand(10, 40, generator=g) < keep)
        return SparseLinear.from_dense(lin, bits=3)
    sl, other = make(0, 0.1), make(1, 0.6)
    sd = sd_of(other)
    sd[key] = {"index": sd["index"][:-1], "codes": sd["codes"][:-1], "scale": torch.tensor([-1.0]),
               "bias": torch.zeros(3), "header": sd["header"][:-1]}[key]
    before = snapshot(sl)
    x = torch.randn(2, 40)
    y = sl(x)
    with pytest.raises(RuntimeError):
        sl.load_state_dict(sd)
    assert_same_snapshot(snapshot(sl), before)
    assert torch.equal(sl(x), y)


def test_sparse_extra_state_and_arrays_clean_errors():
    sd = sd_of(SparseLinear.from_dense(nn.Linear(10, 4)))
    for bad in (["x"], "x", {"weight_shape": [4, 10], "junk": 1}, {"weight_shape": "4x10"}):
        sd2 = dict(sd, _extra_state=bad)
        with pytest.raises(RuntimeError, match="_extra_state"):
            SparseLinear(10, 4).load_state_dict(sd2)
    sd2 = dict(sd, values=[1.0])
    with pytest.raises(RuntimeError, match="invalid compressed weight"):
        SparseLinear(10, 4).load_state_dict(sd2)


@pytest.mark.parametrize("keep", [0.0, 0.4])
def test_load_keeps_the_layers_float_dtype(keep):
    """A state_dict with float64 values / scale loads into a float32 layer as float32 (copied into,
    as nn.Linear's weight): it took the stored dtype, and the layer then refused float32 input."""
    torch.manual_seed(0)
    lin = nn.Linear(12, 3, bias=False)
    with torch.no_grad():
        lin.weight.mul_(torch.rand(3, 12) < keep)
    m = SparseLinear.from_dense(lin, bits=3)
    sd = {k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in m.state_dict().items()}
    fresh = SparseLinear(12, 3, bias=False)
    fresh.load_state_dict(sd)
    assert fresh.values.dtype == fresh.scale.dtype == torch.float32
    x = torch.randn(2, 12)
    torch.testing.assert_close(fresh(x), m(x))


def test_empty_arrays_equal_the_encoding_of_zeros():
    from torch_patsparse import sparse_format
    for numel in (0, 1, 7, 100, 12345, 1 << 20):
        got, want = sparse_format.encode_zeros(numel), sparse_format.encode(torch.zeros(numel), None, "uniform")
        for k in want:
            assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), (numel, k)


def test_relative_error_in_chunks_equals_the_formula():
    from torch_patsparse.nn._decoded_weight import relative_error
    g = torch.Generator().manual_seed(0)
    b = torch.randn(5_000_003, generator=g, dtype=torch.float64)  # more than one chunk
    a = b + 1e-3 * torch.randn(b.shape, generator=g, dtype=torch.float64)
    assert relative_error(a, b) == pytest.approx(float((a - b).norm() / b.norm()), rel=1e-12)
    assert relative_error(b.float(), b.float()) == 0.0
    assert relative_error(a, torch.zeros_like(a)) == math.inf


def test_large_sparse_linear_builds_without_dense_copies():
    """An empty SparseLinear (what load_compressed builds) and from_dense of a large weight: the empty
    layer allocated and encoded a dense zero weight and the error check took float64 copies of whole
    weights (4.8x / 5.8x the dense weight at peak); measured in a fresh process (peak RSS growth)."""
    import subprocess
    import sys
    code = """
import torch, torch_patsparse as ps
def hwm():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) * 1024
torch.manual_seed(0)
w = torch.randn(6000, 6000) * (torch.rand(6000, 6000) < 0.1)
lin = torch.nn.Linear(6000, 6000, bias=False)
with torch.no_grad():
    lin.weight.copy_(w)
dense = lin.weight.nbytes
base = hwm()
empty = ps.nn.SparseLinear(6000, 6000, bias=False)
print((hwm() - base) / dense)
base = hwm()
layer = ps.nn.SparseLinear.from_dense(lin)
print((hwm() - base) / dense)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    empty, from_dense = (float(v) for v in out.stdout.split())
    assert empty < 0.2 and from_dense < 2.0, (empty, from_dense)


def test_missing_extra_state_is_said():
    """Without ``_extra_state`` (the weight's shape) the arrays decode into any shape of as many
    weights: a (10, 64) weight loaded as (20, 32) without a word. Old checkpoints have none, so the
    layer's own shape is still assumed, now with a warning that says so."""
    torch.manual_seed(0)
    src = SparseLinear.from_dense(linear_with(project.unstructured(torch.randn(10, 64), 0.3), bias=False))
    sd = sd_of(src)
    del sd["_extra_state"]
    other = SparseLinear(32, 20, bias=False)
    with pytest.warns(UserWarning, match=r"no '_extra_state'.*\[20, 32\]"):
        other.load_state_dict(sd)
    same = SparseLinear(64, 10, bias=False)
    with pytest.warns(UserWarning, match="no '_extra_state'"):
        same.load_state_dict(sd)
    x = torch.randn(3, 64)
    assert torch.equal(same(x), src(x))
