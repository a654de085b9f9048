"""nn/_pattern_state.py, PatternConv2d's state_dict: compact and round-tripping (file size tracks the
counted bits), and load validation: corrupt, duplicate or wrongly typed arrays, bad scales, bad
_extra_state and checkpoints of another width are clear errors that leave the module unchanged."""
import pytest
import torch
from torch import nn

import torch_patsparse as ps
from torch_patsparse.nn import PatternConv2d

from helpers import PATTERNS8, assert_same_snapshot, pattern_weight_conv, pconv, random_pattern_weight, sd_of, snapshot


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), 0.0, -0.5])
def test_bad_scale_is_rejected(scale):
    pc = pconv(8, 8, bits=4)
    sd = sd_of(pc)
    sd["scale"] = torch.tensor(scale)
    fresh = PatternConv2d(8, 8, bits=4)
    with pytest.raises(RuntimeError, match="scale"):
        fresh.load_state_dict(sd)


@pytest.mark.parametrize("src,dst", [((8, 8), (16, 16)), ((8, 16), (16, 16)), ((16, 8), (16, 16)),
                                     ((16, 16), (16, 8))])
@pytest.mark.parametrize("bits", [None, 4])
def test_checkpoint_of_another_width_is_rejected(src, dst, bits):
    """(in, out) channels differ: a size-mismatch error like nn.Conv2d's, never a silent load."""
    pc = pconv(*src, bits=bits)
    fresh = PatternConv2d(*dst, bits=bits)
    with pytest.raises(RuntimeError, match="size mismatch for"):
        fresh.load_state_dict(pc.state_dict())
    with pytest.raises(RuntimeError, match="size mismatch for"):
        nn.Conv2d(*dst, 3).load_state_dict(pc.to_dense().state_dict())


def test_checkpoint_of_another_width_without_shape_metadata():
    """Checkpoints that predate the saved channel counts: filter_ptr and bias still give it away."""
    pc = pconv(8, 8)
    sd = sd_of(pc)
    sd["_extra_state"] = {"bits": None, "scheme": "uniform"}
    with pytest.raises(RuntimeError, match="size mismatch for (bias|filter_ptr)"):
        PatternConv2d(16, 16).load_state_dict(sd)
    del sd["bias"]
    with pytest.raises(RuntimeError, match="size mismatch for filter_ptr"):
        PatternConv2d(16, 16, bias=False).load_state_dict(sd)


def _corruptions(quantized):
    out = [
        ("kernel_channel", lambda sd: sd["kernel_channel"].__setitem__(3, 20)),
        ("kernel_pattern", lambda sd: sd["kernel_pattern"].__setitem__(0, 200)),
        ("filter_ptr", lambda sd: sd.__setitem__("filter_ptr", torch.zeros(9, dtype=torch.int32))),
        ("patterns", lambda sd: sd.__setitem__("patterns", sd["patterns"][:2].clone())),
        ("bias", lambda sd: sd.__setitem__("bias", torch.zeros(8))),
        ("extra", lambda sd: sd.__setitem__("_extra_state", ["not", "a", "dict"])),
        ("nnz", lambda sd: sd.__setitem__("kernel_channel", sd["kernel_channel"][:5].clone())),
    ]
    if quantized:
        out.append(("scale", lambda sd: sd.__setitem__("scale", torch.tensor(float("nan")))))
    else:
        out.append(("values", lambda sd: sd.__setitem__("values", torch.zeros(3, 4))))
    return out


@pytest.mark.parametrize("bits", [None, 4])
@pytest.mark.parametrize("case", range(8))
def test_rejected_load_leaves_module_unchanged(bits, case):
    other = pconv(16, 16, bits=bits, seed=7, keep=0.8)  # more kernels than `pc`: a load would resize
    pc = pconv(16, 16, bits=bits, seed=3, keep=0.3)
    name, corrupt = _corruptions(bits is not None)[case]
    sd = sd_of(other)
    corrupt(sd)
    before = snapshot(pc)
    x = torch.randn(1, 16, 8, 8)
    y = pc(x)
    with pytest.raises(RuntimeError):
        pc.load_state_dict(sd)
    assert_same_snapshot(snapshot(pc), before)
    assert torch.equal(pc(x), y)
    assert pc.dense_weight().shape == (16, 16, 3, 3)


@pytest.mark.parametrize("extra", [["bits", 4], "bits=4", {"bits": 4, "junk": 1}, {"bits": "4"}, {"bits": True},
                                   {"scheme": "log"}, 7])
def test_extra_state_of_the_wrong_type_is_a_clean_error(extra):
    sd = sd_of(pconv(16, 16))
    sd["_extra_state"] = extra
    with pytest.raises(RuntimeError, match="_extra_state|quantized"):
        PatternConv2d(16, 16).load_state_dict(sd)


@pytest.mark.parametrize("name,bad", [
    ("filter_ptr", torch.tensor(3, dtype=torch.int32)),
    ("filter_ptr", torch.zeros(1, 17, dtype=torch.int32)),
    ("patterns", torch.zeros(4, dtype=torch.uint8)),
    ("kernel_channel", torch.zeros(2, 3, dtype=torch.int32)),
    ("kernel_pattern", torch.tensor(0, dtype=torch.uint8)),
    ("values", torch.zeros(12)),
    ("values", [1.0, 2.0]),
    ("kernel_channel", torch.zeros(3, dtype=torch.float32)),
])
def test_wrong_rank_or_type_arrays_are_clean_errors(name, bad):
    sd = sd_of(pconv(16, 16))
    sd[name] = bad
    with pytest.raises(RuntimeError, match=f"invalid compressed weight: '?{name}"):
        PatternConv2d(16, 16).load_state_dict(sd)


@pytest.mark.parametrize("name,bad", [("codes", torch.zeros(2, 3, 4, dtype=torch.int8)),
                                      ("codes", torch.tensor(1, dtype=torch.uint8)),
                                      ("scale", torch.ones(2)), ("scale", torch.tensor([1], dtype=torch.int32))])
def test_quantized_wrong_arrays_are_clean_errors(name, bad):
    sd = sd_of(pconv(16, 16, bits=4))
    sd[name] = bad
    with pytest.raises(RuntimeError, match="invalid compressed weight"):
        PatternConv2d(16, 16, bits=4).load_state_dict(sd)


def test_duplicate_kernel_is_rejected_at_load():
    """Two kernels for the same (filter, input channel): forward would sum them, to_dense keep one."""
    pc = pconv(8, 8)
    sd = sd_of(pc)
    fp = sd["filter_ptr"]
    o = int(torch.nonzero(fp[1:] - fp[:-1] >= 2)[0])  # a filter with two kernels
    kc = sd["kernel_channel"]
    kc[int(fp[o]) + 1] = kc[int(fp[o])]
    with pytest.raises(RuntimeError, match="invalid compressed weight"):
        PatternConv2d(8, 8).load_state_dict(sd)


def test_state_dict_is_compressed_and_round_trips(tmp_path):
    conv = pattern_weight_conv(cin=16, cout=16, keep=0.3)
    pc = ps.nn.PatternConv2d.from_dense(conv, ps.PatternSet(PATTERNS8))
    sd = pc.state_dict()
    assert "weight" not in sd
    assert sum(t.numel() for t in sd.values() if isinstance(t, torch.Tensor)) < conv.weight.numel()
    torch.save(sd, tmp_path / "pc.pt")
    loaded = torch.load(tmp_path / "pc.pt", weights_only=True)
    fresh = ps.nn.PatternConv2d(16, 16, padding=0)          # different nnz: load resizes
    fresh.load_state_dict(loaded)
    x = torch.randn(2, 16, 9, 9)
    assert torch.equal(fresh(x), pc(x))


@pytest.mark.parametrize("corrupt,message", [
    (lambda sd: sd["kernel_channel"].__setitem__(0, 99), "kernel_channel"),
    (lambda sd: sd["kernel_pattern"].__setitem__(0, 200), "kernel_pattern"),
    (lambda sd: sd["filter_ptr"].__setitem__(3, 10_000), "filter_ptr"),
    (lambda sd: sd.__setitem__("filter_ptr", sd["filter_ptr"][:-1].clone()), "filter_ptr"),
    (lambda sd: sd.__setitem__("kernel_channel", sd["kernel_channel"].long()), "dtype"),
    (lambda sd: sd.__setitem__("values", sd["values"][:-1].clone()), "values"),
])
def test_load_state_dict_rejects_corrupt_arrays(corrupt, message):
    pc = ps.nn.PatternConv2d.from_dense(pattern_weight_conv(), ps.PatternSet(PATTERNS8))
    sd = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in pc.state_dict().items()}
    corrupt(sd)
    fresh = ps.nn.PatternConv2d(6, 8)
    with pytest.raises((RuntimeError, ValueError), match=message):
        fresh.load_state_dict(sd)


@pytest.mark.parametrize("bits", [None, 1, 3, 4, 8])
def test_saved_file_tracks_counted_bits(tmp_path, bits):
    conv = pattern_weight_conv(cin=64, cout=64, keep=0.25, seed=4)
    pc = ps.nn.PatternConv2d.from_dense(conv, ps.PatternSet(PATTERNS8), bits=bits)
    path = tmp_path / "pc.pt"
    torch.save(pc.state_dict(), path)
    counted = sum(pc.storage_bits().values()) / 8
    overhead = 700 * len(pc.state_dict()) + 1500              # zip entries + pickle, per tensor
    assert counted <= path.stat().st_size <= counted + overhead, (path.stat().st_size, counted)
    fresh = ps.nn.PatternConv2d(64, 64, bits=bits, scheme=pc.scheme if bits else "uniform")
    fresh.load_state_dict(torch.load(path, weights_only=True))
    x = torch.randn(1, 64, 8, 8)
    assert torch.equal(fresh(x), pc(x))
    assert torch.equal(fresh.codes, pc.codes) if bits else torch.equal(fresh.values, pc.values)


def test_corrupt_packed_codes_are_rejected():
    pc = ps.nn.PatternConv2d.from_dense(pattern_weight_conv(), ps.PatternSet(PATTERNS8), bits=4)
    sd = dict(pc.state_dict())
    sd["codes"] = sd["codes"][:-1].clone()
    with pytest.raises((RuntimeError, ValueError), match="codes|packed|length"):
        ps.nn.PatternConv2d(6, 8, bits=4).load_state_dict(sd)


@pytest.mark.parametrize("bits", [None, 4])
def test_load_state_dict_rejects_duplicate_kernel(bits):
    conv = torch.nn.Conv2d(4, 3, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(random_pattern_weight(3, 4, keep=1.0, seed=3))
    src = PatternConv2d.from_dense(conv, pattern_set=ps.PatternSet.from_tensor(PATTERNS8), bits=bits)
    sd = src.state_dict()
    fp = sd["filter_ptr"].tolist()
    kc = sd["kernel_channel"].clone()
    kc[fp[1]] = kc[fp[1] + 1]
    sd["kernel_channel"] = kc
    dst = PatternConv2d(4, 3, padding=1, bits=bits)
    with pytest.raises((ValueError, RuntimeError), match="twice"):
        dst.load_state_dict(sd)


def test_unpacked_int8_codes_must_have_the_kernel_layout():
    """int8 codes [nnz, E] are accepted (and packed); any other shape with as many codes (e.g. the
    transpose) is rejected, not decoded in the wrong order."""
    pc = PatternConv2d.from_dense(pattern_weight_conv(cin=8, cout=8, keep=0.5), bits=4, project=True)
    sd = pc.state_dict()
    fresh = PatternConv2d(8, 8, bits=4)
    fresh.load_state_dict({**sd, "codes": pc.int_codes()})
    assert torch.equal(fresh.codes, pc.codes)
    with pytest.raises((RuntimeError, ValueError), match="codes"):
        PatternConv2d(8, 8, bits=4).load_state_dict({**sd, "codes": pc.int_codes().t().contiguous()})


@pytest.mark.parametrize("magnitude", [1e-50, 1.0, 1e40])
def test_float64_layer_with_a_scale_outside_float32_loads(magnitude):
    """A float64 layer on a grid of scale 1e-50 / 1e39 (stored as codes by a lossless convert) decodes
    in float64; its load checked the scale in float32 (0 / inf) and refused its own state_dict."""
    conv = nn.Conv2d(4, 4, 3, padding=1, bias=False).double()
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, 1, 1] = torch.arange(-7, 9, dtype=torch.float64).view(4, 4) * magnitude
    m = PatternConv2d.from_dense(conv)
    assert m.quantized and m.scale.dtype == torch.float64 and m.conversion_error == 0
    fresh = ps.load_compressed(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False).double()),
                               nn.Sequential(m).state_dict())[0]
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    assert torch.equal(fresh(x), m(x))
    torch.testing.assert_close(m(x), conv(x), rtol=1e-12, atol=0)


def test_scale_is_checked_in_the_dtype_it_is_stored_in():
    """A float64 scale of 1e-300 / 1e39 for a float32 layer was checked in float64 and stored as
    0 / inf: the load succeeded and the first forward failed. Now the load refuses it, module unchanged."""
    pc = pconv(8, 8, bits=4)
    for bad in (1e-300, 1e39):
        fresh = PatternConv2d(8, 8, bits=4)
        before = snapshot(fresh)
        with pytest.raises(RuntimeError, match="scale"):
            fresh.load_state_dict({**sd_of(pc), "scale": torch.tensor(bad, dtype=torch.float64)})
        assert_same_snapshot(snapshot(fresh), before)


def test_int8_code_minus_128_is_out_of_range():
    """abs(-128) wraps in int8: the range check passed and packing gave a confusing message."""
    pc = PatternConv2d.from_dense(pattern_weight_conv(cin=8, cout=8, keep=0.5), bits=4, project=True)
    codes = torch.full_like(pc.int_codes(), -128)
    with pytest.raises(RuntimeError, match="exceed the 4-bit range"):
        PatternConv2d(8, 8, bits=4).load_state_dict({**pc.state_dict(), "codes": codes})


def test_load_compressed_names_the_layer_with_bad_metadata():
    m = ps.convert(nn.Sequential(pattern_weight_conv(cin=4, cout=8)), bits=4)
    sd = sd_of(m)
    sd["0._extra_state"]["bits"] = 9
    with pytest.raises(RuntimeError, match="'0'.*invalid compressed weight.*bits"):
        ps.load_compressed(nn.Sequential(nn.Conv2d(4, 8, 3)), sd)


def test_conversion_error_is_not_kept_across_a_load_of_other_weights():
    """conversion_error describes the conversion that made the stored weights: a load_state_dict of
    other weights sets it to 0.0 (as load_compressed's layers), a rejected load keeps it (it kept the
    old conversion's error after a successful load)."""
    import warnings
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 16, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lossy = ps.convert(model, layers="all", project=True, bits=4)
        other = ps.convert(model, layers="all", project=True, bits=4)
    with torch.no_grad():
        model[2].weight.mul_(1.5)
    layers = (lossy[0], lossy[2])
    assert all(m.conversion_error > 0 for m in layers)
    bad = other.state_dict()
    bad["0.scale"] = torch.tensor(float("nan"))
    bad["2.scale"] = torch.tensor([float("nan")])
    for key, layer in zip(("0.scale", "2.scale"), layers):
        error = layer.conversion_error
        with pytest.raises(RuntimeError, match="scale"):
            lossy.load_state_dict({**other.state_dict(), key: bad[key]})
        assert layer.conversion_error == error  # (the other layer loaded: torch's load is per module)
    lossy.load_state_dict(other.state_dict())
    assert [m.conversion_error for m in layers] == [0.0, 0.0]
