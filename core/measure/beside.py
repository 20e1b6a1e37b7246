"""Does background work block search? `python -m core bench --beside-lab` measures it.

Searches run one after another, `gap` seconds apart (a person reading results between
queries), first alone and then while a real index-lab job runs on the active version: the job
the Index lab page starts (`core.measure.lab_job`), under the same priority. Within each phase
the searches alternate between two thread policies for the query encode, so both meet the
same stages of the job:

- `fixed`: torch's default thread count (every core), whatever else runs;
- `adaptive`: what the product does (`core.encoder.threads.QueryThreads`).

The figures are the p50 / p95 / max of each policy in each phase, and the lab's own seconds.
The lab's result is stored like any other run and shown on the Index lab page.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import numpy as np
import torch

from core.config import Settings
from core.errors import LookalikeError
from core.gallery.images import load_image
from core.measure.lab_job import LabRequest, read_lab_status, start_lab_job
from core.studio import Studio

POLICIES = ("fixed", "adaptive")


class BesideLabError(LookalikeError, RuntimeError):
    """The measurement cannot start (a lab job already runs, the gallery is too small)."""


def _summary(prefix: str, ms: list[float]) -> dict[str, float]:
    values = np.array(ms)
    return {
        f"{prefix}_searches": len(ms),
        f"{prefix}_p50_ms": round(float(np.percentile(values, 50)), 1),
        f"{prefix}_p95_ms": round(float(np.percentile(values, 95)), 1),
        f"{prefix}_max_ms": round(float(values.max()), 1),
    }


def bench_beside_lab(
    studio: Studio,
    settings: Settings,
    *,
    n_alone: int = 40,
    gap: float = 0.2,
    k: int = 10,
    methods: tuple[str, ...] = (),
    progress: Callable[[str], None] | None = None,
) -> dict[str, float | str]:
    """Search latency alone and beside an index-lab job, per thread policy (module doc)."""
    if (status := read_lab_status(settings)) is not None and status.live:
        raise BesideLabError(f"A lab job is already running ({status.describe()}); wait for it.")
    records = studio.store.list_images()
    if len(records) < 2:
        raise BesideLabError("The gallery needs at least two images to search beside the lab.")
    sample = random.Random(1).sample(records, min(200, len(records)))
    images = [load_image(studio.image_path(r).read_bytes()).image for r in sample]
    adaptive = studio.query_threads
    policies: dict[str, Callable[[], int]] = {
        "fixed": lambda: torch.get_num_threads(),
        "adaptive": adaptive,
    }
    times: dict[str, list[float]] = {f"{ph}_{p}": [] for ph in ("alone", "lab") for p in POLICIES}

    def search(phase: str, i: int) -> None:
        policy = POLICIES[i % 2]
        studio.query_threads = policies[policy]
        try:
            started = time.perf_counter()
            studio.search([images[i % len(images)]], k)
            times[f"{phase}_{policy}"].append((time.perf_counter() - started) * 1000)
        finally:
            studio.query_threads = adaptive

    for i in range(4):  # warm-up: caches, oneDNN kernels for both thread counts
        studio.search([images[i % len(images)]], k)
    for i in range(n_alone):
        search("alone", i)
        time.sleep(gap)
    version = studio.active_version().version
    if progress is not None:
        progress(f"the index lab on {version!r} starts; searching every {gap} s until it ends")
    started = time.perf_counter()
    start_lab_job(settings, LabRequest(version, methods, k=k), retry=True)
    i = 0
    while (status := read_lab_status(settings)) is not None and status.live:
        search("lab", i)
        i += 1
        time.sleep(gap)
    seconds = time.perf_counter() - started
    if status is None or status.state != "done":
        detail = status.describe() if status is not None else "no status"
        raise BesideLabError(f"The lab job did not finish: {detail}.")
    if not times["lab_fixed"] or not times["lab_adaptive"]:
        raise BesideLabError("The lab ended before both policies searched beside it.")
    figures: dict[str, float | str] = {
        "beside_lab_version": version,
        "lab_seconds": round(seconds, 1),
        "cores": torch.get_num_threads(),
    }
    for key, ms in times.items():
        figures.update(_summary(f"search_{key}", ms))
    return figures
