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

``load_state_dict`` validates every array (lengths, widths, padding bits, index range, code range)
and raises ``ValueError``; decoding never reads out of bounds.
"""
import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import bitpack
from .. import ops

__all__ = ["SparseLinear", "SparseConv2d", "compress_module"]

_BUFFERS = ("header", "index", "codes", "values", "scale")
_SCHEMES = {"float": 0, "uniform": 1, "pow2": 2}
_SCHEME_NAMES = {v: k for k, v in _SCHEMES.items()}
BITMAP, RELATIVE = 1, 0


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
# value coding
# --------------------------------------------------------------------------------------------
def _levels(bits: int) -> int:
    """Nonzero levels a side (project.quantize: bits=1 is +-q, bits=2 is {0, +-q})."""
    return max(1, (1 << (bits - 1)) - 1)


def _code_width(bits: int) -> int:
    return max(1, math.ceil(math.log2(2 * _levels(bits))))


def _dequant(c: torch.Tensor, scale: torch.Tensor, scheme: int) -> torch.Tensor:
    if scheme == _SCHEMES["uniform"]:
        return c.to(torch.float32) * scale
    mag = scale * torch.pow(2.0, -(c.abs() - 1).to(torch.float32))
    return torch.where(c < 0, -mag, mag)


def _exact_scale(v: torch.Tensor, c: torch.Tensor, scheme: int, hint: Optional[float]) -> Optional[torch.Tensor]:
    """A fp32 scale that decodes integer levels ``c`` to exactly ``v``, or None."""
    cands = [] if hint is None else [torch.tensor([hint], dtype=torch.float32)]
    if scheme == _SCHEMES["uniform"]:
        a = c.abs()
        for target in (1, 2, int(a.min()), int(a.max())):
            i = torch.nonzero(a == target).view(-1)
            if i.numel():
                cands.append((v[i[:1]] / c[i[:1]].to(torch.float32)).abs())
    else:
        cands.append((v[:1].abs() * torch.pow(2.0, (c[:1].abs() - 1).to(torch.float32))))
    for s in cands:
        if torch.isfinite(s).all() and float(s) > 0 and torch.equal(_dequant(c, s, scheme), v):
            return s
    return None


def _detect_grid(v: torch.Tensor, scheme: int) -> Optional[Tuple[torch.Tensor, torch.Tensor, int]]:
    """Integer levels + exact scale + bits (1..8) if the nonzeros ``v`` sit on a uniform / pow2 grid."""
    if v.numel() == 0:
        return None
    a = v.abs()
    amin, amax = float(a.min()), float(a.max())
    if scheme == _SCHEMES["uniform"]:
        found = None
        for k in range(1, 128):
            q = torch.tensor([amin / k], dtype=torch.float32)
            if amax / float(q) > 127.5:
                break
            c = torch.round(v / q).to(torch.int64)
            if int(c.abs().max()) <= 127 and not bool((c == 0).any()):
                s = _exact_scale(v, c, scheme, float(q))
                if s is not None:
                    found = (c, s)
                    break
        if found is None:
            return None
        c, s = found
    else:
        q = torch.tensor([amax], dtype=torch.float32)
        j = torch.round(torch.log2(q / a)).to(torch.int64)
        if int(j.max()) > 126:
            return None
        c = torch.where(v < 0, -(j + 1), j + 1)
        s = _exact_scale(v, c, scheme, amax)
        if s is None:
            return None
    m = int(c.abs().max())
    bits = next(b for b in range(1, 9) if _levels(b) >= m)
    return c, s, bits


def _quantize(w: torch.Tensor, bits: int, scheme: str) -> Tuple[torch.Tensor, float]:
    """(quantized weight, scale) via torch_patsparse.project (the one quantizer of the project)."""
    from .. import project
    codes, scale = project.quantize_params(w, bits, scheme)
    return project.dequantize(codes, scale, scheme, dtype=torch.float32), scale


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
        m = _levels(bits)
        s = bitpack.unpack(codes.cpu(), nnz, _code_width(bits))
        if nnz and int(s.max()) >= 2 * m:
            raise ValueError(f"code {int(s.max())} out of range for {bits}-bit levels")
        c = torch.where(s < m, s - m, s - m + 1)
        vals = _dequant(c, scale.cpu(), scheme)
    w = torch.zeros(numel, dtype=torch.float32)
    w[pos] = vals
    return w.view(shape).to(dev)


# --------------------------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------------------------
class _SparseWeightMixin:
    """Holds one compressed weight as buffers; subclasses define ``weight_shape`` (a tuple) and
    ``forward``. The decoded weight lives in the non-persistent ``_weight_cache`` buffer (rebuilt
    on build and load, never saved), so ``forward`` is plain torch code that TorchScript compiles."""

    __jit_unused_properties__ = ["nnz", "bits", "scheme", "index_kind", "weight"]

    def _init_storage(self, bias: bool) -> None:
        for k in _BUFFERS:
            self.register_buffer(k, torch.zeros(0, dtype=torch.float32 if k in ("values", "scale") else torch.uint8))
        self.register_buffer("_weight_cache", None, persistent=False)
        self.register_parameter("bias", nn.Parameter(torch.zeros(self.weight_shape[0])) if bias else None)
        self._set_weight(torch.zeros(self.weight_shape), None, "uniform")

    # -- building ---------------------------------------------------------------------------
    def _set_weight(self, weight: torch.Tensor, bits: Optional[int], scheme: str) -> None:
        if scheme not in ("uniform", "pow2"):
            raise ValueError(f"scheme must be 'uniform' or 'pow2', got {scheme!r}")
        w = weight.detach().to("cpu", torch.float32).reshape(-1)
        numel = w.numel()
        sid = _SCHEMES[scheme]
        if bits is not None:
            if not 1 <= int(bits) <= 8:
                raise ValueError(f"bits must be in 1..8 (or None), got {bits}")
            wq, hint = _quantize(w, int(bits), scheme)
            pos = torch.nonzero(wq).view(-1)
            v = wq[pos]
            grid = None
            if v.numel():
                m, h = _levels(int(bits)), float(hint)
                if sid == 1:
                    c = torch.round(v / h).to(torch.int64)
                else:
                    c = torch.round(torch.log2(h / v.abs())).to(torch.int64) + 1
                    c = torch.where(v < 0, -c, c)
                if int(c.abs().min()) >= 1 and int(c.abs().max()) <= m:
                    s = _exact_scale(v, c, sid, h)
                    grid = None if s is None else (c, s, int(bits))
            if v.numel() and grid is None:  # decode must reproduce the quantized weight bit for bit
                g = _detect_grid(v, sid)
                if g is None or g[2] > int(bits):
                    raise ValueError(f"quantized weight does not decode exactly from {bits}-bit {scheme} levels")
                grid = (g[0], g[1], int(bits))
        else:
            pos = torch.nonzero(w).view(-1)
            v = w[pos]
            grid = _detect_grid(v, sid)
        kind, width, index, nsym = _choose_index(pos, numel)
        if grid is None:
            sid, qbits = 0, 0
            codes, values, scale = torch.zeros(0, dtype=torch.uint8), v.clone(), torch.zeros(0)
        else:
            c, scale, qbits = grid
            m = _levels(qbits)
            sym = torch.where(c < 0, c + m, c + m - 1)
            codes, values = bitpack.pack(sym, _code_width(qbits)), torch.zeros(0)
        header = bitpack.pack_fields([kind, width - 1, sid, qbits, pos.numel(), nsym], _header_widths(numel))
        dev = self.header.device
        for k, t in zip(_BUFFERS, (header, index, codes, values, scale)):
            setattr(self, k, t.to(dev))
        self._weight_cache = None
        self.dense_weight()

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
        """The decoded weight and the bias in ``x``'s dtype (the forward's dense operands)."""
        b = self.bias
        return self.dense_weight().to(x.dtype), (None if b is None else b.to(x.dtype))

    def dense_weight(self) -> torch.Tensor:
        """The decoded dense fp32 weight (cached as a non-persistent buffer)."""
        if self._weight_cache is None:
            self._weight_cache = _decode({k: getattr(self, k) for k in _BUFFERS}, self.weight_shape)
        return self._weight_cache

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
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        incoming = {k: state_dict[prefix + k] for k in _BUFFERS if prefix + k in state_dict}
        if len(incoming) == len(_BUFFERS):
            if not all(isinstance(t, torch.Tensor) for t in incoming.values()):
                raise ValueError("compressed arrays must be tensors")
            _decode(incoming, self.weight_shape)  # validates; raises ValueError
            for k, t in incoming.items():
                setattr(self, k, torch.empty_like(t, device=getattr(self, k).device))
        elif incoming:
            raise ValueError(f"incomplete compressed weight in state_dict: has {sorted(incoming)}, "
                             f"needs {list(_BUFFERS)}")
        self._weight_cache = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if not error_msgs:
            self.dense_weight()

    def _storage_repr(self) -> str:
        bits = self.bits
        return (f"nnz={self.nnz}/{int(math.prod(self.weight_shape))}, "
                f"values={'fp32' if bits is None else f'{bits}-bit {self.scheme}'}, index={self.index_kind}")


class SparseLinear(_SparseWeightMixin, nn.Module):
    """``nn.Linear`` whose weight is stored sparse (+ k-bit). Build with :meth:`from_dense`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight_shape = (self.out_features, self.in_features)
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
        return F.linear(x, *self._weight_bias_as(x))

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
        return F.conv2d(x, *self._weight_bias_as(x), self.stride, self.padding, self.dilation, self.groups)

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


def _pattern_conv_takes(module: nn.Conv2d) -> bool:
    """What PatternConv2d covers (ps.convert's 3x3 path): 3x3, groups=1, zero padding."""
    return tuple(module.kernel_size) == (3, 3) and module.groups == 1 and module.padding_mode == "zeros"


def compress_module(module: nn.Module, bits: Optional[int] = None, scheme: str = "uniform",
                    only_if_smaller: bool = True) -> Optional[nn.Module]:
    """Compressed replacement for an ``nn.Linear`` / ``nn.Conv2d`` that PatternConv2d does not take
    (not 3x3 groups=1), or None: not such a layer, unsupported (non-zero padding mode, lazy or
    non-fp32 weights), or (``only_if_smaller``) the compressed form would not be smaller than dense.
    The weight must already be pruned (zeros = pruned); ``bits`` / ``scheme`` as in ``from_dense``."""
    if isinstance(module, (SparseLinear, SparseConv2d)):
        return None
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor) or isinstance(w, nn.parameter.UninitializedParameter):
        return None
    if w.dtype != torch.float32:
        return None
    if type(module) is nn.Linear or (isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward):
        out = SparseLinear.from_dense(module, bits, scheme)
    elif type(module) is nn.Conv2d or (isinstance(module, nn.Conv2d) and type(module).forward is nn.Conv2d.forward):
        if module.padding_mode != "zeros" or _pattern_conv_takes(module):
            return None
        out = SparseConv2d.from_dense(module, bits, scheme)
    else:
        return None
    if only_if_smaller and sum(out.storage_bits().values()) >= out.dense_bits():
        return None
    return out
