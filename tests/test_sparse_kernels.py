"""Native sparse 1x1 conv / Linear (SparseConv2d / SparseLinear's native path, csrc/sparse_ops.cpp):
pinned to the dense PyTorch reference over a shape matrix on every ISA path, batch 0/1/N,
channels_last, threads 1/2, quantized and fp32 storage; the fused epilogue against the unfused
graph; the runtime index cache (never stale, values read at call time); corrupt arrays; autograd
(TorchScript round trips: test_export.py)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torch_patsparse import ops
from torch_patsparse.nn import SparseConv2d

from helpers import sparse_conv, sparse_linear

INF = float("inf")


def close(out, ref):
    """fp32 native result vs the float64 dense reference (sums of up to a few hundred terms)."""
    assert out.shape == ref.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=2e-5)


# (cin, cout, h, w, stride): Cin / Cout not multiples of any vector width, 1x1 .. odd sizes,
# pixel counts below one vector, between vectors and over one column block (AVX-512: 128)
CONV_SHAPES = [(1, 1, 1, 1, 1), (3, 5, 1, 1, 1), (17, 9, 7, 7, 1), (33, 31, 5, 9, 2), (20, 19, 13, 11, 2),
               (16, 24, 3, 47, 1), (9, 12, 17, 17, (1, 2)), (64, 40, 14, 14, 1)]


@pytest.mark.parametrize("shape", CONV_SHAPES)
@pytest.mark.parametrize("keep,bits", [(0.2, None), (0.25, 4), (0.0, None), (1.0, None)])
def test_conv1x1_matches_dense(isa, threads, shape, keep, bits):
    cin, cout, h, w, stride = shape
    conv, sc = sparse_conv(cin, cout, stride, keep, bits, seed=cin * 31 + cout, empty_rows=True)
    assert sc._op_takes_shape
    sc._native = True  # the sparse op even where a dense quantized weight would run dense (test below)
    wd = sc.dense_weight().double()
    decodes = ops.decode_cache_stats()[:2]
    for nthreads in (1, 2):
        torch.set_num_threads(nthreads)
        for batch in (0, 1, 3):
            x = torch.randn(batch, cin, h, w)
            ref = F.conv2d(x.double(), wd, sc.bias.double(), sc.stride)
            out = sc(x)
            close(out, ref)
            out_cl = sc(x.contiguous(memory_format=torch.channels_last))
            close(out_cl, ref)
            if batch and h * w > 1 and cout > 1:
                assert out_cl.is_contiguous(memory_format=torch.channels_last)
    assert ops.decode_cache_stats()[:2] == decodes  # the native op ran: no dense weight decoded


LINEAR_SHAPES = [(1, 1), (7, 3), (100, 33), (257, 64), (40, 130)]
BATCHES = [(), (0,), (1,), (5,), (8,), (2, 9), (17,)]


@pytest.mark.parametrize("shape", LINEAR_SHAPES)
@pytest.mark.parametrize("keep,bits", [(0.2, None), (0.25, 3), (0.0, None), (1.0, None)])
def test_linear_matches_dense(isa, threads, shape, keep, bits):
    cin, cout = shape
    lin, sl = sparse_linear(cin, cout, keep, bits, seed=cin + cout, empty_rows=True)
    sl._native = True  # the sparse op even where a dense quantized weight would run dense (test below)
    wd = sl.dense_weight().double()
    decodes = ops.decode_cache_stats()[:2]
    for nthreads in (1, 2):
        torch.set_num_threads(nthreads)
        for lead in BATCHES:
            x = torch.randn(*lead, cin)
            close(sl(x), F.linear(x.double(), wd, sl.bias.double()))
    assert ops.decode_cache_stats()[:2] == decodes


def test_results_do_not_depend_on_threads(isa, threads):
    _, sc = sparse_conv(96, 80, 1, 0.2, seed=3)
    _, sl = sparse_linear(300, 70, 0.2, seed=4)
    x, v, vb = torch.randn(2, 96, 15, 15), torch.randn(1, 300), torch.randn(16, 300)
    outs = []
    for n in (1, 2):
        torch.set_num_threads(n)
        outs.append((sc(x), sl(v), sl(vb)))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_epilogue_matches_unfused_graph(isa, stride, channels_last):
    _, sc = sparse_conv(24, 20, stride, 0.25, seed=7)
    x = torch.randn(3, 24, 9, 10)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    acc = F.conv2d(x.double(), sc.dense_weight().double(), None, stride)
    scale, shift = torch.rand(20) + 0.5, torch.randn(20)
    residual = torch.randn(acc.shape)
    for lo, hi in [(-INF, INF), (0.0, INF), (0.0, 6.0), (-1.0, 0.5)]:
        for s, b, r in [(scale, shift, residual), (None, shift, None), (scale, None, None), (None, None, residual)]:
            want = acc
            if s is not None:
                want = want * s.double().view(1, -1, 1, 1)
            if b is not None:
                want = want + b.double().view(1, -1, 1, 1)
            if r is not None:
                want = want + r.double()
            close(sc.forward_fused(x, s, b, r, lo, hi), want.clamp(lo, hi))


def test_linear_epilogue_matches_unfused_graph(isa):
    _, sl = sparse_linear(50, 30, 0.3, seed=8)
    scale, shift = torch.rand(30) + 0.5, torch.randn(30)
    for lead in [(1,), (3,), (12,), (2, 5)]:
        x = torch.randn(*lead, 50)
        residual = torch.randn(*lead, 30)
        acc = F.linear(x.double(), sl.dense_weight().double())
        want = (acc * scale.double() + shift.double() + residual.double()).clamp(0.0, 6.0)
        close(sl.forward_fused(x, scale, shift, residual, 0.0, 6.0), want)


def test_clamp_propagates_nan_like_relu(isa):
    _, sc = sparse_conv(8, 8, 1, 1.0, seed=9)
    _, sl = sparse_linear(8, 8, 1.0, seed=9)
    x = torch.randn(1, 8, 4, 5)
    x[0, 3, 1, 2] = float("nan")
    assert torch.isnan(sc.forward_fused(x, None, None, None, 0.0, 6.0)[0, :, 1, 2]).all()
    v = torch.randn(2, 8)
    v[1, 0] = float("nan")
    out = sl.forward_fused(v, None, None, None, 0.0, INF)
    assert torch.isnan(out[1]).all() and not torch.isnan(out[0]).any()


def test_dtypes_and_unbatched_inputs():
    _, sc = sparse_conv(6, 5, 2, 0.5, seed=10)
    _, sl = sparse_linear(12, 5, 0.5, seed=11)
    x = torch.randn(2, 6, 7, 7)
    ref = F.conv2d(x.double(), sc.dense_weight().double(), sc.bias.double(), 2)
    out64 = copy.deepcopy(sc).double()(x.double())
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64, ref, rtol=1e-12, atol=1e-12)  # fp64 layer: fp64 arithmetic
    for dt in (torch.float16, torch.bfloat16):
        out = copy.deepcopy(sc).to(dt)(x.to(dt))
        assert out.dtype == dt
        torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=5e-2)
    close(sc(x[0]), ref[0])
    v = torch.randn(12)
    close(sl(v), F.linear(v.double(), sl.dense_weight().double(), sl.bias.double()))


def error_of(module, x) -> str:
    with pytest.raises(RuntimeError) as e:
        module(x)
    return str(e.value).strip().splitlines()[-1].replace("RuntimeError: ", "")


def test_input_errors_match_dense_modules():
    """A bad input raises the dense layer's own message, eager and scripted (bias or not)."""
    conv, sc = sparse_conv(6, 5, 1, 0.5, seed=12)
    lin, sl = sparse_linear(12, 5, 0.5, seed=13)
    lin_nobias, sl_nobias = sparse_linear(12, 5, 0.5, seed=13, bias=False)
    pairs = [(conv, sc, (torch.randn(1, 4, 3, 3), torch.randn(6, 3), torch.randn(1, 1, 6, 3, 3),
                         torch.ones(1, 6, 3, 3, dtype=torch.int64))),
             (lin, sl, (torch.randn(2, 11), torch.tensor(1.0), torch.ones(2, 12, dtype=torch.int64))),
             (lin_nobias, sl_nobias, (torch.ones(2, 12, dtype=torch.int64),))]
    for dense, ours, bads in pairs:
        scripted = torch.jit.script(ours)
        for bad in bads:
            want = error_of(dense, bad)
            assert error_of(ours, bad) == want
            assert error_of(scripted, bad) == want
    with pytest.raises(RuntimeError, match="residual"):
        sl.forward_fused(torch.randn(2, 12), None, None, torch.randn(3, 5))
    with pytest.raises(RuntimeError, match="scale"):
        sc.forward_fused(torch.randn(1, 6, 3, 3), torch.ones(4), None, None)
    conv3 = SparseConv2d.from_dense(nn.Conv2d(4, 4, 3))
    with pytest.raises(RuntimeError, match="1x1"):
        conv3.forward_fused(torch.randn(1, 4, 5, 5), None, None, None)


def op_args(m):
    return (m.header, m.index, m.codes, m.values, m.scale)


@pytest.mark.parametrize("bits", [None, 4])
def test_corrupt_arrays_are_errors_not_crashes(bits):
    _, sl = sparse_linear(40, 30, 0.2, bits, seed=14)
    x = torch.randn(2, 40)
    header, index, codes, values, scale = op_args(sl)
    cases = [
        (header[:-1], index, codes, values, scale),
        (header, index[:-1], codes, values, scale),
        (header, torch.cat([index, index]), codes, values, scale),
        (header, torch.full_like(index, 255), codes, values, scale),
        (header, index, codes, torch.zeros(values.numel() + 1), scale),
        (header, index, codes[:-1] if codes.numel() else torch.zeros(3, dtype=torch.uint8), values, scale),
        (header, index, codes, values, torch.tensor([-1.0]) if bits else torch.tensor([1.0])),
        (header.to(torch.int32), index, codes, values, scale),
    ]
    for args in cases:
        with pytest.raises(RuntimeError):
            ops.sparse_linear(x, *args, 30)
        with pytest.raises(RuntimeError):
            torch.ops.patsparse.sparse_decode(*args, [30, 40])
    with pytest.raises(RuntimeError):  # a weight too small for the index
        ops.sparse_linear(x[:, :4], *op_args(sl), 2)
    for shape in ([30, 4], [], [30, -40], [2 ** 62, 2 ** 62]):
        with pytest.raises(RuntimeError):
            torch.ops.patsparse.sparse_decode(*op_args(sl), shape)
    torch.testing.assert_close(torch.ops.patsparse.sparse_decode(*op_args(sl), [30, 4, 10]),
                               sl.dense_weight().view(30, 4, 10), rtol=0, atol=0)


def test_index_cache_is_content_keyed_and_values_are_read_at_call_time(isa):
    _, sl = sparse_linear(64, 32, 0.3, seed=15)
    x = torch.randn(3, 64)
    before = ops.sparse_index_cache_stats()
    y = sl(x)
    sl(x)
    after = ops.sparse_index_cache_stats()
    assert after[1] - before[1] <= 1 and after[0] - before[0] >= 1  # one build at most, then hits
    with torch.no_grad():  # values written in place (no new build): the output follows
        sl.values.mul_(2)
    torch.testing.assert_close(sl(x), 2 * y - sl.bias, rtol=1e-5, atol=1e-5)
    assert ops.sparse_index_cache_stats()[1] == after[1]
    # the index rewritten in place with another layer's arrays of the same sizes: never stale
    _, other = sparse_linear(64, 32, 0.3, seed=16)
    if other.index.shape == sl.index.shape and other.values.shape == sl.values.shape:
        with torch.no_grad():
            sl.index.copy_(other.index)
            sl.values.copy_(other.values)
            sl.header.copy_(other.header)
        close(sl(x), F.linear(x.double(), other.dense_weight().double(), sl.bias.double()))


def test_autograd_input_bias_and_epilogue():
    _, sc = sparse_conv(5, 4, 2, 0.5, seed=17)
    sc = sc.double()
    x = torch.randn(2, 5, 5, 4, dtype=torch.float64, requires_grad=True)
    scale = torch.rand(4, dtype=torch.float64, requires_grad=True)
    shift = torch.randn(4, dtype=torch.float64, requires_grad=True)
    res = torch.randn(2, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, s, b, r: sc.forward_fused(a, s, b, r, -0.5, 0.7), (x, scale, shift, res))
    _, sl = sparse_linear(7, 6, 0.5, seed=18)
    sl = sl.double()
    v = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: sl(a), (v,))
    sl(v).sum().backward()
    assert sl.bias.grad is not None and torch.allclose(sl.bias.grad, torch.full((6,), 3.0, dtype=torch.float64))




@pytest.mark.parametrize("keep,bits,native", [(0.5, 4, True), (0.9, 4, False), (1.0, 8, False), (1.0, None, True)])
def test_dense_quantized_layers_run_dense(keep, bits, native):
    """A quantized layer at density >= 2/3 runs from the dense fp32 weight (sparse_decode + F.conv2d /
    F.linear): its CSR runtime form would be larger and slower. Same results either way; the choice
    follows a load; scripting keeps it."""
    torch.manual_seed(0)
    conv, sc = sparse_conv(64, 48, 1, keep, bits, seed=21)
    lin, sl = sparse_linear(64, 48, keep, bits, seed=22)
    x, v = torch.randn(2, 64, 5, 5), torch.randn(3, 64)
    for m, inp in ((sc, x), (sl, v)):
        assert m._native == native, (m, keep, bits)
        decodes = ops.decode_cache_stats()[1]
        out = m(inp)
        assert (ops.decode_cache_stats()[1] > decodes) == (not native)  # a dense layer decodes once
        m._native = True
        torch.testing.assert_close(m(inp), out, rtol=1e-5, atol=2e-5)  # the sparse op: the same result
        m._native = native
        assert torch.equal(torch.jit.script(m)(inp), out)
    fresh_conv, fresh = sparse_conv(64, 48, 1, 0.2, None, seed=23)
    assert fresh._native
    old = copy.deepcopy(fresh)
    fresh.load_state_dict(sc.state_dict())
    assert fresh._native == native
    torch.testing.assert_close(fresh(x), sc(x))
    del old._op_takes_shape  # a module pickled by an earlier version (its `_native` said the geometry)
    old.load_state_dict(sc.state_dict())
    assert old._native == native


@pytest.mark.parametrize("cin,cout,hw", [(40, 38, 9), (64, 64, 14), (17, 8, 13), (96, 20, 1)])
@pytest.mark.parametrize("bits", [None, 4])
def test_rows_sharing_columns_in_fours_match_dense(isa, threads, cin, cout, hw, bits):
    """A 4x1 block structure (project.unstructured(group=4)): the column kernel runs each group of 4
    rows that keep the same columns together (one input load for four rows); groups that do not share
    (the partial last group, one edited row) and the gather / Linear paths as before; pinned to the
    dense reference, with the fused epilogue, at 1 and 2 threads (equal bit for bit)."""
    from torch_patsparse import project
    from torch_patsparse.nn import SparseLinear
    g = torch.Generator().manual_seed(cin + cout)
    conv = nn.Conv2d(cin, cout, 1)
    with torch.no_grad():
        w = project.unstructured(torch.randn(cout, cin, 1, 1, generator=g), 0.25, group=4)
        w[5, w[5].flatten().nonzero()[0]] = 0  # group 1 no longer shares
        conv.weight.copy_(w)
    sc = SparseConv2d.from_dense(conv, bits=bits)
    lin = nn.Linear(cin, cout)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.flatten(1))
    sl = SparseLinear.from_dense(lin, bits=bits)
    wd = sc.dense_weight().double()
    scale, shift = torch.rand(cout) + 0.5, torch.randn(cout)
    outs = []
    for nthreads in (1, 2):
        torch.set_num_threads(nthreads)
        got = []
        g.manual_seed(1)  # the same inputs at each thread count
        for batch in (0, 1, 3):
            x = torch.randn(batch, cin, hw, hw, generator=g)
            ref = F.conv2d(x.double(), wd, sc.bias.double())
            for inp in (x, x.contiguous(memory_format=torch.channels_last)):
                got.append(sc(inp))
                close(got[-1], ref)
            r = torch.randn(ref.shape, generator=g)
            got.append(sc.forward_fused(x, scale, shift, r, 0.0, 2.0))
            acc = F.conv2d(x.double(), wd)  # (the fused op's shift stands for the bias)
            close(got[-1], (acc * scale.double().view(1, -1, 1, 1) + shift.double().view(1, -1, 1, 1)
                            + r.double()).clamp(0.0, 2.0))
            v = torch.randn(batch, cin, generator=g)
            got.append(sl(v))
            close(got[-1], F.linear(v.double(), sl.dense_weight().double(), sl.bias.double()))
        outs.append(got)
    for a, b in zip(*outs):
        assert torch.equal(a, b)
