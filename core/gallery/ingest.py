"""Ingest: files, folders and zip archives into the catalog and a version's index.

A pipeline in four parts that overlap, composed by `ingest()`: reader (`iter_candidates`:
paths -> candidates, lazily read) -> mapper (worker threads, a bounded two batches ahead:
decode, validate, hash, write the content-addressed copy and thumbnail, preprocess) -> encoder
(the calling thread: dedupe, run the tower on a batch) -> writer (a thread of its own: upsert
large batches into the index, append the batch's stage taps to the tower's `TapCache`, then
commit their catalog rows). So the tower never waits for
files, and memory stays bounded whatever the gallery size. The catalog is the source of truth:
an image is in the gallery once its row is committed, which happens only after its vector is
in the index. A run killed half-way therefore leaves at worst index vectors without rows;
`sync_index` (run at the start of every ingest) deletes those and embeds any catalogued image
the index lacks.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from core.config import Settings
from core.encoder.allocator import release_freed_memory
from core.encoder.model import Encoder
from core.encoder.taps import TapCache
from core.files import atomic_write
from core.gallery.images import (
    IMAGE_EXTENSIONS,
    ImageError,
    LoadedImage,
    load_image,
    thumbnail_bytes,
)
from core.search.index import VectorIndex
from core.store import ImageRecord, Store, split_for

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Candidate:
    """One file to ingest; its bytes are read only when the batch reaches it."""

    source: str  # what the user named: a path, or "archive.zip!member/path.png"
    name: str  # the original file name
    label: str | None
    read: Callable[[], bytes]


@dataclass(frozen=True)
class Rejected:
    path: str
    reason: str


@dataclass
class IngestReport:
    """What an ingest did; `as_dict` is the CLI's JSON."""

    added: int = 0
    duplicates: int = 0
    rejected: list[Rejected] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "added": self.added,
            "duplicates": self.duplicates,
            "rejected": [{"path": r.path, "reason": r.reason} for r in self.rejected],
        }


def _label(relative_parent: PurePosixPath | Path, enabled: bool) -> str | None:
    text = relative_parent.as_posix()
    return text if enabled and text not in ("", ".") else None


def _read_file(path: Path) -> Callable[[], bytes]:
    return path.read_bytes


def _zip_candidates(
    archive: Path, label_from_folders: bool, extensions: frozenset[str]
) -> Iterator[Candidate | Rejected]:
    """Members of a zip; a member whose path would land outside the archive's root is refused."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        yield Rejected(str(archive), f"{archive.name} is not a readable zip archive ({exc}).")
        return
    for info in sorted(zf.infolist(), key=lambda i: i.filename):
        if info.is_dir():
            continue
        member = PurePosixPath(info.filename.replace("\\", "/"))
        where = f"{archive}!{info.filename}"
        if member.is_absolute() or ".." in member.parts or ":" in member.parts[0]:
            yield Rejected(where, f"{info.filename} would land outside the archive; refused.")
            continue
        if member.suffix.lower() not in extensions or member.name.startswith("."):
            continue

        def read(zf: zipfile.ZipFile = zf, info: zipfile.ZipInfo = info) -> bytes:
            return zf.read(info)

        yield Candidate(where, member.name, _label(member.parent, label_from_folders), read)


def iter_candidates(
    paths: Iterable[str | os.PathLike[str]],
    *,
    label_from_folders: bool = False,
    extensions: frozenset[str] = IMAGE_EXTENSIONS,
) -> Iterator[Candidate | Rejected]:
    """The reader: expand files, folders (recursively, sorted) and zip archives.

    Inside folders and archives only files with an image extension are taken (so a folder of
    stamps with their sounds and texts just works); a file named directly is always tried.
    Labels are the parent folder path relative to the folder or archive named.
    """
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                if child.suffix.lower() not in extensions or child.name.startswith("."):
                    continue
                relative = child.relative_to(path).parent
                label = _label(relative, label_from_folders)
                yield Candidate(str(child), child.name, label, _read_file(child))
        elif path.is_file() and zipfile.is_zipfile(path):
            yield from _zip_candidates(path, label_from_folders, extensions)
        elif path.is_file():
            yield Candidate(str(path), path.name, None, _read_file(path))
        else:
            yield Rejected(str(path), f"{path} does not exist.")


def labelled_candidates(files: Mapping[Path, str]) -> Iterator[Candidate]:
    """The reader for files whose labels are known up front rather than read from folders (a
    data set's own class names, which need not be folder names: Fashion-MNIST's `T-shirt/top`):
    one candidate per file, in the mapping's order. A missing file is rejected when read."""
    for path, label in files.items():
        yield Candidate(str(path), path.name, label, _read_file(path))


def file_name_for(loaded: LoadedImage, original_name: str) -> str:
    """Content-addressed relative path: `ab/abcdef….png`."""
    suffix = Path(original_name).suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        suffix = f".{(loaded.format or 'img').lower()}"
    return f"{loaded.id[:2]}/{loaded.id}{suffix}"


def store_files(settings: Settings, loaded: LoadedImage, file: str) -> None:
    """The mapper's side effect: the original bytes and a JPEG thumbnail, content-addressed."""
    original = settings.images_dir / file
    if not original.exists():
        atomic_write(original, loaded.data)
    thumb = settings.thumbs_dir / f"{loaded.id[:2]}/{loaded.id}.jpg"
    if not thumb.exists():
        atomic_write(thumb, thumbnail_bytes(loaded.image, settings.images.thumb_size))


def sync_index(
    settings: Settings,
    store: Store,
    index: VectorIndex,
    encoder: Encoder,
    version: str,
    progress: Progress | None = None,
) -> tuple[int, int]:
    """Make `version`'s index hold exactly the catalogued images; returns (embedded, deleted)."""
    catalogued = {record.id: record for record in store.list_images()}
    indexed = index.ids(version)
    orphans = sorted(indexed - catalogued.keys())
    if orphans:
        index.delete(version, orphans)
    missing = [catalogued[i] for i in sorted(catalogued.keys() - indexed)]
    for start in range(0, len(missing), settings.batch_size):
        chunk = missing[start : start + settings.batch_size]
        images = [
            load_image(settings.images_dir / r.file, limits=settings.images).image for r in chunk
        ]
        index.upsert(version, [r.id for r in chunk], encoder.encode(images, settings.batch_size))
        if progress is not None:
            progress(start + len(chunk), len(missing))
    if missing:
        release_freed_memory()
    return len(missing), len(orphans)


@dataclass(frozen=True)
class _Prepared:
    """A decoded, validated and stored image, with the tower's input ready."""

    record: ImageRecord
    pixels: torch.Tensor  # the encoder's `prepare` of the image: (H, W, 3) uint8 mostly


class _Known:
    """A candidate whose image the catalog holds already (a duplicate)."""


_KNOWN = _Known()


def _prepare(
    candidate: Candidate | Rejected,
    settings: Settings,
    store: Store,
    prepare: Callable[[Image.Image], torch.Tensor],
) -> _Prepared | _Known | Rejected:
    """The mapper (on a worker thread): read, decode and validate, hash; for an image the
    catalog lacks, write the content-addressed files and preprocess. An image catalogued
    already comes back as `_Known`; duplicates within one run are the caller's to find."""
    if isinstance(candidate, Rejected):
        return candidate
    try:
        loaded = load_image(candidate.read(), limits=settings.images, name=candidate.name)
    except (ImageError, OSError) as exc:
        return Rejected(candidate.source, str(exc))
    if store.existing_ids([loaded.id]):
        return _KNOWN
    file = file_name_for(loaded, candidate.name)
    store_files(settings, loaded, file)
    record = ImageRecord(
        id=loaded.id,
        original_name=candidate.name,
        label=candidate.label,
        split=split_for(loaded.id),
        width=loaded.width,
        height=loaded.height,
        file=file,
        source=candidate.source,
    )
    return _Prepared(record, prepare(loaded.image))


def _ahead(pool: Executor, items: Iterable[T], work: Callable[[T], R], depth: int) -> Iterator[R]:
    """`work(item)` for each item, in order, at most `depth` items ahead of the consumer (so
    memory stays bounded however many items there are)."""
    pending: deque[Future[R]] = deque()
    for item in items:
        pending.append(pool.submit(work, item))
        if len(pending) > depth:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


@dataclass(frozen=True)
class _Encoded:
    """A batch out of the tower: its rows, (B, d) vectors and (B, t) stage taps."""

    records: list[ImageRecord]
    vectors: np.ndarray
    taps: np.ndarray


class _IndexWriter:
    """The writer, on a thread of its own: it gathers encoded batches into large index writes
    (`settings.index.batch_size` vectors), upserts them, appends their taps to the tower's tap
    cache (when given), then commits their catalog rows (vectors first: see the module doc),
    while the caller encodes the next batches. An error here is raised in the caller at its
    next `put` or at `close`."""

    def __init__(
        self,
        store: Store,
        index: VectorIndex,
        version: str,
        flush_at: int,
        taps: TapCache | None = None,
    ) -> None:
        self._store, self._index, self._version, self._flush_at = store, index, version, flush_at
        self._taps = taps
        self._queue: queue.Queue[_Encoded | None] = queue.Queue(2)
        self._error: BaseException | None = None
        self.added = 0
        self._thread = threading.Thread(target=self._run, name="ingest-writer", daemon=True)
        self._thread.start()

    def _write(self, batches: list[_Encoded]) -> None:
        records = [record for batch in batches for record in batch.records]
        if not records:
            return
        ids = [r.id for r in records]
        self._index.upsert(self._version, ids, np.concatenate([b.vectors for b in batches]))
        if self._taps is not None:
            self._taps.append(ids, np.concatenate([b.taps for b in batches]))
        self.added += self._store.add_images(records)

    def _run(self) -> None:
        batches: list[_Encoded] = []
        item = self._queue.get()
        try:
            while item is not None:
                batches.append(item)
                if sum(len(b.records) for b in batches) >= self._flush_at:
                    self._write(batches)
                    batches = []
                item = self._queue.get()
            self._write(batches)
            if self._taps is not None:
                self._taps.compact()
        except BaseException as exc:  # handed to the caller; the rest of the queue is dropped
            self._error = exc
            while item is not None:
                item = self._queue.get()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, batch: _Encoded) -> None:
        self._raise()
        self._queue.put(batch)

    def close(self) -> int:
        """Write what is left, wait for it; returns the rows added."""
        self._queue.put(None)
        self._thread.join()
        self._raise()
        return self.added


def ingest(
    candidates: Sequence[Candidate | Rejected],
    *,
    settings: Settings,
    store: Store,
    index: VectorIndex,
    encoder: Encoder,
    version: str,
    taps: TapCache | None = None,
    progress: Progress | None = None,
) -> IngestReport:
    """Run the pipeline over `candidates`; one bad file is reported and never sinks the batch.

    Worker threads read, decode, hash, store and preprocess up to two batches ahead (skipping
    the last two for images catalogued already); this thread drops repeats within the run and
    runs the tower; the writer thread writes the index, the tower's stage taps to `taps` (the
    `TapCache` of `encoder`'s tower, if kept) and the catalog."""
    report = IngestReport()
    sync_index(settings, store, index, encoder, version)
    seen: set[str] = set()
    batch: list[_Prepared] = []
    total = len(candidates)
    writer = _IndexWriter(store, index, version, settings.index.batch_size, taps)

    def encode(batch: list[_Prepared]) -> None:
        if batch:
            pixels = encoder.pixels([item.pixels for item in batch])
            if taps is not None:
                vectors, tapped = encoder.encode_pixels_tapped(pixels)
            else:
                vectors, tapped = encoder.encode_pixels(pixels), np.zeros((len(batch), 0))
            writer.put(_Encoded([item.record for item in batch], vectors, tapped))

    def prepare(candidate: Candidate | Rejected) -> _Prepared | _Known | Rejected:
        return _prepare(candidate, settings, store, encoder.prepare)

    try:
        with ThreadPoolExecutor(settings.ingest_workers, thread_name_prefix="ingest") as pool:
            prepared = _ahead(pool, candidates, prepare, 2 * settings.batch_size)
            for done, outcome in enumerate(prepared, start=1):
                if isinstance(outcome, Rejected):
                    report.rejected.append(outcome)
                elif isinstance(outcome, _Known) or outcome.record.id in seen:
                    report.duplicates += 1
                else:
                    seen.add(outcome.record.id)
                    batch.append(outcome)
                if len(batch) >= settings.batch_size or done == total:
                    encode(batch)
                    batch = []
                if progress is not None:
                    progress(done, total)
    finally:
        report.added = writer.close()
        release_freed_memory()
    return report
