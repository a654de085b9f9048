"""fusion.py, the pieces optimize_for_inference builds from: max_pool2d_nchw against F.max_pool2d,
FusedConv's epilogue (BatchNorm scale/shift, residual, clamp) natively or not (the passes and whole
models: test_optimize.py; DepthwiseConv3x3: test_depthwise.py)."""
import math
from typing import Optional

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torch_patsparse as ps
from torch_patsparse.fusion import FusedConv, max_pool2d_nchw

from helpers import assert_same_model_output


@pytest.mark.parametrize("k", [2, 3])
def test_max_pool2d_nchw_equals_max_pool2d(k):
    x = torch.randn(2, 5, 13, 17)
    x[0, 1, 2, 3] = math.nan
    for t in (x, x.contiguous(memory_format=torch.channels_last), x[0], x[:, :, :k + 1]):
        torch.testing.assert_close(max_pool2d_nchw(t, k), F.max_pool2d(t, k), equal_nan=True, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="too small"):  # as F.max_pool2d
        max_pool2d_nchw(x[:, :, :k - 1], k)


class PartlyNative(nn.Module):
    """A module with forward_fused that runs it natively only for some layers (as SparseConv2d: `_native`)."""

    def __init__(self, native):
        super().__init__()
        self._native = native
        self.inner = ps.nn.PatternConv2d.from_dense(nn.Conv2d(4, 4, 3, padding=1), project=True)
        self.out_channels, self.kernel_size, self.stride = 4, (3, 3), (1, 1)
        self.padding, self.dilation, self.bias = (1, 1), (1, 1), None

    def forward(self, x):
        return self.inner(x)

    def forward_fused(self, x, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
                      residual: Optional[torch.Tensor], lo: float, hi: float):
        if not self._native:
            raise RuntimeError("not native")
        return self.inner.forward_fused(x, scale, shift, residual, lo, hi)


@pytest.mark.parametrize("native", [True, False])
def test_fused_conv_honours_native_flag(native):
    conv = PartlyNative(native)
    conv.inner.bias = None
    fused = FusedConv(conv, torch.rand(4) + 0.5, torch.randn(4), 0.0, 6.0).eval()
    x, r = torch.randn(2, 4, 5, 6), torch.randn(2, 4, 5, 6)
    with torch.no_grad():
        want = (conv(x) * fused.scale.view(-1, 1, 1) + fused.shift.view(-1, 1, 1) + r).clamp(0, 6)
        assert_same_model_output(fused(x, r), want)
