"""Chroma's HNSW as the lab's `hnsw-chroma`: the graph search uses, measured through its client.

The index is a `VectorIndex` (the product's own adapter, so every query pays what a search
pays: the client call, Chroma's Rust bindings, the hit conversion) over a temporary directory,
never the gallery's: the lab changes `ef_search`, and search must not feel it. A sweep over
`ef` builds once; `retune` records the new value and reopens the client, since an open client
keeps the value it loaded (measured on chromadb 1.5.9). What the client adds per query shows
beside `hnsw-faiss` at the same M and ef, the bare graph without a client.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np

from core.config import IndexSettings
from core.search.index import VectorIndex
from core.search.nn.base import NNIndex, pad

_VERSION = "lab"  # the one collection of the temporary index
_WRITE_BATCH = 4096  # vectors per upsert while building (Chroma caps a batch at ~5,400)


class ChromaHNSWIndex(NNIndex):
    method = "hnsw-chroma"
    defaults: ClassVar[Mapping[str, int]] = {
        "M": 32,
        "ef_construction": 200,
        "ef": 200,
    }  # the product's IndexSettings
    build_keys = ("M", "ef_construction")
    note = (
        "What search uses. A graph of near neighbours in layers: a query walks from the top "
        "layer down, touching a few thousand vectors; best recall for the time, at the cost "
        "of a slow build and links in memory. Every query also pays the client's overhead."
    )

    def __init__(self, **params: int) -> None:
        super().__init__(**params)
        self._folder: Path | None = None
        self._index: VectorIndex | None = None

    @classmethod
    def sweep(cls, n: int, dim: int) -> list[dict[str, int]]:
        return [{**cls.defaults, "ef": ef} for ef in (16, 32, 64, 128, 256)]

    def _settings(self) -> IndexSettings:
        p = self.params
        return IndexSettings(
            max_neighbors=p["M"],
            ef_construction=p["ef_construction"],
            ef_search=p["ef"],
            batch_size=_WRITE_BATCH,
        )

    def _build(self, vectors: np.ndarray) -> None:
        self.close()
        self._folder = Path(tempfile.mkdtemp(prefix="lookalike-lab-chroma-"))
        weakref.finalize(self, shutil.rmtree, self._folder, True)
        self._index = VectorIndex(self._settings(), self._folder)
        self._index.upsert(_VERSION, [str(row) for row in range(vectors.shape[0])], vectors)

    def _retune(self) -> None:
        assert self._index is not None and self._folder is not None
        self._index.set_ef_search(_VERSION, self.params["ef"])
        self._index.close()  # an open client keeps the ef it loaded
        self._index = VectorIndex(self._settings(), self._folder)

    def _query(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        assert self._index is not None
        hits = self._index.query(_VERSION, queries, k)
        rows = [np.array([int(h.image_id) for h in found], np.int64) for found in hits]
        scores = [np.array([h.score for h in found], np.float32) for found in hits]
        return pad(rows, scores, k)

    @property
    def memory_bytes(self) -> int:
        """The HNSW segment's files (vectors, links, ids), which Chroma keeps in memory.
        Chroma writes them every 1,000 additions (`sync_threshold`), so below that size the
        newest vectors are not counted yet."""
        if self._folder is None:
            return 0
        segments = [p for p in self._folder.iterdir() if p.is_dir()]
        return sum(f.stat().st_size for seg in segments for f in seg.rglob("*") if f.is_file())

    def close(self) -> None:
        """Close the client and delete the temporary directory."""
        if self._index is not None:
            self._index.close()
            self._index = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
