"""The inference path: the fused native op ``patsparse::pattern_conv2d_fused`` (pinned to F.conv2d +
torch ops on every ISA path, batch 0/1/N, channels_last, threads 1/2, every epilogue kind, bad
inputs) and ``ps.optimize_for_inference`` (BatchNorm folding with non-trivial statistics, fused
activations and residual adds against the unoptimized model, fx-traceable and non-traceable
models, TorchScript and torch.export of the result, eval-only behaviour)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torch_patsparse as ps
from torch_patsparse import format as fmt
from torch_patsparse import ops

from helpers import SHAPES, compressed, random_pattern_weight, reference_conv

INF = math.inf
BOUNDS = [(-INF, INF), (0.0, INF), (0.0, 6.0), (-0.25, 0.5)]  # none, ReLU, ReLU6, hardtanh-like


def clamp(t, lo, hi):
    return t if (lo, hi) == (-INF, INF) else t.clamp(None if lo == -INF else lo, None if hi == INF else hi)


def fused_reference(x, weight, scale, shift, residual, stride, padding, dilation, lo, hi):
    """The unfused graph: dense conv, then scale, shift, residual and clamp as torch ops."""
    out = reference_conv(x, weight, None, stride, padding, dilation)
    if scale is not None:
        out = out * scale.view(1, -1, 1, 1)
    if shift is not None:
        out = out + shift.view(1, -1, 1, 1)
    if residual is not None:
        out = out + residual
    return clamp(out, lo, hi)


def run_fused(x, arrays, scale, shift, residual, stride, padding, dilation, lo, hi):
    return ops.pattern_conv2d_fused(x, *(arrays[k] for k in fmt.ARRAY_NAMES), scale, shift, residual, stride,
                                    padding, dilation, lo, hi)


def epilogue_args(cout, out_shape, kind, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    scale = (torch.rand(cout, generator=g) + 0.5).to(dtype) if kind & 1 else None
    shift = torch.randn(cout, generator=g).to(dtype) if kind & 2 else None
    residual = torch.randn(out_shape, generator=g).to(dtype) if kind & 4 else None
    return scale, shift, residual


# ---------------------------------------------------------------- the native fused op
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
# (the C++ test_epilogue covers all 8 on/off combinations on every path)
@pytest.mark.parametrize("kind", [0, 3, 6, 7], ids=lambda k: f"scale{k & 1}-shift{k >> 1 & 1}-res{k >> 2 & 1}")
def test_fused_op_matches_unfused(isa, shape, kind):
    n, cin, h, w, cout, stride, padding, dilation, _ = shape
    weight = random_pattern_weight(cout, cin, keep=0.6, group=2, seed=cin * 7 + cout)
    arrays = compressed(weight)
    x = torch.randn(n, cin, h, w, generator=torch.Generator().manual_seed(kind))
    out_shape = reference_conv(x, weight, None, stride, padding, dilation).shape
    scale, shift, residual = epilogue_args(cout, out_shape, kind, seed=kind)
    for lo, hi in BOUNDS:
        got = run_fused(x, arrays, scale, shift, residual, stride, padding, dilation, lo, hi)
        want = fused_reference(x, weight, scale, shift, residual, stride, padding, dilation, lo, hi)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [0, 1, 3])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_fused_op_channels_last_threads_groups(isa, threads, batch, nthreads):
    torch.set_num_threads(nthreads)
    weight = random_pattern_weight(24, 40, keep=0.3, group=4, seed=3)
    arrays = compressed(weight)
    x = torch.randn(batch, 40, 23, 30).contiguous(memory_format=torch.channels_last)
    out_shape = (batch, 24, 23, 30)
    scale, shift, residual = epilogue_args(24, out_shape, 7, seed=1)
    residual = residual.contiguous(memory_format=torch.channels_last)
    got = run_fused(x, arrays, scale, shift, residual, 1, 1, 1, 0.0, 6.0)
    want = fused_reference(x, weight, scale, shift, residual, 1, 1, 1, 0.0, 6.0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if batch:
        assert got.is_contiguous(memory_format=torch.channels_last)  # as pattern_conv2d: the input's format
    # stride 2 (other slab geometry), several row blocks
    x2 = torch.randn(batch, 40, 57, 61)
    s2, b2, r2 = epilogue_args(24, (batch, 24, 29, 31), 7, seed=2)
    got = run_fused(x2, arrays, s2, b2, r2, 2, 1, 1, 0.0, INF)
    torch.testing.assert_close(got, fused_reference(x2, weight, s2, b2, r2, 2, 1, 1, 0.0, INF), rtol=1e-5, atol=1e-5)


def test_fused_op_float64_and_shift_only_equals_bias(isa):
    weight = random_pattern_weight(6, 5, keep=0.7, seed=9, dtype=torch.float64)
    arrays = compressed(weight)
    arrays = {k: (v.double() if k == "values" else v) for k, v in arrays.items()}
    x = torch.randn(2, 5, 9, 8, dtype=torch.float64)
    scale, shift, residual = epilogue_args(6, (2, 6, 9, 8), 7, dtype=torch.float64)
    got = run_fused(x, arrays, scale, shift, residual, 1, 1, 1, 0.0, 6.0)
    want = fused_reference(x, weight, scale, shift, residual, 1, 1, 1, 0.0, 6.0)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # shift only, unbounded: exactly the bias form of pattern_conv2d (same kernel path)
    xf = x.float()
    af = compressed(weight.float())
    bias = torch.randn(6)
    assert torch.equal(run_fused(xf, af, None, bias, None, 1, 1, 1, -INF, INF),
                       ops.pattern_conv2d(xf, *(af[k] for k in fmt.ARRAY_NAMES), bias, 1, 1, 1))


def test_fused_op_bad_inputs_clear_errors(isa):
    weight = random_pattern_weight(6, 5, keep=0.7, seed=1)
    arrays = compressed(weight)
    x = torch.randn(2, 5, 9, 8)
    ok = torch.ones(6)
    with pytest.raises(RuntimeError, match="residual must have the output's shape"):
        run_fused(x, arrays, None, None, torch.zeros(2, 6, 9, 7), 1, 1, 1, -INF, INF)
    with pytest.raises(RuntimeError, match="lo <= hi"):
        run_fused(x, arrays, ok, None, None, 1, 1, 1, 1.0, 0.0)
    for lo, hi in [(math.nan, 1.0), (0.0, math.nan)]:
        with pytest.raises(RuntimeError, match="not be NaN"):
            run_fused(x, arrays, ok, None, None, 1, 1, 1, lo, hi)
    with pytest.raises(RuntimeError, match=r"scale must be \[6\]"):
        run_fused(x, arrays, torch.ones(5), None, None, 1, 1, 1, -INF, INF)
    with pytest.raises(RuntimeError, match=r"shift must be \[6\]"):
        run_fused(x, arrays, None, torch.ones(6, 1), None, 1, 1, 1, -INF, INF)
    with pytest.raises(RuntimeError, match="scale is Double"):
        run_fused(x, arrays, torch.ones(6, dtype=torch.float64), None, None, 1, 1, 1, -INF, INF)
    with pytest.raises(RuntimeError, match="residual is Double"):
        run_fused(x, arrays, None, None, torch.zeros(2, 6, 9, 8, dtype=torch.float64), 1, 1, 1, -INF, INF)


def test_fused_op_fake_and_backward_raises():
    from torch._subclasses.fake_tensor import FakeTensorMode
    weight = random_pattern_weight(6, 5, keep=0.7, seed=1)
    arrays = compressed(weight)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        x = mode.from_tensor(torch.randn(2, 5, 9, 8))
        out = run_fused(x, arrays, None, None, torch.zeros(2, 6, 5, 4), 2, 1, 1, 0.0, INF)
        assert tuple(out.shape) == (2, 6, 5, 4)
        with pytest.raises(Exception, match="residual must have the output's shape"):
            run_fused(x, arrays, None, None, torch.zeros(2, 6, 5, 5), 2, 1, 1, 0.0, INF)
    x = torch.randn(2, 5, 9, 8, requires_grad=True)
    out = run_fused(x, arrays, None, None, None, 1, 1, 1, 0.0, INF)
    with pytest.raises(RuntimeError, match="inference-only"):
        out.sum().backward()


@pytest.mark.parametrize("bits", [None, 4])
@pytest.mark.parametrize("has_bias", [False, True])
def test_forward_fused_method(isa, bits, has_bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, padding=1, bias=has_bias)
    m = ps.nn.PatternConv2d.from_dense(conv, bits=bits, project=True).eval()
    x = torch.randn(2, 8, 10, 11)
    with torch.no_grad():
        ref = m(x)
        for kind in range(8):
            scale, shift, residual = epilogue_args(12, ref.shape, kind, seed=kind)
            for lo, hi in BOUNDS:
                got = m.forward_fused(x, scale, shift, residual, lo, hi)
                want = ref * (1 if scale is None else scale.view(1, -1, 1, 1))
                want = want + (0 if shift is None else shift.view(1, -1, 1, 1)) + (0 if residual is None else residual)
                torch.testing.assert_close(got, clamp(want, lo, hi), rtol=1e-5, atol=1e-5)
        # unbatched input and residual, fp16 input (computed in fp32, returned in fp16)
        got = m.forward_fused(x[0], None, None, ref[0], 0.0, INF)
        torch.testing.assert_close(got, (ref[0] + ref[0]).clamp(min=0), rtol=1e-5, atol=1e-5)
        assert m.forward_fused(x.half(), None, None, None, 0.0, INF).dtype == torch.float16
        with pytest.raises(RuntimeError, match="channels"):
            m.forward_fused(torch.randn(2, 7, 10, 11), None, None, None, 0.0, INF)
