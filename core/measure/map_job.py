"""The map job: the maps the Embeddings page shows, computed before anyone asks for them.

For each version asked (by default the active one, which the page opens on), for the gallery
as it stands (`Store.image_signature`): its UMAP layout (`ProjectionCache`) and its per-label
cohesion table, read by the page from the cache. `python -m core map-job` runs it in the
foreground (`make run`, before the app starts); the app and the Embeddings page start it in
the background (`start_map_job`) when a map is missing, and poll `read_map_status`.

Torch-free on purpose: it takes the store, the index and the cache, not a `Studio`, so its
process is mapping after ~1 s of imports instead of the ~7 s that torch and open_clip cost.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from core.config import Settings
from core.measure import jobs
from core.measure.jobs import JobReporter, JobStatus
from core.measure.projection import ProjectionCache, cohesion, project
from core.search.index import VectorIndex
from core.store import Store

KIND = "map"
MIN_POINTS = 3  # fewer vectors make no map (`project`)
COHESION_SAMPLE = 5_000  # images per version the cohesion table reads (the table is n² work)


def map_request(versions: Sequence[str], method: str = "umap") -> list[str]:
    """The job's command-line arguments for `versions` (the starter's and the job's own)."""
    return [*(arg for version in versions for arg in ("--model", version)), "--method", method]


def missing_maps(
    store: Store,
    index: VectorIndex,
    cache: ProjectionCache,
    versions: Sequence[str],
    method: str = "umap",
) -> list[str]:
    """The versions among `versions` whose `method` layout or cohesion table is not cached
    for the gallery as it stands (a version with fewer than 3 vectors has no map to make)."""
    signature = store.image_signature()
    return [
        version
        for version in versions
        if index.count(version) >= MIN_POINTS
        and not (cache.has(version, method, signature) and cache.has_cohesion(version, signature))
    ]


def version_cohesion(
    store: Store,
    ids: Sequence[str],
    vectors: np.ndarray,
    sample: int = COHESION_SAMPLE,
    seed: int = 0,
) -> pd.DataFrame:
    """`projection.cohesion` of one version's (n, d) `vectors` with the catalog's labels; more
    than `sample` images are read on a seeded sample of them."""
    if len(ids) > sample:
        rows = np.sort(np.random.default_rng(seed).choice(len(ids), sample, replace=False))
        ids, vectors = [ids[i] for i in rows], vectors[rows]
    records = store.get_images(list(ids))
    return cohesion(vectors, [records[i].label if i in records else None for i in ids])


def _map_version(
    store: Store,
    index: VectorIndex,
    cache: ProjectionCache,
    version: str,
    method: str,
    reporter: JobReporter,
) -> None:
    signature = store.image_signature()
    reporter.step(f"{version}: reading its vectors")
    ids, vectors = index.get_embeddings(version)  # (n, d)
    if not cache.has(version, method, signature):
        layout = project(
            ids, vectors, method, stage=lambda text: reporter.step(f"{version}: {text}")
        )
        cache.put(version, signature, layout)
    if not cache.has_cohesion(version, signature):
        reporter.step(f"{version}: cohesion per label")
        cache.put_cohesion(version, signature, version_cohesion(store, ids, vectors))


def compute_maps(
    store: Store,
    index: VectorIndex,
    cache: ProjectionCache,
    versions: Sequence[str],
    method: str,
    reporter: JobReporter,
) -> str:
    """The job's body: each version's layout and cohesion, unless cached; a summary."""
    reporter.begin(len(versions))
    for done, version in enumerate(versions, start=1):
        _map_version(store, index, cache, version, method, reporter)
        reporter.advance(done)
    return f"{method.upper()} maps of {', '.join(versions)} are ready."


def run_map_job(
    settings: Settings,
    versions: Sequence[str] | None = None,
    method: str = "umap",
    *,
    wait: bool = False,
) -> JobStatus:
    """`python -m core map-job`: claim the map job's status (with `wait`, after a running one
    ends), compute what is missing, and return the status it ended with."""
    store = Store(settings.catalog_path)
    names = list(versions or [store.active_version().version])
    reporter = jobs.claim_job(settings, KIND, map_request(names, method), wait=wait)
    cache = ProjectionCache(settings.projections_dir)
    with VectorIndex.from_settings(settings) as index:
        return jobs.run_job(
            reporter, lambda report: compute_maps(store, index, cache, names, method, report)
        )


def start_map_job(
    settings: Settings,
    versions: Sequence[str],
    method: str = "umap",
    *,
    tag: str = "",
    retry: bool = False,
) -> JobStatus:
    """Start the map job in the background for `versions` (see `jobs.start_job`)."""
    return jobs.start_job(settings, KIND, map_request(versions, method), tag=tag, retry=retry)


def read_map_status(settings: Settings) -> JobStatus | None:
    return jobs.read_status(settings.jobs_dir, KIND)
