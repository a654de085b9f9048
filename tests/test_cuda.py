"""The CUDA kernels (csrc/cuda/) against the dense reference, on a CUDA device.

Skipped as a whole when there is no CUDA device or the extension was built without CUDA kernels.
References are computed in float64 on the CPU (dense F.conv2d), so cuDNN's TF32 never enters them.
"""
import contextlib
import copy

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

import torch.nn.functional as F  # noqa: E402

import torch_patsparse as ps  # noqa: E402
from torch_patsparse import format as fmt  # noqa: E402
from torch_patsparse import ops  # noqa: E402


def _has_cuda_kernels() -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key("patsparse::pattern_conv2d", "CUDA")
    except Exception:  # noqa: BLE001
        return False


if not _has_cuda_kernels():
    pytest.skip("torch_patsparse was built without CUDA kernels (PATSPARSE_CUDA=1 to build them)",
                allow_module_level=True)

from helpers import SHAPES, compressed, random_pattern_weight, run_op  # noqa: E402

pytestmark = pytest.mark.cuda

DEV = torch.device("cuda")
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-9, atol=1e-9)}


def to_dev(arrays, dtype):
    out = {k: v.to(DEV) for k, v in arrays.items()}
    out["values"] = out["values"].to(dtype)
    return out



def dense_ref(x, weight, bias, stride, padding, dilation):
    """float64 CPU dense conv: the reference."""
    b = None if bias is None else bias.detach().double().cpu()
    return F.conv2d(x.detach().double().cpu(), weight.double().cpu(), b, stride, padding, dilation)


def make_input(n, cin, h, w, dtype, layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    if layout == "channels_last":
        return torch.randn(n, cin, h, w, generator=g, dtype=dtype).to(DEV).contiguous(memory_format=torch.channels_last)
    if layout == "noncontiguous":
        return torch.randn(n, cin, h, 2 * w, generator=g, dtype=dtype).to(DEV)[..., ::2]
    return torch.randn(n, cin, h, w, generator=g, dtype=dtype).to(DEV)


SHAPE_IDS = ["x".join(map(str, s)) for s in SHAPES]


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("group", [1, 4])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "noncontiguous"])
def test_forward_matches_dense(shape, dtype, group, layout):
    n, cin, h, w, cout, stride, padding, dilation, has_bias = shape
    weight = random_pattern_weight(cout, cin, keep=0.6, group=group, dtype=torch.float64, seed=cin * 31 + cout)
    arrays = to_dev(compressed(weight), dtype)
    x = make_input(n, cin, h, w, dtype, layout, seed=n + h)
    bias = torch.randn(cout, dtype=dtype, device=DEV) if has_bias else None
    out = run_op(x, arrays, bias, stride, padding, dilation)
    ref = dense_ref(x, weight, bias, stride, padding, dilation)
    assert out.device.type == "cuda" and out.dtype == dtype and out.shape == ref.shape
    torch.testing.assert_close(out.double().cpu(), ref, **TOL[dtype])
    # Same memory format as the CPU op gives for the same input.
    cpu_out = run_op(x.cpu(), {k: v.cpu() for k, v in arrays.items()}, None if bias is None else bias.cpu(),
                     stride, padding, dilation)
    assert out.stride() == cpu_out.stride()


@pytest.mark.parametrize("knob", [("PATSPARSE_CUDA_KERNEL", "simple"), ("PATSPARSE_CUDA_FWD_PIX", "1"),
                                  ("PATSPARSE_CUDA_FWD_PIX", "4")], ids=lambda k: f"{k[0]}={k[1]}")
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_forward_kernel_variants(monkeypatch, knob, shape):
    monkeypatch.setenv(*knob)
    n, cin, h, w, cout, stride, padding, dilation, has_bias = shape
    weight = random_pattern_weight(cout, cin, keep=0.6, group=2, dtype=torch.float64, seed=cin + cout)
    arrays = to_dev(compressed(weight), torch.float64)
    x = make_input(n, cin, h, w, torch.float64, "contiguous", seed=1)
    bias = torch.randn(cout, dtype=torch.float64, device=DEV) if has_bias else None
    out = run_op(x, arrays, bias, stride, padding, dilation)
    torch.testing.assert_close(out.cpu(), dense_ref(x, weight, bias, stride, padding, dilation), **TOL[torch.float64])


@pytest.mark.parametrize("shape", [(1, 70, 20, 37, 19, 1, 1, 1, True), (2, 45, 35, 29, 20, 2, 1, 1, True),
                                   (2, 9, 40, 40, 17, 3, 2, 1, False), (1, 4, 30, 30, 8, 1, 7, 7, True),
                                   (1, 3, 200, 200, 2, 1, 60, 60, False)],
                         ids=["many_channels", "many_channels_stride2", "stride3", "dil7", "dil60_fallback"])
@pytest.mark.parametrize("group", [1, 8])
def test_forward_larger_shapes(shape, group):
    """More channels than one shared-memory chunk, several tiles, large dilation (simple fallback)."""
    n, cin, h, w, cout, stride, padding, dilation, has_bias = shape
    weight = random_pattern_weight(cout, cin, keep=0.5, group=group, dtype=torch.float64, seed=7)
    arrays = to_dev(compressed(weight), torch.float32)
    x = make_input(n, cin, h, w, torch.float32, "contiguous", seed=2)
    bias = torch.randn(cout, device=DEV) if has_bias else None
    out = run_op(x, arrays, bias, stride, padding, dilation)
    torch.testing.assert_close(out.double().cpu(), dense_ref(x, weight, bias, stride, padding, dilation),
                               rtol=1e-4, atol=1e-4)


def grad_values_from_dense(weight_grad, arrays):
    """d loss / d values, read off the dense weight gradient at the kept positions."""
    fp, kc, kp, pats = (arrays[k].cpu().long() for k in ("filter_ptr", "kernel_channel", "kernel_pattern", "patterns"))
    cout, cin = weight_grad.shape[:2]
    o_idx = torch.repeat_interleave(torch.arange(cout), fp[1:] - fp[:-1])
    return weight_grad.reshape(cout, cin, 9)[o_idx, kc].gather(1, pats[kp])


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("group", [1, 4])
def test_backward_matches_dense(shape, dtype, group):
    n, cin, h, w, cout, stride, padding, dilation, has_bias = shape
    weight = random_pattern_weight(cout, cin, keep=0.6, group=group, dtype=torch.float64, seed=cin * 7 + cout)
    arrays = to_dev(compressed(weight), dtype)
    values = arrays["values"].clone().requires_grad_(True)
    arrays["values"] = values
    x = make_input(n, cin, h, w, dtype, "contiguous", seed=3).requires_grad_(True)
    bias = torch.randn(cout, dtype=dtype, device=DEV, requires_grad=True) if has_bias else None
    out = run_op(x, arrays, bias, stride, padding, dilation)
    g = torch.randn(out.shape, dtype=dtype, generator=torch.Generator().manual_seed(5)).to(DEV)
    out.backward(g)

    xr = x.detach().double().cpu().requires_grad_(True)
    wr = weight.double().clone().requires_grad_(True)
    br = None if bias is None else bias.detach().double().cpu().requires_grad_(True)
    F.conv2d(xr, wr, br, stride, padding, dilation).backward(g.double().cpu())
    tol = dict(rtol=1e-3, atol=1e-3) if dtype == torch.float32 else TOL[dtype]
    torch.testing.assert_close(x.grad.double().cpu(), xr.grad, **tol)
    torch.testing.assert_close(values.grad.double().cpu(), grad_values_from_dense(wr.grad, arrays), **tol)
    if bias is not None:
        torch.testing.assert_close(bias.grad.double().cpu(), br.grad, **tol)


@pytest.mark.parametrize("shape", [s for s in SHAPES if s[0] > 0 and s[1] * s[2] * s[3] <= 600], ids=str)
@pytest.mark.parametrize("group", [1, 4])
def test_gradcheck_float64(shape, group):
    n, cin, h, w, cout, stride, padding, dilation, _ = shape
    weight = random_pattern_weight(cout, cin, keep=0.7, group=group, dtype=torch.float64, seed=11)
    arrays = to_dev(compressed(weight), torch.float64)
    x = make_input(n, cin, h, w, torch.float64, "contiguous", seed=4).requires_grad_(True)
    values = arrays["values"].clone().requires_grad_(True)
    bias = torch.randn(cout, dtype=torch.float64, device=DEV, requires_grad=True)

    def f(x, values, bias):
        return ops.pattern_conv2d(x, arrays["patterns"], arrays["filter_ptr"], arrays["kernel_channel"],
                                  arrays["kernel_pattern"], values, bias, stride, padding, dilation)

    assert torch.autograd.gradcheck(f, (x, values, bias), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_opcheck():
    weight = random_pattern_weight(8, 6, keep=0.6, seed=2)
    arrays = to_dev(compressed(weight), torch.float32)
    x = torch.randn(2, 6, 9, 9, device=DEV, requires_grad=True)
    values = arrays["values"].clone().requires_grad_(True)
    args = (x, arrays["patterns"], arrays["filter_ptr"], arrays["kernel_channel"], arrays["kernel_pattern"], values,
            torch.randn(8, device=DEV), [1, 1], [1, 1], [1, 1])
    torch.library.opcheck(torch.ops.patsparse.pattern_conv2d.default, args)


def test_invalid_index_is_an_error_not_a_crash():
    weight = random_pattern_weight(4, 3, keep=1.0, seed=3)
    arrays = to_dev(compressed(weight), torch.float32)
    x = torch.randn(1, 3, 8, 8, device=DEV)
    run_op(x, arrays, None, 1, 1, 1)  # builds and caches the plan
    # In-place change of an index array: the cached plan must not be reused; the new index is checked.
    arrays["kernel_channel"][0] = 3
    with pytest.raises(RuntimeError, match="kernel_channel"):
        run_op(x, arrays, None, 1, 1, 1)
    arrays["kernel_pattern"][0] = 200
    arrays["kernel_channel"][0] = 0
    with pytest.raises(RuntimeError, match="kernel_pattern"):
        run_op(x, arrays, None, 1, 1, 1)
    torch.cuda.synchronize()  # nothing was launched with a bad index: the context is still fine


def test_in_place_index_change_rebuilds_plan():
    weight = random_pattern_weight(6, 5, keep=0.6, seed=4, dtype=torch.float64)
    arrays = to_dev(compressed(weight), torch.float64)
    x = make_input(2, 5, 9, 9, torch.float64, "contiguous")
    torch.testing.assert_close(run_op(x, arrays, None, 1, 1, 1).cpu(), dense_ref(x, weight, None, 1, 1, 1))
    # Move every kernel to another (valid) input channel, in place; the result must follow.
    arrays["kernel_channel"].copy_((arrays["kernel_channel"] + 1) % 5)
    moved = fmt.decompress(*(arrays[k].cpu() for k in fmt.ARRAY_NAMES), in_channels=5)
    torch.testing.assert_close(run_op(x, arrays, None, 1, 1, 1).cpu(), dense_ref(x, moved, None, 1, 1, 1))


def test_device_mismatch_is_an_error():
    weight = random_pattern_weight(4, 3, keep=1.0, seed=5)
    arrays = to_dev(compressed(weight), torch.float32)
    arrays["values"] = arrays["values"].cpu()
    with pytest.raises(RuntimeError):
        run_op(torch.randn(1, 3, 8, 8, device=DEV), arrays, None, 1, 1, 1)


def test_forward_does_not_synchronize_after_first_call():
    weight = random_pattern_weight(16, 8, keep=0.5, seed=6)
    arrays = to_dev(compressed(weight), torch.float32)
    x = torch.randn(2, 8, 16, 16, device=DEV)
    first = run_op(x, arrays, None, 1, 1, 1)
    torch.cuda.set_sync_debug_mode("error")
    try:
        again = run_op(x, arrays, None, 1, 1, 1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(first, again)


def test_cuda_graph_capture():
    weight = random_pattern_weight(16, 8, keep=0.5, group=4, seed=7)
    arrays = to_dev(compressed(weight), torch.float32)
    x = torch.randn(2, 8, 16, 16, device=DEV)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run_op(x, arrays, None, 1, 1, 1)  # warm-up: plan built outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run_op(x, arrays, None, 1, 1, 1)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out.double().cpu(), dense_ref(x, weight, None, 1, 1, 1), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- module level (PatternConv2d, convert)

def _pattern_conv2d_cls():
    cls = getattr(getattr(ps, "nn", None), "PatternConv2d", None)
    if cls is None or not hasattr(cls, "from_dense"):
        pytest.skip("ps.nn.PatternConv2d.from_dense not available")
    return cls


@pytest.fixture
def no_tf32():
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def test_module_on_cuda(no_tf32):
    cls = _pattern_conv2d_cls()
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, 3, padding=1, stride=1)
    mod = cls.from_dense(conv).to(DEV)
    assert mod.values.device.type == "cuda" and mod.filter_ptr.device.type == "cuda"
    x = torch.randn(2, 8, 12, 12, device=DEV, requires_grad=True)
    out = mod(x)
    torch.testing.assert_close(out, mod.to_dense()(x), rtol=1e-4, atol=1e-4)
    out.sum().backward()
    assert x.grad is not None and mod.values.grad is not None and mod.values.grad.device.type == "cuda"
    # state_dict round trip onto a CPU module, then back to CUDA
    sd = mod.state_dict()
    assert all(t.device.type == "cuda" for t in sd.values() if isinstance(t, torch.Tensor))
    other = cls.from_dense(torch.nn.Conv2d(8, 16, 3, padding=1))
    other.load_state_dict(sd)
    torch.testing.assert_close(other.to(DEV)(x.detach()), out.detach())
    # back to CPU: the CPU kernel gives the same result
    torch.testing.assert_close(copy.deepcopy(mod).cpu()(x.detach().cpu()), out.detach().cpu(), rtol=1e-4, atol=1e-4)


def test_module_torchscript_on_cuda():
    cls = _pattern_conv2d_cls()
    mod = cls.from_dense(torch.nn.Conv2d(4, 8, 3, padding=1)).to(DEV)
    scripted = torch.jit.script(mod)
    x = torch.randn(1, 4, 10, 10, device=DEV)
    torch.testing.assert_close(scripted(x), mod(x))


def test_convert_model_on_cuda():
    if not hasattr(ps, "convert"):
        pytest.skip("ps.convert not available")
    _pattern_conv2d_cls()
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 3, padding=1, stride=2), torch.nn.ReLU())
    converted = ps.convert(model, project=True).eval()
    x = torch.randn(2, 3, 16, 16)
    cpu_out = converted(x)
    gpu_out = converted.to(DEV)(x.to(DEV))
    torch.testing.assert_close(gpu_out.cpu(), cpu_out, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- the whole path on CUDA, as a user runs it
# Each result on CUDA is compared with the same model run on the CPU (whose native paths are pinned to
# the dense reference by the CPU tests).

def _user_net() -> torch.nn.Module:
    """Every layer kind convert(layers="all") handles: a 3-channel stem, a stride-2 3x3, a 1x1, a
    depthwise 3x3, Linear; BatchNorm after a 3x3 and a 1x1 (optimize_for_inference folds both)."""
    nn = torch.nn
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def _converted(bits):
    model = ps.models.sparsify_random(_user_net())
    with pytest.warns(UserWarning):  # convert lists the lossy (projected / quantized) layers
        return ps.convert(model, layers="all", bits=bits, project=True).eval()


@pytest.mark.parametrize("bits", [None, 4])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("batch", [0, 1, 5])
def test_converted_model_on_cuda_matches_cpu(no_tf32, bits, layout, batch):
    model = _converted(bits)
    x = torch.randn(batch, 3, 16, 16)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    ref = model(x)
    gpu = copy.deepcopy(model).to(DEV)
    out = gpu(x.to(DEV))
    assert out.device.type == "cuda" and out.shape == ref.shape
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-5)
    scripted = torch.jit.script(gpu)
    torch.testing.assert_close(scripted(x.to(DEV)).cpu(), ref, rtol=1e-4, atol=1e-5)


def test_converted_model_trains_on_cuda_like_cpu(no_tf32):
    model = _converted(None).train()
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    gpu = copy.deepcopy(model).to(DEV)
    for m, xx, yy in ((model, x, y), (gpu, x.to(DEV), y.to(DEV))):
        F.cross_entropy(m(xx), yy).backward()
    for (name, p), q in zip(model.named_parameters(), gpu.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(q.grad.cpu(), p.grad, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_converted_model_under_autocast_on_cuda(dtype):
    model = _converted(4).to(DEV)
    x = torch.randn(2, 3, 16, 16, device=DEV)
    ref = model(x)
    with torch.autocast(DEV.type, dtype=dtype):
        out = model(x)
    assert out.dtype == dtype  # as nn.Linear gives under autocast
    torch.testing.assert_close(out.float(), ref, rtol=5e-2, atol=5e-2)


def test_half_model_on_cuda():
    model = _converted(None)
    x = torch.randn(2, 3, 16, 16)
    ref = model(x)
    out = copy.deepcopy(model).to(DEV).half()(x.to(DEV).half())
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float().cpu(), ref, rtol=2e-2, atol=2e-2)


def test_optimize_for_inference_on_cuda(no_tf32):
    model = _converted(None)
    x = torch.randn(3, 3, 16, 16)
    ref = model(x)
    fast = ps.optimize_for_inference(copy.deepcopy(model).to(DEV))
    torch.testing.assert_close(fast(x.to(DEV)).cpu(), ref, rtol=1e-4, atol=1e-5)
    # optimized on the CPU, then moved
    moved = ps.optimize_for_inference(copy.deepcopy(model)).to(DEV)
    torch.testing.assert_close(moved(x.to(DEV)).cpu(), ref, rtol=1e-4, atol=1e-5)


def test_saved_on_cuda_loads_on_cpu(tmp_path):
    model = _converted(4)
    gpu = copy.deepcopy(model).to(DEV)
    torch.save(gpu.state_dict(), tmp_path / "m.pt")
    fresh = ps.load_compressed(_user_net(), torch.load(tmp_path / "m.pt", map_location="cpu", weights_only=True)).eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(fresh(x), model(x))
    back = ps.load_compressed(_user_net().to(DEV), torch.load(tmp_path / "m.pt", weights_only=True)).eval()
    torch.testing.assert_close(back(x.to(DEV)).cpu(), model(x), rtol=1e-4, atol=1e-5)


def _admm_run(device, method, penalty, base):
    from torch_patsparse import constraints as C
    torch.manual_seed(0)
    model = _user_net().to(device)
    convs = [m.weight for m in model.modules()
             if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) and m.in_channels > 3 and m.groups == 1]
    rest = [p for p in model.parameters() if all(p is not c for c in convs)]
    opt = ps.ADMM([{"params": convs, "constraints": [C.Pattern(k=4), C.Connectivity(keep=0.5), C.Quantize(bits=4)]},
                   {"params": rest}], base=base, lr=0.01, method=method, penalty=penalty, update_every=4,
                  phase_steps=12)
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 3, 12, 12, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(16)]
    for i, (x, y) in enumerate(data):
        if i == 12:
            opt.hard_prune()
        opt.zero_grad()
        F.cross_entropy(model(x.to(device)), y.to(device)).backward()
        opt.step()
    return model, convs


@pytest.mark.parametrize("method,penalty,base", [
    ("admm", "proximal", torch.optim.SGD), ("admm", "gradient", torch.optim.SGD),
    ("admm", "gradient", torch.optim.Adam), ("oneshot", "proximal", torch.optim.SGD),
    ("gradual", "proximal", torch.optim.AdamW)], ids=lambda v: getattr(v, "__name__", v))
def test_admm_on_cuda_follows_cpu(no_tf32, method, penalty, base):
    cpu_model, cpu_convs = _admm_run("cpu", method, penalty, base)
    gpu_model, gpu_convs = _admm_run(DEV, method, penalty, base)
    for c, g in zip(cpu_convs, gpu_convs):
        assert g.device.type == "cuda" and torch.isfinite(g).all()
        # the same kept weights (a near-tie may fall the other way on another device's rounding)
        differ = ((c != 0) != (g.cpu() != 0)).float().mean().item()
        assert differ < 0.02, differ
        torch.testing.assert_close(g.cpu(), c, rtol=0.05, atol=0.02)
    # On the constraints exactly: convert stores the CUDA model's pruned layers without loss.
    converted = ps.convert(copy.deepcopy(gpu_model).eval())
    pats = [m for m in converted.modules() if isinstance(m, ps.nn.PatternConv2d)]
    assert len(pats) == 1 and pats[0].conversion_error == 0
    x = torch.randn(2, 3, 12, 12, device=DEV)
    torch.testing.assert_close(converted(x), gpu_model.eval()(x), rtol=1e-4, atol=1e-5)


def _masked_retrain(compressed):
    from torch_patsparse import constraints as C
    torch.manual_seed(0)
    model = _user_net().to(DEV)
    conv = model[3]
    opt = ps.ADMM([{"params": [conv.weight], "constraints": [C.Pattern(k=4), C.Connectivity(keep=0.5)]},
                   {"params": [p for p in model.parameters() if p is not conv.weight]}],
                  base=torch.optim.SGD, lr=0.01, momentum=0.9, method="oneshot")
    opt.hard_prune()
    pruned = conv.weight.detach().clone()
    x, y = torch.randn(8, 3, 12, 12).to(DEV), torch.randint(0, 10, (8,)).to(DEV)
    with ps.compressed_training(model, opt) if compressed else contextlib.nullcontext():
        assert any(isinstance(m, ps.nn.PatternConv2d) for m in model.modules()) == compressed
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    assert type(model[3]) is torch.nn.Conv2d and model[3].weight.device.type == "cuda"
    return pruned, model


def test_compressed_training_on_cuda(no_tf32):
    pruned, model = _masked_retrain(compressed=True)
    _, ref = _masked_retrain(compressed=False)
    w = model[3].weight.detach()
    assert (w[pruned == 0] == 0).all() and not torch.equal(w, pruned)
    for (name, p), q in zip(ref.named_parameters(), model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=name)


def test_torch_compile_on_cuda(no_tf32):
    model = _converted(None)
    x = torch.randn(2, 3, 16, 16)
    ref = model(x)
    compiled = torch.compile(copy.deepcopy(model).to(DEV))
    torch.testing.assert_close(compiled(x.to(DEV)).cpu(), ref, rtol=1e-4, atol=1e-5)


def test_sparse_forward_fused_on_cuda_is_a_clear_error():
    torch.manual_seed(0)
    conv, linear = torch.nn.Conv2d(32, 16, 1), torch.nn.Linear(32, 10)
    with torch.no_grad():
        for m in (conv, linear):
            m.weight.mul_(torch.rand(m.weight.shape) < 0.2)
    conv1x1 = ps.nn.SparseConv2d.from_dense(conv).to(DEV)
    linear = ps.nn.SparseLinear.from_dense(linear).to(DEV)
    assert conv1x1._native and linear._native  # (forward_fused raises another error for a layer that runs dense)
    with pytest.raises(RuntimeError, match="runs on the CPU"):
        conv1x1.forward_fused(torch.randn(1, 32, 8, 8, device=DEV), None, None, None)
    with pytest.raises(RuntimeError, match="runs on the CPU"):
        linear.forward_fused(torch.randn(1, 32, device=DEV), None, None, None)
