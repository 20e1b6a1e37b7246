"""Ingest: readers (files, folders, zips), rejection of bad files, duplicates, resumability."""

from __future__ import annotations

import hashlib
import threading
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from core.encoder.model import Encoder
from core.gallery.images import load_image
from core.gallery.ingest import (
    Candidate,
    Rejected,
    _ahead,
    ingest,
    iter_candidates,
    sync_index,
)
from core.studio import Studio
from tests.helpers import GALLERY_LABELS, generated_image


def test_folders_give_labels_relative_to_the_root(make_gallery: Callable[..., Path]) -> None:
    root = make_gallery(per_label=2)
    (root / "notes.txt").write_text("not an image, and not an image name: skipped")
    found = list(iter_candidates([root], label_from_folders=True))
    assert all(isinstance(c, Candidate) for c in found)
    assert sorted({c.label for c in found if isinstance(c, Candidate)}) == sorted(GALLERY_LABELS)
    assert len(found) == 2 * len(GALLERY_LABELS)


def test_without_the_flag_there_are_no_labels(make_gallery: Callable[..., Path]) -> None:
    root = make_gallery(per_label=1)
    assert {c.label for c in iter_candidates([root]) if isinstance(c, Candidate)} == {None}


def test_zip_members_that_escape_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "upload.zip"
    png = tmp_path / "a.png"
    generated_image(0, 0).save(png)
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(png, "animals/cats/a.png")
        zf.writestr("../../evil.png", png.read_bytes())
        zf.writestr("/abs/evil.png", png.read_bytes())
        zf.writestr("readme.txt", "skipped")
    found = list(iter_candidates([archive], label_from_folders=True))
    accepted = [c for c in found if isinstance(c, Candidate)]
    refused = [c for c in found if isinstance(c, Rejected)]
    assert [(c.label, c.read()) for c in accepted] == [("animals/cats", png.read_bytes())]
    assert len(refused) == 2 and all("outside" in r.reason for r in refused)


def test_missing_path_and_bad_zip_are_rejected_not_raised(tmp_path: Path) -> None:
    bad_zip = tmp_path / "broken.zip"
    bad_zip.write_bytes(b"PK\x03\x04 this is not really a zip")
    found = list(iter_candidates([tmp_path / "nope", bad_zip]))
    # A file that only looks like a zip is tried as an image (and rejected at decode time).
    assert isinstance(found[0], Rejected) and "does not exist" in found[0].reason
    assert isinstance(found[1], Candidate)


def test_one_corrupt_file_never_sinks_the_batch(
    studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    root = make_gallery(per_label=3)
    (root / "shapes" / "circles" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (root / "colours" / "red" / "fake.jpg").write_text("hello")
    report = studio.ingest([root], label_from_folders=True)
    assert report.added == 3 * len(GALLERY_LABELS)
    assert sorted(Path(r.path).name for r in report.rejected) == ["broken.png", "fake.jpg"]
    assert all(r.reason for r in report.rejected)
    assert studio.store.count_images() == studio.index.count("base") == report.added


def test_duplicates_are_skipped_and_ids_are_content_hashes(
    studio: Studio, make_gallery: Callable[..., Path], tmp_path: Path
) -> None:
    root = make_gallery(per_label=2)
    copy = tmp_path / "copy_of_circle.png"
    first = root / GALLERY_LABELS[0] / "img_000.png"
    copy.write_bytes(first.read_bytes())
    report = studio.ingest([root, copy], label_from_folders=True)
    assert (report.added, report.duplicates) == (2 * len(GALLERY_LABELS), 1)
    assert hashlib.sha256(first.read_bytes()).hexdigest() in studio.store.existing_ids(
        [hashlib.sha256(first.read_bytes()).hexdigest()]
    )


def test_second_run_adds_only_what_is_missing(
    studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    root = make_gallery(per_label=2)
    assert studio.ingest([root], label_from_folders=True).added == 8
    generated_image(3, 99).save(root / GALLERY_LABELS[3] / "new.png")
    again = studio.ingest([root], label_from_folders=True)
    assert (again.added, again.duplicates) == (1, 8)


def test_stored_files_and_thumbnails_are_written(
    studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    studio.ingest([make_gallery(per_label=1)], label_from_folders=True)
    for record in studio.store.list_images():
        assert studio.image_path(record).read_bytes()
        assert studio.thumb_path(record.id).stat().st_size > 0


def test_progress_counts_every_candidate(studio: Studio, make_gallery: Callable[..., Path]) -> None:
    calls: list[tuple[int, int]] = []
    studio.ingest([make_gallery(per_label=2)], progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (8, 8) and [d for d, _ in calls] == list(range(1, 9))


def test_a_run_killed_between_index_and_catalog_is_repaired(
    studio: Studio, make_gallery: Callable[..., Path], tiny_encoder: Encoder
) -> None:
    """Vectors without rows (the crash window) are removed; rows without vectors re-embedded."""
    studio.ingest([make_gallery(per_label=2)], label_from_folders=True)
    records = studio.store.list_images()
    orphan = "f" * 64
    vector = np.zeros((1, tiny_encoder.dim), np.float32)
    vector[0, 0] = 1.0
    studio.index.upsert("base", [orphan], vector)  # a vector whose row never got committed
    studio.index.delete("base", [records[0].id])  # a row whose vector is missing
    embedded, deleted = sync_index(
        studio.settings, studio.store, studio.index, tiny_encoder, "base"
    )
    assert (embedded, deleted) == (1, 1)
    assert studio.index.ids("base") == {r.id for r in records}


def test_crash_mid_ingest_leaves_catalog_a_subset_of_the_index(
    studio: Studio, make_gallery: Callable[..., Path], tiny_encoder: Encoder
) -> None:
    """Kill the run inside the second batch's catalog write: committed rows all have vectors."""
    candidates = list(iter_candidates([make_gallery(per_label=5)], label_from_folders=True))
    small_writes = replace(studio.settings.index, batch_size=studio.settings.batch_size)
    calls = {"n": 0}
    real_add = studio.store.add_images

    def add_then_die(records):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real_add(records)

    studio.store.add_images = add_then_die  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        ingest(
            candidates,
            settings=replace(studio.settings, index=small_writes),
            store=studio.store,
            index=studio.index,
            encoder=tiny_encoder,
            version="base",
        )
    studio.store.add_images = real_add  # type: ignore[method-assign]
    catalogued = {r.id for r in studio.store.list_images()}
    assert catalogued and catalogued <= studio.index.ids("base")
    report = studio.ingest([c.source for c in candidates if isinstance(c, Candidate)])
    assert studio.store.count_images() == 20 == studio.index.count("base")
    assert report.added == 20 - len(catalogued)


def test_the_pipeline_gives_the_vectors_a_plain_encode_gives(
    studio: Studio, make_gallery: Callable[..., Path], tiny_encoder: Encoder
) -> None:
    """Worker threads, batches and large index writes change the order of work, never the
    vectors: each image's vector is what `Encoder.encode` gives for it alone."""
    root = make_gallery(per_label=6)
    settings = replace(studio.settings, ingest_workers=3, batch_size=5)
    candidates = list(iter_candidates([root], label_from_folders=True))
    report = ingest(
        candidates,
        settings=settings,
        store=studio.store,
        index=studio.index,
        encoder=tiny_encoder,
        version="base",
    )
    assert report.added == 6 * len(GALLERY_LABELS) and not report.rejected
    records = studio.store.list_images()
    assert sorted(r.source for r in records) == sorted(c.source for c in candidates)
    ids, vectors = studio.index.get_embeddings("base", [r.id for r in records])
    by_id = dict(zip(ids, vectors, strict=True))
    for record in records:
        [alone] = tiny_encoder.encode([load_image(studio.image_path(record).read_bytes()).image])
        np.testing.assert_allclose(by_id[record.id], alone, atol=1e-5)


def test_a_failing_index_write_fails_the_ingest_and_commits_no_row_without_a_vector(
    studio: Studio, make_gallery: Callable[..., Path], tiny_encoder: Encoder
) -> None:
    candidates = list(iter_candidates([make_gallery(per_label=4)], label_from_folders=True))

    def refuse(*args: object) -> None:
        raise RuntimeError("index unavailable")

    studio.index.upsert = refuse  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="index unavailable"):
        ingest(
            candidates,
            settings=studio.settings,
            store=studio.store,
            index=studio.index,
            encoder=tiny_encoder,
            version="base",
        )
    assert studio.store.count_images() == 0


def test_work_runs_at_most_depth_items_ahead_of_the_consumer() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def work(item: int) -> int:
        with lock:
            started.append(item)
        return item * 2

    with ThreadPoolExecutor(2) as pool:
        out = []
        for value in _ahead(pool, range(100), work, depth=4):
            out.append(value)
            assert len(started) <= len(out) + 4 + 1  # submitted: consumed + depth (+ the next)
    assert out == [2 * i for i in range(100)]
