"""`hnsw-chroma`: Chroma's graph through the product's own `VectorIndex`, in a temporary folder
of its own; `ef` changed without a rebuild reaches the search (a reopened client), and the
recall it gives tracks faiss's HNSW at the same settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.search.nn import NNError, make
from tests.search.nn.reference import recall


@pytest.fixture(scope="module")
def built(clustered: tuple[np.ndarray, np.ndarray]):  # type: ignore[no-untyped-def]
    index = make("hnsw-chroma", M=8, ef_construction=16, ef=4).build(clustered[0])
    yield index
    index.close()


def test_results_are_rows_and_inner_products_best_first(
    built,
    clustered: tuple[np.ndarray, np.ndarray],  # type: ignore[no-untyped-def]
) -> None:
    base, queries = clustered
    rows, scores = built.query(queries[:5], 10)
    assert rows.shape == scores.shape == (5, 10) and rows.dtype == np.int64
    assert np.allclose(scores, np.einsum("md,mkd->mk", queries[:5], base[rows]), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_a_larger_ef_reaches_the_search_without_a_rebuild(
    built,
    clustered: tuple[np.ndarray, np.ndarray],
    truth: np.ndarray,  # type: ignore[no-untyped-def]
) -> None:
    queries = clustered[1]
    folder = built._folder
    low = recall(built.query(queries, 10)[0], truth)
    built.retune(ef=200)
    high = recall(built.query(queries, 10)[0], truth)
    assert built._folder == folder  # the same graph, reopened
    assert high > low + 0.05 and high >= 0.95
    faiss = make("hnsw-faiss", M=8, ef_construction=16, ef=200).build(clustered[0])
    assert abs(recall(faiss.query(queries, 10)[0], truth) - high) < 0.05
    with pytest.raises(NNError, match="fixed at build time"):
        built.retune(M=16)


def test_memory_is_the_graph_on_disk_and_close_removes_it(
    clustered: tuple[np.ndarray, np.ndarray],
) -> None:
    base = clustered[0]  # 3,000: Chroma writes its graph to disk every 1,000 additions
    index = make("hnsw-chroma", M=8, ef_construction=16).build(base)
    folder = index._folder
    assert isinstance(folder, Path) and folder.is_dir()
    links = base.shape[0] * 2 * 8 * 4  # level 0 holds 2M int32 links per vector
    assert index.memory_bytes >= base.nbytes + links
    index.close()
    assert not folder.exists() and index.memory_bytes == 0
