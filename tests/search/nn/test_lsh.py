"""Tests for core.search.nn.lsh: buckets and probes against their brute-force definitions,
Hamming ranking against a bit-by-bit count, and the hand-written LSH against faiss's."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from core.search.nn import NNError
from core.search.nn.exact import rerank
from core.search.nn.lsh import (
    FaissLSHIndex,
    LSHIndex,
    flip_masks,
    hamming_candidates,
    hyperplanes,
    pack_bits,
    sign_bits,
)
from tests.search.nn.reference import recall


def test_hyperplanes_are_orthonormal_within_a_table():
    planes = hyperplanes(16, 6, seed=3, tables=3)  # (16, 18)
    assert planes.shape == (16, 18) and planes.dtype == np.float32
    for t in range(3):
        table = planes[:, 6 * t : 6 * t + 6].astype(np.float64)
        np.testing.assert_allclose(table.T @ table, np.eye(6), atol=1e-5)
    wide = hyperplanes(4, 10, seed=3).astype(np.float64)  # more bits than dims: groups of 4
    np.testing.assert_allclose(wide[:, :4].T @ wide[:, :4], np.eye(4), atol=1e-5)
    np.testing.assert_array_equal(hyperplanes(16, 6, seed=3), hyperplanes(16, 6, seed=3))


def test_hamming_ranking_matches_counting_bits(clustered):
    base, queries = clustered
    planes = hyperplanes(base.shape[1], 70, seed=2)  # 70 bits: two words, one partly used
    bits, query_bits = sign_bits(base, planes), sign_bits(queries[:8], planes)
    found = hamming_candidates(pack_bits(bits), pack_bits(query_bits), 25)
    for q, row in zip(query_bits, found, strict=True):
        distance = np.count_nonzero(bits != q, axis=1)
        np.testing.assert_array_equal(row, np.argsort(distance, kind="stable")[:25])
    assert hamming_candidates(pack_bits(bits[:5]), pack_bits(query_bits), 25).shape == (8, 5)


@pytest.mark.parametrize(("bits", "count"), [(7, 12), (7, 3), (12, 5), (4, 10)])
def test_flip_masks_follow_the_squared_margin_order(bits, count):
    # Every one- and two-bit flip, ranked by the sum of the flipped bits' squared margins.
    rng = np.random.default_rng(bits * count)
    margins = np.abs(rng.standard_normal((5, 3, bits)))  # (m, tables, bits)
    masks = flip_masks(margins, count)
    assert masks.shape == (5, 3, count)
    for i, t in itertools.product(range(5), range(3)):
        flips = [(b,) for b in range(bits)] + list(itertools.combinations(range(bits), 2))
        flips.sort(key=lambda f: sum(margins[i, t, b] ** 2 for b in f))
        want = [sum(1 << b for b in f) for f in flips[:count]]
        assert masks[i, t].tolist() == want


def test_probes_start_with_the_own_bucket_then_near_flips(clustered):
    base, queries = clustered
    index = LSHIndex(bits=8, tables=3, probes=6).build(base)
    probes = index.probe_codes(queries)  # (m, 3, 6)
    assert probes.shape == (len(queries), 3, 6)
    np.testing.assert_array_equal(probes[:, :, 0], index.table_codes(queries))
    flipped = np.bitwise_count(probes[:, :, 1:] ^ probes[:, :, :1])
    assert set(np.unique(flipped).tolist()) <= {1, 2}
    assert all(len(set(p)) == 6 for p in probes.reshape(-1, 6).tolist())


@pytest.mark.parametrize(("bits", "tables", "probes"), [(6, 1, 1), (9, 4, 5), (12, 3, 20)])
def test_candidates_are_every_row_in_a_probed_bucket(clustered, bits, tables, probes):
    base, queries = clustered
    index = LSHIndex(bits=bits, tables=tables, probes=probes).build(base)
    codes = index.table_codes(base)  # (n, T)
    probed = index.probe_codes(queries)  # (m, T, P)
    for query_probes, found in zip(probed, index.candidates(queries), strict=True):
        hit = np.zeros(len(base), dtype=bool)
        for t in range(tables):
            hit |= np.isin(codes[:, t], query_probes[t])
        np.testing.assert_array_equal(found, np.flatnonzero(hit))


def test_bucketed_recall_reaches_0_9_in_the_sweep(clustered, truth):
    base, queries = clustered
    results = {}
    index = None
    for params in LSHIndex.sweep(*base.shape):
        build = (params["bits"], params["tables"])
        if index is None or (index.params["bits"], index.params["tables"]) != build:
            index = LSHIndex(**params).build(base)
        else:
            index.retune(probes=params["probes"])
        results[build[1], params["probes"]] = recall(index.query(queries, 10)[0], truth)
    assert max(results.values()) >= 0.9
    assert results[8, 16] > results[8, 4] > results[8, 1]  # probes help
    assert results[32, 1] > results[8, 1] > results[2, 1]  # tables help


def test_hand_written_hamming_ranking_is_as_good_as_faiss(clustered, truth):
    # faiss's IndexLSH ranks all codes by Hamming distance; at the same nbits and k_factor
    # the hand-written codes (three seeds, averaged) find as many true neighbours.
    base, queries = clustered
    for nbits, k_factor in ((64, 10), (128, 4)):
        theirs = FaissLSHIndex(nbits=nbits, k_factor=k_factor).build(base).query(queries, 10)
        mine = []
        for seed in (1, 2, 3):
            planes = hyperplanes(base.shape[1], nbits, seed)
            codes = pack_bits(sign_bits(base, planes))
            near = hamming_candidates(codes, pack_bits(sign_bits(queries, planes)), 10 * k_factor)
            mine.append(recall(rerank(base, queries, list(near), 10)[0], truth))
        assert abs(np.mean(mine) - recall(theirs[0], truth)) <= 0.05


def test_faiss_lsh_scores_are_inner_products_and_k_factor_retunes(clustered, truth):
    base, queries = clustered
    index = FaissLSHIndex(nbits=64, k_factor=2).build(base)
    rows, scores = index.query(queries, 10)
    want = np.einsum("md,mkd->mk", queries, base[rows])
    np.testing.assert_allclose(scores, want, atol=1e-5)
    low = recall(rows, truth)
    index.retune(k_factor=20)
    assert recall(index.query(queries, 10)[0], truth) > low + 0.1


def test_parameters_are_checked():
    with pytest.raises(NNError, match="at most 62"):
        LSHIndex(bits=63)
    with pytest.raises(NNError, match="4 bits allow at most 11 probes"):
        LSHIndex(bits=4, probes=12)
    LSHIndex(bits=4, probes=11)


def test_the_sweep_sizes_buckets_by_n():
    points = LSHIndex.sweep(3000, 64)
    assert {p["bits"] for p in points} == {9}
    assert [(p["tables"], p["probes"]) for p in points][:3] == [(2, 1), (2, 4), (2, 16)]
    assert {p["bits"] for p in LSHIndex.sweep(70_000, 1280)} == {14}
    assert {p["probes"] for p in LSHIndex.sweep(10, 8)} == {1, 4, 11}
