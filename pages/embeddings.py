"""Embeddings: a 2-D map of a version's gallery, the last query, feedback, two versions aligned."""

import numpy as np
import pandas as pd
import streamlit as st

from core.evaluation import feedback_gains
from core.projection import METHODS, Layout, align, cohesion, place
from ui.charts import embedding_map
from ui.resources import get_studio
from ui.state import PICK_KEYS, current_user, require_app_frame

COHESION_SAMPLE = 5_000  # images per version the cohesion table looks at (it is n² work)
MAX_FEEDBACK_LINES = 150  # judged pairs drawn at most; more would hide the map

require_app_frame(__file__)
studio = get_studio()
user, _ = current_user(studio)
st.title("Embedding map")

versions = [v.version for v in studio.store.list_model_versions() if studio.index.count(v.version)]
if studio.store.count_images() < 3 or not versions:
    st.info("The map needs at least 3 images: add some on the Gallery page first.")
    st.stop()

method_column, color_column, versions_column = st.columns([1, 1, 2])
method = method_column.segmented_control(
    "Projection",
    METHODS,
    default="umap" if "projection" not in st.session_state else None,
    required=True,
    key="projection",
)
color = color_column.segmented_control(
    "Colour by", ["category", "label"], default="category", required=True,
    help="category: the first folder of the label (animals, food, …)",
)  # fmt: skip
show_feedback = color_column.toggle("Feedback pairs", value=True)
active = studio.active_version().version
chosen = versions_column.multiselect(
    "Model versions (two side by side)", versions, default=[active], max_selections=2
)
if not chosen:
    st.stop()

records = {r.id: r for r in studio.store.list_images()}


def compute(version: str) -> Layout:
    with st.status(f"Mapping {version} ({method.upper()})…", expanded=False) as status:
        layout = studio.layout(version, method, stage=status.write)
        status.update(label=f"{version}: {len(layout.ids):,} points", state="complete")
    return layout


layouts = {version: compute(version) for version in chosen}
if len(chosen) == 2:  # rotate the second map onto the first, so drift is movement
    first, second = layouts[chosen[0]], layouts[chosen[1]]
    shared = [i for i in second.ids if i in set(first.ids)]
    rows_first = {i: n for n, i in enumerate(first.ids)}
    rows_second = {i: n for n, i in enumerate(second.ids)}
    source = second.coords[[rows_second[i] for i in shared]]
    target = first.coords[[rows_first[i] for i in shared]]
    moved = align(source, target)
    coords = second.coords.copy()
    coords[[rows_second[i] for i in shared]] = moved
    layouts[chosen[1]] = Layout(second.ids, coords, second.method, second.total)

last = studio.store.feedback.last_query(user.id)
gains = feedback_gains(studio.store.feedback.interactions()) if show_feedback else {}
selected_id: str | None = None

for column, (version, layout) in zip(st.columns(len(chosen)), layouts.items(), strict=True):
    labels = [records[i].label if i in records else None for i in layout.ids]
    points = pd.DataFrame(
        {
            "image_id": layout.ids,
            "x": layout.coords[:, 0],
            "y": layout.coords[:, 1],
            "label": [label or "(unlabelled)" for label in labels],
            "category": [(label or "(unlabelled)").split("/")[0] for label in labels],
            "name": [records[i].original_name if i in records else "" for i in layout.ids],
        }
    )
    where = points.set_index("image_id")[["x", "y"]]
    query_xy, links = None, None
    if last is not None:
        found = studio.query_vectors(version)([last.query_image_id])
        if last.query_image_id in found:
            ids, vectors = studio.index.get_embeddings(version, layout.ids)
            spot = place(found[last.query_image_id][None], vectors, layout.coords)[0]
            query_xy = (float(spot[0]), float(spot[1]))
            shown = [i for i in studio.store.feedback.shown(last.id) if i in where.index]
            links = where.loc[shown].reset_index()
    segments = [
        (where.loc[q].x, where.loc[q].y, where.loc[s].x, where.loc[s].y, gain > 0)
        for q, judged in gains.items() if q in where.index
        for s, gain in judged.items() if s in where.index
    ][-MAX_FEEDBACK_LINES:]  # fmt: skip
    feedback = pd.DataFrame(segments, columns=["x0", "y0", "x1", "y1", "similar"])
    title = f"{version} · {layout.method.upper()}"
    figure = embedding_map(points, color, title, query_xy, links, feedback)
    with column:
        if layout.sampled:
            st.caption(f"Sampled: {len(layout.ids):,} of {layout.total:,} images are drawn.")
        event = st.plotly_chart(
            figure, key=f"map-{version}", on_select="rerun", selection_mode=("points", "box")
        )
        picked = [p["customdata"][0] for p in event.selection.points if p.get("customdata")]
        selected_id = selected_id or (picked[0] if picked else None)

st.caption(
    "Star: your last search, placed at the similarity-weighted mean of its nearest images; "
    "lines to the results it showed. Green / red: pairs labelled similar / not similar. "
    "Select a point (click or box) to see it and search with it."
)

if selected_id is not None and selected_id in records:
    record = records[selected_id]
    picture, about = st.columns([1, 4])
    picture.image(str(studio.thumb_path(selected_id)), width="stretch")
    about.markdown(f"**{record.original_name}** · {record.label or 'unlabelled'}")
    if about.button("Search with this image", icon=":material/image_search:"):
        st.session_state.update(
            {PICK_KEYS["source"]: "Pick from the gallery", PICK_KEYS["label"]: "(all)",
             PICK_KEYS["image"]: record}
        )  # fmt: skip
        st.switch_page("pages/search.py")

st.subheader("Cohesion per label")
st.caption(
    "Mean cosine within a label against mean cosine to the other labels' images; a larger gap "
    "is a tighter, better separated category. Click a column to sort."
)
tables = []
for version in chosen:
    ids, vectors = studio.index.get_embeddings(version)
    if len(ids) > COHESION_SAMPLE:
        rows = np.sort(np.random.default_rng(0).choice(len(ids), COHESION_SAMPLE, replace=False))
        ids, vectors = [ids[i] for i in rows], vectors[rows]
    table = cohesion(vectors, [records[i].label if i in records else None for i in ids])
    tables.append(table.set_index(["label", "images"]).add_prefix(f"{version} "))
st.dataframe(
    pd.concat(tables, axis=1).reset_index().sort_values(f"{chosen[-1]} gap"),
    hide_index=True,
    width="stretch",
)
