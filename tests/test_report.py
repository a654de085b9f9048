"""report.py: compression_report's per-layer stored bits, densities and MACs, and its totals."""
import torch
from torch import nn

import torch_patsparse as ps
from torch_patsparse.models import vgg16

from helpers import SmallNet


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
