"""Per-parameter ADMM state, one dataclass per phase, and the trained pattern sets.

``ADMM._admm`` maps each constrained Parameter to its state: an :class:`ADMMState` in the ``"admm"``
phase of method ``"admm"``, a :class:`RetrainState` in the ``"gradual"`` and ``"retrain"`` phases.
It is kept beside ``Optimizer.state`` (the base optimizer's own per-parameter dicts, which
torch.optim saves and loads itself) so that the base optimizer never sees it. A state_dict holds
each state as the plain dict of :func:`to_saved` (the keys the dict-based state had).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch.utils.weak import WeakIdKeyDictionary

# Decorates the methods that create optimizer state: made under torch.inference_mode() it would be
# inference tensors, which no later (training) step may update in place.
outside_inference_mode = torch.inference_mode(False)

# The pattern set each constrained weight is trained with, keyed by the Parameter object itself (by
# identity, weakly): ps.convert reads it, so converting stores the trained set without the user wiring it.
_TRAINED_SETS = WeakIdKeyDictionary()


def trained_pattern_set(weight: torch.Tensor):
    """The :class:`PatternSet` an :class:`ADMM` optimizer in this process trains ``weight`` with
    (its group's set, once selected), or None."""
    return _TRAINED_SETS.get(weight)


@dataclass(eq=False)
class ADMMState:
    """A constrained tensor W during ADMM: ``Z = Proj(W + U)``, the scaled dual ``U`` and rho.

    Under consensus ``Z`` and ``U`` are stacked ``[k, *W.shape]`` (one pair per constraint)."""
    Z: torch.Tensor
    U: torch.Tensor
    k: int                  # number of (Z, U) pairs
    rho: float
    scale: Optional[float]  # gradient calibration of the gradient penalty; None until the first gradient
    rho_eff: float          # what a step applies (see ZUpdate._rho_eff)
    gsum: torch.Tensor      # float64 sum of gradient norms over the calibration window
    gcnt: int = 0           # and their count
    primal: Optional[float] = None  # relative residuals at the last Z-update (None before the first)
    dual: Optional[float] = None
    shift: torch.Tensor = field(init=False, repr=False)  # U - Z, what the penalty adds; derived, never saved

    def __post_init__(self):
        self.update_shift()

    def update_shift(self) -> None:
        """Recompute :attr:`shift` from ``U`` and ``Z`` (consensus: the mean over the k pairs)."""
        self.shift = (self.U - self.Z).mean(0) if self.k > 1 else self.U - self.Z


@dataclass(eq=False)
class RetrainState:
    """A constrained tensor under fixed masks / levels (gradual pruning, retraining after the prune)."""
    mask: Optional[torch.Tensor] = None    # bool, False where pruned; None: nothing pruned
    levels: Optional[torch.Tensor] = None  # sorted quantization levels; None: not quantized
    latent: Optional[torch.Tensor] = None  # full-precision copy trained straight-through (with levels)


# The entries of each state in a state_dict, in their order there (the dict-based state's keys).
_SAVED = {ADMMState: ("Z", "U", "k", "rho", "scale", "rho_eff", "gsum", "gcnt", "primal", "dual"),
          RetrainState: ("mask", "levels", "latent")}
_OPTIONAL = {"k": 1, "primal": None, "dual": None}  # absent in older state_dicts / before the first Z-update


def to_saved(st) -> dict:
    """``st`` as the plain dict a state_dict holds (tensors cloned)."""
    out = {}
    for key in _SAVED[type(st)]:
        v = getattr(st, key)
        if v is None and key in ("primal", "dual"):  # never written before the first Z-update
            continue
        out[key] = v.clone() if torch.is_tensor(v) else v
    return out


def from_saved(d: dict, phase: str, device: torch.device, name: str, shape):
    """The state a state_dict's entry ``d`` describes for a parameter of ``shape`` (tensors cloned onto
    ``device``); ValueError naming the entry when one does not fit (a one-element mask would
    broadcast: the layer silently unpruned)."""
    cls = ADMMState if phase == "admm" else RetrainState
    keys = _SAVED[cls]
    bad = sorted(set(d) - set(keys)) or [k for k in keys if k not in d and k not in _OPTIONAL]
    if bad:
        raise ValueError(f"ADMM.load_state_dict: the state of parameter '{name}' (phase {phase!r}) "
                         f"{'has unknown' if bad[0] in d else 'lacks the'} entries {bad}")
    k = d.get("k", 1)
    want = {"mask": tuple(shape), "latent": tuple(shape), "Z": (k, *shape) if k != 1 else tuple(shape)}
    want["U"] = want["Z"]
    for key, t in d.items():
        if key not in want and key != "levels" or t is None:
            continue
        ok = torch.is_tensor(t) and (t.dim() == 1 if key == "levels" else tuple(t.shape) == want[key])
        if ok and key == "mask":
            ok = t.dtype == torch.bool
        if not ok:
            got = f"{t.dtype} {list(t.shape)}" if torch.is_tensor(t) else type(t).__name__
            need = "a 1-D tensor" if key == "levels" else f"{'a bool' if key == 'mask' else 'a'} tensor {list(want[key])}"
            raise ValueError(f"ADMM.load_state_dict: '{key}' of parameter '{name}' must be {need}, got {got}")
    return cls(**{k: (d[k].to(device).clone() if torch.is_tensor(d[k]) else d[k]) if k in d else _OPTIONAL[k]
                  for k in keys})


def map_tensors(st, fn: Callable[[torch.Tensor], torch.Tensor]):
    """A copy of ``st`` with ``fn`` applied to each of its saved tensors."""
    return dataclasses.replace(st, **{k: fn(v) for k in _SAVED[type(st)]
                                      if torch.is_tensor(v := getattr(st, k))})
