"""The CPU plan cache never serves stale data and never rebuilds needlessly (issue 12, defects 2, 7, 8):
every kind of in-place write to the weight (fused optimizers, .data, numpy, our ADMM ops, index arrays)
is seen by the next forward; modules built / converted / loaded under inference_mode plan once; huge
stride / padding / dilation give a clear error (or the right answer) instead of a crash."""
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torch_patsparse as ps
from torch_patsparse import constraints as C
from torch_patsparse import models, ops



def projected(conv):
    """PatternConv2d of `conv` projected onto 4-of-9 patterns (older from_dense projects by default)."""
    try:
        return ps.nn.PatternConv2d.from_dense(conv, project=True)
    except TypeError:
        return ps.nn.PatternConv2d.from_dense(conv)


def make_layer(cin=8, cout=12, seed=0, **kw):
    torch.manual_seed(seed)
    return projected(nn.Conv2d(cin, cout, 3, padding=1, **kw))


def check_matches_dense(layer, x):
    with torch.no_grad():
        out = layer(x)
        ref = F.conv2d(x, layer.dense_weight(), None if layer.bias is None else layer.bias.detach(),
                       layer.stride, layer.padding, layer.dilation)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def train_steps(layer, opt, x, steps=3):
    for _ in range(steps):
        opt.zero_grad()
        layer(x).square().mean().backward()
        opt.step()


@pytest.mark.parametrize("opt_cls", [torch.optim.Adam, torch.optim.SGD, torch.optim.AdamW])
def test_fused_optimizers_are_seen(isa, opt_cls):
    layer = make_layer()
    x = torch.randn(2, 8, 9, 9)
    check_matches_dense(layer, x)  # plan cached
    before = layer(x).detach()
    opt = opt_cls(layer.parameters(), lr=0.1, fused=True)
    train_steps(layer, opt, x)
    check_matches_dense(layer, x)
    assert not torch.allclose(layer(x), before)


def test_data_mul_is_seen(isa):
    layer = make_layer()
    x = torch.randn(1, 8, 10, 10)
    check_matches_dense(layer, x)
    layer.values.data.mul_(-3.0)
    check_matches_dense(layer, x)
    layer.values.data.copy_(torch.randn_like(layer.values))
    check_matches_dense(layer, x)


def test_numpy_writes_are_seen(isa):
    layer = make_layer()
    x = torch.randn(1, 8, 10, 10)
    check_matches_dense(layer, x)
    arr = layer.values.detach().numpy()
    arr *= 2.5
    arr[0, :] = 7.0
    check_matches_dense(layer, x)


def test_index_writes_are_seen(isa):
    layer = make_layer(cin=8, cout=12)
    x = torch.randn(1, 8, 10, 10)
    check_matches_dense(layer, x)
    with torch.no_grad():
        # Keep the arrays valid: other channels / patterns, no duplicate channel inside a filter.
        kc = layer.kernel_channel.data
        fp = layer.filter_ptr.tolist()
        for o in range(12):
            seg = kc[fp[o]:fp[o + 1]]
            seg.copy_((seg + 3) % 8)
        layer.kernel_pattern.data.copy_((layer.kernel_pattern + 1) % layer.patterns.shape[0])
    check_matches_dense(layer, x)
    layer.kernel_channel.numpy()[:] = (layer.kernel_channel.numpy() + 1) % 8
    check_matches_dense(layer, x)


def test_freed_and_reused_memory(isa):
    x = torch.randn(1, 8, 10, 10)
    for seed in range(6):
        layer = make_layer(seed=seed)
        check_matches_dense(layer, x)
        del layer


@pytest.mark.parametrize("base", [torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW])
def test_admm_on_values_changes_forward(isa, base):
    layer = make_layer(bias=False)
    x = torch.randn(2, 8, 9, 9)
    before = layer(x).detach()
    kw = {"momentum": 0.9} if base is torch.optim.SGD else {}
    opt = ps.ADMM([{"params": [layer.values], "constraints": [C.Unstructured(keep=0.5)]}], base=base, lr=0.05,
                  update_every=2, **kw)
    train_steps(layer, opt, x, steps=4)
    after = layer(x).detach()
    assert not torch.allclose(after, before)
    check_matches_dense(layer, x)


def test_admm_ops_bump_versions():
    w, g, s = torch.randn(16), torch.randn(16), torch.randn(16)
    buf, m, v = torch.zeros(16), torch.zeros(16), torch.zeros(16)
    v0 = w._version
    torch.ops.patsparse.admm_sgd_(w, g, s, buf, 0.1, 0.1, 0.9, 0.0, 0.0, False, False, True)
    assert w._version > v0 and buf._version > 0
    v0, m0, s0 = w._version, m._version, v._version
    torch.ops.patsparse.admm_adam_(w, g, s, m, v, 0.1, 0.1, 0.9, 0.999, 1e-8, 0.0, False, False, 0.1, 1.0)
    assert w._version > v0 and m._version > m0 and v._version > s0
    g0 = g._version
    torch.ops.patsparse.admm_penalty_(g, w, s, 0.1)
    assert g._version > g0


def _stats():
    return list(torch.ops.patsparse.plan_cache_stats())


@pytest.mark.parametrize("how", ["built", "converted", "loaded"])
def test_inference_mode_plans_once(how):
    if ops.get_isa() == "scalar":
        pytest.skip("the scalar path has no plan")
    torch.manual_seed(1)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    with torch.no_grad():  # pattern-pruned already, so convert keeps the function
        conv.weight.copy_(projected(conv).dense_weight())
    x = torch.randn(1, 8, 12, 12)
    with torch.inference_mode():
        if how == "built":
            layer = ps.nn.PatternConv2d.from_dense(conv)
        elif how == "converted":
            layer = ps.convert(nn.Sequential(conv))[0]
            assert isinstance(layer, ps.nn.PatternConv2d)
        else:
            sd = projected(conv).state_dict()
            layer = ps.nn.PatternConv2d(8, 16, padding=1)
            layer.load_state_dict(sd)
        assert layer.values.is_inference()
        layer(x)
        hits0, builds0, _ = _stats()
        for _ in range(100):
            out = layer(x)
        hits1, builds1, size = _stats()
        assert builds1 == builds0, "the plan was rebuilt under inference_mode"
        assert hits1 - hits0 == 100
        assert 1 <= size <= 64
        check_matches_dense(layer, x)
        torch.testing.assert_close(out, layer(x))


def test_same_content_new_tensors_hit():
    if ops.get_isa() == "scalar":
        pytest.skip("the scalar path has no plan")
    layer = make_layer(seed=3)
    x = torch.randn(1, 8, 10, 10)
    layer(x)
    _, builds0, _ = _stats()
    clone = make_layer(seed=3)  # new tensors, same index content
    check_matches_dense(clone, x)
    _, builds1, _ = _stats()
    assert builds1 == builds0


def test_cache_is_bounded():
    if ops.get_isa() == "scalar":
        pytest.skip("the scalar path has no plan")
    x = torch.randn(1, 4, 6, 6)
    for seed in range(80):
        torch.manual_seed(100 + seed)
        ps.nn.PatternConv2d.from_dense(nn.Conv2d(4, 5 + seed, 3))(x)
    assert _stats()[2] <= 64


CRASH = textwrap.dedent("""
    import ast, sys, torch, torch.nn as nn, torch.nn.functional as F
    import torch_patsparse as ps
    kw = ast.literal_eval(sys.argv[1])
    ps.ops.set_isa(sys.argv[2])
    torch.manual_seed(0)
    layer = ps.nn.PatternConv2d.from_dense(nn.Conv2d(1, 1, 3, **kw))
    x = torch.randn(1, 1, 5, 5)
    try:
        out = layer(x)
    except RuntimeError as e:
        print("RuntimeError:", e)
        try:  # ours (checked arithmetic) or nn.Conv2d's own error for this geometry
            F.conv2d(x, layer.dense_weight(), layer.bias.detach(), layer.stride, layer.padding, layer.dilation)
            dense = ""
        except RuntimeError as d:
            dense = str(d)
        sys.exit(0 if "patsparse" in str(e) or str(e) == dense else 3)
    ref = F.conv2d(x, layer.dense_weight(), layer.bias.detach(), layer.stride, layer.padding, layer.dilation)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    print("matches F.conv2d", tuple(out.shape))
""")


# A clear RuntimeError (ours, or nn.Conv2d's own), or (where nn.Conv2d has a well-defined answer) the right
# result; never a crash.
@pytest.mark.parametrize("kw", [dict(stride=2**32), dict(stride=(1, 2**32)), dict(stride=2**62),
                                dict(padding=2**62 - 1), dict(dilation=2**62 - 1),
                                dict(padding=2**62 - 1, dilation=2**62 - 1), dict(padding=2**63 - 1),
                                dict(dilation=2**63 - 1)], ids=str)
def test_huge_sizes_never_crash(isa, kw):
    got = subprocess.run([sys.executable, "-c", CRASH, repr(kw), isa], capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, (got.returncode, got.stdout, got.stderr[-2000:])


def test_huge_sizes_op_direct():
    layer = make_layer(cin=1, cout=1)
    arrays = [layer.patterns, layer.filter_ptr, layer.kernel_channel, layer.kernel_pattern, layer.values]
    x = torch.randn(1, 1, 5, 5)
    for stride, padding, dilation in [((1, 1), (2**62 - 1, 0), (1, 1)),
                                      ((1, 1), (2**61, 2**61), (1, 1)), ((1, 1), (0, 0), (2**63 - 1, 1))]:
        with pytest.raises(RuntimeError, match="patsparse"):
            torch.ops.patsparse.pattern_conv2d(x, *arrays, None, stride, padding, dilation)


@pytest.mark.parametrize("stride,padding,dilation", [(2048, 0, 1), ((1, 2048), 1, 1), (3000, 1500, 1),
                                                     (1, 1000, 600), (700, 700, 2)])
def test_large_geometry_matches_dense(isa, stride, padding, dilation):
    torch.manual_seed(5)
    conv = nn.Conv2d(3, 4, 3, stride=stride, padding=padding, dilation=dilation)
    layer = ps.nn.PatternConv2d.from_dense(conv)
    x = torch.randn(1, 3, 9, 11)
    check_matches_dense(layer, x)
    if padding == 0:
        return
    # The fake kernel agrees on the output shape.
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        fx = mode.from_tensor(x)
        fa = [mode.from_tensor(t) for t in (layer.patterns, layer.filter_ptr, layer.kernel_channel,
                                            layer.kernel_pattern, layer.values)]
        shape = torch.ops.patsparse.pattern_conv2d(fx, *fa, None, layer.stride, layer.padding, layer.dilation).shape
    assert tuple(shape) == tuple(layer(x).shape)


def test_fake_out_size_checks():
    assert ops._out_size(8, 1, 1, 1) == 8
    assert ops._out_size(1, 0, 1, 3) == 0
    with pytest.raises(RuntimeError, match="patsparse"):
        ops._out_size(5, 2**62 - 1, 1, 1)
    assert ops._out_size(5, 0, 2**62 - 1, 1) == 0
    with pytest.raises(RuntimeError, match="patsparse"):
        ops._out_size(5, 0, 2**63 - 1, 1)


MEMORY = textwrap.dedent("""
    import resource, sys, torch, torch.nn as nn, torch.nn.functional as F
    import torch_patsparse as ps
    ps.ops.set_isa(sys.argv[1])
    torch.manual_seed(0)
    layer = ps.nn.PatternConv2d.from_dense(nn.Conv2d(3, 4, 3, stride=2048))
    x = torch.randn(1, 3, 9, 11)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        out = layer(x)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    ref = F.conv2d(x, layer.dense_weight(), layer.bias.detach(), layer.stride)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    print(grown)
""")


def test_huge_stride_memory_is_bounded(isa):
    got = subprocess.run([sys.executable, "-c", MEMORY, isa], capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr[-2000:]
    grown_kb = int(got.stdout.split()[-1])
    assert grown_kb < 100 * 1024, f"stride 2048 on a 9x11 input took {grown_kb / 1024:.0f} MB more memory"


def test_quantized_layer_decode_is_content_keyed():
    """A quantized PatternConv2d holds only its stored form (packed codes, int16 channels); the decode
    cache behind its forward is found by content: writes into the stored arrays are seen by the next
    forward, equal content in new tensors decodes once, and a write into the shared decoded output
    (read-only by contract) makes the next call rebuild instead of serving it."""
    layer = ps.nn.PatternConv2d.from_dense(make_layer(16, 8).to_dense(), bits=4)
    x = torch.randn(2, 16, 6, 6)
    check_matches_dense(layer, x)
    before = ops.decode_cache_stats()
    twin = ps.nn.PatternConv2d(16, 8, 3, padding=1, bits=4)
    twin.load_state_dict(layer.state_dict())
    assert torch.equal(twin(x), layer(x))
    after = ops.decode_cache_stats()
    assert after[1] == before[1] and after[0] > before[0]  # no new decode: same content
    with pytest.deprecated_call():  # the session-9 name
        assert ops.pattern_decode_cache_stats() == after
    with torch.no_grad():
        codes = layer.int_codes()
        codes[0] = -codes[0]
        codes[1] = 7
        layer.codes.copy_(ps.nn.pattern_conv.pack_codes(codes, 4))  # in place: same tensor, new content
    check_matches_dense(layer, x)
    assert torch.equal(layer.int_codes(), codes)
    values = torch.ops.patsparse.pattern_decode(layer.codes, layer.scale, layer.kept_kernels, 4, 4, "uniform")
    out = layer(x)
    values.add_(1.0)  # a caller breaking the contract
    assert torch.equal(layer(x), out)
    check_matches_dense(layer, x)


def test_scratch_of_one_wide_input_is_given_back():
    """The per-thread slab scratch grew to fit one very wide input (62 MiB here) and kept it for the
    life of the process; a later call that needs much less now gives it back (fresh process, RSS)."""
    code = """
import ctypes, gc, torch, torch.nn as nn, warnings
warnings.filterwarnings("ignore")
import torch_patsparse as ps
from torch_patsparse import models
torch.set_num_threads(1)
libc = ctypes.CDLL("libc.so.6")
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
conv = nn.Conv2d(256, 8, 3)
models.sparsify_random(nn.Sequential(conv))
m = ps.convert(conv)
small = torch.randn(1, 256, 3, 64)
with torch.no_grad():
    m(small); gc.collect(); libc.malloc_trim(0); r0 = rss()
    m(torch.randn(1, 256, 3, 16000)); m(small); gc.collect(); libc.malloc_trim(0)
print(rss() - r0)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.split()[-1]) < 20, out.stdout


def test_pattern_channels_on_the_cpu_is_a_copy():
    """patsparse::pattern_channels (what an exported CPU graph widens the stored int16 channels with)
    returned the decode cache's own tensor: compiled code reusing it as scratch (a write without a
    version bump, as through .numpy() here) changed what every later call and exported graph read."""
    torch.manual_seed(0)
    layer = ps.convert(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)), project=True)[0].eval()
    x = torch.randn(2, 3, 8, 8)
    exported = torch.export.export(layer, (x,)).module()
    first = torch.ops.patsparse.pattern_channels(layer.kernel_channel)
    first.numpy()[:] = (first.numpy() + 1) % 3
    assert torch.equal(torch.ops.patsparse.pattern_channels(layer.kernel_channel), layer.kernel_channel.int())
    with torch.no_grad():
        torch.testing.assert_close(exported(x), layer(x), rtol=0, atol=0)


def test_clear_caches_gives_the_memory_back_and_changes_no_result():
    """A server that swaps model versions can empty the native caches (they kept up to their bounds
    for deleted models); the next call rebuilds what it needs, with the same result."""
    import warnings
    import torch_patsparse as ps
    from torch_patsparse import models
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 1),
                                torch.nn.Conv2d(8, 8, 3, padding=1, stride=2))
    models.sparsify_random(model, keep3x3=None, group=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = ps.convert(model, layers="all", bits=4)
    x = torch.randn(2, 8, 10, 10, requires_grad=True)
    before = converted(x)
    before.sum().backward()
    assert ops.plan_cache_stats()[2] > 0 and ops.decode_cache_stats()[2] > 0 and ops.sparse_index_cache_stats()[2] > 0
    ops.clear_caches()
    assert ops.plan_cache_stats()[2] == ops.transposed_plan_cache_stats()[2] == 0
    assert ops.decode_cache_stats()[2] == ops.decode_cache_stats()[3] == 0 and ops.sparse_index_cache_stats()[2] == 0
    assert torch.equal(converted(x), before)
