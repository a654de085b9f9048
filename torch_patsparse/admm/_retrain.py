"""Hard prune, gradual pruning's mask updates and the masked / straight-through retraining of
:class:`ADMM` (mixed into it)."""
from __future__ import annotations

import dataclasses
import math
import warnings
import weakref

import torch

from .. import constraints as C
from .. import project
from ..quant import levels as quant_levels
from ._state import RetrainState, outside_inference_mode


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
    if isinstance(keep, int):
        n = _units(c, shape)
        return dataclasses.replace(c, keep=min(n, int(round(keep + (n - keep) * s))))
    return dataclasses.replace(c, keep=min(1.0, float(keep) + (1.0 - float(keep)) * s))


class _MaskGrad:
    """Tensor hook of a pruned parameter in retraining and gradual pruning: its gradient without the
    pruned entries, so what a loop does between ``backward()`` and ``step()`` (gradient clipping,
    logging) sees the gradient masked training trains with, as on compressed layers. Holds the
    optimizer weakly and passes gradients through once it is gone."""
    __torch_unserializable__ = True  # torch.save(model) leaves it out: the optimizer's state has the mask

    def __init__(self, opt, mask: torch.Tensor):
        self.opt, self.mask = weakref.ref(opt), mask

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        return grad if self.opt() is None else grad * self.mask


class HardPrune:
    """Hard prune, gradual mask updates and retraining under fixed masks / levels."""

    def _hook_masks(self, params=None) -> None:
        """Registers the gradient masks of the gradual and retraining phases (:class:`_MaskGrad`): all
        anew (``params`` None: the masks changed), or for ``params`` only. A frozen parameter cannot
        take a hook: it waits in ``_unhooked`` (also one whose state is away in compressed_training)."""
        hooks = self.__dict__.setdefault("_grad_hooks", {})
        if self.__dict__.get("_released"):
            return
        if params is None:
            for handle in hooks.values():
                handle.remove()
            hooks.clear()
            params = [p for p, st in self._admm.items() if getattr(st, "mask", None) is not None] \
                if self._phase != "admm" else []
        unhooked = []
        for p in params:
            mask = getattr(self._admm.get(p), "mask", None)
            if p.requires_grad and mask is not None:
                hooks[p] = p.register_hook(_MaskGrad(self, mask))
            else:
                unhooked.append(p)
        self._unhooked = unhooked

    def release(self) -> None:
        """Removes the gradient masks this optimizer hooked on its pruned parameters (gradual pruning,
        retraining) for when they move on to another optimizer while something keeps this one alive
        (an lr scheduler, a list): its masks would go on zeroing their gradients. The weights are not
        changed; this optimizer takes no step afterwards (RuntimeError)."""
        for handle in self.__dict__.get("_grad_hooks", {}).values():
            handle.remove()
        self.__dict__["_grad_hooks"] = {}
        self._unhooked = []
        self._released = True

    def _check_not_released(self) -> None:
        if self.__dict__.get("_released"):
            raise RuntimeError("ADMM: this optimizer was released (release()); build a new one to train with")

    def _hook_unfrozen(self) -> None:
        """Hooks the masked parameters frozen when their hooks were registered and unfrozen since
        (gradual unfreezing); a check of their flags otherwise."""
        unhooked = self.__dict__.get("_unhooked")
        if unhooked and any(p.requires_grad for p in unhooked):
            self._hook_masks(unhooked)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch's; first hooks a pruned parameter unfrozen since :meth:`hard_prune` (or the last mask
        update / load), so that the backward after it gives the loop masked gradients too."""
        self._hook_unfrozen()
        super().zero_grad(set_to_none)

    @outside_inference_mode
    @torch.no_grad()
    def hard_prune(self) -> None:
        """``W = Proj(W)`` in place; fix masks and quantization levels; retrain from now on."""
        self._check_not_released()
        if self._phase == "retrain":
            return
        groups = list(self._constrained())
        for _, _, _, pairs in groups:  # before _ensure_init, whose check would name the initialisation
            self._check_finite(pairs, "hard_prune")
        self._ensure_init()
        new = {}
        for gi, g, cons, pairs in groups:
            pset = self._pattern_sets.get(gi)
            for p, name in pairs:
                final, mask, quant, scale = self._prune_quantize(p, cons, pset)
                st = RetrainState(mask)
                if quant is not None:
                    if scale == 0:
                        warnings.warn(f"ADMM.hard_prune: '{name}' is all zero, so its {quant.bits}-bit levels "
                                      "are all 0 and it cannot train from here; hard-prune a trained weight "
                                      "(method='oneshot' prunes at the first step)", RuntimeWarning, stacklevel=3)
                    top = quant_levels(quant.bits)  # codes span -top..top
                    # (1 bit: +-q, the weight's sign, as the quantizer maps it; 0 only where pruned)
                    all_codes = torch.tensor([-1, 1], device=p.device) if quant.bits == 1 else \
                        torch.arange(-top, top + 1, device=p.device)
                    st.levels = project.dequantize(all_codes, scale, quant.scheme, dtype=p.dtype).unique()
                    st.latent = final.clone()
                new[p] = (final, st)
        for p, (final, st) in new.items():
            self._apply(p, final, st.mask)
        self._admm = {p: st for p, (_, st) in new.items()}
        self._phase = "retrain"
        self._hook_masks()

    def _prune_quantize(self, p, cons, pset):
        """``(Proj(W), pruning mask or None, Quantize constraint or None, scale)``. The mask is the
        support the pruning part keeps, also where W is exactly 0 there (a zero-initialised layer
        pruned at the first step still trains); a weight that rounds to level 0 is not pruned."""
        pruned, mask = p.detach(), None
        if any(c.prunes for c in cons):
            # Zeros become the dtype's smallest normal number: they rank below every weight (their
            # squares are 0, as before), and the projection's output marks the ones it keeps. Float16's
            # (6e-5) is above its small weights: it is marked in float32, which holds them exactly.
            work = pruned.float() if pruned.dtype == torch.float16 else pruned
            marked = torch.where(work == 0, torch.finfo(work.dtype).tiny, work)
            mask = self._project(marked, cons, pset, prune_only=True) != 0
            pruned = project._keep(pruned, mask)
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
                self._admm[p].mask = mask
        self._hook_masks()

    @staticmethod
    def _to_levels(w: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        if levels.numel() == 1:
            return levels.expand_as(w).clone()
        if levels.numel() == 2:  # 1 bit, {-q, q}: the sign, and a pruned (zero) weight stays 0
            return torch.sign(w) * levels[1]
        mids = (levels[1:] + levels[:-1]) * 0.5
        return levels[torch.bucketize(w, mids)]

    def _retrain_step(self) -> None:
        items = [(p, self._admm[p]) for g in self.param_groups for p in g["params"] if p in self._admm]
        for p, st in items:
            if st.mask is not None and p.grad is not None:
                p.grad.mul_(st.mask)
            if st.latent is not None:
                if not torch.equal(p, self._to_levels(st.latent, st.levels)):
                    # written since the last step (load_state_dict, an EMA swap, an edit): train on
                    # from what the model holds, as without quantization
                    st.latent.copy_(p)
                p.copy_(st.latent)
        self._base_step()
        self._step_count += 1
        for p, st in items:
            if st.mask is not None:
                p.mul_(st.mask)
            if st.latent is not None:
                st.latent.copy_(p)
                p.copy_(self._to_levels(p, st.levels))

    def masks(self) -> dict:
        """``{name: bool mask}`` of the pruned tensors after :meth:`hard_prune` (else empty)."""
        if self._phase != "retrain":
            return {}
        return {name: self._admm[p].mask for _, _, _, pairs in self._constrained() for p, name in pairs
                if self._admm[p].mask is not None}
