"""Projections: feasibility, idempotence, optimality against brute force, errors, dtypes."""
from itertools import combinations

import pytest
import torch

from torch_patsparse import PatternSet
from torch_patsparse import project as P

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def randw(*shape, seed=0, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)


def kept_kernels(w):
    return w.ne(0).flatten(2).any(-1)  # [Cout, Cin] bool


# -- pattern ----------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pattern_feasible_optimal_idempotent(device, dtype):
    w = randw(5, 6, 3, 3, dtype=dtype, device=device)
    ps = PatternSet.select(w, k=6)
    out = P.pattern(w, ps)
    ids = P.assign_patterns(w, ps)
    assert out.shape == w.shape and out.dtype == dtype and out.device == w.device
    assert ids.dtype == torch.long and ids.shape == (5, 6)
    masks = ps.masks.to(device)[ids]
    assert torch.equal(out, torch.where(masks, w, torch.zeros_like(w)))  # kept values unchanged
    assert out.ne(0).flatten(2).sum(-1).eq(4).all()
    # brute force: every kernel keeps the largest energy any pattern could keep, lowest id on ties
    e = (w.double() ** 2).flatten(2).cpu()
    for o in range(5):
        for i in range(6):
            kept = [float(e[o, i][ps.masks[p].flatten()].sum()) for p in range(ps.k)]
            assert ids[o, i].item() == max(range(ps.k), key=lambda p: (kept[p] - 1e-12 * p))
    assert torch.equal(P.pattern(out, ps), out)


def test_pattern_ties_lowest_id():
    ps = PatternSet.candidates()
    w = torch.ones(2, 3, 3, 3)
    assert P.assign_patterns(w, ps).eq(0).all()
    assert torch.equal(P.pattern(w, ps)[0, 0], ps.masks[0].float())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("group", [2, 3, 7, 10])
def test_pattern_group(device, group):
    w = randw(7, 4, 3, 3, seed=1, device=device)  # with G=3 the last group has one channel
    ps = PatternSet.select(w, k=5)
    ids = P.assign_patterns(w, ps, group=group)
    out = P.pattern(w, ps, group=group)
    assert torch.equal(out, torch.where(ps.masks.to(device)[ids], w, torch.zeros_like(w)))
    e = (w.double() ** 2).flatten(2).cpu()
    m = ps.masks.view(ps.k, 9).double()
    for g0 in range(0, 7, group):
        g = slice(g0, g0 + group)
        assert ids[g].eq(ids[g0]).all()  # one pattern per (group, input channel)
        best = (e[g] @ m.t()).sum(0).argmax(-1)  # brute force over the group, per input channel
        assert torch.equal(ids[g0].cpu(), best)
    assert torch.equal(P.pattern(out, ps, group=group), out)
    assert torch.equal(P.assign_patterns(w, ps, group=1), P.assign_patterns(w, ps))


# -- connectivity -----------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_connectivity_count_optimal_idempotent(device):
    w = randw(2, 3, 3, 3, seed=2, device=device)
    e = (w.double() ** 2).sum((2, 3)).flatten().cpu()
    for keep, count in [(0.5, 3), (3, 3), (1, 1), (0.01, 1), (1.0, 6), (6, 6)]:
        out = P.connectivity(w, keep)
        kept = kept_kernels(out)
        assert kept.sum() == count
        assert torch.equal(out, torch.where(kept[:, :, None, None], w, torch.zeros_like(w)))
        best = max(sum(e[list(s)]) for s in combinations(range(6), count))
        assert float(e[kept.flatten().cpu()].sum()) == pytest.approx(float(best), rel=1e-12)
        assert torch.equal(P.connectivity(out, keep), out)


@pytest.mark.parametrize("group", [2, 3])
def test_connectivity_group(group):
    w = randw(5, 4, 3, 3, seed=3)
    n_groups = -(-5 // group)
    out = P.connectivity(w, 0.5, group=group)
    kept = kept_kernels(out)
    pairs = kept[::group]  # first filter of each group
    assert pairs.sum() == round(0.5 * n_groups * 4)
    for g0 in range(0, 5, group):
        assert kept[g0:g0 + group].eq(kept[g0]).all()
    e = (w.double() ** 2).sum((2, 3))
    score = torch.stack([e[g0:g0 + group].sum(0) for g0 in range(0, 5, group)]).flatten()
    count = int(pairs.sum())
    best = max(float(score[list(s)].sum()) for s in combinations(range(score.numel()), count))
    assert float(score[pairs.flatten()].sum()) == pytest.approx(best, rel=1e-12)
    assert torch.equal(P.connectivity(out, count, group=group), out)


# -- unstructured / filter / channel ----------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(10,), (4, 5), (3, 2, 3, 3)])
def test_unstructured(device, shape):
    w = randw(*shape, seed=4, device=device)
    out = P.unstructured(w, 0.3)
    n = round(0.3 * w.numel())
    assert out.ne(0).sum() == n and out.shape == w.shape
    assert torch.equal(out.abs().flatten().sort().values[-n:], w.abs().flatten().sort().values[-n:])
    assert torch.equal(out[out != 0], w[out != 0])
    assert torch.equal(P.unstructured(out, n), out)


@pytest.mark.parametrize("which,dim", [("filter", 0), ("channel", 1)])
def test_filter_channel(which, dim):
    proj = getattr(P, which)
    w = randw(5, 6, 3, 3, seed=5)
    size = w.shape[dim]
    energy = (w.double() ** 2).transpose(0, dim).flatten(1).sum(1)
    for keep in (0.4, 2, 1.0):
        out = proj(w, keep)
        kept = out.transpose(0, dim).flatten(1).ne(0).any(1)
        count = kept.sum().item()
        assert count == (keep if isinstance(keep, int) else round(keep * size))
        mask = kept.view((-1,) + (1,) * (3 - dim)) if dim == 0 else kept.view(1, -1, 1, 1)
        assert torch.equal(out, torch.where(mask, w, torch.zeros_like(w)))
        best = max(float(energy[list(s)].sum()) for s in combinations(range(size), count))
        assert float(energy[kept].sum()) == pytest.approx(best, rel=1e-12)
        assert torch.equal(proj(out, keep), out)
    assert proj(torch.randn(4, 3), 2).shape == (4, 3)


def test_input_untouched_and_non_contiguous():
    base = randw(6, 5, 3, 3, seed=6)
    w = base.transpose(0, 1)  # [5, 6, 3, 3], not contiguous
    assert not w.is_contiguous()
    before = w.clone()
    ps = PatternSet.select(w, k=4)
    wc = w.contiguous()
    for f in (lambda x: P.pattern(x, ps), lambda x: P.pattern(x, ps, group=2),
              lambda x: P.connectivity(x, 0.3, group=2), lambda x: P.unstructured(x, 0.2),
              lambda x: P.filter(x, 2), lambda x: P.channel(x, 3),
              lambda x: P.quantize(x, 3), lambda x: P.quantize(x, 3, "pow2")):
        assert torch.equal(f(w), f(wc))
    assert torch.equal(w, before)


# -- quantize ---------------------------------------------------------------------------------
def levels(bits, scheme, smallest=None):
    """All levels for q = 1 (test-side, independent of the module); pow2 levels below
    2^-smallest dropped when given (they are indistinguishable from 0 in the error)."""
    if bits == 1:
        return torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    top = 2 ** (bits - 1) - 1
    if scheme == "uniform":
        pos = torch.arange(1, top + 1, dtype=torch.float64)
    else:
        pos = 2.0 ** -torch.arange(min(top, smallest or top) - 1, -1, -1, dtype=torch.float64)
    return torch.cat([-pos.flip(0), torch.zeros(1, dtype=torch.float64), pos])


def grid_error(w, bits, scheme, qs):
    """Least squared error over the scales `qs` with nearest levels (bits=1: signs)."""
    w = w.double().flatten()
    if bits == 1:
        return ((w.abs()[None] - qs[:, None]) ** 2 * (w != 0)).sum(1).min().item()
    lv = levels(bits, scheme, smallest=60)  # sorted ascending
    r = w[None] / qs[:, None]  # [q, n]
    i = torch.searchsorted(lv, r).clamp(1, lv.numel() - 1)  # nearest level: lv[i-1] or lv[i]
    d = torch.minimum((r - lv[i - 1]).abs(), (r - lv[i]).abs())
    return ((d * qs[:, None]) ** 2).sum(1).min().item()


def weights_zoo():
    g = torch.Generator().manual_seed(7)
    gauss = torch.randn(300, generator=g)
    lap = torch.distributions.Laplace(0.0, 1.0).sample((300,))
    sparse = torch.where(torch.rand(300, generator=g) < 0.5, torch.zeros(300), gauss)
    return {"gauss": gauss, "laplace": lap, "uniform": torch.rand(300, generator=g) - 0.5,
            "sparse": sparse}


@pytest.mark.parametrize("scheme", ["uniform", "pow2"])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_quantize_feasible_and_optimal(bits, scheme):
    torch.manual_seed(0)
    for name, w in weights_zoo().items():
        out = P.quantize(w, bits, scheme)
        codes, q = P.quantize_params(w, bits, scheme)
        assert codes.dtype == torch.int8 and codes.shape == w.shape and q > 0
        assert torch.equal(P.dequantize(codes, q, scheme), out)
        assert torch.equal(out[w == 0], torch.zeros_like(out[w == 0]))  # zeros stay zero
        if bits == 1:
            assert torch.equal(codes, torch.sign(w).to(torch.int8))
        # values on levels: out / q is (to rounding) one of the levels for q = 1
        lv = levels(bits, scheme)
        ratio = out.double() / q
        assert ((ratio[:, None] - lv).abs().min(1).values < 1e-6 * (1 + ratio.abs())).all(), name
        # nearest levels for the chosen scale (bits=1: the sign, checked above)
        err = ((w.double() - out.double()) ** 2).sum()
        if bits > 1:
            err_nearest = ((w.double()[:, None] - q * lv) ** 2).min(1).values.sum()
            assert err == pytest.approx(float(err_nearest), rel=1e-5, abs=1e-9)
        # optimal scale: a dense grid search never beats it by more than 1e-3 relative
        amax = w.abs().max().double()
        top = 2 ** (bits - 1) - 1 if scheme == "uniform" and bits > 1 else 1
        qs = amax / top * torch.logspace(-1.2, 0.4, 2000, dtype=torch.float64)
        assert float(err) <= grid_error(w, bits, scheme, qs) * (1 + 1e-3) + 1e-12, name
        # idempotent (up to float32 rounding of the scale)
        torch.testing.assert_close(P.quantize(out, bits, scheme), out, rtol=1e-6, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_quantize_dtype_device(device, dtype):
    w = randw(4, 3, 3, 3, seed=8, dtype=dtype, device=device)
    for scheme in ("uniform", "pow2"):
        out = P.quantize(w, 4, scheme)
        assert out.dtype == dtype and out.device == w.device and out.shape == w.shape
        codes, q = P.quantize_params(w, 4, scheme)
        assert codes.device == w.device
        assert torch.equal(P.dequantize(codes, q, scheme, dtype=dtype), out)
        assert out.unique().numel() <= 15


def test_quantize_pow2_codes():
    w = torch.tensor([2.0, -1.0, 0.5, 0.0, -2.0, 1.0])  # exactly on 3-bit levels 2 * {1, 1/2, 1/4}
    codes, scale = P.quantize_params(w, 3, "pow2")
    assert scale == 2.0 and codes.tolist() == [1, -2, 3, 0, -1, 2]
    out = P.dequantize(torch.tensor([1, -2, 3, 0], dtype=torch.int8), 2.0, "pow2")
    assert out.tolist() == [2.0, -1.0, 0.5, 0.0]


def test_quantize_all_zero_and_errors():
    z = torch.zeros(3, 3)
    for scheme in ("uniform", "pow2"):
        for bits in (1, 4):
            out = P.quantize(z, bits, scheme)
            assert torch.equal(out, z)
            codes, q = P.quantize_params(z, bits, scheme)
            assert not codes.any() and q == 0.0
    w = torch.randn(5)
    for bits in (0, 9, 2.0, True):
        with pytest.raises(ValueError):
            P.quantize(w, bits)
    with pytest.raises(ValueError):
        P.quantize(w, 4, "log")
    with pytest.raises(ValueError):
        P.dequantize(torch.zeros(3, dtype=torch.int8), 1.0, "log")
    with pytest.raises(ValueError):
        P.quantize(torch.tensor([1.0, float("nan")]), 4)


# -- errors -----------------------------------------------------------------------------------
def test_errors():
    w = torch.randn(4, 3, 3, 3)
    ps = PatternSet.candidates()
    for bad in (torch.randn(4, 3, 5, 5), torch.randn(4, 9), torch.randn(2, 4, 3, 3, 3)):
        with pytest.raises(ValueError):
            P.pattern(bad, ps)
        with pytest.raises(ValueError):
            P.connectivity(bad, 0.5)
    with pytest.raises(ValueError):
        P.pattern(w, ps.positions)  # a PatternSet is required
    for bad in (0.0, -0.1, 1.5, 0, 13, -1, True, "0.5", None):
        with pytest.raises(ValueError):
            P.connectivity(w, bad)
    for bad in (0, 2.5, -1):
        with pytest.raises(ValueError):
            P.pattern(w, ps, group=bad)
    for f, n in ((P.unstructured, 108), (P.filter, 4), (P.channel, 3)):
        assert f(w, n).shape == w.shape
        for bad in (0.0, 1.01, 0, n + 1):
            with pytest.raises(ValueError):
                f(w, bad)
    with pytest.raises(ValueError):
        P.channel(torch.randn(5), 1)


def test_filter_projection_takes_what_the_filter_constraint_takes():
    with pytest.raises(ValueError):
        P.filter(torch.randn(8), 0.5)  # as constraints.Filter (min_dim 2) and P.channel


@pytest.mark.parametrize("shape", [(10, 6), (8, 5, 1, 1), (12, 3, 3, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_unstructured_in_groups_keeps_one_support_per_group(shape, dtype):
    """group=G: the G consecutive rows of a group keep the same positions, those of the largest summed
    energy (brute force over the (group, position) pairs), keep counting pairs; the last group may be short."""
    g = torch.Generator().manual_seed(sum(shape))
    w = torch.randn(shape, generator=g).to(dtype)
    out = P.unstructured(w, 0.3, group=4)
    rows = w.shape[0]
    flat, kept = w.double().reshape(rows, -1), (out != 0).reshape(rows, -1)
    groups = [list(range(s, min(s + 4, rows))) for s in range(0, rows, 4)]
    score = torch.stack([flat[gr].pow(2).sum(0) for gr in groups])  # [groups, row]
    count = max(1, round(0.3 * score.numel()))
    want = torch.zeros_like(score, dtype=torch.bool).view(-1)
    want[score.view(-1).sort(descending=True, stable=True).indices[:count]] = True
    want = want.view(score.shape)
    for i, gr in enumerate(groups):
        assert torch.equal(kept[gr], want[i].expand(len(gr), -1)), i
    assert torch.equal(out[out != 0], w[out != 0])
    assert torch.equal(P.unstructured(w, 0.3, group=1), P.unstructured(w, 0.3))
    with pytest.raises(ValueError, match="group must be an int >= 1"):
        P.unstructured(w, 0.3, group=0)
    with pytest.raises(ValueError, match="at least 2 dimension"):
        P.unstructured(w.reshape(-1), 0.3, group=4)
