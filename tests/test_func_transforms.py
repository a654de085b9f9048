"""torch.func transforms and forward-mode AD through the compressed layers, pinned to the dense layers
they replace: a transform must give the dense derivative or refuse, never a silent zero (torch.func.jvp
returned zero tangents through the native ops before)."""
import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn as nn
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vmap

import torch_patsparse as ps


def _model(bits):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1, stride=2),
                      nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Flatten(), nn.Linear(8 * 9, 5))
    with torch.no_grad():
        for i in (2, 3, 5):
            m[i].weight.mul_((torch.rand_like(m[i].weight) < 0.3).to(m[i].weight.dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = ps.convert(m, layers="all", project=True, bits=bits)
    dense = nn.Sequential(*[layer.to_dense() if hasattr(layer, "to_dense") else layer for layer in c]).double()
    return c.double(), dense


@pytest.fixture(params=[None, 4], ids=["float", "bits4"])
def models(request):
    c, dense = _model(request.param)
    assert [type(layer).__name__ for layer in c][:4] == ["PatternConv2d", "ReLU", "SparseConv2d", "SparseConv2d"]
    assert c[2]._native and isinstance(c[5], ps.nn.SparseLinear) and c[5]._native  # the native product ops
    return c, dense


def _x(n=2):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, 6, 6, dtype=torch.float64, generator=g), torch.randn(n, 4, 6, 6, dtype=torch.float64,
                                                                                   generator=g)


def test_jvp_matches_the_dense_layers(models):
    c, dense = models
    x, t = _x()
    out, tangent = jvp(c, (x,), (t,))
    ref_out, ref_tangent = jvp(dense, (x,), (t,))
    assert ref_tangent.abs().max() > 1e-3
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(tangent, ref_tangent)


@pytest.mark.parametrize("grad_mode", [False, True])
def test_forward_ad_dual_tensors(models, grad_mode):
    c, dense = models
    x, t = _x()
    _, ref = jvp(dense, (x,), (t,))
    with torch.set_grad_enabled(grad_mode), fwAD.dual_level():
        out = c(fwAD.make_dual(x, t))
        torch.testing.assert_close(fwAD.unpack_dual(out).tangent, ref)
        if grad_mode:  # reverse mode still records through the dual output
            out.sum().backward()
            assert c[0].bias.grad is not None and c[0].bias.grad.abs().sum() > 0


def test_jacobians_and_hessian(models):
    c, dense = models
    x = _x(1)[0]
    ref = jacrev(dense)(x)
    torch.testing.assert_close(jacfwd(c)(x), ref)
    torch.testing.assert_close(jacrev(c)(x), ref)
    torch.testing.assert_close(hessian(lambda z: c(z).pow(2).sum())(x), hessian(lambda z: dense(z).pow(2).sum())(x))


def test_jvp_over_parameters(models):
    c, _ = models
    x = _x()[0]
    params = {k: v.detach() for k, v in c.named_parameters()}
    g = torch.Generator().manual_seed(2)
    tangents = {k: torch.randn(v.shape, dtype=v.dtype, generator=g) for k, v in params.items()}

    def f(p):
        return functional_call(c, p, (x,))
    _, tangent = jvp(f, (params,), (tangents,))
    eps = 1e-6  # central difference, float64
    with torch.no_grad():
        diff = (f({k: v + eps * tangents[k] for k, v in params.items()})
                - f({k: v - eps * tangents[k] for k, v in params.items()})) / (2 * eps)
    torch.testing.assert_close(tangent, diff, atol=1e-7, rtol=1e-6)


def test_per_sample_gradients(models):
    c, _ = models
    x = _x(3)[0]
    params = {k: v.detach() for k, v in c.named_parameters()}

    def loss(p, xi):
        return functional_call(c, p, (xi.unsqueeze(0),)).pow(2).sum()
    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, x)
    for i in range(3):
        c.zero_grad()
        c(x[i:i + 1]).pow(2).sum().backward()
        for k, p in c.named_parameters():
            torch.testing.assert_close(per_sample[k][i], p.grad)


def test_clamped_sparse_op_tangent_is_zero_on_the_bounds():
    torch.manual_seed(0)
    lin = nn.Linear(6, 5)
    with torch.no_grad():
        lin.weight.mul_((torch.rand_like(lin.weight) < 0.4).float())
    s = ps.nn.SparseLinear.from_dense(lin)
    assert s._native
    args = [s.header, s.index, s.codes, s.values, s.scale, 5]
    x, t = torch.randn(4, 6), torch.randn(4, 6)
    shift = torch.randn(5)

    def f(z):
        return ps.ops.sparse_linear(z, *args, None, shift, None, -0.2, 0.3)

    def ref(z):
        return (z @ lin.weight.t() + shift).clamp(-0.2, 0.3)
    out, tangent = jvp(f, (x,), (t,))
    ref_out, ref_tangent = jvp(ref, (x,), (t,))
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(tangent, ref_tangent)
    assert (tangent == 0).any() and (tangent != 0).any()


def test_float32_layers_under_transforms():
    """In float32 the sparse product ops' composite read the layer op's +-DBL_MAX "no clamp" bounds as
    real ones: every transform raised "value cannot be converted to type float without overflow"."""
    c, dense = (m.float() for m in _model(None))
    x, t = (v.float() for v in _x())
    out, tangent = jvp(c, (x,), (t,))
    ref_out, ref_tangent = jvp(dense, (x,), (t,))
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(tangent, ref_tangent, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(jacrev(c)(x[:1]), jacrev(dense)(x[:1]), atol=1e-5, rtol=1e-4)
    # an infinite input stays infinite (a clamp at DBL_MAX made it finite in float64)
    lin = c[5].double()
    z = torch.zeros(1, 72, dtype=torch.float64)
    z[0, lin.to_dense().weight[0].ne(0).nonzero()[0]] = float("inf")
    assert jvp(lin, (z,), (torch.ones_like(z),))[0].isinf().any()


def test_refused_where_there_is_no_forward_derivative():
    c, _ = _model(None)
    opt = ps.optimize_for_inference(c.float().eval())
    x, t = (v.float() for v in _x())
    with pytest.raises(NotImplementedError, match="no forward-mode derivative.*inference-only"):
        jvp(opt, (x,), (t,))
    with pytest.raises(NotImplementedError, match="no forward-mode derivative"), fwAD.dual_level():
        opt(fwAD.make_dual(x, t))
    # a sparse op's stored weight is not differentiable: a tangent on it is refused, not dropped
    s = c[5].float()
    with pytest.raises(NotImplementedError, match="not differentiable"):
        jvp(lambda v: ps.ops.sparse_linear(torch.randn(2, 72), s.header, s.index, s.codes, v, s.scale, 5),
            (s.values,), (torch.ones_like(s.values),))


def test_optimized_model_under_torch_func():
    """vmap of optimize_for_inference's model batches its depthwise conv as the dense op (it queried a
    channels_last layout torch's vmap does not implement); its gradient transforms are refused with
    the reason (they hit a functorch internal assert)."""
    c, _ = _model(None)
    c = c.float().eval()
    opt = ps.optimize_for_inference(c)
    x = _x(3)[0].float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "no batching rule" note: the fused ops loop per sample
        torch.testing.assert_close(vmap(opt)(x.unsqueeze(1)).squeeze(1), c(x))
    for transform in (jacrev, lambda f: grad(lambda z: f(z).sum())):
        with pytest.raises(NotImplementedError, match="no derivative under torch.func.*inference-only"):
            transform(opt)(x[:1])


def test_model_ensemble_gradients():
    """torch.func's ensembling (stack_module_state + vmap(grad)) gives each member its own gradient
    (decompress wrote batched values into an unbatched tensor: a vmap error)."""
    import copy
    c, _ = _model(None)
    members = [c, copy.deepcopy(c)]
    with torch.no_grad():
        members[1][0].values.mul_(-0.5)
    params, buffers = torch.func.stack_module_state(members)
    x = _x()[0]

    def loss(p, b):
        return functional_call(c, (p, b), (x,)).pow(2).sum()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grads = vmap(grad(loss))(params, buffers)
    for i, m in enumerate(members):
        m.zero_grad()
        m(x).pow(2).sum().backward()
        for k, p in m.named_parameters():
            torch.testing.assert_close(grads[k][i], p.grad)
    assert not torch.equal(grads["0.values"][0], grads["0.values"][1])


@pytest.mark.parametrize("case", ["pattern4_scale", "grouped_values", "5x5_4bit_scale", "linear_values"])
def test_stored_weight_derivative_refused(case):
    """A tangent or gradient on a compressed layer's stored tensors (put there with functional_call)
    is refused: through the decoders (4-bit PatternConv2d, SparseConv2d without a native product)
    the tangent was dropped (zero jvp / jacrev), through the native sparse product reverse mode gave
    no gradient."""
    torch.manual_seed(0)
    layer, key, x = {
        "pattern4_scale": (lambda: ps.nn.PatternConv2d.from_dense(nn.Conv2d(3, 4, 3, padding=1), project=True,
                                                                  bits=4), "scale", (2, 3, 5, 5)),
        "grouped_values": (lambda: ps.nn.SparseConv2d.from_dense(nn.Conv2d(4, 4, 3, padding=1, groups=2)), "values",
                           (2, 4, 5, 5)),
        "5x5_4bit_scale": (lambda: ps.nn.SparseConv2d.from_dense(nn.Conv2d(3, 4, 5), bits=4), "scale", (2, 3, 5, 5)),
        "linear_values": (lambda: ps.nn.SparseLinear.from_dense(nn.Linear(6, 4)), "values", (2, 6)),
    }[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = layer().double()
    x = torch.randn(x, dtype=torch.float64)
    p = getattr(c, key).detach()

    def f(v):
        return functional_call(c, {key: v}, (x,))
    for transform in (lambda: jvp(f, (p,), (torch.ones_like(p),)), lambda: jacrev(f)(p),
                      lambda: f(p.clone().requires_grad_()).sum().backward()):
        with pytest.raises(NotImplementedError, match="stored weight of a compressed layer.*not differentiable"):
            transform()
    assert jacrev(c)(x).abs().sum() > 0  # the input's derivative is unaffected


def test_vmap_of_a_forward_is_one_batched_call():
    """vmap over a converted model folds the vmapped dim into the batch (torch's fallback called the
    native op once per sample and printed its "performance drop" note): equal to the loop over samples,
    for a batch of batches, in_dims=1, per-sample images, and the dense layer's error for a wrong rank."""
    import subprocess
    import sys
    c, _ = _model(None)
    c = c.float()
    x = _x(6)[0].float().view(3, 2, 4, 6, 6)
    loop = torch.stack([c(xi) for xi in x])
    torch.testing.assert_close(vmap(c)(x), loop)
    torch.testing.assert_close(vmap(c, in_dims=1)(x.transpose(0, 1).contiguous()), loop)
    head = c[:4]  # per-sample 3-D images (the Linear after Flatten needs a batch dim, as in the dense model)
    torch.testing.assert_close(vmap(head)(x[0]), head(x[0]))
    with pytest.raises(RuntimeError, match="Expected 3D .*or 4D"):
        vmap(head)(x[0, :, 0])
    code = ("import torch, torch.nn as nn, warnings, torch_patsparse as ps\n"
            "warnings.simplefilter('ignore')\n"
            "m = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Flatten(), nn.Linear(8 * 36, 5))\n"
            "torch.manual_seed(0)\n"
            "[l.weight.data.mul_((torch.rand_like(l.weight) < 0.3).float()) for l in (m[1], m[3])]\n"
            "c = ps.convert(m, layers='all', project=True)\n"
            "torch.func.vmap(c)(torch.randn(3, 2, 4, 6, 6))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "performance drop" not in run.stderr
