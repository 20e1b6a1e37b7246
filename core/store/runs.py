"""Stored runs: evaluations (what was measured, on which gallery state, when) and training
jobs (status, progress and losses a background process writes and the Train page reads)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.store.database import StoreError, utc_now

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
                (
                    model_version,
                    split,
                    k,
                    relevance,
                    n_queries,
                    n_excluded,
                    json.dumps(metrics),
                    json.dumps(per_label),
                    signature,
                    seconds,
                    utc_now(),
                ),
            )
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
        self, model_version: str, split: str, k: int, relevance: str, signature: str | None
    ) -> EvaluationRun | None:
        """The newest run with these settings on this exact gallery state (`signature`), or
        on any state (None: what a page shows while a newer one is computed), if any."""
        sql = (
            "SELECT * FROM evaluation_runs WHERE model_version = ? AND split = ? AND k = ?"
            " AND relevance = ?"
        )
        params: list[object] = [model_version, split, k, relevance]
        if signature is not None:
            sql += " AND signature = ?"
            params.append(signature)
        with self._db.connect() as conn:
            row = conn.execute(f"{sql} ORDER BY id DESC LIMIT 1", params).fetchone()
        return None if row is None else _run(row)


LIVE_STATUSES = ("queued", "running", "cancelling")


@dataclass(frozen=True)
class TrainingRun:
    """One fine-tuning job."""

    id: int
    status: str  # queued, running, cancelling, then cancelled, done or failed
    parent: str
    version: str | None
    settings: dict[str, Any]
    progress: dict[str, Any]
    losses: list[dict[str, Any]]
    message: str | None
    pid: int | None
    created_at: str
    updated_at: str

    @property
    def live(self) -> bool:
        return self.status in LIVE_STATUSES

    @property
    def fraction(self) -> float:
        """How much of the planned work is done, 0–1 (early stopping may end it sooner)."""
        p = self.progress
        if not p:
            return 0.0
        done = p["epoch"] - 1 + p["step"] / max(p["steps"], 1)
        return float(min(done / max(p["epochs"], 1), 1.0))

    def describe(self) -> str:
        """One line for a progress bar: status, epoch, loss, time left."""
        p = self.progress
        if not p:  # before the first step: what the job is doing instead, if it said
            return " · ".join(
                [f"Run {self.id}", self.status, *([self.message] if self.message else [])]
            )
        eta = f" · about {p['eta_s']:.0f} s left" if p.get("eta_s") is not None else ""
        return (
            f"Run {self.id} · {self.status} · epoch {p['epoch']}/{p['epochs']}"
            f" · loss {p['loss']:.4f}{eta}"
        )


def _training(row: Any) -> TrainingRun:
    values = dict(row)
    for key in ("settings", "progress", "losses"):
        values[key] = json.loads(values[key])
    return TrainingRun(**values)


class TrainingLog:
    """Training jobs of one catalog (`Store.training`); at most one is live at a time."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def queue(self, parent: str, settings: dict[str, Any]) -> TrainingRun:
        """A new queued job; refused while another one is live."""
        now = utc_now()
        with self._db.connect() as conn:
            live = conn.execute(
                "SELECT id FROM training_runs WHERE status IN ('queued', 'running', 'cancelling')"
            ).fetchone()
            if live is not None:
                raise StoreError(f"Training run {live[0]} is still going; one run at a time.")
            cursor = conn.execute(
                "INSERT INTO training_runs (status, parent, settings, created_at, updated_at)"
                " VALUES ('queued', ?, ?, ?, ?)",
                (parent, json.dumps(settings), now, now),
            )
            run_id = int(cursor.lastrowid or 0)
        return self.get(run_id)

    def get(self, run_id: int) -> TrainingRun:
        with self._db.connect() as conn:
            row = conn.execute("SELECT * FROM training_runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise StoreError(f"Unknown training run {run_id}.")
        return _training(row)

    def runs(self, limit: int = 20) -> list[TrainingRun]:
        """The newest runs first."""
        with self._db.connect() as conn:
            rows = conn.execute(
                "SELECT * FROM training_runs ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_training(row) for row in rows]

    def update(self, run_id: int, **fields: Any) -> None:
        """Set status / version / progress / losses / message / pid (JSON fields encoded)."""
        allowed = {"status", "version", "progress", "losses", "message", "pid"}
        unknown = set(fields) - allowed
        if unknown:
            raise StoreError(f"Cannot update {', '.join(sorted(unknown))} of a training run.")
        encoded = {
            key: json.dumps(value) if key in ("progress", "losses") else value
            for key, value in fields.items()
        }
        assignments = ", ".join(f"{key} = ?" for key in encoded)
        with self._db.connect() as conn:
            conn.execute(
                f"UPDATE training_runs SET {assignments}, updated_at = ? WHERE id = ?",
                [*encoded.values(), utc_now(), run_id],
            )

    def request_cancel(self, run_id: int) -> bool:
        """Ask a live run to stop; False when it had already ended."""
        with self._db.connect() as conn:
            cursor = conn.execute(
                "UPDATE training_runs SET status = 'cancelling', updated_at = ?"
                " WHERE id = ? AND status IN ('queued', 'running')",
                (utc_now(), run_id),
            )
            return cursor.rowcount == 1
