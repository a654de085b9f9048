"""The three constraint methods of ps.ADMM (method="admm" | "oneshot" | "gradual"): constraints kept
exactly through hard prune and masked retraining, bit-exact resume, the gradual keep schedule, ADMM
residuals / residual balancing, and ADMM converging on a convex toy problem with a known optimum."""
import copy
import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torch_patsparse as ps
from torch_patsparse import constraints as C
from torch_patsparse import project
from torch_patsparse.admm import _scheduled

from helpers import CONV_SPEC, FC_SPEC, batch, check_in_set, in_pattern_set, tiny_net, train

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


PHASE = 12  # constraint-phase steps


def make(model, method, base=torch.optim.SGD, **kw):
    kw.setdefault("lr", 0.05 if base is torch.optim.SGD else 0.01)
    if base is torch.optim.SGD:
        kw.setdefault("momentum", 0.9)
    spec = [(r"[03]\.weight", CONV_SPEC), (r"8\.weight", FC_SPEC)]
    return ps.ADMM.from_model(model, spec, base=base, method=method, phase_steps=PHASE, update_every=4, **kw)


def test_bad_method_arguments():
    m = tiny_net()
    with pytest.raises(ValueError, match="method must be one of"):
        ps.ADMM(m.parameters(), lr=0.1, method="magnitude")
    with pytest.raises(ValueError, match="needs phase_steps"):
        ps.ADMM(m.parameters(), lr=0.1, method="gradual")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="phase_steps"):
            ps.ADMM(m.parameters(), lr=0.1, phase_steps=bad)
    opt = make(m, "gradual")
    with pytest.raises(RuntimeError, match="only for method='admm'"):
        opt.admm_update()


@pytest.mark.parametrize("method", ["admm", "oneshot", "gradual"])
@pytest.mark.parametrize("base", [torch.optim.SGD, torch.optim.Adam], ids=["sgd", "adam"])
def test_constraints_exact_after_hard_prune_and_retraining(method, base):
    m = tiny_net()
    opt = make(m, method, base=base, weight_decay=1e-3)
    train(m, opt, PHASE)
    assert opt.phase == {"admm": "admm", "oneshot": "retrain", "gradual": "gradual"}[method]
    opt.hard_prune()
    assert opt.phase == "retrain"
    pset = opt.pattern_sets()[0]
    masks = opt.masks()
    named = dict(m.named_parameters())
    pruned = {n: named[n].detach().clone() for n in masks}
    train(m, opt, 15, start=PHASE)
    for n, mask in masks.items():
        p = named[n].detach()
        assert not p[~mask].any(), n
        assert torch.isin(p, opt._admm[named[n]].levels).all(), n
        assert not torch.equal(p, pruned[n]), n  # retraining moves them (straight-through estimator)
        cons = CONV_SPEC if n != "8.weight" else FC_SPEC
        for c in cons:
            check_in_set(c, p, pset)
    for n in ("0.weight", "3.weight"):
        assert in_pattern_set(named[n].detach(), pset)
    assert all(v == 0.0 for v in opt.residuals().values())


def test_oneshot_is_the_projection_of_the_starting_weights():
    m = tiny_net()
    w0 = m[3].weight.detach().clone()
    opt = make(m, "oneshot")
    opt.hard_prune()  # what the first step() does; callable before it, as here
    pset = opt.pattern_sets()[0]
    proj = project.quantize(project.connectivity(project.pattern(w0, pset), 0.5), 4)
    torch.testing.assert_close(m[3].weight.detach(), proj, rtol=1e-6, atol=1e-7)
    m2 = tiny_net()
    o2 = make(m2, "oneshot")
    train(m2, o2, 1)
    assert o2.phase == "retrain" and o2.pattern_sets()[0] == pset


@pytest.mark.parametrize("method", ["oneshot", "gradual"])
def test_kept_weights_that_are_zero_at_the_prune_still_train(method):
    """The mask is the support the projection keeps, not the nonzeros: a zero-initialised layer
    pruned at the first step (oneshot) trains its kept half, and a 3x3 conv its kept kernels."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
    m = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 5))
    nn.init.zeros_(m[2].weight)
    opt = ps.ADMM.from_model(m, {r"2\.weight": [C.Unstructured(keep=0.5)]}, method=method, phase_steps=4, lr=0.1)
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    opt.hard_prune()  # (gradual: the end of its phase)
    mask = opt.masks()["2.weight"]
    assert int(mask.sum()) == 80 and int((m[2].weight != 0).sum()) == 80
    assert not m[2].weight[~mask].any()
    conv = nn.Conv2d(3, 8, 3, padding=1)
    nn.init.zeros_(conv.weight)
    opt = ps.ADMM.from_model(nn.Sequential(conv), {r"0\.weight": [C.Pattern(k=4), C.Connectivity(keep=0.5)]},
                             method="oneshot", lr=0.1)
    xx = torch.randn(4, 3, 8, 8)
    for _ in range(5):
        opt.zero_grad()
        conv(xx).pow(2).mean().neg().backward()
        opt.step()
    nz = (conv.weight != 0).sum((2, 3))
    assert int((nz > 0).sum()) == 12 and set(nz[nz > 0].tolist()) == {4}


def test_quantizing_an_all_zero_weight_warns():
    m = nn.Sequential(nn.Linear(8, 4))
    nn.init.zeros_(m[0].weight)
    opt = ps.ADMM.from_model(m, {r"0\.weight": [C.Quantize(bits=4)]}, method="oneshot", lr=0.1)
    with pytest.warns(RuntimeWarning, match="'0.weight' is all zero"):
        opt.hard_prune()


def test_gradual_keep_follows_the_cubic_schedule():
    m = tiny_net()
    opt = ps.ADMM([{"params": [m[3].weight], "constraints": [C.Pattern(k=4), C.Connectivity(keep=0.25)],
                    "names": ["w"]}], lr=0.05, method="gradual", phase_steps=PHASE, update_every=4)
    n = m[3].weight.shape[0] * m[3].weight.shape[1]
    for t in range(PHASE):
        train(m, opt, 1, start=t)
        if t % 4 == 0:  # the mask update at step t ran before that step
            keep = 0.25 + 0.75 * (1 - t / PHASE) ** 3
            kept = int((m[3].weight.detach().reshape(n, 9) != 0).any(1).sum())
            assert kept <= max(1, round(keep * n)), (t, kept)
            assert kept >= round(keep * n) - 2, (t, kept)  # (a kernel may train to exactly zero only by chance)
    assert in_pattern_set(m[3].weight.detach(), opt.pattern_sets()[0])
    opt.hard_prune()
    assert int((m[3].weight.detach().reshape(n, 9) != 0).any(1).sum()) <= round(0.25 * n)
    # int counts decay too, never below the target
    c = _scheduled(C.Connectivity(keep=10), (16, 8, 3, 3), 0.5)
    assert c.keep == 10 + round((128 - 10) * 0.5)
    assert _scheduled(C.Connectivity(keep=10), (16, 8, 3, 3), 0.0).keep == 10
    assert _scheduled(C.Quantize(bits=3), (4, 4), 0.7) == C.Quantize(bits=3)


def test_gradual_masks_the_gradient_the_loop_sees():
    """Between gradual pruning's mask updates the step trains masked; the gradient a loop clips / logs
    between backward() and step() was not (clip_grad_norm_ saw a larger norm than after hard_prune)."""
    m = tiny_net()
    opt = make(m, "gradual")
    for t in range(PHASE + 2):
        x, y = batch(t)
        if t == PHASE:
            opt.hard_prune()
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        for name, mask in opt.masks().items() if opt.phase == "retrain" else (
                (n, opt._admm[p].mask) for n, p in m.named_parameters() if p in opt._admm):
            g = dict(m.named_parameters())[name].grad
            if mask is None:
                assert t == 0  # before the first mask update nothing is pruned
            else:
                assert g[~mask].abs().sum() == 0 and g[mask].abs().sum() > 0, (t, name)
        opt.step()


@pytest.mark.parametrize("method", ["admm", "oneshot", "gradual"])
def test_exact_resume_each_method(method):
    N, hp = 22, PHASE + 2

    def run(model, opt, start, stop):
        for i in range(start, stop):
            if i == hp:
                opt.hard_prune()
            train(model, opt, 1, start=i)

    m1 = tiny_net()
    o1 = make(m1, method, balance=(method == "admm"))
    run(m1, o1, 0, N)
    for k in (5, hp + 3):
        m2 = tiny_net()
        o2 = make(m2, method, balance=(method == "admm"))
        run(m2, o2, 0, k)
        buf = io.BytesIO()
        torch.save({"model": m2.state_dict(), "opt": o2.state_dict()}, buf)
        buf.seek(0)
        ck = torch.load(buf, weights_only=True)
        m3 = tiny_net(seed=7)
        o3 = make(m3, "admm")  # the method (and its hyper-parameters) come from the state_dict
        m3.load_state_dict(ck["model"])
        o3.load_state_dict(ck["opt"])
        assert o3.method == method and o3.phase == o2.phase
        run(m3, o3, k, N)
        for (n, a), b in zip(m1.state_dict().items(), m3.state_dict().values()):
            assert torch.equal(a, b), (method, k, n)
        assert o1.pattern_sets() == o3.pattern_sets()


# ---------------------------------------------------------------- ADMM: residuals, balancing, convergence
@pytest.mark.parametrize("penalty", ["gradient", "proximal"])
def test_residual_balancing_moves_rho_the_right_way_and_rescales_u(penalty):
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 3, 3, 3))
    cons = [C.Connectivity(keep=0.5), C.Quantize(bits=3)]
    opt = ps.ADMM([{"params": [w], "constraints": cons, "names": ["w"]}], lr=0.1, rho=1.0, rho_growth=1.0,
                  rho_max=100.0, penalty=penalty, balance=True, update_every=1000,
                  **({"rho_scale": "none"} if penalty == "gradient" else {}))
    # W off the set, Z = Proj(W) does not move: primal >> dual -> rho doubles, U rescaled by 1/2
    opt.admm_update()
    st = opt._admm[w]
    assert opt.dual_residuals()["w"] == 0.0 and opt.residuals()["w"] > 0
    assert st.rho == 2.0
    z = project.quantize(project.connectivity(w.detach(), 0.5), 3)
    torch.testing.assert_close(st.U, (w.detach() - z) * 0.5)
    # W on the set, Z far from it: dual >> primal -> rho halves
    with torch.no_grad():
        w.copy_(z)
    st.U.zero_()
    st.Z = torch.zeros_like(z)
    opt.admm_update()
    assert opt.residuals()["w"] == 0.0 and opt.dual_residuals()["w"] > 0
    assert st.rho == 1.0


def test_rho_schedule_tied_to_the_phase():
    m = tiny_net()
    opt = make(m, "admm", rho=0.5, rho_max=8.0)  # 12 steps / update_every 4 = 3 updates: 0.5 -> 2 -> 8
    assert opt.rho_growth == pytest.approx(4.0)
    assert make(tiny_net(), "admm", rho=0.5, rho_max=8.0, rho_growth=1.5).rho_growth == 1.5
    assert ps.ADMM(m.parameters(), lr=0.1).rho_growth == 1.3  # no phase length: the classic default


@pytest.mark.parametrize("penalty,balance,rho_scale", [("gradient", False, "grad"), ("gradient", True, "grad"),
                                                       ("gradient", True, "none"), ("proximal", False, None),
                                                       ("proximal", True, None)])
def test_admm_converges_on_a_convex_least_squares_fit_with_known_optimum(penalty, balance, rho_scale):
    """min ||A vec(W) - b||^2 over W in (pattern ∘ quantize): b = A vec(W*) with W* in the set, so W*
    is the optimum (loss 0); A is well conditioned. ADMM with the defaults (relative rho, the schedule
    of the phase) must end on W*: residuals ~ 0, and the hard prune lands exactly on it."""
    g = torch.Generator().manual_seed(0)
    pset = ps.PatternSet.select([torch.randn(8, 4, 3, 3, generator=g)], k=4)
    codes = torch.randint(-3, 4, (8, 4, 3, 3), generator=g).float()
    codes[codes == 0] = 1
    w_star = project.pattern(codes, pset) * 0.1  # on levels 0.1 * {-3..3} (3-bit), in the pattern set
    n = w_star.numel()
    A = torch.eye(n) + 0.3 * torch.randn(n, n, generator=g) / n ** 0.5
    b = A @ w_star.reshape(-1)
    w = nn.Parameter(w_star + 0.05 * torch.randn(w_star.shape, generator=g))
    steps = 600
    opt = ps.ADMM([{"params": [w], "constraints": [C.Pattern(k=4), C.Quantize(bits=3)], "names": ["w"]}],
                  base=torch.optim.SGD, lr=0.1, momentum=0.5, update_every=20, phase_steps=steps, balance=balance,
                  rho_scale=rho_scale, penalty=penalty)
    opt._pattern_sets[0] = pset  # the set W* lives in (selection from noisy W would pick the same shapes)
    for _ in range(steps):
        opt.zero_grad()
        ((A @ w.reshape(-1) - b) ** 2).sum().backward()
        opt.step()
    assert opt.residuals()["w"] < 0.02 and opt.dual_residuals()["w"] < 0.02
    opt.hard_prune()
    torch.testing.assert_close(w.detach(), w_star, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the proximal W-step (the default)
def test_proximal_rejects_gradient_only_settings_and_defaults_follow_the_penalty():
    m = tiny_net()
    with pytest.raises(ValueError, match="rho_scale applies to penalty='gradient' only"):
        ps.ADMM(m.parameters(), lr=0.1, rho_scale="none")
    with pytest.raises(ValueError, match="penalty must be one of"):
        ps.ADMM(m.parameters(), lr=0.1, penalty="l1")
    prox, grad = ps.ADMM(m.parameters(), lr=0.1), ps.ADMM(m.parameters(), lr=0.1, penalty="gradient")
    assert (prox.rho, prox.rho_max, grad.rho, grad.rho_max, grad.rho_scale) == (0.01, 2.0, 1.0, 20.0, "grad")
    assert ps.ADMM(m.parameters(), lr=0.1, rho=30.0).rho_max == 30.0  # rho_max never below a given rho


@pytest.mark.parametrize("base", [torch.optim.SGD, torch.optim.Adam], ids=["sgd", "adam"])
@pytest.mark.parametrize("bn", [True, False], ids=["bn", "no-bn"])
def test_proximal_defaults_drive_the_weights_onto_the_set(base, bn):
    """One set of defaults (no rho given; the phase length given) for SGD and Adam, with and without
    BatchNorm: the residuals shrink to a small fraction of their peak by the end of the phase (the
    hard prune changes little) while the loss still fell."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 3, 6, 6, generator=g)
    Y = (X[:, 0].mean((1, 2)) > 0).long() + 2 * (X[:, 1].mean((1, 2)) > 0).long()
    m = tiny_net()
    if not bn:
        m[1] = m[4] = nn.Identity()
    steps = 320
    opt = ps.ADMM.from_model(m, [(r"[03]\.weight", CONV_SPEC), (r"8\.weight", FC_SPEC)], base=base,
                             lr=0.02 if base is torch.optim.SGD else 2e-3, phase_steps=steps, update_every=40,
                             **({"momentum": 0.9} if base is torch.optim.SGD else {}))
    losses, peak = [], 0.0
    for i in range(steps):
        j = i % 4 * 16
        opt.zero_grad()
        loss = F.cross_entropy(m(X[j:j + 16]), Y[j:j + 16])
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if (i + 1) % 40 == 0:
            peak = max(peak, *opt.residuals().values())
    final = max(opt.residuals().values())
    assert final < 0.15 and final < 0.25 * peak, (final, peak)
    assert sum(losses[-16:]) < sum(losses[:16])


@pytest.mark.parametrize("method", ["oneshot", "gradual"])
@pytest.mark.parametrize("when", ["first_step", "retraining"])
def test_a_nan_gradient_at_a_masked_step_is_refused_before_anything_changes(method, when):
    """Masks and levels hid a NaN gradient: with Pattern + Quantize every weight became one finite level,
    pruned entries NaN * 0 = NaN. Refused as method="admm" refuses NaN at its Z update, weights and
    optimizer state as they were."""
    m = tiny_net()
    opt = make(m, method)
    if when == "retraining":
        train(m, opt, 2)
        opt.hard_prune()
    x, y = batch(7)
    opt.zero_grad()
    F.cross_entropy(m(x), y).backward()
    m[3].weight.grad[0, 0, 0, 0] = float("nan")
    before = io.BytesIO()
    torch.save((m.state_dict(), opt.state_dict()), before)
    with pytest.raises(ValueError, match=r"gradient of parameter '3\.weight' contains NaN/Inf at a masked step"):
        opt.step()
    after = io.BytesIO()
    torch.save((m.state_dict(), opt.state_dict()), after)
    assert before.getvalue() == after.getvalue()


@pytest.mark.parametrize("method", ["admm", "oneshot", "gradual"])
def test_hard_prune_of_nan_weights_names_hard_prune(method):
    m = tiny_net()
    opt = make(m, method)
    with torch.no_grad():
        m[0].weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"parameter '0\.weight' contains NaN/Inf at hard_prune"):
        opt.hard_prune()
    assert opt.phase == ("gradual" if method == "gradual" else "admm")


def test_a_pruned_layer_unfrozen_after_hard_prune_gets_masked_gradients():
    """A layer frozen at hard_prune() and unfrozen later (gradual unfreezing) had no gradient mask: its
    gradient between backward() and step() kept the pruned entries, as clip_grad_norm_ saw. Also in
    a copy, whose hooks are its own."""
    m = tiny_net()
    m[0].weight.requires_grad_(False)  # (from_model leaves frozen parameters out: groups by hand)
    convs = [(n, p) for n, p in m.named_parameters() if n in ("0.weight", "3.weight")]
    rest = [(n, p) for n, p in m.named_parameters() if n not in ("0.weight", "3.weight")]
    opt = ps.ADMM([{"params": convs, "constraints": CONV_SPEC}, {"params": rest}], lr=0.05, momentum=0.9,
                  method="oneshot")
    train(m, opt, 1)  # the one-shot prune
    m2, opt2 = copy.deepcopy((m, opt))
    for model, o in ((m, opt), (m2, opt2)):
        model[0].weight.requires_grad_(True)
        mask = o.masks()["0.weight"]
        x, y = batch(3)
        o.zero_grad()
        F.cross_entropy(model(x), y).backward()
        g = model[0].weight.grad
        assert g[~mask].abs().sum() == 0 and g[mask].abs().sum() > 0
        o.step()
    assert len(m[0].weight._backward_hooks) == 1  # the copy's optimizer hooked its own weight only
