"""Masked retraining through the compressed modules: the same training, fewer multiply-adds.

After :meth:`ADMM.hard_prune` the pruned weights are fixed zeros: masked retraining computes them in
every forward and backward and throws the result away. Inside :func:`compressed_training` every
pattern-pruned 3x3 conv of the model runs as a trainable :class:`~torch_patsparse.nn.PatternConv2d`
holding only its kept weights (the native sparse forward and backward kernels), and the optimizer
trains those: its per-parameter state (momentum, Adam moments, ADMM's mask and full-precision latent
copy) moves to the compressed layout on entry and back on exit. The arithmetic per kept weight is
the masked step's, so the losses match masked dense retraining up to rounding (the convolution sums
run in another order); BatchNorm and every other layer are untouched.

    opt.hard_prune()
    with ps.compressed_training(model, opt):
        for x, y in loader:
            ...  # the usual loop
    # model and optimizer are back in their dense form: save / evaluate / ps.convert as before

Save checkpoints outside the block: inside it the optimizer's state is in the compressed layout.
"""
import collections
import warnings
from contextlib import contextmanager
from typing import Dict, List, Tuple

import torch
from torch import nn

from . import format as fmt
from .admm import ADMM, trained_pattern_set
from .admm._state import map_tensors
from .convert import HOOK_DICTS, HOOK_FLAG_DICTS
from .nn import PatternConv2d
from .nn.kinds import PATTERN, layer_kind

__all__ = ["compressed_training"]


class _Swap:
    """One conv trained in compressed form: where it lives (every place, if the model holds it at
    several), its dense objects, the gather index."""

    def __init__(self, places: List[Tuple[nn.Module, str]], conv: nn.Conv2d, mod: PatternConv2d):
        self.places, self.conv, self.mod = places, conv, mod
        self.index = fmt.flat_positions(mod.patterns, mod.filter_ptr, mod.kernel_channel, mod.kernel_pattern,
                                        mod.in_channels)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(-1)[self.index].clone()

    def scatter_into(self, dense: torch.Tensor, values: torch.Tensor) -> None:
        # through a contiguous buffer: the index is in the logical [O, I, 3, 3] order, whatever
        # `dense`'s memory format (a channels_last weight cannot be viewed flat)
        flat = torch.zeros(dense.numel(), dtype=dense.dtype, device=dense.device)
        flat[self.index.reshape(-1)] = values.reshape(-1).to(dense.dtype)
        dense.copy_(flat.view(dense.shape))


def _candidates(model: nn.Module, opt: ADMM) -> Dict[nn.Conv2d, List[Tuple[nn.Module, str]]]:
    """Plain 3x3 convs whose weight ``opt`` retrains with a fixed pruning mask and a pattern set, with
    every (parent, attribute) that holds each (a conv registered twice is swapped at both)."""
    found: Dict[nn.Conv2d, List[Tuple[nn.Module, str]]] = {}
    for parent in model.modules():
        for attr, m in parent._modules.items():
            if not isinstance(m, nn.Conv2d) or layer_kind(m) != PATTERN:
                continue
            st = opt._admm.get(m.weight)
            if st is None or st.mask is None or trained_pattern_set(m.weight) is None:
                continue
            found.setdefault(m, []).append((parent, attr))
    return found


# Base optimizers known to keep per-parameter state of another shape than the parameter (Adafactor's
# factored row / column second moments): checked by class too, as such state appears only at the first step.
_FACTORED = tuple(c for c in (getattr(torch.optim, "Adafactor", None),) if c is not None)


def _check_elementwise(opt: ADMM, weights: List[torch.Tensor]) -> None:
    """Refuse a base optimizer whose state of a swapped weight is not element-wise: only tensors shaped
    like the weight (and scalars) move to the compressed layout, and a factored update over the
    compressed values is not the dense one's. Nothing to swap: nothing to refuse."""
    if not weights:
        return
    why = "it keeps factored per-parameter state" if isinstance(opt.base, _FACTORED) else next(
        (f"its state {k!r} has shape {list(v.shape)}, not the parameter's {list(w.shape)}" for w in weights
         for k, v in opt.state.get(w, {}).items() if torch.is_tensor(v) and v.dim() > 0 and v.shape != w.shape),
        None)
    if why:
        raise ValueError(f"compressed_training: cannot train with base optimizer {type(opt.base).__name__}: {why}, "
                         "which cannot move to the compressed layout; use an optimizer with element-wise state "
                         "(SGD, Adam, AdamW, RMSprop, ...) or train masked dense (without the block)")


def _shared_weights(found) -> List[nn.Conv2d]:
    """The convs of ``found`` whose weight another conv holds too (a weight tie across two layers:
    one set of stored values cannot serve both geometries)."""
    holders = collections.Counter(id(m.weight) for m in found)
    return [m for m in found if holders[id(m.weight)] > 1]


def _build(conv: nn.Conv2d, mask: torch.Tensor, patterns: torch.Tensor) -> PatternConv2d:
    """A float PatternConv2d whose stored positions are exactly ``mask``'s (a kept weight that happens
    to be 0 stays trainable, as in masked training)."""
    arrays = fmt.compress(mask.to(conv.weight.dtype), patterns)
    mod = PatternConv2d(conv.in_channels, conv.out_channels, stride=conv.stride, padding=conv.padding,
                        dilation=conv.dilation, bias=False, patterns=patterns, kept_kernels=arrays["values"].shape[0],
                        device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        for name in ("filter_ptr", "kernel_channel", "kernel_pattern"):
            getattr(mod, name).copy_(arrays[name])
    mod.bias = conv.bias  # the very Parameter: the optimizer keeps training it as it is
    mod.values.requires_grad_(conv.weight.requires_grad)  # a frozen conv stays frozen
    # The conv's very hook dicts: a hook registered or removed in the block is the conv's too
    for attr in HOOK_DICTS + HOOK_FLAG_DICTS:
        setattr(mod, attr, getattr(conv, attr))
    mod._is_full_backward_hook = conv._is_full_backward_hook
    mod.train(conv.training)
    return mod


def _move_state(opt: ADMM, old: torch.Tensor, new: torch.Tensor, convert) -> None:
    """Put ``new`` where ``old`` is in ``opt``'s groups; map its state tensors of ``old``'s shape."""
    for g in opt.param_groups:
        for i, p in enumerate(g["params"]):
            if p is old:
                g["params"][i] = new
    state = opt.state.pop(old, None)
    if state is not None:
        opt.state[new] = {k: convert(v) if torch.is_tensor(v) and v.shape == old.shape else v
                          for k, v in state.items()}
    admm = opt._admm.pop(old, None)
    if admm is not None:
        opt._admm[new] = map_tensors(admm, lambda v: convert(v) if v.shape == old.shape else v)


@contextmanager
def compressed_training(model: nn.Module, optimizer: ADMM):
    """Within the block, ``model``'s pattern-pruned 3x3 convs are trainable PatternConv2d modules and
    ``optimizer`` trains their kept weights (see the module docstring). Only convs that ``optimizer``
    (a :class:`ADMM` after :meth:`~ADMM.hard_prune`) retrains with a pattern constraint are swapped;
    the others stay as they are (a swapped conv keeps its hooks and frozen flag, as after ``convert``).
    Yields the names of the swapped convs. On exit (also on an exception) the dense convs are back,
    with the trained weights and the optimizer state in place.

    The base optimizer must update each weight from its own gradient and state (element-wise state
    shaped like the parameter, or scalars): SGD, Adam, AdamW, RMSprop, Adagrad, ... . One with factored
    state (``torch.optim.Adafactor``: per-row / per-column moments) is refused with a ValueError on
    entry, before anything changes: its state cannot move to the compressed layout."""
    if not isinstance(optimizer, ADMM):
        raise TypeError(f"compressed_training needs a ps.ADMM optimizer, got {type(optimizer).__name__}")
    if optimizer.phase != "retrain":
        raise RuntimeError("compressed_training: call optimizer.hard_prune() first (the pruning masks must be fixed)")
    names = {id(m): n for n, m in model.named_modules()}
    found = _candidates(model, optimizer)
    shared = _shared_weights(found)
    _check_elementwise(optimizer, [m.weight for m in found if m not in shared])
    if shared:
        warnings.warn("compressed_training: " + ", ".join(repr(names[id(m)]) for m in shared) + " share one weight "
                      "between layers; they train dense (masked) in the block", UserWarning, stacklevel=3)
    if len(found) == len(shared):
        warnings.warn("compressed_training: no layer to swap (it takes plain 3x3 convs of this model whose weight "
                      "this optimizer pruned with a pattern constraint); the block trains the model as it is",
                      UserWarning, stacklevel=3)
    swaps: List[_Swap] = []
    try:
        with torch.no_grad():
            for conv, places in found.items():
                if conv in shared:
                    continue
                mask = optimizer._admm[conv.weight].mask
                mod = _build(conv, mask, trained_pattern_set(conv.weight).to_tensor())
                sw = _Swap(places, conv, mod)
                mod.values.copy_(sw.gather(conv.weight))
                if conv.weight.grad is not None:  # a gradient from before the block is the values' too
                    mod.values.grad = sw.gather(conv.weight.grad)
                _move_state(optimizer, conv.weight, mod.values, sw.gather)
                for parent, attr in places:
                    setattr(parent, attr, mod)
                swaps.append(sw)
        yield [names[id(sw.conv)] for sw in swaps]
    finally:
        with torch.no_grad():
            for sw in reversed(swaps):
                _restore(optimizer, sw)


def _restore(opt: ADMM, sw: _Swap) -> None:
    """Back to the dense conv: its weight (the original Parameter), gradient and state get the trained
    values, and the conv the mode / frozen flag set in the block (``model.eval()``, ``requires_grad_``)."""
    w, values = sw.conv.weight, sw.mod.values

    def to_dense(v: torch.Tensor) -> torch.Tensor:
        dense = torch.empty(w.shape, dtype=v.dtype, device=v.device)
        sw.scatter_into(dense, v)
        return dense

    sw.scatter_into(w.data, values.detach())
    w.grad = None if values.grad is None else to_dense(values.grad)  # masked training's: 0 where pruned
    w.requires_grad_(values.requires_grad)
    sw.conv.training = sw.mod.training
    _move_state(opt, values, w, to_dense)
    for parent, attr in sw.places:
        setattr(parent, attr, sw.conv)
