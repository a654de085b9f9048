"""Thin Python wrappers over the native ops ``torch.ops.patsparse.*``: fake (meta) kernels for
tracing / torch.compile, and each op's Autograd kernel (reverse mode, torch.func, forward mode)."""
import operator
import os
import sys
import warnings
from typing import Optional

import torch
import torch.autograd.forward_ad as _fwAD
from torch._functorch.utils import unwrap_dead_wrappers as _unwrap_dead_wrappers
from torch._prims_common import suggest_memory_format

from . import _deprecation
from . import _C  # noqa: F401  (loads the library: runs the TORCH_LIBRARY registrations)

__all__ = ["pattern_conv2d", "set_isa", "get_isa", "supported_isas", "validate"]

_ops = torch.ops.patsparse


def pair(v, name: str = "argument") -> list:
    """``[a, b]`` from an int or a sequence of one or two ints (the conv argument convention; numpy
    ints too). TypeError for anything else: a float or a string is refused, not truncated."""
    try:
        if isinstance(v, (str, bytes)):
            raise TypeError
        out = [operator.index(x) for x in v] if hasattr(v, "__len__") else [operator.index(v)] * 2
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}") from None
    if len(out) not in (1, 2):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return out * 2 if len(out) == 1 else out


def int_arg(v, name: str) -> int:
    """``v`` as an int (numpy ints too); TypeError naming ``name`` for a float, a string, None."""
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}") from None


def pattern_conv2d(input: torch.Tensor, patterns: torch.Tensor, filter_ptr: torch.Tensor,
                   kernel_channel: torch.Tensor, kernel_pattern: torch.Tensor, values: torch.Tensor,
                   bias: Optional[torch.Tensor] = None, stride=1, padding=0, dilation=1) -> torch.Tensor:
    """3x3 convolution with a pattern-compressed weight (format in DESIGN.md / docs).

    Equivalent to ``F.conv2d(input, dense_weight, bias, stride, padding, dilation)`` where
    ``dense_weight`` is what :meth:`PatternConv2d.to_dense` rebuilds from the arrays, for a 4-D
    ``input`` with the layer's in_channels. The arrays do not hold in_channels, so the op cannot
    check the input's channel count as F.conv2d does: a kernel channel beyond the input's is
    refused, extra input channels are not read. :class:`PatternConv2d` checks both (and takes
    unbatched input).
    """
    return _ops.pattern_conv2d(input, patterns, filter_ptr, kernel_channel, kernel_pattern, values, bias,
                               pair(stride), pair(padding), pair(dilation))


def as_autocast(out: torch.Tensor) -> torch.Tensor:
    """``out`` (a native op's result) in the autocast dtype when autocast is on for its device and
    ``out`` is not fp64, as ``nn.Conv2d`` / ``nn.Linear`` return it there (autocast casts their fp32 /
    fp16 / bf16 operands; eager only)."""
    device = out.device.type
    # (the devices our ops run on: torch.is_autocast_enabled raises for "meta")
    if (out.is_floating_point() and out.dtype != torch.float64 and device in ("cpu", "cuda")
            and torch.is_autocast_enabled(device)):
        return out.to(torch.get_autocast_dtype(device))
    return out


def autocast_input(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """While torch.jit.trace records under autocast: ``x`` cast to the layer's ``dtype`` by a recorded op.
    The layer ops cast their input inside (unrecorded), so a trace run outside autocast would hand
    the next layer the autocast dtype (its dense-layer dtype error); nn.Conv2d's trace records its casts."""
    device = x.device.type
    if (torch.jit.is_tracing() and x.is_floating_point() and x.dtype != torch.float64 and x.dtype != dtype
            and device in ("cpu", "cuda") and torch.is_autocast_enabled(device)):
        return x.to(dtype)
    return x


_DBL_MAX = sys.float_info.max


def clamp_bound(v: float) -> float:
    """A clamp bound as the fused ops take it: +-inf (no bound) as +-DBL_MAX, which the native ops read
    back as +-inf (kernels/epilogue.h: clamp_bound). An infinite float argument does not survive
    AOTInductor's package format (written as a string, which its loader refuses)."""
    return min(max(v, -1.7976931348623157e308), 1.7976931348623157e308)  # (scripted: no globals)


def get_isa() -> str:
    """Name of the CPU kernel path in use: ``scalar``, ``avx2``, ``avx512`` or ``neon``."""
    return _ops.get_isa()


def isa_name(name) -> str:
    """``name`` as the kernels spell an ISA path (lower case); TypeError when it is not a string."""
    if not isinstance(name, str):
        raise TypeError(f"an ISA path is a str (scalar, avx2, avx512, neon or auto), got {type(name).__name__}")
    return name.lower()


def set_isa(name: str) -> str:
    """Force a CPU kernel path (``scalar``, ``avx2``, ``avx512``, ``neon``; ``auto`` picks the best
    one; case-insensitive); returns the previous name. RuntimeError for a name that is unknown or
    not supported by this build and CPU. The environment variable ``PATSPARSE_ISA`` sets the
    initial path."""
    return _ops.set_isa(isa_name(name))


def supported_isas() -> list:
    """Kernel paths this build and CPU can run."""
    return list(_ops.supported_isas())


def _check_isa_env() -> None:
    """``PATSPARSE_ISA`` as :func:`set_isa` takes it; a path this build and CPU do not run is a warning."""
    wanted = os.environ.get("PATSPARSE_ISA")
    if not wanted:
        return
    try:
        set_isa(wanted)  # case-insensitive, as set_isa ("AVX2" too)
    except RuntimeError:
        warnings.warn(f"PATSPARSE_ISA={wanted!r} is not a kernel path this build and CPU run "
                      f"({', '.join(supported_isas())} or auto); using {get_isa()}", RuntimeWarning, stacklevel=2)


_check_isa_env()


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
    return _in_format_of(input, input.new_empty((n, filter_ptr.shape[0] - 1, oh, ow)))


@torch.library.register_fake("patsparse::pattern_conv2d_grad_input")
def _(grad_output, input_size, patterns, filter_ptr, kernel_channel, kernel_pattern, values, stride, padding,
      dilation):
    return grad_output.new_empty(input_size)


@torch.library.register_fake("patsparse::pattern_conv2d_grad_values")
def _(grad_output, input, patterns, filter_ptr, kernel_channel, kernel_pattern, values, stride, padding, dilation):
    return torch.empty_like(values, memory_format=torch.contiguous_format)


# Autograd: one kernel per op. Reverse mode runs the native gradient ops through an autograd.Function;
# under torch.func transforms (vmap, grad, jacrev, jvp, hessian, ...) and forward-mode AD a
# differentiable op runs as its composite of ATen ops (a dense weight built from the stored one), which
# every transform and level supports: torch.library's autograd.Function fails under torch.func
# (pytorch/pytorch#168393) and would drop a forward-mode tangent (a silent zero derivative).
_AUTOGRAD_LIB = torch.library.Library("patsparse", "IMPL")
_INFERENCE_ONLY = ("pattern_conv2d_fused", "depthwise_conv3x3", "max_pool2d")


def _has_tangent(args) -> bool:
    """Whether a forward-mode tangent rides on a tensor argument (a dual level is open)."""
    return (_fwAD._current_level >= 0 and torch._C._is_fwd_grad_enabled()
            and any(isinstance(a, torch.Tensor) and _fwAD.unpack_dual(a).tangent is not None for a in args))


_STORED_WEIGHT = ("the stored weight of a compressed layer (values, codes, scale) is not differentiable: "
                  "gradients and tangents go to the layer's input and bias (a float PatternConv2d's values "
                  "are trainable)")


def _register_autograd(name: str, backward=None, setup_context=None, composite=None, refuse: str = "") -> None:
    """The Autograd kernel of ``patsparse::name``. ``setup_context(ctx, inputs, output)`` and
    ``backward(ctx, grad)`` as for ``torch.library.register_autograd`` (``inputs`` with the schema's
    defaults filled in); ``composite(*inputs)`` computes the op in differentiable ATen ops. An op
    without one refuses a forward-mode tangent; with ``refuse`` it also refuses inputs that require a
    gradient, with that reason (torch's fallback would return an output without a derivative)."""
    op = getattr(_ops, name).default
    defaults = tuple(a.default_value for a in op._schema.arguments)

    def forward(*args):
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)

    function = type(f"PatsparseFunction_{name}", (torch.autograd.Function,), {
        "forward": staticmethod(forward), "backward": staticmethod(backward),
        "setup_context": staticmethod(setup_context or (lambda ctx, inputs, output: None))})
    apply = super(torch.autograd.Function, function).apply  # (Function.apply binds defaults per call)

    def kernel(keyset, *args):
        args = args + defaults[len(args):]  # (the dispatcher drops arguments equal to their defaults)
        if composite is not None and (torch._C._are_functorch_transforms_active() or _has_tangent(args)):
            return composite(*args)
        if refuse and (_has_tangent(args) or (torch.is_grad_enabled() and torch._C._any_requires_grad(*args))):
            raise NotImplementedError(f"patsparse::{name}: {refuse}")
        inference_only = "; it is inference-only (ps.optimize_for_inference's model)" if name in _INFERENCE_ONLY else ""
        if _has_tangent(args):
            raise NotImplementedError(
                f"patsparse::{name} has no forward-mode derivative (torch.func.jvp / jacfwd / hessian, "
                f"torch.autograd.forward_ad): use reverse mode (backward, torch.func.vjp / jacrev){inference_only}")
        if backward is not None and torch.is_grad_enabled() and torch._C._any_requires_grad(*args):
            if torch._C._are_functorch_transforms_active():  # (ops with a composite returned above)
                raise NotImplementedError(f"patsparse::{name} has no derivative under torch.func transforms"
                                          f"{inference_only}")
            return apply(*_unwrap_dead_wrappers(args))
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & torch._C._after_autograd_keyset, *args)

    _AUTOGRAD_LIB.impl(name, kernel, "Autograd", with_keyset=True)


def _setup_context(ctx, inputs, output):
    input, patterns, filter_ptr, kernel_channel, kernel_pattern, values, bias, stride, padding, dilation = inputs
    ctx.save_for_backward(input, patterns, filter_ptr, kernel_channel, kernel_pattern, values)
    ctx.has_bias = bias is not None
    ctx.conv_args = (list(stride), list(padding), list(dilation))


def _differentiable_grads(ctx, grad_output):
    """The input and values gradients in differentiable torch ops, through the dense weight: for a
    backward that is itself differentiated (``create_graph=True``: gradient penalties, double
    backward; or run while a forward-mode dual level carries tangents), which the native gradient
    ops have no formula for."""
    from .format import decompress, flat_positions  # (format imports this module)
    input, patterns, filter_ptr, kernel_channel, kernel_pattern, values = ctx.saved_tensors
    stride, padding, dilation = ctx.conv_args
    w = decompress(patterns, filter_ptr, kernel_channel, kernel_pattern, values, input.shape[1])
    grad_input = grad_values = None
    if ctx.needs_input_grad[0]:
        grad_input = torch.nn.grad.conv2d_input(input.shape, w, grad_output, stride, padding, dilation)
    if ctx.needs_input_grad[5]:
        gw = torch.nn.grad.conv2d_weight(input, w.shape, grad_output, stride, padding, dilation)
        grad_values = gw.reshape(-1)[flat_positions(patterns, filter_ptr, kernel_channel, kernel_pattern,
                                                    input.shape[1])]
    return grad_input, grad_values


def _backward(ctx, grad_output):
    input, patterns, filter_ptr, kernel_channel, kernel_pattern, values = ctx.saved_tensors
    stride, padding, dilation = ctx.conv_args
    grad_output = grad_output.contiguous()
    grad_input = grad_values = grad_bias = None
    if torch.is_grad_enabled() or _has_tangent((grad_output, input, values)):
        grad_input, grad_values = _differentiable_grads(ctx, grad_output)
    elif ctx.needs_input_grad[0]:
        grad_input = _ops.pattern_conv2d_grad_input(grad_output, list(input.shape), patterns, filter_ptr,
                                                    kernel_channel, kernel_pattern, values, stride, padding,
                                                    dilation)
    if ctx.needs_input_grad[5] and grad_values is None:
        grad_values = _ops.pattern_conv2d_grad_values(grad_output, input, patterns, filter_ptr, kernel_channel,
                                                      kernel_pattern, values, stride, padding, dilation)
    if ctx.has_bias and ctx.needs_input_grad[6]:
        grad_bias = grad_output.sum(dim=(0, 2, 3))
    return grad_input, None, None, None, None, grad_values, grad_bias, None, None, None


def _pattern_conv2d_composite(input, patterns, filter_ptr, kernel_channel, kernel_pattern, values, bias, stride,
                              padding, dilation):
    from .format import decompress  # (format imports this module)
    weight = decompress(patterns, filter_ptr, kernel_channel, kernel_pattern, values, input.shape[1])
    return torch.nn.functional.conv2d(input, weight, bias, stride, padding, dilation)


_register_autograd("pattern_conv2d", _backward, _setup_context, _pattern_conv2d_composite)
# The native gradient ops refuse a tangent (a backward run under a dual level takes the
# differentiable path above).
_register_autograd("pattern_conv2d_grad_input")
_register_autograd("pattern_conv2d_grad_values")


# ---------------------------------------------------------------- fused inference op
_INF = float("inf")


def pattern_conv2d_fused(input: torch.Tensor, patterns: torch.Tensor, filter_ptr: torch.Tensor,
                         kernel_channel: torch.Tensor, kernel_pattern: torch.Tensor, values: torch.Tensor,
                         scale: Optional[torch.Tensor] = None, shift: Optional[torch.Tensor] = None,
                         residual: Optional[torch.Tensor] = None, stride=1, padding=0, dilation=1,
                         lo: float = -_INF, hi: float = _INF) -> torch.Tensor:
    """Inference-only 3x3 pattern convolution with a fused output stage (csrc/kernels/epilogue.h):
    ``clamp(conv(input) * scale[c] + shift[c] + residual, lo, hi)``, where ``conv`` has no bias (pass
    it as ``shift``). ``None`` means 1 / 0 / 0. BatchNorm folds into ``scale`` / ``shift``; ReLU is
    ``lo=0``, ReLU6 ``lo=0, hi=6``. ``residual`` has the output's shape. No autograd formula: the
    backward raises (use :func:`pattern_conv2d` and torch ops to train)."""
    return _ops.pattern_conv2d_fused(input, patterns, filter_ptr, kernel_channel, kernel_pattern, values, scale,
                                     shift, residual, pair(stride), pair(padding), pair(dilation), float(lo), float(hi))


@torch.library.register_fake("patsparse::pattern_conv2d_fused")
def _(input, patterns, filter_ptr, kernel_channel, kernel_pattern, values, scale, shift, residual, stride, padding,
      dilation, lo, hi):
    torch._check(not (lo > hi) and lo == lo and hi == hi,
                 lambda: f"patsparse::pattern_conv2d_fused: the clamp bounds must satisfy lo <= hi and not be NaN, "
                         f"got lo={lo}, hi={hi}")
    out = _ops.pattern_conv2d(input, patterns, filter_ptr, kernel_channel, kernel_pattern, values, None, stride,
                              padding, dilation)  # its fake: the conv's output shape and memory format
    if residual is not None:
        torch._check(residual.shape == out.shape,
                     lambda: f"patsparse::pattern_conv2d_fused: residual must have the output's shape "
                             f"{list(out.shape)}, got {list(residual.shape)}")
    return out


def _fused_backward(ctx, grad_output):
    raise RuntimeError("patsparse::pattern_conv2d_fused is inference-only (BatchNorm, residual and activation are "
                       "folded into it): train the unoptimized model, then run ps.optimize_for_inference")


_register_autograd("pattern_conv2d_fused", _fused_backward)
__all__.append("pattern_conv2d_fused")


# --------------------------------------------------------------------------------------------
# Sparse 1x1 conv / Linear (SparseConv2d / SparseLinear's native path, csrc/sparse_ops.cpp): the ops
# take the module's stored arrays as they are; epilogue clamp(acc * scale + shift + residual, lo, hi)
# --------------------------------------------------------------------------------------------
def sparse_conv1x1(input: torch.Tensor, header: torch.Tensor, index: torch.Tensor, codes: torch.Tensor,
                   values: torch.Tensor, code_scale: torch.Tensor, out_channels: int,
                   scale: Optional[torch.Tensor] = None, shift: Optional[torch.Tensor] = None,
                   residual: Optional[torch.Tensor] = None, stride=1, lo: float = -_INF,
                   hi: float = _INF) -> torch.Tensor:
    """1x1 convolution (no padding, groups 1) with a SparseConv2d-compressed [out_channels, C] weight
    (``header`` / ``index`` / ``codes`` / ``values`` / ``code_scale``: the module's stored arrays),
    then ``clamp(acc * scale[c] + shift[c] + residual, lo, hi)`` (each optional)."""
    return _ops.sparse_conv1x1(input, header, index, codes, values, code_scale, out_channels, scale, shift, residual,
                               pair(stride), lo, hi)


def sparse_linear(input: torch.Tensor, header: torch.Tensor, index: torch.Tensor, codes: torch.Tensor,
                  values: torch.Tensor, code_scale: torch.Tensor, out_features: int,
                  scale: Optional[torch.Tensor] = None, shift: Optional[torch.Tensor] = None,
                  residual: Optional[torch.Tensor] = None, lo: float = -_INF, hi: float = _INF) -> torch.Tensor:
    """``F.linear`` with a SparseLinear-compressed [out_features, in_features] weight, then the
    epilogue of :func:`sparse_conv1x1`."""
    return _ops.sparse_linear(input, header, index, codes, values, code_scale, out_features, scale, shift, residual,
                              lo, hi)


@torch.library.register_fake("patsparse::sparse_dense_weight")
def _(header, index, codes, values, code_scale, rows, cols):
    return values.new_empty((rows, cols), dtype=torch.float32)


@torch.library.register_fake("patsparse::sparse_decode")
def _(header, index, codes, values, code_scale, shape):
    return values.new_empty(shape, dtype=torch.float32)


@torch.library.register_fake("patsparse::pattern_channels")
def _(kernel_channel):
    return kernel_channel.new_empty(kernel_channel.shape, dtype=torch.int32)


@torch.library.register_fake("patsparse::pattern_decode")
def _(codes, scale, kept_kernels, entries, bits, scheme):
    dtype = torch.float64 if scale.dtype == torch.float64 else torch.float32
    return scale.new_empty((kept_kernels, entries), dtype=dtype)


def decode_cache_stats() -> list:
    """[hits, builds, size, bytes] of the native decode cache: PatternConv2d's runtime arrays
    (pattern_channels, pattern_decode) and the dense weights of sparse layers without a native kernel
    (sparse_decode)."""
    return list(_ops.decode_cache_stats())


def pattern_decode_cache_stats() -> list:
    """Deprecated name of :func:`decode_cache_stats` (the decode cache now serves every decode)."""
    _deprecation.warn("torch_patsparse.ops.pattern_decode_cache_stats", "torch_patsparse.ops.decode_cache_stats")
    return decode_cache_stats()


def sparse_index_cache_stats() -> list:
    """[hits, builds, size, bytes] of the native runtime-index cache of the sparse ops."""
    return list(_ops.sparse_index_cache_stats())


def plan_cache_stats() -> list:
    """[hits, builds, size] of the CPU plan cache of the 3x3 pattern convs (forward)."""
    return list(_ops.plan_cache_stats())


def transposed_plan_cache_stats() -> list:
    """[hits, builds, size] of the CPU cache of transposed plans (the 3x3 convs' input gradient)."""
    return list(_ops.transposed_plan_cache_stats())


def clear_caches() -> None:
    """Empties this process's native CPU caches (plans, transposed plans, decodes, sparse indices).
    They are bounded and keyed by content, so this changes no result; it gives their memory back, e.g.
    after a server drops a model version (the next call of a layer rebuilds what it needs)."""
    _ops.clear_plan_caches()
    _ops.clear_decode_cache()
    _ops.clear_sparse_index_cache()


def _strided_output(input, channels: int, stride):
    """Fake output of a conv that keeps the spatial size up to ``stride`` (1x1 unpadded, 3x3 padding
    1), in the input's memory format."""
    torch._check(input.dim() == 4, lambda: "patsparse: input must be 4-D")
    n, _c, h, w = input.shape
    return _in_format_of(input, input.new_empty((n, channels, (h - 1) // stride[0] + 1, (w - 1) // stride[1] + 1)))


def _in_format_of(input, out):
    """``out`` in the memory format the native ops give for ``input``: ATen's
    ``input.suggest_memory_format()`` (channels_last strides, dense or not: a cropped channels_last
    input too), which torch._prims_common mirrors for fake tensors."""
    if input.dim() == 4 and suggest_memory_format(input) == torch.channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out


@torch.library.register_fake("patsparse::sparse_conv1x1")
def _(input, header, index, codes, values, code_scale, out_channels, scale, shift, residual, stride, lo, hi):
    return _strided_output(input, out_channels, stride)


@torch.library.register_fake("patsparse::sparse_linear")
def _(input, header, index, codes, values, code_scale, out_features, scale, shift, residual, lo, hi):
    return input.new_empty((*input.shape[:-1], out_features))


# Depthwise 3x3 conv with bias + clamp (DepthwiseConv3x3's native path, csrc/depthwise_ops.cpp;
# inference only: input that needs a gradient is refused).
@torch.library.register_fake("patsparse::depthwise_conv3x3")
def _(input, weight, bias, stride, lo, hi):
    return _strided_output(input, input.shape[1], stride)


# Max-pool, kernel = stride = k (fusion.max_pool2d_nchw's native path, csrc/pool_ops.cpp; inference only).
@torch.library.register_fake("patsparse::max_pool2d")
def _(input, k):
    torch._check(input.dim() == 4, lambda: "patsparse: input must be 4-D")
    return _in_format_of(input, input.new_empty((input.shape[0], input.shape[1], input.shape[2] // k,
                                                 input.shape[3] // k)))


def _clamp_bounds(lo: float, hi: float):
    """(lo, hi) of a fused clamp with None for no bound: -inf / inf, and the +-DBL_MAX the layer ops
    pass for them (csrc/layer_ops.cpp), are none (a clamp at DBL_MAX would overflow float32 and
    turn an infinite output finite)."""
    return (lo if lo > -_DBL_MAX else None), (hi if hi < _DBL_MAX else None)


def _sparse_setup_context(ctx, inputs, output):
    input, header, index, codes, values, code_scale, rows, scale, shift, residual = inputs[:10]
    if values.requires_grad or code_scale.requires_grad:  # (the backward would return no gradient)
        raise NotImplementedError(f"patsparse: {_STORED_WEIGHT}")
    ctx.conv = len(inputs) == 13
    ctx.stride = list(inputs[10]) if ctx.conv else None
    ctx.lo, ctx.hi = inputs[-2], inputs[-1]
    ctx.rows = rows
    ctx.save_for_backward(input, header, index, codes, values, code_scale, scale, shift, output)


def _sparse_backward(ctx, grad_output):
    # Composite backward through the decoded dense weight (the modules train only their bias and
    # pass gradients to their input; the stored weight is not a parameter).
    input, header, index, codes, values, code_scale, scale, shift, output = ctx.saved_tensors
    g = grad_output
    if ctx.lo > -_DBL_MAX or ctx.hi < _DBL_MAX:  # clamp: no gradient where the output sits on a bound
        g = g * ((output > ctx.lo) & (output < ctx.hi)).to(g.dtype)
    chan = 1 if ctx.conv else g.dim() - 1
    shape = [1] * g.dim()
    shape[chan] = -1
    reduce = [d for d in range(g.dim()) if d != chan]  # empty for an unbatched (1-D) Linear input

    def per_channel(t):
        return t.sum(reduce) if reduce else t  # sum([]) would reduce every dim
    need = ctx.needs_input_grad
    grad_scale = grad_shift = grad_residual = grad_input = None
    if need[9]:
        grad_residual = g
    if need[8]:
        grad_shift = per_channel(g)
    if need[7]:
        args = (input, header, index, codes, values, code_scale, ctx.rows, None, None, None)
        acc = _ops.sparse_conv1x1(*args, ctx.stride, -_INF, _INF) if ctx.conv else _ops.sparse_linear(*args, -_INF, _INF)
        grad_scale = per_channel(g * acc)
    if scale is not None:
        g = g * scale.view(shape)
    if need[0]:
        w = _ops.sparse_dense_weight(header, index, codes, values, code_scale, ctx.rows, input.shape[chan]).to(g.dtype)
        if ctx.conv:
            # w^T g per image as a matmul (has a vmap batching rule, unlike einsum: is_grads_batched)
            n, _, h, wd = g.shape  # (explicit sizes: -1 is ambiguous at batch 0)
            gi = torch.matmul(w.t(), g.reshape(n, g.shape[1], h * wd)).view(n, w.shape[1], h, wd)
            if ctx.stride != [1, 1]:
                grad_input = g.new_zeros(input.shape)
                grad_input[:, :, ::ctx.stride[0], ::ctx.stride[1]] = gi
            else:
                grad_input = gi
        else:
            grad_input = g @ w
    return (grad_input, None, None, None, None, None, None, grad_scale, grad_shift, grad_residual) + (None,) * (
        3 if ctx.conv else 2)


def _sparse_composite(input, header, index, codes, values, code_scale, rows, scale, shift, residual, *rest):
    """The sparse conv1x1 / linear op (``rest``: [stride,] lo, hi) in ATen ops on the decoded weight."""
    if _has_tangent((values, code_scale)):
        raise NotImplementedError(f"patsparse: {_STORED_WEIGHT}")
    conv = len(rest) == 3
    weight = _ops.sparse_dense_weight(header, index, codes, values, code_scale, rows,
                                      input.shape[1 if conv else -1]).to(input.dtype)
    out = (torch.nn.functional.conv2d(input, weight[:, :, None, None], None, rest[0]) if conv
           else torch.nn.functional.linear(input, weight))
    shape = [-1, 1, 1] if conv else [-1]
    if scale is not None:
        out = out * scale.view(shape)
    if shift is not None:
        out = out + shift.view(shape)
    if residual is not None:
        out = out + residual
    lo, hi = _clamp_bounds(*rest[-2:])
    if lo is not None or hi is not None:
        out = out.clamp(lo, hi)
    return out


_register_autograd("sparse_conv1x1", _sparse_backward, _sparse_setup_context, _sparse_composite)
_register_autograd("sparse_linear", _sparse_backward, _sparse_setup_context, _sparse_composite)
# Inference-only ops: no derivative, but a forward-mode tangent is refused, not dropped (the Autograd
# fallback would return the output without one: a zero derivative).
for _name in ("depthwise_conv3x3", "max_pool2d"):
    _register_autograd(_name)
# Decoders of stored weights: a derivative w.r.t. what they decode is refused, not dropped.
for _name in ("pattern_decode", "sparse_decode", "sparse_dense_weight"):
    _register_autograd(_name, refuse=_STORED_WEIGHT)


# vmap of the layer ops (a converted model's forward under torch.func.vmap): a vmapped input of a
# conv is a bigger batch, one native call (torch's fallback called the op once per sample and said so).
# Batched weights (model ensembles), a batched residual or an input of the wrong rank go per sample.
def _layer_vmap(name: str, conv: bool):
    op = getattr(_ops, name).default

    def per_sample(info, in_dims, args):
        outs = [op(*[a.select(d, i) if isinstance(d, int) else a for a, d in zip(args, in_dims)])
                for i in range(info.batch_size)]
        return torch.stack(outs), 0

    def rule(info, in_dims, input, *rest):
        args = (input, *rest)
        if in_dims[0] is None or any(isinstance(d, int) for d in in_dims[1:]):  # (lists: int[] arguments)
            return per_sample(info, in_dims, args)
        x = input.movedim(in_dims[0], 0)
        if conv:
            if x.dim() == 4:  # a per-sample 3-D image: the vmapped dim is the batch
                return op(x, *rest), 0
            if x.dim() == 5:
                return op(x.flatten(0, 1), *rest).unflatten(0, (x.shape[0], x.shape[1])), 0
            return per_sample(info, in_dims, args)  # (the op's own error for the sample's rank)
        return (op(x, *rest), 0) if x.dim() >= 2 else per_sample(info, in_dims, args)

    torch.library.register_vmap(f"patsparse::{name}", rule)


for _name, _conv in (("pattern_conv2d_layer", True), ("sparse_conv1x1_layer", True), ("sparse_conv2d_decoded", True),
                     ("sparse_linear_layer", False), ("sparse_linear_decoded", False)):
    _layer_vmap(_name, _conv)


# Out variants (csrc/ops_out.cpp): the schemas ExecuTorch's to_executorch() switches each functional
# call to; the fake kernel checks the functional op's shape rules and returns `out` (resized by the
# real kernels).
@torch.library.register_fake("patsparse::pattern_conv2d.out")
def _(input, patterns, filter_ptr, kernel_channel, kernel_pattern, values, bias, stride=(1, 1), padding=(0, 0),
      dilation=(1, 1), *, out):
    torch._check(input.dim() == 4, lambda: "patsparse: input must be 4-D")
    return out


@torch.library.register_fake("patsparse::pattern_conv2d_fused.out")
def _(input, patterns, filter_ptr, kernel_channel, kernel_pattern, values, scale, shift, residual, stride, padding,
      dilation, lo, hi, *, out):
    torch._check(input.dim() == 4, lambda: "patsparse: input must be 4-D")
    return out


@torch.library.register_fake("patsparse::sparse_conv1x1.out")
def _(input, header, index, codes, values, code_scale, out_channels, scale, shift, residual, stride, lo, hi, *, out):
    torch._check(input.dim() == 4, lambda: "patsparse: input must be 4-D")
    return out


@torch.library.register_fake("patsparse::sparse_linear.out")
def _(input, header, index, codes, values, code_scale, out_features, scale, shift, residual, lo, hi, *, out):
    torch._check(input.dim() >= 1, lambda: "patsparse: input must have at least 1 dimension")
    return out
