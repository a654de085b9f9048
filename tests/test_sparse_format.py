"""sparse_format.py, decode with full validation of the sparse stored form: corrupt indices, lengths,
widths, codes, header fields and bitmaps are clear errors (through SparseLinear.load_state_dict, the
path a user takes) and random garbage never crashes decode (encoding and round trips through the
modules: test_sparse_storage.py)."""
import pytest
import torch

from torch_patsparse import bitpack
from torch_patsparse.nn import SparseLinear
from torch_patsparse.sparse_format import _header_widths, decode

from helpers import linear_with, pruned_on_grid


def good_sd(levels=3, keep=0.05, shape=(40, 200)):
    s = SparseLinear.from_dense(linear_with(pruned_on_grid(shape, keep, levels=levels)))
    return s, {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.state_dict().items()}


def load_into_fresh(sd, shape=(40, 200)):
    m = SparseLinear(shape[1], shape[0])
    m.load_state_dict(sd)
    return m


def test_corrupt_index_out_of_range():
    w = torch.zeros(4, 8)
    w[3, 7] = 1.0  # last position: relative symbol 31 or bitmap
    s = SparseLinear.from_dense(linear_with(w))
    sd = s.state_dict()
    # a bitmap / relative index that points past the end, or with too many entries
    bad = dict(sd)
    bad["index"] = torch.full_like(sd["index"], 0xFF)
    with pytest.raises(RuntimeError, match="invalid compressed weight"):
        SparseLinear(8, 4).load_state_dict(bad)
    # relative index pointing beyond numel
    w2 = torch.zeros(40, 200)
    w2[39, 199] = 1.0
    w2[0, 3] = 1.0
    s2 = SparseLinear.from_dense(linear_with(w2))
    assert s2.index_kind.startswith("relative")
    sd2 = dict(s2.state_dict())
    idx = bitpack.unpack(sd2["index"], _nsym(s2), int(s2.index_kind[8:]))
    esc = (1 << int(s2.index_kind[8:])) - 1
    idx[-1] = esc - 1  # last gap larger: position beyond numel
    idx2 = idx.clone()
    sd2["index"] = bitpack.pack(idx2, int(s2.index_kind[8:]))
    with pytest.raises(RuntimeError, match="invalid compressed weight"):
        load_into_fresh(sd2)


def _nsym(s):
    return s._fields()[5]


def test_corrupt_lengths_and_widths():
    s, sd = good_sd()
    for key, bad in [("codes", sd["codes"][:-1]), ("codes", torch.cat([sd["codes"], sd["codes"][:1]])),
                     ("index", sd["index"][:-1]), ("header", sd["header"][:-1]),
                     ("codes", sd["codes"].to(torch.int32)), ("scale", torch.zeros(1)),
                     ("scale", torch.tensor([float("nan")])), ("scale", torch.ones(2)),
                     ("values", torch.ones(3)), ("index", sd["index"].view(1, -1))]:
        corrupt = dict(sd)
        corrupt[key] = bad
        with pytest.raises(RuntimeError, match="invalid compressed weight"):
            load_into_fresh(corrupt)
    corrupt = dict(sd)
    del corrupt["codes"]
    with pytest.raises(RuntimeError, match="invalid compressed weight"):
        load_into_fresh(corrupt)
    # the good one still loads
    assert torch.equal(load_into_fresh(sd).to_dense().weight, s.to_dense().weight)


def test_corrupt_code_out_of_range():
    # 3-bit codes name 6 levels; symbols 6 and 7 are invalid
    s, sd = good_sd(levels=3)
    codes = bitpack.unpack(sd["codes"], s.nnz, 3)
    codes[0] = 7
    sd["codes"] = bitpack.pack(codes, 3)
    with pytest.raises(RuntimeError, match="out of range"):
        load_into_fresh(sd)


def test_corrupt_header_nnz_mismatch():
    s, sd = good_sd()
    f = s._fields()
    widths = _header_widths(40 * 200)
    assert bitpack.unpack_fields(sd["header"], widths) == f
    for i, delta in [(4, 1), (4, -1), (3, 1), (3, -1), (5, 1), (5, -1), (1, 1)]:
        g = list(f)
        g[i] += delta
        corrupt = dict(sd)
        corrupt["header"] = bitpack.pack_fields(g, widths)
        with pytest.raises(RuntimeError, match="invalid compressed weight"):
            load_into_fresh(corrupt)


def test_corrupt_bitmap_count():
    s, sd = good_sd(levels=None, keep=0.7, shape=(40, 200))
    assert s.index_kind == "bitmap"
    idx = sd["index"].clone()
    idx[0] ^= 0x1  # one more / one fewer set bit than nnz
    sd["index"] = idx
    with pytest.raises(RuntimeError, match="invalid compressed weight"):
        load_into_fresh(sd)


def test_decode_fuzz_never_crashes():
    """Random garbage in every array: a ValueError or a valid weight, nothing else."""
    s, sd = good_sd()
    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        arrays = {k: v.clone() for k, v in sd.items() if k not in ("bias", "_extra_state")}
        key = ["header", "index", "codes"][trial % 3]
        if arrays[key].numel():
            i = int(torch.randint(0, arrays[key].numel(), (1,), generator=g))
            arrays[key][i] = int(torch.randint(0, 256, (1,), generator=g))
        try:
            w = decode(arrays, torch.Size([40, 200]))
        except ValueError:
            continue
        assert w.shape == (40, 200)
