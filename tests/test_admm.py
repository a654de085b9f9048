"""Tests of torch_patsparse.ADMM (fast: tiny models, few steps); the constraint objects themselves are
tested in test_constraints.py."""
import copy
import io
import math
import os
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torch_patsparse as ps
from torch_patsparse import constraints as C
from torch_patsparse import project
from torch_patsparse.admm import _fused as fused

from helpers import CONV_SPEC, FC_SPEC, batch, check_in_set, in_pattern_set, tiny_net, train

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def make_opt(model, base=torch.optim.SGD, conv=CONV_SPEC, fc=FC_SPEC, **kw):
    kw.setdefault("lr", 0.05)
    kw.setdefault("penalty", "gradient")  # this file pins the gradient form; test_methods.py the proximal one
    if base is torch.optim.SGD:
        kw.setdefault("momentum", 0.9)
    spec = [(r"[03]\.weight", conv), (r"8\.weight", fc)]
    return ps.ADMM.from_model(model, spec, base=base, **kw)


# ---------------------------------------------------------------- constraint validation by the optimizer
def test_unknown_constraint_names_param():
    m = tiny_net()
    with pytest.raises(ValueError, match=r"unknown constraint.*'3\.weight'"):
        ps.ADMM.from_model(m, [(r"3\.weight", ["pattern"])], lr=0.1)
    with pytest.raises(ValueError, match="unknown constraint"):
        ps.ADMM([{"params": [m[0].weight], "constraints": [object()]}], lr=0.1)
    with pytest.raises(ValueError, match="is a spec: build the object with .*from_spec"):
        ps.ADMM([{"params": [m[0].weight], "constraints": [{"type": "filter", "keep": 0.5}]}], lr=0.1)


def test_pattern_on_non_3x3_names_param():
    m = tiny_net()
    with pytest.raises(ValueError, match=r"'8\.weight' has shape \[4, 16\]"):
        ps.ADMM.from_model(m, [(r"8\.weight", [C.Pattern()])], lr=0.1)
    with pytest.raises(ValueError, match=r"'group0\.0'"):
        ps.ADMM([{"params": [m[8].weight], "constraints": [C.Connectivity(0.5)]}], lr=0.1)


def test_pruning_a_converted_layer_points_at_the_dense_weight():
    m = ps.models.sparsify_random(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1)))
    converted = ps.convert(m)
    with pytest.raises(ValueError, match=r"'0\.values'.*to_dense"):
        ps.ADMM.from_model(converted, [(r"0\.values", [C.Pattern(k=8)])], lr=0.1)


def test_bad_hyperparameters():
    m = tiny_net()
    for kw in [dict(rho=0), dict(rho=-1.0), dict(rho_growth=0.5), dict(update_every=0), dict(rho_scale="x"),
               dict(rho=1.0, rho_max=0.5), dict(base=int)]:
        with pytest.raises(ValueError):
            ps.ADMM(m.parameters(), lr=0.1, **kw)
    with pytest.raises(ValueError, match="rho_max must be a finite number"):  # named as given, not as rho_growth
        ps.ADMM(m.parameters(), lr=0.1, rho_max=float("inf"))
    with pytest.raises(ValueError, match="LBFGS needs a closure"):
        ps.ADMM(m.parameters(), lr=0.1, base=torch.optim.LBFGS)


def test_constraints_keyword_is_a_clear_error():
    with pytest.raises(ValueError, match="param group"):
        ps.ADMM(nn.Conv2d(2, 4, 3).parameters(), lr=0.1, constraints=[C.Pattern(k=4)])


def test_load_state_dict_says_which_settings_the_saved_ones_replace():
    m = tiny_net()
    saved = ps.ADMM(m.parameters(), lr=0.1, method="oneshot").state_dict()
    same = ps.ADMM(m.parameters(), lr=0.1, method="oneshot")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same.load_state_dict(saved)
    other = ps.ADMM(m.parameters(), lr=0.1, update_every=7)
    with pytest.warns(UserWarning, match="update_every 7 -> 200, method 'admm' -> 'oneshot'"):
        other.load_state_dict(saved)
    assert other.method == "oneshot" and other.update_every == 200


# ---------------------------------------------------------------- projections and the exact math
SINGLE = [
    (C.Pattern(k=4), "conv"), (C.Pattern(k=3, entries=3, keep_center=False, group=2), "conv"),
    (C.Connectivity(keep=0.25), "conv"), (C.Connectivity(keep=5, group=4), "conv"),
    (C.Unstructured(keep=0.1), "conv"), (C.Unstructured(keep=0.3), "fc"),
    (C.Filter(keep=0.5), "conv"), (C.Channel(keep=0.5), "conv"), (C.Filter(keep=2), "fc"),
    (C.Quantize(bits=3), "conv"), (C.Quantize(bits=2, scheme="pow2"), "fc"), (C.Quantize(bits=1), "fc"),
]


@pytest.mark.parametrize("c,where", SINGLE, ids=[f"{type(c).__name__}-{i}" for i, (c, _) in enumerate(SINGLE)])
def test_every_constraint(c, where):
    m = tiny_net()
    p = m[3].weight if where == "conv" else m[8].weight
    opt = ps.ADMM([{"params": [p], "constraints": [c], "names": ["w"]}], lr=0.05, momentum=0.9, update_every=3)
    w0 = p.detach().clone()
    train(m, opt, 1)
    pset = opt.pattern_sets()[0]
    if isinstance(c, C.Pattern):
        assert pset == ps.PatternSet.select([w0], k=c.k, entries=c.entries, keep_center=c.keep_center)
    else:
        assert pset is None
    # Z initialised to Proj(W) of the weights before the first step, U to zeros
    st = opt._admm[p]
    assert torch.equal(st.Z, c.project(w0, pset))
    assert not st.U.any()
    train(m, opt, 5, start=1)  # crosses a Z update
    check_in_set(c, opt._admm[p].Z, pset)
    opt.hard_prune()
    check_in_set(c, p.detach(), pset)
    assert opt.residuals()["w"] == 0.0


@pytest.mark.parametrize("penalty", ["gradient", "proximal"])
def test_exact_math(penalty):
    """gradient (absolute rho): the W-step adds rho (W - Z + U) to the gradient (squared norm);
    proximal: the base step on the loss alone, then W -= a (W - Z + U), a = 1 - exp(-rho). Both:
    Z = Proj(W + U), U += W - Z, rho *= growth (capped) every update_every steps. Checked against a
    hand loop."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 3, 3, 3))
    target = torch.randn(4, 3, 3, 3)
    cons = [C.Connectivity(keep=0.5), C.Quantize(bits=3)]
    lr, every = 0.1, 3
    rho, growth, rho_max = (0.5, 2.0, 1.5) if penalty == "gradient" else (0.1, 2.0, 0.3)
    opt = ps.ADMM([{"params": [w], "constraints": cons}], lr=lr, rho=rho, rho_growth=growth, rho_max=rho_max,
                  update_every=every, penalty=penalty, **({"rho_scale": "none"} if penalty == "gradient" else {}))

    def proj(x):
        return project.quantize(project.connectivity(x, 0.5), 3)

    W = w.detach().clone()
    Z, U, r = proj(W), torch.zeros_like(W), rho
    for i in range(10):
        opt.zero_grad()
        ((w - target) ** 2).sum().backward()
        opt.step()
        g = 2 * (W - target)
        if penalty == "gradient":
            W = W - lr * (g + r * (W - Z + U))
            eff = r
        else:
            W = W - lr * g
            eff = 1 - torch.exp(torch.tensor(-r, dtype=torch.float64)).item()
            W = W - eff * (W - Z + U)
        if (i + 1) % every == 0:
            Z = proj(W + U)
            U = U + W - Z
            r = min(r * growth, rho_max)
            eff = r if penalty == "gradient" else 1 - torch.exp(torch.tensor(-r, dtype=torch.float64)).item()
        torch.testing.assert_close(w.detach(), W, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(opt._admm[w].Z, Z, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(opt._admm[w].U, U, rtol=1e-5, atol=1e-6)
        assert opt._admm[w].rho == pytest.approx(r)
        assert opt.rho_eff()["group0.0"] == pytest.approx(eff)
    res = opt.residuals()["group0.0"]
    assert res == pytest.approx(float((W - Z).norm() / W.norm()), rel=1e-4)


def test_rho_scaled_to_gradient():
    """rho_scale="grad": rho_eff = rho * ||g|| / ||W|| (first step's gradient; then the mean over the
    last steps before each update), capped at 1/lr; invariant to rescaling a scale-free weight."""
    effs = []
    for s in (1.0, 10.0):
        m = tiny_net()
        with torch.no_grad():
            m[3].weight.mul_(s)  # conv + BN: the loss doesn't change, the gradient scales by 1/s
        opt = make_opt(m, lr=0.01, rho=0.5)
        x, y = batch(0)
        F.cross_entropy(m(x), y).backward()
        gn, wn = float(m[3].weight.grad.norm()), float(m[3].weight.detach().norm())
        opt.step()
        eff = opt.rho_eff()["3.weight"]
        assert eff == pytest.approx(0.5 * gn / wn, rel=1e-5)
        effs.append(eff * s * s)  # penalty gradient ~ eff * s vs loss gradient ~ 1/s
    assert effs[0] == pytest.approx(effs[1], rel=1e-3)
    m = tiny_net()
    opt = make_opt(m, lr=0.05, rho=1e6, rho_max=1e9)
    train(m, opt, 1)
    assert all(v == pytest.approx(1 / 0.05) for v in opt.rho_eff().values())


def test_repr_names_the_penalty_and_only_its_settings():
    gradient = repr(make_opt(tiny_net()))
    assert "penalty='gradient'" in gradient and "rho_scale='grad'" in gradient and "SGD (" in gradient
    proximal = repr(make_opt(tiny_net(), penalty="proximal"))
    assert "penalty='proximal'" in proximal and "rho_scale" not in proximal


def test_residuals_shrink_with_defaults():
    """With the default rho settings the residuals shrink over the ADMM phase (conv + BatchNorm,
    weight decay, a small learnable task)."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 3, 6, 6, generator=g)
    Y = (X[:, 0].mean((1, 2)) > 0).long() + 2 * (X[:, 1].mean((1, 2)) > 0).long()
    m = tiny_net()
    opt = make_opt(m, lr=0.02, weight_decay=5e-4, update_every=40)
    hist = []
    for e in range(10):
        for i in range(40):
            j = (e * 40 + i) % 4 * 16
            opt.zero_grad()
            F.cross_entropy(m(X[j:j + 16]), Y[j:j + 16]).backward()
            opt.step()
        hist.append(opt.residuals())
    for k in hist[0]:
        assert hist[-1][k] < 0.5 * hist[0][k], (k, [h[k] for h in hist])
        assert hist[-1][k] < 0.2, (k, [h[k] for h in hist])


# ---------------------------------------------------------------- combined constraints, hard prune, retrain
def test_pattern_sets_by_module_is_what_convert_takes():
    m = tiny_net()
    opt = make_opt(m, update_every=2)
    assert opt.pattern_sets_by_module(m) == {}  # no set selected before the first step
    train(m, opt, 1)
    pset = opt.pattern_sets()[0]
    assert opt.pattern_sets_by_module(m) == {"0": pset, "3": pset}  # the FC group has no Pattern
    assert all(ps.admm.trained_pattern_set(m[i].weight) is pset for i in (0, 3))


def test_combined_constraints_in_all_sets():
    m = tiny_net()
    opt = make_opt(m, conv=[C.Quantize(bits=4), C.Connectivity(keep=0.25), C.Pattern(k=4)], update_every=2)
    train(m, opt, 3)
    before = {p: (p.detach() + opt._admm[p].U) for p in (m[0].weight, m[3].weight)}
    opt.admm_update()  # by hand
    pset = opt.pattern_sets()[0]
    assert opt.pattern_sets()[1] is None and opt.pattern_sets()[2] is None
    for p in (m[0].weight, m[3].weight):
        z = opt._admm[p].Z
        assert in_pattern_set(z, pset)
        assert int((z != 0).reshape(-1, 9).any(1).sum()) <= round(0.25 * z[:, :, 0, 0].numel())
        assert z.unique().numel() <= 15
        # composition order: pattern, then connectivity, then quantize (whatever the list order)
        proj = project.quantize(project.connectivity(project.pattern(before[p], pset), 0.25), 4)
        torch.testing.assert_close(z, proj, rtol=1e-6, atol=1e-7)
    opt.hard_prune()
    assert opt.phase == "retrain"
    for p in (m[0].weight, m[3].weight):
        assert in_pattern_set(p.detach(), pset)


@pytest.mark.parametrize("base,kw", [(torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
                                     (torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
                                     (torch.optim.Adam, dict(lr=0.01, weight_decay=1e-3)),
                                     (torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1))],
                         ids=["sgd-wd", "sgd-nesterov", "adam", "adamw"])
def test_hard_prune_retrain_invariants(base, kw):
    m = tiny_net()
    opt = make_opt(m, base=base, update_every=5, **kw)
    train(m, opt, 8)
    opt.hard_prune()
    pset = opt.pattern_sets()[0]
    masks = opt.masks()
    assert set(masks) == {"0.weight", "3.weight", "8.weight"}
    snap = {n: p.detach().clone() for n, p in m.named_parameters()}
    levels = {n: p.detach().unique() for n, p in m.named_parameters() if n in masks}
    train(m, opt, 25, start=8)
    named = dict(m.named_parameters())
    for n, mask in masks.items():
        p = named[n].detach()
        assert not p[~mask].any(), n                            # masked weights exactly zero
        for v in opt.state[named[n]].values():                 # and their optimizer state too
            if torch.is_tensor(v) and v.shape == p.shape:
                assert not v[~mask].any(), n
        lv = opt._admm[named[n]].levels
        assert torch.isin(p, lv).all(), n                        # quantized weights on their levels
        assert lv.numel() <= (15 if n != "8.weight" else 7)
        assert not torch.equal(p, snap[n]), n                   # retraining does change them (STE)
        assert torch.isin(levels[n], lv).all()
    for n in ("0.weight", "3.weight"):
        assert in_pattern_set(named[n].detach(), pset)
    assert not torch.equal(named["1.weight"].detach(), snap["1.weight"])  # unconstrained: plain step
    assert all(v == 0.0 for v in opt.residuals().values())


def test_quantized_retraining_goes_on_from_weights_loaded_into_the_model():
    """Straight-through retraining keeps a full-precision latent; a step overwrote the model's weight
    with it, so an early-stopping rollback (model.load_state_dict of an earlier state) was undone by
    the next step. Without Quantize the loaded weights were kept: both must be."""
    m = tiny_net()
    opt = make_opt(m, update_every=5)
    train(m, opt, 6)
    opt.hard_prune()
    train(m, opt, 3, start=6)
    best = copy.deepcopy(m.state_dict())
    train(m, opt, 3, start=9)
    assert not torch.equal(m[3].weight, best["3.weight"])
    m.load_state_dict(best)
    for g in opt.param_groups:
        g["lr"] = 0.0
    train(m, opt, 1, start=12)
    for n in ("0.weight", "3.weight", "8.weight"):
        torch.testing.assert_close(m.state_dict()[n], best[n], rtol=0, atol=0)
    with torch.no_grad():  # a float edit (not on the levels) is trained from, then snapped
        m[3].weight.mul_(0.5)
        want = opt._to_levels(m[3].weight.clone(), opt._admm[m[3].weight].levels)
    train(m, opt, 1, start=13)
    torch.testing.assert_close(m[3].weight.detach(), want, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["admm", "oneshot", "gradual"])
def test_residuals_before_the_first_step_initialise_nothing(method):
    """residuals() (a diagnostic) before weights are loaded selected the pattern sets and Z from the
    weights it saw, so the loaded ones did not count."""
    pretrained = tiny_net(seed=1).state_dict()

    def run(peek):
        m = tiny_net()
        opt = make_opt(m, update_every=2, method=method, penalty="proximal", phase_steps=4)
        if peek:
            r = opt.residuals()
            assert set(r) == {"0.weight", "3.weight", "8.weight"} and all(v > 0 for v in r.values())
            assert opt.dual_residuals() == ({k: 0.0 for k in r} if method == "admm" else {})
            assert all(s is None for s in opt.pattern_sets())
        m.load_state_dict(pretrained)
        train(m, opt, 3)
        return m, opt
    (a, oa), (b, ob) = run(False), run(True)
    assert torch.equal(oa.pattern_sets()[0].to_tensor(), ob.pattern_sets()[0].to_tensor())
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_state_made_under_inference_mode_can_be_trained():
    """hard_prune / admm_update / load_state_dict / a first residuals() called in an evaluation block
    (torch.inference_mode) made inference tensors that the next training step could not update."""
    m = tiny_net()
    opt = make_opt(m, update_every=100)
    with torch.inference_mode():
        opt.admm_update()
    train(m, opt, 2)
    sd = copy.deepcopy(opt.state_dict())
    with torch.inference_mode():
        opt.load_state_dict(sd)
        opt.hard_prune()                      # with Quantize: the latent
    train(m, opt, 2, start=2)
    sd = copy.deepcopy(opt.state_dict())
    with torch.inference_mode():
        opt.load_state_dict(sd)
    train(m, opt, 1, start=4)


@pytest.mark.parametrize("penalty", ["gradient", "proximal"])
def test_a_second_compiled_step_keeps_each_weights_state(penalty):
    """torch.compile(opt.step) of a second ADMM optimizer in one process, with the fused native Adam
    step (penalty="gradient"): two same-shaped constrained weights shared one Adam state (step counts
    1, 5 and 9 after 5 steps, weights 4e-2 off), silently, with any backend."""
    def run(backend):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
        opt = ps.ADMM.from_model(m, [(r"[24]\.weight", [C.Pattern(k=4), C.Connectivity(keep=0.5)])],
                                 base=torch.optim.Adam, lr=0.01, penalty=penalty, update_every=2, phase_steps=8)
        step = torch.compile(opt.step, backend=backend) if backend else opt.step
        for i in range(5):
            x, y = batch(i)
            F.cross_entropy(m(x), y).backward()
            step()
            opt.zero_grad()
        return m, opt
    torch._dynamo.reset()
    want, _ = run(None)
    for i in range(2):
        got, opt = run("aot_eager")
        assert {float(st["step"]) for st in opt.state.values()} == {5.0}, i
        for (n, x), y in zip(want.state_dict().items(), got.state_dict().values()):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=f"run {i}: {n}")
    torch._dynamo.reset()


# ---------------------------------------------------------------- state_dict: exact resume, errors
@pytest.mark.parametrize("base", [torch.optim.SGD, torch.optim.Adam])
def test_exact_resume(base):
    N, k, hp = 22, 9, 14  # update_every=4: crosses Z updates; hard prune at step hp

    def run(model, opt, start, stop):
        for i in range(start, stop):
            if i == hp:
                opt.hard_prune()
            train(model, opt, 1, start=i)

    m1 = tiny_net()
    o1 = make_opt(m1, base=base, lr=0.02, update_every=4)
    run(m1, o1, 0, N)

    for kk in (k, hp + 3):
        m2 = tiny_net()
        o2 = make_opt(m2, base=base, lr=0.02, update_every=4)
        run(m2, o2, 0, kk)
        buf = io.BytesIO()
        torch.save({"model": m2.state_dict(), "opt": o2.state_dict()}, buf)
        buf.seek(0)
        ck = torch.load(buf, weights_only=True)
        m3 = tiny_net(seed=123)
        o3 = make_opt(m3, base=base, lr=0.02, update_every=4)
        m3.load_state_dict(ck["model"])
        o3.load_state_dict(ck["opt"])
        assert o3.param_groups is o3.base.param_groups and o3.state is o3.base.state
        run(m3, o3, kk, N)
        for (n, a), b in zip(m1.state_dict().items(), m3.state_dict().values()):
            assert torch.equal(a, b), (kk, n)
        assert o1.residuals() == o3.residuals()
        assert o1.pattern_sets() == o3.pattern_sets()


def _assert_same(a, b, where="", exact=True):
    """Nested state_dicts equal: same keys, types and values (tensors: bit for bit, or to rounding)."""
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b), (where, list(a), list(b))
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}", exact)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]", exact)
    elif torch.is_tensor(a):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        if exact or not a.is_floating_point():
            assert torch.equal(a, b), where
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=where)
    elif isinstance(a, float) and not exact:
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6), where
    else:
        assert a == b, where


def test_state_dicts_of_the_dict_state_code_load_and_resume():
    """tests/data/admm_states_v1.pt was written by the code that kept the per-parameter state in
    string-keyed dicts (make_admm_states_v1.py; every phase and method): each loads, saves back the
    very same state_dict, and resumes to the saved continuation (to rounding: kernels may differ by ISA)."""
    data = torch.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "admm_states_v1.pt"),
                      weights_only=True)
    steps = data.pop("resume_steps")
    assert len(data) == 6

    def with_new_fields(sd):  # a constraint field added since (Unstructured's group) reads as its default
        sd = copy.deepcopy(sd)
        for g in sd["param_groups"]:
            g["constraints"] = [C.to_spec(C.from_spec(c)) for c in g["constraints"]]
        return sd
    for name, rec in data.items():
        m = tiny_net(seed=3)
        opt = make_opt(m, base=getattr(torch.optim, rec["base"]), **rec["kwargs"])
        m.load_state_dict(rec["model"])
        opt.load_state_dict(rec["opt"])
        _assert_same(opt.state_dict(), with_new_fields(rec["opt"]), name)
        train(m, opt, steps, start=rec["steps"])
        _assert_same(m.state_dict(), rec["model_after"], name, exact=False)
        _assert_same(opt.state_dict(), with_new_fields(rec["opt_after"]), name, exact=False)


def test_load_state_dict_of_another_model_is_rejected_untouched():
    m = tiny_net()
    opt = make_opt(m, update_every=3)
    train(m, opt, 4)
    before = io.BytesIO()
    torch.save(opt.state_dict(), before)

    other = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 12, 3, bias=False), nn.BatchNorm2d(12), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 4))
    o2 = make_opt(other, update_every=3)
    for i in range(4):
        x, y = batch(i)
        o2.zero_grad()
        F.cross_entropy(other(x), y).backward()
        o2.step()
    with pytest.raises(ValueError, match=r"'3\.weight' has shape \[16, 8, 3, 3\]"):
        opt.load_state_dict(o2.state_dict())
    with pytest.raises(ValueError, match="not an ADMM state_dict"):
        opt.load_state_dict(torch.optim.SGD(m.parameters(), lr=0.1).state_dict())
    o3 = make_opt(tiny_net(), conv=[C.Pattern(k=4)])
    with pytest.raises(ValueError, match="constraints differ"):
        opt.load_state_dict(o3.state_dict())
    bad = opt.state_dict()
    bad["admm"]["params"][0]["mask"] = bad["admm"]["params"][0].pop("Z")  # a retrain entry in the ADMM phase
    with pytest.raises(ValueError, match=r"'0\.weight' \(phase 'admm'\) has unknown entries \['mask'\]"):
        opt.load_state_dict(bad)
    del bad["admm"]["params"][0]["mask"]
    with pytest.raises(ValueError, match=r"'0\.weight' \(phase 'admm'\) lacks the entries \['Z'\]"):
        opt.load_state_dict(bad)
    after = io.BytesIO()
    torch.save(opt.state_dict(), after)
    assert before.getvalue() == after.getvalue()


def test_nan_at_z_update_names_param_and_leaves_state():
    m = tiny_net()
    opt = make_opt(m, update_every=100)
    train(m, opt, 2)
    z_before = {p: opt._admm[p].Z.clone() for p in opt._admm}
    with torch.no_grad():
        m[3].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"'3\.weight' contains NaN"):
        opt.admm_update()
    for p, z in z_before.items():
        assert torch.equal(opt._admm[p].Z, z)
    with pytest.raises(ValueError, match=r"'3\.weight' contains NaN"):
        opt.hard_prune()
    assert opt.phase == "admm"


# ---------------------------------------------------------------- integration with torch tooling
def test_param_groups_shared_and_lr_scheduler():
    m = tiny_net()
    opt = make_opt(m, lr=0.1, momentum=0.0, update_every=1000)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is opt.base.param_groups
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    lrs = []
    for i in range(5):
        train(m, opt, 1, start=i)
        sched.step()
        lrs.append(opt.base.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.1, 0.01, 0.01, 0.001, 0.001])
    # the base really steps with the scheduled lr: an unconstrained bias moves by lr * grad
    p = m[8].bias
    x, y = batch(99)
    opt.zero_grad()
    F.cross_entropy(m(x), y).backward()
    before, g = p.detach().clone(), p.grad.clone()
    opt.step()
    torch.testing.assert_close(p.detach(), before - 0.001 * g)
    # add_param_group goes to the same list
    extra = nn.Parameter(torch.zeros(3))
    opt.add_param_group({"params": [("extra", extra)], "lr": 0.5})
    assert opt.base.param_groups[-1]["params"][0] is extra and len(opt.param_groups) == 4
    bad = nn.Parameter(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="'bad' has shape"):
        opt.add_param_group({"params": [("bad", bad)], "constraints": [C.Pattern()]})
    assert len(opt.param_groups) == 4 and opt.base.param_groups is opt.param_groups
    # a plain group (no names) joins from_model's named groups under the names ADMM reports
    plain = nn.Parameter(torch.zeros(4))
    opt.add_param_group({"params": (p for p in [plain])})
    assert opt.param_groups[-1]["params"] == [plain] and opt.param_groups[-1]["param_names"] == ["group4.0"]
    opt.step()


def test_grad_scaler_and_clipping_match_plain_loop():
    def run(use_scaler):
        m = tiny_net()
        opt = make_opt(m, update_every=3)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10) if use_scaler else None
        for i in range(7):
            x, y = batch(i)
            opt.zero_grad()
            loss = F.cross_entropy(m(x), y)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
                opt.step()
        return m, opt

    (m1, o1), (m2, o2) = run(False), run(True)
    for a, b in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert o1._step_count == o2._step_count == 7


def test_names_and_closure():
    m = tiny_net()
    opt = ps.ADMM([{"params": [m[0].weight, m[3].weight], "constraints": [C.Pattern(k=2)]},
                   {"params": [p for n, p in m.named_parameters() if n not in ("0.weight", "3.weight")]}],
                  lr=0.05)
    x, y = batch(0)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert torch.is_tensor(loss)
    assert list(opt.residuals()) == ["group0.0", "group0.1"]
    named = ps.ADMM([{"params": list(m.named_parameters())[:1], "constraints": [C.Filter(0.5)]}], lr=0.1)
    assert list(named.residuals()) == ["0.weight"]
    assert all(math.isfinite(v) for v in named.residuals().values())


@pytest.mark.parametrize("base,kw", [
    (torch.optim.SGD, dict(lr=0.05)),
    (torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=5e-4)),
    (torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
    (torch.optim.SGD, dict(lr=0.05, momentum=0.5, dampening=0.3, maximize=True)),
    (torch.optim.Adam, dict(lr=1e-2)),
    (torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-3, betas=(0.8, 0.99))),
    (torch.optim.AdamW, dict(lr=1e-2, weight_decay=1e-2, maximize=True)),
    (torch.optim.Adam, dict(lr=1e-2, amsgrad=True)),   # not fused: one-pass penalty, then Adam
    (torch.optim.RMSprop, dict(lr=1e-3)),               # not fused: one-pass penalty, then RMSprop
])
def test_fused_native_step_matches_torch_ops(base, kw, monkeypatch):
    """The fused native steps (admm_sgd_ / admm_adam_, admm_penalty_ otherwise) do what the penalty in
    torch ops followed by the base step does: weights and optimizer state after one step from the same
    state, at the first step (state created) and after a Z update (momentum / moments, U != 0).
    (One step at a time: over many steps Adam's m / sqrt(v) of near-zero gradients amplifies float32
    rounding differences.)"""
    native_ok = fused._native_ok
    m = tiny_net()
    opt = make_opt(m, base=base, update_every=3, rho=2.0, **kw)
    for start in (0, 5):
        if start:
            train(m, opt, start - 1)  # crosses a Z update
        results = []
        for native in (True, False):
            m2 = copy.deepcopy(m)
            o2 = make_opt(m2, base=base, update_every=3, rho=2.0, **kw)
            o2.load_state_dict(copy.deepcopy(opt.state_dict()))  # torch shares state tensors otherwise
            monkeypatch.setattr(fused, "_native_ok", native_ok if native else (lambda *t: False))
            train(m2, o2, 1, start=start)
            results.append((m2, o2))
        monkeypatch.setattr(fused, "_native_ok", native_ok)
        (m1, o1), (m2, o2) = results
        for p1, p2 in zip(m1.parameters(), m2.parameters()):
            torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-6)
            assert o1.state[p1].keys() == o2.state[p2].keys()
            for k, v in o1.state[p1].items():
                torch.testing.assert_close(v, o2.state[p2][k], rtol=1e-5, atol=1e-6)
        w = m1[3].weight  # the first copy did take the native path
        assert native_ok(w, w.grad, o1._admm[w].Z)
        train(m, opt, 1, start=start)


def test_native_admm_ops_reject_bad_tensors():
    w = torch.zeros(4, 3)
    with pytest.raises(RuntimeError, match="shift has shape"):
        torch.ops.patsparse.admm_penalty_(torch.zeros(4, 3), w, torch.zeros(3, 4), 1.0)
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.patsparse.admm_penalty_(torch.zeros(4, 3, dtype=torch.float64), w, w, 1.0)
    with pytest.raises(RuntimeError, match="momentum_buffer"):
        torch.ops.patsparse.admm_sgd_(w, w, w, None, 1.0, 0.1, 0.9, 0.0, 0.0, False, False, False)


def test_consensus_one_pair_per_constraint_exact_math():
    """consensus=True: Z_j = Proj_j(W + U_j), U_j += W - Z_j (rescale_dual: times rho_old / rho_new), penalty
    sum_j rho (W - Z_j + U_j); checked against a hand loop; resume is exact; hard prune composes."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 3, 3, 3))
    target = torch.randn(4, 3, 3, 3)
    cons = [C.Connectivity(keep=0.5), C.Quantize(bits=3)]
    lr, rho, growth, every = 0.05, 0.5, 2.0, 3
    opt = ps.ADMM([{"params": [w], "constraints": cons}], lr=lr, rho=rho, rho_growth=growth, rho_max=1.5,
                  update_every=every, rho_scale="none", penalty="gradient", consensus=True, rescale_dual=True)
    projs = [lambda x: project.connectivity(x, 0.5), lambda x: project.quantize(x, 3)]
    W = w.detach().clone()
    Z = [f(W) for f in projs]
    U = [torch.zeros_like(W) for _ in projs]
    r = rho
    for i in range(10):
        opt.zero_grad()
        ((w - target) ** 2).sum().backward()
        opt.step()
        W = W - lr * (2 * (W - target) + sum(r * (W - z + u) for z, u in zip(Z, U)))
        if (i + 1) % every == 0:
            Z = [f(W + u) for f, u in zip(projs, U)]
            r_new = min(r * growth, 1.5)
            U = [(u + W - z) * (r / r_new) for z, u in zip(Z, U)]
            r = r_new
        torch.testing.assert_close(w.detach(), W, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(opt._admm[w].Z, torch.stack(Z), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(opt._admm[w].U, torch.stack(U), rtol=1e-5, atol=1e-6)
    res = max(float((W - z).norm() / W.norm()) for z in Z)
    assert opt.residuals()["group0.0"] == pytest.approx(res, rel=1e-4)
    sd = opt.state_dict()
    w2 = nn.Parameter(w.detach().clone())
    opt2 = ps.ADMM([{"params": [w2], "constraints": cons}], lr=lr, rho_scale="none", penalty="gradient")
    buf = io.BytesIO()
    torch.save(sd, buf)
    opt2.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert opt2.consensus and opt2.rescale_dual
    for o, p in ((opt, w), (opt2, w2)):
        o.zero_grad()
        ((p - target) ** 2).sum().backward()
        o.step()
    assert torch.equal(w, w2)
    opt.hard_prune()
    kernels = (w.detach().reshape(4, 3, 9) != 0).any(-1)
    assert int(kernels.sum()) <= 6 and len(torch.unique(w.detach().abs())) <= 4


def test_consensus_on_a_net_shrinks_residuals_and_prunes_into_all_sets():
    m = tiny_net()
    opt = make_opt(m, update_every=4, rho=1.0, rho_growth=1.5, rho_max=50.0, consensus=True)
    train(m, opt, 2)
    first = max(opt.residuals().values())
    train(m, opt, 46, start=2)
    assert max(opt.residuals().values()) < first
    pset = opt.pattern_sets()[0]
    opt.hard_prune()
    for c in CONV_SPEC:
        check_in_set(c, m[3].weight.detach(), pset)


@pytest.mark.parametrize("method", ["admm", "oneshot"])
def test_deepcopy_and_pickle_of_the_optimizer_keep_its_state(method):
    """copy.deepcopy / torch.save of the optimizer object keep ADMM's own state (torch.optim.Optimizer
    pickles only defaults / state / param_groups: the copy lost its phase, Z / U and base optimizer)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3)
    opt = ps.ADMM([{"params": [conv.weight], "constraints": [C.Pattern(k=4)]}], lr=0.1, method=method,
                  update_every=2)
    conv.weight.grad = torch.randn_like(conv.weight)
    opt.step()
    buf = io.BytesIO()
    torch.save(opt, buf)
    buf.seek(0)
    for other in (copy.deepcopy(opt), torch.load(buf, weights_only=False)):
        (w,) = other.param_groups[0]["params"]
        assert w is not conv.weight and torch.equal(w, conv.weight)
        w.grad = conv.weight.grad.clone()
        other.step()
        assert other.phase == opt.phase and other.state_dict()["param_groups"][0]["lr"] == 0.1
    opt.step()
    assert torch.equal(w, conv.weight)


def test_constrained_group_added_after_hard_prune_is_refused():
    a, b = nn.Parameter(torch.randn(4, 4, 3, 3)), nn.Parameter(torch.randn(8, 8))
    opt = ps.ADMM([{"params": [a], "constraints": [C.Pattern(k=4)]}], lr=0.05)
    a.grad = torch.randn_like(a)
    opt.step()
    opt.hard_prune()
    with pytest.raises(ValueError, match="after hard_prune"):
        opt.add_param_group({"params": [b], "constraints": [C.Unstructured(keep=0.1)]})
    opt.add_param_group({"params": [b]})  # unconstrained: fine
    assert len(opt.param_groups) == 2


def test_constraints_given_as_a_string_name_the_mistake():
    w = nn.Parameter(torch.randn(4, 4, 3, 3))
    with pytest.raises(TypeError, match="must be a list of constraint objects"):
        ps.ADMM([{"params": [w], "constraints": "pattern"}], lr=0.1)


def test_an_lr_scheduler_does_not_tie_a_copy_to_the_original():
    m = tiny_net()
    opt = ps.ADMM([{"params": [m[3].weight], "constraints": CONV_SPEC},
                   {"params": [p for n, p in m.named_parameters() if n != "3.weight"]}], lr=0.1, method="oneshot")
    torch.optim.lr_scheduler.StepLR(opt, 1)  # wraps opt.step per instance (with a weakref to opt)
    m2, opt2 = copy.deepcopy((m, opt))
    before, before2 = m[3].weight.detach().clone(), m2[3].weight.detach().clone()
    train(m2, opt2, 1)
    assert torch.equal(m[3].weight, before) and not torch.equal(m2[3].weight, before2)
    torch.save(opt, io.BytesIO())  # picklable with the scheduler attached


def test_edited_constraints_are_refused_not_ignored():
    for method in ("admm", "oneshot"):
        m = tiny_net()
        opt = ps.ADMM([{"params": [m[3].weight], "constraints": [C.Connectivity(keep=0.5)]}], lr=0.05,
                      method=method, update_every=2)
        train(m, opt, 1)
        opt.param_groups[0]["constraints"] = [C.Pattern(k=4), C.Connectivity(keep=0.25)]
        with pytest.raises(ValueError, match="constraints of group 0 changed"):
            opt.step()


def test_numpy_arguments_become_python_numbers():
    np = pytest.importorskip("numpy")
    c = C.Connectivity(keep=np.float64(0.25), group=np.int64(2))
    assert type(c.keep) is float and type(c.group) is int and c == C.Connectivity(keep=0.25, group=2)
    assert type(C.Pattern(k=np.int64(4)).k) is int
    with pytest.warns(UserWarning, match="keeps ONE"):
        one = C.Connectivity(keep=1)
    assert one != C.Connectivity(keep=1.0)  # a count of 1 is not the fraction 1.0


def test_gradient_penalty_cap_follows_an_lr_warmup():
    """penalty='gradient' caps the pull at 1 / lr: with this step's lr, not the lr of the last
    Z-update (a warmup raising lr in between made lr * rho_eff 25 and the weights diverge)."""
    m = tiny_net()
    convs = [m[0].weight, m[3].weight]
    rest = [p for p in m.parameters() if all(p is not c for c in convs)]
    opt = ps.ADMM([{"params": convs, "constraints": [C.Pattern(k=4)]}, {"params": rest}], lr=0.1,
                  penalty="gradient", rho=1e4, rho_max=1e4, rho_scale="none", update_every=50)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.04, total_iters=10)
    for i in range(20):
        train(m, opt, 1, start=i)
        warm.step()
    assert all(bool(torch.isfinite(p).all()) and float(p.abs().max()) < 10 for p in m.parameters())


def test_global_step_hooks_run_once_per_step_as_for_the_base_optimizer():
    """torch's global optimizer step hooks see one step per ADMM.step, in every phase (the wrapped
    base optimizer's own step ran them a second time)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
    model = nn.Sequential(nn.Conv2d(2, 4, 3))
    calls = []
    hooks = [register_optimizer_step_pre_hook(lambda opt, a, k: calls.append(("pre", type(opt).__name__))),
             register_optimizer_step_post_hook(lambda opt, a, k: calls.append(("post", type(opt).__name__)))]
    try:
        opt = ps.ADMM([{"params": [model[0].weight], "constraints": [C.Pattern(k=4)]},
                       {"params": [model[0].bias]}], lr=0.01)
        for step in range(4):
            if step == 2:
                opt.hard_prune()
            opt.zero_grad()
            model(torch.randn(1, 2, 5, 5)).sum().backward()
            opt.step()
    finally:
        for h in hooks:
            h.remove()
    assert calls == [("pre", "ADMM"), ("post", "ADMM")] * 4


def test_add_param_group_with_a_non_constraint_leaves_the_optimizer_as_it_was():
    """A TypeError (constraints="pattern") left the group in place: every later step() raised."""
    w, b = nn.Parameter(torch.randn(8, 8, 3, 3)), nn.Parameter(torch.randn(8, 8, 3, 3))
    opt = ps.ADMM([{"params": [w], "constraints": [C.Pattern(k=4)]}], lr=0.1)
    with pytest.raises(TypeError):
        opt.add_param_group({"params": [b], "constraints": "pattern"})
    assert len(opt.param_groups) == 1
    w.grad = torch.randn_like(w)
    opt.step()
    opt.state_dict()


def _pruned_opt(seed):
    torch.manual_seed(seed)
    w = nn.Parameter(torch.randn(8, 8, 3, 3))
    opt = ps.ADMM([{"params": [w], "constraints": [C.Pattern(k=4), C.Connectivity(keep=0.5)]}],
                  method="oneshot", lr=0.1, momentum=0.9)
    for _ in range(2):
        w.grad = torch.randn_like(w)
        opt.step()
    return w, opt


@pytest.mark.parametrize("edit", [
    lambda a: a["params"][0].__setitem__("mask", torch.ones(1, dtype=torch.bool)),   # broadcast: unpruned
    lambda a: a["params"][0].__setitem__("mask", torch.ones(8, 8, 3, dtype=torch.bool)),
    lambda a: a["params"][0].__setitem__("mask", torch.ones(8, 8, 3, 3)),
    lambda a: a.__setitem__("step", "2.0"),
    lambda a: a.__setitem__("phase", "bogus"),
    lambda a: a.pop("hyper"),
    lambda a: a["hyper"].__setitem__("update_every", 0),
], ids=["mask1", "mask_shape", "mask_float", "step", "phase", "no_hyper", "update_every"])
def test_a_damaged_admm_state_is_refused_before_anything_changes(edit):
    """A one-element mask was accepted and broadcast (the layer silently unpruned); a bad step or a
    missing 'hyper' failed after masks and momentum were already replaced (hooks kept the old masks)."""
    import copy as _copy
    _, other = _pruned_opt(1)
    sd = _copy.deepcopy(other.state_dict())
    edit(sd["admm"])
    w, opt = _pruned_opt(0)
    before = _copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match="ADMM.load_state_dict"):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert torch.equal(after["admm"]["params"][0]["mask"], before["admm"]["params"][0]["mask"])
    assert after["admm"]["step"] == before["admm"]["step"]
    assert torch.equal(after["state"][0]["momentum_buffer"], before["state"][0]["momentum_buffer"])


def test_a_misspelled_constraints_key_is_refused_other_keys_pass():
    """{"constraint": ...} (singular) trained the group unconstrained, silently: a close slip of a key
    ADMM reads is refused; the base optimizer's keys and the user's own keys pass, as in torch."""
    w, b = nn.Parameter(torch.randn(8, 8, 3, 3)), nn.Parameter(torch.zeros(8))
    for key in ("constraint", "Constraints", "contraints"):
        with pytest.raises(ValueError, match=rf"key '{key}'.*did you mean 'constraints'"):
            ps.ADMM([{"params": [w], key: [C.Pattern(k=4)]}], lr=0.1)
    opt = ps.ADMM([{"params": [w], "constraints": [C.Pattern(k=4)], "name": "convs", "lr": 0.2, "momentum": 0.9}],
                  lr=0.1)
    with pytest.raises(ValueError, match=r"key 'constraint'.*did you mean 'constraints'"):
        opt.add_param_group({"params": [b], "constraint": [C.Unstructured(keep=0.5)]})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [b], "weight_decay": 1e-4, "tag": "bias"})
    assert opt.param_groups[1]["tag"] == "bias"


def test_group_mistakes_are_refused_not_trained_unconstrained():
    """Found by an ADMM probe: constraints given as a generator were read up by the check (the group then
    trained unconstrained, residual 0.0); a constrained group with no parameters (a filter that matched
    nothing) and a parameter listed twice (pulled twice per step) were accepted."""
    w = nn.Parameter(torch.randn(8, 8, 3, 3))
    opt = ps.ADMM([{"params": [w], "constraints": (c for c in [C.Unstructured(keep=0.1)])}], lr=0.1, method="oneshot")
    w.grad = torch.randn_like(w)
    opt.step()
    assert float((w != 0).float().mean()) == pytest.approx(0.1, abs=0.01)
    with pytest.raises(ValueError, match="constraints but no parameters"):
        ps.ADMM([{"params": [], "constraints": [C.Pattern(k=4)]}], lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch's own duplicate warning)
        with pytest.raises(ValueError, match="lists a parameter twice"):
            ps.ADMM([{"params": [w, w], "constraints": [C.Unstructured(keep=0.2)]}], lr=0.1)
    with pytest.warns(UserWarning, match="no Z/U update happens within the ADMM phase"):
        ps.ADMM([{"params": [w], "constraints": [C.Unstructured(keep=0.2)]}], lr=0.1, phase_steps=10, update_every=200)


def test_a_second_name_of_a_shared_layer_is_explained():
    class Aliased(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 4, 3)
            self.b = self.a
    with pytest.raises(ValueError, match="'b.weight', which is the parameter 'a.weight' under a second name"):
        ps.ADMM.from_model(Aliased(), {r"b\.weight": [C.Pattern(k=4)]}, lr=0.1)


def test_sparse_gradients_with_the_gradient_penalty_are_refused_clearly():
    emb = nn.Embedding(10, 9, sparse=True)
    opt = ps.ADMM([{"params": [emb.weight], "constraints": [C.Unstructured(keep=0.3)]}], lr=0.1, penalty="gradient")
    emb(torch.tensor([1, 2, 3])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradient.*penalty='proximal'"):
        opt.step()


def test_release_removes_the_gradient_masks():
    """Found by an ADMM probe: an optimizer kept alive (by an lr scheduler) went on masking the gradients
    of the parameters after they moved on to another optimizer."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3)
    opt = ps.ADMM([{"params": [conv.weight], "constraints": [C.Unstructured(keep=0.1)]}], lr=0.05, method="oneshot")
    sched = torch.optim.lr_scheduler.StepLR(opt, 10)  # noqa: F841  (keeps opt alive)
    x = torch.randn(1, 4, 5, 5)
    conv(x).sum().backward()
    opt.step()
    opt.zero_grad()
    conv(x).sum().backward()
    assert float((conv.weight.grad == 0).float().mean()) > 0.85
    conv.weight.grad = None
    opt.release()
    conv(x).sum().backward()
    assert bool((conv.weight.grad != 0).all())
    with pytest.raises(RuntimeError, match="released"):
        opt.step()


def test_one_bit_retraining_keeps_binary_weights():
    """Found by an ADMM probe: the hard prune maps a 1-bit weight to +-q (its sign) but retraining snapped
    to the nearest of {-q, 0, +q}: kept weights fell to 0 (a whole layer at lr 0.3)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3)
    opt = ps.ADMM([{"params": [conv.weight], "constraints": [C.Unstructured(keep=0.5), C.Quantize(bits=1)]},
                   {"params": [conv.bias]}], lr=0.3, method="oneshot")
    for _ in range(4):
        opt.zero_grad()
        conv(torch.randn(4, 4, 6, 6)).pow(2).sum().backward()
        opt.step()
        w = conv.weight.detach()
        assert float((w != 0).float().mean()) == pytest.approx(0.5, abs=0.01)
        assert w[w != 0].abs().unique().numel() == 1
