"""Performance figures, measured (never asserted in unit tests): `python -m core bench`.

- log writes/s through the store API, one process and four at once, in a scratch catalog;

- ingest images/s: a sample of a folder (default: the demo stamps) into a throw-away data dir;
- query latency p50/p95: encode one uploaded image and search the active index, encoder warm;
- each offline encoder's forward images/s at its native size, in the precision it would use;
- index recall@10 of the HNSW index against exact search, every gallery vector as a query;
- with `--umap`: UMAP wall time for the gallery and for 10,000 points (the gallery's vectors
  repeated with noise), after a warm-up that pays umap-learn's one-off JIT compilation.
"""

from __future__ import annotations

import multiprocessing
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from core.encoder.model import Encoder, load_encoder
from core.encoder.precision import resolve_precision
from core.encoder.registry import get_encoder_spec, list_encoders, reference_trunk
from core.gallery.demo import DEMO_EXTENSIONS
from core.gallery.images import load_image
from core.gallery.ingest import Candidate, iter_candidates
from core.search.index import recall_against_exact
from core.store import ImageRecord, Store
from core.studio import Studio


def images_per_s(
    forward: Callable[[torch.Tensor], object], size: int, batch: int = 32, seconds: float = 3.0
) -> float:
    """Images per second through `forward` on (batch, 3, size, size) pixels, after a warm-up,
    over at least 3 batches and `seconds` (torch threads: as set, the cores)."""
    pixels = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        forward(pixels)  # warm-up: oneDNN picks its kernels on the first pass
        started, passes = time.perf_counter(), 0
        while passes < 3 or time.perf_counter() - started < seconds:
            forward(pixels)
            passes += 1
    return batch * passes / (time.perf_counter() - started)


def input_px(encoder: Encoder) -> int:
    """The tower's native input side, as its preprocessing makes it."""
    return int(encoder.preprocess(Image.new("RGB", (8, 8))).shape[-1])


def bench_forward(encoder: Encoder) -> dict[str, float | str]:
    """The tower's own speed in the encoder's precision (channels_last, autocast as chosen)
    beside the reference: timm's efficientnet_lite0, NCHW, fp32, no autocast, batch 32."""
    size = input_px(encoder)
    return {
        "precision": encoder.precision,
        "encoder_images_per_s": round(images_per_s(encoder.encode_pixels, size), 1),
        "encoder_fp32_images_per_s": round(images_per_s(reference_trunk(), 224), 1),
    }


def bench_encoders(requested_precision: str = "auto") -> dict[str, float | str]:
    """Each offline registry encoder's forward images/s at its native size, in the precision
    `requested_precision` resolves to for it on this CPU (what a new base would use)."""
    figures: dict[str, float | str] = {}
    for name in list_encoders():
        spec = get_encoder_spec(name)
        if spec.packaged_trunk is None:  # downloads (ARCH/TAG) or tests only (tiny-test)
            continue
        encoder = load_encoder(name).with_precision(resolve_precision(requested_precision, spec))
        size = input_px(encoder)
        figures[f"forward_{name}_precision"] = encoder.precision
        figures[f"forward_{name}_images_per_s"] = round(
            images_per_s(encoder.encode_pixels, size), 1
        )
    return figures


def bench_ingest(studio: Studio, folder: Path, n_images: int) -> dict[str, float | str]:
    """Ingest up to `n_images` PNGs of `folder` into a temporary data directory (a new base
    in this machine's precision), beside the forward speeds it is measured against."""
    candidates = [
        c for c in iter_candidates([folder], extensions=DEMO_EXTENSIONS) if isinstance(c, Candidate)
    ]
    sample = random.Random(0).sample(candidates, min(n_images, len(candidates)))
    tmp = Path(tempfile.mkdtemp(prefix="lookalike-bench-"))
    try:
        scratch = Studio(
            replace(studio.settings, data_dir=tmp),
            encoder_loader=lambda name: studio.encoder(),
        )
        started = time.perf_counter()
        report = scratch.ingest([c.source for c in sample])
        seconds = time.perf_counter() - started
        forward = bench_forward(scratch.encoder())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rate = report.added / seconds
    return {
        "ingest_images": report.added,
        "ingest_seconds": round(seconds, 2),
        "ingest_images_per_s": round(rate, 1),
        **forward,
        "ingest_vs_encoder": round(rate / float(forward["encoder_images_per_s"]), 3),
        "ingest_vs_fp32_reference": round(rate / float(forward["encoder_fp32_images_per_s"]), 3),
    }


def bench_search(studio: Studio, n_queries: int, k: int) -> dict[str, float]:
    """Wall time of upload-to-results: decode, encode, query, join with the catalog."""
    records = studio.store.list_images()
    sample = random.Random(1).sample(records, min(n_queries, len(records)))
    blobs = [studio.image_path(r).read_bytes() for r in sample]
    studio.search([load_image(blobs[0]).image], k)  # warm-up: first call builds caches
    times = []
    for blob in blobs:
        started = time.perf_counter()
        studio.search([load_image(blob).image], k)
        times.append(time.perf_counter() - started)
    ms = np.array(times) * 1000
    return {
        "search_queries": len(times),
        "search_p50_ms": round(float(np.percentile(ms, 50)), 1),
        "search_p95_ms": round(float(np.percentile(ms, 95)), 1),
    }


def bench_recall(studio: Studio, k: int) -> dict[str, float]:
    """HNSW recall@k against exact search over all of the active version's vectors."""
    version = studio.active_version().version
    _, vectors = studio.index.get_embeddings(version)
    approx = studio.index.query(version, vectors, k)
    exact = studio.index.exact_query(version, vectors, k)
    return {
        "index_vectors": len(vectors),
        f"index_recall_at_{k}": round(recall_against_exact(approx, exact), 4),
    }


def _scratch_log(path: Path) -> int:
    """A catalog with one user, one image and one logged query to click on; returns its id."""
    store = Store(path)
    store.ensure_base_version("bench")
    user = store.ensure_user("bench")
    image = "0" * 64
    store.add_images([ImageRecord(image, "x.png", None, "train", 1, 1, "x.png", "bench")])
    return store.feedback.log_query(
        user_id=user.id,
        query_image_id=image,
        model_version="base",
        results=[(image, 1.0)],
        source="simulate",
    )


def _click_many(
    path: Path, query_id: int, n_rows: int, start: Any = None, done: Any = None
) -> None:
    """Write `n_rows` clicks; with a barrier, start together and report the finish time."""
    store = Store(path)
    if start is not None:
        start.wait()
    for _ in range(n_rows):
        store.feedback.log_interaction(query_id, "0" * 64, "click")
    if done is not None:
        done.put(time.time())


def bench_log(n_rows: int = 2000, processes: int = 4) -> dict[str, float]:
    """Interaction rows/s: `n_rows` from one process, then `n_rows` split over `processes`
    that start writing together (their interpreter start-up is not counted)."""
    with tempfile.TemporaryDirectory(prefix="lookalike-bench-log-") as tmp:
        path = Path(tmp) / "catalog.db"
        query_id = _scratch_log(path)
        started = time.perf_counter()
        _click_many(path, query_id, n_rows)
        single = time.perf_counter() - started
        context = multiprocessing.get_context("spawn")
        start, done = context.Barrier(processes + 1), context.Queue()
        share = n_rows // processes
        workers = [
            context.Process(
                target=_click_many, args=(path, query_id, share, start, done), daemon=True
            )
            for _ in range(processes)
        ]
        for worker in workers:
            worker.start()
        start.wait()  # every worker has imported and opened the catalog
        began = time.time()
        finished = max(done.get(timeout=600) for _ in workers)
        for worker in workers:
            worker.join()
        written = len(Store(path).feedback.interactions()) - 1  # less the one impression
    return {
        "log_rows": written,
        "log_rows_per_s_1_process": round(n_rows / single),
        f"log_rows_per_s_{processes}_processes": round(share * processes / (finished - began)),
    }


def bench_umap(studio: Studio, n_points: int = 10_000) -> dict[str, float]:
    """UMAP seconds for the active version's gallery and for `n_points` points like it."""
    from core.measure.projection import project

    _, vectors = studio.index.get_embeddings(studio.active_version().version)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    project([str(i) for i in range(min(len(vectors), 200))], vectors[:200], "umap")  # JIT
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    project([str(i) for i in range(len(vectors))], vectors, "umap")
    gallery = time.perf_counter() - started
    many = vectors[rng.integers(0, len(vectors), n_points)] + rng.normal(
        0, 0.02, (n_points, vectors.shape[1])
    )
    many = (many / np.linalg.norm(many, axis=1, keepdims=True)).astype(np.float32)
    started = time.perf_counter()
    project([str(i) for i in range(n_points)], many, "umap")
    return {
        "umap_warmup_s": round(warmup, 1),
        f"umap_gallery_{len(vectors)}_s": round(gallery, 1),
        f"umap_{n_points}_s": round(time.perf_counter() - started, 1),
    }


def run_bench(
    studio: Studio,
    folder: Path | None,
    n_images: int,
    n_queries: int,
    k: int = 10,
    umap: bool = False,
) -> dict[str, float | str]:
    """All figures; ingest only when a folder of images is at hand, UMAP only when asked."""
    figures: dict[str, float | str] = {"gallery_images": studio.store.count_images()}
    figures.update(bench_log())
    figures.update(bench_recall(studio, k))
    figures.update(bench_search(studio, n_queries, k))
    figures.update(bench_encoders(studio.settings.precision))
    if folder is not None and folder.is_dir():
        figures.update(bench_ingest(studio, folder, n_images))
    if umap:
        figures.update(bench_umap(studio))
    return figures
