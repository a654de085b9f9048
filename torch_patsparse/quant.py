"""Quantization, in one place: the schemes and their levels, the stored code widths, the
least-squares quantizer (``quantize_params`` / ``dequantize`` / ``quantize``, re-exported by
:mod:`torch_patsparse.project`) and the detection of values that already sit exactly on a b-bit
grid (:func:`detect_grid`). ``PatternConv2d``, ``SparseLinear`` / ``SparseConv2d``, the projections
and the ADMM constraint all use these, so "b bits" means the same everywhere.
"""
import math
import numbers
from typing import NamedTuple, Optional, Sequence, Tuple

import torch

__all__ = ["SCHEMES", "MAX_BITS", "check", "levels", "signed_code_width", "nonzero_code_width", "multipliers",
           "quantize_params", "dequantize", "quantize", "Grid", "detect_grid"]

# -- levels and code widths -------------------------------------------------------------------
# Levels (q = per-tensor scale, b = bits):
#   uniform, b >= 2: {0, +-q, +-2q, ..., +-(2^(b-1)-1) q};   code = the integer multiplier.
#   pow2,    b >= 2: {0} U {+-q 2^-j, j = 0..2^(b-1)-2};      code = sign * (j + 1).
#   b = 1 (both):    a nonzero weight becomes +-q (its sign), code = sign; zeros stay 0.
# Code 0 is always the value 0, so pruned weights stay exactly zero. |code| <= 127 (int8).
SCHEMES = ("uniform", "pow2")
MAX_BITS = 8


def check(bits: int, scheme: str) -> None:
    """Raises ValueError unless ``bits`` is an int in 1..8 and ``scheme`` one of :data:`SCHEMES`."""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an int in 1..{MAX_BITS}, got {bits!r}")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; use one of {SCHEMES}")


def scale_tensor(q: float, dtype: torch.dtype, bits: int, scheme: str, codes: Optional[torch.Tensor] = None,
                 weights_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The 0-d ``dtype`` tensor that stores :func:`quantize_params`' scale ``q``; ValueError when it
    overflows ``dtype`` (weights near its maximum on a grid whose scale lies above them) or underflows
    to 0 (weights near its smallest subnormal, divided into more levels than it holds), or when the
    largest level ``codes`` use overflows ``weights_dtype`` (default ``dtype``), which they decode to."""
    s = torch.tensor(q, dtype=dtype, device="cpu")
    if not bool(torch.isfinite(s)):
        raise ValueError(f"{bits}-bit {scheme} quantization: the scale {q:.4g} overflows {dtype} (weights near "
                         f"its maximum); use scheme='uniform' or bits=None")
    if q > 0 and float(s) == 0.0:
        raise ValueError(f"{bits}-bit {scheme} quantization: the scale {q:.4g} underflows {dtype} (weights near "
                         f"its smallest subnormal); use fewer bits or bits=None")
    top = int(codes.abs().max()) if codes is not None and codes.numel() and scheme == "uniform" else 1
    if not bool(torch.isfinite(s.to(weights_dtype or dtype) * top)):
        raise ValueError(f"{bits}-bit {scheme} quantization: its level {top} x {q:.4g} overflows "
                         f"{weights_dtype or dtype} (weights near its maximum, a level above them); keep the weights "
                         "in float32 or bits=None")
    return s


def levels(bits: int) -> int:
    """Nonzero levels a side for ``bits`` bits, in both schemes: ``2^(b-1) - 1``, and 1 for b = 1
    (b = 1 and b = 2 are the same grid, ``{0, +-q}``). Also the largest ``|code|``."""
    return max(1, (1 << (int(bits) - 1)) - 1)


def signed_code_width(bits: int) -> int:
    """Bits per stored code when the code may be 0 (PatternConv2d: a kept position may hold 0):
    ``2 * levels + 1`` values, i.e. ``max(bits, 2)``; stored as ``code + levels``."""
    return max(1, math.ceil(math.log2(2 * levels(bits) + 1)))


def nonzero_code_width(bits: int) -> int:
    """Bits per stored code when the value is known to be nonzero (SparseLinear / SparseConv2d
    store only kept weights): ``2 * levels`` values, e.g. 1 bit for binary / ternary weights."""
    return max(1, math.ceil(math.log2(2 * levels(bits))))


def _codes(w: torch.Tensor, q: float, bits: int, scheme: str) -> torch.Tensor:
    """Code of the nearest level to each weight for scale ``q > 0`` (long tensor)."""
    if bits == 1:
        return torch.sign(w).long()
    top = levels(bits)
    if scheme == "uniform":
        return torch.round(w / q).clamp_(-top, top).long()
    jmax = top - 1  # levels q * 2^-j, j = 0..jmax
    r = w.abs() / q
    m, e = torch.frexp(r)  # r = m 2^e, m in [0.5, 1): nearest power of two is 2^e or 2^(e-1)
    j = (-(e - (m < 0.75).int())).clamp_(0, jmax).long()
    code = torch.sign(w).long() * (j + 1)
    return code.masked_fill_(r < 2.0 ** -(jmax + 1), 0)  # nearer to 0 than to q 2^-jmax


def multipliers(codes: torch.Tensor, scheme: str, dtype: torch.dtype) -> torch.Tensor:
    """Level / scale for each code (exact in ``dtype``)."""
    c = codes.to(dtype)
    if scheme == "uniform":
        return c
    return torch.sign(c) * torch.exp2(1.0 - c.abs())  # code 0 -> sign 0 -> 0


# -- quantizing ------------------------------------------------------------------------------
def check_float_tensor(w, name: str) -> None:
    """TypeError naming ``name`` unless ``w`` is a floating-point tensor (an int tensor would be
    projected onto truncated levels)."""
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        got = f"a {w.dtype} tensor" if isinstance(w, torch.Tensor) else type(w).__name__
        raise TypeError(f"{name} expects a floating-point tensor, got {got}")


def quantize_params(w: torch.Tensor, bits: int, scheme: str = "uniform") -> Tuple[torch.Tensor, float]:
    """Codes and scale of the per-tensor quantization of ``w``, searched for the least squared error
    (a multi-start search, not an exhaustive one: at 7-8 bits on small tensors it can miss the best
    scale).

    Returns ``(codes, scale)``: int8 codes of ``w``'s shape on its device and a Python float
    ``scale`` (0.0 for an all-zero ``w``); :func:`dequantize` maps them back to the values of
    :func:`quantize`. bits=1: ``scale`` = mean |w| over the nonzeros (exact optimum). Otherwise
    the error is piecewise quadratic in the scale with many local minima, so: 64 starts on a
    geometric grid ``max|w| / top level * 2^(1 .. -2.9)``, each improved by one round of
    alternating minimisation (nearest levels for a fixed scale, then the least-squares scale
    ``<w, l> / <l, l>`` for those levels; the error never increases), the best 4 iterated until
    the levels stop changing (<= 10 rounds); then the same again with 65 starts within
    +-1/16 octave of the winner (the error is rugged at high bit widths). On large tensors this
    search runs on a strided sample of ~16k nonzero weights and the winner is polished on all of them.
    """
    check(bits, scheme)
    check_float_tensor(w, "quantize")
    flat = w.detach().reshape(-1)
    x = flat[flat != 0].double()  # zeros always take code 0 and add nothing to the fit
    amax = float(x.abs().max()) if x.numel() else 0.0
    if not math.isfinite(amax):
        raise ValueError("cannot quantize a tensor with inf/nan entries")
    if amax == 0.0:
        return torch.zeros(w.shape, dtype=torch.int8, device=w.device), 0.0

    def fit(x, q):  # codes for q, then the best scale for them and its error - ||x||^2
        c = _codes(x, q, bits, scheme)
        lv = multipliers(c, scheme, x.dtype)
        wl, ll = float((x * lv).sum()), float((lv * lv).sum())
        return (c, wl / ll, -wl * wl / ll) if ll > 0 else (c, q, 0.0)

    def descend(x, start):  # alternate until the codes are stable (or 10 rounds)
        c, q, err = start
        for _ in range(10):
            c2, q2, err2 = fit(x, q)
            if err2 > err or torch.equal(c2, c):
                break
            c, q, err = c2, q2, err2
        return c, q, err

    def search(x, qs):  # one fit from every start, then descend from the best 4
        starts = sorted((fit(x, q) for q in qs), key=lambda f: f[2])[:4]
        return min((descend(x, s) for s in starts), key=lambda f: f[2])[1]

    if bits == 1:  # every nonzero weight -> sign * mean|w| over the nonzeros
        c, q, _ = fit(x, amax)
    else:
        sample = x[::max(1, x.numel() // 16384)]
        top = levels(bits) if scheme == "uniform" else 1
        q = search(sample, [amax / top * 2.0 ** (1 - t / 16) for t in range(64)])  # coarse
        q = search(sample, [q * 2.0 ** (t / 512) for t in range(-32, 33)])  # fine, around it
        _, q, _ = descend(x, fit(x, q)) if sample.numel() < x.numel() else fit(x, q)
        c = _codes(x, q, bits, scheme)  # the nearest levels for the scale returned (never a larger error)
    codes = torch.zeros(flat.shape, dtype=torch.int8, device=w.device)
    codes[flat != 0] = c.to(torch.int8)
    return codes.view(w.shape), q


def dequantize(codes: torch.Tensor, scale: float, scheme: str = "uniform",
               dtype: torch.dtype = None) -> torch.Tensor:
    """Values of int8 ``codes`` for ``scale`` (see the level table above): uniform
    ``code * scale``; pow2 ``sign(code) * scale * 2^-(|code| - 1)``, code 0 -> 0. Bits=1 codes
    (+-1, 0) read the same in both schemes. ``dtype`` defaults to torch's default dtype."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; use one of {SCHEMES}")
    dtype = dtype or torch.get_default_dtype()
    return multipliers(codes, scheme, dtype) * torch.as_tensor(scale, dtype=dtype, device=codes.device)


def quantize(w: torch.Tensor, bits: int, scheme: str = "uniform") -> torch.Tensor:
    """Project ``w`` onto ``bits``-bit levels with the per-tensor scale of least squared error
    (``uniform`` or ``pow2``, see :func:`quantize_params`). Zeros stay exactly zero. A scale that
    ``w``'s dtype cannot hold (float16 weights near its maximum or its smallest subnormal) is a
    ValueError, as in the k-bit layers (it gave inf, or every weight 0)."""
    codes, scale = quantize_params(w, bits, scheme)
    if scale:
        scale_tensor(scale, w.dtype, bits, scheme, codes)
    return dequantize(codes, scale, scheme, dtype=w.dtype)


# -- detection ---------------------------------------------------------------------------------
class Grid(NamedTuple):
    """Exact grid of a tensor: ``dequantize(codes, scale, scheme, dtype=values.dtype)`` equals it
    bit for bit. ``codes`` int64 of the tensor's shape (0 where it is 0), ``scale`` a 0-d tensor
    of its dtype, ``bits`` the fewest bits whose levels hold every code."""
    codes: torch.Tensor
    scale: torch.Tensor
    bits: int
    scheme: str


def _decodes_to(v: torch.Tensor, c: torch.Tensor, s: torch.Tensor, scheme: str) -> bool:
    return bool(torch.isfinite(s)) and float(s) > 0 and torch.equal(dequantize(c, s, scheme, dtype=v.dtype), v)


def _exact_scale(v: torch.Tensor, c: torch.Tensor, scheme: str, hint: Optional[float]) -> Optional[torch.Tensor]:
    """A scale (0-d, ``v``'s dtype) that decodes the nonzero codes ``c`` to exactly ``v``, or None."""
    cands = [] if hint is None else [hint]
    if scheme == "uniform":
        a = c.abs()
        for target in (1, 2, int(a.min()), int(a.max())):
            i = torch.nonzero(a == target).view(-1)
            if i.numel():
                cands.append(abs(float(v[i[0]]) / float(c[i[0]])))
    else:
        cands.append(abs(float(v[0])) * 2.0 ** (abs(int(c[0])) - 1))
    for q in cands:
        s = torch.tensor(q, dtype=v.dtype, device=v.device)
        if _decodes_to(v, c, s, scheme):
            return s
    return None


def _nonzero_grid(v: torch.Tensor, scheme: str) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """(codes, scale) putting the nonzero 1-D ``v`` exactly on a ``scheme`` grid with |code| <= 127."""
    a = v.abs()
    amin, amax = float(a.min()), float(a.max())
    top = levels(MAX_BITS)
    if scheme == "uniform":  # the scale is amin / k for the code k of the smallest magnitude
        for k in range(1, top + 1):
            q = float(torch.tensor(amin / k, dtype=v.dtype, device="cpu"))
            if q <= 0 or amax / q > top + 0.5:
                return None
            c = torch.round(v / q).to(torch.int64)
            if int(c.abs().max()) <= top and not bool((c == 0).any()):
                s = _exact_scale(v, c, scheme, q)
                if s is not None:
                    return c, s
        return None
    ratio = torch.log2(amax / a)  # the scale is the largest magnitude
    if not bool(torch.isfinite(ratio).all()) or float(ratio.max()) > top - 0.5:  # (inf: subnormal a)
        return None
    j = torch.round(ratio).to(torch.int64)
    c = torch.where(v < 0, -(j + 1), j + 1)
    s = _exact_scale(v, c, scheme, amax)
    return None if s is None else (c, s)


def detect_grid(values: torch.Tensor, schemes: Sequence[str] = SCHEMES,
                max_bits: int = MAX_BITS) -> Optional[Grid]:
    """The grid ``values`` sit on exactly (e.g. after ADMM quantization), or None.

    Tries each scheme in ``schemes`` and returns the one needing the fewest bits (ties: the earlier
    scheme), if that is at most ``max_bits``. None also for an all-zero tensor, non-finite values or
    more than 127 distinct magnitudes. Zeros get code 0.
    """
    for s in schemes:
        if s not in SCHEMES:
            raise ValueError(f"unknown quantization scheme {s!r}; use one of {SCHEMES}")
    flat = values.detach().reshape(-1)
    nz = flat != 0
    v = flat[nz]
    if v.numel() == 0 or not bool(torch.isfinite(v).all()):
        return None
    if torch.unique(v.abs()).numel() > levels(MAX_BITS):  # cheap: b bits give at most levels(b) magnitudes
        return None
    best = None
    for s in schemes:
        found = _nonzero_grid(v, s)
        if found is None:
            continue
        c, scale = found
        m = int(c.abs().max())
        bits = next(b for b in range(1, MAX_BITS + 1) if levels(b) >= m)
        if bits <= max_bits and (best is None or bits < best.bits):
            codes = torch.zeros(flat.shape, dtype=torch.int64, device=flat.device)
            codes[nz] = c
            best = Grid(codes.view(values.shape), scale.to(flat.device), bits, s)
    return best
