"""load_state_dict helpers shared by the compressed modules: one message format, checks of incoming
tensors, and all-or-nothing assignment (a rejected load leaves the module as it was)."""
import warnings
from collections import OrderedDict
from typing import Callable, Dict, Iterable, Optional, Sequence

import torch
from torch import nn


def load_error(prefix: str, message: str) -> str:
    """The one form of a rejected compressed weight, e.g. ``conv.: invalid compressed weight: ...``."""
    return f"{prefix}: invalid compressed weight: {message}" if prefix else f"invalid compressed weight: {message}"


def size_mismatch(prefix: str, name: str, got: Sequence[int], want: Sequence[int]) -> str:
    """nn.Module's wording for a tensor of the wrong shape (e.g. a checkpoint of another width)."""
    return (f"size mismatch for {prefix}{name}: copying a param with shape {torch.Size(got)} from checkpoint, "
            f"the shape in current model is {torch.Size(want)}.")


def check_tensor(name: str, t, dtypes: Optional[Iterable[torch.dtype]] = None, dim: Optional[int] = None,
                 floating: bool = False) -> torch.Tensor:
    """Raises ValueError unless ``t`` is a tensor of one of ``dtypes`` (or floating) with ``dim`` dims."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"'{name}' must be a tensor, got {type(t).__name__}")
    if floating and not t.is_floating_point():
        raise ValueError(f"'{name}' must be a floating-point tensor, got {t.dtype}")
    if dtypes is not None and t.dtype not in tuple(dtypes):
        want = " or ".join(str(d) for d in dtypes)
        raise ValueError(f"'{name}' must have dtype {want}, got {t.dtype}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"'{name}' must be {dim}-D, got shape {list(t.shape)}")
    return t


_KIND_ARRAYS = {"PatternConv2d": ("patterns", "kernel_pattern"), "SparseConv2d / SparseLinear": ("header", "index")}


def other_kind_error(module: nn.Module, state_dict, prefix: str) -> Optional[str]:
    """Message for the arrays of the other compressed kind (a SparseConv2d's into a PatternConv2d, or
    the reverse), which would otherwise be reported as a wrong _extra_state."""
    mine = "PatternConv2d" if type(module).__name__ == "PatternConv2d" else "SparseConv2d / SparseLinear"
    for kind, names in _KIND_ARRAYS.items():
        if kind != mine and all(prefix + n in state_dict for n in names) \
                and not any(prefix + n in state_dict for n in _KIND_ARRAYS[mine]):
            return load_error(prefix, f"the state_dict holds a {kind} weight ({', '.join(names)}, ...), this layer "
                                      f"is a {type(module).__name__}: load it into a layer of that kind "
                                      "(ps.load_compressed(dense_model, state_dict) builds each layer's kind from it)")
    return None


def check_bias(module: nn.Module, state_dict, prefix: str, out: int) -> Optional[str]:
    """Message for an incoming bias of the wrong shape (checked before anything is assigned)."""
    b = state_dict.get(prefix + "bias")
    if getattr(module, "bias", None) is None or b is None:
        return None
    if not isinstance(b, torch.Tensor):
        return f"{prefix}bias: expected a tensor, got {type(b).__name__}"
    if tuple(b.shape) != (out,):
        return size_mismatch(prefix, "bias", b.shape, (out,))
    return None


def shared_reshape_error(module: nn.Module, prefix: str, incoming: Dict[str, torch.Tensor],
                         keep_float_dtype: bool = False) -> Optional[str]:
    """Message when the load would give an array of ``module`` that is in shared memory
    (``share_memory()``: other processes compute with it) another shape or dtype: it would get new,
    unshared storage while the arrays of the same shape are written in place, so the other processes
    would compute with a mix of the old and the new weight. ``keep_float_dtype``: floating arrays are
    copied into the module's dtype (no new storage for a dtype change)."""
    torn = []
    for k, t in incoming.items():
        mine = getattr(module, k)
        if mine.device.type != "cpu" or not mine.is_shared():  # (CUDA tensors always report shared)
            continue
        dtype = mine.dtype if keep_float_dtype and mine.is_floating_point() else t.dtype
        if mine.shape != t.shape or mine.dtype != dtype:
            torn.append(k)
    if not torn:
        return None
    return load_error(prefix, f"this layer is in shared memory (share_memory()) and the state_dict's {torn} have "
                              "another shape (another sparsity or pattern count): other processes would keep the "
                              "old arrays beside the new ones. Load it before sharing, or share a new model")


def assume_extra_state(module: nn.Module, state_dict, prefix: str, assumed: str) -> None:
    """A state_dict without the module's '_extra_state' (tensors only: safetensors, a scripted model's):
    the module's own is assumed for it, and ``assumed`` (what that means) is said in a warning."""
    warnings.warn(f"{prefix or type(module).__name__}: the state_dict has no '_extra_state' ({assumed})",
                  UserWarning, stacklevel=4)
    state_dict[prefix + "_extra_state"] = module.get_extra_state()


def apply_or_restore(module: nn.Module, attrs: Sequence[str], apply: Callable[[], None], error_msgs: list) -> None:
    """Runs ``apply`` (which assigns already validated state); if it adds to ``error_msgs`` or raises,
    puts back every parameter, buffer and attribute in ``attrs`` as it was."""
    params, buffers = dict(module._parameters), dict(module._buffers)
    data = {k: t.detach().clone() for d in (params, buffers) for k, t in d.items() if t is not None}
    saved = {a: getattr(module, a) for a in attrs}
    before = len(error_msgs)

    def restore():
        module._parameters.clear()
        module._parameters.update(params)
        module._buffers.clear()
        module._buffers.update(buffers)
        with torch.no_grad():
            for d in (params, buffers):
                for k, t in d.items():
                    if t is not None:
                        t.data = data[k]
        for a, v in saved.items():
            setattr(module, a, v)

    try:
        apply()
    except BaseException:
        restore()
        raise
    if len(error_msgs) > before:
        restore()


def pre_hooks_first(load):
    """Decorates a layer's ``_load_from_state_dict`` so that its load_state_dict pre-hooks run before
    the layer's own checks read anything, as nn.Module runs them (a hook that renames or supplies keys
    is then checked like any other input), and nn.Module's call inside does not run them again."""
    def wrapped(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        hooks = self._load_state_dict_pre_hooks
        if not hooks:
            return load(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        for hook in list(hooks.values()):
            hook(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        self._load_state_dict_pre_hooks = OrderedDict()
        try:
            return load(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        finally:
            self._load_state_dict_pre_hooks = hooks
    wrapped.__doc__ = load.__doc__
    return wrapped
