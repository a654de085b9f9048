"""``compression_report(model)``: per-layer and total storage (every stored bit counted) and MACs."""
import numbers
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from .convert import check_initialized
from .fusion import DepthwiseConv3x3, FusedConv


@dataclass
class LayerRow:
    name: str
    kind: str
    shape: str
    density: float            # kept weights / dense weights
    dense_bits: int           # fp32 weight + bias
    stored_bits: int          # every stored array at its real width
    dense_macs: Optional[int]  # per image (None when no input size was given)
    kept_macs: Optional[int]
    detail: Dict[str, int]     # stored bits per array

    @property
    def ratio(self) -> float:
        return _ratio(self.dense_bits, self.stored_bits)


def _ratio(dense: int, stored: int) -> float:
    """dense / stored; 1.0 when both are 0 (a model without layers stores nothing either way)."""
    return 1.0 if dense == stored == 0 else dense / max(stored, 1)


class CompressionReport:
    """Rows (``.rows``) and totals (``.totals``); ``str(report)`` is a table."""

    def __init__(self, rows: List[LayerRow], other_bits: int = 0, dense_bits: Optional[int] = None,
                 stored_bits: Optional[int] = None):
        # dense_bits / stored_bits: the layers' totals with a tensor shared by two rows counted once
        # (default: the rows' sums)
        self.rows = rows
        dense = sum(r.dense_bits for r in rows) if dense_bits is None else dense_bits
        stored = sum(r.stored_bits for r in rows) if stored_bits is None else stored_bits
        have_macs = bool(rows) and all(r.dense_macs is not None for r in rows)
        self.totals = {
            "dense_bits": dense,
            "stored_bits": stored,
            "ratio": _ratio(dense, stored),
            # The whole state_dict: the layers above plus every other tensor (BatchNorm, embeddings, ...).
            "other_bits": other_bits,
            "model_dense_bits": dense + other_bits,
            "model_stored_bits": stored + other_bits,
            "model_ratio": _ratio(dense + other_bits, stored + other_bits),
            "dense_macs": sum(r.dense_macs for r in rows) if have_macs else None,
            "kept_macs": sum(r.kept_macs for r in rows) if have_macs else None,
        }
        if have_macs:
            self.totals["mac_reduction"] = self.totals["dense_macs"] / max(self.totals["kept_macs"], 1)

    def to_dict(self) -> dict:
        return {"rows": [dict(asdict(r), ratio=r.ratio) for r in self.rows], "totals": dict(self.totals)}

    def __str__(self) -> str:
        head = ["layer", "type", "shape", "density", "dense KiB", "stored KiB", "ratio", "MMACs dense", "MMACs kept"]
        body = []
        for r in self.rows:
            body.append([r.name, r.kind, r.shape, f"{100 * r.density:.1f}%", f"{r.dense_bits / 8192:.2f}",
                         f"{r.stored_bits / 8192:.2f}", f"{r.ratio:.1f}x", _mmacs(r.dense_macs), _mmacs(r.kept_macs)])
        t = self.totals
        tail = [["total (layers)", "", "", "", f"{t['dense_bits'] / 8192:.2f}", f"{t['stored_bits'] / 8192:.2f}",
                 f"{t['ratio']:.1f}x", _mmacs(t["dense_macs"]), _mmacs(t["kept_macs"])],
                ["other tensors", "", "", "", f"{t['other_bits'] / 8192:.2f}", f"{t['other_bits'] / 8192:.2f}",
                 "", "", ""],
                ["whole state_dict", "", "", "", f"{t['model_dense_bits'] / 8192:.2f}",
                 f"{t['model_stored_bits'] / 8192:.2f}", f"{t['model_ratio']:.1f}x", "", ""]]
        widths = [max(len(str(row[i])) for row in [head] + body + tail) for i in range(len(head))]
        line = lambda row: "  ".join(str(c).rjust(w) if i >= 3 else str(c).ljust(w)  # noqa: E731
                                     for i, (c, w) in enumerate(zip(row, widths)))
        rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
        return "\n".join([line(head), rule] + [line(r) for r in body] + [rule] + [line(r) for r in tail])

    __repr__ = __str__


def _mmacs(v: Optional[int]) -> str:
    return "-" if v is None else f"{v / 1e6:.2f}"


def _bits_of(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.numel() * t.element_size() * 8


def _output_positions(model: nn.Module, example_input: torch.Tensor, names: Sequence[str]) -> Dict[str, int]:
    """Per image, how many outputs each named module computes per output channel / feature (output
    pixels of a conv, tokens of a Linear on [N, T, F]), summed over its calls in one eval forward
    pass: a module called twice counts twice, one that eval does not run counts 0."""
    positions: Dict[str, int] = {name: 0 for name in names}
    hooks = []

    def record(name, layer):
        def hook(module, inputs, output):
            # a transposed conv computes every weight once per *input* position
            t = inputs[0] if getattr(layer, "transposed", False) and inputs else output
            if isinstance(t, torch.Tensor) and t.numel():
                if hasattr(layer, "in_features"):  # features last: [..., F]
                    channels, batched = t.shape[-1], t.dim() >= 2
                else:                              # [N, C, *spatial] or unbatched [C, *spatial]
                    spatial = len(getattr(layer, "kernel_size", (1, 1)))
                    channels, batched = t.shape[-spatial - 1], t.dim() == spatial + 2
                positions[name] += t.numel() // channels // (t.shape[0] if batched else 1)
        return hook

    modules = dict(model.named_modules())
    for name in names:
        layer = modules[name]
        # optimize_for_inference's FusedConv calls its layer's forward_fused (the layer's hooks never
        # run) and returns the layer's output shape: its calls are the layer's
        parent = modules.get(name.rpartition(".")[0]) if "." in name else None
        host = parent if isinstance(parent, FusedConv) and parent.conv is layer else layer
        hooks.append(host.register_forward_hook(record(name, layer)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return positions


def compression_report(model: nn.Module, input_size: Optional[Sequence[int]] = None,
                       example_input: Optional[torch.Tensor] = None) -> CompressionReport:
    """Storage and compute of every conv / linear layer of ``model``.

    Compressed modules report their stored arrays (``storage_bits()``: values or k-bit codes, all
    index arrays, pattern table, scale, bias); dense convs (``nn.Conv1d`` / ``2d`` / ``3d``,
    transposed too) and ``nn.Linear`` (subclasses too) count what their state_dict holds (the weight and
    bias at their dtype's width; ``torch.nn.utils.prune``'s weight_orig and weight_mask, a
    parametrization's original tensors). ``totals`` sums the layers (``ratio``) and, in ``model_*``, the
    whole state_dict: every other tensor (BatchNorm statistics, ...) counted at its stored width. A
    tensor shared by two layers (a tied weight) is counted once in the totals, as ``torch.save`` stores
    it. MACs are per image and need
    ``input_size`` (e.g. ``(1, 3, 224, 224)``) or an ``example_input`` (one forward pass records each
    layer's output size; a transposed conv counts per input position; a tensor given as the second
    argument is taken as the example input). MACs kept count the weights a layer computes with: its
    kept weights, or all of them in a row typed "(dense op)" (a SparseConv2d other than 1x1, or a
    k-bit layer at density >= 2/3), which decodes its weight and runs the dense op: it saves storage
    but no time. A layer registered at several places is one row, its tensors counted once.
    """
    if not isinstance(model, nn.Module) or isinstance(model, torch.jit.ScriptModule):
        raise TypeError("compression_report takes an eager nn.Module (not a state_dict or a scripted model), "
                        f"got {type(model).__name__}")
    if isinstance(input_size, torch.Tensor):  # compression_report(model, x): the tensor is the example
        input_size, example_input = None, input_size
    if input_size is not None:
        if isinstance(input_size, int) or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool)
                                                  and d >= 0 for d in input_size):
            raise TypeError(f"input_size must be a sequence of ints such as (1, 3, 224, 224), got {input_size!r}")
        input_size = [int(d) for d in input_size]
        if not input_size or input_size[0] < 1:  # MACs are per image: a batch of 0 has none to count
            raise ValueError(f"input_size needs a batch of at least 1 image, e.g. (1, 3, 224, 224), got {input_size!r}")
    if example_input is not None and not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a tensor, got {type(example_input).__name__}")
    check_initialized(model, "compression_report")
    layers = [(n, m) for n, m in model.named_modules() if hasattr(m, "storage_bits") or _dense_layer(m)]
    if example_input is None and input_size is not None:
        # the model's float dtype and device: of a parameter, or of a buffer (a k-bit layer without bias has no
        # parameter, its dtype is its scale's)
        p = next((t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()), None)
        example_input = torch.zeros(*input_size, device=p.device if p is not None else "cpu",
                                    dtype=p.dtype if p is not None else torch.float32)
    positions = _output_positions(model, example_input, [n for n, _ in layers]) if example_input is not None else {}
    rows = []
    stored: Dict[tuple, int] = {}  # every tensor counted once, by where its data is (torch.save stores it once)
    weights = set()                # the weights seen: a weight tied between two layers is one dense weight
    dense_total = 0
    for name, m in layers:
        state = {k: t for k, t in m.state_dict().items() if isinstance(t, torch.Tensor)}
        bias_bits = _bits_of(m.bias) if isinstance(getattr(m, "bias", None), torch.Tensor) else 0
        if hasattr(m, "storage_bits"):
            if any(t.is_meta for t in state.values()):
                raise ValueError(f"compression_report: layer '{name}' ({type(m).__name__}) is on the meta device: "
                                 "its stored size is in its arrays, which hold no data there; load them first "
                                 "(ps.load_compressed(model, state_dict, assign=True))")
            detail = {k: int(v) for k, v in m.storage_bits().items()}
            dense_bits = int(m.dense_bits())
            # a sparse layer without a native kernel for its geometry decodes and runs the dense op:
            # it computes every weight
            native = getattr(m, "_native", True)
            kind = type(m).__name__ + ("" if native else " (dense op)")
            dense_w, kept_w = m.macs((1, 1))          # per output position = weight counts
            density = kept_w / max(dense_w, 1)
            kept_w = kept_w if native else dense_w
            values = getattr(m, "values", None)
            weight = values if isinstance(values, torch.Tensor) and values.numel() else getattr(m, "codes", None)
            bias_bits = 0 if m.bias is None else dense_bits * m.bias.numel() // (dense_w + m.bias.numel())
        else:
            dense_bits = _bits_of(m.weight) + bias_bits
            # what the state_dict holds for it: weight and bias, or torch.nn.utils.prune's weight_orig and
            # weight_mask, a parametrization's original tensors
            detail = {k: _bits_of(t) for k, t in state.items()}
            kind = type(m).__name__
            dense_w = kept_w = m.weight.numel()     # a dense layer computes every weight
            density = 1.0
            weight = m.weight
        macs = (dense_w * positions[name], kept_w * positions[name]) if name in positions else (None, None)
        shape = _shape(m)
        rows.append(LayerRow(name, kind, shape, density, dense_bits, sum(detail.values()), macs[0], macs[1], detail))
        for t in state.values():
            stored.setdefault(_data_key(t), _bits_of(t))
        key = _data_key(weight) if isinstance(weight, torch.Tensor) else ("layer", id(m))
        dense_total += dense_bits if key not in weights else bias_bits
        weights.add(key)
    layers_stored = sum(stored.values())
    for t in model.state_dict().values():  # every other tensor (BatchNorm, ...), and none twice
        if isinstance(t, torch.Tensor):
            stored.setdefault(_data_key(t), _bits_of(t))
    return CompressionReport(rows, sum(stored.values()) - layers_stored, dense_total, layers_stored)


def _dense_layer(m: nn.Module) -> bool:
    """A dense conv (1-3d, transposed too; optimize_for_inference's DepthwiseConv3x3) or Linear,
    subclasses included."""
    return (isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, DepthwiseConv3x3))
            and isinstance(m.weight, torch.Tensor))


def _data_key(t: torch.Tensor) -> tuple:
    """Where a tensor's data is: equal for two names (or detached copies) of one tensor, e.g. a tied
    weight; the storage object, not its address (meta and empty tensors all have the address 0)."""
    return (t.untyped_storage()._cdata, t.storage_offset(), t.dtype, tuple(t.shape), tuple(t.stride()))


def _shape(m: nn.Module) -> str:
    """The weight's shape (a grouped conv's is [Cout, Cin / groups, kh, kw], a transposed conv's
    [Cin, Cout / groups, kh, kw]): a dense layer's own."""
    shape = getattr(m, "weight_shape", None)
    if shape is None and not hasattr(m, "storage_bits") and isinstance(getattr(m, "weight", None), torch.Tensor):
        shape = tuple(m.weight.shape)
    if shape is None and hasattr(m, "in_channels") and hasattr(m, "out_channels"):
        shape = (m.out_channels, m.in_channels // getattr(m, "groups", 1), *getattr(m, "kernel_size", ()))
    if shape is None and hasattr(m, "in_features"):
        shape = (m.out_features, m.in_features)
    if shape is None and isinstance(getattr(m, "weight", None), torch.Tensor):
        shape = tuple(m.weight.shape)
    return "x".join(str(int(v)) for v in shape) if shape is not None else ""
