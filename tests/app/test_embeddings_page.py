"""The Embeddings page: maps from the map job's cache, its progress while one is missing, a map
for a small gallery, two versions side by side; the Vega-Lite map's layers and its selections."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from streamlit.proto.WidgetStates_pb2 import WidgetState
from streamlit.testing.v1 import AppTest

from core.measure import projection
from core.measure.map_job import run_map_job
from core.measure.projection import pca
from core.search.nn.spatial import MapTree
from core.studio import Studio
from tests.helpers import SpawnedJob
from ui import map_picks
from ui.charts import (
    MAP_BOX,
    MAP_POINT,
    MAP_SELECTIONS,
    STAR,
    label_counts,
    map_pick,
    map_selection,
)
from ui.state import PICK_KEYS

UMAP_REQUEST = ["--model", "base", "--method", "umap"]


@pytest.fixture
def gallery(studio: Studio, make_gallery: Callable[..., Path]) -> Studio:
    studio.ingest([make_gallery(per_label=5)], label_from_folders=True)
    return studio


def add_rotated_version(studio: Studio, name: str = "ft-test") -> None:
    """A second indexed version: base's vectors rotated (the same neighbourhoods)."""
    ids, vectors = studio.index.get_embeddings("base")
    rotation, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(vectors.shape[1],) * 2))
    studio.store.add_model_version(name, "tiny-test", "base", {"note": "rotated"})
    studio.index.upsert(name, ids, (vectors @ rotation).astype(np.float32))


@pytest.fixture
def mapped(gallery: Studio, monkeypatch: pytest.MonkeyPatch) -> Studio:
    """The map job has run for base, in this process; its UMAP is PCA here (numba's JIT would
    take the test half a minute), which is all the page needs to know of it."""
    monkeypatch.setattr(projection, "umap_2d", lambda x, seed=0: pca(x))
    status = run_map_job(gallery.settings, ["base"], "umap")
    assert status.state == "done", status.message
    return gallery


def open_page(app: Callable[[], AppTest], method: str = "umap") -> AppTest:
    at = app()
    at.session_state["projection"] = method
    at.run()
    at.switch_page("pages/embeddings.py").run()
    assert not at.exception, at.exception
    return at


def maps(at: AppTest) -> Sequence[Any]:
    """The page's map charts: `st.altair_chart` elements (AppTest has no class for them)."""
    return at.get("vega_lite_chart")


def title(chart: Any) -> str:
    return str(json.loads(chart.proto.spec)["title"])


def layers(chart: Any) -> dict[str, pd.DataFrame]:
    """A map's layers by what they draw (points, lines, star), each with the rows Streamlit
    ships for it as an Arrow dataset."""
    spec = json.loads(chart.proto.spec)
    datasets = {d.name: pa.ipc.open_stream(d.data.data).read_pandas() for d in chart.proto.datasets}
    found = {}
    for layer in spec["layer"]:
        mark = layer["mark"]
        kind = {"circle": "points", "rule": "lines"}.get(mark["type"])
        if mark["type"] == "point" and mark.get("shape") == STAR:
            kind = "star"
        assert kind is not None and kind not in found, layer
        found[kind] = datasets[layer.get("data", spec.get("data"))["name"]]  # one layer: hoisted
    return found


def coords(points: pd.DataFrame, image_id: str) -> tuple[float, float]:
    [row] = points[points.image_id == image_id].itertuples()
    return float(row.x), float(row.y)


def progress_texts(at: AppTest) -> list[str]:
    return [str(bar.proto.text) for bar in at.get("progress")]


def test_a_cached_map_is_drawn_without_starting_a_job(
    app: Callable[[], AppTest], mapped: Studio, jobs_started: list[SpawnedJob]
) -> None:
    at = open_page(app)
    assert len(maps(at)) == 1 and title(maps(at)[0]) == "base · UMAP"
    assert set(maps(at)[0].proto.selection_mode) == set(MAP_SELECTIONS)  # not the legend
    assert progress_texts(at) == []
    table = at.dataframe[0].value
    assert set(table["label"]) == {
        "shapes/circles",
        "shapes/squares",
        "colours/red",
        "colours/blue",
    }
    assert {"base within", "base between", "base gap"} <= set(table.columns)
    assert jobs_started == []  # neither app.py nor the page asked for a map job
    # the job stored the map's R-tree with it, for boxes dragged on the map
    [layout_file] = mapped.settings.projections_dir.glob("base-umap-*.npz")
    assert layout_file.with_suffix(".tree.idx").exists()


def test_a_missing_map_shows_the_jobs_progress_and_starts_it_once(
    app: Callable[[], AppTest], gallery: Studio, jobs_started: list[SpawnedJob]
) -> None:
    at = open_page(app)
    assert maps(at) == []  # the script never computes a UMAP map itself
    [text] = progress_texts(at)
    assert text.startswith("Mapping: map job · queued")
    # app.py asked first; the page found that job live and followed it
    assert [(job.kind, job.request) for job in jobs_started] == [("map", UMAP_REQUEST)]
    at.run()
    assert len(jobs_started) == 1  # one job at a time, however often the page reruns
    assert not list(gallery.settings.projections_dir.glob("*.npz"))


def test_when_the_job_is_done_the_next_run_draws_its_map(
    app: Callable[[], AppTest],
    gallery: Studio,
    jobs_started: list[SpawnedJob],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    at = open_page(app)
    assert maps(at) == []
    jobs_started[0].process.kill()  # the stand-in makes way for the job itself, run here
    jobs_started[0].process.wait()
    monkeypatch.setattr(projection, "umap_2d", lambda x, seed=0: pca(x))
    assert run_map_job(gallery.settings, ["base"], "umap").state == "done"
    at.run()
    assert not at.exception, at.exception
    assert len(maps(at)) == 1 and progress_texts(at) == []
    assert len(jobs_started) == 1


def test_after_the_gallery_changes_the_earlier_map_shows_while_the_job_runs(
    app: Callable[[], AppTest],
    mapped: Studio,
    jobs_started: list[SpawnedJob],
) -> None:
    mapped.remove_images([mapped.store.list_images()[0].id])
    at = open_page(app)
    assert len(maps(at)) == 1  # the earlier map
    assert any("Earlier map of base" in c.value for c in at.caption)
    assert progress_texts(at) and [job.request for job in jobs_started] == [UMAP_REQUEST]


def test_pca_is_drawn_inline_with_the_cached_cohesion(
    app: Callable[[], AppTest], mapped: Studio
) -> None:
    at = open_page(app, "pca")
    assert len(maps(at)) == 1 and title(maps(at)[0]) == "base · PCA"
    assert {"base gap"} <= set(at.dataframe[0].value.columns)


def test_two_versions_are_drawn_side_by_side(
    app: Callable[[], AppTest], gallery: Studio, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_rotated_version(gallery)
    monkeypatch.setattr(projection, "umap_2d", lambda x, seed=0: pca(x))
    assert run_map_job(gallery.settings, ["base", "ft-test"], "umap").state == "done"
    at = open_page(app)
    at.multiselect[0].set_value(["base", "ft-test"]).run()
    assert not at.exception, at.exception
    assert [title(chart) for chart in maps(at)] == ["base · UMAP", "ft-test · UMAP"]
    assert [chart.key for chart in maps(at)] == ["map-base", "map-ft-test"]
    columns = set(at.dataframe[0].value.columns)
    assert {"base gap", "ft-test gap"} <= columns
    # a box on the second map, whose points were turned onto the first's: its drawn places count
    points = layers(maps(at)[1])["points"]
    box = {"x": [float(points.x.min()), float(points.x.median())], "y": [-9.0, 9.0]}
    expected = inside(points, box)
    assert 1 < len(expected) < len(points)
    select_on_map(at, maps(at)[1], {MAP_BOX: box})
    headline, captions, buttons = box_shown(at)
    assert headline == f"**{len(expected)} images in the box**"
    assert captions == list(expected.label)
    assert [b.key for b in buttons] == [f"box-ft-test-{i}" for i in expected.image_id]


def test_every_mapped_image_is_a_point_with_its_id_label_and_file(
    app: Callable[[], AppTest], mapped: Studio
) -> None:
    at = open_page(app)
    drawn = layers(maps(at)[0])
    assert set(drawn) == {"points"}  # no search and no labels yet: no star, no lines
    points = drawn["points"]
    images = mapped.store.list_images()
    assert len(points) == len(images) == 20
    assert dict(zip(points.image_id, points.label, strict=True)) == {i.id: i.label for i in images}
    assert dict(zip(points.image_id, points.name, strict=True)) == {
        i.id: i.original_name for i in images
    }
    assert set(points.category) == {"shapes", "colours"}


def test_the_last_search_is_drawn_on_the_map(app: Callable[[], AppTest], mapped: Studio) -> None:
    guest = mapped.store.ensure_user("guest")
    image_id = mapped.store.list_images()[0].id
    search = mapped.logged_gallery_search(guest.id, image_id, k=5)
    at = open_page(app)
    drawn = layers(maps(at)[0])
    [star] = drawn["star"].itertuples()
    lines = drawn["lines"]
    assert set(lines.kind) == {"last query → results"}
    assert (lines.x0 == star.x).all() and (lines.y0 == star.y).all()
    ends = sorted(zip(lines.x1, lines.y1, strict=True))
    assert ends == sorted(coords(drawn["points"], r.image_id) for r in search.results)


def test_labelled_pairs_are_drawn_as_lines_unless_switched_off(
    app: Callable[[], AppTest], mapped: Studio
) -> None:
    guest = mapped.store.ensure_user("guest")
    query_image = mapped.store.list_images()[0].id
    search = mapped.logged_gallery_search(guest.id, query_image, k=5)
    liked, disliked = search.results[0].image_id, search.results[1].image_id
    mapped.store.feedback.log_interaction(search.query_id, liked, "similar")
    mapped.store.feedback.log_interaction(search.query_id, disliked, "not_similar")
    at = open_page(app)
    drawn = layers(maps(at)[0])
    points, lines = drawn["points"], drawn["lines"]
    pairs = lines[lines.kind != "last query → results"]
    start = coords(points, query_image)
    assert sorted((row.kind, (row.x0, row.y0), (row.x1, row.y1)) for row in pairs.itertuples()) == [
        ("labelled not similar", start, coords(points, disliked)),
        ("labelled similar", start, coords(points, liked)),
    ]
    rule = next(
        layer for layer in json.loads(maps(at)[0].proto.spec)["layer"] if "x2" in layer["encoding"]
    )
    colours = rule["encoding"]["color"]["scale"]
    dashes = rule["encoding"]["strokeDash"]["scale"]
    style = dict(
        zip(colours["domain"], zip(colours["range"], dashes["range"], strict=True), strict=True)
    )
    assert style["labelled similar"] == ("#16a34a", [1, 0])  # solid
    assert style["labelled not similar"] == ("#dc2626", [2, 2])  # dotted
    at.toggle[0].set_value(False).run()
    assert set(layers(maps(at)[0])["lines"].kind) == {"last query → results"}


def select_on_map(at: AppTest, chart: Any, selection: dict[str, Any]) -> None:
    """Rerun as the browser does after a selection on `chart`: its widget state is the JSON
    string {"selection": {param: value}} (AppTest has no setter for charts, so this adds it to
    the other widgets' states by hand)."""
    states = at._tree.get_widget_states()
    state = WidgetState(id=chart.proto.id, string_value=json.dumps({"selection": selection}))
    states.widgets.append(state)
    at._run(states)
    assert not at.exception, at.exception


def test_a_clicked_point_shows_that_image_and_searches_with_it(
    app: Callable[[], AppTest], mapped: Studio
) -> None:
    at = open_page(app)
    assert not [b for b in at.button if b.label == "Search with this image"]
    image = mapped.store.list_images()[7]
    select_on_map(at, maps(at)[0], {MAP_POINT: [{"image_id": image.id}], MAP_BOX: {}})
    assert any(image.original_name in m.value for m in at.markdown)
    assert not [m for m in at.markdown if "in the box" in m.value]
    [search] = [b for b in at.button if b.label == "Search with this image"]
    search.click().run()
    assert not at.exception, at.exception
    assert at.session_state[PICK_KEYS["image"]].id == image.id  # the Search page's pick


def inside(points: pd.DataFrame, box: dict[str, list[float]]) -> pd.DataFrame:
    """The drawn points inside a dragged box, edges included: the brute-force reference."""
    (x0, x1), (y0, y1) = sorted(box["x"]), sorted(box["y"])
    return points[(points.x >= x0) & (points.x <= x1) & (points.y >= y0) & (points.y <= y1)]


def box_shown(at: AppTest) -> tuple[str, list[str], list[Any]]:
    """The box panel: its headline, the captions of its thumbnails and its search buttons."""
    [headline] = [m.value for m in at.markdown if "in the box" in m.value]
    captions = [caption for image in at.get("image") for caption in image.captions]
    buttons = [b for b in at.button if b.key and b.key.startswith("box-")]
    return headline, captions, buttons


def test_a_box_shows_its_images_counted_per_label_and_searches_with_any(
    app: Callable[[], AppTest], mapped: Studio
) -> None:
    at = open_page(app)
    points = layers(maps(at)[0])["points"]
    # a box over the lower-left part of the map, dragged from its top-right corner
    box = {"x": [float(points.x.median()), float(points.x.min())], "y": [9.0, -9.0]}
    expected = inside(points, box)
    assert 1 < len(expected) < len(points)
    select_on_map(at, maps(at)[0], {MAP_POINT: {}, MAP_BOX: box})
    headline, captions, buttons = box_shown(at)
    assert headline == f"**{len(expected)} images in the box**"
    counts = at.dataframe[0].value  # then the cohesion table
    assert list(counts.columns) == ["label", "images"]
    assert (
        dict(zip(counts.label, counts.images, strict=True))
        == expected.label.value_counts().to_dict()
    )
    assert list(counts.images) == sorted(counts.images, reverse=True)
    assert captions == list(expected.label)  # in the map's order
    assert [b.key for b in buttons] == [f"box-base-{i}" for i in expected.image_id]
    assert not [b for b in at.button if b.label == "Search with this image"]  # nothing clicked
    buttons[-1].click().run()
    assert not at.exception, at.exception
    assert at.session_state[PICK_KEYS["image"]].id == expected.image_id.iloc[-1]


def test_a_box_around_one_point_or_none_and_a_box_with_more_than_the_grid(
    app: Callable[[], AppTest], mapped: Studio, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = open_page(app)
    points = layers(maps(at)[0])["points"]
    image = mapped.store.list_images()[7]
    x, y = coords(points, image.id)  # a box around that point alone
    others = points[points.image_id != image.id]
    gap = min(np.hypot(others.x - x, others.y - y)) / 2
    select_on_map(at, maps(at)[0], {MAP_BOX: {"x": [x - gap, x + gap], "y": [y + gap, y - gap]}})
    headline, captions, buttons = box_shown(at)
    assert headline == "**1 image in the box**" and captions == [image.label]
    assert [b.help for b in buttons] == [f"Search with {image.original_name}"]

    far = float(points.x.max()) + 1
    select_on_map(at, maps(at)[0], {MAP_BOX: {"x": [far, far + 1], "y": [-9.0, 9.0]}})
    headline, captions, buttons = box_shown(at)
    assert headline == "**0 images in the box**" and captions == [] and buttons == []
    assert {"base gap"} <= set(at.dataframe[0].value.columns)  # no per-label table

    monkeypatch.setattr(map_picks, "BOX_THUMBNAILS", 8)
    select_on_map(at, maps(at)[0], {MAP_BOX: {"x": [-1e9, 1e9], "y": [-1e9, 1e9]}})
    headline, captions, buttons = box_shown(at)
    assert headline == "**20 images in the box** · the first 8 below"
    assert captions == list(points.label[:8]) and len(buttons) == 8
    assert at.dataframe[0].value.images.sum() == 20


def test_a_box_and_a_click_together_show_both(app: Callable[[], AppTest], mapped: Studio) -> None:
    at = open_page(app)
    points = layers(maps(at)[0])["points"]
    clicked = points.image_id.iloc[3]
    box = {"x": [-1e9, 1e9], "y": [-1e9, 1e9]}
    select_on_map(at, maps(at)[0], {MAP_POINT: [{"image_id": clicked}], MAP_BOX: box})
    assert [b.label for b in at.button if b.label == "Search with this image"]
    assert box_shown(at)[0] == "**20 images in the box**"


POINTS = pd.DataFrame(
    {"image_id": ["a", "b", "c", "d"], "x": [0.0, 1.0, 2.0, 3.0], "y": [0.0, 1.0, 0.5, 3.0]}
)


@pytest.mark.parametrize(
    ("selection", "ids"),
    [
        ({}, []),  # the state before any selection
        ({MAP_POINT: {}, MAP_BOX: {}}, []),  # cleared
        ({MAP_POINT: [{"image_id": "c"}]}, ["c"]),  # a click
        ({MAP_POINT: [{"image_id": "c"}, {"image_id": "a"}]}, ["c", "a"]),  # shift-click
        ({MAP_BOX: {"x": [0.5, 2.5], "y": [0.0, 1.0]}}, ["b", "c"]),  # inclusive, frame order
        ({MAP_BOX: {"x": [2.5, 0.5], "y": [1.0, 0.0]}}, ["b", "c"]),  # dragged up-left
        ({MAP_BOX: {"x": [0.5, 2.5], "y": [2.0, 4.0]}}, []),
        (
            {MAP_POINT: [{"image_id": "c"}], MAP_BOX: {"x": [-1, 9], "y": [-1, 9]}},
            ["c", "a", "b", "d"],
        ),
    ],
)
def test_a_selection_event_becomes_image_ids(selection: dict[str, Any], ids: list[str]) -> None:
    """Events as `st.altair_chart` returned them in Chromium for a click, a shift-click and a
    drag: {"map_point": [{"image_id": …}]} and {"map_box": {"x": [lo, hi], "y": [lo, hi]}}."""
    assert map_selection(selection, POINTS) == ids
    tree = MapTree.build(POINTS[["x", "y"]].to_numpy())  # as the cache gives it for a map
    assert map_selection(selection, POINTS, tree.within) == ids


def test_the_box_is_answered_by_the_maps_tree_and_clicks_never_ask_it() -> None:
    asked: list[tuple[float, ...]] = []

    def within(x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
        asked.append((x0, x1, y0, y1))
        return np.array([1, 3])  # rows of POINTS

    pick = map_pick({MAP_BOX: {"x": [2.5, 0.5], "y": [1.0, 0.0]}}, POINTS, within)
    assert asked == [(2.5, 0.5, 1.0, 0.0)]  # the event's box, as dragged
    assert pick is not None and pick.clicked == [] and pick.boxed is not None
    assert list(pick.boxed.image_id) == ["b", "d"] and list(pick.boxed.x) == [1.0, 3.0]
    clicked = map_pick({MAP_POINT: [{"image_id": "c"}], MAP_BOX: {}}, POINTS, within)
    assert clicked is not None and clicked.clicked == ["c"] and clicked.boxed is None
    assert map_pick({MAP_POINT: {}, MAP_BOX: {}}, POINTS, within) is None
    assert len(asked) == 1


def test_label_counts_put_the_largest_first_then_by_name() -> None:
    points = pd.DataFrame({"label": ["b", "a", "c", "a", "b", "(unlabelled)", "b"]})
    assert label_counts(points).to_dict("records") == [
        {"label": "b", "images": 3},
        {"label": "a", "images": 2},
        {"label": "(unlabelled)", "images": 1},
        {"label": "c", "images": 1},
    ]
    assert label_counts(points.head(0)).empty


def test_a_map_of_twenty_thousand_points_is_sent_whole() -> None:
    """Altair refuses more than 5,000 rows by default; `st.altair_chart` ships them all."""

    def script() -> None:
        import numpy as np
        import pandas as pd
        import streamlit as st

        from ui.charts import MAP_SELECTIONS, embedding_map

        n = 20_000  # core.measure.projection.MAX_POINTS
        xy = np.random.default_rng(0).normal(size=(n, 2))
        points = pd.DataFrame(
            {
                "image_id": [f"{i:032x}" for i in range(n)],
                "x": xy[:, 0],
                "y": xy[:, 1],
                "label": [f"group{i % 7}/label{i % 31}" for i in range(n)],
                "category": [f"group{i % 7}" for i in range(n)],
                "name": [f"{i}.jpg" for i in range(n)],
            }
        )
        chart = embedding_map(points, "label", "big", query=(0.0, 0.0), query_links=points.head(5))
        st.altair_chart(chart, key="map", on_select="rerun", selection_mode=MAP_SELECTIONS)

    at = AppTest.from_function(script, default_timeout=60).run()
    assert not at.exception, at.exception
    drawn = layers(maps(at)[0])
    assert len(drawn["points"]) == 20_000 and drawn["points"].image_id.is_unique
    assert len(drawn["lines"]) == 5 and len(drawn["star"]) == 1
