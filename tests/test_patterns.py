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
