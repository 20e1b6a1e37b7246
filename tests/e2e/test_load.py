"""The browser load benchmark itself: it runs, reports its figures, and audits the log."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from core.studio import Studio
from tests.helpers import raw, run_json

pytestmark = pytest.mark.e2e


def test_two_people_at_once_leave_an_exact_log_in_a_copy(
    studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    studio.ingest([make_gallery(per_label=5)], label_from_folders=True)
    data = studio.settings.data_dir
    figures = run_json(data, "bench", "--browser-users", "2", "--rounds", "2")
    assert figures["users"] == 2 and figures["uploads"] == 4
    assert (figures["log_queries"], figures["log_impressions"], figures["log_labels"]) == (4, 40, 4)
    assert figures["labels_not_shown"] == 0 and figures["log_other_rows"] == 0
    assert figures["log_exact"] is True
    p50, p95 = figures["time_to_results_p50_s"], figures["time_to_results_p95_s"]
    assert 0 < p50 <= p95 <= figures["time_to_results_max_s"]
    assert figures["searches_per_s"] > 0
    assert figures["background_jobs"] == ["map"]  # the gallery had no map: the app started one
    # the benchmark searched a copy: the real log is untouched
    assert raw(studio.settings.catalog_path, "SELECT COUNT(*) FROM interactions") == [(0,)]
