"""torch.fx leaves for our modules (and their decoded ``weight`` as a ``get_attr`` node).

``torch.fx.symbolic_trace``'s default tracer keeps torch.nn's own modules as leaves (one
``call_module`` node each) and traces into every other module's forward. Our layers' forwards branch
on the input (dtype, shape, device, grad mode), which a Proxy cannot answer, so a user's FX tool would
fail on a converted model where it works on the dense one. Each of our modules' forward therefore starts
with (the block is dropped when TorchScript compiles it)::

    if not torch.jit.is_scripting():
        traced = fx_leaf(self, x)
        if traced is not None:
            return traced
"""
from typing import Any, Optional

import torch
from torch import nn


def fx_leaf(module: nn.Module, *args: Any) -> Optional[torch.fx.Proxy]:
    """While torch.fx traces (an argument is a Proxy): ``module``'s ``call_module`` node, as the tracer
    records an ``nn.Conv2d``; otherwise None."""
    for a in args:
        if isinstance(a, torch.fx.Proxy):
            tracer = a.tracer
            return tracer.create_proxy("call_module", tracer.path_of_module(module), args, {})
    return None


def fx_attr(module: nn.Module, name: str, param: Any) -> Optional[torch.fx.Proxy]:
    """While torch.fx traces (``param``, one of ``module``'s parameters, reads as a Proxy then): the
    graph's ``getattr(<module>, name)``, so that the graph module reads the attribute (our decoding
    property) when it runs, on the module itself: a ``get_attr`` of ``<module>.<name>`` would make the
    graph module copy the decoded tensor once, at trace time, where the layer is read but not called.
    Otherwise None."""
    if isinstance(param, torch.fx.Proxy):
        tracer = param.tracer
        return getattr(tracer.create_proxy("get_attr", tracer.path_of_module(module), (), {}), name)
    return None
