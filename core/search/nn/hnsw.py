"""HNSW in faiss (Malkov & Yashunin, 2016): a layered proximity graph searched greedily.

Each vector is a node linked to about `M` near neighbours (2M on the bottom layer); sparser
upper layers hold a random few for long jumps. A query descends greedily from the top and
then explores the bottom layer best-first, keeping the `ef` best nodes seen. `ef_construction`
is the same breadth while the graph is built: better links, longer builds. The defaults are the
product's Chroma settings (`core.config.IndexSettings`), so this is the same algorithm as
search uses, in another implementation (the lab's "hnsw-chroma").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from core.search.nn.base import NNIndex
from core.search.nn.exact import faiss_memory, faiss_results, load_faiss

SWEEP_EF = (16, 32, 64, 128, 256)


class FaissHNSWIndex(NNIndex):
    """faiss's `IndexHNSWFlat` with the inner-product metric (it keeps the full vectors and
    returns exact inner products for the nodes it reaches)."""

    method = "hnsw-faiss"
    defaults: ClassVar[Mapping[str, int]] = {
        "M": 32,  # links per node per layer (twice as many on the bottom layer)
        "ef_construction": 200,  # candidates explored while linking a new node
        "ef": 200,  # candidates explored per query (faiss's efSearch)
    }
    build_keys = ("M", "ef_construction")
    note = (
        "A navigable graph searched greedily: the best recall for the speed, paid for in "
        "memory for the links and a long build; ef trades speed for recall at query time."
    )

    def _build(self, vectors: np.ndarray) -> None:
        faiss = load_faiss()
        self._index = faiss.IndexHNSWFlat(self.dim, self._params["M"], faiss.METRIC_INNER_PRODUCT)
        self._index.hnsw.efConstruction = self._params["ef_construction"]
        self._index.add(vectors)
        self._retune()
        self._memory: int | None = None

    def _retune(self) -> None:
        self._index.hnsw.efSearch = self._params["ef"]

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
        """One build at the defaults, ef 16 to 256."""
        return [{**cls.defaults, "ef": ef} for ef in SWEEP_EF]
