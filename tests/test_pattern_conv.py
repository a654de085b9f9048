"""nn/pattern_conv.py, PatternConv2d against dense nn.Conv2d: from_dense (lossless unless projection or
bits are asked), quantized storage, inputs like nn.Conv2d (wrong channels or rank, unbatched, half,
float64, string padding), constructor order and renamed names (state_dict and load validation:
test_pattern_state.py; convert: test_convert.py; TorchScript: test_export.py)."""
import copy
import io

import pytest
import torch
from torch import nn

import torch_patsparse as ps
from torch_patsparse import format as fmt
from torch_patsparse.nn import PatternConv2d
from torch_patsparse.nn.kinds import PATTERN, layer_kind

from helpers import HALF_TOL, PATTERNS8, pattern_weight_conv, pconv


@pytest.mark.parametrize("kwargs", [dict(padding=1), dict(stride=2), dict(padding=2, dilation=2), dict(bias=False)])
def test_from_dense_is_exact_when_weights_fit(kwargs):
    conv = pattern_weight_conv(**kwargs)
    pc = ps.nn.PatternConv2d.from_dense(conv, ps.PatternSet(PATTERNS8))
    assert torch.equal(pc.to_dense().weight, conv.weight)
    x = torch.randn(2, 6, 13, 11)
    torch.testing.assert_close(pc(x), conv(x), rtol=1e-5, atol=1e-5)
    assert pc.kept_kernels == int((conv.weight.abs().sum((2, 3)) != 0).sum())


def test_from_dense_projects_dense_weights():
    conv = nn.Conv2d(4, 5, 3, padding=1)
    pc = ps.nn.PatternConv2d.from_dense(conv, project=True)  # selects 8 patterns, projects
    assert pc.patterns.shape == (8, 4)
    assert pc.conversion_error > 0 and "conversion_error=" in repr(pc)
    dense = pc.to_dense()
    assert ((dense.weight != 0).sum((2, 3)) <= 4).all()
    x = torch.randn(1, 4, 7, 7)
    torch.testing.assert_close(pc(x), dense(x), rtol=1e-5, atol=1e-5)


def test_quantized_storage():
    conv = pattern_weight_conv(cin=8, cout=8, keep=0.5)
    pc = ps.nn.PatternConv2d.from_dense(conv, ps.PatternSet(PATTERNS8), bits=4)
    assert pc.quantized and pc.codes.dtype == torch.uint8  # bit-packed, 4 bits a code
    assert pc.codes.numel() == pc.kept_kernels * 4 * 4 // 8 and pc.kernel_channel.dtype == torch.int16
    assert pc.int_codes().shape == (pc.kept_kernels, 4)
    assert "values" not in pc.state_dict() and "codes" in pc.state_dict()
    assert dict(pc.named_buffers()).keys() == pc.state_dict().keys() - {"bias", "_extra_state"}
    levels = ps.project.quantize(conv.weight.detach(), 4)
    # Values are the quantization of the kept weights (per-layer scale over the kept values).
    assert int(pc.int_codes().abs().max()) <= 7
    torch.testing.assert_close(pc.dense_weight(), ps.format.decompress(
        pc.patterns, pc.filter_ptr, pc.kernel_channel, pc.kernel_pattern,
        ps.quant.dequantize(pc.int_codes(), pc.scale, pc.scheme, dtype=torch.float32), 8), rtol=0, atol=0)
    # Weights already on levels are detected and stored as codes without being asked.
    conv2 = pattern_weight_conv(cin=8, cout=8, keep=0.5)
    with torch.no_grad():
        conv2.weight.copy_(ps.project.quantize(conv2.weight, 3))
    auto = ps.nn.PatternConv2d.from_dense(conv2, ps.PatternSet(PATTERNS8))
    assert auto.quantized and auto.bits <= 3
    assert torch.equal(auto.to_dense().weight, conv2.weight)
    buf = io.BytesIO()
    torch.save(auto.state_dict(), buf)
    buf.seek(0)
    again = ps.nn.PatternConv2d(8, 8, bits=auto.bits, scheme=auto.scheme)
    again.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(1, 8, 6, 6)
    assert torch.equal(again(x), auto(x))
    assert levels.shape == conv.weight.shape


def test_training_through_pattern_conv():
    pc = ps.nn.PatternConv2d.from_dense(pattern_weight_conv(), ps.PatternSet(PATTERNS8))
    opt = torch.optim.SGD(pc.parameters(), lr=0.1)
    x = torch.randn(4, 6, 8, 8)
    before = pc.values.detach().clone()
    pc(x).square().mean().backward()
    opt.step()
    assert not torch.equal(before, pc.values)
    assert pc.bias.grad is not None


def test_double_and_extra_repr():
    pc = ps.nn.PatternConv2d.from_dense(pattern_weight_conv(), ps.PatternSet(PATTERNS8)).double()
    out = pc(torch.randn(1, 6, 5, 5, dtype=torch.float64))
    assert out.dtype == torch.float64
    assert "kernels=" in repr(pc) and "patterns=8x4" in repr(pc)


def test_from_dense_rejects_ineligible():
    with pytest.raises(ValueError, match="3x3"):
        ps.nn.PatternConv2d.from_dense(nn.Conv2d(2, 2, 5))
    with pytest.raises(ValueError, match="groups"):
        ps.nn.PatternConv2d.from_dense(nn.Conv2d(2, 2, 3, groups=2))
    with pytest.raises(TypeError):
        ps.nn.PatternConv2d.from_dense(nn.Linear(2, 2))
    conv = nn.Conv2d(2, 2, 3)
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ps.nn.PatternConv2d.from_dense(conv)


# ------------------------------------------------------------------ constructor order and renamed names
def _geometry(m):
    return (tuple(m.stride), tuple(m.padding), tuple(m.dilation), m.bias is not None)


def test_constructor_follows_conv2d():
    m = ps.nn.PatternConv2d(4, 8, 3, 2, 1, 1, 1, False)  # nn.Conv2d's positional order (told apart by groups)
    assert _geometry(m) == ((2, 2), (1, 1), (1, 1), False)
    kw = ps.nn.PatternConv2d(4, 8, kernel_size=3, stride=2, padding=1, bias=False)
    assert _geometry(kw) == _geometry(m)
    assert _geometry(ps.nn.PatternConv2d(4, 8)) == ((1, 1), (0, 0), (1, 1), True)  # nn.Conv2d's defaults
    with pytest.raises(ValueError, match="3x3"):
        ps.nn.PatternConv2d(4, 8, kernel_size=5)
    with pytest.raises(ValueError, match="groups"):
        ps.nn.PatternConv2d(4, 8, kernel_size=3, groups=2)


@pytest.mark.parametrize("args", [(1,), (2, 1), (5,), ((3, 5),)])
def test_a_third_argument_is_the_kernel_size_as_in_conv2d(args):
    # nn.Conv2d(8, 16, 5) is a 5x5 conv: PatternConv2d refuses it (it built a 3x3 conv with stride 5)
    with pytest.raises(ValueError, match="3x3"):
        ps.nn.PatternConv2d(4, 8, *args)


def test_padding_mode_keyword():
    assert ps.nn.PatternConv2d(4, 8, 3, padding_mode="zeros").padding_mode == "zeros"
    assert ps.nn.SparseConv2d(4, 8, 1, padding_mode="zeros").padding_mode == "zeros"
    for cls in (ps.nn.PatternConv2d, ps.nn.SparseConv2d):
        with pytest.raises(ValueError, match="padding_mode"):
            cls(4, 8, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="strided"):
        ps.nn.SparseConv2d(4, 8, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding string"):
        ps.nn.SparseConv2d(4, 8, 3, padding="full")


@pytest.mark.parametrize("args,geometry", [((3, 1, 1, False), ((3, 3), (1, 1), (1, 1), False)),
                                           ((1, 1, 1, True, PATTERNS8, 0), ((1, 1), (1, 1), (1, 1), True))])
def test_old_positional_order_warns_and_means_what_it_meant(args, geometry):
    with pytest.warns(DeprecationWarning, match="old positional order"):
        m = ps.nn.PatternConv2d(4, 8, *args)
    assert _geometry(m) == geometry


@pytest.mark.parametrize("args,geometry", [((3,), ((1, 1), (0, 0), (1, 1), True)),
                                           ((3, 2), ((2, 2), (0, 0), (1, 1), True)),
                                           ((3, 2, 1), ((2, 2), (1, 1), (1, 1), True)),
                                           ((3, 1, 2, 2), ((1, 1), (2, 2), (2, 2), True))])
def test_positional_kernel_size_3_reads_as_conv2d(args, geometry, recwarn):
    # what a drop-in nn.Conv2d must accept, e.g. PatternConv2d(8, 16, 3, padding=1): no warning
    m = ps.nn.PatternConv2d(4, 8, *args)
    assert _geometry(m) == geometry
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]
    assert _geometry(ps.nn.PatternConv2d(4, 8, 3, padding=1)) == ((1, 1), (1, 1), (1, 1), True)


def test_renamed_keywords_warn():
    conv = pattern_weight_conv(padding=1)
    with pytest.warns(DeprecationWarning, match="conv="):
        old = ps.nn.PatternConv2d.from_dense(conv=conv)
    new = ps.nn.PatternConv2d.from_dense(module=conv)
    assert old.kept_kernels == new.kept_kernels == int((conv.weight.abs().sum((2, 3)) != 0).sum())
    with pytest.warns(DeprecationWarning, match="kept_kernels"):
        assert new.nnz == new.kept_kernels  # deprecated alias: kept kernels, not kept weights
    with pytest.warns(DeprecationWarning, match="nnz="):
        m = ps.nn.PatternConv2d(4, 8, nnz=5)
    assert m.kept_kernels == 5 and m.values.shape[0] == 5
    with pytest.raises(TypeError, match="both"):
        ps.nn.PatternConv2d(4, 8, nnz=5, kept_kernels=5)


def test_weight_reads_the_decoded_dense_weight_like_the_sparse_modules():
    conv = pattern_weight_conv(padding=1)
    m = ps.nn.PatternConv2d.from_dense(conv)
    assert torch.equal(m.weight, conv.weight.detach()) and not isinstance(m.weight, torch.nn.Parameter)
    assert [n for n, _ in m.named_parameters()] == ["values", "bias"]  # storage unchanged
    x = torch.randn(2, conv.in_channels, 6, 6)
    assert torch.allclose(torch.jit.script(m)(x), m(x))  # scripts: the property is not compiled


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


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("bits", [None, 4])
def test_input_of_another_dtype_raises_like_conv2d(dtype, bits):
    """Drop-in, errors included: an fp32 layer refuses other input dtypes with nn.Conv2d's message
    (it computed them in fp32 / fp64 before); under autocast both run, in the autocast dtype."""
    pc = pconv(8, 8, bits=bits, padding=1)
    dense = pc.to_dense()
    x = torch.randn(2, 8, 10, 10).to(dtype)
    with pytest.raises(RuntimeError) as want:
        dense(x)
    with pytest.raises(RuntimeError) as got:
        pc(x)
    assert str(got.value) == str(want.value)
    with pytest.raises(RuntimeError, match=str(want.value).split(" (")[0]):
        torch.jit.script(pc)(x)
    if dtype != torch.float64:  # autocast leaves fp64 alone: nn.Conv2d raises there too
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, ref = pc(x), dense(x)
        assert y.dtype == ref.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), ref.float(), **HALF_TOL[torch.bfloat16])


@pytest.mark.parametrize("convert", [lambda m: m.half(), lambda m: m.bfloat16(), lambda m: m.to(torch.float16)])
@pytest.mark.parametrize("bits", [None, 3])
def test_half_model_runs_and_matches_dense(convert, bits):
    model = nn.Sequential(pconv(3, 8, bits=bits, padding=1), nn.ReLU(), pconv(8, 4, bits=bits, seed=1))
    x = torch.randn(2, 3, 9, 9)
    want = model(x)
    half = convert(copy.deepcopy(model))
    dtype = (half[0].scale if bits else half[0].values).dtype
    assert dtype in (torch.float16, torch.bfloat16)
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
    conv = pattern_weight_conv(6, 8, keep=0.5)
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
    conv = pattern_weight_conv(8, 8, keep=0.5)
    pc = PatternConv2d.from_dense(conv, bits=3)
    assert pc.quantized and pc.bits == 3 and pc.conversion_error > 0
    assert torch.equal(pc.dense_weight(), fmt.decompress(pc.patterns, pc.filter_ptr, pc.kernel_channel,
                                                         pc.kernel_pattern, pc.decoded().values, 8))


@pytest.mark.parametrize("padding,dilation", [("same", 1), ("valid", 1), ("same", 2)])
def test_string_padding_is_taken(padding, dilation):
    conv = pattern_weight_conv(6, 8, keep=0.5, padding=padding, dilation=dilation)
    assert layer_kind(conv) == PATTERN
    pc = PatternConv2d.from_dense(conv)
    x = torch.randn(1, 6, 12, 10)
    assert torch.equal(pc.to_dense().weight, conv.weight.detach())
    torch.testing.assert_close(pc(x), conv(x), rtol=1e-5, atol=1e-5)


def test_string_padding_in_the_constructor():
    assert PatternConv2d(4, 4, padding="same", dilation=2).padding == (2, 2)
    assert PatternConv2d(4, 4, padding="valid").padding == (0, 0)
    with pytest.raises(ValueError, match="padding"):
        PatternConv2d(4, 4, padding="full")
    for cls in (torch.nn.Conv2d, PatternConv2d):  # the same refusal as nn.Conv2d
        with pytest.raises(ValueError, match="padding='same' is not supported for strided convolutions"):
            cls(4, 4, 3, stride=2, padding="same")


@pytest.mark.parametrize("bad", ["x", None, 3.0])
def test_non_tensor_input_raises_type_error_like_conv2d(bad):
    for m in (torch.nn.Conv2d(16, 16, 3), pconv(16, 16)):
        with pytest.raises(TypeError, match="conv2d\\(\\)"):  # a TypeError naming conv2d, as nn.Conv2d's
            m(bad)


def test_assigning_weight_says_what_to_do():
    """The decoded weight cannot be assigned (nn.Module would raise a bare KeyError for a Parameter);
    the sparse modules say the same; the bias can be."""
    lin = torch.nn.Linear(8, 4)
    with torch.no_grad():
        lin.weight.mul_((torch.rand_like(lin.weight) < 0.3).float())
    for m in (pconv(16, 16), ps.nn.SparseLinear.from_dense(lin)):
        for value in (torch.nn.Parameter(m.weight.clone()), m.weight.clone()):
            with pytest.raises(AttributeError, match="cannot be assigned.*from_dense"):
                m.weight = value
        m.bias = torch.nn.Parameter(torch.zeros_like(m.bias))
        assert torch.equal(m.bias, torch.zeros_like(m.bias))


def test_conv_attributes_read_as_nn_conv2d():
    conv = pattern_weight_conv(6, 8, keep=0.5, stride=2, padding=1, dilation=1)
    pc = PatternConv2d.from_dense(conv)
    for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                 "padding_mode"):
        assert getattr(pc, name) == getattr(conv, name), name
    scripted = torch.jit.script(pc)
    x = torch.randn(1, 6, 9, 9)
    torch.testing.assert_close(scripted(x), conv(x), rtol=1e-5, atol=1e-5)


def test_autocast_output_dtype_as_nn_conv2d():
    conv = pattern_weight_conv(6, 8, keep=0.5, padding=1)
    pc = PatternConv2d.from_dense(conv)
    x = torch.randn(2, 6, 7, 7, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = conv(x), pc(x)
    assert got.dtype == want.dtype == torch.bfloat16
    # ours computes in fp32 and rounds the output once (nn.Conv2d rounds its operands: a looser
    # reference); the fp32 result rounded to bf16 is what it must give
    with torch.no_grad():
        torch.testing.assert_close(got, conv(x).to(torch.bfloat16))


def test_full_positional_conv2d_signature():
    """nn.Conv2d's whole positional order (..., bias, padding_mode, device, dtype) was read as the old
    order (a ValueError about bits); a bool groups is nn.Conv2d's groups (refused as groups != 1)."""
    m = ps.nn.PatternConv2d(4, 8, 3, 2, 1, 1, 1, False, "zeros", "cpu", torch.float64)
    assert _geometry(m) == ((2, 2), (1, 1), (1, 1), False) and m.values.dtype == torch.float64
    with pytest.raises(ValueError, match="groups"):
        ps.nn.PatternConv2d(4, 6, 3, 1, 1, 1, False)


@pytest.mark.parametrize("bits", [None, 4])
def test_built_on_the_meta_device_then_loaded(bits):
    """``with torch.device("meta")`` builds the layer (the built-in pattern table was made there and
    copied out: an error); its ``weight`` is a meta tensor as nn.Conv2d's; ``load_state_dict(assign=True)``
    gives the saved layer."""
    torch.manual_seed(0)
    dense = pattern_weight_conv(cin=4, cout=6, padding=1)
    saved = ps.nn.PatternConv2d.from_dense(dense, bits=bits)
    with torch.device("meta"):
        empty = ps.nn.PatternConv2d(4, 6, 3, padding=1, bits=bits)
    assert empty.patterns.is_meta and empty.weight.is_meta and empty.weight.shape == (6, 4, 3, 3)
    empty.load_state_dict(saved.state_dict(), assign=True)
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(empty(x), saved(x), rtol=0, atol=0)


def test_integer_input_and_unbatched_channel_errors_read_as_conv2d():
    """An integer / complex input had PatternConv2d's own message, and a wrong channel count in an
    unbatched input showed the 3-D shape where nn.Conv2d shows the batched one."""
    dense, ours = nn.Conv2d(4, 6, 3), ps.nn.PatternConv2d(4, 6, 3)
    for x in (torch.randint(0, 3, (1, 4, 5, 5)), torch.zeros(1, 4, 5, 5, dtype=torch.complex64), torch.randn(5, 6, 6)):
        messages = []
        for m in (dense, ours):
            with pytest.raises(RuntimeError) as e:
                m(x)
            messages.append(str(e.value))
        assert messages[0] == messages[1]


def _layer_and_dense(padding=1):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 6, 3, padding=padding)
    layer = ps.convert(ps.models.sparsify_random(torch.nn.Sequential(conv)))[0]
    return layer, layer.to_dense()


def _raises_as_dense(layer, dense, x):
    with pytest.raises(Exception) as want:
        dense(x)
    with pytest.raises(type(want.value)) as got:
        layer(x)
    assert str(got.value).split("\n")[0] == str(want.value).split("\n")[0]


@pytest.mark.parametrize("padding,shape", [(2, (1, 8, 0, 5)), (2, (8, 0, 4)), (0, (1, 8, 2, 2)), (1, (1, 8, 0, 5))])
def test_empty_or_too_small_images_raise_like_dense(padding, shape):
    """An empty image with enough padding returned an output (nn.Conv2d raises); a too small one
    gave a patsparse message."""
    layer, dense = _layer_and_dense(padding)
    _raises_as_dense(layer, dense, torch.randn(shape))


@pytest.mark.parametrize("attr,value", [("stride", 0), ("padding", -1), ("dilation", 0)])
def test_invalid_geometry_raises_like_dense(attr, value):
    layer, dense = _layer_and_dense()
    setattr(layer, attr, value)
    setattr(dense, attr, value)
    _raises_as_dense(layer, dense, torch.randn(1, 8, 7, 7))


def test_export_under_autocast_runs_outside_it_as_dense():
    """torch.export does not capture autocast for nn.Conv2d: neither for ours (an eager cast after
    the op ended up in the graph, which then failed outside autocast)."""
    layer, dense = _layer_and_dense()
    x = torch.randn(2, 8, 7, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        programs = [torch.export.export(m.eval(), (x,)) for m in (dense, layer)]
    with torch.no_grad():
        assert [p.module()(x).dtype for p in programs] == [torch.float32, torch.float32]


def test_kept_kernels_is_checked_and_the_empty_shell_runs():
    """Found by a docs probe: kept_kernels above in*out was accepted (repr '33/32') and any kept_kernels > 0
    built a layer whose forward failed ('filter_ptr[-1] = 0 but there are 10 kernels')."""
    with pytest.raises(ValueError, match="kept_kernels must be in 0..in_channels"):
        PatternConv2d(4, 8, kept_kernels=33)
    for kept in (0, 10, 32):
        for bits in (None, 4):
            m = PatternConv2d(4, 8, kept_kernels=kept, bits=bits, padding=1)
            if bits is None:
                fmt.validate({n: getattr(m, n) for n in fmt.ARRAY_NAMES}, 4, 8)
            assert torch.equal(m(torch.randn(2, 4, 5, 5)), torch.zeros(2, 8, 5, 5))
