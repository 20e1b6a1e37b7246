"""The index lab on a gallery: a version's vectors, held-out images as queries, stored results,
and the background job the Index lab page starts.

Held out means the query images leave the indexed set (a seeded sample of the version's
gallery): a query never finds itself, as a new upload would not. Results are stored per
version under `Settings.lab_dir` with the gallery state they measured (`image_signature`), so
the page shows them again without recomputing and says when the gallery has changed since.

Torch-free, like the map job: the store and the index are all it needs. The job runs in a
process of its own under `nice` (`core.measure.jobs`) and builds Chroma's graph in a temporary
directory, so the lab never touches the collections search reads, nor its priority.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.config import Settings
from core.files import atomic_write
from core.measure import jobs
from core.measure.index_lab import DEFAULT_QUERIES, LabResult, Progress, check_methods, run_lab
from core.measure.jobs import JobReporter, JobStatus
from core.search.index import VectorIndex
from core.search.nn import NNError
from core.store import Store, utc_now

KIND = "lab"


@dataclass(frozen=True)
class LabRequest:
    """One lab run on a version's gallery."""

    version: str
    methods: tuple[str, ...] = ()  # empty: every method
    n_queries: int = DEFAULT_QUERIES  # gallery images held out as queries
    k: int = 10
    seed: int = 0  # which images are held out

    def args(self) -> list[str]:
        """The job's command-line arguments (the starter's and the job's own)."""
        methods = ["--methods", *self.methods] if self.methods else []
        return [
            "--model",
            self.version,
            *methods,
            "--n-queries",
            str(self.n_queries),
            "-k",
            str(self.k),
            "--seed",
            str(self.seed),
        ]


def held_out(
    ids: Sequence[str], vectors: np.ndarray, n_queries: int, k: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Split a gallery `(n, d)` into `(base (n - q, d), queries (q, d), query ids)`: a seeded
    sample of `n_queries` images, fewer when the rest would hold under k + 1 images."""
    n = len(ids)
    q = min(n_queries, n - k - 1)
    if q < 1:
        raise NNError(
            f"The gallery has {n} images: the lab needs more than k + 1 = {k + 1} to hold "
            "one out as a query."
        )
    chosen = np.zeros(n, bool)
    chosen[np.random.default_rng(seed).choice(n, q, replace=False)] = True
    return vectors[~chosen], vectors[chosen], [ids[int(i)] for i in np.flatnonzero(chosen)]


Reader = Callable[[str], tuple[list[str], np.ndarray]]  # version -> (ids, (n, d) vectors)


def index_reader(settings: Settings) -> Reader:
    """A version's vectors from the data directory's index, opened only while they are read,
    so the job holds no Chroma client (and none of its SQLite locks) while it computes. (The
    1.6 s search stalls once blamed on an open client came from the query encoder's threads:
    see `core.encoder.threads`.)"""

    def read(version: str) -> tuple[list[str], np.ndarray]:
        with VectorIndex.from_settings(settings) as index:
            return index.get_embeddings(version)

    return read


def gallery_lab(
    read: Reader,
    request: LabRequest,
    *,
    save_neighbours: Path | None = None,
    progress: Progress | None = None,
) -> LabResult:
    """`run_lab` on `request.version`'s vectors with held-out images as queries. With
    `save_neighbours`, the base's image ids (row order of the neighbour files) and the
    queries' are written there too, as `rows.json`."""
    ids, vectors = read(request.version)  # (n, d), sorted by id
    if not ids:
        raise NNError(f"Model version {request.version!r} has no vectors: index a gallery first.")
    base, queries, query_ids = held_out(ids, vectors, request.n_queries, request.k, request.seed)
    result = run_lab(
        base,
        queries,
        request.k,
        request.methods or None,
        save_neighbours=save_neighbours,
        progress=progress,
    )
    if save_neighbours is not None:
        held = set(query_ids)
        rows = {"base": [i for i in ids if i not in held], "queries": query_ids}
        atomic_write(save_neighbours / "rows.json", json.dumps(rows).encode())
    return result


@dataclass(frozen=True)
class StoredLab:
    """A version's last lab run and the gallery state it measured."""

    result: LabResult
    request: LabRequest
    signature: str
    created_at: str


class LabStore:
    """The last lab run per version, as JSON under `folder` (`Settings.lab_dir`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, version: str) -> Path:
        return self.folder / f"{version}.json"

    def get(self, version: str) -> StoredLab | None:
        try:
            data: dict[str, Any] = json.loads(self._path(version).read_text())
        except FileNotFoundError:
            return None
        request = {**data["request"], "methods": tuple(data["request"]["methods"])}
        return StoredLab(
            LabResult.from_json(data["result"]),
            LabRequest(**request),
            data["signature"],
            data["created_at"],
        )

    def put(self, request: LabRequest, signature: str, result: LabResult) -> None:
        data = {
            "request": asdict(request),
            "signature": signature,
            "created_at": utc_now(),
            "result": result.to_json(),
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self._path(request.version), json.dumps(data).encode())


def run_and_store(
    settings: Settings,
    read: Reader,
    request: LabRequest,
    *,
    save_neighbours: Path | None = None,
    progress: Progress | None = None,
) -> LabResult:
    """`gallery_lab`, stored for the page with the gallery state it measured."""
    check_methods(request.methods or None)
    signature = Store(settings.catalog_path).image_signature()
    result = gallery_lab(read, request, save_neighbours=save_neighbours, progress=progress)
    LabStore(settings.lab_dir).put(request, signature, result)
    return result


def run_lab_job(settings: Settings, request: LabRequest, *, wait: bool = False) -> JobStatus:
    """`python -m core lab-job`: claim the lab job's status, run and store the lab at idle
    priority (`jobs.idle_priority`)."""
    reporter = jobs.claim_job(settings, KIND, request.args(), wait=wait)
    jobs.idle_priority()

    def body(report: JobReporter) -> str:
        def progress(text: str, done: int, total: int) -> None:
            if done == 0:
                report.begin(total)
            report.step(text)
            report.advance(done)

        result = run_and_store(settings, index_reader(settings), request, progress=progress)
        return f"The lab measured {len(result.points)} points on {request.version}."

    return jobs.run_job(reporter, body)


def start_lab_job(settings: Settings, request: LabRequest, *, retry: bool = False) -> JobStatus:
    """Start the lab job in the background (see `jobs.start_job`)."""
    return jobs.start_job(settings, KIND, request.args(), retry=retry)


def read_lab_status(settings: Settings) -> JobStatus | None:
    return jobs.read_status(settings.jobs_dir, KIND)
