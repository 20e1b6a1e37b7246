"""Offline evaluation of a model version on a split, with label relevance.

Queries are the split's labelled images; each ranks the rest of the split (itself removed) by
exact cosine similarity of the version's stored embeddings, so the numbers describe the encoder,
not the approximate index. Metric definitions live in `core.metrics` (DESIGN.md, "Metrics,
exactly").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from core.index import VectorIndex
from core.metrics import label_relevance, rank_by_scores, ranking_metrics
from core.store import SPLITS, ImageRecord, Store, StoreError

EVAL_SPLITS = ("all", *SPLITS)


class EvaluationError(ValueError):
    """Evaluation is impossible as asked (unknown split, nothing labelled, missing vectors)."""


@dataclass(frozen=True)
class Evaluation:
    """One evaluation's summary; `as_dict` is the CLI's JSON."""

    model: str
    split: str
    k: int
    n_queries: int
    n_excluded: int
    mrr: float
    map: float
    precision_at_k: float
    recall_at_k: float
    ndcg_at_k: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class SplitData:
    """A split's images with their embeddings in the same order."""

    records: list[ImageRecord]
    embeddings: np.ndarray  # (N, d) float32, unit norm


def load_split(store: Store, index: VectorIndex, version: str, split: str) -> SplitData:
    """The split's catalogued images and their vectors from `version`'s collection."""
    if split not in EVAL_SPLITS:
        raise EvaluationError(f"Unknown split {split!r}; use one of {', '.join(EVAL_SPLITS)}.")
    records = store.list_images(split=None if split == "all" else split)
    ids, vectors = index.get_embeddings(version, [r.id for r in records])
    by_id = dict(zip(ids, vectors, strict=True))
    missing = [r.id for r in records if r.id not in by_id]
    if missing:
        raise EvaluationError(
            f"{len(missing)} catalogued images have no vector in version {version!r}; "
            "re-index it before evaluating."
        )
    matrix = np.stack([by_id[r.id] for r in records]) if records else np.zeros((0, 0), np.float32)
    return SplitData(records, matrix.astype(np.float32))


def label_relevance_at_k(data: SplitData, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Binary relevance of each labelled query's top k, and |R| per query.

    Returns `rel` (Q, min(k, N-1)) in ranked order and `n_relevant` (Q,).
    """
    labels = np.array([r.label or "" for r in data.records], dtype=object)  # (N,)
    queries = np.flatnonzero(labels != "")  # (Q,) row numbers of labelled images
    scores = data.embeddings[queries] @ data.embeddings.T  # (Q, N) cosine: vectors are unit norm
    scores[np.arange(len(queries)), queries] = -np.inf  # the query itself is not a result
    depth = min(k, len(data.records) - 1)
    ranked = rank_by_scores(scores)[:, :depth]  # (Q, depth) ties: lower catalog position first
    rel = label_relevance(labels[ranked], labels[queries])  # (Q, depth)
    counts = {
        label: int(n) for label, n in zip(*np.unique(labels, return_counts=True), strict=True)
    }
    n_relevant = np.array([counts[label] - 1 for label in labels[queries]], dtype=np.int64)
    return rel, n_relevant


def evaluate_version(
    store: Store, index: VectorIndex, version: str, split: str = "all", k: int = 10
) -> Evaluation:
    """Label-relevance metrics at cutoff k for `version` on `split` ("all", "train", "test")."""
    if k < 1:
        raise EvaluationError("k must be at least 1.")
    try:
        store.get_model_version(version)
    except StoreError as exc:
        raise EvaluationError(str(exc)) from exc
    data = load_split(store, index, version, split)
    if not any(r.label for r in data.records) or len(data.records) < 2:
        raise EvaluationError(
            f"The {split} split has no labelled images to evaluate; ingest with "
            "--label-from-folders (or run demo-data) first."
        )
    rel, n_relevant = label_relevance_at_k(data, k)
    metrics = ranking_metrics(rel, n_relevant, k)
    return Evaluation(
        model=version,
        split=split,
        k=k,
        n_queries=metrics.n_queries,
        n_excluded=metrics.n_excluded,
        mrr=metrics.mrr,
        map=metrics.map,
        precision_at_k=metrics.precision_at_k,
        recall_at_k=metrics.recall_at_k,
        ndcg_at_k=metrics.ndcg_at_k,
    )
