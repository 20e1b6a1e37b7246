"""Tests for core.search.nn.hnsw: faiss's HNSW against a full sort, ef at query time."""

from __future__ import annotations

import numpy as np
import pytest

from core.search.nn import NNError
from core.search.nn.hnsw import FaissHNSWIndex
from tests.search.nn.reference import recall


@pytest.fixture(scope="module")
def graph(clustered) -> FaissHNSWIndex:
    base, _ = clustered
    return FaissHNSWIndex(M=16, ef_construction=100).build(base)


def test_recall_rises_with_ef_without_a_rebuild(graph, clustered, truth):
    _, queries = clustered
    memory = graph.memory_bytes
    found = []
    for ef in (16, 64, 256):
        graph.retune(ef=ef)
        found.append(recall(graph.query(queries, 10)[0], truth))
    assert found == sorted(found) and found[-1] >= 0.99
    assert graph.params == {"M": 16, "ef_construction": 100, "ef": 256}
    assert graph.memory_bytes == memory


def test_scores_are_the_inner_products_of_the_rows_best_first(graph, clustered):
    base, queries = clustered
    rows, scores = graph.query(queries, 10)
    assert rows.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_allclose(scores, np.einsum("md,mkd->mk", queries, base[rows]), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_the_graph_costs_memory_beyond_the_vectors(graph, clustered):
    base, _ = clustered
    links = base.shape[0] * 2 * 16 * 4  # bottom layer: 2M int32 links per node
    assert graph.memory_bytes > base.nbytes + links


def test_build_parameters_cannot_be_retuned(graph):
    with pytest.raises(NNError, match="M is fixed at build time"):
        graph.retune(M=8)


def test_the_sweep_builds_once_at_the_products_settings():
    points = FaissHNSWIndex.sweep(70_000, 1280)
    assert [p["ef"] for p in points] == [16, 32, 64, 128, 256]
    assert {(p["M"], p["ef_construction"]) for p in points} == {(32, 200)}
