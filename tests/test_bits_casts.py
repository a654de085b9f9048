"""k-bit layers under dtype casts and re-conversion (from the bit-width probe)."""
import copy
import warnings

import pytest
import torch
import torch.nn as nn

import torch_patsparse as ps


def _pruned(scale):
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    with torch.no_grad():
        lin.weight.mul_((torch.rand_like(lin.weight) < 0.3).float()).mul_(scale / lin.weight.abs().max())
        w = conv.weight.view(8, 8, 9)
        w[..., [0, 2, 6, 7, 8]] = 0
        conv.weight.mul_(scale / conv.weight.abs().max())
    return lin, conv


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale", [1e-2, 1e-5])
def test_half_keeps_a_sparse_layers_scale(dtype, scale):
    """A k-bit SparseLinear cast to fp16 / bf16 rounds each weight as a dense cast does: its one
    scale stays fp32 (it was rounded to fp16: 25% off every weight at max|w| = 1e-5)."""
    lin, _ = _pruned(scale)
    q = ps.nn.SparseLinear.from_dense(lin, bits=8)
    w8 = q.weight.detach().clone()
    h = q.to(dtype)
    assert h.scale.dtype == torch.float32 and h.bias.dtype == dtype
    assert _rel(h.weight.detach(), w8) <= 1.01 * _rel(w8.to(dtype), w8) + 1e-7
    x = torch.randn(3, 32).to(dtype)
    ref = nn.functional.linear(x.float(), w8.to(dtype).float(), lin.bias.to(dtype).float())
    torch.testing.assert_close(h(x).float(), ref, rtol=2e-2, atol=2e-2 * float(ref.abs().max()))
    loaded = ps.nn.SparseLinear.from_dense(nn.Linear(32, 16), bits=8).to(dtype)
    loaded.load_state_dict(h.state_dict())
    assert torch.equal(loaded.weight, h.weight)
    back = h.float()  # (in place, as nn.Module casts)
    assert back.scale.dtype == torch.float32 and torch.equal(back.weight, w8)


def test_half_of_a_pattern_layer_warns_when_its_scale_rounds():
    _, conv = _pruned(1e-5)  # scale ~8e-8: below fp16's normal range
    q = ps.nn.PatternConv2d.from_dense(conv, bits=8)
    with pytest.warns(UserWarning, match="quantization scale .* rounds to .* keep this layer in float32"):
        q.half()
    _, conv = _pruned(1e-1)  # a normal fp16 scale: rounded as any fp16 number, no warning
    q = ps.nn.PatternConv2d.from_dense(conv, bits=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h = copy.deepcopy(q).half()
    x = torch.randn(1, 8, 6, 6)
    torch.testing.assert_close(h(x.half()).float(), q(x), rtol=2e-2, atol=2e-3)


def test_reconvert_with_bits_quantizes_every_converted_layer():
    """convert(converted, bits=4) with the default layers="3x3" left the converted SparseConv2d /
    SparseLinear in fp32 without a word; the docstring promises every converted layer."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 16, 1), nn.Flatten(), nn.Linear(16 * 16, 10))
    with torch.no_grad():
        m[0].weight.view(8, 8, 9)[..., [0, 2, 6, 7, 8]] = 0
        for layer in (m[1], m[3]):
            layer.weight.mul_((torch.rand_like(layer.weight) < 0.3).float())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = ps.convert(m, layers="all")
        q = ps.convert(c, bits=4)
    assert [getattr(layer, "bits", None) for layer in q] == [4, 4, None, 4]
    assert all(q[i].conversion_error > 0 for i in (0, 1, 3))


def test_numpy_bits_for_every_layer_kind():
    """A numpy int (a sweep over np.arange) is taken by the 3x3 layers too, as by the sparse ones."""
    np = pytest.importorskip("numpy")
    lin, conv = _pruned(1.0)
    q = ps.convert(nn.Sequential(conv), bits=np.int64(4))
    assert q[0].bits == 4 and type(q[0].bits) is int
    assert ps.nn.PatternConv2d.from_dense(conv, bits=np.uint8(3)).bits == 3
    assert ps.nn.SparseLinear.from_dense(lin, bits=np.int32(4)).bits == 4
