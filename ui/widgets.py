"""Widgets shared by several pages."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from core.measure.simulate import SIMULATOR_USER
from core.store import User
from core.studio import Studio
from ui.state import CURRENT_USER_KEY, DEFAULT_USER

_USER_KEY = "user_name"
_NEW_USER_KEY = "new_user_name"
_NEW_USER = "New user…"


def browser_location() -> str | None:
    """What the browser reports: its time zone and locale (e.g. "Europe/Paris · fr-FR")."""
    parts = [st.context.timezone, st.context.locale]
    return " · ".join(p for p in parts if p) or None


def _create_user(studio: Studio) -> None:
    name = st.session_state.get(_NEW_USER_KEY, "").strip()
    if name:
        studio.user(name)
        st.session_state[_USER_KEY] = name  # allowed: callbacks run before the widget exists


def _save_location(studio: Studio, user: User, key: str) -> None:
    studio.set_user_location(user.id, st.session_state[key].strip() or None)


def user_picker(studio: Studio) -> tuple[User, str | None]:
    """The sidebar's user picker (app.py, every page); returns the user and their location.

    The choice is kept in session state, where pages read it with `ui.state.current_user`.
    """
    studio.user(DEFAULT_USER)
    names = [u.name for u in studio.users() if u.name != SIMULATOR_USER]
    choice = st.sidebar.selectbox("User", [*names, _NEW_USER], key=_USER_KEY)
    if choice == _NEW_USER:
        st.sidebar.text_input("Display name", key=_NEW_USER_KEY)
        st.sidebar.button("Create user", on_click=_create_user, args=(studio,))
        choice = DEFAULT_USER  # until the new user exists, actions are logged as the guest
    user = studio.user(choice)
    key = f"location-{user.id}"
    st.sidebar.text_input(
        "Location",
        value=user.location or "",
        key=key,
        placeholder=browser_location() or "unknown",
        help="Leave empty to use what your browser reports (time zone and locale).",
        on_change=_save_location,
        args=(studio, user, key),
    )
    location = user.location or browser_location()
    st.session_state[CURRENT_USER_KEY] = (user.id, location)
    return user, location


def sidebar(studio: Studio) -> None:
    """Active model and gallery size, on every page."""
    version = studio.active_version()
    st.sidebar.markdown(f"**Model** `{version.version}` · {version.encoder}")
    st.sidebar.markdown(f"**Gallery** {studio.count_images():,} images")


def progress_bar(label: str) -> Callable[[int, int], None]:
    """An `st.progress` bar fed by core's `progress(done, total)` callbacks."""
    bar = st.progress(0.0, text=label)

    def update(done: int, total: int) -> None:
        bar.progress(done / total if total else 1.0, text=f"{label} {done}/{total}")

    return update


# While a script reruns, Streamlit fades the last run's elements and animates its status; in a
# browser without a GPU every frame of that is repainted on the CPU, beside the server. With 4
# people searching on 2 cores the browsers used ~6x the server's CPU time (measured), so the
# app draws no animations and keeps stale elements opaque.
_CALM_CSS = (
    "<style>*, *::before, *::after {animation: none !important; transition: none !important;}"
    ' [data-stale="true"] {opacity: 1 !important;}</style>'
)


def calm_rendering() -> None:
    """No CSS animations or stale-element fades on any page (app.py, every run)."""
    st.html(_CALM_CSS)
