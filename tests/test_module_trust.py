"""Issue 12 ("no silent wrong results"), the module side: PatternConv2d / SparseConv2d / SparseLinear
behave like nn.Conv2d / nn.Linear on inputs and checkpoints, from_dense never changes a layer's
function unless asked (quant.py itself: test_quant.py). Each test names the
defect of the issue it pins."""
import copy
import os

import pytest
import torch
from torch import nn

import torch_patsparse as ps
from torch_patsparse import format as fmt
from torch_patsparse.nn import PatternConv2d, SparseConv2d, SparseLinear, compress_module
from torch_patsparse.nn.kinds import PATTERN, SPARSE, layer_kind

from helpers import PATTERNS8, random_pattern_weight

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def conv_with(cin, cout, keep=0.5, seed=0, **kw):
    conv = nn.Conv2d(cin, cout, 3, **kw)
    with torch.no_grad():
        conv.weight.copy_(random_pattern_weight(cout, cin, keep=keep, seed=seed))
    return conv


def pconv(cin=16, cout=16, bits=None, **kw):
    return PatternConv2d.from_dense(conv_with(cin, cout, **kw), ps.PatternSet(PATTERNS8), bits=bits)


def sd_of(m):
    return {k: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v) for k, v in m.state_dict().items()}


def snapshot(m):
    """Everything the module holds: parameters, buffers (persistent or not), metadata."""
    out = {k: v.detach().clone() for k, v in list(m.named_parameters()) + list(m.named_buffers())}
    out["_meta"] = {k: getattr(m, k, None) for k in ("bits", "scheme")} if isinstance(m, PatternConv2d) else {}
    return out


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


# ---------------------------------------------------------------------------------------- defect 3
@pytest.mark.parametrize("cin", [20, 8])
@pytest.mark.parametrize("unbatched", [False, True])
def test_wrong_channel_count_raises_like_conv2d(cin, unbatched):
    pc = pconv(16, 16)
    x = torch.randn(1, cin, 8, 8)
    if unbatched:
        x = x[0]
    with pytest.raises(RuntimeError, match=f"expected input.* to have 16 channels, but got {cin} channels instead"):
        pc(x)
    with pytest.raises(RuntimeError, match=f"to have 16 channels, but got {cin} channels instead"):
        pc.to_dense()(x)  # the same words as nn.Conv2d


def test_wrong_channel_count_raises_when_scripted():
    scripted = torch.jit.script(pconv(16, 16).eval())
    with pytest.raises((RuntimeError, torch.jit.Error), match="to have 16 channels, but got 20"):
        scripted(torch.randn(1, 20, 8, 8))


def test_sparse_wrong_input_raises_like_dense():
    lin = SparseLinear.from_dense(nn.Linear(12, 5))
    with pytest.raises(RuntimeError):
        lin(torch.randn(2, 13))
    conv = SparseConv2d.from_dense(nn.Conv2d(6, 4, 5))
    with pytest.raises(RuntimeError, match="to have 6 channels, but got 7"):
        conv(torch.randn(1, 7, 9, 9))


# ---------------------------------------------------------------------------------------- defect 10
@pytest.mark.parametrize("bits", [None, 4])
def test_unbatched_input_like_conv2d(bits):
    pc = pconv(6, 8, bits=bits, padding=1)
    x = torch.randn(6, 9, 7)
    y = pc(x)
    assert y.shape == (8, 9, 7)
    assert torch.equal(y, pc(x[None])[0])
    torch.testing.assert_close(y, pc.to_dense()(x), rtol=1e-5, atol=1e-5)
    scripted = torch.jit.script(pc.eval())
    assert torch.equal(scripted(x), y)


@pytest.mark.parametrize("shape", [(8, 8), (1, 1, 16, 8, 8), (16,)])
def test_wrong_rank_raises_like_conv2d(shape):
    with pytest.raises(RuntimeError, match="Expected 3D \\(unbatched\\) or 4D \\(batched\\) input to conv2d"):
        pconv(16, 16)(torch.randn(shape))


def test_sparse_unbatched():
    conv = nn.Conv2d(6, 4, 5, padding=2)
    with torch.no_grad():
        conv.weight.mul_(torch.rand(conv.weight.shape) < 0.2)
    sc = SparseConv2d.from_dense(conv)
    x = torch.randn(6, 9, 9)
    assert torch.equal(sc(x), conv(x))
    lin = nn.Linear(12, 5)
    sl = SparseLinear.from_dense(lin)
    v = torch.randn(12)
    torch.testing.assert_close(sl(v), lin(v), rtol=1e-5, atol=1e-5)  # native op: another sum order
    assert sl(v).shape == lin(v).shape


# ---------------------------------------------------------------------------------------- defect 9
TOL = {torch.float16: dict(rtol=1e-2, atol=2e-2), torch.bfloat16: dict(rtol=4e-2, atol=8e-2)}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits", [None, 4])
def test_half_inputs_run_and_match_dense(dtype, bits):
    pc = pconv(8, 8, bits=bits, padding=1)
    dense = pc.to_dense()
    x = torch.randn(2, 8, 10, 10)
    want = dense(x)
    y = pc(x.to(dtype))
    assert y.dtype == dtype and y.shape == want.shape
    torch.testing.assert_close(y.float(), want, **TOL[dtype])


@pytest.mark.parametrize("convert", [lambda m: m.half(), lambda m: m.bfloat16(), lambda m: m.to(torch.float16)])
@pytest.mark.parametrize("bits", [None, 3])
def test_half_model_runs_and_matches_dense(convert, bits):
    model = nn.Sequential(pconv(3, 8, bits=bits, padding=1), nn.ReLU(), pconv(8, 4, bits=bits, seed=1))
    x = torch.randn(2, 3, 9, 9)
    want = model(x)
    half = convert(copy.deepcopy(model))
    dtype = half[0].values.dtype
    assert dtype in (torch.float16, torch.bfloat16)
    if bits:
        assert half[0].scale.dtype == dtype
    y = half(x.to(dtype))
    assert y.dtype == dtype
    assert float((y.float() - want).norm() / want.norm()) < (5e-3 if dtype == torch.float16 else 3e-2)
    # and back to float32: runs again
    assert half.float()(x).dtype == torch.float32


def test_half_model_scripts():
    model = nn.Sequential(pconv(3, 8, padding=1)).half().eval()
    x = torch.randn(1, 3, 7, 7, dtype=torch.float16)
    assert torch.equal(torch.jit.script(model)(x), model(x))


def test_float64_stays_float64():
    pc = pconv(6, 8, padding=1).double()
    x = torch.randn(1, 6, 7, 7, dtype=torch.float64)
    y = pc(x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, pc.to_dense()(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sparse_half(dtype):
    conv = nn.Conv2d(6, 4, 5, padding=2)
    with torch.no_grad():
        conv.weight.mul_(torch.rand(conv.weight.shape) < 0.3)
    sc = SparseConv2d.from_dense(conv, bits=4)
    x = torch.randn(1, 6, 9, 9)
    want = sc(x)
    assert sc(x.to(dtype)).dtype == dtype
    torch.testing.assert_close(sc(x.to(dtype)).float(), want, **TOL[dtype])
    half = copy.deepcopy(sc).to(dtype)
    torch.testing.assert_close(half(x.to(dtype)).float(), want, **TOL[dtype])
    sl = SparseLinear.from_dense(nn.Linear(12, 5)).to(dtype)
    assert sl(torch.randn(3, 12, dtype=dtype)).dtype == dtype


# ---------------------------------------------------------------------------------------- defect 6
@pytest.mark.parametrize("scale", [float("nan"), float("inf"), 0.0, -0.5])
def test_bad_scale_is_rejected(scale):
    pc = pconv(8, 8, bits=4)
    sd = sd_of(pc)
    sd["scale"] = torch.tensor(scale)
    fresh = PatternConv2d(8, 8, bits=4)
    with pytest.raises(RuntimeError, match="scale"):
        fresh.load_state_dict(sd)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), 0.0, -0.5])
def test_sparse_bad_scale_is_rejected(scale):
    lin = nn.Linear(30, 6)
    with torch.no_grad():
        lin.weight.mul_(torch.rand(6, 30) < 0.2)
    sl = SparseLinear.from_dense(lin, bits=3)
    sd = sd_of(sl)
    sd["scale"] = torch.tensor([scale])
    with pytest.raises(RuntimeError, match="scale"):
        SparseLinear(30, 6).load_state_dict(sd)


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


def test_sparse_checkpoint_of_another_shape_is_rejected():
    lin = nn.Linear(16, 8)
    with torch.no_grad():
        lin.weight.mul_(torch.rand(8, 16) < 0.3)
    sd = sd_of(SparseLinear.from_dense(lin))
    with pytest.raises(RuntimeError, match="size mismatch for"):
        SparseLinear(8, 8).load_state_dict(sd)
    with pytest.raises(RuntimeError, match="size mismatch for"):
        SparseLinear(16, 4).load_state_dict(sd)
    conv = nn.Conv2d(4, 6, 5)
    sd = sd_of(SparseConv2d.from_dense(conv))
    with pytest.raises(RuntimeError, match="size mismatch for"):
        SparseConv2d(8, 6, 5).load_state_dict(sd)


# ---------------------------------------------------------------------------------------- defect 13
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
    assert_same(snapshot(pc), before)
    assert torch.equal(pc(x), y)
    assert pc.dense_weight().shape == (16, 16, 3, 3)


@pytest.mark.parametrize("key", ["index", "codes", "scale", "bias", "header"])
def test_sparse_rejected_load_leaves_module_unchanged(key):
    def make(seed, keep):
        g = torch.Generator().manual_seed(seed)
        lin = nn.Linear(40, 10)
        with torch.no_grad():
            lin.weight.mul_(torch.rand(10, 40, generator=g) < keep)
        return SparseLinear.from_dense(lin, bits=3)
    sl, other = make(0, 0.1), make(1, 0.6)
    sd = sd_of(other)
    sd[key] = {"index": sd["index"][:-1], "codes": sd["codes"][:-1], "scale": torch.tensor([-1.0]),
               "bias": torch.zeros(3), "header": sd["header"][:-1]}[key]
    before = snapshot(sl)
    x = torch.randn(2, 40)
    y = sl(x)
    with pytest.raises(RuntimeError):
        sl.load_state_dict(sd)
    assert_same(snapshot(sl), before)
    assert torch.equal(sl(x), y)


# ---------------------------------------------------------------------------------------- defect 15
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


def test_sparse_extra_state_and_arrays_clean_errors():
    sd = sd_of(SparseLinear.from_dense(nn.Linear(10, 4)))
    for bad in (["x"], "x", {"weight_shape": [4, 10], "junk": 1}, {"weight_shape": "4x10"}):
        sd2 = dict(sd, _extra_state=bad)
        with pytest.raises(RuntimeError, match="_extra_state"):
            SparseLinear(10, 4).load_state_dict(sd2)
    sd2 = dict(sd, values=[1.0])
    with pytest.raises(RuntimeError, match="invalid compressed weight"):
        SparseLinear(10, 4).load_state_dict(sd2)


# ---------------------------------------------------------------------------------------- defect 5
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


# ---------------------------------------------------------------------------------------- defects 1, 4
def trained_like_weight(cout=16, cin=12, bits=3, seed=0):
    """What ADMM leaves: pattern-projected (8 of the 56 shapes), connectivity-pruned, quantized; after
    quantization some kernels keep only 1-3 of their 4 weights (small ones round to 0)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(cout, cin, 3, 3, generator=g) * torch.rand(cout, cin, 3, 3, generator=g) ** 2
    pset = ps.PatternSet.select(w, k=8)
    w = ps.project.quantize(ps.project.connectivity(ps.project.pattern(w, pset), 0.4), bits)
    return w, pset


@pytest.mark.parametrize("bits", [3, 4])
def test_from_dense_is_lossless_without_a_pattern_set(bits):
    w, pset = trained_like_weight(bits=bits)
    nz = (w != 0).sum((2, 3))
    assert ((nz >= 1) & (nz < 4)).any()  # the case that used to lose weights
    conv = nn.Conv2d(12, 16, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(w)
    pc = PatternConv2d.from_dense(conv)
    assert pc.conversion_error == 0.0 and "conversion_error" not in repr(pc)
    assert torch.equal(pc.dense_weight(), w)
    assert pc.quantized and pc.bits <= bits  # levels detected: codes, losslessly
    x = torch.randn(2, 12, 11, 11)
    want = conv(x)
    assert float((pc(x) - want).norm() / want.norm()) < 1e-6
    # the trained set covers it too (sub-shapes), and is the one kept when preferred
    assert torch.equal(PatternConv2d.from_dense(conv, pset).dense_weight(), w)
    assert ps.PatternSet.cover(w, prefer=pset) == pset


def test_from_dense_unpruned_is_lossless_unless_projection_is_asked():
    conv = nn.Conv2d(4, 5, 3)
    pc = PatternConv2d.from_dense(conv)
    assert pc.patterns.shape == (1, 9) and pc.conversion_error == 0.0
    assert torch.equal(pc.dense_weight(), conv.weight.detach())
    projected = PatternConv2d.from_dense(conv, project=True)
    assert projected.patterns.shape == (8, 4)
    assert 0 < projected.conversion_error < 1
    assert f"conversion_error={projected.conversion_error:.3g}" in repr(projected)
    err = (projected.dense_weight() - conv.weight).norm() / conv.weight.norm()
    assert projected.conversion_error == pytest.approx(float(err), rel=1e-6)


def test_from_dense_with_a_set_that_does_not_fit():
    conv = conv_with(6, 8)
    other = ps.PatternSet([[0, 1, 2, 4], [4, 6, 7, 8]])
    with pytest.raises(ValueError, match=r"kernel \(out=\d+, in=\d+\).*project=True.*pattern_set=None"):
        PatternConv2d.from_dense(conv, other)
    pc = PatternConv2d.from_dense(conv, other, project=True)
    assert pc.conversion_error > 0
    torch.testing.assert_close(pc.dense_weight(), ps.project.pattern(conv.weight.detach(), other))
    # sub-shapes fit: kernels with 1-3 nonzeros inside a pattern of the set are stored as they are
    with torch.no_grad():
        conv.weight[:, :, 0, 0] = 0
    pc = PatternConv2d.from_dense(conv, ps.PatternSet(PATTERNS8))
    assert pc.conversion_error == 0.0 and torch.equal(pc.dense_weight(), conv.weight.detach())


def test_from_dense_bits_is_lossy_and_recorded():
    conv = conv_with(8, 8)
    pc = PatternConv2d.from_dense(conv, bits=3)
    assert pc.quantized and pc.bits == 3 and pc.conversion_error > 0
    assert torch.equal(pc.dense_weight(), fmt.decompress(pc.patterns, pc.filter_ptr, pc.kernel_channel,
                                                         pc.kernel_pattern, pc.values, 8))


# ---------------------------------------------------------------------------------------- defect 11
@pytest.mark.parametrize("padding,dilation", [("same", 1), ("valid", 1), ("same", 2)])
def test_string_padding_is_taken(padding, dilation):
    conv = conv_with(6, 8, padding=padding, dilation=dilation)
    assert layer_kind(conv) == PATTERN
    pc = PatternConv2d.from_dense(conv)
    x = torch.randn(1, 6, 12, 10)
    assert torch.equal(pc.to_dense().weight, conv.weight.detach())
    torch.testing.assert_close(pc(x), conv(x), rtol=1e-5, atol=1e-5)


def test_string_padding_in_the_constructor():
    assert PatternConv2d(4, 4, padding="same", dilation=2).padding == [2, 2]
    assert PatternConv2d(4, 4, padding="valid").padding == [0, 0]
    with pytest.raises(ValueError, match="padding"):
        PatternConv2d(4, 4, padding="full")


def test_one_layer_kind_for_all_predicates():
    """compress_module and PatternConv2d.from_dense take what layer_kind says."""
    class Sub(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2
    cases = [nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3, padding="same"), nn.Conv2d(4, 4, 3, groups=2),
             nn.Conv2d(4, 4, 5), nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), Sub(4, 4, 3),
             nn.Linear(4, 4), nn.Conv2d(4, 4, 3).double(), nn.ReLU()]
    for m in cases:
        kind = layer_kind(m)
        if kind == PATTERN:
            PatternConv2d.from_dense(m)
        elif isinstance(m, nn.Conv2d):
            with pytest.raises(ValueError):
                PatternConv2d.from_dense(m)
        got = compress_module(m, only_if_smaller=False)
        if kind is None or m.weight.dtype != torch.float32:
            assert got is None, m
        else:
            assert isinstance(got, SparseLinear if isinstance(m, nn.Linear) else SparseConv2d), m
    assert layer_kind(nn.Conv2d(4, 4, 5)) == SPARSE


def test_compress_module_takes_an_unstructured_3x3_conv_losslessly():
    conv = nn.Conv2d(16, 16, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(ps.project.unstructured(conv.weight, 0.05))
    sc = compress_module(conv)
    assert isinstance(sc, SparseConv2d) and sc.conversion_error == 0.0
    x = torch.randn(1, 16, 8, 8)
    assert torch.equal(sc(x), conv(x))


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
