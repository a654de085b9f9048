"""The C++ side: builds libpatsparse_ops + patsparse_run (top-level CMakeLists.txt) against the
libtorch inside the installed torch wheel, exports a small pattern-compressed model, runs it with
patsparse_run (torch::jit::load and the lite interpreter) and compares the printed output with
Python's for the same model and input.

The build is cached in build/cpp (override: PATSPARSE_CPP_BUILD); the first one compiles two
libtorch-linked files (a few minutes on a 2-core box), later runs are incremental. Skipped with a
reason when cmake or a C++ compiler is missing, or when PATSPARSE_SKIP_CPP_RUNNER=1.
"""
import os
import shutil
import subprocess

import pytest
import torch

from torch_patsparse import export

from helpers import converted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("PATSPARSE_CPP_BUILD", os.path.join(ROOT, "build", "cpp"))

pytestmark = pytest.mark.skipif(os.environ.get("PATSPARSE_SKIP_CPP_RUNNER") == "1",
                                reason="PATSPARSE_SKIP_CPP_RUNNER=1")


def runner_input(shape):
    """The deterministic input patsparse_run feeds the model (see cpp/patsparse_run.cpp)."""
    n = 1
    for s in shape:
        n *= s
    i = torch.arange(n, dtype=torch.int64)
    return ((i * 7919) % 1000).double().div(500).sub(1).float().view(*shape)


@pytest.fixture(scope="module")
def patsparse_run():
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake not found (apt-get install cmake)")
    if shutil.which("c++") is None and shutil.which("g++") is None and shutil.which("clang++") is None:
        pytest.skip("no C++ compiler found")
    configure = [cmake, "-S", ROOT, "-B", BUILD, "-DCMAKE_BUILD_TYPE=Release", "-DPATSPARSE_BUILD_TESTS=OFF",
                 f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"]
    if shutil.which("ninja") and not os.path.exists(os.path.join(BUILD, "CMakeCache.txt")):
        configure += ["-G", "Ninja"]
    r = subprocess.run(configure, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "building patsparse_ops and patsparse_run" in r.stdout, "CMake did not find Torch:\n" + r.stdout
    jobs = os.environ.get("MAX_JOBS", "2")
    r = subprocess.run([cmake, "--build", BUILD, "--target", "patsparse_run", "-j", jobs],
                       capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-5000:]
    exe = os.path.join(BUILD, "patsparse_run")
    assert os.access(exe, os.X_OK)
    return exe


def run(exe, path, shape, *extra):
    r = subprocess.run([exe, path, "--shape", ",".join(map(str, shape)), "--repeat", "2", *extra],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "input: " + " ".join(map(str, shape)), lines[0]
    assert lines[1].startswith("output:") and lines[-1].startswith("time_ms:"), r.stdout[-2000:]
    sizes = [int(v) for v in lines[1].split()[1:]]
    values = torch.tensor([float(v) for v in lines[2:-1]], dtype=torch.float32)
    return values.view(sizes), lines[-1]


@pytest.mark.parametrize("quantized", [False, True])
def test_runner_matches_python(patsparse_run, tmp_path, quantized):
    model = converted(quantized)
    shape = (2, 3, 19, 14)
    with torch.no_grad():
        want = model(runner_input(shape))
    path = export.torchscript(model, tmp_path / "m.pt")
    got, timing = run(patsparse_run, path, shape)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert "isa " in timing


def test_runner_lite_interpreter_and_options(patsparse_run, tmp_path):
    model = converted()
    shape = (1, 3, 16, 16)
    with torch.no_grad():
        want = model(runner_input(shape))
    with pytest.warns(FutureWarning):
        path = export.mobile(model, tmp_path / "m.ptl")
    got, timing = run(patsparse_run, path, shape, "--lite", "--threads", "1", "--isa", "scalar")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert timing.endswith("threads 1 isa scalar"), timing


def test_runner_errors(patsparse_run, tmp_path):
    r = subprocess.run([patsparse_run, str(tmp_path / "missing.pt")], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "cannot load" in r.stderr
    r = subprocess.run([patsparse_run, "x.pt", "--shape", "1,2"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "N,C,H,W" in r.stderr
    # an error while the model runs (the input's channels are not the model's): its message, status 1
    # (found by a probe: std::terminate, status 134)
    path = export.torchscript(converted(), tmp_path / "m.pt")
    r = subprocess.run([patsparse_run, path, "--shape", "1,4,12,12"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "patsparse_run:" in r.stderr and "channels" in r.stderr, r.stderr[-2000:]
