"""``optimize_for_inference(model)``: an eval-only copy of a (converted) model in which BatchNorm,
the residual add and clamp-style activations run inside the output stage of our ops, and the dense
segments run in the memory format that is fast for them.

What it does, on a deep copy (the input model is untouched):

* **fx graph** where the model traces (``torch.fx``, our modules kept as leaves; a module that does
  not trace is handled by recursing into its children): every ``PatternConv2d`` / ``SparseConv2d`` /
  ``SparseLinear`` followed (each intermediate result used once) by an eval ``BatchNorm``, then a
  residual ``add``, then ReLU / ReLU6 / Hardtanh / ``clamp`` (modules, ``F.relu``, ``torch.relu``,
  ``relu_``, ...) becomes one :class:`FusedConv` call: ``clamp(conv(x) * scale + shift + residual,
  lo, hi)``, with BatchNorm folded to ``scale = gamma / sqrt(var + eps)``, ``shift = scale * (bias -
  mean) + beta`` and the stored (possibly quantized) weights untouched. A dense ``nn.Conv2d``
  followed by BatchNorm gets the BatchNorm folded into its weight and bias.
* **memory format**: a dense conv whose (BatchNorm / activation) output feeds a max-pool runs that
  segment in channels_last and returns to NCHW after the pool (PyTorch's NCHW ``max_pool2d`` is
  10-30x slower than channels_last at one thread; ResNet's 7x7 stem + pool); other NCHW max-pools
  with kernel == stride (VGG) run as k row maxima and k column maxima over strided views
  (:func:`max_pool2d_nchw`, exactly the same values).
* **no trace** (and inside ``nn.Sequential`` children of modules that do not trace): consecutive
  conv, BatchNorm, activation children of an ``nn.Sequential`` fold the same way (no residual).

Our modules with a native fused path (a ``forward_fused(input, scale, shift, residual, lo, hi)``
method: PatternConv2d, SparseConv2d 1x1, SparseLinear) run the epilogue in
the kernel; others run their forward and the epilogue in torch ops (same result).

The result computes what the model computes (to float rounding: about 1e-6 relative), scripts with
TorchScript and exports with ``torch.export``. It is for inference only: its parameters do not
require grad, ``.train()`` raises on the fused modules (so on any model holding one), and a backward
through a fused op raises (train the original model and optimize it again).
"""
import copy
import math
import operator
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import fx, nn

from .nn.kinds import PATTERN, layer_kind
from .nn.pattern_conv import PatternConv2d
from .nn.sparse import SparseConv2d, SparseLinear
from .patterns import PatternSet

__all__ = ["optimize_for_inference", "FusedConv", "max_pool2d_nchw"]

_INF = math.inf
_OURS = (PatternConv2d, SparseConv2d, SparseLinear)
_EVAL_ONLY = ("this model was built by torch_patsparse.optimize_for_inference for inference only (BatchNorm "
              "is folded into the convs); train the original model and call optimize_for_inference again")


class FusedConv(nn.Module):
    """One of our conv / Linear modules with its epilogue: ``clamp(conv(x) * scale + shift + residual,
    lo, hi)`` per output channel (dim 1 of a conv output, the last dim of a Linear one). ``conv``'s
    own bias is folded into ``shift`` (``conv.bias`` is None: ``forward_fused`` never adds the bias).
    Built by :func:`optimize_for_inference`."""

    lo: float
    hi: float
    native: bool
    out_features: int
    channel_view: List[int]
    geometry: List[int]

    def __init__(self, conv: nn.Module, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
                 lo: float = -_INF, hi: float = _INF):
        super().__init__()
        self.conv = conv
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)
        # mean 0 / variance 1 for the torch-op epilogue: batch_norm(eps=0) is exactly x * scale + shift,
        # in one pass that is 4x faster than addcmul over [C, 1, 1] views (measured).
        both = scale is not None and shift is not None
        self.register_buffer("unit_mean", torch.zeros_like(scale) if both else None, persistent=False)
        self.register_buffer("unit_var", torch.ones_like(scale) if both else None, persistent=False)
        self.lo, self.hi = float(lo), float(hi)
        # A module with forward_fused may run it natively only for some layers (SparseConv2d: 1x1
        # without padding or groups; `_native` says which); the others take the torch-op route.
        self.native = hasattr(conv, "forward_fused") and bool(getattr(conv, "_native", True))
        linear = isinstance(conv, (nn.Linear, SparseLinear))
        self.channel_view = [-1] if linear else [-1, 1, 1]
        # Output geometry (kernel, stride, padding, dilation per axis), so a residual that would
        # broadcast is recognised before the fused op (which needs the output's exact shape) runs.
        self.out_features = int(conv.out_features if linear else conv.out_channels)
        self.geometry = [] if linear else _geometry(conv)

    def train(self, mode: bool = True):
        if mode:  # BatchNorm is folded in and the fused op has no backward
            raise RuntimeError(_EVAL_ONLY)
        return super().train(False)

    def _residual_fits(self, x: torch.Tensor, residual: torch.Tensor) -> bool:
        if residual.dim() != x.dim():
            return False
        if len(self.geometry) == 0:
            expected = list(x.shape[:-1]) + [self.out_features]
        else:
            expected = list(x.shape[:-3]) + [self.out_features]
            g = self.geometry
            for i in range(2):
                k, s, p, d = g[i], g[2 + i], g[4 + i], g[6 + i]
                expected.append((x.size(x.dim() - 2 + i) + 2 * p - d * (k - 1) - 1) // s + 1)
        return list(residual.shape) == expected

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        out: Optional[torch.Tensor] = None
        if hasattr(self.conv, "forward_fused"):  # resolved when scripted, too
            if self.native:
                if residual is None or self._residual_fits(x, residual):
                    return self.conv.forward_fused(x, self.scale, self.shift, residual, self.lo, self.hi)
                out = self.conv.forward_fused(x, self.scale, self.shift, None, -_INF, _INF)
        if out is None:  # one pass for scale and shift, then in place (that output is ours to change)
            out = self.conv(x)
            scale, shift = self.scale, self.shift
            mean, var = self.unit_mean, self.unit_var
            if scale is not None and shift is not None and mean is not None and var is not None:
                if out.dim() == len(self.channel_view) + 1:  # channels in dim 1
                    out = F.batch_norm(out, mean, var, scale, shift, False, 0.0, 0.0)
                else:
                    out = torch.addcmul(shift.view(self.channel_view), out, scale.view(self.channel_view))
            elif scale is not None:
                out = out * scale.view(self.channel_view)
            elif shift is not None:
                out = out + shift.view(self.channel_view)
        assert out is not None
        if residual is not None:
            same = residual.shape == out.shape and residual.dtype == out.dtype
            out = out.add_(residual) if same else out + residual  # (broadcasting / type promotion as `+`)
        if self.lo != -_INF or self.hi != _INF:
            out = out.clamp_(self.lo, self.hi)
        return out

    def extra_repr(self) -> str:
        parts = [f"scale={'folded BatchNorm' if self.scale is not None else None}",
                 f"shift={'yes' if self.shift is not None else None}"]
        if self.lo != -_INF or self.hi != _INF:
            parts.append(f"clamp=({self.lo}, {self.hi})")
        return ", ".join(parts)


def _geometry(conv: nn.Module) -> List[int]:
    """[kh, kw, sh, sw, ph, pw, dh, dw] giving the conv's output size by PyTorch's formula."""
    if conv.padding == "same":  # stride 1, output size = input size: as a 1x1 conv without padding
        return [1, 1, 1, 1, 0, 0, 1, 1]
    k = [int(v) for v in conv.kernel_size]
    p = [0, 0] if conv.padding == "valid" else [int(v) for v in conv.padding]
    return k + [int(v) for v in conv.stride] + p + [int(v) for v in conv.dilation]


def max_pool2d_nchw(x: torch.Tensor, k: int) -> torch.Tensor:
    """``F.max_pool2d(x, k)`` (kernel = stride = k, no padding, floor mode): NCHW-contiguous input
    runs as k row maxima then k column maxima over strided views (the same values; NaN propagates
    as in max_pool2d); other layouts call F.max_pool2d, which is fast for them."""
    if k == 1 or x.dim() != 4 or not x.is_contiguous() or x.size(2) < k or x.size(3) < k:
        return F.max_pool2d(x, k)
    h, w = x.size(2) // k * k, x.size(3) // k * k
    rows = torch.maximum(x[:, :, 0:h:k, :w], x[:, :, 1:h:k, :w])
    for i in range(2, k):
        rows = torch.maximum(rows, x[:, :, i:h:k, :w])
    out = torch.maximum(rows[:, :, :, 0::k], rows[:, :, :, 1::k])
    for j in range(2, k):
        out = torch.maximum(out, rows[:, :, :, j::k])
    return out


# ---------------------------------------------------------------- folding helpers
def _bn_scale_shift(bn: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of an eval BatchNorm, in float64: y = x * scale + shift."""
    var, mean = bn.running_var.detach().double(), bn.running_mean.detach().double()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    return scale, shift


def _foldable_bn(bn: nn.Module, conv: nn.Module) -> bool:
    channels = conv.out_features if isinstance(conv, (nn.Linear, SparseLinear)) else conv.out_channels
    return (isinstance(bn, nn.BatchNorm2d) and not isinstance(conv, (nn.Linear, SparseLinear))
            and bn.running_mean is not None and bn.running_var is not None and bn.num_features == channels)


def _fold_dense(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    """A dense conv with an eval BatchNorm folded into its weight and bias (computed in float64)."""
    scale, shift = _bn_scale_shift(bn)
    new = copy.deepcopy(conv)
    w = conv.weight.detach().double() * scale.view(-1, 1, 1, 1)
    b = shift if conv.bias is None else conv.bias.detach().double() * scale + shift
    new.weight = nn.Parameter(w.to(conv.weight.dtype), requires_grad=False)
    new.bias = nn.Parameter(b.to(conv.weight.dtype), requires_grad=False)
    return new


def _fused(conv: nn.Module, bn: Optional[nn.Module], lo: float, hi: float) -> FusedConv:
    """FusedConv over a copy of our module ``conv`` with ``bn`` (or None) and the bounds; the
    module's bias moves into the shift."""
    conv = copy.deepcopy(conv)  # a module called at two places keeps its bias at the other
    tensors = [t for t in list(conv.parameters()) + list(conv.buffers()) if t.is_floating_point()]
    dtype = tensors[0].dtype if tensors else torch.get_default_dtype()
    device = tensors[0].device if tensors else torch.device("cpu")
    bias = None if conv.bias is None else conv.bias.detach().double()
    conv.bias = None
    scale = shift = None
    if bn is not None:
        scale, shift = _bn_scale_shift(bn)
        if bias is not None:
            shift = bias * scale + shift
        scale = scale.to(dtype)
    elif bias is not None:
        shift = bias
    if shift is not None:
        shift = shift.to(dtype)
    return FusedConv(conv, None if scale is None else scale.to(device), None if shift is None else shift.to(device),
                     lo, hi)


def _as_pattern_stem(conv: nn.Module) -> Optional[PatternConv2d]:
    """A dense fp32 CPU 3x3 conv with at most 4 input channels (a stem) as a PatternConv2d holding
    every weight in one 9-entry pattern (exact), or None. oneDNN's NCHW path is slow for so few
    input channels (VGG-16's 3 -> 64 at 224x224: ~15 ms at one thread, ours ~1.7 ms, measured);
    the output stays NCHW for the convs that follow."""
    if type(conv) is not nn.Conv2d or conv.kernel_size != (3, 3) or conv.in_channels > 4 \
            or conv.weight.dtype != torch.float32 or conv.weight.device.type != "cpu" \
            or layer_kind(conv) != PATTERN:
        return None
    return PatternConv2d.from_dense(conv, PatternSet(torch.arange(9, dtype=torch.uint8).view(1, 9)))


def _act_bounds_module(m: Optional[nn.Module]) -> Optional[Tuple[float, float]]:
    if isinstance(m, nn.ReLU):
        return 0.0, _INF
    if isinstance(m, nn.Hardtanh):  # ReLU6 is a Hardtanh(0, 6)
        return float(m.min_val), float(m.max_val)
    return None


# ---------------------------------------------------------------- fx passes
class _Tracer(fx.Tracer):
    """Keeps our modules (and torch.nn's) as leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _OURS + (FusedConv,)) or super().is_leaf_module(m, qualname)


_IDENTITIES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu_}
_HARDTANH_FUNCTIONS = {F.hardtanh, F.hardtanh_}
_CLAMP_FUNCTIONS = {torch.clamp, torch.clamp_, torch.clip, torch.clip_}
_ADD_FUNCTIONS = {operator.add, torch.add, operator.iadd}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _act_bounds(node: fx.Node, src: fx.Node, modules: Dict[str, nn.Module]) -> Optional[Tuple[float, float]]:
    """(lo, hi) when ``node`` is a clamp-style activation of ``src`` alone, else None."""
    if not node.args or node.args[0] is not src:
        return None
    args, kwargs = node.args[1:], dict(node.kwargs)
    if any(isinstance(a, fx.Node) for a in list(args) + list(kwargs.values())):
        return None
    if node.op == "call_module":
        return _act_bounds_module(modules.get(node.target))
    target = node.target
    if (node.op == "call_function" and target in _RELU_FUNCTIONS) or (node.op == "call_method"
                                                                      and target in ("relu", "relu_")):
        return 0.0, _INF
    if node.op == "call_function" and target is F.relu6:
        return 0.0, 6.0
    if node.op == "call_function" and target in _HARDTANH_FUNCTIONS:
        lo = args[0] if len(args) > 0 else kwargs.get("min_val", -1.0)
        hi = args[1] if len(args) > 1 else kwargs.get("max_val", 1.0)
        return (float(lo), float(hi)) if _number(lo) and _number(hi) and lo <= hi else None
    if (node.op == "call_function" and target in _CLAMP_FUNCTIONS) or (node.op == "call_method" and target in
                                                                       ("clamp", "clamp_", "clip", "clip_")):
        lo = args[0] if len(args) > 0 else kwargs.get("min")
        hi = args[1] if len(args) > 1 else kwargs.get("max")
        if (lo is not None and not _number(lo)) or (hi is not None and not _number(hi)) or (lo is None and hi is None):
            return None
        lo, hi = (-_INF if lo is None else float(lo)), (_INF if hi is None else float(hi))
        return (lo, hi) if lo <= hi else None
    return None


def _residual_of(node: fx.Node, src: fx.Node) -> Optional[fx.Node]:
    """The other operand when ``node`` is ``src + other`` (other a tensor node), else None."""
    if node.kwargs.get("alpha", 1) != 1 or "out" in node.kwargs or len(node.args) != 2:
        return None
    a, b = node.args
    in_place = (node.op == "call_function" and node.target is operator.iadd) or (node.op == "call_method"
                                                                                and node.target == "add_")
    if not ((node.op == "call_function" and node.target in _ADD_FUNCTIONS) or (node.op == "call_method" and
                                                                              node.target in ("add", "add_"))):
        return None
    if a is src and isinstance(b, fx.Node) and b is not src:
        return b
    if b is src and isinstance(a, fx.Node) and not in_place:  # an in-place add would write the other operand
        return a
    return None


def _only_user(node: fx.Node) -> Optional[fx.Node]:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _fuse_graph(gm: fx.GraphModule) -> None:
    modules = dict(gm.named_modules())
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_module":
            continue
        # identities in eval mode (they would separate a conv from its BatchNorm)
        if isinstance(modules.get(node.target), _IDENTITIES) and len(node.args) == 1 and not node.kwargs \
                and isinstance(node.args[0], fx.Node):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            continue
        stem = _as_pattern_stem(modules.get(node.target))
        if stem is not None:
            _set_module(gm, node.target, stem)
            modules[node.target] = stem
    counter = 0
    # Last conv first: of two branches meeting in an add (ResNet's main path and its downsample),
    # the later one (the main path) takes the add and the activation.
    for node in reversed(list(graph.nodes)):
        if node.op != "call_module" or node.graph is not graph:
            continue
        conv = modules.get(node.target)
        if len(node.args) != 1 or node.kwargs:
            continue
        ours = isinstance(conv, _OURS)
        if not ours and type(conv) is not nn.Conv2d:
            continue
        chain, cur, bn = [node], node, None
        user = _only_user(cur)
        if user is not None and user.op == "call_module" and _foldable_bn(modules.get(user.target), conv) \
                and user.args[0] is cur:
            bn, cur = modules[user.target], user
            chain.append(user)
        if not ours:  # dense conv: fold BatchNorm into the weight, leave the rest to PyTorch
            if bn is not None:
                _set_module(gm, node.target, _fold_dense(conv, bn))
                cur.replace_all_uses_with(node)
                graph.erase_node(cur)
            continue
        residual = None
        user = _only_user(cur)
        if user is not None and _residual_of(user, cur) is not None:
            residual = _residual_of(user, cur)
            cur = user
            chain.append(user)
        lo, hi = -_INF, _INF
        user = _only_user(cur)
        bounds = _act_bounds(user, cur, modules) if user is not None else None
        if bounds is not None:
            (lo, hi), cur = bounds, user
            chain.append(user)
        if len(chain) == 1 and conv.bias is None:
            continue
        name = f"fused_{node.target.replace('.', '_')}"
        while hasattr(gm, name):
            counter += 1
            name = f"fused_{node.target.replace('.', '_')}_{counter}"
        gm.add_submodule(name, _fused(conv, bn, lo, hi))
        with graph.inserting_before(cur):
            args = (node.args[0],) if residual is None else (node.args[0], residual)
            new = graph.call_module(name, args)
        cur.replace_all_uses_with(new)
        for n in reversed(chain):
            graph.erase_node(n)
    graph.lint()


def _is_max_pool(node: fx.Node, modules: Dict[str, nn.Module]) -> bool:
    """A 2-d max-pool that returns one tensor (no indices)."""
    if node.op == "call_module":
        m = modules.get(node.target)
        return isinstance(m, nn.MaxPool2d) and not m.return_indices
    return (node.op == "call_function" and node.target in (F.max_pool2d, torch.max_pool2d)
            and not node.kwargs.get("return_indices", False) and len(node.args) < 7)


def _pool_args(node: fx.Node, modules: Dict[str, nn.Module]) -> Optional[int]:
    """k when the max-pool is kernel = stride = k, no padding, dilation 1, floor mode, no indices."""
    if node.op == "call_module":
        m = modules[node.target]
        k, s, p, d = m.kernel_size, m.stride, m.padding, m.dilation
        extra = m.ceil_mode or m.return_indices
    else:
        names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
        vals = dict(zip(names, node.args[1:]))
        vals.update(node.kwargs)
        k, s = vals.get("kernel_size"), vals.get("stride")
        p, d = vals.get("padding", 0), vals.get("dilation", 1)
        extra = vals.get("ceil_mode", False) or vals.get("return_indices", False)
        if len(node.args) < 2 or any(isinstance(v, fx.Node) for v in vals.values()):
            return None
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    k = pair(k)
    s = k if s is None or s == () or s == [] else pair(s)
    if extra or k[0] != k[1] or s != k or pair(p) != (0, 0) or pair(d) != (1, 1) or not isinstance(k[0], int):
        return None
    return k[0]


def _memory_format_pass(gm: fx.GraphModule) -> None:
    modules = dict(gm.named_modules())
    graph = gm.graph
    for pool in list(graph.nodes):
        if not _is_max_pool(pool, modules) or not pool.args or not isinstance(pool.args[0], fx.Node):
            continue
        # Walk back over single-use activations (and BatchNorm) to a dense conv: run that segment
        # in channels_last (fast dense conv and max-pool), back to NCHW after the pool.
        src = pool.args[0]
        while (len(src.users) == 1 and src.args and isinstance(src.args[0], fx.Node)
               and (_act_bounds(src, src.args[0], modules) is not None
                    or (src.op == "call_module" and isinstance(modules.get(src.target), nn.BatchNorm2d)))):
            src = src.args[0]
        dense = (src.op == "call_module" and type(modules.get(src.target)) is nn.Conv2d and len(src.users) == 1
                 and isinstance(src.args[0], fx.Node))
        if dense:
            _channels_last_segment(graph, src, pool)
            continue
        k = _pool_args(pool, modules)
        if k is not None and k > 1:
            with graph.inserting_before(pool):
                new = graph.call_function(max_pool2d_nchw, (pool.args[0], k))
            pool.replace_all_uses_with(new)
            graph.erase_node(pool)
            continue
        # Any other max-pool: channels_last copy, pool, NCHW copy (64x112x112, 3x3 stride 2: 0.8 +
        # 0.3 + 0.2 ms against 10 ms for the NCHW pool, one thread, measured).
        _channels_last_segment(graph, pool, pool)
    graph.lint()


def _channels_last_segment(graph: fx.Graph, first: fx.Node, last: fx.Node) -> None:
    """Run the nodes from ``first`` to ``last`` in channels_last: ``first``'s input is converted to it,
    ``last``'s output back to NCHW (contiguous) for every user."""
    with graph.inserting_before(first):
        cl = graph.call_method("contiguous", (first.args[0],), {"memory_format": torch.channels_last})
    first.replace_input_with(first.args[0], cl)
    with graph.inserting_after(last):
        back = graph.call_method("contiguous", (last,))
    last.replace_all_uses_with(back, delete_user_cb=lambda user: user is not back)


# ---------------------------------------------------------------- module-level folding (no trace)
def _fold_sequential(seq: nn.Sequential) -> None:
    """conv [BatchNorm] [activation] runs among the children of ``seq``, folded in place."""
    names = list(seq._modules.keys())
    i = 0
    while i < len(names):
        stem = _as_pattern_stem(seq._modules[names[i]])
        if stem is not None:
            seq._modules[names[i]] = stem
        conv = seq._modules[names[i]]
        ours = isinstance(conv, _OURS)
        if not ours and type(conv) is not nn.Conv2d:
            i += 1
            continue
        j, bn, bounds = i + 1, None, None
        if j < len(names) and _foldable_bn(seq._modules[names[j]], conv):
            bn, j = seq._modules[names[j]], j + 1
        if ours and j < len(names):
            bounds = _act_bounds_module(seq._modules[names[j]])
            if bounds is not None:
                j += 1
        if ours and (bn is not None or bounds is not None or conv.bias is not None):
            seq._modules[names[i]] = _fused(conv, bn, *(bounds or (-_INF, _INF)))
        elif bn is not None:
            seq._modules[names[i]] = _fold_dense(conv, bn)
        else:
            j = i + 1
        for k in range(i + 1, j):
            seq._modules[names[k]] = nn.Identity()
        i = j


def _set_module(root: nn.Module, qualname: str, module: nn.Module) -> None:
    parent, _, name = qualname.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def _optimize(module: nn.Module) -> nn.Module:
    """The optimized form of ``module`` (an eval-mode copy owned by the caller)."""
    tracer = _Tracer()
    if tracer.is_leaf_module(module, ""):  # torch.nn's and ours: nothing inside to fuse
        return module
    try:
        graph = tracer.trace(module)
    except Exception:  # does not trace (data-dependent control flow, ...): recurse into the children
        graph = None
    if graph is None:
        for name, child in list(module.named_children()):
            setattr(module, name, _optimize(child))
        if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
            _fold_sequential(module)  # only where the children run one after the other
        return module
    gm = fx.GraphModule(module, graph, module.__class__.__name__)
    _fuse_graph(gm)
    _memory_format_pass(gm)
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def optimize_for_inference(model: nn.Module) -> nn.Module:
    """An eval-only copy of ``model`` with BatchNorm folded into the preceding convs, residual adds
    and ReLU / ReLU6 / Hardtanh / clamp activations fused into the output stage of our ops, and
    dense conv + max-pool segments in the faster memory format (module docstring for the details).
    ``model`` is not changed. The copy computes the same outputs (to float rounding), scripts with
    TorchScript, exports with ``torch.export`` and pickles (``torch.save``). It is for inference:
    its parameters do not require grad, ``.train()`` raises (on the fused modules, so on any model
    that holds one), and a backward through a fused op raises. Where the model traces with torch.fx
    the result is an ``fx.GraphModule`` (other methods and attributes of the model's class are not
    kept); otherwise it is the model's own class with its children optimized."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize_for_inference expects an nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError("optimize_for_inference takes the Python model (before torch.jit.script): a ScriptModule "
                        "cannot be traced with torch.fx")
    out = _optimize(copy.deepcopy(model).eval())
    for p in out.parameters():
        p.requires_grad_(False)
    return out
