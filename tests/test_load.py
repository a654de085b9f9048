"""nn/_load.py, the load path shared by the compressed modules: one clear message for a rejected
weight, and checkpoints written by older code (tests/data/checkpoints_v0.pt) load bit for bit."""
import os

import pytest
import torch
from torch import nn

import torch_patsparse as ps
from torch_patsparse.nn import PatternConv2d, SparseConv2d, SparseLinear

from helpers import PATTERNS8, pconv, sd_of

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def test_load_error_text_is_one_clear_message():
    pc = pconv(16, 16)
    sd = sd_of(pc)
    sd["kernel_channel"][3] = 20
    model = nn.Sequential()
    model.conv = PatternConv2d(16, 16)
    with pytest.raises(RuntimeError) as e:
        model.load_state_dict({"conv." + k: v for k, v in sd.items()})
    text = str(e.value)
    assert "conv.: invalid compressed weight: kernel_channel[3] = 20 is outside 0..15" in text, text
    assert text.count("invalid compressed weight") == 1 and "patsparse:" not in text, text
    with pytest.raises(RuntimeError) as e:
        PatternConv2d(16, 16).load_state_dict(sd)
    assert str(e.value).endswith("\n\tinvalid compressed weight: kernel_channel[3] = 20 is outside 0..15"), str(e.value)


def test_old_checkpoints_load_and_rebuild_bit_for_bit():
    """tests/data/checkpoints_v0.pt was written by the code before quant.py (make_checkpoints_v0.py):
    it loads with the same outputs, and building from the same weights gives the same state_dict."""
    data = torch.load(os.path.join(DATA, "checkpoints_v0.pt"), weights_only=True)
    assert len(data) == 11
    for name, rec in data.items():
        args, sd = dict(rec["args"]), rec["state_dict"]
        if rec["kind"] == "PatternConv2d":
            m = PatternConv2d(**args)
            src = nn.Conv2d(args["in_channels"], args["out_channels"], 3, args["stride"], args["padding"],
                            bias=args["bias"])
            build = lambda c: PatternConv2d.from_dense(c, ps.PatternSet(PATTERNS8), **rec["build"])  # noqa: E731
        elif rec["kind"] == "SparseLinear":
            m = SparseLinear(**args)
            src = nn.Linear(args["in_features"], args["out_features"], bias=args["bias"])
            build = lambda c: SparseLinear.from_dense(c, **rec["build"])  # noqa: E731
        else:
            m = SparseConv2d(**args)
            src = nn.Conv2d(**args)
            build = lambda c: SparseConv2d.from_dense(c, **rec["build"])  # noqa: E731
        m.load_state_dict(sd)
        assert torch.equal(m.dense_weight(), rec["dense"]), name
        # Same weights bit for bit; the output only to rounding (kernels may sum in another order).
        torch.testing.assert_close(m(rec["x"]).detach(), rec["y"], rtol=1e-5, atol=1e-6, msg=name)
        with torch.no_grad():
            src.weight.copy_(rec["source"])
            if src.bias is not None and "bias" in sd:
                src.bias.copy_(sd["bias"])
        new = build(src).state_dict()
        for k, v in sd.items():
            if isinstance(v, torch.Tensor):
                assert v.dtype == new[k].dtype and torch.equal(v, new[k]), (name, k)
            else:
                assert {kk: new[k][kk] for kk in v} == v, (name, k)


@pytest.mark.parametrize("bits", [None, 4])
def test_a_load_of_the_same_structure_writes_in_place(bits):
    """As nn.Module loads: the same tensors receive the new values, so a scripted / traced copy and a
    model in shared memory see the load; another kept count takes the incoming shape, in the same
    tensor objects (a scripted copy still follows)."""
    import copy
    import warnings
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 36, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ps.convert(dense, project=True, layers="all", bits=bits).eval()
    new = copy.deepcopy(model)
    with torch.no_grad():
        for t in (*new.parameters(), *new.buffers()):
            if t.is_floating_point():
                t.mul_(2)
    x = torch.randn(2, 4, 6, 6)
    scripted, traced = torch.jit.script(model), torch.jit.trace(model, x)
    before = {k: v.data_ptr() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    model.load_state_dict(new.state_dict())
    assert {k: v.data_ptr() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)} == before
    for m in (model, scripted, traced):
        assert torch.equal(m(x), new(x))
    lin = nn.Linear(20, 5)
    with torch.no_grad():
        lin.weight[lin.weight.abs() < 0.1] = 0
    other = ps.convert(nn.Sequential(lin), layers="all", bits=bits)
    with torch.no_grad():
        lin.weight[lin.weight.abs() < 0.15] = 0
    fewer = ps.convert(nn.Sequential(lin), layers="all", bits=bits)
    scripted = torch.jit.script(other)
    other.load_state_dict(fewer.state_dict())
    y = torch.randn(3, 20)
    assert torch.equal(other(y), fewer(y)) and torch.equal(scripted(y), fewer(y))


def test_a_scripted_models_state_dict_of_k_bit_layers_says_what_is_missing():
    """TorchScript leaves `_extra_state` (a k-bit PatternConv2d's bits) out of a scripted model's
    state_dict; load_compressed then says so instead of only listing arrays."""
    import warnings
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ps.convert(nn.Sequential(nn.Conv2d(4, 8, 3, padding=1)), project=True, bits=4).eval()
    sd = torch.jit.script(model).state_dict()
    with pytest.raises(RuntimeError, match="without the '_extra_state'"):
        ps.load_compressed(nn.Sequential(nn.Conv2d(4, 8, 3, padding=1)), sd)


def test_a_failed_load_compressed_gives_the_model_its_layers_back():
    """A state_dict bad in a later layer: load_compressed raised but left empty compressed modules in
    the model (a caller that falls back to the dense model would run zero weights)."""
    import warnings
    torch.manual_seed(0)

    def net():
        return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    src = net()
    for m in (src[0], src[2]):
        with torch.no_grad():
            m.weight.copy_(ps.project.pattern(m.weight, ps.PatternSet(PATTERNS8)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sd = ps.convert(src).state_dict()
    sd["2.kernel_channel"] = sd["2.kernel_channel"] + 100
    model = net()
    layers = list(model)
    with pytest.raises(RuntimeError, match="invalid compressed weight"):
        ps.load_compressed(model, sd)
    assert all(a is b for a, b in zip(model, layers))


def test_load_compressed_non_strict_keeps_the_layers_own_bias():
    """strict=False and no bias entry for a compressed layer: the bias became the empty module's zeros
    while the warning said the layer kept its own values."""
    import warnings
    torch.manual_seed(0)
    src = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1))
    with torch.no_grad():
        src[0].weight.copy_(ps.project.pattern(src[0].weight, ps.PatternSet(PATTERNS8)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sd = ps.convert(src).state_dict()
    del sd["0.bias"]
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1))
    own = model[0].bias.detach().clone()
    with pytest.warns(UserWarning, match="0.bias"):
        ps.load_compressed(model, sd, strict=False)
    assert torch.equal(model[0].bias, own)


def _pruned(model, keep=0.4):
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                w = m.parametrizations.weight.original1 if hasattr(m, "parametrizations") else m.weight
                mask = (torch.rand_like(w) < keep).to(w.dtype)
                mask.view(mask.shape[0], -1)[:, 0] = 1
                w.mul_(mask)
    return model


class _MyConv(nn.Conv2d):  # a subclass that computes what nn.Conv2d computes: convert takes it
    pass


@pytest.mark.parametrize("kind", ["attention", "subclass", "weight_norm"])
def test_load_compressed_takes_the_layer_subclasses_convert_takes(kind, tmp_path):
    """load_compressed refused what convert had compressed in an nn.Linear / nn.Conv2d subclass
    (MultiheadAttention's out_proj, a user subclass, a parametrized weight_norm layer)."""
    import warnings

    def build():
        torch.manual_seed(1)
        if kind == "attention":
            return nn.Sequential(nn.MultiheadAttention(16, 2, batch_first=True))
        if kind == "subclass":
            return nn.Sequential(_MyConv(4, 8, 1))
        return nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Conv2d(4, 8, 1)))
    x = torch.randn(2, 5, 16) if kind == "attention" else torch.randn(1, 4, 5, 5)

    def run(m):
        return m[0](x, x, x, need_weights=False)[0] if kind == "attention" else m(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = ps.convert(_pruned(build()).eval(), layers="all")
    assert any(isinstance(m, (SparseConv2d, SparseLinear)) for m in c.modules())
    torch.save(c.state_dict(), tmp_path / "c.pt")
    loaded = ps.load_compressed(build().eval(), torch.load(tmp_path / "c.pt", weights_only=True))
    assert torch.equal(run(loaded), run(c))


@pytest.mark.parametrize("layer", ["pattern", "sparse"])
def test_a_load_that_reshapes_a_layer_in_shared_memory_is_refused(layer):
    """share_memory() then a load of another sparsity: arrays of the same shape were written in place
    (other processes saw them) and the others got new, unshared storage: the other processes computed
    with the new indices on the old pattern table, neither model."""
    import warnings

    def make(seed, keep):
        torch.manual_seed(seed)
        dense = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1) if layer == "pattern" else nn.Linear(20, 6))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ps.convert(_pruned(dense, keep), layers="all", project=True)
    shared, other, same = make(0, 0.5), make(1, 0.2), make(2, 0.5)
    shared.share_memory()
    before = {k: v.clone() for k, v in shared.state_dict().items() if isinstance(v, torch.Tensor)}
    with pytest.raises(RuntimeError, match="shared memory"):
        shared.load_state_dict(other.state_dict())
    assert all(torch.equal(v, shared.state_dict()[k]) for k, v in before.items())
    if layer == "sparse":  # same structure sizes: written in place, as nn.Module loads
        same = make(0, 0.5)
        with torch.no_grad():
            same[0].bias.mul_(2)
        shared.load_state_dict(same.state_dict())
        assert torch.equal(shared[0].bias, same[0].bias) and shared[0].bias.is_shared()


def test_assign_load_takes_the_state_dicts_dtype():
    """load_state_dict(assign=True) of an fp16 k-bit PatternConv2d: the bias became fp16 and the scale
    stayed fp32 (a mixed layer whose forward failed for either input dtype); as a dense conv, the
    layer takes the state_dict's dtype."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = pconv(4, 8, bits=4).half()
        dst = pconv(4, 8, bits=4)
    dst.load_state_dict(src.state_dict(), assign=True)
    assert dst.scale.dtype == dst.bias.dtype == torch.float16
    x = torch.randn(1, 4, 5, 5).half()
    assert torch.equal(dst(x), src(x))


def test_a_state_dict_without_extra_state_loads_with_a_warning():
    """A k-bit PatternConv2d's bits and scheme live in `_extra_state`; a tensors-only state_dict
    (safetensors, `{k: v for tensors}`) loaded with strict=False decoded its codes on this layer's grid
    without a word (another scheme: a different model). A float layer's (a scripted model's
    state_dict) needed strict=False for nothing."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from helpers import pattern_weight_conv
        saved = PatternConv2d.from_dense(pattern_weight_conv(4, 8), ps.PatternSet(PATTERNS8), bits=4, scheme="pow2")
        target = pconv(4, 8, bits=4)
    tensors = {k: v for k, v in saved.state_dict().items() if isinstance(v, torch.Tensor)}
    with pytest.warns(UserWarning, match="no '_extra_state'.*4-bit 'uniform'.*wrong if"):
        target.load_state_dict(tensors, strict=False)
    float_layer = pconv(4, 8)
    tensors = {k: v for k, v in float_layer.state_dict().items() if isinstance(v, torch.Tensor)}
    fresh = pconv(4, 8)
    with torch.no_grad():
        fresh.values.zero_()
    with pytest.warns(UserWarning, match="no '_extra_state'.*shape"):
        fresh.load_state_dict(tensors)  # strict
    assert torch.equal(fresh.values, float_layer.values)


def test_loading_only_the_trainable_parameters():
    """{name: p for name, p in named_parameters()} (a fine-tuning checkpoint) loaded with strict=False
    into the same converted model was refused as 'incomplete'."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ps.convert(_pruned(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1)), 0.5), project=True)
    tuned = {k: v.detach() * 2 for k, v in model.named_parameters()}
    keys = model.load_state_dict(tuned, strict=False)
    assert "0.values" not in keys.missing_keys and torch.equal(model[0].values, tuned["0.values"])
    with pytest.raises(RuntimeError, match="size mismatch for 0.values"):
        model.load_state_dict({"0.values": tuned["0.values"][1:]}, strict=False)


def test_loading_into_a_16_bit_model_says_when_the_scale_rounds():
    """load_compressed into a .half() model rounded a tiny k-bit scale (every weight off by 1%)
    silently, where .half() of the converted model warns."""
    import warnings
    dense = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, bias=False))
    with torch.no_grad():
        dense[0].weight.copy_(ps.project.pattern(dense[0].weight, ps.PatternSet(PATTERNS8)) * 1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sd = ps.convert(dense, bits=4).state_dict()
    with pytest.warns(UserWarning, match="quantization scale .* rounds to"):
        ps.load_compressed(nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, bias=False)).half(), sd)


def test_load_compressed_into_a_meta_model_without_assign():
    """As a dense model on the meta device: the load is a no-op (torch warns), not 'Cannot copy out
    of meta tensor' from the sparse layers."""
    import warnings

    def net():
        return nn.Sequential(nn.Conv2d(4, 8, 1), nn.Flatten(), nn.Linear(8 * 25, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sd = ps.convert(_pruned(net()), layers="all").state_dict()
        with torch.device("meta"):
            model = net()
        ps.load_compressed(model, sd)
    assert isinstance(model[0], SparseConv2d) and model[0].header.is_meta


@pytest.mark.parametrize("bits", [None, 4])
def test_the_other_compressed_kind_is_named(bits):
    """A SparseConv2d's state_dict into a PatternConv2d (or the reverse) was reported as a wrong
    _extra_state ("must be a dict with key 'weight_shape'"), not as the other layer kind."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(torch.tensor([1., 1, 0, 1, 1, 0, 0, 0, 0]).view(3, 3))
    pattern = PatternConv2d.from_dense(conv, bits=bits)
    with torch.no_grad():
        conv.weight.mul_((torch.rand_like(conv.weight) < 0.5).float())
    sparse = SparseConv2d.from_dense(conv, bits=bits)
    with pytest.raises(RuntimeError, match="holds a SparseConv2d / SparseLinear weight .* this layer is a PatternConv2d"):
        pattern.load_state_dict(sparse.state_dict())
    with pytest.raises(RuntimeError, match="holds a PatternConv2d weight .* this layer is a SparseConv2d"):
        sparse.load_state_dict(pattern.state_dict())
