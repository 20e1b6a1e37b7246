"""Background training jobs: one at a time, progress in the store, cancel, stale runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import core.learn.jobs
from core.learn.jobs import StoreProgress, reap_stale, run_training_job, start_training
from core.learn.training import TrainSettings
from core.measure.simulate import simulate
from core.store import StoreError
from core.studio import Studio


@pytest.fixture
def with_feedback(studio: Studio, make_gallery: Callable[..., Path]) -> Studio:
    studio.ingest([make_gallery(per_label=8)], label_from_folders=True)
    simulate(studio, n_queries=40, seed=0, k=5)
    return studio


def wait_until(condition: Callable[[], bool], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.2)


def test_a_run_in_process_records_progress_losses_and_the_new_version(
    with_feedback: Studio,
) -> None:
    run = with_feedback.store.training.queue("base", {"epochs": 4, "patience": 10})
    done = run_training_job(with_feedback, run.id)
    assert done.status == "done" and done.version == "ft-0001"
    assert [row["epoch"] for row in done.losses] == [1, 2, 3, 4]
    assert done.progress["epoch"] == 4 and done.progress["step"] == done.progress["steps"]
    assert "test mAP@10" in (done.message or "")
    assert not with_feedback.store.get_model_version("ft-0001").active  # the user activates


def test_the_eta_counts_training_steps_only(
    with_feedback: Studio, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [100.0]
    monkeypatch.setattr(core.learn.jobs.time, "monotonic", lambda: clock[0])
    run = with_feedback.store.training.queue("base", {"epochs": 2})
    progress = StoreProgress(with_feedback.store, run.id, epochs=2)
    clock[0] += 30  # the pass over the gallery before the first step: not training
    progress.on_step(1, 1, 4, 1.0)
    assert with_feedback.store.training.get(run.id).progress["eta_s"] is None  # no rate yet
    clock[0] += 2
    progress.on_step(1, 2, 4, 0.9)  # one step in 2 s, 6 of 8 steps left
    assert with_feedback.store.training.get(run.id).progress["eta_s"] == 12.0


def test_before_the_first_step_the_progress_line_says_what_the_job_does(
    with_feedback: Studio,
) -> None:
    training = with_feedback.store.training
    run = training.queue("base", {"epochs": 2})
    assert training.get(run.id).describe() == f"Run {run.id} · queued"
    training.update(run.id, status="running", message="Reading the gallery, then training.")
    assert training.get(run.id).describe() == (
        f"Run {run.id} · running · Reading the gallery, then training."
    )


def test_one_run_at_a_time(with_feedback: Studio) -> None:
    with_feedback.store.training.queue("base", {"epochs": 2})
    with pytest.raises(StoreError, match="one run at a time"):
        with_feedback.store.training.queue("base", {"epochs": 2})


def test_cancel_mid_run_leaves_no_version(
    with_feedback: Studio, monkeypatch: pytest.MonkeyPatch
) -> None:
    studio = with_feedback
    real_on_epoch = StoreProgress.on_epoch

    def slow_on_epoch(self: StoreProgress, *args: Any) -> None:
        real_on_epoch(self, *args)
        time.sleep(0.05)  # 200 tiny epochs would otherwise finish before the cancel arrives

    monkeypatch.setattr(StoreProgress, "on_epoch", slow_on_epoch)
    run = studio.store.training.queue("base", {"epochs": 200, "patience": 200})
    worker = threading.Thread(target=run_training_job, args=(studio, run.id))
    worker.start()
    wait_until(lambda: bool(studio.store.training.get(run.id).losses))
    assert studio.store.training.request_cancel(run.id)
    worker.join(timeout=120)
    ended = studio.store.training.get(run.id)
    assert ended.status == "cancelled" and ended.version is None
    assert [v.version for v in studio.store.list_model_versions()] == ["base"]
    assert studio.index.versions() == ["base"]
    assert not list(studio.settings.models_dir.glob("ft-*"))


def test_a_failing_run_is_marked_failed_with_the_reason(
    studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    studio.ingest([make_gallery(per_label=3)], label_from_folders=True)  # no feedback at all
    run = studio.store.training.queue("base", {"epochs": 2})
    ended = run_training_job(studio, run.id)
    assert ended.status == "failed" and "feedback" in (ended.message or "")


def test_a_run_whose_process_vanished_is_reaped(with_feedback: Studio) -> None:
    run = with_feedback.store.training.queue("base", {"epochs": 2})
    with_feedback.store.training.update(run.id, status="running", pid=2**22 + 12345)  # no such pid
    reap_stale(with_feedback.store)
    assert with_feedback.store.training.get(run.id).status == "failed"


@pytest.mark.slow
def test_start_training_runs_in_its_own_process(with_feedback: Studio) -> None:
    """The real thing: `python -m core train-job` in a new session, polled like the page."""
    run = start_training(with_feedback.settings, TrainSettings(epochs=3))
    assert run.pid is not None
    store = with_feedback.store
    wait_until(lambda: not store.training.get(run.id).live, seconds=180)
    ended = store.training.get(run.id)
    assert ended.status == "done", ended.message
    assert ended.pid != run.pid or ended.pid is not None
    assert store.get_model_version(ended.version or "").parent == "base"
    assert (with_feedback.settings.data_dir / "logs" / f"train-{run.id}.log").exists()
