"""The Gallery page: ingest by path and by browser upload, browse with a label filter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import ui.text
from core.store import ImageRecord, Store
from core.studio import Studio
from tests.helpers import GALLERY_LABELS, generated_image, png_bytes, raw


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


def thumbnails(at: AppTest) -> list[tuple[str, str]]:
    """(file name, label) under each thumbnail shown, in order."""
    shown = [c.value.split("  \n") for c in at.caption if "  \n" in c.value]
    return [(name, label) for name, label in shown]


def catalog_order(studio: Studio, label_prefix: str = "") -> list[tuple[str, str]]:
    """(file name, label) of the catalog oldest first, straight from SQLite."""
    rows = raw(
        studio.settings.catalog_path,
        "SELECT original_name, label FROM images WHERE label LIKE ? ORDER BY added_at, id",
        (f"{label_prefix}%",),
    )
    return [(str(name), str(label)) for name, label in rows]


@pytest.fixture
def paged(
    studio: Studio, make_gallery: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> list[dict[str, object]]:
    """12 images, 5 per page; records every `list_images` call the page makes."""
    studio.ingest([make_gallery(per_label=3)], label_from_folders=True)
    monkeypatch.setattr(ui.text, "GALLERY_PAGE_SIZE", 5)
    calls: list[dict[str, object]] = []
    real = Store.list_images

    def spy(self: Store, **kwargs: object) -> list[ImageRecord]:
        calls.append(kwargs)
        return real(self, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Store, "list_images", spy)
    return calls


def test_browse_pages_through_the_catalog_in_sql(
    app: Callable[[], AppTest], studio: Studio, paged: list[dict[str, object]]
) -> None:
    expected = catalog_order(studio)
    at = gallery_page(app)
    assert at.number_input[0].label == "Page (of 3)"
    assert thumbnails(at) == expected[:5] and len(at.image) == 5  # only the page's thumbnails
    at.number_input[0].set_value(2).run()
    assert thumbnails(at) == expected[5:10] and len(at.image) == 5
    at.number_input[0].set_value(3).run()
    assert thumbnails(at) == expected[10:] and len(at.image) == 2
    # every read asked the catalog for one page, never for all of it
    assert paged and all(call.get("limit") == 5 for call in paged)
    assert {call.get("offset") for call in paged} == {0, 5, 10}


def test_a_filter_and_a_page_together(
    app: Callable[[], AppTest],
    studio: Studio,
    paged: list[dict[str, object]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ui.text, "GALLERY_PAGE_SIZE", 2)
    expected = catalog_order(studio, "shapes/circles")
    assert len(expected) == 3
    at = gallery_page(app)
    next(s for s in at.selectbox if s.label == "Filter by label").set_value("shapes/circles").run()
    assert not at.exception
    assert at.number_input[0].label == "Page (of 2)"
    assert thumbnails(at) == expected[:2]
    at.number_input[0].set_value(2).run()
    assert thumbnails(at) == expected[2:]
    remove = next(m for m in at.multiselect if m.label == "Remove images")
    assert len(remove.options) == 1  # only what the page shows can be picked for removal
    assert {call.get("label") for call in paged} == {None, "shapes/circles"}
