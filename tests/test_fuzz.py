"""The fuzz harness benchmarks/fuzz.py: a short seeded run (the >= 10,000-case run is in BENCHMARKS.md)
has no crash, sanitizer report, accepted-but-wrong, rejected-but-dirty or wrong-exception case (the
duplicate-kernel checks it grew from: test_format.py, test_ops.py, test_pattern_state.py)."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("patsparse_fuzz", os.path.join(ROOT, "benchmarks", "fuzz.py"))
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

SEED, CASES = 12, 400


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
