"""fusion.py, the pieces optimize_for_inference builds from: max_pool2d_nchw against F.max_pool2d,
FusedConv's epilogue (BatchNorm scale/shift, residual, clamp) natively or not (the passes and whole
models: test_optimize.py; DepthwiseConv3x3: test_depthwise.py)."""
import itertools
import math
from typing import Optional

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torch_patsparse as ps
from torch_patsparse.fusion import FusedConv, max_pool2d_nchw

from helpers import assert_same_model_output


def assert_same(got, want):
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("k", [2, 3])
def test_max_pool2d_nchw_equals_max_pool2d(k):
    x = torch.randn(2, 5, 13, 17)
    x[0, 1, 2, 3] = math.nan
    for t in (x, x.contiguous(memory_format=torch.channels_last), x[0], x[:, :, :k + 1], x.double(),
              x[:, :, 1:, 1:]):
        assert_same(max_pool2d_nchw(t, k), F.max_pool2d(t, k))
    with pytest.raises(RuntimeError, match="too small"):  # as F.max_pool2d
        max_pool2d_nchw(x[:, :, :k - 1], k)


@pytest.mark.parametrize("shape", [(0, 3, 8, 8), (1, 1, 2, 2), (1, 3, 5, 7), (2, 4, 9, 33), (1, 8, 16, 17),
                                   (3, 2, 30, 65), (1, 16, 56, 56), (1, 2, 224, 224)])
def test_native_max_pool_matches_max_pool2d(isa, shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    if x.numel():  # ties, signed zeros, infinities and NaN
        flat = x.view(-1)
        flat[::7] = 0.0
        flat[3::11] = -0.0
        flat[5::13] = math.inf
        flat[6::17] = -math.inf
        flat[1::29] = math.nan
    assert_same(torch.ops.patsparse.max_pool2d(x, 2), F.max_pool2d(x, 2))
    assert_same(torch.ops.patsparse.max_pool2d(x.double(), 2), F.max_pool2d(x.double(), 2))
    assert_same(max_pool2d_nchw(x, 2), F.max_pool2d(x, 2))


def test_max_pool_signed_zeros_and_nan_in_pytorch_order(isa):
    """A -0 / +0 tie keeps the sign F.max_pool2d gives (the first maximum in row-major order) and NaN
    propagates: every 2x2 window of {-1, -0, +0, NaN}, across SIMD bodies and masked tails."""
    windows = torch.tensor(list(itertools.product([-1.0, -0.0, 0.0, math.nan], repeat=4)))  # [256, 4]
    for width in (2, 10, 40, 66):
        x = windows.view(-1, 1, 2, 1, 2).expand(-1, 1, 2, width // 2, 2).transpose(2, 3).reshape(-1, 1, 2, width)
        want = F.max_pool2d(x, 2)
        for got in (torch.ops.patsparse.max_pool2d(x, 2), torch.ops.patsparse.max_pool2d(x.double(), 2).float(),
                    max_pool2d_nchw(x, 2), max_pool2d_nchw(x.clone().requires_grad_(True), 2).detach()):
            assert torch.equal(got.isnan(), want.isnan())
            assert torch.equal(got.signbit(), want.signbit()) and torch.equal(got.nan_to_num(), want.nan_to_num())


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("batch", [0, 1, 4])
def test_native_max_pool_threads_layouts(isa, threads, batch, nthreads):
    torch.set_num_threads(nthreads)
    x = torch.randn(batch, 64, 30, 46)
    want = F.max_pool2d(x, 2)
    got = torch.ops.patsparse.max_pool2d(x, 2)
    assert_same(got, want)
    cl = torch.ops.patsparse.max_pool2d(x.contiguous(memory_format=torch.channels_last), 2)
    assert_same(cl, want)
    assert cl.is_contiguous(memory_format=torch.channels_last) or batch == 0  # as F.max_pool2d
    assert_same(torch.ops.patsparse.max_pool2d(x.transpose(2, 3), 2), F.max_pool2d(x.transpose(2, 3), 2))
    for k in (1, 3, 4):  # any k (the reference kernel)
        assert_same(torch.ops.patsparse.max_pool2d(x, k), F.max_pool2d(x, k))
    torch.set_num_threads(1)  # the result does not depend on the thread count
    assert torch.equal(torch.ops.patsparse.max_pool2d(x, 2), got)


def test_native_max_pool_bad_inputs_clear_errors():
    x = torch.randn(1, 4, 6, 6)
    op = torch.ops.patsparse.max_pool2d
    for args, match in [((x[0], 2), "4-D"), ((x, 0), "kernel size must be >= 1"), ((x, -2), "kernel size"),
                        ((x, 7), "output size is too small"), ((x[:, :, :1], 2), "output size is too small"),
                        ((x.int(), 2), "float32 or float64"), ((x.half(), 2), "float32 or float64"),
                        ((x[:0, :, :1], 2), "output size is too small"), ((x[:, :0], 2), "channels"),
                        ((x.clone().requires_grad_(True), 2), "inference-only")]:
        with pytest.raises(RuntimeError, match=match):
            op(*args)
    with torch.no_grad():  # no gradient wanted: runs
        assert_same(op(x.clone().requires_grad_(True), 2), F.max_pool2d(x, 2))
    w = torch.randn(4, 1, 3, 3)
    for needs_grad in (x.clone().requires_grad_(True), w.clone().requires_grad_(True)):
        args = [x, w, None, [1, 1], -math.inf, math.inf]
        args[0 if needs_grad.dim() == 4 and needs_grad.size(0) == 1 else 1] = needs_grad
        with pytest.raises(RuntimeError, match="inference-only"):
            torch.ops.patsparse.depthwise_conv3x3(*args)


@pytest.mark.parametrize("k", [0, -1, 1.5])
def test_max_pool2d_nchw_bad_kernel_errors_as_max_pool2d(k):
    x = torch.randn(1, 2, 6, 6)
    with pytest.raises((RuntimeError, TypeError)) as want:
        F.max_pool2d(x, k)
    with pytest.raises(want.type, match=str(want.value).splitlines()[0][:40].replace("(", r"\(").replace(")", r"\)")):
        max_pool2d_nchw(x, k)


def test_max_pool2d_nchw_gradient_script_export():
    """Input that needs a gradient and torch.export take F.max_pool2d (the native op has no autograd
    formula and no ExecuTorch kernel); TorchScript keeps the native one."""
    x = torch.randn(2, 3, 8, 10, requires_grad=True)
    out = max_pool2d_nchw(x, 2)
    out.sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    F.max_pool2d(x2, 2).sum().backward()
    assert_same(x.grad, x2.grad)

    class Pool(nn.Module):
        def forward(self, t):
            return max_pool2d_nchw(t, 2)

    scripted = torch.jit.script(Pool())
    assert_same(scripted(x.detach()), F.max_pool2d(x.detach(), 2))
    exported = torch.export.export(Pool(), (x.detach(),))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert not any("patsparse" in t for t in targets), targets
    assert_same(exported.module()(x.detach()), F.max_pool2d(x.detach(), 2))


class PartlyNative(nn.Module):
    """A module with forward_fused that runs it natively only for some layers (as SparseConv2d: `_native`)."""

    def __init__(self, native):
        super().__init__()
        self._native = native
        self.inner = ps.nn.PatternConv2d.from_dense(nn.Conv2d(4, 4, 3, padding=1), project=True)
        self.out_channels, self.kernel_size, self.stride = 4, (3, 3), (1, 1)
        self.padding, self.dilation, self.bias = (1, 1), (1, 1), None

    def forward(self, x):
        return self.inner(x)

    def forward_fused(self, x, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
                      residual: Optional[torch.Tensor], lo: float, hi: float):
        if not self._native:
            raise RuntimeError("not native")
        return self.inner.forward_fused(x, scale, shift, residual, lo, hi)


@pytest.mark.parametrize("native", [True, False])
def test_fused_conv_honours_native_flag(native):
    conv = PartlyNative(native)
    conv.inner.bias = None
    fused = FusedConv(conv, torch.rand(4) + 0.5, torch.randn(4), 0.0, 6.0).eval()
    x, r = torch.randn(2, 4, 5, 6), torch.randn(2, 4, 5, 6)
    with torch.no_grad():
        want = (conv(x) * fused.scale.view(-1, 1, 1) + fused.shift.view(-1, 1, 1) + r).clamp(0, 6)
        assert_same_model_output(fused(x, r), want)


def test_fused_layer_follows_a_load_that_changes_whether_it_runs_natively():
    """A 4-bit SparseLinear this dense runs dense (``_native`` False): loading such a checkpoint into an
    optimized model of a sparse one (and back) gives the loaded model's output, eager and scripted."""
    import warnings

    def converted(seed, density):
        torch.manual_seed(seed)
        m = nn.Sequential(nn.Linear(64, 32), nn.ReLU())
        with torch.no_grad():
            m[0].weight.mul_((torch.rand_like(m[0].weight) < density).float())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ps.convert(m, layers="all", bits=4).eval()

    sparse, dense = converted(0, 0.3), converted(1, 0.9)
    assert sparse[0]._native and not dense[0]._native
    x = torch.randn(4, 64)
    for a, b in ((sparse, dense), (dense, sparse)):
        opt = ps.optimize_for_inference(a)
        opt(x)
        opt.load_state_dict(ps.optimize_for_inference(b).state_dict())
        with torch.no_grad():
            assert_same_model_output(opt(x), b(x))
            assert_same_model_output(torch.jit.script(opt)(x), b(x))
