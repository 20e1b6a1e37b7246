"""The feedback log: queries, impressions and interactions, exactly as the seed specifies.

One row per event in `interactions`:
`user_id | query_image_id | displayed_image_id | position | interaction_type | location |
timestamp` plus `model_version` and `value`. Read back (`interactions()`) and exported, the
log speaks the seed's language: `UserID | QueryImageID | DisplayedImageID |
PositionInDisplayedList | InteractionType | Location | Timestamp` plus `ModelVersion` and
`Value` (`LOG_FIELDS` maps each SQL column to its name). Every displayed result is one `impression`
(written with its query, in the same transaction, and unique per query and image, so a rerun
can never log it twice). Labels are `similar` / `not_similar` rows with value 1 (set) or 0
(undone); grades are `grade` rows with value 0–3 (NULL clears). The latest row wins wherever
labels are read.
"""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from core.choices import EXPORT_FORMATS, QUERY_SOURCES
from core.store.database import StoreError, utc_now

if TYPE_CHECKING:
    from core.store.database import Database

ACTION_TYPES = ("click", "similar", "not_similar", "grade")  # what a person does to a result
# (SQL column, exported name): the log's columns as the seed names them, in the seed's order;
# the one place the store's snake_case meets the seed's names
LOG_FIELDS: tuple[tuple[str, str], ...] = (
    ("user_id", "UserID"),
    ("query_image_id", "QueryImageID"),
    ("displayed_image_id", "DisplayedImageID"),
    ("position", "PositionInDisplayedList"),
    ("interaction_type", "InteractionType"),
    ("location", "Location"),
    ("timestamp", "Timestamp"),
    ("model_version", "ModelVersion"),
    ("value", "Value"),
)
QUERY_ID_FIELD = ("query_id", "QueryID")  # appended by `interactions(with_query_id=True)`
LOG_COLUMNS = tuple(name for _, name in LOG_FIELDS)  # the exported names, in order
_LOG_DTYPES = {"user_id": "int64", "position": "int64", "value": "float64", "query_id": "int64"}


@dataclass(frozen=True)
class LoggedQuery:
    """One search as it was shown to somebody."""

    id: int
    user_id: int
    query_image_id: str
    model_version: str
    parent_id: int | None
    source: str
    n_results: int
    location: str | None
    created_at: str


@dataclass(frozen=True)
class ResultLabel:
    """The current judgement of one displayed image within a query chain."""

    relevance: str | None  # "similar", "not_similar" or None (never labelled, or undone)
    grade: int | None  # 0–3, or None


def _check_value(interaction_type: str, value: float | None) -> float | None:
    """Validate an action's value; returns what is stored."""
    if interaction_type == "grade":
        if value is not None and (value not in (0, 1, 2, 3)):
            raise StoreError(f"A grade must be 0, 1, 2 or 3 (or empty to clear it), not {value}.")
        return None if value is None else float(value)
    if interaction_type in ("similar", "not_similar"):
        value = 1.0 if value is None else value
        if value not in (0, 1):
            raise StoreError(f"A {interaction_type} label is 1 (set) or 0 (undone), not {value}.")
        return float(value)
    if value is not None:
        raise StoreError(f"A {interaction_type} carries no value.")
    return None


class FeedbackLog:
    """Write and read the log of one catalog (`Store.feedback`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add_query_image(self, image_id: str, file: str, width: int, height: int) -> None:
        """Record an uploaded query image (stored like gallery images, but not in the gallery)."""
        with self._db.connect() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO query_images VALUES (?, ?, ?, ?, ?)",
                (image_id, file, width, height, utc_now()),
            )

    def query_image_file(self, image_id: str) -> str | None:
        """The stored file of an uploaded query image (relative to the queries folder)."""
        with self._db.connect() as conn:
            row = conn.execute("SELECT file FROM query_images WHERE id = ?", (image_id,)).fetchone()
        return None if row is None else str(row[0])

    def log_query(
        self,
        *,
        user_id: int,
        query_image_id: str,
        model_version: str,
        results: Sequence[tuple[str, float]],
        source: str,
        parent_id: int | None = None,
        location: str | None = None,
    ) -> int:
        """A search and one impression per displayed result (positions 1…n), atomically.

        `results` are (image_id, score) best first. Returns the new query id.
        """
        if source not in QUERY_SOURCES:
            raise StoreError(f"Unknown query source {source!r}; use one of {QUERY_SOURCES}.")
        ids = [image_id for image_id, _ in results]
        if len(set(ids)) != len(ids):
            raise StoreError("A result list shows each image at most once.")
        now = utc_now()
        with self._db.connect() as conn:
            _check_query(conn, user_id, query_image_id, model_version, parent_id, ids)
            cursor = conn.execute(
                "INSERT INTO queries (user_id, query_image_id, model_version, parent_id, source,"
                " n_results, location, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    user_id,
                    query_image_id,
                    model_version,
                    parent_id,
                    source,
                    len(ids),
                    location,
                    now,
                ),
            )
            query_id = int(cursor.lastrowid or 0)
            conn.executemany(
                "INSERT INTO interactions (user_id, query_id, query_image_id, displayed_image_id,"
                " position, interaction_type, value, score, location, model_version, timestamp)"
                " VALUES (?, ?, ?, ?, ?, 'impression', NULL, ?, ?, ?, ?)",
                [
                    (
                        user_id,
                        query_id,
                        query_image_id,
                        image_id,
                        position,
                        float(score),
                        location,
                        model_version,
                        now,
                    )
                    for position, (image_id, score) in enumerate(results, start=1)
                ],
            )
        return query_id

    def log_interaction(
        self,
        query_id: int,
        displayed_image_id: str,
        interaction_type: str,
        *,
        value: float | None = None,
        user_id: int | None = None,
        position: int | None = None,
    ) -> int:
        """One action on a displayed result; returns the row id.

        The result must have been shown in that query (its impression fixes the position: a
        `position` given must match it). The user defaults to the query's.
        """
        if interaction_type not in ACTION_TYPES:
            raise StoreError(
                f"Unknown interaction {interaction_type!r}; use one of {ACTION_TYPES}."
            )
        stored = _check_value(interaction_type, value)
        with self._db.connect() as conn:
            query = self._get_query(conn, query_id)
            who = query.user_id if user_id is None else user_id
            _require_user(conn, who)
            shown = conn.execute(
                "SELECT position FROM interactions WHERE query_id = ? AND displayed_image_id = ?"
                " AND interaction_type = 'impression'",
                (query_id, displayed_image_id),
            ).fetchone()
            if shown is None:
                raise StoreError(
                    f"Image {displayed_image_id[:12]}… was not shown in query {query_id}."
                )
            if position is not None and position != shown[0]:
                raise StoreError(
                    f"Position {position} is wrong: query {query_id} showed that image at "
                    f"{shown[0]} of {query.n_results}."
                )
            cursor = conn.execute(
                "INSERT INTO interactions (user_id, query_id, query_image_id, displayed_image_id,"
                " position, interaction_type, value, score, location, model_version, timestamp)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)",
                (
                    who,
                    query_id,
                    query.query_image_id,
                    displayed_image_id,
                    shown[0],
                    interaction_type,
                    stored,
                    query.location,
                    query.model_version,
                    utc_now(),
                ),
            )
            return int(cursor.lastrowid or 0)

    def _get_query(self, conn: sqlite3.Connection, query_id: int) -> LoggedQuery:
        row = conn.execute("SELECT * FROM queries WHERE id = ?", (query_id,)).fetchone()
        if row is None:
            raise StoreError(f"Unknown query {query_id}.")
        return LoggedQuery(**dict(row))

    def get_query(self, query_id: int) -> LoggedQuery:
        with self._db.connect() as conn:
            return self._get_query(conn, query_id)

    def last_query(self, user_id: int | None = None) -> LoggedQuery | None:
        """The most recent search (of one user, or anyone's)."""
        where, params = ("WHERE user_id = ?", [user_id]) if user_id is not None else ("", [])
        with self._db.connect() as conn:
            row = conn.execute(
                f"SELECT * FROM queries {where} ORDER BY id DESC LIMIT 1", params
            ).fetchone()
        return None if row is None else LoggedQuery(**dict(row))

    def shown(self, query_id: int) -> list[str]:
        """The images a query displayed, by position."""
        with self._db.connect() as conn:
            rows = conn.execute(
                "SELECT displayed_image_id FROM interactions WHERE query_id = ?"
                " AND interaction_type = 'impression' ORDER BY position",
                (query_id,),
            ).fetchall()
        return [row[0] for row in rows]

    def query_chain(self, query_id: int) -> list[LoggedQuery]:
        """The query and the ones it refined, root first."""
        chain: list[LoggedQuery] = []
        with self._db.connect() as conn:
            current: int | None = query_id
            while current is not None:
                query = self._get_query(conn, current)
                chain.append(query)
                current = query.parent_id
        return chain[::-1]

    def labels(self, query_ids: Sequence[int]) -> dict[str, ResultLabel]:
        """Current label and grade of each image displayed in these queries; latest row wins."""
        marks = ",".join("?" * len(query_ids))
        with self._db.connect() as conn:
            rows = conn.execute(
                f"SELECT displayed_image_id, interaction_type, value FROM interactions"
                f" WHERE query_id IN ({marks})"
                " AND interaction_type IN ('similar', 'not_similar', 'grade')"
                f" ORDER BY id",
                list(query_ids),
            ).fetchall()
        relevance: dict[str, str | None] = {}
        grades: dict[str, int | None] = {}
        for image_id, kind, value in rows:
            if kind == "grade":
                grades[image_id] = None if value is None else int(value)
            else:
                relevance[image_id] = kind if value == 1 else None
        return {
            image_id: ResultLabel(relevance.get(image_id), grades.get(image_id))
            for image_id in relevance.keys() | grades.keys()
        }

    def interactions(
        self,
        *,
        model_version: str | None = None,
        user_id: int | None = None,
        with_query_id: bool = False,
    ) -> pd.DataFrame:
        """The log: exactly the seed's columns plus `ModelVersion` and `Value`, oldest first.

        Columns `LOG_COLUMNS` (the seed's names, `LOG_FIELDS`); `with_query_id` appends
        `QueryID`, which tells apart two searches with the same image (online metrics match
        clicks to impressions by it). The filters take the stored values.
        """
        clauses: list[str] = []
        params: list[object] = []
        if model_version is not None:
            clauses.append("model_version = ?")
            params.append(model_version)
        if user_id is not None:
            clauses.append("user_id = ?")
            params.append(user_id)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        fields = [*LOG_FIELDS, QUERY_ID_FIELD] if with_query_id else list(LOG_FIELDS)
        selected = ", ".join(f'{column} AS "{name}"' for column, name in fields)
        sql = f"SELECT {selected} FROM interactions {where} ORDER BY id"
        with self._db.connect() as conn:
            rows = conn.execute(sql, params).fetchall()
        frame = pd.DataFrame([tuple(row) for row in rows], columns=[name for _, name in fields])
        return frame.astype(
            {name: _LOG_DTYPES[column] for column, name in fields if column in _LOG_DTYPES}
        )

    def counts(self, user_id: int | None = None) -> dict[str, int]:
        """Rows per interaction type (of one user, or everyone's)."""
        where, params = ("WHERE user_id = ?", [user_id]) if user_id is not None else ("", [])
        with self._db.connect() as conn:
            rows = conn.execute(
                f"SELECT interaction_type, COUNT(*) FROM interactions {where}"
                " GROUP BY interaction_type",
                params,
            ).fetchall()
        return {kind: int(n) for kind, n in rows}

    def log_bytes(self, fmt: str = "csv") -> bytes:
        """The whole log (`interactions()`) encoded as CSV or Parquet."""
        return _encode(self.interactions(), fmt)

    def export(self, path: Path, fmt: str = "csv") -> int:
        """Write the whole log to `path` as CSV or Parquet; returns the number of rows."""
        frame = self.interactions()
        data = _encode(frame, fmt)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return len(frame)


def _encode(frame: pd.DataFrame, fmt: str) -> bytes:
    if fmt not in EXPORT_FORMATS:
        raise StoreError(f"Unknown export format {fmt!r}; use one of {EXPORT_FORMATS}.")
    buffer = io.BytesIO()
    if fmt == "csv":
        frame.to_csv(buffer, index=False)
    else:
        frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _check_query(
    conn: sqlite3.Connection,
    user_id: int,
    query_image_id: str,
    model_version: str,
    parent_id: int | None,
    shown: Sequence[str],
) -> None:
    """Everything a query row refers to must exist: user, version, images, parent."""
    _require_user(conn, user_id)
    _require(conn, "model_versions", "version", model_version, "model version")
    if not (
        _exists(conn, "images", query_image_id) or _exists(conn, "query_images", query_image_id)
    ):
        raise StoreError(
            f"Query image {query_image_id[:12]}… is neither in the gallery nor stored."
        )
    if parent_id is not None:
        _require(conn, "queries", "id", parent_id, "query")
    missing = [i for i in shown if not _exists(conn, "images", i)]
    if missing:
        raise StoreError(
            f"{len(missing)} displayed images are not in the catalog ({missing[0][:12]}…)."
        )


def _exists(conn: sqlite3.Connection, table: str, image_id: str) -> bool:
    return conn.execute(f"SELECT 1 FROM {table} WHERE id = ?", (image_id,)).fetchone() is not None


def _require(conn: sqlite3.Connection, table: str, column: str, key: object, what: str) -> None:
    if conn.execute(f"SELECT 1 FROM {table} WHERE {column} = ?", (key,)).fetchone() is None:
        raise StoreError(f"Unknown {what} {key!r}.")


def _require_user(conn: sqlite3.Connection, user_id: int) -> None:
    _require(conn, "users", "id", user_id, "user id")
