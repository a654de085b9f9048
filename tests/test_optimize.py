"""The inference path: the fused native op ``patsparse::pattern_conv2d_fused`` (pinned to F.conv2d +
torch ops on every ISA path, batch 0/1/N, channels_last, threads 1/2, every epilogue kind, bad
inputs) and ``ps.optimize_for_inference`` (BatchNorm folding with non-trivial statistics, fused
activations and residual adds against the unoptimized model, fx-traceable and non-traceable
models, TorchScript and torch.export of the result, eval-only behaviour). fusion.py's pieces
(max_pool2d_nchw, FusedConv): test_fusion.py."""
import copy
import math
import warnings
from typing import NamedTuple, Optional

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torch_patsparse as ps
from torch_patsparse import format as fmt
from torch_patsparse import ops

from helpers import SHAPES, assert_same_model_output, compressed, random_pattern_weight, reference_conv

INF = math.inf
BOUNDS = [(-INF, INF), (0.0, INF), (0.0, 6.0), (-0.25, 0.5)]  # none, ReLU, ReLU6, hardtanh-like


def clamp(t, lo, hi):
    return t if (lo, hi) == (-INF, INF) else t.clamp(None if lo == -INF else lo, None if hi == INF else hi)


def fused_reference(x, weight, scale, shift, residual, stride, padding, dilation, lo, hi):
    """The unfused graph: dense conv, then scale, shift, residual and clamp as torch ops."""
    out = reference_conv(x, weight, None, stride, padding, dilation)
    if scale is not None:
        out = out * scale.view(1, -1, 1, 1)
    if shift is not None:
        out = out + shift.view(1, -1, 1, 1)
    if residual is not None:
        out = out + residual
    return clamp(out, lo, hi)


def run_fused(x, arrays, scale, shift, residual, stride, padding, dilation, lo, hi):
    return ops.pattern_conv2d_fused(x, *(arrays[k] for k in fmt.ARRAY_NAMES), scale, shift, residual, stride,
                                    padding, dilation, lo, hi)


def epilogue_args(cout, out_shape, kind, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    scale = (torch.rand(cout, generator=g) + 0.5).to(dtype) if kind & 1 else None
    shift = torch.randn(cout, generator=g).to(dtype) if kind & 2 else None
    residual = torch.randn(out_shape, generator=g).to(dtype) if kind & 4 else None
    return scale, shift, residual


# ---------------------------------------------------------------- the native fused op
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
# (the C++ test_epilogue covers all 8 on/off combinations on every path)
@pytest.mark.parametrize("kind", [0, 3, 6, 7], ids=lambda k: f"scale{k & 1}-shift{k >> 1 & 1}-res{k >> 2 & 1}")
def test_fused_op_matches_unfused(isa, shape, kind):
    n, cin, h, w, cout, stride, padding, dilation, _ = shape
    weight = random_pattern_weight(cout, cin, keep=0.6, group=2, seed=cin * 7 + cout)
    arrays = compressed(weight)
    x = torch.randn(n, cin, h, w, generator=torch.Generator().manual_seed(kind))
    out_shape = reference_conv(x, weight, None, stride, padding, dilation).shape
    scale, shift, residual = epilogue_args(cout, out_shape, kind, seed=kind)
    for lo, hi in BOUNDS:
        got = run_fused(x, arrays, scale, shift, residual, stride, padding, dilation, lo, hi)
        want = fused_reference(x, weight, scale, shift, residual, stride, padding, dilation, lo, hi)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [0, 1, 3])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_fused_op_channels_last_threads_groups(isa, threads, batch, nthreads):
    torch.set_num_threads(nthreads)
    weight = random_pattern_weight(24, 40, keep=0.3, group=4, seed=3)
    arrays = compressed(weight)
    x = torch.randn(batch, 40, 23, 30).contiguous(memory_format=torch.channels_last)
    out_shape = (batch, 24, 23, 30)
    scale, shift, residual = epilogue_args(24, out_shape, 7, seed=1)
    residual = residual.contiguous(memory_format=torch.channels_last)
    got = run_fused(x, arrays, scale, shift, residual, 1, 1, 1, 0.0, 6.0)
    want = fused_reference(x, weight, scale, shift, residual, 1, 1, 1, 0.0, 6.0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if batch:
        assert got.is_contiguous(memory_format=torch.channels_last)  # as pattern_conv2d: the input's format
    # stride 2 (other slab geometry), several row blocks
    x2 = torch.randn(batch, 40, 57, 61)
    s2, b2, r2 = epilogue_args(24, (batch, 24, 29, 31), 7, seed=2)
    got = run_fused(x2, arrays, s2, b2, r2, 2, 1, 1, 0.0, INF)
    torch.testing.assert_close(got, fused_reference(x2, weight, s2, b2, r2, 2, 1, 1, 0.0, INF), rtol=1e-5, atol=1e-5)


def test_fused_op_float64_and_shift_only_equals_bias(isa):
    weight = random_pattern_weight(6, 5, keep=0.7, seed=9, dtype=torch.float64)
    arrays = compressed(weight)
    arrays = {k: (v.double() if k == "values" else v) for k, v in arrays.items()}
    x = torch.randn(2, 5, 9, 8, dtype=torch.float64)
    scale, shift, residual = epilogue_args(6, (2, 6, 9, 8), 7, dtype=torch.float64)
    got = run_fused(x, arrays, scale, shift, residual, 1, 1, 1, 0.0, 6.0)
    want = fused_reference(x, weight, scale, shift, residual, 1, 1, 1, 0.0, 6.0)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # shift only, unbounded: exactly the bias form of pattern_conv2d (same kernel path)
    xf = x.float()
    af = compressed(weight.float())
    bias = torch.randn(6)
    assert torch.equal(run_fused(xf, af, None, bias, None, 1, 1, 1, -INF, INF),
                       ops.pattern_conv2d(xf, *(af[k] for k in fmt.ARRAY_NAMES), bias, 1, 1, 1))


def test_fused_op_bad_inputs_clear_errors(isa):
    weight = random_pattern_weight(6, 5, keep=0.7, seed=1)
    arrays = compressed(weight)
    x = torch.randn(2, 5, 9, 8)
    ok = torch.ones(6)
    with pytest.raises(RuntimeError, match="residual must have the output's shape"):
        run_fused(x, arrays, None, None, torch.zeros(2, 6, 9, 7), 1, 1, 1, -INF, INF)
    with pytest.raises(RuntimeError, match="lo <= hi"):
        run_fused(x, arrays, ok, None, None, 1, 1, 1, 1.0, 0.0)
    for lo, hi in [(math.nan, 1.0), (0.0, math.nan)]:
        with pytest.raises(RuntimeError, match="not be NaN"):
            run_fused(x, arrays, ok, None, None, 1, 1, 1, lo, hi)
    with pytest.raises(RuntimeError, match=r"scale must be \[6\]"):
        run_fused(x, arrays, torch.ones(5), None, None, 1, 1, 1, -INF, INF)
    with pytest.raises(RuntimeError, match=r"shift must be \[6\]"):
        run_fused(x, arrays, None, torch.ones(6, 1), None, 1, 1, 1, -INF, INF)
    with pytest.raises(RuntimeError, match="scale is Double"):
        run_fused(x, arrays, torch.ones(6, dtype=torch.float64), None, None, 1, 1, 1, -INF, INF)
    with pytest.raises(RuntimeError, match="residual is Double"):
        run_fused(x, arrays, None, None, torch.zeros(2, 6, 9, 8, dtype=torch.float64), 1, 1, 1, -INF, INF)


def test_fused_op_fake_and_backward_raises():
    from torch._subclasses.fake_tensor import FakeTensorMode
    weight = random_pattern_weight(6, 5, keep=0.7, seed=1)
    arrays = compressed(weight)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        x = mode.from_tensor(torch.randn(2, 5, 9, 8))
        out = run_fused(x, arrays, None, None, torch.zeros(2, 6, 5, 4), 2, 1, 1, 0.0, INF)
        assert tuple(out.shape) == (2, 6, 5, 4)
        with pytest.raises(Exception, match="residual must have the output's shape"):
            run_fused(x, arrays, None, None, torch.zeros(2, 6, 5, 5), 2, 1, 1, 0.0, INF)
    x = torch.randn(2, 5, 9, 8, requires_grad=True)
    out = run_fused(x, arrays, None, None, None, 1, 1, 1, 0.0, INF)
    with pytest.raises(RuntimeError, match="inference-only"):
        out.sum().backward()


@pytest.mark.parametrize("bits", [None, 4])
@pytest.mark.parametrize("has_bias", [False, True])
def test_forward_fused_method(isa, bits, has_bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 12, 3, padding=1, bias=has_bias)
    m = ps.nn.PatternConv2d.from_dense(conv, bits=bits, project=True).eval()
    x = torch.randn(2, 8, 10, 11)
    with torch.no_grad():
        ref = m(x) - (0 if m.bias is None else m.bias.view(1, -1, 1, 1))  # forward_fused adds no bias
        for kind in range(8):
            scale, shift, residual = epilogue_args(12, ref.shape, kind, seed=kind)
            for lo, hi in BOUNDS:
                got = m.forward_fused(x, scale, shift, residual, lo, hi)
                want = ref * (1 if scale is None else scale.view(1, -1, 1, 1))
                want = want + (0 if shift is None else shift.view(1, -1, 1, 1)) + (0 if residual is None else residual)
                torch.testing.assert_close(got, clamp(want, lo, hi), rtol=1e-5, atol=1e-5)
        # unbatched input and residual, fp16 input (computed in fp32, returned in fp16)
        got = m.forward_fused(x[0], None, None, ref[0], 0.0, INF)
        torch.testing.assert_close(got, (ref[0] + ref[0]).clamp(min=0), rtol=1e-5, atol=1e-5)
        assert copy.deepcopy(m).half().forward_fused(x.half(), None, None, None, 0.0, INF).dtype == torch.float16
        with pytest.raises(RuntimeError, match="channels"):
            m.forward_fused(torch.randn(2, 7, 10, 11), None, None, None, 0.0, INF)


# ---------------------------------------------------------------- optimize_for_inference
from torch_patsparse import models  # noqa: E402
from torch_patsparse.fusion import DepthwiseConv3x3, EvalOnly  # noqa: E402
from torch_patsparse.optimize import FusedConv  # noqa: E402


def sparse_model(model, keep1x1=0.3, seed=0):
    """``model`` with the benchmarks' sparsity structure and non-trivial BatchNorm statistics, converted."""
    import warnings
    models.sparsify_random(model, keep3x3=0.5, group=4, keep1x1=keep1x1, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convert lists the layers it leaves dense
        return ps.convert(model.eval(), layers="all")


def tensors(module):
    return {k: v.clone() for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}


class TinyResNet(nn.Module):
    """7x7 stem + BN + ReLU + max-pool (the channels_last segment), basic and bottleneck blocks (residual
    adds, a strided 1x1 downsample), global pool, FC."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(models.BasicBlock(16, 16), models.BasicBlock(16, 32, stride=2))
        self.layer2 = models.Bottleneck(32, 8)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def tiny_vgg():
    return models.VGG([16, 16, "M", 32, 32, "M", 32], num_classes=10)


def tiny_mobilenet():
    return nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(inplace=True),
                         models.InvertedResidual(16, 16, 1, 4), models.InvertedResidual(16, 24, 2, 4),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 5))


def count(model, kind):
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("build", [TinyResNet, tiny_vgg, tiny_mobilenet], ids=["resnet", "vgg", "mobilenet"])
def test_optimized_models_match(isa, build):
    torch.manual_seed(0)
    model = sparse_model(build())
    before = tensors(model)
    opt = ps.optimize_for_inference(model)
    assert count(opt, nn.BatchNorm2d) == 0 and count(opt, FusedConv) > 0
    for x in (torch.randn(2, 3, 40, 44), torch.randn(1, 3, 33, 35).contiguous(memory_format=torch.channels_last)):
        with torch.no_grad():
            assert_same_model_output(opt(x), model(x))
    # the input model is untouched (weights, BatchNorm statistics, mode)
    after = tensors(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert count(model, nn.BatchNorm2d) > 0 and not model.training
    # dense models: BatchNorm folded into the conv weights, same outputs
    dense = build()
    models.sparsify_random(dense, seed=1)
    dense.eval()
    dopt = ps.optimize_for_inference(dense)
    assert count(dopt, nn.BatchNorm2d) == 0
    x = torch.randn(2, 3, 40, 44)
    with torch.no_grad():
        assert_same_model_output(dopt(x), dense(x))


def test_optimized_pools_save_load_trace_export_unbatched():
    """The rewritten max-pools (native 2x2 kernel, channels_last segment) survive torch.save /
    torch.load (which re-traces the graph module's code), export with dynamic H / W, and take unbatched 3-D input."""
    import io
    torch.manual_seed(0)
    stem_vgg = lambda: nn.Sequential(  # takes unbatched input (no BatchNorm2d, no classifier)
        nn.Conv2d(3, 3, 7, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        *models.VGG([16, 16, "M", 32], num_classes=10, batch_norm=False).features)
    for build in (tiny_vgg, TinyResNet, stem_vgg):
        model = sparse_model(build())
        opt = ps.optimize_for_inference(model)
        buf = io.BytesIO()
        torch.save(opt, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        x = torch.randn(2, 3, 40, 44)
        with torch.no_grad():
            want = opt(x)
            assert_same_model_output(want, model(x))
            assert torch.equal(loaded(x), want)
            if build is stem_vgg:
                assert_same_model_output(opt(x[0]), model(x[0]))  # unbatched
        h, w = torch.export.Dim("h", min=16, max=128), torch.export.Dim("w", min=16, max=128)
        exported = torch.export.export(opt, (x,), dynamic_shapes=({2: h, 3: w},)).module()
        y = torch.randn(2, 3, 36, 50)
        with torch.no_grad():
            assert_same_model_output(exported(y), model(y))


def test_resnet_stem_runs_channels_last_and_vgg_pool_is_replaced():
    torch.manual_seed(0)
    opt = ps.optimize_for_inference(sparse_model(TinyResNet()))
    code = opt.code
    assert "channels_last" in code and "bn1" not in code
    vgg = ps.optimize_for_inference(sparse_model(tiny_vgg()))
    assert "max_pool2d_nchw" in vgg.code and count(vgg, nn.MaxPool2d) == 0


ACTIVATIONS = {  # a module (registered as the block's submodule) or a function
    "ReLU": nn.ReLU(inplace=True), "ReLU6": nn.ReLU6(), "Hardtanh": nn.Hardtanh(-0.5, 0.7),
    "F.relu": lambda y: F.relu(y), "torch.relu": lambda y: torch.relu(y), "relu_": lambda y: y.relu_(),
    "F.relu6": lambda y: F.relu6(y), "F.hardtanh": lambda y: F.hardtanh(y, -0.2, 0.4),
    "clamp": lambda y: torch.clamp(y, min=-0.1), "clamp_method": lambda y: y.clamp(-0.3, 0.3), "none": lambda y: y,
}
def _iadd(a, b):
    a += b
    return a


RESIDUALS = {"none": None, "+": lambda a, b: a + b, "torch.add": lambda a, b: torch.add(b, a), "+=": _iadd}


class Block(nn.Module):
    def __init__(self, act, residual, bias, bits, bn=True):
        super().__init__()
        conv = nn.Conv2d(8, 8, 3, padding=1, bias=bias)
        with torch.no_grad():
            conv.weight.copy_(random_pattern_weight(8, 8, keep=0.6, group=4, seed=1))
        self.conv = ps.nn.PatternConv2d.from_dense(conv, bits=bits)
        self.bn = nn.BatchNorm2d(8) if bn else nn.Identity()
        act = ACTIVATIONS[act]
        self.act = act if isinstance(act, nn.Module) else None
        self.act_fn, self.residual = (None if self.act is not None else act), RESIDUALS[residual]
        if bn:
            models.sparsify_random(self.bn)  # non-trivial statistics

    def forward(self, x):
        y = self.bn(self.conv(x))
        if self.residual is not None:
            y = self.residual(y, x)
        return self.act(y) if self.act is not None else self.act_fn(y)


@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("residual", list(RESIDUALS))
def test_fused_epilogues_match_unfused_graph(act, residual):
    for bias, bits, bn in [(False, None, True), (True, 4, True), (True, None, False)]:
        model = Block(act, residual, bias, bits, bn).eval()
        opt = ps.optimize_for_inference(model)
        assert isinstance(opt, torch.fx.GraphModule)
        x = torch.randn(2, 8, 9, 11)
        with torch.no_grad():
            assert_same_model_output(opt(x), model(x))
        # everything after the conv ran inside the fused module: nothing but it is left in the graph
        calls = [n for n in opt.graph.nodes if n.op not in ("placeholder", "output") and n.target != "eval_only"]
        if act != "none" or residual != "none" or bn or bias:
            assert len(calls) == 1 and calls[0].op == "call_module", opt.code


class Untraceable(nn.Module):
    """Data-dependent control flow at the top (fx cannot trace it); traceable children."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(),
                                      nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.Hardtanh(-1.0, 2.0))
        self.block = models.BasicBlock(8, 8)

    def forward(self, x):
        y = self.features(x)
        if float(y.sum()) > 0:  # data-dependent
            y = self.block(y)
        return y


class DataDependent(nn.Module):
    def forward(self, x):
        return x * 0 if float(x.mean()) > 1e9 else x  # never true, but fx cannot know


class CustomSequential(nn.Sequential):
    """Its own forward (the children do not simply run in order): never folded by modules."""

    def forward(self, x):
        return self[2](self[1](self[0](x))) + self[3](x) * 0 if float(x.mean()) < 1e9 else x


def test_untraceable_models_fold_by_modules(isa):
    torch.manual_seed(0)
    model = sparse_model(Untraceable(), keep1x1=None)
    opt = ps.optimize_for_inference(model)
    assert type(opt) is Untraceable  # the model's own class, its children optimized
    assert count(opt, nn.BatchNorm2d) == 0 and count(opt, FusedConv) >= 3
    x = torch.randn(2, 3, 12, 10)
    with torch.no_grad():
        assert_same_model_output(opt(x), model(x))
    # an nn.Sequential that does not trace: module-level folding of conv, BatchNorm, activation
    seq = sparse_model(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                     nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(), DataDependent()))
    opt = ps.optimize_for_inference(seq)
    assert count(opt, nn.BatchNorm2d) == 0 and count(opt, FusedConv) == 2 and count(opt, nn.ReLU6) == 0  # stem too
    with torch.no_grad():
        assert_same_model_output(opt(x), seq(x))
    custom = sparse_model(CustomSequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                           nn.Conv2d(3, 8, 1)))
    opt = ps.optimize_for_inference(custom)
    assert count(opt, nn.BatchNorm2d) == 1
    with torch.no_grad():
        assert_same_model_output(opt(x), custom(x))


class Broadcast(nn.Module):
    """conv output + a tensor that broadcasts (not a residual of the output's shape), a module called twice."""

    def __init__(self):
        super().__init__()
        conv = nn.Conv2d(4, 4, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(random_pattern_weight(4, 4, keep=0.7, seed=2))
        self.conv = ps.nn.PatternConv2d.from_dense(conv)
        self.bn = nn.BatchNorm2d(4)
        models.sparsify_random(self.bn)

    def forward(self, x, b):
        y = F.relu(self.bn(self.conv(x)) + b)
        return self.conv(y) + self.conv(x)


def test_broadcast_add_and_shared_module():
    model = Broadcast().eval()
    opt = ps.optimize_for_inference(model)
    assert count(opt, FusedConv) >= 2
    x = torch.randn(2, 4, 6, 7)
    for b in (torch.randn(1, 4, 1, 1), torch.randn(2, 4, 6, 7)):  # broadcast, then a true residual
        with torch.no_grad():
            assert_same_model_output(opt(x, b), model(x, b))


def test_script_and_export(isa):
    torch.manual_seed(0)
    model = sparse_model(TinyResNet())
    opt = ps.optimize_for_inference(model)
    x = torch.randn(2, 3, 40, 44)
    with torch.no_grad():
        want = model(x)
        scripted = torch.jit.script(opt)
        assert_same_model_output(scripted(x), want)
        exported = torch.export.export(opt, (x,))
        assert_same_model_output(exported.module()(x), want)
    # (the layer ops are CompositeImplicitAutograd: kept in the training IR, the product ops beneath)
    names = {str(n.target) for n in exported.run_decompositions().graph.nodes if n.op == "call_function"}
    assert any("pattern_conv2d_fused" in n for n in names), names
    # saved and reloaded TorchScript file
    import io
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    with torch.no_grad():
        assert_same_model_output(torch.jit.load(buf)(x), want)


LEAVES = (ps.nn.PatternConv2d, ps.nn.SparseConv2d, ps.nn.SparseLinear, FusedConv, DepthwiseConv3x3, EvalOnly)


def test_fx_symbolic_trace_keeps_our_modules_as_leaves():
    """torch.fx's default tracer (what users' FX tools call) records our modules as one call_module
    node each, as it does nn.Conv2d, for converted and optimized models; TorchScript code is unchanged."""
    torch.manual_seed(0)
    for build in (TinyResNet, tiny_vgg, tiny_mobilenet):
        model = sparse_model(build())
        for m in (model, ps.optimize_for_inference(model)):
            traced = torch.fx.symbolic_trace(m)
            leaves = {type(traced.get_submodule(n.target)) for n in traced.graph.nodes if n.op == "call_module"}
            inner = {id(c) for f in m.modules() if isinstance(f, FusedConv) for c in f.modules() if c is not f}
            ours = {type(s) for s in m.modules() if isinstance(s, LEAVES) and id(s) not in inner}
            assert ours and ours <= leaves, (ours, leaves)
            x = torch.randn(2, 3, 40, 44)
            with torch.no_grad():
                assert torch.equal(traced(x), m(x))
            if m is not model:  # the optimized model's guard is still called first: .train() refused
                assert isinstance(next(traced.children()), EvalOnly)
                with pytest.raises(RuntimeError, match="inference only"):
                    traced.train()
    conv = nn.Conv2d(8, 8, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(random_pattern_weight(8, 8, keep=0.5))
    assert "fx" not in torch.jit.script(ps.nn.PatternConv2d.from_dense(conv)).code


class _WeightPenalty(nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return self.conv(x).sum() + self.conv.weight.pow(2).sum()


class _ReadsWeight(nn.Module):  # a tied head: reads the layer's weight, calls it or not
    def __init__(self, conv, call):
        super().__init__()
        self.conv, self.call = conv, call

    def forward(self, x):
        y = F.conv2d(x, self.conv.weight, None, 1, 1)
        return y + self.conv(x) if self.call else y


def test_fx_symbolic_trace_of_a_forward_that_reads_the_weight():
    """A forward reading ``conv.weight`` (a penalty, a tied layer) traces as for nn.Conv2d: the graph
    module reads the live weight at run time, also where the layer is read and not called (a get_attr
    of ``conv.weight`` made the graph module copy the decoded tensor at trace time: stale after an
    edit, and a second backward failed through the trace's graph). Float layers, and k-bit / sparse
    layers with a bias (torch.fx proxies parameters only)."""
    conv = nn.Conv2d(8, 8, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(random_pattern_weight(8, 8, keep=0.5))
    x = torch.randn(1, 8, 5, 5)
    pattern = ps.nn.PatternConv2d.from_dense(conv)
    for net in (_WeightPenalty(pattern), _ReadsWeight(pattern, False), _ReadsWeight(pattern, True)):
        traced = torch.fx.symbolic_trace(net)
        torch.testing.assert_close(traced(x), net(x))
        with torch.no_grad():
            net.conv.values.mul_(2)  # the graph reads the live weight, not a copy taken at trace time
        torch.testing.assert_close(traced(x), net(x))
        for _ in range(2):
            traced(x).sum().backward()
        assert net.conv.values.grad is not None
        torch.testing.assert_close(copy.deepcopy(traced)(x), net(x))
    for layer in (ps.nn.PatternConv2d.from_dense(conv, bits=4), ps.nn.SparseConv2d.from_dense(conv)):
        for call in (False, True):
            net = _ReadsWeight(copy.deepcopy(layer), call)
            traced = torch.fx.symbolic_trace(net)
            with torch.no_grad():
                net.conv.load_state_dict({**net.conv.state_dict(), "bias": net.conv.bias + 1})
                (net.conv.scale if isinstance(layer, ps.nn.PatternConv2d) else net.conv.values).mul_(2)
            torch.testing.assert_close(traced(x), net(x))


def _random_bn(model):
    g = torch.Generator().manual_seed(1)
    for b in model.modules():
        if isinstance(b, nn.BatchNorm2d):
            b.running_mean.copy_(torch.rand(b.num_features, generator=g) - 0.5)
            b.running_var.copy_(torch.rand(b.num_features, generator=g) + 0.5)
            b.weight.data.copy_(torch.rand(b.num_features, generator=g) + 0.5)
            b.bias.data.copy_(torch.rand(b.num_features, generator=g) - 0.5)
    return model.eval()


def _pattern_conv(cin=8, cout=8, bias=True):
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=bias)
    with torch.no_grad():
        conv.weight.copy_(random_pattern_weight(cout, cin, keep=0.5))
    return conv


class _Twice(nn.Module):  # one conv + BN + ReLU block called twice (a shared encoder)
    def __init__(self, conv):
        super().__init__()
        self.block = nn.Sequential(conv, nn.BatchNorm2d(8), nn.ReLU())

    def forward(self, x):
        return self.block(self.block(x))


class _SharedDepthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, x):
        return F.relu(self.dw(x)) + self.dw(x)


class _InPlaceBetween(nn.Module):  # the conv's input is changed in place before the residual add
    def __init__(self):
        super().__init__()
        self.c, self.bn, self.relu = _pattern_conv(bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.bn(self.c(x))
        x = self.relu(x)
        return out + x


class _SelfAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.bn = _pattern_conv(), nn.BatchNorm2d(8)

    def forward(self, x):
        o = self.bn(self.c(x))
        return F.relu(o + o)


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.bn = _pattern_conv(), nn.BatchNorm2d(8)

    def forward(self, x, r):
        return F.relu(self.bn(self.c(x)) + r)


@pytest.mark.parametrize("build", [
    lambda: _Twice(nn.Conv2d(8, 8, 1)), lambda: _Twice(_pattern_conv()), _SharedDepthwise,
    lambda: (lambda c, b: nn.Sequential(c, b, nn.ReLU(), c, b))(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)),
    _InPlaceBetween, _SelfAdd], ids=["shared-dense", "shared-pattern", "shared-depthwise", "shared-in-sequential",
                                     "in-place-before-add", "o-plus-o"])
def test_shared_modules_and_in_place_ops(build):
    """A module called more than once gets one folded copy per call; an in-place op on the conv's input
    between the conv and its add keeps the add out of the fused op; ``o + o`` is not a residual."""
    torch.manual_seed(0)
    model = ps.convert(_random_bn(build()))
    opt = ps.optimize_for_inference(model)
    x = torch.randn(2, 8, 10, 11)
    with torch.no_grad():
        assert_same_model_output(opt(x.clone()), model(x.clone()))


def test_residual_of_another_dtype_promotes_as_the_model():
    model = ps.convert(_random_bn(_Residual()))
    opt = ps.optimize_for_inference(model)
    x, r = torch.randn(2, 8, 10, 11), torch.randn(2, 8, 10, 11, dtype=torch.float64)
    with torch.no_grad():
        got, want = opt(x, r), model(x, r)
    assert got.dtype == want.dtype == torch.float64
    assert_same_model_output(got, want)


class _Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.temperature = nn.Linear(8, 5), 2.0

    def forward(self, x):
        return self.fc(x.mean((2, 3)))


class _HeadWithMethod(_Head):
    def logits(self, x):
        return self.forward(x)


class _Untraceable(nn.Module):  # control flow on the input; reads a child's attribute, calls a child's method
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(_pattern_conv(), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout())
        self.head, self.head2 = _Head(), _HeadWithMethod()

    def forward(self, x):
        if x.sum() > 0:
            x = x.relu()
        x = self.body(x)
        return self.head(x) / self.head.temperature + self.head2.logits(x)


class _OptionalMask(nn.Module):  # `if mask is not None` would trace as taken
    def __init__(self):
        super().__init__()
        self.c, self.bn = _pattern_conv(), nn.BatchNorm2d(8)

    def forward(self, x, mask: Optional[torch.Tensor] = None):
        y = self.bn(self.c(x))
        if mask is not None:
            y = y * mask
        return y


@pytest.mark.parametrize("build", [_Untraceable, _OptionalMask, lambda: nn.Sequential(_Untraceable())],
                         ids=["control-flow", "optional-arg", "sequential"])
def test_models_that_do_not_trace(build, tmp_path):
    """Children keep what their callers use (attributes, methods), None-default arguments are not
    traced, ``.train()`` is refused before any child changes mode, and the result exports."""
    import copy
    import io
    torch.manual_seed(0)
    model = ps.convert(_random_bn(build()))
    opt = ps.optimize_for_inference(model)
    x = torch.randn(2, 8, 10, 11)
    with torch.no_grad():
        want = model(x)
        assert_same_model_output(opt(x), want)
        if isinstance(model, _OptionalMask):
            mask = torch.rand(2, 8, 10, 11)
            assert_same_model_output(opt(x, mask), model(x, mask))
        assert torch.equal(copy.deepcopy(opt)(x), opt(x))
        buf = io.BytesIO()
        torch.save(opt, buf)
        buf.seek(0)
        assert torch.equal(torch.load(buf, weights_only=False)(x), opt(x))
    with pytest.raises(RuntimeError, match="inference only"):
        opt.train()
    # no mode changed, the root's included (a forward reading self.training ran dropout), also in a
    # Sequential, which has no guard: the children before the fused one are put back
    assert not any(m.training for m in opt.modules())
    ps.export.torchscript(opt, tmp_path / "m.pt")  # after a caught .train(): still exports


def test_traced_graph_keeps_plain_attributes_through_deepcopy():
    import copy

    class WithScale(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.bn, self.scale = _pattern_conv(), nn.BatchNorm2d(8), 0.5

        def forward(self, x):
            return self.bn(self.c(x)) * self.scale

    opt = ps.optimize_for_inference(ps.convert(_random_bn(WithScale())))
    assert opt.scale == 0.5 and copy.deepcopy(opt).scale == 0.5


def test_eval_only():
    torch.manual_seed(0)
    model = sparse_model(TinyResNet())
    model.train()  # the original's mode is its own business: the copy is in eval mode, and that is said
    with pytest.warns(UserWarning, match="'bn1', .* are in training mode; the result computes the eval-mode"):
        opt = ps.optimize_for_inference(model)
    assert model.training and not opt.training
    assert all(not p.requires_grad for p in opt.parameters())
    assert not any(m.training for m in opt.modules())
    with pytest.raises(RuntimeError, match="inference only"):
        opt.train()
    assert not any(m.training for _, m in opt.named_modules() if _)  # raised before any child changed mode
    with pytest.raises(RuntimeError, match="inference only"):
        next(m for m in opt.modules() if isinstance(m, FusedConv)).train()
    opt.eval()
    opt.train(False)
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    out = opt(x)  # grad enabled: runs; a backward through a fused op raises
    with pytest.raises(RuntimeError, match="inference-only"):
        out.sum().backward()
    with pytest.raises(TypeError):
        ps.optimize_for_inference(torch.jit.script(nn.ReLU()))
    # pickles (the whole module) and round-trips its state_dict
    import io
    buf = io.BytesIO()
    torch.save(opt, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    fresh = ps.optimize_for_inference(model)
    fresh.load_state_dict(opt.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), opt(x)) and torch.equal(fresh(x), opt(x))
    with pytest.raises(RuntimeError, match="inference only"):
        again.train()


class DropoutHead(nn.Module):
    """Modules whose behaviour depends on the mode and that optimize_for_inference leaves in place: a
    BatchNorm with no conv before it, a Dropout; the convs fuse."""

    def __init__(self, traceable=True):
        super().__init__()
        self.traceable = traceable
        self.bn_in = nn.BatchNorm2d(3)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        if not self.traceable and x.sum() > 1e30:  # data-dependent: torch.fx cannot trace it
            x = x * 0
        return self.fc(self.drop(self.features(self.bn_in(x)).mean((2, 3))))


@pytest.mark.parametrize("traceable", [True, False])
def test_failed_train_changes_no_mode(traceable):
    """.train() on an optimized model raises before any BatchNorm / Dropout left in it changes mode,
    also after a deepcopy or torch.save / torch.load (the graph keeps its EvalOnly guard). A model
    that does not trace is its own class: its children optimized, the fused ones raise."""
    import copy
    import io
    torch.manual_seed(0)
    model = DropoutHead(traceable)
    models.sparsify_random(model)
    opt = ps.optimize_for_inference(sparse_model(model))
    assert isinstance(opt, torch.fx.GraphModule) == traceable and count(opt, FusedConv) == 1
    buf = io.BytesIO()
    torch.save(opt, buf)
    buf.seek(0)
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        want = opt(x)
    for m in (opt, copy.deepcopy(opt), torch.load(buf, weights_only=False)):
        with pytest.raises(RuntimeError, match="inference only"):
            m.train()
        assert not any(sub.training for sub in m.modules())
        with torch.no_grad():
            assert torch.equal(m(x), want)
        m.eval()
        assert not m.training


class StemPools(nn.Module):
    """A 3-channel 3x3 stem (runs as a full-pattern PatternConv2d), pools of every kind after our convs."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.pool_idx = nn.MaxPool2d(2, return_indices=True)

    def forward(self, x):
        y = F.relu(self.bn(self.stem(x)))
        a = self.pool(y)
        b, idx = self.pool_idx(y)
        c = F.max_pool2d(y, 2, 2, ceil_mode=True)
        return torch.cat([a.flatten(1), b.flatten(1), idx.flatten(1).float(), c.flatten(1)], 1)


def test_stem_and_pools():
    torch.manual_seed(0)
    model = StemPools().eval()
    models.sparsify_random(model)
    opt = ps.optimize_for_inference(model)
    assert count(opt, ps.nn.PatternConv2d) == 1 and count(opt, nn.BatchNorm2d) == 0
    stem = next(m for m in opt.modules() if isinstance(m, ps.nn.PatternConv2d))
    assert stem.conversion_error == 0.0 and stem.patterns.shape == (1, 9)
    assert "channels_last" in opt.code
    for x in (torch.randn(2, 3, 21, 18), torch.randn(1, 3, 16, 16).contiguous(memory_format=torch.channels_last)):
        with torch.no_grad():
            assert_same_model_output(opt(x), model(x))


def test_sparse_linear_and_unbatched_fallback_epilogue():
    """Modules without a native fused path (forward + the epilogue in torch ops): Linear on 3-d input,
    a 1x1 SparseConv2d with BatchNorm."""
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(6, 5), nn.ReLU6())
    conv = nn.Sequential(nn.Conv2d(4, 6, 1), nn.BatchNorm2d(6), nn.ReLU())
    for model, x in ((lin, torch.randn(2, 3, 6) * 4), (conv, torch.randn(2, 4, 5, 7))):
        models.sparsify_random(model, keep1x1=0.5)
        with torch.no_grad():
            model[0].weight.mul_((torch.rand_like(model[0].weight) < 0.5).float())  # sparse, so convert takes it
        model = sparse_model(model.eval(), keep1x1=0.5)
        assert count(model, (ps.nn.SparseLinear, ps.nn.SparseConv2d)) == 1
        opt = ps.optimize_for_inference(model)
        assert count(opt, FusedConv) == 1 and len(list(opt.graph.nodes)) == 4  # input, guard, fused, output
        with torch.no_grad():
            assert_same_model_output(opt(x), model(x))




class _DoubledReLU(nn.ReLU):
    def forward(self, x):
        return 2 * super().forward(x)


def _halved(module):
    module.register_forward_hook(lambda mod, inputs, out: out * 0.5)
    return module


class _IteratesFeatures(nn.Module):
    """An FPN-style backbone fx cannot trace (a shape test) that iterates its Sequential and keeps
    outputs between the layers, one of them between a conv and its BatchNorm."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())

    def forward(self, x):
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in (0, 2, 4) and x.shape[-1] > 2:
                outs.append(x)
        return outs + [self.head(x), self.features[3](outs[1])]


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.out_channels = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), 8

    def forward(self, x):
        return torch.relu(self.bn1(self.conv1(x)))


class _ReachesIn(nn.Module):
    """A parent fx cannot trace that calls one child's layer itself and reads a plain attribute of
    the other (which it only calls: that one is still fused)."""

    def __init__(self):
        super().__init__()
        self.backbone, self.other = _Block(), _Block()

    def forward(self, x):
        y = self.backbone(x)
        if y.shape[-1] > 4:
            y = y + self.backbone.conv1(x)
        return self.other(y) * self.other.out_channels


@pytest.mark.parametrize("make", [lambda: nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), _halved(nn.ReLU())),
                                  lambda: nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8),
                                                        _halved(nn.ReLU6())),
                                  lambda: nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), _halved(nn.Dropout()),
                                                        nn.BatchNorm2d(8)),
                                  lambda: nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), _DoubledReLU()),
                                  lambda: nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8),
                                                        _halved(nn.ReLU6())),
                                  lambda: _IteratesFeatures(), lambda: _ReachesIn()],
                         ids=["hooked_relu", "hooked_relu6", "hooked_dropout", "relu_subclass", "depthwise_hooked",
                              "iterated_child", "reaches_in"])
@pytest.mark.parametrize("converted", [False, True])
def test_hooks_subclasses_and_iterated_children_are_kept(make, converted):
    """Found by a new-user probe: a hook on a fused activation or a removed Dropout was dropped (0.84
    off), and a parent that iterates its Sequential crashed ('Sequential' object is not iterable), as
    one calling its child's layer did (AttributeError)."""
    import warnings
    torch.manual_seed(0)
    model = make().eval()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = sparse_model(model) if converted else models.sparsify_random(model, keep3x3=0.5, group=4)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        got, want = ps.optimize_for_inference(model)(x), model(x)
    for g, w in zip(got, want) if isinstance(want, list) else [(got, want)]:
        assert_same_model_output(g, w)


class _ReachesGrandchild(nn.Module):
    """A parent fx cannot trace (an argument defaulting to None) that calls a layer two levels down."""

    def __init__(self, reflect=False):
        super().__init__()
        self.body = nn.Sequential()
        self.body.add_module("inner", _Called())
        self.reflect = reflect

    def forward(self, x, mask=None):
        bn = self.get_submodule("body.inner.seq.1") if self.reflect else self.body.inner.seq[1]
        return self.body(x) + bn(x)


class _Called(nn.Module):
    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())

    def forward(self, x):
        return self.seq(x)


@pytest.mark.parametrize("reflect", [False, True], ids=["indexes", "get_submodule"])
@pytest.mark.parametrize("converted", [False, True])
def test_a_layer_reached_from_further_up_stays_in_place(reflect, converted):
    """Found by a new-user probe: only the direct parent's code was read, so a Sequential that its
    grandparent indexes became a graph module ('Sequential' object is not subscriptable)."""
    torch.manual_seed(0)
    model = _ReachesGrandchild(reflect).eval()
    bn = model.body.inner.seq[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    if converted:
        model = sparse_model(model)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        assert_same_model_output(ps.optimize_for_inference(model)(x), model(x))


class _State(nn.Module):
    """An RNN-style forward: an argument without a default, None on the first step."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x, h):
        if h is None:
            h = torch.ones_like(x)
        return F.relu(self.bn(self.conv(x)) + h)


@pytest.mark.parametrize("converted", [False, True])
def test_a_none_tested_argument_without_default_is_not_traced(converted):
    """Found by a new-user probe: fx traced `h is None` as False, and the fused conv read a None
    residual as none: 1.0 off, no error (dense: a crash at run time)."""
    torch.manual_seed(0)
    model = _State().eval()
    model = sparse_model(model) if converted else model
    opt = ps.optimize_for_inference(model)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        assert_same_model_output(opt(x, None), model(x, None))
        h = torch.randn_like(x)
        assert_same_model_output(opt(x, h), model(x, h))


class _Embeds(nn.Sequential):
    def embed(self, x):
        return self[1](self[0](x))


class _SignGate(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


@pytest.mark.parametrize("converted", [False, True])
def test_hooks_of_the_model_and_of_traced_through_modules_run(converted):
    """Found by a new-user probe: the root's forward hooks and pre-hooks were dropped, and a hook on a
    module fx traced through ran once at optimization (on a Proxy) and never again."""
    torch.manual_seed(0)
    model = nn.Sequential(_Block(), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()).eval()
    model = sparse_model(model) if converted else model
    seen = []
    model[0].register_forward_hook(lambda mod, inputs, out: seen.append(out.shape) or out * 2)
    model.register_forward_pre_hook(lambda mod, inputs: (inputs[0] * 3,))
    model.register_forward_hook(lambda mod, inputs, out: out - 1)
    opt = ps.optimize_for_inference(model)
    assert seen == []
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        assert_same_model_output(opt(x), model(x))
    assert len(seen) == 2
    assert any(isinstance(m, FusedConv) for m in opt.modules()) == converted


@pytest.mark.parametrize("converted", [False, True])
def test_an_untraced_sequential_with_methods_keeps_its_layers(converted):
    """Found by a new-user probe: an untraceable nn.Sequential subclass was folded in place, so its
    own method (`self[1](self[0](x))`) computed something else (0.44 off)."""
    torch.manual_seed(0)
    model = _Embeds(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), _SignGate()).eval()
    model[1].running_mean.uniform_(-1, 1)
    model = sparse_model(model) if converted else model
    opt = ps.optimize_for_inference(model)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        assert_same_model_output(opt.embed(x), model.embed(x))
        assert_same_model_output(opt(x), model(x))


def test_lazy_models_are_refused_with_the_fix():
    model = nn.Sequential(nn.LazyConv2d(8, 3, padding=1), nn.BatchNorm2d(8))
    for fn in (ps.convert, ps.optimize_for_inference):
        with pytest.raises(ValueError, match="uninitialized.*run one forward pass"):
            fn(model)


def test_a_hooked_stem_is_not_replaced():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)).eval()
    calls = []
    model[0].register_forward_hook(lambda mod, inputs, out: calls.append(1) or torch.zeros_like(out))
    x = torch.randn(1, 3, 10, 10)
    with torch.no_grad():
        assert_same_model_output(ps.optimize_for_inference(model)(x), model(x))
    assert len(calls) == 2


class _OutWrite(nn.Module):
    """An `out=` write of the residual between the conv and its add."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        out = self.conv(x)
        torch.mul(x, 2, out=x)
        return F.relu(out + x)


class _ReadsWeights(nn.Module):
    """Conv + BN whose forward also reads the conv's own weight and bias (tied decoder, a penalty)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return F.conv_transpose2d(y, self.conv.weight, padding=1) + self.conv.bias.sum()


class _ScaledBN(nn.BatchNorm2d):
    def forward(self, x):
        return 2 * super().forward(x)


class _SizeAdd(nn.Module):
    """conv(x) + numbers computed from sizes, and a BatchNorm called by keyword."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.conv(x) + x.size(1)
        return self.bn(input=self.conv(y)) + x.shape[-1] / 2.0


class _TypeTest(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.conv(x) if isinstance(x, torch.Tensor) else x


@pytest.mark.parametrize("make", [lambda: _OutWrite(), lambda: _ReadsWeights(), lambda: _SizeAdd(), lambda: _TypeTest(),
                                  lambda: nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), _ScaledBN(8), nn.ReLU(),
                                                        nn.Flatten(), nn.Unflatten(1, (8, 6, 6))),
                                  lambda: nn.Sequential(torch.nn.utils.weight_norm(nn.Conv2d(8, 8, 3, padding=1)),
                                                        nn.BatchNorm2d(8))],
                         ids=["out_write", "reads_weights", "size_add", "type_test", "bn_subclass", "weight_norm_hook"])
@pytest.mark.parametrize("converted", [False, True])
def test_graphs_a_new_user_writes(make, converted):
    """Found by a new-user probe: each was silently wrong (up to 1.8 off) or crashed."""
    import warnings
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if converted and any(hasattr(m, "weight_g") for m in make().modules()):
            pytest.skip("a hook-based weight_norm model does not deep-copy (torch): convert needs inplace=True")
        model = sparse_model(make()) if converted else models.sparsify_random(make().eval(), keep3x3=0.5, group=4)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        want = model(x.clone())
        opt = ps.optimize_for_inference(model)
        got = opt(x.clone())
        assert_same_model_output(got, want)
        assert_same_model_output(model(x.clone()), want)  # the original untouched


@pytest.mark.parametrize("bits", [None, 4])
def test_optimized_model_under_autocast_gives_the_autocast_dtype(bits):
    """Under autocast the fused layers return what the layers they replace return (the autocast
    dtype): a fused output came back fp32 (an fp32 shift promoted it, or a native depthwise / fused op
    ran in fp32)."""
    torch.manual_seed(0)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    trunk = [nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
             nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
             nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32), nn.ReLU(),
             nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32), nn.ReLU6()]
    for layers in (trunk, trunk + [head]):
        dense = models.sparsify_random(nn.Sequential(*copy.deepcopy(layers)).eval())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = ps.convert(dense, layers="all", bits=bits).eval()
        optimized = ps.optimize_for_inference(converted)
        x = torch.randn(2, 3, 16, 16)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            want, got = converted(x), optimized(x)
        assert got.dtype == want.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want.float(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("bits", [None, 4])
def test_a_trace_under_autocast_runs_outside_it(bits):
    """A model traced under autocast runs without it, as the dense model's trace does (its casts are
    recorded): the layer ops cast their input inside, unrecorded, so the second converted layer got the
    autocast dtype and raised the dense layer's dtype error."""
    torch.manual_seed(0)
    dense = models.sparsify_random(nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1, stride=2),
        nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = ps.convert(dense, layers="all", bits=bits).eval()
    x = torch.randn(2, 3, 16, 16)
    for model in (converted, ps.optimize_for_inference(converted)):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = model(x)
            # (torch traces autocast's weight casts only without gradients, dense layers too)
            traced = torch.jit.trace(model.requires_grad_(False), x, check_trace=False)
        with torch.no_grad():
            got = traced(x)
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want.float(), rtol=0.05, atol=0.05)


def test_aoti_package_of_an_optimized_model_loads_and_runs(tmp_path):
    """AOTInductor writes custom-op float arguments to JSON, where an infinite clamp bound became a
    string its loader refused ("type must be number"): the layers pass +-DBL_MAX for no bound."""
    torch.manual_seed(0)
    dense = models.sparsify_random(nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                                                 nn.ReLU(), nn.Conv2d(16, 8, 1),
                                                 nn.Conv2d(8, 8, 3, padding=1, groups=8)).eval())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ps.optimize_for_inference(ps.convert(dense, layers="all").eval())
    x = torch.randn(2, 16, 10, 10)
    path = torch._inductor.aoti_compile_and_package(torch.export.export(model, (x,)),
                                                    package_path=str(tmp_path / "m.pt2"))
    torch.testing.assert_close(torch._inductor.aoti_load_package(path)(x), model(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unbounded_fused_ops_pass_infinities_through(dtype):
    """No clamp bound is +-DBL_MAX at the op boundary and +-inf in the kernels: an infinite output
    stays infinite (a DBL_MAX clamp would make it finite in fp64)."""
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, 1, 1] = 1.0
    lin = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
    pc = ps.nn.PatternConv2d.from_dense(conv).to(dtype)
    sl = ps.nn.SparseLinear.from_dense(lin).to(dtype)
    x = torch.zeros(1, 2, 3, 3, dtype=dtype)
    x[0, 0, 1, 1] = float("inf")
    v = torch.tensor([[float("inf"), -float("inf"), 0, 0]], dtype=dtype)
    assert torch.isinf(pc.forward_fused(x, None, None, None, -INF, INF)[0, :, 1, 1]).all()
    assert pc.forward_fused(x, None, None, None, -INF, 5.0)[0, 0, 1, 1] == 5.0
    assert sl.forward_fused(v, None, None, None, -INF, INF).tolist() == [[float("inf"), -float("inf")]]


class _ReadsConvWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return F.conv2d(x, self.conv.weight, self.conv.bias, padding=1)


def test_optimized_graph_reading_a_decoded_weight_deep_copies():
    """A forward that reads conv.weight of a converted layer (never calling it): the graph holds the
    decoded weight as a buffer, which required grad (a non-leaf): deepcopy, export.mobile and a second
    optimize_for_inference failed with torch's non-leaf deepcopy error."""
    torch.manual_seed(0)
    model = models.sparsify_random(_ReadsConvWeight(), keep3x3=0.5).eval()
    opt = ps.optimize_for_inference(ps.convert(model))
    assert not any(t.requires_grad for t in list(opt.parameters()) + list(opt.buffers()))
    x = torch.randn(2, 8, 9, 9)
    for m in (opt, copy.deepcopy(opt), ps.optimize_for_inference(opt)):
        torch.testing.assert_close(m(x), model(x), rtol=1e-5, atol=1e-5)


class _ScriptedOutput(NamedTuple):
    logits: torch.Tensor
    aux: Optional[torch.Tensor]


class _EagerOrScripted(nn.Module):
    """As torchvision's GoogLeNet / Inception-v3: the forward is annotated with what its scripted
    branch returns (a NamedTuple) and returns a tensor in eager mode."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 5)

    def forward(self, x) -> _ScriptedOutput:
        y = self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))
        if torch.jit.is_scripting():
            return _ScriptedOutput(y, None)
        return y  # type: ignore[return-value]


def test_return_annotation_of_the_scripted_branch_does_not_stop_scripting():
    """The traced graph kept the forward's return annotation (the NamedTuple) while it returns the
    eager branch's tensor: torch.jit.script / export.torchscript of the optimized model failed."""
    torch.manual_seed(0)
    model = _EagerOrScripted().eval()
    opt = ps.optimize_for_inference(ps.convert(model))
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        assert_same_model_output(torch.jit.script(opt)(x), model(x))


@pytest.mark.parametrize("sequential", [True, False], ids=["sequential", "graph"])
def test_pruned_depthwise_convs_run_the_native_depthwise_kernel(sequential):
    """A pruned depthwise 3x3 conv converted with layers="all" is a SparseConv2d without a sparse
    kernel (F.conv2d on its decoded weight); optimize_for_inference left it there, 1.5-2x slower than
    the dense depthwise conv it turns into DepthwiseConv3x3 (found on MobileNet-V2)."""
    torch.manual_seed(0)
    dw = nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False)
    with torch.no_grad():
        dw.weight.mul_((torch.rand_like(dw.weight) < 0.5).float())
    layers = [nn.Conv2d(3, 16, 1), dw, nn.BatchNorm2d(16), nn.ReLU6()]
    model = nn.Sequential(*layers) if sequential else nn.Sequential(nn.Sequential(*layers), nn.Flatten())
    _nontrivial_bn(model)
    conv = ps.convert(model.eval(), layers="all")
    assert count(conv, ps.nn.SparseConv2d) >= 1
    opt = ps.optimize_for_inference(conv)
    assert count(opt, DepthwiseConv3x3) == 1 and not any(
        isinstance(m, ps.nn.SparseConv2d) and m.groups > 1 for m in opt.modules())
    x = torch.randn(2, 3, 9, 10)
    with torch.no_grad():
        assert_same_model_output(opt(x), conv(x))
        assert_same_model_output(opt(x), model(x))


def _nontrivial_bn(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


class _SwishInplace(nn.Module):  # timm-style in-place activation
    def forward(self, x):
        return x.mul_(torch.sigmoid(x))


class _InplaceAfterConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.act = _pattern_conv(bias=False), nn.BatchNorm2d(8), _SwishInplace()

    def forward(self, x):
        a = self.bn(self.conv(x))
        return F.relu(a + self.act(x))  # writes x in place after the conv read it


def test_a_hooked_module_between_a_conv_and_its_add_is_not_crossed():
    """A hooked user module runs as one opaque call: it may write the conv's input in place, so the
    fused call may not move the conv past it (it did: 0.28 off)."""
    torch.manual_seed(0)
    model = _InplaceAfterConv().eval()
    model.act.register_forward_hook(lambda m, i, o: None)
    x = torch.randn(2, 8, 8, 8)
    opt = ps.optimize_for_inference(ps.convert(model))
    with torch.no_grad():
        torch.testing.assert_close(opt(x.clone()), model(x.clone()), rtol=1e-5, atol=1e-5)


def test_a_training_mode_batchnorm_is_said_to_compute_its_eval_function():
    """A BatchNorm left in training mode in an eval model (test-time adaptation) was folded with its
    running statistics without a word (0.52 off the model's output)."""
    torch.manual_seed(0)
    model = _InplaceAfterConv().eval()
    model.bn.train()
    with pytest.warns(UserWarning, match="'bn' is in training mode; the result computes the eval-mode function"):
        ps.optimize_for_inference(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ps.optimize_for_inference(model.eval())


class _KeepsFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = _pattern_conv(bias=False), nn.BatchNorm2d(8), nn.Linear(8, 4)
        self.calls, self.feats = 0, None

    def forward(self, x):
        self.calls += 1
        y = F.relu(self.bn(self.conv(x)) + x)
        self.feats = y  # kept for inspection (Grad-CAM style)
        return self.fc(y.mean((2, 3)))


def test_a_forward_that_assigns_to_the_module_is_not_traced():
    """A graph module drops `self.feats = y` / `self.calls += 1`, and the trace left an fx Proxy in
    `feats`, so torch.save of the result failed; the model now keeps its class (its children are
    optimized each on its own, as for a forward that does not trace)."""
    torch.manual_seed(0)
    model = _KeepsFeatures().eval()
    opt = ps.optimize_for_inference(ps.convert(model))
    assert type(opt) is _KeepsFeatures and opt.calls == 0 and opt.feats is None
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(opt(x), model(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(opt.feats, model.feats, rtol=1e-5, atol=1e-5)
    assert opt.calls == 1
    import io
    torch.save(opt, io.BytesIO())


def test_a_compiled_model_is_refused_with_what_to_do():
    """optimize_for_inference(torch.compile(model)) recursed until RecursionError."""
    with pytest.raises(TypeError, match=r"before torch.compile: optimize model._orig_mod"):
        ps.optimize_for_inference(torch.compile(_InplaceAfterConv().eval()))
