"""Simulated users: searches over the `train` split with a position-biased click model.

Each simulated query is a random `train` image; its results are the rest of `train` ranked by
the active version (exact cosine: simulated feedback must never touch `test`, which evaluation
keeps for itself). The user examines position p with probability p^-decay (a cascade-free
position-bias model), clicks an examined result when it shares the query's label, and — the
seed warns that clicks are noisy — clicks an examined irrelevant one with probability `noise`.
Then it labels a share of the examined results similar / not similar by their true labels.
Everything goes through the same store API as the UI, under the user `simulator`.

`exclude_labels` holds a share of the train categories out of the feedback altogether: no
query of theirs, and the user neither clicks nor labels a result of theirs (it is still shown
and logged as an impression, as a person would have seen it). They are the categories a
fine-tune never learned from ("unseen"). Which ones is fixed by the seed, drawn apart from the
queries, so 0 (the default) simulates exactly what it did before the option existed.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass, field

import numpy as np

from core.errors import LookalikeError
from core.measure.metrics import ctr
from core.store import Store
from core.studio import SearchResult, Studio

SIMULATOR_USER = "simulator"
_EXCLUDE_STREAM = 1  # the excluded categories' draw: np.random.default_rng([seed, this])


class SimulationError(LookalikeError, ValueError):
    """The simulation cannot run as asked; one sentence."""


@dataclass(frozen=True)
class ClickModel:
    """How the simulated user behaves."""

    examine_decay: float = 0.6  # P(examine position p) = p ** -decay: 1 at the top, 0.25 at 10
    noise: float = 0.05  # P(click | examined and irrelevant): noisy clicks
    label_share: float = 0.5  # share of examined results the user also labels

    def __post_init__(self) -> None:
        if self.examine_decay < 0:
            raise SimulationError("examine_decay must be >= 0.")
        for name in ("noise", "label_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise SimulationError(f"{name} must be a probability in [0, 1].")


@dataclass(frozen=True)
class SimulationReport:
    queries: int
    impressions: int
    clicks: int
    ctr: float
    excluded_labels: list[str] = field(default_factory=list)  # categories left without feedback

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _train_gallery(studio: Studio) -> tuple[list[str], list[str | None], np.ndarray]:
    """The train split's ids (sorted), labels and (n, d) vectors under the active version.

    Sorted by id, not catalogue order: that follows ingest timing, and the seed must pick the
    same queries from the same gallery however it was ingested.
    """
    records = sorted(studio.store.list_images(split="train"), key=lambda r: r.id)
    ids, vectors = studio.index.get_embeddings(
        studio.active_version().version, [r.id for r in records]
    )
    label_of = {r.id: r.label for r in records}
    return ids, [label_of[i] for i in ids], vectors


def _act(
    store: Store,
    query_id: int,
    results: list[SearchResult],
    query_label: str,
    model: ClickModel,
    rng: np.random.Generator,
    ignored: Collection[str] = (),
) -> int:
    """One simulated user's clicks and labels on one result list (none on a result whose
    label is `ignored`); returns the clicks."""
    clicks = 0
    for result in results:
        if rng.random() >= result.rank ** (-model.examine_decay):
            continue  # not examined
        if result.label in ignored:
            continue
        relevant = result.label == query_label
        if relevant or rng.random() < model.noise:
            store.feedback.log_interaction(query_id, result.image_id, "click")
            clicks += 1
        if rng.random() < model.label_share:
            kind = "similar" if relevant else "not_similar"
            store.feedback.log_interaction(query_id, result.image_id, kind)
    return clicks


def excluded_labels(labels: Collection[str], fraction: float, seed: int) -> list[str]:
    """The round(fraction x |labels|) categories `simulate` leaves out, sorted: a seeded draw
    over the sorted labels, from its own stream (the queries' draw does not move)."""
    if not 0 <= fraction < 1:
        raise SimulationError("--exclude-labels is a fraction in [0, 1).")
    ordered = sorted(labels)
    count = round(fraction * len(ordered))
    if not count:
        return []
    rng = np.random.default_rng([seed, _EXCLUDE_STREAM])
    return sorted(ordered[i] for i in rng.choice(len(ordered), size=count, replace=False))


def simulate(
    studio: Studio,
    *,
    n_queries: int = 100,
    seed: int = 0,
    k: int = 10,
    model: ClickModel | None = None,
    exclude_labels: float = 0.0,
    exclude_seed: int | None = None,
) -> SimulationReport:
    """Run `n_queries` simulated searches; reproducible for a seed and a gallery. A fraction
    `exclude_labels` of the train categories gets no feedback at all (`excluded_labels`, drawn
    by `exclude_seed`, default `seed`: a second round passes the first's to keep them out)."""
    if n_queries < 1 or k < 1:
        raise SimulationError("simulate needs at least one query and k >= 1.")
    model = model or ClickModel()
    ids, labels, vectors = _train_gallery(studio)
    excluded = excluded_labels(
        {label for label in labels if label},
        exclude_labels,
        seed if exclude_seed is None else exclude_seed,
    )
    queries = [i for i, label in enumerate(labels) if label and label not in excluded]
    if len(ids) < 2 or not queries:
        raise SimulationError("simulate needs labelled train images: run demo-data first.")
    rng = np.random.default_rng(seed)
    user = studio.store.ensure_user(SIMULATOR_USER, location="simulated")
    records = studio.store.get_images(ids)
    version = studio.active_version().version
    impressions = clicks = 0
    for q in rng.choice(queries, size=n_queries, replace=n_queries > len(queries)):
        scores = vectors @ vectors[q]  # (n,) cosine: unit vectors
        scores[q] = -np.inf  # the query is not its own result
        top = np.argsort(-scores, kind="stable")[: min(k, len(ids) - 1)]
        results = [
            SearchResult(
                rank, ids[j], labels[j], float(scores[j]), str(studio.image_path(records[ids[j]]))
            )
            for rank, j in enumerate(top, start=1)
        ]
        query_id = studio.store.feedback.log_query(
            user_id=user.id,
            query_image_id=ids[q],
            model_version=version,
            results=[(r.image_id, r.score) for r in results],
            source="simulate",
            location=user.location,
        )
        impressions += len(results)
        clicks += _act(studio.store, query_id, results, str(labels[q]), model, rng, excluded)
    return SimulationReport(n_queries, impressions, clicks, ctr(clicks, impressions), excluded)
