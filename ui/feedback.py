"""Result cards that log what people do: Similar / Not similar, open larger (a click), grades.

Every action is logged from a widget callback or a button's single True run, so Streamlit's
reruns never write a row twice. The label shown on a card is read back from the log (latest
row wins), along the whole refine chain, so labels carry over to results that reappear.
"""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from core.store import ResultLabel
from core.studio import LoggedSearch, SearchResult, Studio

GRADE_CHOICES = ("Grade…", "Grade 0", "Grade 1", "Grade 2", "Grade 3")  # index - 1 = the grade
GRADE_HELP = "0 unrelated · 1 somewhat · 2 similar · 3 near-identical"


def _set_label(studio: Studio, query_id: int, image_id: str, kind: str, value: int) -> None:
    studio.log_interaction(query_id, image_id, kind, value)


def _set_grade(studio: Studio, query_id: int, image_id: str, key: str) -> None:
    grade = GRADE_CHOICES.index(st.session_state[key]) - 1  # "Grade…" (-1) clears the grade
    studio.log_interaction(query_id, image_id, "grade", None if grade < 0 else grade)


@st.dialog("Result", width="large")
def _open_large(studio: Studio, result: SearchResult) -> None:
    st.image(result.path, width="stretch")
    st.caption(f"#{result.rank} · score {result.score:.3f} · {result.label or 'unlabelled'}")


def _label_button(studio: Studio, query_id: int, result: SearchResult, kind: str, on: bool) -> None:
    """A toggle: pressing it sets the label, pressing it again (while set) undoes it."""
    text = "Similar" if kind == "similar" else "Not similar"
    icon = ":material/thumb_up:" if kind == "similar" else ":material/thumb_down:"
    st.button(
        text,
        icon=icon,
        key=f"{kind}-{query_id}-{result.image_id}",
        type="primary" if on else "secondary",
        help=f"Marked {text.lower()}: press again to undo" if on else f"Mark as {text.lower()}",
        on_click=_set_label,
        args=(studio, query_id, result.image_id, kind, 0 if on else 1),
        width="stretch",
    )


def result_card(studio: Studio, query_id: int, result: SearchResult, label: ResultLabel) -> None:
    """One result: thumbnail, rank/score/label, open larger, the feedback controls."""
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
    _label_button(studio, query_id, result, "similar", label.relevance == "similar")
    _label_button(studio, query_id, result, "not_similar", label.relevance == "not_similar")
    grade_key = f"grade-{query_id}-{result.image_id}"
    st.selectbox(
        "Grade",
        GRADE_CHOICES,
        index=0 if label.grade is None else label.grade + 1,
        key=grade_key,
        help=GRADE_HELP,
        on_change=_set_grade,
        args=(studio, query_id, result.image_id, grade_key),
        label_visibility="collapsed",
    )


def feedback_grid(
    studio: Studio, search: LoggedSearch, chain: Sequence[int], columns: int = 5
) -> None:
    """The results of a logged search as cards, labels read along the refine `chain`."""
    labels = studio.result_labels(chain)
    empty = ResultLabel(None, None)
    for start in range(0, len(search.results), columns):
        row = st.columns(columns)
        for column, result in zip(row, search.results[start : start + columns], strict=False):
            with column:
                result_card(studio, search.query_id, result, labels.get(result.image_id, empty))
