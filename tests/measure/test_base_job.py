"""The new-base job: the Train page's "New base", run in the foreground here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import core.measure.bases
import core.measure.jobs
from core.measure.base_job import read_base_status, run_base_job
from core.studio import Studio
from tests.helpers import raw


@pytest.fixture(autouse=True)
def keep_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    """The job lowers its own process's priority: not the test runner's (and times the
    encoder for a moment only)."""
    monkeypatch.setattr(core.measure.jobs, "idle_priority", lambda: None)
    monkeypatch.setattr(core.measure.bases, "SPEED_SECONDS", 0.0)


def test_the_job_makes_indexes_and_evaluates_a_base(
    studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    studio.ingest([make_gallery(per_label=6)], label_from_folders=True)
    status = run_base_job(studio, "tiny-test")
    assert status.state == "done", status.message
    assert status.message is not None and status.message.startswith("base-0001 (tiny-test): 24")
    assert (status.done, status.total) == (24, 24)
    assert read_base_status(studio.settings) == status
    runs = raw(
        studio.settings.catalog_path,
        "SELECT split FROM evaluation_runs WHERE model_version = 'base-0001' ORDER BY split",
    )
    assert runs == [("all",), ("test",)]
    speed = studio.store.get_model_version("base-0001").card["speed"]
    assert speed["images_per_s"] > 0 and speed["vector_size"] == 32
    assert studio.active_version().version == "base"


def test_an_unknown_encoder_fails_with_its_reason(studio: Studio) -> None:
    status = run_base_job(studio, "no-such-encoder")
    assert status.state == "failed" and "Unknown encoder" in (status.message or "")
    assert [v.version for v in studio.versions()] == ["base"]
