"""Embeddings: a 2-D map of a version's gallery, the last query, feedback, two versions aligned."""

import streamlit as st

from core.choices import PROJECTION_METHODS
from core.measure.maps import align_layout, cohesion_table, layout, map_view
from core.measure.projection import Layout
from ui.charts import embedding_map
from ui.resources import get_studio
from ui.state import current_user, preset_gallery_pick, require_app_frame
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

records = studio.images_by_id()


def compute(version: str) -> Layout:
    with st.status(f"Mapping {version} ({method.upper()})…", expanded=False) as status:
        mapped = layout(studio, version, method, stage=status.write)
        status.update(label=f"{version}: {len(mapped.ids):,} points", state="complete")
    return mapped


layouts = {version: compute(version) for version in chosen}
if len(chosen) == 2:  # rotate the second map onto the first, so drift is movement
    layouts[chosen[1]] = align_layout(layouts[chosen[0]], layouts[chosen[1]])

selected_id: str | None = None
for column, (version, mapped) in zip(st.columns(len(chosen)), layouts.items(), strict=True):
    view = map_view(studio, version, mapped, records, user.id, feedback=show_feedback)
    title = f"{version} · {mapped.method.upper()}"
    figure = embedding_map(view.points, color, title, view.query, view.links, view.feedback)
    with column:
        if mapped.sampled:
            st.caption(f"Sampled: {len(mapped.ids):,} of {mapped.total:,} images are drawn.")
        event = st.plotly_chart(
            figure, key=f"map-{version}", on_select="rerun", selection_mode=("points", "box")
        )
        picked = [p["customdata"][0] for p in event.selection.points if p.get("customdata")]
        selected_id = selected_id or (picked[0] if picked else None)

st.caption(MAP_CAPTION)

if selected_id is not None and selected_id in records:
    record = records[selected_id]
    picture, about = st.columns([1, 4])
    picture.image(str(studio.thumb_path(selected_id)), width="stretch")
    about.markdown(f"**{record.original_name}** · {record.label or 'unlabelled'}")
    if about.button("Search with this image", icon=":material/image_search:"):
        preset_gallery_pick(record)
        st.switch_page("pages/search.py")

st.subheader("Cohesion per label")
st.caption(COHESION_CAPTION)
table = cohesion_table(studio, chosen, records)
st.dataframe(table.sort_values(f"{chosen[-1]} gap"), hide_index=True, width="stretch")
