"""nn/kinds.py: one layer kind for every predicate (layer_kind, compress_module, from_dense)."""
import pytest
import torch
from torch import nn

from torch_patsparse.nn import PatternConv2d, SparseConv2d, SparseLinear, compress_module
from torch_patsparse.nn.sparse import float32_exact
from torch_patsparse.nn.kinds import PATTERN, SPARSE, layer_kind


def test_one_layer_kind_for_all_predicates():
    """compress_module and PatternConv2d.from_dense take what layer_kind says."""
    class Sub(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2
    cases = [nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3, padding="same"), nn.Conv2d(4, 4, 3, groups=2),
             nn.Conv2d(4, 4, 5), nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), Sub(4, 4, 3),
             nn.Linear(4, 4), nn.Conv2d(4, 4, 3).double(), nn.ReLU()]
    precise = nn.Conv2d(4, 4, 3).double()
    with torch.no_grad():
        precise.weight.mul_(1 + 1e-12)  # float64 values float32 cannot hold: no exact sparse form
    cases.append(precise)
    for m in cases:
        kind = layer_kind(m)
        if kind == PATTERN:
            PatternConv2d.from_dense(m)
        elif isinstance(m, nn.Conv2d):
            with pytest.raises(ValueError):
                PatternConv2d.from_dense(m)
        got = compress_module(m, only_if_smaller=False)
        if kind is None or not float32_exact(m.weight):
            assert got is None, m
        else:
            assert isinstance(got, SparseLinear if isinstance(m, nn.Linear) else SparseConv2d), m
    assert layer_kind(nn.Conv2d(4, 4, 5)) == SPARSE


def test_a_conv_subclass_with_its_own_conv_forward_is_not_converted():
    """nn.Conv2d.forward calls self._conv_forward: a subclass overriding only that computes something
    else, and convert / compressed_training swapped it for a layer that computes the plain conv."""
    import torch_patsparse as ps

    class Half(nn.Conv2d):
        def _conv_forward(self, x, w, b):
            return super()._conv_forward(x, w * 0.5, b)
    assert layer_kind(Half(4, 4, 3)) is None and layer_kind(Half(4, 4, 1)) is None
    model = nn.Sequential(Half(4, 8, 3))
    with torch.no_grad():
        model[0].weight.mul_(torch.rand_like(model[0].weight) < 0.2)
    x = torch.randn(1, 4, 6, 6)
    out = ps.convert(model, layers="all", project=True)
    assert isinstance(out[0], Half)
    torch.testing.assert_close(out(x), model(x))


def test_a_layer_with_state_of_its_own_is_not_converted():
    """A mask buffer read by a user's pre-hook: convert moved the hook to a layer without the buffer
    (AttributeError at the first forward) and dropped the buffer from the state_dict."""
    import warnings

    import torch_patsparse as ps

    conv = nn.Conv2d(4, 8, 3)
    conv.register_buffer("mask", (torch.rand_like(conv.weight) < 0.3).float())
    conv.register_forward_pre_hook(lambda mod, args: mod.weight.data.mul_(mod.mask))
    model = nn.Sequential(conv)
    x = torch.randn(1, 4, 6, 6)
    want = model(x)
    assert layer_kind(conv) is None
    with pytest.warns(UserWarning, match="'0': it holds 'mask' besides weight / bias"):
        out = ps.convert(model, layers="all")
    assert type(out[0]) is nn.Conv2d and "0.mask" in out.state_dict()
    torch.testing.assert_close(out(x), want)
    pruned = nn.Conv2d(4, 8, 3)  # torch.nn.utils.prune's own weight_orig / weight_mask are not "its own"
    torch.nn.utils.prune.l1_unstructured(pruned, "weight", 0.5)
    assert layer_kind(pruned) == PATTERN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert isinstance(ps.convert(nn.Sequential(pruned), layers="all", inplace=True)[0], (PatternConv2d, SparseConv2d))
