"""What an optimized model runs and how it is built: :class:`FusedConv` (one of our conv / Linear
modules with BatchNorm, residual add and clamp-style activation in its output stage),
:class:`DepthwiseConv3x3` (a dense depthwise 3x3 conv with BatchNorm and activation folded in, on
the native NCHW kernel), :func:`max_pool2d_nchw`, and the folding of BatchNorm / activation / bias
into them (used by the graph and module passes of :mod:`torch_patsparse.optimize`)."""
import copy
import math
import sys
from typing import Any, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init  # (a dense copy draws no random init: the user's RNG stream stays)

from ._tracing import fx_leaf
from .ops import as_autocast, autocast_input, clamp_bound
from .nn.kinds import PATTERN, layer_kind
from .nn.pattern_conv import PatternConv2d
from .nn.sparse import SparseConv2d, SparseLinear
from .patterns import PatternSet

__all__ = ["FusedConv", "DepthwiseConv3x3", "EvalOnly", "max_pool2d_nchw"]

_INF = math.inf
EVAL_ONLY = ("this model was built by torch_patsparse.optimize_for_inference for inference only (BatchNorm "
             "is folded into the convs); train the original model and call optimize_for_inference again")


class _InferenceOnly(nn.Module):
    """A module of an optimized model: ``.train()`` raises (BatchNorm is folded in, the fused ops have
    no backward); ``.train(False)`` / ``.eval()`` work."""

    def train(self, mode: bool = True):
        if mode:
            # nn.Module.train set the ancestors (and the children before the path here) to training on
            # its way down: put them back, so the model that refused to train still runs in eval mode
            frame, child = sys._getframe(1), self
            while frame is not None and frame.f_code is nn.Module.train.__code__:
                parent = frame.f_locals.get("self")
                parent.training = False
                for sibling in parent.children():
                    if sibling is child:
                        break
                    sibling.train(False)
                frame, child = frame.f_back, parent
            raise RuntimeError(EVAL_ONLY)
        return super().train(False)


class EvalOnly(_InferenceOnly):
    """The first child of a model built by :func:`optimize_for_inference`: ``model.train()`` sets the
    children's mode in registration order, so it raises here before any BatchNorm or Dropout left in
    the model changes mode. A graph module calls it first, with its first input, so the graph keeps it
    through ``copy.deepcopy``, ``torch.save`` / ``torch.load`` and torch.fx re-tracing. It returns its
    input (an identity: a model that did not trace may iterate over its children)."""

    def forward(self, x: Any = None) -> Any:
        if not torch.jit.is_scripting():
            traced = fx_leaf(self, x)
            if traced is not None:
                return traced
        return x


class FusedConv(_InferenceOnly):
    """One of our conv / Linear modules with its epilogue: ``clamp(conv(x) * scale + shift + residual,
    lo, hi)`` per output channel (dim 1 of a conv output, the last dim of a Linear one). ``conv``'s
    own bias is folded into ``shift`` (``conv.bias`` is None: ``forward_fused`` never adds the bias).
    Built by :func:`optimize_for_inference`."""

    lo: float
    hi: float
    out_features: int
    channel_view: List[int]
    geometry: List[int]

    def __init__(self, conv: nn.Module, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
                 lo: float = -_INF, hi: float = _INF):
        super().__init__()
        self.conv = conv
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)
        # mean 0 / variance 1 for the torch-op epilogue: batch_norm is then exactly x * scale + shift, in
        # one pass that is 4x faster than addcmul over [C, 1, 1] views (measured). Its eps is 2**-60:
        # 1 + eps rounds to 1 in fp32 and fp64, and torch < 2.13 raises for eps = 0 in eval mode too.
        both = scale is not None and shift is not None
        self.register_buffer("unit_mean", torch.zeros_like(scale) if both else None, persistent=False)
        self.register_buffer("unit_var", torch.ones_like(scale) if both else None, persistent=False)
        self.lo, self.hi = float(lo), float(hi)
        linear = isinstance(conv, (nn.Linear, SparseLinear))
        self.channel_view = [-1] if linear else [-1, 1, 1]
        # Output geometry (kernel, stride, padding, dilation per axis), so a residual that would
        # broadcast is recognised before the fused op (which needs the output's exact shape) runs.
        self.out_features = int(conv.out_features if linear else conv.out_channels)
        self.geometry = [] if linear else _geometry(conv)

    def _residual_fits(self, x: torch.Tensor, residual: torch.Tensor) -> bool:
        # The fused op returns x's dtype and needs the output's exact shape: another dtype (type
        # promotion) or a broadcasting shape takes the unfused add.
        if residual.dim() != x.dim() or residual.dtype != x.dtype:
            return False
        if len(self.geometry) == 0:
            expected = list(x.shape[:-1]) + [self.out_features]
        else:
            expected = list(x.shape[:-3]) + [self.out_features]
            g = self.geometry
            for i in range(2):
                k, s, p, d = g[i], g[2 + i], g[4 + i], g[6 + i]
                expected.append((x.size(x.dim() - 2 + i) + 2 * p - d * (k - 1) - 1) // s + 1)
        return list(residual.shape) == expected

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not torch.jit.is_scripting():  # torch.fx: one call_module node, as for nn.Conv2d (_tracing.py)
            traced = fx_leaf(self, x, residual)
            if traced is not None:
                return traced
            if hasattr(self.conv, "_dtype"):  # (torch.jit.trace under autocast: the input cast recorded)
                x = autocast_input(x, self.conv._dtype())
        out: Optional[torch.Tensor] = None
        if hasattr(self.conv, "forward_fused"):  # resolved when scripted, too
            # A module with forward_fused may run it natively only for some layers (SparseConv2d: 1x1
            # without padding or groups, not a k-bit weight this dense) and only on the CPU (the sparse
            # 1x1 / Linear ops have no CUDA kernel); `_native` says which, read here as a load may
            # change it. The others take the torch-op route.
            native = True
            if hasattr(self.conv, "_native"):
                native = self.conv._native and x.device.type == "cpu"
            if native:
                if residual is None or self._residual_fits(x, residual):
                    out = self.conv.forward_fused(x, self.scale, self.shift, residual, self.lo, self.hi)
                    if not torch.jit.is_scripting():
                        out = as_autocast(out)  # the dtype the unfused layers give under autocast
                    return out
                out = self.conv.forward_fused(x, self.scale, self.shift, None, -_INF, _INF)
        if out is None:  # one pass for scale and shift, then in place (that output is ours to change)
            out = self.conv(x)
            scale, shift = self.scale, self.shift
            mean, var = self.unit_mean, self.unit_var
            if scale is not None and shift is not None and mean is not None and var is not None:
                if out.dim() == len(self.channel_view) + 1:  # channels in dim 1
                    out = F.batch_norm(out, mean, var, scale, shift, False, 0.0, 8.673617379884035e-19)
                else:
                    out = torch.addcmul(shift.view(self.channel_view), out, scale.view(self.channel_view))
            elif scale is not None:
                out = out * scale.view(self.channel_view)
            elif shift is not None:
                out = out + shift.view(self.channel_view)
        assert out is not None
        if residual is not None:
            same = residual.shape == out.shape and residual.dtype == out.dtype
            out = out.add_(residual) if same else out + residual  # (broadcasting / type promotion as `+`)
        if self.lo != -_INF or self.hi != _INF:
            out = out.clamp_(self.lo, self.hi)
        if not torch.jit.is_scripting():
            out = as_autocast(out)  # (an fp32 shift promoted an autocast result)
        return out

    def extra_repr(self) -> str:
        parts = [f"scale={'folded BatchNorm' if self.scale is not None else None}",
                 f"shift={'yes' if self.shift is not None else None}"]
        if self.lo != -_INF or self.hi != _INF:
            parts.append(f"clamp=({self.lo}, {self.hi})")
        return ", ".join(parts)


class DepthwiseConv3x3(_InferenceOnly):
    """A dense depthwise 3x3 conv (groups = channels, padding 1, dilation 1, any stride) with its
    BatchNorm folded into ``weight`` / ``bias`` and a clamp-style activation: ``clamp(conv2d(x, weight,
    bias, stride, 1, 1, channels), lo, hi)``. NCHW CPU input in the weight's dtype runs the native
    kernel ``patsparse::depthwise_conv3x3`` (it keeps MobileNet's inverted residuals in the NCHW
    layout of our sparse 1x1 convs; PyTorch's NCHW depthwise path is several times slower than its
    channels_last one); any other input (channels_last, other devices or dtypes, unbatched, input
    that needs a gradient) runs ``F.conv2d`` and the clamp, with ``F.conv2d``'s errors. Built by
    :func:`optimize_for_inference`."""

    channels: int
    stride: List[int]
    lo: float
    hi: float

    def __init__(self, conv: nn.Conv2d, lo: float = -_INF, hi: float = _INF):
        super().__init__()
        if not is_depthwise3x3(conv):
            raise ValueError("DepthwiseConv3x3 needs a dense fp32 depthwise 3x3 conv with padding 1 and dilation 1")
        self.channels = int(conv.out_channels)
        self.stride = [int(v) for v in conv.stride]
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        self.lo, self.hi = float(lo), float(hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        native = True
        if not torch.jit.is_scripting():  # torch.fx: one call_module node, as for nn.Conv2d (_tracing.py)
            traced = fx_leaf(self, x)
            if traced is not None:
                return traced
            native = not torch._C._are_functorch_transforms_active()  # vmap: the batched dense op
        if (native and x.device.type == "cpu" and x.dim() == 4 and x.dtype == self.weight.dtype and not x.requires_grad
                and (x.dtype == torch.float32 or x.dtype == torch.float64)  # the native kernel's dtypes
                and x.size(1) == self.channels and x.size(2) > 0 and x.size(3) > 0
                and not (x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())):
            out = torch.ops.patsparse.depthwise_conv3x3(x, self.weight, self.bias, self.stride,
                                                        clamp_bound(self.lo), clamp_bound(self.hi))
            if not torch.jit.is_scripting():
                out = as_autocast(out)  # nn.Conv2d's dtype under autocast
            return out
        out = F.conv2d(x, self.weight, self.bias, self.stride, 1, 1, self.channels)
        if self.lo != -_INF or self.hi != _INF:
            out = out.clamp(self.lo, self.hi)
        return out

    def to_dense(self) -> nn.Module:
        """The same function as ``nn.Conv2d`` (+ ``nn.Hardtanh`` / ``nn.ReLU`` when clamped): what
        runtimes without the native kernel (ExecuTorch's XNNPACK) take."""
        conv = skip_init(nn.Conv2d, self.channels, self.channels, 3, self.stride, 1, 1, self.channels,
                         self.bias is not None, device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.weight)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        if self.lo == -_INF and self.hi == _INF:
            return conv.eval()
        act = nn.ReLU() if (self.lo, self.hi) == (0.0, _INF) else nn.Hardtanh(self.lo, self.hi)
        return nn.Sequential(conv, act).eval()

    def extra_repr(self) -> str:
        return (f"{self.channels}, stride={tuple(self.stride)}, bias={self.bias is not None}, "
                f"clamp=({self.lo}, {self.hi})")


def _depthwise3x3_geometry(conv: nn.Module) -> bool:
    """Groups = channels, a 3x3 kernel, padding 1, dilation 1: DepthwiseConv3x3's geometry."""
    return (conv.groups == conv.in_channels == conv.out_channels and conv.kernel_size == (3, 3)
            and conv.padding == (1, 1) and conv.dilation == (1, 1))


def is_depthwise3x3(conv: nn.Module) -> bool:
    """A dense fp32 CPU depthwise 3x3 conv that :class:`DepthwiseConv3x3` takes."""
    return (type(conv) is nn.Conv2d and _depthwise3x3_geometry(conv) and conv.padding_mode == "zeros"
            and conv.weight.dtype == torch.float32 and conv.weight.device.type == "cpu")


def as_dense_depthwise(conv: nn.Module) -> nn.Module:
    """The ``nn.Conv2d`` a depthwise 3x3 :class:`SparseConv2d` decodes to (it has no native sparse
    kernel: its forward is ``F.conv2d`` on that decoded weight), which :class:`DepthwiseConv3x3` then
    runs natively; any other module as it is."""
    if isinstance(conv, SparseConv2d) and not conv._native and not hooked(conv) and _depthwise3x3_geometry(conv):
        dense = conv.to_dense()
        if is_depthwise3x3(dense):
            return dense
    return conv


def _geometry(conv: nn.Module) -> List[int]:
    """[kh, kw, sh, sw, ph, pw, dh, dw] giving the conv's output size by PyTorch's formula."""
    if conv.padding == "same":  # stride 1, output size = input size: as a 1x1 conv without padding
        return [1, 1, 1, 1, 0, 0, 1, 1]
    k = [int(v) for v in conv.kernel_size]
    p = [0, 0] if conv.padding == "valid" else [int(v) for v in conv.padding]
    return k + [int(v) for v in conv.stride] + p + [int(v) for v in conv.dilation]


def max_pool2d_nchw(x: torch.Tensor, k: int) -> torch.Tensor:
    """``F.max_pool2d(x, k)`` (kernel = stride = k, no padding, floor mode), bit for bit (the sign of
    a zero and NaN included) and with its errors. NCHW-contiguous 4-D fp32 CPU input that needs no
    gradient, k = 2, runs the native kernel ``patsparse::max_pool2d`` (one pass over the input,
    which PyTorch's NCHW max_pool2d reads more than once); anything else, and a graph being
    exported (ExecuTorch has no kernel for it), calls F.max_pool2d."""
    if not torch.jit.is_scripting():
        if torch.compiler.is_exporting():
            return F.max_pool2d(x, k, k)  # stride given: ExecuTorch's XNNPACK partitioner reads it
    if (k == 2 and x.dim() == 4 and x.device.type == "cpu" and x.dtype == torch.float32 and not x.requires_grad
            and x.is_contiguous() and x.size(1) > 0 and x.size(2) >= 2 and x.size(3) >= 2):
        return torch.ops.patsparse.max_pool2d(x, k)
    return F.max_pool2d(x, k, k)


def channels_last_4d(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels_last if it is 4-D; other input (unbatched 3-D, which that format does not
    cover) as it is. Starts a channels_last segment of an optimized model."""
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


# ---------------------------------------------------------------- folding
def bn_scale_shift(bn: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of an eval BatchNorm, in float64: y = x * scale + shift."""
    var, mean = bn.running_var.detach().double(), bn.running_mean.detach().double()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    return scale, shift


def hooked(m: Optional[nn.Module]) -> bool:
    """A module with forward hooks (user hooks, the old hook-based ``weight_norm``) computes more than
    its class: it is never folded, fused or replaced."""
    return m is not None and bool(m._forward_pre_hooks or m._forward_hooks)


def foldable_bn(bn: nn.Module, conv: nn.Module) -> bool:
    channels = conv.out_features if isinstance(conv, (nn.Linear, SparseLinear)) else conv.out_channels
    return (isinstance(bn, nn.BatchNorm2d) and type(bn).forward is nn.BatchNorm2d.forward and not hooked(bn)
            and not isinstance(conv, (nn.Linear, SparseLinear))
            and bn.running_mean is not None and bn.running_var is not None and bn.num_features == channels)


def fold_dense(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    """A dense conv with an eval BatchNorm folded into its weight and bias (computed in float64)."""
    scale, shift = bn_scale_shift(bn)
    new = copy.deepcopy(conv)
    w = conv.weight.detach().double() * scale.view(-1, 1, 1, 1)
    b = shift if conv.bias is None else conv.bias.detach().double() * scale + shift
    new.weight = nn.Parameter(w.to(conv.weight.dtype), requires_grad=False)
    new.bias = nn.Parameter(b.to(conv.weight.dtype), requires_grad=False)
    return new


def fused(conv: nn.Module, bn: Optional[nn.Module], lo: float, hi: float) -> FusedConv:
    """FusedConv over a copy of our module ``conv`` with ``bn`` (or None) and the bounds; the
    module's bias moves into the shift."""
    conv = copy.deepcopy(conv)  # a module called at two places keeps its bias at the other
    tensors = [t for t in list(conv.parameters()) + list(conv.buffers()) if t.is_floating_point()]
    dtype = tensors[0].dtype if tensors else torch.get_default_dtype()
    device = tensors[0].device if tensors else torch.device("cpu")
    bias = None if conv.bias is None else conv.bias.detach().double()
    conv.bias = None
    scale = shift = None
    if bn is not None:
        scale, shift = bn_scale_shift(bn)
        if bias is not None:
            shift = bias * scale + shift
        scale = scale.to(dtype)
    elif bias is not None:
        shift = bias
    if shift is not None:
        shift = shift.to(dtype)
    return FusedConv(conv, None if scale is None else scale.to(device), None if shift is None else shift.to(device),
                     lo, hi)


def as_pattern_stem(conv: nn.Module) -> Optional[PatternConv2d]:
    """A dense fp32 CPU 3x3 conv with at most 4 input channels (a stem) as a PatternConv2d holding
    every weight in one 9-entry pattern (exact), or None. oneDNN's NCHW path is slow for so few
    input channels (VGG-16's 3 -> 64 at 224x224: ~15 ms at one thread, ours ~1.7 ms, measured);
    the output stays NCHW for the convs that follow."""
    if type(conv) is not nn.Conv2d or hooked(conv) or conv.kernel_size != (3, 3) or conv.in_channels > 4 \
            or conv.weight.dtype != torch.float32 or conv.weight.device.type != "cpu" \
            or layer_kind(conv) != PATTERN:
        return None
    return PatternConv2d.from_dense(conv, PatternSet(torch.arange(9, dtype=torch.uint8).view(1, 9)))


def act_bounds_module(m: Optional[nn.Module]) -> Optional[Tuple[float, float]]:
    """(lo, hi) of a clamp-style activation module (not a subclass with its own forward, not hooked)."""
    if m is None or hooked(m):
        return None
    if isinstance(m, nn.ReLU) and type(m).forward is nn.ReLU.forward:
        return 0.0, _INF
    if isinstance(m, nn.Hardtanh) and type(m).forward is nn.Hardtanh.forward:  # ReLU6 is a Hardtanh(0, 6)
        return float(m.min_val), float(m.max_val)
    return None
