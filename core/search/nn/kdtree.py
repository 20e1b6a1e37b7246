"""A K-D tree on PCA-reduced vectors, its candidates re-ranked exactly.

A K-D tree splits space one coordinate at a time and prunes a branch when the query's ball
cannot reach across the split. In 2 or 3 dimensions that prunes almost everything; in 1280 it
prunes nothing (the curse of dimensionality: every ball crosses every split), so the vectors
are first projected onto their `dims` leading principal components (scikit-learn's PCA, fitted
on the base) and the tree (scikit-learn's `KDTree`) is built on those. A query takes the
`oversample * k` nearest in the reduced space and ranks them by their full inner products.

The sweep shows the trade: with few dims the tree is fast but the projection has merged
neighbours with strangers and recall is poor; with more dims recall rises and the tree
degenerates into a slower scan.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np
from sklearn.decomposition import PCA
from sklearn.neighbors import KDTree

from core.search.nn.base import NNIndex
from core.search.nn.exact import rerank

SWEEP_DIMS = (2, 4, 8, 16, 32, 64)


class KDTreeIndex(NNIndex):
    """scikit-learn's `KDTree` over the first `dims` principal components (`dims` is clipped to
    what the data has: at most d, and n - 1 for n > 1), candidates re-ranked exactly."""

    method = "kd-tree"
    defaults: ClassVar[Mapping[str, int]] = {
        "dims": 16,  # principal components the tree splits on
        "leaf_size": 40,  # rows per leaf, scanned without pruning (scikit-learn's default)
        "oversample": 10,  # candidates taken from the tree per neighbour wanted
        "seed": 1,  # the randomised PCA's
    }
    build_keys = ("dims", "leaf_size", "seed")
    note = (
        "A K-D tree on the leading principal components, candidates re-ranked exactly: fast "
        "in a few dimensions but the projection loses neighbours, while with more dimensions "
        "the curse of dimensionality turns the tree into a scan."
    )

    def _build(self, vectors: np.ndarray) -> None:
        n, dim = vectors.shape
        self.reduced_dims = max(1, min(self._params["dims"], dim, n - 1))
        self._pca = PCA(n_components=self.reduced_dims, random_state=self._params["seed"])
        with np.errstate(divide="ignore", invalid="ignore"):  # one vector has no variance
            reduced = self._pca.fit_transform(vectors)  # (n, dims)
        self._tree = KDTree(reduced, leaf_size=self._params["leaf_size"])
        self._vectors = vectors  # (n, d), read by the re-ranking

    def _query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        count = min(self.n, k * self._params["oversample"])
        found = self._tree.query(
            self._pca.transform(queries), k=count, return_distance=False
        )  # (m, count), nearest in the reduced space
        return rerank(self._vectors, queries, list(found), k)

    @property
    def memory_bytes(self) -> int:
        if not self._built:
            return 0
        tree = sum(int(array.nbytes) for array in self._tree.get_arrays())
        pca = int(self._pca.components_.nbytes + self._pca.mean_.nbytes)
        return tree + pca + int(self._vectors.nbytes)

    @classmethod
    def sweep(cls, n: int, dim: int) -> list[dict[str, int]]:
        """One build per dims in (2, 4, …, 64) that the data can have (<= d, < n)."""
        limit = max(1, min(dim, n - 1))
        dims = sorted({min(d, limit) for d in SWEEP_DIMS})
        return [{**cls.defaults, "dims": d} for d in dims]
