"""The feedback log (`Store.feedback`): queries, impressions, actions, labels, export, concurrency.

Expected values come from hand-written examples, plain-Python replays of the actions, or raw
SQL against the catalog file, never from the log's own answers.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import random
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from core.config import Settings
from core.store import (
    LOG_COLUMNS,
    ImageRecord,
    ResultLabel,
    Store,
    StoreError,
    split_for,
)
from tests.helpers import SEED_COLUMNS, SEED_COLUMNS_WITH_QUERY_ID, raw

N_IMAGES = 12
TABLES = ("queries", "interactions", "query_images")


def image_id(n: int) -> str:
    return hashlib.sha256(f"feedback-image-{n}".encode()).hexdigest()


def record(n: int) -> ImageRecord:
    id_ = image_id(n)
    return ImageRecord(
        id=id_,
        original_name=f"img{n}.png",
        label=None,
        split=split_for(id_),
        width=1,
        height=1,
        file="x.png",
        source="test",
    )


def row_counts(path: Path) -> dict[str, int]:
    return {table: int(raw(path, f"SELECT COUNT(*) FROM {table}")[0][0]) for table in TABLES}


def make_store(path: Path) -> Store:
    store = Store(path)
    store.add_images([record(n) for n in range(N_IMAGES)])
    store.ensure_base_version("tiny-test")
    return store


@pytest.fixture
def store(settings: Settings) -> Store:
    return make_store(settings.catalog_path)


@pytest.fixture
def alice(store: Store) -> int:
    return store.ensure_user("alice", location="Europe/London").id


def log(store: Store, user: int, shown: list[int], **kwargs: object) -> int:
    """A gallery query from image 0 showing images `shown` with made-up, decreasing scores."""
    options: dict[str, object] = {"source": "gallery", "model_version": "base", **kwargs}
    return store.feedback.log_query(
        user_id=user,
        query_image_id=image_id(0),
        results=[(image_id(n), 1.0 - 0.1 * i) for i, n in enumerate(shown)],
        **options,
    )


# --- log_query ------------------------------------------------------------------------------


def test_log_query_writes_one_query_row_and_one_impression_per_result(store: Store, alice: int):
    results = [(image_id(3), 0.91), (image_id(1), 0.5), (image_id(7), -0.25)]

    query_id = store.feedback.log_query(
        user_id=alice,
        query_image_id=image_id(0),
        model_version="base",
        results=results,
        source="gallery",
        location="Europe/Paris",
    )

    assert raw(
        store.path,
        "SELECT id, user_id, query_image_id, model_version, parent_id, source, n_results,"
        " location FROM queries",
    ) == [(query_id, alice, image_id(0), "base", None, "gallery", 3, "Europe/Paris")]
    rows = raw(
        store.path,
        "SELECT query_id, user_id, query_image_id, displayed_image_id, position,"
        " interaction_type, value, score, location, model_version FROM interactions ORDER BY id",
    )
    assert rows == [
        (
            query_id,
            alice,
            image_id(0),
            image,
            position,
            "impression",
            None,
            score,
            "Europe/Paris",
            "base",
        )
        for position, (image, score) in enumerate(results, start=1)
    ]


def test_log_query_with_no_results_writes_the_query_and_no_impressions(store: Store, alice: int):
    query_id = log(store, alice, [])

    assert raw(store.path, "SELECT id, n_results FROM queries") == [(query_id, 0)]
    assert row_counts(store.path)["interactions"] == 0


def test_log_query_accepts_a_stored_upload_as_the_query_image(store: Store, alice: int):
    upload = hashlib.sha256(b"an uploaded query").hexdigest()
    store.feedback.add_query_image(upload, "ab/upload.png", 30, 40)

    query_id = store.feedback.log_query(
        user_id=alice,
        query_image_id=upload,
        model_version="base",
        results=[(image_id(1), 0.3)],
        source="upload",
    )

    assert store.feedback.query_image_file(upload) == "ab/upload.png"
    assert raw(
        store.path, "SELECT query_image_id, source FROM queries WHERE id = ?", (query_id,)
    ) == [(upload, "upload")]
    assert raw(store.path, "SELECT query_image_id FROM interactions") == [(upload,)]


def test_schema_refuses_a_second_impression_of_an_image_in_the_same_query(store: Store, alice: int):
    query_id = log(store, alice, [1, 2])
    insert = (
        "INSERT INTO interactions (user_id, query_id, query_image_id, displayed_image_id,"
        " position, interaction_type, model_version, timestamp)"
        " VALUES (?, ?, ?, ?, 1, ?, 'base', '2024-01-01')"
    )
    conn = sqlite3.connect(store.path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            conn.execute(insert, (alice, query_id, image_id(0), image_id(1), "impression"))
        # The index is partial: actions on the same result are not impressions.
        with conn:
            conn.execute(insert, (alice, query_id, image_id(0), image_id(1), "click"))
    finally:
        conn.close()

    other = log(store, alice, [1])  # the same image in another query is a new impression
    assert raw(
        store.path,
        "SELECT query_id, interaction_type FROM interactions WHERE displayed_image_id = ?"
        " ORDER BY id",
        (image_id(1),),
    ) == [(query_id, "impression"), (query_id, "click"), (other, "impression")]


# --- log_interaction ------------------------------------------------------------------------


def test_log_interaction_takes_position_user_and_context_from_the_impression(
    store: Store, alice: int
):
    bob = store.ensure_user("bob").id
    query_id = log(store, alice, [4, 5, 6], location="Asia/Tokyo")

    first = store.feedback.log_interaction(query_id, image_id(5), "click")
    second = store.feedback.log_interaction(query_id, image_id(6), "grade", value=2, position=3)
    third = store.feedback.log_interaction(query_id, image_id(4), "similar", user_id=bob)

    rows = raw(
        store.path,
        "SELECT id, user_id, query_id, query_image_id, displayed_image_id, position,"
        " interaction_type, value, score, location, model_version FROM interactions"
        " WHERE interaction_type != 'impression' ORDER BY id",
    )
    assert rows == [
        (
            first,
            alice,
            query_id,
            image_id(0),
            image_id(5),
            2,
            "click",
            None,
            None,
            "Asia/Tokyo",
            "base",
        ),
        (
            second,
            alice,
            query_id,
            image_id(0),
            image_id(6),
            3,
            "grade",
            2.0,
            None,
            "Asia/Tokyo",
            "base",
        ),
        (
            third,
            bob,
            query_id,
            image_id(0),
            image_id(4),
            1,
            "similar",
            1.0,
            None,
            "Asia/Tokyo",
            "base",
        ),
    ]


@dataclass
class Logged:
    store: Store
    user: int
    query: int  # showed images 1, 2, 3 at positions 1, 2, 3


@pytest.fixture
def logged(store: Store, alice: int) -> Logged:
    return Logged(store, alice, log(store, alice, [1, 2, 3]))


def _log_query(c: Logged, **changes: object) -> int:
    options: dict[str, object] = {
        "user_id": c.user,
        "query_image_id": image_id(0),
        "model_version": "base",
        "results": [(image_id(4), 0.9), (image_id(5), 0.8)],
        "source": "gallery",
        **changes,
    }
    return c.store.feedback.log_query(**options)


def _act(c: Logged, image: str, kind: str, **kwargs: object) -> int:
    return c.store.feedback.log_interaction(c.query, image, kind, **kwargs)


UNKNOWN = hashlib.sha256(b"never catalogued").hexdigest()

BAD_INPUTS: dict[str, tuple[Callable[[Logged], object], str]] = {
    "query by an unknown user": (lambda c: _log_query(c, user_id=999), "Unknown user id 999"),
    "query on an unknown model version": (
        lambda c: _log_query(c, model_version="ft-9999"),
        "Unknown model version 'ft-9999'",
    ),
    "query image in neither table": (
        lambda c: _log_query(c, query_image_id=UNKNOWN),
        "neither in the gallery nor stored",
    ),
    "displayed image not in the catalog": (
        lambda c: _log_query(c, results=[(image_id(4), 0.9), (UNKNOWN, 0.8)]),
        "1 displayed images are not in the catalog",
    ),
    "duplicate ids in the results": (
        lambda c: _log_query(c, results=[(image_id(4), 0.9), (image_id(4), 0.8)]),
        "at most once",
    ),
    "unknown query source": (lambda c: _log_query(c, source="email"), "Unknown query source"),
    "unknown parent query": (lambda c: _log_query(c, parent_id=999), "Unknown query 999"),
    "action on an unknown query": (
        lambda c: c.store.feedback.log_interaction(999, image_id(1), "click"),
        "Unknown query 999",
    ),
    "action by an unknown user": (
        lambda c: _act(c, image_id(1), "click", user_id=999),
        "Unknown user id 999",
    ),
    "action on an image not shown in the query": (
        lambda c: _act(c, image_id(4), "click"),
        "was not shown in query",
    ),
    "action on an image not in the catalog": (
        lambda c: _act(c, UNKNOWN, "similar"),
        "was not shown in query",
    ),
    "wrong explicit position": (
        lambda c: _act(c, image_id(2), "click", position=1),
        "Position 1 is wrong.*at 2 of 3",
    ),
    "position zero": (lambda c: _act(c, image_id(1), "click", position=0), "Position 0 is wrong"),
    "position past the list": (
        lambda c: _act(c, image_id(3), "click", position=4),
        "Position 4 is wrong",
    ),
    "grade 4": (lambda c: _act(c, image_id(1), "grade", value=4), "grade must be 0, 1, 2 or 3"),
    "grade -1": (lambda c: _act(c, image_id(1), "grade", value=-1), "grade must be 0, 1, 2 or 3"),
    "grade 2.5": (
        lambda c: _act(c, image_id(1), "grade", value=2.5),
        "grade must be 0, 1, 2 or 3",
    ),
    "similar with value 2": (
        lambda c: _act(c, image_id(1), "similar", value=2),
        r"similar label is 1 \(set\) or 0 \(undone\)",
    ),
    "not_similar with value 0.5": (
        lambda c: _act(c, image_id(1), "not_similar", value=0.5),
        r"not_similar label is 1 \(set\) or 0 \(undone\)",
    ),
    "click with a value": (
        lambda c: _act(c, image_id(1), "click", value=1),
        "click carries no value",
    ),
    "unknown interaction type": (
        lambda c: _act(c, image_id(1), "like"),
        "Unknown interaction 'like'",
    ),
    "impression through log_interaction": (
        lambda c: _act(c, image_id(1), "impression"),
        "Unknown interaction 'impression'",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_clear_store_error_and_writes_nothing(logged: Logged, case: str):
    call, message = BAD_INPUTS[case]
    before = row_counts(logged.store.path)

    with pytest.raises(StoreError, match=message):
        call(logged)

    assert row_counts(logged.store.path) == before


def test_every_valid_grade_and_label_value_is_accepted(logged: Logged):
    for grade in (0, 1, 2, 3, None):
        _act(logged, image_id(1), "grade", value=grade)
    for kind in ("similar", "not_similar"):
        for value in (1, 0, None):
            _act(logged, image_id(2), kind, value=value)

    assert raw(
        logged.store.path,
        "SELECT interaction_type, value FROM interactions WHERE interaction_type != 'impression'"
        " ORDER BY id",
    ) == [("grade", 0.0), ("grade", 1.0), ("grade", 2.0), ("grade", 3.0), ("grade", None)] + [
        (kind, value) for kind in ("similar", "not_similar") for value in (1.0, 0.0, 1.0)
    ]


# --- labels ---------------------------------------------------------------------------------


def test_labels_latest_relevance_row_wins(logged: Logged):
    _act(logged, image_id(1), "similar")
    _act(logged, image_id(1), "not_similar")
    _act(logged, image_id(2), "not_similar")
    _act(logged, image_id(2), "similar")

    labels = logged.store.feedback.labels([logged.query])

    assert labels == {
        image_id(1): ResultLabel("not_similar", None),
        image_id(2): ResultLabel("similar", None),
    }


def test_labels_undo_with_value_zero_clears_the_label(logged: Logged):
    _act(logged, image_id(1), "similar")
    _act(logged, image_id(1), "similar", value=0)
    _act(logged, image_id(2), "not_similar")
    _act(logged, image_id(2), "not_similar", value=0)
    _act(logged, image_id(3), "similar")

    labels = logged.store.feedback.labels([logged.query])

    unlabelled = ResultLabel(None, None)
    assert labels.get(image_id(1), unlabelled) == unlabelled
    assert labels.get(image_id(2), unlabelled) == unlabelled
    assert labels[image_id(3)] == ResultLabel("similar", None)


def test_labels_grades_are_latest_wins_and_none_clears_independently_of_relevance(
    logged: Logged,
):
    _act(logged, image_id(1), "grade", value=3)
    _act(logged, image_id(1), "grade", value=1)
    _act(logged, image_id(2), "grade", value=2)
    _act(logged, image_id(2), "grade", value=None)
    _act(logged, image_id(3), "similar")
    _act(logged, image_id(3), "grade", value=0)
    _act(logged, image_id(3), "click")  # clicks are not labels

    labels = logged.store.feedback.labels([logged.query])

    assert labels[image_id(1)] == ResultLabel(None, 1)
    assert labels.get(image_id(2), ResultLabel(None, None)) == ResultLabel(None, None)
    assert labels[image_id(3)] == ResultLabel("similar", 0)


def test_labels_match_a_replay_of_random_actions(logged: Logged):
    rng = random.Random(7)
    actions = [
        ("click", None),
        ("similar", 1),
        ("similar", 0),
        ("not_similar", 1),
        ("not_similar", 0),
        *(("grade", g) for g in (0, 1, 2, 3, None)),
    ]
    relevance: dict[str, str | None] = {}
    grades: dict[str, int | None] = {}
    for _ in range(300):
        image = image_id(rng.choice([1, 2, 3]))
        kind, value = rng.choice(actions)
        _act(logged, image, kind, value=value)
        if kind == "grade":
            grades[image] = value
        elif kind != "click":
            relevance[image] = kind if value == 1 else None

    labels = logged.store.feedback.labels([logged.query])

    for n in (1, 2, 3):
        image = image_id(n)
        expected = ResultLabel(relevance.get(image), grades.get(image))
        assert labels.get(image, ResultLabel(None, None)) == expected


def test_labels_carry_over_a_chain_of_queries_and_stay_within_it(store: Store, alice: int):
    first = log(store, alice, [1, 2, 3])
    second = log(store, alice, [2, 1, 4], parent_id=first, source="refine")
    unrelated = log(store, alice, [1, 2, 3])
    store.feedback.log_interaction(first, image_id(1), "similar")
    store.feedback.log_interaction(first, image_id(2), "similar")
    store.feedback.log_interaction(second, image_id(2), "not_similar")  # relabelled later
    store.feedback.log_interaction(second, image_id(4), "grade", value=3)
    store.feedback.log_interaction(unrelated, image_id(3), "not_similar")

    assert store.feedback.labels([first, second]) == {
        image_id(1): ResultLabel("similar", None),
        image_id(2): ResultLabel("not_similar", None),
        image_id(4): ResultLabel(None, 3),
    }
    assert store.feedback.labels([first]) == {
        image_id(1): ResultLabel("similar", None),
        image_id(2): ResultLabel("similar", None),
    }
    assert store.feedback.labels([]) == {}


def test_query_chain_lists_the_root_first(store: Store, alice: int):
    root = log(store, alice, [1])
    child = log(store, alice, [2], parent_id=root, source="refine")
    grandchild = log(store, alice, [3], parent_id=child, source="refine")

    chain = store.feedback.query_chain(grandchild)

    assert [q.id for q in chain] == [root, child, grandchild]
    assert [q.parent_id for q in chain] == [None, root, child]
    assert [q.source for q in chain] == ["gallery", "refine", "refine"]
    assert [q.id for q in store.feedback.query_chain(root)] == [root]
    with pytest.raises(StoreError, match="Unknown query 999"):
        store.feedback.query_chain(999)


# --- reading and exporting the log ----------------------------------------------------------


@pytest.fixture
def busy_log(store: Store, alice: int) -> Store:
    """Two users, two model versions, locations set and unset, every kind of action."""
    bob = store.ensure_user("bob").id
    store.add_model_version("ft-0001", "tiny-test", "base", {})
    q1 = log(store, alice, [1, 2], location="Europe/London")
    q2 = log(store, bob, [3], model_version="ft-0001")
    store.feedback.log_interaction(q1, image_id(2), "click")
    store.feedback.log_interaction(q1, image_id(1), "grade", value=3)
    store.feedback.log_interaction(q2, image_id(3), "not_similar")
    store.feedback.log_interaction(q2, image_id(3), "grade", value=None)
    return store


BUSY_ROWS = [  # the busy log, by hand, without timestamps; alice is user 1 and bob user 2
    (1, image_id(0), image_id(1), 1, "impression", "Europe/London", "base", None),
    (1, image_id(0), image_id(2), 2, "impression", "Europe/London", "base", None),
    (2, image_id(0), image_id(3), 1, "impression", None, "ft-0001", None),
    (1, image_id(0), image_id(2), 2, "click", "Europe/London", "base", None),
    (1, image_id(0), image_id(1), 1, "grade", "Europe/London", "base", 3.0),
    (2, image_id(0), image_id(3), 1, "not_similar", None, "ft-0001", 1.0),
    (2, image_id(0), image_id(3), 1, "grade", None, "ft-0001", None),
]


def without_timestamps(frame: pd.DataFrame) -> list[tuple[object, ...]]:
    """Rows as plain tuples, missing values (None or NaN) as None."""
    columns = [c for c in SEED_COLUMNS if c != "Timestamp"]
    return [
        tuple(None if pd.isna(v) else v for v in row)
        for row in frame[columns].itertuples(index=False)
    ]


def test_interactions_has_exactly_the_log_columns_and_types(busy_log: Store):
    frame = busy_log.feedback.interactions()

    assert list(frame.columns) == SEED_COLUMNS
    assert list(LOG_COLUMNS) == SEED_COLUMNS
    assert frame["UserID"].dtype == "int64"
    assert frame["PositionInDisplayedList"].dtype == "int64"
    assert frame["Value"].dtype == "float64"
    for column in ("QueryImageID", "DisplayedImageID", "InteractionType", "Timestamp"):
        assert pd.api.types.is_string_dtype(frame[column]), column
    assert without_timestamps(frame) == BUSY_ROWS
    stamps = [datetime.fromisoformat(t) for t in frame["Timestamp"]]
    assert all(t.utcoffset() is not None and t.utcoffset().total_seconds() == 0 for t in stamps)
    assert stamps == sorted(stamps)


def test_interactions_with_query_id_appends_the_query_id_last(busy_log: Store):
    frame = busy_log.feedback.interactions(with_query_id=True)

    assert list(frame.columns) == SEED_COLUMNS_WITH_QUERY_ID
    assert frame["QueryID"].dtype == "int64"
    assert frame["UserID"].dtype == "int64"
    assert frame["PositionInDisplayedList"].dtype == "int64"
    assert frame["Value"].dtype == "float64"
    assert frame["QueryID"].tolist() == [
        row[0] for row in raw(busy_log.path, "SELECT query_id FROM interactions ORDER BY id")
    ]
    assert without_timestamps(frame) == BUSY_ROWS


def test_interactions_filter_by_model_version_and_user(busy_log: Store):
    def rows(**filters: object) -> list[tuple[object, ...]]:
        return without_timestamps(busy_log.feedback.interactions(**filters))

    assert rows(model_version="base") == [r for r in BUSY_ROWS if r[6] == "base"]
    assert rows(model_version="ft-0001") == [r for r in BUSY_ROWS if r[6] == "ft-0001"]
    assert rows(user_id=2) == [r for r in BUSY_ROWS if r[0] == 2]
    assert rows(user_id=1, model_version="ft-0001") == []
    assert rows(model_version="ghost") == []


def test_interactions_of_an_empty_log_still_has_the_columns(store: Store):
    frame = store.feedback.interactions()
    with_query_id = store.feedback.interactions(with_query_id=True)

    assert frame.empty and with_query_id.empty
    assert list(frame.columns) == SEED_COLUMNS
    assert list(with_query_id.columns) == SEED_COLUMNS_WITH_QUERY_ID


@pytest.mark.parametrize(
    ("fmt", "read"), [("csv", pd.read_csv), ("parquet", pd.read_parquet)], ids=["csv", "parquet"]
)
def test_export_round_trips_to_the_same_frame(
    busy_log: Store, tmp_path: Path, fmt: str, read: Callable[[Path], pd.DataFrame]
):
    out = tmp_path / "exports" / f"log.{fmt}"

    written = busy_log.feedback.export(out, fmt)

    assert written == len(BUSY_ROWS)
    back = read(out)
    pd.testing.assert_frame_equal(back, busy_log.feedback.interactions())
    assert list(back.columns) == SEED_COLUMNS
    assert without_timestamps(back) == BUSY_ROWS


def test_csv_export_header_is_the_seeds_column_names(busy_log: Store, tmp_path: Path):
    out = tmp_path / "log.csv"
    busy_log.feedback.export(out, "csv")

    header = out.read_text(encoding="utf-8").splitlines()[0]
    assert header == (
        "UserID,QueryImageID,DisplayedImageID,PositionInDisplayedList,InteractionType,"
        "Location,Timestamp,ModelVersion,Value"
    )
    assert busy_log.feedback.log_bytes("csv").decode("utf-8").splitlines()[0] == header
    assert list(pd.read_csv(out).columns) == SEED_COLUMNS


def test_parquet_export_schema_is_the_seeds_column_names(busy_log: Store, tmp_path: Path):
    out = tmp_path / "log.parquet"
    busy_log.feedback.export(out, "parquet")
    in_memory = io.BytesIO(busy_log.feedback.log_bytes("parquet"))

    for back in (pd.read_parquet(out), pd.read_parquet(in_memory)):
        assert list(back.columns) == SEED_COLUMNS
        assert back["UserID"].dtype == "int64"
        assert back["PositionInDisplayedList"].dtype == "int64"
        assert back["Value"].dtype == "float64"
        for column in ("QueryImageID", "DisplayedImageID", "InteractionType", "Timestamp"):
            assert pd.api.types.is_string_dtype(back[column]), column
        assert without_timestamps(back) == BUSY_ROWS


def test_export_to_an_unknown_format_is_a_store_error_and_writes_no_file(
    busy_log: Store, tmp_path: Path
):
    out = tmp_path / "log.xlsx"

    with pytest.raises(StoreError, match=r"Unknown export format 'xlsx'.*csv.*parquet"):
        busy_log.feedback.export(out, "xlsx")

    assert not out.exists()


# --- concurrency ----------------------------------------------------------------------------

CLICKS_PER_WORKER = 500
SHOWN = [1, 2, 3, 4, 5]


def click_one_by_one(path: Path, query_id: int, user_id: int, clicks: int, barrier) -> None:
    """Worker body: click the query's results round-robin, one transaction per click."""
    store = Store(path)
    barrier.wait(timeout=60)  # multiprocessing's Barrier is a threading.Barrier too
    for n in range(clicks):
        store.feedback.log_interaction(
            query_id, image_id(SHOWN[n % len(SHOWN)]), "click", user_id=user_id
        )


def start_workers(store: Store, workers: int) -> tuple[int, list[int]]:
    users = [store.ensure_user(f"worker-{w}").id for w in range(workers)]
    return log(store, users[0], SHOWN), users


def assert_every_click_landed(store: Store, query_id: int, users: list[int], per_worker: int):
    clicks = raw(
        store.path,
        "SELECT user_id, displayed_image_id, position FROM interactions"
        " WHERE interaction_type = 'click' AND query_id = ?",
        (query_id,),
    )
    assert len(clicks) == len(users) * per_worker
    assert Counter(user for user, _, _ in clicks) == dict.fromkeys(users, per_worker)
    positions = {image_id(n): p for p, n in enumerate(SHOWN, start=1)}
    assert all(positions[image] == position for _, image, position in clicks)
    assert raw(
        store.path, "SELECT COUNT(*) FROM interactions WHERE interaction_type = 'impression'"
    )[0][0] == len(SHOWN)


def test_four_processes_writing_500_clicks_each_leave_exactly_2000_rows(store: Store):
    query_id, users = start_workers(store, 4)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(users))
    procs = [
        ctx.Process(
            target=click_one_by_one,
            args=(store.path, query_id, user, CLICKS_PER_WORKER, barrier),
            daemon=True,  # a crashed sibling must fail the test, not hang pytest's exit
        )
        for user in users
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)

    assert [p.exitcode for p in procs] == [0] * len(users)
    assert_every_click_landed(store, query_id, users, CLICKS_PER_WORKER)
    assert len(store.feedback.interactions().query("InteractionType == 'click'")) == 2000


def test_four_threads_sharing_one_store_lose_no_clicks(store: Store):
    query_id, users = start_workers(store, 4)
    barrier = threading.Barrier(len(users))
    per_worker = 200
    errors: list[BaseException] = []

    def work(user: int) -> None:
        try:
            # One Store object shared by all threads: each operation opens its own connection.
            barrier.wait(timeout=60)
            for n in range(per_worker):
                store.feedback.log_interaction(
                    query_id, image_id(SHOWN[n % len(SHOWN)]), "click", user_id=user
                )
        except BaseException as exc:  # surfaced below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(user,)) for user in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)

    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert_every_click_landed(store, query_id, users, per_worker)
