"""A new base version: another encoder (or the same one again), no parent, its own index."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from core.encoder.model import Encoder
from core.encoder.registry import UnknownEncoderError, WeightsUnavailableError
from core.studio import Studio
from tests.helpers import generated_image, raw, run_json


def test_a_new_base_indexes_the_gallery_and_is_left_inactive(fed: Studio) -> None:
    rows_before = raw(fed.settings.catalog_path, "SELECT COUNT(*) FROM interactions")
    images = fed.count_images()
    progress: list[tuple[int, int]] = []
    made = fed.new_base("tiny-test", lambda done, total: progress.append((done, total)))
    assert (made.version, made.encoder, made.images) == ("base-0001", "tiny-test", images)
    assert made.seconds > 0 and progress and progress[-1] == (images, images)
    version = fed.store.get_model_version("base-0001")
    assert version.parent is None and not version.active
    assert version.card["encoder"] == "tiny-test" and "precision" in version.card
    assert fed.active_version().version == "base"  # activation stays the user's choice
    assert set(fed.indexed_versions()) >= {"base", "base-0001"}
    # the same encoder again is a new version too
    assert fed.new_base("tiny-test").version == "base-0002"
    # switching to it and back loses no feedback and no version
    fed.activate("base-0001")
    results = fed.search([generated_image(0, 1)], k=5)[0]
    assert len(results) == 5
    fed.activate("base")
    assert raw(fed.settings.catalog_path, "SELECT COUNT(*) FROM interactions") == rows_before
    names = [v.version for v in fed.versions()]
    assert {"base", "base-0001", "base-0002"} <= set(names)


def test_an_unknown_encoder_adds_nothing(studio: Studio) -> None:
    before = [v.version for v in studio.versions()]
    with pytest.raises(UnknownEncoderError, match="Unknown encoder"):
        studio.new_base("no-such-encoder")
    assert [v.version for v in studio.versions()] == before


def test_weights_that_cannot_load_leave_no_version(studio: Studio) -> None:
    """Where a CLIP's weights cannot download, no half-made version is left behind."""

    def unavailable(name: str) -> Encoder:
        raise WeightsUnavailableError(f"{name}: could not download the weights.")

    studio._load_encoder = unavailable
    with pytest.raises(WeightsUnavailableError, match="could not download"):
        studio.new_base("efficientnet-lite1")
    assert [v.version for v in studio.versions()] == ["base"]
    assert "base-0001" not in studio.indexed_versions()


def test_the_command_prints_exactly_its_keys_and_stores_evaluations(
    tmp_path: Path, make_gallery: Callable[..., Path]
) -> None:
    data = tmp_path / "cli-data"
    run_json(data, "ingest", str(make_gallery(per_label=5)), "--label-from-folders")
    payload = run_json(data, "new-base", "tiny-test")
    assert set(payload) == {"version", "encoder", "images", "seconds"}
    assert (payload["version"], payload["encoder"], payload["images"]) == (
        "base-0001",
        "tiny-test",
        20,
    )
    stored = raw(
        data / "catalog.db",
        "SELECT split, k FROM evaluation_runs WHERE model_version = 'base-0001' ORDER BY split",
    )
    assert stored == [("all", 10), ("test", 10)]
    models = {m["version"]: m for m in run_json(data, "models")}
    assert [name for name, m in models.items() if m["active"]] == ["base"]
    new = models["base-0001"]
    assert (new["encoder"], new["parent"]) == ("tiny-test", None) and new["precision"]
    whole = new["whole_gallery"]  # bases side by side: the stored whole-gallery evaluation
    assert set(whole) == {"map", "mrr", "map_interval", "mrr_interval"}
    assert whole["map_interval"][0] <= whole["map"] <= whole["map_interval"][1]
    assert models["base"]["whole_gallery"] == {}  # never evaluated on the whole gallery
