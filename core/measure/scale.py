"""The scale benchmark, `python -m core bench --scale`: a demo set (all 70,000 Fashion-MNIST
images by default) into a fresh data directory, then search, index recall, evaluation and the
map at that size, every figure from one run on this machine (never asserted in unit tests).

The keys are fixed (`SCALE_KEYS`): ingest end to end (PNGs on disk -> vectors and catalog rows
committed; writing the PNGs out of the Debian package is not counted), the tower's forward
speed in the chosen precision and the fp32 reference (`bench.bench_forward`, measured after
the ingest in the same run), search latency upload-to-results, HNSW recall@10 against exact
search, a whole-gallery `evaluate` and a UMAP map, and the process's peak resident set over all
of it (`getrusage`: the embedded Chroma index runs in this process, so it is counted).
"""

from __future__ import annotations

import random
import resource
import time
from collections.abc import Callable

from core.errors import LookalikeError
from core.gallery.demo import fetch_demo_stamps
from core.gallery.fashion import fashion_mnist_files
from core.measure.bench import bench_forward, bench_search
from core.measure.evaluation import evaluate
from core.measure.maps import layout
from core.search.index import recall_against_exact
from core.studio import Studio

SCALE_KEYS = (
    "images",
    "ingest_seconds",
    "ingest_images_per_s",
    "encoder_fp32_images_per_s",
    "encoder_images_per_s",
    "precision",
    "peak_rss_mb",
    "search_p50_ms",
    "search_p95_ms",
    "index_recall_at_10",
    "evaluate_seconds",
    "map_seconds",
)
RECALL_QUERIES = 2_000  # gallery vectors asked of the HNSW index and of exact search

Stage = Callable[[str], None]


class ScaleBenchError(LookalikeError):
    """The scale benchmark cannot run as asked (a data directory that is not fresh)."""


def peak_rss_mb() -> float:
    """The largest resident set this process has had so far, in MB (Linux: ru_maxrss in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sampled_recall(studio: Studio, n_queries: int, k: int = 10, seed: int = 0) -> float:
    """HNSW recall@k against exact search, for a seeded sample of the gallery's own vectors
    (all of them when there are fewer): exact search over 70,000 queries would be the
    benchmark's longest part and tell nothing a 2,000-query sample does not."""
    version = studio.active_version().version
    ids = sorted(studio.index.ids(version))
    chosen = sorted(random.Random(seed).sample(ids, min(n_queries, len(ids))))
    _, vectors = studio.index.get_embeddings(version, chosen)
    approx = studio.index.query(version, vectors, k)
    exact = studio.index.exact_query(version, vectors, k)
    return recall_against_exact(approx, exact)


def _timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def run_scale_bench(
    studio: Studio,
    dataset: str = "fashion-mnist",
    limit: int | None = None,
    n_queries: int = 200,
    stage: Stage | None = None,
) -> dict[str, float | int | str]:
    """Ingest `dataset` (`limit` images of it: stratified for Fashion-MNIST) into `studio`'s
    data directory, which must hold no images yet, then measure the rest at that size; returns
    exactly `SCALE_KEYS`."""
    say = stage or (lambda text: None)
    if held := studio.store.count_images():
        raise ScaleBenchError(
            f"bench --scale ingests into a fresh data directory; {studio.settings.data_dir} "
            f"holds {held:,} images already. Give it an empty one with --data-dir."
        )
    say(f"preparing {dataset} (the Debian package, PNGs: not timed)")
    if dataset == "fashion-mnist":
        fashion_mnist_files(studio.settings.demo_dir, limit)
    else:
        fetch_demo_stamps(studio.settings.demo_dir)
    say("ingesting")
    started = time.perf_counter()
    report = studio.demo_data(dataset=dataset, limit=limit)
    ingest_seconds = time.perf_counter() - started
    say(f"{report.added:,} images in {ingest_seconds:.0f} s; the tower's forward speed")
    forward = bench_forward(studio.encoder())
    say("search latency")
    search = bench_search(studio, n_queries, 10)
    say("index recall against exact search")
    recall = sampled_recall(studio, RECALL_QUERIES)
    say("evaluate over the whole gallery")
    evaluate_seconds = _timed(lambda: evaluate(studio, split="all", k=10))
    say("UMAP map")
    map_seconds = _timed(lambda: layout(studio, method="umap"))
    figures: dict[str, float | int | str] = {
        "images": report.added,
        "ingest_seconds": round(ingest_seconds, 1),
        "ingest_images_per_s": round(report.added / ingest_seconds, 1),
        "encoder_fp32_images_per_s": forward["encoder_fp32_images_per_s"],
        "encoder_images_per_s": forward["encoder_images_per_s"],
        "precision": forward["precision"],
        "peak_rss_mb": round(peak_rss_mb()),
        "search_p50_ms": search["search_p50_ms"],
        "search_p95_ms": search["search_p95_ms"],
        "index_recall_at_10": round(recall, 4),
        "evaluate_seconds": round(evaluate_seconds, 1),
        "map_seconds": round(map_seconds, 1),
    }
    return {key: figures[key] for key in SCALE_KEYS}
