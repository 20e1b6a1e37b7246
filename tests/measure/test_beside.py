"""bench --beside-lab: searches alone and beside a real index-lab job, per thread policy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from core.measure.beside import BesideLabError, bench_beside_lab
from core.measure.lab_job import LabRequest, read_lab_status, start_lab_job
from core.studio import Studio
from tests.helpers import SpawnedJob


def test_searches_are_timed_alone_and_beside_a_real_lab_job(
    studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    studio.ingest([make_gallery(per_label=6)], label_from_folders=True)
    policies: list[str] = []
    adaptive = studio.query_threads

    def counted() -> int:
        policies.append("adaptive")
        return adaptive()

    studio.query_threads = counted
    figures = bench_beside_lab(
        studio, studio.settings, n_alone=6, gap=0.01, k=5, methods=("exact",)
    )
    assert figures["beside_lab_version"] == "base"
    for phase in ("alone", "lab"):
        for policy in ("fixed", "adaptive"):
            key = f"search_{phase}_{policy}"
            assert int(figures[f"{key}_searches"]) >= 1
            assert 0 < float(figures[f"{key}_p50_ms"]) <= float(figures[f"{key}_max_ms"])
    assert figures["search_alone_fixed_searches"] == figures["search_alone_adaptive_searches"] == 3
    status = read_lab_status(studio.settings)
    assert status is not None and status.state == "done"  # a real job ran, and its run is stored
    assert studio.query_threads is counted  # the product's policy is back in place
    searches = sum(int(figures[f"search_{p}_adaptive_searches"]) for p in ("alone", "lab"))
    assert len(policies) == searches + 4  # the warm-up searches use it too


def test_a_running_lab_job_is_not_measured_over(
    studio: Studio, make_gallery: Callable[..., Path], fake_spawn: list[SpawnedJob]
) -> None:
    studio.ingest([make_gallery(per_label=6)], label_from_folders=True)
    start_lab_job(studio.settings, LabRequest("base"))
    with pytest.raises(BesideLabError, match="already running"):
        bench_beside_lab(studio, studio.settings, n_alone=2)


def test_an_empty_gallery_is_refused(studio: Studio) -> None:
    with pytest.raises(BesideLabError, match="at least two images"):
        bench_beside_lab(studio, studio.settings, n_alone=2)
