"""Shared fixtures. tests/ is on sys.path (pyproject.toml: pythonpath), so test modules import
the shared builders and the dense reference as ``helpers``."""
import pytest
import torch

from torch_patsparse import ops


@pytest.fixture(params=ops.supported_isas())
def isa(request):
    """Runs the test once per CPU kernel path this build and CPU support, forced with ops.set_isa."""
    previous = ops.set_isa(request.param)
    yield request.param
    ops.set_isa(previous)


@pytest.fixture
def threads():
    """Restores torch's thread count after a test that changes it."""
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread is faster than several (and much faster on a loaded machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
