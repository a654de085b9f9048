"""The compressed-weight storage shared by SparseLinear and SparseConv2d: buffers, build, decode
cache, properties, report protocol and a validating ``load_state_dict`` (a rejected load leaves the
module as it was). The stored form itself is :mod:`torch_patsparse.sparse_format`'s."""
import math
import warnings
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from .. import sparse_format
from .._tracing import fx_attr, fx_leaf
from ._decoded_weight import DecodedWeight, check_weight_size, relative_error
from ._load import (apply_or_restore, assume_extra_state, check_bias, load_error, other_kind_error,
                    pre_hooks_first, shared_reshape_error, size_mismatch)

_ARRAYS = sparse_format.ARRAY_NAMES


class _SparseWeightMixin(DecodedWeight):
    """Holds one compressed weight as buffers (exactly its state_dict: no decoded copy); subclasses
    define ``weight_shape`` (a tuple), ``_op_takes_shape`` (True when the native sparse op takes the
    layer's geometry) and ``forward``. ``_native`` (kept current on build and load) says whether the
    sparse op computes the layer: not for a quantized weight at density >= 2/3, whose CSR runtime
    form (6 bytes per kept weight) would outgrow the dense fp32 weight. The other layers read their
    dense weight from ``patsparse::sparse_decode`` (decoded once per content into a native cache,
    never stale), so their TorchScript / lite files hold only the stored form too."""

    __jit_unused_properties__ = ["nnz", "bits", "scheme", "index_kind"]

    def _init_storage(self, bias: bool, device=None, dtype=None) -> None:
        """Empty storage (an all-zero weight), on ``device``; ``dtype`` (a floating dtype, as the dense
        layer's factory argument) is the bias's and the stored values' dtype, as after ``.to(dtype)``."""
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"{type(self).__name__}: dtype must be a floating-point torch.dtype, got {dtype!r}")
        check_weight_size(type(self).__name__, self.weight_shape)
        self.conversion_error = 0.0
        for k in _ARRAYS:
            self.register_buffer(k, torch.zeros(0, dtype=torch.float32 if k in ("values", "scale") else torch.uint8,
                                                device=device))
        self.register_parameter("bias", nn.Parameter(torch.zeros(self.weight_shape[0], device=device)) if bias else None)
        with torch.device("cpu"):  # (data, built on the CPU also inside a `with torch.device("meta")` block)
            arrays = sparse_format.encode_zeros(math.prod(self.weight_shape))
        self._set_arrays(arrays)
        if dtype is not None:
            self.to(dtype)

    # -- building ---------------------------------------------------------------------------
    def _set_weight(self, weight: torch.Tensor, bits: Optional[int], scheme: str) -> None:
        if tuple(weight.shape) != tuple(self.weight_shape):
            raise ValueError(f"weight has shape {tuple(weight.shape)}, expected {tuple(self.weight_shape)}")
        self._set_arrays(sparse_format.encode(weight, bits, scheme))
        # 0.0 unless `bits` quantized or the weight had more than fp32's precision
        self.conversion_error = relative_error(self.dense_weight(), weight)
        if bits is None and self.conversion_error > 0:  # not asked for: say so
            warnings.warn(f"{type(self).__name__}.from_dense: the {weight.dtype} weight is stored as float32 values "
                          f"(relative weight error {self.conversion_error:.3g}); the layer computes in "
                          f"{weight.dtype} with them", UserWarning, stacklevel=3)

    def _set_arrays(self, arrays: Dict[str, torch.Tensor]) -> None:
        dev = self.header.device
        for k, t in arrays.items():
            setattr(self, k, t.to(dev))
        self._update_native(arrays["header"])

    def _op_takes_layer(self) -> bool:
        """Whether the native sparse op takes this layer's geometry (modules pickled before
        ``_op_takes_shape`` existed kept that in ``_native``)."""
        takes = getattr(self, "_op_takes_shape", None)
        return bool(self._native if takes is None else takes)

    def _update_native(self, header: Optional[torch.Tensor] = None) -> None:
        """``_native`` for the current arrays (the rule in the class docstring), read from ``header``
        (a copy of the stored one with data, for a module on the meta device) or the stored one."""
        fields = sparse_format.header_fields(self.header if header is None else header, self.weight_shape)
        dense_enough = 3 * fields[4] >= 2 * int(math.prod(self.weight_shape))
        self._native = self._op_takes_layer() and not (fields[3] != 0 and dense_enough)

    def _copy_bias(self, bias: Optional[torch.Tensor]) -> None:
        if self.bias is not None:
            with torch.no_grad():
                self.bias.copy_(bias.detach())

    # -- reading ----------------------------------------------------------------------------
    def _dtype(self) -> torch.dtype:
        """The layer's float dtype (of its values)."""
        return self.values.dtype

    def _fields(self):
        return sparse_format.header_fields(self.header, self.weight_shape)

    @property
    def nnz(self) -> int:
        """Number of kept (stored, nonzero) weights."""
        return self._fields()[4]

    @property
    def bits(self) -> Optional[int]:
        """Quantization bits (None when values are stored as fp32)."""
        return self._fields()[3] or None

    @property
    def scheme(self) -> str:
        return sparse_format.SCHEME_NAMES[self._fields()[2]]

    @property
    def index_kind(self) -> str:
        f = self._fields()
        return "bitmap" if f[0] == sparse_format.BITMAP else f"relative{f[1] + 1}"

    @torch.jit.unused
    def dense_weight(self) -> torch.Tensor:
        """The decoded dense fp32 weight (a new tensor on every call)."""
        return sparse_format.decode({k: getattr(self, k) for k in _ARRAYS}, self.weight_shape)

    @torch.jit.unused
    def _eager_entry(self, x: Any, dense_fn: Callable) -> Optional[torch.Tensor]:
        """Checks at the top of an eager forward: while torch.fx traces, this layer's call_module node
        (_tracing.py); for a non-tensor input, the dense layer's TypeError (``dense_fn`` is F.linear /
        F.conv2d); else None."""
        traced = fx_leaf(self, x)
        if traced is None and not isinstance(x, torch.Tensor):
            dense_fn(x, torch.zeros(self.weight_shape))  # raises the TypeError
        return traced

    @property
    def weight(self) -> torch.Tensor:
        """The decoded dense weight in the layer's dtype (a new tensor on each access, not a Parameter),
        for code that reads ``layer.weight``; writing into it does not change the layer
        (``load_state_dict`` does)."""
        if torch.jit.is_scripting():  # (the Python decode validates; the native one is scriptable)
            w = torch.ops.patsparse.sparse_decode(self.header, self.index, self.codes, self.values.float(),
                                                  self.scale.float(), self.weight_shape)
        else:
            # (torch.fx proxies parameters only: a layer without bias has none, and its weight is a
            # constant of the graph)
            traced = fx_attr(self, "weight", self.bias)
            if traced is not None:
                return traced
            if self.header.is_meta:  # a model built on the meta device: no data, as nn.Linear's weight there
                w = torch.empty(self.weight_shape, device="meta")
            else:
                w = self.dense_weight()
        return w.to(self.values.dtype)

    # -- report protocol ----------------------------------------------------------------------
    def storage_bits(self) -> Dict[str, int]:
        """Bits of every stored array at its stored width (packed arrays: whole bytes)."""
        out = {k: getattr(self, k).numel() * getattr(self, k).element_size() * 8 for k in _ARRAYS}
        out["bias"] = 0 if self.bias is None else self.bias.numel() * self.bias.element_size() * 8
        return out

    def dense_bits(self) -> int:
        """Bits of the dense weight and bias in this layer's float dtype."""
        return self.values.element_size() * 8 * (int(math.prod(self.weight_shape))
                                                 + (0 if self.bias is None else self.bias.numel()))

    # -- state dict ---------------------------------------------------------------------------
    def get_extra_state(self):
        # The weight's shape is architecture, not data; saving it lets a load into a layer of another
        # shape fail with a size mismatch instead of decoding into the wrong positions.
        return {"weight_shape": list(self.weight_shape)}

    def set_extra_state(self, state) -> None:
        err = self._extra_state_error(state, "")
        if err:
            raise ValueError(err)

    def _extra_state_error(self, state, prefix: str) -> Optional[str]:
        if not isinstance(state, dict) or set(state) - {"weight_shape"}:
            return load_error(prefix, f"_extra_state must be a dict with key 'weight_shape', got {state!r}"[:300])
        shape = state.get("weight_shape", list(self.weight_shape))
        if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) for d in shape):
            return load_error(prefix, f"_extra_state['weight_shape'] must be a list of ints, got {shape!r}"[:300])
        if tuple(shape) != tuple(self.weight_shape):
            return size_mismatch(prefix, "weight", shape, self.weight_shape)
        return None

    @pre_hooks_first
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Validate everything first, assign only then: a rejected load leaves the module as it was.
        extra_key = prefix + "_extra_state"
        incoming = {k: state_dict[prefix + k] for k in _ARRAYS if prefix + k in state_dict}
        errors = [other_kind_error(self, state_dict, prefix)]
        if errors[0] is None and extra_key in state_dict:
            errors.append(self._extra_state_error(state_dict[extra_key], prefix))
        elif errors[0] is None and incoming:
            # Checkpoints written before the shape was saved (and scripted models' state_dicts): the
            # arrays alone decode into any shape of as many weights: this layer's is assumed, and said.
            assume_extra_state(self, state_dict, prefix,
                               f"the weight's shape): loading it as this layer's {list(self.weight_shape)}")
        errors.append(check_bias(self, state_dict, prefix, self.weight_shape[0]))
        if not any(errors):
            try:
                if len(incoming) == len(_ARRAYS):
                    for k, t in incoming.items():
                        if not isinstance(t, torch.Tensor):
                            raise ValueError(f"'{k}' must be a tensor, got {type(t).__name__}")
                    sparse_format.decode(incoming, self.weight_shape)
                elif incoming:
                    raise ValueError(f"incomplete: the state_dict has {sorted(incoming)}, a weight needs "
                                     f"{list(_ARRAYS)}")
            except ValueError as e:
                errors.append(load_error(prefix, str(e)))
            if len(incoming) == len(_ARRAYS):
                errors.append(shared_reshape_error(self, prefix, incoming, keep_float_dtype=True))
        errors = [e for e in errors if e]
        if errors:
            error_msgs.extend(errors)
            return

        def apply():
            if len(incoming) == len(_ARRAYS):
                for k, t in incoming.items():  # as PatternConv2d's load (_pattern_state.py)
                    mine = getattr(self, k)
                    # float arrays keep the layer's dtype (copied into, as nn.Linear's weight), the
                    # index arrays take the stored one
                    dtype = mine.dtype if mine.is_floating_point() else t.dtype
                    if mine.shape != t.shape or mine.dtype != dtype:
                        mine.data = torch.empty(t.shape, dtype=dtype, device=mine.device)
            super(_SparseWeightMixin, self)._load_from_state_dict(
                state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
            # (from the incoming header: a meta-device layer loaded without assign stays without data)
            self._update_native(incoming.get("header") if len(incoming) == len(_ARRAYS) else None)
            if incoming:  # weights that no conversion of this module made (as in PatternConv2d's load)
                self.conversion_error = 0.0

        apply_or_restore(self, ("_native", "conversion_error"), apply, error_msgs)

    def _storage_repr(self) -> str:
        if self.header.is_meta:
            return "stored on the meta device"
        bits = self.bits
        s = (f"nnz={self.nnz}/{int(math.prod(self.weight_shape))}, "
             f"values={'fp32' if bits is None else f'{bits}-bit {self.scheme}'}, index={self.index_kind}")
        return s + (f", conversion_error={self.conversion_error:.3g}" if self.conversion_error else "")
