"""The native depthwise 3x3 kernel (patsparse::depthwise_conv3x3) and DepthwiseConv3x3, the module
optimize_for_inference puts in place of a dense depthwise conv + BatchNorm + activation: pinned to
F.conv2d + clamp over a matrix of shapes on every ISA path, batch 0/1/N, threads 1/2, fp64,
channels_last and the other fallback inputs; clear errors; TorchScript and torch.export."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torch_patsparse as ps
from torch_patsparse import models
from torch_patsparse.fusion import DepthwiseConv3x3, is_depthwise3x3

_INF = math.inf


def dense_reference(x, w, b, stride, lo, hi):
    out = F.conv2d(x.double(), w.double(), None if b is None else b.double(), stride, 1, 1, w.shape[0])
    return out.clamp(lo, hi).to(x.dtype)


def assert_close(got, want):
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * (1 + (float(want.abs().amax()) if want.numel() else 0.0)))


@pytest.mark.parametrize("shape", [(2, 3, 1, 1), (1, 5, 2, 3), (2, 4, 7, 9), (1, 8, 17, 18), (3, 6, 33, 67),
                                   (1, 16, 112, 112), (0, 4, 8, 8)])
@pytest.mark.parametrize("stride", [(1, 1), (2, 2), (1, 2), (3, 1)])
@pytest.mark.parametrize("bias,bounds", [(True, (0.0, 6.0)), (False, (-_INF, _INF)), (True, (-0.5, 0.25))])
def test_op_matches_dense(isa, shape, stride, bias, bounds):
    torch.manual_seed(0)
    n, c, h, w = shape
    x = torch.randn(n, c, h, w)
    wt = torch.randn(c, 1, 3, 3)
    b = torch.randn(c) if bias else None
    got = torch.ops.patsparse.depthwise_conv3x3(x, wt, b, list(stride), *bounds)
    assert_close(got, dense_reference(x, wt, b, stride, *bounds))


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("batch", [0, 1, 4])
def test_op_threads_channels_last_float64(isa, threads, batch, nthreads):
    torch.set_num_threads(nthreads)
    torch.manual_seed(1)
    x = torch.randn(batch, 32, 28, 30)
    wt, b = torch.randn(32, 1, 3, 3), torch.randn(32)
    want = dense_reference(x, wt, b, (2, 2), 0.0, 6.0)
    got = torch.ops.patsparse.depthwise_conv3x3(x, wt, b, [2, 2], 0.0, 6.0)
    assert_close(got, want)
    cl = torch.ops.patsparse.depthwise_conv3x3(x.contiguous(memory_format=torch.channels_last), wt, b, [2, 2], 0.0, 6.0)
    assert_close(cl, want)
    assert batch == 0 or cl.is_contiguous(memory_format=torch.channels_last)
    got64 = torch.ops.patsparse.depthwise_conv3x3(x.double(), wt.double(), b.double(), [2, 2], 0.0, 6.0)
    assert_close(got64, want.double())
    # the result does not depend on the thread count
    torch.set_num_threads(1)
    assert torch.equal(torch.ops.patsparse.depthwise_conv3x3(x, wt, b, [2, 2], 0.0, 6.0), got)


def test_op_nan_propagates(isa):
    x = torch.zeros(1, 2, 5, 40)
    x[0, 1, 2, 20] = float("nan")
    out = torch.ops.patsparse.depthwise_conv3x3(x, torch.ones(2, 1, 3, 3), None, [1, 1], 0.0, 6.0)
    assert out[0, 1, 1:4, 19:22].isnan().all() and not out[0, 0].isnan().any() and out.isnan().sum() == 9


def test_op_bad_inputs_clear_errors():
    x, wt = torch.randn(1, 4, 6, 6), torch.randn(4, 1, 3, 3)
    op = torch.ops.patsparse.depthwise_conv3x3
    for args, match in [((x[0], wt, None, [1, 1], 0.0, 1.0), "4-D"),
                        ((x, wt[:3], None, [1, 1], 0.0, 1.0), "weight"),
                        ((x, wt.double(), None, [1, 1], 0.0, 1.0), "weight"),
                        ((x, wt, torch.randn(3), [1, 1], 0.0, 1.0), "bias"),
                        ((x, wt, None, [0, 1], 0.0, 1.0), "stride"),
                        ((x, wt, None, [1, 1], 1.0, 0.0), "lo <= hi"),
                        ((x, wt, None, [1, 1], float("nan"), 1.0), "lo <= hi"),
                        ((x.int(), wt, None, [1, 1], 0.0, 1.0), "float32 or float64"),
                        ((torch.randn(1, 4, 0, 6), wt, None, [1, 1], 0.0, 1.0), "empty spatial")]:
        with pytest.raises(RuntimeError, match=match):
            op(*args)


def depthwise_block(channels=8, stride=1, act=nn.ReLU6):
    conv = nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False)
    bn = nn.BatchNorm2d(channels)
    models.sparsify_random(bn)  # non-trivial statistics
    with torch.no_grad():
        conv.weight.normal_()
    return nn.Sequential(conv, bn, act()).eval()


@pytest.mark.parametrize("stride", [1, 2])
def test_optimize_replaces_depthwise_bn_activation(isa, stride):
    torch.manual_seed(2)
    model = depthwise_block(stride=stride)
    opt = ps.optimize_for_inference(model)
    mods = [m for m in opt.modules() if isinstance(m, DepthwiseConv3x3)]
    assert len(mods) == 1 and (mods[0].lo, mods[0].hi) == (0.0, 6.0)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.ReLU6)) for m in opt.modules())
    for x in (torch.randn(2, 8, 13, 16), torch.randn(1, 8, 9, 7).contiguous(memory_format=torch.channels_last),
              torch.randn(0, 8, 5, 5), torch.randn(2, 8, 10, 10).double()):
        with torch.no_grad():
            want = model.double()(x) if x.dtype == torch.float64 else model.float()(x)
            got = opt.double()(x) if x.dtype == torch.float64 else opt.float()(x)
        assert_close(got, want)
    for dtype in (torch.float16, torch.bfloat16):  # the native kernel runs fp32 / fp64: F.conv2d's route
        x = torch.randn(1, 8, 6, 6, dtype=dtype)
        with torch.no_grad():
            torch.testing.assert_close(opt.to(dtype)(x).float(), model.to(dtype)(x).float(), rtol=3e-2, atol=3e-2)
    opt.float()
    model.float()
    x3 = torch.randn(8, 6, 6)  # unbatched: F.conv2d's route
    with torch.no_grad():
        assert_close(opt(x3), opt(x3.unsqueeze(0)).squeeze(0))
    # errors are F.conv2d's for inputs it rejects
    with pytest.raises(RuntimeError, match="channels"):
        opt(torch.randn(1, 5, 8, 8))
    # inputs that need a gradient run F.conv2d (correct gradient), not the inference-only kernel
    x = torch.randn(1, 8, 6, 6, requires_grad=True)
    opt(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match="inference only"):
        opt.train()


def test_only_depthwise_3x3_padding_1_is_taken():
    def conv(**kw):
        args = dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=4)
        args.update(kw)
        return nn.Conv2d(**args)
    assert is_depthwise3x3(conv())
    for bad in (conv(groups=2), conv(kernel_size=5, padding=2), conv(padding=0), conv(dilation=2, padding=2),
                conv(padding_mode="reflect"), conv(out_channels=8), conv().double()):
        assert not is_depthwise3x3(bad)
        opt = ps.optimize_for_inference(nn.Sequential(bad, nn.ReLU()).eval())
        assert not any(isinstance(m, DepthwiseConv3x3) for m in opt.modules())


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = depthwise_block(act=nn.ReLU)

    def forward(self, x):
        return self.block(x) if float(x.mean()) < 1e9 else x


def test_module_level_folding_script_export(isa):
    torch.manual_seed(3)
    model = Untraceable().eval()
    opt = ps.optimize_for_inference(model)
    assert sum(isinstance(m, DepthwiseConv3x3) for m in opt.modules()) == 1
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.ReLU)) for m in opt.modules())
    x = torch.randn(2, 8, 12, 11)
    with torch.no_grad():
        want = model(x)
        assert_close(opt(x), want)
        src = depthwise_block()
        traced = ps.optimize_for_inference(src)
        want2 = src(x)
        assert_close(torch.jit.script(traced)(x), want2)
        exported = torch.export.export(traced, (x,))
        assert_close(exported.module()(x), want2)
    assert any("depthwise_conv3x3" in str(n.target) for n in exported.graph.nodes if n.op == "call_function")
