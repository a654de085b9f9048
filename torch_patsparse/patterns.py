"""Kernel pattern sets: which positions of a 3x3 kernel a pattern keeps.

A pattern is a set of ``entries`` positions (0..8, row-major) of a 3x3 kernel; a
:class:`PatternSet` is an ordered list of ``K`` distinct patterns (the pattern id is the row
index). It is stored as ``positions``, uint8 ``[K, E]`` with each row sorted: exactly the
``patterns`` array of the compressed format.
"""
import numbers
from itertools import combinations
from typing import Iterable, Optional, Union

import torch

__all__ = ["PatternSet"]

_MAX_K = 256  # pattern ids are stored as uint8


class PatternSet:
    """An ordered set of ``K`` distinct 3x3 kernel patterns of ``E`` kept positions each.

    Args:
        positions: ints ``[K, E]`` (tensor or nested lists), positions 0..8 row-major, distinct
            within a row, no two rows the same set, ``1 <= K <= 256``. Rows are stored sorted.
    """

    def __init__(self, positions):
        try:
            p = torch.as_tensor(positions, device="cpu").detach()
        except (TypeError, ValueError, RuntimeError):
            raise TypeError("PatternSet positions must be ints [K, E] (a tensor or nested lists), got "
                            f"{type(positions).__name__}") from None
        if p.dim() != 2 or not 1 <= p.shape[0] <= _MAX_K or not 1 <= p.shape[1] <= 9:
            raise ValueError(f"PatternSet positions must be [K, E] with 1 <= K <= {_MAX_K} and "
                             f"1 <= E <= 9, got shape {tuple(p.shape)}")
        if p.dtype.is_floating_point or p.dtype.is_complex or p.dtype == torch.bool:
            raise ValueError(f"PatternSet positions must be integers, got {p.dtype}")
        p = p.long()
        if p.min() < 0 or p.max() > 8:
            raise ValueError("PatternSet positions must be in 0..8 (row-major 3x3)")
        p = p.sort(dim=1).values
        if (p[:, 1:] == p[:, :-1]).any():
            raise ValueError("PatternSet positions must be distinct within each pattern")
        if torch.unique(p, dim=0).shape[0] != p.shape[0]:
            raise ValueError("PatternSet contains the same pattern twice")
        self._positions = p.to(torch.uint8).contiguous()

    # -- basic properties ------------------------------------------------------------------
    @property
    def positions(self) -> torch.Tensor:
        """uint8 ``[K, E]``, each row sorted (a copy: the set is immutable)."""
        return self._positions.clone()

    @property
    def masks(self) -> torch.Tensor:
        """bool ``[K, 3, 3]``: True where a pattern keeps the weight."""
        m = torch.zeros(self.k, 9, dtype=torch.bool, device="cpu")
        m.scatter_(1, self._positions.long(), True)
        return m.view(self.k, 3, 3)

    @property
    def k(self) -> int:
        """Number of patterns."""
        return self._positions.shape[0]

    @property
    def entries(self) -> int:
        """Number of kept positions per pattern."""
        return self._positions.shape[1]

    def __len__(self) -> int:
        return self.k

    def __eq__(self, other) -> bool:
        if not isinstance(other, PatternSet):
            return NotImplemented
        return self._positions.shape == other._positions.shape and \
            bool(torch.equal(self._positions, other._positions))

    def __hash__(self) -> int:
        return hash(tuple(map(tuple, self._positions.tolist())))

    def __repr__(self) -> str:
        """``PatternSet(k=K, entries=E)`` followed by the patterns as 3x3 ASCII art."""
        m = self.masks.tolist()
        lines = [f"PatternSet(k={self.k}, entries={self.entries})",
                 " ".join(f"#{i:<3d}" for i in range(self.k))]
        for r in range(3):
            lines.append(" ".join("".join("x" if m[i][r][c] else "." for c in range(3)) + " "
                                  for i in range(self.k)))
        return "\n".join(line.rstrip() for line in lines)

    # -- serialisation ----------------------------------------------------------------------
    def to_tensor(self) -> torch.Tensor:
        """uint8 ``[K, E]`` tensor (state_dict friendly); inverse of :meth:`from_tensor`."""
        return self.positions

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> "PatternSet":
        """Rebuild a set from :meth:`to_tensor`'s output (any device, any integer dtype)."""
        return cls(t)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def candidates(cls, entries: int = 4, keep_center: bool = True) -> "PatternSet":
        """All patterns of ``entries`` positions, in lexicographic order of their sorted
        positions; with ``keep_center`` only those containing the centre (4): C(8, E-1) of
        them (56 for E=4), else C(9, E). This order is the fixed tie-break order of
        :meth:`select`."""
        rows = _candidate_rows(entries, keep_center)
        if len(rows) > _MAX_K:
            raise ValueError(f"{len(rows)} candidates for entries={entries}, more than "
                             f"{_MAX_K}; use keep_center=True or another entries")
        return cls(rows)

    @classmethod
    def select(cls, weights: Union[torch.Tensor, Iterable[torch.Tensor]], k: int = 8,
               entries: int = 4, keep_center: bool = True) -> "PatternSet":
        """The ``k`` most frequent kernel shapes in ``weights``.

        For every 3x3 kernel the shape is the set of its ``entries`` largest-magnitude
        positions (the centre forced in when ``keep_center``; equal magnitudes: lower position
        first). Shapes are counted over all kernels of all tensors, all-zero kernels skipped,
        and the ``k`` most frequent kept, most frequent first (ties: candidate order, see
        :meth:`candidates`). If fewer than ``k`` shapes occur, the set is filled with the
        remaining candidates in candidate order, so it always has ``k`` patterns.

        Args:
            weights: a tensor ``[..., 3, 3]`` (e.g. a conv weight ``[Cout, Cin, 3, 3]``) or an
                iterable of them, on any device.
        """
        rows = _candidate_rows(entries, keep_center)
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= min(len(rows), _MAX_K):
            raise ValueError(f"k must be an int in 1..{min(len(rows), _MAX_K)}, got {k!r}")
        k = int(k)
        if isinstance(weights, torch.Tensor):
            weights = [weights]
        lut = torch.full((512,), -1, dtype=torch.long, device="cpu")  # bitmask of positions -> candidate id
        for i, r in enumerate(rows):
            lut[sum(1 << p for p in r)] = i
        counts = torch.zeros(len(rows), dtype=torch.long, device="cpu")
        given = 0
        for w in weights:
            if not isinstance(w, torch.Tensor):
                raise TypeError(f"PatternSet.select expects torch tensors of shape [..., 3, 3], got {type(w).__name__}")
            if w.dim() < 2 or tuple(w.shape[-2:]) != (3, 3):
                raise ValueError(f"PatternSet.select expects tensors of shape [..., 3, 3], got {tuple(w.shape)}")
            if not w.is_floating_point():
                raise TypeError(f"PatternSet.select expects floating-point weights, got {w.dtype}")
            if bool(w.isnan().any()):
                raise ValueError("PatternSet.select: the weights hold NaN (a diverged training?)")
            given += 1
            score = w.detach().reshape(-1, 9).abs()
            score = score[score.amax(dim=1) > 0]  # skip all-zero kernels
            if keep_center:
                score[:, 4] = float("inf")
            top = score.sort(dim=1, descending=True, stable=True).indices[:, :entries]
            code = torch.bitwise_left_shift(torch.ones_like(top), top).sum(dim=1)
            counts += torch.bincount(lut.to(code.device)[code], minlength=len(rows)).cpu()
        if not given:
            raise ValueError("PatternSet.select: no weights given")
        order = counts.sort(descending=True, stable=True).indices[:k]
        return cls(torch.tensor(rows, device="cpu")[order])

    @classmethod
    def cover(cls, weights: Union[torch.Tensor, Iterable[torch.Tensor]],
              prefer: Optional["PatternSet"] = None) -> "PatternSet":
        """A set that stores every kernel of ``weights`` exactly: each kernel's nonzero support is a
        subset of some pattern (a kernel may fill only part of a pattern).

        ``E`` (entries) is the largest number of nonzeros in any kernel (at least 1). When ``prefer``
        is given and ``prefer.entries >= E``, its patterns come first (ids kept) and ``E`` becomes
        ``prefer.entries``. Then, most frequent first (ties: smaller support mask), every support of
        ``E`` nonzeros that is not covered yet becomes a pattern, and every smaller one that is not
        covered yet is extended to ``E`` positions (the centre first, then the positions used by the
        most patterns of the set, then by the most kernels, then the lowest) and added. Deterministic.

        Raises ValueError when more than 256 patterns would be needed (pattern ids are uint8); for
        3x3 kernels that cannot happen (at most C(9, E) <= 126 patterns of E positions exist), the
        check guards the format's limit.

        Args:
            weights: a tensor ``[..., 3, 3]`` or an iterable of them, on any device.
            prefer: e.g. the set the layer was trained with.
        """
        if isinstance(weights, torch.Tensor):
            weights = [weights]
        if prefer is not None and not isinstance(prefer, PatternSet):
            raise TypeError(f"prefer must be a PatternSet or None, got {type(prefer).__name__}")
        counts = torch.zeros(512, dtype=torch.long, device="cpu")  # kernels per 9-bit support mask
        for w in weights:
            if not isinstance(w, torch.Tensor) or w.dim() < 2 or tuple(w.shape[-2:]) != (3, 3):
                raise ValueError("PatternSet.cover expects tensors of shape [..., 3, 3]")
            nz = (w.detach().reshape(-1, 9) != 0).long()
            code = (nz << torch.arange(9, device=nz.device)).sum(dim=1)
            counts += torch.bincount(code, minlength=512).cpu()
        counts[0] = 0  # all-zero kernels are dropped, not stored
        masks = counts.nonzero().flatten().tolist()
        popcount = {m: bin(m).count("1") for m in masks}
        entries = max(popcount.values(), default=1)
        patterns: list = []
        if prefer is not None and prefer.entries >= entries:
            entries = prefer.entries
            patterns = [sum(1 << int(p) for p in row) for row in prefer._positions.tolist()]
        order = sorted(masks, key=lambda m: (-int(counts[m]), m))
        position_use = [sum(int(counts[m]) for m in masks if m >> p & 1) for p in range(9)]

        def covered(m):
            return any(m & ~p == 0 for p in patterns)

        for m in order:  # full-size supports: each is a pattern
            if popcount[m] == entries and not covered(m):
                patterns.append(m)
        for m in order:  # smaller ones: extend to `entries` positions
            if covered(m):
                continue
            rank = sorted(range(9), key=lambda p: (p != 4, -sum(q >> p & 1 for q in patterns), -position_use[p], p))
            ext = m
            for p in rank:
                if bin(ext).count("1") == entries:
                    break
                ext |= 1 << p
            patterns.append(ext)
        if not patterns:  # nothing to store: any one pattern will do
            patterns = [sum(1 << p for p in ([4] + [q for q in range(9) if q != 4])[:entries])]
        if len(patterns) > _MAX_K:
            raise ValueError(f"storing every kernel exactly needs {len(patterns)} patterns of {entries} positions, "
                             f"more than {_MAX_K}")
        return cls([[p for p in range(9) if m >> p & 1] for m in patterns])


def _candidate_rows(entries: int, keep_center: bool) -> list:
    if isinstance(entries, bool) or not isinstance(entries, numbers.Integral) or not 1 <= entries <= 9:
        raise ValueError(f"entries must be an int in 1..9, got {entries!r}")
    entries = int(entries)
    if not isinstance(keep_center, bool):  # ("False" would keep it)
        raise TypeError(f"keep_center must be a bool, got {keep_center!r}")
    return [list(c) for c in combinations(range(9), entries) if not keep_center or 4 in c]
