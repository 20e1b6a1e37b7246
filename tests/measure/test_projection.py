"""core.measure.projection against independent references: scikit-learn's PCA and silhouette score,
scipy's Procrustes, a known rotation, plain-loop cohesion and placement, and call counting for
the on-disk cache (through the module, the studio and the command line)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import procrustes
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score

from core.measure import projection
from core.measure.maps import layout
from core.measure.projection import (
    MAX_POINTS,
    Layout,
    ProjectionCache,
    ProjectionError,
    align,
    cohesion,
    pca,
    place,
    project,
)
from core.search.nn.spatial import MapTree
from tests.helpers import ROOT, generated_image, run_cli

if TYPE_CHECKING:
    from core.studio import Studio

# --- helpers ------------------------------------------------------------------------------------


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def ids_for(n: int) -> list[str]:
    return [f"img-{i:05d}" for i in range(n)]


def assert_equal_up_to_sign(actual: np.ndarray, expected: np.ndarray, atol: float) -> None:
    """Principal components are defined up to a sign per column."""
    assert actual.shape == expected.shape
    for col in range(expected.shape[1]):
        sign = 1.0 if np.dot(actual[:, col], expected[:, col]) >= 0 else -1.0
        np.testing.assert_allclose(actual[:, col], sign * expected[:, col], atol=atol)


def rotation(degrees: float) -> np.ndarray:
    t = math.radians(degrees)
    return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


def well_separated_clusters(
    per_cluster: int = 50, dim: int = 64, seed: int = 0
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """4 gaussian clusters of unit vectors in `dim`-d, `(ids, (n, dim) float32, (n,) labels)`.

    The centres are four directions 90° apart in a random plane: any 4 random directions span
    3 dimensions once centred, and a 2-D view of them may put two clusters on top of each
    other, which would be a fact about the data, not a fault of the projection.
    """
    rng = np.random.default_rng(seed)
    plane, _ = np.linalg.qr(rng.normal(size=(dim, 2)))  # (dim, 2) orthonormal
    angles = np.arange(4) * np.pi / 2
    centres = np.cos(angles)[:, None] * plane[:, 0] + np.sin(angles)[:, None] * plane[:, 1]
    labels = np.repeat(np.arange(4), per_cluster)
    x = centres[labels] + rng.normal(0, 0.05, size=(len(labels), dim))
    return ids_for(len(labels)), unit(x), labels


@pytest.fixture(scope="module")
def clusters() -> tuple[list[str], np.ndarray, np.ndarray]:
    return well_separated_clusters()


@pytest.fixture(scope="module")
def umap_runs(clusters: tuple[list[str], np.ndarray, np.ndarray]) -> tuple[Layout, Layout]:
    """The file's only two UMAP runs (the first JIT-compiles umap-learn: ~10 s), same seed."""
    ids, x, _ = clusters
    return project(ids, x, "umap", seed=7), project(ids, x, "umap", seed=7)


@pytest.fixture
def project_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """Counts the real computations: every call to `core.measure.projection.project` is recorded."""
    calls: list[tuple[int, str]] = []
    real = projection.project

    def counting(ids: Any, x: np.ndarray, method: str = "umap", **kwargs: Any) -> Layout:
        calls.append((len(ids), method))
        return real(ids, x, method, **kwargs)

    monkeypatch.setattr(projection, "project", counting)
    return calls


# --- pca ----------------------------------------------------------------------------------------


def anisotropic(n: int = 60, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = np.array([6.0, 3.0, 2.0, 1.5, 1.0, 0.8, 0.5, 0.3, 0.2, 0.1])
    return (rng.normal(size=(n, len(scales))) * scales + 4.0).astype(np.float32)


def test_pca_matches_scikit_learn_up_to_sign() -> None:
    x = anisotropic()
    got = pca(x)
    assert got.shape == (60, 2) and got.dtype == np.float32
    reference = PCA(n_components=2).fit(x.astype(np.float64))
    assert_equal_up_to_sign(got, reference.transform(x.astype(np.float64)), atol=1e-4)
    # the first column carries the most variance, and the amounts are sklearn's
    variances = got.var(axis=0, ddof=1)
    assert variances[0] >= variances[1]
    np.testing.assert_allclose(variances, reference.explained_variance_, rtol=1e-4)


def test_pca_is_deterministic_and_its_signs_do_not_depend_on_row_order() -> None:
    x = anisotropic()
    assert np.array_equal(pca(x), pca(x))
    perm = np.random.default_rng(5).permutation(len(x))
    np.testing.assert_allclose(pca(x[perm]), pca(x)[perm], atol=1e-4)


# --- project ------------------------------------------------------------------------------------


def test_project_pca_keeps_ids_and_reports_progress() -> None:
    ids, x, _ = well_separated_clusters(per_cluster=10, dim=16)
    messages: list[str] = []
    layout = project(ids, x, "pca", stage=messages.append)
    assert layout.ids == ids and layout.method == "pca"
    assert layout.coords.shape == (40, 2) and layout.coords.dtype == np.float32
    assert layout.total == 40 and not layout.sampled
    assert_equal_up_to_sign(layout.coords, PCA(2).fit_transform(x.astype(np.float64)), atol=1e-4)
    assert len(messages) == 1 and "PCA" in messages[0]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:n_jobs value:UserWarning")  # seeding makes umap serial
def test_project_umap_shape_ids_and_determinism(
    clusters: tuple[list[str], np.ndarray, np.ndarray], umap_runs: tuple[Layout, Layout]
) -> None:
    ids, _, _ = clusters
    first, second = umap_runs
    assert first.ids == ids and first.method == "umap"
    assert first.coords.shape == (200, 2) and first.coords.dtype == np.float32
    assert first.total == 200 and not first.sampled
    assert np.isfinite(first.coords).all()
    assert np.array_equal(first.coords, second.coords)  # same seed: the very same map


def test_project_rejects_what_it_cannot_map() -> None:
    ids, x, _ = well_separated_clusters(per_cluster=2, dim=8)
    with pytest.raises(ProjectionError, match="tsne"):
        project(ids, x, "tsne")
    with pytest.raises(ProjectionError, match="7 ids for 8 vectors"):
        project(ids[:-1], x, "pca")
    with pytest.raises(ProjectionError, match="at least 3"):
        project(ids[:2], x[:2], "pca")
    assert issubclass(ProjectionError, ValueError)
    assert project(ids[:3], x[:3], "pca").coords.shape == (3, 2)  # the smallest map there is


def test_project_samples_large_galleries_seeded() -> None:
    rng = np.random.default_rng(2)
    ids, x = ids_for(120), unit(rng.normal(size=(120, 16)))
    messages: list[str] = []
    first = project(ids, x, "pca", seed=3, max_points=50, stage=messages.append)
    again = project(ids, x, "pca", seed=3, max_points=50)
    assert len(first.ids) == 50 and first.coords.shape == (50, 2)
    assert first.sampled and first.total == 120
    assert len(set(first.ids)) == 50 and set(first.ids) <= set(ids)
    rows = [ids.index(i) for i in first.ids]
    assert rows == sorted(rows)  # the sample keeps the gallery's order
    assert first.ids == again.ids and np.array_equal(first.coords, again.coords)
    assert project(ids, x, "pca", seed=4, max_points=50).ids != first.ids
    # the map of a sample is the map of the sampled vectors
    assert_equal_up_to_sign(first.coords, PCA(2).fit_transform(x[rows].astype(np.float64)), 1e-4)
    assert any("sampling" in m and "50 of 120" in m for m in messages)


def test_default_sampling_starts_above_twenty_thousand_points() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(MAX_POINTS + 1, 4)).astype(np.float32)
    ids = ids_for(len(x))
    assert MAX_POINTS == 20_000
    at_limit = project(ids[:-1], x[:-1], "pca")
    assert not at_limit.sampled and len(at_limit.ids) == 20_000
    above = project(ids, x, "pca")
    assert above.sampled and len(above.ids) == 20_000 and above.total == 20_001


# --- separation ---------------------------------------------------------------------------------


def test_pca_keeps_well_separated_clusters_apart(
    clusters: tuple[list[str], np.ndarray, np.ndarray],
) -> None:
    ids, x, labels = clusters
    assert silhouette_score(project(ids, x, "pca").coords, labels) > 0.5


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:n_jobs value:UserWarning")
def test_umap_keeps_well_separated_clusters_apart(
    clusters: tuple[list[str], np.ndarray, np.ndarray], umap_runs: tuple[Layout, Layout]
) -> None:
    _, _, labels = clusters
    assert silhouette_score(umap_runs[0].coords, labels) > 0.5


# --- align --------------------------------------------------------------------------------------


@pytest.fixture
def original() -> np.ndarray:
    return np.random.default_rng(6).normal(size=(40, 2)) * np.array([3.0, 1.0])


@pytest.mark.parametrize("reflect", [False, True], ids=["rotation", "reflection"])
def test_align_undoes_a_known_similarity_transform(original: np.ndarray, reflect: bool) -> None:
    mirrored = original * np.array([1.0, -1.0]) if reflect else original
    moved = 2.5 * mirrored @ rotation(37).T + np.array([4.0, -7.0])
    assert np.abs(moved - original).max() > 1.0  # the test is not trivially satisfied
    aligned = align(moved, original)
    assert aligned.shape == (40, 2) and aligned.dtype == np.float32
    np.testing.assert_allclose(aligned, original, atol=1e-5)


def test_align_with_noise_leaves_scipys_procrustes_residual(original: np.ndarray) -> None:
    moved = 2.5 * original @ rotation(37).T + np.array([4.0, -7.0])
    noisy = moved + np.random.default_rng(7).normal(0, 0.02, size=moved.shape)
    aligned = align(noisy, original)
    assert np.sqrt(((aligned - original) ** 2).mean()) < 0.02
    # scipy standardises both sides; its disparity is the residual relative to the target
    _, _, disparity = procrustes(original, noisy)
    centred = original - original.mean(axis=0)
    relative = ((aligned - original) ** 2).sum() / (centred**2).sum()
    assert relative == pytest.approx(disparity, rel=1e-2)


# --- place --------------------------------------------------------------------------------------


def test_place_puts_a_gallery_vector_on_its_own_point() -> None:
    rng = np.random.default_rng(8)
    gallery = unit(rng.normal(size=(25, 16)))
    coords = rng.normal(size=(25, 2)).astype(np.float32)
    placed = place(gallery[[7]], gallery, coords, k=1)
    assert placed.shape == (1, 2) and placed.dtype == np.float32
    np.testing.assert_allclose(placed, coords[[7]], rtol=1e-6)


def test_place_is_the_similarity_weighted_mean_of_the_nearest() -> None:
    rng = np.random.default_rng(9)
    gallery = unit(rng.normal(size=(25, 16)))
    coords = rng.normal(size=(25, 2)).astype(np.float32)
    queries = unit(
        np.stack(
            [
                gallery[3] + 0.6 * gallery[11] + 0.3 * gallery[20],
                gallery[0] + 0.8 * gallery[24] + 0.5 * gallery[12],
            ]
        )
    )
    expected = []
    for q in queries:
        sims = [sum(float(a) * float(b) for a, b in zip(q, g, strict=True)) for g in gallery]
        top = sorted(range(len(gallery)), key=lambda i: -sims[i])[:3]
        assert all(sims[i] > 0 for i in top)
        weight = sum(sims[i] for i in top)
        expected.append(
            [sum(sims[i] * float(coords[i, c]) for i in top) / weight for c in range(2)]
        )
    placed = place(queries, gallery, coords, k=3)
    assert placed.shape == (2, 2)
    np.testing.assert_allclose(placed, np.array(expected), atol=1e-5)


# --- cohesion -----------------------------------------------------------------------------------


def brute_force_cohesion(
    x: np.ndarray, labels: list[str | None]
) -> dict[str, tuple[int, float, float]]:
    """label -> (images, within, between) from the definitions, pair by pair."""

    def cos(i: int, j: int) -> float:
        dot = sum(float(a) * float(b) for a, b in zip(x[i], x[j], strict=True))
        return dot / (float(np.linalg.norm(x[i])) * float(np.linalg.norm(x[j])))

    out = {}
    for label in {lab for lab in labels if lab}:
        members = [i for i, lab in enumerate(labels) if lab == label]
        others = [j for j, lab in enumerate(labels) if lab and lab != label]
        pairs = [cos(i, j) for i in members for j in members if i < j]
        across = [cos(i, j) for i in members for j in others]
        within = sum(pairs) / len(pairs) if pairs else math.nan
        between = sum(across) / len(across) if across else math.nan
        out[label] = (len(members), within, between)
    return out


def test_cohesion_matches_a_pairwise_loop() -> None:
    rng = np.random.default_rng(10)
    centres = unit(rng.normal(size=(2, 12)))
    labels: list[str | None] = ["b", "a", None, "a", "b", "solo", "a", None, "b", "a"]
    base = np.stack([centres[0] if lab == "a" else centres[1] for lab in labels])
    x = unit(base + rng.normal(0, 0.3, size=base.shape))
    table = cohesion(x, labels)
    reference = brute_force_cohesion(x, labels)
    assert list(table.columns) == ["label", "images", "within", "between", "gap"]
    assert list(table.label) == ["a", "b", "solo"]  # unlabelled images are no row
    for row in table.itertuples():
        images, within, between = reference[row.label]
        assert row.images == images
        assert row.between == pytest.approx(between, abs=1e-6)
        if math.isnan(within):
            assert math.isnan(row.within) and math.isnan(row.gap)
        else:
            assert row.within == pytest.approx(within, abs=1e-6)
            assert row.gap == pytest.approx(within - between, abs=1e-6)
    assert table.set_index("label").loc["solo", "images"] == 1
    assert math.isnan(table.set_index("label").loc["solo", "within"])
    assert (table.set_index("label").loc[["a", "b"], "gap"] > 0).all()  # clustered labels


def test_cohesion_with_one_label_has_nothing_between() -> None:
    x = unit(np.random.default_rng(11).normal(size=(4, 6)))
    labels: list[str | None] = ["only", "only", None, "only"]
    [row] = cohesion(x, labels).itertuples()
    _, within, _ = brute_force_cohesion(x, labels)["only"]
    assert row.images == 3 and row.within == pytest.approx(within, abs=1e-6)
    assert math.isnan(row.between) and math.isnan(row.gap)


# --- ProjectionCache ----------------------------------------------------------------------------


def test_cache_computes_once_per_signature(
    tmp_path: Path, project_calls: list[tuple[int, str]]
) -> None:
    folder = tmp_path / "maps"
    ids, x, _ = well_separated_clusters(per_cluster=5, dim=8)
    messages: list[str] = []
    first = ProjectionCache(folder).layout("v1", "sig-a", ids, x, "pca", messages.append)
    assert project_calls == [(20, "pca")] and messages  # a miss: computed, progress reported
    assert sorted(p.suffix for p in folder.iterdir()) == [".dat", ".idx", ".npz"]  # and its tree

    messages.clear()
    again = ProjectionCache(folder).layout("v1", "sig-a", ids, x, "pca", messages.append)
    assert project_calls == [(20, "pca")] and messages == []  # a hit: nothing recomputed
    assert list(again.ids) == first.ids and again.method == "pca" and again.total == 20
    assert np.array_equal(again.coords, first.coords) and again.coords.dtype == np.float32

    ProjectionCache(folder).layout("v1", "sig-b", ids, x, "pca")
    ProjectionCache(folder).layout("v2", "sig-a", ids, x, "pca")
    assert len(project_calls) == 3  # another gallery state, another version: recomputed
    files = sorted(p.name for p in folder.iterdir())
    assert len(files) == 9 and sum(f.endswith(".npz") for f in files) == 3
    assert (
        {f.removesuffix(".npz") for f in files if f.endswith(".npz")}
        == {f.removesuffix(".tree.dat") for f in files if f.endswith(".tree.dat")}
        == {f.removesuffix(".tree.idx") for f in files if f.endswith(".tree.idx")}
    )
    # written atomically: no temporary file is left behind beside the three layouts
    assert all(f.startswith(("v1-pca-", "v2-pca-")) for f in files)


def test_cache_get_and_put_round_trip(tmp_path: Path) -> None:
    cache = ProjectionCache(tmp_path / "maps")
    assert cache.get("v1", "pca", "nothing yet") is None
    rng = np.random.default_rng(12)
    ids = ids_for(120)
    sampled = project(ids, unit(rng.normal(size=(120, 8))), "pca", max_points=50)
    cache.put("v1", "sig", sampled)
    got = cache.get("v1", "pca", "sig")
    assert got is not None
    assert list(got.ids) == sampled.ids and np.array_equal(got.coords, sampled.coords)
    assert got.sampled and got.total == 120 and got.method == "pca"
    assert cache.get("v1", "umap", "sig") is None and cache.get("v2", "pca", "sig") is None


def test_cache_knows_without_reading_and_finds_the_latest_map_of_a_version(
    tmp_path: Path,
) -> None:
    cache = ProjectionCache(tmp_path / "maps")
    assert cache.latest("v1", "pca") is None  # no folder yet
    ids, x, _ = well_separated_clusters(per_cluster=5, dim=8)
    older, newer = project(ids, x, "pca"), project(ids[:12], x[:12], "pca")

    def put(version: str, signature: str, layout: Layout, second: int) -> None:
        before = set(cache.folder.glob("*.npz"))
        cache.put(version, signature, layout)
        [path] = set(cache.folder.glob("*.npz")) - before
        os.utime(path, ns=(second * 10**9, second * 10**9))

    put("v1", "sig-b", newer, 2)
    put("v1", "sig-a", older, 1)  # an older file, whatever order they were written in
    put("v1-pca", "sig-c", older, 3)  # a version whose files start like v1's pca maps
    latest = cache.latest("v1", "pca")
    assert latest is not None and list(latest.ids) == newer.ids
    assert cache.has("v1", "pca", "sig-a") and not cache.has("v1", "pca", "sig-z")
    assert cache.latest("v1", "umap") is None and cache.latest("v2", "pca") is None


def in_box(coords: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> list[int]:
    """Rows of (n, 2) `coords` inside the box, edges included: the brute-force reference."""
    return [
        row
        for row, (x, y) in enumerate(coords.astype(np.float64).tolist())
        if x0 <= x <= x1 and y0 <= y <= y1
    ]


@pytest.fixture
def tree_builds(monkeypatch: pytest.MonkeyPatch) -> list[Path | None]:
    """Every `MapTree.build`, by the path it writes to (None: in memory)."""
    builds: list[Path | None] = []
    real = MapTree.build.__func__  # type: ignore[attr-defined]

    def counting(cls: type[MapTree], coords: np.ndarray, path: Path | None = None) -> MapTree:
        builds.append(path)
        return real(cls, coords, path)  # type: ignore[no-any-return]

    monkeypatch.setattr(MapTree, "build", classmethod(counting))
    return builds


def test_cache_stores_each_layout_with_its_tree(
    tmp_path: Path, tree_builds: list[Path | None]
) -> None:
    cache = ProjectionCache(tmp_path / "maps")
    rng = np.random.default_rng(14)
    mapped = project(ids_for(300), unit(rng.normal(size=(300, 8))), "pca")
    cache.put("v1", "sig", mapped)
    [layout_file] = cache.folder.glob("*.npz")
    stem = layout_file.name.removesuffix(".npz")
    assert sorted(p.name for p in cache.folder.iterdir()) == [
        f"{stem}.npz",
        f"{stem}.tree.dat",
        f"{stem}.tree.idx",
    ]
    assert tree_builds == [cache.folder / f"{stem}.tree"]  # built once, with the layout

    got = cache.get("v1", "pca", "sig")
    assert got is not None
    tree = cache.tree("v1", "sig", got)
    assert tree_builds == [cache.folder / f"{stem}.tree"]  # read back, not built again
    assert len(tree) == 300
    for x0, x1, y0, y1 in [(-0.2, 0.1, -0.3, 0.2), (-9.0, 9.0, -9.0, 9.0), (5.0, 6.0, 5.0, 6.0)]:
        assert tree.within(x0, x1, y0, y1).tolist() == in_box(got.coords, x0, x1, y0, y1)


def test_an_entry_without_a_tree_gets_one_on_first_use(
    tmp_path: Path, tree_builds: list[Path | None]
) -> None:
    cache = ProjectionCache(tmp_path / "maps")
    ids, x, _ = well_separated_clusters(per_cluster=10, dim=8)
    cache.put("v1", "sig", project(ids, x, "pca"))
    trees = sorted(cache.folder.glob("*.tree.*"))
    for path in trees:  # as the cache was before trees were stored
        path.unlink()
    got = cache.get("v1", "pca", "sig")
    assert got is not None
    tree = cache.tree("v1", "sig", got)
    assert sorted(cache.folder.glob("*.tree.*")) == trees  # built and stored now
    assert tree.within(-9, 9, -9, 9).tolist() == list(range(40))
    assert len(tree_builds) == 2
    cache.tree("v1", "sig", got)
    assert len(tree_builds) == 2  # and read from then on

    # a tree that is not the layout's (another map written under the same key) is rebuilt
    MapTree.build(got.coords[:5] * 3, trees[0].with_suffix(""))
    refit = cache.tree("v1", "sig", got)
    assert len(tree_builds) == 4 and len(refit) == 40
    assert refit.within(-9, 9, -9, 9).tolist() == list(range(40))
    assert len(cache.tree("v1", "sig", got)) == 40 and len(tree_builds) == 4


def test_a_map_that_is_not_the_cached_one_gets_a_tree_in_memory(
    tmp_path: Path, tree_builds: list[Path | None]
) -> None:
    cache = ProjectionCache(tmp_path / "maps")
    ids, x, _ = well_separated_clusters(per_cluster=10, dim=8)
    stored = project(ids, x, "pca")
    cache.put("v1", "sig", stored)
    files = {p: p.stat().st_mtime_ns for p in cache.folder.iterdir()}
    tree_builds.clear()
    # the cached map turned onto another version's (as the page shows a second version)
    turned = Layout(stored.ids, (stored.coords @ rotation(90).T).astype(np.float32), "pca", 40)
    box = (-0.9, -0.5, -0.9, -0.5)  # around one of the four clusters
    assert cache.tree("v1", "sig", turned).within(*box).tolist() == in_box(turned.coords, *box)
    assert in_box(stored.coords, *box) and in_box(turned.coords, *box) != in_box(
        stored.coords, *box
    )
    # a map under another gallery state, or another version, that the cache does not hold
    assert cache.tree("v1", "other", stored).within(*box).tolist() == in_box(stored.coords, *box)
    assert cache.tree("v2", "sig", stored).within(*box).tolist() == in_box(stored.coords, *box)
    assert tree_builds == [None, None, None]  # all three in memory
    assert {p: p.stat().st_mtime_ns for p in cache.folder.iterdir()} == files  # nothing written


def test_cache_keeps_cohesion_tables_per_version_and_state(tmp_path: Path) -> None:
    cache = ProjectionCache(tmp_path / "maps")
    x = unit(np.random.default_rng(13).normal(size=(9, 6)))
    table = cohesion(x, ["a", "a", "b", "b", "b", "solo", None, "a", "b"])
    assert not cache.has_cohesion("v1", "sig") and cache.get_cohesion("v1", "sig") is None
    cache.put_cohesion("v1", "sig", table)
    got = cache.get_cohesion("v1", "sig")
    assert cache.has_cohesion("v1", "sig") and got is not None
    pd.testing.assert_frame_equal(got, table, check_dtype=False)  # NaN for "solo" included
    assert cache.get_cohesion("v1", "other") is None and cache.get_cohesion("v2", "sig") is None


@pytest.mark.slow
def test_a_numba_cache_folder_keeps_umaps_compiled_functions(tmp_path: Path) -> None:
    """umap-learn marks only `layouts.rdist` cache=True; with a cache folder its other
    compiled functions (the layout's epochs, the fuzzy set) are saved there too."""
    folder = tmp_path / "numba"
    code = (
        "import numpy as np; from core.measure.projection import umap_2d; "
        "x = np.random.default_rng(0).normal(size=(60, 8)); "
        "umap_2d((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "NUMBA_CACHE_DIR": str(folder), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    saved = {path.name.split("-")[0] for path in folder.rglob("*.nbi")}
    assert "layouts.rdist" in saved  # cached by umap-learn itself
    assert {"layouts._optimize_layout_euclidean_single_epoch", "umap_.smooth_knn_dist"} <= saved


# --- Studio.layout ------------------------------------------------------------------------------


def test_studio_layout_is_cached_per_gallery_state(
    studio: Studio,
    make_gallery: Callable[..., Path],
    tmp_path: Path,
    project_calls: list[tuple[int, str]],
) -> None:
    studio.ingest([make_gallery(per_label=5)], label_from_folders=True)
    version = studio.active_version().version
    ids, vectors = studio.index.get_embeddings(version)
    assert len(ids) == 20

    mapped = layout(studio, method="pca")
    assert list(mapped.ids) == ids and mapped.total == 20
    assert_equal_up_to_sign(mapped.coords, PCA(2).fit_transform(vectors.astype(np.float64)), 1e-4)
    assert list(studio.settings.projections_dir.glob("*.npz"))

    again = layout(studio, version, "pca")
    assert project_calls == [(20, "pca")]  # the revisit came from disk
    assert np.array_equal(again.coords, mapped.coords)

    # feedback changes the log, not the gallery: the map stays cached
    before, signature = studio.store.state_signature(), studio.image_signature()
    user = studio.store.ensure_user("alice")
    search = studio.logged_gallery_search(user.id, ids[0], 5)
    studio.store.feedback.log_interaction(search.query_id, search.results[0].image_id, "click")
    assert studio.store.state_signature() != before
    assert studio.image_signature() == signature
    layout(studio, method="pca")
    assert len(project_calls) == 1

    # one more image changes the gallery: the next map is recomputed and includes it
    extra = tmp_path / "extra" / "new.png"
    extra.parent.mkdir()
    generated_image(1, 77).save(extra)
    studio.ingest([extra])
    new_id = hashlib.sha256(extra.read_bytes()).hexdigest()
    assert studio.image_signature() != signature
    grown = layout(studio, method="pca")
    assert project_calls == [(20, "pca"), (21, "pca")]
    assert new_id in grown.ids and list(grown.ids) == studio.index.get_embeddings(version)[0]


# --- command line -------------------------------------------------------------------------------


def test_cli_project_writes_the_map_as_csv(
    tmp_path: Path, make_gallery: Callable[..., Path]
) -> None:
    root = make_gallery(per_label=5)
    data = tmp_path / "data"
    ingested = run_cli(data, "ingest", str(root), "--label-from-folders", "--json")
    assert ingested.returncode == 0, ingested.stderr
    assert json.loads(ingested.stdout)["added"] == 20

    out = tmp_path / "maps" / "map.csv"
    result = run_cli(data, "project", str(out), "--method", "pca", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "path": str(out),
        "method": "pca",
        "points": 20,
        "total": 20,
    }
    assert "project: PCA" in result.stderr  # progress while it runs

    table = pd.read_csv(out)
    assert list(table.columns) == ["image_id", "label", "x", "y"]
    expected = {
        hashlib.sha256(p.read_bytes()).hexdigest(): p.parent.relative_to(root).as_posix()
        for p in root.rglob("*.png")
    }
    assert len(table) == 20 and table.image_id.is_unique
    assert dict(zip(table.image_id, table.label, strict=True)) == expected

    from core.config import load_settings
    from core.search.index import VectorIndex

    ids = list(table.image_id)
    _, vectors = VectorIndex.from_settings(load_settings(data, environ={})).get_embeddings(
        "base", ids
    )
    reference = PCA(2).fit_transform(vectors.astype(np.float64))
    assert_equal_up_to_sign(table[["x", "y"]].to_numpy(), reference, atol=1e-4)

    # a second run is served from the cache: the same map, nothing computed
    second = tmp_path / "maps" / "again.csv"
    rerun = run_cli(data, "project", str(second), "--method", "pca")
    assert rerun.returncode == 0, rerun.stderr
    assert "project:" not in rerun.stderr
    pd.testing.assert_frame_equal(pd.read_csv(second), table)
