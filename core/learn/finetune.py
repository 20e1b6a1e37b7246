"""The feedback loop's last step: logged feedback -> a fine-tuned version, indexed, evaluated.

`head` mode trains a `ResidualHead` on the parent version's stored vectors (the frozen
encoder's unit features) beside the tower's stage taps (one forward pass over the gallery,
`core.learn.tower.gallery_taps`): pairs come from the log restricted to the `train` split
(`core.learn.pairs`), the head is fitted (`core.learn.training.fit`), the gallery's new
vectors are the head applied to the parent's vectors and taps, and the version is evaluated
on `test`, before and after. Nothing is registered until its weights and its index
collection are complete; a failure removes what was written.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from core.encoder.heads import ResidualHead
from core.encoder.taps import stage_modules
from core.encoder.versions import HEAD_FILE, TOWER_FILE, save_weights
from core.learn.pairs import PairSettings, TrainingPairs, build_pairs, feedback_labels
from core.learn.training import (
    Callback,
    Distillation,
    History,
    PairTensors,
    TrainingError,
    TrainSettings,
    fit,
)
from core.measure.evaluation import evaluate, label_set_metrics

if TYPE_CHECKING:
    from core.store import ModelVersion
    from core.studio import Studio


@dataclass(frozen=True)
class FineTuneReport:
    """What `train` prints: the new version and whether search got better."""

    version: str
    parent: str
    pairs: int
    seconds: float
    metrics_before: dict[str, float]
    metrics_after: dict[str, float]
    summary: dict[str, object]
    # reading the gallery before training: the head's taps, a tower's cached prefix
    prepare_seconds: float = 0.0
    # test metrics over the queries of the categories the feedback covered ("seen") and of the
    # rest ("unseen"), before (the parent) and after: {"seen": {"before": …, "after": …}, …}
    label_sets: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _tensors(pairs: TrainingPairs, row: dict[str, int]) -> PairTensors:
    negatives = [[row[n] for n in negs] for negs in pairs.negatives]
    groups = torch.full((len(row),), -1, dtype=torch.long)
    for number, group in enumerate(pairs.groups):
        groups[[row[image] for image in group if image in row]] = number
    return PairTensors(
        anchors=torch.tensor([row[a] for a in pairs.anchors], dtype=torch.long),
        positives=torch.tensor([row[p] for p in pairs.positives], dtype=torch.long),
        negatives=torch.tensor(negatives, dtype=torch.long).reshape(len(pairs), -1),
        weights=torch.tensor(pairs.weights, dtype=torch.float32),
        groups=groups,
    )


def feedback_pairs(
    studio: Studio, pair_settings: PairSettings, seen: list[str] | None = None
) -> TrainingPairs:
    """The active version's training pairs from the log, train images only (the Train page
    shows their summary before any run). A `seen` list gets the categories the feedback
    covered (`feedback_labels`) appended."""
    records = studio.store.list_images()
    indexed = studio.index.ids(studio.active_version().version)
    train_ids = {r.id for r in records if r.split == "train" and r.id in indexed}
    log = studio.store.feedback.interactions(with_query_id=True)
    labels = {r.id: r.label for r in records}
    if seen is not None:
        seen.extend(feedback_labels(log, labels, train_ids))
    return build_pairs(log, labels, train_ids, pair_settings)


def seen_labels_after(parent: ModelVersion, covered: Sequence[str]) -> list[str]:
    """The categories a version trained from `parent` has seen over every round: the parent's
    (`seen_labels` on its card; a base has none) and those this run's feedback covered."""
    return sorted({*parent.card.get("seen_labels", []), *covered})


def register_version(
    studio: Studio,
    parent: ModelVersion,
    weights: Mapping[str, Mapping[str, torch.Tensor]],
    vectors: tuple[list[str], np.ndarray],
    settings: TrainSettings,
    history: History,
    card: Mapping[str, object],
    before: dict[str, float],
    activate: bool,
) -> tuple[str, dict[str, float]]:
    """Save a version trained over `parent` (the version active when the run started, even if
    another was activated since): its weight files (`HEAD_FILE`, and
    `TOWER_FILE` in the tower modes), then the gallery's (ids, (n, D) unit vectors) in a new
    collection, then the version row, removing what was written if any step fails; evaluate
    it on `test`. Returns the version and its metrics."""
    version = studio.next_version_name("ft")
    folder = studio.settings.models_dir / version
    chain = {"heads": HEAD_FILE, "tower": TOWER_FILE}  # card key -> file, parent's files first
    try:
        for name, state in weights.items():
            save_weights(state, folder / name)
        studio.index.upsert(version, vectors[0], vectors[1].astype(np.float32))
        files = {
            key: [*parent.card.get(key, []), *([f"{version}/{name}"] if name in weights else [])]
            for key, name in chain.items()
        }
        card = {
            **card,
            **{key: found for key, found in files.items() if found},
            "settings": asdict(settings),
            "seconds": history.seconds,
            "epochs_run": len(history.train_loss),
            "best_epoch": history.best_epoch,
            "train_loss": history.train_loss,
            "val_loss": history.val_loss,
        }
        studio.store.add_model_version(version, parent.encoder, parent.version, card)
    except BaseException:
        studio.index.drop(version)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    after = evaluate(studio, version, split="test").metrics()
    studio.store.update_card(version, metrics=after, metrics_before=before)
    if activate:
        studio.store.activate(version)
    return version, after


def train_rows(studio: Studio, ids: Sequence[str]) -> list[int]:
    """The positions in `ids` of the gallery's train images: what distillation samples and
    what views are made of (no test image enters training, labelled or not)."""
    train = {r.id for r in studio.store.list_images(split="train")}
    return [n for n, image_id in enumerate(ids) if image_id in train]


def distillation(vectors: np.ndarray, rows: Sequence[int]) -> Distillation:
    """The parent's (n, D) vectors as the distillation term's targets, sampled over `rows`
    (`train_rows`)."""
    return Distillation(torch.from_numpy(vectors), torch.tensor(rows, dtype=torch.long))


def _add_views(
    studio: Studio,
    parent: ModelVersion,
    ids: list[str],
    sources: Sequence[int],
    inputs: np.ndarray,
    tensors: PairTensors,
    settings: TrainSettings,
) -> tuple[np.ndarray, PairTensors]:
    """`inputs` with one augmented view of each train image (`sources`, rows of `ids`)
    appended (`core.learn.views`), and `tensors` with a pair per view at weight
    `settings.views`."""
    from core.learn.views import view_inputs, with_views

    views = view_inputs(
        studio.gallery_image, studio.encoder(parent), [ids[n] for n in sources], settings.seed
    )
    if views.shape[1] != inputs.shape[1]:  # a head without taps reads the vector alone
        views = views[:, : inputs.shape[1]]
    sources_tensor = torch.tensor(sources, dtype=torch.long)
    paired = with_views(tensors, sources_tensor, len(inputs), settings.views, settings.seed)
    return np.concatenate([inputs, views]), paired


def head_vectors(
    head: torch.nn.Module, ids: list[str], inputs: np.ndarray
) -> tuple[list[str], np.ndarray]:
    """The gallery under a new head: the head applied to its inputs, the parent's (n, D)
    vectors (and their taps, when the head reads them)."""
    with torch.no_grad():
        moved = head(torch.from_numpy(np.ascontiguousarray(inputs)))
    return ids, moved.numpy()


def fine_tune(
    studio: Studio,
    settings: TrainSettings | None = None,
    pair_settings: PairSettings | None = None,
    *,
    activate: bool = False,
    force: bool = False,
    callbacks: Sequence[Callback] = (),
) -> FineTuneReport:
    """Fine-tune the active version on its logged feedback (train split only) in
    `settings.mode` (default: `head` with its `MODE_DEFAULTS`) into a new version, indexed and
    evaluated on `test`: over every query, and over those of the categories its feedback
    covered (its card's `seen_labels`, every round's) and did not (`metrics_seen`,
    `metrics_unseen`, and the parent's on the same sets, `metrics_before_seen` /
    `metrics_before_unseen`). `activate` makes it active unless it forgets unseen categories
    (`Studio.activate`; `force` anyway)."""
    settings = settings or TrainSettings.for_mode("head")
    pair_settings = pair_settings or PairSettings()
    parent = studio.active_version()
    ids, vectors = studio.index.get_embeddings(parent.version)
    row = {image_id: n for n, image_id in enumerate(ids)}
    covered: list[str] = []
    pairs = feedback_pairs(studio, pair_settings, covered)
    if len(pairs) < 2:
        raise TrainingError("Not enough feedback on train images to fine-tune: label more.")
    seen = seen_labels_after(parent, covered)
    # Before anything is written: a test split that cannot be evaluated stops the run here,
    # not after the version is registered without its metrics.
    before = evaluate(studio, parent.version, split="test").metrics()
    before_sets = label_set_metrics(studio, parent.version, seen)
    card: dict[str, object] = {
        "mode": settings.mode,
        "source": "feedback",
        "pairs": pairs.summary,
        "seen_labels": seen,
    }
    prepared = 0.0  # seconds spent reading the gallery before training
    train = train_rows(studio, ids)
    if settings.mode == "head":
        # (n, D) frozen unit features, read once above, and the tower's (n, t) stage taps
        taps = np.zeros((len(ids), 0), dtype=np.float32)
        encoder = studio.encoder(parent) if settings.taps else None  # --no-taps needs none
        if encoder is not None and stage_modules(encoder.model.visual):
            from core.learn.tower import gallery_taps

            started = time.perf_counter()
            cache = studio.tap_cache(parent)  # filled by ingest: no image is read again
            taps = gallery_taps(studio.gallery_image, encoder, ids, cache)
            prepared = round(time.perf_counter() - started, 2)
        inputs = np.concatenate([vectors, taps], axis=1)
        head = ResidualHead(vectors.shape[1], taps=taps.shape[1])
        rows, tensors = inputs, _tensors(pairs, row)
        if settings.views:
            rows, tensors = _add_views(studio, parent, ids, train, inputs, tensors, settings)
            card["views"] = len(rows) - len(inputs)
        history = fit(
            head,
            torch.from_numpy(rows),
            tensors,
            settings,
            callbacks,
            distillation(vectors, train),
        )
        weights = {HEAD_FILE: dict(head.state_dict())}
        gallery = head_vectors(head, ids, inputs)
    else:
        from core.learn.tower import tower_fit

        result = tower_fit(
            studio,
            parent,
            ids,
            _tensors(pairs, row),
            settings,
            callbacks,
            distillation(vectors, train),
        )
        history, gallery = result.history, (ids, result.vectors)
        weights = {TOWER_FILE: result.tower, HEAD_FILE: result.head}
        card["cached"], prepared = result.cached, result.prepare_seconds
    card["prepare_seconds"] = prepared
    version, after = register_version(
        studio, parent, weights, gallery, settings, history, card, before, activate=False
    )
    after_sets = label_set_metrics(studio, version, seen)
    recorded = studio.store.update_card(  # the version as now stored: its label sets read back
        version,
        **{f"metrics_{name}": found for name, found in after_sets.items()},
        **{f"metrics_before_{name}": found for name, found in before_sets.items()},
    )
    if activate:
        studio.activate(version, force=force)
    return FineTuneReport(
        version,
        parent.version,
        len(pairs),
        history.seconds,
        before,
        after,
        pairs.summary,
        prepared,
        recorded.label_sets(),
    )
