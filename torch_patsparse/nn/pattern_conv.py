"""PatternConv2d: a drop-in ``nn.Conv2d`` (3x3, groups=1) that stores only the compressed weight."""
import inspect
import numbers
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from .. import _deprecation
from .. import bitpack
from .. import format as fmt
from .. import ops  # also registers torch.ops.patsparse
from .. import project as proj
from .. import quant
from .._deprecation import renamed_keywords
from .._tracing import fx_attr, fx_leaf
from ..patterns import PatternSet
from ._decoded_weight import check_weight_size, relative_error
from ._geometry import ConvGeometry
from ._pattern_state import PatternStateDict, channel_dtype, pack_codes
from .kinds import PATTERN, conv_padding, layer_kind

_SCHEMES = quant.SCHEMES
_CONV2D_ORDER = ("kernel_size", "stride", "padding", "dilation", "groups", "bias", "padding_mode", "device", "dtype")
# The order before nn.Conv2d's (deprecated): PatternConv2d(in, out, stride, padding, dilation, bias, ...).
_OLD_ORDER = ("stride", "padding", "dilation", "bias", "patterns", "kept_kernels", "bits", "scheme", "device", "dtype")


def _pattern_table(patterns) -> torch.Tensor:
    """``patterns`` ([K, E] positions 0..8, a tensor / nested list / PatternSet) as the uint8 table
    (ValueError / TypeError for anything else: a position is never truncated or wrapped)."""
    if isinstance(patterns, PatternSet):
        patterns = patterns.to_tensor()
    t = patterns if isinstance(patterns, torch.Tensor) else torch.as_tensor(patterns, device="cpu")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"patterns must hold integer positions 0..8, got {t.dtype}")
    if t.dim() != 2 or t.shape[1] < 1 or t.shape[1] > 9:
        raise ValueError(f"patterns must be [K, E] with 1 <= E <= 9, got shape {list(t.shape)}")
    if t.numel() and not t.is_meta and (t.min() < 0 or t.max() > 8):
        raise ValueError(f"patterns must hold positions 0..8 of a 3x3 kernel, got values {t.min().item()}.."
                         f"{t.max().item()}")
    return t.to(torch.uint8)


class PatternConv2d(ConvGeometry, PatternStateDict, nn.Module):
    """3x3 convolution with a pattern-compressed weight (see DESIGN.md, "Compressed format").

    Every kept kernel keeps ``E`` (usually 4) weights in one of ``K`` shapes of the layer's pattern
    set; dropped kernels (connectivity pruning) cost nothing. ``state_dict`` holds only the
    compressed tensors: ``patterns``, ``filter_ptr``, ``kernel_channel`` (int16 while ``in_channels``
    <= 32768), ``kernel_pattern`` and either ``values`` (float, trainable) or, for quantized layers,
    bit-packed ``codes`` + ``scale`` (``bits`` and ``scheme`` are kept in the module's metadata). The
    module holds only that stored form, in memory and in a TorchScript file; its forward gets the
    runtime arrays (int32 channel indices, decoded values) from a content-keyed native cache
    (``patsparse::pattern_channels`` / ``pattern_decode``). Build one with :meth:`from_dense`.

    Inputs and errors are ``nn.Conv2d``'s: [N, C, H, W] or unbatched [C, H, W], in the layer's dtype
    (another raises nn.Conv2d's dtype error; under autocast, what autocast casts is accepted and the
    output is in the autocast dtype); fp16 / bf16 are computed in fp32, fp64 in fp64. Constructor
    arguments follow ``nn.Conv2d`` (``in_channels, out_channels, kernel_size=3, stride=1, padding=0,
    dilation=1, groups=1, bias=True``, ``padding_mode='zeros'``; the storage ones keyword-only:
    ``patterns``, ``kept_kernels``, ``bits``, ``scheme``, ``device``, ``dtype``); the old order
    ``(in_channels, out_channels, stride, padding, dilation, bias, ...)`` still works for one release
    with a DeprecationWarning where no nn.Conv2d call fits (a bool fourth argument). ``kernel_size`` /
    ``stride`` / ``padding`` / ``dilation`` / ``groups`` read as nn.Conv2d's; ``stride`` / ``padding``
    / ``dilation`` may be set after construction and take effect (``_geometry.py``).
    Pruned weights are skipped, not multiplied: a NaN / inf input that only pruned weights touch does
    not reach the output (it does in the dense conv, through 0 * NaN). ``conversion_error`` is the
    relative weight error ``||W_stored - W|| / ||W||`` of the conversion that built it (0.0 when
    lossless, and after a ``load_state_dict`` of other weights; shown by ``repr`` only when nonzero).
    """

    __constants__ = ["in_channels", "out_channels", "quantized"]
    conversion_error: float
    _STORAGE = "patterns"
    __jit_unused_properties__ = ["nnz", "kept_kernels"]

    @renamed_keywords("PatternConv2d", nnz="kept_kernels")
    def __init__(self, in_channels: int, out_channels: int, *args, **kwargs):
        # nn.Conv2d's argument order (see _build for the signature); the old order is named by _conv2d_keywords.
        self._build(in_channels, out_channels, **_conv2d_keywords(args, kwargs))

    def _build(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=0, dilation=1,
               groups: int = 1, bias: bool = True, *, patterns: Optional[torch.Tensor] = None, kept_kernels: int = 0,
               bits: Optional[int] = None, scheme: str = "uniform", device=None, dtype=None,
               padding_mode: str = "zeros") -> None:
        if padding_mode != "zeros":
            raise ValueError(f"PatternConv2d supports padding_mode='zeros' only, got {padding_mode!r}")
        if tuple(ops.pair(kernel_size, "kernel_size")) != (3, 3):
            raise ValueError(f"PatternConv2d is a 3x3 convolution, got kernel_size={kernel_size!r}")
        if ops.int_arg(groups, "groups") != 1:
            raise ValueError(f"PatternConv2d takes groups=1 only, got groups={groups!r}")
        super().__init__()
        in_channels, out_channels = (ops.int_arg(c, "in_channels / out_channels") for c in (in_channels, out_channels))
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        if bits is not None:  # (numpy ints too, as the sparse layers and the constraints take them)
            if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not 1 <= bits <= 8:
                raise ValueError(f"bits must be an int in 1..8 or None, got {bits!r}")
            bits = int(bits)
        check_weight_size("PatternConv2d", (out_channels, in_channels, 3, 3))
        kept_kernels = ops.int_arg(kept_kernels, "kept_kernels")
        if not 0 <= kept_kernels <= in_channels * out_channels:
            raise ValueError(f"kept_kernels must be in 0..in_channels * out_channels = {in_channels * out_channels}, "
                             f"got {kept_kernels}")
        if scheme not in _SCHEMES:
            raise ValueError(f"scheme must be one of {_SCHEMES}, got {scheme!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = (3, 3)
        self.groups = 1
        self.padding_mode = "zeros"
        padding_is_same = padding == "same"
        if isinstance(padding, str):  # as nn.Conv2d: a 3x3 kernel's "same" is symmetric, dilation on each side
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be 'same', 'valid' or numbers, got {padding!r}")
            padding = ops.pair(dilation) if padding == "same" else 0
        # Tuples, as nn.Conv2d's (TorchScript passes a Tuple[int, int] to the op's int[] argument).
        self.stride, self.padding, self.dilation = (tuple(ops.pair(v)) for v in (stride, padding, dilation))
        self.kernel_size, self.groups = (3, 3), 1
        if padding_is_same and self.stride != (1, 1):
            raise ValueError("padding='same' is not supported for strided convolutions")  # as nn.Conv2d
        self._padding_same = padding_is_same
        self.quantized = bits is not None
        self.bits = bits
        self.scheme = scheme
        self.conversion_error = 0.0  # set by from_dense: relative weight error of the conversion
        # Where nn.Conv2d would put its weight: `device`, else the default device (a `with
        # torch.device(...)` block, e.g. "meta"); the pattern table and zero codes are built on the CPU.
        target = torch.device(device) if device is not None else torch.get_default_device()
        if patterns is None:
            with torch.device("cpu"):
                patterns = PatternSet.candidates().to_tensor()[:8]
        patterns = _pattern_table(patterns).to(target)
        entries = patterns.shape[1]
        self.register_buffer("patterns", patterns.clone())
        # A valid layout of zero weights until a state_dict is loaded: kernel k at filter k // in_channels,
        # channel k % in_channels.
        with torch.device("cpu"):
            kept = torch.arange(kept_kernels)
            filter_ptr = torch.zeros(out_channels + 1, dtype=torch.int32)
            filter_ptr[1:] = torch.bincount(kept // in_channels, minlength=out_channels).cumsum(0)
        self.register_buffer("filter_ptr", filter_ptr.to(target))
        # The stored (narrow) form; the ops read int32 from patsparse::pattern_channels.
        self.register_buffer("kernel_channel", (kept % in_channels).to(channel_dtype(in_channels)).to(target))
        self.register_buffer("kernel_pattern", torch.zeros(kept_kernels, dtype=torch.uint8, device=device))
        factory = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        if self.quantized:
            with torch.device("cpu"):
                codes = pack_codes(torch.zeros(kept_kernels * entries), bits)
            self.register_buffer("codes", codes.to(target))
            self.register_buffer("scale", torch.ones((), **factory))
        else:
            self.values = nn.Parameter(torch.zeros(kept_kernels, entries, **factory))
        self.register_parameter("bias", nn.Parameter(torch.zeros(out_channels, **factory)) if bias else None)

    def _geometry_changed(self, name: str) -> None:
        if self.kernel_size != (3, 3) or self.groups != 1:
            raise ValueError(f"PatternConv2d is a 3x3 convolution with groups=1, got kernel_size={self.kernel_size}, "
                             f"groups={self.groups}")
        # padding is stored numeric (the op takes numbers); "same" is remembered, so a later dilation
        # keeps it "same" as nn.Conv2d's does (and a later stride is refused as there)
        same = getattr(self, "_padding_same", False)
        if name == "padding":
            same = self.padding == "same"
        if same and self.stride != (1, 1):
            raise ValueError("padding='same' is not supported for strided convolutions")
        if isinstance(self.padding, str) or same:
            super(ConvGeometry, self).__setattr__("padding", self.dilation if same else (0, 0))
        self._padding_same = same

    def _padding_arg(self):
        """``padding`` as given to the constructor: "same" when the layer keeps it so."""
        return "same" if getattr(self, "_padding_same", False) else self.padding

    # ------------------------------------------------------------------ construction
    @classmethod
    @renamed_keywords("PatternConv2d.from_dense", conv="module")
    def from_dense(cls, module: nn.Conv2d, pattern_set: Optional[PatternSet] = None, bits: Optional[int] = None,
                   scheme: str = "uniform", *, project: bool = False) -> "PatternConv2d":
        """Compresses ``module`` (a plain 3x3 ``nn.Conv2d``, groups=1, zero padding; numeric, ``"same"`` or
        ``"valid"`` padding). Unless asked (``project=True`` or ``bits``), the result computes exactly
        what ``module`` computes: every nonzero weight is stored as it is.

        ``pattern_set``: ``None`` finds a set that holds every kernel exactly
        (:meth:`PatternSet.cover`; ValueError if that needs more than 256 patterns). A given set must
        hold every kernel (a kernel may fill part of a pattern); a kernel that fits none raises
        ValueError, or with ``project=True`` the weight is projected onto the set
        (:func:`torch_patsparse.project.pattern`, lossy). ``project=True`` without a set selects 8
        patterns of 4 from the weight (:meth:`PatternSet.select`) and projects onto them.
        All-zero kernels are dropped (connectivity).

        ``bits``: quantize the kept weights to that many bits (``scheme`` uniform or pow2; lossy) and
        store codes + a scale. ``None`` stores codes anyway when the weights already sit exactly on the
        levels of some bit width (e.g. after ADMM quantization), else float values.

        The module's ``conversion_error`` is the relative weight error ``||W_stored - W|| / ||W||``
        (0.0 when nothing was lost).
        """
        conv = module
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"expected an nn.Conv2d, got {type(conv).__name__}")
        if layer_kind(conv) != PATTERN:
            raise ValueError("PatternConv2d takes plain 3x3 nn.Conv2d layers with groups=1, zero padding and a "
                             f"floating-point weight; got {type(conv).__name__} with kernel_size={conv.kernel_size}, "
                             f"groups={conv.groups}, padding_mode={conv.padding_mode}, padding={conv.padding}")
        if bits is not None:
            quant.check(bits, scheme)
        elif scheme not in quant.SCHEMES:
            raise ValueError(f"scheme must be one of {quant.SCHEMES}, got {scheme!r}")
        if pattern_set is not None and not isinstance(pattern_set, PatternSet):
            raise TypeError(f"pattern_set must be a PatternSet or None, got {type(pattern_set).__name__}")
        if not isinstance(project, bool):  # ("no" would be true)
            raise TypeError(f"project must be a bool, got {project!r}")
        w = conv.weight.detach()
        if not torch.isfinite(w).all():
            raise ValueError("conv weight has NaN or inf entries")
        if pattern_set is None and project:
            pattern_set = PatternSet.select(w, k=8)
            stored = proj.pattern(w, pattern_set)
        elif pattern_set is None:
            try:
                pattern_set = PatternSet.cover(w)
            except ValueError as e:
                raise ValueError(f"{e}. Pass project=True to project the weight onto 8 selected patterns "
                                 "(lossy)") from None
            stored = w
        else:
            stored = proj.pattern(w, pattern_set) if project else w
        patterns = pattern_set.to_tensor()
        try:
            arrays = fmt.compress(stored, patterns)
        except ValueError as e:
            raise ValueError(f"{e}. Pass project=True to project the weight onto the set (lossy), or "
                             "pattern_set=None to find a set that stores every kernel exactly") from None
        values = arrays["values"]
        codes, scale, grid_bits, scheme = _quantization(values, bits, scheme)
        mod = cls(conv.in_channels, conv.out_channels, stride=conv.stride,
                  padding="same" if conv.padding == "same" else conv_padding(conv),  # (same after a dilation change)
                  dilation=conv.dilation, bias=conv.bias is not None, patterns=patterns, kept_kernels=values.shape[0],
                  bits=grid_bits, scheme=scheme, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            for name in ("filter_ptr", "kernel_channel", "kernel_pattern"):
                getattr(mod, name).copy_(arrays[name])
            if mod.quantized:
                mod.codes = pack_codes(codes, mod.bits).to(w.device)
                mod.scale.copy_(scale)
            else:
                mod.values.copy_(values)
            if conv.bias is not None:
                mod.bias.copy_(conv.bias.detach())
        mod.conversion_error = relative_error(mod.dense_weight(), w)
        return mod

    def to_dense(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` with the same function (exact: same weights, zeros elsewhere)."""
        return self._dense_copy(nn.Conv2d, self.in_channels, self.out_channels, 3, self.stride, self._padding_arg(),
                                self.dilation, bias=self.bias is not None, device=self.patterns.device,
                                dtype=self._dtype())

    def _dtype(self) -> torch.dtype:
        """The layer's float dtype (of its values, or of its scale when quantized)."""
        if self.quantized:  # a TorchScript constant: the other branch is not compiled
            return self.scale.dtype
        return self.values.dtype

    def _runtime_arrays(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(kernel_channel, values) for the pattern ops. A quantized layer's values are decoded from
        its codes by ``patsparse::pattern_decode`` (once per distinct content, then cached; each call
        gets a copy); a :meth:`decoded` layer holds int32 indices and float values itself."""
        kernel_channel = self.kernel_channel
        # The CPU ops widen int16 per call (their plan cache compares content); the CUDA plan cache
        # keys on tensor identity, so a device layer passes the cached int32 tensor; an exported
        # graph (torch.export: the ExecuTorch kernels read int32) widens through the op too.
        widen = kernel_channel.device.type != "cpu"
        if not torch.jit.is_scripting():
            widen = widen or torch.compiler.is_exporting()
        if kernel_channel.dtype != torch.int32 and widen:
            kernel_channel = torch.ops.patsparse.pattern_channels(kernel_channel)
        if self.quantized:
            bits = self.bits
            assert bits is not None
            values = torch.ops.patsparse.pattern_decode(self.codes, self.scale, kernel_channel.size(0),
                                                        self.patterns.size(1), bits, self.scheme)
        else:
            values = self.values
        return kernel_channel, values

    @torch.jit.unused
    def dense_weight(self) -> torch.Tensor:
        """The dense [Cout, Cin, 3, 3] weight this layer computes with (detached: :attr:`weight` is
        the differentiable one)."""
        return self.weight.detach()

    @torch.jit.unused
    def int_codes(self) -> torch.Tensor:
        """A quantized layer's codes as int8 [kept_kernels, E] (``codes`` holds them bit-packed):
        value = ``code * scale`` (uniform) or ``sign(code) * scale * 2^(1 - |code|)`` (pow2)."""
        if not self.quantized:
            raise ValueError("int_codes: this PatternConv2d is not quantized (it stores float values)")
        width, levels = quant.signed_code_width(self.bits), quant.levels(self.bits)
        codes = bitpack.unpack(self.codes.cpu(), self.kept_kernels * self.patterns.shape[1], width) - levels
        return codes.to(torch.int8).view(self.kept_kernels, -1).to(self.codes.device)

    @torch.jit.unused
    def decoded(self) -> "PatternConv2d":
        """A float PatternConv2d computing exactly what this layer computes, holding the runtime arrays
        itself: int32 ``kernel_channel`` and float ``values`` (the decoded codes when quantized). For
        runtimes without ``patsparse::pattern_channels`` / ``pattern_decode``; it takes more memory
        than this layer."""
        kernel_channel, values = self._runtime_arrays()
        kernel_channel = kernel_channel.to(torch.int32)
        mod = PatternConv2d(self.in_channels, self.out_channels, stride=self.stride, padding=self._padding_arg(),
                            dilation=self.dilation, bias=self.bias is not None, patterns=self.patterns,
                            kept_kernels=self.kept_kernels, device=self.patterns.device, dtype=values.dtype)
        with torch.no_grad():
            for name, t in (("filter_ptr", self.filter_ptr), ("kernel_pattern", self.kernel_pattern),
                            ("values", values)):
                getattr(mod, name).copy_(t)
            mod.kernel_channel = kernel_channel.clone()
            if self.bias is not None:
                mod.bias.copy_(self.bias)
        mod.conversion_error = self.conversion_error
        mod.train(self.training)
        return mod

    @property
    def weight(self) -> torch.Tensor:
        """The dense [Cout, Cin, 3, 3] weight, decoded on each access (not a Parameter), for code that
        reads ``conv.weight``. Differentiable in ``values``, so a penalty written on ``conv.weight``
        trains the stored values; writing into it does not change the layer (``load_state_dict`` or
        :meth:`from_dense` do)."""
        if not torch.jit.is_scripting():
            # (torch.fx proxies parameters only: a quantized layer without bias has none, and its weight
            # is a constant of the graph)
            traced = fx_attr(self, "weight", self.bias if self.quantized else self.values)
            if traced is not None:
                return traced
            if self.filter_ptr.is_meta:  # a model built on the meta device: no data, as nn.Conv2d's weight there
                return torch.empty(self.out_channels, self.in_channels, 3, 3, dtype=self._dtype(), device="meta")
        kernel_channel, values = self._runtime_arrays()
        return fmt.decompress(self.patterns, self.filter_ptr, kernel_channel, self.kernel_pattern,
                              values.to(self._dtype()), self.in_channels)

    @torch.jit.unused
    def pattern_set(self) -> PatternSet:
        return PatternSet.from_tensor(self.patterns.cpu())

    # ------------------------------------------------------------------ forward
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Like ``nn.Conv2d``: input [N, C, H, W] or unbatched [C, H, W] in the layer's dtype (fp16 /
        bf16 are computed in fp32 and returned in their dtype)."""
        if not torch.jit.is_scripting():
            traced = fx_leaf(self, input)  # torch.fx: one call_module node, as for nn.Conv2d (_tracing.py)
            if traced is not None:
                return traced
            if not isinstance(input, torch.Tensor):
                raise TypeError("conv2d(): argument 'input' must be Tensor, not " + type(input).__name__)
            if torch.jit.is_tracing():  # (records the casts the op does inside under autocast, as for nn.Conv2d)
                input = ops.autocast_input(input, self._dtype())
                return ops.as_autocast(self._layer_op(input, None, self.bias, None, -float("inf"), float("inf")))
        return self._layer_op(input, None, self.bias, None, -float("inf"), float("inf"))

    def forward_fused(self, input: torch.Tensor, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
                      residual: Optional[torch.Tensor], lo: float, hi: float) -> torch.Tensor:
        """Inference: ``clamp(conv(input) * scale + shift + residual, lo, hi)`` in one native pass
        (``patsparse::pattern_conv2d_fused``: folded BatchNorm, the residual add and a ReLU-style clamp
        run in the conv's output stage, while the tile is in cache). ``conv`` is without the bias (as
        SparseConv2d / SparseLinear.forward_fused: pass it in ``shift``). ``scale`` / ``shift`` [Cout]
        or None (1 / 0), ``residual`` output-shaped or None, ``lo`` / ``hi`` may be -inf / inf. Inputs
        and errors as :meth:`forward`; no autograd with an epilogue (the backward raises)."""
        return self._layer_op(input, scale, shift, residual, lo, hi)

    def _layer_op(self, x: torch.Tensor, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
                  residual: Optional[torch.Tensor], lo: float, hi: float) -> torch.Tensor:
        # One native call: nn.Conv2d's input checks and errors, dtypes, unbatched input, the runtime
        # arrays and the product (csrc/layer_ops.cpp).
        kernel_channel = self.kernel_channel
        if not torch.jit.is_scripting():
            # an exported graph (torch.export: the ExecuTorch kernels read int32) widens through the op
            if torch.compiler.is_exporting() and kernel_channel.dtype != torch.int32:
                kernel_channel = torch.ops.patsparse.pattern_channels(kernel_channel)
        # the stored values, or a quantized layer's packed codes, bit width and code scale
        code_scale: Optional[torch.Tensor] = None
        if self.quantized:  # a TorchScript constant: the other branch is not compiled
            bits = self.bits
            assert bits is not None
            stored, code_scale = self.codes, self.scale
        else:
            stored, bits = self.values, 0
        return torch.ops.patsparse.pattern_conv2d_layer(
            x, self.patterns, self.filter_ptr, kernel_channel, self.kernel_pattern, stored, code_scale, bits,
            self.scheme, self.bias, self.in_channels, self.stride, self.padding, self.dilation, scale, shift,
            residual, lo, hi)

    # ------------------------------------------------------------------ report protocol
    @property
    def kept_kernels(self) -> int:
        """Number of kept 3x3 kernels (each holds ``patterns.shape[1]`` weights)."""
        return int(self.kernel_channel.numel())

    @property
    def nnz(self) -> int:
        """Deprecated: the number of kept kernels (``kept_kernels``); ``nnz`` is the number of kept
        weights in SparseConv2d / SparseLinear."""
        _deprecation.warn("PatternConv2d.nnz (kept kernels)", "PatternConv2d.kept_kernels")
        return self.kept_kernels

    @torch.jit.unused
    def storage_bits(self) -> Dict[str, int]:
        """Bits of every array the state_dict stores, at the width it is stored with (see
        ``_save_to_state_dict``): index arrays at their dtype's width (``kernel_channel`` as int16
        when ``in_channels`` <= 32768), values at 32 bits or, when quantized, codes bit-packed at
        ``bits`` each (2 for 1-bit layers: a kept position may hold 0) plus a scale; floats at their dtype's width."""
        out = {name: getattr(self, name).numel() * getattr(self, name).element_size() * 8
               for name in ("patterns", "filter_ptr", "kernel_pattern")}
        out["kernel_channel"] = self.kernel_channel.numel() * channel_dtype(self.in_channels).itemsize * 8
        if self.quantized:
            out["codes"] = self.codes.numel() * 8
            out["scale"] = self.scale.element_size() * 8
        else:
            out["values"] = self.values.numel() * self.values.element_size() * 8
        if self.bias is not None:
            out["bias"] = self.bias.numel() * self.bias.element_size() * 8
        return out

    @torch.jit.unused
    def dense_bits(self) -> int:
        """Bits of the dense weight and bias in this layer's float dtype."""
        return self._dtype().itemsize * 8 * (self.out_channels * self.in_channels * 9
                                             + (self.out_channels if self.bias is not None else 0))

    @torch.jit.unused
    def macs(self, output_hw: Tuple[int, int]) -> Tuple[int, int]:
        """(dense, kept) multiply-accumulates for one image with this output size."""
        pixels = int(output_hw[0]) * int(output_hw[1])
        return (self.out_channels * self.in_channels * 9 * pixels, self.kept_kernels * int(self.patterns.shape[1]) * pixels)

    def extra_repr(self) -> str:
        total = self.out_channels * self.in_channels
        kept = self.kept_kernels
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size=(3, 3), stride={self.stride}, "
             f"padding={self.padding}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        s += (f", kernels={kept}/{total} ({100.0 * kept / max(total, 1):.1f}%), patterns={self.patterns.shape[0]}"
              f"x{self.patterns.shape[1]}")
        s += f", bits={self.bits} ({self.scheme})" if self.quantized else ", bits=32"
        if self.conversion_error:
            s += f", conversion_error={self.conversion_error:.3g}"
        return s


# help() and inspect show the real signature (nn.Conv2d's order), not __init__'s (*args, **kwargs).
PatternConv2d.__init__.__signature__ = inspect.signature(PatternConv2d._build)


def _quantization(values: torch.Tensor, bits: Optional[int], scheme: str):
    """(int8 codes, 0-d scale, bits, scheme) to store ``values`` with, or (None, None, None, scheme) for
    float values: ``bits`` given quantizes; else codes only when ``values`` already sit on a grid."""
    if bits is not None:
        codes, q = quant.quantize_params(values, bits, scheme)
        # A 0 scale only comes from an all-zero layer; 1.0 decodes it the same and loads.
        return codes, quant.scale_tensor(q if q > 0 else 1.0, values.dtype, bits, scheme, codes), bits, scheme
    other = [s for s in _SCHEMES if s != scheme]
    grid = quant.detect_grid(values, (scheme, *other))
    if grid is None:
        return None, None, None, scheme
    return grid.codes.to(torch.int8), grid.scale, grid.bits, grid.scheme


def _conv2d_keywords(args: tuple, kwargs: dict) -> dict:
    """``kwargs`` plus the positional arguments after (in_channels, out_channels) by name: nn.Conv2d's
    order (kernel_size, stride, padding, dilation, groups, bias, padding_mode, device, dtype), or the
    old (stride, padding, dilation, bias, patterns, nnz, ...) with a DeprecationWarning where no
    nn.Conv2d call fits (a bool fourth is the old bias; a fifth that is not an int or bool is the old
    patterns; kernel_size given by name).
    Any other call is nn.Conv2d's: what a drop-in ``nn.Conv2d`` must accept (``PatternConv2d(8, 16, 3,
    padding=1)``; ``PatternConv2d(8, 16, 5)`` is a 5x5 kernel, refused)."""
    if not args:
        return kwargs
    # A third argument other than 3 reads as nn.Conv2d's kernel_size (and is refused: a drop-in
    # PatternConv2d(8, 16, 5) must not build a 3x3 conv with stride 5); the old order only where no
    # nn.Conv2d call fits.
    old = ("kernel_size" in kwargs or len(args) > len(_CONV2D_ORDER)
           or (len(args) > 3 and isinstance(args[3], bool)) or (len(args) > 4 and not isinstance(args[4], int)))
    order = _OLD_ORDER if old else _CONV2D_ORDER
    if len(args) > len(order):
        raise TypeError(f"PatternConv2d takes at most {2 + len(order)} positional arguments, got {2 + len(args)}")
    if old:
        _deprecation.warn("PatternConv2d(in_channels, out_channels, stride, padding, dilation, bias, ...) "
                          "(the old positional order)",
                          "nn.Conv2d's order PatternConv2d(in_channels, out_channels, kernel_size=3, stride=1, "
                          "padding=0, dilation=1, groups=1, bias=True, *, patterns=..., kept_kernels=..., ...) "
                          "or keywords", stacklevel=5)
    out = dict(kwargs)
    for name, value in zip(order, args):
        if name in out:
            raise TypeError(f"PatternConv2d got multiple values for argument '{name}'")
        out[name] = value
    return out
