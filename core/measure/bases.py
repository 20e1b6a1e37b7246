"""Bases side by side: what a person weighs when choosing an encoder (the Metrics page's
"Bases" table, `models`): ranking quality with intervals, speed, vector size.

A base is a version without a parent (`base`, and each `new-base`). Its speed is the tower's
forward images/s at its native input size, in the version's precision, batch 32, measured on
this machine (`measure_speed`) and kept on the version's card under `speed`: `new-base`
measures it, `models --measure` and the Metrics page measure the bases that lack it. Quality
is a stored evaluation's (the caller says which); nothing here ranks a gallery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from core.measure.bench import images_per_s, input_px
from core.measure.evaluation import Evaluation
from core.store import ModelVersion, utc_now
from core.studio import Studio

SPEED_BATCH = 32
SPEED_SECONDS = 3.0  # at least this long, after a warm-up batch


@dataclass(frozen=True)
class BaseFigures:
    """One base's row: its encoder, shape and speed, and (when given) an evaluation's
    mAP and MRR with their 95 % intervals."""

    version: str
    active: bool
    encoder: str
    precision: str
    input_px: int | None
    vector_size: int | None
    images_per_s: float | None
    evaluation: Evaluation | None

    def as_row(self) -> dict[str, Any]:
        """A table row (the page's): intervals as "[low, high]" text."""
        row: dict[str, Any] = {
            "version": f"{self.version} (active)" if self.active else self.version,
            "encoder": self.encoder,
            "precision": self.precision,
            "input px": self.input_px,
            "vector size": self.vector_size,
            "images/s": self.images_per_s,
        }
        for name, shown in (("map", "mAP"), ("mrr", "MRR")):
            e = self.evaluation
            row[shown] = None if e is None else getattr(e, name)
            low, high = (None, None) if e is None else e.intervals.get(name, (None, None))
            row[f"{shown} 95 %"] = None if low is None else f"[{low:.3f}, {high:.3f}]"
        return row


def measure_speed(studio: Studio, version: str) -> dict[str, Any]:
    """Time `version`'s tower (forward images/s, native size, its precision, batch
    `SPEED_BATCH`, torch's threads) and keep the figures on its card under `speed`."""
    encoder = studio.encoder(studio.store.get_model_version(version))
    size = input_px(encoder)
    rate = images_per_s(encoder.encode_pixels, size, SPEED_BATCH, SPEED_SECONDS)
    figures = {
        "images_per_s": round(rate, 1),
        "input_px": size,
        "vector_size": encoder.dim,
        "precision": encoder.precision,
        "batch": SPEED_BATCH,
        "threads": torch.get_num_threads(),
        "measured_at": utc_now(),
    }
    studio.store.update_card(version, speed=figures)
    return figures


def bases(studio: Studio) -> list[ModelVersion]:
    """The versions without a parent, oldest first."""
    return [v for v in studio.versions() if v.parent is None]


def unmeasured(studio: Studio) -> list[str]:
    """Bases whose card has no speed yet."""
    return [v.version for v in bases(studio) if "speed" not in v.card]


def compare_bases(studio: Studio, evaluations: Mapping[str, Evaluation]) -> list[BaseFigures]:
    """Every base's figures, with its evaluation from `evaluations` (by version) if any."""
    rows = []
    for version in bases(studio):
        speed = version.card.get("speed", {})
        rows.append(
            BaseFigures(
                version=version.version,
                active=version.active,
                encoder=version.encoder,
                precision=studio.precision(version),
                input_px=speed.get("input_px"),
                vector_size=speed.get("vector_size"),
                images_per_s=speed.get("images_per_s"),
                evaluation=evaluations.get(version.version),
            )
        )
    return rows
