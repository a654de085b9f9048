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
from .optimizer import ADMM, METHODS, PENALTIES
from ._zupdate import NonFiniteError
from ._state import trained_pattern_set
from ._retrain import _scheduled  # noqa: F401  (tests pin the cubic schedule)

__all__ = ["ADMM", "METHODS", "NonFiniteError", "PENALTIES", "trained_pattern_set"]
