"""Tests of torch_patsparse.quant, the one quantizer: levels and code widths, grid detection."""
import pytest
import torch

import torch_patsparse as ps
from torch_patsparse import quant


def test_levels_and_widths_in_one_place():
    assert [quant.levels(b) for b in range(1, 9)] == [1, 1, 3, 7, 15, 31, 63, 127]
    assert [quant.signed_code_width(b) for b in range(1, 9)] == [2, 2, 3, 4, 5, 6, 7, 8]
    assert [quant.nonzero_code_width(b) for b in range(1, 9)] == [1, 1, 3, 4, 5, 6, 7, 8]
    assert ps.project.quantize is quant.quantize and ps.project.quantize_params is quant.quantize_params


@pytest.mark.parametrize("scheme", ["uniform", "pow2"])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 6, 8])
def test_detect_grid_round_trips_the_quantizer(bits, scheme):
    w = quant.quantize(torch.randn(300) * (torch.rand(300) < 0.5), bits, scheme)
    g = quant.detect_grid(w)
    assert g is not None and g.bits <= bits
    assert torch.equal(quant.dequantize(g.codes, g.scale, g.scheme, dtype=w.dtype), w)
    assert quant.detect_grid(torch.randn(300)) is None
    assert quant.detect_grid(torch.zeros(5)) is None


def test_a_scale_that_overflows_the_stored_dtype_is_a_clear_error():
    """pow2 puts the scale above the largest weight: near float32's maximum it cannot be stored."""
    from torch import nn
    from torch_patsparse.nn import PatternConv2d, SparseLinear
    conv = nn.Conv2d(2, 2, 3, padding=1)
    lin = nn.Linear(4, 2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, 1, 1] = torch.tensor([[3e38, -1e38], [2e38, 1e37]])
        lin.weight.zero_()
        lin.weight[0, 0], lin.weight[1, 1] = 3e38, -1e38
    for build in (lambda: PatternConv2d.from_dense(conv, bits=4, scheme="pow2"),
                  lambda: SparseLinear.from_dense(lin, bits=4, scheme="pow2")):
        with pytest.raises(ValueError, match="overflows torch.float32"):
            build()
    assert PatternConv2d.from_dense(conv, bits=4).bits == 4  # uniform fits


def test_a_scale_that_underflows_the_stored_dtype_is_a_clear_error():
    """Weights at float32's smallest subnormal divided into 7 levels: the scale rounds to 0."""
    from torch import nn
    from torch_patsparse.nn import PatternConv2d, SparseLinear
    conv, lin = nn.Conv2d(2, 2, 3, padding=1), nn.Linear(4, 2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, 1, 1] = 1e-45
        lin.weight.zero_()
        lin.weight[0, 0], lin.weight[1, 1] = 1e-45, -1e-45
    for build in (lambda b: PatternConv2d.from_dense(conv, bits=b), lambda b: SparseLinear.from_dense(lin, bits=b)):
        with pytest.raises(ValueError, match="underflows torch.float32"):
            build(4)
        assert build(2).conversion_error == 0  # one level: the weights themselves


def test_quantize_refuses_a_scale_the_dtype_cannot_hold():
    """float16 weights near its maximum (a pow2 scale above them) gave inf, weights near its smallest
    subnormal at 8 bits gave all zeros: the k-bit layers' ValueError now."""
    big = torch.tensor([65000.0, 45000.0, 65000.0, 45000.0], dtype=torch.float16)
    with pytest.raises(ValueError, match="overflows torch.float16"):
        quant.quantize(big, 3, "pow2")
    tiny = torch.tensor([1.2e-7, 1.8e-7, 3.0e-7], dtype=torch.float16)
    with pytest.raises(ValueError, match="underflows torch.float16"):
        quant.quantize(tiny, 8)
    with pytest.raises(ValueError, match="its level 3 x .* overflows torch.float16"):
        quant.quantize(big, 3, "uniform")  # (the scale fits, 3 x the scale does not: it decoded to inf)
    from torch_patsparse.nn import SparseLinear
    lin = torch.nn.Linear(4, 1).half()
    with torch.no_grad():
        lin.weight.copy_(big.view(1, 4))
    with pytest.raises(ValueError, match="its level 3 x .* overflows torch.float16"):
        SparseLinear.from_dense(lin, bits=3)


@pytest.mark.parametrize("dist", ["normal", "heavy"])
def test_large_tensors_are_on_the_nearest_level_of_their_scale(dist):
    """Above ~16k nonzeros the scale was polished on all weights for at most 10 rounds and the codes
    were those of the previous scale: some weights were not on their nearest level."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(64, 64, 3, 3, generator=g)
    if dist == "heavy":
        w = w ** 3
    for bits in (6, 8):
        codes, scale = quant.quantize_params(w, bits)
        nearest = (w.double() / scale).round().clamp(-quant.levels(bits), quant.levels(bits))
        assert torch.equal(codes.double(), nearest), bits
