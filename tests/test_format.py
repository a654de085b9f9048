"""format.py: validation of the compressed pattern arrays (the same checks as the native ops.validate)."""
import pytest

import torch_patsparse as ps
from torch_patsparse import format as fmt

from helpers import compressed, random_pattern_weight, with_duplicate_kernel


def test_validate_rejects_duplicate_kernel():
    arrays = with_duplicate_kernel()
    msg = ps.ops.validate(*(arrays[n] for n in fmt.ARRAY_NAMES), 4)
    assert "filter 1" in msg and "twice" in msg
    with pytest.raises(ValueError, match="twice"):
        fmt.validate(arrays, 4, 3)
    # the same channel in two different filters is the normal case
    fmt.validate(compressed(random_pattern_weight(3, 4, keep=1.0, seed=3)), 4, 3)
