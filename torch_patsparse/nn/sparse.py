"""Sparse + k-bit compressed storage for the layers PatternConv2d does not take: ``SparseLinear`` and
``SparseConv2d`` (any kernel size, groups, stride, padding, dilation).

Stored form of one weight (all in the ``state_dict``, no dense weight anywhere):

- ``header`` uint8: bit-packed fields ``kind`` (1 bit: 0 relative indices, 1 bitmap), ``index
  width - 1`` (4 bits), ``scheme`` (2 bits: 0 fp32 values, 1 uniform, 2 pow2), ``bits`` (4 bits),
  ``nnz`` and ``nsym`` (``L`` bits each, ``L = numel(weight).bit_length()``). The weight's shape is
  the module's configuration (architecture), not stored data.
- ``index`` uint8: positions of the kept weights in the row-major flattened weight, either
  * a bitmap (1 bit per weight), or
  * relative indices: one ``w``-bit symbol per kept weight holding the gap (number of zeros) since
    the previous kept weight; a gap of ``E = 2**w - 1`` or more first emits escape symbols ``E``
    ("skip E positions, no value"), as Deep Compression's zero-padding entries but without a
    stored zero value. ``w`` in 1..16 is chosen per layer to minimise the size, and the smaller of
    bitmap / relative is kept (``index_kind``).
- ``codes`` uint8: when quantized, one code per kept weight, bit-packed. Kept weights are nonzero,
  so the code only has to name one of the ``2m`` nonzero levels (``m = 2**(bits-1) - 1`` levels a
  side; m = 1 for bits = 1 and 2): ``ceil(log2(2m))`` bits, i.e. 1 bit for binary / ternary weights. Level ``c`` in
  ``{-m..-1, 1..m}`` decodes to ``c * scale`` (uniform) or ``sign(c) * scale * 2**-(|c|-1)`` (pow2).
- ``scale`` fp32 [1] (quantized) or ``values`` fp32 [nnz] (not quantized).
- ``bias`` fp32 parameter (kept dense).

- ``_extra_state``: ``{"weight_shape": [...]}``, so a checkpoint of another shape is a size mismatch
  (checkpoints without it still load).

Execution: ``SparseLinear`` and 1x1 ``SparseConv2d`` (no padding, groups 1, any stride) run the
native sparse ops ``torch.ops.patsparse.sparse_linear`` / ``sparse_conv1x1`` on the stored arrays
themselves (CPU; the op finds its runtime CSR index by the arrays' content in a native cache, reads
fp32 ``values`` at call time and decodes quantized codes once), so no dense weight is kept.
``forward_fused`` exposes their epilogue (per-channel scale / shift, residual, clamp) for
``optimize_for_inference``. Other convolutions, and other devices, decode the dense weight (cached
in the non-persistent ``_weight_cache`` buffer) and call ``F.conv2d`` / ``F.linear``.

``load_state_dict`` validates every array (lengths, widths, padding bits, index range, code range,
a finite positive scale) before it assigns anything and rejects a bad one with torch's
``RuntimeError``; decoding never reads out of bounds. Levels, code widths and the quantizer are
:mod:`torch_patsparse.quant`'s.
"""
import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import bitpack
from .. import ops
from .. import quant
from .kinds import layer_kind
from ._load import apply_or_restore, check_bias, load_error, size_mismatch

__all__ = ["SparseLinear", "SparseConv2d", "compress_module"]

_BUFFERS = ("header", "index", "codes", "values", "scale")
_SCHEMES = {"float": 0, "uniform": 1, "pow2": 2}
_SCHEME_NAMES = {v: k for k, v in _SCHEMES.items()}
BITMAP, RELATIVE = 1, 0
_INF = float("inf")


# --------------------------------------------------------------------------------------------
# index coding
# --------------------------------------------------------------------------------------------
def _relative_symbol_count(gaps: torch.Tensor, width: int) -> int:
    esc = (1 << width) - 1
    return int(gaps.numel() + (gaps // esc).sum())


def _encode_relative(gaps: torch.Tensor, width: int) -> torch.Tensor:
    esc = (1 << width) - 1
    counts = gaps // esc + 1
    sym = torch.full((int(counts.sum()),), esc, dtype=torch.int64)
    sym[torch.cumsum(counts, 0) - 1] = gaps % esc
    return sym


def _decode_relative(sym: torch.Tensor, width: int, nnz: int, numel: int) -> torch.Tensor:
    esc = (1 << width) - 1
    is_val = sym != esc
    if int(is_val.sum()) != nnz:
        raise ValueError(f"relative index holds {int(is_val.sum())} entries, header says nnz={nnz}")
    if sym.numel() and not bool(is_val[-1]):
        raise ValueError("relative index ends with a padding (escape) entry")
    pos = torch.cumsum(torch.where(is_val, sym + 1, torch.full_like(sym, esc)), 0) - 1
    if sym.numel() and int(pos[-1]) >= numel:
        raise ValueError(f"relative index points past the end of the weight ({int(pos[-1])} >= {numel})")
    return pos[is_val]


def _choose_index(positions: torch.Tensor, numel: int) -> Tuple[int, int, torch.Tensor, int]:
    """Smallest index encoding for sorted flat ``positions``: (kind, width, packed, nsym)."""
    best = (bitpack.packed_bytes(numel, 1), BITMAP, 1)
    if positions.numel():
        gaps = torch.diff(positions, prepend=positions.new_tensor([-1])) - 1
        for w in range(1, bitpack.MAX_WIDTH + 1):
            size = bitpack.packed_bytes(_relative_symbol_count(gaps, w), w)
            if size < best[0]:
                best = (size, RELATIVE, w)
    else:
        best = (0, RELATIVE, 1)
    _, kind, w = best
    if kind == BITMAP:
        bits = torch.zeros(numel, dtype=torch.int64)
        bits[positions] = 1
        return kind, 1, bitpack.pack(bits, 1), 0
    sym = _encode_relative(gaps, w) if positions.numel() else positions.new_zeros(0)
    return kind, w, bitpack.pack(sym, w), int(sym.numel())


# --------------------------------------------------------------------------------------------
# value coding (levels, widths, quantizer and grid detection: torch_patsparse.quant)
# --------------------------------------------------------------------------------------------
def _dequant(c: torch.Tensor, scale: torch.Tensor, scheme: int) -> torch.Tensor:
    return quant.dequantize(c, scale, _SCHEME_NAMES[scheme], dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# decode / validate (one code path for forward, to_dense and load_state_dict)
# --------------------------------------------------------------------------------------------
def _header_widths(numel: int):
    L = max(1, int(numel).bit_length())
    return (1, 4, 2, 4, L, L)


def _decode(arrays: Dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    numel = int(math.prod(shape))
    for k in _BUFFERS:
        if k not in arrays:
            raise ValueError(f"missing compressed array '{k}'")
    header, index, codes, values, scale = (arrays[k] for k in _BUFFERS)
    for k in ("header", "index", "codes"):
        if arrays[k].dtype != torch.uint8 or arrays[k].dim() != 1:
            raise ValueError(f"'{k}' must be a 1-D uint8 tensor, got {arrays[k].dtype} {tuple(arrays[k].shape)}")
    for k in ("values", "scale"):
        if not arrays[k].is_floating_point() or arrays[k].dim() != 1:
            raise ValueError(f"'{k}' must be a 1-D float tensor, got {arrays[k].dtype} {tuple(arrays[k].shape)}")
    kind, wm1, scheme, bits, nnz, nsym = bitpack.unpack_fields(header.cpu(), _header_widths(numel))
    width = wm1 + 1
    if scheme not in _SCHEME_NAMES:
        raise ValueError(f"unknown value scheme {scheme}")
    if nnz > numel:
        raise ValueError(f"nnz={nnz} exceeds the weight's {numel} entries")
    dev = index.device
    index = index.cpu()
    if kind == BITMAP:
        if width != 1 or nsym != 0:
            raise ValueError("bitmap index must have width 1 and no symbols")
        pos = torch.nonzero(bitpack.unpack(index, numel, 1)).view(-1)
        if pos.numel() != nnz:
            raise ValueError(f"bitmap has {pos.numel()} set bits, header says nnz={nnz}")
    else:
        if nsym > numel:
            raise ValueError(f"relative index has {nsym} symbols for a weight of {numel} entries")
        pos = _decode_relative(bitpack.unpack(index, nsym, width), width, nnz, numel)
    if scheme == _SCHEMES["float"]:
        if bits != 0 or codes.numel() or scale.numel():
            raise ValueError("an unquantized weight stores no codes and no scale (bits must be 0)")
        if values.numel() != nnz:
            raise ValueError(f"'values' has {values.numel()} entries, expected nnz={nnz}")
        vals = values.cpu().float()
    else:
        if not 1 <= bits <= 8:
            raise ValueError(f"code bits must be in 1..8, got {bits}")
        if values.numel():
            raise ValueError("a quantized weight stores no fp32 'values'")
        scale = scale.float()
        if scale.numel() != 1 or not bool(torch.isfinite(scale).all()) or float(scale) <= 0:
            raise ValueError("'scale' must hold one finite positive fp32 number")
        m = quant.levels(bits)
        s = bitpack.unpack(codes.cpu(), nnz, quant.nonzero_code_width(bits))
        if nnz and int(s.max()) >= 2 * m:
            raise ValueError(f"code {int(s.max())} out of range for {bits}-bit levels")
        c = torch.where(s < m, s - m, s - m + 1)
        vals = _dequant(c, scale.cpu(), scheme)
        if not bool(torch.isfinite(vals).all()):
            raise ValueError(f"'scale' {float(scale)} times the {bits}-bit levels overflows float32")
    w = torch.zeros(numel, dtype=torch.float32)
    w[pos] = vals
    return w.view(shape).to(dev)


# --------------------------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------------------------
class _SparseWeightMixin:
    """Holds one compressed weight as buffers; subclasses define ``weight_shape`` (a tuple),
    ``_native`` (True when the native sparse op computes the layer) and ``forward``. Layers that are
    not native keep the decoded weight in the non-persistent ``_weight_cache`` buffer (rebuilt on
    build and load, never saved), so their ``forward`` is plain torch code that TorchScript
    compiles; native layers keep it empty (size 0)."""

    __jit_unused_properties__ = ["nnz", "bits", "scheme", "index_kind", "weight"]

    def _init_storage(self, bias: bool) -> None:
        self.conversion_error = 0.0
        for k in _BUFFERS:
            self.register_buffer(k, torch.zeros(0, dtype=torch.float32 if k in ("values", "scale") else torch.uint8))
        self.register_buffer("_weight_cache", torch.zeros(0), persistent=False)
        self.register_parameter("bias", nn.Parameter(torch.zeros(self.weight_shape[0])) if bias else None)
        self._set_weight(torch.zeros(self.weight_shape), None, "uniform")

    # -- building ---------------------------------------------------------------------------
    def _set_weight(self, weight: torch.Tensor, bits: Optional[int], scheme: str) -> None:
        if scheme not in quant.SCHEMES:
            raise ValueError(f"scheme must be 'uniform' or 'pow2', got {scheme!r}")
        if tuple(weight.shape) != tuple(self.weight_shape):
            raise ValueError(f"weight has shape {tuple(weight.shape)}, expected {tuple(self.weight_shape)}")
        w = weight.detach().to("cpu", torch.float32).reshape(-1)
        if not bool(torch.isfinite(w).all()):
            raise ValueError("weight has NaN or inf entries")
        numel = w.numel()
        if bits is not None:
            quant.check(bits, scheme)
            codes, q = quant.quantize_params(w, int(bits), scheme)
            # The fp32 scale decodes the codes to exactly quant.quantize's values.
            pos = torch.nonzero(codes.view(-1)).view(-1)
            grid = (codes.view(-1)[pos].long(), torch.tensor([q], dtype=torch.float32), int(bits)) if pos.numel() else None
        else:
            pos = torch.nonzero(w).view(-1)
            g = quant.detect_grid(w[pos], (scheme,))
            grid = None if g is None else (g.codes, g.scale.reshape(1).float(), g.bits)
        kind, width, index, nsym = _choose_index(pos, numel)
        if grid is None:
            sid, qbits = 0, 0
            values = w[pos].clone()
            codes, scale = torch.zeros(0, dtype=torch.uint8), torch.zeros(0)
        else:
            c, scale, qbits = grid
            sid = _SCHEMES[scheme]
            m = quant.levels(qbits)
            sym = torch.where(c < 0, c + m, c + m - 1)
            codes, values = bitpack.pack(sym, quant.nonzero_code_width(qbits)), torch.zeros(0)
        header = bitpack.pack_fields([kind, width - 1, sid, qbits, pos.numel(), nsym], _header_widths(numel))
        dev = self.header.device
        for k, t in zip(_BUFFERS, (header, index, codes, values, scale)):
            setattr(self, k, t.to(dev))
        self._refresh_cache()
        stored = self.dense_weight().reshape(-1).double().cpu()
        diff, norm = float((stored - w.double()).norm()), float(w.double().norm())
        # ||W_stored - W|| / ||W||: 0.0 unless `bits` quantized (the only lossy step here).
        self.conversion_error = 0.0 if diff == 0 else (diff / norm if norm > 0 else float("inf"))

    def _copy_bias(self, bias: Optional[torch.Tensor]) -> None:
        if self.bias is not None:
            with torch.no_grad():
                self.bias.copy_(bias.detach().to(torch.float32))

    # -- reading ----------------------------------------------------------------------------
    def _fields(self):
        return bitpack.unpack_fields(self.header.cpu(), _header_widths(int(math.prod(self.weight_shape))))

    @property
    def nnz(self) -> int:
        return self._fields()[4]

    @property
    def bits(self) -> Optional[int]:
        """Quantization bits (None when values are stored as fp32)."""
        return self._fields()[3] or None

    @property
    def scheme(self) -> str:
        return _SCHEME_NAMES[self._fields()[2]]

    @property
    def index_kind(self) -> str:
        f = self._fields()
        return "bitmap" if f[0] == BITMAP else f"relative{f[1] + 1}"

    def _fill_dense(self, module: nn.Module) -> nn.Module:
        """``module`` (a fresh dense layer of this shape) with the decoded weight and the bias."""
        with torch.no_grad():
            module.weight.copy_(self.dense_weight())
            if self.bias is not None:
                module.bias.copy_(self.bias)
        return module

    def _weight_bias_as(self, x: torch.Tensor):
        """The decoded weight and the bias in ``x``'s dtype (the dense path's operands); a native
        layer run on another device than the CPU caches its decoded weight here."""
        if self._weight_cache.numel() == 0:
            self._weight_cache = self._decoded_weight()
        b = self.bias
        return self._weight_cache.to(x.dtype), (None if b is None else b.to(x.dtype))

    @torch.jit.unused
    def _decoded_weight(self) -> torch.Tensor:
        return _decode({k: getattr(self, k) for k in _BUFFERS}, self.weight_shape)

    def _refresh_cache(self) -> None:
        """Decodes the weight into ``_weight_cache`` for the dense path; empties it for native layers."""
        dev = self.header.device
        self._weight_cache = torch.zeros(0, device=dev) if self._native else self._decoded_weight()

    @torch.jit.unused
    def dense_weight(self) -> torch.Tensor:
        """The decoded dense fp32 weight (decoded on each call for native layers: they keep none)."""
        if self._weight_cache.numel() == 0 and int(math.prod(self.weight_shape)) > 0:
            return self._decoded_weight()
        return self._weight_cache.view(self.weight_shape)

    def _native_args(self, x: torch.Tensor, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
                     residual: Optional[torch.Tensor]):
        """Operands of the native op in its compute dtype (fp64 for fp64 input, else fp32): the
        input, the stored fp32 arrays, the epilogue tensors."""
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        if scale is not None:
            scale = scale.to(compute)
        if shift is not None:
            shift = shift.to(compute)
        if residual is not None:
            residual = residual.to(compute)
        return (x.to(compute), self.values.float(), self.scale.float(), scale, shift, residual)

    @property
    def weight(self) -> torch.Tensor:
        return self.dense_weight()

    # -- report protocol ----------------------------------------------------------------------
    def storage_bits(self) -> Dict[str, int]:
        """Bits of every stored array at its stored width (packed arrays: whole bytes)."""
        out = {k: getattr(self, k).numel() * getattr(self, k).element_size() * 8 for k in _BUFFERS}
        out["bias"] = 0 if self.bias is None else self.bias.numel() * 32
        return out

    def dense_bits(self) -> int:
        return 32 * (int(math.prod(self.weight_shape)) + (0 if self.bias is None else self.bias.numel()))

    # -- state dict ---------------------------------------------------------------------------
    def get_extra_state(self):
        # The weight's shape is architecture, not data; saving it lets a load into a layer of another
        # shape fail with a size mismatch instead of decoding into the wrong positions.
        return {"weight_shape": list(self.weight_shape)}

    def set_extra_state(self, state) -> None:
        err = self._extra_state_error(state, "")
        if err:
            raise ValueError(err)

    def _extra_state_error(self, state, prefix: str) -> Optional[str]:
        if not isinstance(state, dict) or set(state) - {"weight_shape"}:
            return load_error(prefix, f"_extra_state must be a dict with key 'weight_shape', got {state!r}"[:300])
        shape = state.get("weight_shape", list(self.weight_shape))
        if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) for d in shape):
            return load_error(prefix, f"_extra_state['weight_shape'] must be a list of ints, got {shape!r}"[:300])
        if tuple(shape) != tuple(self.weight_shape):
            return size_mismatch(prefix, "weight", shape, self.weight_shape)
        return None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Validate everything first, assign only then: a rejected load leaves the module as it was.
        extra_key = prefix + "_extra_state"
        incoming = {k: state_dict[prefix + k] for k in _BUFFERS if prefix + k in state_dict}
        errors = []
        if extra_key in state_dict:
            errors.append(self._extra_state_error(state_dict[extra_key], prefix))
        elif incoming:  # checkpoints written before the shape was saved
            state_dict[extra_key] = self.get_extra_state()
        errors.append(check_bias(self, state_dict, prefix, self.weight_shape[0]))
        if not any(errors):
            try:
                if len(incoming) == len(_BUFFERS):
                    for k, t in incoming.items():
                        if not isinstance(t, torch.Tensor):
                            raise ValueError(f"'{k}' must be a tensor, got {type(t).__name__}")
                    _decode(incoming, self.weight_shape)
                elif incoming:
                    raise ValueError(f"incomplete: the state_dict has {sorted(incoming)}, a weight needs "
                                     f"{list(_BUFFERS)}")
            except ValueError as e:
                errors.append(load_error(prefix, str(e)))
        errors = [e for e in errors if e]
        if errors:
            error_msgs.extend(errors)
            return

        def apply():
            if len(incoming) == len(_BUFFERS):
                for k, t in incoming.items():
                    setattr(self, k, torch.empty_like(t, device=getattr(self, k).device))
            super(_SparseWeightMixin, self)._load_from_state_dict(
                state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
            self._refresh_cache()

        apply_or_restore(self, (), apply, error_msgs)

    def _storage_repr(self) -> str:
        bits = self.bits
        s = (f"nnz={self.nnz}/{int(math.prod(self.weight_shape))}, "
             f"values={'fp32' if bits is None else f'{bits}-bit {self.scheme}'}, index={self.index_kind}")
        return s + (f", conversion_error={self.conversion_error:.3g}" if self.conversion_error else "")


class SparseLinear(_SparseWeightMixin, nn.Module):
    """``nn.Linear`` whose weight is stored sparse (+ k-bit). Build with :meth:`from_dense`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight_shape = (self.out_features, self.in_features)
        self._native = True
        self._init_storage(bias)

    @classmethod
    def from_dense(cls, module: nn.Linear, bits: Optional[int] = None, scheme: str = "uniform") -> "SparseLinear":
        """From a pruned (zeros = pruned) Linear. ``bits``: quantize to k bits (``project.quantize``);
        None: store exact levels if the nonzeros already sit on a ``scheme`` grid, else fp32 values."""
        m = cls(module.in_features, module.out_features, module.bias is not None)
        m._set_weight(module.weight, bits, scheme)
        m._copy_bias(module.bias)
        return m.to(module.weight.device)

    def to_dense(self) -> nn.Linear:
        return self._fill_dense(nn.Linear(self.in_features, self.out_features, self.bias is not None,
                                          device=self.header.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return F.linear(x, *self._weight_bias_as(x))
        return self.forward_fused(x, None, self.bias, None, -float("inf"), float("inf"))

    def forward_fused(self, x: torch.Tensor, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
                      residual: Optional[torch.Tensor], lo: float = -_INF, hi: float = _INF) -> torch.Tensor:
        """``clamp(x @ W.T * scale + shift + residual, lo, hi)`` in one native op (CPU): ``scale`` /
        ``shift`` [out_features] or None (``forward`` passes the bias as ``shift``; this method does
        not add the bias itself), ``residual`` of the output's shape or None. Inputs and errors are
        ``F.linear``'s; fp16 / bf16 are computed in fp32 and returned in their dtype."""
        if x.dim() == 0 or x.size(-1) != self.in_features:
            rows = 1 if x.dim() < 2 else x.numel() // max(x.size(-1), 1)
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (" + str(rows) + "x"
                               + str(x.size(-1) if x.dim() else 1) + " and " + str(self.in_features) + "x"
                               + str(self.out_features) + ")")
        if not x.is_floating_point():
            raise RuntimeError("SparseLinear expects a floating-point input, got " + str(x.dtype))
        a = self._native_args(x, scale, shift, residual)
        out = torch.ops.patsparse.sparse_linear(a[0], self.header, self.index, self.codes, a[1], a[2],
                                                self.out_features, a[3], a[4], a[5], lo, hi)
        return out if out.dtype == x.dtype else out.to(x.dtype)

    def macs(self, output_hw=None) -> Tuple[int, int]:
        """(dense, kept) multiply-accumulates per sample (``output_hw`` unused)."""
        return self.in_features * self.out_features, self.nnz

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                + self._storage_repr())


def _pair(v) -> tuple:
    return tuple(ops.pair(v))


class SparseConv2d(_SparseWeightMixin, nn.Module):
    """``nn.Conv2d`` (any kernel size / stride / padding / dilation / groups, zero padding) whose
    weight is stored sparse (+ k-bit). Build with :meth:`from_dense`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError("in_channels and out_channels must be divisible by groups")
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.weight_shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        # 1x1, groups 1, no padding ("same" / "valid" pad nothing at 1x1), any stride: the native op
        self._native = (self.kernel_size == (1, 1) and self.groups == 1
                        and (isinstance(padding, str) or self.padding == (0, 0)))
        self._init_storage(bias)

    @classmethod
    def from_dense(cls, module: nn.Conv2d, bits: Optional[int] = None, scheme: str = "uniform") -> "SparseConv2d":
        """From a pruned (zeros = pruned) Conv2d; ``bits`` / ``scheme`` as in SparseLinear.from_dense."""
        if module.padding_mode != "zeros":
            raise ValueError(f"only padding_mode='zeros' is supported, got {module.padding_mode!r}")
        m = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                module.dilation, module.groups, module.bias is not None)
        m._set_weight(module.weight, bits, scheme)
        m._copy_bias(module.bias)
        return m.to(module.weight.device)

    def to_dense(self) -> nn.Conv2d:
        return self._fill_dense(nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                                          self.padding, self.dilation, self.groups, self.bias is not None,
                                          device=self.header.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._native or x.device.type != "cpu":
            return F.conv2d(x, *self._weight_bias_as(x), self.stride, self.padding, self.dilation, self.groups)
        return self.forward_fused(x, None, self.bias, None, -float("inf"), float("inf"))

    def forward_fused(self, x: torch.Tensor, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
                      residual: Optional[torch.Tensor], lo: float = -_INF, hi: float = _INF) -> torch.Tensor:
        """``clamp(conv(x) * scale[c] + shift[c] + residual, lo, hi)`` in one native op (CPU; 1x1
        layers without padding and groups, the ones ``forward`` runs natively): ``scale`` / ``shift``
        [out_channels] or None (``forward`` passes the bias as ``shift``; this method does not add
        the bias itself), ``residual`` of the output's shape or None. Inputs and errors are
        ``nn.Conv2d``'s (batched or unbatched; fp16 / bf16 computed in fp32, returned in their dtype)."""
        if not self._native:
            raise RuntimeError("SparseConv2d.forward_fused needs a 1x1 convolution without padding and groups")
        if x.dim() != 4 and x.dim() != 3:
            raise RuntimeError("Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: "
                               + str(list(x.shape)))
        xb = x if x.dim() == 4 else x.unsqueeze(0)
        if xb.size(1) != self.in_channels:
            raise RuntimeError("Given groups=1, weight of size " + str(list(self.weight_shape)) + ", expected input"
                               + str(list(x.shape)) + " to have " + str(self.in_channels)
                               + " channels, but got " + str(xb.size(1)) + " channels instead")
        if not xb.is_floating_point():
            raise RuntimeError("SparseConv2d expects a floating-point input, got " + str(x.dtype))
        if residual is not None and x.dim() == 3:
            residual = residual.unsqueeze(0)
        a = self._native_args(xb, scale, shift, residual)
        out = torch.ops.patsparse.sparse_conv1x1(a[0], self.header, self.index, self.codes, a[1], a[2],
                                                 self.out_channels, a[3], a[4], a[5],
                                                 [self.stride[0], self.stride[1]], lo, hi)
        if out.dtype != x.dtype:
            out = out.to(x.dtype)
        return out if x.dim() == 4 else out.squeeze(0)

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


def compress_module(module: nn.Module, bits: Optional[int] = None, scheme: str = "uniform",
                    only_if_smaller: bool = True) -> Optional[nn.Module]:
    """Sparse (+ k-bit) replacement for a plain ``nn.Linear`` / ``nn.Conv2d``: a :class:`SparseLinear`
    or :class:`SparseConv2d`, or None when the layer is not such a layer or is unsupported (padding
    mode other than zeros, lazy or non-fp32 weight; see :func:`torch_patsparse.nn.kinds.layer_kind`),
    or (``only_if_smaller``) the compressed form would not be smaller than dense.

    Every kind of conv is taken, 3x3 groups=1 ones too (``convert`` stores those as
    :class:`PatternConv2d` when they are pattern-pruned and calls this for the others, e.g. a 3x3
    conv with unstructured sparsity). The weight must already be pruned (zeros = pruned); without
    ``bits`` the result computes exactly what ``module`` does. ``bits`` / ``scheme`` as in
    ``SparseLinear.from_dense``.
    """
    kind = layer_kind(module)
    if kind is None or module.weight.dtype != torch.float32:
        return None
    if isinstance(module, nn.Linear):
        out = SparseLinear.from_dense(module, bits, scheme)
    else:
        out = SparseConv2d.from_dense(module, bits, scheme)
    if only_if_smaller and sum(out.storage_bits().values()) >= out.dense_bits():
        return None
    return out
