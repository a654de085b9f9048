"""``convert(model)``: swap layers for their compressed versions without changing what the model
computes, unless the caller asks for a lossy step (``project=True`` or ``bits``)."""
import contextlib
import copy
import warnings
import weakref
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
from torch import nn
from torch.nn.utils import prune
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from . import quant, select
from .admm import trained_pattern_set
from .nn import kinds
from .nn._decoded_weight import relative_error
from .nn.pattern_conv import PatternConv2d
from .nn.sparse import SparseConv2d, SparseLinear, compress_module, float32_exact
from .patterns import PatternSet

_LAYER_CHOICES = ("3x3", "all")


def is_pattern_eligible(module: nn.Module) -> bool:
    """True when :class:`PatternConv2d` can take ``module`` (see :func:`torch_patsparse.nn.kinds.layer_kind`)."""
    return kinds.layer_kind(module) == kinds.PATTERN


def _selected(named: List[Tuple[str, nn.Module]], selectors: list, arg: str) -> List[List[str]]:
    """For each selector (:mod:`torch_patsparse.select`), the names of the modules it takes; one that
    takes none is an error (a misspelt name must not pass silently)."""
    per = [[n for n, m in named if pred(n, m)] for pred in (select.selector(s) for s in selectors)]
    bad = [s for s, names in zip(selectors, per) if not names]
    if bad:
        raise ValueError(f"convert: {arg} selects modules that are not in the model: {bad}")
    return per


def _selector_list(arg, what: str) -> list:
    """``arg`` (a selector, a list of them, or None) as a list of selectors."""
    if arg is None:
        return []
    if isinstance(arg, (str, nn.Module, torch.Tensor)) or callable(arg):
        return [arg]
    if not isinstance(arg, (list, tuple, set)):
        raise TypeError(f"convert: {what} must be a selector (a name, glob, 're:' regex, callable or module) "
                        f"or a list of them, got {type(arg).__name__}")
    return list(arg)


def _stored_bits(m: nn.Module) -> int:
    return sum(int(v) for v in m.storage_bits().values())


def _naming(name: str, build, *args, **kwargs):
    """``build(*args, **kwargs)``; its ValueError (a weight it cannot store: NaN, a scale out of
    range) names the layer, which a deep model's user could not tell otherwise."""
    try:
        return build(*args, **kwargs)
    except ValueError as e:
        raise ValueError(f"convert: layer '{name}': {e}") from e


def _why_dense(module: nn.Module, layers: str, project: bool = False) -> str:
    """Why a pruned conv / ``nn.Linear`` that no compressed module takes in this ``layers`` mode
    stays dense; "" when it is not such a layer or holds no zero (a dense layer left dense is no news),
    unless ``project`` asked for every 3x3 conv."""
    w = getattr(module, "weight", None)
    asked = project and isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (3, 3)
    if (not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) or not isinstance(w, torch.Tensor)
            or isinstance(w, nn.parameter.UninitializedParameter) or not (asked or bool((w == 0).any()))):
        return ""
    if not isinstance(module, (nn.Conv2d, nn.Linear)):
        return f"{type(module).__name__} has no compressed form (nn.Conv2d / nn.Linear)" if layers == "all" else ""
    kind = kinds.layer_kind(module)
    if kind is None:
        if getattr(module, "padding_mode", "zeros") != "zeros":
            return f"padding_mode={module.padding_mode!r} (compressed layers pad with zeros only)"
        if not w.is_floating_point():
            return f"weight is {w.dtype}"
        own = kinds.own_state(module)
        if own:
            return (f"it holds {', '.join(map(repr, own))} besides weight / bias (a hook "
                    "may read it), which a compressed layer would not have: remove it to convert the layer")
        cls = type(module)  # torch.ao's QAT Conv2d is also "Conv2d": the full name says which
        label = cls.__name__ if cls.__module__.startswith("torch.nn.modules") else f"{cls.__module__}.{cls.__qualname__}"
        return f"{label} has its own forward, which a compressed layer would not run"
    if layers == "3x3" and kind == kinds.SPARSE and tuple(getattr(module, "kernel_size", ())) == (3, 3):
        return (f"groups={module.groups}: PatternConv2d takes groups=1 (layers='all' stores it as SparseConv2d)"
                if module.groups != 1 else "its padding cannot be written as numbers (layers='all' stores it sparse)")
    if layers == "all" and kind == kinds.SPARSE and not float32_exact(w):
        return ("float64 weight with more precision than the float32 values SparseConv2d / SparseLinear store "
                "(pass bits to quantize it, or convert the float32 model)")
    return ""


def _pattern_layer(module: nn.Conv2d, pset: Optional[PatternSet], explicit: bool, bits, scheme,
                   project: bool) -> Tuple[Optional[nn.Module], str]:
    """(PatternConv2d or None, why not). Lossless unless ``project`` / ``bits`` ask otherwise."""
    if explicit:
        try:
            return PatternConv2d.from_dense(module, pset, bits=bits, scheme=scheme, project=project), ""
        except ValueError as e:
            return None, str(e)
    try:  # the set the layer was trained with (ADMM), else one that holds every kernel exactly
        cover = PatternSet.cover(module.weight.detach(), prefer=pset)
    except ValueError as e:
        cover, why = None, str(e)
    if cover is not None:
        # Pattern-pruned: the pattern form is smaller by itself; unpruned kernels stored in k bits
        # are smaller only by quantizing, which project=True replaces by the projection it asks for.
        new = PatternConv2d.from_dense(module, cover, bits=None if project else bits, scheme=scheme)
        if _stored_bits(new) < new.dense_bits():
            return (new if bits is None or not project
                    else PatternConv2d.from_dense(module, cover, bits=bits, scheme=scheme)), ""
        w = module.weight.detach()
        per_kernel = (w.reshape(-1, 9) != 0).sum(1)
        why = (f"not pattern-pruned: kernels keep up to {cover.entries} of 9 weights ({int((per_kernel > 4).sum())} "
               f"of {per_kernel.numel()} keep more than 4), so the pattern form is not smaller than dense")
        tiny = int(((w != 0) & (w.abs() <= 1e-9 * w.abs().max())).sum())
        if tiny:  # "zeros" another tool left as 1e-12 or denormals: only exact zeros are pruned
            why += f"; {tiny} weights are nonzero but below 1e-9 of the largest: zero them first if they are pruned"
    if pset is not None:  # ps.ADMM trained it onto patterns, but the weights are not there yet
        why += " (it was trained under ADMM's pattern constraint: call opt.hard_prune() before convert)"
    if not project:
        return None, why
    return PatternConv2d.from_dense(module, None, bits=bits, scheme=scheme, project=True), ""


# torch.nn.utils tools whose forward pre-hook recomputes a layer's weight from tensors of its own:
# their hook class -> (the tool, how to undo it)
_HOOK_TOOLS = {prune.BasePruningMethod: ("torch.nn.utils.prune", "prune.remove(layer, name)"),
               WeightNorm: ("torch.nn.utils.weight_norm", "torch.nn.utils.remove_weight_norm(layer)"),
               SpectralNorm: ("torch.nn.utils.spectral_norm", "torch.nn.utils.remove_spectral_norm(layer)")}


def _hook_tool(module: nn.Module) -> Optional[type]:
    """The _HOOK_TOOLS class of the module's first such hook, or None."""
    return next((cls for hook in module._forward_pre_hooks.values() for cls in _HOOK_TOOLS if isinstance(hook, cls)),
                None)


def check_initialized(model: nn.Module, caller: str) -> None:
    """Refuses a model with uninitialized (lazy) parameters or buffers, which have no shape yet."""
    if any(isinstance(t, nn.parameter.UninitializedTensorMixin) for t in (*model.parameters(), *model.buffers())):
        raise ValueError(f"{caller}: the model has uninitialized (lazy) parameters; run one forward pass first so "
                         "they get their shapes")


def copy_model(model: nn.Module, caller: str, otherwise: str = "") -> nn.Module:
    """``copy.deepcopy(model)``, or an error that says why the model cannot be copied and what to do
    (``otherwise``: the caller's way around a copy, if it has one)."""
    try:
        return copy.deepcopy(model)
    except (RuntimeError, TypeError) as e:
        why = "an attribute of the model cannot be copied: make it copyable"
        hooked = next(((name, _hook_tool(m)) for name, m in model.named_modules() if _hook_tool(m)), None)
        if hooked:
            tool, fix = _HOOK_TOOLS[hooked[1]]
            why = f"layer {hooked[0]!r} uses {tool}, whose hook cannot be copied: call {fix} first"
        raise type(e)(f"{caller}: the model cannot be deep-copied ({e}); {why}{otherwise}") from e


def convert(model: nn.Module, pattern_set: Union[None, PatternSet, Dict[str, PatternSet]] = None,
            layers: str = "3x3", exclude: Union[str, Callable, Iterable] = (), bits: Optional[int] = None,
            scheme: str = "uniform", inplace: bool = False, project: bool = False) -> nn.Module:
    """Returns ``model`` with its pruned layers replaced by compressed modules, anywhere in the tree.

    By default the result computes exactly what ``model`` computes (every stored weight is the
    original one): a 3x3 ``nn.Conv2d`` (groups=1, zero padding, numeric / ``"same"`` / ``"valid"``
    padding) becomes a :class:`PatternConv2d` when its kernels are pattern-pruned, stored with the
    pattern set it was trained with (recorded by :class:`torch_patsparse.ADMM`) or, failing that, a
    set that holds every kernel exactly. Weights already on k-bit levels are stored as k-bit codes.
    Layers that cannot be stored smaller without loss stay dense, and a ``UserWarning`` lists them.

    Module names are given as selectors (:mod:`torch_patsparse.select`: an exact name, a glob
    ``"features.*"``, a regex ``"re:layer\\d\\.0\\.conv1"`` or a callable ``(name, module) -> bool``);
    one that selects no module is a ``ValueError``.

    pattern_set: one :class:`PatternSet` for every 3x3 layer, a dict {module selector: PatternSet}
        (a module takes the set of the first selector that takes it), or None (see above). An
        explicit set must hold every kernel, else ``ValueError`` (or projection with ``project=True``).
    layers: "3x3" (default) or "all": also store other ``nn.Conv2d`` / ``nn.Linear`` layers (and 3x3
        convs that are not pattern-pruned, e.g. unstructured sparsity) as sparse + k-bit modules
        (``torch_patsparse.nn.sparse``), when that is smaller than dense; a pruned 3x3 conv whose
        kernels keep more than 4 weights (and no trained or given pattern set) takes the smaller form.
    exclude: a selector or a list of them (or None): modules to keep dense (e.g. ``["features.0"]`` or
        ``model.features[0]`` for a first conv with 3 inputs).
    bits / scheme: quantize the kept weights of every converted layer to ``bits`` (lossy, asked
        for), layers converted before included, of any kind whatever ``layers`` says (e.g. float
        PatternConv2d layers after fine-tuning; their pattern sets are kept). None: keep codes only
        where the weights already sit on quantization levels, and converted layers as they are.
    project: allow the lossy projection of 3x3 layers that are not pattern-pruned (onto
        ``pattern_set`` or 8 patterns of 4 selected from the weight).
    inplace: modify ``model`` itself instead of a deep copy (``model`` itself being one layer, the
        compressed layer is returned).

    A selected container (``exclude="features"``, a ``pattern_set`` key) stands for every module in
    it. A layer registered at several places is converted once and swapped at each (the tie stays).
    Frozen parameters stay frozen, and the layer's forward / backward hooks move to the new module.

    Every converted module gets ``conversion_error``, the relative weight error ``||W' - W|| / ||W||``
    (0.0 when lossless); when any is nonzero a ``UserWarning`` lists them per layer.

    The compressed tensors are made on the device of the model's weights, whatever the default
    device (a ``with torch.device(...)`` block). A model built on the meta device has no values to
    compress: load its weights first, or load a converted checkpoint with :func:`load_compressed`.
    """
    meta = next((name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta), None) \
        if isinstance(model, nn.Module) else None
    if meta is not None:
        raise ValueError(f"convert: the model's tensors are on the meta device ({meta!r} has no values to compress): "
                         "load the weights first (model.to_empty(device='cpu'), then load_state_dict), or load a "
                         "converted checkpoint with ps.load_compressed(model, state_dict, assign=True)")
    first = next((t for t in (*model.parameters(), *model.buffers())), None) if isinstance(model, nn.Module) else None
    target = first.device if first is not None else torch.device("cpu")
    # not an ambient torch.device("meta") block's device (a device mode slows every torch call: only when needed)
    with contextlib.nullcontext() if torch.get_default_device() == target else torch.device(target):
        return _convert(model, pattern_set, layers, exclude, bits, scheme, inplace, project)


def _convert(model, pattern_set, layers, exclude, bits, scheme, inplace, project):
    if layers not in _LAYER_CHOICES:
        raise ValueError(f"layers must be one of {_LAYER_CHOICES}, got {layers!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert expects an nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError("convert takes the eager model, not a scripted one (convert first, then script)")
    for flag, value in (("inplace", inplace), ("project", project)):
        if not isinstance(value, bool):  # ("no" would be true)
            raise TypeError(f"convert: {flag} must be a bool, got {value!r}")
    if pattern_set is not None and not isinstance(pattern_set, (PatternSet, dict)):
        raise TypeError(f"pattern_set must be a PatternSet, a dict of them or None, got {type(pattern_set).__name__}")
    try:
        quant.check(1 if bits is None else bits, scheme)
    except ValueError as e:
        raise ValueError(f"convert: {e}") from None
    check_initialized(model, "convert")
    # Every name a module has (a module registered twice is converted once and swapped at both places).
    named = list(model.named_modules(remove_duplicate=False))
    excluded = set().union(*(_with_children(named, names) for names in _selected(
        named, _selector_list(exclude, "exclude"), "exclude")))
    explicit_sets: Dict[str, PatternSet] = {}
    if isinstance(pattern_set, dict):
        for key, pset, names in zip(pattern_set, pattern_set.values(), _selected(named, list(pattern_set), "pattern_set")):
            names = _with_children(named, names)
            if not any(kinds.layer_kind(m) == kinds.PATTERN for n, m in named if n in names):
                raise ValueError(f"convert: pattern_set key {key!r} selects no 3x3 conv that PatternConv2d takes")
            for name in names:
                explicit_sets.setdefault(name, pset)
    trained = {name: trained_pattern_set(m.weight) for name, m in named if kinds.layer_kind(m) == kinds.PATTERN}
    for name, module in named:
        kind = kinds.layer_kind(module)
        if kind is not None and not (layers == "3x3" and kind == kinds.SPARSE) and name not in excluded:
            _check_no_norm_hooks(name, module)
    if not inplace:
        model = copy_model(model, "convert", ", or convert with inplace=True")
    _refresh_pruned_weights(model)
    places: Dict[int, List[str]] = {}
    modules: Dict[int, nn.Module] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        places.setdefault(id(module), []).append(name)
        modules[id(module)] = module
    # Collect first, then swap: replacing while iterating named_modules would skip or revisit.
    swaps: List[Tuple[List[str], nn.Module]] = []
    ties: Dict[int, nn.Module] = {}
    dense: List[Tuple[str, str]] = []
    projectable = False  # a pattern-eligible layer left dense: project=True would take it
    for key, names in places.items():
        module, name = modules[key], names[0]
        if excluded.intersection(names):
            continue
        kind = kinds.layer_kind(module)
        new, why = None, ""
        if isinstance(module, (PatternConv2d, SparseConv2d, SparseLinear)):  # converted before
            if bits is None or (module.bits == bits and module.scheme == scheme):  # (any `layers`: asked for)
                continue
            new = _requantized(module, bits, scheme)
        elif kind is None or (layers == "3x3" and kind == kinds.SPARSE):
            why = _why_dense(module, layers, project)
            if why:
                dense.append((name, why))
            continue
        elif kind == kinds.PATTERN:
            explicit = explicit_sets.get(name) if isinstance(pattern_set, dict) else pattern_set
            pset = explicit if explicit is not None else trained.get(name)
            new, why = _naming(name, _pattern_layer, module, pset, explicit is not None, bits, scheme, project)
            if new is None and explicit is not None:
                raise ValueError(f"convert: layer '{name}': {why}")
            if new is not None and layers == "all" and pset is None and not project and new.patterns.shape[1] > 4:
                # not pruned onto patterns (unstructured sparsity, or none with bits: patterns of up to 9
                # weights, which the native kernel runs slower than dense): the sparse form when it stores less
                alt = _naming(name, compress_module, module, bits=bits, scheme=scheme)
                if alt is not None and _stored_bits(alt) < _stored_bits(new):
                    new = alt
            projectable = projectable or new is None
        if new is None and layers == "all":
            new = _naming(name, compress_module, module, bits=bits, scheme=scheme)
            if new is None:
                why = why or _why_dense(module, layers) or "sparse form not smaller than dense (weights not pruned)"
        if new is None:
            dense.append((name, why))
            continue
        if isinstance(new, PatternConv2d) and kind is not None:
            # against the weight before a projection (from_dense saw the projected one)
            new.conversion_error = relative_error(new.to_dense().weight, module.weight)
        new.train(module.training)
        _carry_over(module, new)
        _keep_ties(module, new, ties)
        swaps.append((names, new))
    if dense:  # (warned before the swap: under warnings-as-errors an inplace model is left as it was)
        warnings.warn("convert: left dense (function unchanged): "
                      + "; ".join(f"'{n}': {why}" for n, why in dense)
                      + (". Pass project=True to project 3x3 layers onto patterns (lossy), or exclude=[...]."
                         if projectable else "."), UserWarning, stacklevel=3)
    lossy = [(names[0], m.conversion_error) for names, m in swaps if m.conversion_error > 0]
    if lossy:
        warnings.warn("convert: lossy conversion (relative weight error ||W'-W||/||W||): "
                      + ", ".join(f"'{n}': {e:.3g}" for n, e in lossy), UserWarning, stacklevel=3)
    for names, new in swaps:
        for name in names:
            if name:
                model.set_submodule(name, new)
            else:  # the model is itself one layer
                model = new
    return model


def _requantized(module: nn.Module, bits: int, scheme: str) -> nn.Module:
    """A converted layer stored at ``bits`` / ``scheme`` (its pattern set kept); ``conversion_error``
    against what it computed before."""
    dense = module.to_dense()
    if isinstance(module, PatternConv2d):
        return PatternConv2d.from_dense(dense, module.pattern_set(), bits=bits, scheme=scheme)
    return type(module).from_dense(dense, bits, scheme)


def _keep_ties(old: nn.Module, new: nn.Module, ties: Dict[int, nn.Module]) -> None:
    """A weight / bias Parameter shared by two layers (``b.weight = a.weight``) stays shared: the later
    layer takes the earlier one's stored arrays when it stores the same (same form, same positions:
    the trainable ``values`` too, so fine-tuning trains one copy; the state_dict, the saved file and
    ``compression_report`` then hold the weight once) and its bias."""
    for old_name in ("weight", "bias"):
        src = getattr(old, old_name, None)
        if not isinstance(src, nn.Parameter):
            continue
        first = ties.setdefault(id(src), new)
        if first is new or type(first) is not type(new):
            continue
        if old_name == "bias":
            if isinstance(first.bias, nn.Parameter) and isinstance(new.bias, nn.Parameter) \
                    and first.bias.shape == new.bias.shape:
                new.bias = first.bias
            continue
        mine, theirs = _stored_weight(new), _stored_weight(first)
        if mine.keys() == theirs.keys() and all(
                mine[k].dtype == theirs[k].dtype and torch.equal(mine[k], theirs[k]) for k in mine):
            for k, t in theirs.items():
                if k in new._parameters:
                    setattr(new, k, t)
                else:
                    new._buffers[k] = t


def _stored_weight(m: nn.Module) -> Dict[str, torch.Tensor]:
    """A compressed layer's tensors that store its weight: persistent buffers and parameters but the bias."""
    out = {k: t for k, t in m._buffers.items() if t is not None and k not in m._non_persistent_buffers_set}
    out.update({k: p for k, p in m._parameters.items() if p is not None and k != "bias"})
    return out


def _with_children(named: List[Tuple[str, nn.Module]], names: List[str]) -> set:
    """``names`` and every module below them: a selected container stands for what it holds."""
    picked = set(names)
    return {n for n, _ in named if n in picked or any(p == "" or n.startswith(p + ".") for p in picked)}


def _check_no_norm_hooks(name: str, module: nn.Module) -> None:
    """The hook-based torch.nn.utils.weight_norm / spectral_norm recompute ``weight`` in a forward
    pre-hook from other parameters (the new layer has none of them); convert cannot keep that."""
    cls = _hook_tool(module)
    if cls in (WeightNorm, SpectralNorm):
        tool, fix = _HOOK_TOOLS[cls]
        fn = tool.rsplit(".", 1)[1]
        raise ValueError(f"convert: layer '{name}' uses the hook-based {tool}, which recomputes "
                         f"its weight at every forward; fold it first with {fix}, "
                         f"or use torch.nn.utils.parametrizations.{fn} (convert takes the weight it gives)")


def _refresh_pruned_weights(model: nn.Module) -> None:
    """torch.nn.utils.prune keeps ``weight = weight_orig * weight_mask`` as a plain attribute that its
    forward pre-hook recomputes: after an optimizer step or a load_state_dict it is stale until the
    next forward. Recompute it, so convert stores what the model computes."""
    with torch.no_grad():
        for module in model.modules():
            for hook in list(module._forward_pre_hooks.values()):
                if isinstance(hook, prune.BasePruningMethod):
                    setattr(module, hook._tensor_name, hook.apply_mask(module))


# An nn.Module's hooks: the dicts of hook functions, and those of per-hook flags (keyed by hook id).
HOOK_DICTS = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")
HOOK_FLAG_DICTS = ("_forward_pre_hooks_with_kwargs", "_forward_hooks_with_kwargs", "_forward_hooks_always_called")
STATE_HOOK_DICTS = ("_state_dict_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks",
                    "_load_state_dict_post_hooks")


def _carry_over(old: nn.Module, new: nn.Module) -> None:
    """What the user set on the layer goes with it: frozen parameters stay frozen, and its hooks
    (forward / backward, state_dict / load_state_dict) are kept, as torch.ao.quantization's module swap
    does, in the same dicts, so the handles the user holds still remove them. torch.nn.utils.prune's
    reparametrization hooks stay behind (the new layer stores the pruned weight itself)."""
    for pname, p in new.named_parameters(recurse=False):
        src = getattr(old, "bias" if pname == "bias" else "weight", None)
        if isinstance(src, torch.Tensor):
            p.requires_grad_(src.requires_grad)
    pruning = {hid for hid, fn in old._forward_pre_hooks.items() if isinstance(fn, prune.BasePruningMethod)}
    for attr in HOOK_DICTS + HOOK_FLAG_DICTS + STATE_HOOK_DICTS:
        hooks = getattr(old, attr)
        if pruning:  # copies without them (the old layer keeps its own, should it be put back)
            hooks = type(hooks)((hid, fn) for hid, fn in hooks.items() if hid not in pruning)
        setattr(new, attr, hooks)
    _rebind_hooks(new, old)
    if old._backward_hooks:
        new._is_full_backward_hook = old._is_full_backward_hook


def _rebind_hooks(module: nn.Module, previous: nn.Module) -> None:
    """Hooks that torch calls with their module (register_load_state_dict_pre_hook's wrapper holds a
    weak reference to it) are called with ``module`` from now on instead of ``previous``."""
    for attr in STATE_HOOK_DICTS:
        for fn in getattr(module, attr).values():
            if getattr(fn, "with_module", False) and isinstance(getattr(fn, "module", None), weakref.ref) \
                    and fn.module() is previous:
                fn.module = weakref.ref(module)


def _empty_compressed(name: str, module: nn.Module, state_dict, prefix: str) -> Optional[nn.Module]:
    """An empty compressed module with ``module``'s geometry for the compressed arrays that
    ``state_dict`` holds under ``prefix`` (None when it holds none), to load them into."""
    pattern = prefix + "kernel_pattern" in state_dict and prefix + "patterns" in state_dict
    sparse = prefix + "header" in state_dict and prefix + "index" in state_dict
    if not (pattern or sparse) or isinstance(module, (PatternConv2d, SparseConv2d, SparseLinear)):
        return None
    factory = {"device": module.weight.device, "dtype": module.weight.dtype} \
        if isinstance(getattr(module, "weight", None), torch.Tensor) else {}
    has_bias = getattr(module, "bias", None) is not None
    if pattern and kinds.layer_kind(module) == kinds.PATTERN:
        extra = state_dict.get(prefix + "_extra_state")
        extra = extra if isinstance(extra, dict) else {}
        try:
            return PatternConv2d(module.in_channels, module.out_channels, 3, module.stride, module.padding,
                                 module.dilation, bias=has_bias, bits=extra.get("bits"),
                                 scheme=extra.get("scheme", "uniform"), **factory)
        except ValueError as e:  # the stored metadata (_extra_state) is a bad entry, as load_state_dict says
            raise RuntimeError(f"load_compressed: '{name}': invalid compressed weight: {e}") from None
    sparse = sparse and kinds.layer_kind(module) is not None  # (what convert takes: subclasses too)
    if sparse and isinstance(module, nn.Linear):
        return SparseLinear(module.in_features, module.out_features, has_bias).to(**factory)
    if sparse and isinstance(module, nn.Conv2d):
        return SparseConv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                            module.padding, module.dilation, module.groups, has_bias).to(**factory)
    kind = "PatternConv2d" if pattern else "SparseConv2d / SparseLinear"
    raise ValueError(f"load_compressed: '{name}' holds a compressed weight ({kind}) but the model's layer there is "
                     f"{module!r}, which that form cannot replace")


def load_compressed(model: nn.Module, state_dict, strict: bool = True, assign: bool = False) -> nn.Module:
    """Loads the ``state_dict`` of a converted model (``ps.convert(...).state_dict()``) into ``model``,
    a fresh instance of the original, dense architecture, and returns ``model`` (changed in place).

    Every ``nn.Conv2d`` / ``nn.Linear`` whose entries in ``state_dict`` are compressed arrays is first
    replaced by an empty :class:`PatternConv2d`, :class:`SparseConv2d` or :class:`SparseLinear` with
    the layer's geometry (stride, padding, bias, bit width from the stored metadata), then
    ``model.load_state_dict(state_dict, strict)`` loads everything, validating each compressed
    array. The result computes exactly what the saved model computed; frozen parameters stay frozen
    and the layers' hooks move to the compressed modules, as in :func:`convert`. A compressed entry for a
    layer that cannot take it (e.g. a 5x5 conv under PatternConv2d arrays) is a ValueError.
    (``torch.save(model)`` of the whole converted module works too; this is for weights-only files.)
    ``assign`` is ``load_state_dict``'s: True takes the loaded tensors themselves, the way to load into
    a model built on the meta device (``with torch.device("meta"): model = Net()``).
    When the load fails (a RuntimeError naming every bad entry, as ``load_state_dict``'s), the model's
    own layers are put back; as with ``load_state_dict``, its other tensors may hold what was loaded.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"load_compressed expects an nn.Module, got {type(model).__name__}")
    if not hasattr(state_dict, "keys"):
        raise TypeError(f"load_compressed expects a state_dict (a mapping), got {type(state_dict).__name__}")
    swaps = []
    made: Dict[int, nn.Module] = {}  # a layer registered at two places gets one compressed module, as in convert
    for name, module in model.named_modules(remove_duplicate=False):
        new = made.get(id(module))
        if new is None:
            new = _empty_compressed(name, module, state_dict, f"{name}." if name else "")
        if new is not None and not name:
            raise ValueError("load_compressed: the model itself is a single layer; build the compressed module "
                             "(e.g. PatternConv2d) and call its load_state_dict")
        if new is not None:
            new.train(module.training)
            _carry_over(module, new)  # frozen parameters stay frozen, hooks move, as in convert
            if getattr(new, "bias", None) is not None and isinstance(getattr(module, "bias", None), torch.Tensor):
                with torch.no_grad():  # a bias the state_dict leaves out (strict=False) keeps the layer's own
                    new.bias.copy_(module.bias)
            made[id(module)] = new
            swaps.append((name, module, new))
    for name, _, new in swaps:
        model.set_submodule(name, new)
    try:
        keys = model.load_state_dict(state_dict, strict=strict, assign=assign)
    except BaseException as e:
        for name, old, new in swaps:  # the model gets its own layers back, not empty compressed ones
            model.set_submodule(name, old)
            _rebind_hooks(old, new)
        if not isinstance(e, RuntimeError):
            raise
        if any(".fused_" in f".{k}" for k in state_dict.keys()):
            raise RuntimeError(f"{e}\nThis state_dict is of an optimize_for_inference result (fused layers): save "
                               "the converted model's state_dict, load that, then optimize again") from e
        raise
    if keys.missing_keys or keys.unexpected_keys:  # strict=False: say what was not loaded
        own = model.state_dict(keep_vars=True)
        on_meta = [k for k in keys.missing_keys if k in own and own[k].is_meta]
        meta_note = (f"; {on_meta} are on the meta device (no data): load or initialise them before running the "
                     "model" if on_meta else "")
        warnings.warn(f"load_compressed(strict=False): missing keys {keys.missing_keys} (they keep the model's "
                      f"own values), unexpected keys {keys.unexpected_keys} (ignored){meta_note}",
                      UserWarning, stacklevel=2)
    return model
