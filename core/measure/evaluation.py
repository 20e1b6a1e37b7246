"""Offline evaluation of a model version on a split, by label or by logged human relevance.

Queries rank the rest of the split (the query itself removed) by exact cosine similarity of
the version's stored vectors, so the numbers describe the encoder, not the approximate index.
Metric definitions live in `core.measure.metrics` (DESIGN.md, "Metrics, exactly").

Scale: scores are made for a block of query rows at a time and each block keeps only its top
`depth`, so memory grows with the gallery and Q x depth, never with Q x N (70,000 images would
need 20 GB of scores). Ideal gains are kept `depth` deep at most (labels: none, counts suffice).

Relevance sources:
- `labels`: every labelled image of the split is a query; an item is relevant (gain 1) when it
  has the query's label.
- `feedback`: every query image with logged judgements is a query; an item's gain is its
  latest grade (0–3) if it has one, else 1 for labelled similar and 0 for not similar (latest
  row wins, undone labels and cleared grades are no judgement). Unjudged items gain 0.
Queries with no relevant item in the split are left out and counted in `n_excluded`.

Label sets (`labels`): `all` counts every query; `seen` / `unseen` count only queries whose
category a fine-tune's feedback covered / did not cover (`seen_labels` on the card of
`labels_of`, default the version evaluated). The gallery the queries rank stays the whole split,
so "unseen" asks how a version ranks the categories it never learned from among everything.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from core.choices import EVAL_SPLITS, LABEL_SETS, METRIC_NAMES, RELEVANCE_SOURCES
from core.encoder.allocator import release_freed_memory
from core.errors import LookalikeError
from core.measure.metrics import RankingMetrics, per_query_metrics, ranking_metrics, top_by_scores
from core.search.index import VectorIndex
from core.store import EvaluationRun, ImageRecord, Store, StoreError
from core.studio import Studio

QueryVectors = Callable[[Sequence[str]], dict[str, np.ndarray]]  # ids -> (d,) vectors found

# One block of query rows' (B, N) scores (selecting its top adds ~20 %). Each block's product
# re-packs the whole gallery in OpenBLAS, so bigger blocks pay off: at 70,000 x 1280, all
# queries took 94 s in 64 MB blocks and 71 s in 256 MB ones, on 2 cores.
_SCORE_BLOCK_BYTES = 256 * 2**20
_BLOCK_ALIGN = 64  # query rows: blocks start at multiples of it and hold at least it (`_blocks`)


class EvaluationError(LookalikeError, ValueError):
    """Evaluation is impossible as asked (unknown split, nothing labelled, missing vectors)."""


@dataclass(frozen=True)
class Evaluation:
    """One evaluation's summary; `as_dict` is the CLI's JSON."""

    model: str
    split: str
    k: int
    relevance: str
    n_queries: int
    n_excluded: int
    mrr: float
    map: float
    precision_at_k: float
    recall_at_k: float
    ndcg_at_k: float
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # 95 % over queries
    per_label: list[dict[str, object]] = field(default_factory=list)
    seconds: float = 0.0
    labels: str = "all"  # LABEL_SETS: whose queries counted
    labels_of: str | None = None  # the version whose card's seen_labels split them

    def metrics(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in METRIC_NAMES}

    def as_dict(self, per_label: bool = False) -> dict[str, object]:
        out = asdict(self)
        out["intervals"] = {name: list(bounds) for name, bounds in self.intervals.items()}
        if not per_label:
            del out["per_label"]
        return out


@dataclass(frozen=True)
class Ranking:
    """Everything behind an evaluation: who queried, what came back, what was relevant."""

    query_ids: list[str]  # (Q,)
    query_labels: list[str | None]  # (Q,)
    ranked_ids: np.ndarray  # (Q, depth) object array of image ids, best first (None: no result)
    gains: np.ndarray  # (Q, depth) relevance gain of each ranked item
    n_relevant: np.ndarray  # (Q,) relevant items in the split
    # (Q, M) each query's relevant gains, best first, zero-padded: all of them, or its `depth`
    # largest when it has more (enough for cutoffs up to depth); None: binary relevance, the
    # ideal gains are n_relevant ones
    ideal_gains: np.ndarray | None

    def summary(self, k: int) -> RankingMetrics:
        """The mean metrics at cutoff k over the queries that count."""
        return ranking_metrics(self.gains[:, :k], self.n_relevant, k, ideal_gains=self.ideal_gains)

    def metrics(self, k: int) -> dict[str, np.ndarray]:
        """Per-query arrays at cutoff k (see `core.measure.metrics.per_query_metrics`)."""
        return per_query_metrics(
            self.gains[:, :k], self.n_relevant, k, ideal_gains=self.ideal_gains
        )


def _gallery(
    store: Store, index: VectorIndex, version: str, split: str
) -> tuple[list[ImageRecord], np.ndarray]:
    """The split's catalogued images and their (N, d) vectors from `version`'s collection."""
    if split not in EVAL_SPLITS:
        raise EvaluationError(f"Unknown split {split!r}; use one of {', '.join(EVAL_SPLITS)}.")
    records = store.list_images(split=None if split == "all" else split)
    ids, vectors = index.get_embeddings(version, [r.id for r in records])
    if len(ids) != len(records):
        raise EvaluationError(
            f"{len(records) - len(ids)} catalogued images have no vector in version "
            f"{version!r}; re-index it before evaluating."
        )
    by_id = dict(zip(ids, vectors, strict=True))
    if not records:
        return records, np.zeros((0, 0), np.float32)
    return records, np.stack([by_id[r.id] for r in records]).astype(np.float32)


def feedback_gains(log: pd.DataFrame) -> dict[str, dict[str, float]]:
    """{query image id: {displayed image id: gain}} from the interaction log (see module doc)."""
    judged = log[log.InteractionType.isin(["similar", "not_similar", "grade"])]
    gains: dict[str, dict[str, float]] = {}
    labels = judged[judged.InteractionType != "grade"]
    grades = judged[judged.InteractionType == "grade"]
    pair = ["QueryImageID", "DisplayedImageID"]
    for (query, shown), row in labels.groupby(pair, sort=False).tail(1).set_index(pair).iterrows():
        if row.Value == 1:
            gains.setdefault(query, {})[shown] = 1.0 if row.InteractionType == "similar" else 0.0
    for (query, shown), row in grades.groupby(pair, sort=False).tail(1).set_index(pair).iterrows():
        if not np.isnan(row.Value):
            gains.setdefault(query, {})[shown] = float(row.Value)
    return gains


def _blocks(n_rows: int, row_bytes: int, budget: int) -> list[tuple[int, int]]:
    """(start, stop) ranges of query rows whose (B, N) scores take about `budget` bytes.

    Blocks start at multiples of _BLOCK_ALIGN rows and hold at least that many: then OpenBLAS
    (0.3.31, measured for float32) gives every row bit-identical scores to one (Q, N) product,
    as the old path made. A single row goes through gemv, and a short block through other
    kernels, which differ in the last bit and could swap near-ties; so a short tail joins the
    block before it (up to _BLOCK_ALIGN - 1 rows over budget).
    """
    if n_rows == 0:
        return []
    step = max(_BLOCK_ALIGN, budget // max(row_bytes, 1) // _BLOCK_ALIGN * _BLOCK_ALIGN)
    starts = list(range(0, n_rows, step))
    if len(starts) > 1 and n_rows - starts[-1] < _BLOCK_ALIGN:
        starts.pop()
    return list(zip(starts, [*starts[1:], n_rows], strict=True))


def _rank(
    queries: np.ndarray,
    gallery: np.ndarray,
    self_rows: np.ndarray,
    depth: int,
    block_bytes: int = _SCORE_BLOCK_BYTES,
) -> np.ndarray:
    """(Q, d) x (N, d) -> (Q, depth) gallery rows best first; `self_rows[i]` >= 0 is skipped.

    Each block of query rows is scored, cut to its top `depth` and dropped before the next.
    """
    ranked = np.zeros((len(queries), depth), np.int64)
    row_bytes = len(gallery) * np.result_type(queries, gallery).itemsize
    for start, stop in _blocks(len(queries), row_bytes, block_bytes):
        scores = queries[start:stop] @ gallery.T  # (B, N) cosine: unit vectors
        skip = self_rows[start:stop]
        has_self = skip >= 0
        scores[np.flatnonzero(has_self), skip[has_self]] = -np.inf
        ranked[start:stop] = top_by_scores(scores, depth)  # ties: lower catalog position first
    return ranked


def _label_ranking(
    records: list[ImageRecord],
    vectors: np.ndarray,
    depth: int,
    block_bytes: int = _SCORE_BLOCK_BYTES,
    query_labels: Collection[str] | None = None,
) -> Ranking:
    labels = np.array([r.label or "" for r in records], dtype=object)  # (N,)
    _, codes, counts = np.unique(labels, return_inverse=True, return_counts=True)  # (N,), (C,)
    asked = labels != ""
    if query_labels is not None:
        asked &= np.isin(labels, np.array(sorted(query_labels), dtype=object))
    queries = np.flatnonzero(asked)  # (Q,)
    ranked = _rank(vectors[queries], vectors, queries, depth, block_bytes)  # (Q, depth)
    gains = (codes[ranked] == codes[queries][:, None]).astype(np.float64)
    ids = np.array([r.id for r in records], dtype=object)
    return Ranking(
        list(ids[queries]),
        list(labels[queries]),
        ids[ranked],
        gains,
        (counts[codes[queries]] - 1).astype(np.int64),  # the label's images but the query
        None,
    )


def _feedback_ranking(
    records: list[ImageRecord],
    vectors: np.ndarray,
    judgements: dict[str, dict[str, float]],
    query_vectors: QueryVectors,
    depth: int,
    labels: dict[str, str | None],
    block_bytes: int = _SCORE_BLOCK_BYTES,
    query_labels: Collection[str] | None = None,
) -> Ranking:
    row_of = {r.id: i for i, r in enumerate(records)}
    asked = sorted(q for q in judgements if query_labels is None or labels.get(q) in query_labels)
    found = query_vectors(asked)
    query_ids = [q for q in asked if q in found]
    if not query_ids:
        return Ranking(
            [],
            [],
            np.zeros((0, depth), object),
            np.zeros((0, depth)),
            np.zeros(0, np.int64),
            np.zeros((0, 1)),
        )
    self_rows = np.array([row_of.get(q, -1) for q in query_ids])
    ranked = _rank(np.stack([found[q] for q in query_ids]), vectors, self_rows, depth, block_bytes)
    ids = np.array([r.id for r in records], dtype=object)
    ranked_ids = ids[ranked]
    # A query inside the split ranks itself last (score -inf): that slot holds no result.
    ranked_ids[ranked_ids == np.array(query_ids, dtype=object)[:, None]] = None
    gains = np.array(
        [
            [judgements[q].get(i, 0.0) for i in row]
            for q, row in zip(query_ids, ranked_ids, strict=True)
        ]
    ).reshape(len(query_ids), -1)
    relevant = [
        sorted(
            (g for i, g in judgements[q].items() if g > 0 and i in row_of and i != q), reverse=True
        )
        for q in query_ids
    ]
    # IDCG at cutoffs up to depth needs only the depth largest gains of each query
    width = min(depth, max(len(r) for r in relevant)) or 1
    ideal = np.array([(r + [0.0] * width)[:width] for r in relevant])  # (Q, width) best first
    return Ranking(
        query_ids,
        [labels.get(q) for q in query_ids],
        ranked_ids,
        gains,
        np.array([len(r) for r in relevant], dtype=np.int64),
        ideal,
    )


def per_label_table(ranking: Ranking, k: int) -> list[dict[str, object]]:
    """Metrics averaged per query label (only queries that counted), worst mAP first."""
    per_query = ranking.metrics(k)
    frame = pd.DataFrame({name: per_query[name] for name in METRIC_NAMES})
    frame["label"] = [ranking.query_labels[i] or "(unlabelled)" for i in per_query["query"]]
    grouped = frame.groupby("label").agg(
        n_queries=("mrr", "size"), **{name: (name, "mean") for name in METRIC_NAMES}
    )
    rows = grouped.reset_index().sort_values(["map", "label"]).to_dict("records")
    return [{str(key): value for key, value in row.items()} for row in rows]


def _intervals(ranking: Ranking, k: int) -> dict[str, tuple[float, float]]:
    """95 % normal-approximation intervals of each mean over queries, clipped to [0, 1]."""
    per_query = ranking.metrics(k)
    out = {}
    for name in METRIC_NAMES:
        values = per_query[name]
        if len(values) < 2:
            out[name] = (float(values.mean()) if len(values) else 0.0,) * 2
            continue
        half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
        # Every metric lives in [0, 1]; the normal approximation does not know that.
        out[name] = (max(0.0, float(values.mean() - half)), min(1.0, float(values.mean() + half)))
    return out


def build_ranking(
    store: Store,
    index: VectorIndex,
    version: str,
    split: str = "all",
    relevance: str = "labels",
    depth: int = 10,
    query_vectors: QueryVectors | None = None,
    query_labels: Collection[str] | None = None,
) -> Ranking:
    """Rank every query of the split `depth` deep under `version`, with its relevance gains;
    with `query_labels`, only the queries of those categories (the gallery stays the split)."""
    if relevance not in RELEVANCE_SOURCES:
        raise EvaluationError(
            f"Unknown relevance {relevance!r}; use one of {', '.join(RELEVANCE_SOURCES)}."
        )
    try:
        store.get_model_version(version)
    except StoreError as exc:
        raise EvaluationError(str(exc)) from exc
    records, vectors = _gallery(store, index, version, split)
    # A query outside the split (an upload) ranks all of it; one inside ranks the others.
    depth = max(1, min(depth, len(records)))
    if relevance == "labels":
        if len(records) < 2 or not any(r.label for r in records):
            raise EvaluationError(
                f"The {split} split has no labelled images to evaluate; ingest with "
                "--label-from-folders (or run demo-data) first."
            )
        return _label_ranking(
            records, vectors, min(depth, len(records) - 1), query_labels=query_labels
        )
    judgements = feedback_gains(store.feedback.interactions())
    if not judgements or len(records) < 2:
        raise EvaluationError("No logged judgements yet: label some results (or simulate).")
    # a query's label is its catalog label, whether or not it lies in the split
    labels = {i: r.label for i, r in store.get_images(list(judgements)).items()}
    lookup = query_vectors or _stored_vectors(index, version)
    return _feedback_ranking(
        records, vectors, judgements, lookup, depth, labels, query_labels=query_labels
    )


def studio_ranking(
    studio: Studio, version: str, split: str = "all", relevance: str = "labels", depth: int = 10
) -> Ranking:
    """`build_ranking` over a studio's store and index, from the version's stored vectors (the
    Metrics page's curves and worst queries)."""
    return build_ranking(studio.store, studio.index, version, split, relevance, depth)


def _stored_vectors(index: VectorIndex, version: str) -> QueryVectors:
    def lookup(ids: Sequence[str]) -> dict[str, np.ndarray]:
        found, vectors = index.get_embeddings(version, list(ids))
        return dict(zip(found, vectors, strict=True))

    return lookup


def evaluate_version(
    store: Store,
    index: VectorIndex,
    version: str,
    split: str = "all",
    k: int = 10,
    relevance: str = "labels",
    query_vectors: QueryVectors | None = None,
    labels: str = "all",
    labels_of: str | None = None,
) -> Evaluation:
    """Metrics at cutoff k for `version` on `split`, with per-label breakdown and intervals;
    `labels` `seen` / `unseen` count only the queries of the categories `labels_of`'s training
    feedback covered / did not cover (`query_label_set`)."""
    if k < 1:
        raise EvaluationError("k must be at least 1.")
    started = time.perf_counter()
    asked = query_label_set(store, labels, labels_of or version)
    ranking = build_ranking(store, index, version, split, relevance, k, query_vectors, asked)
    release_freed_memory()  # the ranking's score blocks: gone, and handed back
    summary = ranking.summary(k)
    return Evaluation(
        model=version,
        split=split,
        k=k,
        relevance=relevance,
        n_queries=summary.n_queries,
        n_excluded=summary.n_excluded,
        **{name: getattr(summary, name) for name in METRIC_NAMES},
        intervals=_intervals(ranking, k),
        per_label=per_label_table(ranking, k),
        seconds=round(time.perf_counter() - started, 3),
        labels=labels,
        labels_of=None if labels == "all" else labels_of or version,
    )


def seen_labels(store: Store, version: str) -> list[str] | None:
    """The categories the training feedback behind `version` covered, over every round (its
    card's `seen_labels`); None for a version no feedback trained (a base)."""
    try:
        found = store.get_model_version(version).card.get("seen_labels")
    except StoreError as exc:
        raise EvaluationError(str(exc)) from exc
    return None if found is None else [str(label) for label in found]


def query_label_set(store: Store, labels: str, labels_of: str) -> set[str] | None:
    """The query categories of a label set: None for `all`; `seen`: `labels_of`'s seen labels;
    `unseen`: every catalogued label but those."""
    if labels not in LABEL_SETS:
        raise EvaluationError(f"Unknown label set {labels!r}; use one of {', '.join(LABEL_SETS)}.")
    if labels == "all":
        return None
    seen = seen_labels(store, labels_of)
    if seen is None:
        raise EvaluationError(
            f"Version {labels_of!r} was not trained on feedback, so it has no seen or unseen "
            "categories; name a fine-tuned version with --labels-of."
        )
    if labels == "seen":
        return set(seen)
    return labelled_categories(store) - set(seen)


def evaluate(
    studio: Studio,
    version: str | None = None,
    split: str = "all",
    k: int = 10,
    relevance: str = "labels",
    *,
    reuse: bool = False,
    labels: str = "all",
    labels_of: str | None = None,
) -> Evaluation:
    """Offline metrics of a version (default: the active one), stored as an evaluation run.
    With `reuse`, a stored run of the same gallery and log state answers instead. A `seen` /
    `unseen` evaluation is returned, not stored: the stored runs are the pages' whole-split
    figures, and a version's card keeps its seen / unseen figures from training time."""
    name = version or studio.active_version().version
    store = studio.store
    if labels != "all":
        return evaluate_version(
            store,
            studio.index,
            name,
            split,
            k,
            relevance,
            studio.query_vectors(name),
            labels,
            labels_of,
        )
    signature = store.state_signature()
    if reuse and (run := store.runs.latest_evaluation(name, split, k, relevance, signature)):
        return evaluation_from_run(run)
    result = evaluate_version(
        store, studio.index, name, split, k, relevance, studio.query_vectors(name)
    )
    store.runs.add_evaluation(
        model_version=name,
        split=split,
        k=k,
        relevance=relevance,
        n_queries=result.n_queries,
        n_excluded=result.n_excluded,
        metrics=result.metrics() | {f"{m}_interval": b for m, b in result.intervals.items()},
        per_label=result.per_label,
        signature=signature,
        seconds=result.seconds,
    )
    return result


def label_set_metrics(
    studio: Studio, version: str, seen: Collection[str], split: str = "test", k: int = 10
) -> dict[str, dict[str, float]]:
    """`version`'s metrics on `split` at k over the queries of the `seen` categories and over
    those of every other labelled one: {"seen": metrics, "unseen": metrics}, each with its
    `n_queries`, leaving out a set with no query in the split. What a fine-tune records on its
    card, for itself and its parent on the same sets (the card does not exist yet, so the sets
    are given, not read from it)."""
    every = labelled_categories(studio.store)
    out: dict[str, dict[str, float]] = {}
    for name, asked in (("seen", set(seen) & every), ("unseen", every - set(seen))):
        found = label_metrics(studio.store, studio.index, version, split, k, asked)
        if found["n_queries"]:
            out[name] = found
    return out


def labelled_categories(store: Store) -> set[str]:
    """Every label the catalog holds."""
    return {r.label for r in store.list_images() if r.label}


def label_metrics(
    store: Store,
    index: VectorIndex,
    version: str,
    split: str,
    k: int,
    query_labels: Collection[str],
) -> dict[str, float]:
    """`version`'s mean metrics at k (label relevance) over the queries of `query_labels` on
    `split`, the gallery they rank staying the whole split, with `n_queries`."""
    ranking = build_ranking(store, index, version, split, "labels", k, query_labels=query_labels)
    summary = ranking.summary(k)
    found = {metric: float(getattr(summary, metric)) for metric in METRIC_NAMES}
    return found | {"n_queries": summary.n_queries}


def metric_curves(ranking: Ranking, ks: Sequence[int]) -> pd.DataFrame:
    """Long table (k, metric, value) of the mean metrics at each cutoff in `ks`."""
    rows = []
    for k in ks:
        summary = ranking.summary(k)
        rows += [{"k": k, "metric": name, "value": getattr(summary, name)} for name in METRIC_NAMES]
    return pd.DataFrame(rows)


def worst_queries(ranking: Ranking, k: int, n: int = 5, metric: str = "map") -> pd.DataFrame:
    """The n queries with the lowest `metric` at k: query id, label, value, top-k ids, gains."""
    per_query = ranking.metrics(k)
    order = np.argsort(per_query[metric], kind="stable")[:n]
    rows = []
    for i in order:
        q = per_query["query"][i]
        shown = [j for j, image in enumerate(ranking.ranked_ids[q, :k]) if image is not None]
        rows.append(
            {
                "query_id": ranking.query_ids[q],
                "label": ranking.query_labels[q],
                metric: float(per_query[metric][i]),
                "results": list(ranking.ranked_ids[q, shown]),
                "gains": list(ranking.gains[q, shown]),
            }
        )
    return pd.DataFrame(rows)


def evaluation_from_run(run: EvaluationRun) -> Evaluation:
    """A stored run read back as an `Evaluation`."""
    intervals = {m: tuple(run.metrics.get(f"{m}_interval", (0.0, 0.0))) for m in METRIC_NAMES}
    # JSON turned the (low, high) tuples into lists
    return Evaluation(
        model=run.model_version,
        split=run.split,
        k=run.k,
        relevance=run.relevance,
        n_queries=run.n_queries,
        n_excluded=run.n_excluded,
        intervals=intervals,
        per_label=run.per_label,
        seconds=run.seconds,
        mrr=float(run.metrics["mrr"]),
        map=float(run.metrics["map"]),
        precision_at_k=float(run.metrics["precision_at_k"]),
        recall_at_k=float(run.metrics["recall_at_k"]),
        ndcg_at_k=float(run.metrics["ndcg_at_k"]),
    )
