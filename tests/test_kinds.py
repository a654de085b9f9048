"""nn/kinds.py: one layer kind for every predicate (layer_kind, compress_module, from_dense)."""
import pytest
import torch
from torch import nn

from torch_patsparse.nn import PatternConv2d, SparseConv2d, SparseLinear, compress_module
from torch_patsparse.nn.kinds import PATTERN, SPARSE, layer_kind


def test_one_layer_kind_for_all_predicates():
    """compress_module and PatternConv2d.from_dense take what layer_kind says."""
    class Sub(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2
    cases = [nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3, padding="same"), nn.Conv2d(4, 4, 3, groups=2),
             nn.Conv2d(4, 4, 5), nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), Sub(4, 4, 3),
             nn.Linear(4, 4), nn.Conv2d(4, 4, 3).double(), nn.ReLU()]
    for m in cases:
        kind = layer_kind(m)
        if kind == PATTERN:
            PatternConv2d.from_dense(m)
        elif isinstance(m, nn.Conv2d):
            with pytest.raises(ValueError):
                PatternConv2d.from_dense(m)
        got = compress_module(m, only_if_smaller=False)
        if kind is None or m.weight.dtype != torch.float32:
            assert got is None, m
        else:
            assert isinstance(got, SparseLinear if isinstance(m, nn.Linear) else SparseConv2d), m
    assert layer_kind(nn.Conv2d(4, 4, 5)) == SPARSE
