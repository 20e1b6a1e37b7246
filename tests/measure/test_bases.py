"""Bases side by side: the speed a base's card records, and the rows the Metrics page shows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import core.measure.bases
from core.measure.bases import compare_bases, measure_speed, unmeasured
from core.measure.evaluation import evaluate
from core.studio import Studio


@pytest.fixture(autouse=True)
def quick_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core.measure.bases, "SPEED_SECONDS", 0.0)


def test_timing_a_base_keeps_its_speed_on_the_card(studio: Studio) -> None:
    assert unmeasured(studio) == ["base"]
    figures = measure_speed(studio, "base")
    assert figures["images_per_s"] > 0
    assert (figures["input_px"], figures["vector_size"], figures["batch"]) == (64, 32, 32)
    assert figures["precision"] == studio.precision(studio.active_version())
    assert studio.store.get_model_version("base").card["speed"] == figures
    assert unmeasured(studio) == []


def test_only_bases_are_rows_each_with_its_own_evaluation(
    studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    studio.ingest([make_gallery(per_label=6)], label_from_folders=True)
    studio.new_base("tiny-test")
    studio.store.add_model_version("ft-0001", "tiny-test", "base", {"mode": "head"})
    evaluation = evaluate(studio, "base-0001", "all", 10, "labels")
    measure_speed(studio, "base-0001")
    rows = compare_bases(studio, {"base-0001": evaluation})
    assert [(r.version, r.active) for r in rows] == [("base", True), ("base-0001", False)]
    assert unmeasured(studio) == ["base"]
    untimed, timed = (r.as_row() for r in rows)
    assert untimed["images/s"] is None and untimed["mAP"] is None and untimed["MRR 95 %"] is None
    assert timed["version"] == "base-0001" and timed["images/s"] > 0
    assert timed["mAP"] == evaluation.map and timed["MRR"] == evaluation.mrr
    low, high = evaluation.intervals["mrr"]
    assert timed["MRR 95 %"] == f"[{low:.3f}, {high:.3f}]"
    assert untimed["version"] == "base (active)"
