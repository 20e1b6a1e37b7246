"""Relevance feedback: Rocchio re-ranking of a query with its labelled results. Pure numpy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from core.store import ResultLabel


@dataclass(frozen=True)
class RocchioWeights:
    """q' = alpha·q + beta·mean(positives) − gamma·mean(negatives), then renormalised.

    The classic weights (Rocchio 1971; Manning et al., IR book §9.1.1): trust the query,
    move towards what was liked more than away from what was not.
    """

    alpha: float = 1.0  # weight of the original query
    beta: float = 0.75  # pull towards the labelled positives
    gamma: float = 0.25  # push away from the labelled negatives

    def __post_init__(self) -> None:
        if min(self.alpha, self.beta, self.gamma) < 0 or self.alpha == 0:
            raise ValueError("Rocchio weights must be non-negative, with alpha > 0.")


def rocchio(
    query: np.ndarray,
    positives: np.ndarray,
    negatives: np.ndarray,
    weights: RocchioWeights | None = None,
) -> np.ndarray:
    """(d,) query, (P, d) positives, (N, d) negatives (P or N may be 0) -> (d,) unit vector."""
    weights = weights or RocchioWeights()
    moved = weights.alpha * query.astype(np.float64)
    if len(positives):
        moved += weights.beta * positives.astype(np.float64).mean(axis=0)
    if len(negatives):
        moved -= weights.gamma * negatives.astype(np.float64).mean(axis=0)
    norm = np.linalg.norm(moved)
    if not np.isfinite(norm) or norm == 0:
        raise ValueError("The refined query vanished (positives and negatives cancel it out).")
    return (moved / norm).astype(np.float32)


def feedback_examples(labels: Mapping[str, ResultLabel]) -> tuple[list[str], list[str]]:
    """(positives, negatives) image ids from a query chain's labels.

    Positive: labelled similar, or unlabelled and graded 2–3. Negative: labelled not similar,
    or unlabelled and graded 0. An explicit label beats a grade; grade 1 is neither.
    """
    positives, negatives = [], []
    for image_id, label in sorted(labels.items()):
        if label.relevance == "similar" or (label.relevance is None and (label.grade or 0) >= 2):
            positives.append(image_id)
        elif label.relevance == "not_similar" or (label.relevance is None and label.grade == 0):
            negatives.append(image_id)
    return positives, negatives
