"""`Studio`: the product's operations over one data directory, for the CLI and the pages alike.

It wires the store (catalog), the vector index and the encoder of the active model version
together; it owns no backend itself. The encoder and the index client are injected, so the
Streamlit app can hand in cached ones and tests tiny ones.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from core.choices import DEMO_SETS
from core.config import Settings
from core.encoder.model import Encoder, load_encoder
from core.encoder.precision import resolve_precision
from core.encoder.registry import get_encoder_spec
from core.encoder.taps import TAPS_DIR, TapCache, stage_modules, taps_key
from core.encoder.threads import QueryThreads, torch_threads
from core.encoder.versions import load_heads, load_tower
from core.errors import LookalikeError
from core.files import atomic_write
from core.gallery.demo import DEMO_EXTENSIONS, DemoDataError, fetch_demo_stamps
from core.gallery.fashion import fashion_mnist_files
from core.gallery.images import IMAGE_EXTENSIONS, LoadedImage, load_image
from core.gallery.ingest import (
    Candidate,
    IngestReport,
    Progress,
    Rejected,
    file_name_for,
    ingest,
    iter_candidates,
    labelled_candidates,
    sync_index,
)
from core.search.index import Hit, VectorIndex
from core.search.refine import RocchioWeights, feedback_examples, rocchio
from core.store import (
    ImageRecord,
    LoggedQuery,
    ModelVersion,
    ResultLabel,
    Store,
    TrainingRun,
    User,
)

log = logging.getLogger(__name__)


class ActivationRefused(LookalikeError, ValueError):
    """Activating this version needs an explicit confirmation; the sentence says why."""


class EmptyGalleryError(LookalikeError, RuntimeError):
    """Search was asked of a gallery with no images."""


@dataclass(frozen=True)
class LoggedSearch:
    """A search as logged: its query row id and the results shown (one impression each)."""

    query_id: int
    results: list[SearchResult]


@dataclass(frozen=True)
class SearchResult:
    """One ranked result, joined with its catalog row."""

    rank: int
    image_id: str
    label: str | None
    score: float
    path: str  # the stored copy of the image

    def as_dict(self) -> dict[str, object]:
        return {
            "rank": self.rank,
            "image_id": self.image_id,
            "label": self.label,
            "score": round(self.score, 6),
            "path": self.path,
        }


@dataclass(frozen=True)
class NewBase:
    """What `Studio.new_base` made: the version, its encoder, images indexed, wall seconds."""

    version: str
    encoder: str
    images: int
    seconds: float

    def as_dict(self) -> dict[str, object]:
        return {
            "version": self.version,
            "encoder": self.encoder,
            "images": self.images,
            "seconds": round(self.seconds, 1),
        }


class Studio:
    """Search, ingest and evaluate over `settings.data_dir`."""

    def __init__(
        self,
        settings: Settings,
        *,
        index: VectorIndex | None = None,
        encoder_loader: Callable[[str], Encoder] = load_encoder,
        heads_loader: Callable[[Path, Sequence[str]], list[torch.nn.Module]] = load_heads,
        tower_loader: Callable[[Encoder, Path, Sequence[str]], Encoder] = load_tower,
    ) -> None:
        self.settings = settings
        self.store = Store(settings.catalog_path)
        self.store.ensure_base_version(  # the precision is resolved for a new data dir only
            settings.encoder,
            lambda: resolve_precision(settings.precision, get_encoder_spec(settings.encoder)),
        )
        self.index = index if index is not None else VectorIndex.from_settings(settings)
        self._load_encoder = encoder_loader
        self._load_heads = heads_loader
        self._load_tower = tower_loader
        self._encoders: dict[str, Encoder] = {}  # the CLI has no st.cache_resource: keep them
        # threads for a query's encode: fewer while other work runs (core.encoder.threads)
        self.query_threads: Callable[[], int] = QueryThreads()

    def active_version(self) -> ModelVersion:
        return self.store.active_version()

    def precision(self, version: ModelVersion) -> str:
        """The arithmetic `version`'s vectors were computed in: recorded on its base's card
        (children run their lineage's tower); versions from before precisions were fp32."""
        while "precision" not in version.card and version.parent is not None:
            version = self.store.get_model_version(version.parent)
        return str(version.card.get("precision", "fp32"))

    def encoder(self, version: ModelVersion | None = None) -> Encoder:
        """The encoder that produced `version`'s vectors (default: the active version), in the
        same precision, so queries are encoded as the index was."""
        version = version or self.active_version()
        if version.version not in self._encoders:
            base = self._load_encoder(version.encoder).with_precision(self.precision(version))
            if towers := version.card.get("tower", []):  # partial / full: tuned tower weights
                base = self._load_tower(base, self.settings.models_dir, towers)
            heads = version.card.get("heads", [])
            self._encoders[version.version] = (
                base.with_heads(self._load_heads(self.settings.models_dir, heads))
                if heads
                else base
            )
        return self._encoders[version.version]

    def tap_cache(self, version: ModelVersion | None = None) -> TapCache | None:
        """The stage-tap cache of `version`'s tower (default: the active version's), which
        ingest fills and `head` training reads; None for a tower without stages. A head
        version shares its parent's tower, so the same cache."""
        encoder = self.encoder(version)
        if not stage_modules(encoder.model.visual):
            return None
        key = taps_key(encoder.model.visual, encoder.precision)
        return TapCache(self.settings.models_dir / TAPS_DIR / key)

    # --- the catalog and the log, as the pages and the command line read them -------------

    def count_images(self, label: str | None = None) -> int:
        """Catalogued images; `label` counts the label and its sub-labels."""
        return self.store.count_images(label=label)

    def label_counts(self) -> dict[str, int]:
        """Images per label ("" for unlabelled)."""
        return self.store.label_counts()

    def list_images(
        self, label: str | None = None, *, limit: int | None = None, offset: int = 0
    ) -> list[ImageRecord]:
        """Catalogued images, oldest first; `label` matches the label or any sub-label; a page
        of them with `limit` and `offset` (read in SQL, not sliced from all of them)."""
        return self.store.list_images(label=label, limit=limit, offset=offset)

    def images_by_id(self) -> dict[str, ImageRecord]:
        return {record.id: record for record in self.store.list_images()}

    def images(self, ids: Sequence[str]) -> dict[str, ImageRecord]:
        """The records of `ids` (unknown ones absent): what a page shows, not the catalog."""
        return self.store.get_images(list(ids))

    def versions(self) -> list[ModelVersion]:
        return self.store.list_model_versions()

    def indexed_versions(self) -> list[str]:
        """Versions whose index collection holds vectors (the ones a page can search or map)."""
        return [v.version for v in self.versions() if self.index.count(v.version)]

    def activate(self, version: str, *, force: bool = False) -> ModelVersion:
        """Make `version` the one search uses (roll back by activating its parent). A version
        that ranks categories its feedback never covered more than 1 % worse than its parent
        (`ModelVersion.forgetting`) is refused with the reason unless `force`."""
        found = self.store.get_model_version(version)
        why = found.forgetting()
        if why and not force and not found.active:
            raise ActivationRefused(
                f"{why}. Activate it anyway with --force (the Train page: tick the box)."
            )
        return self.store.activate(version)

    def state_signature(self) -> str:
        """Changes whenever the gallery or the log does (a key for cached results)."""
        return self.store.state_signature()

    def users(self) -> list[User]:
        return self.store.list_users()

    def user(self, name: str | None = None, user_id: int | None = None) -> User:
        """The user with `user_id`, or the one named `name` (created on first use)."""
        if user_id is not None:
            return self.store.get_user(user_id)
        return self.store.ensure_user(name or "guest")

    def set_user_location(self, user_id: int, location: str | None) -> User:
        return self.store.set_user_location(user_id, location)

    def log_interaction(
        self, query_id: int, image_id: str, kind: str, value: int | None = None
    ) -> None:
        """One row of the log for a shown result: a click, (un)labelling, a grade."""
        self.store.feedback.log_interaction(query_id, image_id, kind, value=value)

    def query_chain(self, query_id: int) -> list[int]:
        """Query ids from the original search to `query_id` along its refinements."""
        return [query.id for query in self.store.feedback.query_chain(query_id)]

    def result_labels(self, query_ids: Sequence[int]) -> dict[str, ResultLabel]:
        """The latest label and grade of each result judged in these queries."""
        return self.store.feedback.labels(list(query_ids))

    def interaction_counts(self, user_id: int | None = None) -> dict[str, int]:
        """Rows per interaction type (of one user, or everyone's)."""
        return self.store.feedback.counts(user_id=user_id)

    def interactions(self, *, with_query_id: bool = False) -> pd.DataFrame:
        """The whole log with the seed's column names (`FeedbackLog.interactions`)."""
        return self.store.feedback.interactions(with_query_id=with_query_id)

    def log_bytes(self, fmt: str = "csv") -> bytes:
        """The whole log as CSV or Parquet, for a download."""
        return self.store.feedback.log_bytes(fmt)

    def training_runs(self, limit: int = 20) -> list[TrainingRun]:
        return self.store.training.runs(limit=limit)

    def cancel_training(self, run_id: int) -> bool:
        """Ask a live training run to stop; False when it had already ended."""
        return self.store.training.request_cancel(run_id)

    def image_path(self, record: ImageRecord) -> Path:
        return self.settings.images_dir / record.file

    def gallery_image(self, image_id: str) -> Image.Image:
        """A catalogued image's stored copy, decoded to RGB with the ingest limits (training
        re-reads the gallery through this); KeyError for an id not in the catalog."""
        record = self.store.get_images([image_id])[image_id]
        return load_image(self.image_path(record), limits=self.settings.images).image

    def thumb_path(self, image_id: str) -> Path:
        return self.settings.thumbs_dir / image_id[:2] / f"{image_id}.jpg"

    # --- writing ------------------------------------------------------------------------

    def ingest(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        label_from_folders: bool = False,
        extensions: frozenset[str] = IMAGE_EXTENSIONS,
        progress: Progress | None = None,
    ) -> IngestReport:
        """Files, folders and zips into the catalog and the active version's index."""
        candidates = iter_candidates(
            paths, label_from_folders=label_from_folders, extensions=extensions
        )
        return self.ingest_candidates(list(candidates), progress)

    def ingest_uploads(
        self,
        files: Sequence[tuple[str, bytes]],
        *,
        label_from_folders: bool = False,
        progress: Progress | None = None,
    ) -> IngestReport:
        """(file name, bytes) pairs from a browser upload, images or zips, as `ingest`: each is
        written to a temporary folder of its own, so equal names stay apart and a loose file
        gets no label (a zip's members are labelled by their folders with
        `label_from_folders`)."""
        with tempfile.TemporaryDirectory(prefix="lookalike-upload-") as tmp:
            paths = []
            for number, (name, data) in enumerate(files):
                target = Path(tmp) / str(number) / Path(name).name
                target.parent.mkdir()
                target.write_bytes(data)
                paths.append(target)
            return self.ingest(paths, label_from_folders=label_from_folders, progress=progress)

    def demo_data(
        self,
        progress: Progress | None = None,
        *,
        dataset: str = DEMO_SETS[0],
        limit: int | None = None,
    ) -> IngestReport:
        """Fetch a demo set's Debian package (once) and ingest it (idempotent): `tuxpaint`, the
        stamps with folder labels; `fashion-mnist`, its images as PNGs labelled with the class
        names, `limit` of them (spread evenly over the classes) or all 70,000."""
        if dataset not in DEMO_SETS:
            raise DemoDataError(f"Unknown demo set {dataset!r}; choose {', '.join(DEMO_SETS)}.")
        if dataset == "fashion-mnist":
            files = fashion_mnist_files(self.settings.demo_dir, limit)
            return self.ingest_candidates(list(labelled_candidates(files)), progress)
        if limit is not None:
            raise DemoDataError(f"A limit applies to fashion-mnist only, not to {dataset}.")
        stamps = fetch_demo_stamps(self.settings.demo_dir)
        return self.ingest(
            [stamps], label_from_folders=True, extensions=DEMO_EXTENSIONS, progress=progress
        )

    def ingest_candidates(
        self, candidates: Sequence[Candidate | Rejected], progress: Progress | None
    ) -> IngestReport:
        """Candidates (files with folder labels, or with labels known up front) into the
        catalog and the active version's index."""
        version = self.active_version()
        return ingest(
            candidates,
            settings=self.settings,
            store=self.store,
            index=self.index,
            encoder=self.encoder(version),
            version=version.version,
            taps=self.tap_cache(version),
            progress=progress,
        )

    def reindex(self, version: str | None = None, progress: Progress | None = None) -> int:
        """Bring a version's index in line with the catalog; returns vectors embedded."""
        model = self.store.get_model_version(version) if version else self.active_version()
        embedded, _ = sync_index(
            self.settings, self.store, self.index, self.encoder(model), model.version, progress
        )
        return embedded

    def next_version_name(self, prefix: str) -> str:
        """The first `prefix-NNNN` that neither the catalog nor the index has used."""
        taken = {v.version for v in self.store.list_model_versions()} | set(self.index.versions())
        number = 1
        while f"{prefix}-{number:04d}" in taken:
            number += 1
        return f"{prefix}-{number:04d}"

    def new_base(self, encoder: str, progress: Progress | None = None) -> NewBase:
        """A new base version: no parent, `encoder`'s shipped weights, the whole gallery indexed
        into its own collection (`progress(done, total)` as it goes). Also when another base
        uses the same encoder; it is not activated: that stays the user's choice."""
        spec = get_encoder_spec(encoder)  # an unknown name fails here, before anything is written
        started = time.perf_counter()
        precision = resolve_precision(self.settings.precision, spec)
        # built before the version exists: weights that cannot load leave no half-made version
        loaded = self._load_encoder(spec.name).with_precision(precision)
        name = self.next_version_name("base")
        card = {
            "encoder": spec.name,
            "precision": precision,
            "note": f"a new base: {spec.description}, no fine-tuning",
        }
        version = self.store.add_model_version(name, spec.name, None, card)
        self._encoders[name] = loaded
        images = self.reindex(version.version, progress)
        return NewBase(version.version, spec.name, images, time.perf_counter() - started)

    def remove_images(self, ids: Sequence[str]) -> int:
        """Remove images from the catalog, every version's index, and the stored files."""
        records = self.store.get_images(ids)
        removed = self.store.remove_images(list(records))
        for version in self.index.versions():
            self.index.delete(version, list(records))
        for record in records.values():
            self.image_path(record).unlink(missing_ok=True)
            self.thumb_path(record.id).unlink(missing_ok=True)
        return removed

    # --- reading ------------------------------------------------------------------------

    def _results(self, hits: list[list[Hit]]) -> list[list[SearchResult]]:
        records = self.store.get_images([h.image_id for row in hits for h in row])
        out: list[list[SearchResult]] = []
        for row in hits:
            kept = [h for h in row if h.image_id in records]  # vectors of removed images
            out.append(
                [
                    SearchResult(
                        rank=rank,
                        image_id=h.image_id,
                        label=records[h.image_id].label,
                        score=h.score,
                        path=str(self.image_path(records[h.image_id])),
                    )
                    for rank, h in enumerate(kept, start=1)
                ]
            )
        return out

    def search_vectors(
        self, embeddings: np.ndarray, k: int = 10, exclude: Sequence[set[str]] | None = None
    ) -> list[list[SearchResult]]:
        """(q, d) unit vectors -> top-k results per row from the active version's index."""
        version = self.active_version().version
        hits = self.index.query(version, embeddings, k, exclude=exclude)
        # only an empty result asks for the count (12 ms at 70,000 vectors)
        if not any(hits) and self.index.count(version) == 0:
            raise EmptyGalleryError(
                "The gallery is empty: ingest images (or run demo-data) before searching."
            )
        return self._results(hits)

    def search(self, images: Sequence[Image.Image], k: int = 10) -> list[list[SearchResult]]:
        """RGB query images -> top-k results each, through the active encoder and index."""
        return self.search_vectors(self.encode_queries(images), k)

    def encode_queries(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Query images -> unit vectors under the active version, on as many threads as the
        machine has free (`core.encoder.threads`), so a background job does not stall them."""
        with torch_threads(self.query_threads()):
            return self.encoder().encode(list(images), batch_size=self.settings.batch_size)

    def search_gallery_image(self, image_id: str, k: int = 10) -> list[SearchResult]:
        """Results for a catalogued image, from its stored vector, without the image itself."""
        version = self.active_version().version
        ids, vectors = self.index.get_embeddings(version, [image_id])
        if not ids:
            raise EmptyGalleryError(f"Image {image_id[:12]}… has no vector in {version!r}.")
        return self.search_vectors(vectors, k, exclude=[{image_id}])[0]

    def query_vectors(self, version: str) -> Callable[[Sequence[str]], dict[str, np.ndarray]]:
        """Vectors of query images under `version`: stored ones, else uploads re-encoded."""

        def lookup(ids: Sequence[str]) -> dict[str, np.ndarray]:
            found, vectors = self.index.get_embeddings(version, list(ids))
            out = dict(zip(found, vectors, strict=True))
            files = {i: self.store.feedback.query_image_file(i) for i in ids if i not in out}
            uploads = {i: f for i, f in files.items() if f is not None}
            if uploads:
                encoder = self.encoder(self.store.get_model_version(version))
                images = [load_image(self.settings.queries_dir / f).image for f in uploads.values()]
                out.update(zip(uploads, encoder.encode(images), strict=True))
            return out

        return lookup

    def image_signature(self) -> str:
        """The gallery part of the state signature (a map does not change with the log)."""
        return self.store.image_signature()

    # --- the feedback loop ----------------------------------------------------------------

    def keep_query_image(self, loaded: LoadedImage) -> str:
        """Store an uploaded query (content-addressed, outside the gallery); returns its id."""
        if not self.store.existing_ids([loaded.id]):
            file = file_name_for(loaded, f"query.{(loaded.format or 'png').lower()}")
            target = self.settings.queries_dir / file
            if not target.exists():
                atomic_write(target, loaded.data)
            self.store.feedback.add_query_image(loaded.id, file, loaded.width, loaded.height)
        return loaded.id

    def _log(
        self,
        user_id: int,
        query_image_id: str,
        results: list[SearchResult],
        source: str,
        parent_id: int | None = None,
        location: str | None = None,
    ) -> LoggedSearch:
        query_id = self.store.feedback.log_query(
            user_id=user_id,
            query_image_id=query_image_id,
            model_version=self.active_version().version,
            results=[(r.image_id, r.score) for r in results],
            source=source,
            parent_id=parent_id,
            location=location,
        )
        return LoggedSearch(query_id, results)

    def logged_search(
        self, user_id: int, loaded: LoadedImage, k: int = 10, location: str | None = None
    ) -> LoggedSearch:
        """Search with an uploaded image and log the query and one impression per result."""
        query_image_id = self.keep_query_image(loaded)
        return self._log(
            user_id, query_image_id, self.search([loaded.image], k)[0], "upload", location=location
        )

    def logged_gallery_search(
        self, user_id: int, image_id: str, k: int = 10, location: str | None = None
    ) -> LoggedSearch:
        """Search with a gallery image (itself left out) and log it."""
        return self._log(
            user_id, image_id, self.search_gallery_image(image_id, k), "gallery", location=location
        )

    def _query_vector(self, query: LoggedQuery) -> np.ndarray:
        """(1, d) embedding of a logged query's image under the active version."""
        version = self.active_version().version
        ids, vectors = self.index.get_embeddings(version, [query.query_image_id])
        if ids:
            return vectors
        file = self.store.feedback.query_image_file(query.query_image_id)
        if file is None:
            raise EmptyGalleryError(f"The image of query {query.id} is no longer stored.")
        image = load_image(self.settings.queries_dir / file, limits=self.settings.images).image
        return self.encode_queries([image])

    def refine(
        self, query_id: int, k: int = 10, weights: RocchioWeights | None = None
    ) -> LoggedSearch:
        """Re-rank a query with the labels given in it and its refinements (Rocchio), logged
        as a new query whose parent is `query_id`; labels carry over along the chain."""
        chain = self.store.feedback.query_chain(query_id)
        labels = self.store.feedback.labels([q.id for q in chain])
        positives, negatives = feedback_examples(labels)
        version = self.active_version().version
        _, pos = self.index.get_embeddings(version, positives)
        _, neg = self.index.get_embeddings(version, negatives)
        query = self._query_vector(chain[0])[0]
        moved = rocchio(query, pos, neg, weights)
        # As in the first search: a gallery image (picked or simulated) is not its own result.
        searched_gallery = chain[0].source in ("gallery", "simulate")
        exclude = [{chain[0].query_image_id}] if searched_gallery else None
        results = self.search_vectors(moved[None], k, exclude=exclude)[0]
        return self._log(
            chain[-1].user_id,
            chain[0].query_image_id,
            results,
            "refine",
            parent_id=query_id,
            location=chain[-1].location,
        )
