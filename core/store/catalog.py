"""The catalog: images, model versions and users, as frozen dataclasses in and out."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.choices import SPLITS
from core.store.database import Database, StoreError, utc_now
from core.store.feedback import FeedbackLog
from core.store.runs import RunLog, TrainingLog

BASE_VERSION = "base"


def split_for(image_id: str) -> str:
    """Deterministic train/test split from the id (sha256 hex): about half each."""
    return SPLITS[int(image_id[:8], 16) % 2]


@dataclass(frozen=True)
class ImageRecord:
    """One catalogued image."""

    id: str
    original_name: str
    label: str | None
    split: str
    width: int
    height: int
    file: str  # relative to Settings.images_dir
    source: str
    added_at: str = field(default_factory=utc_now)


# activating a version whose unseen-category test metrics fell more than this (relative) below
# its parent's needs a confirmation (`ModelVersion.forgetting`)
FORGETTING_TOLERANCE = 0.01


@dataclass(frozen=True)
class ModelVersion:
    """An immutable encoder snapshot; exactly one is active."""

    version: str
    encoder: str
    parent: str | None
    active: bool
    created_at: str
    card: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """One row of a versions table (`models`, the Train page): lineage, mode, and the test
        metrics recorded when it was trained (empty for a base), also over seen and unseen
        categories (`label_sets`)."""
        return {
            "version": self.version,
            "active": self.active,
            "parent": self.parent,
            "encoder": self.encoder,
            "precision": self.card.get("precision"),
            "mode": self.card.get("mode"),
            "created_at": self.created_at,
            "metrics": self.card.get("metrics", {}),
            "metrics_before": self.card.get("metrics_before", {}),
            "pairs": (self.card.get("pairs") or {}).get("pairs"),
            "seen_labels": len(self.card["seen_labels"]) if "seen_labels" in self.card else None,
            "label_sets": self.label_sets(),
        }

    def label_sets(self) -> dict[str, dict[str, dict[str, float]]]:
        """The test metrics recorded at training time over the queries of the categories its
        feedback covered and did not, against its parent's on the same queries:
        {"seen": {"before": …, "after": …}, "unseen": …}; {} for a version without them."""
        return {
            name: {
                "before": self.card.get(f"metrics_before_{name}", {}),
                "after": self.card[f"metrics_{name}"],
            }
            for name in ("seen", "unseen")
            if f"metrics_{name}" in self.card
        }

    def forgetting(self, tolerance: float = FORGETTING_TOLERANCE) -> str | None:
        """Why activating this version needs a confirmation, or None: its test mAP@10 or MRR@10
        over the categories its training feedback never covered (`metrics_unseen`, recorded
        when it was trained) is more than `tolerance` (relative) below its parent's on the same
        queries (`metrics_before_unseen`). A version without those figures passes."""
        after = self.card.get("metrics_unseen") or {}
        before = self.card.get("metrics_before_unseen") or {}
        worse = [
            f"{shown} {after[name]:.4f} against {before[name]:.4f}"
            f" ({after[name] / before[name] - 1:+.1%})"
            for name, shown in (("map", "mAP@10"), ("mrr", "MRR@10"))
            if name in after and before.get(name) and after[name] < before[name] * (1 - tolerance)
        ]
        if not worse:
            return None
        counted = f" ({int(after['n_queries'])} queries)" if "n_queries" in after else ""
        return (
            f"{self.version} ranks the categories its feedback never covered worse than its "
            f"parent {self.parent}: {'; '.join(worse)} on the test split{counted}"
        )


@dataclass(frozen=True)
class User:
    id: int
    name: str
    location: str | None
    created_at: str


def _label_filter(label: str | None) -> tuple[list[str], list[object]]:
    """SQL clauses and parameters matching `label` or any of its sub-labels (none: all)."""
    if label is None:
        return [], []
    # A prefix test, not LIKE: LIKE ignores ASCII case, so "animals" would match
    # "Animals/cats" while "Animals" itself (a different label) would not.
    return ["(label = ? OR substr(label, 1, ?) = ?)"], [label, len(label) + 1, label + "/"]


def _image(row: sqlite3.Row) -> ImageRecord:
    return ImageRecord(**dict(row))


def _version(row: sqlite3.Row) -> ModelVersion:
    values = dict(row)
    values["active"] = bool(values["active"])
    values["card"] = json.loads(values["card"])
    return ModelVersion(**values)


class Store(Database):
    """The catalog at `path`: images, model versions, users (and, through `feedback`, the log)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.feedback = FeedbackLog(self)
        self.runs = RunLog(self)
        self.training = TrainingLog(self)

    # --- images -------------------------------------------------------------------------

    def add_images(self, records: Iterable[ImageRecord]) -> int:
        """Insert records whose id is not catalogued yet; returns how many were new."""
        rows = [
            (
                r.id,
                r.original_name,
                r.label,
                r.split,
                r.width,
                r.height,
                r.file,
                r.source,
                r.added_at,
            )
            for r in records
        ]
        with self.connect() as conn:
            before = conn.total_changes
            conn.executemany("INSERT OR IGNORE INTO images VALUES (?,?,?,?,?,?,?,?,?)", rows)
            return conn.total_changes - before

    def existing_ids(self, ids: Iterable[str]) -> set[str]:
        wanted = list(dict.fromkeys(ids))
        found: set[str] = set()
        with self.connect() as conn:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT id FROM images WHERE id IN ({marks})"
                found.update(row[0] for row in conn.execute(sql, chunk))
        return found

    def get_images(self, ids: Sequence[str]) -> dict[str, ImageRecord]:
        """Records by id (unknown ids are simply absent)."""
        out: dict[str, ImageRecord] = {}
        with self.connect() as conn:
            for start in range(0, len(ids), 500):
                chunk = list(ids[start : start + 500])
                marks = ",".join("?" * len(chunk))
                for row in conn.execute(f"SELECT * FROM images WHERE id IN ({marks})", chunk):
                    out[row["id"]] = _image(row)
        return out

    def list_images(
        self,
        *,
        label: str | None = None,
        split: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ImageRecord]:
        """Catalogued images, oldest first; `label` matches the label or any sub-label."""
        if split is not None and split not in SPLITS:
            raise StoreError(f"Unknown split {split!r}; use one of {', '.join(SPLITS)}.")
        clauses, params = _label_filter(label)
        if split is not None:
            clauses.append("split = ?")
            params.append(split)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT * FROM images {where} ORDER BY added_at, id LIMIT ? OFFSET ?"
        params += [-1 if limit is None else limit, offset]
        with self.connect() as conn:
            return [_image(row) for row in conn.execute(sql, params)]

    def count_images(self, *, label: str | None = None) -> int:
        """Catalogued images; `label` counts the label and its sub-labels, as `list_images`."""
        clauses, params = _label_filter(label)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self.connect() as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM images {where}", params).fetchone()[0])

    def image_signature(self) -> str:
        """Changes whenever the gallery changes: images added or removed, labels."""
        with self.connect() as conn:
            images = conn.execute(
                "SELECT COUNT(*), COUNT(label), MAX(added_at), SUM(length(id) * rowid) FROM images"
            ).fetchone()
        return f"images={images[0]}/{images[1]}/{images[2]}/{images[3]}"

    def state_signature(self) -> str:
        """Changes whenever the gallery or the log changes: images, labels, interactions."""
        with self.connect() as conn:
            log = conn.execute("SELECT MAX(id) FROM interactions").fetchone()
        return f"{self.image_signature()}|log={log[0]}"

    def label_counts(self) -> dict[str, int]:
        """Images per label (unlabelled images under the empty string), largest first."""
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT COALESCE(label, '') AS label, COUNT(*) AS n FROM images "
                "GROUP BY COALESCE(label, '') ORDER BY n DESC, label"
            )
            return {row["label"]: row["n"] for row in rows}

    def remove_images(self, ids: Iterable[str]) -> int:
        with self.connect() as conn:
            before = conn.total_changes
            conn.executemany("DELETE FROM images WHERE id = ?", [(i,) for i in ids])
            return conn.total_changes - before

    # --- model versions -----------------------------------------------------------------

    def ensure_base_version(
        self, encoder: str, precision: Callable[[], str] = lambda: "fp32"
    ) -> ModelVersion:
        """Register `base` (active) at first start, its vectors computed in `precision()`
        (asked only then); later calls return the active version."""
        with self.connect() as conn:
            if (
                conn.execute(
                    "SELECT 1 FROM model_versions WHERE version = ?", (BASE_VERSION,)
                ).fetchone()
                is None
            ):
                has_active = conn.execute(
                    "SELECT 1 FROM model_versions WHERE active = 1"
                ).fetchone()
                card = {
                    "encoder": encoder,
                    "precision": precision(),
                    "note": "the shipped encoder, no fine-tuning",
                }
                conn.execute(
                    "INSERT INTO model_versions VALUES (?, ?, NULL, ?, ?, ?)",
                    (BASE_VERSION, encoder, 0 if has_active else 1, utc_now(), json.dumps(card)),
                )
        return self.active_version()

    def add_model_version(
        self, version: str, encoder: str, parent: str | None, card: dict[str, Any]
    ) -> ModelVersion:
        """Record a new (inactive) version; its name must be new."""
        with self.connect() as conn:
            try:
                conn.execute(
                    "INSERT INTO model_versions VALUES (?, ?, ?, 0, ?, ?)",
                    (version, encoder, parent, utc_now(), json.dumps(card)),
                )
            except sqlite3.IntegrityError as exc:
                raise StoreError(f"Cannot add model version {version!r}: {exc}.") from exc
        return self.get_model_version(version)

    def list_model_versions(self) -> list[ModelVersion]:
        with self.connect() as conn:
            rows = conn.execute("SELECT * FROM model_versions ORDER BY created_at, version")
            return [_version(row) for row in rows]

    def get_model_version(self, version: str) -> ModelVersion:
        with self.connect() as conn:
            row = conn.execute(
                "SELECT * FROM model_versions WHERE version = ?", (version,)
            ).fetchone()
        if row is None:
            known = ", ".join(v.version for v in self.list_model_versions()) or "none yet"
            raise StoreError(f"Unknown model version {version!r}; known: {known}.")
        return _version(row)

    def active_version(self) -> ModelVersion:
        with self.connect() as conn:
            row = conn.execute("SELECT * FROM model_versions WHERE active = 1").fetchone()
        if row is None:
            raise StoreError("No model version is active yet; ingest images or run `demo-data`.")
        return _version(row)

    def activate(self, version: str) -> ModelVersion:
        """Make `version` the one search uses (atomically: never zero or two active)."""
        self.get_model_version(version)
        with self.connect() as conn:
            conn.execute("UPDATE model_versions SET active = 0 WHERE active = 1")
            conn.execute("UPDATE model_versions SET active = 1 WHERE version = ?", (version,))
        return self.get_model_version(version)

    def update_card(self, version: str, **entries: Any) -> ModelVersion:
        """Merge entries into a version's card (metrics added after evaluation, …)."""
        card = {**self.get_model_version(version).card, **entries}
        with self.connect() as conn:
            conn.execute(
                "UPDATE model_versions SET card = ? WHERE version = ?", (json.dumps(card), version)
            )
        return self.get_model_version(version)

    # --- users --------------------------------------------------------------------------

    def ensure_user(self, name: str, location: str | None = None) -> User:
        """The user called `name`, created on first use."""
        name = name.strip()
        if not name:
            raise StoreError("A user needs a non-empty name.")
        with self.connect() as conn:
            # read first: the app asks on every rerun, and a write would take the database's
            # write lock each time (all sessions queue behind it)
            row = conn.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
            if row is None:
                conn.execute(
                    "INSERT OR IGNORE INTO users (name, location, created_at) VALUES (?, ?, ?)",
                    (name, location, utc_now()),
                )
                row = conn.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
        return User(**dict(row))

    def list_users(self) -> list[User]:
        with self.connect() as conn:
            return [User(**dict(row)) for row in conn.execute("SELECT * FROM users ORDER BY id")]

    def get_user(self, user_id: int) -> User:
        with self.connect() as conn:
            row = conn.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
        if row is None:
            raise StoreError(f"Unknown user id {user_id}.")
        return User(**dict(row))

    def set_user_location(self, user_id: int, location: str | None) -> User:
        """A location the user chose (None: follow what the browser reports)."""
        self.get_user(user_id)
        with self.connect() as conn:
            conn.execute("UPDATE users SET location = ? WHERE id = ?", (location, user_id))
        return self.get_user(user_id)
