"""The :class:`ADMM` optimizer: construction, param groups and the step; the other concerns are
mixed in from their own files (Z-update, fused step, hard prune / retraining, checkpoint)."""
from __future__ import annotations

import collections.abc
import difflib
import inspect
import math
import numbers
import warnings
from typing import Callable

import torch
from torch.optim import Optimizer

from .. import constraints as C
from ..select import param_groups
from ._checkpoint import Checkpoint
from ._fused import FusedStep
from ._retrain import HardPrune
from ._state import _TRAINED_SETS
from ._zupdate import ZUpdate

__all__ = ["ADMM", "METHODS", "PENALTIES"]

#: Constraint methods: ADMM; one-shot projection + masked retraining; gradual (cubic) pruning.
METHODS = ("admm", "oneshot", "gradual")

#: How the W-step applies the penalty: its gradient (added to the loss gradient before the base step)
#: or its proximal operator (a decoupled pull after the base step).
PENALTIES = ("gradient", "proximal")
#: (rho, rho_max) when not given, per penalty (docs/DESIGN.md says what rho means in each)
_DEFAULT_RHO = {"gradient": (1.0, 20.0), "proximal": (0.01, 2.0)}

def _as_number(value, kind, cast):
    """``value`` as ``cast`` (int / float) when it is a ``kind`` number other than a bool (numpy
    scalars included); anything else as it is, for the caller's check to refuse."""
    return cast(value) if isinstance(value, kind) and not isinstance(value, bool) else value


#: The param-group keys ADMM reads itself (besides torch's "params" / "param_names").
_GROUP_KEYS = ("constraints", "names")
# ADMM(...)'s own settings: one for all groups (set after the class, from its signature)
_WIDE_KEYS: frozenset

_CALIB_STEPS = 8  # steps before each Z-update whose gradient norms calibrate rho_eff


class ADMM(ZUpdate, FusedStep, HardPrune, Checkpoint, Optimizer):
    """ADMM wrapper around a base optimizer; see docs/DESIGN.md "ADMM optimizer" for the math and choices.

    Args:
        params: parameters or param groups, as for any optimizer. A group may carry
            ``"constraints"`` (a list of :mod:`torch_patsparse.constraints`); groups without it get
            the plain base step. Parameter names (used by :meth:`residuals` and in errors) come from
            ``(name, param)`` tuples (torch's native ``param_names``), a group's ``"names"`` list,
            or default to ``"group{g}.{j}"``. See also :meth:`from_model`.
        base: the base optimizer class (``torch.optim.SGD``, ``Adam``, ``AdamW``, ...).
        rho: initial penalty; None: 0.01 (proximal: the pull's rate per step) or 1.0 (gradient:
            dimensionless with ``rho_scale="grad"``, absolute with ``"none"``).
        rho_growth: factor applied to rho at every Z-update; None (default): ``rho`` -> ``rho_max``
            over the Z-updates of ``phase_steps`` when given, else 1.3.
        rho_max: upper bound of rho; None: 2 (proximal) or 20 (gradient), at least ``rho``.
        update_every: Z/U update every this many steps.
        rho_scale: gradient penalty only (an error with the proximal one): ``"grad"`` (default, see
            docs/DESIGN.md) or ``"none"``.
        consensus: one ``(Z, U)`` pair per constraint of a group (consensus ADMM) instead of one
            pair for the composed projection (default; see docs/DESIGN.md).
        rescale_dual: rescale ``U`` by ``rho_old / rho_new`` when rho changes (textbook scaled-dual
            ADMM); off by default, as in DESIGN.md and the published ADMM-NN code (measured: see
            docs/DESIGN.md).
        method: ``"admm"`` (default), ``"oneshot"`` or ``"gradual"`` (see docs/DESIGN.md).
        phase_steps: steps of the constraint phase (before :meth:`hard_prune`); required by
            ``"gradual"``, sets the default rho schedule of ``"admm"``.
        balance: residual balancing of rho (mu = 10, tau = 2) with ``U`` rescaled when rho changes.
        penalty: ``"proximal"`` (default) or ``"gradient"``: how the W-step applies the penalty (see
            docs/DESIGN.md). ``"gradient"`` is fused with SGD / Adam into one native pass.
        **base_kwargs: passed to ``base`` (lr, momentum, weight_decay, ...).
    """

    def __init__(self, params, base: type = torch.optim.SGD, rho: float | None = None, rho_growth: float | None = None,
                 rho_max: float | None = None, update_every: int = 200, rho_scale: str | None = None, consensus: bool = False,
                 rescale_dual: bool = False, method: str = "admm", phase_steps: int | None = None,
                 balance: bool = False, penalty: str = "proximal", **base_kwargs):
        if method not in METHODS:
            raise ValueError(f"ADMM: method must be one of {METHODS}, got {method!r}")
        # numpy scalars as Python numbers; a bool is neither (rho=True is refused below)
        phase_steps, update_every = (_as_number(v, numbers.Integral, int) for v in (phase_steps, update_every))
        rho, rho_max, rho_growth = (_as_number(v, numbers.Real, float) for v in (rho, rho_max, rho_growth))
        if phase_steps is not None and (isinstance(phase_steps, bool) or not isinstance(phase_steps, int)
                                        or phase_steps < 1):
            raise ValueError(f"ADMM: phase_steps must be None or an int >= 1, got {phase_steps!r}")
        if penalty not in PENALTIES:
            raise ValueError(f"ADMM: penalty must be one of {PENALTIES}, got {penalty!r}")
        rho = _DEFAULT_RHO[penalty][0] if rho is None else rho
        rho_max = max(_DEFAULT_RHO[penalty][1], rho) if rho_max is None and isinstance(rho, float) else rho_max
        if method == "gradual" and phase_steps is None:
            raise ValueError("ADMM: method='gradual' needs phase_steps (the steps over which keep decays)")
        if not (isinstance(rho, float) and math.isfinite(rho) and rho > 0):
            raise ValueError(f"ADMM: rho must be a positive finite number, got {rho!r}")
        if not (isinstance(rho_max, float) and math.isfinite(rho_max) and rho_max >= rho):
            raise ValueError(f"ADMM: rho_max must be a finite number >= rho, got {rho_max!r}")
        if rho_growth is None:  # geometric rho -> rho_max over the phase's Z-updates, else the classic 1.3
            updates = (phase_steps // update_every) if phase_steps and isinstance(update_every, int) and \
                update_every >= 1 else 0
            rho_growth = (rho_max / rho) ** (1.0 / (updates - 1)) if updates >= 2 else 1.3
        if not (isinstance(rho_growth, float) and math.isfinite(rho_growth) and rho_growth >= 1):
            raise ValueError(f"ADMM: rho_growth must be >= 1, got {rho_growth!r}")
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"ADMM: update_every must be an int >= 1, got {update_every!r}")
        if method == "admm" and phase_steps is not None and update_every > phase_steps:
            warnings.warn(f"ADMM: update_every={update_every} > phase_steps={phase_steps}: no Z/U update happens "
                          "within the ADMM phase (the penalty pulls towards the first projection only)",
                          UserWarning, stacklevel=2)
        if rho_scale is not None and penalty == "proximal":  # a gradient-form setting: never ignore it silently
            raise ValueError("ADMM: rho_scale applies to penalty='gradient' only (the proximal pull is "
                             "relative to the residual already)")
        rho_scale = "grad" if rho_scale is None else rho_scale
        if rho_scale not in ("grad", "none"):
            raise ValueError(f"ADMM: rho_scale must be 'grad' or 'none', got {rho_scale!r}")
        for flag, value in (("consensus", consensus), ("rescale_dual", rescale_dual), ("balance", balance)):
            if not isinstance(value, bool):
                raise ValueError(f"ADMM: {flag} must be True or False, got {value!r}")
        if "constraints" in base_kwargs:  # the base optimizer would reject it with a TypeError about itself
            raise ValueError("ADMM: constraints belong to a param group ({'params': [...], 'constraints': [...]}), "
                             "not to the constructor; ADMM.from_model(model, {selector: constraints}, ...) "
                             "builds the groups from parameter names")
        if not (isinstance(base, type) and issubclass(base, Optimizer)) or issubclass(base, ADMM):
            raise ValueError(f"ADMM: base must be a torch.optim.Optimizer class, got {base!r}")
        closure = inspect.signature(base.step).parameters.get("closure")
        if closure is not None and closure.default is inspect.Parameter.empty:
            raise ValueError(f"ADMM: base {base.__name__} needs a closure at every step (it re-evaluates the loss), "
                             "which the ADMM / masked steps cannot give it; use a gradient-step optimizer "
                             "(SGD, Adam, AdamW, ...)")
        self.rho, self.rho_growth, self.rho_max = float(rho), float(rho_growth), float(rho_max)
        self.update_every, self.rho_scale = update_every, rho_scale
        self.consensus, self.rescale_dual = consensus, rescale_dual
        self.method, self.phase_steps, self.balance = method, phase_steps, balance
        self.penalty = penalty
        self._linked = False
        # The base optimizer builds (and keeps) the group dicts; we adopt the very same dicts and
        # list, and share its state, so param_groups / state are one object for both.
        self.base = base(params, **base_kwargs)
        super().__init__(self.base.param_groups, {**self.base.defaults, "constraints": ()})
        self.base.param_groups = self.param_groups
        self.base.state = self.state
        self._linked = True
        self._admm: dict = {}          # param -> ADMMState or RetrainState (admm/_state.py)
        self._pattern_sets: dict = {}  # group index -> PatternSet
        self._step_count = 0
        # "admm" (ADMM, or one-shot before its prune at the first step), "gradual", then "retrain"
        self._phase = "gradual" if method == "gradual" else "admm"

    @classmethod
    def from_model(cls, model: torch.nn.Module, spec, **kwargs) -> "ADMM":
        """Build an :class:`ADMM` from a model and a constraint spec, with parameter names.

        ``spec`` is a dict (or a list of pairs) ``selector -> constraints`` as for
        :func:`torch_patsparse.select.param_groups`, except that a plain string is a regex here
        (``re.fullmatch`` on the parameter name, e.g. ``r"features\\.\\d+\\.weight"``; the form this
        method always took); a callable ``(name, param) -> bool`` works too. Each parameter goes to
        the first matching entry; the rest form one unconstrained group. ``kwargs`` go to :class:`ADMM`.
        """
        return cls(param_groups(model, spec, plain="regex"), **kwargs)

    def __getstate__(self) -> dict:
        # torch.optim.Optimizer pickles only defaults / state / param_groups; ADMM's phase, Z / U,
        # masks and base optimizer must survive copy.deepcopy and torch.save of the object too.
        # Not what torch drops: hooks, and an LR scheduler's per-instance `step` wrapper (it holds a
        # weakref to this object: a copy would step the original's parameters).
        # The gradient-mask hooks sit on the parameters: the copy registers its own.
        return {k: v for k, v in self.__dict__.items()
                if k not in ("step", "_opt_called", "_grad_hooks", "_unhooked") and not k.startswith("_optimizer_")}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)  # fresh hook dicts, as torch's optimizers after unpickling
        self._hook_masks()
        # The record convert / compressed_training read the trained pattern sets from is per process
        # and keyed by parameter: a copy's parameters are new objects (as after load_state_dict).
        self._record_sets()

    def add_param_group(self, param_group: dict) -> None:
        """As torch's, plus a ``"constraints"`` entry; a group without names joins named groups (as
        :meth:`from_model` builds) under the names ADMM reports it by (``group<i>.<j>``)."""
        if getattr(self, "_phase", None) == "retrain" and param_group.get("constraints"):
            raise ValueError("add_param_group: a group with constraints added after hard_prune() would never be "
                             "pruned; add it before hard_prune() (method='oneshot': before the first step)")
        named = [("param_names" in g) for g in self.param_groups]
        if named and all(named) and "param_names" not in param_group:
            params = param_group["params"]
            params = [params] if isinstance(params, torch.Tensor) else list(params)
            gi = len(self.param_groups)
            param_group = {**param_group, "params": params,
                           "param_names": [f"group{gi}.{j}" for j in range(len(params))]}
        if self._linked:  # after construction: the base appends to the shared list
            self.base.add_param_group(param_group)
            param_group.setdefault("constraints", ())
        else:
            super().add_param_group(param_group)
        try:
            self._check_group(len(self.param_groups) - 1)
        except Exception:  # (ValueError, or TypeError for a constraint that is not one)
            self.param_groups.pop()  # leave the optimizer as it was
            raise

    def _names(self, gi: int) -> list:
        g = self.param_groups[gi]
        names = g.get("param_names") or g.get("names")
        if names is not None:
            names = list(names)
            if len(names) != len(g["params"]):
                raise ValueError(f"ADMM: group {gi} has {len(g['params'])} params but {len(names)} names")
            return [str(n) for n in names]
        return [f"group{gi}.{j}" for j in range(len(g["params"]))]

    def _check_group(self, gi: int) -> None:
        g = self.param_groups[gi]
        # Like torch, a group may carry keys of its own; but a slip of ADMM's own keys ("constraint")
        # would silently train the group unconstrained. Cutoff 0.9: one or two slipped letters, while a
        # user's own "name" (0.89 to "names") still passes.
        for key in g.keys() - self.base.defaults.keys() - {"params", "param_names", *_GROUP_KEYS}:
            if key in _WIDE_KEYS:  # (a base optimizer's own key of that name, e.g. Adadelta's rho, passed above)
                raise ValueError(f"ADMM: param group {gi} sets {key!r}, which is one setting for the whole optimizer "
                                 f"(ADMM would ignore it in a group): pass it to ADMM(..., {key}=...)")
            close = difflib.get_close_matches(str(key).lower(), _GROUP_KEYS, n=1, cutoff=0.9)
            if close:
                raise ValueError(f"ADMM: param group {gi} has the key {key!r}, which ADMM would ignore; "
                                 f"did you mean {close[0]!r}?")
        names = self._names(gi)
        cons = g.get("constraints") or ()
        if isinstance(cons, C.Constraint):
            cons = [cons]
        elif isinstance(cons, collections.abc.Iterator):  # a generator read here would be empty at every step
            cons = g["constraints"] = tuple(cons)
        if cons and not g["params"]:
            raise ValueError(f"ADMM: param group {gi} has constraints but no parameters (a selection that matched "
                             "nothing?): it would train nothing pruned")
        if cons and len({id(p) for p in g["params"]}) != len(g["params"]):
            raise ValueError(f"ADMM: constrained param group {gi} lists a parameter twice; each step would pull it "
                             "twice")
        C.ordered(cons, names[0] if names else f"group{gi}")
        for p, name in zip(g["params"], names):
            for c in cons:
                c.check_tensor(p.shape, name)
            if cons and not p.is_floating_point():
                raise ValueError(f"ADMM: constrained parameter '{name}' must be floating point, got {p.dtype}")
        self.__dict__.setdefault("_given", {})[gi] = frozenset(cons)

    def _check_given(self) -> None:
        """Z / U, masks and pattern sets follow the constraints each group was given: an edit of a
        group's ``"constraints"`` afterwards is refused, not half-applied or ignored."""
        given = self.__dict__.setdefault("_given", {})  # (an optimizer pickled before this check: from now)
        for gi, g in enumerate(self.param_groups):
            cons = g.get("constraints") or ()
            cons = [cons] if isinstance(cons, C.Constraint) else cons
            if frozenset(cons) != given.setdefault(gi, frozenset(cons)):
                raise ValueError(f"ADMM: the constraints of group {gi} changed after they were given "
                                 f"({sorted(map(repr, given[gi]))} -> {sorted(map(repr, cons))}); "
                                 "build a new ADMM for new constraints")

    def _constrained(self):
        """Yield (group index, group, ordered constraints, [(param, name), ...])."""
        self._check_given()
        for gi, g in enumerate(self.param_groups):
            cons = g.get("constraints") or ()
            if cons:
                yield gi, g, C.ordered(cons, f"group{gi}"), list(zip(g["params"], self._names(gi)))

    def _record_sets(self) -> None:
        for gi, g in enumerate(self.param_groups):
            pset = self._pattern_sets.get(gi)
            if pset is not None:
                for p in g["params"]:
                    _TRAINED_SETS[p] = pset

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        self._check_not_released()
        self._check_given()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._hook_unfrozen()
        if self._phase != "admm" or self.method == "oneshot":
            # the masked step's projections would hide a NaN/Inf (ADMM's own steps leave it in W for its Z
            # update to refuse): refuse it before anything changes
            self._check_finite([pair for _, _, _, pairs in self._constrained() for pair in pairs],
                               "a masked step", grads=True)
        if self._phase == "admm" and self.method == "oneshot":
            self.hard_prune()  # one-shot: project at the first step, masked training from then on
        if self._phase == "gradual":
            self._ensure_init()
            if self._step_count % self.update_every == 0:
                self._gradual_update()
        if self._phase != "admm":
            self._retrain_step()
            return loss
        self._ensure_init()
        k = self._step_count
        prox = self.penalty == "proximal"
        calib = self.rho_scale == "grad" and not prox and (k % self.update_every) >= self.update_every - _CALIB_STEPS
        stepped = [] if prox else self._gradient_penalty(calib)  # params a fused kernel stepped in full
        # the base optimizer steps the rest; it skips parameters without a gradient
        hidden = [(p, p.grad) for p in stepped]
        for p in stepped:
            p.grad = None
        try:
            self._base_step()
        finally:
            for p, grad in hidden:
                p.grad = grad
        if prox:  # W = prox(W) = W - a (W - Z + U), after the base step on the loss gradient alone
            for _, _, _, pairs in self._constrained():
                for p, _ in pairs:
                    if p.grad is not None:
                        st = self._admm[p]
                        p.mul_(1.0 - st.rho_eff).add_(st.shift, alpha=-st.rho_eff)
        self._step_count += 1
        if self._step_count % self.update_every == 0:
            self.admm_update()
        return loss

    def _base_step(self) -> None:
        """The wrapped optimizer's update, without torch's step hooks: ADMM.step already ran the global
        step hooks (register_optimizer_step_pre_hook / _post_hook) once for this step."""
        step = type(self.base).step
        if getattr(step, "hooked", False) and hasattr(step, "__wrapped__"):  # Optimizer.profile_hook_step
            step = step.__wrapped__
        step(self.base)

    def pattern_sets(self) -> list:
        """One entry per param group (same order as ``param_groups``): its :class:`PatternSet`, or
        None for groups without a Pattern constraint (or before the first step). The set is selected
        (``PatternSet.select`` over all the group's weights) when Z is initialised, i.e. at the first
        :meth:`step` / :meth:`admm_update` / :meth:`hard_prune`, and then fixed; it is stored in the
        state_dict. After :meth:`hard_prune` this is what ``ps.convert(model, pattern_set=...)`` needs."""
        return [self._pattern_sets.get(gi) for gi in range(len(self.param_groups))]

    def pattern_sets_by_module(self, model: torch.nn.Module) -> dict:
        """``{module name: PatternSet}`` for every module of ``model`` whose ``weight`` this optimizer
        trains under a Pattern constraint: what ``ps.convert(model, pattern_set=...)`` takes."""
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"pattern_sets_by_module takes the model (an nn.Module), got {type(model).__name__}")
        sets = {id(p): pset for g, pset in zip(self.param_groups, self.pattern_sets()) if pset is not None
                for p in g["params"]}
        return {name: sets[id(m.weight)] for name, m in model.named_modules()
                if isinstance(getattr(m, "weight", None), torch.nn.Parameter) and id(m.weight) in sets}

    @property
    def phase(self) -> str:
        """``"admm"`` (methods admm and oneshot) or ``"gradual"`` before :meth:`hard_prune`, ``"retrain"`` after."""
        return self._phase

    def __repr__(self) -> str:
        scale = f", rho_scale={self.rho_scale!r}" if self.penalty == "gradient" else ""  # proximal has none
        return f"ADMM(method={self.method!r}, penalty={self.penalty!r}, base={type(self.base).__name__}, " \
               f"phase={self._phase}, step={self._step_count}, update_every={self.update_every}, rho={self.rho}" \
               f"{scale})\n" + repr(self.base)


_WIDE_KEYS = frozenset(inspect.signature(ADMM.__init__).parameters) - {"self", "params", "base", "base_kwargs"}
