"""2-D maps of the embedding space: UMAP and PCA, arrays in, arrays out, seeded.

- `project` reduces (n, d) unit vectors to (n, 2): PCA directly, or UMAP (umap-learn) on a
  50-d PCA of the vectors (the usual practice: it denoises and makes the neighbour search of a
  10,000-point map fit in a minute on two cores).
- `place` puts new points (a query) on an existing map at the similarity-weighted mean of their
  nearest gallery neighbours' positions — how UMAP's own `transform` initialises new points;
  its optimisation step costs about a minute of JIT compilation here, so we stop there.
- `align` rotates/scales/translates one layout onto another (orthogonal Procrustes), so two
  model versions' maps can be compared point for point.
- `cohesion` measures, per label, mean within-label cosine against mean between-label cosine.
- `ProjectionCache` keeps layouts (and each version's cohesion table) on disk per (model
  version, gallery state): a revisit is instant. Each layout is stored with its R-tree
  (`core.search.nn.spatial.MapTree`), which answers a box dragged on the map.

numba, measured with umap-learn 0.5.12, pynndescent 0.7.0 and numba 0.68.1: umap-learn marks
one function `cache=True` (`layouts.rdist`), its other ~130 `njit`s (the layout epochs, the
fuzzy set, the spectral init) are compiled again in every process; pynndescent caches 176 of
its 343. A process that sets `NUMBA_CACHE_DIR` (the map job: `Settings.numba_cache_dir`)
gives all of them a disk cache there (`_cache_compilations`), so only the first map process
compiles: on the demo gallery, importing umap took 21.8 s cold and 2.6 s warm, and the first
UMAP 16.0 s cold and 2.7 s warm (2 cores). numba keys a cached function by its source file's
time stamp and size, so reinstalling either library recompiles.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd

from core.choices import PROJECTION_METHODS
from core.errors import LookalikeError
from core.files import atomic_write
from core.search.nn.spatial import MapTree, MapTreeError

METHODS = PROJECTION_METHODS
MAX_POINTS = 20_000  # larger galleries are sampled for the map
PCA_DIMS = 50  # UMAP runs on this many principal components

NUMBA_CACHE_ENV = "NUMBA_CACHE_DIR"  # numba reads it once, when it is first imported
_COMPILED_PACKAGES = ("umap", "pynndescent")  # whose njit functions get a disk cache

Stage = Callable[[str], None]  # progress: a short description of the step starting now


class ProjectionError(LookalikeError, ValueError):
    """A map cannot be made as asked (unknown method, too few points); one sentence."""


@dataclass(frozen=True)
class Layout:
    """A 2-D map of some images."""

    ids: list[str]  # (n,) image ids, in the rows' order
    coords: np.ndarray  # (n, 2) float32
    method: str
    total: int  # images in the gallery; more than n when the map was sampled

    @property
    def sampled(self) -> bool:
        return self.total > len(self.ids)


def pca(x: np.ndarray, dims: int = 2) -> np.ndarray:
    """(n, d) -> (n, dims) principal components via SVD, signs fixed for determinism."""
    centred = x.astype(np.float64) - x.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)  # u: (n, r)
    dims = min(dims, u.shape[1])
    scores = u[:, :dims] * s[:dims]
    signs = np.sign(scores[np.abs(scores).argmax(axis=0), np.arange(dims)])
    return (scores * np.where(signs == 0, 1, signs)).astype(np.float32)


def umap_2d(x: np.ndarray, seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """(n, d) -> (n, 2) UMAP layout on a PCA of the vectors, seeded.

    Euclidean distance between unit vectors orders pairs exactly as cosine does, and the top
    principal components keep most of it.
    """
    umap = _import_umap()
    reduced = pca(x, PCA_DIMS) if x.shape[1] > PCA_DIMS else x
    model = umap.UMAP(
        n_components=2,
        n_neighbors=min(n_neighbors, len(x) - 1),
        min_dist=0.1,
        metric="euclidean",
        random_state=seed,
        init="spectral" if len(x) > 3 else "random",
        # umap-learn gives up to 10,000 points 500 epochs and larger sets 200; 200 already
        # converges at this size and keeps a 10,000-point map near 40 s on two cores.
        n_epochs=200 if len(x) > 2_000 else None,
    )
    return np.asarray(model.fit_transform(reduced), dtype=np.float32)


def _import_umap() -> ModuleType:
    """umap-learn, imported on first use (~2 s warm, and only maps need it); its compiled
    functions cached on disk when this process has a numba cache folder."""
    import umap

    if os.environ.get(NUMBA_CACHE_ENV):
        _cache_compilations()
    return umap


def _cache_compilations() -> None:
    """What `njit(cache=True)` would have done, for every dispatcher umap-learn and
    pynndescent define (see the module doc); before their first call, so it is saved."""
    from numba.core.dispatcher import Dispatcher

    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in _COMPILED_PACKAGES and module is not None:
            for value in list(vars(module).values()):
                if isinstance(value, Dispatcher):
                    value.enable_caching()


def project(
    ids: Sequence[str],
    x: np.ndarray,
    method: str = "umap",
    seed: int = 0,
    max_points: int = MAX_POINTS,
    stage: Stage | None = None,
) -> Layout:
    """Map (n, d) vectors of `ids` to 2-D; more than `max_points` are sampled (seeded)."""
    if method not in METHODS:
        raise ProjectionError(f"Unknown projection {method!r}; use one of {', '.join(METHODS)}.")
    if len(ids) != len(x):
        raise ProjectionError(f"{len(ids)} ids for {len(x)} vectors.")
    if len(ids) < 3:
        raise ProjectionError("A map needs at least 3 images.")
    rows = np.arange(len(ids))
    if len(ids) > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(len(ids), max_points, replace=False))
        if stage:
            stage(f"sampling {max_points:,} of {len(ids):,} images")
    if stage:
        stage(f"{method.upper()} of {len(rows):,} points")
    coords = pca(x[rows]) if method == "pca" else umap_2d(x[rows], seed)
    return Layout([ids[int(i)] for i in rows], coords, method, len(ids))


def place(queries: np.ndarray, gallery: np.ndarray, coords: np.ndarray, k: int = 10) -> np.ndarray:
    """(q, d) new vectors on a map of (n, d) `gallery` at (n, 2) `coords` -> (q, 2).

    Each lands at the mean of its k most similar gallery points' positions, weighted by
    their (clipped, non-negative) cosine similarity.
    """
    sims = queries @ gallery.T  # (q, n)
    k = min(k, gallery.shape[0])
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]  # (q, k)
    weights = np.clip(np.take_along_axis(sims, top, axis=1), 1e-6, None)  # (q, k)
    return (np.einsum("qk,qkc->qc", weights, coords[top]) / weights.sum(1, keepdims=True)).astype(
        np.float32
    )


def align(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Orthogonal Procrustes: rotate (or reflect), scale and shift (n, 2) `source` onto
    (n, 2) `target` (rows correspond) with least squared error; returns the moved source."""
    mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
    a, b = source - mu_s, target - mu_t
    u, s, vt = np.linalg.svd(a.T @ b)
    rotation = u @ vt  # (2, 2)
    scale = s.sum() / max(float((a**2).sum()), 1e-12)
    return (scale * a @ rotation + mu_t).astype(np.float32)


_COHESION_COLUMNS = ("label", "images", "within", "between", "gap")


def cohesion(x: np.ndarray, labels: Sequence[str | None]) -> pd.DataFrame:
    """Per label: mean cosine within the label, mean cosine to other labelled images, and
    the gap between them (higher = a tighter, better separated category). Unlabelled
    images are left out; labels with one image have no within-label pair (NaN)."""
    keep = np.array([bool(label) for label in labels])
    x, names = x[keep].astype(np.float64), np.array([lab for lab in labels if lab], dtype=object)
    sims = x @ x.T  # (n, n)
    rows = []
    for label in sorted(set(names)):
        inside = names == label
        n = int(inside.sum())
        block = sims[np.ix_(inside, inside)]
        within = (block.sum() - np.trace(block)) / (n * (n - 1)) if n > 1 else np.nan
        between = sims[np.ix_(inside, ~inside)].mean() if (~inside).any() else np.nan
        rows.append({"label": label, "images": n, "within": within, "between": between})
    table = pd.DataFrame(rows, columns=["label", "images", "within", "between"])
    return table.assign(gap=table.within - table.between)


_DIGEST = 20  # hex digits of a cache file's key
_TREE = ".tree"  # a layout's R-tree: its path with this suffix, plus .dat and .idx


class ProjectionCache:
    """Layouts on disk under `folder`, keyed by version, method and a gallery signature, each
    with the R-tree of its points; and per version and signature, the cohesion table a map is
    shown with.

    A layout is `<version>-<method>-<digest>.npz` and its tree `<same>.tree.dat` and
    `<same>.tree.idx` (`MapTree`), written just before it. For a 20,000-point map, measured:
    `put` takes 22 ms of which the tree is 9 ms; `tree` reads it back in 0.5 ms, checks
    included, where the page would otherwise build one on every rerun (7 ms in memory).
    Entries written before trees were get theirs on first use.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _path(self, version: str, method: str, signature: str) -> Path:
        digest = hashlib.sha256(f"{version}|{method}|{signature}".encode()).hexdigest()[:_DIGEST]
        return self.folder / f"{version}-{method}-{digest}.npz"

    def has(self, version: str, method: str, signature: str) -> bool:
        """Whether the layout is cached, without reading it."""
        return self._path(version, method, signature).exists()

    def get(self, version: str, method: str, signature: str) -> Layout | None:
        return _read_layout(self._path(version, method, signature))

    def latest(self, version: str, method: str) -> Layout | None:
        """The newest layout of `version` by `method` whatever the gallery state it mapped (an
        earlier map to show while the current one is computed), or None."""
        name = re.compile(rf"{re.escape(version)}-{re.escape(method)}-[0-9a-f]{{{_DIGEST}}}\.npz")
        files = [p for p in self.folder.glob(f"{version}-{method}-*.npz") if name.fullmatch(p.name)]
        newest = max(files, key=lambda p: p.stat().st_mtime_ns, default=None)
        return None if newest is None else _read_layout(newest)

    def has_cohesion(self, version: str, signature: str) -> bool:
        return self._path(version, "cohesion", signature).exists()

    def get_cohesion(self, version: str, signature: str) -> pd.DataFrame | None:
        """A version's cached `cohesion` table for the gallery state `signature`, or None."""
        path = self._path(version, "cohesion", signature)
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as data:
            return pd.DataFrame({column: data[column] for column in _COHESION_COLUMNS})

    def put_cohesion(self, version: str, signature: str, table: pd.DataFrame) -> None:
        buffer = io.BytesIO()
        arrays = {column: table[column].to_numpy() for column in _COHESION_COLUMNS}
        arrays["label"] = arrays["label"].astype(str)  # no object arrays: they need pickle
        np.savez(buffer, **arrays)
        atomic_write(self._path(version, "cohesion", signature), buffer.getvalue())

    def put(self, version: str, signature: str, layout: Layout) -> None:
        """Write the layout's tree, then the layout, each atomically (a temporary file renamed),
        so readers never see half a file and a stored layout has its tree beside it."""
        path = self._path(version, layout.method, signature)
        MapTree.build(layout.coords, path.with_suffix(_TREE))
        meta = json.dumps({"method": layout.method, "total": layout.total})
        buffer = io.BytesIO()
        np.savez(buffer, ids=np.array(layout.ids), coords=layout.coords, meta=np.array(meta))
        atomic_write(path, buffer.getvalue())

    def tree(self, version: str, signature: str, layout: Layout) -> MapTree:
        """An R-tree over `layout`'s points, for box queries (`MapTree.within` gives its rows).

        When `layout` is the cached map of `version` by its method for `signature` (the same
        coordinates), the tree stored with it: read from disk, or built and stored now for an
        entry written before trees were (or whose tree does not fit it). Any other layout (an
        earlier map shown while the current one is computed, a map aligned onto another
        version's) gets a tree built in memory.
        """
        path = self._path(version, layout.method, signature)
        if not _holds_coords(path, layout.coords):
            return MapTree.build(layout.coords)
        where = path.with_suffix(_TREE)
        try:
            stored = MapTree.load(where)
        except MapTreeError:
            return MapTree.build(layout.coords, where)
        if stored.bounds != _bounds(layout.coords):  # another map's tree under the same key
            return MapTree.build(layout.coords, where)
        return stored

    def layout(
        self,
        version: str,
        signature: str,
        ids: Sequence[str],
        x: np.ndarray,
        method: str = "umap",
        stage: Stage | None = None,
    ) -> Layout:
        """The cached layout, or a new one computed with `project` and stored."""
        cached = self.get(version, method, signature)
        if cached is not None:
            return cached
        layout = project(ids, x, method, stage=stage)
        self.put(version, signature, layout)
        return layout


def _read_layout(path: Path) -> Layout | None:
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        return Layout(list(data["ids"]), data["coords"], meta["method"], meta["total"])


def _holds_coords(path: Path, coords: np.ndarray) -> bool:
    """Whether the layout file at `path` exists and maps its points to `coords` (only the
    coordinates are read: an npz loads its arrays one by one)."""
    if not path.exists():
        return False
    with np.load(path, allow_pickle=False) as data:
        return bool(np.array_equal(data["coords"], coords))


def _bounds(coords: np.ndarray) -> tuple[float, float, float, float] | None:
    """(x_min, x_max, y_min, y_max) of (n, 2) `coords` as a `MapTree` reports them."""
    if len(coords) == 0:
        return None
    x, y = coords[:, 0], coords[:, 1]  # one column at a time: 30x faster than axis=0 here
    return float(x.min()), float(x.max()), float(y.min()), float(y.max())
