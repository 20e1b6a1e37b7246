"""Ranking metrics on arrays: pure functions, no I/O, vectorised over queries.

The definitions are DESIGN.md's "Metrics, exactly". For one query the ranking is the split's
images minus the query itself, best first; `k` is the cutoff and R the query's relevant items in
the split. Every function takes the relevance of the ranked lists, not the items:

- `rel` `(Q, L)`: the gain of the item at each rank, best first, one row per query, with the
  query itself already removed. An item is relevant when its gain is > 0; mrr, precision,
  recall and AP use only that binary view, nDCG uses the gains themselves (linear gains).
  Lists may be shorter than `k` (`L < k`): missing positions count as non-relevant.
- `n_relevant` `(Q,)`: |R|, the number of the query's relevant items in the whole split,
  retrieved or not. It can never be smaller than the relevant items present in `rel`.
- `ideal_gains` `(Q, M)`: the gains of each query's relevant items, in any order, zero-padded;
  nDCG's ideal ordering is built from these, not from what was retrieved. IDCG@k needs only the
  k largest, so a row may hold just its M largest gains when |R| > M, good for cutoffs k <= M.

Queries with no relevant item anywhere are left out of the means and counted in `n_excluded`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from core.choices import AP_VARIANTS, METRIC_NAMES

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


# --- argument checks -------------------------------------------------------------------------


def _check_k(k: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {k!r}")
    return int(k)


def _check_variant(variant: str) -> None:
    if variant not in AP_VARIANTS:
        raise ValueError(f"unknown AP variant {variant!r}; valid names: {', '.join(AP_VARIANTS)}")


def _as_gains(values: npt.ArrayLike, name: str, n_rows: int | None = None) -> FloatArray:
    """`values` as a finite, non-negative float64 `(Q, L)` array, or ValueError."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (Q, L), got shape {arr.shape}")
    if n_rows is not None and arr.shape[0] != n_rows:
        raise ValueError(f"{name} has {arr.shape[0]} rows but rel has {n_rows} queries")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    if (arr < 0).any():
        raise ValueError(f"{name} must not contain negative gains")
    return arr


def _as_counts(n_relevant: npt.ArrayLike, rel: FloatArray) -> IntArray:
    """`n_relevant` as int64 `(Q,)`, checked against the relevant items present in `rel`."""
    arr = np.asarray(n_relevant, dtype=np.float64)
    if arr.shape != (rel.shape[0],):
        raise ValueError(f"n_relevant must have shape ({rel.shape[0]},), got {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any() or (arr != np.round(arr)).any():
        raise ValueError("n_relevant must hold non-negative whole numbers")
    counts = arr.astype(np.int64)
    present = (rel > 0).sum(axis=1)  # (Q,)
    short = np.flatnonzero(counts < present)
    if short.size:
        q = int(short[0])
        raise ValueError(
            f"query {q}: n_relevant is {counts[q]} but its ranked list holds {present[q]} relevant"
            " items; n_relevant must count all of the query's relevant items (was R truncated?)"
        )
    return counts


def _check_ideal(ideal: FloatArray, n_rel: IntArray, k: int) -> None:
    """Refuse ideal gains that are not all of each query's relevant gains or, for a query with
    more than M, its M largest (unchecked) when the cutoff k needs no more than those M."""
    width = ideal.shape[1]
    if ((ideal > 0).sum(axis=1) != np.minimum(n_rel, width)).any():
        raise ValueError(
            "ideal_gains must hold exactly n_relevant positive gains per row (or, when a query "
            "has more relevant items than ideal_gains has columns, its largest gains in all)"
        )
    cut = np.flatnonzero(n_rel > width)
    if k > width and cut.size:
        q = int(cut[0])
        raise ValueError(
            f"query {q}: ideal_gains holds {width} of its {n_rel[q]} relevant gains, but IDCG@{k}"
            f" needs its {k} largest; keep at least k ideal gains per query"
        )


def _check_dominated(window: FloatArray, ideal: FloatArray) -> None:
    """Refuse top-k gains that the ideal gains cannot account for (IDCG would be too small)."""
    w = window.shape[1]
    got = -np.sort(-window, axis=1)  # (Q, w) retrieved gains, best first
    best = -np.sort(-ideal, axis=1)[:, :w]  # (Q, <= w) ideal gains, best first
    best = np.pad(best, ((0, 0), (0, w - best.shape[1])))  # (Q, w)
    bad = np.flatnonzero((got > best).any(axis=1))
    if bad.size:
        raise ValueError(
            f"query {int(bad[0])}: the gains in its top k are not among its ideal gains; "
            "ideal_gains (default: n_relevant ones) must hold the gains of all relevant items"
        )


# --- kernels on checked arrays ------------------------------------------------------------------


def _window(rel: FloatArray, k: int) -> FloatArray:
    """The top-k part of each list `(Q, min(k, L))`; an empty list becomes one non-relevant slot."""
    if rel.shape[1] == 0:
        return np.zeros((rel.shape[0], 1))
    return rel[:, :k]


def _safe_div(num: FloatArray, den: npt.ArrayLike) -> FloatArray:
    """num / den, with 0.0 wherever den == 0."""
    den_ = np.broadcast_to(np.asarray(den, dtype=np.float64), num.shape)
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den_, out=out, where=den_ > 0)
    return out


def _dcg(window: FloatArray) -> FloatArray:
    discounts = 1.0 / np.log2(np.arange(2, window.shape[1] + 2, dtype=np.float64))  # (w,)
    return (window * discounts).sum(axis=1)  # (Q,)


def _idcg(ideal: FloatArray, k: int) -> FloatArray:
    return _dcg(-np.sort(-ideal, axis=1)[:, :k])  # ideal ordering: best gains first, cut at k


def _reciprocal_rank(hits: BoolArray) -> FloatArray:
    first = hits.argmax(axis=1)  # (Q,) 0-based rank of the first hit (0 when there is none)
    return np.where(hits.any(axis=1), 1.0 / (first + 1.0), 0.0)


def _average_precision(hits: BoolArray, n_rel: IntArray, variant: str) -> FloatArray:
    seen = np.cumsum(hits, axis=1)  # (Q, w) relevant items in the top i
    precision_at_i = seen / np.arange(1, hits.shape[1] + 1)  # (Q, w) P@i
    total = (precision_at_i * hits).sum(axis=1)  # (Q,) Σ P@i · rel_i
    return _safe_div(total, n_rel if variant == "relevant" else seen[:, -1])


def _default_ideal(n_rel: IntArray, k: int) -> FloatArray:
    """Binary ideal gains `(Q, min(k, max |R|))`: |R| ones per row (only the first k matter)."""
    width = min(k, int(n_rel.max(initial=0)))
    return (np.arange(width)[None, :] < n_rel[:, None]).astype(np.float64)


# --- public per-query metrics ---------------------------------------------------------------


def rank_by_scores(scores: npt.ArrayLike) -> IntArray:
    """Rank `(Q, N)` similarity scores into `(Q, N)` column indices, best first.

    Ties are broken stably: the lower column index ranks first. `-inf` is allowed (e.g. to push
    the query itself to the end before dropping it); NaN is refused.
    """
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"scores must be 2-D (Q, N), got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError("scores must not contain NaN")
    return np.argsort(-arr, axis=1, kind="stable").astype(np.int64)


def top_by_scores(scores: npt.ArrayLike, depth: int) -> IntArray:
    """The first `depth` columns of `rank_by_scores(scores)`: `(Q, N)` -> `(Q, min(depth, N))`.

    Rows are never sorted whole. Each row is cut into chunks of about N / (32 depth) columns;
    the depth-th largest chunk maximum is a floor under the row's depth-th best score (depth
    chunks reach it, each with an item of its own). Only items of chunks reaching the floor and
    scoring at least the floor are sorted, by score then column: every item tied with the
    depth-th best score is among them, so ties are settled as the full stable sort settles them
    (lower column first). Scores keep their dtype (float32 ranks like its float64 copy).
    Memory beside `scores`: some 30 bytes per item of a chunk reaching the floor, usually about
    N / 32 items a row; the whole row when ties bring every chunk to the floor.
    """
    depth = _check_k(depth, "depth")
    arr = np.asarray(scores)
    if arr.ndim != 2:
        raise ValueError(f"scores must be 2-D (Q, N), got shape {arr.shape}")
    n_rows, n = arr.shape
    depth = min(depth, n)
    if n_rows == 0 or depth == 0:
        return np.zeros((n_rows, depth), np.int64)
    width = max(1, n // (32 * depth))  # columns per chunk: at least 32 depth chunks (or n)
    starts = np.arange(0, n, width)  # (C,) first column of each chunk
    peaks = np.maximum.reduceat(arr, starts, axis=1)  # (Q, C) each chunk's best score
    if np.isnan(peaks).any():  # a NaN is the maximum of its chunk
        raise ValueError("scores must not contain NaN")
    n_chunks = len(starts)
    floor = np.partition(peaks, n_chunks - depth, axis=1)[:, n_chunks - depth]  # (Q,)
    rows, chunks = np.nonzero(peaks >= floor[:, None])  # (H,) chunks that may hold a top item
    cols = starts[chunks][:, None] + np.arange(width)  # (H, width); the last chunk may be short
    values = arr[rows[:, None], np.minimum(cols, n - 1)]  # (H, width)
    keep = (cols < n) & (values >= floor[rows][:, None])  # at least depth per row
    rows = np.broadcast_to(rows[:, None], cols.shape)[keep]  # (P,) ascending
    cols, values = cols[keep], values[keep]  # (P,)
    order = np.lexsort((cols, -values, rows))  # by row, then best score, then column
    first = np.searchsorted(rows, np.arange(n_rows))  # (Q,) where each row's candidates start
    return cols[order[first[:, None] + np.arange(depth)]].astype(np.int64)


def reciprocal_rank(rel: npt.ArrayLike, k: int) -> FloatArray:
    """1/rank of the first relevant item within the top k, 0 if none there: `(Q, L)` -> `(Q,)`."""
    k = _check_k(k)
    return _reciprocal_rank(_window(_as_gains(rel, "rel"), k) > 0)


def precision_at_k(rel: npt.ArrayLike, k: int) -> FloatArray:
    """Relevant items in the top k / k: `(Q, L)` -> `(Q,)`.

    The denominator stays k even when a list is shorter than k, so a short list cannot reach 1.
    """
    k = _check_k(k)
    return (_window(_as_gains(rel, "rel"), k) > 0).sum(axis=1) / k


def recall_at_k(rel: npt.ArrayLike, n_relevant: npt.ArrayLike, k: int) -> FloatArray:
    """Relevant items in the top k / |R|: `(Q, L)`, `(Q,)` -> `(Q,)`; 0 where |R| == 0."""
    k = _check_k(k)
    rel_ = _as_gains(rel, "rel")
    n_rel = _as_counts(n_relevant, rel_)
    return _safe_div((_window(rel_, k) > 0).sum(axis=1).astype(np.float64), n_rel)


def average_precision(
    rel: npt.ArrayLike, n_relevant: npt.ArrayLike, k: int, variant: str = "relevant"
) -> FloatArray:
    """AP@k per query: `(Q, L)`, `(Q,)` -> `(Q,)`.

    AP@k = (1/D) · Σ_{i<=k} P@i · rel_i, where D = |R| for variant "relevant" (the default, so
    a query with more than k relevant items cannot reach 1) or D = the relevant items retrieved in
    the top k for variant "retrieved". 0 where D == 0.
    """
    k = _check_k(k)
    _check_variant(variant)
    rel_ = _as_gains(rel, "rel")
    n_rel = _as_counts(n_relevant, rel_)
    return _average_precision(_window(rel_, k) > 0, n_rel, variant)


def dcg_at_k(gains: npt.ArrayLike, k: int) -> FloatArray:
    """DCG@k = Σ_{i<=k} gain_i / log2(i + 1), linear gains: `(Q, L)` -> `(Q,)`."""
    k = _check_k(k)
    return _dcg(_window(_as_gains(gains, "gains"), k))


def ndcg_at_k(gains: npt.ArrayLike, ideal_gains: npt.ArrayLike, k: int) -> FloatArray:
    """DCG@k / IDCG@k: `(Q, L)` ranked gains, `(Q, M)` ideal gains -> `(Q,)`; 0 where IDCG == 0.

    IDCG@k is the DCG@k of `ideal_gains` sorted best first: the gains of ALL of the query's
    relevant items (any order, zero-padded), not only those retrieved.
    """
    k = _check_k(k)
    gains_ = _as_gains(gains, "gains")
    ideal = _as_gains(ideal_gains, "ideal_gains", n_rows=gains_.shape[0])
    if ((gains_ > 0).sum(axis=1) > (ideal > 0).sum(axis=1)).any():
        raise ValueError("gains holds more relevant items than ideal_gains in some row")
    window = _window(gains_, k)
    _check_dominated(window, ideal)
    return _safe_div(_dcg(window), _idcg(ideal, k))


# --- aggregates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankingMetrics:
    """Means of the per-query metrics over the queries that have a relevant item."""

    k: int  # the cutoff
    n_queries: int  # queries averaged over (those with at least one relevant item)
    n_excluded: int  # queries left out because they have no relevant item anywhere
    mrr: float  # mean reciprocal rank within the top k
    map: float  # mean AP@k (variant as requested)
    precision_at_k: float
    recall_at_k: float
    ndcg_at_k: float

    def as_dict(self) -> dict[str, float | int]:
        """The fields as a plain dict, in declaration order (JSON-ready)."""
        return asdict(self)


def per_query_metrics(
    rel: npt.ArrayLike,
    n_relevant: npt.ArrayLike,
    k: int,
    *,
    ideal_gains: npt.ArrayLike | None = None,
    ap_variant: str = "relevant",
) -> dict[str, np.ndarray]:
    """The per-query arrays behind `ranking_metrics`, for the included queries only.

    Returns "query" `(n,)`: the row indices (into `rel`) of the included queries, and one `(n,)`
    float array per name in METRIC_NAMES, aligned with "query". Arguments as `ranking_metrics`.
    """
    k = _check_k(k)
    _check_variant(ap_variant)
    rel_ = _as_gains(rel, "rel")
    n_rel = _as_counts(n_relevant, rel_)
    if ideal_gains is None:
        ideal = _default_ideal(n_rel, k)
    else:
        ideal = _as_gains(ideal_gains, "ideal_gains", n_rows=rel_.shape[0])
        _check_ideal(ideal, n_rel, k)
    window = _window(rel_, k)  # (Q, w)
    _check_dominated(window, ideal)
    hits = window > 0  # (Q, w)
    idcg = _idcg(ideal, k)  # (Q,)
    keep = np.flatnonzero((n_rel > 0) & (idcg > 0))  # queries with a relevant item somewhere
    return {
        "query": keep,
        "mrr": _reciprocal_rank(hits)[keep],
        "map": _average_precision(hits, n_rel, ap_variant)[keep],
        "precision_at_k": hits.sum(axis=1)[keep] / k,
        "recall_at_k": hits.sum(axis=1)[keep] / n_rel[keep],
        "ndcg_at_k": _dcg(window)[keep] / idcg[keep],
    }


def ranking_metrics(
    rel: npt.ArrayLike,
    n_relevant: npt.ArrayLike,
    k: int,
    *,
    ideal_gains: npt.ArrayLike | None = None,
    ap_variant: str = "relevant",
) -> RankingMetrics:
    """Mean mrr, map, precision@k, recall@k and nDCG@k over queries.

    rel `(Q, L)`: relevance in ranked order, the query itself removed (binary view gain > 0 for
    all but nDCG). n_relevant `(Q,)`: |R| per query over the whole split. ideal_gains `(Q, M)`:
    gains of all relevant items per query for IDCG, or of the M largest where |R| > M (then
    k <= M); default |R| ones (binary relevance), in which case `rel` gains must be <= 1.
    Queries with |R| == 0 are excluded and counted in n_excluded; when no query remains, every
    mean is 0.0 and n_queries is 0 (no NaN).
    """
    per = per_query_metrics(rel, n_relevant, k, ideal_gains=ideal_gains, ap_variant=ap_variant)
    n = int(per["query"].size)
    means = {name: float(per[name].mean()) if n else 0.0 for name in METRIC_NAMES}
    return RankingMetrics(
        k=int(k),
        n_queries=n,
        n_excluded=int(np.shape(n_relevant)[0]) - n,
        mrr=means["mrr"],
        map=means["map"],
        precision_at_k=means["precision_at_k"],
        recall_at_k=means["recall_at_k"],
        ndcg_at_k=means["ndcg_at_k"],
    )


# --- labels and online rates ------------------------------------------------------------------


def label_relevance(ranked_labels: npt.ArrayLike, query_labels: npt.ArrayLike) -> FloatArray:
    """1.0 where a ranked item shares its query's label, else 0.0: `(Q, L)`, `(Q,)` -> `(Q, L)`.

    Unlabelled queries should be dropped by the caller; a missing label compares like any value.
    """
    ranked = np.asarray(ranked_labels)
    queries = np.asarray(query_labels)
    if ranked.ndim != 2 or queries.shape != (ranked.shape[0],):
        raise ValueError(
            f"need ranked_labels (Q, L) and query_labels (Q,), got {ranked.shape} and "
            f"{queries.shape}"
        )
    return np.asarray(ranked == queries[:, None], dtype=np.float64).reshape(ranked.shape)


def ctr(clicks: int, impressions: int) -> float:
    """Click-through rate clicks / impressions; 0.0 when there were no impressions."""
    _check_rate_counts(clicks, impressions, "clicks", "impressions")
    return clicks / impressions if impressions else 0.0


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a rate (z = 1.96: 95%); (0.0, 1.0) when trials == 0."""
    _check_rate_counts(successes, trials, "successes", "trials")
    if not (math.isfinite(z) and z > 0):
        raise ValueError(f"z must be a positive number, got {z!r}")
    if trials == 0:
        return (0.0, 1.0)
    p, n, z2 = successes / trials, trials, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def _check_rate_counts(hits: int, total: int, hits_name: str, total_name: str) -> None:
    if hits < 0 or total < 0 or hits > total:
        raise ValueError(
            f"need 0 <= {hits_name} <= {total_name}, got {hits_name}={hits}, {total_name}={total}"
        )
