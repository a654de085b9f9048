"""Tests of torch_patsparse.constraints: argument validation, composition order, serialisation."""
import pytest

from torch_patsparse import constraints as C


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, float("nan"), True, "0.5", -3])
def test_keep_out_of_range(bad):
    with pytest.raises(ValueError, match="keep"):
        C.Connectivity(keep=bad)
    with pytest.raises(ValueError, match="keep"):
        C.Unstructured(keep=bad)


@pytest.mark.parametrize("bits", [0, 9, -1, 2.0, True])
def test_bits_out_of_range(bits):
    with pytest.raises(ValueError, match="bits"):
        C.Quantize(bits=bits)
    with pytest.raises(ValueError, match="scheme"):
        C.Quantize(bits=4, scheme="log")


def test_constraint_roundtrip_and_order():
    cs = [C.Quantize(4), C.Connectivity(0.3, group=2), C.Pattern(k=8, group=2), C.Unstructured(7)]
    o = C.ordered(cs)
    assert [type(c) for c in o] == [C.Pattern, C.Connectivity, C.Unstructured, C.Quantize]
    assert [C.from_dict(C.to_dict(c)) for c in o] == o
    with pytest.raises(ValueError, match="two Pattern"):
        C.ordered([C.Pattern(), C.Pattern(k=4)], "w")
