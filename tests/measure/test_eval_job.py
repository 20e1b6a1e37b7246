"""The evaluation job's work: stored runs equal to a fresh evaluation, rankings that come back
from disk exactly as they went in, what counts as current, and a version that cannot be
evaluated."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

import core.measure.eval_job
from core.choices import METRIC_NAMES
from core.measure.eval_job import (
    CURVE_DEPTH,
    EvalRequest,
    RankingCache,
    current_signature,
    missing_evaluations,
    run_eval_job,
    stored_evaluations,
)
from core.measure.evaluation import (
    Ranking,
    evaluate,
    evaluate_version,
    metric_curves,
    studio_ranking,
    worst_queries,
)
from core.studio import Studio

REQUEST = EvalRequest(("base",), "all", 5, "labels")


def assert_same_ranking(got: Ranking, expected: Ranking) -> None:
    assert got.query_ids == expected.query_ids
    assert got.query_labels == expected.query_labels
    assert (
        got.ranked_ids.dtype == object and got.ranked_ids.tolist() == expected.ranked_ids.tolist()
    )
    np.testing.assert_array_equal(got.gains, expected.gains)
    np.testing.assert_array_equal(got.n_relevant, expected.n_relevant)
    if expected.ideal_gains is None:
        assert got.ideal_gains is None
    else:
        np.testing.assert_array_equal(got.ideal_gains, expected.ideal_gains)


@pytest.mark.parametrize("relevance", ["labels", "feedback"])
def test_a_cached_ranking_comes_back_as_it_went_in(
    fed: Studio, tmp_path: Any, relevance: str
) -> None:
    ranking = studio_ranking(fed, "base", "all", relevance, CURVE_DEPTH)
    if relevance == "feedback":  # the case with empty slots and graded ideal gains
        assert any(i is None for i in ranking.ranked_ids.ravel())
        assert ranking.ideal_gains is not None
    cache = RankingCache(tmp_path / "rankings")
    assert cache.get("base", "all", relevance, "sig") is None
    cache.put("base", "all", relevance, "sig", ranking)
    got = cache.get("base", "all", relevance, "sig")
    assert got is not None
    assert_same_ranking(got, ranking)
    pd.testing.assert_frame_equal(
        metric_curves(got, range(1, 51)), metric_curves(ranking, range(1, 51))
    )
    pd.testing.assert_frame_equal(worst_queries(got, 10), worst_queries(ranking, 10))
    # the curves are stored with it, read alone, as metric_curves computes them
    pd.testing.assert_frame_equal(
        cache.curves("base", "all", relevance, "sig"),  # type: ignore[arg-type]
        metric_curves(ranking, range(1, CURVE_DEPTH + 1)),
    )
    assert cache.curves("base", "all", relevance, "another state") is None
    assert cache.get("base", "all", relevance, "another state") is None
    assert cache.get("base", "test", relevance, "sig") is None


def test_the_job_stores_what_a_fresh_evaluation_measures_and_then_nothing_more(
    fed: Studio, monkeypatch: pytest.MonkeyPatch
) -> None:
    rankings: list[str] = []
    real = core.measure.eval_job.studio_ranking

    def counting(studio: Studio, version: str, *args: Any) -> Ranking:
        rankings.append(version)
        return real(studio, version, *args)

    monkeypatch.setattr(core.measure.eval_job, "studio_ranking", counting)
    cache = RankingCache(fed.settings.rankings_dir)
    assert missing_evaluations(fed.store, cache, REQUEST) == ["base"]
    ended = run_eval_job(fed, REQUEST)
    assert ended.state == "done" and (ended.done, ended.total) == (1, 1)
    reference = evaluate_version(fed.store, fed.index, "base", "all", 5, "labels")
    stored = stored_evaluations(fed.store, REQUEST)["base"]
    assert stored.current
    for name in METRIC_NAMES:
        assert getattr(stored.evaluation, name) == pytest.approx(getattr(reference, name))
    assert stored.evaluation.per_label == reference.per_label
    signature = current_signature(fed.store, "labels")
    assert_same_ranking(
        cache.get("base", "all", "labels", signature),  # type: ignore[arg-type]
        studio_ranking(fed, "base", "all", "labels", CURVE_DEPTH),
    )
    assert missing_evaluations(fed.store, cache, REQUEST) == []
    run_eval_job(fed, REQUEST)
    assert len(fed.store.runs.evaluations()) == 1 and rankings == ["base"]
    # another cutoff needs a run of its own, not another ranking: it is 50 deep
    other_k = EvalRequest(("base",), "all", 3, "labels")
    assert missing_evaluations(fed.store, cache, other_k) == ["base"]
    run_eval_job(fed, other_k)
    assert len(fed.store.runs.evaluations()) == 2 and rankings == ["base"]


def test_what_is_current_after_a_search_and_after_the_gallery_changes(fed: Studio) -> None:
    for relevance in ("labels", "feedback"):
        evaluate(fed, "base", "all", 5, relevance)
    labels, feedback = REQUEST, EvalRequest(("base",), "all", 5, "feedback")
    assert stored_evaluations(fed.store, labels)["base"].current
    assert stored_evaluations(fed.store, feedback)["base"].current
    user = fed.store.ensure_user("ann")
    search = fed.logged_gallery_search(user.id, fed.store.list_images()[0].id, 5)
    fed.store.feedback.log_interaction(search.query_id, search.results[0].image_id, "similar")
    assert stored_evaluations(fed.store, labels)["base"].current  # labels: the log is no matter
    assert not stored_evaluations(fed.store, feedback)["base"].current
    fed.remove_images([fed.store.list_images()[-1].id])
    stale = stored_evaluations(fed.store, labels)["base"]
    assert not stale.current and stale.evaluation.k == 5  # still there to show meanwhile
    assert stored_evaluations(fed.store, EvalRequest(("other",))) == {}


def test_a_version_that_cannot_be_evaluated_fails_the_job_not_the_others(fed: Studio) -> None:
    ids, vectors = fed.index.get_embeddings("base")
    fed.store.add_model_version("ft-half", "tiny-test", "base", {})
    fed.index.upsert("ft-half", ids[:5], vectors[:5])  # most images have no vector in it
    ended = run_eval_job(fed, EvalRequest(("ft-half", "base"), "all", 5, "labels"))
    assert ended.state == "failed" and (ended.done, ended.total) == (2, 2)
    assert "have no vector in version 'ft-half'" in (ended.message or "")
    assert [run.model_version for run in fed.store.runs.evaluations()] == ["base"]


def test_the_request_is_the_command_line() -> None:
    request = EvalRequest(("base", "ft-0001"), "test", 7, "feedback")
    assert request.args() == [
        "--model",
        "base",
        "--model",
        "ft-0001",
        "--split",
        "test",
        "-k",
        "7",
        "--relevance",
        "feedback",
    ]
    assert request.only(["ft-0001"]) == EvalRequest(("ft-0001",), "test", 7, "feedback")
