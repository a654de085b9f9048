"""``convert(model)``: swap eligible layers for their compressed versions."""
import copy
from typing import Dict, Iterable, Optional, Union

from torch import nn

from .nn.pattern_conv import PatternConv2d
from .patterns import PatternSet

_LAYER_CHOICES = ("3x3", "all")


def is_pattern_eligible(module: nn.Module) -> bool:
    """A plain 3x3, groups=1, zero-padding ``nn.Conv2d`` with numeric padding."""
    return (type(module) is nn.Conv2d and tuple(module.kernel_size) == (3, 3) and module.groups == 1
            and module.padding_mode == "zeros" and not isinstance(module.padding, str))


def convert(model: nn.Module, pattern_set: Union[None, PatternSet, Dict[str, PatternSet]] = None,
            layers: str = "3x3", exclude: Iterable[str] = (), bits: Optional[int] = None,
            scheme: str = "uniform", inplace: bool = False) -> nn.Module:
    """Returns ``model`` with every eligible ``nn.Conv2d`` (3x3, groups=1, zero padding) replaced by
    :class:`PatternConv2d`, anywhere in the module tree.

    pattern_set: one :class:`PatternSet` for every layer, a dict {module name: PatternSet}, or None
        (each layer selects its own 8 patterns; weights that already fit are stored as they are).
    layers: "3x3" (default) or "all": also compress other Conv2d and Linear layers into sparse +
        k-bit modules (``torch_patsparse.nn.sparse``).
    exclude: module names to keep dense (e.g. ``["features.0"]`` for a first conv with 3 inputs).
    bits / scheme: quantize the kept weights (None: keep codes only if the weights already sit on
        quantization levels).
    inplace: modify ``model`` itself instead of a deep copy.
    """
    if layers not in _LAYER_CHOICES:
        raise ValueError(f"layers must be one of {_LAYER_CHOICES}, got {layers!r}")
    exclude = set(exclude)
    names = {name for name, _ in model.named_modules()}
    unknown = exclude - names
    if unknown:
        raise ValueError(f"exclude names modules that are not in the model: {sorted(unknown)}")
    if isinstance(pattern_set, dict):
        missing = set(pattern_set) - names
        if missing:
            raise ValueError(f"pattern_set names modules that are not in the model: {sorted(missing)}")
    if not inplace:
        model = copy.deepcopy(model)
    # Collect first, then swap: replacing while iterating named_modules would skip or revisit.
    swaps = []
    for name, module in model.named_modules():
        if not name or name in exclude:
            continue
        new = None
        if is_pattern_eligible(module):
            ps = pattern_set.get(name) if isinstance(pattern_set, dict) else pattern_set
            new = PatternConv2d.from_dense(module, ps, bits=bits, scheme=scheme)
        elif layers == "all" and type(module) in (nn.Conv2d, nn.Linear):
            from .nn import sparse
            new = sparse.compress_module(module)
        if new is not None:
            new.train(module.training)
            swaps.append((name, new))
    for name, new in swaps:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    return model
