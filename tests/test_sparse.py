"""nn/sparse.py: SparseLinear / SparseConv2d behave like nn.Linear / nn.Conv2d on inputs (wrong
shapes, unbatched, half precision) and compress_module takes what it can store losslessly (storage,
state_dict and load validation: test_sparse_storage.py)."""
import copy
import warnings

import pytest
import torch
from torch import nn

import torch_patsparse as ps
from torch_patsparse.nn import SparseConv2d, SparseLinear, compress_module

from helpers import HALF_TOL, conv_with, linear_with, pruned_on_grid


def test_sparse_wrong_input_raises_like_dense():
    lin = SparseLinear.from_dense(nn.Linear(12, 5))
    with pytest.raises(RuntimeError):
        lin(torch.randn(2, 13))
    conv = SparseConv2d.from_dense(nn.Conv2d(6, 4, 5))
    with pytest.raises(RuntimeError, match="to have 6 channels, but got 7"):
        conv(torch.randn(1, 7, 9, 9))


@pytest.mark.parametrize("dense", [lambda: nn.Conv2d(2, 3, 5, padding=2), lambda: nn.Conv2d(2, 3, 1),
                                   lambda: nn.Linear(4, 3)], ids=["conv5x5", "conv1x1", "linear"])
def test_sparse_non_float_and_non_tensor_input_raise_like_dense(dense):
    """Integer / complex input (the dense path cast the weight to it: all-zero integer weights) and
    non-tensor input raise the dense layer's exception type."""
    torch.manual_seed(0)
    dense = dense()
    with torch.no_grad():
        dense.weight.mul_((torch.rand_like(dense.weight) < 0.3).float())
    sparse = ps.nn.compress_module(dense)
    shape = (2, 4) if isinstance(dense, nn.Linear) else (1, 2, 6, 6)
    for x in (torch.randint(0, 5, shape), torch.zeros(shape, dtype=torch.complex64), None, [1.0, 2.0]):
        kinds = []
        for m in (dense, sparse):
            with pytest.raises(Exception) as err:
                m(x)
            kinds.append(err.type)
        assert kinds[0] is kinds[1], (x, kinds)


def test_float64_layer_reports_its_rounding_to_fp32_values():
    torch.manual_seed(0)
    for dense in (nn.Linear(8, 6, dtype=torch.float64), nn.Conv2d(4, 6, 1, dtype=torch.float64)):
        with torch.no_grad():
            dense.weight.mul_((torch.rand_like(dense.weight) < 0.3).double())
        with pytest.warns(UserWarning, match="float64 weight is stored as float32 values"):
            sparse = (SparseLinear if isinstance(dense, nn.Linear) else SparseConv2d).from_dense(dense)
        assert 0 < sparse.conversion_error < 1e-7  # fp32 values: the fp64 weight rounded, and said so
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            exact = (SparseLinear if isinstance(dense, nn.Linear) else SparseConv2d).from_dense(dense.float())
            assert exact.conversion_error == 0.0
            (SparseLinear if isinstance(dense, nn.Linear) else SparseConv2d).from_dense(dense, bits=4)  # asked for


def test_sparse_unbatched():
    conv = nn.Conv2d(6, 4, 5, padding=2)
    with torch.no_grad():
        conv.weight.mul_(torch.rand(conv.weight.shape) < 0.2)
    sc = SparseConv2d.from_dense(conv)
    x = torch.randn(6, 9, 9)
    assert torch.equal(sc(x), conv(x))
    lin = nn.Linear(12, 5)
    sl = SparseLinear.from_dense(lin)
    v = torch.randn(12)
    torch.testing.assert_close(sl(v), lin(v), rtol=1e-5, atol=1e-5)  # native op: another sum order
    assert sl(v).shape == lin(v).shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sparse_half(dtype):
    conv = nn.Conv2d(6, 4, 5, padding=2)
    with torch.no_grad():
        conv.weight.mul_(torch.rand(conv.weight.shape) < 0.3)
    sc = SparseConv2d.from_dense(conv, bits=4)
    x = torch.randn(1, 6, 9, 9)
    want = sc(x)
    with pytest.raises(RuntimeError) as dense_error:  # another input dtype: nn.Conv2d's error
        sc.to_dense()(x.to(dtype))
    with pytest.raises(RuntimeError) as ours:
        sc(x.to(dtype))
    assert str(ours.value) == str(dense_error.value)
    half = copy.deepcopy(sc).to(dtype)
    torch.testing.assert_close(half(x.to(dtype)).float(), want, **HALF_TOL[dtype])
    sl = SparseLinear.from_dense(nn.Linear(12, 5)).to(dtype)
    assert sl(torch.randn(3, 12, dtype=dtype)).dtype == dtype


def test_compress_module_takes_an_unstructured_3x3_conv_losslessly():
    conv = nn.Conv2d(16, 16, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(ps.project.unstructured(conv.weight, 0.05))
    sc = compress_module(conv)
    assert isinstance(sc, SparseConv2d) and sc.conversion_error == 0.0
    x = torch.randn(1, 16, 8, 8)
    assert torch.equal(sc(x), conv(x))


def test_compress_module_assorted():
    lin = linear_with(pruned_on_grid((120, 400), 0.01, levels=1))
    assert isinstance(compress_module(lin), SparseLinear)
    c5 = conv_with(pruned_on_grid((16, 6, 5, 5), 0.1, levels=3))
    assert isinstance(compress_module(c5), SparseConv2d)
    c1 = conv_with(pruned_on_grid((16, 8, 1, 1), 0.1))
    assert isinstance(compress_module(c1), SparseConv2d)
    dw = conv_with(pruned_on_grid((8, 1, 3, 3), 0.3, levels=1), padding=1, groups=8)
    assert isinstance(compress_module(dw), SparseConv2d)
    c3 = conv_with(pruned_on_grid((8, 4, 3, 3), 0.1), padding=1)  # unstructured 3x3: taken when asked (convert decides)
    assert isinstance(compress_module(c3), SparseConv2d)
    x3 = torch.randn(2, 4, 7, 7)
    assert torch.equal(compress_module(c3)(x3), c3(x3))
    assert compress_module(nn.ReLU()) is None
    assert compress_module(nn.BatchNorm2d(4)) is None
    assert compress_module(SparseLinear.from_dense(lin)) is None
    refl = nn.Conv2d(4, 4, 5, padding=2, padding_mode="reflect")
    assert compress_module(refl) is None
    assert compress_module(nn.Linear(10, 10)) is None  # dense fp32: compressing would not save space
    assert isinstance(compress_module(nn.Linear(10, 10), only_if_smaller=False), SparseLinear)
    assert compress_module(nn.Linear(10, 10).double()) is None
    # outputs unchanged
    x = torch.randn(3, 6, 9, 9)
    torch.testing.assert_close(compress_module(c5)(x), c5(x), rtol=0, atol=0)


@pytest.mark.parametrize("make", [lambda **kw: SparseLinear(6, 4, **kw), lambda **kw: SparseConv2d(6, 4, 1, **kw)])
def test_factory_arguments_as_the_dense_layers(make):
    layer = make(device="cpu", dtype=torch.float64)
    assert layer.bias.dtype == torch.float64 and layer.bias.device.type == "cpu"
    x = torch.randn(2, 6) if isinstance(layer, SparseLinear) else torch.randn(2, 6, 3, 3)
    assert layer(x.double()).dtype == torch.float64
    assert make(dtype=torch.float32)(x).dtype == torch.float32
    with pytest.raises(TypeError, match="floating-point"):
        make(dtype=torch.int64)


def test_unbatched_linear_backward_with_bias():
    dense = linear_with(pruned_on_grid((4, 6), keep=0.5))
    sparse = SparseLinear.from_dense(dense)
    x = torch.randn(6, requires_grad=True)
    sparse(x).sum().backward()
    gx = x.grad.clone()
    x.grad = None
    dense(x).sum().backward()
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(sparse.bias.grad, dense.bias.grad)


def test_autocast_output_dtype_as_the_dense_layers():
    dense_lin = linear_with(pruned_on_grid((4, 6), keep=0.5))
    conv = conv_with(pruned_on_grid((4, 6, 1, 1), keep=0.5))
    for dense, sparse, x in ((dense_lin, SparseLinear.from_dense(dense_lin), torch.randn(3, 6, generator=torch.Generator().manual_seed(0)).requires_grad_()),
                             (conv, SparseConv2d.from_dense(conv), torch.randn(2, 6, 5, 5, generator=torch.Generator().manual_seed(1)).requires_grad_())):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want, got = dense(x), sparse(x)
        assert got.dtype == want.dtype == torch.bfloat16
        with torch.no_grad():  # ours rounds the fp32 result once (see test_pattern_conv's autocast test)
            torch.testing.assert_close(got, dense(x).to(torch.bfloat16))
        got.float().sum().backward()
        assert x.grad is not None and x.grad.dtype == torch.float32


def test_meta_inputs_give_the_dense_layers_shapes():
    """Shape / FLOP tools run models on the meta device: our layers answer as nn.Conv2d / nn.Linear."""
    torch.manual_seed(0)
    conv3, conv1, lin = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(8, 4, 1), nn.Linear(8, 4)
    with torch.no_grad():
        conv3.weight[:, :, 0, :] = 0
        conv3.weight[:, :, 2, :2] = 0
        conv1.weight[conv1.weight.abs() < 0.2] = 0
        lin.weight[lin.weight.abs() < 0.2] = 0
    cases = [(conv3, ps.nn.PatternConv2d.from_dense(conv3), (1, 2, 5, 5)),
             (conv1, SparseConv2d.from_dense(conv1), (2, 8, 5, 5)), (lin, SparseLinear.from_dense(lin), (2, 8))]
    for dense, ours, shape in cases:
        x = torch.empty(shape, device="meta")
        for ref, module in ((dense, ours), (copy.deepcopy(dense).to("meta"), copy.deepcopy(ours).to("meta"))):
            try:
                want = ref(x)
            except RuntimeError:  # nn.Linear's CPU weight with a meta input
                with pytest.raises(RuntimeError):
                    module(x)
                continue
            got = module(x)
            assert got.device.type == "meta" and got.shape == want.shape, type(ours).__name__


def test_subnormal_weights_are_stored_exactly():
    lin = nn.Linear(8, 4)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[0, 5], lin.weight[2, 1] = 1e-42, -3e-42
    s = SparseLinear.from_dense(lin)
    assert torch.equal(s.to_dense().weight, lin.weight)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_to_dense_is_in_the_layers_dtype(dtype):
    """After .to(dtype), to_dense() is a dense layer of that dtype (it was float32: a dtype error at
    its first call with the input the layer itself took)."""
    lin, conv = nn.Linear(8, 4), nn.Conv2d(8, 4, 1)
    with torch.no_grad():
        lin.weight.mul_(torch.rand(4, 8) < 0.3)
        conv.weight.mul_(torch.rand(4, 8, 1, 1) < 0.3)
    for ours, x in ((SparseLinear.from_dense(lin).to(dtype), torch.randn(2, 8, dtype=dtype)),
                    (SparseConv2d.from_dense(conv, bits=4).to(dtype), torch.randn(1, 8, 3, 3, dtype=dtype))):
        dense = ours.to_dense()
        assert dense.weight.dtype == dtype and dense.bias.dtype == dtype
        tol = {} if dtype == torch.float64 else dict(rtol=0.05, atol=0.02)  # ours accumulates in fp32
        torch.testing.assert_close(dense(x), ours(x), **tol)


@pytest.mark.parametrize("make", ["linear", "conv1x1", "conv1x1_stride2"])
def test_batched_gradients_as_the_dense_layers(make):
    """autograd.grad(is_grads_batched=True) and jacobian(vectorize=True) run the backward under vmap:
    the native 1x1 / Linear backward must have batching rules (an einsum had none)."""
    if make == "linear":
        dense, x = linear_with(pruned_on_grid((8, 32), keep=0.3)), torch.randn(2, 32)
    else:
        stride = 2 if make.endswith("stride2") else 1
        dense, x = conv_with(pruned_on_grid((8, 16, 1, 1), keep=0.3), stride=stride), torch.randn(2, 16, 5, 5)
    sparse = ps.convert(nn.Sequential(dense), layers="all")[0]
    assert isinstance(sparse, SparseLinear if make == "linear" else SparseConv2d)
    grads = torch.randn(3, *dense(x).shape)
    got, want = [], []
    for mod, out in ((sparse, got), (dense, want)):
        xx = x.clone().requires_grad_()
        out.append(torch.autograd.grad(mod(xx), xx, grads, is_grads_batched=True)[0])
        out.append(torch.autograd.functional.jacobian(mod, x, vectorize=True))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("batch", [0, 1, 3])
def test_conv1x1_input_gradient_at_batch_0_1_n(stride, batch):
    dense = conv_with(pruned_on_grid((8, 16, 1, 1), keep=0.3), stride=stride)
    sparse = ps.convert(nn.Sequential(dense), layers="all")[0]
    assert isinstance(sparse, SparseConv2d)
    grads = []
    for mod in (sparse, dense):
        x = torch.randn(batch, 16, 5, 5, generator=torch.Generator().manual_seed(batch)).requires_grad_()
        mod(x).square().sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", ["linear", "conv1x1"])
def test_short_values_after_a_warm_call_are_an_error(make):
    """The sparse ops' index cache checked the value count only when it built an index: after one
    valid call, the same index arrays with fewer values read past the array (garbage or a crash)."""
    if make == "linear":
        layer, x = SparseLinear.from_dense(linear_with(pruned_on_grid((10, 64), keep=0.2))), torch.randn(3, 64)
    else:
        layer = SparseConv2d.from_dense(conv_with(pruned_on_grid((10, 16, 1, 1), keep=0.3)))
        x = torch.randn(2, 16, 4, 4)
    assert layer._native
    layer(x)  # warms the cache
    full = layer.values
    for n in (0, 3, full.numel() - 1):
        layer.values = full[:n].clone()
        with pytest.raises(RuntimeError, match="values"):
            layer(x)


def _pruned(dense):
    with torch.no_grad():
        dense.weight.mul_((torch.rand_like(dense.weight) < 0.3).to(dense.weight.dtype))
    return dense


@pytest.mark.parametrize("make,shape", [(lambda: nn.Linear(8, 4), (2, 8)), (lambda: nn.Conv2d(8, 6, 1), (2, 8, 3, 3))],
                         ids=["linear", "conv1x1"])
def test_optimized_sparse_layers_refuse_other_dtypes_like_dense(make, shape):
    """The fused native path (what optimize_for_inference runs) computed fp64 / fp16 / bf16 input on
    an fp32 layer; the dense layer and the unoptimized converted one raise."""
    torch.manual_seed(0)
    model = nn.Sequential(_pruned(make()), nn.ReLU()).eval()
    fast = ps.optimize_for_inference(ps.convert(model, layers="all"))
    layer = ps.convert(model, layers="all")[0]
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        x = torch.randn(shape, dtype=dtype)
        for m in (model, fast, lambda x: layer.forward_fused(x, None, layer.bias, None)):
            with pytest.raises(RuntimeError):
                m(x)
    x = torch.randn(shape)
    torch.testing.assert_close(fast(x), model(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what autocast casts is taken, as by the dense model
        assert fast(x).dtype == model(x).dtype == torch.bfloat16


@pytest.mark.parametrize("make", [lambda: nn.Linear(8, 4), lambda: nn.Conv2d(8, 6, 1), lambda: nn.Conv2d(4, 6, 3)],
                         ids=["linear", "conv1x1", "conv3x3"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_weight_and_from_dense_keep_the_layers_dtype(make, dtype):
    """``weight`` was fp32 after ``.half()`` / ``.double()`` (``x.to(layer.weight.dtype)`` then
    failed), and from_dense of an fp64 / fp16 layer returned an fp32 module its inputs failed on."""
    torch.manual_seed(0)
    dense = _pruned(make())
    cls = SparseLinear if isinstance(dense, nn.Linear) else SparseConv2d
    x = torch.randn(2, 8) if isinstance(dense, nn.Linear) else torch.randn(2, dense.in_channels, 5, 5)
    assert cls.from_dense(dense).to(dtype).weight.dtype == dtype
    src = dense.to(dtype)
    sparse = cls.from_dense(src)
    assert sparse.weight.dtype == sparse.bias.dtype == dtype
    out = sparse(x.to(sparse.weight.dtype))
    assert out.dtype == dtype
    if dtype == torch.float64:  # the values are fp32 (rounded, said by conversion_error); the bias exact
        torch.testing.assert_close(sparse.bias, src.bias, rtol=0, atol=0)
        torch.testing.assert_close(out, src(x.double()), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("make,shape", [(lambda: nn.Linear(8, 4), (2, 8)), (lambda: nn.Conv2d(8, 6, 1), (2, 8, 3, 3)),
                                        (lambda: nn.Conv2d(8, 6, 3), (2, 8, 5, 5))], ids=["linear", "conv1x1", "conv3x3"])
def test_input_by_keyword_as_the_dense_layers(make, shape):
    dense = _pruned(make())
    x = torch.randn(shape)
    torch.testing.assert_close(compress_module(dense, only_if_smaller=False)(input=x), dense(input=x))


def test_conv1x1_with_invalid_dilation_raises_like_dense():
    """The native 1x1 op ignores dilation: dilation 0 was computed instead of nn.Conv2d's error."""
    dense = _pruned(nn.Conv2d(4, 6, 1, dilation=0))
    sparse = SparseConv2d.from_dense(dense)
    for m in (dense, sparse):
        with pytest.raises(RuntimeError, match="dilation should be greater than zero"):
            m(torch.randn(1, 4, 3, 3))


@pytest.mark.parametrize("make", [lambda: SparseLinear(8, 4), lambda: SparseConv2d(4, 6, 1),
                                  lambda: SparseConv2d(4, 6, 3, padding=1)], ids=["linear", "conv1x1", "conv3x3"])
def test_built_on_the_meta_device_then_loaded(make):
    """``with torch.device("meta")`` (and ``device="meta"``) builds the layer, as nn.Linear / nn.Conv2d;
    ``load_state_dict(assign=True)`` then gives the saved layer (it failed at construction)."""
    torch.manual_seed(0)
    with torch.device("meta"):
        empty = make()
    assert empty.bias.is_meta and empty.header.is_meta and empty.weight.is_meta
    assert "meta" in repr(empty)
    meta_kw = type(empty)(*((8, 4) if isinstance(empty, SparseLinear) else (4, 6, empty.kernel_size)),
                          device="meta")
    assert meta_kw.header.is_meta
    saved = make()
    dense = _pruned(saved.to_dense())
    saved = type(saved).from_dense(dense)
    empty.load_state_dict(saved.state_dict(), assign=True)
    x = torch.randn(2, 8) if isinstance(saved, SparseLinear) else torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(empty(x), saved(x), rtol=0, atol=0)
    torch.testing.assert_close(empty(x), dense(x))


def _pruned(layer, keep=0.4, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        layer.weight.mul_(torch.rand_like(layer.weight) < keep)
    return layer


def _pair(kind):
    """(dense, sparse) layers of the native path: a 1x1 conv or a Linear."""
    dense = _pruned(nn.Conv2d(6, 8, 1) if kind == "conv" else nn.Linear(6, 8))
    return dense, (SparseConv2d if kind == "conv" else SparseLinear).from_dense(dense)


def _same_error(dense, sparse, *args):
    with pytest.raises(Exception) as want:
        dense(*args)
    with pytest.raises(type(want.value)) as got:
        sparse(*args)
    assert str(got.value).split("\n")[0] == str(want.value).split("\n")[0]


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_a_bias_assigned_in_another_dtype_or_shape_raises_like_dense(kind):
    """(functional_call or layer.bias = ...): the native op cast it silently / named it 'shift'."""
    dense, sparse = _pair(kind)
    x = torch.randn(3, 6, 4, 4) if kind == "conv" else torch.randn(3, 6)
    for bias in (torch.randn(8, dtype=torch.float64), torch.randn(5)):
        for m in (dense, sparse):
            m.bias = nn.Parameter(bias.clone())
        _same_error(dense, sparse, x)


def test_a_broadcasting_linear_bias_computes_as_f_linear():
    dense, sparse = _pair("linear")
    for m in (dense, sparse):
        m.bias = nn.Parameter(torch.ones(1))
    x = torch.randn(3, 6)
    torch.testing.assert_close(sparse(x), dense(x))


def test_a_meta_layer_with_a_cpu_input_raises_like_dense():
    """(a model built on the meta device whose weights were never loaded): was uninitialised memory."""
    dense, sparse = _pair("linear")
    _same_error(dense.to("meta"), sparse.to("meta"), torch.randn(3, 6))
    conv = _pair("conv")[1].to("meta")
    with pytest.raises(RuntimeError, match="meta"):
        conv(torch.randn(3, 6, 4, 4))


@pytest.mark.parametrize("shape", [(2, 6, 0, 4), (6, 3, 0)])
def test_native_1x1_empty_image_raises_like_dense(shape):
    dense, sparse = _pair("conv")
    _same_error(dense, sparse, torch.randn(shape))


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_fp16_input_under_bf16_autocast_is_rounded_once(kind):
    """The native op computes in fp32: the result goes to bf16 directly, not through fp16 (inf)."""
    dense, sparse = _pair(kind)
    with torch.no_grad():
        dense.weight.mul_(1000)
    sparse = type(sparse).from_dense(dense)
    x = (torch.randn(3, 6, 4, 4) if kind == "conv" else torch.randn(3, 6)).mul(100).half()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = dense(x), sparse(x)
    assert got.dtype == want.dtype == torch.bfloat16
    assert torch.isfinite(want).all() and torch.isfinite(got).all()
    ref = dense(x.float())
    assert float((got.float() - ref).norm() / ref.norm()) < 1e-2


@pytest.mark.parametrize("kind", ["conv", "linear", "pattern"])
def test_jit_trace_under_autocast_records_the_cast(kind):
    """A trace made under autocast returns the autocast dtype when run outside it, as the dense
    layer's (the native op casts inside, where the tracer does not see it)."""
    if kind == "pattern":
        torch.manual_seed(0)
        sparse = ps.convert(ps.models.sparsify_random(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1))))[0]
        dense, x = sparse.to_dense(), torch.randn(2, 8, 5, 5)
    else:
        dense, sparse = _pair(kind)
        x = torch.randn(3, 6, 4, 4) if kind == "conv" else torch.randn(3, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch traces a dense layer under autocast without gradients only)
        traced = [torch.jit.trace(m.requires_grad_(False), x) for m in (dense, sparse)]
    assert [t(x).dtype for t in traced] == [torch.bfloat16, torch.bfloat16]
