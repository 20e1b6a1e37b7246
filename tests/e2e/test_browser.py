"""Smoke test in a real browser: start the app, upload an image, see result images."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.studio import Studio
from tests.helpers import generated_image, start_streamlit

pytestmark = pytest.mark.e2e


@pytest.fixture
def served(studio: Studio, make_gallery: Callable[..., Path], tmp_path: Path) -> Iterator[str]:
    """The app serving a 20-image generated gallery with the tiny encoder."""
    studio.ingest([make_gallery(per_label=5)], label_from_folders=True)
    url, process = start_streamlit(
        studio.settings.data_dir, studio.settings.encoder, tmp_path / "streamlit.log"
    )
    yield url
    process.terminate()
    process.wait(timeout=20)


def test_upload_shows_ranked_result_images(served: str, browser: Any, tmp_path: Path) -> None:
    query = tmp_path / "query.png"
    generated_image(1, 42).save(query)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(served, wait_until="domcontentloaded")
        page.get_by_text("Search by image").wait_for(timeout=60_000)
        page.locator('input[type="file"]').first.set_input_files(str(query))
        page.get_by_text("Top 10").wait_for(timeout=60_000)
        images = page.locator('[data-testid="stImage"] img')
        images.nth(10).wait_for(timeout=30_000)  # the query and ten results
        assert images.count() >= 11
        assert page.get_by_text("#1", exact=False).count() >= 1
        for i in range(images.count()):  # every result really loaded (decoded by the browser)
            assert images.nth(i).evaluate("img => img.complete && img.naturalWidth > 0")
        page.screenshot(path=str(tmp_path / "search.png"), full_page=True)
    finally:
        page.close()


def test_pressing_similar_in_the_browser_writes_the_row(
    served: str, browser: Any, tmp_path: Path, studio: Studio
) -> None:
    query = tmp_path / "query.png"
    generated_image(3, 7).save(query)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(served, wait_until="domcontentloaded")
        page.locator('input[type="file"]').first.set_input_files(str(query))
        page.get_by_text("Top 10").wait_for(timeout=60_000)
        page.get_by_role("button", name="Similar", exact=True).nth(1).click()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            log = studio.store.feedback.interactions()
            similar = log[log.InteractionType == "similar"]
            if len(similar):
                break
            time.sleep(0.2)
        assert similar[["PositionInDisplayedList", "Value"]].values.tolist() == [[2, 1.0]]
        assert (log.InteractionType == "impression").sum() == 10
        page.screenshot(path=str(tmp_path / "similar.png"), full_page=True)
    finally:
        page.close()


def test_a_deep_link_as_the_first_request_still_gets_the_app_frame(
    served: str, browser: Any
) -> None:
    """Streamlit runs pages/gallery.py alone (legacy pages/ mode) for a fresh server's first
    request to /gallery; the page hands the session to app.py, which draws the sidebar and
    then opens the gallery."""
    page = browser.new_page()
    try:
        page.goto(f"{served}/gallery", wait_until="domcontentloaded")
        page.get_by_text("Gallery 20 images").wait_for(timeout=60_000)
        navigation = page.locator('[data-testid="stSidebarNav"]').inner_text()
        assert "Metrics" in navigation and "app" not in navigation.split()
        page.get_by_text("Filter by label").wait_for(timeout=60_000)  # the page asked for
        assert page.url.endswith("/gallery")
    finally:
        page.close()
