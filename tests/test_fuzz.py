"""Issue 12 trust checks: a (filter, channel) kernel listed twice is rejected everywhere, and a short
seeded run of the fuzz in benchmarks/fuzz.py (the >= 10,000-case run is in BENCHMARKS.md) has no
crash, sanitizer report, accepted-but-wrong, rejected-but-dirty or wrong-exception case."""
import importlib.util
import os

import pytest
import torch

import torch_patsparse as ps
from torch_patsparse import format as fmt
from torch_patsparse.nn import PatternConv2d

from helpers import PATTERNS8, compressed, random_pattern_weight

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("patsparse_fuzz", os.path.join(ROOT, "benchmarks", "fuzz.py"))
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

SEED, CASES = 12, 400


# ------------------------------------------------------------------ duplicate kernels (defect 5)
def _with_duplicate():
    arrays = compressed(random_pattern_weight(3, 4, keep=1.0, seed=3))
    kc = arrays["kernel_channel"].clone()
    kc[5] = kc[7]  # filter 1 (kernels 4..7) now names one input channel twice
    arrays["kernel_channel"] = kc
    return arrays


def test_validate_rejects_duplicate_kernel():
    arrays = _with_duplicate()
    msg = ps.ops.validate(*(arrays[n] for n in fmt.ARRAY_NAMES), 4)
    assert "filter 1" in msg and "twice" in msg
    with pytest.raises(ValueError, match="twice"):
        fmt.validate(arrays, 4, 3)
    # the same channel in two different filters is the normal case
    fmt.validate(compressed(random_pattern_weight(3, 4, keep=1.0, seed=3)), 4, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ops_reject_duplicate_kernel(dtype):
    arrays = [t.to(dtype) if t.is_floating_point() else t for t in (_with_duplicate()[n] for n in fmt.ARRAY_NAMES)]
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


@pytest.mark.parametrize("bits", [None, 4])
def test_load_state_dict_rejects_duplicate_kernel(bits):
    conv = torch.nn.Conv2d(4, 3, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(random_pattern_weight(3, 4, keep=1.0, seed=3))
    src = PatternConv2d.from_dense(conv, pattern_set=ps.PatternSet.from_tensor(PATTERNS8), bits=bits)
    sd = src.state_dict()
    fp = sd["filter_ptr"].tolist()
    kc = sd["kernel_channel"].clone()
    kc[fp[1]] = kc[fp[1] + 1]
    sd["kernel_channel"] = kc
    dst = PatternConv2d(4, 3, padding=1, bits=bits)
    with pytest.raises((ValueError, RuntimeError), match="twice"):
        dst.load_state_dict(sd)


# ------------------------------------------------------------------ the fuzz, short seeded run
@pytest.fixture(scope="module")
def report():
    return fuzz.run(SEED, CASES)


def _show(rs):
    return "\n".join(f"{r['cls']} [{r['tag']}] python benchmarks/fuzz.py --seed {SEED} --case {r['i']} -v  # "
                     f"{r['desc'][:200]} -> {r['detail'][:200]}" for r in rs[:20])


def test_fuzz_no_failures(report):
    bad = fuzz.failures(report)
    assert not bad, f"{len(bad)} cases:\n" + _show(bad)


def test_fuzz_exercises_both_outcomes(report):
    c = report["counts"]
    assert sum(c.values()) == CASES
    assert c["rejected"] > CASES // 4 and c["accepted-correct"] > CASES // 10, dict(c)
    assert {r["family"] for r in report["results"]} == {f for f, _ in fuzz.FAMILIES}


def test_fuzz_counts_a_crash_and_goes_on(monkeypatch):
    monkeypatch.setenv("PATSPARSE_FUZZ_CRASH_AT", "3")
    rep = fuzz.run(SEED, 6, batch=6)
    assert [r["i"] for r in rep["results"]] == list(range(6))
    assert rep["results"][3]["cls"] == "crash" and "exit -11" in rep["results"][3]["detail"]
