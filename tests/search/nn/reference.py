"""Independent references for the nearest-neighbour tests: generated clustered vectors, a
brute-force top k by a full sort, and recall. Nothing here uses `core.search.nn`."""

from __future__ import annotations

import numpy as np


def clustered_unit_vectors(
    n: int, dim: int, clusters: int, seed: int, spread: float = 1.2
) -> np.ndarray:
    """`(n, dim)` float32 unit rows: random unit centres plus Gaussian noise of norm about
    `spread`, renormalised; like an encoder's embeddings of a gallery of a few dozen kinds of
    thing. At spread 1.2 a point's nearest neighbour has cosine about 0.6 and clusters overlap,
    so approximate methods visibly miss some neighbours."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.standard_normal((n, dim)) * spread / np.sqrt(dim)
    x = centres[rng.integers(0, clusters, n)] + noise
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact top k by a full stable sort of the float64 score matrix: `(m, k)` rows (equal
    scores by lower row) and their scores."""
    scores = queries.astype(np.float64) @ base.astype(np.float64).T  # (m, n)
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return rows, np.take_along_axis(scores, rows, axis=1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of `truth` `(m, k)` that `found` `(m, k)` contains."""
    hits = [len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits) / truth.shape[1])
