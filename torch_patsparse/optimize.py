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
  followed by BatchNorm gets the BatchNorm folded into its weight and bias; a dense depthwise 3x3
  one (MobileNet's) then also takes the activation and runs as :class:`DepthwiseConv3x3` (native
  NCHW kernel with the clamp in its output stage), and so does a depthwise 3x3 ``SparseConv2d`` (it
  has no sparse kernel: it ran ``F.conv2d`` on its decoded weight; the optimized model holds that
  small dense weight).
* **memory format**: a dense conv whose (BatchNorm / activation) output feeds a max-pool runs that
  segment in channels_last and returns to NCHW after the pool (PyTorch's NCHW ``max_pool2d`` is
  10-30x slower than channels_last at one thread; ResNet's 7x7 stem + pool); other NCHW 2x2
  max-pools with stride 2 (VGG) run the native NCHW kernel (:func:`max_pool2d_nchw`, bit for bit
  F.max_pool2d), any other max-pool in channels_last.
* **no trace** (and inside ``nn.Sequential`` children of modules that do not trace): consecutive
  conv, BatchNorm, activation children of an ``nn.Sequential`` fold the same way (no residual).

Our modules with a native fused path (a ``forward_fused(input, scale, shift, residual, lo, hi)``
method: PatternConv2d, SparseConv2d 1x1, SparseLinear) run the epilogue in
the kernel; others run their forward and the epilogue in torch ops (same result).

The result computes what the model computes (to float rounding: about 1e-6 relative), scripts with
TorchScript and exports with ``torch.export``. It is for inference only: its parameters do not
require grad, ``.train()`` raises (a graph module before any child changes mode), and a backward
through a fused op raises (train the original model and optimize it again).
"""
import ast
import collections
import functools
import inspect
import math
import operator
import re
import textwrap
import warnings
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import fx, nn

from .convert import check_initialized, copy_model
from .fusion import (DepthwiseConv3x3, EvalOnly, FusedConv, act_bounds_module, as_dense_depthwise, as_pattern_stem,
                     channels_last_4d, foldable_bn, fold_dense, fused, hooked, is_depthwise3x3, max_pool2d_nchw)
from .nn.pattern_conv import PatternConv2d
from .nn.sparse import SparseConv2d, SparseLinear

# FusedConv, DepthwiseConv3x3 and max_pool2d_nchw live in torch_patsparse.fusion (re-exported here).
__all__ = ["optimize_for_inference", "FusedConv", "DepthwiseConv3x3", "max_pool2d_nchw"]

_INF = math.inf
_OURS = (PatternConv2d, SparseConv2d, SparseLinear)


# ---------------------------------------------------------------- fx passes
class _Tracer(fx.Tracer):
    """Keeps our modules (and torch.nn's) as leaves, and modules with forward hooks (traced through,
    their hooks would run once, on fx's Proxy, and never again; they are optimized on their own)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (isinstance(m, _OURS + (FusedConv, DepthwiseConv3x3)) or (bool(qualname) and hooked(m))
                or super().is_leaf_module(m, qualname))


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
        return act_bounds_module(modules.get(node.target))
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


_SIZE_METHODS = {"size", "dim", "numel", "nelement", "item", "tolist", "stride", "element_size"}
_NUMBER_OPS = {operator.getitem, operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv,
               operator.mod, operator.pow, operator.neg, len, int, float}


def _number_node(n) -> bool:
    """Whether fx node ``n`` computes a Python number from sizes (``x.size(1)``, ``x.shape[-1] / 2``):
    no tensor, so no residual for our fused ops."""
    if not isinstance(n, fx.Node):
        return not isinstance(n, (list, tuple, dict))
    if n.op == "call_method" and n.target in _SIZE_METHODS:
        return True
    if n.op == "call_function" and n.target is getattr:
        return len(n.args) > 1 and n.args[1] in ("shape", "ndim", "dtype", "device")
    if n.op == "call_function" and n.target in _NUMBER_OPS:
        return all(_number_node(a) for a in n.args)
    return False


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
    if a is src and isinstance(b, fx.Node) and b is not src and not _number_node(b):
        return b
    if b is src and isinstance(a, fx.Node) and a is not src and not in_place and not _number_node(a):
        return a  # (in place, `a += conv(...)` writes `a`: no)
    return None


def _only_user(node: fx.Node) -> Optional[fx.Node]:
    return next(iter(node.users)) if len(node.users) == 1 else None


_INPLACE_FUNCTIONS = {operator.setitem, operator.iadd, operator.isub, operator.imul, operator.itruediv,
                      operator.ifloordiv, operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor,
                      operator.ilshift, operator.irshift, operator.imatmul}


def _maybe_inplace(node: fx.Node, modules: Dict[str, nn.Module]) -> bool:
    """Whether ``node`` may write a tensor it takes (``x.relu_()``, ``nn.ReLU(inplace=True)``,
    ``x += y``, ``x[i] = y``, ``F.relu(x, inplace=True)``, ``torch.mul(a, b, out=x)``, ...)."""
    if "out" in node.kwargs:
        return True
    if node.op == "call_module":  # a module kept whole that is not torch.nn's or ours (hooked): its code is unseen
        m = modules.get(node.target)
        return bool(getattr(m, "inplace", False)) or not (
            type(m).__module__.startswith("torch.nn.") or type(m).__module__.startswith(__package__ + "."))
    if node.op == "call_method":
        return str(node.target).endswith("_")
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return (node.target in _INPLACE_FUNCTIONS or (name.endswith("_") and not name.endswith("__"))
                or node.kwargs.get("inplace", False) is True or any(a is True for a in node.args[1:]))
    return False


def _safe_prefix(chain: List[fx.Node], modules: Dict[str, nn.Module]) -> int:
    """How many nodes of ``chain`` (a conv and its single-use successors, in graph order) one fused call
    can replace: it reads the conv's input (and the residual) where the last of them is, so no node
    that may write a tensor in place may run between the conv and that one."""
    k, n = 1, chain[0].next
    while k < len(chain):
        if n is chain[k]:
            k += 1
        elif _maybe_inplace(n, modules):
            break
        n = n.next
    return k


def _free_name(gm: fx.GraphModule, base: str) -> str:
    name, counter = base, 0
    while hasattr(gm, name):
        counter += 1
        name = f"{base}_{counter}"
    return name


def _own_module(gm: fx.GraphModule, modules: Dict[str, nn.Module], calls: Dict[str, int], node: fx.Node,
                new: nn.Module, keep: bool = False) -> None:
    """Puts ``new`` in place of the module ``node`` calls: in place when nothing else can see the
    module; under a new name for this call alone when it is called more than once (shared), when the
    graph reads its attributes (``self.conv.weight``: that must stay the original), or with ``keep``
    (a child of a module that does not trace: its parent's forward may call the module itself)."""
    read = any(n.op == "get_attr" and (n.target == node.target or n.target.startswith(node.target + "."))
               for n in gm.graph.nodes)
    if calls[node.target] > 1 or read or keep:
        calls[node.target] -= 1
        node.target = _free_name(gm, "folded_" + node.target.replace(".", "_"))
        gm.add_submodule(node.target, new)
        calls[node.target] = 1
    else:
        gm.set_submodule(node.target, new)
    modules[node.target] = new


def _fuse_graph(gm: fx.GraphModule, keep: bool = False) -> None:
    """Fuses ``gm``'s graph; ``keep``: every original submodule stays as it is (see :func:`_own_module`)."""
    modules = dict(gm.named_modules())
    graph = gm.graph
    calls = collections.Counter(n.target for n in graph.nodes if n.op == "call_module")
    for node in list(graph.nodes):
        if node.op != "call_module":
            continue
        # identities in eval mode (they would separate a conv from its BatchNorm)
        if type(modules.get(node.target)) in _IDENTITIES and not hooked(modules.get(node.target)) \
                and len(node.args) == 1 and not node.kwargs and isinstance(node.args[0], fx.Node):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            continue
        stem = as_pattern_stem(modules.get(node.target))
        if stem is not None:
            _own_module(gm, modules, calls, node, stem, keep)
    # Last conv first: of two branches meeting in an add (ResNet's main path and its downsample),
    # the later one (the main path) takes the add and the activation.
    for node in reversed(list(graph.nodes)):
        if node.op != "call_module" or node.graph is not graph:
            continue
        conv = modules.get(node.target)
        if len(node.args) != 1 or node.kwargs or hooked(conv):
            continue
        conv = as_dense_depthwise(conv)
        ours = isinstance(conv, _OURS)
        if not ours and type(conv) is not nn.Conv2d:
            continue
        # The chain: the conv, then (each the only user of the one before) BatchNorm, a residual add
        # (ours only), a clamp-style activation (ours and depthwise 3x3 only).
        chain, bn_node, add_node, act_node, residual, bounds = [node], None, None, None, None, None
        user = _only_user(node)
        if user is not None and user.op == "call_module" and foldable_bn(modules.get(user.target), conv) \
                and user.args == (node,) and not user.kwargs:
            chain.append(user)
            bn_node = user
        user = _only_user(chain[-1])
        if ours and user is not None:
            residual = _residual_of(user, chain[-1])
            if residual is not None:
                chain.append(user)
                add_node = user
        user = _only_user(chain[-1])
        if (ours or is_depthwise3x3(conv)) and user is not None:
            bounds = _act_bounds(user, chain[-1], modules)
            if bounds is not None:
                chain.append(user)
                act_node = user
        chain = chain[:_safe_prefix(chain, modules)]
        bn = modules[bn_node.target] if bn_node in chain else None
        residual = residual if add_node in chain else None
        lo, hi = bounds if act_node in chain else (-_INF, _INF)
        cur = chain[-1]
        if not ours:  # dense conv: fold BatchNorm into the weight, leave the rest to PyTorch
            if bn is not None:
                conv = fold_dense(conv, bn)
            if is_depthwise3x3(conv):  # and a depthwise 3x3 one takes its activation into our kernel
                conv = DepthwiseConv3x3(conv, lo, hi)
            if conv is not modules[node.target]:
                _own_module(gm, modules, calls, node, conv, keep)
            if cur is not node:
                cur.replace_all_uses_with(node)
                for n in reversed(chain[1:]):
                    graph.erase_node(n)
            continue
        if len(chain) == 1 and conv.bias is None:
            continue
        name = _free_name(gm, f"fused_{node.target.replace('.', '_')}")
        gm.add_submodule(name, fused(conv, bn, lo, hi))
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
        if _pool_args(pool, modules) == 2:
            with graph.inserting_before(pool):
                new = _call_wrapped(graph, max_pool2d_nchw, (pool.args[0], 2))
            pool.replace_all_uses_with(new)
            graph.erase_node(pool)
            continue
        # Any other max-pool: channels_last copy, pool, NCHW copy (64x112x112, 3x3 stride 2: 0.8 +
        # 0.3 + 0.2 ms against 10 ms for the NCHW pool, one thread, measured).
        _channels_last_segment(graph, pool, pool)
    graph.lint()


def _call_wrapped(graph: fx.Graph, fn, args: tuple) -> fx.Node:
    """A call of ``fn`` (which branches on its input) marked as fx.wrap'ed: the generated code wraps
    it, so re-tracing that code (torch.load of the graph module, symbolic_trace) keeps it one node."""
    node = graph.call_function(fn, args)
    node.meta["is_wrapped"] = True
    return node


def _channels_last_segment(graph: fx.Graph, first: fx.Node, last: fx.Node) -> None:
    """Run the nodes from ``first`` to ``last`` in channels_last: ``first``'s input is converted to it,
    ``last``'s output back to NCHW (contiguous) for every user."""
    with graph.inserting_before(first):
        cl = _call_wrapped(graph, channels_last_4d, (first.args[0],))
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
        stem = as_pattern_stem(seq._modules[names[i]])
        if stem is not None:
            seq._modules[names[i]] = stem
        conv = as_dense_depthwise(seq._modules[names[i]])
        ours = isinstance(conv, _OURS)
        if (not ours and type(conv) is not nn.Conv2d) or hooked(conv):
            i += 1
            continue
        j, bn, bounds = i + 1, None, None
        if j < len(names) and foldable_bn(seq._modules[names[j]], conv):
            bn, j = seq._modules[names[j]], j + 1
        depthwise = is_depthwise3x3(conv)
        if (ours or depthwise) and j < len(names):
            bounds = act_bounds_module(seq._modules[names[j]])
            if bounds is not None:
                j += 1
        if ours and (bn is not None or bounds is not None or conv.bias is not None):
            seq._modules[names[i]] = fused(conv, bn, *(bounds or (-_INF, _INF)))
        elif depthwise:
            seq._modules[names[i]] = DepthwiseConv3x3(conv if bn is None else fold_dense(conv, bn),
                                                      *(bounds or (-_INF, _INF)))
        elif bn is not None:
            seq._modules[names[i]] = fold_dense(conv, bn)
        else:
            j = i + 1
        for k in range(i + 1, j):
            seq._modules[names[k]] = nn.Identity()
        i = j


_MODULE_STATE = frozenset(nn.Module().__dict__)
_PLAIN_METHODS = {"forward", "extra_repr", "reset_parameters"}


def _traceable(module: nn.Module, child: bool) -> bool:
    """Whether tracing ``module`` into a graph module keeps what its callers see. torch.fx passes a
    Proxy for every argument, so ``if mask is not None`` would be traced as taken for any argument
    (one that defaults to None or is tested against None anywhere in the class); and a child's caller
    may call its other methods, which a graph module does not have."""
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    if any(p.default is None or "Optional" in str(p.annotation) or "None" in str(p.annotation) for p in params):
        return False
    try:  # a type test on an argument sees fx's Proxy, not the tensor: it would be traced as False
        source = inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        source = ""
    if "isinstance(" in source or "is_tensor(" in source:
        return False
    # ... and so would a None test of an argument without a default (RNN-style `forward(x, state)`
    # called with None first): the graph would lose the None branch
    own = _run_time_code(_own_source(module) or source)
    if any(re.search(rf"\b{re.escape(p.name)}\s+is\s+(not\s+)?None\b|\bNone\s+is\s+(not\s+)?{re.escape(p.name)}\b"
                     rf"|\b{re.escape(p.name)}\s*[!=]=\s*None\b", own) for p in params):
        return False
    return not (child and _public_methods(module))


def _public_methods(module: nn.Module) -> bool:
    """Whether ``module``'s own classes define public methods or properties besides forward (a caller
    may call them; a graph module or a fold would not keep what they find)."""
    return any(not k.startswith("_") and k not in _PLAIN_METHODS and (callable(v) or isinstance(v, property))
               for cls in _own_classes(module) for k, v in vars(cls).items())


def _own_classes(module: nn.Module) -> List[type]:
    """``module``'s classes above torch's own (its MRO up to the first torch.* class)."""
    own = []
    for cls in type(module).__mro__:
        if cls.__module__.startswith("torch."):
            break
        own.append(cls)
    return own


def _own_source(module: nn.Module) -> Optional[str]:
    """The source of ``module``'s own classes, or None when some cannot be read."""
    try:
        return "\n".join(inspect.getsource(cls) for cls in _own_classes(module))
    except (OSError, TypeError):
        return None


# Code that finds submodules by name or by walking the tree reaches any of them.
_REFLECTION = re.compile(r"\.\s*(get_submodule|_modules|named_modules|modules|children|named_children)\b")


@functools.lru_cache(maxsize=256)
def _run_time_code(source: str) -> str:
    """``source`` (classes) without their ``__init__`` (which builds the model: `if norm is None`,
    `for m in self.modules()` initializing weights) and docstrings, normalized; ``source`` where it
    does not parse."""
    try:
        tree = ast.parse(textwrap.dedent(source))
    except SyntaxError:
        return source
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            node.body = [f for f in node.body if not (isinstance(f, ast.FunctionDef) and f.name == "__init__")]
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.body and isinstance(node.body[0], ast.Expr) \
                and isinstance(node.body[0].value, ast.Constant) and isinstance(node.body[0].value.value, str):
            node.body = node.body[1:] or [ast.Pass()]
    return ast.unparse(tree)


def _reflects(source: str) -> bool:
    """Whether ``source`` (classes) finds submodules by name or walks them at run time."""
    return bool(_REFLECTION.search(_run_time_code(source)))


def _uses(source: str, path: str, child: nn.Module) -> Optional[int]:
    """How many times ``source`` calls ``self.<path>`` (``path``: dotted, ``child`` the module there);
    None where it uses it otherwise than by calling it and reading plain attributes of it."""
    calls = 0
    for use in re.finditer(rf"self\.{re.escape(path)}\b\s*(?:\.\s*(\w+)|(.?.?))", source):
        attr, after = use.group(1), use.group(2)
        if attr is not None:  # self.path.attr: a plain attribute survives, a layer / method / tensor may not
            if attr in child._modules or attr in child._parameters or attr in child._buffers \
                    or callable(getattr(type(child), attr, None)):
                return None
        elif after[:1] == "(":
            calls += 1
        elif not (after[:1] == "=" and after[1:] != "="):  # (an assignment: __init__)
            return None
    return calls


def _called_whole(parent: nn.Module, name: str, source: Optional[str], outer: Tuple[Tuple[str, str], ...] = ()) -> bool:
    """Whether ``parent``'s code (``source``: :func:`_own_source`) uses its child ``name`` only by
    calling it (``self.name(...)``) and reading plain attributes of it, and the code of the untraced
    ancestors above it (``outer``: (source, dotted path from that ancestor to ``parent`` + ".")) does
    no more with it (``self.body.seq[1]`` two levels up). Anything else (``for layer in self.name``,
    ``self.name[0]``, ``self.name.conv1(x)``, ``f(self.name)``, ``get_submodule`` / ``named_modules``
    anywhere above) or code that cannot be read: False. The children of a torch.nn container are
    called by whoever iterates it: True, as far as the ancestors allow."""
    child = parent._modules[name]
    for above, prefix in outer:
        if _reflects(above) or _uses(above, prefix + name, child) is None:
            return False
    if type(parent).__module__.startswith("torch."):
        return True
    if source is None or _reflects(source):
        return False
    return bool(_uses(source, name, child))


def _optimize(module: nn.Module, child: bool = False, whole: bool = True,
              outer: Tuple[Tuple[str, str], ...] = ()) -> nn.Module:
    """The optimized form of ``module`` (an eval-mode copy owned by the caller). ``whole``: its callers
    only call it (see :func:`_called_whole`; ``outer``: its untraced ancestors' code)."""
    tracer = _Tracer()
    if tracer.is_leaf_module(module, ""):  # torch.nn's and ours: nothing inside to fuse
        return module
    if child and not whole:
        # an untraced parent iterates it, indexes it or calls its layers: it keeps its class and every
        # layer at its place (each optimized on its own), as a fold or a graph module would change
        # what the parent finds there
        _optimize_children(module, outer)
        return module
    graph = _trace(tracer, module) if _traceable(module, child) else None
    if graph is None:  # does not trace (data-dependent control flow, ...): recurse into the children
        _optimize_children(module, outer)
        # folded only where the children run one after the other, and no method of a subclass
        # (`def embed(self, x): return self[1](self[0](x))`) finds the folded layers
        if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward \
                and not _public_methods(module):
            _fold_sequential(module)
        return module
    # The trace ran the eager branch of the forward; its return annotation may name what the scripted
    # branch returns (torchvision's GoogLeNet: a NamedTuple when scripting, a tensor in eager), which
    # TorchScript would then refuse: the graph module's return type is inferred instead.
    graph.output_node().type = None
    gm = fx.GraphModule(module, graph, module.__class__.__name__)
    # The model's plain attributes (a caller may read them), kept through deepcopy by fx's own key.
    kept = {k: v for k, v in module.__dict__.items() if k not in _MODULE_STATE and k not in gm.__dict__}
    gm.meta.setdefault("_user_preserved_attributes", {}).update(kept)
    for k, v in kept.items():
        setattr(gm, k, v)
    _keep_hooks(module, gm)
    # A child of a module that does not trace: no submodule is changed in place (a copy may share
    # them; a parent that calls the child's layers itself keeps the child untraced, _called_whole).
    _fuse_graph(gm, keep=child)
    _optimize_hooked_leaves(gm)
    _memory_format_pass(gm)
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _trace(tracer: fx.Tracer, module: nn.Module) -> Optional[fx.Graph]:
    """``module``'s fx graph; None when it does not trace, or when its forward assigns to a module's
    attributes (``self.feats = y``, ``self.calls += 1``: a graph would not do it, and the trace itself
    left fx Proxies there, which do not pickle). Those attributes get their values back."""
    before = [(m, dict(m.__dict__)) for m in module.modules()]
    try:
        graph = tracer.trace(module)
    except Exception:
        graph = None
    for m, state in before:
        if m.__dict__.keys() != state.keys() or any(m.__dict__[k] is not v for k, v in state.items()):
            m.__dict__.clear()
            m.__dict__.update(state)
            graph = None
    return graph


def _optimize_children(module: nn.Module, outer: Tuple[Tuple[str, str], ...] = ()) -> None:
    """Each child of an untraced ``module`` optimized on its own (its code read once for all;
    ``outer``: the untraced ancestors' code, see :func:`_called_whole`)."""
    source = _own_source(module)
    for name, child_module in list(module.named_children()):
        inner = tuple((above, f"{prefix}{name}.") for above, prefix in outer)
        if source is not None and not type(module).__module__.startswith("torch."):
            inner += ((source, f"{name}."),)
        setattr(module, name, _optimize(child_module, child=True, whole=_called_whole(module, name, source, outer),
                                        outer=inner))


_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
               "_forward_pre_hooks_with_kwargs")


def _keep_hooks(module: nn.Module, gm: fx.GraphModule) -> None:
    """``module``'s forward hooks and pre-hooks on its graph module (which runs in its place)."""
    for attr in _HOOK_DICTS:
        hooks = getattr(module, attr, None)
        if hooks:
            getattr(gm, attr).update(hooks)


def _optimize_hooked_leaves(gm: fx.GraphModule) -> None:
    """The hooked modules the tracer kept as leaves (not torch.nn's or ours), each optimized on its
    own (hooks kept) where the graph only calls it."""
    tracer = _Tracer()
    read = [n.target for n in gm.graph.nodes if n.op == "get_attr"]
    for target in sorted({n.target for n in gm.graph.nodes if n.op == "call_module"}):
        m = gm.get_submodule(target)
        if not hooked(m) or tracer.is_leaf_module(m, "") or any(r.startswith(target + ".") for r in read):
            continue
        new = _optimize(m, child=True)
        if new is not m:
            gm.set_submodule(target, new)


def optimize_for_inference(model: nn.Module) -> nn.Module:
    """An eval-only copy of ``model`` with BatchNorm folded into the preceding convs, residual adds
    and ReLU / ReLU6 / Hardtanh / clamp activations fused into the output stage of our ops, and
    dense conv + max-pool segments in the faster memory format (module docstring for the details).
    ``model`` is not changed; modules of it in training mode (BatchNorm, Dropout) compute their eval
    function in the copy, and a warning names them. The copy computes the same outputs (to float rounding), scripts with
    TorchScript, exports with ``torch.export`` and pickles (``torch.save``). It is for inference:
    its parameters do not require grad, ``.train()`` raises before any child changes mode (an
    ``nn.Sequential`` model: when it reaches a fused child; call ``.eval()`` after catching it), and
    a backward through a fused PatternConv2d op raises (no gradients are meant to be taken; the
    fused sparse 1x1 / Linear ops happen to have an input gradient). Where the model traces with torch.fx the result is an
    ``fx.GraphModule`` with the model's plain attributes and forward hooks / pre-hooks (its other
    methods are not kept); otherwise (control flow on the input, a ``forward`` argument that defaults
    to None, is annotated Optional or is tested against None) it is the model's own class with its
    children optimized (a child whose class has other public
    methods, or that such a parent does more with than call it: iterates, indexes, passes on or
    calls the layers of, as its code reads, is kept as its class too, every layer at its place, with
    its children optimized; an ``nn.Sequential`` subclass with methods of its own keeps its layers
    in place; a plain one is folded by modules: slice the original model, not the result). Code that finds layers by name or walks them (``get_submodule``, ``named_modules``)
    outside ``__init__`` keeps the layers below it in place. A forward that tests its argument's type
    (``isinstance``) is not traced (fx would pass a Proxy), nor one that assigns to a module's attributes
    (``self.feats = y``); what a traced forward reads of Python state (``torch.is_grad_enabled()``, a
    global) is fixed at the trace. A module with forward hooks is not traced
    through (it runs as one call, its hooks each time, and is optimized on its own). No module is folded in place where something else can reach it
    (a module the graph reads ``.weight`` of, a child of an untraced parent); modules with forward
    hooks (convs, BatchNorm, activations, Dropout) and subclasses with their own forward are not
    folded, fused or removed."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"optimize_for_inference expects an nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError("optimize_for_inference takes the Python model (before torch.jit.script): a ScriptModule "
                        "cannot be traced with torch.fx")
    if isinstance(getattr(model, "_orig_mod", None), nn.Module) and type(model).__name__ == "OptimizedModule":
        raise TypeError("optimize_for_inference takes the model before torch.compile: optimize model._orig_mod, "
                        "then torch.compile the result")
    check_initialized(model, "optimize_for_inference")
    _warn_training_modules(model)
    out = _optimize(copy_model(model, "optimize_for_inference").eval())
    for p in out.parameters():
        p.requires_grad_(False)
    for m in out.modules():  # a graph that reads a decoded weight (conv.weight) holds it as a buffer
        for k, b in m._buffers.items():
            if b is not None and b.requires_grad:
                m._buffers[k] = b.detach()
    _add_eval_only(out)
    return out.eval()


_MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


def _warn_training_modules(model: nn.Module) -> None:
    """The result computes the eval-mode function: said when modules whose output depends on the mode
    (BatchNorm with running statistics, Dropout) are in training mode, so they would compute otherwise."""
    names = [n or "(the model)" for n, m in model.named_modules() if m.training and isinstance(m, _MODE_DEPENDENT)
             and (getattr(m, "p", None) != 0 if isinstance(m, nn.modules.dropout._DropoutNd)
                  else m.running_mean is not None)]
    if names:
        shown = ", ".join(repr(n) for n in names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        warnings.warn(f"optimize_for_inference: {shown} {'is' if len(names) == 1 else 'are'} in training mode; "
                      "the result computes the eval-mode function (BatchNorm's running statistics, no dropout), "
                      "as model.eval() would: call model.eval() first to say that is what you want",
                      UserWarning, stacklevel=3)


def _add_eval_only(gm: nn.Module) -> None:
    """Registers an :class:`EvalOnly` guard as the model's first child: ``gm.train()`` then raises
    before any child changes mode. A graph module calls it first (so the graph keeps it); a model
    that did not trace (its own class and forward) does not call it, or, iterating over its children,
    finds it an identity. Not for an ``nn.Sequential`` (whose forward would run it: no guard)."""
    if isinstance(gm, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return
    name = "eval_only"
    while name in gm._modules or hasattr(gm, name):
        name = "_" + name
    gm._modules = {name: EvalOnly(), **gm._modules}
    if not isinstance(gm, fx.GraphModule):
        return
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    first = next(n for n in gm.graph.nodes if n.op != "placeholder")
    with gm.graph.inserting_before(first):
        gm.graph.call_module(name, tuple(inputs[:1]))
    gm.recompile()
