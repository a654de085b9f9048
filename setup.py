"""Builds torch_patsparse._C: the op binding (csrc/*.cpp) over the torch-free kernel core
(csrc/kernels/, plus the x86 SIMD files on x86-64 and arm/ NEON files on aarch64), and the CUDA
kernels (csrc/cuda/*.cu) when torch has CUDA and nvcc is found.

PATSPARSE_CUDA=0 forces a CPU-only build, PATSPARSE_CUDA=1 requires the CUDA build.
"""
import glob
import os
import platform
import sys

from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
import torch

ROOT = os.path.dirname(os.path.abspath(__file__))


def sources():
    src = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/kernels/*.cpp"))
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        src += sorted(glob.glob("csrc/kernels/x86/*.cpp"))
    elif machine in ("aarch64", "arm64"):
        src += sorted(glob.glob("arm/kernels/*.cpp"))
    return src


def want_cuda():
    flag = os.environ.get("PATSPARSE_CUDA", "auto").lower()
    available = torch.version.cuda is not None and CUDA_HOME is not None
    if flag in ("0", "off", "false", "no"):
        return False
    if flag in ("1", "on", "true", "yes"):
        if not available:
            raise RuntimeError("PATSPARSE_CUDA=1 but torch has no CUDA or nvcc was not found")
        return True
    return available


def extension():
    # -fno-math-errno: sqrt without errno, so loops such as the fused Adam step vectorise
    cxx = ["-O3", "-std=c++20", "-fvisibility=hidden", "-fno-math-errno"]
    # at::parallel_for is a header template over `#pragma omp parallel` in OpenMP builds of torch:
    # without -fopenmp the extension's parallel loops silently run on one thread.
    link = []
    if torch.backends.openmp.is_available() and sys.platform != "darwin":
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    include = [ROOT, os.path.join(ROOT, "csrc")]
    if want_cuda():
        cu = sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
        return CUDAExtension(
            "torch_patsparse._C", sources() + cu, include_dirs=include,
            define_macros=[("PATSPARSE_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr"]},
            extra_link_args=link,
        )
    return CppExtension("torch_patsparse._C", sources(), include_dirs=include, extra_compile_args=cxx,
                        extra_link_args=link)


setup(
    name="torch_patsparse",
    version="0.1.0",
    description="Pattern-based pruning for PyTorch CNNs with native sparse kernels",
    packages=find_packages(include=["torch_patsparse", "torch_patsparse.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.9",
    install_requires=["torch>=2.4", "numpy"],
    # pip install 'torch_patsparse[executorch]': the .pte export / runtime (executorch 1.4.0 is the
    # release for torch 2.13; requirements-executorch.txt).
    extras_require={"executorch": ["executorch==1.4.0"]},
    entry_points={"console_scripts": ["patsparse=torch_patsparse.cli:main"]},
)
