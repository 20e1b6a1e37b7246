"""Embeddings: a 2-D map of a version's gallery, the last query, feedback, two versions aligned.

UMAP maps and the cohesion table come from the map job's cache; while one is missing the page
shows the version's last map (if it has one) and the job's progress, and starts the job. PCA
is quick and computed here (cached on disk too).
"""

import streamlit as st

from core.choices import PROJECTION_METHODS
from core.measure.map_job import missing_maps
from core.measure.maps import align_layout, cohesion_columns, layout, map_view
from core.measure.projection import Layout
from ui.charts import MAP_SELECTIONS, MapPick, embedding_map, map_pick
from ui.jobs import ensure_maps, follow_job, map_cache
from ui.map_picks import show_pick
from ui.resources import get_studio
from ui.state import current_user, require_app_frame
from ui.text import COHESION_CAPTION, MAP_CAPTION

require_app_frame(__file__)
studio = get_studio()
user, _ = current_user(studio)
st.title("Embedding map")

versions = studio.indexed_versions()
if studio.count_images() < 3 or not versions:
    st.info("The map needs at least 3 images: add some on the Gallery page first.")
    st.stop()

method_column, color_column, versions_column = st.columns([1, 1, 2])
method = method_column.segmented_control(
    "Projection",
    PROJECTION_METHODS,
    default="umap" if "projection" not in st.session_state else None,
    required=True,
    key="projection",
)
color = color_column.segmented_control(
    "Colour by",
    ["category", "label"],
    default="category",
    required=True,
    help="category: the first folder of the label (animals, food, …)",
)
show_feedback = color_column.toggle("Feedback pairs", value=True)
active = studio.active_version().version
chosen = versions_column.multiselect(
    "Model versions (two side by side)", versions, default=[active], max_selections=2
)
if not chosen:
    st.stop()

cache = map_cache(studio)
signature = studio.image_signature()


def find(version: str) -> Layout | None:
    """The version's map: PCA computed here, UMAP from the cache (or its last map)."""
    if method == "pca":
        with st.spinner(f"Mapping {version} (PCA)…"):
            return layout(studio, version, "pca")
    return cache.get(version, "umap", signature) or cache.latest(version, "umap")


layouts = {version: mapped for version in chosen if (mapped := find(version)) is not None}
if missing_maps(studio.store, studio.index, cache, chosen):
    earlier = [v for v in layouts if method == "umap" and not cache.has(v, "umap", signature)]
    if earlier:
        st.caption(f"Earlier map of {', '.join(earlier)}: the gallery has changed since.")
    follow_job("Mapping", lambda retry: ensure_maps(studio, chosen, retry=retry))
if not layouts:
    st.stop()
if len(layouts) == 2:  # rotate the second map onto the first, so drift is movement
    layouts[chosen[1]] = align_layout(layouts[chosen[0]], layouts[chosen[1]])

records = studio.images(list({i for mapped in layouts.values() for i in mapped.ids}))
pick: tuple[str, MapPick] | None = None  # the first map's selection that picked something
for column, (version, mapped) in zip(st.columns(len(layouts)), layouts.items(), strict=True):
    view = map_view(studio, version, mapped, records, user.id, feedback=show_feedback)
    title = f"{version} · {mapped.method.upper()}"
    chart = embedding_map(view.points, color, title, view.query, view.links, view.feedback)
    with column:
        if mapped.sampled:
            st.caption(f"Sampled: {len(mapped.ids):,} of {mapped.total:,} images are drawn.")
        event = st.altair_chart(
            chart,
            key=f"map-{version}",
            on_select="rerun",
            selection_mode=MAP_SELECTIONS,
            width="stretch",
        )
        tree = cache.tree(version, signature, mapped)  # the R-tree stored with the map
        picked = map_pick(event.selection, view.points, tree.within)
        pick = pick or (None if picked is None else (version, picked))

st.caption(MAP_CAPTION)
if pick is not None:
    show_pick(studio, pick[1], records, key=pick[0])

st.subheader("Cohesion per label")
st.caption(COHESION_CAPTION)
tables = {version: cache.get_cohesion(version, signature) for version in chosen}
ready = {version: table for version, table in tables.items() if table is not None}
if len(ready) < len(chosen):
    st.caption("Computed with the map, in the background: it appears when the map job is done.")
if ready:
    table = cohesion_columns(ready)
    st.dataframe(table.sort_values(f"{list(ready)[-1]} gap"), hide_index=True, width="stretch")
