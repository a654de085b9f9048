"""Backward of the native op (grad_input: transposed plan; grad_values: slab dot products) on every
CPU path, forced in turn: gradients pinned to autograd through the dense masked conv (F.conv2d with
PatternConv2d.dense_weight()) over a shape matrix, threads 1 and 2 bit-identical, channels_last input,
gradcheck in float64 on small shapes, opcheck of the backward ops, the transposed-plan cache."""
import pytest
import torch
import torch.nn.functional as F

import torch_patsparse  # noqa: F401
from torch_patsparse import format as fmt
from torch_patsparse import ops
from torch_patsparse.nn import PatternConv2d

from helpers import compressed, random_pattern_weight



def expected_value_grad(dense_grad, module):
    """d loss / d values from the dense weight's gradient: entry e of kernel k sits at
    (filter of k, kernel_channel[k], patterns[kernel_pattern[k], e])."""
    fp = module.filter_ptr.long()
    o = torch.repeat_interleave(torch.arange(module.out_channels), fp[1:] - fp[:-1])
    pos = module.patterns.long()[module.kernel_pattern.long()]
    flat = dense_grad.reshape(module.out_channels, module.in_channels, 9)
    return flat[o.unsqueeze(1), module.kernel_channel.long().unsqueeze(1), pos]


def module_and_dense(cin, cout, stride, padding, dilation, bias, keep, group, seed, dtype=torch.float32):
    weight = random_pattern_weight(cout, cin, keep=keep, group=group, seed=seed, dtype=dtype)
    conv = torch.nn.Conv2d(cin, cout, 3, stride, padding, dilation, bias=bias, dtype=dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
    return PatternConv2d.from_dense(conv), conv


def run_both(module, conv, x, g):
    """Gradients (input, values, bias) of the module and of the dense masked conv for output grad g."""
    module.zero_grad()
    xm = x.detach().clone().requires_grad_()
    module(xm).backward(g)
    dense_w = module.dense_weight().clone().requires_grad_()
    bias = None if conv.bias is None else conv.bias.detach().clone().requires_grad_()
    xd = x.detach().clone().requires_grad_()
    F.conv2d(xd, dense_w, bias, conv.stride, conv.padding, conv.dilation).backward(g)
    got = (xm.grad, module.values.grad, None if module.bias is None else module.bias.grad)
    want = (xd.grad, expected_value_grad(dense_w.grad, module), None if bias is None else bias.grad)
    return got, want


# (N, Cin, H, W, Cout, stride, padding, dilation, bias, keep, group)
SHAPES = [
    (2, 8, 9, 11, 12, 1, 1, 1, True, 0.5, 4),
    (1, 16, 14, 14, 16, 1, 1, 1, False, 0.25, 1),
    (3, 12, 13, 10, 9, 2, 1, 1, True, 0.6, 3),
    (2, 6, 8, 9, 10, 2, 0, 1, False, 0.7, 2),
    (2, 5, 11, 12, 7, 1, 2, 2, True, 0.8, 1),
    (1, 7, 15, 13, 8, 2, 2, 2, False, 0.6, 4),
    (1, 6, 12, 12, 6, 1, 0, 1, True, 0.7, 1),
    (2, 4, 10, 9, 5, 1, 2, 1, False, 0.9, 2),
    (2, 4, 9, 7, 4, (2, 1), (1, 2), (1, 2), True, 0.9, 2),
    (3, 3, 3, 3, 2, 1, 0, 1, True, 1.0, 1),        # 1x1 output
    (1, 3, 1, 1, 4, 1, 1, 1, False, 1.0, 2),       # 1x1 input
    (1, 3, 2, 1, 4, 2, 1, 1, True, 1.0, 1),        # tiny, stride 2
    (2, 4, 7, 7, 6, 1, 3, 1, False, 0.9, 1),       # padding > 2 * dilation (reference grad_input)
    (0, 4, 6, 6, 5, 1, 1, 1, True, 0.5, 1),        # empty batch
    (1, 96, 12, 12, 9, 1, 1, 1, True, 0.3, 4),
    (2, 6, 33, 40, 5, 2, 1, 1, False, 0.5, 1),
    (2, 32, 28, 28, 32, 1, 1, 1, True, 0.25, 4),
    (2, 512, 40, 37, 4, 1, 1, 1, False, 0.1, 2),     # several grad_values row blocks
    (1, 300, 61, 50, 3, 2, 1, 1, True, 0.1, 1),      # same, stride 2
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gradients_match_dense(isa, shape):
    n, cin, h, w, cout, stride, padding, dilation, bias, keep, group = shape
    module, conv = module_and_dense(cin, cout, stride, padding, dilation, bias, keep, group, seed=cin * 7 + cout)
    x = torch.randn(n, cin, h, w)
    g = torch.randn_like(conv(x))
    got, want = run_both(module, conv, x, g)
    for name, a, b in zip(("input", "values", "bias"), got, want):
        if b is None:
            assert a is None, name
            continue
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-4, msg=lambda m: f"{name} grad on {isa}: {m}")


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[2], SHAPES[5], SHAPES[16]], ids=lambda s: "x".join(map(str, s)))
def test_threads_identical(isa, threads, shape):
    n, cin, h, w, cout, stride, padding, dilation, bias, keep, group = shape
    module, conv = module_and_dense(cin, cout, stride, padding, dilation, bias, keep, group, seed=3)
    x = torch.randn(n, cin, h, w)
    g = torch.randn_like(conv(x))
    results = []
    for t in (1, 2):
        torch.set_num_threads(t)
        results.append(run_both(module, conv, x, g)[0])
    for a, b in zip(*results):
        if a is not None:
            assert torch.equal(a, b)


def test_channels_last_input(isa):
    module, conv = module_and_dense(8, 12, 1, 1, 1, True, 0.5, 2, seed=5)
    x = torch.randn(2, 8, 11, 13).contiguous(memory_format=torch.channels_last)
    g = torch.randn(2, 12, 11, 13).contiguous(memory_format=torch.channels_last)
    got, want = run_both(module, conv, x, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-4)


def test_values_changed_in_place_are_used(isa):
    """The cached (transposed) plans hold no values: an in-place update between steps is seen."""
    module, conv = module_and_dense(8, 8, 1, 1, 1, False, 0.6, 1, seed=9)
    x = torch.randn(2, 8, 9, 9)
    g = torch.randn(2, 8, 9, 9)
    run_both(module, conv, x, g)
    with torch.no_grad():
        module.values.mul_(-2.0).add_(0.1)
    got, want = run_both(module, conv, x, g)
    for a, b in zip(got, want):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-4)


def test_transposed_plan_cache_hits():
    if ops.get_isa() == "scalar":
        pytest.skip("the scalar path builds no plans")
    module, conv = module_and_dense(8, 8, 1, 1, 1, False, 0.6, 1, seed=13)
    x = torch.randn(1, 8, 9, 9, requires_grad=True)
    module(x).sum().backward()
    before = torch.ops.patsparse.transposed_plan_cache_stats()
    module(x).sum().backward()
    after = torch.ops.patsparse.transposed_plan_cache_stats()
    assert after[1] == before[1] and after[0] == before[0] + 1  # a hit, no build


def small_op(stride, padding, dilation):
    """A float64 pattern_conv2d of a small layer as a function of (input, values, bias), and those."""
    weight = random_pattern_weight(3, 2, keep=0.8, dtype=torch.float64, seed=5)
    arrays = compressed(weight)
    values = arrays["values"].clone().requires_grad_()
    x = torch.randn(2, 2, 8, 7, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    idx = [arrays[k] for k in fmt.ARRAY_NAMES[:4]]
    return (lambda x, v, b: ops.pattern_conv2d(x, *idx, v, b, stride, padding, dilation)), (x, values, bias)


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 0, 1), (1, 2, 2), (2, 1, 2), (1, 3, 1)])
def test_gradcheck(isa, stride, padding, dilation):
    assert torch.autograd.gradcheck(*small_op(stride, padding, dilation))


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 0, 1), (1, 2, 2)])
def test_double_backward(stride, padding, dilation):
    """A differentiated backward (create_graph=True: gradient penalties) is exact: gradgradcheck, and
    a gradient penalty gives the dense masked conv's gradients (it gave zeros)."""
    assert torch.autograd.gradgradcheck(*small_op(stride, padding, dilation))
    module, conv = module_and_dense(4, 5, stride, padding, dilation, True, 0.6, 1, 3, dtype=torch.float64)
    grads = []
    for m in (module, conv):
        xi = torch.randn(2, 4, 9, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64,
                         requires_grad=True)
        g, = torch.autograd.grad(m(xi).pow(2).sum(), xi, create_graph=True)
        g.pow(2).sum().backward()
        grads.append((xi.grad, m.bias.grad, m.values.grad if m is module else expected_value_grad(m.weight.grad, module)))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_backward_ops(isa, dtype):
    weight = random_pattern_weight(6, 5, keep=0.7, seed=11, dtype=dtype)
    arrays = compressed(weight)
    idx = [arrays[k] for k in fmt.ARRAY_NAMES[:4]]
    x = torch.randn(2, 5, 9, 8, dtype=dtype)
    for stride, padding, dilation in ([1, 1], [1, 1], [1, 1]), ([2, 2], [1, 1], [1, 1]):
        out = ops.pattern_conv2d(x, *idx, arrays["values"], None, stride, padding, dilation)
        g = torch.randn_like(out)
        torch.library.opcheck(torch.ops.patsparse.pattern_conv2d_grad_input.default,
                              (g, list(x.shape), *idx, arrays["values"], stride, padding, dilation))
        torch.library.opcheck(torch.ops.patsparse.pattern_conv2d_grad_values.default,
                              (g, x, *idx, arrays["values"], stride, padding, dilation))


def test_bad_arrays_raise_in_backward(isa):
    weight = random_pattern_weight(4, 3, keep=1.0, seed=2)
    arrays = compressed(weight)
    idx = [arrays[k] for k in fmt.ARRAY_NAMES[:4]]
    idx[2] = idx[2].clone()
    idx[2][0] = 7  # channel out of range
    g = torch.randn(1, 4, 6, 6)
    with pytest.raises(RuntimeError, match="kernel_channel"):
        torch.ops.patsparse.pattern_conv2d_grad_input(g, [1, 3, 6, 6], *idx, arrays["values"], [1, 1], [1, 1], [1, 1])
    with pytest.raises(RuntimeError, match="kernel_channel"):
        torch.ops.patsparse.pattern_conv2d_grad_values(g, torch.randn(1, 3, 6, 6), *idx, arrays["values"],
                                                       [1, 1], [1, 1], [1, 1])


def test_torch_func_as_the_readme_says():
    """vmap of a forward runs the native op (batched); the torch.func gradient transforms give the
    dense layer's gradient (tests/test_func_transforms.py covers the rest)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 6, 3, padding=1)
    with torch.no_grad():
        conv.weight[:, :, 0, :] = 0
        conv.weight[:, :, 2, :2] = 0
    m = PatternConv2d.from_dense(conv)
    x = torch.randn(3, 4, 6, 6)
    torch.testing.assert_close(torch.func.vmap(m)(x), m(x))
    torch.testing.assert_close(torch.func.grad(lambda xi: m(xi).square().sum())(x[0]),
                               torch.func.grad(lambda xi: conv(xi).square().sum())(x[0]))