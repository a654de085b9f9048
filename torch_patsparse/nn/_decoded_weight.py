"""The mixin of our layers whose ``weight`` is a property decoded from their compressed arrays, and
the relative error they report for what they store (``conversion_error``)."""
import torch


class DecodedWeight:
    """Refuses ``layer.weight = ...`` with a message that says what to do (nn.Module would raise a bare
    KeyError for a Parameter, as the name already exists). Comes before nn.Module in the bases."""

    def __setattr__(self, name: str, value) -> None:
        if name == "weight":  # nn.Module would say "attribute 'weight' already exists" (a KeyError)
            raise AttributeError(f"{type(self).__name__}.weight is decoded from the compressed arrays and cannot be "
                                 f"assigned; build the layer again with {type(self).__name__}.from_dense(module) "
                                 "(which reports its conversion error)")
        super().__setattr__(name, value)


def relative_error(stored: torch.Tensor, original: torch.Tensor) -> float:
    """``||stored - original|| / ||original||`` in float64: 0.0 when equal, inf when ``original`` is
    all zeros and ``stored`` is not. Both are divided by ``max|original|`` first, so the squares
    neither underflow nor overflow (weights of 1e-200 or 1e200 in a float64 model)."""
    a = stored.detach().to("cpu", torch.float64).reshape(-1)
    b = original.detach().to("cpu", torch.float64).reshape(-1)
    if torch.equal(a, b):
        return 0.0
    top = float(b.abs().max()) if b.numel() else 0.0
    if top == 0.0:
        return float("inf")
    return float((a / top - b / top).norm() / (b / top).norm())
