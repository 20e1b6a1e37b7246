"""Ingest: files, folders and zip archives into the catalog and a version's index.

A pipeline in three parts, composed by `ingest()` so tests can swap any of them:
reader (`iter_candidates`: paths -> candidates, lazily read) -> mapper (decode, validate, hash,
write the content-addressed copy and thumbnail) -> writer (encode a batch, upsert it into the
index, then commit its catalog rows). The catalog is the source of truth: an image is in the
gallery once its row is committed, which happens only after its vector is in the index. A run
killed half-way therefore leaves at worst index vectors without rows; `sync_index` (run at
the start of every ingest) deletes those and embeds any catalogued image the index lacks.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image

from core.config import Settings
from core.encoder.model import Encoder
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


def _commit_batch(
    batch: list[tuple[ImageRecord, Image.Image]],
    store: Store,
    index: VectorIndex,
    encoder: Encoder,
    version: str,
    batch_size: int,
) -> int:
    """The writer: vectors into the index first, then catalog rows (see the module doc)."""
    if not batch:
        return 0
    embeddings = encoder.encode([image for _, image in batch], batch_size=batch_size)  # (B, d)
    index.upsert(version, [record.id for record, _ in batch], embeddings)
    return store.add_images(record for record, _ in batch)


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
    return len(missing), len(orphans)


def _prepare(
    candidate: Candidate, settings: Settings, store: Store, seen: set[str], report: IngestReport
) -> tuple[ImageRecord, Image.Image] | None:
    """The mapper: decode and validate, skip duplicates, write the content-addressed files."""
    try:
        loaded = load_image(candidate.read(), limits=settings.images, name=candidate.name)
    except (ImageError, OSError) as exc:
        report.rejected.append(Rejected(candidate.source, str(exc)))
        return None
    if loaded.id in seen or store.existing_ids([loaded.id]):
        report.duplicates += 1
        return None
    seen.add(loaded.id)
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
    return record, loaded.image


def ingest(
    candidates: Sequence[Candidate | Rejected],
    *,
    settings: Settings,
    store: Store,
    index: VectorIndex,
    encoder: Encoder,
    version: str,
    progress: Progress | None = None,
) -> IngestReport:
    """Run the pipeline over `candidates`; one bad file is reported and never sinks the batch."""
    report = IngestReport()
    sync_index(settings, store, index, encoder, version)
    seen: set[str] = set()
    batch: list[tuple[ImageRecord, Image.Image]] = []
    total = len(candidates)
    for done, candidate in enumerate(candidates, start=1):
        if isinstance(candidate, Rejected):
            report.rejected.append(candidate)
        elif (prepared := _prepare(candidate, settings, store, seen, report)) is not None:
            batch.append(prepared)
        if len(batch) >= settings.batch_size or done == total:
            report.added += _commit_batch(
                batch, store, index, encoder, version, settings.batch_size
            )
            batch = []
        if progress is not None:
            progress(done, total)
    return report
