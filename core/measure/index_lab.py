"""The index lab: every nearest-neighbour method swept over its main parameter, on one set of
vectors and queries, against exact search.

For each method (`core.search.nn`) and each point of its sweep: recall@k against the exact top
k, queries per second one query at a time (what a search pays) and all queries in one call,
build seconds (shared by the points that only retune), and the memory the index holds. The
exact cost as the gallery grows is measured too (the hand-written exact search on the first N
rows, N up to the whole), so the page can set the O(N·D) line beside it.

Numbers only: nothing here reads the catalog or prints (`core.measure.lab_job` joins it with a
gallery; the command line and the Index lab page render it).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.search.nn import MISSING_ROW, NNError, NNIndex, get_method, list_methods, unit_rows

DEFAULT_QUERIES = 200  # held-out queries: enough for recall to ±0.01, quick single-query loops
GROWTH_FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)  # of the gallery, for the exact-cost curve
GROWTH_QUERIES = 50  # single queries timed per growth point
Progress = Callable[[str, int, int], None]  # (what is running, points done, points in all)


@dataclass(frozen=True)
class LabPoint:
    """One method at one setting."""

    method: str  # a name from core.search.nn.list_methods()
    params: dict[str, int]  # every parameter of the method at this point
    recall_at_k: float  # mean over queries of |found ∩ exact top k| / k
    qps_single: float  # queries per second, one `query` call per query
    qps_batch: float  # queries per second, all queries in one `query` call
    build_seconds: float  # building the structure these params share (0 for none)
    memory_mb: float  # what the built index holds (MiB), vectors it reads included
    neighbours_file: str | None  # the (queries x k) int64 rows saved, with --save-neighbours


@dataclass(frozen=True)
class LabResult:
    """A whole lab run; `as_dict` is the command's JSON."""

    k: int
    n_vectors: int
    n_queries: int
    dim: int
    points: list[LabPoint]
    growth: list[dict[str, float]] = field(default_factory=list)  # {"n", "ms_per_query"}

    def as_dict(self) -> dict[str, Any]:
        """Exactly the documented keys: k, n_vectors, n_queries, dim, points."""
        return {
            "k": self.k,
            "n_vectors": self.n_vectors,
            "n_queries": self.n_queries,
            "dim": self.dim,
            "points": [asdict(point) for point in self.points],
        }

    def to_json(self) -> dict[str, Any]:
        """Everything, for storing (`from_json` reads it back)."""
        return {**self.as_dict(), "growth": self.growth}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabResult:
        points = [LabPoint(**point) for point in data["points"]]
        fields = {key: data[key] for key in ("k", "n_vectors", "n_queries", "dim")}
        return cls(**fields, points=points, growth=list(data.get("growth", [])))


def check_methods(methods: Sequence[str] | None) -> list[str]:
    """`methods` in the lab's order (all when None); an unknown one raises NNError."""
    if not methods:
        return list_methods()
    for name in methods:
        get_method(name)  # names the valid ones
    return [name for name in list_methods() if name in set(methods)]


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over rows of |found_i ∩ exact_i| / k for `(m, k)` row-number arrays; missing
    rows (MISSING_ROW) in `found` count as misses."""
    if found.shape != exact.shape:
        raise ValueError(f"found {found.shape} and exact {exact.shape} differ in shape")
    hits = [
        len(set(f[f != MISSING_ROW].tolist()) & set(e.tolist()))
        for f, e in zip(found, exact, strict=True)
    ]
    return float(np.mean(hits) / exact.shape[1]) if len(hits) else 1.0


def _timed_single(index: NNIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Every query on its own, as a search does: (rows (m, k), queries per second)."""
    index.query(queries[:1], k)  # warm-up: first-call costs (a loaded graph, faiss threads)
    rows = np.empty((queries.shape[0], k), np.int64)
    start = time.perf_counter()
    for i in range(queries.shape[0]):
        rows[i] = index.query(queries[i : i + 1], k)[0][0]
    return rows, queries.shape[0] / max(time.perf_counter() - start, 1e-9)


def _timed_batch(index: NNIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    rows, _ = index.query(queries, k)
    return rows, queries.shape[0] / max(time.perf_counter() - start, 1e-9)


def _file_name(method: str, params: dict[str, int]) -> str:
    settings = "_".join(f"{key}={value}" for key, value in params.items())
    return re.sub(r"[^A-Za-z0-9_.=-]", "-", f"{method}_{settings}") + ".npy"


def exact_growth(
    base: np.ndarray, queries: np.ndarray, k: int, fractions: Sequence[float] = GROWTH_FRACTIONS
) -> list[dict[str, float]]:
    """The hand-written exact search's milliseconds per single query on the first N rows of
    `base`, for N at each fraction of the whole (at least k rows): the O(N·D) cost, measured."""
    queries = queries[:GROWTH_QUERIES]
    out: list[dict[str, float]] = []
    for n in sorted({max(k, round(f * base.shape[0])) for f in fractions}):
        index = get_method("exact")().build(base[: min(n, base.shape[0])])
        _, qps = _timed_single(index, queries, k)
        out.append({"n": float(min(n, base.shape[0])), "ms_per_query": 1000.0 / qps})
    return out


def run_lab(
    base: np.ndarray,
    queries: np.ndarray,
    k: int = 10,
    methods: Sequence[str] | None = None,
    *,
    save_neighbours: Path | None = None,
    progress: Progress | None = None,
    growth: bool = True,
) -> LabResult:
    """Sweep `methods` (default: all) over `base` `(n, d)` with `queries` `(m, d)`, any float
    rows (normalised here: cosine). Ground truth is the hand-written exact top `k`. With
    `save_neighbours`, each point's `(m, k)` row numbers into `base` are written there as
    int64 `.npy` files."""
    names = check_methods(methods)
    base, queries = unit_rows(base, "Gallery vectors"), unit_rows(queries, "Queries")
    if queries.shape[1] != base.shape[1]:
        raise NNError(f"Queries are {queries.shape[1]}-d but the vectors are {base.shape[1]}-d.")
    if base.shape[0] < k:
        raise NNError(f"The lab needs at least k = {k} vectors; it has {base.shape[0]}.")
    if queries.shape[0] == 0:
        raise NNError("The lab needs at least one query.")
    if save_neighbours is not None:
        save_neighbours.mkdir(parents=True, exist_ok=True)
    n, dim = base.shape
    truth = get_method("exact")().build(base).query(queries, k)[0]
    plan = [(name, params) for name in names for params in get_method(name).sweep(n, dim)]
    points: list[LabPoint] = []
    index: NNIndex | None = None
    build_seconds = 0.0
    for done, (name, params) in enumerate(plan):
        if progress is not None:
            progress(f"{name} {params}", done, len(plan))
        cls = get_method(name)
        same_build = (
            index is not None
            and index.method == name
            and all(index.params[key] == params[key] for key in cls.build_keys)
        )
        if same_build and index is not None:
            index.retune(**{key: value for key, value in params.items() if key in index.query_keys})
        else:
            _close(index)
            start = time.perf_counter()
            index = cls(**params).build(base)
            build_seconds = time.perf_counter() - start
        _, qps_single = _timed_single(index, queries, k)
        batch_rows, qps_batch = _timed_batch(index, queries, k)
        saved = None
        if save_neighbours is not None:
            path = save_neighbours / _file_name(name, index.params)
            np.save(path, batch_rows.astype(np.int64))
            saved = str(path)
        points.append(
            LabPoint(
                method=name,
                params=index.params,
                recall_at_k=recall_at_k(batch_rows, truth),
                qps_single=qps_single,
                qps_batch=qps_batch,
                build_seconds=build_seconds,
                memory_mb=index.memory_bytes / 2**20,
                neighbours_file=saved,
            )
        )
    _close(index)
    if progress is not None:
        progress("exact search as the gallery grows", len(plan), len(plan))
    curve = exact_growth(base, queries, k) if growth and "exact" in names else []
    return LabResult(k, n, queries.shape[0], dim, points, curve)


def _close(index: NNIndex | None) -> None:
    """Release what an index holds outside Python's memory (Chroma's temporary folder)."""
    close = getattr(index, "close", None)
    if callable(close):
        close()


def pareto_front(points: Sequence[LabPoint]) -> list[LabPoint]:
    """The points no other point beats on both recall and single-query speed, by recall."""
    front = [
        p
        for p in points
        if not any(
            (o.recall_at_k >= p.recall_at_k and o.qps_single > p.qps_single)
            or (o.recall_at_k > p.recall_at_k and o.qps_single >= p.qps_single)
            for o in points
        )
    ]
    return sorted(front, key=lambda p: p.recall_at_k)


def fastest_at(points: Sequence[LabPoint], recall: float) -> LabPoint | None:
    """The approximate point with the highest single-query speed at recall >= `recall`."""
    good = [p for p in points if not p.method.startswith("exact") and p.recall_at_k >= recall]
    return max(good, key=lambda p: p.qps_single, default=None)


def client_overhead_ms(points: Sequence[LabPoint]) -> dict[int, float]:
    """Per `ef`: Chroma's single-query milliseconds minus faiss's HNSW at the same M, ef and
    ef_construction, i.e. what Chroma's client adds to the bare graph search."""
    bare = {
        (p.params["M"], p.params["ef_construction"], p.params["ef"]): 1000 / p.qps_single
        for p in points
        if p.method == "hnsw-faiss"
    }
    out = {}
    for p in points:
        key = (p.params.get("M"), p.params.get("ef_construction"), p.params.get("ef"))
        if p.method == "hnsw-chroma" and key in bare:
            out[p.params["ef"]] = 1000 / p.qps_single - bare[key]
    return out


def lab_table(result: LabResult, target_recall: float = 0.98) -> str:
    """The lab as text: one line per point, then the Pareto front, the fastest method at
    `target_recall` against the hand-written exact search, and Chroma's client overhead."""
    lines = [
        f"{result.n_vectors:,} vectors x {result.dim} dims, {result.n_queries} queries, "
        f"recall@{result.k} against exact search",
        f"{'method':<12} {'params':<40} {'recall':>7} {'qps 1':>9} {'qps all':>10} "
        f"{'build s':>8} {'MB':>8}",
    ]
    for p in result.points:
        params = " ".join(f"{key}={value}" for key, value in p.params.items())
        lines.append(
            f"{p.method:<12} {params:<40} {p.recall_at_k:7.4f} {p.qps_single:9.1f} "
            f"{p.qps_batch:10.1f} {p.build_seconds:8.2f} {p.memory_mb:8.1f}"
        )
    front = pareto_front(result.points)
    lines.append(
        "Pareto front (recall, single-query speed): "
        + "; ".join(f"{p.method} {p.recall_at_k:.3f} @ {p.qps_single:.0f}/s" for p in front)
    )
    exact = next((p for p in result.points if p.method == "exact"), None)
    best = fastest_at(result.points, target_recall)
    if best is not None:
        speedup = f", {best.qps_single / exact.qps_single:.1f}x exact" if exact else ""
        lines.append(
            f"fastest at recall >= {target_recall}: {best.method} {best.params} "
            f"({best.qps_single:.0f} queries/s{speedup})"
        )
    overhead = client_overhead_ms(result.points)
    if overhead:
        lines.append(
            "Chroma's client adds per query (ms, against faiss HNSW at the same ef): "
            + ", ".join(f"ef={ef}: {ms:+.2f}" for ef, ms in sorted(overhead.items()))
        )
    return "\n".join(lines)
