"""The index lab: every point's figures against independent recomputations (recall from the
saved neighbour files and a numpy brute force), the build shared by a sweep's retunes, the
held-out split, the stored runs, and the front and summary helpers on hand-made points."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.config import IndexSettings
from core.measure.index_lab import (
    LabPoint,
    LabResult,
    client_overhead_ms,
    fastest_at,
    lab_table,
    pareto_front,
    recall_at_k,
    run_lab,
)
from core.measure.lab_job import LabRequest, LabStore, gallery_lab, held_out
from core.search.index import VectorIndex
from core.search.nn import NNError, get_method


def clustered(n: int, dim: int, seed: int, clusters: int = 12) -> np.ndarray:
    """Gaussian blobs, not normalised (the lab normalises: cosine)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, dim))
    return (x * rng.uniform(0.5, 3.0, size=(n, 1))).astype(np.float32)  # any lengths


def brute_force(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    b = base / np.linalg.norm(base, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    return np.argsort(-(q.astype(np.float64) @ b.T.astype(np.float64)), axis=1)[:, :k]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> tuple[LabResult, np.ndarray, np.ndarray]:
    base, queries = clustered(1500, 32, 0), clustered(40, 32, 1)
    folder = tmp_path_factory.mktemp("neighbours")
    methods = ["exact", "exact-faiss", "ivf", "ivf-faiss"]
    return run_lab(base, queries, 10, methods, save_neighbours=folder), base, queries


def test_every_point_reports_its_figures_and_recall_matches_the_saved_rows(
    lab: tuple[LabResult, np.ndarray, np.ndarray],
) -> None:
    result, base, queries = lab
    assert (result.k, result.n_vectors, result.n_queries, result.dim) == (10, 1500, 40, 32)
    truth = brute_force(base, queries, 10)
    assert {p.method for p in result.points} == {"exact", "exact-faiss", "ivf", "ivf-faiss"}
    for point in result.points:
        assert point.qps_single > 0 and point.qps_batch > 0 and point.memory_mb > 0
        assert point.neighbours_file is not None
        rows = np.load(point.neighbours_file)
        assert rows.dtype == np.int64 and rows.shape == (40, 10)
        mine = np.mean([len(set(r) & set(t)) / 10 for r, t in zip(rows, truth, strict=True)])
        assert point.recall_at_k == pytest.approx(mine)
    exact = [p for p in result.points if p.method.startswith("exact")]
    assert all(p.recall_at_k == 1.0 for p in exact)


def test_a_sweep_builds_once_and_retunes(lab: tuple[LabResult, np.ndarray, np.ndarray]) -> None:
    result, _, _ = lab
    ivf = [p for p in result.points if p.method == "ivf"]
    assert len(ivf) >= 4 and len({p.params["nlist"] for p in ivf}) == 1
    assert len({p.build_seconds for p in ivf}) == 1  # one build, shared by every nprobe
    probes = [p.params["nprobe"] for p in ivf]
    assert probes == sorted(probes) and len(set(probes)) == len(probes)
    recalls = [p.recall_at_k for p in ivf]
    assert recalls == sorted(recalls)  # more lists scanned never finds fewer


def test_the_exact_cost_is_measured_as_the_gallery_grows(
    lab: tuple[LabResult, np.ndarray, np.ndarray],
) -> None:
    sizes = [g["n"] for g in lab[0].growth]
    assert sizes == sorted(sizes) and sizes[-1] == 1500 and len(sizes) >= 4
    assert all(g["ms_per_query"] > 0 for g in lab[0].growth)


def test_json_has_exactly_the_documented_keys(
    lab: tuple[LabResult, np.ndarray, np.ndarray],
) -> None:
    payload = json.loads(json.dumps(lab[0].as_dict()))
    assert set(payload) == {"k", "n_vectors", "n_queries", "dim", "points"}
    assert set(payload["points"][0]) == {
        "method",
        "params",
        "recall_at_k",
        "qps_single",
        "qps_batch",
        "build_seconds",
        "memory_mb",
        "neighbours_file",
    }
    assert LabResult.from_json(lab[0].to_json()) == lab[0]


def test_bad_input_is_a_clear_error() -> None:
    base, queries = clustered(50, 8, 0), clustered(5, 8, 1)
    with pytest.raises(NNError, match="valid"):
        run_lab(base, queries, methods=["kd-forest"])
    with pytest.raises(NNError, match="16-d"):
        run_lab(base, clustered(5, 16, 1), methods=["exact"])
    with pytest.raises(NNError, match="zero"):
        run_lab(np.zeros((50, 8), np.float32), queries, methods=["exact"])
    with pytest.raises(NNError, match="at least k"):
        run_lab(base[:5], queries, k=10, methods=["exact"])


def test_recall_counts_missing_rows_as_misses() -> None:
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, -1, -1], [8, 9, 5, 6]])
    assert recall_at_k(found, exact) == pytest.approx((2 / 4 + 3 / 4) / 2)


def point(method: str, recall: float, qps: float, **params: int) -> LabPoint:
    return LabPoint(method, params, recall, qps, qps * 3, 1.0, 2.0, None)


def test_the_pareto_front_and_the_fastest_method_at_a_recall() -> None:
    points = [
        point("exact", 1.0, 10),
        point("ivf", 0.90, 500, nprobe=1),
        point("ivf", 0.99, 200, nprobe=8),
        point("lsh", 0.95, 150, tables=8),  # beaten by ivf nprobe=8 on both
        point("hnsw-faiss", 0.99, 400, M=32, ef_construction=200, ef=64),
        point("hnsw-chroma", 0.99, 250, M=32, ef_construction=200, ef=64),
    ]
    front = pareto_front(points)
    assert [(p.method, p.recall_at_k) for p in front] == [
        ("ivf", 0.90),
        ("hnsw-faiss", 0.99),
        ("exact", 1.0),
    ]
    assert fastest_at(points, 0.98) == points[4]
    assert fastest_at(points, 0.999) is None  # exact does not count as approximate
    assert client_overhead_ms(points) == {64: pytest.approx(1000 / 250 - 1000 / 400)}
    table = lab_table(LabResult(10, 100, 5, 8, points))
    assert "hnsw-faiss" in table and "40.0x exact" in table and "ef=64: +1.50" in table


def test_held_out_queries_leave_the_indexed_set() -> None:
    ids = [f"{i:04d}" for i in range(100)]
    vectors = np.eye(100, dtype=np.float32)
    base, queries, query_ids = held_out(ids, vectors, 30, k=10, seed=3)
    assert base.shape == (70, 100) and queries.shape == (30, 100) and len(query_ids) == 30
    assert np.array_equal(queries, vectors[[int(i) for i in query_ids]])
    assert not set(np.flatnonzero(base.sum(axis=0))) & {int(i) for i in query_ids}
    assert held_out(ids, vectors, 30, k=10, seed=3)[2] == query_ids  # deterministic
    assert len(held_out(ids, vectors, 500, k=10)[2]) == 89  # at least k + 1 stay
    with pytest.raises(NNError, match="more than"):
        held_out(ids[:5], vectors[:5], 2, k=10)


def test_a_versions_lab_is_stored_and_read_back(tmp_path: Path) -> None:
    vectors = clustered(300, 16, 0)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"img-{i:03d}" for i in range(300)]
    with VectorIndex(IndexSettings(), tmp_path / "chroma") as index:
        index.upsert("base", ids, vectors)
        request = LabRequest("base", ("exact", "ivf"), n_queries=20, k=5)
        result = gallery_lab(index.get_embeddings, request, save_neighbours=tmp_path / "rows")
    rows = json.loads((tmp_path / "rows" / "rows.json").read_text())
    assert len(rows["base"]) == 280 and len(rows["queries"]) == 20
    assert not set(rows["base"]) & set(rows["queries"])
    store = LabStore(tmp_path / "lab")
    assert store.get("base") is None
    store.put(request, "images=300", result)
    stored = store.get("base")
    assert stored is not None and stored.result == result and stored.request == request
    assert stored.signature == "images=300"
    exact = get_method("exact")().build(vectors[[ids.index(i) for i in rows["base"]]])
    assert exact.n == 280
