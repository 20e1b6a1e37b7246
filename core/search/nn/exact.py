"""Exact search: score every row, keep the k best. The answer to "implement nearest-neighbour
search", and the ground truth every approximate method here is measured against.

`exact_top_k` is the hand-written one: the base is read in blocks of rows, each block scored
against a batch of queries by one float32 matrix product (BLAS), the k best of each block kept
(`_top_k`) and the survivors of all blocks merged the same way. Memory stays at one
`(batch, block)` score matrix however many rows or queries there are, and the base is never
copied. `FaissFlatIndex` is faiss's `IndexFlatIP` doing the same thing in C++.

This module also holds what the other methods share: `rerank` (exact scores for a candidate
set), `best_k` (the k best of per-query candidates) and the faiss plumbing (`load_faiss`,
`faiss_results`, `faiss_memory`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from core.search.nn.base import MISSING_ROW, NNIndex

BLOCK_ROWS = 16384  # base rows per product: (batch, block) float32 scores = 16 MiB at batch 256
BATCH_QUERIES = 256  # queries per product; one query is a matrix-vector product
GROUPS_PER_K = 16  # `_kth_bound`'s groups per neighbour wanted


def exact_top_k(
    base: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    block: int = BLOCK_ROWS,
    batch: int = BATCH_QUERIES,
) -> tuple[np.ndarray, np.ndarray]:
    """The `k` rows of `base` `(n, d)` with the largest inner product with each of `queries`
    `(m, d)` (both float32): `(m, k)` int64 rows and `(m, k)` float32 scores, best first, equal
    scores by lower row. Columns past n are MISSING_ROW / -inf."""
    n, m = base.shape[0], queries.shape[0]
    kept = min(k, n)
    rows = np.full((m, k), MISSING_ROW, dtype=np.int64)
    scores = np.full((m, k), -np.inf, dtype=np.float32)
    buffer = np.empty((min(batch, m), min(block, n)), dtype=np.float32)  # reused: no page faults
    for q0 in range(0, m, batch):
        chunk = queries[q0 : q0 + batch]  # (c, d)
        found_scores, found_rows = [], []
        for r0 in range(0, n, block):
            part = base[r0 : r0 + block]  # (b, d), a view
            block_scores = buffer[: chunk.shape[0], : part.shape[0]]
            np.matmul(chunk, part.T, out=block_scores)  # (c, b): sgemm on the transposed view
            ids = np.arange(r0, r0 + part.shape[0])[None, :]  # (1, b)
            best, best_ids = _top_k(block_scores, ids, min(kept, part.shape[0]))
            found_scores.append(best)
            found_rows.append(best_ids)
        best, best_ids = _top_k(
            np.concatenate(found_scores, axis=1), np.concatenate(found_rows, axis=1), kept
        )
        rows[q0 : q0 + batch, :kept] = best_ids
        scores[q0 : q0 + batch, :kept] = best
    return rows, scores


def _top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` largest of each row of `scores` `(c, b)` (k <= b) with their `ids` (`(c, b)` or
    `(1, b)`): `(c, k)` each, best first, equal scores by lower id, so per-block answers merge
    to the answer of one sort.

    Only the few scores at or above `_kth_bound` are sorted, which costs a third of
    `np.argpartition` over the whole row (measured on 200 x 16,384 scores, k = 10)."""
    ids = np.broadcast_to(ids, scores.shape)
    at, col = np.nonzero(scores >= _kth_bound(scores, k)[:, None])  # row-major: grouped by row
    cand_scores, cand_ids = scores[at, col], ids[at, col]
    order = np.lexsort((cand_ids, -cand_scores, at))  # by row, then best first, then lower id
    counts = np.bincount(at, minlength=scores.shape[0])  # >= k each, by `_kth_bound`
    starts = np.cumsum(counts) - counts  # (c,)
    pick = order[starts[:, None] + np.arange(k)]  # (c, k)
    return cand_scores[pick], cand_ids[pick]


def _kth_bound(scores: np.ndarray, k: int) -> np.ndarray:
    """`(c,)`: for each row of `scores` `(c, b)` a value at most its k-th largest, and usually
    just below it. Columns are dealt into G = 16k groups (column j to group j mod G) and the
    bound is the k-th largest group maximum: those k maxima are k distinct scores above it. Top
    scores rarely share a group when G >> k, so few scores beyond the k best pass the bound."""
    c, b = scores.shape
    groups = GROUPS_PER_K * k
    if groups >= b:
        return np.partition(scores, b - k, axis=1)[:, b - k]
    depth = b // groups
    maxima = scores[:, : depth * groups].reshape(c, depth, groups).max(axis=1)  # (c, G)
    tail = b - depth * groups  # < G leftover columns, dealt to the first groups
    maxima[:, :tail] = np.maximum(maxima[:, :tail], scores[:, depth * groups :])
    return np.partition(maxima, groups - k, axis=1)[:, groups - k]


def rerank(
    base: np.ndarray, queries: np.ndarray, candidates: Sequence[np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Score each query's candidate rows exactly and keep the best `k`: `queries` `(m, d)`,
    `candidates[i]` distinct row numbers into `base` `(n, d)` (any count). `(m, k)` rows and
    scores as `NNIndex.query` returns them, padded where a query has fewer than k candidates.
    How the approximate methods turn a candidate set into an answer."""
    pairs = zip(candidates, queries, strict=True)
    return best_k(candidates, [inner_products(base[rows], query) for rows, query in pairs], k)


def inner_products(x: np.ndarray, query: np.ndarray) -> np.ndarray:
    """`(n,)` float32: each row of `x` `(n, d)` against one `query` `(d,)`. einsum, not `@`:
    OpenBLAS wakes its threads for every matrix-vector product, which made the small products
    of a candidate set or an inverted list 2-4x slower (measured on 2 cores, 265 x 1280)."""
    return np.einsum("ij,j->i", x, query)


def best_k(
    rows: Sequence[np.ndarray], scores: Sequence[np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """`base.pad`'s contract (per-query candidate rows and scores of any length -> `(m, k)`
    best first, equal scores by lower row, padded with MISSING_ROW / -inf) by the partial
    selection of `_top_k` instead of a full sort: 17,000 candidates cost 0.2 ms, not 3."""
    out_rows = np.full((len(rows), k), MISSING_ROW, dtype=np.int64)
    out_scores = np.full((len(rows), k), -np.inf, dtype=np.float32)
    for i, (found, score) in enumerate(zip(rows, scores, strict=True)):
        kept = min(k, len(found))
        if kept:
            best, best_rows = _top_k(score[None, :], found[None, :], kept)  # (1, kept) each
            out_scores[i, :kept], out_rows[i, :kept] = best[0], best_rows[0]
    return out_rows, out_scores


class ExactIndex(NNIndex):
    """Hand-written exact search (`exact_top_k`) over the built vectors, held without a copy."""

    method = "exact"
    reference = "exact-faiss"
    defaults: ClassVar[Mapping[str, int]] = {"block": BLOCK_ROWS, "batch": BATCH_QUERIES}
    build_keys = ()
    note = (
        "Scores every row: O(N·D) per query, nothing to build, perfect recall. The cost grows "
        "with the gallery; every approximate method is measured against it."
    )

    def _build(self, vectors: np.ndarray) -> None:
        self._vectors = vectors  # (n, d)

    def _query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return exact_top_k(
            self._vectors, queries, k, block=self._params["block"], batch=self._params["batch"]
        )

    @property
    def memory_bytes(self) -> int:
        return int(self._vectors.nbytes) if self._built else 0


class FaissFlatIndex(NNIndex):
    """faiss's `IndexFlatIP`: the same exhaustive scan (BLAS for batches of 20 queries or more,
    SIMD loops below), on faiss's own copy of the vectors."""

    method = "exact-faiss"
    note = (
        "faiss's exhaustive inner-product scan: O(N·D) per query in C++, perfect recall; the "
        "reference for the hand-written exact search."
    )

    def _build(self, vectors: np.ndarray) -> None:
        faiss = load_faiss()
        self._index = faiss.IndexFlatIP(self.dim)
        self._index.add(vectors)
        self._memory: int | None = None

    def _query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return faiss_results(*self._index.search(queries, k))

    @property
    def memory_bytes(self) -> int:
        if not self._built:
            return 0
        if self._memory is None:
            self._memory = faiss_memory(self._index)
        return self._memory


@functools.cache
def load_faiss() -> Any:
    """faiss, imported on first use (the hand-written methods never load it) with OpenMP set to
    every core of the machine."""
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return faiss


def faiss_results(distances: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """faiss's `search` output `(m, k)` as `NNIndex.query`'s: faiss marks an unfilled place with
    label -1 and score -FLT_MAX; here it is MISSING_ROW and -inf."""
    missing = labels < 0
    rows = np.where(missing, MISSING_ROW, labels).astype(np.int64)
    scores = np.where(missing, -np.inf, distances).astype(np.float32)
    return rows, scores


def faiss_memory(index: Any) -> int:
    """Bytes of a faiss index: the length of its serialised form (vectors, codes, graph links,
    inverted lists), which is what it holds in memory to within its headers."""
    return int(load_faiss().serialize_index(index).nbytes)
