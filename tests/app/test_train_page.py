"""The Train page: the feedback summary before any run, a run's result, versions, activate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import core.learn.jobs
import core.measure.jobs
from core.encoder.registry import get_encoder_spec
from core.learn.finetune import fine_tune
from core.learn.jobs import run_training_job
from core.learn.training import TrainSettings
from core.measure.base_job import run_base_job
from core.measure.simulate import simulate
from core.store import TrainingRun
from core.studio import Studio
from tests.helpers import SpawnedJob


@pytest.fixture
def trained(studio: Studio, make_gallery: Callable[..., Path]) -> Studio:
    studio.ingest([make_gallery(per_label=8)], label_from_folders=True)
    simulate(studio, n_queries=40, seed=0, k=5)
    return studio


def train_page(app: Callable[[], AppTest]) -> AppTest:
    at = app().run()
    at.switch_page("pages/train.py").run()
    assert not at.exception, at.exception
    return at


def test_the_feedback_summary_shows_before_any_run(
    app: Callable[[], AppTest], trained: Studio
) -> None:
    at = train_page(app)
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Training pairs"]) > 0 and int(metrics["Positives"]) > 0
    assert any("No training run yet" in c.value for c in at.caption)
    assert at.dataframe[0].value["version"].tolist() == ["base"]


def test_a_finished_run_and_activating_its_version(
    app: Callable[[], AppTest], trained: Studio
) -> None:
    run = trained.store.training.queue("base", {"epochs": 3})
    run_training_job(trained, run.id)  # what `python -m core train-job` does
    at = train_page(app)
    assert any("done" in s.value and "ft-0001" in s.value for s in at.success)
    assert at.dataframe[0].value["version"].tolist() == ["base", "ft-0001"]
    version_box = next(s for s in at.selectbox if s.label == "Version")
    version_box.set_value("ft-0001").run()
    next(b for b in at.button if b.label == "Activate").click().run()
    assert trained.store.active_version().version == "ft-0001"


def test_no_feedback_disables_start(
    app: Callable[[], AppTest], studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    studio.ingest([make_gallery(per_label=3)], label_from_folders=True)
    at = train_page(app)
    assert any("No usable feedback" in i.value for i in at.info)


def test_the_chosen_mode_sets_the_epoch_default_and_reaches_the_job(
    app: Callable[[], AppTest], trained: Studio, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[TrainSettings] = []

    def fake_start(settings: object, train: TrainSettings) -> TrainingRun:
        started.append(train)
        return trained.store.training.queue("base", asdict(train))

    monkeypatch.setattr(core.learn.jobs, "start_training", fake_start)
    at = train_page(app)
    assert at.slider[0].value == TrainSettings().epochs  # head by default
    at.radio[0].set_value("partial").run()
    assert at.slider[0].value == TrainSettings.for_mode("partial").epochs
    next(b for b in at.button if b.label == "Start training").click().run()
    assert not at.exception, at.exception
    assert [s.mode for s in started] == ["partial"]
    assert started[0] == TrainSettings.for_mode("partial")


def test_create_starts_one_new_base_job_and_the_page_follows_it(
    app: Callable[[], AppTest], trained: Studio, jobs_started: list[SpawnedJob]
) -> None:
    at = train_page(app)
    [picker] = [s for s in at.selectbox if s.label == "Encoder"]
    assert picker.options[:3] == [
        f"{name} — {get_encoder_spec(name).description}"
        for name in ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
    ]
    picker.set_value("efficientnet-lite2")
    next(b for b in at.button if b.key == "new-base").click().run()
    assert not at.exception, at.exception
    assert [job.request for job in jobs_started if job.kind == "base"] == [["efficientnet-lite2"]]
    assert any("New base" in (p.proto.text or "") for p in at.get("progress"))
    at.run()  # a rerun while it runs starts nothing more
    assert len([job for job in jobs_started if job.kind == "base"]) == 1


def test_a_base_made_by_the_job_is_listed_with_its_encoder(
    app: Callable[[], AppTest], trained: Studio, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core.measure.jobs, "idle_priority", lambda: None)  # not this process
    run_base_job(trained, "tiny-test")
    at = train_page(app)
    table = at.dataframe[0].value
    row = table[table.version == "base-0001"].iloc[0]
    assert row.encoder == "tiny-test" and row.parent is None and not row.active
    assert any("base-0001 (tiny-test)" in c.value for c in at.caption)


def test_a_version_that_forgets_unseen_categories_asks_before_it_is_activated(
    app: Callable[[], AppTest], trained: Studio
) -> None:
    version = fine_tune(trained, TrainSettings(epochs=1)).version
    recorded = trained.store.get_model_version(version).label_sets()
    assert recorded["seen"]["after"]["map"] > 0  # training recorded both sets
    trained.store.update_card(  # as if it had ranked the unseen categories 20 % worse
        version,
        metrics_unseen={"map": 0.4, "mrr": 0.8},
        metrics_before_unseen={"map": 0.5, "mrr": 0.8},
    )
    at = train_page(app)
    table = at.dataframe[0].value.set_index("version")
    assert table.loc[version, "unseen mAP before"] == 0.5
    assert table.loc[version, "unseen mAP after"] == 0.4
    assert table.loc[version, "seen mAP after"] == pytest.approx(recorded["seen"]["after"]["map"])
    assert table.loc[version, "seen categories"] >= 1
    assert table["unseen mAP after"].isna()["base"]

    next(s for s in at.selectbox if s.label == "Version").set_value(version).run()
    assert any("never covered" in w.value and "-20.0%" in w.value for w in at.warning)
    activate = next(b for b in at.button if b.label == "Activate")
    assert activate.disabled
    next(c for c in at.checkbox if c.label == "Activate it anyway").check().run()
    activate = next(b for b in at.button if b.label == "Activate")
    assert not activate.disabled
    activate.click().run()
    assert not at.exception, at.exception
    assert trained.store.active_version().version == version
