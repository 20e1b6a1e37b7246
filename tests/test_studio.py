"""`Studio`, the facade over one data directory: the methods no other test module covers.

Galleries are built by hand (catalog rows plus vectors written straight into the index) so that
expected rankings come from a brute-force numpy cosine in the test; counts and stored state are
read back with raw SQL (`tests.conftest.raw`), never from the facade's own answers.
"""

from __future__ import annotations

import csv
import hashlib
import io
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from core.config import Settings
from core.encoder.model import Encoder
from core.errors import LookalikeError
from core.store import ImageRecord, ResultLabel, StoreError, split_for
from core.studio import EmptyGalleryError, Studio
from tests.helpers import raw

D = 8  # the index takes the width of the first vectors a version gets
TUNED = "ft-0001"


def fake_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def record(
    image_id: str, label: str | None = None, added_at: str = "2024-01-01T00:00:00"
) -> ImageRecord:
    return ImageRecord(
        id=image_id,
        original_name=f"{image_id[:6]}.png",
        label=label,
        split=split_for(image_id),
        width=1,
        height=1,
        file="x.png",
        source="test",
        added_at=added_at,
    )


def random_units(n: int, seed: int) -> np.ndarray:
    """(n, D) float32 unit vectors."""
    x = np.random.default_rng(seed).normal(size=(n, D))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(ids: list[str], vectors: np.ndarray, q: np.ndarray) -> list[str]:
    """Every id by cosine with the unit vector q, best first (float64)."""
    scores = vectors.astype(np.float64) @ q.astype(np.float64)
    return [ids[j] for j in np.argsort(-scores, kind="stable")]


def add_version(studio: Studio, version: str = TUNED, encoder: str = "tiny-test") -> None:
    studio.store.add_model_version(version, encoder, "base", {})


class Gallery:
    """`n` catalogued images with seeded random vectors under `base`."""

    def __init__(self, studio: Studio, n: int = 12, seed: int = 0) -> None:
        self.ids = [fake_id(f"image-{seed}-{i}") for i in range(n)]
        self.vectors = random_units(n, seed)
        studio.store.add_images(record(i) for i in self.ids)
        studio.index.upsert("base", self.ids, self.vectors)

    def ranking(self, q: np.ndarray) -> list[str]:
        return brute_force(self.ids, self.vectors, q)


@pytest.fixture
def gallery(studio: Studio) -> Gallery:
    return Gallery(studio)


def catalog(studio: Studio) -> Path:
    return studio.settings.catalog_path


# --- the catalog ---------------------------------------------------------------------------------


def test_indexed_versions_lists_only_versions_holding_vectors(studio: Studio, gallery: Gallery):
    add_version(studio)
    assert {v.version for v in studio.versions()} == {"base", TUNED}

    assert studio.indexed_versions() == ["base"]

    studio.index.upsert(TUNED, gallery.ids[:2], gallery.vectors[:2])
    assert sorted(studio.indexed_versions()) == ["base", TUNED]


def test_indexed_versions_of_a_fresh_studio_is_empty(studio: Studio):
    assert studio.indexed_versions() == []


def test_images_by_id_keys_every_catalogued_record(studio: Studio, gallery: Gallery):
    by_id = studio.images_by_id()

    assert set(by_id) == {row[0] for row in raw(catalog(studio), "SELECT id FROM images")}
    assert all(record.id == image_id for image_id, record in by_id.items())


LABELS = (
    "shapes",
    "shapes/circles",
    "shapes/circles/small",
    "shapesque",  # shares the prefix but is another label
    "Shapes/squares",  # another case is another label
    "colours/shapes",  # contains the label, not under it
    None,
)


def test_list_images_matches_a_label_and_its_sub_labels_only(studio: Studio):
    ids = {label: fake_id(f"label-{label}") for label in LABELS}
    studio.store.add_images(
        record(image_id, label, added_at=f"2024-01-0{n + 1}T00:00:00")
        for n, (label, image_id) in enumerate(ids.items())
    )

    shapes = studio.list_images(label="shapes")
    circles = studio.list_images(label="shapes/circles")

    assert [r.id for r in shapes] == [
        ids["shapes"],
        ids["shapes/circles"],
        ids["shapes/circles/small"],
    ]
    assert [r.id for r in circles] == [ids["shapes/circles"], ids["shapes/circles/small"]]
    assert studio.list_images(label="shape") == []
    assert [r.id for r in studio.list_images()] == list(ids.values())  # oldest first, all


# --- users ---------------------------------------------------------------------------------------


def test_user_by_name_is_created_once_and_read_back_by_id(studio: Studio):
    first = studio.user("alice")
    again = studio.user("alice")

    assert again == first
    rows = raw(catalog(studio), "SELECT id FROM users WHERE name = 'alice'")
    assert rows == [(first.id,)]
    assert studio.user(user_id=first.id) == first
    assert studio.user().name == "guest"
    assert [u.name for u in studio.users()] == ["alice", "guest"]


def test_user_by_an_unknown_id_is_a_user_error(studio: Studio):
    with pytest.raises(LookalikeError, match="Unknown user"):
        studio.user(user_id=999)


def test_set_user_location_stores_and_clears_it(studio: Studio):
    user = studio.user("alice")
    sql = "SELECT location FROM users WHERE id = ?"

    assert studio.set_user_location(user.id, "Europe/Paris").location == "Europe/Paris"
    assert raw(catalog(studio), sql, (user.id,)) == [("Europe/Paris",)]
    assert studio.set_user_location(user.id, None).location is None
    assert raw(catalog(studio), sql, (user.id,)) == [(None,)]
    with pytest.raises(StoreError):
        studio.set_user_location(999, "Europe/Paris")


# --- the log -------------------------------------------------------------------------------------


def test_result_labels_keep_the_latest_judgement_and_forget_undone_ones(
    studio: Studio, gallery: Gallery
):
    user = studio.user("alice")
    search = studio.logged_gallery_search(user.id, gallery.ids[0], k=6)
    a, b, c, d, e = (r.image_id for r in search.results[:5])
    actions = [
        (a, "similar", None),
        (a, "not_similar", None),  # changed their mind: the later label wins
        (b, "similar", None),
        (b, "similar", 0),  # undone
        (c, "grade", 2),
        (c, "grade", 3),
        (d, "click", None),  # a click is not a judgement
        (e, "not_similar", None),
        (e, "grade", 1),
    ]
    for image_id, kind, value in actions:
        studio.log_interaction(search.query_id, image_id, kind, value)

    labels = studio.result_labels([search.query_id])

    assert labels == {
        a: ResultLabel("not_similar", None),
        b: ResultLabel(None, None),
        c: ResultLabel(None, 3),
        e: ResultLabel("not_similar", 1),
    }
    sql = (
        "SELECT COUNT(*) FROM interactions WHERE query_id = ? AND interaction_type != 'impression'"
    )
    assert raw(catalog(studio), sql, (search.query_id,)) == [(len(actions),)]


def test_log_interaction_refuses_an_image_the_query_did_not_show(studio: Studio, gallery: Gallery):
    user = studio.user("alice")
    search = studio.logged_gallery_search(user.id, gallery.ids[0], k=3)
    shown = {r.image_id for r in search.results}
    hidden = next(i for i in gallery.ids[1:] if i not in shown)

    with pytest.raises(StoreError, match="not shown"):
        studio.log_interaction(search.query_id, hidden, "click")


def test_query_chain_follows_refinements_back_to_the_first_search(studio: Studio, gallery: Gallery):
    user = studio.user("alice")
    first = studio.logged_gallery_search(user.id, gallery.ids[0], k=5)
    studio.log_interaction(first.query_id, first.results[0].image_id, "similar")
    second = studio.refine(first.query_id, k=5)
    third = studio.refine(second.query_id, k=5)
    other = studio.logged_gallery_search(user.id, gallery.ids[1], k=5)

    chain = studio.query_chain(third.query_id)

    assert chain == [first.query_id, second.query_id, third.query_id]
    parents = dict(raw(catalog(studio), "SELECT id, parent_id FROM queries"))
    assert [parents[q] for q in chain] == [None, first.query_id, second.query_id]
    assert studio.query_chain(first.query_id) == [first.query_id]
    assert studio.query_chain(other.query_id) == [other.query_id]
    # a label given in the first search still holds along the chain
    liked = first.results[0].image_id
    assert studio.result_labels(chain)[liked] == ResultLabel("similar", None)


def test_interaction_counts_per_user_and_for_everyone(studio: Studio, gallery: Gallery):
    alice, bob, carol = studio.user("alice"), studio.user("bob"), studio.user("carol")
    mine = studio.logged_gallery_search(alice.id, gallery.ids[0], k=4)
    theirs = studio.logged_gallery_search(bob.id, gallery.ids[1], k=3)
    studio.log_interaction(mine.query_id, mine.results[0].image_id, "click")
    studio.log_interaction(mine.query_id, mine.results[1].image_id, "similar")
    studio.log_interaction(mine.query_id, mine.results[2].image_id, "similar")
    studio.log_interaction(theirs.query_id, theirs.results[0].image_id, "grade", 2)

    expected_alice = {"impression": 4, "click": 1, "similar": 2}
    expected_bob = {"impression": 3, "grade": 1}
    assert studio.interaction_counts(alice.id) == expected_alice
    assert studio.interaction_counts(bob.id) == expected_bob
    assert studio.interaction_counts(carol.id) == {}
    assert studio.interaction_counts() == dict(Counter(expected_alice) + Counter(expected_bob))
    sql = "SELECT interaction_type, COUNT(*) FROM interactions GROUP BY interaction_type"
    assert studio.interaction_counts() == dict(raw(catalog(studio), sql))


def csv_rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"))))


def test_log_bytes_csv_is_a_header_and_one_row_per_logged_row(studio: Studio, gallery: Gallery):
    user = studio.user("alice")
    search = studio.logged_gallery_search(user.id, gallery.ids[0], k=5)
    studio.log_interaction(search.query_id, search.results[0].image_id, "click")
    studio.log_interaction(search.query_id, search.results[1].image_id, "grade", 3)

    header, *rows = csv_rows(studio.log_bytes("csv"))

    logged = raw(catalog(studio), "SELECT COUNT(*) FROM interactions")[0][0]
    assert len(rows) == logged == 5 + 2
    assert header and not any(field.strip().lstrip("-").isdigit() for field in header)
    assert all(len(row) == len(header) for row in rows)
    assert {r.image_id for r in search.results} <= {field for row in rows for field in row}


def test_log_bytes_of_an_empty_log_is_the_header_alone(studio: Studio):
    assert len(csv_rows(studio.log_bytes("csv"))) == 1


def test_log_bytes_refuses_an_unknown_format(studio: Studio):
    with pytest.raises(LookalikeError, match="format"):
        studio.log_bytes("xml")


# --- training runs -------------------------------------------------------------------------------


def run_status(studio: Studio, run_id: int) -> str:
    return str(
        raw(catalog(studio), "SELECT status FROM training_runs WHERE id = ?", (run_id,))[0][0]
    )


def test_cancel_training_asks_a_queued_run_to_stop_once(studio: Studio):
    run = studio.store.training.queue("base", {"epochs": 1})
    assert [(r.id, r.status) for r in studio.training_runs()] == [(run.id, "queued")]

    assert studio.cancel_training(run.id) is True
    assert run_status(studio, run.id) == "cancelling"
    assert studio.cancel_training(run.id) is False  # already asked
    assert studio.cancel_training(999) is False


def test_cancel_training_leaves_an_ended_run_alone(studio: Studio):
    run = studio.store.training.queue("base", {"epochs": 1})
    studio.store.training.update(run.id, status="done")

    assert studio.cancel_training(run.id) is False
    assert run_status(studio, run.id) == "done"


def test_training_runs_lists_the_newest_first_up_to_the_limit(studio: Studio):
    ids = []
    for _ in range(3):
        run = studio.store.training.queue("base", {"epochs": 1})
        studio.store.training.update(run.id, status="failed")  # one live run at a time
        ids.append(run.id)

    assert [r.id for r in studio.training_runs()] == ids[::-1]
    assert [r.id for r in studio.training_runs(limit=2)] == ids[:0:-1]


# --- versions and search -------------------------------------------------------------------------


def active_in_catalog(studio: Studio) -> list[str]:
    return [
        row[0]
        for row in raw(catalog(studio), "SELECT version FROM model_versions WHERE active = 1")
    ]


def test_activate_switches_the_version_search_vectors_reads(studio: Studio, gallery: Gallery):
    add_version(studio)
    tuned = random_units(len(gallery.ids), seed=1)  # the same images, elsewhere in space
    studio.index.upsert(TUNED, gallery.ids, tuned)
    q = random_units(1, seed=2)
    k = len(gallery.ids)

    before = studio.search_vectors(q, k)[0]
    assert studio.activate(TUNED).version == TUNED
    after = studio.search_vectors(q, k)[0]

    assert [r.image_id for r in before] == gallery.ranking(q[0])
    assert [r.image_id for r in after] == brute_force(gallery.ids, tuned, q[0])
    assert active_in_catalog(studio) == [TUNED]
    studio.activate("base")  # rolling back is activating the parent
    assert [r.image_id for r in studio.search_vectors(q, k)[0]] == gallery.ranking(q[0])
    assert active_in_catalog(studio) == ["base"]


def test_activate_an_unknown_version_is_refused_and_changes_nothing(studio: Studio):
    with pytest.raises(StoreError, match="Unknown model version"):
        studio.activate("nope")
    assert active_in_catalog(studio) == ["base"]


def test_search_vectors_ranks_by_cosine_and_skips_removed_images(studio: Studio, gallery: Gallery):
    ghost = fake_id("ghost")  # a vector whose catalog row is gone
    q = random_units(2, seed=3)
    studio.index.upsert("base", [ghost], q[:1])  # the best possible match for the first query
    exclude = [{gallery.ids[0]}, set()]

    results = studio.search_vectors(q, k=5, exclude=exclude)

    assert [r.image_id for r in results[0]] == [
        i for i in gallery.ranking(q[0]) if i != gallery.ids[0]
    ][:4]
    assert [r.image_id for r in results[1]] == gallery.ranking(q[1])[:5]
    assert [r.rank for r in results[0]] == [1, 2, 3, 4]  # the ghost's place is not a gap
    by_id = dict(zip(gallery.ids, gallery.vectors.astype(np.float64), strict=True))
    for r in results[1]:
        assert r.score == pytest.approx(float(by_id[r.image_id] @ q[1]), abs=1e-4)


def test_search_vectors_of_an_empty_gallery_is_a_user_error(studio: Studio):
    with pytest.raises(EmptyGalleryError, match="empty") as caught:
        studio.search_vectors(random_units(1, seed=0))
    assert isinstance(caught.value, LookalikeError)


def test_search_vectors_is_empty_when_only_another_version_has_vectors(studio: Studio):
    studio.store.add_images([record(fake_id("only"))])
    add_version(studio)
    studio.index.upsert(TUNED, [fake_id("only")], random_units(1, seed=0))

    with pytest.raises(EmptyGalleryError):
        studio.search_vectors(random_units(1, seed=1))


def test_search_gallery_image_without_a_vector_is_a_user_error(studio: Studio, gallery: Gallery):
    with pytest.raises(EmptyGalleryError, match="no vector"):
        studio.search_gallery_image(fake_id("never-indexed"))


# --- removing images -----------------------------------------------------------------------------


def test_remove_images_drops_rows_vectors_of_every_version_and_files(
    studio: Studio, make_gallery: Callable[..., Path]
):
    studio.ingest([make_gallery(per_label=3, labels=("a", "b"))], label_from_folders=True)
    add_version(studio)
    ids, vectors = studio.index.get_embeddings("base")
    studio.index.upsert(TUNED, ids, vectors)
    records = studio.list_images()
    gone, kept = records[:2], records[2:]
    assert all(studio.image_path(r).exists() and studio.thumb_path(r.id).exists() for r in records)

    removed = studio.remove_images([r.id for r in gone] + [fake_id("not-catalogued")])

    assert removed == 2
    left = {row[0] for row in raw(catalog(studio), "SELECT id FROM images")}
    assert left == {r.id for r in kept}
    assert studio.index.ids("base") == studio.index.ids(TUNED) == left
    for r in gone:
        assert not studio.image_path(r).exists() and not studio.thumb_path(r.id).exists()
    for r in kept:
        assert studio.image_path(r).exists() and studio.thumb_path(r.id).exists()


# --- encoders ------------------------------------------------------------------------------------


def test_encoder_is_loaded_once_per_version(settings: Settings, tiny_encoder: Encoder):
    loaded: list[str] = []

    def loader(name: str) -> Encoder:
        loaded.append(name)
        return tiny_encoder

    studio = Studio(settings, encoder_loader=loader)
    add_version(studio, TUNED, encoder="another-encoder")

    first = studio.encoder()
    assert studio.encoder() is first
    assert studio.encoder(studio.store.get_model_version("base")) is first
    assert loaded == ["tiny-test"]
    studio.encoder(studio.store.get_model_version(TUNED))
    studio.encoder(studio.store.get_model_version(TUNED))
    assert loaded == ["tiny-test", "another-encoder"]
    studio.activate(TUNED)
    studio.encoder()
    assert loaded == ["tiny-test", "another-encoder"]


def test_ingest_uploads_keeps_equal_names_apart_and_labels_zip_members(studio: Studio) -> None:
    from tests.helpers import generated_image

    def png(label: int, variant: int) -> bytes:
        buffer = io.BytesIO()
        generated_image(label, variant).save(buffer, format="PNG")
        return buffer.getvalue()

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("cats/one.png", png(2, 0))
        zipped.writestr("dogs/two.png", png(3, 0))
    uploads = [("same.png", png(0, 0)), ("same.png", png(1, 0)), ("set.zip", archive.getvalue())]

    report = studio.ingest_uploads(uploads, label_from_folders=True)

    assert (report.added, report.rejected) == (4, [])
    rows = raw(studio.settings.catalog_path, "SELECT original_name, label FROM images")
    assert sorted(rows, key=str) == sorted(
        [("same.png", None), ("same.png", None), ("one.png", "cats"), ("two.png", "dogs")], key=str
    )
    expected = {hashlib.sha256(data).hexdigest() for _, data in uploads[:2]}
    assert expected <= set(studio.images_by_id())
