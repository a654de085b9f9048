"""Export a (converted) model for C++ and mobile runtimes.

``torchscript(model, path)`` writes a TorchScript archive that ``torch.jit.load`` (Python) and
``torch::jit::load`` (C++, e.g. ``patsparse_run``) read. ``mobile(model, path)`` writes a
lite-interpreter (``.ptl``) file for PyTorch Mobile. Both files call the native ops
``torch.ops.patsparse.*`` by name: the process that loads them must have the op library loaded
(``import torch_patsparse`` in Python; ``libpatsparse_ops`` linked into a C++ or mobile app, see
docs/MOBILE.md), or loading fails with an "Unknown builtin op: patsparse::pattern_conv2d" error.

``executorch(model, path, example_inputs)`` writes an ExecuTorch program (``.pte``): the dense parts
lowered to XNNPACK, our layers kept as the custom ops ``patsparse::pattern_conv2d.out``,
``pattern_conv2d_fused.out``, ``sparse_conv1x1.out``, ``sparse_linear.out`` with their compressed
arrays as constants; ``load_executorch(path)`` runs it in ExecuTorch's runtime with
this package's ExecuTorch kernels (csrc/executorch) built and registered. Both need the optional
``executorch`` package (``pip install -e '.[executorch]' --no-build-isolation``).
"""
import copy
import ctypes
import fcntl
import math
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.utils._pytree as pytree
from torch import nn

from . import ops  # also registers torch.ops.patsparse, so scripting resolves the ops
from .fusion import DepthwiseConv3x3, foldable_bn, fused
from .nn.pattern_conv import PatternConv2d
from .nn.sparse import SparseConv2d, SparseLinear

__all__ = ["torchscript", "mobile", "executorch", "load_executorch", "executorch_kernel_library",
           "LITE_INTERPRETER_WARNING"]

LITE_INTERPRETER_WARNING = (
    "torch_patsparse.export.mobile: PyTorch has deprecated the TorchScript lite interpreter "
    "(PyTorch Mobile, .ptl files) in favour of ExecuTorch; the file is written and loads with "
    "torch.jit.mobile._load_for_lite_interpreter today, but future PyTorch releases may drop it. "
    "See docs/MOBILE.md for the ExecuTorch route.")


def _check_module(model) -> nn.Module:
    """``model`` (the module a ``torch.compile`` wrapper holds), or TypeError."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"export takes an nn.Module, got {type(model).__name__}")
    return getattr(model, "_orig_mod", model) if type(model).__name__ == "OptimizedModule" else model


def _script(model: nn.Module) -> torch.jit.ScriptModule:
    if isinstance(model, torch.jit.ScriptModule):
        return model
    model = _check_module(model)
    # Each module's own flag is put back (a frozen BatchNorm in a training model stays in eval; set
    # directly: an optimized model refuses .train())
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return torch.jit.script(model)
    finally:
        for m, training in flags:
            m.training = training


def _write_atomically(path: str, write) -> str:
    """``write(tmp)`` then ``tmp`` renamed to ``path``: a failed export leaves an existing file as it
    was and no partial one. ``tmp`` has ``path``'s name (in a temporary folder beside it): torch names
    the file's archive folder after it."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path!r}: it is a folder; give a file name")
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"cannot write {path!r}: the folder {parent!r} does not exist")
    folder = tempfile.mkdtemp(prefix=".patsparse-export-", dir=parent)
    try:
        tmp = os.path.join(folder, os.path.basename(path))
        write(tmp)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return path


def torchscript(model: nn.Module, path: Union[str, os.PathLike]) -> str:
    """Scripts ``model`` (in eval mode) with ``torch.jit.script``, saves it to ``path`` and returns
    the path. Load it with ``torch.jit.load`` after ``import torch_patsparse``, or from C++."""
    path = os.fspath(path)
    scripted = _script(model)
    return _write_atomically(path, scripted.save)


def mobile(model: nn.Module, path: Union[str, os.PathLike]) -> str:
    """Scripts ``model`` (in eval mode) and saves it for the mobile lite interpreter
    (``_save_for_lite_interpreter``); returns the path. Warns (does not fail) that PyTorch deprecated
    the lite interpreter. (``optimize_for_mobile`` is not applied: it needs an XNNPACK build of
    torch, which the CPU wheel used here is not; run it yourself where available.)"""
    warnings.warn(LITE_INTERPRETER_WARNING, FutureWarning, stacklevel=2)
    path = os.fspath(path)
    model = _check_module(model)
    if not isinstance(model, torch.jit.ScriptModule):
        # The lite interpreter runs on the CPU: the sparse layers' other-device branch (a dense decode,
        # about half of each layer's bytecode, which the lite format inlines per layer) goes.
        model = copy.deepcopy(model)
        for m in model.modules():
            if isinstance(m, (SparseConv2d, SparseLinear)):
                m._cpu_only = True
    scripted = _script(model)
    return _write_atomically(path, scripted._save_for_lite_interpreter)


# ---------------------------------------------------------------------------------------- ExecuTorch
EXECUTORCH_VERSION = "1.4.0"  # the release pinned to torch 2.13 (setup.py's extra, requirements-executorch.txt)
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ET_SOURCES = os.path.join(_ROOT, "csrc", "executorch")


def _require_executorch() -> str:
    """The directory of the installed ``executorch`` package; ImportError naming the package if absent."""
    try:
        import executorch as et
    except ImportError as e:
        raise ImportError(
            "torch_patsparse.export: the ExecuTorch route needs the 'executorch' package, which is not "
            f"installed: pip install -e '.[executorch]' --no-build-isolation (executorch=={EXECUTORCH_VERSION}, "
            "the release for torch 2.13)") from e
    return list(et.__path__)[0]


# Our ops (functional form, as torch.export records them), each the forward of one of our modules.
# (the layers' one-op forwards, csrc/layer_ops.cpp, are what torch.export's graph shows; the product
# ops appear once it is decomposed)
_OUR_OPS = ("patsparse.pattern_conv2d.", "patsparse.sparse_conv1x1.", "patsparse.sparse_linear.",
            "patsparse.pattern_conv2d_layer.", "patsparse.sparse_conv1x1_layer.", "patsparse.sparse_linear_layer.")


def _is_our_op(node) -> bool:
    return node.op == "call_function" and str(node.target).startswith(_OUR_OPS)


def _batch_norm_after_our_conv(ep) -> List[Tuple[str, str]]:
    """(module path, BatchNorm path) pairs of an exported program where the op of one of our conv
    modules (PatternConv2d, SparseConv2d) has an eval-mode batch norm as its only user and each
    module is called once (so fusing is exact in real numbers)."""
    def owner(node):
        stack = node.meta.get("nn_module_stack") or {}
        return list(stack.values())[-1][0] if stack else None

    calls = {}
    for node in ep.graph.nodes:
        if node.op == "call_function":
            calls.setdefault(owner(node), []).append(node)
    pairs = []
    for node in ep.graph.nodes:
        if not _is_our_op(node):
            continue
        users = list(node.users)
        if len(users) != 1 or "batch_norm" not in str(users[0].target):
            continue
        conv, bn = owner(node), owner(users[0])
        if conv is None or bn is None or len(calls.get(bn, [])) != 1:
            continue
        if sum(_is_our_op(n) for n in calls.get(conv, [])) != 1:
            continue
        pairs.append((conv, bn))
    return pairs


def executorch(model: nn.Module, path: Union[str, os.PathLike], example_inputs: Sequence[torch.Tensor],
               max_batch: Optional[int] = None) -> str:
    """Writes ``model`` (in eval mode, float32) as an ExecuTorch program to ``path``; returns the path.

    ``torch.export`` with ``example_inputs`` (their shapes are the program's, in the contiguous
    layout, which the program takes whatever the examples' memory format; with ``max_batch``, dim 0
    of every input may be anything in 1..max_batch, the memory plan sized for max_batch), then
    ``to_edge_transform_and_lower`` with the XNNPACK partitioner: dense convs,
    Linear, pooling and activations run in XNNPACK; each ``PatternConv2d`` stays the custom op
    ``patsparse::pattern_conv2d.out``, each ``SparseConv2d`` (1x1) / ``SparseLinear``
    ``patsparse::sparse_conv1x1.out`` / ``sparse_linear.out``, and the fused modules of
    :func:`torch_patsparse.optimize_for_inference` ``patsparse::pattern_conv2d_fused.out`` (or the
    sparse ops with their epilogue); their compressed arrays are the only copy of their weights in the
    file, in their stored form (a PatternConv2d's int16 channel indices and bit-packed codes are
    widened / decoded at run time by ``patsparse::pattern_channels.out`` / ``pattern_decode.out``
    into memory-planned scratch; a quantized sparse layer that runs dense in PyTorch, at density
    >= 2/3, keeps its sparse op here); a SparseConv2d the sparse op does not take
    (not 1x1, padded or grouped) goes in as its dense conv (``to_dense()``). An eval-mode BatchNorm right after a
    PatternConv2d / SparseConv2d is fused into its op's output stage (per-channel scale and shift, as ``optimize_for_inference`` does; the stored weights
    are untouched; equal up to float rounding). ``model`` itself is not modified.
    Run the file with :func:`load_executorch`, or on a device with the kernel library linked in
    (docs/MOBILE.md)."""
    _require_executorch()
    # executorch is an optional dependency: imported where the ExecuTorch route needs it.
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    path = os.fspath(path)
    model = _check_module(model)
    if isinstance(example_inputs, torch.Tensor):
        raise TypeError("export.executorch: example_inputs is a sequence of tensors, e.g. (x,), not a tensor")
    # The program takes contiguous (NCHW) inputs, as load_executorch hands them: a channels_last
    # example would make it expect channels_last and read contiguous inputs wrongly.
    example_inputs = tuple(x.contiguous() if isinstance(x, torch.Tensor) else x for x in example_inputs)
    for x in example_inputs:
        if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
            got = f"a {x.dtype} tensor" if isinstance(x, torch.Tensor) else f"a {type(x).__module__}.{type(x).__name__}"
            raise ValueError("export.executorch: the ExecuTorch kernels run float32; example_inputs must be "
                             f"float32 torch tensors, got {got}")
    if any(x.dim() and x.shape[0] == 0 for x in example_inputs):
        raise ValueError("export.executorch: an example batch of 0 plans a program for no input; give batch >= 1")
    dynamic_shapes = None
    if max_batch is not None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"export.executorch: max_batch must be a positive int, got {max_batch!r}")
        too_big = [x.shape[0] for x in example_inputs if x.dim() and x.shape[0] > max_batch]
        if too_big:
            raise ValueError(f"export.executorch: max_batch={max_batch} is below the example batch {too_big[0]}")
        if max_batch > 1:
            batch = torch.export.Dim("batch", min=1, max=max_batch)
            dynamic_shapes = tuple({0: batch} for _ in example_inputs)
            # torch.export specialises a size-1 example dim: trace with batch 2 (only shapes matter).
            example_inputs = tuple(torch.cat([x, x]) if x.shape[0] == 1 else x for x in example_inputs)
    model = copy.deepcopy(model).eval()
    # No ExecuTorch kernel for the native depthwise kernel of optimize_for_inference (XNNPACK runs it),
    # nor for sparse_decode (a SparseConv2d the sparse op does not take is a dense conv there; a
    # quantized layer that runs dense here keeps its compressed arrays there, in the sparse op). A
    # PatternConv2d keeps its stored form: pattern_channels.out / pattern_decode.out widen its int16
    # channel indices and decode its packed codes at run time.
    as_dense = []
    for name, m in list(model.named_modules()):
        if isinstance(m, (SparseConv2d, SparseLinear)):
            m._native = m._op_takes_layer()
        dense = isinstance(m, DepthwiseConv3x3) or (isinstance(m, SparseConv2d) and not m._native)
        swap = m.to_dense() if dense else None
        if swap is None:
            continue
        if isinstance(m, SparseConv2d):
            as_dense.append(name)
        if not name:
            model = swap
            break
        model.set_submodule(name, swap)
    for p in model.parameters():
        if p.dtype != torch.float32:
            raise ValueError(f"export.executorch: the model must be float32 (model.float()), found {p.dtype}")
    if as_dense:
        warnings.warn("export.executorch: " + ", ".join(map(repr, as_dense)) + " (SparseConv2d, not 1x1 or padded or "
                      "grouped) go in as dense convs: no ExecuTorch sparse kernel takes them, so the file holds "
                      "their dense float32 weights", UserWarning, stacklevel=2)
    if any(name[:1].isdigit() for name in model._modules):  # an nn.Sequential, a graph module of one:
        model = _Named(model)  # XNNPACK's BatchNorm fusion fails on names starting with a digit
        dynamic_shapes = None if dynamic_shapes is None else (dynamic_shapes,)  # (for its *inputs)
    with torch.no_grad():
        ep = torch.export.export(model, example_inputs, dynamic_shapes=dynamic_shapes)
        # (a FusedConv of optimize_for_inference owns its op with an epilogue: a BatchNorm after it
        # comes after that epilogue, and XNNPACK runs it)
        pairs = [(c, b) for c, b in _batch_norm_after_our_conv(ep)
                 if isinstance(model.get_submodule(c), (PatternConv2d, SparseConv2d))
                 and foldable_bn(model.get_submodule(b), model.get_submodule(c))]
        if pairs:
            for conv, bn in pairs:
                model.set_submodule(conv, fused(model.get_submodule(conv), model.get_submodule(bn), -math.inf,
                                                math.inf))
                model.set_submodule(bn, nn.Identity())
            ep = torch.export.export(model, example_inputs, dynamic_shapes=dynamic_shapes)
    _explicit_pool_strides(ep)
    # What load_executorch needs beyond the runtime's own metadata: the batches the program takes (0:
    # exactly the example's) and the structure of the outputs (a dict, ...), which it returns flat.
    about = {_MAX_BATCH: 0 if dynamic_shapes is None else max_batch,
             _OUT_SPEC: pytree.treespec_dumps(ep.call_spec.out_spec)}
    program = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()],
                                          constant_methods=about).to_executorch()

    def write(tmp):
        with open(tmp, "wb") as f:
            program.write_to_file(f)
    return _write_atomically(path, write)


class _Named(nn.Module):
    """A model one level down, so its parameter names start with a letter (``model.0.weight``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        return self.model(*inputs)


def _explicit_pool_strides(ep) -> None:
    """``F.max_pool2d(x, k)`` exports without its stride (= the kernel size), which XNNPACK's
    partitioner reads as an argument: write it out."""
    changed = False
    for node in ep.graph_module.graph.nodes:
        if (node.op == "call_function" and node.target in (torch.ops.aten.max_pool2d.default,
                                                           torch.ops.aten.max_pool2d_with_indices.default)
                and (len(node.args) == 2 or not node.args[2])):
            node.args = (node.args[0], node.args[1], node.args[1]) + tuple(node.args[3:])
            changed = True
    if changed:
        ep.graph_module.recompile()


_KERNELS_LOADED = None


def executorch_kernel_library(build_dir: Union[str, os.PathLike, None] = None) -> str:
    """Builds (CMake, incrementally) this package's ExecuTorch kernel library for the installed
    executorch wheel and returns its path: ``csrc/executorch`` + the torch-free kernel core, linked
    against the wheel's runtime (``_portable_lib``). ``build_dir`` defaults to
    ``$PATSPARSE_ET_BUILD`` or ``build/executorch`` in the source tree."""
    et_dir = _require_executorch()
    if not os.path.isfile(os.path.join(_ET_SOURCES, "CMakeLists.txt")):
        raise RuntimeError(f"torch_patsparse: the ExecuTorch kernel sources ({_ET_SOURCES}) are not here; "
                           "build from a source checkout (pip install -e .)")
    cmake = shutil.which("cmake")
    if cmake is None:
        raise RuntimeError("torch_patsparse: building the ExecuTorch kernel library needs cmake (apt-get install "
                           "cmake, or pip install cmake)")
    build = os.fspath(build_dir or os.environ.get("PATSPARSE_ET_BUILD") or os.path.join(_ROOT, "build", "executorch"))
    os.makedirs(build, exist_ok=True)
    lib = os.path.join(build, "libpatsparse_et.so")
    # executorch-config.cmake asks `python3` for the extension suffix: make it this interpreter.
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    with open(os.path.join(build, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time (parallel test processes)
        if not os.path.isfile(os.path.join(build, "CMakeCache.txt")):
            cmd = [cmake, "-S", _ET_SOURCES, "-B", build, "-DCMAKE_BUILD_TYPE=Release",
                   f"-Dexecutorch_DIR={os.path.join(et_dir, 'share', 'cmake')}"]
            if shutil.which("ninja"):
                cmd += ["-G", "Ninja"]
            _run(cmd, env)
        _run([cmake, "--build", build, "-j", os.environ.get("MAX_JOBS", "2")], env)
    return lib


def _run(cmd: List[str], env) -> None:
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"torch_patsparse: building the ExecuTorch kernel library failed: {' '.join(cmd)}\n"
                           + r.stdout[-4000:])


def _load_kernels() -> ctypes.CDLL:
    """Registers the patsparse kernels with the ExecuTorch runtime of this process (once)."""
    global _KERNELS_LOADED
    if _KERNELS_LOADED is None:
        lib = executorch_kernel_library()
        from executorch.extension.pybindings import portable_lib  # noqa: F401  (the runtime the kernels join)
        _KERNELS_LOADED = ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
    return _KERNELS_LOADED


def _take_kernel_error() -> str:
    """The reason of this thread's last failed patsparse ExecuTorch kernel call ('' when none), forgotten
    once read (the runtime itself reports an error code; the reason goes to its log)."""
    take = getattr(_load_kernels(), "patsparse_et_take_error", None)
    if take is None:  # (a kernel library built before this function existed)
        return ""
    buf = ctypes.create_string_buffer(1024)
    take(buf, ctypes.c_size_t(len(buf)))
    return buf.value.decode("utf-8", "replace")


_MAX_BATCH, _OUT_SPEC = "patsparse_max_batch", "patsparse_out_spec"  # the program's constant methods


class ExecuTorchProgram:
    """A loaded ``.pte`` (its ``forward`` method): call it with the example inputs' shapes and dtypes
    (any memory format: inputs are made contiguous first). Returns what the model returns (a tensor,
    a tuple, a dict, ...; a file from an earlier torch_patsparse records no structure: a tensor, or a tuple
    of the flat outputs). Errors of the runtime (bad shape or dtype, a kernel rejecting its arguments)
    come back as RuntimeError."""

    def __init__(self, path: str):
        _require_executorch()
        if not os.path.isfile(path):  # (before the kernel library's first build: minutes)
            raise FileNotFoundError(f"no ExecuTorch program at {path!r}" + (
                " (a folder)" if os.path.isdir(path) else ""))
        _load_kernels()
        from executorch.runtime import Runtime  # optional dependency
        self.path = path
        try:
            self.program = Runtime.get().load_program(path)
        except RuntimeError as e:  # (the runtime's message is an error code)
            raise RuntimeError(f"{path!r} is not an ExecuTorch program this runtime loads (a .pte written by "
                               f"export.executorch?): {e}") from e
        self.method = self.program.load_method("forward")
        meta = self.method.metadata
        self._planned = [list(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())]
        names = self.program.method_names  # (files written before these were recorded have neither)
        self._max_batch = self.program.load_method(_MAX_BATCH).execute([])[0] if _MAX_BATCH in names else None
        self._out_spec = pytree.treespec_loads(self.program.load_method(_OUT_SPEC).execute([])[0]) \
            if _OUT_SPEC in names else None

    def __call__(self, *inputs: torch.Tensor) -> Any:
        # The runtime reads a tensor's storage as contiguous (NCHW) whatever its strides: give it that.
        inputs = tuple(x.contiguous() if isinstance(x, torch.Tensor) else x for x in inputs)
        # The runtime takes any shape that fits the planned memory; only the batch may vary (max_batch),
        # from 1 to the planned one.
        mismatch = self._mismatch(inputs)
        if mismatch is not None:
            raise RuntimeError(f"ExecuTorch program {self.path}: {mismatch}")
        _take_kernel_error()
        try:
            outputs = self.method.execute(list(inputs))
        except RuntimeError as e:  # the runtime's own message is an error code: add what may not fit
            reason = _take_kernel_error()
            batches = [x.shape[0] for x in inputs]
            hint = "" if batches == [p[0] for p in self._planned] else (
                f" (batch {batches}: a program exported without max_batch runs only its example batch; "
                "with max_batch, a kernel rejected its arguments)")
            if reason:
                hint += f"; a patsparse kernel rejected its arguments: {reason}"
            raise RuntimeError(f"ExecuTorch program {self.path}: {e}{hint}") from e
        if self._out_spec is not None and self._out_spec.num_leaves == len(outputs):
            return pytree.tree_unflatten(list(outputs), self._out_spec)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def _mismatch(self, inputs) -> Optional[str]:
        """What in ``inputs`` does not fit the program's inputs (count, dtype, shape; the batch in
        1..the planned one), or None."""
        if len(inputs) != len(self._planned):
            return f"takes {len(self._planned)} input(s), got {len(inputs)}"
        for i, (x, sizes) in enumerate(zip(inputs, self._planned)):
            if not isinstance(x, torch.Tensor):
                return f"input {i} must be a tensor, got {type(x).__name__}"
            if x.dtype != torch.float32:
                return f"input {i} must be float32 (the kernels run float32), got {x.dtype}"
            lowest = sizes[0] if self._max_batch == 0 else 1  # (exported without max_batch: its batch only)
            if x.dim() != len(sizes) or list(x.shape[1:]) != sizes[1:] or not lowest <= x.shape[0] <= sizes[0]:
                return (f"input {i} has shape {list(x.shape)}; the program's input is planned for "
                        f"{sizes} (exported without max_batch: exactly that shape; with "
                        "export.executorch(..., max_batch=N): batch 1..N)")
        return None


def load_executorch(path: Union[str, os.PathLike]) -> ExecuTorchProgram:
    """Loads a ``.pte`` written by :func:`executorch` into ExecuTorch's runtime (pybindings), with
    this package's ExecuTorch kernels built (:func:`executorch_kernel_library`) and registered."""
    return ExecuTorchProgram(os.fspath(path))


def set_executorch_isa(name: str) -> None:
    """Forces the kernel path of the ExecuTorch kernels in this process (``scalar``, ``avx2``,
    ``avx512``, ``neon``, ``auto``; the environment variable ``PATSPARSE_ISA`` sets the initial one),
    like :func:`torch_patsparse.ops.set_isa` does for the torch ops."""
    name = ops.isa_name(name)
    if not _load_kernels().patsparse_et_set_isa(name.encode()):
        raise ValueError(f"torch_patsparse: ISA path '{name}' is unknown or not supported by this build or CPU")


def executorch_plan_cache_stats() -> Tuple[int, int, int]:
    """(hits, builds, size) of the ExecuTorch kernels' plan cache in this process."""
    stats = (ctypes.c_int64 * 3)()
    _load_kernels().patsparse_et_plan_cache_stats(stats)
    return tuple(int(v) for v in stats)


def executorch_sparse_index_cache_stats() -> Tuple[int, int, int]:
    """(hits, builds, size) of the ExecuTorch sparse 1x1 / Linear kernels' runtime-index cache."""
    stats = (ctypes.c_int64 * 3)()
    _load_kernels().patsparse_et_sparse_index_cache_stats(stats)
    return tuple(int(v) for v in stats)
