"""The ExecuTorch route: the out variant of the op (torch side), torch.export / torch.compile of
converted models, and (with the optional `executorch` package) `.pte` files that run our ExecuTorch
kernels (csrc/executorch) in ExecuTorch's runtime: eager outputs, every kernel path, the file size,
errors for bad inputs and bad weights."""
import copy
import os
import sys

import pytest
import torch
from torch import nn

import torch_patsparse as ps
from torch_patsparse import export
from torch_patsparse.models import sparsify_random
from torch_patsparse.nn import PatternConv2d
from torch_patsparse.nn.sparse import SparseConv2d, SparseLinear

from helpers import PATTERNS8, random_pattern_weight


def conv_net(seed=0, width=16, bn=True):
    """A small CNN dominated by 3x3 convs: a dense first conv (Cin=3), 3x3 convs with stride 1/2,
    padding 1/2, dilation 2, with and without bias, BatchNorm after some, a Linear head."""
    torch.manual_seed(seed)
    w = width
    layers = [nn.Conv2d(3, w, 3, padding=1), nn.ReLU(),
              nn.Conv2d(w, 2 * w, 3, padding=1, bias=not bn)] + ([nn.BatchNorm2d(2 * w)] if bn else []) + [
        nn.ReLU(), nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(2 * w, 4 * w, 3, padding=2, dilation=2, bias=False)] + ([nn.BatchNorm2d(4 * w)] if bn else []) + [
        nn.ReLU(), nn.Conv2d(4 * w, 4 * w, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 10)]
    return sparsify_random(nn.Sequential(*layers), keep3x3=0.25, group=4, seed=seed).eval()


def sparse_net(seed=0):
    """conv_net's kind of model for ``ps.convert(layers="all")``: a pattern 3x3 conv, pruned 1x1 convs
    (stride 2 and 1, bias and BatchNorm) and a pruned Linear head, which become SparseConv2d / SparseLinear."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 1, stride=2), nn.ReLU(), nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    model = sparsify_random(model, keep3x3=0.25, group=4, keep1x1=0.2, seed=seed)
    with torch.no_grad():
        head = model[-1].weight
        head.mul_(torch.rand(head.shape, generator=torch.Generator().manual_seed(seed)) < 0.2)
    return model.eval()


class Block(nn.Module):
    """ResNet basic block: conv-BN-ReLU, conv-BN, + (1x1 conv-BN downsampled) identity, ReLU."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1 conv-BN-ReLU, 3x3 conv-BN-ReLU, 1x1 conv-BN, + identity, ReLU."""

    def __init__(self, channels, width):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return torch.relu(self.bn3(self.conv3(out)) + x)


def resnet_net(seed=0):
    """A small ResNet: dense stem conv-BN-ReLU, an identity block, a downsampling block, a bottleneck
    block, pool, Linear-ReLU, Linear (Linear layers pruned to 20%, so layers="all" stores them sparse)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                          Block(16, 16), Block(16, 32, stride=2), Bottleneck(32, 16), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    model = sparsify_random(model, keep3x3=0.25, group=4, keep1x1=0.2, seed=seed)
    with torch.no_grad():
        for i, m in enumerate(m for m in model.modules() if isinstance(m, nn.Linear)):
            m.weight.mul_(torch.rand(m.weight.shape, generator=torch.Generator().manual_seed(seed + i)) < 0.2)
    return model.eval()


def assert_close(got, want, rtol=1e-5):
    err = (got - want).abs().max().item()
    assert err <= rtol * max(want.abs().max().item(), 1e-12), f"max abs error {err} vs max |want| {want.abs().max()}"


# ------------------------------------------------------------------ torch side (no executorch needed)
def test_out_variant_matches_functional():
    torch.manual_seed(0)
    w = random_pattern_weight(8, 6, keep=0.5, group=2, seed=1)
    with torch.no_grad():
        dense = nn.Conv2d(6, 8, 3, padding=1)
        dense.weight.copy_(w)
        layer = PatternConv2d.from_dense(dense, pattern_set=ps.PatternSet(PATTERNS8))
    args = (layer.patterns, layer.filter_ptr, layer.kernel_channel, layer.kernel_pattern, layer.values, layer.bias,
            [2, 2], [1, 1], [1, 1])
    x = torch.randn(3, 6, 11, 9)
    want = torch.ops.patsparse.pattern_conv2d(x, *args)
    out = torch.empty(0)
    got = torch.ops.patsparse.pattern_conv2d.out(x, *args, out=out)
    assert got is out and torch.equal(out, want)
    out = torch.full(want.shape, float("nan"))  # right size: written, not reallocated
    ptr = out.data_ptr()
    torch.ops.patsparse.pattern_conv2d.out(x, *args, out=out)
    assert torch.equal(out, want) and out.data_ptr() == ptr
    with pytest.raises(RuntimeError, match="dtype"):
        torch.ops.patsparse.pattern_conv2d.out(x, *args, out=torch.empty(0, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="input must be float32 or float64"):  # the functional op's checks
        torch.ops.patsparse.pattern_conv2d.out(x.int(), *args, out=torch.empty(0))
    # The fake kernel: shape propagation of the out variant under FakeTensorMode.
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fx = mode.from_tensor(x)
        fo = torch.empty(want.shape)
        assert torch.ops.patsparse.pattern_conv2d.out(fx, *args, out=fo).shape == want.shape


def _sparse_op_args():
    model = ps.convert(sparse_net(), layers="all").eval()
    conv = next(m for m in model.modules() if isinstance(m, SparseConv2d) and m.stride == (2, 2))
    lin = next(m for m in model.modules() if isinstance(m, SparseLinear))
    return conv, lin


@pytest.mark.parametrize("op", ["sparse_conv1x1", "sparse_linear", "pattern_conv2d_fused"])
def test_new_out_variants_match_functional(op):
    torch.manual_seed(0)
    conv, lin = _sparse_op_args()
    if op == "pattern_conv2d_fused":
        w = random_pattern_weight(8, 6, keep=0.5, group=2, seed=1)
        with torch.no_grad():
            dense = nn.Conv2d(6, 8, 3, padding=1, bias=False)
            dense.weight.copy_(w)
            layer = PatternConv2d.from_dense(dense, pattern_set=ps.PatternSet(PATTERNS8))
        x = torch.randn(2, 6, 9, 7)
        arrays = (layer.patterns, layer.filter_ptr, layer.kernel_channel, layer.kernel_pattern, layer.values)
        args = (x, *arrays, torch.rand(8) + 0.5, torch.randn(8), torch.randn(2, 8, 9, 7), [1, 1], [1, 1], [1, 1],
                0.0, 6.0)
    else:
        m = conv if op == "sparse_conv1x1" else lin
        x = torch.randn(3, m.in_channels, 7, 5) if op == "sparse_conv1x1" else torch.randn(3, m.in_features)
        rows = m.out_channels if op == "sparse_conv1x1" else m.out_features
        out_shape = (3, rows, 4, 3) if op == "sparse_conv1x1" else (3, rows)
        arrays = (m.header, m.index, m.codes, m.values, m.scale)
        args = (x, *arrays, rows, torch.rand(rows) + 0.5, torch.randn(rows), torch.randn(out_shape))
        args += (([2, 2],) if op == "sparse_conv1x1" else ()) + (0.0, float("inf"))
    functional = getattr(torch.ops.patsparse, op)
    want = functional(*args)
    out = torch.empty(0)
    got = functional.out(*args, out=out)
    assert got is out and torch.equal(out, want)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        assert functional.out(mode.from_tensor(x), *args[1:], out=torch.empty(want.shape)).shape == want.shape


def test_torch_export_and_compile_of_converted_model():
    model = ps.convert(conv_net()).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = model(x)
        ep = torch.export.export(model, (x,))
        ops = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
        assert sum("patsparse.pattern_conv2d" in o for o in ops) == 4
        assert_close(ep.module()(x), want)
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        assert_close(compiled(x), want)


def test_missing_executorch_is_named(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "executorch", None)  # import executorch -> ImportError
    model = ps.convert(conv_net()).eval()
    with pytest.raises(ImportError, match=r"pip install -e '\.\[executorch\]'"):
        export.executorch(model, tmp_path / "m.pte", (torch.randn(1, 3, 16, 16),))
    with pytest.raises(ImportError, match="executorch"):
        export.load_executorch(tmp_path / "m.pte")


# ------------------------------------------------------------------ ExecuTorch (optional package)
def _have_executorch():
    try:
        import executorch.exir  # noqa: F401
        import executorch.runtime  # noqa: F401
    except ImportError:
        return False
    return True


# scripts/test.sh sets PATSPARSE_REQUIRE_EXECUTORCH=1 (its setup installs executorch): fail, don't skip.
_REQUIRED = os.environ.get("PATSPARSE_REQUIRE_EXECUTORCH") == "1"
needs_et = pytest.mark.skipif(not _have_executorch() and not _REQUIRED, reason="executorch is not installed "
                              "(pip install 'torch_patsparse[executorch]'; scripts/setup.sh test installs it)")


def pte_operators(path):
    """Operator names the program's non-delegated instructions call, and the delegate count."""
    from executorch.exir._serialize._program import deserialize_pte_binary
    with open(path, "rb") as f:
        program = deserialize_pte_binary(f.read())
    program = getattr(program, "program", program)
    plan = program.execution_plan[0]
    names = [f"{op.name}.{op.overload}" if op.overload else op.name for op in plan.operators]
    calls = [names[ins.instr_args.op_index] for ins in plan.chains[0].instructions
             if type(ins.instr_args).__name__ == "KernelCall"]
    return calls, len(plan.delegates)


@pytest.fixture(scope="module")
def et_programs(tmp_path_factory):
    """A converted conv_net exported for batch 1 and batch 4, and the eager model."""
    d = tmp_path_factory.mktemp("et")
    model = ps.convert(conv_net()).eval()
    paths = {b: export.executorch(model, d / f"b{b}.pte", (torch.randn(b, 3, 16, 16),)) for b in (1, 4)}
    return model, paths


@needs_et
@pytest.mark.parametrize("batch", [1, 4])
def test_round_trip_matches_eager(et_programs, batch):
    model, paths = et_programs
    program = export.load_executorch(paths[batch])
    for seed in range(2):
        x = torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            want = model(x)
        assert_close(program(x), want)


@needs_et
def test_program_calls_patsparse_kernels(et_programs):
    model, paths = et_programs
    calls, delegates = pte_operators(paths[1])
    n_pattern = sum(isinstance(m, PatternConv2d) for m in model.modules())
    assert n_pattern == 4
    # The 2 PatternConv2d followed by BatchNorm run it in the fused op's output stage.
    assert calls.count("patsparse::pattern_conv2d.out") == n_pattern - 2, calls
    assert calls.count("patsparse::pattern_conv2d_fused.out") == 2, calls
    assert not any("batch_norm" in c for c in calls), calls
    assert not any("conv" in c and "patsparse" not in c for c in calls), calls  # no dense decomposition
    assert delegates >= 1  # the dense conv, ReLUs, pooling and Linear run in XNNPACK
    # At run time: the kernels build one plan per layer, then find it in the cache.
    program = export.load_executorch(paths[1])
    hits0, builds0, _ = export.executorch_plan_cache_stats()
    program(torch.randn(1, 3, 16, 16))
    program(torch.randn(1, 3, 16, 16))
    hits1, builds1, _ = export.executorch_plan_cache_stats()
    assert builds1 - builds0 <= n_pattern and (hits1 - hits0) + (builds1 - builds0) == 2 * n_pattern


@needs_et
def test_every_kernel_path_and_thread_count(et_programs):
    from executorch.extension.pybindings import portable_lib
    model, paths = et_programs
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        want = model(x)
    threads = portable_lib._threadpool_get_thread_count()
    try:
        for n in (1, 2):
            # Resize the pool before loading: an XNNPACK runtime keeps the pool it was created with.
            portable_lib._unsafe_reset_threadpool(n)
            program = export.load_executorch(paths[4])
            for isa in ps.ops.supported_isas():
                export.set_executorch_isa(isa)
                assert_close(program(x), want)
    finally:
        export.set_executorch_isa("auto")
        portable_lib._unsafe_reset_threadpool(threads)
    with pytest.raises(ValueError, match="not-an-isa"):
        export.set_executorch_isa("not-an-isa")


@needs_et
def test_quantized_model_round_trip(tmp_path):
    """A quantized PatternConv2d keeps its stored form in the .pte (int16 channel indices, bit-packed
    codes): patsparse::pattern_channels.out / pattern_decode.out widen and decode them at run time (the
    file is smaller than the same model with decoded fp32 values)."""
    model = ps.convert(conv_net(seed=1, width=32), bits=4).eval()
    layers = [m for m in model.modules() if isinstance(m, PatternConv2d)]
    assert layers and all(m.quantized for m in layers)
    x = torch.randn(1, 3, 16, 16)
    path = export.executorch(model, tmp_path / "q.pte", (x,))
    calls, _ = pte_operators(path)
    assert calls.count("patsparse::pattern_decode.out") == len(layers), calls
    assert calls.count("patsparse::pattern_channels.out") == len(layers), calls
    program = export.load_executorch(path)
    with torch.no_grad():
        assert_close(program(x), model(x))
    twin = copy.deepcopy(model)
    for name, m in list(twin.named_modules()):
        if isinstance(m, PatternConv2d):
            twin.set_submodule(name, m.decoded())
    float_pte = os.path.getsize(export.executorch(twin, tmp_path / "f.pte", (x,)))
    decoded_bytes = sum(m.kept_kernels * m.patterns.shape[1] * 4 for m in layers)
    assert os.path.getsize(path) <= float_pte - 0.75 * decoded_bytes, (os.path.getsize(path), float_pte, decoded_bytes)
    with torch.no_grad():  # codes out of range (written past load's validation): a run-time error
        layers[0].codes.fill_(255)
    program = export.load_executorch(export.executorch(model, tmp_path / "bad.pte", (x,)))
    with pytest.raises(RuntimeError):
        program(x)


def _compressed_bytes(model):
    """Bytes of the arrays each PatternConv2d stores (what the .pte holds for it: its stored form)."""
    total = 0
    for m in model.modules():
        if isinstance(m, PatternConv2d):
            stored = (m.codes, m.scale) if m.quantized else (m.values,)
            total += sum(t.numel() * t.element_size()
                         for t in (m.patterns, m.filter_ptr, m.kernel_channel, m.kernel_pattern) + stored)
            total += 0 if m.bias is None else m.bias.numel() * 4
    return total


@needs_et
def test_pte_size_tracks_compressed_size(tmp_path):
    dense = conv_net(width=32, bn=False)  # 3x3 convs keep 0.25 x 4/9 = 11% of their weights
    sparse = ps.convert(dense).eval()
    x = torch.randn(1, 3, 16, 16)
    dense_pte = os.path.getsize(export.executorch(dense, tmp_path / "dense.pte", (x,)))
    sparse_pte = os.path.getsize(export.executorch(sparse, tmp_path / "sparse.pte", (x,)))
    converted = [m for m in dense.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 3]
    dense_conv_bytes = sum(m.weight.numel() * 4 + (0 if m.bias is None else m.bias.numel() * 4) for m in converted)
    kept = sum(m.values.numel() for m in sparse.modules() if isinstance(m, PatternConv2d))
    assert abs(kept / sum(m.weight.numel() for m in converted) - 0.25 * 4 / 9) < 1e-3
    predicted = dense_pte - dense_conv_bytes + _compressed_bytes(sparse)
    # What differs is per-tensor overhead (alignment, metadata; measured ~170 bytes) of the 6 arrays
    # each of the 4 converted layers adds.
    assert abs(sparse_pte - predicted) < 250 * 4 * 6, (sparse_pte, predicted)
    assert dense_pte / sparse_pte >= 4.0, (dense_pte, sparse_pte)


@needs_et
def test_bad_inputs_are_runtime_errors(et_programs):
    _, paths = et_programs
    program = export.load_executorch(paths[1])
    # the runtime's own message is an error code; ours says what did not fit
    with pytest.raises(RuntimeError, match=r"shape \[2, 3, 16, 16\].*planned for \[1, 3, 16, 16\].*max_batch"):
        program(torch.randn(2, 3, 16, 16))  # the program's input shape is static
    with pytest.raises(RuntimeError, match="must be float32.*float64"):
        program(torch.randn(1, 3, 16, 16, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"takes 1 input\(s\), got 2"):
        program(torch.randn(1, 3, 16, 16), torch.randn(1))
    program(torch.randn(1, 3, 16, 16))  # still usable
    small = export.load_executorch(paths[4])  # a smaller batch than a static program's: refused before the runtime
    with pytest.raises(RuntimeError, match=r"shape \[1, 3, 16, 16\].*planned for \[4, 3, 16, 16\]"):
        small(torch.randn(1, 3, 16, 16))


class _TwoHeads(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        y = self.body(x)
        return {"box": y, "cls": [y.relu(), y.sum(1)]}


@needs_et
def test_the_outputs_keep_the_model_structure(tmp_path):
    """A model returning a dict came back from load_executorch as a flat tuple (out["cls"] failed)."""
    model = _TwoHeads(ps.convert(conv_net(seed=3))).eval()
    x = torch.randn(2, 3, 16, 16)
    path = export.executorch(model, tmp_path / "heads.pte", (x,), max_batch=2)
    got = export.load_executorch(path)(x)
    with torch.no_grad():
        want = model(x)
    assert isinstance(got, dict) and list(got) == ["box", "cls"] and isinstance(got["cls"], list)
    assert_close(got["box"], want["box"])
    assert_close(got["cls"][0], want["cls"][0])
    assert_close(got["cls"][1], want["cls"][1])


@needs_et
@pytest.mark.parametrize("corrupt", ["channel_out_of_range", "filter_ptr_not_monotone", "pattern_out_of_range"])
def test_bad_weights_fail_in_the_kernel(tmp_path, corrupt):
    model = ps.convert(conv_net(bn=False)).eval()
    layer = next(m for m in model.modules() if isinstance(m, PatternConv2d))
    with torch.no_grad():  # torch.export runs fake kernels only, so the broken arrays reach the file
        if corrupt == "channel_out_of_range":
            layer.kernel_channel[0] = layer.in_channels + 5
        elif corrupt == "filter_ptr_not_monotone":
            layer.filter_ptr[1] = layer.filter_ptr[-1] + 1
        else:
            layer.kernel_pattern[0] = 200
    x = torch.randn(1, 3, 16, 16)
    program = export.load_executorch(export.executorch(model, tmp_path / "bad.pte", (x,)))
    isa = ps.ops.get_isa()
    try:
        for path in ("scalar", isa):  # the scalar path validates per call, the SIMD paths per plan build
            export.set_executorch_isa(path)
            with pytest.raises(RuntimeError):
                program(x)
    finally:
        export.set_executorch_isa("auto")


@needs_et
def test_export_misuse_is_refused_clearly(tmp_path):
    """Found by a probe: a batch-0 example wrote a program no input fits, a function failed with
    "'function' object has no attribute 'eval'", a torch.compile wrapper did not script, a file that is
    not a .pte said 'error: 0x:23'."""
    model = ps.convert(conv_net(bn=False)).eval()
    with pytest.raises(ValueError, match="batch of 0"):
        export.executorch(model, tmp_path / "b0.pte", (torch.randn(0, 3, 16, 16),))
    with pytest.raises(TypeError, match="nn.Module"):
        export.executorch(lambda z: z, tmp_path / "f.pte", (torch.randn(1, 3, 16, 16),))
    compiled = torch.compile(model)
    path = export.torchscript(compiled, tmp_path / "c.pt")  # the module it wraps
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert_close(torch.jit.load(path)(x), model(x))
    with pytest.raises(RuntimeError, match="not an ExecuTorch program"):
        export.load_executorch(path)


@needs_et
def test_float64_model_is_refused(tmp_path):
    model = ps.convert(conv_net(bn=False)).eval().double()
    with pytest.raises(ValueError, match="float32"):
        export.executorch(model, tmp_path / "d.pte", (torch.randn(1, 3, 16, 16, dtype=torch.float64),))
    with pytest.raises(ValueError, match="float32"):
        export.executorch(model, tmp_path / "d.pte", (torch.randn(1, 3, 16, 16),))


@needs_et
def test_dynamic_batch(tmp_path):
    model = ps.convert(conv_net(seed=2)).eval()
    path = export.executorch(model, tmp_path / "dyn.pte", (torch.randn(1, 3, 16, 16),), max_batch=4)
    program = export.load_executorch(path)
    for batch in (1, 3, 4, 2):
        x = torch.randn(batch, 3, 16, 16)
        with torch.no_grad():
            assert_close(program(x), model(x))
    with pytest.raises(RuntimeError):
        program(torch.randn(5, 3, 16, 16))  # above the bound the memory plan was made for
    with pytest.raises(ValueError, match="max_batch"):
        export.executorch(model, tmp_path / "x.pte", (torch.randn(2, 3, 16, 16),), max_batch=0)


# ------------------------------------------------- sparse 1x1 / Linear and the fused op in ExecuTorch
def _check_every_isa(program, x, want):
    try:
        for isa in ps.ops.supported_isas():
            export.set_executorch_isa(isa)
            assert_close(program(x), want)
    finally:
        export.set_executorch_isa("auto")


@needs_et
@pytest.mark.parametrize("bits", [None, 4])
def test_sparse_layers_round_trip(tmp_path, bits):
    model = ps.convert(sparse_net(), layers="all", bits=bits).eval()
    # (with bits the unpruned 3-channel stem is stored as a SparseConv2d running the dense op: XNNPACK's)
    n_conv = sum(isinstance(m, SparseConv2d) and m._native for m in model.modules())
    n_linear = sum(isinstance(m, SparseLinear) for m in model.modules())
    assert n_conv == 2 and n_linear == 1 and not any(isinstance(m, (nn.Conv2d, nn.Linear)) and
                                                     getattr(m, "in_channels", 3) != 3 for m in model.modules())
    for batch in (1, 4):
        path = export.executorch(model, tmp_path / f"s{batch}.pte", (torch.randn(batch, 3, 16, 16),))
        calls, _ = pte_operators(path)
        assert calls.count("patsparse::sparse_conv1x1.out") == n_conv, calls
        assert calls.count("patsparse::sparse_linear.out") == n_linear, calls
        dense = [c for c in calls if "patsparse" not in c and any(k in c for k in ("conv", "linear", "mm"))]
        assert not dense, calls  # the sparse layers are not decomposed into dense ops
        program = export.load_executorch(path)
        hits0, builds0, _ = export.executorch_sparse_index_cache_stats()
        for seed in range(2):
            x = torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
            with torch.no_grad():
                want = model(x)
            assert_close(program(x), want)
        hits1, builds1, _ = export.executorch_sparse_index_cache_stats()
        assert (hits1 - hits0) + (builds1 - builds0) == 2 * (n_conv + n_linear)  # the kernels ran
        _check_every_isa(program, x, want)


@needs_et
@pytest.mark.parametrize("layers,bits", [("3x3", None), ("all", None), ("all", 4)])
def test_optimized_resnet_round_trip(tmp_path, layers, bits):
    model = ps.optimize_for_inference(ps.convert(resnet_net(), layers=layers, bits=bits)).eval()
    x = torch.randn(2, 3, 16, 16)
    path = export.executorch(model, tmp_path / "r.pte", (x,))
    calls, _ = pte_operators(path)
    fused = [m.conv for m in model.modules() if isinstance(m, ps.optimize.FusedConv)]
    # each PatternConv2d's stored form: int16 channel indices widened (and quantized codes decoded) at run time
    n_pattern = sum(isinstance(m, PatternConv2d) for m in fused)
    decodes = calls.count("patsparse::pattern_decode.out") + calls.count("patsparse::pattern_channels.out")
    assert decodes == n_pattern * (2 if bits else 1), calls
    # (a SparseConv2d running the dense op, the unpruned stem with bits, is delegated to XNNPACK)
    assert n_pattern >= 4 and sum(getattr(m, "_native", True) for m in fused) == len(calls) - decodes, calls
    # BN, residual and ReLU run in the ops' output stage, nothing else outside XNNPACK.
    assert calls.count("patsparse::pattern_conv2d_fused.out") == sum(isinstance(m, PatternConv2d) for m in fused)
    # layers="all": the downsample and bottleneck 1x1 convs (BN; BN + residual + ReLU) and the Linear
    # layers (bias + ReLU) run the sparse ops with their epilogue.
    assert calls.count("patsparse::sparse_conv1x1.out") == (3 if layers == "all" else 0), calls
    assert calls.count("patsparse::sparse_linear.out") == (2 if layers == "all" else 0), calls
    assert not any("batch_norm" in c for c in calls), calls
    program = export.load_executorch(path)
    with torch.no_grad():
        want = model(x)
        assert_close(want, ps.convert(resnet_net(), layers=layers, bits=bits).eval()(x), rtol=1e-4)
    assert_close(program(x), want)
    _check_every_isa(program, x, want)


@needs_et
def test_optimized_vgg_pool_round_trip_and_channels_last_input(tmp_path):
    """A pattern conv into a 2x2 max-pool (VGG: the native NCHW pool, which exports as F.max_pool2d)
    exports; a channels_last input to the loaded program gives the NCHW input's output."""
    torch.manual_seed(0)
    model = sparsify_random(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                                          nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                          nn.Linear(16 * 6 * 6, 10)), keep3x3=0.25, group=4).eval()
    opt = ps.optimize_for_inference(ps.convert(model))
    assert "max_pool2d_nchw" in opt.code
    x = torch.randn(1, 3, 12, 12)
    program = export.load_executorch(export.executorch(opt, tmp_path / "v.pte", (x,)))
    with torch.no_grad():
        want = model(x)
    assert_close(program(x), want, rtol=1e-4)
    assert_close(program(x.contiguous(memory_format=torch.channels_last)), want, rtol=1e-4)
    # a channels_last example: the program still takes the contiguous inputs load_executorch hands it
    program = export.load_executorch(export.executorch(opt, tmp_path / "v_cl.pte",
                                                       (x.contiguous(memory_format=torch.channels_last),)))
    assert_close(program(x), want, rtol=1e-4)


@needs_et
def test_bad_sparse_weights_fail_in_the_kernel(tmp_path):
    model = ps.convert(sparse_net(), layers="all").eval()
    layer = next(m for m in model.modules() if isinstance(m, SparseLinear))
    with torch.no_grad():
        layer.header.fill_(255)  # an impossible header: the index build must refuse it
    x = torch.randn(1, 3, 16, 16)
    program = export.load_executorch(export.executorch(model, tmp_path / "bad.pte", (x,)))
    with pytest.raises(RuntimeError):
        program(x)


@needs_et
def test_optimized_inverted_residual_round_trip(tmp_path):
    """MobileNet-V2's block: the native depthwise kernel of optimize_for_inference has no ExecuTorch
    kernel, so export hands the depthwise conv (and its ReLU6) to XNNPACK."""
    torch.manual_seed(0)

    def bn(c):
        b = nn.BatchNorm2d(c)
        b.running_mean.uniform_(-0.5, 0.5), b.running_var.uniform_(0.5, 2), b.weight.data.uniform_(0.5, 1.5)
        return b

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.expand = nn.Sequential(nn.Conv2d(8, 32, 1, bias=False), bn(32), nn.ReLU6())
            self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1, groups=32, bias=False), bn(32), nn.ReLU6())
            self.project = nn.Sequential(nn.Conv2d(32, 8, 1, bias=False), bn(8))

        def forward(self, x):
            return x + self.project(self.dw(self.expand(x)))

    block = Block().eval()
    with torch.no_grad():
        for conv in (block.expand[0], block.project[0]):
            conv.weight.mul_(torch.rand_like(conv.weight) < 0.25)
    model = ps.optimize_for_inference(ps.convert(block, layers="all"))
    assert any(isinstance(m, ps.fusion.DepthwiseConv3x3) for m in model.modules())
    x = torch.randn(1, 8, 12, 12)
    path = export.executorch(model, tmp_path / "mb.pte", (x,))
    calls, _ = pte_operators(path)
    assert calls.count("patsparse::sparse_conv1x1.out") == 2 and not any("depthwise" in c for c in calls), calls
    with torch.no_grad():
        want = block(x)
        assert_close(model(x), want, rtol=1e-4)
    assert_close(export.load_executorch(path)(x), want, rtol=1e-4)


@needs_et
def test_sparse_conv_without_native_kernel_goes_in_dense(tmp_path):
    """A SparseConv2d the sparse op does not take (a pruned, quantized depthwise 3x3) has no
    ExecuTorch kernel for its decode: export hands it to XNNPACK as its dense conv. An unpruned
    quantized 1x1 conv runs dense in PyTorch but keeps its compressed arrays in the .pte (sparse op)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16),
                          nn.Conv2d(16, 16, 1)).eval()
    with torch.no_grad():
        for conv in (model[0], model[2]):
            conv.weight.mul_(torch.rand_like(conv.weight) < 0.3)
    model = ps.convert(model, layers="all", bits=8).eval()
    assert model[0]._native and not model[2]._native and not model[3]._native
    assert model[3]._op_takes_shape
    x = torch.randn(1, 8, 10, 10)
    with pytest.warns(UserWarning, match="'2' .SparseConv2d, not 1x1.*dense float32 weights"):
        path = export.executorch(model, tmp_path / "dw.pte", (x,))
    calls, _ = pte_operators(path)
    assert calls.count("patsparse::sparse_conv1x1.out") == 2 and not any("decode" in c for c in calls), calls
    with torch.no_grad():
        want = model(x)
    assert_close(export.load_executorch(path)(x), want, rtol=1e-4)


class _FunctionalPool(nn.Module):
    def forward(self, x):
        return torch.nn.functional.max_pool2d(x, 2)  # no stride: exported without it


@needs_et
def test_a_sequential_with_batch_norm_and_a_functional_pool_exports(tmp_path):
    """Found by a deployment probe: XNNPACK failed on a top-level Sequential's dense conv + BatchNorm
    (names starting with a digit) and on F.max_pool2d without a stride; and the loaded program took
    inputs of any shape that fit its memory."""
    torch.manual_seed(0)
    model = sparsify_random(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                          _FunctionalPool(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))).eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(TypeError, match="sequence of tensors"):
        export.executorch(model, tmp_path / "m.pte", x)
    with pytest.raises(ValueError, match="below the example batch"):
        export.executorch(model, tmp_path / "m.pte", (x,), max_batch=1)
    for m in (model, ps.convert(model, layers="all")):
        program = export.load_executorch(export.executorch(m, tmp_path / "m.pte", (x,), max_batch=3))
        with torch.no_grad():
            assert_close(program(x[:1]), m(x[:1]), rtol=1e-4)
        with pytest.raises(RuntimeError, match="planned for"):
            program(torch.randn(1, 3, 4, 4))  # another image size: not the program's


class _AddInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.p = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x, r):
        return torch.relu(self.p(x) + r)


@needs_et
def test_optimized_epilogue_then_batch_norm_and_batch_bounds(tmp_path):
    """Found by an ExecuTorch probe: an optimized sparse 1x1 conv + ReLU followed by BatchNorm failed
    at export ('FusedConv' has no 'out_channels'); batch 0 ran and returned garbage sizes; a kernel's
    error at a batch within max_batch was blamed on the input's shape."""
    import warnings
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 1)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) < 0.3)
    model = nn.Sequential(conv, nn.ReLU(), nn.BatchNorm2d(16)).eval()
    model[2].running_mean.uniform_(-1, 1)
    model[2].running_var.uniform_(0.5, 2)
    opt = ps.optimize_for_inference(ps.convert(model, layers="all"))
    x = torch.randn(2, 8, 5, 5)
    program = export.load_executorch(export.executorch(opt, tmp_path / "bn.pte", (x,), max_batch=2))
    with torch.no_grad():
        assert_close(program(x), model(x))
        assert_close(program(x[:1]), model(x[:1]))
    with pytest.raises(RuntimeError, match="batch 1..N"):
        program(x[:0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused = ps.optimize_for_inference(ps.convert(_AddInput(), project=True))
    y = torch.randn(1, 4, 5, 5)
    program = export.load_executorch(export.executorch(fused, tmp_path / "r.pte", (y, y), max_batch=4))
    with pytest.raises(RuntimeError, match=r"batch \[3, 1\].*a patsparse kernel rejected its arguments: .*residual"):
        program(torch.randn(3, 4, 5, 5), y)  # the residual's batch differs: our fused op rejects it


def test_batch_norm_after_our_layers_is_found_in_the_exported_graph():
    """export.executorch folds a BatchNorm that follows one of our layers into the layer's op: it finds
    the pair by the layer's op in torch.export's graph (there the layer's one-op forward)."""
    model = ps.convert(sparse_net(), layers="all").eval()
    ep = torch.export.export(model, (torch.randn(1, 3, 16, 16),))
    pairs = export._batch_norm_after_our_conv(ep)
    assert [(type(model.get_submodule(c)), b) for c, b in pairs] == [(SparseConv2d, "7")], pairs
