"""`Studio`: the product's operations over one data directory, for the CLI and the pages alike.

It wires the store (catalog), the vector index and the encoder of the active model version
together; it owns no backend itself. The encoder and the index client are injected, so the
Streamlit app can hand in cached ones and tests tiny ones.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from core.config import Settings
from core.demo import DEMO_EXTENSIONS, fetch_demo_stamps
from core.encoder import Encoder, load_encoder
from core.evaluation import Evaluation, evaluate_version
from core.images import IMAGE_EXTENSIONS
from core.index import Hit, VectorIndex
from core.ingest import IngestReport, Progress, ingest, iter_candidates, sync_index
from core.store import ImageRecord, ModelVersion, Store

log = logging.getLogger(__name__)


class EmptyGalleryError(RuntimeError):
    """Search was asked of a gallery with no images."""


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


class Studio:
    """Search, ingest and evaluate over `settings.data_dir`."""

    def __init__(
        self,
        settings: Settings,
        *,
        index: VectorIndex | None = None,
        encoder_loader: Callable[[str], Encoder] = load_encoder,
    ) -> None:
        self.settings = settings
        self.store = Store(settings.catalog_path)
        self.store.ensure_base_version(settings.encoder)
        self.index = index if index is not None else VectorIndex.from_settings(settings)
        self._load_encoder = encoder_loader
        self._encoders: dict[str, Encoder] = {}  # the CLI has no st.cache_resource: keep them

    def active_version(self) -> ModelVersion:
        return self.store.active_version()

    def encoder(self, version: ModelVersion | None = None) -> Encoder:
        """The encoder that produced `version`'s vectors (default: the active version)."""
        version = version or self.active_version()
        if version.encoder not in self._encoders:
            self._encoders[version.encoder] = self._load_encoder(version.encoder)
        return self._encoders[version.encoder]

    def image_path(self, record: ImageRecord) -> Path:
        return self.settings.images_dir / record.file

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
        candidates = list(
            iter_candidates(paths, label_from_folders=label_from_folders, extensions=extensions)
        )
        version = self.active_version()
        return ingest(
            candidates,
            settings=self.settings,
            store=self.store,
            index=self.index,
            encoder=self.encoder(version),
            version=version.version,
            progress=progress,
        )

    def demo_data(self, progress: Progress | None = None) -> IngestReport:
        """Fetch the Debian stamps (once) and ingest them with folder labels (idempotent)."""
        stamps = fetch_demo_stamps(self.settings.demo_dir)
        return self.ingest(
            [stamps], label_from_folders=True, extensions=DEMO_EXTENSIONS, progress=progress
        )

    def reindex(self, version: str | None = None, progress: Progress | None = None) -> int:
        """Bring a version's index in line with the catalog; returns vectors embedded."""
        model = self.store.get_model_version(version) if version else self.active_version()
        embedded, _ = sync_index(
            self.settings, self.store, self.index, self.encoder(model), model.version, progress
        )
        return embedded

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
        if self.index.count(version) == 0:
            raise EmptyGalleryError(
                "The gallery is empty: ingest images (or run demo-data) before searching."
            )
        return self._results(self.index.query(version, embeddings, k, exclude=exclude))

    def search(self, images: Sequence[Image.Image], k: int = 10) -> list[list[SearchResult]]:
        """RGB query images -> top-k results each, through the active encoder and index."""
        embeddings = self.encoder().encode(list(images), batch_size=self.settings.batch_size)
        return self.search_vectors(embeddings, k)

    def search_gallery_image(self, image_id: str, k: int = 10) -> list[SearchResult]:
        """Results for a catalogued image, from its stored vector, without the image itself."""
        version = self.active_version().version
        ids, vectors = self.index.get_embeddings(version, [image_id])
        if not ids:
            raise EmptyGalleryError(f"Image {image_id[:12]}… has no vector in {version!r}.")
        return self.search_vectors(vectors, k, exclude=[{image_id}])[0]

    def evaluate(self, version: str | None = None, split: str = "all", k: int = 10) -> Evaluation:
        """Offline label metrics (core.evaluation) for a version, by default the active one."""
        name = version or self.active_version().version
        return evaluate_version(self.store, self.index, name, split, k)
