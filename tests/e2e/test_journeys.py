"""User journeys in a real browser, each with the complete log it must leave — and no other row.

Every journey gets a fresh data directory and its own `streamlit run`, drives Chromium the way a
person would (upload, click, grade, refine, switch pages, reload, two people at once, a search
while training and a map run), waits until the app is idle and the log has stopped growing,
then compares the whole log, row by row, with the rows written out below. A row is
`(query, parent query, source, user, interaction, position, value)` with queries numbered 1, 2, …
in the order they were logged; rows of the simulated user, where a journey needs feedback to
train on, are checked apart.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from core.learn.jobs import start_training
from core.learn.training import TrainSettings
from core.measure.maps import layout
from core.measure.simulate import SIMULATOR_USER, simulate
from core.studio import Studio
from tests.helpers import generated_image, raw, start_streamlit

pytestmark = pytest.mark.e2e

Row = tuple[int, int | None, str, str, str, int, float | None]
SETTLE_SECONDS = 2.0  # the log must stay unchanged this long before it is compared
WAIT_MS = 60_000


@dataclass
class Served:
    url: str
    studio: Studio
    folder: Path

    def image(self, label: int, variant: int) -> str:
        """A generated query image on disk (not in the gallery)."""
        path = self.folder / f"query-{label}-{variant}.png"
        generated_image(label, variant).save(path)
        return str(path)


@pytest.fixture
def served(studio: Studio, make_gallery: Callable[..., Path], tmp_path: Path) -> Iterator[Served]:
    """A fresh 20-image gallery (tiny encoder) and the app serving it."""
    studio.ingest([make_gallery(per_label=5)], label_from_folders=True)
    url, process = start_streamlit(
        studio.settings.data_dir, studio.settings.encoder, tmp_path / "streamlit.log"
    )
    yield Served(url, studio, tmp_path)
    process.terminate()
    process.wait(timeout=20)


# --- the log -------------------------------------------------------------------------------


def log_rows(studio: Studio, simulated: bool = False) -> list[Row]:
    """Every interaction row, oldest first, with queries numbered in logging order."""
    queries = raw(
        studio.settings.catalog_path,
        "SELECT q.id FROM queries q JOIN users u ON u.id = q.user_id"
        f" WHERE (u.name = ?) = {int(simulated)} ORDER BY q.id",
        (SIMULATOR_USER,),
    )
    number = {query_id: n for n, (query_id,) in enumerate(queries, start=1)}
    rows = raw(
        studio.settings.catalog_path,
        "SELECT q.id, q.parent_id, q.source, u.name, i.interaction_type, i.position, i.value"
        " FROM interactions i JOIN queries q ON q.id = i.query_id JOIN users u ON u.id = q.user_id"
        " ORDER BY i.id",
    )
    out: list[Row] = []
    for query_id, parent, source, user, kind, position, value in rows:
        if (user == SIMULATOR_USER) != simulated:
            continue
        parent_number = number[int(parent)] if parent is not None else None  # type: ignore[arg-type]
        value = float(value) if value is not None else None  # type: ignore[arg-type]
        out.append((number[query_id], parent_number, source, user, kind, position, value))  # type: ignore[arg-type,index]
    return out


def shown(
    query: int, n: int = 10, user: str = "guest", source: str = "upload", parent: int | None = None
) -> list[Row]:
    """The impressions of one displayed list: positions 1…n."""
    return [(query, parent, source, user, "impression", p, None) for p in range(1, n + 1)]


def act(query: int, kind: str, position: int, value: float | None, user: str = "guest") -> Row:
    return (query, None, "upload", user, kind, position, value)


def settled_log(page: Any, studio: Studio, expected_length: int, seconds: float = 60) -> list[Row]:
    """The log once the app is idle and the log has held still for SETTLE_SECONDS (and has at
    least `expected_length` rows, or the time is up): late or phantom rows get their chance."""
    deadline = time.monotonic() + seconds
    last, since = log_rows(studio), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        current = log_rows(studio)
        if current != last:
            last, since = current, time.monotonic()
        idle = page.locator('[data-testid="stStatusWidget"]').count() == 0
        if idle and len(current) >= expected_length and time.monotonic() - since >= SETTLE_SECONDS:
            return current
    return last


def assert_log(page: Any, studio: Studio, expected: list[Row]) -> None:
    assert settled_log(page, studio, len(expected)) == expected


# --- the page --------------------------------------------------------------------------------


def open_app(browser: Any, url: str) -> Any:
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_text("Search by image").wait_for(timeout=WAIT_MS)
    return page


def upload(page: Any, path: str, results: int = 10) -> None:
    page.locator('input[type="file"]').first.set_input_files(path)
    wait_for_results(page, results)


def wait_for_results(page: Any, results: int = 10) -> None:
    page.get_by_text(f"Top {results}").first.wait_for(timeout=WAIT_MS)
    page.locator('[data-testid="stMain"] [data-testid="stImage"] img').nth(results).wait_for(
        timeout=WAIT_MS
    )


def card_button(page: Any, name: str, position: int) -> Any:
    """The button `name` of the result at `position` (1-based). (Select boxes carry a button
    labelled "Open" too: only buttons whose text is `name` count.)"""
    main = page.locator('[data-testid="stMain"]')
    return main.get_by_role("button").filter(has_text=re.compile(rf"{name}$")).nth(position - 1)


def grade(page: Any, position: int, choice: str) -> None:
    """Pick `choice` ("Grade 2", or "Grade…" to clear) in the result's grade box."""
    boxes = page.locator('[data-testid="stMain"] [data-testid="stSelectbox"]')
    boxes.nth(position - 1).click()
    page.get_by_role("option", name=choice, exact=True).click()


def wait_for_rows(studio: Studio, n: int, seconds: float = 30) -> None:
    """Until the log holds at least `n` rows (or the time is up: the assertion then says why)."""
    deadline = time.monotonic() + seconds
    while len(log_rows(studio)) < n and time.monotonic() < deadline:
        time.sleep(0.1)


def idle(page: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while page.locator('[data-testid="stStatusWidget"]').count() and time.monotonic() < deadline:
        time.sleep(0.1)


# --- the journeys ----------------------------------------------------------------------------


def test_upload(served: Served, browser: Any) -> None:
    page = open_app(browser, served.url)
    upload(page, served.image(1, 42))
    assert_log(page, served.studio, shown(1))


def test_upload_again_on_the_same_page(served: Served, browser: Any) -> None:
    page = open_app(browser, served.url)
    upload(page, served.image(1, 42))
    idle(page)
    upload(page, served.image(2, 43))
    page.wait_for_timeout(500)
    upload(page, served.image(3, 44))
    assert_log(page, served.studio, shown(1) + shown(2) + shown(3))


def test_pick_from_the_gallery(served: Served, browser: Any) -> None:
    page = open_app(browser, served.url)
    page.get_by_role("radio", name="Pick from the gallery").click()
    wait_for_results(page)
    assert_log(page, served.studio, shown(1, source="gallery"))


def test_change_the_number_of_results(served: Served, browser: Any) -> None:
    page = open_app(browser, served.url)
    upload(page, served.image(0, 5))
    idle(page)
    page.get_by_role("slider").first.focus()
    page.keyboard.press("ArrowRight")  # 10 -> 15: a new list is shown, and logged
    wait_for_results(page, 15)
    assert_log(page, served.studio, shown(1) + shown(2, n=15))


def test_similar_then_undo(served: Served, browser: Any) -> None:
    page = open_app(browser, served.url)
    upload(page, served.image(2, 9))
    idle(page)  # a click on the settled page (see test_not_similar)
    card_button(page, "Similar", 2).click()
    idle(page)
    card_button(page, "Similar", 2).click()  # pressed again: undone
    expected = [*shown(1), act(1, "similar", 2, 1.0), act(1, "similar", 2, 0.0)]
    assert_log(page, served.studio, expected)


def test_not_similar(served: Served, browser: Any) -> None:
    page = open_app(browser, served.url)
    upload(page, served.image(3, 9))
    # Once (CI, 2026-12-06) "the third Not similar button", clicked while the upload's run was
    # still drawing, logged the result at position 6. Role locators skip hidden elements, so
    # mid-redraw the third visible button may be another card's; whether a person can meet the
    # same is open (issue 17). This journey is a click on the settled page.
    idle(page)
    card_button(page, "Not similar", 3).click()
    assert_log(page, served.studio, [*shown(1), act(1, "not_similar", 3, 1.0)])


def test_grade_change_the_grade_and_clear_it(served: Served, browser: Any) -> None:
    """Each pick lands before the next. (A select box's value the server has not run yet is
    replaced by the next one: Streamlit coalesces pending reruns' widget values, so a grade
    held for less than a rerun is never seen, and never logged. The README says so.)"""
    page = open_app(browser, served.url)
    upload(page, served.image(0, 11))
    grade(page, 1, "Grade 2")
    wait_for_rows(served.studio, len(shown(1)) + 1)
    grade(page, 1, "Grade 3")
    wait_for_rows(served.studio, len(shown(1)) + 2)
    grade(page, 1, "Grade…")
    expected = [act(1, "grade", 1, 2.0), act(1, "grade", 1, 3.0), act(1, "grade", 1, None)]
    assert_log(page, served.studio, [*shown(1), *expected])


def test_open_a_result(served: Served, browser: Any) -> None:
    page = open_app(browser, served.url)
    upload(page, served.image(1, 12))
    card_button(page, "Open", 4).click()
    page.get_by_role("dialog").wait_for(timeout=WAIT_MS)
    page.keyboard.press("Escape")
    assert_log(page, served.studio, [*shown(1), act(1, "click", 4, None)])


def test_refine_then_refine_again(served: Served, browser: Any) -> None:
    page = open_app(browser, served.url)
    upload(page, served.image(2, 13))
    card_button(page, "Similar", 1).click()
    idle(page)
    page.get_by_role("button", name="Refine with my labels").click()
    page.get_by_text("refined ×1").wait_for(timeout=WAIT_MS)
    idle(page)
    page.get_by_role("button", name="Refine with my labels").click()
    page.get_by_text("refined ×2").wait_for(timeout=WAIT_MS)
    expected = [
        *shown(1),
        act(1, "similar", 1, 1.0),
        *shown(2, source="refine", parent=1),
        *shown(3, source="refine", parent=2),
    ]
    assert_log(page, served.studio, expected)


def test_switch_pages_and_come_back(served: Served, browser: Any) -> None:
    page = open_app(browser, served.url)
    upload(page, served.image(3, 14))
    idle(page)
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Gallery").click()
    page.get_by_text("Filter by label").wait_for(timeout=WAIT_MS)
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Search").click()
    page.get_by_text("Search by image").wait_for(timeout=WAIT_MS)
    assert_log(page, served.studio, shown(1))


def test_reload_the_tab(served: Served, browser: Any) -> None:
    page = open_app(browser, served.url)
    upload(page, served.image(0, 15))
    idle(page)
    page.reload(wait_until="domcontentloaded")
    page.get_by_text("Search by image").wait_for(timeout=WAIT_MS)
    assert_log(page, served.studio, shown(1))


def test_two_users_in_two_browser_contexts_at_once(served: Served, browser: Any) -> None:
    pages = [browser.new_context().new_page() for _ in range(2)]
    for page in pages:
        page.goto(served.url, wait_until="domcontentloaded")
        page.get_by_text("Search by image").wait_for(timeout=WAIT_MS)
    bob = pages[1]
    bob.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.click()
    bob.get_by_role("option", name="New user…").click()
    bob.get_by_label("Display name").fill("bob")
    bob.get_by_label("Display name").press("Enter")
    idle(bob)
    bob.get_by_role("button", name="Create user").click()
    bob.get_by_role("button", name="Create user").wait_for(state="detached", timeout=WAIT_MS)
    idle(bob)
    files = [served.image(1, 16), served.image(2, 17)]
    for page, path in zip(pages, files, strict=True):  # both uploads in flight together
        page.locator('input[type="file"]').first.set_input_files(path)
    for page in pages:
        wait_for_results(page)
    settled = settled_log(pages[0], served.studio, 20)
    by_user = {user: [r for r in settled if r[3] == user] for user in ("guest", "bob")}
    first = {user: rows[0][0] for user, rows in by_user.items()}
    assert by_user == {
        "guest": shown(first["guest"]),
        "bob": shown(first["bob"], user="bob"),
    }
    assert sorted(first.values()) == [1, 2] and len(settled) == 20


def test_a_search_while_training_and_a_map_run(served: Served, browser: Any) -> None:
    studio = served.studio
    simulate(studio, n_queries=40, seed=0, k=5)  # feedback to train on (the simulator's rows)
    simulated = log_rows(studio, simulated=True)
    run = start_training(studio.settings, TrainSettings(epochs=30, patience=30))
    mapping = threading.Thread(target=layout, args=(studio, None, "umap"))
    mapping.start()
    page = open_app(browser, served.url)
    upload(page, served.image(3, 18))
    still_training = studio.store.training.get(run.id).live
    assert_log(page, studio, shown(1))
    assert log_rows(studio, simulated=True) == simulated
    mapping.join(timeout=300)
    studio.store.training.request_cancel(run.id)
    assert still_training or studio.store.training.get(run.id).status == "done"
