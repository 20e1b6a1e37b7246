"""Tests for core.search.nn.ivf: spherical k-means against the Lloyd fixed point, the lists
against a full sort, and the hand-written IVF against faiss's at the same parameters."""

from __future__ import annotations

import numpy as np
import pytest

from core.search.nn import NNError
from core.search.nn.ivf import FaissIVFIndex, IVFIndex, nearest_centroids, spherical_kmeans
from tests.search.nn.reference import brute_force, clustered_unit_vectors, recall


def test_kmeans_converges_to_the_normalised_means_of_its_cells():
    x = clustered_unit_vectors(600, 16, 6, seed=5, spread=0.8)
    centroids = spherical_kmeans(x, 6, iters=100, seed=2)
    assert centroids.shape == (6, 16) and centroids.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
    cells = np.argmax(x @ centroids.T, axis=1)  # the assignment, recomputed here
    for c in range(6):
        mean = x[cells == c].astype(np.float64).sum(axis=0)
        np.testing.assert_allclose(centroids[c], mean / np.linalg.norm(mean), atol=1e-5)


def test_kmeans_trains_on_a_sample_and_is_seeded():
    x = clustered_unit_vectors(1200, 8, 4, seed=6)
    a = spherical_kmeans(x, 2, iters=5, seed=3)  # 2 cells: a sample of 512 rows
    np.testing.assert_array_equal(a, spherical_kmeans(x, 2, iters=5, seed=3))
    assert not np.array_equal(a, spherical_kmeans(x, 2, iters=5, seed=4))


def test_nearest_centroids_is_the_largest_inner_product():
    x = clustered_unit_vectors(20_000, 8, 4, seed=6)  # more rows than one block
    centroids = clustered_unit_vectors(5, 8, 5, seed=1)
    labels, best = nearest_centroids(x, centroids)
    scores = x @ centroids.T
    np.testing.assert_array_equal(labels, np.argmax(scores, axis=1))
    np.testing.assert_allclose(best, scores.max(axis=1), atol=1e-6)


@pytest.mark.parametrize("cls", [IVFIndex, FaissIVFIndex])
def test_recall_rises_with_nprobe_and_is_exact_when_every_list_is_scanned(cls, clustered, truth):
    base, queries = clustered
    index = cls(nlist=40, nprobe=1).build(base)
    found = []
    for nprobe in (1, 2, 4, 8, 40):
        index.retune(nprobe=nprobe)
        found.append(recall(index.query(queries, 10)[0], truth))
    assert found == sorted(found) and found[0] < 0.95 and found[-1] == 1.0
    rows, scores = index.query(queries, 10)
    want_rows, want_scores = brute_force(base, queries, 10)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_the_lists_hold_every_row_once(clustered):
    base, _ = clustered
    index = IVFIndex(nlist=12, nprobe=12).build(base[:500])
    rows, _ = index.query(base[:2], 500)
    assert sorted(rows[0].tolist()) == list(range(500))
    index.retune(nprobe=99)  # more than nlist: every list
    assert sorted(index.query(base[:1], 500)[0][0].tolist()) == list(range(500))


def test_hand_written_recall_is_faiss_recall_at_the_same_parameters(clustered, truth):
    # Averaged over three seeds: one clustering's luck moves recall at nprobe 1 by ±0.03.
    base, queries = clustered
    found = {}  # (class, nprobe) -> recall per seed
    for cls in (IVFIndex, FaissIVFIndex):
        for seed in (1, 2, 3):
            index = cls(nlist=55, seed=seed).build(base)
            for nprobe in (1, 2, 4):
                index.retune(nprobe=nprobe)
                found.setdefault((cls, nprobe), []).append(
                    recall(index.query(queries, 10)[0], truth)
                )
    for nprobe in (1, 2, 4):
        mine, theirs = np.mean(found[IVFIndex, nprobe]), np.mean(found[FaissIVFIndex, nprobe])
        assert abs(mine - theirs) <= 0.04, (nprobe, mine, theirs)


def test_probed_lists_are_the_nearest_centroids(clustered):
    base, queries = clustered
    index = IVFIndex(nlist=20, nprobe=3).build(base)
    probed = index.probed_lists(queries)
    assert probed.shape == (len(queries), 3)
    scores = queries @ spherical_kmeans(base, 20, 20, 1).T  # the same seed and iterations
    np.testing.assert_array_equal(probed[:, 0], np.argmax(scores, axis=1))


@pytest.mark.parametrize("cls", [IVFIndex, FaissIVFIndex])
def test_more_lists_than_vectors_is_refused(cls, clustered):
    base, _ = clustered
    with pytest.raises(NNError, match="nlist=20 cells need at least as many vectors; got 10"):
        cls(nlist=20).build(base[:10])


def test_the_sweep_sets_nlist_by_n():
    points = IVFIndex.sweep(3000, 64)
    assert {p["nlist"] for p in points} == {55}
    assert [p["nprobe"] for p in points] == [1, 2, 4, 8, 16, 32, 55]
    assert [p["nprobe"] for p in IVFIndex.sweep(70_000, 1280)] == [1, 2, 4, 8, 16, 32, 64]
    assert FaissIVFIndex.sweep(10, 8) == IVFIndex.sweep(10, 8)
    assert [p["nlist"] for p in IVFIndex.sweep(1, 8)] == [1]


def test_memory_counts_the_listed_copy(clustered):
    base, _ = clustered
    mine = IVFIndex(nlist=30).build(base).memory_bytes
    theirs = FaissIVFIndex(nlist=30).build(base).memory_bytes
    assert base.nbytes < mine < 1.2 * base.nbytes
    assert base.nbytes < theirs < 1.2 * base.nbytes
