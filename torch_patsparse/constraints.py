"""Constraint sets for :class:`torch_patsparse.ADMM`.

Each constraint is a small frozen dataclass that validates its own arguments on construction
(``ValueError`` with a clear message) and knows how to project one tensor with the functions of
:mod:`torch_patsparse.project`::

    from torch_patsparse import constraints as C
    [C.Pattern(k=8, entries=4, keep_center=True, group=1), C.Connectivity(keep=0.25),
     C.Unstructured(keep=0.05), C.Filter(keep=0.5), C.Channel(keep=0.5),
     C.Quantize(bits=4, scheme="uniform")]

``keep`` is a fraction in (0, 1] (a ``float``) or a count >= 1 (an ``int``), as in
:mod:`torch_patsparse.project`.

When several constraints are given for one tensor they are applied as one composed projection in
the fixed order of :data:`ORDER` (pattern, connectivity, filter, channel, unstructured, then
quantize last), whatever order the list has: pattern first so that connectivity ranks the kernels
by the norm they keep *after* pattern pruning, quantization last so that it sees only the kept
weights (0 is always a level, so pruned weights stay pruned). At most one constraint of each kind.
"""
from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import asdict, dataclass, fields

import torch

from . import _deprecation
from . import project
from .patterns import PatternSet

__all__ = ["Constraint", "Pattern", "Connectivity", "Unstructured", "Filter", "Channel", "Quantize",
           "ORDER", "ordered", "TYPES", "to_spec", "from_spec", "to_dict", "from_dict"]


def _check_keep(c, keep) -> None:
    """Validates ``c.keep`` and stores it as a Python int (a count) or float (a fraction): numpy
    scalars would leave the optimizer's state_dict unreadable by ``torch.load(weights_only=True)``."""
    cls_name = type(c).__name__
    if isinstance(keep, bool) or not isinstance(keep, numbers.Real):
        raise ValueError(f"{cls_name}: keep must be a fraction in (0, 1] or an int count >= 1, got {keep!r}")
    if isinstance(keep, numbers.Integral):
        if keep < 1:
            raise ValueError(f"{cls_name}: keep count must be >= 1, got {keep!r}")
        if keep == 1:
            warnings.warn(f"{cls_name}(keep=1): an int keep is a count, so this keeps ONE per layer; "
                          "keep=1.0 keeps everything", UserWarning, stacklevel=4)
        object.__setattr__(c, "keep", int(keep))
    elif not (0.0 < float(keep) <= 1.0):  # also rejects NaN
        raise ValueError(f"{cls_name}: keep must be a fraction in (0, 1] (or an int count), got {keep!r}")
    else:
        object.__setattr__(c, "keep", float(keep))


def _check_int(c, what: str, lo: int, hi: int | None = None) -> None:
    """Validates the int field ``what`` of ``c`` and stores it as a Python int."""
    v = getattr(c, what)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo or (hi is not None and v > hi):
        rng = f"an int in {lo}..{hi}" if hi is not None else f"an int >= {lo}"
        raise ValueError(f"{type(c).__name__}: {what} must be {rng}, got {v!r}")
    object.__setattr__(c, what, int(v))


def _check_count(c, n: int, what: str, name: str) -> None:
    """An int ``keep`` must not exceed the number of items it counts; a fraction that a layer this
    small cannot honour (one of two filters for keep=0.1) is said in a warning."""
    keep = c.keep
    if isinstance(keep, numbers.Integral) and not isinstance(keep, bool):
        if keep > n:
            raise ValueError(f"{type(c).__name__}(keep={keep}) keeps more {what} than parameter '{name}' has ({n})")
    elif n > 0 and project._count(keep, n) >= 1.5 * keep * n:
        kept = project._count(keep, n)
        warnings.warn(f"{type(c).__name__}(keep={keep}) on parameter '{name}': it has {n} {what}, so {kept} "
                      f"({kept / n:.0%}) are kept; leave such small layers out of this constraint or give a "
                      "count", UserWarning, stacklevel=3)


class Constraint:
    """Base class. ``prunes`` is True for constraints that zero weights (they define the masks
    that :meth:`ADMM.hard_prune` fixes); ``needs_3x3`` for those that only apply to
    ``[Cout, Cin, 3, 3]`` weights; ``min_dim`` is the smallest tensor rank they accept."""
    prunes = True
    needs_3x3 = False
    min_dim = 1

    def check_tensor(self, shape, name: str) -> None:
        """Raise ``ValueError`` naming the parameter if this constraint can't apply to ``shape``."""
        shape = tuple(shape)
        if self.needs_3x3 and (len(shape) != 4 or shape[2:] != (3, 3)):
            hint = ("; a converted PatternConv2d's `values`? Constraints take dense weights: prune before "
                    "ps.convert, or train `layer.to_dense()`") if len(shape) == 2 and shape[1] <= 9 else ""
            raise ValueError(f"{type(self).__name__} constraint needs a [Cout, Cin, 3, 3] weight, "
                             f"but parameter '{name}' has shape {list(shape)}{hint}")
        if len(shape) < self.min_dim:
            raise ValueError(f"{type(self).__name__} constraint needs a tensor with at least {self.min_dim} "
                             f"dimensions, but parameter '{name}' has shape {list(shape)}")

    def project(self, w, pattern_set=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def _key(self) -> tuple:
        # keep=1 (one kernel) and keep=1.0 (all) compare equal as numbers: the type is part of the value
        return tuple((type(v), v) for v in (getattr(self, f.name) for f in fields(self)))

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash((type(self), self._key()))


@dataclass(frozen=True, eq=False)
class Pattern(Constraint):
    """Every 3x3 kernel keeps ``entries`` weights in one of the ``k`` shapes of the group's pattern
    set (selected from all the group's weights when ADMM initialises Z, then fixed); ``group`` G
    consecutive output channels share their patterns (see :func:`project.pattern`)."""
    k: int = 8
    entries: int = 4
    keep_center: bool = True
    group: int = 1
    needs_3x3 = True

    def __post_init__(self):
        _check_int(self, "entries", 1, 9)
        if not isinstance(self.keep_center, bool):
            raise ValueError(f"Pattern: keep_center must be a bool, got {self.keep_center!r}")
        # There are only C(8, E-1) shapes of E positions that keep the centre (C(9, E) without it).
        shapes = math.comb(8, self.entries - 1) if self.keep_center else math.comb(9, self.entries)
        try:
            _check_int(self, "k", 1, min(shapes, 256))
        except ValueError as e:
            too_many = isinstance(self.k, numbers.Integral) and not isinstance(self.k, bool) and self.k > shapes
            raise ValueError(f"{e} (there {'are' if shapes > 1 else 'is'} only {shapes} shape{'s' if shapes > 1 else ''} "
                             f"of {self.entries} positions"
                             f"{' that keep the centre' if self.keep_center else ''})" if too_many else str(e)) from None
        _check_int(self, "group", 1)

    def project(self, w, pattern_set=None):
        if isinstance(pattern_set, PatternSet) and pattern_set.entries != self.entries:
            raise ValueError(f"Pattern(entries={self.entries}) was given a set of {pattern_set.entries}-entry "
                             f"patterns; select one with PatternSet.select(w, k=..., entries={self.entries})")
        return project.pattern(w, pattern_set, group=self.group)


@dataclass(frozen=True, eq=False)
class Connectivity(Constraint):
    """Keep the ``keep`` fraction (or count) of 3x3 kernels with the largest L2 norm per layer;
    ``group`` G consecutive output channels keep the same input channels."""
    keep: float = 0.25
    group: int = 1
    needs_3x3 = True

    def __post_init__(self):
        _check_keep(self, self.keep)
        _check_int(self, "group", 1)

    def check_tensor(self, shape, name: str) -> None:
        super().check_tensor(shape, name)
        kernels = -(-shape[0] // self.group) * shape[1]
        _check_count(self, kernels, "kernels (per group of filters)", name)
        if shape[1] == 1 and project._count(self.keep, kernels) < kernels:
            warnings.warn(f"Connectivity on parameter '{name}' {list(shape)}: each filter has one kernel (a "
                          "depthwise conv, or one input channel), so every dropped kernel is a whole output "
                          "channel; leave such layers out of this constraint", UserWarning, stacklevel=2)

    def project(self, w, pattern_set=None):
        return project.connectivity(w, self.keep, group=self.group)


@dataclass(frozen=True, eq=False)
class Unstructured(Constraint):
    """Keep the ``keep`` fraction (or count) of weights with the largest magnitude; ``group`` G
    consecutive output channels keep the same positions (a Gx1 block structure, see
    :func:`project.unstructured`; G=4 is what the sparse 1x1 conv / Linear kernels run fastest)."""
    keep: float = 0.1
    group: int = 1

    def __post_init__(self):
        _check_keep(self, self.keep)
        _check_int(self, "group", 1)

    def check_tensor(self, shape, name: str) -> None:
        super().check_tensor(shape, name)
        if self.group > 1 and len(shape) < 2:
            raise ValueError(f"Unstructured(group={self.group}) needs a tensor with at least 2 dimensions (output "
                             f"channels first), but parameter '{name}' has shape {list(shape)}")
        rows = -(-shape[0] // self.group) if shape else 1
        _check_count(self, rows * math.prod(shape[1:]), "weights" if self.group == 1 else "positions per group",
                     name)

    def project(self, w, pattern_set=None):
        return project.unstructured(w, self.keep, group=self.group)


@dataclass(frozen=True, eq=False)
class Filter(Constraint):
    """Keep the ``keep`` fraction (or count) of output filters (dim 0) with the largest L2 norm.

    Works on the weight tensor's dims: dim 0 is an *input* channel of a ConvTranspose weight
    ``[Cin, Cout / groups, k, k]``."""
    keep: float = 0.5
    min_dim = 2

    def __post_init__(self):
        _check_keep(self, self.keep)

    def check_tensor(self, shape, name: str) -> None:
        super().check_tensor(shape, name)
        _check_count(self, shape[0], "filters", name)

    def project(self, w, pattern_set=None):
        return project.filter(w, self.keep)


@dataclass(frozen=True, eq=False)
class Channel(Constraint):
    """Keep the ``keep`` fraction (or count) of input channels (dim 1) with the largest L2 norm.

    Works on the weight tensor's dims: in a grouped conv (``[Cout, Cin / groups, k, k]``) index j of
    dim 1 is input j of every group (scored over all groups together); in a ConvTranspose weight
    ``[Cin, Cout / groups, k, k]`` dim 1 is an output channel."""
    keep: float = 0.5
    min_dim = 2

    def __post_init__(self):
        _check_keep(self, self.keep)

    def check_tensor(self, shape, name: str) -> None:
        super().check_tensor(shape, name)
        _check_count(self, shape[1], "input channels", name)

    def project(self, w, pattern_set=None):
        return project.channel(w, self.keep)


@dataclass(frozen=True, eq=False)
class Quantize(Constraint):
    """``bits``-bit levels with one per-tensor scale: ``scheme="uniform"`` (0, ±q, ±2q, ...) or
    ``"pow2"`` (0, ±q·2^-j)."""
    bits: int = 8
    scheme: str = "uniform"
    prunes = False

    def __post_init__(self):
        _check_int(self, "bits", 1, 8)
        if self.scheme not in ("uniform", "pow2"):
            raise ValueError(f"Quantize: scheme must be 'uniform' or 'pow2', got {self.scheme!r}")

    def project(self, w, pattern_set=None):
        return self.project_with_scale(w)[0]

    def project_with_scale(self, w):
        """``(projected w, scale)``: the dequantized weights of :func:`project.quantize` (floats on the
        levels, not codes: :func:`torch_patsparse.quant.quantize_params` gives codes) and the scale,
        computed over the nonzeros of ``w`` only: zeros map to level 0 and add nothing to the
        least-squares scale fit, so this is the same projection, but after pattern + connectivity
        pruning (~10% nonzeros) it is ~10x faster."""
        nz = w != 0
        vals = w[nz]
        if vals.numel() == 0:
            return w.clone(), 0.0
        codes, scale = project.quantize_params(vals, self.bits, self.scheme)
        out = torch.zeros_like(w).masked_scatter_(nz, project.dequantize(codes, scale, self.scheme, dtype=w.dtype))
        return out, scale

    def quantize_params(self, w):
        """Deprecated name of :meth:`project_with_scale` (it returns dequantized floats, while
        ``project.quantize_params`` returns codes)."""
        _deprecation.warn("Quantize.quantize_params", "Quantize.project_with_scale")
        return self.project_with_scale(w)


#: Composition order of combined constraints (first applied first).
ORDER = (Pattern, Connectivity, Filter, Channel, Unstructured, Quantize)


def ordered(constraints, name: str = "?") -> list:
    """Validate a constraint list and return it sorted into :data:`ORDER`.

    Raises ``ValueError`` (naming ``name``) for an object that is not a known constraint or for
    two constraints of the same kind, ``TypeError`` for a string or dict in place of the list."""
    if isinstance(constraints, Constraint):
        constraints = [constraints]
    if constraints is None or isinstance(constraints, (str, bytes, dict)):  # (a string: letter by letter)
        raise TypeError(f"constraints for parameter '{name}' must be a list of constraint objects "
                        f"(e.g. [Pattern(k=8), Quantize(bits=4)] from torch_patsparse.constraints), got {constraints!r}")
    out = []
    for c in constraints:
        if isinstance(c, dict):
            raise ValueError(f"constraint {c!r} for parameter '{name}' is a spec: build the object with "
                             "torch_patsparse.constraints.from_spec(spec)")
        if type(c) not in ORDER:
            raise ValueError(f"unknown constraint {c!r} for parameter '{name}' "
                             f"(expected one of {[t.__name__ for t in ORDER]} from torch_patsparse.constraints)")
        if any(type(o) is type(c) for o in out):
            raise ValueError(f"two {type(c).__name__} constraints for parameter '{name}'")
        out.append(c)
    return sorted(out, key=lambda c: ORDER.index(type(c)))


#: The constraint class of each spec ``"type"`` (the class name in lower case).
TYPES = {t.__name__.lower(): t for t in ORDER}


def to_spec(c: Constraint) -> dict:
    """Plain-data spec of a constraint, ``{"type": "pattern", "k": 8, ...}`` (every field): the one
    schema of the CLI config and of optimizer state_dicts (``torch.load(weights_only=True)``-safe).
    :func:`from_spec` reads it back."""
    if not isinstance(c, Constraint):
        raise TypeError(f"to_spec expects a constraint (Pattern, Connectivity, ...), got {type(c).__name__}")
    return {"type": type(c).__name__.lower(), **asdict(c)}


def from_spec(spec) -> Constraint:
    """The constraint a spec describes: ``{"type": "pattern", "k": 8}`` (:func:`to_spec`'s and the
    config's form; omitted fields take their defaults) or ``{"kind": "Pattern", ...}`` (state_dicts
    written before the one schema). A constraint object is returned as is. ``ValueError`` with a
    clear message for anything else (no 'type', an unknown type, bad arguments)."""
    if isinstance(spec, Constraint):
        return spec
    if isinstance(spec, dict) and "type" not in spec and isinstance(spec.get("kind"), str):
        spec = {"type": spec["kind"].lower(), **{k: v for k, v in spec.items() if k != "kind"}}
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"a constraint must be a table with a 'type' key ({', '.join(TYPES)}), got {spec!r}")
    kind = spec["type"]
    if not isinstance(kind, str) or kind not in TYPES:
        raise ValueError(f"unknown constraint type {kind!r} (expected one of {', '.join(TYPES)})")
    try:
        return TYPES[kind](**{k: v for k, v in spec.items() if k != "type"})
    except TypeError as e:
        raise ValueError(f"bad arguments for {kind}: {e}") from None


def to_dict(c: Constraint) -> dict:
    """Deprecated name of :func:`to_spec`."""
    _deprecation.warn("constraints.to_dict", "constraints.to_spec")
    return to_spec(c)


def from_dict(spec) -> Constraint:
    """Deprecated name of :func:`from_spec`."""
    _deprecation.warn("constraints.from_dict", "constraints.from_spec")
    return from_spec(spec)
