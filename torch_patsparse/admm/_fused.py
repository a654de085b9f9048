"""The ADMM gradient penalty's step: fused with SGD / Adam / AdamW into one native pass
(``torch.ops.patsparse.admm_sgd_`` / ``admm_adam_``), a native pass adding the penalty into the
gradient for other bases (``admm_penalty_``), the same math in torch ops elsewhere."""
from __future__ import annotations

import torch
from torch.optim import Optimizer

from .. import _C  # noqa: F401  (registers torch.ops.patsparse.admm_*)


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


def _scalar_dtype() -> torch.dtype:
    """dtype of Adam's ``step`` state (torch's rule: float64 under a float64 default dtype)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class FusedStep:
    """The gradient penalty's step (mixed into :class:`ADMM`): the penalty added into ``p.grad``, or
    fused with the base optimizer's update into one native pass."""

    def _gradient_penalty(self, calib: bool) -> list:
        """Apply ``r (W + (U - Z))`` to every constrained tensor with a gradient (calibrating rho_eff
        from the gradient norms when ``calib``); returns the params a fused kernel stepped in full."""
        stepped = []
        for gi, g, cons, pairs in self._constrained():
            fusable = _fusable_group(self.base, g)
            for p, name in pairs:
                grad = p.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise RuntimeError(f"ADMM: '{name}' has a sparse gradient (nn.Embedding(sparse=True)?), to which "
                                       "penalty='gradient' cannot add its pull; use penalty='proximal' (the default)")
                st = self._admm[p]
                if st.scale is None:  # first step with a gradient: calibrate from it
                    wn = float(p.norm())
                    st.scale = float(grad.norm()) / wn if wn > 0 else 0.0
                    st.rho_eff = self._cap(st.rho * st.scale, g, st.k)
                elif calib:
                    st.gsum += grad.norm().double()
                    st.gcnt += 1
                # sum_j rho (W - Z_j + U_j) = k rho (W + mean_j (U_j - Z_j)); capped at this step's lr (a
                # warmup may have raised it since the Z-update that set rho_eff)
                r = self._cap(st.rho_eff, g, st.k) * st.k
                if not r:
                    continue
                if g.get("maximize"):  # the base negates the whole gradient: the penalty must still descend
                    r = -r
                if not _native_ok(p, grad, st.shift):
                    grad.add_(p, alpha=r)
                    grad.add_(st.shift, alpha=r)
                elif fusable:
                    self._fused_step(p, grad, st.shift, r, g)
                    stepped.append(p)
                else:
                    torch.ops.patsparse.admm_penalty_(grad, p, st.shift, r)
        return stepped

    # Not traced by torch.compile: it is one native call, and traced (a graph break at the op, a Python
    # float per call) a second optimizer's compiled step gave same-shaped weights one Adam state.
    @torch.compiler.disable
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
