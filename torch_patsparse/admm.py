"""ADMM training under pattern / connectivity / pruning / quantization constraints.

:class:`ADMM` is a :class:`torch.optim.Optimizer` wrapping a base optimizer (SGD, Adam, AdamW, ...);
swap it in for the base optimizer in an unchanged training loop. Three methods (``method=``):
``"admm"`` (default), ``"oneshot"`` (project once, masked retraining) and ``"gradual"`` (cubic
schedule, Zhu & Gupta 2017). Two penalties for the ADMM W-step (``penalty=``): ``"proximal"``
(default, a decoupled pull after the base step) and ``"gradient"`` (ADMM-NN, fused with SGD / Adam
in one native pass). The design reasoning and the measurements behind the defaults: docs/DESIGN.md,
"ADMM optimizer".

    from torch_patsparse import constraints as C
    opt = ps.ADMM([
            {"params": convs3x3, "constraints": [C.Pattern(k=8), C.Connectivity(keep=0.25), C.Quantize(bits=4)]},
            {"params": fc_weights, "constraints": [C.Unstructured(keep=0.05)]},
            {"params": the_rest},                       # plain base-optimizer step
          ], base=torch.optim.SGD, lr=0.05, momentum=0.9, update_every=200)
    ...                                                 # train: loss.backward(); opt.step()
    opt.residuals()                                     # should shrink over the ADMM phase
    opt.hard_prune()                                    # then retrain under fixed masks / levels
    opt.pattern_sets()                                  # PatternSet per group, for ps.convert
"""
from __future__ import annotations

import math
import re
from typing import Callable, Iterable

import torch
from torch.optim import Optimizer
from torch.utils.weak import WeakIdKeyDictionary

from . import _C  # noqa: F401  (registers torch.ops.patsparse.admm_*)
from . import constraints as C
from . import project
from .quant import levels as quant_levels

# The pattern set each constrained weight is trained with, keyed by the Parameter object itself (by
# identity, weakly): ps.convert reads it, so converting stores the trained set without the user wiring it.
_TRAINED_SETS = WeakIdKeyDictionary()


def trained_pattern_set(weight: torch.Tensor):
    """The :class:`PatternSet` an :class:`ADMM` optimizer in this process trains ``weight`` with
    (its group's set, once selected), or None."""
    return _TRAINED_SETS.get(weight)

__all__ = ["ADMM", "METHODS"]

#: Constraint methods: ADMM; one-shot projection + masked retraining; gradual (cubic) pruning.
METHODS = ("admm", "oneshot", "gradual")
_BALANCE_MU, _BALANCE_TAU = 10.0, 2.0  # residual balancing (Boyd et al. 2011, eq. 3.13)

#: How the W-step applies the penalty: its gradient (added to the loss gradient before the base step)
#: or its proximal operator (a decoupled pull after the base step).
PENALTIES = ("gradient", "proximal")
#: (rho, rho_max) when not given, per penalty (docs/DESIGN.md says what rho means in each)
_DEFAULT_RHO = {"gradient": (1.0, 20.0), "proximal": (0.01, 2.0)}

_CALIB_STEPS = 8  # steps before each Z-update whose gradient norms calibrate rho_eff


def _native_ok(*tensors: torch.Tensor) -> bool:
    """True when the fused native step applies: contiguous float32 CPU tensors of one shape."""
    t0 = tensors[0]
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.layout == torch.strided
               and t.is_contiguous() and t.shape == t0.shape for t in tensors)


def _fusable_group(base: Optimizer, g: dict) -> bool:
    """True when a native kernel reproduces ``base``'s update for this group: torch.optim.SGD, Adam
    or AdamW (amsgrad off), float hyper-parameters, not fused / capturable / differentiable."""
    if g.get("fused") or g.get("differentiable") or g.get("capturable") or torch.is_tensor(g.get("lr")):
        return False
    if type(base) is torch.optim.SGD:
        return True
    if type(base) in (torch.optim.Adam, torch.optim.AdamW):
        return not g.get("amsgrad") and not any(torch.is_tensor(b) for b in g["betas"])
    return False


def _shift(u: torch.Tensor, z: torch.Tensor, k: int) -> torch.Tensor:
    """The cached ``U - Z`` of the penalty (consensus: the mean over the k pairs)."""
    return (u - z).mean(0) if k > 1 else u - z


def _units(c, shape) -> int:
    """How many items a pruning constraint's ``keep`` counts in a tensor of ``shape``."""
    if isinstance(c, C.Connectivity):
        return -(-shape[0] // c.group) * shape[1]
    if isinstance(c, C.Filter):
        return shape[0]
    if isinstance(c, C.Channel):
        return shape[1]
    return math.prod(shape)


def _scheduled(c, shape, s: float):
    """``c`` with its keep relaxed towards 1 by the cubic factor ``s`` in [0, 1] (Zhu & Gupta 2017:
    ``keep_t = keep + (1 - keep) * (1 - t / T)^3``); constraints without ``keep`` unchanged."""
    keep = getattr(c, "keep", None)
    if keep is None or s <= 0:
        return c
    import dataclasses
    if isinstance(keep, int):
        n = _units(c, shape)
        return dataclasses.replace(c, keep=min(n, int(round(keep + (n - keep) * s))))
    return dataclasses.replace(c, keep=min(1.0, float(keep) + (1.0 - float(keep)) * s))


def _scalar_dtype() -> torch.dtype:
    """dtype of Adam's ``step`` state (torch's rule: float64 under a float64 default dtype)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class ADMM(Optimizer):
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
        if phase_steps is not None and (isinstance(phase_steps, bool) or not isinstance(phase_steps, int)
                                        or phase_steps < 1):
            raise ValueError(f"ADMM: phase_steps must be None or an int >= 1, got {phase_steps!r}")
        if penalty not in PENALTIES:
            raise ValueError(f"ADMM: penalty must be one of {PENALTIES}, got {penalty!r}")
        rho = _DEFAULT_RHO[penalty][0] if rho is None else rho
        rho_max = max(_DEFAULT_RHO[penalty][1], rho) if rho_max is None and isinstance(rho, (int, float)) \
            else rho_max
        if method == "gradual" and phase_steps is None:
            raise ValueError("ADMM: method='gradual' needs phase_steps (the steps over which keep decays)")
        if rho_growth is None:  # geometric rho -> rho_max over the phase's Z-updates, else the classic 1.3
            updates = (phase_steps // update_every) if phase_steps and isinstance(update_every, int) and \
                update_every >= 1 else 0
            rho_growth = (rho_max / rho) ** (1.0 / max(1, updates - 1)) if updates >= 2 and isinstance(
                rho, (int, float)) and isinstance(rho_max, (int, float)) and 0 < rho <= rho_max else 1.3
        if not (isinstance(rho, (int, float)) and math.isfinite(rho) and rho > 0):
            raise ValueError(f"ADMM: rho must be a positive finite number, got {rho!r}")
        if not (isinstance(rho_growth, (int, float)) and math.isfinite(rho_growth) and rho_growth >= 1):
            raise ValueError(f"ADMM: rho_growth must be >= 1, got {rho_growth!r}")
        if not (isinstance(rho_max, (int, float)) and rho_max >= rho):
            raise ValueError(f"ADMM: rho_max must be >= rho, got {rho_max!r}")
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"ADMM: update_every must be an int >= 1, got {update_every!r}")
        if rho_scale is not None and penalty == "proximal":  # a gradient-form setting: never ignore it silently
            raise ValueError("ADMM: rho_scale applies to penalty='gradient' only (the proximal pull is "
                             "relative to the residual already)")
        rho_scale = "grad" if rho_scale is None else rho_scale
        if rho_scale not in ("grad", "none"):
            raise ValueError(f"ADMM: rho_scale must be 'grad' or 'none', got {rho_scale!r}")
        for flag, value in (("consensus", consensus), ("rescale_dual", rescale_dual), ("balance", balance)):
            if not isinstance(value, bool):
                raise ValueError(f"ADMM: {flag} must be True or False, got {value!r}")
        if not (isinstance(base, type) and issubclass(base, Optimizer)) or issubclass(base, ADMM):
            raise ValueError(f"ADMM: base must be a torch.optim.Optimizer class, got {base!r}")
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
        self._admm: dict = {}          # param -> ADMM state (Z, U, rho, ..., or mask/levels/latent)
        self._pattern_sets: dict = {}  # group index -> PatternSet
        self._step_count = 0
        # "admm" (ADMM, or one-shot before its prune at the first step), "gradual", then "retrain"
        self._phase = "gradual" if method == "gradual" else "admm"

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_model(cls, model: torch.nn.Module, spec, **kwargs) -> "ADMM":
        """Build an :class:`ADMM` from a model and a constraint spec, with parameter names.

        ``spec`` is a dict (or a list of pairs) ``selector -> constraints``; a selector is a regex
        (``re.fullmatch`` on the parameter name, e.g. ``r"features\\.\\d+\\.weight"``) or a callable
        ``(name, param) -> bool``. Each parameter goes to the first matching entry; the rest form
        one unconstrained group. ``kwargs`` go to :class:`ADMM`.
        """
        entries = list(spec.items()) if isinstance(spec, dict) else list(spec)
        groups = [{"params": [], "constraints": list(cons or ())} for _, cons in entries]
        rest = []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            for (sel, _), g in zip(entries, groups):
                hit = sel(name, p) if callable(sel) else re.fullmatch(sel, name) is not None
                if hit:
                    g["params"].append((name, p))
                    break
            else:
                rest.append((name, p))
        groups = [g for g in groups if g["params"]]
        if rest:
            groups.append({"params": rest})
        return cls(groups, **kwargs)

    def add_param_group(self, param_group: dict) -> None:
        if self._linked:  # after construction: the base appends to the shared list
            self.base.add_param_group(param_group)
            param_group.setdefault("constraints", ())
        else:
            super().add_param_group(param_group)
        try:
            self._check_group(len(self.param_groups) - 1)
        except ValueError:
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
        names = self._names(gi)
        cons = g.get("constraints") or ()
        if isinstance(cons, C.Constraint):
            cons = [cons]
        C.ordered(cons, names[0] if names else f"group{gi}")
        for p, name in zip(g["params"], names):
            for c in cons:
                c.check_tensor(p.shape, name)
            if cons and not p.is_floating_point():
                raise ValueError(f"ADMM: constrained parameter '{name}' must be floating point, got {p.dtype}")

    def _constrained(self):
        """Yield (group index, group, ordered constraints, [(param, name), ...])."""
        for gi, g in enumerate(self.param_groups):
            cons = g.get("constraints") or ()
            if cons:
                yield gi, g, C.ordered(cons, f"group{gi}"), list(zip(g["params"], self._names(gi)))

    # ------------------------------------------------------------------ projections
    def _project(self, w: torch.Tensor, cons, pset, prune_only: bool = False) -> torch.Tensor:
        z = w.detach()
        for c in cons:
            if prune_only and not c.prunes:
                continue
            z = c.project(z, pset)
        return z if z is not w else z.clone()

    def _pair_sets(self, cons) -> list:
        """The constraint lists that each get their own (Z, U): the composition, or (consensus) each
        constraint alone."""
        return [[c] for c in cons] if self.consensus and len(cons) > 1 else [cons]

    def _z_step(self, p: torch.Tensor, u: torch.Tensor, cons, pset) -> torch.Tensor:
        """Z = Proj(W + U): one projection, or (consensus) Z[j] = Proj_j(W + U[j]) stacked."""
        sets = self._pair_sets(cons)
        if len(sets) == 1:
            return self._project(p + u, cons, pset)
        return torch.stack([self._project(p + u[j], cs, pset) for j, cs in enumerate(sets)])

    @staticmethod
    def _check_finite(pairs, what: str) -> None:
        for p, name in pairs:
            p = p.detach()  # cheap test first (one reduction); confirm so an overflowing sum isn't an error
            if not bool(torch.isfinite(p.sum())) and not bool(torch.isfinite(p).all()):
                raise ValueError(f"ADMM: parameter '{name}' contains NaN/Inf at {what}")

    def _rho_eff(self, rho: float, scale: float, group, pairs: int = 1) -> float:
        """What a step applies: the proximal pull's fraction per step, ``1 - exp(-rho)`` (rho is the
        pull's rate per step), or the gradient penalty's ``rho * scale`` capped."""
        if self.penalty == "proximal":
            return -math.expm1(-rho)
        return self._cap(rho * scale, group, pairs)

    @staticmethod
    def _cap(rho_eff: float, group, pairs: int = 1) -> float:
        """rho_eff capped so that the whole pull (``pairs`` penalty terms) is at most ``1 / lr``."""
        lr = group.get("lr")
        if lr is not None:
            lr = float(lr)
            if lr > 0:
                rho_eff = min(rho_eff, 1.0 / (lr * pairs))
        return rho_eff

    def _record_sets(self) -> None:
        for gi, g in enumerate(self.param_groups):
            pset = self._pattern_sets.get(gi)
            if pset is not None:
                for p in g["params"]:
                    _TRAINED_SETS[p] = pset

    def _ensure_init(self) -> None:
        """Select pattern sets; ADMM: Z = Proj(W), U = 0 for constrained params without state;
        gradual: empty masks (the first mask update sets them); one-shot: nothing more."""
        if self._phase == "retrain":
            return
        from .patterns import PatternSet
        for gi, g, cons, pairs in self._constrained():
            todo = [(p, n) for p, n in pairs if p not in self._admm]
            if not todo or (self.method == "oneshot" and gi in self._pattern_sets):
                continue
            self._check_finite(pairs, "the ADMM initialisation")
            if gi not in self._pattern_sets:
                pat = next((c for c in cons if isinstance(c, C.Pattern)), None)
                if pat is not None:
                    self._pattern_sets[gi] = PatternSet.select([p.detach() for p, _ in pairs], k=pat.k,
                                                               entries=pat.entries, keep_center=pat.keep_center)
            pset = self._pattern_sets.get(gi)
            self._record_sets()
            if self.method != "admm":
                if self._phase == "gradual":
                    for p, _ in todo:
                        self._admm[p] = {"mask": None, "levels": None, "latent": None}
                continue
            with torch.no_grad():
                k = len(self._pair_sets(cons))
                for p, _ in todo:
                    u = torch.zeros((k, *p.shape) if k > 1 else p.shape, dtype=p.dtype, device=p.device)
                    z = self._z_step(p, u, cons, pset)
                    fixed = self.rho_scale == "none" or self.penalty == "proximal"
                    self._admm[p] = {"Z": z, "U": u, "C": _shift(u, z, k), "k": k, "rho": self.rho,
                                     "scale": 1.0 if fixed else None,
                                     "rho_eff": self._rho_eff(self.rho, 1.0, g, k) if fixed else 0.0,
                                     "gsum": torch.zeros((), dtype=torch.float64, device=p.device),
                                     "gcnt": 0}

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
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
        stepped = []  # params whose whole base step was done by a fused kernel
        for gi, g, cons, pairs in () if prox else self._constrained():
            fusable = _fusable_group(self.base, g)
            for p, _ in pairs:
                grad = p.grad
                if grad is None:
                    continue
                st = self._admm[p]
                if st["scale"] is None:  # first step with a gradient: calibrate from it
                    wn = float(p.norm())
                    st["scale"] = float(grad.norm()) / wn if wn > 0 else 0.0
                    st["rho_eff"] = self._cap(st["rho"] * st["scale"], g, st["k"])
                elif calib:
                    st["gsum"] += grad.norm().double()
                    st["gcnt"] += 1
                r = st["rho_eff"] * st["k"]  # sum_j rho (W - Z_j + U_j) = k rho (W + mean_j (U_j - Z_j))
                if not r:
                    continue
                if g.get("maximize"):  # the base negates the whole gradient: the penalty must still descend
                    r = -r
                if not _native_ok(p, grad, st["C"]):
                    grad.add_(p, alpha=r)
                    grad.add_(st["C"], alpha=r)
                elif fusable:
                    self._fused_step(p, grad, st["C"], r, g)
                    stepped.append(p)
                else:
                    torch.ops.patsparse.admm_penalty_(grad, p, st["C"], r)
        # the base optimizer steps the rest; it skips parameters without a gradient
        hidden = [(p, p.grad) for p in stepped]
        for p in stepped:
            p.grad = None
        try:
            self.base.step()
        finally:
            for p, grad in hidden:
                p.grad = grad
        if prox:  # W = prox(W) = W - a (W - Z + U), after the base step on the loss gradient alone
            for _, _, _, pairs in self._constrained():
                for p, _ in pairs:
                    if p.grad is not None:
                        a = self._admm[p]["rho_eff"]
                        p.mul_(1.0 - a).add_(self._admm[p]["C"], alpha=-a)
        self._step_count += 1
        if self._step_count % self.update_every == 0:
            self.admm_update()
        return loss

    def _fused_step(self, p: torch.Tensor, grad: torch.Tensor, shift: torch.Tensor, r: float, g: dict) -> None:
        """The base optimizer's step (SGD, Adam or AdamW) on ``grad + r * (p + shift)`` in one native
        pass, its state kept in ``self.state[p]`` exactly where and as the base optimizer keeps it."""
        state = self.state[p]
        lr = float(g["lr"])
        if isinstance(self.base, torch.optim.SGD):
            momentum = float(g["momentum"])
            buf, first = None, False
            if momentum != 0:
                buf = state.get("momentum_buffer")
                first = buf is None
                if first:
                    buf = state["momentum_buffer"] = torch.empty_like(p, memory_format=torch.contiguous_format)
            torch.ops.patsparse.admm_sgd_(p, grad, shift, buf, r, lr, momentum, float(g["dampening"]),
                                          float(g["weight_decay"]), bool(g["nesterov"]), bool(g["maximize"]), first)
            return
        if len(state) == 0:  # as torch.optim.Adam._init_group
            state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        beta1, beta2 = (float(b) for b in g["betas"])
        t = float(state["step"])
        decoupled = g.get("decoupled_weight_decay", isinstance(self.base, torch.optim.AdamW))
        torch.ops.patsparse.admm_adam_(p, grad, shift, state["exp_avg"], state["exp_avg_sq"], r, lr, beta1, beta2,
                                       float(g["eps"]), float(g["weight_decay"]), bool(decoupled),
                                       bool(g["maximize"]), -(lr / (1 - beta1 ** t)), (1 - beta2 ** t) ** 0.5)

    @torch.no_grad()
    def admm_update(self) -> None:
        """One Z/U update now: ``Z = Proj(W + U)``, ``U += W - Z``, ``rho *= rho_growth`` (capped)."""
        if self.method != "admm":
            raise RuntimeError(f"ADMM.admm_update: only for method='admm' (this optimizer: {self.method!r})")
        if self._phase != "admm":
            raise RuntimeError("ADMM.admm_update: called after hard_prune()")
        self._ensure_init()
        groups = list(self._constrained())
        for _, _, _, pairs in groups:  # validate everything before changing anything
            self._check_finite(pairs, "a Z update")
        for gi, g, cons, pairs in groups:
            pset = self._pattern_sets.get(gi)
            for p, _ in pairs:
                st = self._admm[p]
                z = self._z_step(p, st["U"], cons, pset)
                # Boyd et al. 3.3: primal r = ||W - Z||, dual s = rho ||Z - Z_old||; relative to ||W|| (rho is
                # dimensionless here, see docs/DESIGN.md), for consensus the largest over the pairs
                wn = float(p.norm())
                k = st["k"]
                r = float((p - z).reshape(k, -1).norm(dim=1).max())
                dz = float((z - st["Z"]).reshape(k, -1).norm(dim=1).max())
                st["primal"] = r / wn if wn > 0 else 0.0
                st["dual"] = st["rho"] * dz / wn if wn > 0 else 0.0
                st["U"].add_(p - z)
                st["Z"] = z
                old_rho = st["rho"]
                rho = old_rho * self.rho_growth
                if self.balance:  # residual balancing (3.4.1): keep r and s within a factor mu
                    if st["primal"] > _BALANCE_MU * st["dual"]:
                        rho *= _BALANCE_TAU
                    elif st["dual"] > _BALANCE_MU * st["primal"]:
                        rho /= _BALANCE_TAU
                st["rho"] = min(rho, self.rho_max)
                old_eff = st["rho_eff"]
                if self.rho_scale == "grad" and self.penalty == "gradient":
                    if st["gcnt"] > 0:
                        wn = float(p.norm())
                        st["scale"] = float(st["gsum"]) / st["gcnt"] / wn if wn > 0 else 0.0
                        st["gsum"].zero_()
                        st["gcnt"] = 0
                    scale = st["scale"] if st["scale"] is not None else 0.0
                else:
                    scale = 1.0
                st["rho_eff"] = self._rho_eff(st["rho"], scale, g, st["k"])
                if self.rescale_dual and self.penalty == "gradient" and old_eff > 0 and st["rho_eff"] > 0:
                    st["U"].mul_(old_eff / st["rho_eff"])  # keep rho * U
                elif self.balance or (self.rescale_dual and self.penalty == "proximal"):  # rho changed (schedule, balancing): keep rho * U; the gradient
                    st["U"].mul_(old_rho / st["rho"])  # calibration is a preconditioner, its noise not fed into U
                st["C"] = _shift(st["U"], z, st["k"])

    # ------------------------------------------------------------------ hard prune / retrain
    @torch.no_grad()
    def hard_prune(self) -> None:
        """``W = Proj(W)`` in place; fix masks and quantization levels; retrain from now on."""
        if self._phase == "retrain":
            return
        self._ensure_init()
        groups = list(self._constrained())
        for _, _, _, pairs in groups:
            self._check_finite(pairs, "hard_prune")
        new = {}
        for gi, g, cons, pairs in groups:
            pset = self._pattern_sets.get(gi)
            for p, _ in pairs:
                final, mask, quant, scale = self._prune_quantize(p, cons, pset)
                st = {"mask": mask, "levels": None, "latent": None}
                if quant is not None:
                    top = quant_levels(quant.bits)  # codes span -top..top
                    all_codes = torch.arange(-top, top + 1, device=p.device)
                    st["levels"] = project.dequantize(all_codes, scale, quant.scheme, dtype=p.dtype).unique()
                    st["latent"] = final.clone()
                new[p] = (final, st)
        for p, (final, st) in new.items():
            self._apply(p, final, st["mask"])
        self._admm = {p: st for p, (_, st) in new.items()}
        self._phase = "retrain"

    def _prune_quantize(self, p, cons, pset):
        """``(Proj(W), pruning mask or None, Quantize constraint or None, scale)``; the mask holds the
        zeros of the pruning part only (a weight that rounds to level 0 is not pruned)."""
        pruned = self._project(p, cons, pset, prune_only=True)
        mask = (pruned != 0) if any(c.prunes for c in cons) else None
        quant = next((c for c in cons if isinstance(c, C.Quantize)), None)
        if quant is None:
            return pruned, mask, None, None
        final, scale = quant.project_with_scale(pruned)
        return final, mask, quant, scale

    def _apply(self, p, value, mask) -> None:
        """``W = value``; gradient and optimizer state zeroed where ``mask`` is False."""
        p.copy_(value)
        if mask is not None:
            if p.grad is not None:
                p.grad.mul_(mask)
            for v in self.state[p].values():
                if torch.is_tensor(v) and v.shape == p.shape:
                    v.mul_(mask)

    @torch.no_grad()
    def _gradual_update(self) -> None:
        """Gradual pruning's mask update: ``W = Proj_t(W)`` where ``Proj_t`` is the composed pruning
        projection with every keep relaxed by the cubic schedule (patterns at their target from the
        first update; quantization only at :meth:`hard_prune`); pruned weights stay pruned (masked
        steps), so keep only ever shrinks."""
        groups = list(self._constrained())
        for _, _, _, pairs in groups:
            self._check_finite(pairs, "a gradual mask update")
        s = (1.0 - min(1.0, self._step_count / self.phase_steps)) ** 3
        for gi, g, cons, pairs in groups:
            pset = self._pattern_sets.get(gi)
            for p, _ in pairs:
                # quantization waits for hard_prune: snapping to the levels at every mask update (tried
                # first) kept the weights from recovering between updates at 2 bits (BENCHMARKS.md)
                sched = [_scheduled(c, p.shape, s) for c in cons if not isinstance(c, C.Quantize)]
                final, mask, _, _ = self._prune_quantize(p, sched, pset)
                self._apply(p, final, mask)
                self._admm[p]["mask"] = mask

    @staticmethod
    def _to_levels(w: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        if levels.numel() == 1:
            return levels.expand_as(w).clone()
        mids = (levels[1:] + levels[:-1]) * 0.5
        return levels[torch.bucketize(w, mids)]

    def _retrain_step(self) -> None:
        items = [(p, self._admm[p]) for g in self.param_groups for p in g["params"] if p in self._admm]
        for p, st in items:
            if st["mask"] is not None and p.grad is not None:
                p.grad.mul_(st["mask"])
            if st["latent"] is not None:
                p.copy_(st["latent"])
        self.base.step()
        self._step_count += 1
        for p, st in items:
            if st["mask"] is not None:
                p.mul_(st["mask"])
            if st["latent"] is not None:
                st["latent"].copy_(p)
                p.copy_(self._to_levels(p, st["levels"]))

    # ------------------------------------------------------------------ inspection
    @torch.no_grad()
    def residuals(self) -> dict:
        """``{name: ||W - Z|| / ||W||}`` for every constrained parameter (after :meth:`hard_prune`:
        the distance to the fixed masks/levels, i.e. 0 unless the weights were changed by hand)."""
        self._ensure_init()
        out = {}
        for gi, g, cons, pairs in self._constrained():
            for p, name in pairs:
                st = self._admm.get(p)
                if st is None or self._phase == "gradual":  # what a hard prune now would change
                    diff = (p - self._project(p, cons, self._pattern_sets.get(gi))).reshape(1, -1)
                elif self._phase == "admm":  # consensus: the largest residual over the constraints
                    diff = (p - st["Z"]).reshape(st["k"], -1)
                else:
                    z = p * st["mask"] if st["mask"] is not None else p
                    if st["levels"] is not None:
                        z = self._to_levels(z, st["levels"])
                    diff = (p - z).reshape(1, -1)
                wn = float(p.norm())
                dn = float(diff.norm(dim=1).max())
                out[name] = dn / wn if wn > 0 else (0.0 if dn == 0 else math.inf)
        return out

    def dual_residuals(self) -> dict:
        """``{name: rho * ||Z - Z_old|| / ||W||}`` at the last Z-update (Boyd et al. 3.3, relative; 0
        before the first): with :meth:`residuals` (the primal one) both must shrink for ADMM to have
        converged. Empty unless ``method="admm"`` and in the ADMM phase."""
        if self._phase != "admm" or self.method != "admm":
            return {}
        self._ensure_init()
        return {name: self._admm[p].get("dual", 0.0) for _, _, _, pairs in self._constrained() for p, name in pairs}

    def pattern_sets(self) -> list:
        """One entry per param group (same order as ``param_groups``): its :class:`PatternSet`, or
        None for groups without a Pattern constraint (or before the first step). The set is selected
        (``PatternSet.select`` over all the group's weights) when Z is initialised, i.e. at the first
        :meth:`step` / :meth:`admm_update` / :meth:`residuals`, and then fixed; it is stored in the
        state_dict. After :meth:`hard_prune` this is what ``ps.convert(model, pattern_set=...)`` needs."""
        return [self._pattern_sets.get(gi) for gi in range(len(self.param_groups))]

    def masks(self) -> dict:
        """``{name: bool mask}`` of the pruned tensors after :meth:`hard_prune` (else empty)."""
        if self._phase != "retrain":
            return {}
        return {name: self._admm[p]["mask"] for _, _, _, pairs in self._constrained() for p, name in pairs
                if self._admm[p]["mask"] is not None}

    def rho_eff(self) -> dict:
        """``{name: effective rho}`` currently applied to each constrained tensor's penalty."""
        return {name: self._admm[p]["rho_eff"] for _, _, _, pairs in self._constrained() for p, name in pairs
                if p in self._admm and "rho_eff" in self._admm[p]}

    @property
    def phase(self) -> str:
        """``"admm"`` before :meth:`hard_prune`, ``"retrain"`` after."""
        return self._phase

    # ------------------------------------------------------------------ (de)serialisation
    _TENSORS = ("Z", "U", "mask", "levels", "latent", "gsum")
    _SCALARS = ("rho", "scale", "rho_eff", "gcnt", "k", "primal", "dual")

    def state_dict(self) -> dict:
        sd = super().state_dict()
        for g in sd["param_groups"]:  # plain data, so torch.load(weights_only=True) can read it
            if "constraints" in g:
                g["constraints"] = [C.to_spec(c) for c in C.ordered(g["constraints"])]
        params = [p for g in self.param_groups for p in g["params"]]
        per = {}
        for i, p in enumerate(params):
            st = self._admm.get(p)
            if st is None:
                continue
            per[i] = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in st.items()
                      if k in self._TENSORS + self._SCALARS}
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

    def load_state_dict(self, state_dict: dict) -> None:
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
                                 f"the state_dict's has {list(s)} (state_dict of another model?)")
        from .patterns import PatternSet
        new_admm = {}
        for i, st in a["params"].items():
            p = params[int(i)]
            new_admm[p] = {k: (v.to(p.device).clone() if torch.is_tensor(v) else v) for k, v in st.items()}
            if a["phase"] == "admm" and "U" in new_admm[p]:
                k = new_admm[p].setdefault("k", 1)
                new_admm[p]["C"] = _shift(new_admm[p]["U"], new_admm[p]["Z"], k)
        new_ps = {int(gi): PatternSet.from_tensor(t) for gi, t in a["pattern_sets"].items()}
        rest = {k: v for k, v in state_dict.items() if k != "admm"}
        rest["param_groups"] = saved_groups
        super().load_state_dict(rest)   # replaces the group dicts and state: relink the base
        self.base.param_groups = self.param_groups
        self.base.state = self.state
        self._admm, self._pattern_sets = new_admm, new_ps
        self._record_sets()
        self._phase, self._step_count = a["phase"], int(a["step"])
        h = a["hyper"]
        self.rho, self.rho_growth, self.rho_max = h["rho"], h["rho_growth"], h["rho_max"]
        self.update_every, self.rho_scale = h["update_every"], h["rho_scale"]
        self.consensus = bool(h.get("consensus", False))
        self.rescale_dual = bool(h.get("rescale_dual", False))
        self.method, self.phase_steps = h.get("method", "admm"), h.get("phase_steps")
        self.balance = bool(h.get("balance", False))
        self.penalty = h.get("penalty", "gradient")

    def __repr__(self) -> str:
        return f"ADMM(method={self.method!r}, base={type(self.base).__name__}, phase={self._phase}, step={self._step_count}, " \
               f"update_every={self.update_every}, rho={self.rho}, rho_scale={self.rho_scale!r})\n" \
               + repr(self.base)
