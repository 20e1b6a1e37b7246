"""Tests for core.search.nn.exact: the hand-written exact search against a full sort and
against faiss's IndexFlatIP, ties, blocks, padding; `rerank` and the faiss adapters."""

from __future__ import annotations

import numpy as np
import pytest

from core.search.nn import MISSING_ROW
from core.search.nn.base import pad
from core.search.nn.exact import (
    ExactIndex,
    FaissFlatIndex,
    best_k,
    exact_top_k,
    faiss_results,
    rerank,
)
from tests.search.nn.reference import brute_force, clustered_unit_vectors


def test_exact_matches_a_full_sort(clustered):
    base, queries = clustered
    rows, scores = ExactIndex().build(base).query(queries, 10)
    want_rows, want_scores = brute_force(base, queries, 10)
    assert rows.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


@pytest.mark.parametrize(
    ("n", "k", "block", "batch"),
    [(1, 1, 16384, 256), (161, 10, 7, 3), (1000, 10, 100, 64), (1000, 50, 333, 1), (40, 40, 9, 5)],
)
def test_blocks_and_batches_give_the_answer_of_one_sort(n, k, block, batch):
    x = clustered_unit_vectors(n + 13, 16, 5, seed=n)
    base, queries = x[:n], x[n:]
    rows, scores = exact_top_k(base, queries, k, block=block, batch=batch)
    want_rows, want_scores = brute_force(base, queries, k)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_the_same_row_sets_as_faiss(clustered):
    base, queries = clustered
    mine = ExactIndex(block=1000, batch=16).build(base).query(queries, 10)
    theirs = FaissFlatIndex().build(base).query(queries, 10)
    assert [set(r) for r in mine[0]] == [set(r) for r in theirs[0]]
    np.testing.assert_allclose(mine[1], theirs[1], atol=1e-5)
    single = [ExactIndex().build(base).query(q[None], 10)[0][0] for q in queries[:5]]
    np.testing.assert_array_equal(single, mine[0][:5])


def test_equal_scores_keep_the_lower_row_across_blocks():
    # Axis vectors make every score exactly 0 or 1, so ties are real ties: rows 2, 6, 10, …
    # all score 1 for a query on axis 2, and the k kept must be the lowest of them.
    axes = np.eye(4, dtype=np.float32)
    base = axes[np.arange(200) % 4]  # (200, 4)
    queries = axes[[2, 0, 3]]
    for block in (16384, 13, 50):
        rows, scores = exact_top_k(base, queries, 7, block=block, batch=2)
        want_rows, _ = brute_force(base, queries, 7)
        np.testing.assert_array_equal(rows, want_rows)
        assert rows[0].tolist() == [2, 6, 10, 14, 18, 22, 26]
        assert (scores == 1).all()
    rows, _ = exact_top_k(base, queries, 60, block=31, batch=3)  # past the 50 exact matches
    np.testing.assert_array_equal(rows, brute_force(base, queries, 60)[0])


def test_k_beyond_n_pads():
    base = clustered_unit_vectors(3, 8, 2, seed=1)
    rows, scores = ExactIndex().build(base).query(base[:2], 5)
    assert rows.shape == (2, 5) and scores.shape == (2, 5)
    assert (rows[:, 3:] == MISSING_ROW).all() and np.isneginf(scores[:, 3:]).all()
    assert sorted(rows[0, :3].tolist()) == [0, 1, 2] and rows[0, 0] == 0


def test_exact_holds_the_vectors_without_a_copy(clustered):
    base, _ = clustered
    index = ExactIndex().build(base)
    assert index.memory_bytes == base.nbytes
    assert index.params == {"block": 16384, "batch": 256} and index.query_keys == (
        "block",
        "batch",
    )


def test_faiss_flat_reports_what_it_holds(clustered):
    base, _ = clustered
    index = FaissFlatIndex().build(base)
    assert base.nbytes <= index.memory_bytes < base.nbytes + 4096


def test_rerank_scores_each_candidate_set_exactly(clustered):
    base, queries = clustered
    rng = np.random.default_rng(0)
    candidates = [rng.choice(len(base), size, replace=False) for size in (0, 3, 50, 400)]
    rows, scores = rerank(base, queries[:4], candidates, 5)
    assert (rows[0] == MISSING_ROW).all() and np.isneginf(scores[0]).all()
    assert (rows[1, 3:] == MISSING_ROW).all()
    for i in (1, 2, 3):
        sub = np.sort(candidates[i])
        want_rows, want_scores = brute_force(base[sub], queries[i : i + 1], 5)
        got = rows[i][rows[i] != MISSING_ROW]
        np.testing.assert_array_equal(got, sub[want_rows[0, : len(got)]])
        np.testing.assert_allclose(scores[i, : len(got)], want_scores[0, : len(got)], atol=1e-5)


def test_best_k_is_a_full_sort_of_each_candidate_set():
    # `base.pad` sorts everything; best_k selects. Scores from a few values make many ties.
    rng = np.random.default_rng(1)
    sizes = (0, 1, 4, 9, 300, 5000)
    rows = [rng.permutation(20_000)[:size] for size in sizes]
    scores = [rng.integers(0, 6, size).astype(np.float32) / 5 for size in sizes]
    for k in (1, 4, 50):
        got, want = best_k(rows, scores, k), pad(rows, scores, k)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_faiss_results_marks_unfilled_places():
    distances = np.array([[0.9, -3.4028235e38]], dtype=np.float32)
    labels = np.array([[4, -1]])
    rows, scores = faiss_results(distances, labels)
    assert rows.tolist() == [[4, MISSING_ROW]] and rows.dtype == np.int64
    assert scores[0, 0] == np.float32(0.9) and np.isneginf(scores[0, 1])
