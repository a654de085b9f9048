"""Which compressed module can take a layer: the one predicate ``convert``, ``PatternConv2d.from_dense``
and ``compress_module`` share, so they can never disagree."""
from typing import Optional, Tuple

import torch
from torch import nn

__all__ = ["layer_kind", "conv_padding"]

PATTERN, SPARSE = "pattern", "sparse"


# A layer's weight and bias, and the tensors torch.nn.utils' prune, weight_norm and spectral_norm
# hooks keep for them (convert handles those tools)
_LAYER_TENSORS = {"weight", "bias", "weight_orig", "weight_mask", "bias_orig", "bias_mask", "weight_g", "weight_v",
                  "weight_u"}


def own_state(module: nn.Module) -> list:
    """Names of the parameters / buffers a layer holds besides ``_LAYER_TENSORS``: a hook or subclass
    may read them, and a compressed layer would not have them."""
    return [n for n, t in [*module._parameters.items(), *module._buffers.items()]
            if t is not None and n not in _LAYER_TENSORS]


def _plain(module: nn.Module, base: type) -> bool:
    """An instance of ``base`` that computes what ``base`` computes (its own class or a subclass that
    keeps ``base.forward`` and nn.Conv2d's ``_conv_forward``), with a materialised floating-point
    weight and no state of its own (:func:`own_state`)."""
    if not isinstance(module, base) or any(getattr(type(module), f, None) is not getattr(base, f, None)
                                           for f in ("forward", "_conv_forward")) or own_state(module):
        return False
    w = getattr(module, "weight", None)
    return (isinstance(w, torch.Tensor) and not isinstance(w, nn.parameter.UninitializedParameter)
            and w.is_floating_point())


def conv_padding(conv: nn.Conv2d) -> Tuple[int, int]:
    """Numeric (pad_h, pad_w) equal to ``conv.padding``, resolving ``"valid"`` and ``"same"``.

    ``"same"`` is symmetric (hence expressible as numbers) exactly when every dilated kernel extent
    ``dilation * (k - 1)`` is even; raises ValueError otherwise."""
    if not isinstance(conv.padding, str):
        return int(conv.padding[0]), int(conv.padding[1])
    if conv.padding == "valid":
        return 0, 0
    total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
    if any(t % 2 for t in total):
        raise ValueError(f"padding='same' with kernel_size={tuple(conv.kernel_size)} and dilation="
                         f"{tuple(conv.dilation)} pads asymmetrically; no explicit padding reproduces it")
    return total[0] // 2, total[1] // 2


def layer_kind(module: nn.Module) -> Optional[str]:
    """``"pattern"`` when :class:`PatternConv2d` can take ``module`` (a plain 3x3 ``nn.Conv2d``, groups=1,
    zero padding, numeric / ``"valid"`` / ``"same"`` padding), ``"sparse"`` when :class:`SparseConv2d` /
    :class:`SparseLinear` can (any other plain ``nn.Conv2d`` with zero padding, any plain ``nn.Linear``),
    else ``None`` (other modules, padding modes other than zeros, lazy or non-float weights).

    Whether the weights *fit* (pruned to patterns, quantized) is a separate question: see ``convert``.
    """
    if _plain(module, nn.Linear):
        return SPARSE
    if not _plain(module, nn.Conv2d) or module.padding_mode != "zeros":
        return None
    if tuple(module.kernel_size) == (3, 3) and module.groups == 1:
        try:
            conv_padding(module)
        except ValueError:
            return SPARSE
        return PATTERN
    return SPARSE
