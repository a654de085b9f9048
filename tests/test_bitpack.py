"""Tests of torch_patsparse.bitpack: fixed-width LSB-first packing of codes and header fields."""
import math

import pytest
import torch

from torch_patsparse import bitpack


@pytest.mark.parametrize("width", list(range(1, 17)))
@pytest.mark.parametrize("n", [0, 1, 3, 7, 8, 9, 13, 64, 101])
def test_bitpack_round_trip(width, n):
    g = torch.Generator().manual_seed(width * 1000 + n)
    x = torch.randint(0, 1 << width, (n,), generator=g)
    if n:
        x[0] = (1 << width) - 1  # the largest value must survive
    p = bitpack.pack(x, width)
    assert p.dtype == torch.uint8 and p.numel() == math.ceil(n * width / 8)
    assert torch.equal(bitpack.unpack(p, n, width), x)


def test_bitpack_layout_lsb_first():
    assert bitpack.pack(torch.tensor([1, 0, 3]), 2).tolist() == [0b110001]
    assert bitpack.pack(torch.tensor([5]), 3).tolist() == [5]


def test_bitpack_errors():
    with pytest.raises(ValueError):
        bitpack.pack(torch.tensor([4]), 2)
    with pytest.raises(ValueError):
        bitpack.pack(torch.tensor([-1]), 3)
    with pytest.raises(ValueError):
        bitpack.pack(torch.tensor([1]), 0)
    p = bitpack.pack(torch.tensor([1, 2, 3]), 2)
    with pytest.raises(ValueError):  # length mismatch
        bitpack.unpack(p, 5, 2)
    with pytest.raises(ValueError):  # nonzero padding bits
        bitpack.unpack(torch.tensor([0xFF], dtype=torch.uint8), 3, 2)
    with pytest.raises(ValueError):
        bitpack.unpack(p.to(torch.int32), 3, 2)


def test_pack_fields_round_trip():
    widths = [1, 4, 2, 4, 17, 17]
    vals = [1, 9, 2, 3, 100000, 5]
    assert bitpack.unpack_fields(bitpack.pack_fields(vals, widths), widths) == vals


def test_pack_refuses_non_integer_tensors():
    from torch_patsparse import bitpack
    for t in (torch.tensor([1.7, 2.9]), torch.tensor([True, False])):
        with pytest.raises(ValueError, match="integer tensor"):
            bitpack.pack(t, 2)
