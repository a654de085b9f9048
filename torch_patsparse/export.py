"""Export a (converted) model for C++ and mobile runtimes.

``torchscript(model, path)`` writes a TorchScript archive that ``torch.jit.load`` (Python) and
``torch::jit::load`` (C++, e.g. ``patsparse_run``) read. ``mobile(model, path)`` writes a
lite-interpreter (``.ptl``) file for PyTorch Mobile. Both files call the native ops
``torch.ops.patsparse.*`` by name: the process that loads them must have the op library loaded
(``import torch_patsparse`` in Python; ``libpatsparse_ops`` linked into a C++ or mobile app, see
docs/MOBILE.md), or loading fails with an "Unknown builtin op: patsparse::pattern_conv2d" error.
"""
import os
import warnings
from typing import Union

import torch
from torch import nn

from . import ops  # noqa: F401  (registers torch.ops.patsparse so scripting resolves the ops)

__all__ = ["torchscript", "mobile", "LITE_INTERPRETER_WARNING"]

LITE_INTERPRETER_WARNING = (
    "torch_patsparse.export.mobile: PyTorch has deprecated the TorchScript lite interpreter "
    "(PyTorch Mobile, .ptl files) in favour of ExecuTorch; the file is written and loads with "
    "torch.jit.mobile._load_for_lite_interpreter today, but future PyTorch releases may drop it. "
    "See docs/MOBILE.md for the ExecuTorch route.")


def _script(model: nn.Module) -> torch.jit.ScriptModule:
    if isinstance(model, torch.jit.ScriptModule):
        return model
    was_training = model.training
    model.eval()
    try:
        return torch.jit.script(model)
    finally:
        model.train(was_training)


def torchscript(model: nn.Module, path: Union[str, os.PathLike]) -> str:
    """Scripts ``model`` (in eval mode) with ``torch.jit.script``, saves it to ``path`` and returns
    the path. Load it with ``torch.jit.load`` after ``import torch_patsparse``, or from C++."""
    path = os.fspath(path)
    scripted = _script(model)
    scripted.save(path)
    return path


def mobile(model: nn.Module, path: Union[str, os.PathLike]) -> str:
    """Scripts ``model`` (in eval mode) and saves it for the mobile lite interpreter
    (``_save_for_lite_interpreter``); returns the path. Warns (does not fail) that PyTorch deprecated
    the lite interpreter. (``optimize_for_mobile`` is not applied: it needs an XNNPACK build of
    torch, which the CPU wheel used here is not; run it yourself where available.)"""
    warnings.warn(LITE_INTERPRETER_WARNING, FutureWarning, stacklevel=2)
    path = os.fspath(path)
    scripted = _script(model)
    scripted._save_for_lite_interpreter(path)
    return path
