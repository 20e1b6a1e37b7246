"""Search: upload a query image (or pick one from the gallery) and see the most similar images."""

import streamlit as st

from core.images import IMAGE_EXTENSIONS, ImageError, load_image
from core.studio import SearchResult
from ui.resources import get_studio
from ui.state import remember
from ui.widgets import result_grid

studio = get_studio()
st.title("Search by image")

if studio.store.count_images() == 0:
    st.info("The gallery is empty: add images, or load the demo gallery, on the Gallery page.")
    st.page_link("pages/gallery.py", label="Open the Gallery", icon=":material/photo_library:")
    st.stop()

k = st.sidebar.slider("Results to show", min_value=5, max_value=50, value=10, step=5)
version = studio.active_version().version
state = (version, studio.store.count_images())  # results go stale when either changes
source = st.segmented_control(
    "Query", ["Upload an image", "Pick from the gallery"], default="Upload an image"
)

results: list[SearchResult] | None = None
if source == "Pick from the gallery":
    labels = sorted(label for label in studio.store.label_counts() if label)
    label = st.selectbox("Label", ["(all)", *labels])
    records = studio.store.list_images(label=None if label == "(all)" else label)
    record = st.selectbox(
        "Image", records, format_func=lambda r: f"{r.label or 'unlabelled'} / {r.original_name}"
    )
    if record is not None:
        query_column, results_column = st.columns([1, 4])
        query_column.image(str(studio.image_path(record)), caption="Query", width="stretch")
        results = remember(
            ("gallery", record.id, k, state), lambda: studio.search_gallery_image(record.id, k)
        )
else:
    upload = st.file_uploader("Query image", type=sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
    if upload is not None:
        try:
            loaded = load_image(upload.getvalue(), limits=studio.settings.images, name=upload.name)
        except ImageError as exc:
            st.error(str(exc))
            st.stop()
        query_column, results_column = st.columns([1, 4])
        query_column.image(loaded.image, caption="Query", width="stretch")
        results = remember(
            ("upload", loaded.id, k, state), lambda: studio.search([loaded.image], k)[0]
        )

if results is not None:
    with results_column:
        st.subheader(f"Top {len(results)} · model `{version}`")
        result_grid(studio, results)
