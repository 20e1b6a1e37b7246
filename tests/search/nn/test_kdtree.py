"""Tests for core.search.nn.kdtree: the PCA-reduced K-D tree against a full sort."""

from __future__ import annotations

import numpy as np

from core.search.nn import MISSING_ROW
from core.search.nn.kdtree import KDTreeIndex
from tests.search.nn.reference import brute_force, clustered_unit_vectors, recall


def test_all_dimensions_kept_is_exact(clustered):
    # PCA with every component is a rotation about the mean: distances are kept, so the
    # tree's nearest in the reduced space are the nearest, and the re-ranking sorts them.
    base, queries = clustered
    rows, scores = KDTreeIndex(dims=64, oversample=2).build(base).query(queries, 10)
    want_rows, want_scores = brute_force(base, queries, 10)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_recall_rises_with_the_dimensions_kept(clustered, truth):
    base, queries = clustered
    found = {
        dims: recall(KDTreeIndex(dims=dims).build(base).query(queries, 10)[0], truth)
        for dims in (2, 8, 32)
    }
    assert found[2] < 0.5 < found[8] < found[32]  # 0.22, 0.83, 1.0 measured
    assert found[32] >= 0.99


def test_oversampling_more_finds_more(clustered, truth):
    base, queries = clustered
    index = KDTreeIndex(dims=4, oversample=1).build(base)
    low = recall(index.query(queries, 10)[0], truth)
    index.retune(oversample=30)
    assert recall(index.query(queries, 10)[0], truth) > low + 0.2


def test_dims_are_clipped_to_what_the_data_has():
    base = clustered_unit_vectors(6, 8, 2, seed=3)
    index = KDTreeIndex(dims=64).build(base)
    assert index.reduced_dims == 5 and index.params["dims"] == 64
    rows, _ = index.query(base[:2], 6)
    np.testing.assert_array_equal(rows, brute_force(base, base[:2], 6)[0])
    one = KDTreeIndex().build(base[:1])
    rows, scores = one.query(base[:1], 3)
    assert rows.tolist() == [[0, MISSING_ROW, MISSING_ROW]] and np.isneginf(scores[0, 1:]).all()


def test_the_sweep_builds_once_per_dimension_the_data_can_have():
    points = KDTreeIndex.sweep(3000, 64)
    assert [p["dims"] for p in points] == [2, 4, 8, 16, 32, 64]
    assert [p["dims"] for p in KDTreeIndex.sweep(3000, 20)] == [2, 4, 8, 16, 20]
    assert [p["dims"] for p in KDTreeIndex.sweep(9, 1280)] == [2, 4, 8]


def test_memory_counts_the_tree_and_the_vectors(clustered):
    base, _ = clustered
    index = KDTreeIndex(dims=8).build(base)
    reduced = base.shape[0] * 8 * 8  # float64 reduced copy inside the tree
    assert index.memory_bytes > base.nbytes + reduced
