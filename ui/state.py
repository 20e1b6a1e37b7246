"""Session-state keys and helpers: work a rerun must not repeat."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TypeVar

import streamlit as st

from core.store import ImageRecord, User
from core.studio import Studio
from ui.text import ALL_LABELS

T = TypeVar("T")

CURRENT_USER_KEY = "current_user"  # (user id, location) chosen in the sidebar this run
DEFAULT_USER = "guest"
PICK_KEYS = {  # the Search page's gallery-pick widgets, which other pages preset
    "source": "query_source",  # a key of ui.text.QUERY_SOURCE_LABELS
    "label": "pick_label",
    "image": "pick_image",
}
APP_FRAME_KEY = "app_frame"  # set by app.py on every run, before the page runs
DEEP_LINK_KEY = "deep_link"  # the page a session asked for before app.py had run
_MEMO_KEY = "memo"  # {key: value} of this session's computed results
_MEMO_SIZE = 32  # the last results are kept; older ones are recomputed if asked again


def remember(key: Hashable, compute: Callable[[], T]) -> T:
    """`compute()` once per key and session: Streamlit reruns the script on every click."""
    memo: dict[Hashable, object] = st.session_state.setdefault(_MEMO_KEY, {})
    if key not in memo:
        if len(memo) >= _MEMO_SIZE:
            memo.pop(next(iter(memo)))
        memo[key] = compute()
    return memo[key]  # type: ignore[return-value]


def current_user(studio: Studio) -> tuple[User, str | None]:
    """The user (and location to log) picked in the sidebar by app.py on this run."""
    user_id, location = st.session_state.get(CURRENT_USER_KEY, (None, None))
    if user_id is None:  # a page run on its own (tests): fall back to the guest
        return studio.user(DEFAULT_USER), None
    return studio.user(user_id=user_id), location


def preset_gallery_pick(record: ImageRecord) -> None:
    """Make the Search page open on "pick from the gallery" with `record` chosen (another
    page's "Search with this image"); call before `st.switch_page`."""
    st.session_state.update(
        {PICK_KEYS["source"]: "gallery", PICK_KEYS["label"]: ALL_LABELS, PICK_KEYS["image"]: record}
    )


def mark_app_frame() -> None:
    """app.py, after `st.navigation`: the frame is drawn; a pending deep link is honoured."""
    st.session_state[APP_FRAME_KEY] = True
    page = st.session_state.pop(DEEP_LINK_KEY, None)
    if page is not None:
        st.switch_page(page)


def require_app_frame(page_file: str) -> None:
    """Pages (pass `__file__`): run inside app.py, never alone.

    A fresh server whose first request is a deep link (/train) runs the page file directly,
    in Streamlit's legacy `pages/` mode, without app.py's navigation and sidebar. Hand that
    session to app.py, which registers the navigation and then opens the page asked for.
    """
    if not st.session_state.get(APP_FRAME_KEY):
        st.session_state[DEEP_LINK_KEY] = f"pages/{Path(page_file).name}"
        st.switch_page("app.py")
