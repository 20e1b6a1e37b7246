"""Evaluation at scale: queries ranked a block at a time and cut to their top `depth`, against
the plain path it replaced (one (Q, N) score matrix, every row stably sorted whole) and the
loop-by-loop metrics of DESIGN.md, on galleries with many exact ties."""

from __future__ import annotations

import tracemalloc
from collections.abc import Sequence

import numpy as np
import pytest

from core.choices import METRIC_NAMES
from core.measure.evaluation import (
    Ranking,
    _blocks,
    _feedback_ranking,
    _label_ranking,
    _rank,
)
from core.store import ImageRecord
from tests.measure.test_evaluation import mean_of, reference_query

DEPTH = 12


def exact_vectors(rng: np.random.Generator, n: int, levels: int) -> np.ndarray:
    """(n, 16) float32 with entries j / levels, |j| <= levels <= 256: every dot product and
    partial sum is a whole number of 2**-16 below 2**8, exact in float32 in any summation order,
    so blocked and full products agree to the bit on any BLAS, and equal scores really tie.
    Few levels give a handful of distinct scores (ties everywhere), 256 give few ties."""
    return (rng.integers(-levels, levels + 1, size=(n, 16)) / levels).astype(np.float32)


def gallery(seed: int, levels: int, n: int = 300) -> tuple[list[ImageRecord], np.ndarray]:
    """Records in catalog order: five labels, a label of one image (its query counts nowhere),
    unlabelled images (ranked, never queries); some vectors repeated (tied with everything)."""
    rng = np.random.default_rng(seed)
    vectors = exact_vectors(rng, n, levels)
    vectors[n // 2 : n // 2 + 20] = vectors[7]  # duplicates
    labels: list[str | None] = [f"label-{i}" for i in rng.integers(0, 5, size=n)]
    labels[3] = "alone"
    for i in rng.choice(n, size=n // 10, replace=False):
        labels[i] = None if i != 3 else labels[i]
    records = [
        ImageRecord(f"img-{i:04d}", "x.png", label, "train", 1, 1, "x.png", "test")
        for i, label in enumerate(labels)
    ]
    return records, vectors


def full_sort(query: np.ndarray, query_id: str, ids: list[str], vectors: np.ndarray) -> list[str]:
    """The old path for one query: every score, the query itself out, a whole stable sort."""
    scores = (vectors @ query).astype(np.float64)  # (N,) exact, see `exact_vectors`
    order = np.argsort(-scores, kind="stable")  # ties: lower catalog position first
    return [ids[j] for j in order if ids[j] != query_id]


def assert_matches_reference(
    ranking: Ranking,
    expected: dict[str, list[str]],
    gains: dict[str, dict[str, float]],
    ks: Sequence[int],
) -> None:
    """Ranked ids equal the full sort's head; per-query and mean metrics equal the loops'."""
    assert ranking.query_ids == list(expected)
    for row, query in enumerate(ranking.query_ids):
        shown = [i for i in ranking.ranked_ids[row] if i is not None]
        assert shown == expected[query][: len(shown)], query
        assert len(shown) == min(DEPTH, len(expected[query]))
    for k in ks:
        per_query = ranking.metrics(k)
        want = {q: reference_query(expected[q], gains[q], k) for q in ranking.query_ids}
        counted = [q for q, metrics in want.items() if metrics is not None]
        assert [ranking.query_ids[i] for i in per_query["query"]] == counted
        for name in METRIC_NAMES:
            reference = [want[q][name] for q in counted]  # type: ignore[index]
            np.testing.assert_allclose(per_query[name], reference, rtol=0, atol=1e-12)
        summary = ranking.summary(k)
        assert (summary.n_queries, summary.n_excluded) == (len(counted), len(want) - len(counted))
        for name, value in mean_of([want[q] for q in counted]).items():  # type: ignore[misc]
            assert getattr(summary, name) == pytest.approx(value, rel=0, abs=1e-12), (k, name)


@pytest.mark.parametrize("levels", [1, 2, 256])
@pytest.mark.parametrize("block_bytes", [1, 1 << 30])  # 64-row blocks, or one block
def test_label_ranking_in_blocks_equals_the_full_sort(levels: int, block_bytes: int) -> None:
    records, vectors = gallery(seed=levels, levels=levels)
    ids = [r.id for r in records]
    queries = [i for i, r in enumerate(records) if r.label]
    row_bytes = len(records) * 4
    assert len(_blocks(len(queries), row_bytes, block_bytes)) == (4 if block_bytes == 1 else 1)

    ranking = _label_ranking(records, vectors, DEPTH, block_bytes)
    assert ranking.ideal_gains is None  # binary: n_relevant ones, from the label counts
    assert ranking.gains.shape == ranking.ranked_ids.shape == (len(queries), DEPTH)
    expected = {ids[i]: full_sort(vectors[i], ids[i], ids, vectors) for i in queries}
    gains = {ids[i]: {r.id: 1.0 for r in records if r.label == records[i].label} for i in queries}
    assert_matches_reference(ranking, expected, gains, ks=(1, 5, DEPTH))
    assert ranking.summary(DEPTH).n_excluded == 1  # "alone"


@pytest.mark.parametrize("levels", [1, 256])
def test_feedback_ranking_in_blocks_equals_the_full_sort(levels: int) -> None:
    """Graded gains; queries in the split and outside it (uploads); some queries with more
    relevant items than `depth` (their ideal gains are kept `depth` deep), some with none."""
    records, vectors = gallery(seed=10 + levels, levels=levels)
    ids = [r.id for r in records]
    rng = np.random.default_rng(levels)
    inside = [ids[i] for i in rng.choice(len(ids), size=150, replace=False)]
    uploads = {f"upload-{n}": v for n, v in enumerate(exact_vectors(rng, 40, levels))}
    vector_of = dict(zip(ids, vectors, strict=True)) | uploads
    judgements: dict[str, dict[str, float]] = {}
    for n, query in enumerate([*inside, *uploads]):
        judged = rng.choice(ids, size=[3, 40][n % 2], replace=False)  # 40 > DEPTH
        grades = rng.integers(0, 4, len(judged))
        judgements[query] = {i: float(g) for i, g in zip(judged, grades, strict=True)}
        judgements[query][query] = 3.0  # a query judged against itself does not count
        judgements[query]["not-in-the-split"] = 2.0
    judgements[inside[0]] = {ids[1]: 0.0}  # nothing relevant: a query, excluded and counted

    def lookup(wanted: Sequence[str]) -> dict[str, np.ndarray]:
        return {q: vector_of[q] for q in wanted}

    ranking = _feedback_ranking(records, vectors, judgements, lookup, DEPTH, {}, block_bytes=1)
    assert ranking.ideal_gains is not None and ranking.ideal_gains.shape[1] == DEPTH
    assert max(ranking.n_relevant) > DEPTH
    queries = sorted(judgements)
    expected = {q: full_sort(vector_of[q], q, ids, vectors) for q in queries}
    assert_matches_reference(ranking, expected, judgements, ks=(1, 5, DEPTH))


def test_a_query_ranking_the_whole_split_meets_itself_last() -> None:
    records, vectors = gallery(seed=3, levels=2, n=150)
    ids = [r.id for r in records]
    judgements = {ids[5]: {ids[6]: 2.0}, "upload": {ids[6]: 1.0}}
    found = {ids[5]: vectors[5], "upload": vectors[9]}
    n = len(ids)
    ranking = _feedback_ranking(records, vectors, judgements, lambda _: found, n, {}, 1)
    assert ranking.ranked_ids[ranking.query_ids.index(ids[5]), -1] is None  # itself: no result
    assert list(ranking.ranked_ids[ranking.query_ids.index("upload")]) == full_sort(
        vectors[9], "upload", ids, vectors
    )


def test_blocks_cover_the_queries_in_aligned_steps_within_budget() -> None:
    assert _blocks(0, 400, 1) == []
    assert _blocks(1, 400, 1) == [(0, 1)]
    assert _blocks(100, 400, 1) == [(0, 100)]  # never a block under 64 rows: no short tail
    assert _blocks(200, 400, 1) == [(0, 64), (64, 128), (128, 200)]
    assert _blocks(1000, 400, 400 * 300) == [(0, 256), (256, 512), (512, 768), (768, 1000)]
    assert _blocks(1000, 400, 400 * 500) == [(0, 448), (448, 896), (896, 1000)]  # 104 rows: kept
    assert _blocks(1000, 400, 400 * 1000) == [(0, 1000)]
    for n_rows in (63, 64, 65, 127, 128, 129, 5000):
        for budget in (1, 400 * 64, 400 * 100, 400 * 777):
            blocks = _blocks(n_rows, 400, budget)
            assert [start for start, _ in blocks[1:]] == [stop for _, stop in blocks[:-1]]
            assert (blocks[0][0], blocks[-1][1]) == (0, n_rows)
            assert all(start % 64 == 0 for start, _ in blocks)
            assert all(stop - start >= 64 for start, stop in blocks) or len(blocks) == 1
            step = blocks[0][1] - blocks[0][0]
            assert step * 400 <= max(budget, 400 * 64) or len(blocks) == 1
            assert all(stop - start < step + 64 for start, stop in blocks)


def test_ranking_never_holds_a_query_by_gallery_matrix() -> None:
    """tracemalloc sees numpy's buffers: one (Q, N) float32 product is 36 MB here; ranking the
    same queries in 64-row blocks (0.77 MB of scores each) peaks at about three blocks."""
    rng = np.random.default_rng(0)
    vectors = exact_vectors(rng, 3000, 256)
    full_bytes, block = 3000 * 3000 * 4, 64 * 3000 * 4
    tracemalloc.start()
    try:
        scores = vectors @ vectors.T
        whole = tracemalloc.get_traced_memory()[1]
        del scores
        tracemalloc.reset_peak()
        ranked = _rank(vectors, vectors, np.arange(3000), DEPTH, block_bytes=block)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert whole >= full_bytes  # the measurement counts numpy arrays
    assert peak < 5 * block < full_bytes / 8
    assert ranked.shape == (3000, DEPTH)
    assert ranked[:5].tolist() == [full_sort_rows(vectors, q) for q in range(5)]


def full_sort_rows(vectors: np.ndarray, q: int) -> list[int]:
    scores = (vectors @ vectors[q]).astype(np.float64)
    scores[q] = -np.inf
    return np.argsort(-scores, kind="stable")[:DEPTH].tolist()
