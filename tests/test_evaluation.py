"""Evaluation of a version on a split, against a loop-by-loop reference of the definitions."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from core.evaluation import EvaluationError, evaluate_version
from core.studio import Studio


def reference_metrics(
    ids: list[str], labels: list[str | None], vectors: np.ndarray, k: int
) -> dict[str, float]:
    """DESIGN.md "Metrics, exactly", written plainly: one query at a time, python loops."""
    totals = {"mrr": 0.0, "map": 0.0, "precision_at_k": 0.0, "recall_at_k": 0.0, "ndcg_at_k": 0.0}
    counted = 0
    for q in range(len(ids)):
        if not labels[q]:
            continue
        others = [j for j in range(len(ids)) if j != q]
        # Best first; ties go to the earlier catalog position (a stable sort).
        ranking = sorted(others, key=lambda j: -float(vectors[q] @ vectors[j]))
        relevant_total = sum(1 for j in others if labels[j] == labels[q])
        if relevant_total == 0:
            continue
        counted += 1
        top = [1 if labels[j] == labels[q] else 0 for j in ranking[:k]]
        first = next((i for i, r in enumerate(top, start=1) if r), None)
        totals["mrr"] += 1 / first if first else 0.0
        totals["precision_at_k"] += sum(top) / k
        totals["recall_at_k"] += sum(top) / relevant_total
        totals["map"] += (
            sum(sum(top[:i]) / i * top[i - 1] for i in range(1, len(top) + 1)) / relevant_total
        )
        dcg = sum(r / math.log2(i + 1) for i, r in enumerate(top, start=1))
        idcg = sum(1 / math.log2(i + 1) for i in range(1, min(k, relevant_total) + 1))
        totals["ndcg_at_k"] += dcg / idcg
    return {name: value / counted for name, value in totals.items()} | {"n_queries": counted}


@pytest.mark.parametrize("k", [1, 5, 10])
@pytest.mark.parametrize("split", ["all", "train", "test"])
def test_evaluate_equals_the_brute_force_reference(
    studio: Studio, make_gallery: Callable[..., Path], split: str, k: int
) -> None:
    studio.ingest([make_gallery(per_label=10)], label_from_folders=True)
    records = studio.store.list_images(split=None if split == "all" else split)
    ids, vectors = studio.index.get_embeddings("base", [r.id for r in records])
    by_id = dict(zip(ids, vectors, strict=True))
    matrix = np.stack([by_id[r.id] for r in records])
    expected = reference_metrics([r.id for r in records], [r.label for r in records], matrix, k)
    result = evaluate_version(studio.store, studio.index, "base", split, k).as_dict()
    assert result["n_queries"] == expected.pop("n_queries")
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, abs=1e-9), name


def test_unlabelled_gallery_cannot_be_evaluated(
    studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    studio.ingest([make_gallery(per_label=2)])
    with pytest.raises(EvaluationError, match="no labelled images"):
        studio.evaluate()


def test_bad_split_version_and_k_are_refused(
    studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    studio.ingest([make_gallery(per_label=2)], label_from_folders=True)
    with pytest.raises(EvaluationError, match="split"):
        studio.evaluate(split="validation")
    with pytest.raises(EvaluationError, match="ft-0042"):
        studio.evaluate(version="ft-0042")
    with pytest.raises(EvaluationError, match="k"):
        studio.evaluate(k=0)
