"""PatternSet: construction, validation, serialisation and select()."""
import io
from itertools import combinations

import pytest
import torch

from torch_patsparse import PatternSet

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def kernel(positions, values=None):
    """3x3 kernel with `values` (default 1..n, distinct) at `positions`, zeros elsewhere."""
    k = torch.zeros(9)
    k[list(positions)] = torch.as_tensor(values if values is not None else
                                         [float(i + 1) for i in range(len(positions))])
    return k.view(3, 3)


def test_candidates():
    c = PatternSet.candidates()
    assert (c.k, c.entries, len(c)) == (56, 4, 56)
    assert (c.positions == 4).any(dim=1).all()
    assert c.positions.tolist() == [list(r) for r in combinations(range(9), 4) if 4 in r]
    assert PatternSet.candidates(4, keep_center=False).k == 126
    assert PatternSet.candidates(1).positions.tolist() == [[4]]
    assert PatternSet.candidates(2, keep_center=False).k == 36
    with pytest.raises(ValueError):
        PatternSet.candidates(0)
    with pytest.raises(ValueError):
        PatternSet.candidates(10)


def test_constructor_sorts_and_masks():
    ps = PatternSet([[4, 0, 1, 3], [8, 4, 5, 7]])
    assert ps.positions.dtype == torch.uint8
    assert ps.positions.tolist() == [[0, 1, 3, 4], [4, 5, 7, 8]]
    m = ps.masks
    assert m.dtype == torch.bool and m.shape == (2, 3, 3)
    assert m[0].tolist() == [[True, True, False], [True, True, False], [False, False, False]]
    assert m.view(2, 9).sum(1).tolist() == [4, 4]
    assert PatternSet(torch.tensor([[1, 2], [0, 8]], dtype=torch.uint8)).entries == 2
    # the set is immutable: editing a returned tensor does not change it
    ps.positions[0, 0] = 7
    assert ps.positions[0, 0] == 0


@pytest.mark.parametrize("bad", [
    [[0, 1, 2, 9]], [[-1, 0, 1, 2]], [[0, 1, 1, 4]], [[0, 1, 3, 4], [4, 3, 1, 0]],
    torch.zeros(0, 4, dtype=torch.long), torch.tensor([0, 1, 3, 4]), [[0.0, 1.0, 3.0, 4.0]],
    [[0, 1, 2, 3, 4, 5, 6, 7, 8, 0]],
])
def test_constructor_rejects(bad):
    with pytest.raises(ValueError):
        PatternSet(bad)


def test_k_limit():
    # at most C(9, 4) = 126 distinct patterns exist, so only the row count check can trip 256
    assert PatternSet(list(combinations(range(9), 4))).k == 126
    with pytest.raises(ValueError):
        PatternSet(torch.zeros(257, 1, dtype=torch.long))


def test_eq_hash_repr():
    a = PatternSet([[0, 1, 3, 4], [1, 4, 5, 7]])
    b = PatternSet([[4, 3, 1, 0], [7, 5, 4, 1]])
    c = PatternSet([[1, 4, 5, 7], [0, 1, 3, 4]])  # same patterns, other ids: a different set
    assert a == b and hash(a) == hash(b) and a != c
    assert a != PatternSet([[0, 4]]) and a != "x"
    assert len({a, b, c}) == 2
    r = repr(a)
    assert r.startswith("PatternSet(k=2, entries=4)") and "xx." in r


def test_serialisation_round_trip():
    ps = PatternSet.select(torch.randn(8, 4, 3, 3), k=6)
    t = ps.to_tensor()
    assert t.dtype == torch.uint8 and t.shape == (6, 4)
    buf = io.BytesIO()
    torch.save({"patterns": t}, buf)
    buf.seek(0)
    assert PatternSet.from_tensor(torch.load(buf)["patterns"]) == ps
    assert PatternSet.from_tensor(t.long()) == ps


def test_select_known_answer():
    cand = PatternSet.candidates().positions.tolist()
    A, B, C, D = [0, 1, 3, 4], [1, 4, 6, 8], [2, 3, 4, 5], [4, 6, 7, 8]
    # A x5, B x3, C x3 (tie with B: candidate order decides), D x1; 10 zero kernels skipped;
    # small nonzero values outside the top-4 must not matter; signs must not matter
    ks = [kernel(A, [-5., 4., 3., 9.])] * 5 + [kernel(B)] * 3 + [kernel(C)] * 3 + [kernel(D)]
    ks = [k + 0.01 * (k == 0) for k in ks] + [torch.zeros(3, 3)] * 10
    w = torch.stack(ks).view(22, 1, 3, 3)
    got = PatternSet.select(w, k=6).positions.tolist()
    bc = sorted([B, C], key=cand.index)
    rest = [r for r in cand if r not in (A, B, C, D)]
    assert got == [A] + bc + [D] + rest[:2]
    # the same kernels spread over a list of layers (different shapes) give the same answer
    assert PatternSet.select([w[:7], w[7:].reshape(3, 5, 3, 3)], k=6).positions.tolist() == got
    # the centre is forced in: a kernel whose centre is tiny still counts as a centre pattern
    big_corners = kernel([0, 2, 6, 8, 4], [9., 8., 7., 6., 0.001]).view(1, 1, 3, 3)
    assert PatternSet.select(big_corners, k=1).positions.tolist() == [[0, 2, 4, 6]]
    assert PatternSet.select(big_corners, k=1, keep_center=False).positions.tolist() == [[0, 2, 6, 8]]
    assert PatternSet.select(big_corners, k=1, entries=2).positions.tolist() == [[0, 4]]


def test_select_fills_when_few_shapes():
    ps = PatternSet.select(torch.zeros(4, 4, 3, 3), k=8)  # nothing counted: first candidates
    assert ps == PatternSet(PatternSet.candidates().positions[:8])


@pytest.mark.parametrize("device", DEVICES)
def test_select_matches_loop_reference(device):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 10, 3, 3, generator=g, dtype=torch.float64)
    w[0, :5] = 0
    wt = w.transpose(0, 1).to(device)  # non-contiguous, float64
    cand = PatternSet.candidates().positions.tolist()
    counts = [0] * len(cand)
    for k in wt.reshape(-1, 9).cpu():
        if k.abs().max() == 0:
            continue
        s = k.abs().tolist()
        s[4] = float("inf")
        top = sorted(sorted(range(9), key=lambda i: -s[i])[:4])
        counts[cand.index(top)] += 1
    order = sorted(range(len(cand)), key=lambda i: (-counts[i], i))[:8]
    assert PatternSet.select(wt, k=8).positions.tolist() == [cand[i] for i in order]


def test_select_rejects():
    w = torch.randn(2, 2, 3, 3)
    for bad in (0, 57, 2.0, True):
        with pytest.raises(ValueError):
            PatternSet.select(w, k=bad)
    with pytest.raises(ValueError):
        PatternSet.select(torch.randn(2, 2, 5, 5))
    with pytest.raises(ValueError):
        PatternSet.select(w, entries=0)


# -- cover: a set that stores every kernel exactly ---------------------------------------------
def _supports(w):
    nz = (w.reshape(-1, 9) != 0)
    return [frozenset(torch.nonzero(r).flatten().tolist()) for r in nz if r.any()]


def _covers(ps_, w):
    pats = [frozenset(r) for r in ps_.positions.tolist()]
    return all(any(s <= p for p in pats) for s in _supports(w))


def test_cover_holds_every_kernel_and_sizes_to_the_largest():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 16, 3, 3, generator=g) * (torch.rand(32, 16, 3, 3, generator=g) < 0.3)
    w.view(-1, 9)[w.view(-1, 9).ne(0).sum(1) > 4] = 0  # at most 4 nonzeros a kernel
    ps_ = PatternSet.cover(w)
    assert ps_.entries == int((w.reshape(-1, 9) != 0).sum(1).max())
    assert _covers(ps_, w)
    assert PatternSet.cover(w) == ps_  # deterministic
    assert PatternSet.cover([w[:16], w[16:]]) == ps_  # lists count together


def test_cover_sub_shapes_add_no_pattern():
    pset = PatternSet([[0, 1, 3, 4], [4, 5, 7, 8]])
    w = torch.zeros(2, 3, 3, 3)
    w[0, 0].view(9)[[0, 1, 3, 4]] = 1.0
    w[0, 1].view(9)[[4, 8]] = 2.0        # a sub-shape of pattern 1
    w[1, 2].view(9)[[1]] = 3.0           # a sub-shape of pattern 0
    assert PatternSet.cover(w, prefer=pset) == pset
    got = PatternSet.cover(w)
    assert got.entries == 4 and _covers(got, w)
    assert got.positions.tolist()[0] == [0, 1, 3, 4]  # the one full-size support first


def test_cover_extends_small_supports_centre_first():
    w = torch.zeros(1, 2, 3, 3)
    w[0, 0].view(9)[[0, 2, 6]] = 1.0
    w[0, 1].view(9)[[8]] = 1.0
    got = PatternSet.cover(w)
    assert got.entries == 3 and _covers(got, w)
    assert [0, 2, 6] in got.positions.tolist()
    assert any(4 in r and 8 in r for r in got.positions.tolist())


def test_cover_prefer_smaller_than_needed_is_not_used():
    w = torch.zeros(1, 1, 3, 3)
    w[0, 0].view(9)[[0, 1, 2, 3, 4]] = 1.0
    got = PatternSet.cover(w, prefer=PatternSet([[0, 1, 3, 4]]))
    assert got.entries == 5 and got.positions.tolist() == [[0, 1, 2, 3, 4]]
    assert PatternSet.cover(torch.zeros(2, 2, 3, 3)).k == 1


def test_cover_worst_case_fits_in_uint8_ids():
    """All C(9, 5) = 126 five-position supports (the most any E allows) plus every 4-position one:
    126 patterns, so the 256-pattern limit (uint8 ids) is never reached by cover."""
    from itertools import combinations
    w5 = torch.zeros(126, 1, 3, 3)
    for i, r in enumerate(combinations(range(9), 5)):
        w5[i, 0].view(9)[list(r)] = 1.0
    w4 = torch.zeros(126, 1, 3, 3)
    for i, r in enumerate(combinations(range(9), 4)):
        w4[i, 0].view(9)[list(r)] = 1.0
    got = PatternSet.cover([w5, w4])
    assert got.k == 126 and got.entries == 5 and _covers(got, w4)


def test_bad_pattern_sets_and_selections_are_refused_clearly():
    """Found by a docs probe: PatternSet([]) said 'must be integers, got torch.float32', PatternSet(None)
    leaked torch's dtype error, select() of nothing or of NaN weights returned an arbitrary set."""
    with pytest.raises(ValueError, match=r"\[K, E\].*got shape \(0,\)"):
        PatternSet([])
    with pytest.raises(TypeError, match="PatternSet positions must be ints.*NoneType"):
        PatternSet(None)
    with pytest.raises(TypeError, match="torch tensors.*ndarray"):
        PatternSet.select(torch.randn(2, 2, 3, 3).numpy())
    with pytest.raises(ValueError, match="no weights given"):
        PatternSet.select([])
    with pytest.raises(ValueError, match="NaN"):
        PatternSet.select(torch.full((2, 2, 3, 3), float("nan")))
