"""New categories after fine-tuning: does a version trained on feedback search categories that
arrive after it as well as its parent does?

A deterministic share of the demo gallery's categories is held out (`held_out_labels`). The
rest is ingested, a simulated user gives feedback (`simulate`, the loop's defaults), and the
active version is fine-tuned with the product's defaults. Then the held-out categories'
images are added, as a user adding new kinds of images would, and both versions index them.
Their images are the queries; the whole gallery is what they rank (the old images stay), so
the check asks what a user adding new categories would meet: the new version against its
parent on categories neither ever learned from.

`python -m core new-categories` (`make new-categories`) runs it on a fresh data directory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from core.choices import METRIC_NAMES
from core.errors import LookalikeError
from core.gallery.demo import DEMO_EXTENSIONS, fetch_demo_stamps
from core.gallery.ingest import Candidate, Rejected, iter_candidates
from core.measure.evaluation import label_metrics
from core.measure.simulate import simulate
from core.studio import Studio

HOLD_OUT = 24  # categories held out: about 120 of the demo images, 118 queries with a match
_HOLD_OUT_STREAM = 2  # np.random.default_rng([seed, this]): apart from simulate's draws


class NewCategoryError(LookalikeError, ValueError):
    """The check cannot run as asked; one sentence."""


@dataclass(frozen=True)
class NewCategoryCheck:
    """What `new-categories` prints: the held-out categories, and the parent's and the new
    version's metrics (k = 10) with those categories' images as queries over the whole
    gallery, and the new version's ratio to the parent's."""

    held_out: list[str]
    images: int  # images of the held-out categories added after training
    queries: int  # of them, queries with a relevant image
    parent: str
    version: str
    metrics_parent: dict[str, float]
    metrics_version: dict[str, float]
    ratios: dict[str, float]
    seconds: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def held_out_labels(labels: Collection[str], count: int, seed: int) -> list[str]:
    """`count` of `labels`, sorted: a seeded draw over the sorted labels."""
    ordered = sorted(labels)
    if not 0 < count < len(ordered):
        raise NewCategoryError(f"Hold out between 1 and {len(ordered) - 1} categories.")
    rng = np.random.default_rng([seed, _HOLD_OUT_STREAM])
    return sorted(ordered[i] for i in rng.choice(len(ordered), size=count, replace=False))


def _split(
    candidates: Sequence[Candidate | Rejected], held: Collection[str]
) -> tuple[list[Candidate | Rejected], list[Candidate]]:
    later = [c for c in candidates if isinstance(c, Candidate) and c.label in held]
    kept = set(map(id, later))
    return [c for c in candidates if id(c) not in kept], later


def _metrics(studio: Studio, version: str, held: Collection[str]) -> tuple[dict[str, float], int]:
    found = label_metrics(studio.store, studio.index, version, "all", 10, held)
    return found, int(found.pop("n_queries"))


def new_category_check(
    studio: Studio,
    train: Callable[[Studio], str],
    *,
    hold_out: int = HOLD_OUT,
    seed: int = 0,
    queries: int = 300,
) -> NewCategoryCheck:
    """Run the check in `studio`'s data directory, which must hold no image yet. `train`
    fine-tunes the active version and returns the new one (the command line passes
    `fine_tune` with the product's defaults: learning is a layer above measuring)."""
    if studio.count_images():
        raise NewCategoryError("new-categories needs an empty data directory (--data-dir).")
    started = time.perf_counter()
    stamps = fetch_demo_stamps(studio.settings.demo_dir)
    found = iter_candidates([stamps], label_from_folders=True, extensions=DEMO_EXTENSIONS)
    candidates = list(found)
    labels = {c.label for c in candidates if isinstance(c, Candidate) and c.label}
    held = held_out_labels(labels, hold_out, seed)
    first, later = _split(candidates, held)
    studio.ingest_candidates(first, None)
    parent = studio.active_version().version
    simulate(studio, n_queries=queries, seed=seed)
    version = train(studio)
    studio.ingest_candidates(list(later), None)  # into the active (parent's) index
    studio.reindex(version)
    metrics_parent, counted = _metrics(studio, parent, held)
    metrics_version, _ = _metrics(studio, version, held)
    return NewCategoryCheck(
        held_out=held,
        images=len(later),
        queries=counted,
        parent=parent,
        version=version,
        metrics_parent=metrics_parent,
        metrics_version=metrics_version,
        ratios={
            name: metrics_version[name] / metrics_parent[name]
            for name in METRIC_NAMES
            if metrics_parent[name]
        },
        seconds=round(time.perf_counter() - started, 1),
    )
