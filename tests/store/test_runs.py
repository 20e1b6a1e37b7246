"""Stored evaluation runs: one per `Studio.evaluate`, reused while gallery and log stand still."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from core.choices import METRIC_NAMES
from core.measure.evaluation import evaluate, evaluation_from_run
from core.store import EvaluationRun
from core.studio import LoggedSearch, Studio
from tests.helpers import generated_image


@pytest.fixture
def gallery(studio: Studio, make_gallery: Callable[..., Path]) -> Path:
    """20 labelled images ingested; returns the folder root."""
    root = make_gallery(per_label=5)
    studio.ingest([root], label_from_folders=True)
    return root


def judged_search(studio: Studio) -> LoggedSearch:
    """One logged gallery search with its first result marked similar."""
    user = studio.store.ensure_user("ann")
    search = studio.logged_gallery_search(user.id, studio.store.list_images()[0].id, 5)
    studio.store.feedback.log_interaction(search.query_id, search.results[0].image_id, "similar")
    return search


def add_run(studio: Studio, **overrides: Any) -> EvaluationRun:
    """A run written straight to the log (settings as given, the rest made up)."""
    fields: dict[str, Any] = {
        "model_version": "base",
        "split": "all",
        "k": 10,
        "relevance": "labels",
        "n_queries": 3,
        "n_excluded": 0,
        "metrics": dict.fromkeys(METRIC_NAMES, 0.5),
        "per_label": [],
        "signature": "s",
        "seconds": 0.1,
    }
    return studio.store.runs.add_evaluation(**(fields | overrides))


def test_each_evaluate_stores_one_run_with_everything_it_measured(
    studio: Studio, gallery: Path
) -> None:
    result = evaluate(studio, k=5)
    (run,) = studio.store.runs.evaluations()
    assert (run.model_version, run.split, run.k, run.relevance) == ("base", "all", 5, "labels")
    assert (run.n_queries, run.n_excluded) == (20, 0)
    assert set(run.metrics) == set(METRIC_NAMES) | {f"{m}_interval" for m in METRIC_NAMES}
    for name in METRIC_NAMES:
        assert run.metrics[name] == result.metrics()[name]
        low, high = run.metrics[f"{name}_interval"]
        assert (low, high) == result.intervals[name]
        assert low <= run.metrics[name] <= high
    assert [row["label"] for row in run.per_label] == [row["label"] for row in result.per_label]
    assert run.per_label == result.per_label
    assert sum(row["n_queries"] for row in run.per_label) == 20
    assert run.signature == studio.store.state_signature()
    assert run.seconds == result.seconds >= 0
    assert datetime.fromisoformat(run.created_at).tzinfo is not None

    judged_search(studio)
    evaluate(studio, split="test", k=3, relevance="feedback")
    newest, oldest = studio.store.runs.evaluations()
    assert oldest == run
    assert (newest.split, newest.k, newest.relevance) == ("test", 3, "feedback")
    assert newest.id > run.id


def test_evaluating_twice_without_reuse_stores_two_runs(studio: Studio, gallery: Path) -> None:
    first = evaluate(studio, k=5)
    second = evaluate(studio, k=5)
    assert second.metrics() == first.metrics()
    assert len(studio.store.runs.evaluations()) == 2


def test_reuse_answers_from_the_stored_run_until_the_gallery_changes(
    studio: Studio, gallery: Path
) -> None:
    first = evaluate(studio, k=5)
    again = evaluate(studio, k=5, reuse=True)
    assert again == first  # the stored run, read back whole
    assert len(studio.store.runs.evaluations()) == 1

    evaluate(studio, k=4, reuse=True)  # other settings: not the same run
    evaluate(studio, k=5, split="test", reuse=True)
    assert len(studio.store.runs.evaluations()) == 3
    assert evaluate(studio, k=5, reuse=True) == first
    assert len(studio.store.runs.evaluations()) == 3

    extra = gallery.parent / "extra"
    extra.mkdir()
    generated_image(0, 99).save(extra / "new.png")
    studio.ingest([extra])  # one more (unlabelled) image: a new gallery state
    after = evaluate(studio, k=5, reuse=True)
    runs = studio.store.runs.evaluations()
    assert len(runs) == 4
    assert runs[0].signature == studio.store.state_signature() != runs[1].signature
    assert after.n_queries == 20  # the unlabelled image ranks but does not query
    assert evaluate(studio, k=5, reuse=True) == after
    assert len(studio.store.runs.evaluations()) == 4


def test_reuse_evaluates_again_after_one_more_interaction(studio: Studio, gallery: Path) -> None:
    search = judged_search(studio)
    first = evaluate(studio, k=5, relevance="feedback", reuse=True)
    assert evaluate(studio, k=5, relevance="feedback", reuse=True) == first
    assert len(studio.store.runs.evaluations()) == 1

    studio.store.feedback.log_interaction(search.query_id, search.results[1].image_id, "similar")
    second = evaluate(studio, k=5, relevance="feedback", reuse=True)
    assert len(studio.store.runs.evaluations()) == 2
    assert second.recall_at_k == 1.0  # both judged items are in the top 5 they were shown in
    assert evaluate(studio, k=5, relevance="feedback", reuse=True) == second
    assert len(studio.store.runs.evaluations()) == 2


def test_a_stored_run_round_trips_as_an_evaluation(studio: Studio, gallery: Path) -> None:
    result = evaluate(studio, split="train", k=3)
    (run,) = studio.store.runs.evaluations()
    back = evaluation_from_run(run)
    assert back == result
    assert back.as_dict(per_label=True) == result.as_dict(per_label=True)
    assert json.loads(json.dumps(back.as_dict(per_label=True))) == json.loads(
        json.dumps(result.as_dict(per_label=True))
    )


def test_runs_come_newest_first_and_filter_by_version(studio: Studio) -> None:
    studio.store.add_model_version("ft-0001", "tiny-test", "base", {})
    a = add_run(studio, k=1)
    b = add_run(studio, model_version="ft-0001", k=2)
    c = add_run(studio, k=3)
    assert [r.id for r in studio.store.runs.evaluations()] == [c.id, b.id, a.id]
    assert studio.store.runs.evaluations("base") == [c, a]
    assert studio.store.runs.evaluations("ft-0001") == [b]
    assert studio.store.runs.evaluations("ft-0002") == []


def test_latest_evaluation_matches_every_setting_and_the_signature(studio: Studio) -> None:
    older = add_run(studio)
    newer = add_run(studio)
    runs = studio.store.runs
    assert runs.latest_evaluation("base", "all", 10, "labels", "s") == newer != older
    assert runs.latest_evaluation("base", "all", 10, "labels", "other") is None
    assert runs.latest_evaluation("base", "test", 10, "labels", "s") is None
    assert runs.latest_evaluation("base", "all", 5, "labels", "s") is None
    assert runs.latest_evaluation("base", "all", 10, "feedback", "s") is None


def test_latest_evaluation_on_any_state_is_the_newest_run(studio: Studio) -> None:
    add_run(studio, signature="images=1|log=1")
    newest = add_run(studio, signature="images=2|log=1")
    add_run(studio, k=5, signature="images=3|log=1")
    assert studio.store.runs.latest_evaluation("base", "all", 10, "labels", None) == newest
    assert studio.store.runs.latest_evaluation("ft-0001", "all", 10, "labels", None) is None


@pytest.mark.parametrize(
    ("column", "value"),
    [("split", "validation"), ("relevance", "clicks"), ("k", 0)],
)
def test_the_schema_refuses_bad_settings(studio: Studio, column: str, value: object) -> None:
    row: dict[str, object] = {
        "model_version": "base",
        "split": "all",
        "k": 10,
        "relevance": "labels",
        "n_queries": 1,
        "n_excluded": 0,
        "metrics": "{}",
        "per_label": "[]",
        "signature": "s",
        "seconds": 0.0,
        "created_at": "2024-01-01T00:00:00+00:00",
    }
    conn = sqlite3.connect(studio.settings.catalog_path)
    try:
        sql = f"INSERT INTO evaluation_runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})"
        conn.execute(sql, list(row.values()))  # the good row goes in
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            conn.execute(sql, list((row | {column: value}).values()))
        conn.rollback()
    finally:
        conn.close()
    with pytest.raises(sqlite3.IntegrityError):
        add_run(studio, **{column: value})
    assert studio.store.runs.evaluations() == []
