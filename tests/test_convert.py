"""ps.convert as a user calls it: the README flow, and the rule that convert never changes what a
model computes unless asked (project=True / bits)."""
import contextlib
import copy
import threading
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torch_patsparse as ps
from torch_patsparse import constraints as C
from torch_patsparse import models, project
from torch_patsparse.nn import PatternConv2d, SparseConv2d, SparseLinear

from helpers import SmallNet, small_net_and_converted


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _train(model, opt, x, y, steps):
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("bits", [4, 3, 2])
def test_readme_flow_converts_losslessly(bits):
    """ADMM -> hard_prune -> retrain -> ps.convert(model) with no pattern_set: same outputs."""
    torch.manual_seed(bits)
    model = SmallNet()
    x, y = torch.randn(64, 1, 16, 16), torch.randint(0, 10, (64,))
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)][1:]
    ids = {id(p) for p in convs}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = ps.ADMM([{"params": convs, "constraints": [C.Pattern(k=8), C.Connectivity(keep=0.3),
                                                     C.Quantize(bits=bits)]},
                   {"params": rest}], base=torch.optim.SGD, lr=0.05, momentum=0.9, update_every=5)
    _train(model, opt, x, y, 15)
    opt.hard_prune()
    _train(model, opt, x, y, 5)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # lossless: no "left dense", no "lossy" warning
        converted = ps.convert(model, exclude=["features.0", "fc"])
    pcs = [m for m in converted.modules() if isinstance(m, PatternConv2d)]
    assert len(pcs) == 2
    # the optimizer's pattern set reached convert without the user passing it
    trained = opt.pattern_sets()[0]
    for m in pcs:
        assert m.conversion_error == 0.0
        assert m.quantized and m.bits <= bits
        assert set(map(tuple, m.pattern_set().positions.tolist())) <= set(map(tuple, trained.positions.tolist()))
    with torch.no_grad():
        assert _rel(converted(x), model(x)) < 1e-5


def test_unpruned_model_is_left_dense_with_a_warning():
    torch.manual_seed(0)
    model = SmallNet(bn=False).eval()
    x = torch.randn(2, 1, 16, 16)
    with pytest.warns(UserWarning, match="left dense"):
        out = ps.convert(model)
    assert not any(isinstance(m, PatternConv2d) for m in out.modules())
    with torch.no_grad():
        assert torch.equal(out(x), model(x))


def test_left_dense_reasons_name_the_offending_kernels_and_the_class():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3)
    with torch.no_grad():
        conv.weight.copy_(project.pattern(conv.weight, ps.PatternSet.select([conv.weight], k=4)))
        conv.weight[0, 0] = 1.0  # one kernel leaked back to 9 weights
    with pytest.warns(UserWarning, match=r"kernels keep up to 9 of 9 weights \(1 of 64 keep more than 4\)"):
        ps.convert(nn.Sequential(conv))
    qat = torch.ao.nn.qat.Conv2d(8, 8, 3, qconfig=torch.ao.quantization.get_default_qat_qconfig())
    with torch.no_grad():
        qat.weight.mul_(torch.rand_like(qat.weight) < 0.3)
    with pytest.warns(UserWarning, match=r"torch.ao.nn.qat.modules.conv.Conv2d has its own forward"):
        ps.convert(nn.Sequential(qat))


def test_project_true_projects_and_reports_the_error():
    torch.manual_seed(0)
    model = SmallNet(bn=False).eval()
    with pytest.warns(UserWarning, match="lossy"):
        out = ps.convert(model, project=True)
    pcs = [m for m in out.modules() if isinstance(m, PatternConv2d)]
    assert len(pcs) == 3
    for m in pcs:
        assert 0.1 < m.conversion_error < 1.0
        assert m.patterns.shape == (8, 4)


def test_explicit_pattern_set_must_fit_unless_project():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3)
    model = nn.Sequential(conv)
    pset = ps.PatternSet.candidates()
    with pytest.raises(ValueError, match="project=True"):
        ps.convert(model, pattern_set=pset)
    with pytest.warns(UserWarning, match="lossy"):
        out = ps.convert(model, pattern_set=ps.PatternSet(pset.positions[:8]), project=True)
    assert isinstance(out[0], PatternConv2d) and out[0].conversion_error > 0


def test_module_selectors_exact_glob_regex_callable():
    """exclude and pattern_set's keys take the selector language of torch_patsparse.select; exact
    names keep working (also with glob characters, as ModuleDict keys may have); a selector that
    selects no module is an error."""
    torch.manual_seed(0)
    model = SmallNet(bn=False).eval()  # 3x3 convs: features.0, features.3, features.7
    convs = ["features.0", "features.3", "features.7"]

    def converted(**kw):
        with pytest.warns(UserWarning, match="lossy"):
            out = ps.convert(model, project=True, **kw)
        return [n for n in convs if isinstance(out.get_submodule(n), PatternConv2d)]

    assert converted(exclude="features.0") == ["features.3", "features.7"]
    assert converted(exclude=["features.[37]"]) == ["features.0"]
    assert converted(exclude=r"re:features\.[03]") == ["features.7"]
    assert converted(exclude=lambda name, m: getattr(m, "in_channels", 0) == 32) == ["features.0", "features.3"]
    for bad in ("feature.*", r"re:fc\d", lambda name, m: False):
        with pytest.raises(ValueError, match="not in the model"):
            ps.convert(model, exclude=["fc", bad])

    cand = ps.PatternSet.candidates()
    a, b = ps.PatternSet(cand.positions[:8]), ps.PatternSet(cand.positions[8:16])
    with torch.no_grad():
        for name, pset in zip(convs, (a, b, b)):
            w = model.get_submodule(name).weight
            w.copy_(project.pattern(w, pset))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # lossless: each layer gets the set it was pruned onto
        out = ps.convert(model, pattern_set={"features.0": a, "features.*": b})  # the first selector wins
    assert [out.get_submodule(n).pattern_set() for n in convs] == [a, b, b]
    with pytest.raises(ValueError, match=r"pattern_set selects modules that are not in the model: \['classifier\*'\]"):
        ps.convert(model, pattern_set={"classifier*": a})

    odd = nn.ModuleDict({"conv[1]": nn.Conv2d(2, 2, 3), "conv1": nn.Conv2d(2, 2, 3)})
    with torch.no_grad():
        for m in odd.values():
            m.weight.copy_(project.pattern(m.weight, a))
    out = ps.convert(odd, exclude="conv[1]")
    assert type(out["conv[1]"]) is nn.Conv2d


def test_subshape_kernels_are_stored_exactly():
    """Kernels with 1-3 nonzeros (e.g. quantized to zero) fit a sub-shape of a pattern: stored as they are."""
    torch.manual_seed(1)
    conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
    pset = ps.PatternSet.candidates().positions[torch.randperm(56)[:8]]
    with torch.no_grad():
        w = ps.project.pattern(conv.weight, ps.PatternSet(pset))
        w[torch.rand(w.shape) < 0.3] = 0  # sub-shapes of every pattern, some kernels empty
        conv.weight.copy_(w)
    out = ps.convert(nn.Sequential(conv))[0]
    assert isinstance(out, PatternConv2d) and out.conversion_error == 0.0
    assert torch.equal(out.dense_weight(), conv.weight.detach())


def test_unstructured_3x3_becomes_lossless_sparse_conv_under_all():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    with torch.no_grad():
        conv.weight[torch.rand(conv.weight.shape) < 0.05] = 0
    x = torch.randn(2, 8, 6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ps.convert(nn.Sequential(conv), layers="all")[0]
    assert isinstance(out, SparseConv2d) and out.conversion_error == 0.0
    assert torch.allclose(out(x), conv(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_string_padding_is_converted(padding):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=padding, dilation=2 if padding == "same" else 1)
    with torch.no_grad():
        conv.weight.copy_(ps.project.pattern(conv.weight, ps.PatternSet.candidates()))
    x = torch.randn(2, 4, 9, 9)
    out = ps.convert(nn.Sequential(conv))[0]
    assert isinstance(out, PatternConv2d)
    assert torch.allclose(out(x), conv(x), rtol=1e-5, atol=1e-6)


def test_bits_apply_to_linear_layers_under_all():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    with pytest.warns(UserWarning, match="lossy"):
        out = ps.convert(model, layers="all", bits=4)
    lins = [m for m in out.modules() if isinstance(m, SparseLinear)]
    assert len(lins) == 2 and all(m.bits == 4 for m in lins)
    assert all(0 < m.conversion_error < 0.2 for m in lins)


def test_convert_is_idempotent_and_validates_arguments():
    model = nn.Sequential(nn.Conv2d(2, 2, 3))
    with pytest.raises(ValueError, match="layers"):
        ps.convert(model, layers="some")
    with pytest.raises(ValueError, match="not in the model"):
        ps.convert(model, exclude=["nope"])
    with pytest.raises(TypeError):
        ps.convert(model, pattern_set=[1, 2])
    with torch.no_grad():
        model[0].weight.copy_(ps.project.pattern(model[0].weight, ps.PatternSet.candidates()))
    once = ps.convert(model)
    twice = ps.convert(once)
    assert isinstance(twice[0], PatternConv2d)


def test_impossible_constraints_fail_at_construction():
    with pytest.raises(ValueError, match="k"):
        C.Pattern(k=100)
    w = nn.Parameter(torch.randn(4, 3, 3, 3))
    with pytest.raises(ValueError, match="conv.weight"):
        ps.ADMM([{"params": [w], "names": ["conv.weight"], "constraints": [C.Connectivity(keep=13)]}], lr=0.1)
    with pytest.raises(ValueError, match="filters"):
        ps.ADMM([{"params": [w], "constraints": [C.Filter(keep=5)]}], lr=0.1)


def test_convert_swaps_eligible_layers_anywhere():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.seq = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
            self.blocks = nn.ModuleList([nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)])
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.reflect = nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect")
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            x = self.seq(x)
            for b in self.blocks:
                x = b(x)
            x = self.reflect(self.dw(x))
            return self.fc(x.mean((2, 3)))

    net = Net()
    out = ps.convert(net, project=True)                       # unpruned: projecting is lossy, so asked for
    assert isinstance(out.seq[0], ps.nn.PatternConv2d) and isinstance(out.blocks[0], ps.nn.PatternConv2d)
    assert type(out.blocks[1]) is nn.Conv2d and type(out.dw) is nn.Conv2d and type(out.reflect) is nn.Conv2d
    assert type(net.seq[0]) is nn.Conv2d                      # not in place by default
    kept = ps.convert(net, exclude=["seq.0"], project=True)
    assert type(kept.seq[0]) is nn.Conv2d
    with pytest.raises(ValueError, match="not in the model"):
        ps.convert(net, exclude=["nope"])
    x = torch.randn(2, 3, 8, 8)
    dense = net
    for name, m in out.named_modules():                       # the converted net computes what its dense twin does
        if isinstance(m, ps.nn.PatternConv2d):
            dense = dense if dense is not net else copy.deepcopy(net)
            parent, _, child = name.rpartition(".")
            setattr(dense.get_submodule(parent) if parent else dense, child, m.to_dense())
    torch.testing.assert_close(out(x), dense(x), rtol=1e-4, atol=1e-5)


def test_convert_all_uses_compress_module():
    torch.manual_seed(0)
    m = models.LeNet5()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                mod.weight.copy_(project.quantize(project.unstructured(mod.weight, 0.05), 2))
    c = ps.convert(m, layers="all")
    kinds = [type(x) for x in c.modules()]
    assert kinds.count(SparseConv2d) == 2 and kinds.count(SparseLinear) == 3
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(c(x), m(x), rtol=1e-5, atol=1e-5)  # native sparse op: another summation order


def _pruned_smallnet(seed: int) -> SmallNet:
    """SmallNet with pattern-pruned 3x3 convs (30% of kernels) and a 20% unstructured FC."""
    torch.manual_seed(seed)
    model = SmallNet().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                pset = ps.PatternSet.select([m.weight], k=8)
                keep = (torch.rand(m.weight.shape[:2]) < 0.3)[..., None, None]
                m.weight.copy_(project.pattern(m.weight, pset) * keep)
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2)
        model.fc.weight.mul_(torch.rand_like(model.fc.weight) < 0.2)
    return model


@pytest.mark.parametrize("layers,bits", [("3x3", None), ("3x3", 4), ("all", None), ("all", 3)])
def test_load_compressed_restores_a_weights_only_file_into_a_fresh_model(tmp_path, layers, bits):
    model = _pruned_smallnet(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lossy" with bits: asked for
        converted = ps.convert(model, layers=layers, bits=bits).eval()
    torch.save(converted.state_dict(), tmp_path / "c.pt")
    fresh = ps.load_compressed(SmallNet().eval(), torch.load(tmp_path / "c.pt", weights_only=True))
    assert [type(m) for m in fresh.modules()] == [type(m) for m in converted.modules()]
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(fresh(x), converted(x))
    assert not fresh.training
    if bits is not None:
        assert {m.bits for m in fresh.modules() if isinstance(m, PatternConv2d)} == {bits}


@pytest.mark.parametrize("assign", [False, True])
def test_load_compressed_keeps_frozen_layers_frozen_and_their_hooks(assign):
    """The transfer-learning order (build, freeze the backbone, hook a layer, then load weights):
    load_state_dict keeps requires_grad and hooks, so load_compressed does too."""
    converted = ps.convert(_pruned_smallnet(0), layers="all").eval()
    fresh = SmallNet().eval()
    for p in fresh.parameters():
        p.requires_grad_(False)
    fresh.fc.requires_grad_(True)
    seen = []
    conv_name = next(n for n, m in converted.named_modules() if isinstance(m, PatternConv2d))
    fresh.get_submodule(conv_name).register_forward_hook(lambda m, i, o: seen.append(type(m).__name__))
    ps.load_compressed(fresh, converted.state_dict(), assign=assign)
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == {n for n, _ in fresh.fc.named_parameters(
        prefix="fc")}
    fresh(torch.randn(1, 1, 16, 16))
    assert seen == ["PatternConv2d"]


def test_load_compressed_rejects_what_it_cannot_place():
    sd = ps.convert(_pruned_smallnet(1)).state_dict()
    wrong = SmallNet()
    wrong.features[0] = nn.Conv2d(1, 16, 5, padding=2)  # not a 3x3: cannot hold PatternConv2d arrays
    with pytest.raises(ValueError, match="'features.0'.*cannot replace"):
        ps.load_compressed(wrong, sd)
    with pytest.raises(RuntimeError, match="Unexpected key|Missing key"):  # torch's strict load, after the swaps
        ps.load_compressed(SmallNet(bn=False), sd)
    with pytest.raises(TypeError, match="mapping"):
        ps.load_compressed(SmallNet(), [1, 2])
    plain = SmallNet()  # a dense state_dict loads as load_state_dict would
    assert type(ps.load_compressed(SmallNet(), plain.state_dict()).features[0]) is nn.Conv2d


class _AllKinds(nn.Module):
    """A 3x3 conv, a strided 1x1 conv and a Linear: one layer of each compressed kind under layers="all"."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.down = nn.Conv2d(16, 16, 1, stride=2)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(F.relu(self.down(F.relu(self.conv(x)))).mean((2, 3)))


@pytest.mark.parametrize("bits", [None, 4])
def test_torch_compile_traces_converted_models_whole_with_gradients(bits):
    """torch.compile (fullgraph: any graph break fails) of a converted model, forward and backward:
    the sparse ops' input gradient must be traceable (it was a data-dependent Python decode)."""
    torch.manual_seed(0)
    dense = _AllKinds()
    with torch.no_grad():
        pset = ps.PatternSet.select([dense.conv.weight], k=8)
        dense.conv.weight.copy_(project.pattern(dense.conv.weight, pset) * (torch.rand(16, 3) < 0.5)[..., None, None])
        for m in (dense.down, dense.fc):
            m.weight.mul_(torch.rand_like(m.weight) < 0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = ps.convert(copy.deepcopy(dense), layers="all", bits=bits)
    assert {type(m) for m in converted.modules()} >= {PatternConv2d, SparseConv2d, SparseLinear}
    compiled = torch.compile(converted, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 3, 12, 12, requires_grad=True)
    eager_x = x.detach().clone().requires_grad_()
    out, ref = compiled(x), converted(eager_x)
    torch.testing.assert_close(out, ref)
    out.square().sum().backward()
    ref.square().sum().backward()
    torch.testing.assert_close(x.grad, eager_x.grad)
    if bits is None:  # lossless: the dense model's input gradient
        dense_x = x.detach().clone().requires_grad_()
        dense(dense_x).square().sum().backward()
        torch.testing.assert_close(x.grad, dense_x.grad, rtol=1e-4, atol=1e-6)
    torch._dynamo.reset()


def _pruned(m):
    with torch.no_grad():
        m.weight[m.weight.abs() < m.weight.abs().median()] = 0
    return m


@pytest.mark.parametrize("layers", ["3x3", "all"])
def test_pruned_layers_left_dense_are_listed_with_the_reason(layers):
    torch.manual_seed(0)
    model = nn.Sequential(_pruned(nn.Conv2d(8, 8, 3, padding=1, groups=8)),
                          _pruned(nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect")),
                          nn.Conv2d(8, 8, 3, padding=1, groups=2))  # not pruned: no news under "3x3"
    with pytest.warns(UserWarning, match="left dense") as record:
        out = ps.convert(model, layers=layers)
    text = " ".join(str(w.message) for w in record)
    assert "'1': padding_mode='reflect'" in text
    assert ("'0': groups=8: PatternConv2d takes groups=1" in text) == (layers == "3x3")
    assert ("'2'" in text) == (layers == "all")
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(out(x), model(x), rtol=1e-5, atol=1e-6)


def test_float64_sparse_layers_say_why_they_stay_dense():
    """A float64 Linear / 1x1 conv whose weights float32 cannot hold stays dense (convert is exact) and the
    warning says why; with bits (lossy, asked for) it converts."""
    model = nn.Sequential(nn.Flatten(), _pruned(nn.Linear(16, 4))).double()
    with torch.no_grad():
        model[1].weight.mul_(1 + 1e-12)
    with pytest.warns(UserWarning, match="'1': float64 weight with more precision than the float32 values"):
        out = ps.convert(model, layers="all")
    assert type(out[1]) is nn.Linear
    with pytest.warns(UserWarning, match="lossy"):
        assert type(ps.convert(model, layers="all", bits=8)[1]) is SparseLinear


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_layers_all_converts_other_float_dtypes_float32_holds_exactly(dtype):
    """float16 / bfloat16 layers, and float64 ones with float32 values, are stored as sparse layers in
    their dtype, computing what the dense model does (they were left dense: 'store float32 values',
    while SparseLinear.from_dense took them)."""
    torch.manual_seed(0)
    model = nn.Sequential(_pruned(nn.Conv2d(8, 8, 1)), nn.Flatten(), _pruned(nn.Linear(8 * 16, 4))).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "left dense", no "lossy"
        out = ps.convert(model, layers="all")
    assert [type(m) for m in out] == [SparseConv2d, nn.Flatten, SparseLinear]
    assert all(m.conversion_error == 0.0 and m.values.dtype == dtype for m in (out[0], out[2]))
    x = torch.randn(3, 8, 4, 4, dtype=dtype)
    torch.testing.assert_close(out(x), model(x), **({} if dtype == torch.float64 else {"rtol": 1e-2, "atol": 1e-2}))
    assert all(sum(m.storage_bits().values()) < m.dense_bits() for m in (out[0], out[2]))


def _pattern_pruned_conv(cin=4, cout=8, **kw):
    conv = nn.Conv2d(cin, cout, 3, padding=1, **kw)
    with torch.no_grad():
        conv.weight.copy_(project.pattern(conv.weight, ps.PatternSet.select(conv.weight, k=8)))
    return conv


def test_hooks_and_frozen_parameters_carry_over():
    torch.manual_seed(0)
    model = nn.Sequential(_pattern_pruned_conv(), nn.ReLU())
    model[0].register_forward_hook(lambda m, i, o: o * 2)
    model[0].register_forward_pre_hook(lambda m, i: (i[0] + 1,))
    model[0].requires_grad_(False)
    out = ps.convert(model)
    assert isinstance(out[0], PatternConv2d)
    assert not any(p.requires_grad for p in out[0].parameters())
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(out(x), model(x), rtol=1e-5, atol=1e-5)


def test_state_dict_hooks_move_and_handles_still_remove_them():
    """convert kept only the forward / backward hooks (state_dict and load_state_dict hooks were lost,
    and a load pre-hook registered on the layer then called a dead module), and a handle the user held
    no longer removed a hook from the converted layer (convert(inplace=True))."""
    torch.manual_seed(0)
    model = nn.Sequential(_pattern_pruned_conv(), nn.Flatten(), nn.Linear(8 * 36, 3))
    with torch.no_grad():
        model[2].weight.mul_((torch.rand(3, 8 * 36) < 0.2).float())
    calls = []
    handles = []
    for i in (0, 2):
        layer = model[i]
        handles += [layer.register_forward_hook(lambda m, a, o, i=i: calls.append(f"forward {i}")),
                    layer.register_state_dict_pre_hook(lambda m, p, k, i=i: calls.append(f"sd pre {i}")),
                    layer.register_state_dict_post_hook(lambda m, sd, p, meta, i=i: calls.append(f"sd post {i}")),
                    layer.register_load_state_dict_pre_hook(
                        lambda m, sd, p, *a, i=i: calls.append(f"load pre {i} {type(m).__name__}")),
                    layer.register_load_state_dict_post_hook(lambda m, keys, i=i: calls.append(f"load post {i}"))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ps.convert(model, layers="all", inplace=True)
    assert [type(m) for m in model] == [PatternConv2d, nn.Flatten, SparseLinear]
    model(torch.randn(1, 4, 6, 6))
    model.load_state_dict(model.state_dict())
    for i, kind in ((0, "PatternConv2d"), (2, "SparseLinear")):
        for what in ("forward", "sd pre", "sd post", f"load pre {i} {kind}", "load post"):
            name = what if what.startswith("load pre") else f"{what} {i}"
            assert name in calls, (name, calls)
    for h in handles:
        h.remove()
    calls.clear()
    model(torch.randn(1, 4, 6, 6))
    model.load_state_dict(model.state_dict())
    assert calls == []


def test_a_load_pre_hook_runs_before_the_layer_reads_the_state_dict():
    """nn.Module runs load_state_dict pre-hooks before anything reads the state_dict; the compressed
    layers checked (and resized) first: a hook renaming legacy keys failed on arrays of another
    sparsity, and arrays the hook supplied were stored unchecked."""
    def rename_legacy(module, state_dict, prefix, *args):
        for k in list(state_dict):
            if k.startswith(prefix + "old_"):
                state_dict[prefix + k[len(prefix) + 4:]] = state_dict.pop(k)

    def pruned_linear(keep):
        layer = nn.Linear(16, 4)
        with torch.no_grad():
            layer.weight.mul_((torch.rand(4, 16) < keep).float())
        return layer

    torch.manual_seed(0)
    src, dst = SparseLinear.from_dense(pruned_linear(0.5)), SparseLinear.from_dense(pruned_linear(0.2))
    dst.register_load_state_dict_pre_hook(rename_legacy)
    dst.load_state_dict({"old_" + k: v for k, v in src.state_dict().items()})
    x = torch.randn(2, 16)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    conv = PatternConv2d.from_dense(_pattern_pruned_conv())
    bad = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in conv.state_dict().items()}
    bad["kernel_channel"][0] = 1000
    conv.register_load_state_dict_pre_hook(rename_legacy)
    before = conv.kernel_channel.clone()
    with pytest.raises(RuntimeError, match=r"kernel_channel\[0\] = 1000 is outside"):
        conv.load_state_dict({"old_" + k: v for k, v in bad.items()})
    assert torch.equal(conv.kernel_channel, before)


def test_module_type_keeps_the_index_arrays_integer():
    """nn.Module.type casts every tensor: the index arrays became float and the next forward failed."""
    torch.manual_seed(0)
    model = nn.Sequential(_pattern_pruned_conv(), nn.Flatten(), nn.Linear(8 * 36, 3))
    with torch.no_grad():
        model[2].weight.mul_((torch.rand(3, 8 * 36) < 0.2).float())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = ps.convert(model, layers="all", bits=4)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    want = copy.deepcopy(converted).double()(x)
    for dst in (torch.float64, "torch.DoubleTensor"):
        got = copy.deepcopy(converted).type(dst)
        assert all(a.dtype == b.dtype for a, b in zip(got[0].buffers(), converted[0].buffers())
                   if not a.is_floating_point())
        torch.testing.assert_close(got(x), want, rtol=0, atol=0)
    assert converted[0].transposed is False and converted[0].output_padding == (0, 0)  # nn.Conv2d's attributes


def test_an_excluded_container_keeps_everything_in_it_dense():
    torch.manual_seed(0)
    model = nn.Module()
    model.features = nn.Sequential(_pattern_pruned_conv(), nn.ReLU(), _pattern_pruned_conv(8, 8))
    model.head = _pattern_pruned_conv(8, 4)
    out = ps.convert(model, exclude="features", bits=4)
    assert all(type(m) is nn.Conv2d for m in out.features if isinstance(m, nn.Conv2d))
    assert isinstance(out.head, PatternConv2d)
    pset = ps.PatternSet.select(model.features[0].weight, k=8)
    out = ps.convert(model, pattern_set={"features": pset}, project=True)  # a container key: its convs
    assert isinstance(out.features[0], PatternConv2d) and isinstance(out.features[2], PatternConv2d)


def test_a_layer_registered_twice_is_swapped_at_both_places():
    torch.manual_seed(0)
    class Tied(nn.Module):
        def __init__(self, conv):
            super().__init__()
            self.a, self.b = conv, conv

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))
    model = Tied(_pattern_pruned_conv(8, 8))
    out = ps.convert(model, bits=4)
    assert isinstance(out.a, PatternConv2d) and out.a is out.b
    ref = nn.Sequential(out.a.to_dense(), nn.ReLU(), out.a.to_dense())
    x = torch.randn(1, 8, 6, 6)
    torch.testing.assert_close(out(x), ref(x), rtol=1e-5, atol=1e-5)


def test_project_with_bits_projects_an_unpruned_conv():
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="lossy"):
        out = ps.convert(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1)), project=True, bits=4)
    assert isinstance(out[0], PatternConv2d) and out[0].patterns.shape[1] == 4 and out[0].bits == 4


def test_a_single_layer_converts():
    conv = _pattern_pruned_conv()
    out = ps.convert(conv)
    assert isinstance(out, PatternConv2d)
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(out(x), conv(x), rtol=1e-5, atol=1e-5)


def test_a_model_pruned_with_torch_prune():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    for m in (model[0], model[2]):
        torch.nn.utils.prune.l1_unstructured(m, "weight", amount=0.8)
    x = torch.randn(2, 4, 6, 6)
    ref = model(x)
    with pytest.raises(RuntimeError, match=r"layer '0' uses torch.nn.utils.prune.*prune.remove.*or convert with inplace=True"):
        ps.convert(model, layers="all")
    with pytest.raises(RuntimeError, match=r"optimize_for_inference: .*layer '0' uses torch.nn.utils.prune.*prune.remove"):
        ps.optimize_for_inference(model)
    out = ps.convert(model, layers="all", inplace=True)
    assert isinstance(out[0], (PatternConv2d, SparseConv2d)) and isinstance(out[2], SparseLinear)
    assert not out[0]._forward_pre_hooks  # prune's reparametrization hook stays behind
    torch.testing.assert_close(out(x), ref, rtol=1e-5, atol=1e-5)


def test_a_torch_prune_model_converts_what_it_computes_not_a_stale_weight():
    """prune's ``weight`` is recomputed only in the forward pre-hook: after an optimizer step or a
    load_state_dict, convert(inplace=True) stored the old weight (conversion_error 0, no warning)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    for m in (model[0], model[2]):
        torch.nn.utils.prune.l1_unstructured(m, "weight", amount=0.8)
    x = torch.randn(2, 4, 6, 6)
    model(x).sum().backward()
    torch.optim.SGD(model.parameters(), lr=1.0).step()       # weight_orig moved, weight not yet
    saved = copy.deepcopy(model.state_dict())
    fresh = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    for m, src in zip((fresh[0], fresh[2]), (model[0], model[2])):
        torch.nn.utils.prune.custom_from_mask(m, "weight", src.weight_mask)
    fresh.load_state_dict(saved)                              # the usual reload: weight is the init's
    for net in (model, fresh):
        with torch.no_grad():  # what its next forward computes (the pre-hook recomputes weight then)
            conv, fc = net[0], net[2]
            want = F.linear(F.conv2d(x, conv.weight_orig * conv.weight_mask, conv.bias).flatten(1),
                            fc.weight_orig * fc.weight_mask, fc.bias)
        out = ps.convert(net, layers="all", inplace=True)
        with torch.no_grad():
            torch.testing.assert_close(out(x), want, rtol=1e-5, atol=1e-5)


def test_layers_all_stores_an_unstructured_3x3_conv_in_the_smaller_form():
    """Unstructured 3x3 sparsity fits patterns of up to 9 weights: PatternConv2d stored it 2-3x larger
    than SparseConv2d (and ran it slower than dense). A pattern-pruned layer keeps PatternConv2d."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1))
    torch.nn.utils.prune.l1_unstructured(model[0], "weight", amount=0.7)
    torch.nn.utils.prune.remove(model[0], "weight")
    with torch.no_grad():
        pset = ps.PatternSet.select([model[1].weight], k=8)
        model[1].weight.copy_(project.pattern(model[1].weight, pset))
    x = torch.randn(1, 16, 8, 8)
    for bits in (None, 4):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = ps.convert(model, layers="all", bits=bits)
        assert isinstance(out[0], SparseConv2d) and isinstance(out[1], PatternConv2d), bits
        as_patterns = PatternConv2d.from_dense(model[0], bits=bits)
        assert sum(out[0].storage_bits().values()) < sum(as_patterns.storage_bits().values()) / 2
        if bits is None:
            torch.testing.assert_close(out(x), model(x), rtol=1e-5, atol=1e-5)


def test_a_model_that_cannot_be_copied_is_named_as_such():
    """Not every deepcopy failure is torch.nn.utils.prune's (the message suggested it for any)."""
    model = nn.Sequential(nn.Conv2d(4, 8, 3))
    model.lock = threading.Lock()
    for call in (ps.convert, ps.optimize_for_inference):
        with pytest.raises(TypeError, match=r"cannot pickle.*an attribute of the model cannot be copied") as err:
            call(model)
        assert "prune" not in str(err.value)


def test_from_dense_refuses_other_layer_classes():
    with pytest.raises(TypeError, match="takes an nn.Conv2d, got ConvTranspose2d"):
        SparseConv2d.from_dense(nn.ConvTranspose2d(4, 4, 3))
    with pytest.raises(TypeError, match="takes an nn.Linear, got Conv2d"):
        SparseLinear.from_dense(nn.Conv2d(4, 4, 1))

    class Scaled(nn.Conv2d):
        def forward(self, x):
            return 2 * super().forward(x)
    with pytest.raises(ValueError, match="own forward"):
        SparseConv2d.from_dense(Scaled(4, 4, 1))


def test_load_compressed_says_what_it_did_not_load():
    torch.manual_seed(0)
    model = nn.Sequential(_pattern_pruned_conv(), nn.ReLU(), nn.Conv2d(8, 4, 1))
    sd = {k: v for k, v in ps.convert(model).state_dict().items() if not k.startswith("2.")}
    with pytest.warns(UserWarning, match=r"missing keys \['2.weight', '2.bias'\]"):
        ps.load_compressed(nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)), sd,
                           strict=False)
    optimized = ps.optimize_for_inference(ps.convert(nn.Sequential(_pattern_pruned_conv(), nn.BatchNorm2d(8)).eval()))
    with pytest.raises(RuntimeError, match="optimize_for_inference result"):
        ps.load_compressed(nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8)), optimized.state_dict())


def test_traced_pattern_conv_keeps_the_channel_check_without_warnings():
    conv = _pattern_pruned_conv()
    pc = PatternConv2d.from_dense(conv)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(pc, torch.randn(1, 4, 6, 6))
    x = torch.randn(3, 4, 7, 5).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(traced(x), conv(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError):
        traced(torch.randn(1, 5, 6, 6))  # 5 channels: the stored kernels read 4 (was silently accepted)


def test_a_weight_shared_by_two_layers_stays_one_parameter():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = _pattern_pruned_conv(4, 4)
            self.b = nn.Conv2d(4, 4, 3, padding=2, dilation=2)
            self.b.weight, self.b.bias = self.a.weight, self.a.bias

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))
    model = Tied()
    out = ps.convert(model)
    assert out.a is not out.b and out.a.values is out.b.values and out.a.bias is out.b.bias
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(out(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("form", ["kbit_pattern", "sparse_conv", "sparse_linear"])
def test_a_tied_weight_stays_one_copy_in_every_stored_form(form):
    """k-bit PatternConv2d and SparseConv2d / SparseLinear stored a weight tied between two layers once
    per layer: the state_dict held it twice and compression_report of the converted model counted a dense
    model twice the original's (4.26x reported for 2.16x)."""
    torch.manual_seed(0)
    if form == "sparse_linear":
        a, b = nn.Linear(64, 64), nn.Linear(64, 64)
        x = torch.randn(3, 64)
    else:  # (unstructured 20% of a 1x1 conv: the sparse form)
        a = _pattern_pruned_conv(16, 16) if form == "kbit_pattern" else nn.Conv2d(16, 16, 1)
        b = nn.Conv2d(16, 16, a.kernel_size, padding=a.padding)
        x = torch.randn(2, 16, 8, 8)
    b.weight = a.weight
    if form != "kbit_pattern":
        with torch.no_grad():
            a.weight.mul_((torch.rand_like(a.weight) < 0.2).float())
    model = nn.Sequential(a, nn.ReLU(), b)
    kw = {"bits": 4} if form == "kbit_pattern" else {"layers": "all"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = ps.convert(model, **kw)
    want = {"kbit_pattern": PatternConv2d, "sparse_conv": SparseConv2d, "sparse_linear": SparseLinear}[form]
    assert type(out[0]) is want and type(out[2]) is want
    for (name, t), u in zip(out[0].named_buffers(), out[2].buffers()):
        if name not in out[0]._non_persistent_buffers_set:
            assert t is u, name
    dense = ps.compression_report(model).totals["model_dense_bits"]
    assert ps.compression_report(out).totals["model_dense_bits"] == dense
    if form != "kbit_pattern":
        torch.testing.assert_close(out(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("magnitude", [1e-200, 1.0, 1e200])
def test_conversion_error_at_any_magnitude_of_a_float64_model(magnitude):
    """The relative error is scale-free: float64 weights of 1e-200 / 1e200 (whose squares underflow /
    overflow) report the error of weights of 1, and the lossy-conversion warning lists them."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(6, 4, 3, 3, dtype=torch.float64) * magnitude)
    with pytest.warns(UserWarning, match="lossy conversion"):
        new = ps.convert(nn.Sequential(conv), project=True, bits=4)[0]
    w = conv.weight.double() / magnitude
    want = float((new.to_dense().weight.double() / magnitude - w).norm() / w.norm())
    assert want > 0.01 and new.conversion_error == pytest.approx(want, rel=1e-9)


def test_a_weight_convert_cannot_store_names_its_layer():
    model = models.sparsify_random(models.fmnist_vgg())
    with torch.no_grad():
        model.features[3].weight[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"convert: layer 'features\.3': .*NaN"):
        ps.convert(model)


_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("autocast", [None, torch.bfloat16], ids=["plain", "autocast_bf16"])
@pytest.mark.parametrize("given", _DTYPES, ids=str)
@pytest.mark.parametrize("own", _DTYPES, ids=str)
def test_input_dtypes_are_taken_or_refused_as_the_dense_layers(own, given, autocast):
    """Drop-in, inputs and errors included: every converted layer kind (3x3 PatternConv2d, 1x1 /
    5x5 SparseConv2d, SparseLinear) in dtype ``own`` takes input of dtype ``given`` exactly when the
    dense layer does (same output dtype), and raises its message otherwise; with autocast too."""
    torch.manual_seed(0)
    layers = [(nn.Conv2d(4, 6, 3, padding=1), (1, 4, 5, 5)), (nn.Conv2d(4, 6, 1), (1, 4, 5, 5)),
              (nn.Conv2d(4, 6, 5, padding=2), (1, 4, 5, 5)), (nn.Linear(4, 6), (2, 4))]
    for layer, shape in layers:
        with torch.no_grad():
            layer.weight.mul_(torch.rand(layer.weight.shape) < 0.3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = ps.convert(nn.Sequential(layer), layers="all", project=True)[0].to(own)
        dense = ours.to_dense()
        assert type(ours) is not type(layer) and dense.weight.dtype == own
        x = torch.randn(shape).to(given)
        results = []
        for m in (dense, ours):
            with torch.autocast("cpu", dtype=autocast) if autocast else contextlib.nullcontext():
                try:
                    results.append(m(x))
                except RuntimeError as e:
                    results.append(str(e))
        want, got = results
        if isinstance(want, str):
            assert got == want, type(ours).__name__
        else:
            assert isinstance(got, torch.Tensor) and got.dtype == want.dtype, type(ours).__name__
            torch.testing.assert_close(got.double(), want.double(), rtol=0.05, atol=0.05)


def test_torch_compile_of_a_cropped_channels_last_input():
    """A center crop of a channels_last input has channels_last strides that are not dense: the native
    ops return channels_last for it (ATen's suggest_memory_format), and the fake kernels must say the
    same (they said NCHW: a stride assertion under inductor, a view error under aot_eager)."""
    torch.manual_seed(0)
    body = models.sparsify_random(nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                                nn.ReLU(), nn.Conv2d(16, 8, 1)).eval())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = ps.convert(body, layers="all").eval()
    x = torch.randn(2, 16, 12, 12).contiguous(memory_format=torch.channels_last)
    for model in (converted, ps.optimize_for_inference(converted)):
        def crop(t, model=model):
            return model(t[:, :, 2:-2, 2:-2]).flatten(1)
        with torch.no_grad():
            torch.testing.assert_close(torch.compile(crop, backend="aot_eager", fullgraph=True)(x), crop(x))
        torch._dynamo.reset()


def test_torch_compile_training_with_dynamic_batch_compiles_once():
    """The input-gradient op takes the input size as SymInt[]: with int[] every new batch size of a
    training loop (the last, smaller batch of an epoch) recompiled."""
    from torch._dynamo.utils import counters
    torch.manual_seed(0)
    dense = models.sparsify_random(nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 1, 1),
                                                 nn.Flatten(), nn.Linear(16 * 64, 10)))
    converted = ps.convert(dense)
    assert isinstance(converted[2], PatternConv2d)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(converted, backend="aot_eager", dynamic=True)
    for n in (2, 3, 5):
        x = torch.randn(n, 3, 8, 8, requires_grad=True)
        compiled(x).sum().backward()
        want = x.detach().clone().requires_grad_()
        converted(want).sum().backward()
        torch.testing.assert_close(x.grad, want.grad)
    assert counters["stats"]["unique_graphs"] == 1
    torch._dynamo.reset()


def test_compiled_code_cannot_write_into_the_decode_cache(tmp_path, monkeypatch):
    """pattern_decode / sparse_decode are functional ops: inductor may reuse their output buffer in place
    (no version bump). They handed out the decode cache's own tensor, so one compiled function changed
    every later decode of the same arrays: the layers' outputs and to_dense() silently."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    dense = models.sparsify_random(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False),
                                                 nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ps.convert(dense, layers="all", bits=4).eval()
    pconv, sconv = model[0], model[1]
    assert isinstance(pconv, PatternConv2d) and isinstance(sconv, SparseConv2d)
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        ref, ref_weights = model(x), [m.to_dense().weight for m in model]
    K, E = pconv.kept_kernels, pconv.patterns.shape[1]

    @torch.compile(backend="inductor", fullgraph=True)
    def scaled(codes, scale, header, index, scodes, values, code_scale):
        a = torch.ops.patsparse.pattern_decode(codes, scale, K, E, 4, "uniform") * 2 + 1
        b = torch.ops.patsparse.sparse_decode(header, index, scodes, values, code_scale, list(sconv.weight_shape))
        return a, b * 2 + 1

    with torch.no_grad():
        for _ in range(2):
            scaled(pconv.codes, pconv.scale, sconv.header, sconv.index, sconv.codes, sconv.values.float(),
                   sconv.scale.float())
        torch.testing.assert_close(model(x), ref, rtol=0, atol=0)
        for m, w in zip(model, ref_weights):
            torch.testing.assert_close(m.to_dense().weight, w, rtol=0, atol=0)
    torch._dynamo.reset()


@pytest.mark.parametrize("norm", ["weight_norm", "spectral_norm"])
@pytest.mark.parametrize("inplace", [False, True])
def test_hook_based_weight_norms_are_a_clear_error(norm, inplace):
    """The hook-based torch.nn.utils.weight_norm / spectral_norm recompute the weight from other
    parameters at every forward: convert(inplace=True) kept the hook on the new layer, whose first
    forward then failed (no weight_g / weight_orig). After remove_* the layer converts."""
    torch.manual_seed(0)
    layer = getattr(torch.nn.utils, norm)(models.sparsify_random(nn.Sequential(nn.Conv2d(4, 8, 3, padding=1)),
                                                                 keep3x3=1.0)[0])
    model = nn.Sequential(layer, nn.ReLU(), nn.Conv2d(8, 8, 1))
    with pytest.raises(ValueError, match=f"layer '0'.*remove_{norm}"):
        ps.convert(model, inplace=inplace)
    getattr(torch.nn.utils, f"remove_{norm}")(layer)
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(ps.convert(model, inplace=inplace)(x), model(x))


@pytest.mark.parametrize("bits", [None, 4])
def test_load_compressed_into_a_meta_device_model_with_assign(bits):
    """A model built on the meta device (no memory for the dense weights) loads a converted model's
    state_dict with assign=True, as load_state_dict does; without it, as there, the load is a no-op with
    torch's warning (it failed in the sparse layers with "Cannot copy out of meta tensor")."""
    def net():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.Flatten(),
                             nn.Linear(8 * 36, 4))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = ps.convert(models.sparsify_random(net()), layers="all", bits=bits)
    with torch.device("meta"):
        model = net()
    with pytest.warns(UserWarning, match="assign=True"):
        on_meta = ps.load_compressed(copy.deepcopy(model), converted.state_dict())
    assert all(t.is_meta for t in on_meta.state_dict().values() if torch.is_tensor(t))
    model = ps.load_compressed(model, converted.state_dict(), assign=True)
    assert [type(m) for m in model] == [type(m) for m in converted]
    assert all(t.device.type == "cpu" for t in model.state_dict().values() if torch.is_tensor(t))
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(model(x), converted(x), rtol=0, atol=0)


def test_load_compressed_strict_false_names_what_is_left_on_the_meta_device():
    """A weights file without the last layer's bias loaded with assign=True, strict=False into a meta
    model: the warning says that bias has no data yet, and so does the forward (it said "the input
    does not fit the layer", naming nothing)."""
    net, converted = small_net_and_converted()
    sd = converted.state_dict()
    del sd["2.bias"]
    with torch.device("meta"):
        model = net()
    with pytest.warns(UserWarning, match=r"\['2.bias'\] are on the meta device"):
        ps.load_compressed(model, sd, strict=False, assign=True)
    with pytest.raises(RuntimeError, match="the layer's bias is on meta, its weights on cpu"):
        model(torch.randn(1, 3, 6, 6))
    with pytest.warns(UserWarning) as record:  # a CPU model: the missing bias keeps real values, no meta note
        ps.load_compressed(net(), sd, strict=False)
    assert not any("meta" in str(r.message) for r in record)


def test_convert_of_a_meta_device_model_is_a_clear_error():
    """A model built on the meta device has no values to compress: a ValueError saying what to do
    (it failed in torch: 'aten::bincount ... no Meta kernel'); a meta converted model cannot be
    requantized either ('Cannot copy out of meta tensor')."""
    with torch.device("meta"):
        model = SmallNet()
    for kw in ({}, {"layers": "all"}):
        with pytest.raises(ValueError, match="meta device.*load the weights first"):
            ps.convert(model, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = ps.convert(models.sparsify_random(SmallNet()), layers="all").to("meta")
    with pytest.raises(ValueError, match="meta device"):
        ps.convert(converted, bits=4)


def test_convert_and_from_dense_inside_a_meta_default_device_block():
    """Inside ``with torch.device("meta")`` (building the next model there), convert / from_dense /
    to_dense / load_compressed of a CPU model make their tensors on the weights' device, as outside
    (they failed in torch: nonzero / item / copy out of meta)."""
    torch.manual_seed(0)
    model = models.sparsify_random(SmallNet())
    lin = nn.Linear(16, 8)
    with torch.no_grad():
        lin.weight[lin.weight.abs() < 0.1] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = ps.convert(model, layers="all", bits=4)
        with torch.device("meta"):
            got = ps.convert(model, layers="all", bits=4)
            dense = [(m.to_dense(), type(m)) for m in got.modules() if hasattr(m, "to_dense")]
            again = [cls.from_dense(d, bits=4) for d, cls in dense]
            sparse_lin = SparseLinear.from_dense(lin)
            loaded = ps.load_compressed(SmallNet(), want.state_dict(), assign=True)  # a meta model, as the docs say
    assert dense and all(not t.is_meta for m in (got, loaded, sparse_lin, *again)
                         for t in m.state_dict().values() if torch.is_tensor(t))
    x, z = torch.randn(2, 1, 16, 16), torch.randn(3, 16)
    torch.testing.assert_close(got(x), want(x), rtol=0, atol=0)
    torch.testing.assert_close(loaded(x), want(x), rtol=0, atol=0)
    torch.testing.assert_close(sparse_lin(z), lin(z))
    for (d, _), m in zip(dense, again):
        y = torch.randn(2, d.in_channels, 6, 6) if isinstance(d, nn.Conv2d) else torch.randn(2, d.in_features)
        torch.testing.assert_close(m(y), d(y))


class _SharedLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = self.a

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("kw", [{}, {"layers": "all", "bits": 4}], ids=["3x3", "all-4bit"])
def test_load_compressed_of_a_layer_registered_twice(kw):
    """convert converts a layer registered under two names once (shared); load_compressed placed a
    compressed module at the first name only and then failed on the second name's keys."""
    torch.manual_seed(0)
    model = models.sparsify_random(_SharedLayer(), keep3x3=0.5).eval()
    converted = ps.convert(model, **kw)
    loaded = ps.load_compressed(_SharedLayer().eval(), converted.state_dict())
    assert loaded.a is loaded.b and isinstance(loaded.a, PatternConv2d)
    x = torch.randn(1, 8, 6, 6)
    torch.testing.assert_close(loaded(x), converted(x), rtol=0, atol=0)


def test_convert_with_bits_quantizes_layers_converted_before():
    """Convert to float, fine-tune the values, then quantize: ``convert(converted, bits=4)`` stores the
    converted layers in 4 bits (their pattern sets kept) and reports the rounding, as a first
    conversion with bits=4 does (it left them in float32 silently)."""
    model = _pruned_smallnet(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = ps.convert(model, layers="all", bits=4)
    floats = ps.convert(model, layers="all")
    with pytest.warns(UserWarning, match="lossy"):
        again = ps.convert(floats, layers="all", bits=4)
    kinds_of = lambda m: [(type(x).__name__, getattr(x, "bits", None)) for x in m.modules()]  # noqa: E731
    assert kinds_of(again) == kinds_of(direct)
    for a, b in zip(again.modules(), floats.modules()):
        if isinstance(a, PatternConv2d):
            assert a.bits == 4 and torch.equal(a.patterns, b.patterns) and a.conversion_error > 0
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), direct.eval()(x), rtol=1e-5, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # already 4-bit: nothing to do, nothing lost
        ps.convert(again, layers="all", bits=4)


def test_convert_refuses_a_scripted_model():
    with pytest.raises(TypeError, match="scripted"):
        ps.convert(torch.jit.script(SmallNet()))


def test_convert_says_to_hard_prune_a_layer_admm_trained_but_did_not_prune():
    torch.manual_seed(0)
    model = SmallNet()
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1]
    opt = ps.ADMM([{"params": convs, "constraints": [C.Pattern(k=4)]}], base=torch.optim.SGD, lr=0.01,
                  update_every=1)
    x = torch.randn(4, 1, 16, 16)
    model(x).square().mean().backward()
    opt.step()
    with pytest.warns(UserWarning, match="hard_prune"):
        ps.convert(model)


def test_project_names_the_3x3_convs_it_cannot_take_and_bad_arguments_are_the_callers():
    """Found by a docs probe: with project=True a reflect-padded or grouped 3x3 conv stayed dense without a
    word (it held no zero); convert(bits='4') was blamed on the first layer."""
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), nn.Conv2d(4, 4, 3, padding=1, groups=2),
                          nn.Conv2d(4, 4, 3, padding=1))
    with pytest.warns(UserWarning, match="left dense.*'0': padding_mode='reflect'.*'1': groups=2"):
        ps.convert(model, project=True)
    for kwargs, match in ((dict(bits="4"), "^convert: bits must be"), (dict(scheme="pow"), "^convert: unknown quant")):
        with pytest.raises(ValueError, match=match):
            ps.convert(model, project=True, **kwargs)


def test_tiny_nonzero_weights_are_named_in_the_left_dense_warning():
    """Found by a migration probe: 'zeros' left as 1e-12 by another tool kept every layer dense, and the
    warning did not say why."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3)
    with torch.no_grad():
        keep = torch.zeros(9)
        keep[[1, 3, 4, 5]] = 1
        conv.weight.copy_(torch.where(keep.view(3, 3).bool(), conv.weight, torch.full_like(conv.weight, 1e-12)))
    with pytest.warns(UserWarning, match=r"left dense.*320 weights are nonzero but below 1e-9 of the largest"):
        ps.convert(nn.Sequential(conv))


def test_convert_and_to_dense_leave_the_random_stream_alone():
    """convert (its conversion_error) and to_dense built an nn.Conv2d / nn.Linear, whose init draws from
    the global RNG: a user's shuffling after convert followed another stream."""
    torch.manual_seed(0)
    model = ps.models.sparsify_random(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Flatten(), nn.Linear(32, 4)))
    with torch.no_grad():
        model[2].weight[:, ::2] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = ps.convert(model, layers="all")
    assert isinstance(converted[0], ps.nn.PatternConv2d) and isinstance(converted[2], ps.nn.SparseLinear)
    torch.manual_seed(123)
    want = torch.rand(4)
    torch.manual_seed(123)
    ps.convert(model, layers="all")
    for layer in (converted[0], converted[2]):
        layer.to_dense()
    assert torch.equal(torch.rand(4), want)


def test_a_convert_warning_raised_as_error_leaves_an_inplace_model_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="lossy"):
            ps.convert(model, project=True, inplace=True)
    assert type(model[0]) is nn.Conv2d


def test_layers_all_with_bits_stores_an_unpruned_3x3_conv_in_the_smaller_form():
    """An unpruned 3x3 conv with bits: one 9-entry pattern per kernel stored more than the sparse k-bit
    form of the same function (the 'smaller form' check ran only for weights with zeros)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = ps.convert(nn.Sequential(conv), layers="all", bits=4)[0]
        sparse = SparseConv2d.from_dense(conv, bits=4)
    assert isinstance(got, SparseConv2d)
    assert sum(got.storage_bits().values()) == sum(sparse.storage_bits().values())
    x = torch.randn(2, 16, 6, 6)
    torch.testing.assert_close(got(x), sparse(x))


@pytest.mark.parametrize("magnitude", [1e-200, 1e200])
def test_float64_weights_beyond_float32_are_refused_by_the_sparse_layers(magnitude):
    """The sparse layers store float32: a float64 Linear of 1e-200 weights became an all-zero layer
    (only the lossy warning said '1'), one of 1e200 was 'NaN or inf' (it is finite)."""
    lin = _pruned(nn.Linear(16, 4)).double()
    with torch.no_grad():
        lin.weight.mul_(magnitude)
    with pytest.raises(ValueError, match="layer '0'.*does not fit float32"):
        ps.convert(nn.Sequential(lin), layers="all", bits=4)
    with pytest.raises(ValueError, match="does not fit float32"):
        SparseLinear.from_dense(lin)
