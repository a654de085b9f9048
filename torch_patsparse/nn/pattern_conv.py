"""PatternConv2d: a drop-in ``nn.Conv2d`` (3x3, groups=1) that stores only the compressed weight."""
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from .. import bitpack
from .. import format as fmt
from .. import ops  # also registers torch.ops.patsparse
from ..patterns import PatternSet

_INDEX_DTYPES = {"patterns": torch.uint8, "filter_ptr": torch.int32, "kernel_channel": torch.int32,
                 "kernel_pattern": torch.uint8}
_SCHEMES = ("uniform", "pow2")


class PatternConv2d(nn.Module):
    """3x3 convolution with a pattern-compressed weight (see DESIGN.md, "Compressed format").

    Every kept kernel keeps ``E`` (usually 4) weights in one of ``K`` shapes of the layer's pattern
    set; dropped kernels (connectivity pruning) cost nothing. ``state_dict`` holds only the
    compressed tensors: ``patterns``, ``filter_ptr``, ``kernel_channel``, ``kernel_pattern`` and
    either ``values`` (float, trainable) or, for quantized layers, int8 ``codes`` + ``scale``
    (``bits`` and ``scheme`` are kept in the module's metadata). Build one with :meth:`from_dense`.
    """

    __constants__ = ["in_channels", "out_channels", "quantized"]
    __jit_unused_properties__ = ["nnz"]

    def __init__(self, in_channels: int, out_channels: int, stride=1, padding=0, dilation=1, bias: bool = True,
                 patterns: Optional[torch.Tensor] = None, nnz: int = 0, bits: Optional[int] = None,
                 scheme: str = "uniform", device=None, dtype=None):
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        if bits is not None and not (isinstance(bits, int) and 1 <= bits <= 8):
            raise ValueError(f"bits must be an int in 1..8 or None, got {bits!r}")
        if scheme not in _SCHEMES:
            raise ValueError(f"scheme must be one of {_SCHEMES}, got {scheme!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = (3, 3)
        self.groups = 1
        self.padding_mode = "zeros"
        self.stride, self.padding, self.dilation = ops.pair(stride), ops.pair(padding), ops.pair(dilation)
        self.quantized = bits is not None
        self.bits = bits
        self.scheme = scheme
        if patterns is None:
            patterns = PatternSet.candidates().to_tensor()[:8]
        patterns = torch.as_tensor(patterns).to(device=device, dtype=torch.uint8)
        entries = patterns.shape[1]
        self.register_buffer("patterns", patterns.clone())
        self.register_buffer("filter_ptr", torch.zeros(out_channels + 1, dtype=torch.int32, device=device))
        self.register_buffer("kernel_channel", torch.zeros(nnz, dtype=torch.int32, device=device))
        self.register_buffer("kernel_pattern", torch.zeros(nnz, dtype=torch.uint8, device=device))
        factory = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        if self.quantized:
            self.register_buffer("codes", torch.zeros(nnz, entries, dtype=torch.int8, device=device))
            self.register_buffer("scale", torch.ones((), **factory))
            # Dequantized once (on build / load), not per call: the kernels cache their plan on it.
            self.register_buffer("values", torch.zeros(nnz, entries, **factory), persistent=False)
        else:
            self.values = nn.Parameter(torch.zeros(nnz, entries, **factory))
        self.bias = nn.Parameter(torch.zeros(out_channels, **factory)) if bias else None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dense(cls, conv: nn.Conv2d, pattern_set: Optional[PatternSet] = None, bits: Optional[int] = None,
                   scheme: str = "uniform") -> "PatternConv2d":
        """Compresses ``conv`` (3x3, groups=1, zero padding).

        ``pattern_set``: the shapes to use; ``None`` selects 8 from the weight itself. The weight is
        projected onto the set unless every kernel already fits it; all-zero kernels are dropped.
        ``bits``: quantize the kept weights to that many bits (``scheme`` uniform or pow2) and store
        int8 codes + a scale. ``None`` stores codes anyway when the weights already sit exactly on
        the levels of some bit width (e.g. after ADMM quantization), else fp32 values.
        """
        from .. import project
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"expected an nn.Conv2d, got {type(conv).__name__}")
        if tuple(conv.kernel_size) != (3, 3) or conv.groups != 1 or conv.padding_mode != "zeros":
            raise ValueError("PatternConv2d takes 3x3 convolutions with groups=1 and zero padding; got "
                             f"kernel_size={conv.kernel_size}, groups={conv.groups}, padding_mode={conv.padding_mode}")
        if isinstance(conv.padding, str):
            raise ValueError(f"string padding ({conv.padding!r}) is not supported; use explicit padding")
        w = conv.weight.detach()
        if not torch.isfinite(w).all():
            raise ValueError("conv weight has NaN or inf entries")
        if pattern_set is None:
            pattern_set = PatternSet.select(w, k=8)
        patterns = pattern_set.to_tensor()
        try:
            arrays = fmt.compress(w, patterns)
        except ValueError:  # some kernel fits no pattern: project onto the set
            arrays = fmt.compress(project.pattern(w, pattern_set), patterns)
        values = arrays["values"]
        codes, scale, bits, scheme = _quantization(values, bits, scheme)
        nnz = values.shape[0]
        mod = cls(conv.in_channels, conv.out_channels, conv.stride, conv.padding, conv.dilation,
                  conv.bias is not None, patterns, nnz, bits, scheme, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            for name in ("filter_ptr", "kernel_channel", "kernel_pattern"):
                getattr(mod, name).copy_(arrays[name])
            if mod.quantized:
                mod.codes.copy_(codes)
                mod.scale.fill_(float(scale))
                mod._refresh_values()
            else:
                mod.values.copy_(values)
            if conv.bias is not None:
                mod.bias.copy_(conv.bias.detach())
        return mod

    def to_dense(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` with the same function (exact: same weights, zeros elsewhere)."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, 3, self.stride, self.padding, self.dilation,
                         bias=self.bias is not None, device=self.values.device, dtype=self.values.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.dense_weight())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    @torch.jit.unused
    def dense_weight(self) -> torch.Tensor:
        """The dense [Cout, Cin, 3, 3] weight this layer computes with."""
        return fmt.decompress(self.patterns, self.filter_ptr, self.kernel_channel, self.kernel_pattern,
                              self.values.detach(), self.in_channels)

    @torch.jit.unused
    def pattern_set(self) -> PatternSet:
        return PatternSet.from_tensor(self.patterns.cpu())

    # ------------------------------------------------------------------ forward
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return torch.ops.patsparse.pattern_conv2d(input, self.patterns, self.filter_ptr, self.kernel_channel,
                                                  self.kernel_pattern, self.values, self.bias, self.stride,
                                                  self.padding, self.dilation)

    # ------------------------------------------------------------------ report protocol
    @property
    def nnz(self) -> int:
        """Number of kept 3x3 kernels."""
        return int(self.kernel_channel.numel())

    @torch.jit.unused
    def storage_bits(self) -> Dict[str, int]:
        """Bits of every array the state_dict stores, at the width it is stored with (see
        ``_save_to_state_dict``): index arrays at their dtype's width (``kernel_channel`` as int16
        when ``in_channels`` <= 32768), values at 32 bits or, when quantized, codes bit-packed at
        ``bits`` each (2 for 1-bit layers: a kept position may hold 0) plus a 32-bit scale."""
        out = {name: getattr(self, name).numel() * getattr(self, name).element_size() * 8
               for name in ("patterns", "filter_ptr", "kernel_pattern")}
        out["kernel_channel"] = self.kernel_channel.numel() * _channel_dtype(self.in_channels).itemsize * 8
        if self.quantized:
            out["codes"] = bitpack.packed_bytes(self.codes.numel(), _code_width(self.bits)) * 8
            out["scale"] = 32
        else:
            out["values"] = self.values.numel() * 32
        if self.bias is not None:
            out["bias"] = self.bias.numel() * 32
        return out

    @torch.jit.unused
    def dense_bits(self) -> int:
        return 32 * (self.out_channels * self.in_channels * 9 + (self.out_channels if self.bias is not None else 0))

    @torch.jit.unused
    def macs(self, output_hw: Tuple[int, int]) -> Tuple[int, int]:
        """(dense, kept) multiply-accumulates for one image with this output size."""
        pixels = int(output_hw[0]) * int(output_hw[1])
        return (self.out_channels * self.in_channels * 9 * pixels, int(self.values.numel()) * pixels)

    def extra_repr(self) -> str:
        total = self.out_channels * self.in_channels
        kept = self.nnz
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size=(3, 3), stride={tuple(self.stride)}, "
             f"padding={tuple(self.padding)}")
        if self.dilation != [1, 1]:
            s += f", dilation={tuple(self.dilation)}"
        if self.bias is None:
            s += ", bias=False"
        s += (f", kernels={kept}/{total} ({100.0 * kept / max(total, 1):.1f}%), patterns={self.patterns.shape[0]}"
              f"x{self.patterns.shape[1]}")
        s += f", bits={self.bits} ({self.scheme})" if self.quantized else ", bits=32"
        return s

    # ------------------------------------------------------------------ state_dict
    def _refresh_values(self) -> None:
        from .. import project
        with torch.no_grad():
            deq = project.dequantize(self.codes, self.scale, self.scheme)
            self.values.resize_(self.codes.shape).copy_(deq.to(self.values.dtype))

    def get_extra_state(self):
        return {"bits": self.bits, "scheme": self.scheme}

    def set_extra_state(self, state) -> None:
        bits, scheme = state.get("bits"), state.get("scheme", "uniform")
        if bits is not None and not (isinstance(bits, int) and 1 <= bits <= 8):
            raise ValueError(f"PatternConv2d state has bits={bits!r}; expected None or 1..8")
        if scheme not in _SCHEMES:
            raise ValueError(f"PatternConv2d state has scheme={scheme!r}; expected one of {_SCHEMES}")
        if (bits is not None) != self.quantized:
            raise ValueError(f"state_dict is {'quantized' if bits is not None else 'not quantized'} but this "
                             f"PatternConv2d is {'quantized' if self.quantized else 'not quantized'}; build the "
                             "module with the matching `bits` before loading")
        self.bits, self.scheme = bits, scheme

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # Store the narrow forms the report counts: int16 channel indices, bit-packed codes.
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "kernel_channel"] = self.kernel_channel.detach().to(_channel_dtype(self.in_channels))
        if self.quantized:
            width = _code_width(self.bits)
            offset = (1 << (width - 1)) - 1
            destination[prefix + "codes"] = bitpack.pack(self.codes.detach().reshape(-1).long() + offset, width)

    def _unpack_incoming(self, state_dict, prefix) -> None:
        """Undo ``_save_to_state_dict``'s narrow forms (older/wider forms load as they are)."""
        kc = state_dict.get(prefix + "kernel_channel")
        if isinstance(kc, torch.Tensor) and kc.dtype == torch.int16:
            state_dict[prefix + "kernel_channel"] = kc.to(torch.int32)
        codes = state_dict.get(prefix + "codes")
        if self.quantized and isinstance(codes, torch.Tensor) and codes.dtype == torch.uint8:
            extra = state_dict.get(prefix + "_extra_state", {})
            bits = extra.get("bits", self.bits) if isinstance(extra, dict) else self.bits
            if not (isinstance(bits, int) and 1 <= bits <= 8):
                raise ValueError(f"{prefix}_extra_state: bits={bits!r}; expected 1..8")
            kc, pats = state_dict.get(prefix + "kernel_channel"), state_dict.get(prefix + "patterns")
            if not isinstance(kc, torch.Tensor) or not isinstance(pats, torch.Tensor) or pats.dim() != 2:
                raise ValueError(f"{prefix}: packed codes need kernel_channel and a [K, E] patterns tensor")
            nnz, entries = kc.numel(), pats.shape[1]
            width = _code_width(bits)
            values = bitpack.unpack(codes.reshape(-1), nnz * entries, width) - ((1 << (width - 1)) - 1)
            state_dict[prefix + "codes"] = values.to(torch.int8).view(nnz, entries)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        try:
            self._unpack_incoming(state_dict, prefix)
        except ValueError as e:
            error_msgs.append(f"{prefix}: invalid compressed weight: {e}")
            return
        # The number of kept kernels (and K) may differ from this module's: resize to the incoming
        # arrays, then check them completely before any kernel can read through an index.
        incoming = {}
        for name in ("patterns", "filter_ptr", "kernel_channel", "kernel_pattern", "codes", "values"):
            t = state_dict.get(prefix + name)
            if isinstance(t, torch.Tensor):
                incoming[name] = t
        for name, t in incoming.items():
            expected = _INDEX_DTYPES.get(name, torch.int8 if name == "codes" else None)
            if expected is not None and t.dtype != expected:
                error_msgs.append(f"{prefix}{name}: expected dtype {expected}, got {t.dtype}")
                return
            if name == "values" and self.quantized:
                continue
            if hasattr(self, name):
                getattr(self, name).data = torch.empty_like(t, device=getattr(self, name).device,
                                                            dtype=getattr(self, name).dtype)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if error_msgs:
            return
        try:
            if self.quantized:
                self.values.data = torch.empty(self.codes.shape, dtype=self.values.dtype, device=self.values.device)
                self._refresh_values()
            fmt.validate({n: getattr(self, n) for n in fmt.ARRAY_NAMES}, self.in_channels, self.out_channels)
            if self.quantized:
                limit = (1 << (self.bits - 1)) - 1 if self.bits > 1 else 1
                if self.scheme == "uniform" and self.codes.numel() and int(self.codes.abs().max()) > limit:
                    raise ValueError(f"codes exceed the {self.bits}-bit range (|code| <= {limit})")
        except ValueError as e:
            error_msgs.append(f"{prefix}: invalid compressed weight: {e}")


def _channel_dtype(in_channels: int) -> torch.dtype:
    """Stored dtype of kernel_channel: int16 while every channel index fits."""
    return torch.int16 if in_channels <= 32768 else torch.int32


def _code_width(bits: int) -> int:
    """Stored bits per code: b-bit codes span 2^b - 1 values (1-bit codes: -1, 0, +1 -> 2 bits)."""
    return max(int(bits), 2)


def _quantization(values: torch.Tensor, bits: Optional[int], scheme: str):
    """(codes, scale, bits, scheme) to store ``values`` with, or (None, None, None, scheme) for fp32."""
    from .. import project
    if bits is not None:
        codes, scale = project.quantize_params(values, bits, scheme)
        return codes, scale, bits, scheme
    if values.numel() == 0:
        return None, None, None, scheme
    # Already on quantization levels (e.g. after ADMM hard pruning)? Then store codes, losslessly.
    # Cheap test first: b bits give at most 2^(b-1)-1 distinct magnitudes (1 for b=1).
    distinct = int(torch.unique(values.abs()[values != 0]).numel())
    if distinct > 127:
        return None, None, None, scheme
    for s in _SCHEMES:
        for b in range(1, 9):
            if distinct > max(1, (1 << (b - 1)) - 1):
                continue
            codes, scale = project.quantize_params(values, b, s)
            if torch.equal(project.dequantize(codes, scale, s).to(values.dtype), values):
                return codes, scale, b, s
    return None, None, None, scheme
