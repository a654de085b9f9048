"""The mixin of our layers whose ``weight`` is a property decoded from their compressed arrays."""


class DecodedWeight:
    """Refuses ``layer.weight = ...`` with a message that says what to do (nn.Module would raise a bare
    KeyError for a Parameter, as the name already exists). Comes before nn.Module in the bases."""

    def __setattr__(self, name: str, value) -> None:
        if name == "weight":  # nn.Module would say "attribute 'weight' already exists" (a KeyError)
            raise AttributeError(f"{type(self).__name__}.weight is decoded from the compressed arrays and cannot be "
                                 f"assigned; build the layer again with {type(self).__name__}.from_dense(module) "
                                 "(which reports its conversion error)")
        super().__setattr__(name, value)
