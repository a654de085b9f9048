"""ps.compressed_training: masked retraining through PatternConv2d modules gives masked dense
retraining's result (to rounding), and the model and optimizer come back in their dense form."""
import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torch_patsparse as ps
from torch_patsparse import constraints as C


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)  # BatchNorm follows (its grad would be ~0)
        self.bn1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False)
        self.c3 = nn.Conv2d(12, 12, 3, padding=2, dilation=2)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.c1(x)))
        x = F.relu(self.c3(F.relu(self.c2(x))))
        return self.fc(x.mean((2, 3)))


def build(base, bits, seed=0, **kw):
    torch.manual_seed(seed)
    model = Net()
    q = [C.Quantize(bits)] if bits else []
    spec = {r"c1\.weight": [C.Pattern(k=4)] + q,
            r"c[23]\.weight": [C.Pattern(k=6), C.Connectivity(0.3)] + q,
            r"fc\.weight": [C.Unstructured(0.5)] + q}
    opt = ps.ADMM.from_model(model, spec, base=base, method="oneshot", **kw)
    opt.hard_prune()
    return model, opt


def train(model, opt, steps, compressed, seed=1, clip=None):
    g = torch.Generator().manual_seed(seed)
    losses = []
    ctx = ps.compressed_training(model, opt) if compressed else contextlib.nullcontext([])
    with ctx as names:
        for _ in range(steps):
            x, y = torch.randn(6, 3, 10, 10, generator=g), torch.randint(0, 5, (6,), generator=g)
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if clip is not None:  # sees the gradients masked retraining trains with, in both forms
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            losses.append(loss.item())
    return losses, names


@pytest.mark.parametrize("base,kw", [(torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
                                     (torch.optim.Adam, dict(lr=1e-2))])
@pytest.mark.parametrize("bits", [None, 4])
def test_same_training_as_masked_dense(base, kw, bits):
    dense_model, dense_opt = build(base, bits, **kw)
    comp_model, comp_opt = build(base, bits, **kw)
    dense_losses, _ = train(dense_model, dense_opt, 6, compressed=False)
    comp_losses, names = train(comp_model, comp_opt, 6, compressed=True)
    assert names == ["c1", "c2", "c3"]
    assert dense_losses == pytest.approx(comp_losses, rel=1e-5)
    assert dense_losses[0] != pytest.approx(dense_losses[-1], rel=1e-3)  # it did train
    # back in dense form: the same modules, parameters and optimizer state as masked dense training
    assert all(type(m) is nn.Conv2d for m in (comp_model.c1, comp_model.c2, comp_model.c3))
    sd_d, sd_c = dense_model.state_dict(), comp_model.state_dict()
    assert sd_d.keys() == sd_c.keys()
    for k in sd_d:
        close = torch.isclose(sd_d[k].float(), sd_c[k].float(), rtol=1e-4, atol=1e-5)
        # a quantized weight sitting at a rounding boundary may pick the neighbouring level
        assert close.all() if not bits else close.float().mean() > 0.99, k
    od, oc = dense_opt.state_dict(), comp_opt.state_dict()
    assert od["state"].keys() == oc["state"].keys()
    for pid in od["state"]:
        for key, v in od["state"][pid].items():
            if torch.is_tensor(v) and v.is_floating_point():
                assert torch.isclose(v, oc["state"][pid][key], rtol=1e-3, atol=1e-5).float().mean() > 0.99, (pid, key)
    # the pruned weights are still exactly zero and the masks unchanged
    for name in ("c1", "c2", "c3"):
        w = getattr(comp_model, name).weight
        assert torch.equal(w == 0, getattr(dense_model, name).weight == 0) or bits


def test_training_continues_after_the_block_and_converts():
    model, opt = build(torch.optim.SGD, 4, lr=0.05, momentum=0.9)
    train(model, opt, 3, compressed=True)
    train(model, opt, 2, compressed=False)   # masked dense training picks up the moved state
    train(model, opt, 2, compressed=True)    # and back again
    x = torch.randn(2, 3, 10, 10)
    model.eval()
    converted = ps.convert(model)
    assert isinstance(converted.c2, ps.nn.PatternConv2d)
    torch.testing.assert_close(converted(x), model(x), rtol=1e-5, atol=1e-5)


def test_exception_inside_restores_dense_form():
    model, opt = build(torch.optim.SGD, None, lr=0.05)
    w = model.c2.weight
    with pytest.raises(KeyError):
        with ps.compressed_training(model, opt):
            assert isinstance(model.c2, ps.nn.PatternConv2d)
            raise KeyError("boom")
    assert model.c2.weight is w and type(model.c2) is nn.Conv2d
    assert any(p is w for g in opt.param_groups for p in g["params"])


def test_only_fixed_pattern_masks_are_swapped():
    torch.manual_seed(0)
    model = Net()
    opt = ps.ADMM.from_model(model, {r"c2\.weight": [C.Pattern(k=4)], r"c3\.weight": [C.Unstructured(0.3)]},
                             method="oneshot", lr=0.1)
    with pytest.raises(RuntimeError, match="hard_prune"):
        with ps.compressed_training(model, opt):
            pass
    opt.hard_prune()
    with ps.compressed_training(model, opt) as names:
        assert names == ["c2"]                       # c3 is unstructured: stays masked dense
        assert type(model.c3) is nn.Conv2d and type(model.c1) is nn.Conv2d


def test_rejects_other_optimizers():
    model = Net()
    with pytest.raises(TypeError, match="ps.ADMM"):
        with ps.compressed_training(model, torch.optim.SGD(model.parameters(), lr=0.1)):
            pass


class Tied(nn.Module):  # one conv registered at two places (weight tying)
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.again = self.c2
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(F.relu(self.again(F.relu(self.c2(F.relu(self.c1(x)))))).mean((2, 3)))


@pytest.mark.parametrize("case", ["frozen", "tied", "channels_last"])
def test_frozen_tied_and_channels_last_models(case):
    """A frozen conv stays frozen, a conv registered twice is swapped at both places, a channels_last
    model trains and comes back: each as masked dense retraining."""
    results = []
    for compressed in (False, True):
        torch.manual_seed(0)
        model = Tied() if case == "tied" else Net()
        if case == "frozen":
            model.c2.requires_grad_(False)
        if case == "channels_last":
            model = model.to(memory_format=torch.channels_last)
        convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
        rest = [p for p in model.parameters() if all(p is not c for c in convs)]
        opt = ps.ADMM([{"params": convs, "constraints": [C.Pattern(k=4)]}, {"params": rest}],
                      base=torch.optim.SGD, lr=0.05, momentum=0.9, method="oneshot")
        opt.hard_prune()
        frozen = model.c2.weight.detach().clone()
        losses, names = train(model, opt, 4, compressed)
        if compressed:
            assert "c2" in names and all(type(m) is nn.Conv2d for m in model.modules() if "Conv" in type(m).__name__)
            if case == "tied":
                assert model.again is model.c2
        if case == "frozen":
            assert torch.equal(model.c2.weight, frozen)
        results.append((losses, {k: v.clone() for k, v in model.state_dict().items()}))
    (ld, sd), (lc, sc) = results
    assert ld == pytest.approx(lc, rel=1e-5)
    for k in sd:
        torch.testing.assert_close(sd[k].float(), sc[k].float(), rtol=1e-4, atol=1e-5)


def test_gradient_clipping_sees_the_masked_gradients():
    kw = dict(lr=0.05, momentum=0.9)
    dense_model, dense_opt = build(torch.optim.SGD, None, **kw)
    comp_model, comp_opt = build(torch.optim.SGD, None, **kw)
    dense_losses, _ = train(dense_model, dense_opt, 8, compressed=False, clip=0.1)
    comp_losses, _ = train(comp_model, comp_opt, 8, compressed=True, clip=0.1)
    assert dense_losses == pytest.approx(comp_losses, rel=1e-5)
    for k, v in dense_model.state_dict().items():
        torch.testing.assert_close(v, comp_model.state_dict()[k], rtol=1e-4, atol=1e-6)
    g = dense_model.c2.weight
    assert g.grad is not None and torch.equal(g.grad[g == 0], torch.zeros_like(g.grad[g == 0]))


def test_hooks_on_a_swapped_conv_keep_firing():
    """As after convert: forward / pre-forward / full backward hooks of a conv fire inside the block."""
    model, opt = build(torch.optim.SGD, None, lr=0.05)
    calls = {"pre": 0, "fwd": 0, "bwd": 0}
    model.c2.register_forward_pre_hook(lambda *a: calls.__setitem__("pre", calls["pre"] + 1))
    model.c2.register_forward_hook(lambda *a: calls.__setitem__("fwd", calls["fwd"] + 1))
    model.c2.register_full_backward_hook(lambda *a: calls.__setitem__("bwd", calls["bwd"] + 1))
    _, names = train(model, opt, 2, compressed=True)
    assert "c2" in names and calls == {"pre": 2, "fwd": 2, "bwd": 2}
    train(model, opt, 1, compressed=False)
    assert calls == {"pre": 3, "fwd": 3, "bwd": 3}


def test_what_it_cannot_swap_is_said():
    model, opt = build(torch.optim.SGD, None, lr=0.05)
    with pytest.warns(UserWarning, match="no layer to swap"):
        with ps.compressed_training(ps.convert(model), opt) as names:  # already converted: nothing of opt's
            assert names == []
    model.c3.weight = model.c2.weight  # a weight tie across two layers (no forward runs: only the tie matters)
    with pytest.warns(UserWarning, match="'c2', 'c3' share one weight"):
        with ps.compressed_training(model, opt) as names:
            assert names == ["c1"]
    assert type(model.c2) is nn.Conv2d and model.c2.weight is model.c3.weight


@pytest.mark.parametrize("how", ["deepcopy", "torch.save"])
def test_a_copied_model_and_optimizer_keep_the_trained_pattern_sets(how, tmp_path):
    """The record convert / compressed_training read the trained pattern set from is keyed by
    parameter: a copy of (model, opt) by deepcopy or a whole-object torch.save had none, so
    compressed_training swapped nothing (warning that the optimizer pruned no layer) and convert
    picked another pattern set."""
    import copy
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(32 * 144, 10))
    opt = ps.ADMM([{"params": [model[2].weight], "constraints": [C.Pattern(k=4), C.Connectivity(keep=0.5)]},
                   {"params": [p for p in model.parameters() if p is not model[2].weight]}],
                  lr=0.01, momentum=0.9, method="oneshot")
    for _ in range(3):
        F.cross_entropy(model(torch.randn(8, 1, 12, 12)), torch.randint(0, 10, (8,))).backward()
        opt.step()
        opt.zero_grad()
    opt.hard_prune()
    if how == "deepcopy":
        model2, opt2 = copy.deepcopy((model, opt))
    else:
        torch.save((model, opt), tmp_path / "ckpt.pt")
        model2, opt2 = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    want = ps.admm.trained_pattern_set(model[2].weight)
    got = ps.admm.trained_pattern_set(model2[2].weight)
    assert want is not None and got == want
    with ps.compressed_training(model2, opt2) as swapped:
        assert swapped == ["2"]


def test_what_the_block_sets_on_a_swapped_conv_stays_after_it():
    """model.eval() / requires_grad_(False), hooks registered or removed, and the gradient of the last
    backward in the block were the PatternConv2d's only: after the block the conv was back in train
    mode, trainable, with its old hooks and the gradient from before the block."""
    model, opt = build(torch.optim.SGD, None, lr=0.05)
    dense, dense_opt = build(torch.optim.SGD, None, lr=0.05)
    x, y = torch.randn(4, 3, 10, 10), torch.randint(0, 5, (4,))
    calls = []
    old = model.c2.register_forward_hook(lambda *a: calls.append("old"))
    F.cross_entropy(model(x), y).backward()  # a gradient from before the block
    with ps.compressed_training(model, opt):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        old.remove()
        model.c2.register_forward_hook(lambda *a: calls.append("new"))
        with torch.no_grad():
            model(x)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.eval()
        model.requires_grad_(False)
    assert calls == ["old", "old", "new"]
    model(x)
    assert calls[-1] == "new"
    assert not any(m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())
    dense_opt.zero_grad()
    F.cross_entropy(dense(x), y).backward()  # masked dense retraining's gradient
    for name in ("c1.weight", "c2.weight", "c3.weight"):
        torch.testing.assert_close(model.get_parameter(name).grad, dense.get_parameter(name).grad, rtol=1e-5, atol=1e-6)
    assert len(grads) == len([p for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("dense_step_first", [False, True])
def test_a_base_optimizer_with_factored_state_is_refused_on_entry(dense_step_first):
    """Adafactor's row / column moments are not shaped like the weight: in the block it trained
    otherwise than masked dense, and the dense step after it (or the block after a dense step) crashed
    with a size mismatch. Refused on entry, the model and optimizer untouched."""
    model, opt = build(torch.optim.Adafactor, None, lr=1e-2)
    if dense_step_first:
        train(model, opt, 1, compressed=False)
    convs = {n: type(m) for n, m in model.named_modules()}
    state = {k: v.shape for k, v in opt.state[model.c2.weight].items()}
    with pytest.raises(ValueError, match="base optimizer Adafactor: it keeps factored"):
        with ps.compressed_training(model, opt):
            pass
    assert {n: type(m) for n, m in model.named_modules()} == convs
    assert {k: v.shape for k, v in opt.state[model.c2.weight].items()} == state
    train(model, opt, 1, compressed=False)  # trains on, dense


def test_state_not_shaped_like_the_weight_is_refused_on_entry():
    """An optimizer not known by class is refused once its state shows it (a tensor of another shape)."""
    class RowSGD(torch.optim.SGD):  # keeps a per-row statistic, as a factored optimizer would
        def step(self, closure=None):
            for g in self.param_groups:
                for p in g["params"]:
                    self.state[p]["row"] = p.detach().flatten(1).mean(1) if p.dim() > 1 else p.detach().clone()
            return super().step(closure)

    model, opt = build(RowSGD, None, lr=0.05)
    train(model, opt, 1, compressed=False)
    with pytest.raises(ValueError, match=r"base optimizer RowSGD: its state 'row' has shape \[\d+\], not the param"):
        with ps.compressed_training(model, opt):
            pass
    assert all(type(m) is not ps.nn.PatternConv2d for m in model.modules())
