"""Tests for core.search.index: the embedding contract, Chroma round trips, and HNSW against exact.

References are independent of the code under test: a numpy argsort written here, hand-worked
recall examples, and what was upserted.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from core.config import IndexSettings, Settings
from core.search.index import (
    EmbeddingContractError,
    Hit,
    VectorIndex,
    VectorIndexError,
    check_embeddings,
    collection_name,
    recall_against_exact,
)

D = 16


def unit_rows(rng: np.random.Generator, n: int, d: int = D) -> np.ndarray:
    """(n, d) float32 rows of unit L2 norm."""
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def ids_of(n: int, prefix: str = "img") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(n)]


def reference_top_k(
    q: np.ndarray, ids: list[str], x: np.ndarray, k: int
) -> list[list[tuple[str, float]]]:
    """Brute force in float64: sort every gallery row by (-cosine, id)."""
    scores = q.astype(np.float64) @ x.astype(np.float64).T
    out = []
    for row in scores:
        order = sorted(range(len(ids)), key=lambda j: (-row[j], ids[j]))
        out.append([(ids[j], float(row[j])) for j in order[:k]])
    return out


@pytest.fixture
def index(tmp_path: Path) -> VectorIndex:
    with VectorIndex(IndexSettings(), tmp_path / "chroma") as idx:
        yield idx


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# --- the contract --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (np.ones((2, D), np.float64) / np.sqrt(D), "float32"),
        (np.ones(D, np.float32) / np.sqrt(D), "2-D"),
        (np.zeros((2, 0), np.float32), "2-D"),
        ([[1.0, 0.0]], "numpy array"),
        (np.full((2, D), np.nan, np.float32), "NaN"),
        (np.ones((2, D), np.float32), "unit L2 norm"),
    ],
)
def test_check_embeddings_refuses_contract_violations(bad: np.ndarray, words: str) -> None:
    with pytest.raises(EmbeddingContractError, match=words):
        check_embeddings(bad)


def test_check_embeddings_accepts_unit_rows_and_checks_dim(rng: np.random.Generator) -> None:
    x = unit_rows(rng, 3)
    assert check_embeddings(x, dim=D) is x
    with pytest.raises(EmbeddingContractError, match=f"{D}-d but .* holds 8-d"):
        check_embeddings(x, dim=8)


def test_index_refuses_violations_and_a_width_it_does_not_hold(
    index: VectorIndex, rng: np.random.Generator
) -> None:
    index.upsert("base", ids_of(4), unit_rows(rng, 4))
    with pytest.raises(EmbeddingContractError, match="holds 16-d"):
        index.upsert("base", ["other"], unit_rows(rng, 1, d=8))
    with pytest.raises(EmbeddingContractError, match="holds 16-d"):
        index.query("base", unit_rows(rng, 1, d=8), k=3)
    with pytest.raises(EmbeddingContractError, match="unit L2 norm"):
        index.upsert("base", ["x"], 2 * unit_rows(rng, 1))
    with pytest.raises(EmbeddingContractError, match="2 ids for 1"):
        index.upsert("base", ["x", "y"], unit_rows(rng, 1))
    with pytest.raises(EmbeddingContractError, match="more than once"):
        index.upsert("base", ["x", "x"], unit_rows(rng, 2))
    assert index.count("base") == 4  # nothing half-written


def test_width_is_remembered_after_every_row_is_deleted(
    index: VectorIndex, rng: np.random.Generator
) -> None:
    index.upsert("base", ids_of(2), unit_rows(rng, 2))
    index.delete("base", ids_of(2))
    # Chroma keeps enforcing the old width; we must say so in our words, not its.
    with pytest.raises(EmbeddingContractError, match="holds 16-d"):
        index.upsert("base", ["x"], unit_rows(rng, 1, d=8))


def test_collection_names() -> None:
    assert collection_name("base") == "lookalike-base"
    assert collection_name("ft-0001") == "lookalike-ft-0001"
    for bad in ["", "a b", "ft-", "x..y", "ü", "v" * 600]:
        with pytest.raises(VectorIndexError):
            collection_name(bad)


# --- round trips ---------------------------------------------------------------------------


def test_query_finds_the_vector_itself_first(index: VectorIndex, rng: np.random.Generator) -> None:
    x = unit_rows(rng, 50)
    index.upsert("base", ids_of(50), x)
    hits = index.query("base", x[[7, 30]], k=5)
    assert [h[0].image_id for h in hits] == ["img0007", "img0030"]
    assert all(isinstance(h, Hit) for row in hits for h in row)
    assert [h.rank for h in hits[0]] == [1, 2, 3, 4, 5]
    assert hits[0][0].score == pytest.approx(1.0, abs=1e-5)
    assert all(a.score >= b.score for a, b in zip(hits[0], hits[0][1:], strict=False))


def test_upsert_same_id_twice_keeps_one_row_with_the_new_vector(
    index: VectorIndex, rng: np.random.Generator
) -> None:
    first, second = unit_rows(rng, 2)
    index.upsert("base", ["a"], first[None])
    index.upsert("base", ["a"], second[None])
    assert index.count("base") == 1
    ids, m = index.get_embeddings("base")
    assert ids == ["a"]
    np.testing.assert_allclose(m[0], second, atol=1e-6)


def test_upsert_in_small_batches(tmp_path: Path, rng: np.random.Generator) -> None:
    with VectorIndex(IndexSettings(batch_size=7), tmp_path) as idx:
        assert idx.batch_size == 7
        idx.upsert("base", ids_of(20), unit_rows(rng, 20))
        assert idx.count("base") == 20
    with VectorIndex(IndexSettings(batch_size=10**9), tmp_path) as idx:
        assert 1 <= idx.batch_size < 10**9  # clamped to what the client accepts


def test_delete_and_ids(index: VectorIndex, rng: np.random.Generator) -> None:
    x = unit_rows(rng, 10)
    index.upsert("base", ids_of(10), x)
    index.delete("base", ["img0003", "img0004", "never-there"])
    assert index.count("base") == 8
    assert index.ids("base") == set(ids_of(10)) - {"img0003", "img0004"}
    hits = index.query("base", x[[3]], k=10)[0]
    assert "img0003" not in {h.image_id for h in hits}
    assert len(hits) == 8
    index.delete("no-such-version", ["img0001"])  # nothing to do, no error


def test_drop(index: VectorIndex, rng: np.random.Generator) -> None:
    index.upsert("base", ids_of(5), unit_rows(rng, 5))
    index.upsert("ft-0001", ids_of(5), unit_rows(rng, 5))
    assert index.versions() == ["base", "ft-0001"]
    index.drop("base")
    index.drop("base")  # twice is fine
    assert index.versions() == ["ft-0001"]
    assert index.count("base") == 0
    assert index.query("base", unit_rows(rng, 2), k=3) == [[], []]
    assert index.exact_query("base", unit_rows(rng, 2), k=3) == [[], []]


def test_versions_are_isolated(index: VectorIndex, rng: np.random.Generator) -> None:
    base, tuned = unit_rows(rng, 30), unit_rows(rng, 10)
    index.upsert("base", ids_of(30, "b"), base)
    index.upsert("ft-0001", ids_of(10, "t"), tuned)
    hits = index.query("ft-0001", base, k=30)  # even base's own vectors find only ft ids
    assert {h.image_id for row in hits for h in row} <= set(ids_of(10, "t"))
    assert index.count("base") == 30 and index.count("ft-0001") == 10


def test_get_embeddings_keeps_the_requested_order(
    index: VectorIndex, rng: np.random.Generator
) -> None:
    x = unit_rows(rng, 6)
    index.upsert("base", ids_of(6), x)
    ids, m = index.get_embeddings("base", ["img0004", "missing", "img0001", "img0004"])
    assert ids == ["img0004", "img0001"]
    assert m.dtype == np.float32 and m.shape == (2, D)
    np.testing.assert_allclose(m, x[[4, 1]], atol=1e-6)
    all_ids, all_m = index.get_embeddings("base")
    assert all_ids == ids_of(6)
    np.testing.assert_allclose(all_m, x, atol=1e-6)
    assert index.get_embeddings("nothing")[1].shape[0] == 0


def test_persistence_across_reopen(tmp_path: Path, rng: np.random.Generator) -> None:
    x = unit_rows(rng, 150)  # past Chroma's in-memory buffer, so the HNSW graph is saved too
    settings = replace(Settings(), data_dir=tmp_path)
    with VectorIndex.from_settings(settings) as first:
        first.upsert("base", ids_of(150), x)
    # Closing the last client stops Chroma's system, so this one reads from disk.
    with VectorIndex.from_settings(settings) as second:
        assert second.count("base") == 150
        assert second.query("base", x[[42]], k=1)[0][0].image_id == "img0042"
    assert (tmp_path / "chroma").is_dir()


def test_two_indexes_on_one_path_share_writes(tmp_path: Path, rng: np.random.Generator) -> None:
    a = VectorIndex(IndexSettings(), tmp_path / "c")
    b = VectorIndex(IndexSettings(), tmp_path / "." / "c")  # the same directory, spelt apart
    x = unit_rows(rng, 3)
    a.upsert("base", ids_of(3), x)
    assert b.query("base", x[[2]], k=1)[0][0].image_id == "img0002"
    a.close()
    assert b.count("base") == 3  # closing one leaves the other working
    b.close()
    with pytest.raises(VectorIndexError, match="closed"):
        b.count("base")


# --- k, exclude and the exact path ---------------------------------------------------------


def test_k_is_clamped_and_must_be_positive(index: VectorIndex, rng: np.random.Generator) -> None:
    x = unit_rows(rng, 5)
    index.upsert("base", ids_of(5), x)
    assert len(index.query("base", x[:1], k=100)[0]) == 5
    assert len(index.exact_query("base", x[:1], k=100)[0]) == 5
    for k in (0, -1):
        with pytest.raises(ValueError, match="at least 1"):
            index.query("base", x[:1], k=k)
        with pytest.raises(ValueError, match="at least 1"):
            index.exact_query("base", x[:1], k=k)


def test_missing_version_returns_one_empty_list_per_query(
    index: VectorIndex, rng: np.random.Generator
) -> None:
    assert index.count("base") == 0
    assert index.query("base", unit_rows(rng, 3), k=4) == [[], [], []]
    assert index.exact_query("base", unit_rows(rng, 3), k=4) == [[], [], []]


def test_exclude_drops_ids_and_still_returns_k(
    index: VectorIndex, rng: np.random.Generator
) -> None:
    x = unit_rows(rng, 40)
    ids = ids_of(40)
    index.upsert("base", ids, x)
    plain = index.exact_query("base", x[:2], k=7)
    skip = [{"img0000", plain[0][1].image_id}, {"img0001"}]
    for search in (index.query, index.exact_query):
        hits = search("base", x[:2], 5, exclude=skip)
        assert [len(h) for h in hits] == [5, 5]
        assert [h.image_id for h in hits[0]] == [h.image_id for h in plain[0][2:7]]
        assert [h.image_id for h in hits[1]] == [h.image_id for h in plain[1][1:6]]
        assert [h.rank for h in hits[0]] == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="one set per query row"):
        index.query("base", x[:2], 5, exclude=[{"img0000"}])


def test_exact_query_matches_a_numpy_reference(
    index: VectorIndex, rng: np.random.Generator
) -> None:
    x = unit_rows(rng, 60)
    ids = ids_of(60)
    x[17] = x[5]  # an exact tie: must be broken by id
    index.upsert("base", ids, x)
    q = np.concatenate([unit_rows(rng, 7), x[[5]]])
    got = index.exact_query("base", q, k=10)
    want = reference_top_k(q, ids, x, k=10)
    for g, w in zip(got, want, strict=True):
        assert [h.image_id for h in g] == [i for i, _ in w]
        np.testing.assert_allclose([h.score for h in g], [s for _, s in w], atol=1e-5)
    assert [h.image_id for h in got[-1][:2]] == ["img0005", "img0017"]


def test_exact_cache_follows_writes(index: VectorIndex, rng: np.random.Generator) -> None:
    x = unit_rows(rng, 20)
    index.upsert("base", ids_of(20), x)
    q = unit_rows(rng, 1)
    assert index.exact_query("base", q, k=1)[0][0].image_id != "new"
    index.upsert("base", ["new"], q)
    assert index.exact_query("base", q, k=1)[0][0].image_id == "new"
    index.upsert("base", ["img0000"], q)  # same count, new vector: still seen
    assert {h.image_id for h in index.exact_query("base", q, k=2)[0]} == {"new", "img0000"}
    index.delete("base", ["new", "img0000"])
    assert {h.image_id for h in index.exact_query("base", q, k=2)[0]}.isdisjoint({"new", "img0000"})


def test_recall_against_exact_worked_example() -> None:
    def hits(*ids: str) -> list[Hit]:
        return [Hit(i, 1.0 - r / 10, r) for r, i in enumerate(ids, start=1)]

    approx = [hits("a", "b"), hits("c", "d"), hits("x")]
    exact = [hits("a", "c"), hits("d", "c"), []]  # the empty query is left out
    assert recall_against_exact(approx, exact) == pytest.approx((1 / 2 + 2 / 2) / 2)
    assert recall_against_exact([], []) == 1.0
    with pytest.raises(ValueError):
        recall_against_exact(approx, exact[:1])


def test_nothing_is_printed_on_stdout(
    tmp_path: Path, rng: np.random.Generator, capfd: pytest.CaptureFixture[str]
) -> None:
    with VectorIndex(IndexSettings(), tmp_path) as idx:
        x = unit_rows(rng, 5)
        idx.upsert("base", ids_of(5), x)
        idx.upsert("base", ids_of(5), x)
        idx.query("base", x, k=50)
        idx.delete("base", ["missing"])
        idx.drop("nothing")
    assert capfd.readouterr().out == ""


# --- HNSW recall against exact -------------------------------------------------------------


def gallery(kind: str, n: int = 800, d: int = 1280, seed: int = 0) -> np.ndarray:
    """Stand-ins for the demo gallery: 40 gaussian clusters plus noise, or plain gaussian
    (no structure at all: the hardest case for a graph index)."""
    g = np.random.default_rng(seed)
    x = g.standard_normal((n, d))
    if kind == "clusters":
        centres = g.standard_normal((40, d))
        x = centres[g.integers(0, 40, n)] + x
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind", ["clusters", "gaussian"])
def test_hnsw_recall_at_10_is_at_least_099(tmp_path: Path, kind: str) -> None:
    x = gallery(kind)
    ids = ids_of(len(x))
    with VectorIndex(IndexSettings(), tmp_path) as idx:
        idx.upsert("base", ids, x)
        # Gallery images against the rest (as `evaluate` asks), and unseen images.
        q = np.concatenate([x[:200], gallery("gaussian", n=200, seed=1)])
        skip = [{ids[i]} for i in range(200)] + [set() for _ in range(200)]
        approx = idx.query("base", q, 10, exclude=skip)
        exact = idx.exact_query("base", q, 10, exclude=skip)
    assert all(len(row) == 10 for row in exact)
    assert recall_against_exact(approx, exact) >= 0.99
