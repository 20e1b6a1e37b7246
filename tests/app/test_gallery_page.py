"""The Gallery page: ingest by path and by browser upload, browse with a label filter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from streamlit.testing.v1 import AppTest

from core.studio import Studio
from tests.helpers import GALLERY_LABELS, generated_image, png_bytes


def gallery_page(app: Callable[[], AppTest]) -> AppTest:
    at = app().run()
    at.switch_page("pages/gallery.py").run()
    assert not at.exception
    return at


def test_ingest_a_folder_path_with_labels(
    app: Callable[[], AppTest], studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    at = gallery_page(app)
    at.text_input[0].input(str(make_gallery(per_label=2))).run()
    at.button[0].click().run()
    assert not at.exception
    assert any("Added 8 images" in s.value for s in at.success)
    assert studio.store.label_counts() == {label: 2 for label in sorted(GALLERY_LABELS)}


def test_upload_several_files_one_of_them_broken(
    app: Callable[[], AppTest], studio: Studio
) -> None:
    at = gallery_page(app)
    files = [(f"{i}.png", png_bytes(generated_image(i, i)), "image/png") for i in range(3)]
    files.append(("bad.png", b"not an image", "image/png"))
    at.file_uploader[0].set_value(files).run()
    next(b for b in at.button if b.label == "Ingest uploads").click().run()
    assert not at.exception
    assert any("Added 3 images" in s.value for s in at.success)
    assert any("1 files were rejected" in w.value for w in at.warning)
    assert studio.store.count_images() == 3


def test_browse_filters_by_label(
    app: Callable[[], AppTest], studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    studio.ingest([make_gallery(per_label=3)], label_from_folders=True)
    at = gallery_page(app)
    label_filter = next(s for s in at.selectbox if s.label == "Filter by label")
    label_filter.set_value("colours/red").run()
    assert not at.exception
    names = [c.value for c in at.caption if "colours/red" in c.value]
    assert len(names) == 3
    assert not any("shapes/" in c.value for c in at.caption)
