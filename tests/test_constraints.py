"""Tests of torch_patsparse.constraints: argument validation, composition order, serialisation."""
import warnings

import pytest
import torch

import torch_patsparse as ps
from torch_patsparse import constraints as C
from torch_patsparse import project


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
    assert [C.from_spec(C.to_spec(c)) for c in o] == o
    with pytest.raises(ValueError, match="two Pattern"):
        C.ordered([C.Pattern(), C.Pattern(k=4)], "w")


ALL = [C.Pattern(k=8, entries=3, keep_center=False, group=2), C.Connectivity(keep=5, group=4), C.Unstructured(0.1),
       C.Filter(keep=2), C.Channel(keep=0.5), C.Quantize(bits=3, scheme="pow2")]


@pytest.mark.parametrize("c", ALL, ids=lambda c: type(c).__name__)
def test_one_spec_schema_and_the_old_state_dict_form(c):
    spec = C.to_spec(c)
    assert spec["type"] == type(c).__name__.lower() and C.from_spec(spec) == c
    old = {"kind": type(c).__name__, **{k: v for k, v in spec.items() if k != "type"}}  # optimizer files before
    assert C.from_spec(old) == c
    assert C.from_spec(c) is c
    with pytest.warns(DeprecationWarning, match="to_spec"):
        assert C.to_dict(C.Pattern(k=8)) == C.to_spec(C.Pattern(k=8))
    with pytest.warns(DeprecationWarning, match="from_spec"):
        assert C.from_dict({"kind": "Pattern", "k": 8}) == C.Pattern(k=8)


def test_spec_defaults_and_clear_errors():
    assert C.from_spec({"type": "pattern", "k": 8}) == C.Pattern(k=8)  # the CLI config's form
    with pytest.raises(ValueError, match="unknown constraint type 'patern'"):
        C.from_spec({"type": "patern"})
    with pytest.raises(ValueError, match="'type' key"):
        C.from_spec(["pattern"])
    with pytest.raises(ValueError, match="bad arguments for pattern"):
        C.from_spec({"type": "pattern", "kk": 8})
    with pytest.raises(ValueError, match="k must be an int"):
        C.from_spec({"type": "pattern", "k": 0})
    with pytest.raises(ValueError, match="unknown constraint type"):
        C.from_spec({"kind": "Nope"})


def test_quantize_projection_with_scale_and_old_name():
    w = torch.randn(6, 5, generator=torch.Generator().manual_seed(0)) * (torch.arange(30).view(6, 5) % 3 != 0)
    q = C.Quantize(bits=3)
    out, scale = q.project_with_scale(w)
    assert torch.equal(out, q.project(w)) and scale > 0
    assert torch.equal(out, project.quantize(w, 3))  # floats on the levels, zeros kept
    with pytest.warns(DeprecationWarning, match="project_with_scale"):
        old, old_scale = q.quantize_params(w)
    assert torch.equal(old, out) and old_scale == scale


def test_int_field_messages_read_plainly():
    with pytest.raises(ValueError, match=r"group must be an int >= 1, got 0$"):
        C.Pattern(group=0)
    with pytest.raises(ValueError, match=r"k must be an int in 1\.\.56, got 0$"):  # no hint about too few shapes
        C.Pattern(k=0)
    with pytest.raises(ValueError, match="there are only 56 shapes"):
        C.Pattern(k=60)
    with pytest.raises(TypeError, match="must be a list of constraint objects"):
        C.ordered(None)


def test_connectivity_on_one_kernel_filters_warns():
    """On a depthwise conv's [C, 1, 3, 3] weight each dropped kernel is a whole channel: keep=0.25
    zeroed 75% of MobileNet's depthwise channels without a word (the README's snippet picked them)."""
    import warnings
    dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
    for keep in (0.25, 1, 4):  # a fraction, or a count (keep=1: one kernel per layer)
        with pytest.warns(UserWarning, match="each filter has one kernel"):
            ps.ADMM([{"params": [dw.weight], "constraints": [C.Connectivity(keep=keep)]}], lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ps.ADMM([{"params": [dw.weight], "constraints": [C.Connectivity(keep=1.0)]}], lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ps.ADMM([{"params": [torch.nn.Conv2d(8, 8, 3).weight], "constraints": [C.Connectivity(keep=0.25)]}], lr=0.1)


def test_small_layers_that_cannot_honour_a_fraction_are_said():
    """Found by an ADMM probe: Connectivity(keep=0.25) on a [1, 1, 3, 3] weight kept 1 of 1 kernels and
    Filter(keep=0.1) on two filters kept one, with residuals 0.0 and no warning."""
    with pytest.warns(UserWarning, match=r"it has 2 filters, so 1 \(50%\) are kept"):
        C.Filter(keep=0.1).check_tensor((2, 3), "w")
    with pytest.warns(UserWarning, match="1 kernels.*so 1 .100%."):
        C.Connectivity(keep=0.25).check_tensor((1, 1, 3, 3), "w")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        C.Connectivity(keep=0.25).check_tensor((64, 64, 3, 3), "w")
        C.Unstructured(keep=0.1).check_tensor((8, 8, 3, 3), "w")
    with pytest.raises(TypeError, match="to_spec expects a constraint"):
        C.to_spec(3)
    with pytest.raises(ValueError, match="there is only 1 shape of 9 positions"):
        C.Pattern(k=2, entries=9)


def test_unstructured_in_groups_through_admm_and_convert():
    """Unstructured(keep, group=4): ADMM drives each group of 4 output rows onto one support, hard_prune
    fixes it, convert(layers="all") stores it sparse (the 1x1 / Linear kernels run such groups
    together) and the converted model computes the pruned one; the group survives to_spec / from_spec."""
    c = C.Unstructured(0.25, group=4)
    assert C.from_spec(C.to_spec(c)) == c and c != C.Unstructured(0.25)
    with pytest.raises(ValueError, match="group must be an int >= 1"):
        C.Unstructured(0.25, group=0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 24), torch.nn.ReLU(), torch.nn.Linear(24, 5))
    opt = ps.ADMM([{"params": [model[0].weight], "constraints": [c]},
                   {"params": [p for n, p in model.named_parameters() if n != "0.weight"]}],
                  base=torch.optim.SGD, lr=0.01, method="oneshot")
    x = torch.randn(16, 32)
    for _ in range(3):
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
    opt.hard_prune()
    kept = model[0].weight != 0
    assert torch.equal(kept, kept[::4].repeat_interleave(4, 0)) and 0 < kept.float().mean() <= 0.26
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = ps.convert(model, layers="all")
    assert type(converted[0]).__name__ == "SparseLinear"
    torch.testing.assert_close(converted(x), model(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"Unstructured\(group=4\) needs a tensor with at least 2 dimensions"):
        ps.ADMM([{"params": [model[0].bias], "constraints": [c]}], base=torch.optim.SGD, lr=0.1)


def test_hard_prune_of_float16_weights_keeps_the_real_ones():
    """hard_prune marked zeros with float16's smallest normal number (6e-5), above its small weights:
    the three zeros were kept and the three weights pruned (Unstructured), an all-zero kernel kept
    over one of norm 3e-5 (Connectivity)."""
    w = torch.nn.Parameter(torch.tensor([[0, 0, 0, 3e-5, 2e-5, 1e-5]], dtype=torch.float16))
    opt = ps.ADMM([{"params": [w], "constraints": [C.Unstructured(keep=3)]}], base=torch.optim.SGD, lr=0.0)
    opt.hard_prune()
    assert torch.equal(w.detach(), project.unstructured(w.detach(), 3)) and int(w.count_nonzero()) == 3
    k = torch.zeros(1, 3, 3, 3, dtype=torch.float16)
    k[0, 1, 0, 0], k[0, 2, 0, 0] = 3e-5, 6e-5
    v = torch.nn.Parameter(k.clone())
    opt = ps.ADMM([{"params": [v], "constraints": [C.Connectivity(keep=2)]}], base=torch.optim.SGD, lr=0.0)
    opt.hard_prune()
    assert torch.equal(v.detach(), k)


def test_building_blocks_take_what_their_siblings_take():
    """numpy ints as k / entries (C.Pattern and ADMM took them, PatternSet.select did not); an int
    weight is a TypeError in every projection (pattern / connectivity projected it); sparsify_random
    on BatchNorm without affine parameters or running statistics (AttributeError)."""
    np = pytest.importorskip("numpy")
    w = torch.randn(4, 4, 3, 3)
    assert ps.PatternSet.select(w, k=np.int64(4), entries=np.int32(4)) == ps.PatternSet.select(w, k=4)
    for fn in (lambda t: project.connectivity(t, 0.5),
               lambda t: project.pattern(t, ps.PatternSet.select(w, k=4)), lambda t: project.unstructured(t, 0.5)):
        with pytest.raises(TypeError, match="floating-point tensor"):
            fn(torch.ones(4, 4, 3, 3, dtype=torch.int64))
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8, affine=False),
                                torch.nn.BatchNorm2d(8, track_running_stats=False))
    ps.models.sparsify_random(model)
    assert model[1].running_var.min() >= 0.5


def test_pattern_refuses_a_set_of_other_entries():
    """C.Pattern(entries=4).project(w, pset) projected onto whatever set it was given (3-entry patterns
    without the centre), not what its fields say."""
    w = torch.randn(4, 4, 3, 3)
    with pytest.raises(ValueError, match=r"Pattern\(entries=4\) was given a set of 3-entry patterns"):
        C.Pattern(k=4).project(w, ps.PatternSet.select(w, k=4, entries=3))
    assert C.Pattern(k=4).project(w, ps.PatternSet.select(w, k=4)).count_nonzero() == 4 * 4 * 4


def test_a_vgg_config_without_a_conv_is_a_clear_error():
    """models.VGG(["M"]) raised a bare IndexError."""
    with pytest.raises(ValueError, match="cfg must name at least one conv width"):
        ps.models.VGG(["M"])
