"""The mixin of our layers whose ``weight`` is a property decoded from their compressed arrays, and
the relative error they report for what they store (``conversion_error``)."""
import math
import warnings

import torch
from torch.nn.utils import skip_init


def check_weight_size(cls: str, shape) -> None:
    """RuntimeError, as the dense layer's constructor raises, for a weight whose fp32 bytes overflow int64
    (the compressed layer would otherwise allocate its bias and index for minutes, then fail in the format)."""
    if math.prod(int(d) for d in shape) * 4 > 2 ** 63 - 1:
        raise RuntimeError(f"{cls}: Storage size calculation overflowed with sizes={list(shape)} (the dense weight)")


class DecodedWeight:
    """Refuses ``layer.weight = ...`` with a message that says what to do (nn.Module would raise a bare
    KeyError for a Parameter, as the name already exists). Comes before nn.Module in the bases."""

    _SCALE_CARRIES_DTYPE = False  # (PatternConv2d: its quantized layers' dtype is their scale's)

    def __setattr__(self, name: str, value) -> None:
        if name == "weight":  # nn.Module would say "attribute 'weight' already exists" (a KeyError)
            raise AttributeError(f"{type(self).__name__}.weight is decoded from the compressed arrays and cannot be "
                                 f"assigned; build the layer again with {type(self).__name__}.from_dense(module) "
                                 "(which reports its conversion error)")
        super().__setattr__(name, value)

    def _dense_copy(self, cls, *args, **kwargs):
        """``cls(*args, **kwargs)`` (the dense layer of this shape, device and dtype) holding the decoded
        weight and the bias. Built without its random init: a conversion leaves the user's RNG stream alone."""
        module = skip_init(cls, *args, **kwargs)
        with torch.no_grad():
            module.weight.copy_(self.dense_weight())
            if self.bias is not None:
                module.bias.copy_(self.bias)
        return module

    def _apply(self, fn, recurse=True):
        """Integer buffers (the index arrays) keep their dtype under any cast (``nn.Module.type`` casts
        every tensor; the next forward failed). ``.half()`` / ``.to(torch.bfloat16)``: a k-bit layer's
        one quantization ``scale`` serves every weight, so rounding it to 16 bits changes them all by one
        factor (flushed to 0 or 25% off below fp16's normal range) where a dense ``.half()`` rounds each
        weight on its own. Sparse layers keep it at fp32 (devices still move; their dtype is their
        ``values``'); in a PatternConv2d it carries the layer's dtype, so a rounding beyond 16-bit
        precision warns."""
        scale = self._buffers.get("scale")
        ints = {n: b for n, b in self._buffers.items() if b is not None and not b.is_floating_point()}
        out = super()._apply(fn, recurse)
        for n, b in ints.items():  # `.type(torch.float32)` casts every tensor: the index arrays keep their dtype
            now = self._buffers.get(n)
            if now is not None and now.dtype != b.dtype:
                self._buffers[n] = b.to(now.device)
        new = self._buffers.get("scale")
        if scale is None or new is None or new.dtype not in (torch.float16, torch.bfloat16) or scale.dtype == new.dtype:
            return out
        if self._SCALE_CARRIES_DTYPE:
            warn_scale_rounding(type(self).__name__, scale, new, stacklevel=4)
        else:
            self._buffers["scale"] = scale.to(new.device, torch.promote_types(scale.dtype, torch.float32))
        return out


def warn_scale_rounding(owner: str, was: torch.Tensor, now: torch.Tensor, stacklevel: int) -> None:
    """Warns when a k-bit layer's one quantization scale ``was`` became ``now`` (a narrower dtype) with
    more than a normal rounding: below the dtype's normal range every weight moves by that factor."""
    a, b = float(was.detach().float().cpu()), float(now.detach().float().cpu())
    if a > 0 and abs(b - a) > a * torch.finfo(now.dtype).eps / 2:
        warnings.warn(f"{owner}: the quantization scale {a:.3g} rounds to {b:.3g} in {now.dtype} "
                      f"({abs(b - a) / a:.2%} off, every weight by that factor: below the dtype's normal range); "
                      "keep this layer in float32", UserWarning, stacklevel=stacklevel)


def relative_error(stored: torch.Tensor, original: torch.Tensor) -> float:
    """``||stored - original|| / ||original||`` in float64: 0.0 when equal, inf when ``original`` is
    all zeros and ``stored`` is not. Both are divided by ``max|original|`` first, so the squares
    neither underflow nor overflow (weights of 1e-200 or 1e200 in a float64 model). Computed in
    chunks: a float64 copy of a whole large weight would take several times its memory."""
    a, b = stored.detach().reshape(-1), original.detach().reshape(-1)
    if a.numel() != b.numel():
        raise ValueError(f"relative_error: {a.numel()} stored weights for {b.numel()} original ones")

    def chunks():
        step = 1 << 20
        for i in range(0, b.numel(), step):
            yield a[i:i + step].to("cpu", torch.float64), b[i:i + step].to("cpu", torch.float64)

    equal, top = True, 0.0
    for ca, cb in chunks():
        equal = equal and torch.equal(ca, cb)
        top = max(top, float(cb.abs().max()))
    if equal:
        return 0.0
    if top == 0.0:
        return float("inf")
    num = den = 0.0
    for ca, cb in chunks():
        num += float((ca / top - cb / top).square().sum())
        den += float((cb / top).square().sum())
    return math.sqrt(num / den)
