"""The catalog: schema and migrations, image rows, splits, model versions, users, concurrency.

Expected values come from hand-written examples, plain Python over the inputs, or raw SQL
against the database file, never from the Store's own answers.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import random
import sqlite3
import threading
from collections import Counter
from pathlib import Path

import pytest

from core.store import MIGRATIONS, SPLITS, ImageRecord, Store, StoreError, split_for
from tests.helpers import raw

LABEL_FILTER_LABELS = (
    "animals",
    "animals/cats",
    "animals/cats/kittens",
    "animalsx",
    "animalsx/dogs",
    "Animals",
    "Animals/dogs",
    "a_b",
    "a_b/c",
    "axb",
    "axb/c",
    "50%",
    "50%/off",
    "50x/off",
    "café/crème",
    "cafés/x",
    None,
)


def image_id(n: int) -> str:
    return hashlib.sha256(f"image-{n}".encode()).hexdigest()


def record(n: int, label: str | None = None, *, second: int = 0, name: str = "") -> ImageRecord:
    id_ = image_id(n)
    return ImageRecord(
        id=id_,
        original_name=name or f"img{n}.png",
        label=label,
        split=split_for(id_),
        width=10 + n,
        height=20 + n,
        file=f"{id_[:2]}/{id_}.png",
        source="tests",
        added_at=f"2024-01-01T00:{second // 60:02d}:{second % 60:02d}+00:00",
    )


@pytest.fixture
def catalog_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "catalog.db"


@pytest.fixture
def store(catalog_path: Path) -> Store:
    return Store(catalog_path)


# --- schema and migrations ----------------------------------------------------------------


def test_fresh_catalog_is_at_latest_schema_version_in_wal_mode(store: Store, catalog_path):
    assert raw(catalog_path, "SELECT version FROM schema_version") == [(len(MIGRATIONS),)]
    assert store.schema_version() == len(MIGRATIONS)
    assert raw(catalog_path, "PRAGMA journal_mode") == [("wal",)]


def test_reopening_a_catalog_keeps_rows_and_does_not_rerun_migrations(store, catalog_path):
    store.add_images([record(1), record(2)])
    store.ensure_user("ada")

    reopened = Store(catalog_path)  # re-running CREATE TABLE images would raise here

    assert {r.id for r in reopened.list_images()} == {image_id(1), image_id(2)}
    assert [u.name for u in reopened.list_users()] == ["ada"]
    assert raw(catalog_path, "SELECT version FROM schema_version") == [(len(MIGRATIONS),)]


def test_catalog_from_a_newer_program_is_refused_and_left_untouched(store, catalog_path):
    store.add_images([record(1)])
    newer = len(MIGRATIONS) + 1
    conn = sqlite3.connect(catalog_path)
    with conn:
        conn.execute("UPDATE schema_version SET version = ?", (newer,))
    conn.close()

    with pytest.raises(StoreError, match="newer"):
        Store(catalog_path)

    assert raw(catalog_path, "SELECT version FROM schema_version") == [(newer,)]
    assert raw(catalog_path, "SELECT COUNT(*) FROM images") == [(1,)]


# --- images -------------------------------------------------------------------------------


def test_add_images_counts_only_new_ids_and_keeps_the_first_record(store: Store):
    assert store.add_images([record(1), record(2)]) == 2

    renamed = record(2, name="renamed.png")
    assert store.add_images([renamed, record(3), record(3)]) == 1

    assert store.get_images([image_id(2)])[image_id(2)].original_name == "img2.png"
    assert raw(store.path, "SELECT COUNT(*) FROM images") == [(3,)]
    assert store.add_images([]) == 0


def test_existing_ids_and_get_images_work_past_the_500_id_chunk(store: Store):
    records = [record(n) for n in range(1234)]
    store.add_images(records)
    unknown = [image_id(n) for n in range(5000, 5100)]
    known = [r.id for r in records]
    asked = known + unknown + known[:10]  # duplicates and unknowns mixed in
    random.Random(0).shuffle(asked)

    assert store.existing_ids(asked) == set(known)
    assert store.existing_ids(unknown) == set()
    assert store.existing_ids([]) == set()
    assert store.get_images(known + unknown) == {r.id: r for r in records}


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("animals", {"animals", "animals/cats", "animals/cats/kittens"}),
        ("animals/cats", {"animals/cats", "animals/cats/kittens"}),
        ("Animals", {"Animals", "Animals/dogs"}),
        ("animalsx", {"animalsx", "animalsx/dogs"}),
        ("a_b", {"a_b", "a_b/c"}),  # "_" is not a wildcard
        ("50%", {"50%", "50%/off"}),  # "%" is not a wildcard
        ("café", {"café/crème"}),
        ("anim", set()),
        ("nothing", set()),
    ],
)
def test_list_images_label_matches_the_label_and_its_sub_labels_only(
    store: Store, label: str, expected: set[str]
):
    store.add_images([record(n, lab) for n, lab in enumerate(LABEL_FILTER_LABELS)])

    assert {r.label for r in store.list_images(label=label)} == expected


@pytest.mark.parametrize("label", [None, "animals", "Animals", "a_b", "50%", "café", "nothing"])
def test_count_images_counts_what_list_images_lists(store: Store, label: str | None):
    store.add_images([record(n, lab) for n, lab in enumerate(LABEL_FILTER_LABELS)])
    labels = [lab for (lab,) in raw(store.path, "SELECT label FROM images")]
    prefix = None if label is None else label + "/"
    expected = sum(
        label is None or lab == label or (lab is not None and lab.startswith(str(prefix)))
        for lab in labels
    )

    assert store.count_images(label=label) == expected == len(store.list_images(label=label))


def test_list_images_filters_by_split_and_label_together(store: Store):
    records = [record(n, "animals/cats" if n % 3 else "plants") for n in range(60)]
    store.add_images(records)

    for split in SPLITS:
        expected = {r.id for r in records if r.split == split}
        assert {r.id for r in store.list_images(split=split)} == expected
        expected = {r.id for r in records if r.split == split and r.label == "plants"}
        assert {r.id for r in store.list_images(split=split, label="plants")} == expected


def test_list_images_rejects_an_unknown_split(store: Store):
    with pytest.raises(StoreError, match="train, test"):
        store.list_images(split="validation")


def test_list_images_is_oldest_first_and_pages_with_limit_and_offset(store: Store):
    seconds = [*range(25), 3, 3, 3]  # ties on added_at are ordered by id
    records = [record(n, second=s) for n, s in enumerate(seconds)]
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    store.add_images(shuffled)
    oldest_first = sorted(records, key=lambda r: (r.added_at, r.id))

    assert store.list_images() == oldest_first
    assert store.list_images(limit=5) == oldest_first[:5]
    assert store.list_images(limit=5, offset=10) == oldest_first[10:15]
    assert store.list_images(offset=26) == oldest_first[26:]
    assert store.list_images(limit=0) == []


def test_label_counts_put_unlabelled_images_under_the_empty_string(store: Store):
    labels = ["cats"] * 3 + ["dogs"] * 5 + [None] * 2 + ["birds"] * 3
    store.add_images([record(n, lab) for n, lab in enumerate(labels)])

    counts = store.label_counts()

    assert counts == {"dogs": 5, "birds": 3, "cats": 3, "": 2}
    assert counts == Counter(lab or "" for lab in labels)
    assert list(counts) == ["dogs", "birds", "cats", ""]  # largest first, then by label


def test_remove_images_counts_what_was_removed(store: Store):
    store.add_images([record(n) for n in range(5)])

    assert store.remove_images([image_id(1), image_id(3), image_id(99)]) == 2

    assert {r.id for r in store.list_images()} == {image_id(0), image_id(2), image_id(4)}
    assert store.count_images() == 3
    assert store.remove_images([]) == 0


# --- splits -------------------------------------------------------------------------------


def test_split_is_deterministic_and_about_half_train_over_random_ids():
    rng = random.Random(42)
    ids = [hashlib.sha256(rng.randbytes(32)).hexdigest() for _ in range(2000)]

    splits = [split_for(i) for i in ids]

    assert set(splits) == {"train", "test"}
    assert 0.45 <= splits.count("train") / len(ids) <= 0.55
    assert [split_for(i) for i in ids] == splits


# --- model versions -----------------------------------------------------------------------


def active_versions(path: Path) -> list[object]:
    return [row[0] for row in raw(path, "SELECT version FROM model_versions WHERE active = 1")]


def test_ensure_base_version_registers_base_as_active_exactly_once(store: Store):
    first = store.ensure_base_version("efficientnet-lite0")
    second = store.ensure_base_version("something-else")

    assert (first.version, first.encoder, first.active, first.parent) == (
        "base",
        "efficientnet-lite0",
        True,
        None,
    )
    assert second == first
    assert raw(store.path, "SELECT version, encoder FROM model_versions") == [
        ("base", "efficientnet-lite0")
    ]


def test_ensure_base_version_returns_the_active_version_once_another_is_active(store: Store):
    store.ensure_base_version("enc")
    store.add_model_version("ft-0001", "enc", "base", {})
    store.activate("ft-0001")

    assert store.ensure_base_version("enc").version == "ft-0001"
    assert active_versions(store.path) == ["ft-0001"]


def test_activate_switches_the_single_active_version(store: Store):
    store.ensure_base_version("enc")
    added = store.add_model_version("ft-0001", "enc", "base", {"epochs": 2})
    store.add_model_version("ft-0002", "enc", "ft-0001", {})

    assert not added.active and added.parent == "base" and added.card == {"epochs": 2}
    assert active_versions(store.path) == ["base"]
    for version in ("ft-0001", "ft-0002", "base", "ft-0002"):
        assert store.activate(version).active
        assert active_versions(store.path) == [version]
        assert store.active_version().version == version


def test_schema_refuses_two_active_versions(store: Store):
    store.ensure_base_version("enc")
    conn = sqlite3.connect(store.path)
    try:
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(
                "INSERT INTO model_versions VALUES ('rogue', 'enc', NULL, 1, '2024', '{}')"
            )
    finally:
        conn.close()


def test_unknown_version_error_names_the_known_ones(store: Store):
    store.ensure_base_version("enc")
    store.add_model_version("ft-0001", "enc", "base", {})

    with pytest.raises(StoreError, match=r"'ft-9999'.*base, ft-0001"):
        store.activate("ft-9999")
    with pytest.raises(StoreError, match="base, ft-0001"):
        store.get_model_version("nope")
    assert active_versions(store.path) == ["base"]


def test_no_active_version_yet_is_a_store_error(store: Store):
    with pytest.raises(StoreError, match="No model version is active"):
        store.active_version()


def test_adding_a_version_twice_or_with_an_unknown_parent_is_a_store_error(store: Store):
    store.ensure_base_version("enc")
    store.add_model_version("ft-0001", "enc", "base", {"first": True})

    with pytest.raises(StoreError, match="ft-0001"):
        store.add_model_version("ft-0001", "enc", "base", {})
    with pytest.raises(StoreError, match="ft-0002"):
        store.add_model_version("ft-0002", "enc", "ghost", {})

    assert store.get_model_version("ft-0001").card == {"first": True}
    assert raw(store.path, "SELECT COUNT(*) FROM model_versions") == [(2,)]


def test_update_card_merges_entries_into_the_stored_card(store: Store, catalog_path: Path):
    store.ensure_base_version("enc")
    store.add_model_version("ft-0001", "enc", "base", {"mode": "head", "epochs": 1})

    updated = store.update_card("ft-0001", epochs=3, metrics={"mrr": 0.5})

    expected = {"mode": "head", "epochs": 3, "metrics": {"mrr": 0.5}}
    assert updated.card == expected
    assert Store(catalog_path).get_model_version("ft-0001").card == expected
    with pytest.raises(StoreError):
        store.update_card("ghost", x=1)


# --- users --------------------------------------------------------------------------------


def test_ensure_user_creates_a_user_once_and_strips_the_name(store: Store):
    ada = store.ensure_user("  ada ", location="Europe/London")

    again = store.ensure_user("ada", location="elsewhere")

    assert again == ada
    assert (ada.name, ada.location) == ("ada", "Europe/London")
    assert store.ensure_user("bob").id != ada.id
    assert raw(store.path, "SELECT name FROM users ORDER BY id") == [("ada",), ("bob",)]


@pytest.mark.parametrize("name", ["", "   ", "\t\n"])
def test_ensure_user_refuses_an_empty_name(store: Store, name: str):
    with pytest.raises(StoreError, match="non-empty name"):
        store.ensure_user(name)
    assert store.list_users() == []


# --- concurrency --------------------------------------------------------------------------

WRITES_PER_WORKER = 200


def write_one_by_one(path: Path, worker: int, barrier: threading.Barrier) -> None:
    """Worker body: open the catalog and add this worker's images, one transaction each."""
    store = Store(path)
    barrier.wait(timeout=60)  # multiprocessing's Barrier is a threading.Barrier too
    for n in range(WRITES_PER_WORKER):
        store.add_images([record(worker * 10_000 + n)])


def expected_ids(workers: int) -> set[str]:
    return {image_id(w * 10_000 + n) for w in range(workers) for n in range(WRITES_PER_WORKER)}


def test_concurrent_threads_lose_no_writes(catalog_path: Path):
    Store(catalog_path)
    barrier = threading.Barrier(2)
    threads = [
        threading.Thread(target=write_one_by_one, args=(catalog_path, w, barrier)) for w in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert not any(t.is_alive() for t in threads)
    found = {row[0] for row in raw(catalog_path, "SELECT id FROM images")}
    assert found == expected_ids(2)


def test_concurrent_processes_lose_no_writes(catalog_path: Path):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    # No catalog yet: both processes also race to create and migrate it.
    procs = [
        ctx.Process(target=write_one_by_one, args=(catalog_path, w, barrier), daemon=True)
        for w in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)

    assert [p.exitcode for p in procs] == [0, 0]
    found = {row[0] for row in raw(catalog_path, "SELECT id FROM images")}
    assert found == expected_ids(2)
    assert raw(catalog_path, "SELECT version FROM schema_version") == [(len(MIGRATIONS),)]
