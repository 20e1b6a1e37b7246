"""The Index lab page: a stored run drawn without recomputing, the lab job started by the
button (once) and followed, its failure shown; an empty gallery told what to do."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.measure.lab_job import LabRequest, run_and_store
from core.studio import Studio
from tests.helpers import SpawnedJob

METHODS = ("exact", "ivf", "hnsw-faiss")


@pytest.fixture
def gallery(studio: Studio, make_gallery: Callable[..., Path]) -> Studio:
    studio.ingest([make_gallery(per_label=8)], label_from_folders=True)
    return studio


@pytest.fixture
def measured(gallery: Studio) -> Studio:
    """The lab has run on base, in this process."""
    run_and_store(gallery.settings, gallery.index.get_embeddings, LabRequest("base", METHODS, 6, 5))
    return gallery


def open_page(app: Callable[[], AppTest]) -> AppTest:
    at = app().run()
    at.switch_page("pages/index_lab.py").run()
    assert not at.exception, at.exception
    return at


def lab_jobs(started: list[SpawnedJob]) -> list[list[str]]:
    return [job.request for job in started if job.kind == "lab"]


def test_a_stored_run_is_drawn_and_nothing_is_started(
    app: Callable[[], AppTest], measured: Studio, jobs_started: list[SpawnedJob]
) -> None:
    at = open_page(app)
    assert len(at.get("plotly_chart")) == 3  # recall/speed, build and memory, exact growth
    frame = at.dataframe[0].value
    assert set(frame.method) == set(METHODS) and frame.recall.between(0, 1).all()
    captions = " ".join(c.value for c in at.caption)
    assert "26 vectors" in captions and "6 held-out queries" in captions
    notes = " ".join(m.value for m in at.markdown)
    assert "**hnsw-faiss**" in notes and "**exact**" in notes
    assert lab_jobs(jobs_started) == []


def test_the_button_starts_one_lab_job_and_the_page_follows_it(
    app: Callable[[], AppTest], gallery: Studio, jobs_started: list[SpawnedJob]
) -> None:
    at = open_page(app)
    assert any("No lab run" in i.value for i in at.info)
    at.multiselect[0].set_value(["exact", "ivf"]).run()
    at.button[0].click().run()
    assert lab_jobs(jobs_started) == [
        [
            "--model",
            "base",
            "--methods",
            "exact",
            "ivf",
            "--n-queries",
            "200",
            "-k",
            "10",
            "--seed",
            "0",
        ]
    ]
    assert at.get("progress")[0].proto.text.startswith("Index lab")
    at.button[0].click().run()  # a second press while it runs starts nothing more
    assert len(lab_jobs(jobs_started)) == 1


def test_an_empty_gallery_says_what_to_do(app: Callable[[], AppTest], studio: Studio) -> None:
    at = open_page(app)
    assert "add images" in at.info[0].value
