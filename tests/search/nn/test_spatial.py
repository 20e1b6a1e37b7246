"""core.search.nn.spatial against a brute-force numpy box filter: random points, points on the
box's edges, empty and reversed boxes, duplicate points, a disk round trip and bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.errors import LookalikeError
from core.search.nn.spatial import MapTree, MapTreeError, tree_files
from tests.helpers import ROOT


def brute_force(coords: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """Rows of `coords` inside the box, edges included, read point by point."""
    (x_lo, x_hi), (y_lo, y_hi) = sorted((x0, x1)), sorted((y0, y1))
    return np.array(
        [
            row
            for row, (x, y) in enumerate(coords.astype(np.float64).tolist())
            if x_lo <= x <= x_hi and y_lo <= y <= y_hi
        ],
        dtype=np.int64,
    )


def random_boxes(rng: np.random.Generator, count: int) -> list[tuple[float, float, float, float]]:
    """Boxes from tiny to whole-map, corners drawn in either order."""
    return [(x0, x1, y0, y1) for x0, x1, y0, y1 in rng.normal(0, 1.5, size=(count, 4)).tolist()]


@pytest.fixture(scope="module")
def points() -> np.ndarray:
    """3,000 float32 points in clusters, as a UMAP map has them."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 2, size=(6, 2))
    return (centres[rng.integers(0, 6, 3_000)] + rng.normal(0, 0.4, (3_000, 2))).astype(np.float32)


def test_within_matches_a_brute_force_filter_on_random_boxes(points: np.ndarray) -> None:
    tree = MapTree.build(points)
    assert len(tree) == 3_000
    sizes = []
    for box in random_boxes(np.random.default_rng(1), 60):
        rows = tree.within(*box)
        assert rows.dtype == np.int64
        np.testing.assert_array_equal(rows, brute_force(points, *box))
        sizes.append(len(rows))
    assert min(sizes) == 0 and max(sizes) > 1_000  # empty boxes and big ones were both asked


def test_points_on_the_edges_and_corners_are_inside(points: np.ndarray) -> None:
    tree = MapTree.build(points)
    a, b = points[10].astype(np.float64), points[20].astype(np.float64)
    box = (a[0], b[0], a[1], b[1])  # both points sit on corners of the box
    rows = tree.within(*box)
    assert {10, 20} <= set(rows.tolist())
    np.testing.assert_array_equal(rows, brute_force(points, *box))
    # a box of no extent around one point holds it (and any point equal to it)
    np.testing.assert_array_equal(
        tree.within(a[0], a[0], a[1], a[1]), brute_force(points, a[0], a[0], a[1], a[1])
    )
    assert 10 in tree.within(a[0], a[0], a[1], a[1])
    # the same box moved one float step left, right, down or up leaves it out
    left, right = np.nextafter(a[0], -np.inf), np.nextafter(a[0], np.inf)
    down, up = np.nextafter(a[1], -np.inf), np.nextafter(a[1], np.inf)
    for box in [(left, left, a[1], a[1]), (right, right, a[1], a[1])]:
        assert 10 not in tree.within(*box)
    for box in [(a[0], a[0], down, down), (a[0], a[0], up, up)]:
        assert 10 not in tree.within(*box)


def test_any_corner_order_gives_the_same_rows(points: np.ndarray) -> None:
    tree = MapTree.build(points)
    expected = brute_force(points, -1.0, 1.5, -0.5, 2.0)
    assert len(expected) > 0
    for box in [
        (-1.0, 1.5, -0.5, 2.0),
        (1.5, -1.0, -0.5, 2.0),
        (-1.0, 1.5, 2.0, -0.5),
        (1.5, -1.0, 2.0, -0.5),
    ]:
        np.testing.assert_array_equal(tree.within(*box), expected)


def test_empty_boxes_and_open_sides(points: np.ndarray) -> None:
    tree = MapTree.build(points)
    far = float(points.max()) + 1
    assert tree.within(far, far + 5, far, far + 5).tolist() == []
    assert tree.within(-np.inf, np.inf, -np.inf, np.inf).tolist() == list(range(3_000))
    left = tree.within(-np.inf, 0.0, -np.inf, np.inf)
    np.testing.assert_array_equal(left, np.flatnonzero(points[:, 0] <= 0))


def test_duplicate_points_are_each_found() -> None:
    coords = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [2.0, -1.0]])
    tree = MapTree.build(coords)
    assert tree.within(0, 0, 0, 0).tolist() == [0, 2, 3]
    assert tree.within(-1, 1, -1, 1).tolist() == [0, 1, 2, 3]
    assert len(tree) == 5


def test_an_empty_map_has_an_empty_tree(tmp_path: Path) -> None:
    for tree in (MapTree.build(np.zeros((0, 2))), MapTree.build(np.zeros((0, 2)), tmp_path / "t")):
        assert len(tree) == 0 and tree.bounds is None
        assert tree.within(-1, 1, -1, 1).tolist() == []


def test_bounds_are_the_points_extent(points: np.ndarray) -> None:
    low, high = points.min(axis=0).astype(np.float64), points.max(axis=0).astype(np.float64)
    assert MapTree.build(points).bounds == (low[0], high[0], low[1], high[1])


def test_a_tree_saved_beside_the_map_reads_back_the_same(
    points: np.ndarray, tmp_path: Path
) -> None:
    path = tmp_path / "maps" / "v1-umap-abc.tree"  # the folder does not exist yet
    built = MapTree.build(points, path)
    dat, idx = tree_files(path)
    assert sorted(p.name for p in path.parent.iterdir()) == [dat.name, idx.name]  # no temporaries
    assert (dat.name, idx.name) == ("v1-umap-abc.tree.dat", "v1-umap-abc.tree.idx")
    loaded = MapTree.load(path)
    assert len(loaded) == 3_000 and loaded.bounds == MapTree.build(points).bounds
    for box in random_boxes(np.random.default_rng(2), 20):
        expected = brute_force(points, *box)
        np.testing.assert_array_equal(built.within(*box), expected)
        np.testing.assert_array_equal(loaded.within(*box), expected)
    # written again over itself (another map for the same key): the new points are read
    moved = points[:100] + 10
    MapTree.build(moved, path)
    again = MapTree.load(path)
    assert len(again) == 100
    np.testing.assert_array_equal(again.within(9, 11, 9, 11), brute_force(moved, 9, 11, 9, 11))


def test_loading_what_is_not_there_or_damaged_is_a_named_error(tmp_path: Path) -> None:
    path = tmp_path / "missing.tree"
    with pytest.raises(MapTreeError, match="no map tree"):
        MapTree.load(path)
    assert list(tmp_path.iterdir()) == []  # rtree was not left to start an empty tree there
    MapTree.build(np.ones((5, 2)), path)
    tree_files(path)[0].unlink()
    with pytest.raises(MapTreeError, match=r"\(missing: \S*missing\.tree\.dat\)"):
        MapTree.load(path)
    damaged = tmp_path / "damaged.tree"
    for file in tree_files(damaged):
        file.write_bytes(b"not an r-tree")
    with pytest.raises(MapTreeError, match="cannot be read"):
        MapTree.load(damaged)


@pytest.mark.parametrize(
    ("coords", "message"),
    [
        (np.zeros((4, 3)), r"\(n, 2\).*\(4, 3\)"),
        (np.zeros(8), r"\(n, 2\).*\(8,\)"),
        (np.array([[0.0, 1.0], [np.nan, 2.0]]), r"finite; row 1"),
        (np.array([[0.0, 1.0], [1.0, 2.0], [3.0, np.inf]]), r"finite; row 2"),
        (np.array([["a", "b"]]), "real coordinates"),
    ],
    ids=["three-columns", "flat", "nan", "inf", "strings"],
)
def test_bad_coordinates_are_a_named_error(
    coords: np.ndarray, message: str, tmp_path: Path
) -> None:
    with pytest.raises(MapTreeError, match=message):
        MapTree.build(coords)
    with pytest.raises(MapTreeError, match=message):
        MapTree.build(coords, tmp_path / "t")
    assert list(tmp_path.iterdir()) == []  # refused before anything was written
    assert issubclass(MapTreeError, LookalikeError) and issubclass(MapTreeError, ValueError)


def test_a_box_edge_that_is_not_a_number_is_a_named_error(points: np.ndarray) -> None:
    with pytest.raises(MapTreeError, match="numbers"):
        MapTree.build(points).within(0.0, float("nan"), 0.0, 1.0)


def test_the_tree_does_not_load_faiss_or_scikit_learn() -> None:
    """The Embeddings page imports this module; the lab's heavy methods stay unloaded."""
    code = (
        "import sys, core.search.nn.spatial; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'faiss', 'sklearn', 'torch'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
