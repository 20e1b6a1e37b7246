"""The Embeddings page: a plotly map for a small gallery, two versions side by side."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.studio import Studio


@pytest.fixture
def gallery(studio: Studio, make_gallery: Callable[..., Path]) -> Studio:
    studio.ingest([make_gallery(per_label=5)], label_from_folders=True)
    return studio


def open_page(app: Callable[[], AppTest], method: str = "pca") -> AppTest:
    at = app()
    at.session_state["projection"] = method  # PCA keeps the test fast; UMAP is tested in core
    at.run()
    at.switch_page("pages/embeddings.py").run()
    assert not at.exception, at.exception
    return at


def maps(at: AppTest) -> list:  # type: ignore[type-arg]
    return at.get("plotly_chart")


def test_one_version_draws_one_map_and_the_cohesion_table(
    app: Callable[[], AppTest], gallery: Studio
) -> None:
    at = open_page(app)
    assert len(maps(at)) == 1
    table = at.dataframe[0].value
    assert set(table["label"]) == {
        "shapes/circles",
        "shapes/squares",
        "colours/red",
        "colours/blue",
    }
    assert {"base within", "base between", "base gap"} <= set(table.columns)
    assert (gallery.settings.projections_dir).is_dir()  # the layout was cached on disk


def test_two_versions_are_drawn_side_by_side(app: Callable[[], AppTest], gallery: Studio) -> None:
    ids, vectors = gallery.index.get_embeddings("base")
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(vectors.shape[1],) * 2))
    gallery.store.add_model_version("ft-test", "tiny-test", "base", {"note": "rotated"})
    gallery.index.upsert("ft-test", ids, (vectors @ rotation).astype(np.float32))
    at = open_page(app)
    at.multiselect[0].set_value(["base", "ft-test"]).run()
    assert not at.exception, at.exception
    assert len(maps(at)) == 2
    columns = set(at.dataframe[0].value.columns)
    assert {"base gap", "ft-test gap"} <= columns


def test_the_last_search_is_drawn_on_the_map(app: Callable[[], AppTest], gallery: Studio) -> None:
    guest = gallery.store.ensure_user("guest")
    image_id = gallery.store.list_images()[0].id
    gallery.logged_gallery_search(guest.id, image_id, k=5)
    at = open_page(app)
    figure = maps(at)[0].proto.spec
    assert "last query" in figure and "last query → results" in figure
