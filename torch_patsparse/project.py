"""Euclidean projections onto the constraint sets (pattern, connectivity, unstructured, filter,
channel, quantization).

Every projection returns a new tensor of ``w``'s shape, dtype and device (the input is never
modified), is vectorised (no per-kernel Python loops) and deterministic: equal scores are broken
in favour of the lower index. ``keep`` is either a fraction in ``(0, 1]`` (a Python float:
``max(1, round(keep * count))`` items are kept) or a number of items (a Python int
``1 <= keep <= count``); note ``keep=1`` keeps one item while ``keep=1.0`` keeps all.
"""
import numbers
from typing import Union

import torch

from .patterns import PatternSet
from .quant import check_float_tensor
from .quant import dequantize, quantize, quantize_params  # noqa: F401  (public here; owned by quant)

__all__ = ["pattern", "assign_patterns", "connectivity", "unstructured", "filter", "channel",
           "quantize", "quantize_params", "dequantize"]

Keep = Union[float, int]


# -- helpers ----------------------------------------------------------------------------------
def _count(keep: Keep, n: int) -> int:
    """Number of items to keep out of ``n`` (see the module docstring)."""
    if isinstance(keep, bool) or not isinstance(keep, numbers.Real):
        raise ValueError(f"keep must be a float fraction in (0, 1] or an int count, got {keep!r}")
    if isinstance(keep, numbers.Integral):
        if not 1 <= keep <= n:
            raise ValueError(f"keep count must be in 1..{n}, got {keep}")
        return int(keep)
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep fraction must be in (0, 1], got {keep}")
    return max(1, round(keep * n))


def _check_weight(w, name: str, min_dim: int = 0) -> None:
    """A projection takes a non-empty floating-point tensor of at least ``min_dim`` dimensions."""
    check_float_tensor(w, name)
    if w.dim() < min_dim or w.numel() == 0:
        raise ValueError(f"{name} expects a non-empty tensor with at least {min_dim} dimension(s), got shape "
                         f"{tuple(w.shape)}")


def _top_mask(score: torch.Tensor, count: int) -> torch.Tensor:
    """Bool mask of ``score``'s shape marking its ``count`` largest entries (ties: lower flat
    index first, on every device)."""
    flat = score.reshape(-1)
    idx = flat.sort(descending=True, stable=True).indices[:count]
    return torch.zeros_like(flat, dtype=torch.bool).index_fill_(0, idx, True).view(score.shape)


def _keep(w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``w`` where ``mask`` (broadcast), exact zeros elsewhere."""
    return torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device))


def _check_conv3x3(w: torch.Tensor, name: str) -> None:
    if isinstance(w, torch.Tensor):
        check_float_tensor(w, name)  # (an int tensor: TypeError, as the other projections)
    if not isinstance(w, torch.Tensor) or w.dim() != 4 or tuple(w.shape[2:]) != (3, 3):
        shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"{name} expects a weight of shape [Cout, Cin, 3, 3], got {shape}")


def _check_group(group) -> int:
    if isinstance(group, bool) or not isinstance(group, numbers.Integral) or group < 1:
        raise ValueError(f"group must be an int >= 1, got {group!r}")
    return int(group)


def _group_index(cout: int, group: int, device) -> torch.Tensor:
    """Output channel -> group id, ``group`` consecutive channels per group."""
    return torch.arange(cout, device=device) // _check_group(group)


def _group_sum(x: torch.Tensor, gid: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` [Cout, ...] over the output channels of each group -> [groups, ...]."""
    n = int(gid[-1]) + 1 if gid.numel() else 0
    return x.new_zeros((n,) + x.shape[1:]).index_add_(0, gid, x)


def _energy(w: torch.Tensor) -> torch.Tensor:
    """Squared weights, in float32 at least (half precision sums would lose the ranking)."""
    w = w.detach()
    if w.dtype not in (torch.float32, torch.float64):
        w = w.float()
    return w * w


# -- pattern / connectivity -------------------------------------------------------------------
def assign_patterns(w: torch.Tensor, pattern_set: PatternSet, group: int = 1) -> torch.Tensor:
    """Best pattern id per kernel, long ``[Cout, Cin]`` on ``w``'s device.

    A kernel gets the pattern that keeps the largest L2 norm (ties: lowest id). With
    ``group=G`` the ``G`` consecutive output channels of a group (the last one may be smaller)
    share one pattern per input channel: the one keeping the largest summed energy.
    """
    _check_conv3x3(w, "pattern projection")
    if not isinstance(pattern_set, PatternSet):
        raise ValueError(f"pattern_set must be a PatternSet, got {type(pattern_set).__name__}")
    cout, cin = w.shape[:2]
    masks = pattern_set.masks.view(pattern_set.k, 9)
    e = _energy(w).reshape(cout, cin, 9)
    energy = e @ masks.to(device=e.device, dtype=e.dtype).t()  # [Cout, Cin, K] kept energy
    gid = _group_index(cout, group, w.device)
    if group > 1:
        energy = _group_sum(energy, gid)
    ids = energy.argmax(dim=-1)  # first maximum on ties
    return ids[gid] if group > 1 else ids


def pattern(w: torch.Tensor, pattern_set: PatternSet, group: int = 1) -> torch.Tensor:
    """Project ``w`` [Cout, Cin, 3, 3] onto the pattern set: every kernel keeps the weights of
    its pattern (chosen by :func:`assign_patterns`) and is zero elsewhere."""
    ids = assign_patterns(w, pattern_set, group)
    return _keep(w, pattern_set.masks.to(w.device)[ids])


def connectivity(w: torch.Tensor, keep: Keep, group: int = 1) -> torch.Tensor:
    """Keep the ``keep`` kernels of ``w`` [Cout, Cin, 3, 3] with the largest L2 norm (over the
    whole layer) and zero the others.

    With ``group=G`` the items are (output-channel group, input channel) pairs scored by their
    summed energy, so all filters of a group keep the same input channels; ``keep`` then counts
    pairs (out of ``ceil(Cout / G) * Cin``).
    """
    _check_conv3x3(w, "connectivity projection")
    gid = _group_index(w.shape[0], group, w.device)
    score = _group_sum(_energy(w).sum(dim=(2, 3)), gid)  # [groups, Cin]
    mask = _top_mask(score, _count(keep, score.numel()))[gid]
    return _keep(w, mask[:, :, None, None])


# -- classic pruning --------------------------------------------------------------------------
def unstructured(w: torch.Tensor, keep: Keep, group: int = 1) -> torch.Tensor:
    """Keep the ``keep`` weights of largest magnitude over the whole tensor (any shape).

    With ``group=G`` (a tensor of at least 2 dimensions) the items are (output-channel group,
    position in a row of dims 1..) pairs scored by their summed energy, so the G consecutive output
    channels of a group keep the same positions (a Gx1 block structure: with G=4 the sparse 1x1 conv
    / Linear kernels compute the four channels together, one input load for four); ``keep`` then
    counts pairs (out of ``ceil(Cout / G) * w[0].numel()``).
    """
    if _check_group(group) == 1:
        _check_weight(w, "unstructured projection")
        return _keep(w, _top_mask(w.detach().abs(), _count(keep, w.numel())))
    _check_weight(w, f"unstructured projection with group={group}", 2)
    gid = _group_index(w.shape[0], group, w.device)
    score = _group_sum(_energy(w).reshape(w.shape[0], -1), gid)  # [groups, row]
    return _keep(w, _top_mask(score, _count(keep, score.numel()))[gid].view(w.shape))


def filter(w: torch.Tensor, keep: Keep) -> torch.Tensor:  # noqa: A001 (public name)
    """Keep the ``keep`` output channels (dim 0) of largest L2 norm."""
    _check_weight(w, "filter projection", 2)  # (as constraints.Filter: a filter of a 1-D tensor is one weight)
    score = _energy(w).reshape(w.shape[0], -1).sum(dim=1)
    mask = _top_mask(score, _count(keep, w.shape[0]))
    return _keep(w, mask.view((-1,) + (1,) * (w.dim() - 1)))


def channel(w: torch.Tensor, keep: Keep) -> torch.Tensor:
    """Keep the ``keep`` input channels (dim 1) of largest L2 norm."""
    _check_weight(w, "channel projection", 2)
    score = _energy(w).transpose(0, 1).reshape(w.shape[1], -1).sum(dim=1)
    mask = _top_mask(score, _count(keep, w.shape[1]))
    return _keep(w, mask.view((1, -1) + (1,) * (w.dim() - 2)))
