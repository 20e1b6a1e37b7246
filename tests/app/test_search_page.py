"""The Search page: upload a query or pick a gallery image; the top-k grid renders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from streamlit.testing.v1 import AppTest

from core.studio import Studio
from tests.helpers import generated_image, png_bytes


def test_empty_gallery_points_to_the_gallery_page(app: Callable[[], AppTest]) -> None:
    at = app().run()
    assert not at.exception
    assert any("gallery is empty" in info.value for info in at.info)


def test_upload_renders_ranked_results_with_scores_and_labels(
    app: Callable[[], AppTest], studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    studio.ingest([make_gallery(per_label=5)], label_from_folders=True)
    at = app().run()
    at.file_uploader[0].set_value(("query.png", png_bytes(generated_image(0, 77)), "image/png"))
    at.run()
    assert not at.exception
    captions = [c.value for c in at.caption]
    assert any(c.startswith("**#1**") for c in captions)
    assert sum(c.startswith("**#") for c in captions) == 10  # the default k
    assert len(at.image) >= 11  # the query and ten results
    assert any("shapes/circles" in c for c in captions)


def test_a_corrupt_upload_shows_an_error(
    app: Callable[[], AppTest], studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    studio.ingest([make_gallery(per_label=1)], label_from_folders=True)
    at = app().run()
    at.file_uploader[0].set_value(("broken.png", b"\x89PNG\r\n\x1a\nnope", "image/png"))
    at.run()
    assert not at.exception
    assert any("broken.png" in e.value for e in at.error)


def test_pick_from_the_gallery_excludes_the_query_itself(
    app: Callable[[], AppTest], studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    studio.ingest([make_gallery(per_label=3)], label_from_folders=True)
    at = app().run()
    at.segmented_control[0].set_value("gallery").run()
    assert not at.exception
    captions = [c.value for c in at.caption if c.value.startswith("**#")]
    assert len(captions) == 10 and all("1.000" not in c.split("·")[1] for c in captions)
