"""AppTest fixtures: the real app script against a temporary data directory and the tiny encoder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.studio import Studio
from tests.helpers import SpawnedJob

APP = str(Path(__file__).parents[2] / "app.py")


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch, studio: Studio) -> Callable[[], AppTest]:
    """An AppTest of app.py whose studio is `studio`'s data directory (tiny encoder)."""
    monkeypatch.setenv("LOOKALIKE_DATA", str(studio.settings.data_dir))
    monkeypatch.setenv("LOOKALIKE_ENCODER", studio.settings.encoder)

    def make() -> AppTest:
        return AppTest.from_file(APP, default_timeout=60)

    return make


@pytest.fixture(autouse=True)
def jobs_started(fake_spawn: list[SpawnedJob]) -> list[SpawnedJob]:
    """No page test starts a real map or evaluation process: app.py asks for the map job on
    every run. The stand-ins the pages started, in order."""
    return fake_spawn
