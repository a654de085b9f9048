"""The x86 SIMD paths (avx2, avx512) and the execution plan, each path forced in turn and pinned to
the dense reference (F.conv2d); thread-count invariance; the plan cache never serves a stale plan;
bad arrays give clear errors on every path. (test_ops.py runs the basic shape matrix on every path.)"""
import os
import subprocess
import sys

import pytest
import torch

import torch_patsparse  # noqa: F401
from torch_patsparse import ops

from helpers import PATTERNS8, SHAPES, compressed, random_pattern_weight, reference_conv, run_op

ISAS = ops.supported_isas()
SIMD = [i for i in ISAS if i != "scalar"]



def test_x86_paths_present():
    import platform
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("not x86-64")
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if " avx2 " in flags and " fma " in flags:
        assert "avx2" in ISAS
    if " avx512f " in flags:
        assert "avx512" in ISAS
        assert ops.get_isa() in ("avx512",) or os.environ.get("PATSPARSE_ISA")


# Shapes that exercise the plan driver: several row blocks, tiles of every width, groups of 1..4
# (incl. a remainder group), widths that are not a multiple of the vector length, stride 2 with
# padding 0/1/2, dilation, rectangular strides.
BIG = [
    # (N, Cin, H, W, Cout, stride, padding, dilation, keep, group)
    (1, 64, 30, 37, 24, 1, 1, 1, 0.25, 4),
    (2, 40, 21, 19, 18, 2, 1, 1, 0.5, 3),
    (1, 96, 17, 17, 10, 1, 1, 1, 1.0, 1),
    (3, 16, 33, 9, 7, 1, 2, 2, 0.6, 2),
    (1, 32, 20, 41, 13, 2, 0, 1, 0.4, 4),
    (1, 300, 12, 12, 9, 1, 1, 1, 0.3, 4),  # several row blocks at small width
    (1, 8, 64, 70, 12, (2, 1), (1, 2), (1, 2), 0.7, 4),
    (2, 12, 7, 7, 33, 1, 1, 1, 0.5, 4),
    (1, 3, 1, 1, 4, 2, 1, 1, 1.0, 2),       # stride 2 on a 1x1 input: every column phase but one is padding
    (2, 5, 2, 3, 6, (2, 3), 1, (1, 2), 1.0, 1),
    (1, 4, 9, 10, 5, 3, 2, 1, 0.8, 1),
]


@pytest.mark.parametrize("case", BIG, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("has_bias", [False, True])
def test_paths_match_reference(isa, case, has_bias):
    n, cin, h, w, cout, stride, padding, dilation, keep, group = case
    weight = random_pattern_weight(cout, cin, keep=keep, group=group, seed=cin + cout)
    arrays = compressed(weight)
    x = torch.randn(n, cin, h, w)
    bias = torch.randn(cout) if has_bias else None
    out = run_op(x, arrays, bias, stride, padding, dilation)
    ref = reference_conv(x, weight, bias, stride, padding, dilation)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)


def test_grouping_of_non_consecutive_identical_filters(isa):
    # Filters 0, 3, 5, 6, 9 share a (channel, pattern) list; others are singles or empty.
    base = random_pattern_weight(10, 20, keep=0.5, seed=5)
    weight = base.clone()
    for o in (3, 5, 6, 9):
        weight[o] = base[0] * torch.randn(20, 1, 1)  # same support, different values
    weight[0, 0] = 0
    for o in (3, 5, 6, 9):
        weight[o, 0] = 0
    weight[7] = 0
    arrays = compressed(weight)
    x = torch.randn(2, 20, 15, 15)
    torch.testing.assert_close(run_op(x, arrays), reference_conv(x, weight, None, 1, 1, 1), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_grouped_weights_all_paths(isa, shape):
    n, cin, h, w, cout, stride, padding, dilation, has_bias = shape
    weight = random_pattern_weight(cout, cin, keep=0.4, group=2, seed=7)
    arrays = compressed(weight)
    x = torch.randn(n, cin, h, w).contiguous(memory_format=torch.channels_last)
    bias = torch.randn(cout) if has_bias else None
    out = run_op(x, arrays, bias, stride, padding, dilation)
    torch.testing.assert_close(out, reference_conv(x, weight, bias, stride, padding, dilation), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 3])
def test_thread_count_invariance(isa, threads, batch):
    weight = random_pattern_weight(36, 48, keep=0.3, group=4, seed=11)
    arrays = compressed(weight)
    x = torch.randn(batch, 48, 26, 29)
    bias = torch.randn(36)
    outs = []
    for t in (1, 2, 3):
        torch.set_num_threads(t)
        outs.append(run_op(x, arrays, bias))
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=1e-5, atol=0)
    torch.testing.assert_close(outs[0], reference_conv(x, weight, bias, 1, 1, 1), rtol=1e-5, atol=1e-4)


def test_plan_cache_never_stale(isa):
    weight = random_pattern_weight(16, 12, keep=0.5, seed=2)
    arrays = compressed(weight)
    x = torch.randn(1, 12, 10, 10)
    torch.testing.assert_close(run_op(x, arrays), reference_conv(x, weight, None, 1, 1, 1), rtol=1e-5, atol=1e-5)
    # In-place change of the values (version counter bumps).
    arrays["values"].mul_(2)
    torch.testing.assert_close(run_op(x, arrays), reference_conv(x, 2 * weight, None, 1, 1, 1), rtol=1e-5, atol=1e-5)
    # Change through .data (no version bump) of the index arrays is caught by the rebuild of a
    # new tensor; a brand-new weight with the same shapes must not reuse the old plan.
    for seed in range(3):
        w2 = random_pattern_weight(16, 12, keep=0.5, seed=100 + seed)
        a2 = compressed(w2)
        torch.testing.assert_close(run_op(x, a2), reference_conv(x, w2, None, 1, 1, 1), rtol=1e-5, atol=1e-5)
    # Same arrays, different input channel count of the call is still validated.
    bad = dict(arrays)
    with pytest.raises(RuntimeError, match="kernel_channel"):
        run_op(torch.randn(1, 3, 10, 10), bad)


def test_inference_mode_and_no_grad(isa):
    weight = random_pattern_weight(8, 8, keep=0.5, seed=4)
    arrays = compressed(weight)
    x = torch.randn(2, 8, 9, 9)
    ref = reference_conv(x, weight, None, 1, 1, 1)
    with torch.inference_mode():
        inf_arrays = {k: v.clone() for k, v in arrays.items()}
        torch.testing.assert_close(run_op(x, inf_arrays), ref, rtol=1e-5, atol=1e-5)
        inf_arrays["values"].neg_()
        torch.testing.assert_close(run_op(x, inf_arrays), -ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [0, 1])
def test_bad_arrays_clear_errors(isa, batch):
    weight = random_pattern_weight(6, 5, keep=0.8, seed=9)
    arrays = compressed(weight)
    x = torch.randn(batch, 5, 8, 8)
    cases = {
        "kernel_channel": ("kernel_channel", lambda t: t.fill_(7)),
        "kernel_pattern": ("kernel_pattern", lambda t: t.fill_(200)),
        "filter_ptr": ("filter_ptr", lambda t: t.__setitem__(1, 10_000)),
        "position": ("patterns", lambda t: t.__setitem__((0, 0), 12)),
    }
    for name, (key, corrupt) in cases.items():
        bad = {k: v.clone() for k, v in arrays.items()}
        corrupt(bad[key])
        with pytest.raises(RuntimeError, match="patsparse"):
            run_op(x, bad)


def test_set_isa_and_env():
    with pytest.raises(RuntimeError, match="unknown ISA"):
        ops.set_isa("sse9")
    if "neon" not in ISAS:
        with pytest.raises(RuntimeError, match="not supported"):
            ops.set_isa("neon")
    with pytest.raises(TypeError, match="ISA path is a str"):
        ops.set_isa(None)
    previous = ops.set_isa("SCALAR")  # case-insensitive
    try:
        assert ops.get_isa() == "scalar"
    finally:
        ops.set_isa(previous)
    code = "import torch_patsparse.ops as o; print(o.get_isa())"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for name in ISAS:
        env["PATSPARSE_ISA"] = name
        got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert got.stdout.strip() == name


def test_isa_environment_variable_as_set_isa_takes_it():
    code = "import torch_patsparse.ops as o; print(o.get_isa())"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), PATSPARSE_ISA="SCALAR")
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert got.stdout.strip() == "scalar"  # case-insensitive, as set_isa
    env["PATSPARSE_ISA"] = "avx-512"  # a typo is said, not silently replaced by the default
    got = subprocess.run([sys.executable, "-W", "always", "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert "PATSPARSE_ISA='avx-512' is not a kernel path" in got.stderr
    assert got.stdout.strip() in ops.supported_isas()
