"""The map job's work: what is missing for the gallery as it stands, computed once, and the
cohesion tables read with the catalog's labels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import core.measure.map_job
from core.measure.map_job import missing_maps, run_map_job, version_cohesion
from core.measure.projection import Layout, ProjectionCache, cohesion
from core.studio import Studio
from tests.helpers import raw


@pytest.fixture
def gallery(studio: Studio, make_gallery: Callable[..., Path]) -> Studio:
    studio.ingest([make_gallery(per_label=5)], label_from_folders=True)
    return studio


def missing(studio: Studio, versions: list[str]) -> list[str]:
    cache = ProjectionCache(studio.settings.projections_dir)
    return missing_maps(studio.store, studio.index, cache, versions, "pca")


def test_what_is_missing_follows_the_gallery_not_the_log(gallery: Studio) -> None:
    ids, vectors = gallery.index.get_embeddings("base")
    gallery.store.add_model_version("tiny", "tiny-test", "base", {})
    gallery.index.upsert("tiny", ids[:2], vectors[:2])  # two points: no map to make
    assert missing(gallery, ["base", "tiny", "never-indexed"]) == ["base"]
    assert run_map_job(gallery.settings, ["base"], "pca").state == "done"
    assert missing(gallery, ["base"]) == []
    user = gallery.store.ensure_user("ann")
    gallery.logged_gallery_search(user.id, ids[0], 5)  # the log moves; the map still holds
    assert missing(gallery, ["base"]) == []
    gallery.remove_images([ids[1]])  # the gallery changes: map it again
    assert missing(gallery, ["base"]) == ["base"]


def test_a_layout_without_its_cohesion_table_is_missing(gallery: Studio) -> None:
    ids = sorted(gallery.index.ids("base"))
    cache = ProjectionCache(gallery.settings.projections_dir)
    layout = Layout(ids, np.zeros((len(ids), 2), np.float32), "pca", len(ids))
    cache.put("base", gallery.image_signature(), layout)
    assert missing(gallery, ["base"]) == ["base"]


def test_a_second_run_computes_nothing(gallery: Studio, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = core.measure.map_job.project

    def counting(ids: Any, x: np.ndarray, method: str, **kwargs: Any) -> Layout:
        calls.append(len(ids))
        return real(ids, x, method, **kwargs)

    monkeypatch.setattr(core.measure.map_job, "project", counting)
    run_map_job(gallery.settings, ["base"], "pca")
    again = run_map_job(gallery.settings, ["base"], "pca")
    assert calls == [20] and again.state == "done"


def test_cohesion_reads_the_catalogs_labels(gallery: Studio) -> None:
    ids, vectors = gallery.index.get_embeddings("base")
    label_of = dict(raw(gallery.settings.catalog_path, "SELECT id, label FROM images"))
    expected = cohesion(vectors, [label_of[i] for i in ids])
    got = version_cohesion(gallery.store, ids, vectors)
    assert got.equals(expected) and len(got) == 4
    sampled = version_cohesion(gallery.store, ids, vectors, sample=8)
    assert sampled.images.sum() == 8
    run_map_job(gallery.settings, ["base"], "pca")
    cached = ProjectionCache(gallery.settings.projections_dir).get_cohesion(
        "base", gallery.image_signature()
    )
    assert cached is not None
    assert list(cached.label) == list(expected.label) and list(cached.images) == list(
        expected.images
    )
    np.testing.assert_allclose(
        cached[["within", "between", "gap"]], expected[["within", "between", "gap"]]
    )
