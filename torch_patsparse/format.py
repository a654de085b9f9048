"""The FKW-style compressed format of one 3x3 conv weight [Cout, Cin, 3, 3], in torch code:
building it from a dense weight that satisfies a pattern set, rebuilding the dense weight, and
validating arrays that come from outside (state_dict, user code).

Arrays (see DESIGN.md): ``patterns`` uint8 [K, E], ``filter_ptr`` int32 [Cout+1],
``kernel_channel`` int32 [n], ``kernel_pattern`` uint8 [n], ``values`` float [n, E] for n kept kernels
(``PatternConv2d.kept_kernels``; the native code calls it nnz).
"""
from typing import Dict

import torch

from . import ops

ARRAY_NAMES = ("patterns", "filter_ptr", "kernel_channel", "kernel_pattern", "values")
_NATIVE_PREFIX = "patsparse: invalid compressed weight: "


def pattern_bits(patterns: torch.Tensor) -> torch.Tensor:
    """9-bit support mask (bit p = position p kept) of each pattern row, long [K]."""
    return (torch.ones_like(patterns, dtype=torch.long) << patterns.long()).sum(dim=1)


def compress(weight: torch.Tensor, patterns: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Compresses ``weight`` [Cout, Cin, 3, 3] whose every kernel is zero or supported inside one
    of ``patterns`` (uint8 [K, E]). All-zero kernels are dropped (connectivity). Kernels of a filter
    are ordered by pattern id, then input channel. Raises ValueError when a kernel fits no pattern.
    """
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"expected a [Cout, Cin, 3, 3] weight, got {tuple(weight.shape)}")
    w = weight.detach()
    cout, cin = w.shape[:2]
    patterns = patterns.to(device=w.device, dtype=torch.uint8)
    flat = w.reshape(cout, cin, 9)
    nonzero = flat != 0
    support = (nonzero.long() << torch.arange(9, device=w.device)).sum(dim=2)           # [Cout, Cin]
    pbits = pattern_bits(patterns)                                                       # [K]
    fits = (support.unsqueeze(-1) & ~pbits) == 0                                          # [Cout, Cin, K]
    kept = support != 0
    bad = kept & ~fits.any(dim=-1)
    if bad.any():
        o, c = bad.nonzero()[0].tolist()
        raise ValueError(f"kernel (out={o}, in={c}) has nonzeros at positions {nonzero[o, c].nonzero().flatten().tolist()} "
                         f"(of 0..8, row-major) that fit no pattern of the set ({bad.sum().item()} such kernels)")
    pattern_id = fits.int().argmax(dim=-1)                                                # first fitting pattern
    # Order kept kernels by (filter, pattern, channel): the kernels want same-pattern runs.
    key = (torch.arange(cout, device=w.device).view(-1, 1) * 256 + pattern_id) * cin + torch.arange(cin, device=w.device)
    order = key[kept].argsort()
    o_idx, c_idx = kept.nonzero(as_tuple=True)
    o_idx, c_idx = o_idx[order], c_idx[order]
    pid = pattern_id[o_idx, c_idx]
    values = flat[o_idx, c_idx].gather(1, patterns.long()[pid])
    counts = torch.bincount(o_idx, minlength=cout)
    filter_ptr = torch.zeros(cout + 1, dtype=torch.int32, device=w.device)
    filter_ptr[1:] = counts.cumsum(0)
    return {
        "patterns": patterns.clone(),
        "filter_ptr": filter_ptr,
        "kernel_channel": c_idx.to(torch.int32),
        "kernel_pattern": pid.to(torch.uint8),
        "values": values.contiguous(),
    }


def flat_positions(patterns: torch.Tensor, filter_ptr: torch.Tensor, kernel_channel: torch.Tensor,
                   kernel_pattern: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Where each stored value sits in the flattened dense [Cout, Cin, 3, 3] weight: long [nnz, E]."""
    cout = filter_ptr.numel() - 1
    counts = (filter_ptr[1:] - filter_ptr[:-1]).long()
    o_idx = torch.repeat_interleave(torch.arange(cout, device=filter_ptr.device), counts)
    kernel = o_idx * in_channels + kernel_channel.long()
    return kernel.unsqueeze(1) * 9 + patterns.long()[kernel_pattern.long()]


def decompress(patterns: torch.Tensor, filter_ptr: torch.Tensor, kernel_channel: torch.Tensor,
               kernel_pattern: torch.Tensor, values: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Dense [Cout, Cin, 3, 3] weight from the compressed arrays (exact inverse of :func:`compress`;
    differentiable in ``values``)."""
    cout = filter_ptr.numel() - 1
    flat = torch.zeros(cout * in_channels * 9, dtype=values.dtype, device=values.device)
    idx = flat_positions(patterns, filter_ptr, kernel_channel, kernel_pattern, in_channels)
    # out of place: vmap over batched values (model ensembles) cannot write into an unbatched tensor
    return flat.index_put((idx,), values).view(cout, in_channels, 3, 3)


def validate(arrays: Dict[str, torch.Tensor], in_channels: int, out_channels: int) -> None:
    """Raises ValueError naming the first problem in ``arrays``; never reads out of bounds."""
    for name in ARRAY_NAMES:
        if not isinstance(arrays.get(name), torch.Tensor):
            raise ValueError(f"compressed weight is missing the '{name}' tensor")
        dims = 2 if name in ("patterns", "values") else 1
        if arrays[name].dim() != dims:
            raise ValueError(f"'{name}' must be {dims}-D, got shape {list(arrays[name].shape)}")
    if arrays["filter_ptr"].numel() != out_channels + 1:
        raise ValueError(f"filter_ptr has {arrays['filter_ptr'].numel()} entries, expected out_channels+1 = "
                         f"{out_channels + 1}")
    cpu = {k: arrays[k].detach().cpu() for k in ARRAY_NAMES}
    if cpu["values"].dtype not in (torch.float32, torch.float64):
        cpu["values"] = cpu["values"].float()
    err = ops.validate(*(cpu[k] for k in ARRAY_NAMES), in_channels)
    if err:  # the native text repeats what the caller says; keep only the problem
        raise ValueError(err[len(_NATIVE_PREFIX):] if err.startswith(_NATIVE_PREFIX) else err)
