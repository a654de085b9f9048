"""Bit packing of small unsigned integers into uint8 tensors (vectorised torch code).

``pack(x, width)`` stores ``len(x)`` values of ``width`` bits (1..16) in ``ceil(len(x) * width / 8)``
bytes, least significant bit first: value ``i`` occupies stream bits ``i*width .. i*width+width-1``
and stream bit ``j`` is bit ``j % 8`` of byte ``j // 8``. Unused bits of the last byte are zero
(``unpack`` checks that, so a corrupt array is an error rather than silently different data).

``pack_fields`` / ``unpack_fields`` pack a short header of fields with individual widths.
"""
from typing import List, Sequence

import torch

MAX_WIDTH = 16


def packed_bytes(count: int, width: int) -> int:
    """Bytes that ``count`` values of ``width`` bits occupy."""
    return (count * width + 7) // 8


def _check_width(width: int) -> None:
    if not isinstance(width, int) or not 1 <= width <= MAX_WIDTH:
        raise ValueError(f"bit width must be an int in 1..{MAX_WIDTH}, got {width!r}")


def _stream(bits: torch.Tensor) -> torch.Tensor:
    """Bit stream (uint8 0/1, LSB first) -> packed uint8 bytes."""
    n = bits.numel()
    pad = (-n) % 8
    if pad:
        bits = torch.cat([bits, bits.new_zeros(pad)])
    weights = (1 << torch.arange(8, dtype=torch.int32, device=bits.device))
    return (bits.view(-1, 8).to(torch.int32) * weights).sum(1).to(torch.uint8)


def _unstream(data: torch.Tensor, nbits: int) -> torch.Tensor:
    """Packed uint8 bytes -> bit stream (uint8 0/1) of exactly ``nbits`` bits (extra bits must be 0)."""
    if data.dtype != torch.uint8 or data.dim() != 1:
        raise ValueError(f"packed data must be a 1-D uint8 tensor, got {data.dtype} of shape {tuple(data.shape)}")
    if data.numel() != (nbits + 7) // 8:
        raise ValueError(f"packed data has {data.numel()} bytes, expected {(nbits + 7) // 8} for {nbits} bits")
    shifts = torch.arange(8, dtype=torch.int32, device=data.device)
    bits = ((data.to(torch.int32).unsqueeze(1) >> shifts) & 1).to(torch.uint8).view(-1)
    if bool(bits[nbits:].any()):
        raise ValueError("packed data has nonzero padding bits after the last value")
    return bits[:nbits]


# pack / unpack work in chunks of this many values (a multiple of 8: whole bytes each): the int64 bit
# matrix of a large index would take width * 8 bytes per value at once.
_CHUNK = 1 << 20


def pack(x: torch.Tensor, width: int) -> torch.Tensor:
    """Pack non-negative integers ``x`` (any int dtype, 1-D or flattened) of at most ``width`` bits."""
    _check_width(width)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"pack takes an integer tensor, got {x.dtype}")
    x = x.reshape(-1)
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= (1 << width)):
        raise ValueError(f"values out of range for {width}-bit packing: [{int(x.min())}, {int(x.max())}]")
    shifts = torch.arange(width, dtype=torch.int64, device=x.device)
    parts = [_stream(((x[i:i + _CHUNK].to(torch.int64).unsqueeze(1) >> shifts) & 1).to(torch.uint8).view(-1))
             for i in range(0, x.numel(), _CHUNK)]
    return torch.cat(parts) if parts else _stream(torch.zeros(0, dtype=torch.uint8, device=x.device))


def unpack(data: torch.Tensor, count: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack`: ``count`` values (int64). Raises ValueError on a length mismatch or
    nonzero padding bits."""
    _check_width(width)
    if count < 0:
        raise ValueError(f"negative count {count}")
    bits = _unstream(data, count * width).view(count, width)
    shifts = torch.arange(width, dtype=torch.int64, device=data.device)
    out = torch.empty(count, dtype=torch.int64, device=data.device)
    for i in range(0, count, _CHUNK):
        out[i:i + _CHUNK] = (bits[i:i + _CHUNK].to(torch.int64) << shifts).sum(1)
    return out


def pack_fields(values: Sequence[int], widths: Sequence[int]) -> torch.Tensor:
    """Pack a few integers with individual widths (1..62 bits each) into one uint8 tensor."""
    if len(values) != len(widths):
        raise ValueError("values and widths differ in length")
    bits: List[int] = []
    for v, w in zip(values, widths):
        v = int(v)
        if not 1 <= w <= 62 or v < 0 or v >= (1 << w):
            raise ValueError(f"header field {v} does not fit in {w} bits")
        bits.extend((v >> i) & 1 for i in range(w))
    return _stream(torch.tensor(bits, dtype=torch.uint8, device="cpu"))


def unpack_fields(data: torch.Tensor, widths: Sequence[int]) -> List[int]:
    bits = _unstream(data, sum(widths)).tolist()
    out, pos = [], 0
    for w in widths:
        out.append(sum(b << i for i, b in enumerate(bits[pos:pos + w])))
        pos += w
    return out
