"""PatternConv2d's state_dict: the narrow stored forms (int16 channel indices, bit-packed codes) and
a load that checks every incoming array (format.validate, code range, scale) before it assigns
anything, so a rejected load leaves the module as it was. The module holds these forms itself."""
import math
from typing import Dict, Optional

import torch

from .. import bitpack
from .. import format as fmt
from .. import quant
from ._decoded_weight import DecodedWeight, warn_scale_rounding
from ._load import (apply_or_restore, assume_extra_state, check_bias, check_tensor, load_error, other_kind_error,
                    pre_hooks_first, shared_reshape_error, size_mismatch)

_SCHEMES = quant.SCHEMES
_EXTRA_KEYS = ("bits", "scheme", "in_channels", "out_channels")


class PatternStateDict(DecodedWeight):
    """Mixin of PatternConv2d (first base, before nn.Module): its state_dict save and load."""

    _SCALE_CARRIES_DTYPE = True

    def get_extra_state(self):
        return {"bits": self.bits, "scheme": self.scheme, "in_channels": self.in_channels,
                "out_channels": self.out_channels}

    def set_extra_state(self, state) -> None:
        err = self._extra_state_error(state, "")
        if err:
            raise ValueError(err)
        self.bits, self.scheme = state.get("bits"), state.get("scheme", "uniform")

    def _extra_state_error(self, state, prefix: str) -> Optional[str]:
        """Message when ``state`` (an incoming ``_extra_state``) does not fit this module, else None."""
        if not isinstance(state, dict) or not set(state) <= set(_EXTRA_KEYS):
            return load_error(prefix, f"_extra_state must be a dict with keys {list(_EXTRA_KEYS)}, "
                                      f"got {state!r}"[:300])
        bits, scheme = state.get("bits"), state.get("scheme", "uniform")
        if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8):
            return load_error(prefix, f"_extra_state has bits={bits!r}; expected None or an int in 1..8")
        if scheme not in _SCHEMES:
            return load_error(prefix, f"_extra_state has scheme={scheme!r}; expected one of {_SCHEMES}")
        shape = [state.get("out_channels", self.out_channels), state.get("in_channels", self.in_channels), 3, 3]
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            return load_error(prefix, f"_extra_state has in_channels / out_channels {shape[1]!r} / {shape[0]!r}")
        if shape[:2] != [self.out_channels, self.in_channels]:
            return size_mismatch(prefix, "weight", shape, [self.out_channels, self.in_channels, 3, 3])
        if (bits is not None) != self.quantized:
            return load_error(prefix, f"the state_dict is {'quantized' if bits is not None else 'not quantized'} but "
                                      f"this PatternConv2d is {'quantized' if self.quantized else 'not quantized'}; "
                                      "build the module with the matching `bits` before loading")
        return None

    def _incoming(self, state_dict, prefix: str, bits: Optional[int], scheme: str,
                  assign: bool = False) -> Dict[str, torch.Tensor]:
        """The compressed arrays of ``state_dict`` in this module's forms (channel indices as the
        module holds them, bit-packed codes, 0-d scale: in this module's dtype, or with ``assign``
        (``load_state_dict(assign=True)``) the state_dict's, as the bias is), checked completely; {}
        when it holds none. Raises ValueError."""
        names = ("patterns", "filter_ptr", "kernel_channel", "kernel_pattern")
        names += ("codes", "scale") if self.quantized else ("values",)
        present = [n for n in names if prefix + n in state_dict]
        if not present:
            return {}
        if present == ["values"]:  # the parameters alone (e.g. a fine-tuning checkpoint of the trainable
            # tensors, loaded with strict=False): values of this layer's own index arrays
            values = check_tensor("values", state_dict[prefix + "values"], floating=True, dim=2)
            if values.shape != self.values.shape:
                raise _SizeMismatch(size_mismatch(prefix, "values", values.shape, self.values.shape))
            return {"values": values}
        if len(present) != len(names):
            hint = ""
            if not self.quantized and prefix + "codes" in state_dict and prefix + "_extra_state" not in state_dict:
                hint = ("; it holds k-bit codes without the '_extra_state' that says their bits (a scripted "
                        "model's state_dict leaves it out: save the eager model's)")
            raise ValueError(f"incomplete: the state_dict has {present}, a weight needs {list(names)}{hint}")
        t = {n: state_dict[prefix + n] for n in names}
        check_tensor("patterns", t["patterns"], (torch.uint8,), 2)
        check_tensor("filter_ptr", t["filter_ptr"], (torch.int32,), 1)
        if t["filter_ptr"].numel() != self.out_channels + 1:  # a checkpoint of another width
            raise _SizeMismatch(size_mismatch(prefix, "filter_ptr", t["filter_ptr"].shape, (self.out_channels + 1,)))
        kc = check_tensor("kernel_channel", t["kernel_channel"], (torch.int16, torch.int32), 1).to(torch.int32)
        check_tensor("kernel_pattern", t["kernel_pattern"], (torch.uint8,), 1)
        nnz, entries = kc.numel(), t["patterns"].shape[1]
        # The narrowing wraps only an index that fmt.validate below rejects.
        out = {"patterns": t["patterns"], "filter_ptr": t["filter_ptr"],
               "kernel_channel": kc.to(channel_dtype(self.in_channels)), "kernel_pattern": t["kernel_pattern"]}
        if self.quantized:
            bits = self.bits if bits is None else bits
            codes = check_tensor("codes", t["codes"], (torch.uint8, torch.int8))
            if codes.dtype == torch.int8:  # unpacked [nnz, E] codes: store them packed
                check_tensor("codes", codes, dim=2)
                if tuple(codes.shape) != (nnz, entries):
                    raise ValueError(f"'codes' must be [nnz, E] = [{nnz}, {entries}], got {list(codes.shape)}")
                if codes.numel() and int(codes.to(torch.int16).abs().max()) > quant.levels(bits):  # (int8 -128)
                    raise ValueError(f"codes exceed the {bits}-bit range (|code| <= {quant.levels(bits)})")
                codes = pack_codes(codes, bits)
            check_tensor("codes", codes, dim=1)
            scale = check_tensor("scale", t["scale"], floating=True)
            if scale.numel() != 1:
                raise ValueError(f"'scale' must hold one number, got shape {list(scale.shape)}")
            # checked as it will be stored (1e-300 -> 0 in fp32)
            scale = scale.reshape(()) if assign else scale.reshape(()).to(self.scale.dtype)
            if t["scale"].dtype != scale.dtype:  # loaded into a 16-bit layer: as .half() says it
                warn_scale_rounding(prefix or type(self).__name__, t["scale"], scale, stacklevel=5)
            s = float(scale)
            if not math.isfinite(s) or s < 0:  # 0 decodes an all-zero layer only (checked by the decode)
                raise ValueError(f"'scale' must be a finite positive number, got {s}")
            # decoded as forward decodes it: a float64 scale in float64 (outside float32's range for
            # the weights of a float64 model), any other in float32
            wide = scale if scale.dtype == torch.float64 else scale.float()
            try:  # checks the packed length and padding, every code's range, a 0 scale, overflow
                values = torch.ops.patsparse.pattern_decode(codes, wide, nnz, entries, bits, scheme)
            except RuntimeError as e:
                raise ValueError(str(e).split("\n")[0]) from None
            out.update(codes=codes, scale=scale)
        else:
            values = check_tensor("values", t["values"], floating=True, dim=2)
            out["values"] = values
        fmt.validate({"patterns": out["patterns"], "filter_ptr": out["filter_ptr"], "kernel_channel": kc,
                      "kernel_pattern": out["kernel_pattern"], "values": values}, self.in_channels, self.out_channels)
        return out

    @pre_hooks_first
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Validate everything first, assign only then: a rejected load leaves the module as it was.
        extra = state_dict.get(prefix + "_extra_state")
        err = other_kind_error(self, state_dict, prefix)
        if err is None and extra is not None:
            err = self._extra_state_error(extra, prefix)
        if err is None:
            err = check_bias(self, state_dict, prefix, self.out_channels)
        arrays: Dict[str, torch.Tensor] = {}
        if err is None:
            bits = extra.get("bits") if isinstance(extra, dict) else self.bits
            scheme = extra.get("scheme", "uniform") if isinstance(extra, dict) else self.scheme
            try:
                arrays = self._incoming(state_dict, prefix, bits, scheme,
                                        bool(local_metadata.get("assign_to_params_buffers", False)))
            except _SizeMismatch as e:
                err = str(e)
            except ValueError as e:
                err = load_error(prefix, str(e))
        if err is None:
            err = shared_reshape_error(self, prefix, arrays)
        if err is not None:
            error_msgs.append(err)
            return
        if extra is None and len(arrays) > 1:  # a tensors-only or scripted model's state_dict: assumed, and said
            assume_extra_state(self, state_dict, prefix, (
                f"the codes' bits and scheme): decoding its codes as this layer's {self.bits}-bit {self.scheme!r} "
                f"ones, which is wrong if they were saved with others" if self.quantized else
                f"the weight's shape): loading it as this layer's {[self.out_channels, self.in_channels, 3, 3]}"))

        def apply():
            for name, t in arrays.items():
                state_dict[prefix + name] = t
                mine = getattr(self, name)
                # The number of kept kernels (and K) may differ from this module's: take the incoming
                # shape, in the same tensor object (a scripted copy shares it). Same shape: loaded in
                # place, as nn.Module does (shared memory sees it; never uninitialised memory).
                if mine.shape != t.shape:
                    mine.data = torch.empty(t.shape, dtype=mine.dtype, device=mine.device)
            super(PatternStateDict, self)._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                                                missing_keys, unexpected_keys, error_msgs)
            if arrays:  # weights that no conversion of this module made (load_compressed's layers: 0.0 too)
                self.conversion_error = 0.0

        apply_or_restore(self, ("bits", "scheme", "conversion_error"), apply, error_msgs)


class _SizeMismatch(ValueError):
    """A complete load message in nn.Module's size-mismatch wording."""


def channel_dtype(in_channels: int) -> torch.dtype:
    """Stored dtype of kernel_channel: int16 while every channel index fits."""
    return torch.int16 if in_channels <= 32768 else torch.int32


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """int8 codes (|code| <= levels(bits)) -> the stored bit-packed form (code + levels at
    ``signed_code_width(bits)`` bits each; a kept position may hold 0)."""
    return bitpack.pack(codes.detach().reshape(-1).long().cpu() + quant.levels(bits), quant.signed_code_width(bits))
