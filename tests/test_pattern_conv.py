"""PatternConv2d against dense nn.Conv2d: from_dense, storage, state_dict, compression_report,
constructor order and renamed names (convert: test_convert.py; TorchScript: test_export.py)."""
import io

import pytest
import torch
from torch import nn

import torch_patsparse as ps
from torch_patsparse.models import vgg16

from helpers import PATTERNS8, pattern_weight_conv


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


def test_quantized_storage():
    conv = pattern_weight_conv(cin=8, cout=8, keep=0.5)
    pc = ps.nn.PatternConv2d.from_dense(conv, ps.PatternSet(PATTERNS8), bits=4)
    assert pc.quantized and pc.codes.dtype == torch.int8
    assert "values" not in pc.state_dict() and "codes" in pc.state_dict()
    levels = ps.project.quantize(conv.weight.detach(), 4)
    # Values are the quantization of the kept weights (per-layer scale over the kept values).
    assert int(pc.codes.abs().max()) <= 7
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


def test_vgg16_report_bits_per_kernel():
    """Stored bits of each converted layer are within a few percent of (4 values + index) per kept kernel."""
    model = vgg16(num_classes=10)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.in_channels > 3:
                m.weight.copy_(ps.project.connectivity(ps.project.pattern(m.weight, ps.PatternSet.select(m.weight)),
                                                       0.25))
    model = ps.convert(model, exclude=["features.0"])
    report = ps.compression_report(model, input_size=(1, 3, 32, 32))
    text = str(report)
    assert "total" in text
    for row in report.rows:
        if row.kind != "PatternConv2d":
            continue
        m = model.get_submodule(row.name)
        per_kernel = 4 * 32 + 16 + 8                          # values + int16 channel index + pattern id
        ideal = m.kept_kernels * per_kernel
        assert ideal <= row.stored_bits <= ideal * 1.05, (row.name, row.stored_bits, ideal)
        assert abs(row.density - 0.25 * 4 / 9) < 0.01
        assert row.kept_macs < row.dense_macs
    assert report.totals["ratio"] > 4


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


@pytest.mark.parametrize("args,geometry", [((1,), ((1, 1), (0, 0), (1, 1), True)),
                                           ((2, 1), ((2, 2), (1, 1), (1, 1), True)),
                                           ((3, 1, 1, False), ((3, 3), (1, 1), (1, 1), False)),
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
