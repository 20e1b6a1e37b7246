"""Maps of a version's embedding space for people to read: the cached 2-D layout, two versions
aligned so that drift reads as movement, the points with their labels, the last query placed
among its results, the labelled feedback as segments, and per-label cohesion.

The numerics live in `core.measure.projection`; this module joins them with the catalog, the
index and the log. The Embeddings page and `python -m core project` only render what it returns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.measure.evaluation import feedback_gains
from core.measure.projection import Layout, ProjectionCache, Stage, align, place
from core.store import ImageRecord
from core.studio import Studio

UNLABELLED = "(unlabelled)"
MAX_FEEDBACK_LINES = 150  # judged pairs drawn at most; more would hide the map
PLACE_NEIGHBOURS = 10  # a query lands among this many of its nearest mapped images (`place`)


def layout(
    studio: Studio, version: str | None = None, method: str = "umap", stage: Stage | None = None
) -> Layout:
    """A 2-D map of a version's gallery vectors (default: the active version), cached on disk
    per gallery state (`Studio.image_signature`: the log does not change a map)."""
    name = version or studio.active_version().version
    ids, vectors = studio.index.get_embeddings(name)
    cache = ProjectionCache(studio.settings.projections_dir)
    return cache.layout(name, studio.image_signature(), ids, vectors, method, stage)


def align_layout(reference: Layout, moving: Layout) -> Layout:
    """`moving` rotated, scaled and shifted onto `reference` (Procrustes on the images both
    maps hold), so that the difference between two versions' maps is movement, not a turn."""
    rows_reference = {image_id: n for n, image_id in enumerate(reference.ids)}
    shared = [(n, rows_reference[i]) for n, i in enumerate(moving.ids) if i in rows_reference]
    if len(shared) < 3:  # too few common points to fix a rotation: leave the map as it is
        return moving
    rows_moving, rows_ref = (np.array(rows) for rows in zip(*shared, strict=True))
    coords = moving.coords.copy()
    coords[rows_moving] = align(moving.coords[rows_moving], reference.coords[rows_ref])
    return Layout(moving.ids, coords, moving.method, moving.total)


def map_points(layout: Layout, records: dict[str, ImageRecord]) -> pd.DataFrame:
    """One row per mapped image: image_id, x, y, label, category (the label's first folder)
    and the original file name."""
    labels = [(records[i].label if i in records else None) or UNLABELLED for i in layout.ids]
    return pd.DataFrame(
        {
            "image_id": layout.ids,
            "x": layout.coords[:, 0],
            "y": layout.coords[:, 1],
            "label": labels,
            "category": [label.split("/")[0] for label in labels],
            "name": [records[i].original_name if i in records else "" for i in layout.ids],
        }
    )


@dataclass(frozen=True)
class MapView:
    """Everything one version's map draws."""

    points: pd.DataFrame  # image_id, x, y, label, category, name (`map_points`)
    query: tuple[float, float] | None  # the user's last query, placed on the map
    links: pd.DataFrame  # image_id, x, y of the results that query showed
    feedback: pd.DataFrame  # x0, y0, x1, y1, similar: labelled (query, result) pairs


def map_view(
    studio: Studio,
    version: str,
    layout: Layout,
    records: dict[str, ImageRecord],
    user_id: int | None = None,
    feedback: bool = True,
    max_lines: int = MAX_FEEDBACK_LINES,
) -> MapView:
    """The map of `version` at `layout`: its points, `user_id`'s last query placed at the
    similarity-weighted mean of its nearest images with lines to the results it showed, and
    (with `feedback`) the last `max_lines` judged pairs of the whole log."""
    points = map_points(layout, records)
    where = points.set_index("image_id")[["x", "y"]]
    query: tuple[float, float] | None = None
    links = pd.DataFrame(columns=["image_id", "x", "y"])
    last = studio.store.feedback.last_query(user_id) if user_id is not None else None
    if last is not None:
        found = studio.query_vectors(version)([last.query_image_id])
        if last.query_image_id in found:
            query = place_query(studio, version, layout, found[last.query_image_id])
            shown = [i for i in studio.store.feedback.shown(last.id) if i in where.index]
            links = where.loc[shown].reset_index()
    gains = feedback_gains(studio.store.feedback.interactions()) if feedback else {}
    segments = [
        (where.at[q, "x"], where.at[q, "y"], where.at[s, "x"], where.at[s, "y"], gain > 0)
        for q, judged in gains.items()
        if q in where.index
        for s, gain in judged.items()
        if s in where.index
    ][-max_lines:]
    frame = pd.DataFrame(segments, columns=["x0", "y0", "x1", "y1", "similar"])
    return MapView(points, query, links, frame)


def place_query(
    studio: Studio, version: str, layout: Layout, vector: np.ndarray
) -> tuple[float, float] | None:
    """A (d,) query vector's spot on `layout`: `place` among its `PLACE_NEIGHBOURS` nearest
    mapped images, found through the index rather than by reading every mapped vector (20,000
    of them for a large gallery); a sampled map asks the index for as many more as it leaves
    out. None when none of its neighbours is on the map."""
    rows = {image_id: n for n, image_id in enumerate(layout.ids)}
    wanted = PLACE_NEIGHBOURS * math.ceil(layout.total / max(len(layout.ids), 1))
    hits = studio.index.query(version, vector[None], min(wanted, max(layout.total, 1)))[0]
    near = [hit.image_id for hit in hits if hit.image_id in rows][:PLACE_NEIGHBOURS]
    ids, vectors = studio.index.get_embeddings(version, near)  # (m, d)
    if not ids:
        return None
    coords = layout.coords[[rows[i] for i in ids]]  # (m, 2)
    spot = place(vector[None], vectors, coords, k=len(ids))[0]
    return float(spot[0]), float(spot[1])


def cohesion_columns(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Versions' `projection.cohesion` tables side by side: per label, the images and one
    column group per version (`<version> within`, `between`, `gap`)."""
    indexed = [
        table.set_index(["label", "images"]).add_prefix(f"{version} ")
        for version, table in tables.items()
    ]
    return pd.concat(indexed, axis=1).reset_index()
