"""The native op against the dense masked reference (F.conv2d), plus autograd, opcheck and errors.
Every CPU path (scalar, avx2, avx512, ...) is forced in turn: see also test_isa.py."""
import pytest
import torch

import torch_patsparse as ps
from torch_patsparse import format as fmt
from torch_patsparse import ops

from helpers import PATTERNS8, SHAPES, compressed, random_pattern_weight, reference_conv, run_op, with_duplicate_kernel



@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("group", [1, 4])
def test_forward_matches_dense_reference(isa, shape, group):
    n, cin, h, w, cout, stride, padding, dilation, has_bias = shape
    weight = random_pattern_weight(cout, cin, keep=0.6, group=group, seed=cin * 31 + cout)
    arrays = compressed(weight)
    x = torch.randn(n, cin, h, w)
    bias = torch.randn(cout) if has_bias else None
    out = run_op(x, arrays, bias, stride, padding, dilation)
    ref = reference_conv(x, weight, bias, stride, padding, dilation)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["channels_last", "noncontiguous", "sliced"])
def test_input_layouts(isa, layout):
    weight = random_pattern_weight(8, 6, keep=0.7, seed=3)
    arrays = compressed(weight)
    base = torch.randn(2, 6, 11, 13)
    if layout == "channels_last":
        x = base.contiguous(memory_format=torch.channels_last)
    elif layout == "noncontiguous":
        x = torch.randn(2, 11, 6, 13).transpose(1, 2)
    else:
        x = torch.randn(2, 12, 11, 26)[:, ::2, :, ::2]
    assert not x.is_contiguous()
    out = run_op(x, arrays, None, 1, 1, 1)
    torch.testing.assert_close(out, reference_conv(x, weight, None, 1, 1, 1), rtol=1e-5, atol=1e-5)
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_float64_and_empty_filters():
    weight = random_pattern_weight(5, 4, keep=0.5, dtype=torch.float64, seed=1)
    weight[2] = 0  # a filter with no kept kernel
    arrays = compressed(weight)
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    bias = torch.randn(5, dtype=torch.float64)
    out = run_op(x, arrays, bias, 1, 1, 1)
    torch.testing.assert_close(out, reference_conv(x, weight, bias, 1, 1, 1))
    assert torch.equal(out[:, 2], bias[2].expand_as(out[:, 2]))


def test_no_kept_kernels_at_all():
    weight = torch.zeros(3, 2, 3, 3)
    arrays = compressed(weight)
    assert arrays["values"].shape == (0, 4)
    out = run_op(torch.randn(1, 2, 5, 5), arrays, torch.ones(3), 1, 1, 1)
    assert torch.equal(out, torch.ones(1, 3, 5, 5))


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 0, 1), (1, 2, 2)])
def test_gradcheck(stride, padding, dilation):
    weight = random_pattern_weight(3, 2, keep=0.8, dtype=torch.float64, seed=5)
    arrays = compressed(weight)
    values = arrays["values"].clone().requires_grad_()
    x = torch.randn(2, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    idx = [arrays[k] for k in fmt.ARRAY_NAMES[:4]]
    f = lambda x, v, b: ops.pattern_conv2d(x, *idx, v, b, stride, padding, dilation)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, values, bias))


def test_gradients_match_dense_autograd():
    weight = random_pattern_weight(6, 5, keep=0.6, seed=7)
    arrays = compressed(weight)
    values = arrays["values"].clone().requires_grad_()
    x = torch.randn(3, 5, 10, 9, requires_grad=True)
    out = ops.pattern_conv2d(x, *(arrays[k] for k in fmt.ARRAY_NAMES[:4]), values, None, 2, 1, 1)
    g = torch.randn_like(out)
    out.backward(g)
    dense = weight.clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    torch.nn.functional.conv2d(x2, dense, None, 2, 1, 1).backward(g)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-4)
    expected = dense.grad.reshape(6, 5, 9)
    o = torch.repeat_interleave(torch.arange(6), (arrays["filter_ptr"][1:] - arrays["filter_ptr"][:-1]).long())
    pos = PATTERNS8.long()[arrays["kernel_pattern"].long()]
    torch.testing.assert_close(values.grad, expected[o.unsqueeze(1), arrays["kernel_channel"].long().unsqueeze(1), pos],
                               rtol=1e-4, atol=1e-4)


def test_opcheck():
    weight = random_pattern_weight(4, 3, keep=0.7, seed=11)
    arrays = compressed(weight)
    values = arrays["values"].clone().requires_grad_()
    x = torch.randn(2, 3, 8, 7, requires_grad=True)
    args = (x, *(arrays[k] for k in fmt.ARRAY_NAMES[:4]), values, torch.randn(4, requires_grad=True),
            [1, 1], [1, 1], [1, 1])
    torch.library.opcheck(torch.ops.patsparse.pattern_conv2d.default, args)


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    weight = random_pattern_weight(4, 3, keep=0.7, seed=11)
    arrays = compressed(weight)
    with FakeTensorMode(allow_non_fake_inputs=True):
        out = run_op(torch.empty(2, 3, 9, 8), arrays, None, 2, 1, 1)
    assert out.shape == (2, 4, 5, 4)


# ---------------------------------------------------------------- bad input: clear errors, no crash
def _good():
    return compressed(random_pattern_weight(4, 3, keep=0.9, seed=2))


@pytest.mark.parametrize("corrupt,message", [
    (lambda a: a["kernel_channel"].__setitem__(0, 3), "kernel_channel"),
    (lambda a: a["kernel_channel"].__setitem__(0, -1), "kernel_channel"),
    (lambda a: a["kernel_pattern"].__setitem__(0, 8), "kernel_pattern"),
    (lambda a: a["patterns"].__setitem__((0, 0), 9), "outside 0..8"),
    (lambda a: a["patterns"].__setitem__((0, 1), int(a["patterns"][0, 0])), "repeats"),
    (lambda a: a["filter_ptr"].__setitem__(1, 10_000), "filter_ptr"),
    (lambda a: a["filter_ptr"].__setitem__(0, 1), "filter_ptr"),
    (lambda a: a.__setitem__("filter_ptr", a["filter_ptr"].flip(0).contiguous()), "filter_ptr"),
    (lambda a: a.__setitem__("values", a["values"][:-1]), "values"),
    (lambda a: a.__setitem__("kernel_channel", a["kernel_channel"].long()), "int32"),
    (lambda a: a.__setitem__("values", a["values"].double()), "dtype"),
])
def test_bad_arrays_raise_clear_errors(corrupt, message):
    arrays = _good()
    corrupt(arrays)
    with pytest.raises(RuntimeError, match=message):
        run_op(torch.randn(1, 3, 6, 6), arrays, None, 1, 1, 1)


@pytest.mark.parametrize("kwargs,message", [
    ({"stride": 0}, "stride"), ({"padding": -1}, "padding"), ({"dilation": 0}, "dilation"),
])
def test_bad_conv_arguments(kwargs, message):
    args = dict(stride=1, padding=1, dilation=1)
    args.update(kwargs)
    with pytest.raises(RuntimeError, match=message):
        run_op(torch.randn(1, 3, 6, 6), _good(), None, **args)


def test_bad_input_shapes():
    arrays = _good()
    with pytest.raises(RuntimeError, match="4-D"):
        run_op(torch.randn(3, 6, 6), arrays, None, 1, 1, 1)
    with pytest.raises(RuntimeError, match="too small"):
        run_op(torch.randn(1, 3, 2, 2), arrays, None, 1, 0, 1)
    with pytest.raises(RuntimeError, match="kernel_channel"):  # fewer input channels than the weight uses
        run_op(torch.randn(1, 2, 6, 6), arrays, None, 1, 1, 1)
    with pytest.raises(RuntimeError, match="bias"):
        run_op(torch.randn(1, 3, 6, 6), arrays, torch.randn(5), 1, 1, 1)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        run_op(torch.randn(1, 3, 6, 6).half(), arrays, None, 1, 1, 1)


def test_isa_controls():
    names = ops.supported_isas()
    assert "scalar" in names
    with pytest.raises(RuntimeError, match="unknown ISA"):
        ops.set_isa("sse9")
    previous = ops.set_isa("scalar")
    try:
        assert ops.get_isa() == "scalar"
    finally:
        ops.set_isa(previous)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ops_reject_duplicate_kernel(dtype):
    duplicate = with_duplicate_kernel()
    arrays = [t.to(dtype) if t.is_floating_point() else t for t in (duplicate[n] for n in fmt.ARRAY_NAMES)]
    x = torch.randn(1, 4, 6, 6, dtype=dtype)
    isas = ps.ops.supported_isas() if dtype == torch.float32 else [ps.ops.get_isa()]
    previous = ps.ops.get_isa()
    try:
        for isa in isas:  # the scalar path validates per call, the SIMD paths when the plan is built
            ps.ops.set_isa(isa)
            with pytest.raises(RuntimeError, match="twice"):
                torch.ops.patsparse.pattern_conv2d(x, *arrays, None, [1, 1], [1, 1], [1, 1])
    finally:
        ps.ops.set_isa(previous)
    go = torch.randn(1, 3, 6, 6, dtype=dtype)
    with pytest.raises(RuntimeError, match="twice"):
        torch.ops.patsparse.pattern_conv2d_grad_input(go, [1, 4, 6, 6], *arrays, [1, 1], [1, 1], [1, 1])
    with pytest.raises(RuntimeError, match="twice"):
        torch.ops.patsparse.pattern_conv2d_grad_values(go, x, *arrays, [1, 1], [1, 1], [1, 1])


def test_backward_ops_say_which_grad_output_and_input_size_they_expect():
    """A grad_output of the wrong shape named only the given shape; a negative input size was
    reported as an int64 overflow of padding and dilation."""
    arrays = [fmt.compress(random_pattern_weight(3, 4, seed=1), PATTERNS8)[n] for n in fmt.ARRAY_NAMES]
    x = torch.randn(2, 4, 8, 8)
    go = torch.randn(2, 3, 7, 8)
    expected = r"grad_output has shape \[2, 3, 7, 8\], expected \[2, 3, 8, 8\]"
    with pytest.raises(RuntimeError, match=expected):
        torch.ops.patsparse.pattern_conv2d_grad_input(go, [2, 4, 8, 8], *arrays, [1, 1], [1, 1], [1, 1])
    with pytest.raises(RuntimeError, match=expected):
        torch.ops.patsparse.pattern_conv2d_grad_values(go, x, *arrays, [1, 1], [1, 1], [1, 1])
    with pytest.raises(RuntimeError, match="input sizes must be >= 0"):
        torch.ops.patsparse.pattern_conv2d_grad_input(go, [2, 4, -8, 8], *arrays, [1, 1], [1, 1], [1, 1])


@pytest.mark.parametrize("build", [lambda: ps.nn.SparseLinear(2**31, 2**31), lambda: ps.nn.PatternConv2d(2**31, 2**31),
                                   lambda: ps.nn.SparseConv2d(2**31, 2**31, 3)], ids=["linear", "pattern", "sparse"])
def test_a_layer_too_large_for_memory_is_refused_at_once_as_the_dense_one(build):
    """As nn.Linear / nn.Conv2d: 'Storage size calculation overflowed' (PatternConv2d allocated its
    16 GiB bias and index for minutes; the sparse layers failed in the format's header)."""
    with pytest.raises(RuntimeError, match="Storage size calculation overflowed"):
        build()
