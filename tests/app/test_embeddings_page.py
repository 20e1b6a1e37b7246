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
from core.studio import Studio
from tests.helpers import SpawnedJob
from ui.charts import MAP_BOX, MAP_POINT, MAP_SELECTIONS, STAR, map_selection
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


def test_a_selected_point_or_box_shows_that_image_and_searches_with_it(
    app: Callable[[], AppTest], mapped: Studio
) -> None:
    at = open_page(app)
    assert not [b for b in at.button if b.label == "Search with this image"]
    points = layers(maps(at)[0])["points"]
    image = mapped.store.list_images()[7]
    select_on_map(at, maps(at)[0], {MAP_POINT: [{"image_id": image.id}], MAP_BOX: {}})
    assert any(image.original_name in m.value for m in at.markdown)
    x, y = coords(points, image.id)  # a box around that point alone
    others = points[points.image_id != image.id]
    gap = min(np.hypot(others.x - x, others.y - y)) / 2
    box = {"x": [x - gap, x + gap], "y": [y + gap, y - gap]}
    select_on_map(at, maps(at)[0], {MAP_POINT: {}, MAP_BOX: box})
    assert any(image.original_name in m.value for m in at.markdown)
    [search] = [b for b in at.button if b.label == "Search with this image"]
    search.click().run()
    assert not at.exception, at.exception
    assert at.session_state[PICK_KEYS["image"]].id == image.id  # the Search page's pick


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
