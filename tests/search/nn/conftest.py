"""Shared data for the nearest-neighbour tests: 3,000 + 100 clustered unit vectors in 64-d and
their exact top 10 (`reference.py`)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.search.nn.reference import brute_force, clustered_unit_vectors

N, DIM, CLUSTERS, QUERIES, K = 3000, 64, 30, 100, 10


@pytest.fixture(scope="session")
def clustered() -> tuple[np.ndarray, np.ndarray]:
    """(base (3000, 64), queries (100, 64)): unit float32 rows from the same 30 clusters."""
    x = clustered_unit_vectors(N + QUERIES, DIM, CLUSTERS, seed=7)
    return x[:N], x[N:]


@pytest.fixture(scope="session")
def truth(clustered: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """`(100, 10)`: the exact top 10 of each query, by `brute_force`."""
    base, queries = clustered
    return brute_force(base, queries, K)[0]
