"""The CUDA kernels (csrc/cuda/) against the dense reference, on a CUDA device.

Skipped as a whole when there is no CUDA device or the extension was built without CUDA kernels.
References are computed in float64 on the CPU (dense F.conv2d), so cuDNN's TF32 never enters them.
"""
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


@pytest.mark.parametrize("shape", [(1, 70, 20, 37, 19, 1, 1, 1, True), (2, 9, 40, 40, 17, 3, 2, 1, False),
                                   (1, 4, 30, 30, 8, 1, 7, 7, True), (1, 3, 200, 200, 2, 1, 60, 60, False)],
                         ids=["many_channels", "stride3", "dil7", "dil60_fallback"])
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
