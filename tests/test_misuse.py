"""The hurried user's mistakes get a clear Python error naming the argument (or, where the intent is
plain, do what was meant), never a raw error from deep inside or a silently different meaning."""
import warnings

import pytest
import torch
from torch import nn

import torch_patsparse as ps
from torch_patsparse import project
from torch_patsparse.nn import SparseLinear


def _net():
    torch.manual_seed(0)
    return ps.models.sparsify_random(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)))


def test_compression_report_takes_an_example_tensor_as_second_argument():
    model = ps.convert(_net())
    x = torch.randn(1, 8, 8, 8)
    assert ps.compression_report(model, x).totals == ps.compression_report(model, example_input=x).totals
    assert ps.compression_report(model, x).totals["dense_macs"] > 0


@pytest.mark.parametrize("bad", [224, "1x3x8x8", (1, 8.0, 8, 8)])
def test_compression_report_bad_input_size(bad):
    with pytest.raises(TypeError, match="input_size"):
        ps.compression_report(_net(), input_size=bad)


def test_compression_report_of_a_state_dict_or_scripted_model():
    model = _net()
    for bad in (model.state_dict(), torch.jit.script(model)):
        with pytest.raises(TypeError, match="nn.Module"):
            ps.compression_report(bad)


def test_convert_exclude_takes_a_module_and_none():
    model = _net()
    assert [type(m).__name__ for m in ps.convert(model, exclude=model[0])] == ["Conv2d", "PatternConv2d"]
    assert [type(m).__name__ for m in ps.convert(model, exclude=None)] == ["PatternConv2d", "PatternConv2d"]
    with pytest.raises(TypeError, match="exclude"):
        ps.convert(model, exclude=b"0")


@pytest.mark.parametrize("call", [lambda m: ps.convert(m, inplace="no"), lambda m: ps.convert(m, project="no"),
                                  lambda m: ps.nn.PatternConv2d.from_dense(m[0], project="no"),
                                  lambda m: ps.PatternSet.select(m[0].weight, keep_center="False"),
                                  lambda m: ps.PatternSet.candidates(keep_center=None)])
def test_flags_must_be_bools(call):
    """A string flag ("no", "False") is true in Python: refused, not taken as True."""
    with pytest.raises(TypeError):
        call(_net())


@pytest.mark.parametrize("export", ["torchscript", "mobile"])
def test_export_errors_name_the_user_s_path_and_argument(tmp_path, export):
    fn = getattr(ps.export, export)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with pytest.raises(TypeError, match="nn.Module"):
            fn(torch.randn(3), tmp_path / "t.pt")
        with pytest.raises(FileNotFoundError, match="missing"):
            fn(_net(), tmp_path / "missing" / "m.pt")


@pytest.mark.parametrize("call", [lambda: project.quantize(torch.arange(8), 4),
                                  lambda: project.unstructured([1.0, 2.0], 1),
                                  lambda: project.filter(torch.ones(4, 3, dtype=torch.int64), 1)])
def test_projections_take_floating_tensors(call):
    with pytest.raises(TypeError, match="floating-point tensor"):
        call()


def test_projection_of_an_empty_tensor():
    with pytest.raises(ValueError, match="non-empty"):
        project.channel(torch.randn(3, 0), 0.5)


@pytest.mark.parametrize("lo,hi", [(1.0, 0.0), (float("nan"), 1.0)])
def test_sparse_fused_clamp_bounds_are_checked(lo, hi):
    layer = SparseLinear.from_dense(nn.Linear(16, 8))
    with pytest.raises(RuntimeError, match="lo <= hi"):
        layer.forward_fused(torch.randn(2, 16), None, None, None, lo, hi)


@pytest.mark.parametrize("kwargs", [{"rho": True}, {"rho_growth": True}, {"update_every": 2.0},
                                    {"phase_steps": "100", "method": "gradual"}])
def test_admm_refuses_bools_and_wrong_number_types(kwargs):
    w = nn.Parameter(torch.randn(8, 8, 3, 3))
    with pytest.raises(ValueError):
        ps.ADMM([w], lr=0.1, **kwargs)


def test_admm_takes_numpy_scalars_as_numbers():
    np = pytest.importorskip("numpy")
    w = nn.Parameter(torch.randn(8, 8, 3, 3))
    opt = ps.ADMM([w], lr=0.1, rho=np.float32(0.5), update_every=np.int64(10), phase_steps=np.int64(100))
    assert opt.update_every == 10 and isinstance(opt.update_every, int)


@pytest.mark.parametrize("spec,error", [([object()], TypeError), (["features.0.weight"], TypeError)])
def test_from_model_rules_that_are_not_pairs(spec, error):
    with pytest.raises(error, match="dict"):
        ps.ADMM.from_model(_net(), spec, lr=0.1)


def test_from_model_takes_one_constraint_per_rule():
    from torch_patsparse import constraints as C
    opt = ps.ADMM.from_model(_net(), {r"0\.weight": C.Pattern(k=4)}, lr=0.1)
    assert [type(c).__name__ for c in opt.param_groups[0]["constraints"]] == ["Pattern"]
    with pytest.raises(TypeError, match="nn.Module"):
        ps.ADMM.from_model(torch.randn(3), {}, lr=0.1)
