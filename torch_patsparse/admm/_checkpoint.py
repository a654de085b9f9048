"""(De)serialisation of :class:`ADMM`: everything needed to resume exactly, as plain data
(``torch.load(weights_only=True)`` reads it); older state_dicts load."""
from __future__ import annotations

import warnings

from .. import constraints as C
from ..patterns import PatternSet
from ._state import from_saved, outside_inference_mode, to_saved


class Checkpoint:
    """``state_dict`` / ``load_state_dict`` of :class:`ADMM`."""

    def state_dict(self) -> dict:
        sd = super().state_dict()
        for g in sd["param_groups"]:  # plain data, so torch.load(weights_only=True) can read it
            if "constraints" in g:
                g["constraints"] = [C.to_spec(c) for c in C.ordered(g["constraints"])]
        params = [p for g in self.param_groups for p in g["params"]]
        per = {i: to_saved(self._admm[p]) for i, p in enumerate(params) if p in self._admm}
        sd["admm"] = {
            "version": 1, "phase": self._phase, "step": self._step_count,
            "hyper": {"rho": self.rho, "rho_growth": self.rho_growth, "rho_max": self.rho_max,
                      "update_every": self.update_every, "rho_scale": self.rho_scale,
                      "consensus": self.consensus, "rescale_dual": self.rescale_dual,
                      "method": self.method, "phase_steps": self.phase_steps, "balance": self.balance,
                      "penalty": self.penalty},
            "shapes": [tuple(p.shape) for p in params],
            "names": [n for gi in range(len(self.param_groups)) for n in self._names(gi)],
            "params": per,
            "pattern_sets": {gi: ps.to_tensor().clone() for gi, ps in self._pattern_sets.items()},
        }
        return sd

    @outside_inference_mode
    def load_state_dict(self, state_dict: dict) -> None:
        """Resumes exactly where ``state_dict()`` was taken: phase, step, Z / U, masks, pattern sets,
        the base optimizer's state, and (as torch's optimizers do for ``lr``) the saved group
        hyper-parameters and ADMM settings (``method``, ``rho``, ``update_every``, ...), which replace
        this optimizer's; a ``UserWarning`` names the settings that differed. The param groups'
        sizes, shapes and constraints must match (``ValueError`` otherwise)."""
        a = state_dict.get("admm") if isinstance(state_dict, dict) else None
        if a is None:
            raise ValueError("ADMM.load_state_dict: not an ADMM state_dict (no 'admm' entry)")
        saved_groups = state_dict.get("param_groups", [])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"ADMM.load_state_dict: state_dict has {len(saved_groups)} param groups, "
                             f"this optimizer has {len(self.param_groups)}")
        saved_groups = [{**sg, "constraints": [C.from_spec(c) for c in sg.get("constraints") or ()]}
                        for sg in saved_groups]
        params, names = [], []
        for gi, (g, sg) in enumerate(zip(self.param_groups, saved_groups)):
            if len(g["params"]) != len(sg["params"]):
                raise ValueError(f"ADMM.load_state_dict: group {gi} has {len(g['params'])} params, "
                                 f"the state_dict's has {len(sg['params'])}")
            mine = C.ordered(g.get("constraints") or (), f"group{gi}")
            theirs = C.ordered(sg.get("constraints") or (), f"group{gi}")
            if mine != theirs:
                raise ValueError(f"ADMM.load_state_dict: group {gi} constraints differ: {mine} vs saved {theirs}")
            params += g["params"]
            names += self._names(gi)
        shapes = a["shapes"]
        if len(shapes) != len(params):
            raise ValueError("ADMM.load_state_dict: parameter count differs from the state_dict's")
        for p, n, s in zip(params, names, shapes):
            if tuple(p.shape) != tuple(s):
                raise ValueError(f"ADMM.load_state_dict: parameter '{n}' has shape {list(p.shape)}, "
                                 f"the state_dict's has {list(s)} (state_dict of another model, or one saved inside "
                                 "ps.compressed_training, whose layers hold compressed values: save it outside the block)")
        phase, step, h = _checked_header(a)  # everything is checked before anything is replaced
        new_admm = {params[int(i)]: from_saved(st, phase, params[int(i)].device, names[int(i)], params[int(i)].shape)
                    for i, st in a["params"].items()}
        new_ps = {int(gi): PatternSet.from_tensor(t) for gi, t in a["pattern_sets"].items()}
        rest = {k: v for k, v in state_dict.items() if k != "admm"}
        rest["param_groups"] = saved_groups
        super().load_state_dict(rest)   # replaces the group dicts and state: relink the base
        self.base.param_groups = self.param_groups
        self.base.state = self.state
        self._admm, self._pattern_sets = new_admm, new_ps
        self._record_sets()
        self._phase, self._step_count = phase, step
        self._hook_masks()
        changed = [f"{k} {getattr(self, k)!r} -> {v!r}" for k, v in h.items() if getattr(self, k, v) != v]
        if changed:
            warnings.warn("ADMM.load_state_dict: the saved settings replace this optimizer's: " + ", ".join(changed),
                          UserWarning, stacklevel=2)
        self.rho, self.rho_growth, self.rho_max = h["rho"], h["rho_growth"], h["rho_max"]
        self.update_every, self.rho_scale = h["update_every"], h["rho_scale"]
        self.consensus, self.rescale_dual = h["consensus"], h["rescale_dual"]
        self.method, self.phase_steps = h["method"], h["phase_steps"]
        self.balance, self.penalty = h["balance"], h["penalty"]


def _checked_header(a: dict):
    """(phase, step, settings) of a state_dict's ``admm`` entry, ValueError when one does not fit
    (older state_dicts lack the later settings: their defaults then)."""
    phase = a.get("phase")
    if phase not in ("admm", "gradual", "retrain"):
        raise ValueError(f"ADMM.load_state_dict: phase must be 'admm', 'gradual' or 'retrain', got {phase!r}")
    step = a.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"ADMM.load_state_dict: step must be an int >= 0, got {step!r}")
    h = a.get("hyper")
    missing = [k for k in ("rho", "rho_growth", "rho_max", "update_every", "rho_scale")
               if not isinstance(h, dict) or k not in h]
    if missing:
        raise ValueError(f"ADMM.load_state_dict: the 'hyper' entry lacks {missing}")
    if isinstance(h["update_every"], bool) or not isinstance(h["update_every"], int) or h["update_every"] < 1:
        raise ValueError(f"ADMM.load_state_dict: update_every must be an int >= 1, got {h['update_every']!r}")
    h = {**h, "consensus": bool(h.get("consensus", False)), "rescale_dual": bool(h.get("rescale_dual", False)),
         "method": h.get("method", "admm"), "phase_steps": h.get("phase_steps"),
         "balance": bool(h.get("balance", False)), "penalty": h.get("penalty", "gradient")}
    return phase, step, h
