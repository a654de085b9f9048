"""Conv geometry set after construction (``conv.stride = 2``, as people do with nn.Conv2d) takes
effect in the compressed layers, is checked like the constructor's arguments, and never leaves a
stale result (nn/_geometry.py)."""
import numpy as np
import pytest
import torch
from torch import nn

import torch_patsparse as ps
from torch_patsparse.nn import PatternConv2d, SparseConv2d, SparseLinear


def _pattern_layer():
    torch.manual_seed(0)
    return ps.convert(ps.models.sparsify_random(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1))))[0]


def _sparse_1x1():
    torch.manual_seed(1)
    c = nn.Conv2d(8, 16, 1)
    with torch.no_grad():
        c.weight.mul_(torch.rand_like(c.weight) < 0.3)
    return SparseConv2d.from_dense(c)


@pytest.mark.parametrize("make", [_pattern_layer, _sparse_1x1])
@pytest.mark.parametrize("attr,value", [("stride", 2), ("stride", (2, 1)), ("padding", 1), ("padding", "same"),
                                        ("padding", "valid"), ("padding", 0), ("dilation", 2)])
def test_geometry_set_after_construction_takes_effect(make, attr, value):
    layer = make()
    dense = layer.to_dense()
    x = torch.randn(2, 8, 9, 9)
    setattr(layer, attr, value)
    setattr(dense, attr, value)
    torch.testing.assert_close(layer(x), dense(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.jit.script(layer)(x), dense(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [_pattern_layer, _sparse_1x1])
@pytest.mark.parametrize("attr,value,error", [("padding_mode", "circular", ValueError), ("stride", 1.5, TypeError),
                                              ("stride", "12", TypeError), ("padding", "full", ValueError),
                                              ("groups", 2, ValueError), ("kernel_size", 5, ValueError)])
def test_geometry_the_layer_cannot_compute_is_refused_and_left_as_it_was(make, attr, value, error):
    layer = make()
    x = torch.randn(1, 8, 6, 6)
    before, old = layer(x), getattr(layer, attr)
    with pytest.raises(error):
        setattr(layer, attr, value)
    assert getattr(layer, attr) == old
    torch.testing.assert_close(layer(x), before, rtol=0, atol=0)


def test_strided_same_padding_is_refused_as_nn_conv2d():
    layer = _sparse_1x1()
    layer.stride = 2
    with pytest.raises(ValueError, match="strided"):
        layer.padding = "same"
    assert layer.padding == (0, 0)


def test_same_padding_follows_a_later_dilation():
    """PatternConv2d stores padding numerically; a layer built with padding="same" kept the old numbers
    when its dilation changed (nn.Conv2d keeps "same": 9x9 against 7x7 outputs), and took a stride."""
    layer = PatternConv2d(8, 8, 3, padding="same")
    with torch.no_grad():
        layer.values.normal_()
    dense = layer.to_dense()
    dense.padding = "same"
    layer.dilation = 2
    dense.dilation = (2, 2)
    x = torch.randn(1, 8, 9, 9)
    torch.testing.assert_close(layer(x), dense(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="strided"):
        layer.stride = 2
    layer.padding = 1  # numbers again: a later dilation keeps them
    layer.dilation = 1
    assert layer.padding == (1, 1)


@pytest.mark.parametrize("build", [lambda c: PatternConv2d.from_dense(c), lambda c: ps.convert(c),
                                   lambda c: SparseConv2d.from_dense(c)])
def test_a_converted_same_padding_layer_stays_same(build):
    """from_dense / convert of an nn.Conv2d(padding="same") wrote the padding as numbers: after a later
    dilation the layer kept (1, 1) where the original pads "same" (5x6 against 7x8 outputs), and took a
    stride that the original refuses."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding="same")
    with torch.no_grad():
        conv.weight[..., 2, :] = 0
        conv.weight[..., :, 2] = 0
    layer = build(conv)
    assert isinstance(layer, (PatternConv2d, SparseConv2d))
    layer.dilation = 2
    conv.dilation = (2, 2)
    x = torch.randn(1, 4, 7, 8)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)
    assert layer.to_dense().padding == "same"
    with pytest.raises(ValueError, match="strided"):
        layer.stride = 2


@pytest.mark.parametrize("make", [_pattern_layer, _sparse_1x1])
@pytest.mark.parametrize("attr", ["in_channels", "out_channels"])
def test_the_channel_counts_are_the_stored_shape(make, attr):
    """On nn.Conv2d in_channels is a label; PatternConv2d's op read it: a larger one took inputs the
    original refuses (extra channels weighted 0), a smaller one failed inside the op."""
    layer = make()
    x = torch.randn(1, 8, 6, 6)
    before, old = layer(x), getattr(layer, attr)
    setattr(layer, attr, old)  # the same value is fine
    for value in (old + 2, old - 2):
        with pytest.raises(ValueError, match="stored weight"):
            setattr(layer, attr, value)
    assert getattr(layer, attr) == old
    torch.testing.assert_close(layer(x), before, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs,error", [({"stride": 1.5}, TypeError), ({"padding": (1.7, 1.7)}, TypeError),
                                          ({"dilation": "12"}, TypeError), ({"groups": 0}, ValueError),
                                          ({"kernel_size": -1}, ValueError), ({"in_channels": 3.5}, TypeError),
                                          ({"groups": 2.0}, TypeError)])
def test_sparse_conv2d_refuses_what_nn_conv2d_refuses(kwargs, error):
    args = {"in_channels": 8, "out_channels": 16, "kernel_size": 1, **kwargs}
    with pytest.raises(error):
        SparseConv2d(**args)


@pytest.mark.parametrize("kwargs,error", [({"stride": (1.5, 1.5)}, TypeError), ({"padding": (1.7, 1.7)}, TypeError),
                                          ({"stride": "12"}, TypeError), ({"bits": True}, ValueError),
                                          ({"patterns": [[0, 1, 4, 9.7]]}, TypeError),
                                          ({"patterns": [[300, -1, 4, 5]]}, ValueError),
                                          ({"kept_kernels": -1}, ValueError)])
def test_pattern_conv2d_refuses_what_it_would_truncate(kwargs, error):
    with pytest.raises(error):
        PatternConv2d(3, 8, **kwargs)


@pytest.mark.parametrize("args", [(3.5, 4), ("4", 4), (-1, 4)])
def test_sparse_linear_refuses_bad_feature_counts(args):
    with pytest.raises((TypeError, ValueError)):
        SparseLinear(*args)


def test_numpy_ints_are_accepted_as_geometry():
    layer = SparseConv2d(np.int64(8), 16, 1, stride=np.int32(2))
    assert layer.stride == (2, 2) and layer.in_channels == 8


def test_pattern_conv2d_without_bias_registers_none_as_nn_conv2d():
    layer = PatternConv2d(3, 8, bias=False)
    assert "bias" in layer._parameters and layer.bias is None
    with pytest.raises(TypeError):  # a plain tensor would be used by forward but not saved
        layer.bias = torch.ones(8)
