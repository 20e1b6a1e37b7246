"""core.measure.metrics against independent references: the seed's worked examples, plain-loop
implementations of DESIGN.md's definitions, and scikit-learn where the definitions coincide."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, ndcg_score

from core.measure import metrics as m

# --- brute-force references, written from the definitions with plain loops ----------------------


def ref_reciprocal_rank(gains: list[float], k: int) -> float:
    for i in range(1, k + 1):
        if i <= len(gains) and gains[i - 1] > 0:
            return 1.0 / i
    return 0.0


def ref_relevant_in_top(gains: list[float], i: int) -> int:
    count = 0
    for j in range(min(i, len(gains))):
        if gains[j] > 0:
            count += 1
    return count


def ref_precision(gains: list[float], k: int) -> float:
    return ref_relevant_in_top(gains, k) / k


def ref_recall(gains: list[float], n_relevant: int, k: int) -> float:
    return ref_relevant_in_top(gains, k) / n_relevant


def ref_average_precision(gains: list[float], n_relevant: int, k: int, variant: str) -> float:
    total = 0.0
    for i in range(1, k + 1):
        rel_i = 1 if i <= len(gains) and gains[i - 1] > 0 else 0
        total += ref_relevant_in_top(gains, i) / i * rel_i  # P@i · rel_i
    denominator = n_relevant if variant == "relevant" else ref_relevant_in_top(gains, k)
    return total / denominator if denominator else 0.0


def ref_dcg(gains: list[float], k: int) -> float:
    total = 0.0
    for i in range(1, k + 1):
        if i <= len(gains):
            total += gains[i - 1] / math.log2(i + 1)
    return total


def ref_ndcg(gains: list[float], all_relevant_gains: list[float], k: int) -> float:
    return ref_dcg(gains, k) / ref_dcg(sorted(all_relevant_gains, reverse=True), k)


def make_queries(seed: int, n_queries: int = 40, split: int = 30, length: int = 20):
    """Random graded relevance: each query's split has `split` items, its list the first `length`
    of a random permutation, so some relevant items go unretrieved. Two queries have none."""
    rng = random.Random(seed)
    ranked, ideal, n_relevant = [], [], []
    for q in range(n_queries):
        pool = [rng.choice([0, 0, 0, 1, 2, 3]) for _ in range(split)]
        if q in (3, 17):
            pool = [0] * split  # no relevant item anywhere in the split
        rng.shuffle(pool)
        ranked.append(pool[:length])
        relevant = [g for g in pool if g > 0]
        ideal.append(relevant + [0] * (split - len(relevant)))  # zero-padded
        n_relevant.append(len(relevant))
    return ranked, ideal, n_relevant


def binary(rows: list[list[float]]) -> list[list[float]]:
    return [[1.0 if g > 0 else 0.0 for g in row] for row in rows]


# --- the seed's worked examples -----------------------------------------------------------


def test_seed_ndcg_example():
    rel = np.array([[0, 5, 1, 4, 2]], dtype=float)
    assert m.dcg_at_k(rel, 5)[0] == pytest.approx(6.151, abs=5e-4)
    assert m.dcg_at_k(np.array([[5, 4, 2, 1, 0]]), 5)[0] == pytest.approx(8.9543, abs=5e-4)
    assert m.ndcg_at_k(rel, rel, 5)[0] == pytest.approx(0.6869, abs=5e-4)
    result = m.ranking_metrics(rel, [4], 5, ideal_gains=rel)
    assert result.ndcg_at_k == pytest.approx(0.6869, abs=5e-4)


def test_seed_mrr_example_both_rankings_give_one_half():
    rr = m.reciprocal_rank(np.array([[0, 1, 1, 1], [0, 1, 0, 0]]), 4)
    np.testing.assert_allclose(rr, [0.5, 0.5])
    assert m.ranking_metrics(np.array([[0, 1, 1, 1], [0, 1, 0, 0]]), [3, 1], 4).mrr == 0.5


# --- brute-force agreement on random data ----------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 10, 20, 50])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_query_functions_match_loops(k, seed):
    ranked, ideal, n_rel = make_queries(seed)
    rel, bin_rel = np.array(ranked, dtype=float), binary(ranked)
    valid = [q for q in range(len(ranked)) if n_rel[q] > 0]
    expected = {
        "rr": [ref_reciprocal_rank(r, k) for r in bin_rel],
        "precision": [ref_precision(r, k) for r in bin_rel],
        "recall": [ref_recall(bin_rel[q], n_rel[q], k) for q in valid],
        "dcg": [ref_dcg(r, k) for r in ranked],
        "ndcg": [ref_ndcg(ranked[q], ideal[q], k) for q in valid],
    }
    np.testing.assert_allclose(m.reciprocal_rank(rel, k), expected["rr"])
    np.testing.assert_allclose(m.precision_at_k(rel, k), expected["precision"])
    np.testing.assert_allclose(m.recall_at_k(rel, n_rel, k)[valid], expected["recall"])
    np.testing.assert_allclose(m.dcg_at_k(rel, k), expected["dcg"])
    np.testing.assert_allclose(m.ndcg_at_k(rel, ideal, k)[valid], expected["ndcg"])
    for variant in m.AP_VARIANTS:
        want = [ref_average_precision(r, n_rel[q], k, variant) for q, r in enumerate(bin_rel)]
        np.testing.assert_allclose(m.average_precision(rel, n_rel, k, variant), want)


@pytest.mark.parametrize("k", [1, 3, 10, 50])
@pytest.mark.parametrize("variant", ["relevant", "retrieved"])
def test_ranking_metrics_graded_match_loops(k, variant):
    ranked, ideal, n_rel = make_queries(seed=7)
    got = m.ranking_metrics(ranked, n_rel, k, ideal_gains=ideal, ap_variant=variant)
    valid = [q for q in range(len(ranked)) if n_rel[q] > 0]
    bin_rel = binary(ranked)
    assert (got.k, got.n_queries, got.n_excluded) == (k, len(valid), 2)
    assert got.mrr == pytest.approx(np.mean([ref_reciprocal_rank(bin_rel[q], k) for q in valid]))
    assert got.precision_at_k == pytest.approx(
        np.mean([ref_precision(bin_rel[q], k) for q in valid])
    )
    assert got.recall_at_k == pytest.approx(
        np.mean([ref_recall(bin_rel[q], n_rel[q], k) for q in valid])
    )
    assert got.map == pytest.approx(
        np.mean([ref_average_precision(bin_rel[q], n_rel[q], k, variant) for q in valid])
    )
    assert got.ndcg_at_k == pytest.approx(
        np.mean([ref_ndcg(ranked[q], ideal[q], k) for q in valid])
    )


@pytest.mark.parametrize("k", [1, 3, 10, 50])
def test_ranking_metrics_binary_default_ideal_matches_loops(k):
    ranked, _, n_rel = make_queries(seed=11)
    bin_rel = binary(ranked)
    got = m.ranking_metrics(np.array(bin_rel), np.array(n_rel), k)
    valid = [q for q in range(len(ranked)) if n_rel[q] > 0]
    want = np.mean([ref_ndcg(bin_rel[q], [1.0] * n_rel[q], k) for q in valid])
    assert got.ndcg_at_k == pytest.approx(want)
    per = m.per_query_metrics(np.array(bin_rel), n_rel, k)
    assert per["query"].tolist() == valid
    want_ap = [ref_average_precision(bin_rel[q], n_rel[q], k, "relevant") for q in valid]
    np.testing.assert_allclose(per["map"], want_ap)
    assert set(per) == {"query", *m.METRIC_NAMES}


# --- scikit-learn where the definitions coincide ---------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 10, 20])
def test_ndcg_matches_sklearn_when_all_relevant_items_are_listed(k):
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 4, size=(25, 20)).astype(float)  # gains per item
    y_true[y_true.sum(axis=1) == 0, 0] = 1.0  # sklearn scores all-zero rows as 0
    y_score = rng.permutation(25 * 20).reshape(25, 20).astype(float)  # distinct: no ties
    order = m.rank_by_scores(y_score)
    ranked = np.take_along_axis(y_true, order, axis=1)
    ours = m.ndcg_at_k(ranked, y_true, k)
    theirs = [ndcg_score(y_true[q : q + 1], y_score[q : q + 1], k=k) for q in range(25)]
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)


def test_average_precision_matches_sklearn_with_full_lists():
    rng = np.random.default_rng(5)
    y_true = (rng.random((25, 20)) < 0.3).astype(float)
    y_true[y_true.sum(axis=1) == 0, 3] = 1.0
    y_score = rng.permutation(25 * 20).reshape(25, 20).astype(float)
    ranked = np.take_along_axis(y_true, m.rank_by_scores(y_score), axis=1)
    n_rel = y_true.sum(axis=1)  # every relevant item is in the list
    theirs = [average_precision_score(y_true[q], y_score[q]) for q in range(25)]
    for variant in m.AP_VARIANTS:
        np.testing.assert_allclose(m.average_precision(ranked, n_rel, 20, variant), theirs)


# --- edge cases ---------------------------------------------------------------------------


def test_query_without_relevant_items_is_excluded_and_counted():
    rel = np.array([[1, 0, 0], [0, 0, 0], [0, 1, 0]], dtype=float)
    got = m.ranking_metrics(rel, [1, 0, 2], 3)
    assert (got.n_queries, got.n_excluded) == (2, 1)
    assert got.mrr == pytest.approx((1.0 + 0.5) / 2)
    assert got.recall_at_k == pytest.approx((1.0 + 0.5) / 2)


def test_no_valid_query_gives_zeros_not_nan():
    got = m.ranking_metrics(np.zeros((2, 4)), [0, 0], 3)
    assert got.as_dict() == {
        "k": 3,
        "n_queries": 0,
        "n_excluded": 2,
        "mrr": 0.0,
        "map": 0.0,
        "precision_at_k": 0.0,
        "recall_at_k": 0.0,
        "ndcg_at_k": 0.0,
    }


def test_k_larger_than_the_list():
    got = m.ranking_metrics(np.array([[1.0, 0.0, 1.0]]), [2], 10)
    assert got.precision_at_k == pytest.approx(2 / 10)  # denominator stays k
    assert got.recall_at_k == 1.0
    assert got.map == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert got.ndcg_at_k == pytest.approx((1 + 1 / 2) / (1 + 1 / math.log2(3)))


def test_empty_lists_count_as_no_hits():
    got = m.ranking_metrics(np.zeros((2, 0)), [1, 3], 5)
    assert (got.n_queries, got.mrr, got.map, got.precision_at_k, got.ndcg_at_k) == (2, 0, 0, 0, 0)


def test_rank_by_scores_breaks_ties_by_lower_index():
    scores = np.array([[0.5, 0.9, 0.5, 0.9, -np.inf], [0.0, 0.0, 0.0, 0.0, 0.0]])
    assert m.rank_by_scores(scores).tolist() == [[1, 3, 0, 2, 4], [0, 1, 2, 3, 4]]
    many_ties = np.random.default_rng(9).integers(0, 4, size=(5, 300)).astype(float)
    want = [sorted(range(300), key=lambda j, row=row: -row[j]) for row in many_ties.tolist()]
    assert m.rank_by_scores(many_ties).tolist() == want  # Python's sort is stable


def full_sort_head(scores: np.ndarray, depth: int) -> list[list[int]]:
    """The first `depth` columns of every row sorted whole by Python's stable sort."""
    return [sorted(range(len(row)), key=lambda j, row=row: -row[j])[:depth] for row in scores]


@pytest.mark.parametrize("depth", [1, 3, 10, 49, 50, 64])
@pytest.mark.parametrize("n_values", [2, 5, 1000])
def test_top_by_scores_is_the_head_of_the_full_stable_sort(depth, n_values):
    """Few distinct scores make long runs of ties at the depth-th score, across chunks."""
    rng = np.random.default_rng(depth * 7 + n_values)
    for n in (50, 1000, 2100):  # 1000 and 2100 columns: chunks several columns wide
        scores = rng.integers(0, n_values, size=(12, n)).astype(np.float32)
        scores[0] = 1.0  # a whole row tied
        scores[1, ::3] = -np.inf  # e.g. the query itself pushed out
        scores[2, :] = -np.inf
        got = m.top_by_scores(scores, depth)
        assert got.dtype == np.int64
        assert got.tolist() == full_sort_head(scores.tolist(), depth)
        assert got.tolist() == m.rank_by_scores(scores)[:, :depth].tolist()


def test_top_by_scores_ties_split_by_the_partition_keep_the_lower_columns():
    # the 3rd best score, 0.5, is held by five columns; only the two lowest of them make the cut
    scores = np.array([[0.5, 0.1, 0.9, 0.5, 0.5, 0.9, 0.5, 0.5], [0.0] * 8])
    assert m.top_by_scores(scores, 4).tolist() == [[2, 5, 0, 3], [0, 1, 2, 3]]
    wide = np.zeros((1, 3000))
    wide[0, [2999, 1500, 7, 2000]] = 1.0  # four tied best, spread over distant chunks
    assert m.top_by_scores(wide, 3).tolist() == [[7, 1500, 2000]]
    assert m.top_by_scores(wide, 6).tolist() == [[7, 1500, 2000, 2999, 0, 1]]


def test_top_by_scores_shapes():
    scores = np.random.default_rng(4).random((3, 5))
    assert m.top_by_scores(scores, 9).tolist() == m.rank_by_scores(scores).tolist()  # depth > N
    assert m.top_by_scores(np.zeros((0, 5)), 2).shape == (0, 2)
    assert m.top_by_scores(np.zeros((2, 0)), 2).shape == (2, 0)


def test_truncated_ideal_gains_give_the_same_ndcg_up_to_their_width():
    ranked, ideal, n_rel = make_queries(seed=13)
    for width in (3, 10):
        top = [sorted(row, reverse=True)[:width] for row in ideal]  # each query's largest gains
        for k in range(1, width + 1):
            full = m.per_query_metrics(ranked, n_rel, k, ideal_gains=ideal)
            cut = m.per_query_metrics(ranked, n_rel, k, ideal_gains=top)
            for name, values in full.items():
                np.testing.assert_array_equal(cut[name], values, err_msg=name)
        with pytest.raises(ValueError, match=f"IDCG@{width + 1} needs"):
            m.per_query_metrics(ranked, n_rel, width + 1, ideal_gains=top)
    whole = [sorted(row, reverse=True)[: max(n_rel)] for row in ideal]  # no row is cut
    assert m.ranking_metrics(ranked, n_rel, 30, ideal_gains=whole) == m.ranking_metrics(
        ranked, n_rel, 30, ideal_gains=ideal
    )


def test_all_items_relevant():
    rel = np.ones((2, 5))
    exact = m.ranking_metrics(rel, [5, 5], 5).as_dict()
    assert [exact[name] for name in m.METRIC_NAMES] == [1.0] * 5
    longer_k = m.ranking_metrics(rel, [5, 5], 8)
    assert longer_k.precision_at_k == pytest.approx(5 / 8)  # only 5 items for a cutoff of 8
    assert (longer_k.mrr, longer_k.map, longer_k.recall_at_k, longer_k.ndcg_at_k) == (1, 1, 1, 1)
    short_k = m.ranking_metrics(rel, [5, 5], 3)
    assert (short_k.mrr, short_k.precision_at_k, short_k.ndcg_at_k) == (1, 1, 1)
    assert short_k.recall_at_k == pytest.approx(3 / 5)
    assert short_k.map == pytest.approx(3 / 5)  # "relevant" divides by |R| = 5
    assert m.ranking_metrics(rel, [5, 5], 3, ap_variant="retrieved").map == 1.0


def test_label_relevance():
    ranked = np.array([["cat", "dog", "cat"], ["dog", "dog", "cat"]])
    got = m.label_relevance(ranked, np.array(["cat", "dog"]))
    assert got.tolist() == [[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]
    assert got.dtype == np.float64


def test_wilson_interval_against_formula():
    z, s, n = 1.96, 8, 10
    p = s / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = (z / (1 + z * z / n)) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = m.wilson_interval(s, n)
    assert (low, high) == pytest.approx((centre - half, centre + half))
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=5e-5)
    assert m.wilson_interval(0, 0) == (0.0, 1.0)
    assert m.wilson_interval(0, 10)[0] == 0.0
    assert m.wilson_interval(10, 10)[1] == 1.0


def test_ctr():
    assert m.ctr(3, 12) == 0.25
    assert m.ctr(0, 0) == 0.0


# --- bad arguments ------------------------------------------------------------------------

REL = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])


@pytest.mark.parametrize("k", [0, -1, 2.5, True, "3"])
def test_bad_k(k):
    with pytest.raises(ValueError, match="k must be"):
        m.ranking_metrics(REL, [2, 1], k)
    with pytest.raises(ValueError, match="k must be"):
        m.precision_at_k(REL, k)


def test_bad_ap_variant_lists_valid_names():
    with pytest.raises(ValueError, match="relevant, retrieved"):
        m.average_precision(REL, [2, 1], 3, variant="interpolated")
    with pytest.raises(ValueError, match="relevant, retrieved"):
        m.ranking_metrics(REL, [2, 1], 3, ap_variant="bogus")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: m.ranking_metrics(REL[0], [2], 3), "2-D"),
        (lambda: m.ranking_metrics(-REL, [2, 1], 3), "negative"),
        (lambda: m.ranking_metrics(REL * np.nan, [2, 1], 3), "finite"),
        (lambda: m.ranking_metrics(REL, [2, 1, 1], 3), "shape"),
        (lambda: m.ranking_metrics(REL, [2, 1.5], 3), "whole numbers"),
        (lambda: m.ranking_metrics(REL, [1, 1], 3), "truncated"),
        (lambda: m.recall_at_k(REL, [2, 0], 3), "truncated"),
        (lambda: m.ranking_metrics(REL, [2, 1], 3, ideal_gains=np.ones((3, 2))), "rows"),
        (lambda: m.ranking_metrics(REL, [2, 1], 3, ideal_gains=np.ones((2, 3))), "exactly"),
        (lambda: m.ranking_metrics(REL * 2, [2, 1], 3), "ideal gains"),
        (lambda: m.ndcg_at_k([[3.0, 1.0]], [[1.0, 1.0]], 2), "ideal gains"),
        (lambda: m.ndcg_at_k([[1.0, 1.0]], [[2.0, 0.0]], 2), "more relevant"),
        (lambda: m.rank_by_scores([1.0, 2.0]), "2-D"),
        (lambda: m.rank_by_scores([[1.0, np.nan]]), "NaN"),
        (lambda: m.top_by_scores([1.0, 2.0], 1), "2-D"),
        (lambda: m.top_by_scores([[1.0, 2.0, np.nan]], 1), "NaN"),
        (lambda: m.top_by_scores([[np.nan] * 3], 1), "NaN"),
        (lambda: m.top_by_scores([[1.0, 2.0]], 0), "depth must"),
        (
            lambda: m.ranking_metrics(REL, [2, 1], 3, ideal_gains=[[1.0, 0.0], [1.0, 1.0]]),
            "exactly",
        ),
        (lambda: m.ranking_metrics(REL, [2, 1], 3, ideal_gains=[[1.0], [1.0]]), "needs its 3"),
        (lambda: m.label_relevance([["a"]], ["a", "b"]), "query_labels"),
        (lambda: m.wilson_interval(11, 10), "successes"),
        (lambda: m.wilson_interval(1, 10, z=0.0), "z must"),
        (lambda: m.ctr(-1, 10), "clicks"),
        (lambda: m.ctr(5, 4), "clicks"),
    ],
)
def test_bad_arguments_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()
