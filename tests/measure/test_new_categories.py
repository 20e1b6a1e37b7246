"""core.measure.new_categories: categories held out of the gallery until a version is trained,
then added, and searched with the parent and with the new version.

The stamps are a generated 4-label gallery (the Debian package is not needed); the metrics are
recomputed by brute force over the whole gallery with the held-out images as the queries.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

import core.measure.new_categories as new_categories
from core.learn.finetune import fine_tune
from core.learn.training import TrainSettings
from core.measure.new_categories import NewCategoryError, held_out_labels, new_category_check
from core.studio import Studio
from tests.helpers import FED_PER_LABEL, GALLERY_LABELS, reference_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


def test_held_out_labels_are_a_seeded_sorted_draw() -> None:
    labels = [f"c{i}" for i in range(30)]
    drawn = held_out_labels(labels, 12, seed=0)
    assert len(drawn) == 12 and drawn == sorted(drawn)
    assert held_out_labels(reversed(labels), 12, seed=0) == drawn  # type: ignore[arg-type]
    assert held_out_labels(labels, 12, seed=1) != drawn
    for bad in (0, 30):
        with pytest.raises(NewCategoryError, match="between 1 and 29"):
            held_out_labels(labels, bad, seed=0)


def test_the_check_trains_without_the_new_categories_then_compares_on_them(
    studio: Studio, make_gallery: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_gallery(per_label=FED_PER_LABEL)
    monkeypatch.setattr(new_categories, "fetch_demo_stamps", lambda demo_dir: root)
    seen_at_training: list[set[str | None]] = []

    def train(s: Studio) -> str:
        seen_at_training.append({r.label for r in s.store.list_images()})
        return fine_tune(s, TrainSettings(epochs=2)).version

    check = new_category_check(studio, train, hold_out=1, seed=0, queries=30)

    [held] = check.held_out
    assert held in GALLERY_LABELS and seen_at_training == [set(GALLERY_LABELS) - {held}]
    assert check.images == FED_PER_LABEL and (check.parent, check.version) == ("base", "ft-0001")
    records = studio.store.list_images()
    assert len(records) == 4 * FED_PER_LABEL  # the held-out images were added after training
    held_ids = {r.id for r in records if r.label == held}
    log = studio.store.feedback.interactions()
    assert held_ids.isdisjoint(set(log.QueryImageID) | set(log.DisplayedImageID))

    ids = [r.id for r in records]
    measured_by = {check.parent: check.metrics_parent, check.version: check.metrics_version}
    for version, measured in measured_by.items():
        found, vectors = studio.index.get_embeddings(version, ids)
        assert found == ids  # both versions index the new images
        expected = reference_metrics(ids, [r.label for r in records], vectors, 10, {held})
        assert expected.pop("n_queries") == check.queries == FED_PER_LABEL
        assert measured == pytest.approx(expected, abs=1e-9)
    for name, ratio in check.ratios.items():
        assert ratio == pytest.approx(check.metrics_version[name] / check.metrics_parent[name])
    assert json.loads(json.dumps(check.as_dict()))["held_out"] == [held]


def test_the_check_needs_an_empty_data_directory(
    studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    studio.ingest([make_gallery(per_label=2)], label_from_folders=True)
    with pytest.raises(NewCategoryError, match="empty data directory"):
        new_category_check(studio, lambda s: "never")
