"""Shared fixtures: every test starts from a fixed seed; float64 helpers.

Thread counts are left to the environment (``OMP_NUM_THREADS``); nothing here forces them.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    """Seed torch, numpy and random before each test and restore the default dtype after it."""
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002 (seeds tests that use the legacy global generator)
    random.seed(0)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)


@pytest.fixture
def float64():
    """Run the test with float64 as the default dtype (restored afterwards by ``_seed``)."""
    torch.set_default_dtype(torch.float64)
    return torch.float64


def randn(*shape: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    """Seeded standard normal tensor, float64 by default, without touching the global RNG."""
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))
