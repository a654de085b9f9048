"""Thin Python wrappers over the native ops ``torch.ops.patsparse.*``: fake (meta) kernels for
tracing / torch.compile, and autograd (input, values, bias) registered with ``torch.library``."""
from typing import Optional, Sequence

import torch

from . import _C  # noqa: F401  (loads the library: runs the TORCH_LIBRARY registrations)

__all__ = ["pattern_conv2d", "set_isa", "get_isa", "supported_isas", "validate"]

_ops = torch.ops.patsparse


def pair(v) -> list:
    """``[a, b]`` from an int or a sequence of one or two ints (the conv argument convention)."""
    if isinstance(v, int):
        return [v, v]
    v = [int(x) for x in v]
    if len(v) not in (1, 2):
        raise ValueError(f"expected an int or a pair of ints, got {v}")
    return v * 2 if len(v) == 1 else v


def pattern_conv2d(input: torch.Tensor, patterns: torch.Tensor, filter_ptr: torch.Tensor,
                   kernel_channel: torch.Tensor, kernel_pattern: torch.Tensor, values: torch.Tensor,
                   bias: Optional[torch.Tensor] = None, stride=1, padding=0, dilation=1) -> torch.Tensor:
    """3x3 convolution with a pattern-compressed weight (format in DESIGN.md / docs).

    Equivalent to ``F.conv2d(input, dense_weight, bias, stride, padding, dilation)`` where
    ``dense_weight`` is what :meth:`PatternConv2d.to_dense` rebuilds from the arrays.
    """
    return _ops.pattern_conv2d(input, patterns, filter_ptr, kernel_channel, kernel_pattern, values, bias,
                               pair(stride), pair(padding), pair(dilation))


def get_isa() -> str:
    """Name of the CPU kernel path in use: ``scalar``, ``avx2``, ``avx512`` or ``neon``."""
    return _ops.get_isa()


def set_isa(name: str) -> str:
    """Force a CPU kernel path (``auto`` picks the best one); returns the previous name.
    The environment variable ``PATSPARSE_ISA`` sets the initial path."""
    return _ops.set_isa(name)


def supported_isas() -> list:
    """Kernel paths this build and CPU can run."""
    return list(_ops.supported_isas())


def validate(patterns, filter_ptr, kernel_channel, kernel_pattern, values, in_channels: int) -> str:
    """Checks the compressed arrays; returns ``""`` when valid, else a message naming the problem."""
    return _ops.validate(patterns, filter_ptr, kernel_channel, kernel_pattern, values, in_channels)


_INT64_MAX = 2**63 - 1


def _out_size(n: int, pad: int, dil: int, stride: int) -> int:
    """Output size along one axis, as the native ``conv_out_size`` computes it: 0 when the dilated
    kernel does not fit; RuntimeError where the native op's int64 size arithmetic would overflow."""
    if isinstance(n, int) and isinstance(pad, int) and isinstance(dil, int):
        if 2 * pad > _INT64_MAX or 2 * dil > _INT64_MAX or n + 2 * pad > _INT64_MAX:
            raise RuntimeError(f"patsparse: padding {pad} and dilation {dil} are out of range for input size {n} "
                               "(input size + 2 * padding or 2 * dilation overflows int64)")
    span = n + 2 * pad - dil * 2 - 1
    if isinstance(span, int) and span < 0:
        return 0
    return span // stride + 1


@torch.library.register_fake("patsparse::pattern_conv2d")
def _(input, patterns, filter_ptr, kernel_channel, kernel_pattern, values, bias, stride=(1, 1), padding=(0, 0),
      dilation=(1, 1)):
    torch._check(input.dim() == 4, lambda: "patsparse: input must be 4-D")
    n, _c, h, w = input.shape
    oh = _out_size(h, padding[0], dilation[0], stride[0])
    ow = _out_size(w, padding[1], dilation[1], stride[1])
    out = input.new_empty((n, filter_ptr.shape[0] - 1, oh, ow))
    if input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out


@torch.library.register_fake("patsparse::pattern_conv2d_grad_input")
def _(grad_output, input_size, patterns, filter_ptr, kernel_channel, kernel_pattern, values, stride, padding,
      dilation):
    return grad_output.new_empty(input_size)


@torch.library.register_fake("patsparse::pattern_conv2d_grad_values")
def _(grad_output, input, patterns, filter_ptr, kernel_channel, kernel_pattern, values, stride, padding, dilation):
    return torch.empty_like(values, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    input, patterns, filter_ptr, kernel_channel, kernel_pattern, values, bias, stride, padding, dilation = inputs
    ctx.save_for_backward(input, patterns, filter_ptr, kernel_channel, kernel_pattern, values)
    ctx.has_bias = bias is not None
    ctx.conv_args = (list(stride), list(padding), list(dilation))


def _backward(ctx, grad_output):
    input, patterns, filter_ptr, kernel_channel, kernel_pattern, values = ctx.saved_tensors
    stride, padding, dilation = ctx.conv_args
    grad_output = grad_output.contiguous()
    grad_input = grad_values = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_input = _ops.pattern_conv2d_grad_input(grad_output, list(input.shape), patterns, filter_ptr,
                                                    kernel_channel, kernel_pattern, values, stride, padding,
                                                    dilation)
    if ctx.needs_input_grad[5]:
        grad_values = _ops.pattern_conv2d_grad_values(grad_output, input, patterns, filter_ptr, kernel_channel,
                                                      kernel_pattern, values, stride, padding, dilation)
    if ctx.has_bias and ctx.needs_input_grad[6]:
        grad_bias = grad_output.sum(dim=(0, 2, 3))
    return grad_input, None, None, None, None, grad_values, grad_bias, None, None, None


torch.library.register_autograd("patsparse::pattern_conv2d", _backward, setup_context=_setup_context)


# Out variants (csrc/ops_out.cpp): the schemas ExecuTorch's to_executorch() switches each functional
# call to; the fake kernel checks the functional op's shape rules and returns `out` (resized by the
# real kernels).
@torch.library.register_fake("patsparse::pattern_conv2d.out")
def _(input, patterns, filter_ptr, kernel_channel, kernel_pattern, values, bias, stride=(1, 1), padding=(0, 0),
      dilation=(1, 1), *, out):
    torch._check(input.dim() == 4, lambda: "patsparse: input must be 4-D")
    return out
