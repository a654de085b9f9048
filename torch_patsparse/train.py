"""Training / evaluation / latency loops used by the main job (``python -m torch_patsparse``).

Plain loops over in-memory tensors (see :mod:`torch_patsparse.data`), with tqdm progress bars. The
optimizer can be anything with ``step``/``zero_grad`` (SGD for the dense phase, ``ps.ADMM`` for the
ADMM and masked-retraining phases: the loop is the same, which is the point of the ADMM API).
"""
import math
import numbers
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from . import data as D

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - tqdm is a soft dependency
    tqdm = None


def progress(iterable, total: int, desc: str, enabled: bool = True, leave: bool = False):
    if tqdm is None or not enabled:
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=leave, dynamic_ncols=True, file=sys.stderr)


def distillation_loss(logits: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float = 4.0, alpha: float = 0.5) -> torch.Tensor:
    """Knowledge-distillation loss (Hinton et al. 2015), batch mean:
    ``(1 - alpha) * CE(logits, targets) + alpha * T^2 * KL(softmax(teacher_logits / T) || softmax(logits / T))``.

    The T^2 factor keeps the soft term's gradients at the hard term's scale for any temperature T.
    ``alpha = 0`` is plain cross-entropy."""
    def real(v) -> bool:  # (a bool or a string is not a weight)
        return isinstance(v, numbers.Real) and not isinstance(v, bool)
    if not (real(temperature) and temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"distillation temperature must be a positive number, got {temperature!r}")
    if not (real(alpha) and 0 <= alpha <= 1):
        raise ValueError(f"distillation alpha must be a number in [0, 1], got {alpha!r}")
    if teacher_logits.shape != logits.shape:
        raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} do not match the student's "
                         f"{tuple(logits.shape)}")
    hard = F.cross_entropy(logits, targets)
    if alpha == 0:
        return hard
    soft = F.kl_div(F.log_softmax(logits / temperature, 1), F.log_softmax(teacher_logits.detach() / temperature, 1),
                    reduction="batchmean", log_target=True)
    return (1 - alpha) * hard + alpha * temperature ** 2 * soft


@dataclass
class Distillation:
    """Soft targets from a ``teacher`` (e.g. the dense model) for :func:`train_epoch`: the loss becomes
    :func:`distillation_loss` with this ``temperature`` and ``alpha`` (weight of the soft term). The
    teacher runs in eval mode without gradients; its weights are never changed, and its train / eval
    mode is restored after each call."""
    teacher: torch.nn.Module
    temperature: float = 4.0
    alpha: float = 0.5

    def __post_init__(self):
        if not isinstance(self.teacher, torch.nn.Module):
            raise TypeError(f"Distillation: teacher must be an nn.Module (e.g. the dense model), got "
                            f"{type(self.teacher).__name__}")
        distillation_loss(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), torch.zeros(1, 2),
                          self.temperature, self.alpha)  # validates temperature and alpha now

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with mode(self.teacher, training=False), torch.no_grad():
            teacher_logits = self.teacher(x)
        return distillation_loss(logits, targets, teacher_logits, self.temperature, self.alpha)


@contextmanager
def mode(model: torch.nn.Module, training: bool):
    """``model`` in train / eval mode within; after (also on an exception) every module has its own
    mode back, a mixed one included (a frozen BatchNorm in a training model stays in eval)."""
    saved = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for m, flag in saved:
            m.training = flag


def train_epoch(model: torch.nn.Module, opt, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                generator: torch.Generator, desc: str = "train", scheduler=None, show: bool = True,
                on_step: Optional[Callable[[int], None]] = None,
                distill: Optional[Distillation] = None) -> Dict[str, float]:
    """One epoch of SGD-style training; ``scheduler`` (if any) steps once per batch; with ``distill``
    the loss is knowledge distillation from its teacher (:class:`Distillation`), else cross-entropy."""
    model.train()
    total_loss = torch.zeros((), dtype=torch.float64)
    correct = 0
    seen = 0
    bar = progress(D.batches(x, y, batch_size, shuffle=True, generator=generator),
                   D.num_batches(x.shape[0], batch_size), desc, show)
    for i, (xb, yb) in enumerate(bar):
        out = model(xb)
        loss = F.cross_entropy(out, yb) if distill is None else distill.loss(out, yb, xb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        with torch.no_grad():
            total_loss += loss.detach().double() * yb.shape[0]
            correct += int((out.argmax(1) == yb).sum())
        seen += yb.shape[0]
        if on_step is not None:
            on_step(i)
        if tqdm is not None and show and i % 20 == 0:
            bar.set_postfix(loss=f"{float(total_loss) / seen:.3f}", acc=f"{100.0 * correct / seen:.1f}")
    return {"loss": float(total_loss) / max(seen, 1), "acc": 100.0 * correct / max(seen, 1)}


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500,
             desc: str = "eval", show: bool = True) -> Dict[str, float]:
    """Top-1 accuracy (percent) and mean cross-entropy on (x, y)."""
    total_loss = 0.0
    correct = 0
    bar = progress(D.batches(x, y, batch_size), D.num_batches(x.shape[0], batch_size), desc, show)
    with mode(model, training=False):
        for xb, yb in bar:
            out = model(xb)
            total_loss += float(F.cross_entropy(out, yb, reduction="sum"))
            correct += int((out.argmax(1) == yb).sum())
    n = max(x.shape[0], 1)
    return {"loss": total_loss / n, "acc": 100.0 * correct / n}


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 256, max_images: int = 5000,
                   show: bool = True) -> None:
    """Re-estimates BatchNorm running statistics for the current weights: the average of the batch
    statistics over the first ``max_images`` images of ``x`` in batches of ``batch_size`` (each batch
    weighs the same; train-mode forward passes, no weight change). After a hard prune the old
    statistics belong to the dense weights; without this the pruned model is judged (and starts
    retraining) with mismatched normalisation. Every module's mode and each BatchNorm's momentum
    are restored after; if a forward raises, the old statistics are too."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1 or x.shape[0] == 0:
        raise ValueError(f"recalibrate_bn needs at least one image (x has {x.shape[0]}, max_images={max_images!r})")
    xs = x[:max_images]
    saved = [(m.momentum, {k: v.clone() for k, v in m.state_dict().items()}) for m in bns]
    try:
        with mode(model, training=True):
            for m in bns:
                m.reset_running_stats()
                m.momentum = None   # cumulative moving average
            batches = D.batches(xs, xs, batch_size)
            for (xb, _) in progress(batches, D.num_batches(xs.shape[0], batch_size), "BN stats", show):
                model(xb)
    except BaseException:
        for m, (_, stats) in zip(bns, saved):
            m.load_state_dict(stats)
        raise
    finally:
        for m, (momentum, _) in zip(bns, saved):
            m.momentum = momentum


@torch.no_grad()
def latency(models: Dict[str, Callable], inputs: Sequence[torch.Tensor], repeats: int = 30, warmup: int = 3,
            show: bool = True) -> Dict[str, Dict[int, float]]:
    """Median wall time (ms) of each model on each input, measured in the same process and
    interleaved (model A, model B, A, B, ...) so that machine-load changes hit all models alike.

    Returns ``{model name: {batch size: median ms}}``.
    """
    result: Dict[str, Dict[int, float]] = {name: {} for name in models}
    for x in inputs:
        for fn in models.values():
            for _ in range(warmup):
                fn(x)
        times: Dict[str, list] = {name: [] for name in models}
        for _ in progress(range(repeats), repeats, f"latency batch {x.shape[0]}", show):
            for name, fn in models.items():
                t0 = time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - t0)
        for name in models:
            result[name][int(x.shape[0])] = 1e3 * statistics.median(times[name])
    return result
