"""The Metrics page renders its charts from a store filled by `simulate`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.measure.simulate import simulate
from core.studio import Studio


@pytest.fixture
def metrics_page(
    app: Callable[[], AppTest], studio: Studio, make_gallery: Callable[..., Path]
) -> AppTest:
    studio.ingest([make_gallery(per_label=8)], label_from_folders=True)
    simulate(studio, n_queries=20, seed=0, k=5)
    at = app().run()
    at.switch_page("pages/metrics.py").run()
    assert not at.exception, at.exception
    return at


def charts(at: AppTest) -> list:  # type: ignore[type-arg]
    return at.get("plotly_chart")


def test_offline_and_online_charts_render(metrics_page: AppTest, studio: Studio) -> None:
    # versions bars + metric@k curves + four online rate charts
    assert len(charts(metrics_page)) == 6
    assert [m.label for m in metrics_page.metric][:2] == ["Impressions", "CTR"]
    assert metrics_page.metric[0].value == "100"  # 20 simulated queries x 5 results
    notes = " ".join(c.value for c in metrics_page.caption)
    assert "**MRR** rewards" in notes and "**CTR**" in notes
    # The page's evaluation was stored as a run.
    [run] = studio.store.runs.evaluations()
    assert (run.model_version, run.split, run.k, run.relevance) == ("base", "all", 10, "labels")


def test_a_revisit_reuses_the_stored_run(metrics_page: AppTest, studio: Studio) -> None:
    metrics_page.run()
    assert len(studio.store.runs.evaluations()) == 1


def test_per_label_table_lists_every_label_worst_first(metrics_page: AppTest) -> None:
    table = metrics_page.dataframe[0].value
    assert sorted(table["label"]) == sorted(
        ["colours/blue", "colours/red", "shapes/circles", "shapes/squares"]
    )
    assert list(table["mAP"]) == sorted(table["mAP"])


def test_feedback_relevance_and_another_cutoff(metrics_page: AppTest, studio: Studio) -> None:
    metrics_page.segmented_control[1].set_value("feedback").run()
    metrics_page.slider[0].set_value(3).run()
    assert not metrics_page.exception
    relevances = {(r.relevance, r.k) for r in studio.store.runs.evaluations()}
    assert ("feedback", 3) in relevances


def test_worst_queries_show_thumbnails(metrics_page: AppTest) -> None:
    worst_markdown = [m.value for m in metrics_page.markdown if " · mAP " in m.value]
    assert len(worst_markdown) == 5
    assert len(metrics_page.image) >= 5 * 11  # query + 10 results each
