"""Feedback on the Search page: one row per action, none per rerun, undo as a new row."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.studio import Studio
from tests.helpers import generated_image, png_bytes


def rows(studio: Studio, sql: str, *params: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(studio.settings.catalog_path) as conn:
        return conn.execute(sql, params).fetchall()


def count(studio: Studio, kind: str) -> int:
    found = rows(studio, "SELECT COUNT(*) FROM interactions WHERE interaction_type = ?", kind)
    return int(found[0][0])  # type: ignore[call-overload]


@pytest.fixture
def searched(
    app: Callable[[], AppTest], studio: Studio, make_gallery: Callable[..., Path]
) -> AppTest:
    """The Search page after one upload: 10 results, 10 impressions."""
    studio.ingest([make_gallery(per_label=5)], label_from_folders=True)
    at = app().run()
    at.file_uploader[0].set_value(("q.png", png_bytes(generated_image(2, 99)), "image/png"))
    at.run()
    assert not at.exception
    return at


def grade_boxes(at: AppTest) -> list:  # type: ignore[type-arg]
    return [s for s in at.selectbox if s.label == "Grade"]


def buttons(at: AppTest, label: str) -> list:  # type: ignore[type-arg]
    return [b for b in at.button if b.label == label]


def test_one_search_logs_one_impression_per_result_and_reruns_add_none(
    searched: AppTest, studio: Studio
) -> None:
    assert count(studio, "impression") == 10
    searched.run()
    searched.slider[0].set_value(10).run()  # a widget interaction reruns the script
    grade_boxes(searched)[0].set_value("Grade 2").run()  # so does grading a result
    assert count(studio, "impression") == 10 and count(studio, "grade") == 1
    positions = rows(
        studio,
        "SELECT position FROM interactions WHERE interaction_type = 'impression' ORDER BY position",
    )
    assert [p for (p,) in positions] == list(range(1, 11))


def test_similar_on_result_two_writes_exactly_one_row_at_position_two(
    searched: AppTest, studio: Studio
) -> None:
    buttons(searched, "Similar")[1].click().run()
    assert not searched.exception
    similar = rows(
        studio, "SELECT position, value FROM interactions WHERE interaction_type = 'similar'"
    )
    assert similar == [(2, 1.0)]
    searched.run()  # a rerun writes nothing more
    assert count(studio, "similar") == 1 and count(studio, "impression") == 10
    # The button now shows its state (primary) and pressing again undoes, as a new row.
    assert buttons(searched, "Similar")[1].proto.type == "primary"
    buttons(searched, "Similar")[1].click().run()
    undo = rows(
        studio,
        "SELECT position, value FROM interactions WHERE interaction_type = 'similar' ORDER BY id",
    )
    assert undo == [(2, 1.0), (2, 0.0)]
    assert buttons(searched, "Similar")[1].proto.type == "secondary"


def test_not_similar_then_grade_then_open(searched: AppTest, studio: Studio) -> None:
    buttons(searched, "Not similar")[4].click().run()
    grade_boxes(searched)[0].set_value("Grade 3").run()
    buttons(searched, "Open")[0].click().run()
    assert not searched.exception
    logged = rows(
        studio,
        "SELECT interaction_type, position, value FROM interactions"
        " WHERE interaction_type != 'impression' ORDER BY id",
    )
    assert logged == [("not_similar", 5, 1.0), ("grade", 1, 3.0), ("click", 1, None)]


def test_refine_logs_a_new_query_linked_to_the_first(searched: AppTest, studio: Studio) -> None:
    buttons(searched, "Similar")[0].click().run()
    next(b for b in searched.button if b.label == "Refine with my labels").click().run()
    assert not searched.exception
    queries = rows(studio, "SELECT id, parent_id, source FROM queries ORDER BY id")
    assert queries == [(1, None, "upload"), (2, 1, "refine")]
    assert count(studio, "impression") == 20
    assert any("refined ×1" in h.value for h in searched.subheader)
    # The label given on the first query shows on the refined results too.
    assert any(b.proto.type == "primary" for b in buttons(searched, "Similar"))


def test_refine_without_labels_asks_for_some(searched: AppTest, studio: Studio) -> None:
    next(b for b in searched.button if b.label == "Refine with my labels").click().run()
    assert any("Mark a few results" in w.value for w in searched.warning)
    assert len(rows(studio, "SELECT id FROM queries")) == 1


def test_clearing_a_grade_logs_an_empty_grade(searched: AppTest, studio: Studio) -> None:
    grade_boxes(searched)[3].set_value("Grade 1").run()
    grade_boxes(searched)[3].set_value("Grade…").run()  # not graded
    assert not searched.exception
    grades = rows(
        studio, "SELECT position, value FROM interactions WHERE interaction_type = 'grade'"
    )
    assert grades == [(4, 1.0), (4, None)]


def test_the_interaction_log_counts_this_users_rows(searched: AppTest, studio: Studio) -> None:
    buttons(searched, "Similar")[0].click().run()
    assert studio.store.feedback.counts() == {"impression": 10, "similar": 1}
    assert any("11 rows logged for guest" in c.value for c in searched.caption)
    assert [b.label for b in searched.get("download_button")] == ["Export CSV", "Export Parquet"]


def test_a_callback_writes_only_a_change_to_the_list_on_screen(
    studio: Studio, make_gallery: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The callbacks themselves, called as Streamlit calls them, with the session state a
    browser leaves behind: the stale grade box of a list no longer shown (its default
    "Grade…" arriving as if new), an unchanged grade, and a second press that arrives before
    the page redraws. Only a person's change on the list on screen writes a row."""
    import ui.feedback as feedback

    studio.ingest([make_gallery(per_label=5)], label_from_folders=True)
    user = studio.user("guest")
    first = studio.logged_gallery_search(user.id, studio.list_images()[0].id, 5)
    second = studio.logged_gallery_search(user.id, studio.list_images()[1].id, 5)
    image = first.results[0].image_id
    state: dict[str, object] = {feedback.SHOWN_KEY: second.query_id, "box": "Grade…"}
    monkeypatch.setattr(feedback.st, "session_state", state)

    feedback._set_grade(studio, (first.query_id,), image, "box")  # stale list, stale default
    state["box"] = "Grade 2"
    feedback._set_grade(studio, (first.query_id,), image, "box")  # not the list on screen
    assert count(studio, "grade") == 0

    state[feedback.SHOWN_KEY] = first.query_id
    state["box"] = "Grade…"
    feedback._set_grade(studio, (first.query_id,), image, "box")  # no grade to clear
    assert count(studio, "grade") == 0
    state["box"] = "Grade 2"
    feedback._set_grade(studio, (first.query_id,), image, "box")
    feedback._set_grade(studio, (first.query_id,), image, "box")  # unchanged: no second row
    state["box"] = "Grade…"
    feedback._set_grade(studio, (first.query_id,), image, "box")  # cleared
    graded = rows(studio, "SELECT value FROM interactions WHERE interaction_type = 'grade'")
    assert graded == [(2,), (None,)]

    # two presses before the page redraws: set, then undo (read from the log, not the widget)
    feedback._toggle_label(studio, (first.query_id,), image, "similar")
    feedback._toggle_label(studio, (first.query_id,), image, "similar")
    state[feedback.SHOWN_KEY] = second.query_id
    feedback._toggle_label(studio, (first.query_id,), image, "similar")  # not on screen
    labelled = rows(studio, "SELECT value FROM interactions WHERE interaction_type = 'similar'")
    assert labelled == [(1,), (0,)]
