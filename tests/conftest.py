import os
import sys

# tests/helpers.py is imported as `helpers` by the test modules.
sys.path.insert(0, os.path.dirname(__file__))


import pytest  # noqa: E402
import torch  # noqa: E402

from torch_patsparse import ops  # noqa: E402


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
