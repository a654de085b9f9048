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
