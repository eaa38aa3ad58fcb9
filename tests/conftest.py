"""Shared test configuration: hypothesis profiles and fixtures.

Hypothesis runs few, derandomised examples by default (stable CI, fast on 2 cores).
``HYPOTHESIS_PROFILE=thorough pytest ...`` runs many more, randomised.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

# ``import helpers`` from any test file, whatever pytest's import mode.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

settings.register_profile(
    "ci",
    max_examples=10,
    deadline=None,
    derandomize=True,
    database=None,  # no replay of earlier failures: the same examples on every run
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=200,
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# The tests use tiny tensors on shared cores: intra-op threads only cost (seen here: a
# ``max(dim=0)`` over a [3, 40, 4] tensor took 15 ms with 2 threads on a loaded machine,
# 15 us with 1).  ``CRFKIT_TEST_THREADS`` overrides.
torch.set_num_threads(int(os.environ.get("CRFKIT_TEST_THREADS", "1")))

# The chain kernels run on the torch path in the suite: the compiled (numba) CPU default costs
# minutes of compilation in a fresh environment (no on-disk cache yet). ``test_chain_numba.py``
# exercises the numba kernels explicitly, and one end-to-end test there runs ``solve_map`` with
# the real default. ``CRFKIT_CHAIN_IMPL=numba pytest ...`` runs the whole suite on numba.
os.environ.setdefault("CRFKIT_CHAIN_IMPL", "torch")


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh, seeded numpy generator per test."""
    return np.random.default_rng(1234)


@pytest.fixture
def gen() -> torch.Generator:
    """A fresh, seeded torch generator per test (CPU)."""
    return torch.Generator().manual_seed(1234)
