"""Per-parameter ADMM state and the trained pattern sets.

``ADMM._admm`` maps each constrained Parameter to a dict whose keys depend on the phase:

* ``"admm"`` phase (method ``"admm"``): ``Z``, ``U`` (stacked ``[k, *W.shape]`` under consensus),
  ``C`` (the cached ``U - Z`` of the penalty, never saved: rebuilt on load), ``k`` (number of
  (Z, U) pairs), ``rho``, ``rho_eff``, ``scale`` (gradient calibration, None until the first
  gradient), ``gsum`` / ``gcnt`` (calibration sums), ``primal`` / ``dual`` (last residuals).
* ``"gradual"`` and ``"retrain"`` phases: ``mask`` (bool or None), ``levels`` (quantization levels
  or None), ``latent`` (straight-through full-precision copy or None).
"""
from __future__ import annotations

import torch
from torch.utils.weak import WeakIdKeyDictionary

# The pattern set each constrained weight is trained with, keyed by the Parameter object itself (by
# identity, weakly): ps.convert reads it, so converting stores the trained set without the user wiring it.
_TRAINED_SETS = WeakIdKeyDictionary()

#: the state entries a state_dict holds (``C`` is derived from ``U`` and ``Z``)
TENSOR_KEYS = ("Z", "U", "mask", "levels", "latent", "gsum")
SCALAR_KEYS = ("rho", "scale", "rho_eff", "gcnt", "k", "primal", "dual")


def trained_pattern_set(weight: torch.Tensor):
    """The :class:`PatternSet` an :class:`ADMM` optimizer in this process trains ``weight`` with
    (its group's set, once selected), or None."""
    return _TRAINED_SETS.get(weight)


def _shift(u: torch.Tensor, z: torch.Tensor, k: int) -> torch.Tensor:
    """The cached ``U - Z`` of the penalty (consensus: the mean over the k pairs)."""
    return (u - z).mean(0) if k > 1 else u - z
