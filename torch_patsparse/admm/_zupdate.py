"""ADMM's projections and Z / U update: initialisation, ``Z = Proj(W + U)``, ``U += W - Z``, the
rho schedule with residual balancing, and the residuals (mixed into :class:`ADMM`)."""
from __future__ import annotations

import math
from typing import Optional

import torch

from .. import constraints as C
from ..patterns import PatternSet
from ._state import ADMMState, RetrainState, outside_inference_mode

class NonFiniteError(ValueError):
    """A parameter or its gradient holds NaN / inf where ADMM projects or masks it: the training diverged
    (a lower learning rate or rho is the usual cure)."""


_BALANCE_MU, _BALANCE_TAU = 10.0, 2.0  # residual balancing (Boyd et al. 2011, eq. 3.13)


class ZUpdate:
    """Projections, the Z / U update and the residuals of :class:`ADMM`."""

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
    def _check_finite(pairs, what: str, grads: bool = False) -> None:
        """ValueError naming the first parameter of ``pairs`` (``(param, name)``) that holds a NaN/Inf
        (``grads``: or whose gradient does). Projections would hide one (a level snap makes NaN a
        finite level, a mask keeps NaN * 0 = NaN where pruned). Cheap enough for every step: one
        reduction per tensor and one host sync per device; only a non-finite sum is confirmed
        element-wise (a sum may overflow where no element does)."""
        items = [(t.detach(), kind, name) for p, name in pairs
                 for t, kind in ((p, "parameter"), (p.grad if grads else None, "the gradient of parameter"))
                 if t is not None]
        sums: dict = {}
        for t, _, _ in items:
            sums.setdefault(t.device, []).append(t.sum(dtype=torch.float32))
        if all(bool(torch.isfinite(torch.stack(s)).all()) for s in sums.values()):
            return
        for t, kind, name in items:
            if not bool(torch.isfinite(t).all()):
                raise NonFiniteError(f"ADMM: {kind} '{name}' contains NaN/Inf at {what}")

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

    @staticmethod
    def _select_set(cons, pairs) -> Optional[PatternSet]:
        """The pattern set a group's weights select now (None without a Pattern constraint)."""
        pat = next((c for c in cons if isinstance(c, C.Pattern)), None)
        if pat is None:
            return None
        return PatternSet.select([p.detach() for p, _ in pairs], k=pat.k, entries=pat.entries,
                                 keep_center=pat.keep_center)

    @outside_inference_mode
    def _ensure_init(self) -> None:
        """Select pattern sets; ADMM: Z = Proj(W), U = 0 for constrained params without state;
        gradual: empty masks (the first mask update sets them); one-shot: nothing more."""
        if self._phase == "retrain":
            return
        for gi, g, cons, pairs in self._constrained():
            todo = [(p, n) for p, n in pairs if p not in self._admm]
            if not todo or (self.method == "oneshot" and gi in self._pattern_sets):
                continue
            self._check_finite(pairs, "the ADMM initialisation")
            if gi not in self._pattern_sets:
                pset = self._select_set(cons, pairs)
                if pset is not None:
                    self._pattern_sets[gi] = pset
            pset = self._pattern_sets.get(gi)
            self._record_sets()
            if self.method != "admm":
                if self._phase == "gradual":
                    for p, _ in todo:
                        self._admm[p] = RetrainState()
                continue
            with torch.no_grad():
                k = len(self._pair_sets(cons))
                for p, _ in todo:
                    u = torch.zeros((k, *p.shape) if k > 1 else p.shape, dtype=p.dtype, device=p.device)
                    z = self._z_step(p, u, cons, pset)
                    fixed = self.rho_scale == "none" or self.penalty == "proximal"
                    self._admm[p] = ADMMState(Z=z, U=u, k=k, rho=self.rho, scale=1.0 if fixed else None,
                                              rho_eff=self._rho_eff(self.rho, 1.0, g, k) if fixed else 0.0,
                                              gsum=torch.zeros((), dtype=torch.float64, device=p.device))

    @outside_inference_mode
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
                z = self._z_step(p, st.U, cons, pset)
                # Boyd et al. 3.3: primal r = ||W - Z||, dual s = rho ||Z - Z_old||; relative to ||W|| (rho is
                # dimensionless here, see docs/DESIGN.md), for consensus the largest over the pairs
                wn = float(p.norm())
                r = float((p - z).reshape(st.k, -1).norm(dim=1).max())
                dz = float((z - st.Z).reshape(st.k, -1).norm(dim=1).max())
                st.primal = r / wn if wn > 0 else 0.0
                st.dual = st.rho * dz / wn if wn > 0 else 0.0
                st.U.add_(p - z)
                st.Z = z
                old_rho = st.rho
                rho = old_rho * self.rho_growth
                if self.balance:  # residual balancing (3.4.1): keep r and s within a factor mu
                    if st.primal > _BALANCE_MU * st.dual:
                        rho *= _BALANCE_TAU
                    elif st.dual > _BALANCE_MU * st.primal:
                        rho /= _BALANCE_TAU
                st.rho = min(rho, self.rho_max)
                old_eff = st.rho_eff
                if self.rho_scale == "grad" and self.penalty == "gradient":
                    if st.gcnt > 0:
                        wn = float(p.norm())
                        st.scale = float(st.gsum) / st.gcnt / wn if wn > 0 else 0.0
                        st.gsum.zero_()
                        st.gcnt = 0
                    scale = st.scale if st.scale is not None else 0.0
                else:
                    scale = 1.0
                st.rho_eff = self._rho_eff(st.rho, scale, g, st.k)
                if self.rescale_dual and self.penalty == "gradient" and old_eff > 0 and st.rho_eff > 0:
                    st.U.mul_(old_eff / st.rho_eff)  # keep rho * U
                elif self.balance or (self.rescale_dual and self.penalty == "proximal"):  # rho changed (schedule, balancing): keep rho * U; the gradient
                    st.U.mul_(old_rho / st.rho)  # calibration is a preconditioner, its noise not fed into U
                st.update_shift()

    @torch.no_grad()
    def residuals(self) -> dict:
        """``{name: ||W - Z|| / ||W||}`` for every constrained parameter (after :meth:`hard_prune`:
        the distance to the fixed masks/levels, i.e. 0 unless the weights were changed by hand).
        Before the first step it measures against ``Proj(W)`` and initialises nothing: weights loaded
        after it still choose the pattern sets and Z."""
        out = {}
        for gi, g, cons, pairs in self._constrained():
            pset = self._pattern_sets.get(gi)
            if pset is None and any(p not in self._admm for p, _ in pairs):
                pset = self._select_set(cons, pairs)
            for p, name in pairs:
                st = self._admm.get(p)
                if st is None or self._phase == "gradual":  # what a hard prune now would change
                    diff = (p - self._project(p, cons, pset)).reshape(1, -1)
                elif self._phase == "admm":  # consensus: the largest residual over the constraints
                    diff = (p - st.Z).reshape(st.k, -1)
                else:
                    z = p * st.mask if st.mask is not None else p
                    if st.levels is not None:
                        z = self._to_levels(z, st.levels)
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
        return {name: getattr(self._admm.get(p), "dual", None) or 0.0
                for _, _, _, pairs in self._constrained() for p, name in pairs}

    def rho_eff(self) -> dict:
        """``{name: what a step applies}`` per constrained tensor: with ``penalty="proximal"`` the pull
        fraction ``1 - exp(-rho)``, with ``penalty="gradient"`` the penalty weight ``rho_eff`` (rho times
        the gradient scale, capped at ``1 / lr``)."""
        return {name: self._admm[p].rho_eff for _, _, _, pairs in self._constrained() for p, name in pairs
                if isinstance(self._admm.get(p), ADMMState)}
