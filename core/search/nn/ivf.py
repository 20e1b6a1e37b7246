"""IVF (an inverted file over k-means cells), hand-written and faiss's.

Build: spherical k-means puts `nlist` unit centroids among the vectors (Lloyd's iterations with
assignment by largest inner product and each centroid renormalised to the sphere), and every
vector is filed in the list of its nearest centroid. Query: the `nprobe` centroids nearest the
query choose the lists to scan, and those are scanned exactly. Cost per query is about
nlist + nprobe·n/nlist inner products instead of n; a neighbour filed across a cell boundary
in a list not probed is missed, which is what raising nprobe buys back (nprobe = nlist scans
everything).

Training follows faiss: k-means runs on a random sample of at most 256 rows per centroid,
initialised from distinct random rows, and an emptied cell takes over the worst-fitting
training row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from core.search.nn.base import NNError, NNIndex
from core.search.nn.exact import (
    best_k,
    faiss_memory,
    faiss_results,
    inner_products,
    load_faiss,
)

MAX_POINTS_PER_CENTROID = 256  # faiss's ClusteringParameters default
ASSIGN_ROWS = 8192  # rows assigned to centroids per matrix product
SWEEP_NPROBE = (1, 2, 4, 8, 16, 32, 64)


def nearest_centroids(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of `x` `(n, d)`, the centroid `(nlist, d)` with the largest inner product:
    `(n,)` int64 index and `(n,)` float32 similarity, computed in blocks of rows."""
    labels = np.empty(x.shape[0], dtype=np.int64)
    best = np.empty(x.shape[0], dtype=np.float32)
    for r0 in range(0, x.shape[0], ASSIGN_ROWS):
        scores = x[r0 : r0 + ASSIGN_ROWS] @ centroids.T  # (b, nlist)
        labels[r0 : r0 + ASSIGN_ROWS] = np.argmax(scores, axis=1)
        best[r0 : r0 + ASSIGN_ROWS] = scores.max(axis=1)
    return labels, best


def spherical_kmeans(x: np.ndarray, nlist: int, iters: int, seed: int) -> np.ndarray:
    """`(nlist, d)` float32 unit centroids of `x` `(n, d)` unit rows (n >= nlist): `iters`
    Lloyd iterations on at most 256·nlist rows sampled with `seed`, stopping early when no
    assignment changes."""
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    if n > MAX_POINTS_PER_CENTROID * nlist:
        x = x[np.sort(rng.choice(n, MAX_POINTS_PER_CENTROID * nlist, replace=False))]
    centroids = x[rng.choice(x.shape[0], nlist, replace=False)].copy()  # (nlist, d)
    labels = np.full(x.shape[0], -1, dtype=np.int64)
    for _ in range(iters):
        new_labels, fit = nearest_centroids(x, centroids)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        counts = np.bincount(labels, minlength=nlist)  # (nlist,)
        filled = counts > 0
        sums = np.empty(centroids.shape, dtype=np.float64)  # (nlist, d)
        starts = (np.cumsum(counts) - counts)[filled]  # where each cell's rows begin, sorted
        sorted_rows = x[np.argsort(labels, kind="stable")]
        sums[filled] = np.add.reduceat(sorted_rows, starts, axis=0, dtype=np.float64)
        empty = np.flatnonzero(~filled)
        sums[empty] = x[np.argsort(fit, kind="stable")[: len(empty)]]  # the worst-fitting rows
        centroids = (sums / np.linalg.norm(sums, axis=1, keepdims=True)).astype(np.float32)
    return centroids


class IVFIndex(NNIndex):
    """Hand-written IVF-Flat: `spherical_kmeans` cells, each list a contiguous slice of a copy
    of the vectors sorted by cell (`_listed`, with `_order` mapping back to rows), scanned
    exactly for the `nprobe` cells nearest the query (nprobe above nlist scans every list)."""

    method = "ivf"
    reference = "ivf-faiss"
    defaults: ClassVar[Mapping[str, int]] = {
        "nlist": 256,  # cells (inverted lists); about sqrt(n) suits n vectors (the sweep's)
        "nprobe": 16,  # cells scanned per query
        "iters": 20,  # k-means iterations at most
        "seed": 1,  # the training sample's and the initial centroids'
    }
    build_keys = ("nlist", "iters", "seed")
    note = (
        "Clusters the vectors and scans only the nprobe clusters nearest the query: fast and "
        "tunable, but it misses neighbours filed across a cluster boundary unless nprobe grows."
    )

    def _build(self, vectors: np.ndarray) -> None:
        nlist = self._params["nlist"]
        if nlist > self.n:
            raise NNError(f"ivf: nlist={nlist} cells need at least as many vectors; got {self.n}.")
        self._centroids = spherical_kmeans(
            vectors, nlist, self._params["iters"], self._params["seed"]
        )
        cells, _ = nearest_centroids(vectors, self._centroids)
        self._order = np.argsort(cells, kind="stable")  # (n,) rows, list by list
        self._offsets = np.searchsorted(cells[self._order], np.arange(nlist + 1))  # (nlist + 1,)
        self._listed = vectors[self._order]  # (n, d): each list contiguous, as faiss stores it

    def probed_lists(self, queries: np.ndarray) -> np.ndarray:
        """`(m, min(nprobe, nlist))` int64: the cells each query scans, nearest first."""
        nprobe = min(self._params["nprobe"], self._params["nlist"])
        scores = queries @ self._centroids.T  # (m, nlist)
        return np.argsort(-scores, axis=1, kind="stable")[:, :nprobe]

    def _query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        found_rows, found_scores = [], []
        for query, cells in zip(queries, self.probed_lists(queries), strict=True):
            spans = [(self._offsets[c], self._offsets[c + 1]) for c in cells]
            scores = [inner_products(self._listed[a:b], query) for a, b in spans]
            found_scores.append(np.concatenate(scores))
            found_rows.append(np.concatenate([self._order[a:b] for a, b in spans]))
        return best_k(found_rows, found_scores, k)

    @property
    def memory_bytes(self) -> int:
        if not self._built:
            return 0
        arrays = (self._centroids, self._order, self._offsets, self._listed)
        return sum(int(a.nbytes) for a in arrays)

    @classmethod
    def sweep(cls, n: int, dim: int) -> list[dict[str, int]]:
        """nlist = round(sqrt(n)) (one build), nprobe 1, 2, 4, … 64, clipped to nlist."""
        return ivf_sweep(cls.defaults, n)


def ivf_sweep(defaults: Mapping[str, int], n: int) -> list[dict[str, int]]:
    """Both IVFs' points for n vectors: nlist = round(sqrt(n)), nprobe 1, 2, 4, … 64 (<= nlist)."""
    nlist = int(np.clip(round(np.sqrt(n)), 1, max(n, 1)))
    probes = sorted({min(p, nlist) for p in SWEEP_NPROBE})
    return [{**defaults, "nlist": nlist, "nprobe": p} for p in probes]


class FaissIVFIndex(NNIndex):
    """faiss's `IndexIVFFlat` over an `IndexFlatIP` quantizer with the inner-product metric
    (faiss then trains spherical k-means itself), at the same parameters as `IVFIndex`:
    `iters` sets its k-means iterations (faiss's default is 10), `seed` its clustering seed."""

    method = "ivf-faiss"
    defaults: ClassVar[Mapping[str, int]] = IVFIndex.defaults
    build_keys = IVFIndex.build_keys
    note = "faiss's IVF-Flat: the reference for the hand-written IVF, the same trade in C++."

    def _build(self, vectors: np.ndarray) -> None:
        faiss = load_faiss()
        nlist = self._params["nlist"]
        if nlist > self.n:
            raise NNError(
                f"ivf-faiss: nlist={nlist} cells need at least as many vectors; got {self.n}."
            )
        self._quantizer = faiss.IndexFlatIP(self.dim)  # the index does not own it: keep it
        self._index = faiss.IndexIVFFlat(
            self._quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT
        )
        self._index.cp.niter = self._params["iters"]
        self._index.cp.seed = self._params["seed"]
        self._index.train(vectors)
        self._index.add(vectors)
        self._retune()
        self._memory: int | None = None

    def _retune(self) -> None:
        self._index.nprobe = min(self._params["nprobe"], self._params["nlist"])

    def _query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return faiss_results(*self._index.search(queries, k))

    @property
    def memory_bytes(self) -> int:
        if not self._built:
            return 0
        if self._memory is None:
            self._memory = faiss_memory(self._index)
        return self._memory

    @classmethod
    def sweep(cls, n: int, dim: int) -> list[dict[str, int]]:
        """The hand-written IVF's points (`ivf_sweep`)."""
        return ivf_sweep(cls.defaults, n)
