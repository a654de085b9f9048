"""Sparse + k-bit stored form of one weight (``SparseLinear`` / ``SparseConv2d``, torch_patsparse.nn.sparse):
encode, and decode with full validation (one code path for forward, to_dense, load_state_dict and
the native ops' backward).

The arrays (all in the ``state_dict``, no dense weight anywhere):

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

Levels, code widths, the quantizer and grid detection are :mod:`torch_patsparse.quant`'s.
"""
import math
from typing import Dict, Optional, Tuple

import torch

from . import bitpack
from . import quant

__all__ = ["ARRAY_NAMES", "encode", "decode", "header_fields"]

#: The stored arrays of one weight, in the order of the native ops' arguments.
ARRAY_NAMES = ("header", "index", "codes", "values", "scale")
_SCHEMES = {"float": 0, "uniform": 1, "pow2": 2}
SCHEME_NAMES = {v: k for k, v in _SCHEMES.items()}
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
    sym = torch.full((int(counts.sum()),), esc, dtype=torch.int64, device=gaps.device)
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
        bits = torch.zeros(numel, dtype=torch.uint8, device=positions.device)
        bits[positions] = 1
        return kind, 1, bitpack.pack(bits, 1), 0
    sym = _encode_relative(gaps, w) if positions.numel() else positions.new_zeros(0)
    return kind, w, bitpack.pack(sym, w), int(sym.numel())


# --------------------------------------------------------------------------------------------
# value coding (levels, widths, quantizer and grid detection: torch_patsparse.quant)
# --------------------------------------------------------------------------------------------
def _dequant(c: torch.Tensor, scale: torch.Tensor, scheme: int) -> torch.Tensor:
    return quant.dequantize(c, scale, SCHEME_NAMES[scheme], dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# header, decode / validate
# --------------------------------------------------------------------------------------------
def _header_widths(numel: int):
    L = max(1, int(numel).bit_length())
    return (1, 4, 2, 4, L, L)


def decode(arrays: Dict[str, torch.Tensor], shape) -> torch.Tensor:
    """The dense fp32 weight of ``shape`` stored in ``arrays``; ValueError for any inconsistent array
    (lengths, widths, padding bits, index range, code range, a finite positive scale)."""
    numel = int(math.prod(shape))
    for k in ARRAY_NAMES:
        if k not in arrays:
            raise ValueError(f"missing compressed array '{k}'")
    header, index, codes, values, scale = (arrays[k] for k in ARRAY_NAMES)
    for k in ("header", "index", "codes"):
        if arrays[k].dtype != torch.uint8 or arrays[k].dim() != 1:
            raise ValueError(f"'{k}' must be a 1-D uint8 tensor, got {arrays[k].dtype} {tuple(arrays[k].shape)}")
    for k in ("values", "scale"):
        if not arrays[k].is_floating_point() or arrays[k].dim() != 1:
            raise ValueError(f"'{k}' must be a 1-D float tensor, got {arrays[k].dtype} {tuple(arrays[k].shape)}")
    kind, wm1, scheme, bits, nnz, nsym = bitpack.unpack_fields(header.cpu(), _header_widths(numel))
    width = wm1 + 1
    if scheme not in SCHEME_NAMES:
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
    w = torch.zeros(numel, dtype=torch.float32, device="cpu")
    w[pos] = vals
    return w.view(shape).to(dev)


def header_fields(header: torch.Tensor, shape) -> list:
    """[kind, index width - 1, scheme id, bits, nnz, nsym] of a stored header."""
    return bitpack.unpack_fields(header.cpu(), _header_widths(int(math.prod(shape))))


def encode_zeros(numel: int) -> Dict[str, torch.Tensor]:
    """The stored arrays of an all-zero weight of ``numel`` entries (``encode(torch.zeros(...))``
    without the dense zeros: an empty layer of a large shape)."""
    kind, width, index, nsym = _choose_index(torch.zeros(0, dtype=torch.long, device="cpu"), numel)
    header = bitpack.pack_fields([kind, width - 1, 0, 0, 0, nsym], _header_widths(numel))
    empty = torch.zeros(0, device="cpu")
    codes = torch.zeros(0, dtype=torch.uint8, device="cpu")
    return dict(zip(ARRAY_NAMES, (header, index, codes, empty, empty.clone())))


def encode(weight: torch.Tensor, bits: Optional[int], scheme: str) -> Dict[str, torch.Tensor]:
    """The stored arrays (CPU) of a weight: its nonzeros (zeros = pruned), quantized to ``bits`` with
    ``scheme`` (lossy), or with ``bits=None`` as exact codes when they already sit on a grid
    (``scheme``'s or the other's, the fewer bits; ties: ``scheme``), else fp32 values."""
    if scheme not in quant.SCHEMES:
        raise ValueError(f"scheme must be 'uniform' or 'pow2', got {scheme!r}")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError("weight has NaN or inf entries")
    w = weight.detach().to("cpu", torch.float32).reshape(-1)
    # the arrays are float32: a float64 weight beyond its range would store inf, or zero for every weight
    if not bool(torch.isfinite(w).all()) or (not bool(w.any()) and bool(weight.any())):
        raise ValueError(f"the {weight.dtype} weight (magnitudes up to {float(weight.abs().max()):.3g}) does not fit "
                         "float32, which the sparse layers store (values and the k-bit scale): rescale it")
    numel = w.numel()
    if bits is not None:
        quant.check(bits, scheme)
        codes, q = quant.quantize_params(w, int(bits), scheme)
        # The fp32 scale decodes the codes to exactly quant.quantize's values.
        pos = torch.nonzero(codes.view(-1)).view(-1)
        grid = ((codes.view(-1)[pos].long(),
                 quant.scale_tensor(q, torch.float32, bits, scheme, codes, weight.dtype).reshape(1), int(bits))
                if pos.numel() else None)
    else:
        pos = torch.nonzero(w).view(-1)
        # `scheme` first, then the other: weights trained on either grid store as codes
        g = quant.detect_grid(w[pos], (scheme, *[s for s in quant.SCHEMES if s != scheme]))
        grid = None if g is None else (g.codes, g.scale.reshape(1).float(), g.bits)
        scheme = scheme if g is None else g.scheme
    kind, width, index, nsym = _choose_index(pos, numel)
    if grid is None:
        sid, qbits = 0, 0
        values = w[pos].clone()
        codes, scale = torch.zeros(0, dtype=torch.uint8, device=w.device), torch.zeros(0, device=w.device)
    else:
        c, scale, qbits = grid
        sid = _SCHEMES[scheme]
        m = quant.levels(qbits)
        sym = torch.where(c < 0, c + m, c + m - 1)
        codes, values = bitpack.pack(sym, quant.nonzero_code_width(qbits)), torch.zeros(0, device=w.device)
    header = bitpack.pack_fields([kind, width - 1, sid, qbits, pos.numel(), nsym], _header_widths(numel))
    return dict(zip(ARRAY_NAMES, (header, index, codes, values, scale)))
