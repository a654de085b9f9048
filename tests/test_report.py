"""report.py: compression_report's per-layer stored bits, densities and MACs, and its totals."""
import copy
import warnings

import pytest
import torch
from torch import nn

import torch_patsparse as ps
from torch_patsparse import project
from torch_patsparse.models import vgg16

from helpers import SmallNet, small_net_and_converted


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


def test_report_counts_the_whole_state_dict():
    torch.manual_seed(0)
    model = SmallNet().eval()
    report = ps.compression_report(model, input_size=(1, 1, 16, 16))
    sd_bits = sum(t.numel() * t.element_size() * 8 for t in model.state_dict().values())
    assert report.totals["model_stored_bits"] == sd_bits
    assert report.totals["other_bits"] > 0  # BatchNorm statistics
    assert "whole state_dict" in str(report)


def test_macs_count_every_call_tokens_and_layers_eval_skips():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1)
            self.tok = nn.Linear(8, 4)
            self.aux = nn.Linear(4, 2)  # run in training only

        def forward(self, x):
            y = self.conv(torch.relu(self.conv(x)))  # the same conv twice
            t = self.tok(y.flatten(2).transpose(1, 2))  # [N, 256 tokens, 8]
            return (t, self.aux(t)) if self.training else t
    rep = ps.compression_report(Net(), input_size=(2, 8, 16, 16))
    rows = {r.name: r for r in rep.rows}
    assert rows["conv"].dense_macs == 2 * 8 * 8 * 9 * 16 * 16
    assert rows["tok"].dense_macs == 8 * 4 * 256
    assert rows["aux"].dense_macs == 0
    assert rep.totals["dense_macs"] == sum(r.dense_macs for r in rep.rows)


def test_bits_follow_the_dtype():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    with torch.no_grad():
        model[0].weight.copy_(project.pattern(model[0].weight, ps.PatternSet.select(model[0].weight, k=8)))
        model[2].weight[model[2].weight.abs() < 0.05] = 0
    converted = ps.convert(model, layers="all")
    for dtype in (torch.float16, torch.float64):
        m = copy.deepcopy(converted).to(dtype)
        rep = ps.compression_report(m)
        sd_bits = sum(t.numel() * t.element_size() * 8 for t in m.state_dict().values() if isinstance(t, torch.Tensor))
        assert rep.totals["model_stored_bits"] == sd_bits, dtype


def test_a_grouped_conv_shows_its_weight_shape():
    rep = ps.compression_report(nn.Sequential(nn.Conv2d(32, 32, 3, groups=32)))
    assert rep.rows[0].shape == "32x1x3x3"


def test_every_dense_conv_kind_and_subclass_is_a_layer_with_its_macs():
    """Conv1d / Conv3d / transposed convs and subclasses are layers (not "other tensors"): a transposed
    conv computes each weight once per input position."""
    class MyConv(nn.Conv2d):
        pass

    m = nn.Sequential(nn.Conv1d(4, 8, 5, padding=2), nn.Unflatten(2, (4, 8)), MyConv(8, 8, 3, padding=1),
                      nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1), nn.Unflatten(1, (1, 4)), nn.Conv3d(1, 2, 3))
    rep = ps.compression_report(m, input_size=(1, 4, 32))
    rows = {r.name: r for r in rep.rows}
    assert [rows[k].kind for k in ("0", "2", "3", "5")] == ["Conv1d", "MyConv", "ConvTranspose2d", "Conv3d"]
    assert rows["0"].dense_macs == 4 * 8 * 5 * 32
    assert rows["2"].dense_macs == 8 * 8 * 9 * 32
    assert rows["3"].dense_macs == 8 * 4 * 16 * 32          # per input position: 4x8 of them
    assert rows["5"].dense_macs == 2 * 27 * 2 * 6 * 14      # output [1, 2, 2, 6, 14]
    assert rep.totals["model_stored_bits"] == rep.totals["stored_bits"]  # nothing left in "other tensors"


def test_a_lazy_model_is_a_clear_error():
    import pytest
    with pytest.raises(ValueError, match="lazy"):
        ps.compression_report(nn.Sequential(nn.LazyLinear(3)))


def test_optimized_model_reports_the_converted_models_macs():
    """optimize_for_inference's FusedConv calls its layer's forward_fused, so the layer's own hook
    never ran: every fused layer reported 0 MACs (a model's MAC reduction 0.0 or 1.0), and
    DepthwiseConv3x3 layers were missing from the table."""
    import warnings
    from torch_patsparse import models
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        conv = ps.convert(models.sparsify_random(models.mobilenet_v2(num_classes=10)).eval(), layers="all")
    opt = ps.optimize_for_inference(conv)
    a = ps.compression_report(conv, input_size=(1, 3, 64, 64))
    b = ps.compression_report(opt, input_size=(1, 3, 64, 64))
    assert a.totals["dense_macs"] == b.totals["dense_macs"] > 0
    assert a.totals["kept_macs"] == b.totals["kept_macs"] > 0
    assert len(a.rows) == len(b.rows)
    assert sum(r.kind == "DepthwiseConv3x3" for r in b.rows) == 17
    assert all(r.dense_macs for r in b.rows)


def test_a_sparse_layer_that_runs_the_dense_op_is_marked():
    """A 5x5 SparseConv2d decodes its weight and runs F.conv2d: the report listed it like the native
    1x1 one, as if its kept MACs were saved."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 5, padding=2), nn.Conv2d(8, 8, 1))
    with torch.no_grad():
        for m in model:
            m.weight.mul_(torch.rand_like(m.weight) < 0.1)
    rows = {r.name: r for r in ps.compression_report(ps.convert(model, layers="all"), input_size=(1, 8, 6, 6)).rows}
    assert rows["0"].kind == "SparseConv2d (dense op)" and rows["1"].kind == "SparseConv2d"
    # it computes every weight: its kept MACs are the dense ones (the totals claimed a 10x reduction)
    assert rows["0"].kept_macs == rows["0"].dense_macs and rows["0"].density < 0.2
    assert rows["1"].kept_macs < rows["1"].dense_macs


def test_a_layer_registered_twice_is_counted_once():
    """`s.b = s.a`: the second registration's state_dict keys are the same tensors; they were counted
    as "other tensors" in both columns, halving the whole-model ratio of the converted model."""
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(16, 16, 3, padding=1)
            with torch.no_grad():
                self.a.weight[:, :, 0, :] = 0
                self.a.weight[:, :, 2, :] = 0
                self.a.weight[:, :, 1, 0] = 0
            self.b = self.a
            self.bn = nn.BatchNorm2d(16)

        def forward(self, x):
            return self.bn(self.b(self.a(x)))
    torch.manual_seed(0)
    m = Twice()
    bn_bits = sum(t.numel() * t.element_size() * 8 for t in m.bn.state_dict().values())
    for model in (m, ps.convert(m)):
        r = ps.compression_report(model, input_size=(1, 16, 6, 6))
        assert len(r.rows) == 1 and r.totals["other_bits"] == bn_bits
        assert r.totals["model_stored_bits"] == r.rows[0].stored_bits + bn_bits


def _unique_state_bits(model: nn.Module) -> int:
    """Bits of the state_dict as torch.save stores it: each tensor once."""
    seen = {}
    for t in model.state_dict().values():
        if isinstance(t, torch.Tensor):
            seen[(t.untyped_storage()._cdata, t.storage_offset(), tuple(t.shape))] = t.numel() * t.element_size() * 8
    return sum(seen.values())


def test_totals_count_a_tied_weight_once_and_what_prune_or_parametrize_store():
    """'model_*' is the whole state_dict: a weight tied between two layers counted once (it was counted per
    layer: 2x the dense size, and a converted model's ratio 3.8x for 6.5x); torch.nn.utils.prune's
    weight_orig + weight_mask and weight_norm's original tensors counted (the decoded weight was, and they
    were left out)."""
    import warnings
    from torch.nn.utils import parametrizations, prune
    torch.manual_seed(0)
    tied = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
    tied[2].weight = tied[0].weight
    with torch.no_grad():
        tied[0].weight.copy_(project.pattern(tied[0].weight, ps.PatternSet.select(tied[0].weight, k=8)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = ps.convert(tied)
    assert converted[0].values is converted[2].values
    pruned = nn.Linear(64, 64)
    prune.l1_unstructured(pruned, "weight", amount=0.5)
    normed = parametrizations.weight_norm(nn.Linear(64, 64))
    for model in (tied, converted, nn.Sequential(pruned), nn.Sequential(normed)):
        totals = ps.compression_report(model).totals
        assert totals["model_stored_bits"] == _unique_state_bits(model), model
    dense = ps.compression_report(tied).totals
    assert dense["dense_bits"] == dense["stored_bits"] == _unique_state_bits(tied)
    assert ps.compression_report(converted).totals["dense_bits"] == dense["dense_bits"]
    assert ps.compression_report(nn.Sequential(pruned)).rows[0].stored_bits == 2 * 64 * 64 * 32 + 64 * 32


def test_input_size_takes_the_dtype_of_a_model_without_parameters():
    """A k-bit layer without bias has no parameter (its dtype is its scale buffer's): the example input was
    float32, and a float64 / half model failed ('expected scalar type Float but found Double')."""
    import warnings
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = ps.convert(model, project=True, bits=4)
    assert not list(converted.parameters())
    want = ps.compression_report(converted, input_size=(1, 8, 6, 6)).totals["kept_macs"]
    for dtype in (torch.float64, torch.bfloat16):
        got = ps.compression_report(copy.deepcopy(converted).to(dtype), input_size=(1, 8, 6, 6))
        assert got.totals["kept_macs"] == want


def test_input_size_checks_and_a_transposed_conv_shape():
    """numpy ints are taken (as for bits), a batch of 0 is an error (MACs per image were 0 and the reduction
    0.0x), and a transposed conv's shape is its weight's [Cin, Cout / groups, kh, kw] (it showed 4x4x3x3)."""
    import numpy as np
    model = nn.Sequential(nn.ConvTranspose2d(8, 4, 3, groups=2))
    report = ps.compression_report(model, input_size=(np.int64(1), 8, 5, 5))
    assert report.rows[0].shape == "8x2x3x3" and report.totals["dense_macs"] == 8 * 2 * 9 * 25
    with pytest.raises(ValueError, match="batch of at least 1"):
        ps.compression_report(model, input_size=(0, 8, 5, 5))


def test_a_model_without_layers_and_compressed_layers_on_the_meta_device():
    """No layer: the layers' ratio is 1.0, as the whole state_dict's (it printed 0.0x). A converted
    model's layers on the meta device (load_compressed without assign=True, as torch's load_state_dict
    leaves them): a clear error (it failed with "Cannot copy out of meta tensor")."""
    totals = ps.compression_report(nn.Sequential(nn.BatchNorm2d(4), nn.ReLU())).totals
    assert totals["ratio"] == 1.0 and totals["model_ratio"] == 1.0

    net, converted = small_net_and_converted()
    with torch.device("meta"):
        model = net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch's: assign=True would load data)
        ps.load_compressed(model, converted.state_dict())
    with pytest.raises(ValueError, match="layer '2' .* is on the meta device.*assign=True"):
        ps.compression_report(model)
