"""The Metrics page: stored runs and cached rankings drawn at once, the evaluation job started
(once) for what is missing, its progress and its failures; the online charts from the log."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import core.measure.bases
from core.learn.finetune import fine_tune
from core.learn.training import TrainSettings
from core.measure.eval_job import EvalRequest, run_eval_job
from core.measure.evaluation import evaluate_version
from core.measure.simulate import simulate
from core.studio import Studio
from tests.helpers import SpawnedJob

BASE = EvalRequest(("base",))  # all, k = 10, labels: what the page opens on


@pytest.fixture
def simulated(studio: Studio, make_gallery: Callable[..., Path]) -> Studio:
    studio.ingest([make_gallery(per_label=8)], label_from_folders=True)
    simulate(studio, n_queries=20, seed=0, k=5)
    return studio


@pytest.fixture
def evaluated(simulated: Studio) -> Studio:
    """The evaluation job has run for what the page opens on, in this process."""
    assert run_eval_job(simulated, BASE).state == "done"
    return simulated


def open_page(app: Callable[[], AppTest]) -> AppTest:
    at = app().run()
    at.switch_page("pages/metrics.py").run()
    assert not at.exception, at.exception
    return at


def charts(at: AppTest) -> list:  # type: ignore[type-arg]
    return at.get("plotly_chart")


def progress_texts(at: AppTest) -> list[str]:
    return [str(bar.proto.text) for bar in at.get("progress")]


def plotly_array(values: Any) -> list[float]:
    """A figure's numbers as plotly writes them: a list, or base64 bytes with a dtype."""
    if isinstance(values, dict):
        return np.frombuffer(base64.b64decode(values["bdata"]), values["dtype"]).tolist()
    return list(values)


def eval_jobs(started: list[SpawnedJob]) -> list[list[str]]:
    return [job.request for job in started if job.kind == "eval"]


def test_stored_metrics_draw_at_once_and_start_no_job(
    app: Callable[[], AppTest], evaluated: Studio, jobs_started: list[SpawnedJob]
) -> None:
    at = open_page(app)
    # versions bars + metric@k curves + four online rate charts
    assert len(charts(at)) == 6
    assert [m.label for m in at.metric][:2] == ["Impressions", "CTR"]
    assert at.metric[0].value == "100"  # 20 simulated queries x 5 results
    notes = " ".join(c.value for c in at.caption)
    assert "**MRR** rewards" in notes and "**CTR**" in notes
    assert progress_texts(at) == [] and eval_jobs(jobs_started) == []
    at.run()
    assert len(evaluated.store.runs.evaluations()) == 1  # read, never evaluated again


def test_the_bars_show_the_stored_numbers(app: Callable[[], AppTest], evaluated: Studio) -> None:
    at = open_page(app)
    reference = evaluate_version(evaluated.store, evaluated.index, "base", "all", 10, "labels")
    bars = json.loads(charts(at)[0].proto.spec)["data"]
    drawn = {
        (trace["name"], x): y
        for trace in bars
        for x, y in zip(trace["x"], plotly_array(trace["y"]), strict=True)
    }
    assert drawn[("base", "mAP")] == pytest.approx(reference.map)
    assert drawn[("base", "MRR")] == pytest.approx(reference.mrr)


def test_a_search_does_not_make_label_metrics_stale(
    app: Callable[[], AppTest], evaluated: Studio, jobs_started: list[SpawnedJob]
) -> None:
    simulate(evaluated, n_queries=2, seed=1, k=5)  # the log moves on; the gallery does not
    at = open_page(app)
    assert len(charts(at)) == 6 and eval_jobs(jobs_started) == []


def test_missing_numbers_start_the_job_once_and_show_its_progress(
    app: Callable[[], AppTest], simulated: Studio, jobs_started: list[SpawnedJob]
) -> None:
    at = open_page(app)
    assert len(charts(at)) == 4  # the online charts only: nothing offline is stored yet
    [text] = progress_texts(at)
    assert text.startswith("Evaluating: eval job · queued")
    assert eval_jobs(jobs_started) == [BASE.args()]
    at.run()
    assert eval_jobs(jobs_started) == [BASE.args()]  # one job at a time
    assert simulated.store.runs.evaluations() == []  # the page computed nothing itself


def test_stored_versions_show_while_only_the_missing_one_is_computed(
    app: Callable[[], AppTest], evaluated: Studio, jobs_started: list[SpawnedJob]
) -> None:
    ids, vectors = evaluated.index.get_embeddings("base")
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(vectors.shape[1],) * 2))
    evaluated.store.add_model_version("ft-test", "tiny-test", "base", {})
    evaluated.index.upsert("ft-test", ids, (vectors @ rotation).astype(np.float32))
    at = open_page(app)
    assert "base" in charts(at)[0].proto.spec  # the stored bars, at once
    assert progress_texts(at)
    assert eval_jobs(jobs_started) == [EvalRequest(("ft-test",)).args()]


def test_another_setting_asks_the_job_for_it(
    app: Callable[[], AppTest], evaluated: Studio, jobs_started: list[SpawnedJob]
) -> None:
    at = open_page(app)
    at.slider[0].set_value(3).run()
    assert not at.exception, at.exception
    assert eval_jobs(jobs_started) == [EvalRequest(("base",), k=3).args()]
    assert len(charts(at)) == 5  # the k = 10 bars are gone; the curves (any k) stay


def test_a_failed_job_shows_why_and_runs_again_only_when_asked(
    app: Callable[[], AppTest], simulated: Studio, jobs_started: list[SpawnedJob]
) -> None:
    at = open_page(app)
    [job] = [job for job in jobs_started if job.kind == "eval"]
    job.process.kill()  # the job's process dies without a word
    job.process.wait()
    at.run()
    [error] = at.error
    assert "ended without finishing" in error.value
    assert eval_jobs(jobs_started) == [BASE.args()]  # not started again on its own
    next(b for b in at.button if b.label == "Try again").click().run()
    assert eval_jobs(jobs_started) == [BASE.args(), BASE.args()]


def test_per_label_table_lists_every_label_worst_first(
    app: Callable[[], AppTest], evaluated: Studio
) -> None:
    table = open_page(app).dataframe[1].value  # after the bases table
    assert sorted(table["label"]) == sorted(
        ["colours/blue", "colours/red", "shapes/circles", "shapes/squares"]
    )
    assert list(table["mAP"]) == sorted(table["mAP"])


def test_worst_queries_show_thumbnails(app: Callable[[], AppTest], evaluated: Studio) -> None:
    at = open_page(app)
    worst_markdown = [m.value for m in at.markdown if " · mAP " in m.value]
    assert len(worst_markdown) == 5
    assert len(at.image) >= 5 * 11  # query + 10 results each


def test_bases_side_by_side_with_their_numbers_and_speed_when_timed(
    app: Callable[[], AppTest],
    evaluated: Studio,
    jobs_started: list[SpawnedJob],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(core.measure.bases, "SPEED_SECONDS", 0.0)
    evaluated.new_base("tiny-test")
    at = open_page(app)
    assert eval_jobs(jobs_started) == [
        ["--model", "base-0001", "--split", "all", "-k", "10", "--relevance", "labels"]
    ]
    table = at.dataframe[0].value
    reference = evaluate_version(evaluated.store, evaluated.index, "base", "all", 10, "labels")
    assert list(table["version"]) == ["base (active)", "base-0001"]
    assert list(table["encoder"]) == ["tiny-test", "tiny-test"]
    assert table["mAP"][0] == pytest.approx(reference.map)
    low, high = reference.intervals["map"]
    assert table["mAP 95 %"][0] == f"[{low:.3f}, {high:.3f}]"
    assert table["mAP"].isna()[1]  # being evaluated: the job was started for it
    assert table["images/s"].isna().all()

    timing = next(b for b in at.button if b.label.startswith("Time "))
    assert timing.label == "Time base, base-0001"
    at = timing.click().run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert (table["images/s"] > 0).all()
    assert list(table["input px"]) == [64, 64] and list(table["vector size"]) == [32, 32]
    assert not any(b.label.startswith("Time ") for b in at.button)


def test_seen_and_unseen_categories_against_each_parent(
    app: Callable[[], AppTest], evaluated: Studio
) -> None:
    at = open_page(app)
    assert any("No version was fine-tuned on feedback yet" in c.value for c in at.caption)
    report = fine_tune(evaluated, TrainSettings(epochs=1))
    at = open_page(app)
    table = next(d.value for d in at.dataframe if "seen mAP@10" in d.value.columns)
    [row] = table.to_dict("records")
    assert (row["version"], row["parent"]) == (report.version, "base")
    card = evaluated.store.get_model_version(report.version).card
    assert row["seen categories"] == len(card["seen_labels"])
    for name, found in report.label_sets.items():
        for metric, shown in (("map", "mAP@10"), ("mrr", "MRR@10")):
            assert row[f"{name} {shown} parent"] == pytest.approx(found["before"][metric])
            assert row[f"{name} {shown}"] == pytest.approx(found["after"][metric])
    assert row["needs confirmation"] == (
        evaluated.store.get_model_version(report.version).forgetting() is not None
    )
