"""Sparse + k-bit compressed layers for what PatternConv2d does not take: ``SparseLinear`` and
``SparseConv2d`` (any kernel size, groups, stride, padding, dilation), and ``compress_module``. The
stored form is :mod:`torch_patsparse.sparse_format`'s; the storage, its state_dict validation and
the report protocol live in :mod:`._sparse_storage`.

Pruned weights are skipped, not multiplied: a NaN / inf input that only pruned weights touch does not
reach the output of a native layer (the dense layer gives NaN there), as in PatternConv2d.

Execution (each layer's forward is one native op, csrc/layer_ops.cpp, that checks the input as the
dense layer does and calls the ops below): ``SparseLinear`` and 1x1 ``SparseConv2d`` (no padding,
groups 1, any stride) run the native sparse ops ``torch.ops.patsparse.sparse_linear`` /
``sparse_conv1x1`` on the stored arrays
themselves (CPU; the op finds its runtime CSR index by the arrays' content in a native cache, reads
fp32 ``values`` at call time and decodes quantized codes once), so no dense weight is kept.
``forward_fused`` exposes their epilogue (per-channel scale / shift, residual, clamp) for
``optimize_for_inference``. A quantized layer at density >= 2/3 runs dense instead (its CSR runtime
form, a 16-bit column and a decoded fp32 value per kept weight, would be larger than the dense fp32
weight, and the dense product is faster there). Other convolutions, and other devices, take the dense weight from
``torch.ops.patsparse.sparse_decode`` (decoded once per content into a native cache, not kept by the
module) and call ``F.conv2d`` / ``F.linear``.

``load_state_dict`` validates every array (lengths, widths, padding bits, index range, code range,
a finite positive scale) before it assigns anything and rejects a bad one with torch's
``RuntimeError``; decoding never reads out of bounds. Levels, code widths and the quantizer are
:mod:`torch_patsparse.quant`'s.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ._geometry import ConvGeometry
from ._sparse_storage import _SparseWeightMixin
from .kinds import layer_kind

__all__ = ["SparseLinear", "SparseConv2d", "compress_module"]

_INF = float("inf")


class SparseLinear(_SparseWeightMixin, nn.Module):
    """``nn.Linear`` whose weight is stored sparse (+ k-bit). Build with :meth:`from_dense`."""

    __constants__ = ["_native", "_cpu_only"]
    _cpu_only = False  # True in ps.export.mobile's copy: no other-device branch in its bytecode

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = _channels("in_features / out_features", in_features, out_features)
        self.weight_shape = [self.out_features, self.in_features]  # (a list: the ops take it as is)
        self._op_takes_shape = True
        self._init_storage(bias, device, dtype)

    @classmethod
    def from_dense(cls, module: nn.Linear, bits: Optional[int] = None, scheme: str = "uniform") -> "SparseLinear":
        """From a pruned (zeros = pruned) Linear. ``bits``: quantize to k bits (``project.quantize``);
        None: store exact levels if the nonzeros already sit on a grid (``scheme``'s or the other's),
        else fp32 values (a float64 weight is rounded to them: ``conversion_error`` says by how much).
        The result is on the source layer's device and in its dtype (as after ``.to(dtype)``)."""
        _check_source(cls, module, nn.Linear)
        # built on the CPU, where the arrays are made, then moved (also inside a `with torch.device(...)` block)
        m = cls(module.in_features, module.out_features, module.bias is not None, device="cpu")
        m._set_weight(module.weight, bits, scheme)
        m = m.to(device=module.weight.device, dtype=module.weight.dtype)
        m._copy_bias(module.bias)
        return m

    def to_dense(self) -> nn.Linear:
        return self._dense_copy(nn.Linear, self.in_features, self.out_features, self.bias is not None,
                                device=self.header.device, dtype=self.values.dtype)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            traced = self._eager_entry(input, F.linear)
            if traced is not None:
                return traced
            if torch.jit.is_tracing():  # (records the casts the op does inside under autocast, as for nn.Conv2d)
                return ops.as_autocast(self._forward(ops.autocast_input(input, self._dtype())))
        return self._forward(input)

    def _forward(self, input: torch.Tensor) -> torch.Tensor:
        # `_native` / `_cpu_only` are TorchScript constants: a scripted layer holds only the branches it runs.
        if not self._native:
            return self._dense_forward(input)
        if not self._cpu_only:
            if input.device.type != "cpu":
                return self._dense_forward(input)
        return self._layer_op(input, None, self.bias, None, -float("inf"), float("inf"))

    def _dense_forward(self, x: torch.Tensor) -> torch.Tensor:
        """F.linear with the decoded weight (other devices; a layer that runs dense), in one native
        call with nn.Linear's input errors (csrc/layer_ops.cpp)."""
        return torch.ops.patsparse.sparse_linear_decoded(x, self.header, self.index, self.codes, self.values,
                                                         self.scale, self.bias, self.weight_shape)

    def forward_fused(self, x: torch.Tensor, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
                      residual: Optional[torch.Tensor], lo: float = -_INF, hi: float = _INF) -> torch.Tensor:
        """``clamp(x @ W.T * scale + shift + residual, lo, hi)`` in one native op (CPU only): ``scale`` /
        ``shift`` [out_features] or None (``forward`` passes the bias as ``shift``; this method does
        not add the bias itself), ``residual`` of the output's shape or None. Inputs and errors are
        ``F.linear``'s; fp16 / bf16 are computed in fp32 and returned in their dtype. A layer that runs
        dense (``_native`` False: a quantized weight at density >= 2/3) has no fused op."""
        if not self._native:
            raise RuntimeError("SparseLinear.forward_fused: this layer runs dense (a quantized weight this dense)")
        if x.device.type != "cpu":
            raise RuntimeError(f"SparseLinear.forward_fused runs on the CPU (the sparse op has no {x.device.type} "
                               "kernel); forward() runs on any device")
        return self._layer_op(x, scale, shift, residual, lo, hi)

    def _layer_op(self, x: torch.Tensor, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
                  residual: Optional[torch.Tensor], lo: float, hi: float) -> torch.Tensor:
        # One native call: nn.Linear's input checks and errors, dtypes and the product (csrc/layer_ops.cpp)
        return torch.ops.patsparse.sparse_linear_layer(x, self.header, self.index, self.codes, self.values,
                                                       self.scale, self.bias, self.weight_shape, scale, shift,
                                                       residual, lo, hi)

    def macs(self, output_hw=None) -> Tuple[int, int]:
        """(dense, kept) multiply-accumulates per sample (``output_hw`` unused)."""
        return self.in_features * self.out_features, self.nnz

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                + self._storage_repr())


def _check_source(cls, module, base) -> None:
    """``from_dense`` takes a layer that computes what ``base`` computes (TypeError / ValueError else)."""
    if not isinstance(module, base):
        raise TypeError(f"{cls.__name__}.from_dense takes an nn.{base.__name__}, got {type(module).__name__}")
    if getattr(module, "padding_mode", "zeros") != "zeros":
        raise ValueError(f"only padding_mode='zeros' is supported, got {module.padding_mode!r}")
    if layer_kind(module) is None:
        raise ValueError(f"{cls.__name__}.from_dense: {type(module).__name__} has its own forward (or no "
                         f"materialised floating-point weight); a {cls.__name__} would compute nn.{base.__name__}'s")


def _channels(names: str, *counts) -> Tuple[int, ...]:
    """Channel / feature counts as ints >= 0 (TypeError / ValueError, as nn.Conv2d / nn.Linear)."""
    out = tuple(ops.int_arg(c, names) for c in counts)
    if min(out) < 0:
        raise ValueError(f"{names} must be >= 0, got {out}")
    return out


class SparseConv2d(ConvGeometry, _SparseWeightMixin, nn.Module):
    """``nn.Conv2d`` (any kernel size / stride / padding / dilation / groups, zero padding) whose
    weight is stored sparse (+ k-bit). Build with :meth:`from_dense`. ``stride`` / ``padding`` /
    ``dilation`` may be set after construction and take effect (``_geometry.py``)."""

    __constants__ = ["_native", "_cpu_only"]
    _cpu_only = False  # True in ps.export.mobile's copy: no other-device branch in its bytecode
    _STORAGE = "header"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None):
        super().__init__()
        # nn.Conv2d's argument errors, at construction (the geometry's types: ConvGeometry)
        self.in_channels, self.out_channels = _channels("in_channels / out_channels", in_channels, out_channels)
        self.padding_mode, self.groups = padding_mode, groups
        if self.groups < 1:
            raise ValueError("groups must be a positive integer")
        if in_channels % groups or out_channels % groups:
            raise ValueError("in_channels and out_channels must be divisible by groups")
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        if min(self.kernel_size) < 1:
            raise ValueError(f"kernel_size must be positive, got {self.kernel_size}")
        self._check_padding()
        self.weight_shape = self._geometry_weight_shape()
        self._op_takes_shape = self._native_geometry()
        self._init_storage(bias, device, dtype)

    def _geometry_weight_shape(self) -> list:
        """[out, in / groups, kh, kw]: the weight shape the channels, groups and kernel size give."""
        return [self.out_channels, self.in_channels // self.groups, *self.kernel_size]

    def _check_padding(self) -> None:
        if self.padding == "same" and self.stride != (1, 1):
            raise ValueError("padding='same' is not supported for strided convolutions")

    def _native_geometry(self) -> bool:
        """1x1, groups 1, no padding ("same" / "valid" pad nothing at 1x1), any stride: the native op
        (an invalid stride / dilation goes to F.conv2d, which raises nn.Conv2d's error)."""
        return (self.kernel_size == (1, 1) and self.groups == 1
                and (isinstance(self.padding, str) or self.padding == (0, 0))
                and min(self.stride) >= 1 and min(self.dilation) >= 1)

    def _geometry_changed(self, name: str) -> None:
        if self.in_channels % self.groups or self._geometry_weight_shape() != list(self.weight_shape):
            raise ValueError(f"SparseConv2d: kernel_size={self.kernel_size}, groups={self.groups} do not fit the "
                             f"stored weight {list(self.weight_shape)}; build a new layer for another shape")
        self._check_padding()
        self._op_takes_shape = self._native_geometry()
        self._update_native()

    @classmethod
    def from_dense(cls, module: nn.Conv2d, bits: Optional[int] = None, scheme: str = "uniform") -> "SparseConv2d":
        """From a pruned (zeros = pruned) Conv2d; ``bits`` / ``scheme`` as in SparseLinear.from_dense."""
        _check_source(cls, module, nn.Conv2d)
        m = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                module.dilation, module.groups, module.bias is not None, device="cpu")
        m._set_weight(module.weight, bits, scheme)
        m = m.to(device=module.weight.device, dtype=module.weight.dtype)
        m._copy_bias(module.bias)
        return m

    def to_dense(self) -> nn.Conv2d:
        return self._dense_copy(nn.Conv2d, self.in_channels, self.out_channels, self.kernel_size, self.stride,
                                self.padding, self.dilation, self.groups, self.bias is not None,
                                device=self.header.device, dtype=self.values.dtype)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            traced = self._eager_entry(input, F.conv2d)
            if traced is not None:
                return traced
            if torch.jit.is_tracing():  # (records the casts the op does inside under autocast, as for nn.Conv2d)
                return ops.as_autocast(self._forward(ops.autocast_input(input, self._dtype())))
        return self._forward(input)

    def _forward(self, input: torch.Tensor) -> torch.Tensor:
        # `_native` / `_cpu_only` are TorchScript constants: a scripted layer holds only the branches it runs.
        if not self._native:
            return self._dense_forward(input)
        if not self._cpu_only:
            if input.device.type != "cpu":
                return self._dense_forward(input)
        return self._layer_op(input, None, self.bias, None, -float("inf"), float("inf"))

    def _dense_forward(self, x: torch.Tensor) -> torch.Tensor:
        """F.conv2d with the decoded weight (other devices, other geometries, a layer that runs dense),
        in one native call with nn.Conv2d's input errors (csrc/layer_ops.cpp)."""
        padding, padding_str = [0, 0], None
        if isinstance(self.padding, str):
            padding_str = self.padding
        else:
            padding = [self.padding[0], self.padding[1]]
        return torch.ops.patsparse.sparse_conv2d_decoded(x, self.header, self.index, self.codes, self.values,
                                                         self.scale, self.bias, self.weight_shape,
                                                         [self.stride[0], self.stride[1]], padding,
                                                         [self.dilation[0], self.dilation[1]], self.groups,
                                                         padding_str)

    def forward_fused(self, x: torch.Tensor, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
                      residual: Optional[torch.Tensor], lo: float = -_INF, hi: float = _INF) -> torch.Tensor:
        """``clamp(conv(x) * scale[c] + shift[c] + residual, lo, hi)`` in one native op (CPU only; 1x1
        layers without padding and groups, the ones ``forward`` runs natively): ``scale`` / ``shift``
        [out_channels] or None (``forward`` passes the bias as ``shift``; this method does not add
        the bias itself), ``residual`` of the output's shape or None. Inputs and errors are
        ``nn.Conv2d``'s (batched or unbatched; fp16 / bf16 computed in fp32, returned in their dtype)."""
        if not self._native:
            raise RuntimeError("SparseConv2d.forward_fused needs a 1x1 convolution without padding and groups "
                               "(and not a quantized weight this dense: it runs dense)")
        if x.device.type != "cpu":
            raise RuntimeError(f"SparseConv2d.forward_fused runs on the CPU (the sparse op has no {x.device.type} "
                               "kernel); forward() runs on any device")
        return self._layer_op(x, scale, shift, residual, lo, hi)

    def _layer_op(self, x: torch.Tensor, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
                  residual: Optional[torch.Tensor], lo: float, hi: float) -> torch.Tensor:
        # One native call: nn.Conv2d's input checks and errors, dtypes, unbatched input and the
        # product (csrc/layer_ops.cpp)
        return torch.ops.patsparse.sparse_conv1x1_layer(x, self.header, self.index, self.codes, self.values,
                                                        self.scale, self.bias, self.weight_shape,
                                                        [self.stride[0], self.stride[1]], scale, shift, residual,
                                                        lo, hi)

    def output_hw(self, input_hw) -> Tuple[int, int]:
        out = []
        for i in range(2):
            k = self.dilation[i] * (self.kernel_size[i] - 1) + 1
            if self.padding == "same":
                out.append(int(input_hw[i]))
                continue
            p = 0 if self.padding == "valid" else self.padding[i]
            out.append((int(input_hw[i]) + 2 * p - k) // self.stride[i] + 1)
        return out[0], out[1]

    def macs(self, output_hw) -> Tuple[int, int]:
        """(dense, kept) multiply-accumulates per image whose output of this layer is ``output_hw``
        = (H, W) (the convention of ``compression_report``; see :meth:`output_hw` to get it from the
        input size). Kept: kept weights x output pixels (border effects of padding ignored)."""
        pixels = int(output_hw[0]) * int(output_hw[1])
        return int(math.prod(self.weight_shape)) * pixels, self.nnz * pixels

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"bias={self.bias is not None}, " + self._storage_repr())


def float32_exact(weight: torch.Tensor) -> bool:
    """Whether float32 values (what SparseConv2d / SparseLinear store) hold ``weight`` exactly: any
    float16 / bfloat16 / float32 weight; a float64 one only when its values are float32 numbers."""
    return weight.dtype != torch.float64 or torch.equal(weight.detach().float().double(), weight.detach())


def compress_module(module: nn.Module, bits: Optional[int] = None, scheme: str = "uniform",
                    only_if_smaller: bool = True) -> Optional[nn.Module]:
    """Sparse (+ k-bit) replacement for a plain ``nn.Linear`` / ``nn.Conv2d``: a :class:`SparseLinear`
    or :class:`SparseConv2d` in the layer's dtype, or None when the layer is not such a layer or is
    unsupported (padding mode other than zeros, lazy weight; see :func:`torch_patsparse.nn.kinds.layer_kind`),
    when ``bits`` is None and float32 values cannot hold the weight exactly (:func:`float32_exact`), or
    (``only_if_smaller``) when the compressed form would not be smaller than dense.

    Every kind of conv is taken, 3x3 groups=1 ones too (``convert`` stores those as
    :class:`PatternConv2d` when they are pattern-pruned and calls this for the others, e.g. a 3x3
    conv with unstructured sparsity). The weight must already be pruned (zeros = pruned); without
    ``bits`` the result computes exactly what ``module`` does. ``bits`` / ``scheme`` as in
    ``SparseLinear.from_dense``.
    """
    if layer_kind(module) is None or (bits is None and not float32_exact(module.weight)):
        return None
    if isinstance(module, nn.Linear):
        out = SparseLinear.from_dense(module, bits, scheme)
    else:
        out = SparseConv2d.from_dense(module, bits, scheme)
    if only_if_smaller and sum(out.storage_bits().values()) >= out.dense_bits():
        return None
    return out
