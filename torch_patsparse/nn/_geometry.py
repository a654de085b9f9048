"""The conv geometry attributes of PatternConv2d / SparseConv2d behave as nn.Conv2d's: code that sets
``conv.stride = 2`` or ``conv.padding = 0`` after construction (as people do with nn.Conv2d) changes
what the layer computes. The value is checked and normalised on assignment as the constructor does
(an int becomes a pair; a float or a string is a TypeError, not truncated), and what the layer
derived from its geometry is refreshed (``_geometry_changed``), so no forward runs a stale geometry.
``padding_mode`` other than ``"zeros"`` is refused: these layers have no other padding, and so is a new
``in_channels`` / ``out_channels`` (on nn.Conv2d a label, here the shape of the stored weight)."""
from .. import ops

_PAIRS = ("kernel_size", "stride", "dilation")
_SHAPE = ("in_channels", "out_channels")
_GEOMETRY = _PAIRS + ("padding", "groups", "padding_mode") + _SHAPE


class ConvGeometry:
    """Mixin (before nn.Module in the bases) normalising the geometry attributes on assignment.
    ``_STORAGE``: the name of a buffer the constructor registers after the geometry (from then on an
    assignment is checked against the layer)."""

    _STORAGE = ""
    # nn.Conv2d's, for code that inspects conv layers (FLOP counters, fusion helpers): never transposed
    transposed = False
    output_padding = (0, 0)

    def __setattr__(self, name: str, value) -> None:
        if name not in _GEOMETRY:
            super().__setattr__(name, value)
            return
        cls = type(self).__name__
        if name in _PAIRS:
            value = tuple(ops.pair(value, f"{cls}.{name}"))
        elif name == "groups":
            value = ops.int_arg(value, f"{cls}.groups")
        elif name == "padding_mode" and value != "zeros":
            raise ValueError(f"{cls} supports padding_mode='zeros' only, got {value!r}")
        elif name == "padding":
            if isinstance(value, str):
                if value not in ("same", "valid"):
                    raise ValueError(f"Invalid padding string {value!r}, should be one of {{'valid', 'same'}}")
            else:
                value = tuple(ops.pair(value, f"{cls}.padding"))
        if self._STORAGE not in self.__dict__.get("_buffers", {}):  # (the constructor sets them one by one)
            super().__setattr__(name, value)
            return
        old = getattr(self, name)
        if name in _SHAPE:
            if value != old:
                raise ValueError(f"{cls}.{name} is {old}, the shape of its stored weight; build a new layer "
                                 f"(from_dense) for {value}")
            return
        super().__setattr__(name, value)
        try:
            self._geometry_changed(name)
        except Exception:
            super().__setattr__(name, old)
            raise

    def _geometry_changed(self, name: str) -> None:
        """Checks the geometry after an assignment to ``name`` (ValueError for one the layer cannot compute: the
        attribute is then put back) and refreshes what the layer derived from it."""
        raise NotImplementedError
