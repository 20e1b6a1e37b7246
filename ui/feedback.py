"""Result cards that log what people do: Similar / Not similar, open larger (a click), grades.

Every action is logged from a widget callback or a button's single True run, so Streamlit's
reruns never write a row twice. The label shown on a card is read back from the log (latest
row wins), along the whole refine chain, so labels carry over to results that reappear.

A callback writes only what the person changed on the list they are looking at. Streamlit can
call a callback that was not a person's action: the browser sends back the state of widgets of
a list that is no longer shown (a previous upload's, or the list a refinement replaced), and the
server, which has forgotten those widgets, takes their default as a new value (measured: ten
empty `grade` rows per earlier list). So every callback checks that its query is the one on
screen (`SHOWN_KEY`, set when the grid is drawn) and compares the value with the log's latest
row, read at the time of the action, never with what was true when the widget was drawn (a
second click that arrives before the page redraws must undo, not set again).
"""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from core.store import ResultLabel
from core.studio import LoggedSearch, SearchResult, Studio

GRADE_CHOICES = ("Grade…", "Grade 0", "Grade 1", "Grade 2", "Grade 3")  # index - 1 = the grade
GRADE_HELP = "0 unrelated · 1 somewhat · 2 similar · 3 near-identical"
SHOWN_KEY = "feedback_shown_query"  # the query whose result cards are on screen


def _on_screen(query_id: int) -> bool:
    return st.session_state.get(SHOWN_KEY) == query_id


def _current(studio: Studio, chain: Sequence[int], image_id: str) -> ResultLabel:
    """The result's label and grade as the log holds them now, along the refine chain."""
    return studio.result_labels(chain).get(image_id, ResultLabel(None, None))


def _toggle_label(studio: Studio, chain: tuple[int, ...], image_id: str, kind: str) -> None:
    """Similar / Not similar pressed: set the label, or undo it when it is set already."""
    if not _on_screen(chain[-1]):
        return
    undo = _current(studio, chain, image_id).relevance == kind
    studio.log_interaction(chain[-1], image_id, kind, 0 if undo else 1)


def _set_grade(studio: Studio, chain: tuple[int, ...], image_id: str, key: str) -> None:
    """A grade picked ("Grade…" clears it); logged only when it differs from the log's."""
    choice = st.session_state.get(key)
    if choice not in GRADE_CHOICES or not _on_screen(chain[-1]):
        return
    grade = GRADE_CHOICES.index(choice) - 1
    value = None if grade < 0 else grade
    if _current(studio, chain, image_id).grade != value:
        studio.log_interaction(chain[-1], image_id, "grade", value)


@st.dialog("Result", width="large")
def _open_large(studio: Studio, result: SearchResult) -> None:
    st.image(result.path, width="stretch")
    st.caption(f"#{result.rank} · score {result.score:.3f} · {result.label or 'unlabelled'}")


def _label_button(
    studio: Studio, chain: tuple[int, ...], result: SearchResult, kind: str, on: bool
) -> None:
    """A toggle: pressing it sets the label, pressing it again (while set) undoes it."""
    query_id = chain[-1]
    text = "Similar" if kind == "similar" else "Not similar"
    icon = ":material/thumb_up:" if kind == "similar" else ":material/thumb_down:"
    st.button(
        text,
        icon=icon,
        key=f"{kind}-{query_id}-{result.image_id}",
        type="primary" if on else "secondary",
        help=f"Marked {text.lower()}: press again to undo" if on else f"Mark as {text.lower()}",
        on_click=_toggle_label,
        args=(studio, chain, result.image_id, kind),
        width="stretch",
    )


def result_card(
    studio: Studio, chain: tuple[int, ...], result: SearchResult, label: ResultLabel
) -> None:
    """One result of the last query of the refine `chain`: thumbnail, rank/score/label, open
    larger, the feedback controls; widgets are keyed by that query."""
    query_id = chain[-1]
    st.image(str(studio.thumb_path(result.image_id)), width="stretch")
    caption, open_column = st.columns([2, 1], vertical_alignment="center")
    caption.caption(f"**#{result.rank}** · {result.score:.3f}  \n{result.label or 'unlabelled'}")
    if open_column.button(
        "Open",
        key=f"open-{query_id}-{result.image_id}",
        type="tertiary",
        help="Open larger",
    ):
        studio.log_interaction(query_id, result.image_id, "click")
        _open_large(studio, result)
    _label_button(studio, chain, result, "similar", label.relevance == "similar")
    _label_button(studio, chain, result, "not_similar", label.relevance == "not_similar")
    grade_key = f"grade-{query_id}-{result.image_id}"
    st.selectbox(
        "Grade",
        GRADE_CHOICES,
        index=0 if label.grade is None else label.grade + 1,
        key=grade_key,
        help=GRADE_HELP,
        on_change=_set_grade,
        args=(studio, chain, result.image_id, grade_key),
        label_visibility="collapsed",
    )


def feedback_grid(
    studio: Studio, search: LoggedSearch, chain: Sequence[int], columns: int = 5
) -> None:
    """The results of a logged search as cards, labels read along the refine `chain` (which
    ends with `search`)."""
    chain = tuple(chain)
    st.session_state[SHOWN_KEY] = search.query_id
    labels = studio.result_labels(chain)
    empty = ResultLabel(None, None)
    for start in range(0, len(search.results), columns):
        row = st.columns(columns)
        for column, result in zip(row, search.results[start : start + columns], strict=False):
            with column:
                result_card(studio, chain, result, labels.get(result.image_id, empty))
