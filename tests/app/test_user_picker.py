"""The sidebar's user picker: guest by default, create a user, location from the browser."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.studio import Studio

SCRIPT = """
import streamlit as st
from ui.resources import get_studio
from ui.widgets import user_picker

user, location = user_picker(get_studio())
st.write(f"user={user.name} location={location}")
"""


@pytest.fixture
def picker(monkeypatch: pytest.MonkeyPatch, studio: Studio) -> AppTest:
    monkeypatch.setenv("LOOKALIKE_DATA", str(studio.settings.data_dir))
    monkeypatch.chdir(Path(__file__).parents[2])  # so `ui` and `core` import
    return AppTest.from_string(SCRIPT, default_timeout=30)


def shown(at: AppTest) -> str:
    return " ".join(m.value for m in at.markdown)


def test_guest_by_default(picker: AppTest, studio: Studio) -> None:
    at = picker.run()
    assert not at.exception
    assert "user=guest" in shown(at)
    assert [u.name for u in studio.store.list_users()] == ["guest"]


def test_create_a_user_and_pick_them(picker: AppTest, studio: Studio) -> None:
    at = picker.run()
    at.sidebar.selectbox[0].set_value("New user…").run()
    at.sidebar.text_input(key="new_user_name").input("  Ada ").run()
    next(b for b in at.sidebar.button if b.label == "Create user").click().run()
    assert not at.exception
    assert "user=Ada" in shown(at)
    assert "Ada" in [u.name for u in studio.store.list_users()]


def test_a_location_the_user_sets_is_stored_and_used(picker: AppTest, studio: Studio) -> None:
    at = picker.run()
    guest = studio.store.ensure_user("guest")
    at.sidebar.text_input(key=f"location-{guest.id}").input("Lisbon").run()
    assert not at.exception
    assert studio.store.get_user(guest.id).location == "Lisbon"
    assert "location=Lisbon" in shown(at)
