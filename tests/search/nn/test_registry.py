"""Every registered method through the one interface (`NNIndex`): made by name, built on
clustered vectors, queried with the contract's shapes, types and order; its mistakes refused
with named errors. "hnsw-chroma" is tested with the Chroma adapter."""

from __future__ import annotations

import numpy as np
import pytest

from core.search.nn import MISSING_ROW, NNError, get_method, list_methods, make
from tests.search.nn.reference import clustered_unit_vectors

METHODS = [name for name in list_methods() if name != "hnsw-chroma"]
APPROXIMATE = [name for name in METHODS if not name.startswith("exact")]


@pytest.fixture(scope="module")
def small() -> tuple[np.ndarray, np.ndarray]:
    x = clustered_unit_vectors(520, 32, 8, seed=11)
    return x[:500], x[500:]


def first_point(name: str, n: int, dim: int) -> dict[str, int]:
    return get_method(name).sweep(n, dim)[0]


@pytest.mark.parametrize("name", METHODS)
def test_every_method_answers_in_the_contracts_shapes(name, small):
    base, queries = small
    index = make(name, **first_point(name, *base.shape)).build(base)
    rows, scores = index.query(queries, 7)
    assert rows.shape == scores.shape == (20, 7)
    assert rows.dtype == np.int64 and scores.dtype == np.float32
    assert ((rows >= 0) & (rows < len(base))).all()
    assert all(len(set(r)) == 7 for r in rows.tolist())
    assert (np.diff(scores, axis=1) <= 0).all()
    np.testing.assert_allclose(scores, np.einsum("md,mkd->mk", queries, base[rows]), atol=1e-5)
    assert index.memory_bytes >= base.nbytes
    assert index.method == name


@pytest.mark.parametrize("name", METHODS)
def test_k_beyond_n_pads(name, small):
    base, _ = small
    few = base[:5]
    # Each query is a built row, so even a bucketed LSH finds at least that one.
    rows, scores = make(name, **first_point(name, *few.shape)).build(few).query(few[:3], 8)
    assert rows.shape == (3, 8)
    assert rows[:, 0].tolist() == [0, 1, 2]
    found = rows != MISSING_ROW
    assert (np.isneginf(scores) == ~found).all()
    assert (found[:, :-1] >= found[:, 1:]).all()  # the found come first
    assert (rows[:, 5:] == MISSING_ROW).all()


@pytest.mark.parametrize("name", METHODS)
def test_mistakes_raise_named_errors(name, small):
    base, queries = small
    with pytest.raises(NNError, match="valid: "):
        make(name, no_such_parameter=3)
    for key in get_method(name).defaults:
        with pytest.raises(NNError, match=f"{key} must be a positive integer"):
            make(name, **{key: 0})
    index = make(name, **first_point(name, *base.shape))
    with pytest.raises(NNError, match="build the index before querying"):
        index.query(queries, 3)
    index.build(base)
    with pytest.raises(NNError, match="32-d vectors"):
        index.query(np.ones((2, 16), np.float32) / 4, 3)
    with pytest.raises(NNError, match="unit L2 norm"):
        index.query(queries * 2, 3)


@pytest.mark.parametrize("name", METHODS)
def test_class_variables_describe_the_method(name):
    cls = get_method(name)
    assert cls.method == name and len(cls.note) > 40
    assert set(cls.build_keys) <= set(cls.defaults)
    assert cls.reference is None or cls.reference in list_methods()
    cls(**cls.defaults)  # the defaults are valid


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize(("n", "dim"), [(3000, 64), (70_000, 1280), (12, 8)])
def test_sweeps_are_valid_and_build_each_structure_once(name, n, dim):
    cls = get_method(name)
    points = cls.sweep(n, dim)
    if name in APPROXIMATE and n >= 3000:
        assert len(points) >= 4
    builds = [tuple(p[key] for key in cls.build_keys) for p in points]
    runs = [b for i, b in enumerate(builds) if i == 0 or b != builds[i - 1]]
    assert len(runs) == len(set(runs)), "a build comes back after another one"
    for params in points:
        assert set(params) == set(cls.defaults)
        cls(**params)


def test_an_unknown_method_names_the_valid_ones():
    with pytest.raises(NNError, match="valid: exact, exact-faiss, kd-tree, lsh"):
        get_method("annoy")
