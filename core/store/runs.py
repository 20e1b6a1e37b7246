"""Stored evaluation runs: what was measured, on which gallery state, when."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.store.database import utc_now

if TYPE_CHECKING:
    from core.store.database import Database


@dataclass(frozen=True)
class EvaluationRun:
    """One stored evaluation of a model version."""

    id: int
    model_version: str
    split: str
    k: int
    relevance: str  # "labels" (same category) or "feedback" (the logged judgements)
    n_queries: int
    n_excluded: int
    metrics: dict[str, Any]  # metric -> value, and metric_interval -> [low, high]
    per_label: list[dict[str, Any]]
    signature: str  # Store.state_signature() when it ran: equal signature, same answer
    seconds: float
    created_at: str


def _run(row: Any) -> EvaluationRun:
    values = dict(row)
    values["metrics"] = json.loads(values["metrics"])
    values["per_label"] = json.loads(values["per_label"])
    return EvaluationRun(**values)


class RunLog:
    """Write and read evaluation runs of one catalog (`Store.runs`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add_evaluation(
        self,
        *,
        model_version: str,
        split: str,
        k: int,
        relevance: str,
        n_queries: int,
        n_excluded: int,
        metrics: dict[str, Any],
        per_label: list[dict[str, Any]],
        signature: str,
        seconds: float,
    ) -> EvaluationRun:
        with self._db.connect() as conn:
            cursor = conn.execute(
                "INSERT INTO evaluation_runs (model_version, split, k, relevance, n_queries,"
                " n_excluded, metrics, per_label, signature, seconds, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (model_version, split, k, relevance, n_queries, n_excluded, json.dumps(metrics),
                 json.dumps(per_label), signature, seconds, utc_now()),
            )  # fmt: skip
            row = conn.execute(
                "SELECT * FROM evaluation_runs WHERE id = ?", (cursor.lastrowid,)
            ).fetchone()
        return _run(row)

    def evaluations(self, model_version: str | None = None) -> list[EvaluationRun]:
        """Stored runs, newest first."""
        where, params = ("WHERE model_version = ?", [model_version]) if model_version else ("", [])
        with self._db.connect() as conn:
            rows = conn.execute(
                f"SELECT * FROM evaluation_runs {where} ORDER BY id DESC", params
            ).fetchall()
        return [_run(row) for row in rows]

    def latest_evaluation(
        self, model_version: str, split: str, k: int, relevance: str, signature: str
    ) -> EvaluationRun | None:
        """The newest run with these settings on this exact gallery state, if any."""
        with self._db.connect() as conn:
            row = conn.execute(
                "SELECT * FROM evaluation_runs WHERE model_version = ? AND split = ? AND k = ?"
                " AND relevance = ? AND signature = ? ORDER BY id DESC LIMIT 1",
                (model_version, split, k, relevance, signature),
            ).fetchone()
        return None if row is None else _run(row)
