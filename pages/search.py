"""Search: upload a query image (or pick one from the gallery), judge the results, refine."""

import streamlit as st

from core.gallery.images import ImageError, load_image
from core.studio import LoggedSearch
from ui.feedback import feedback_grid
from ui.resources import get_studio
from ui.state import PICK_KEYS, current_user, remember, require_app_frame
from ui.text import ALL_LABELS, QUERY_SOURCE_LABELS, UPLOAD_IMAGE_TYPES

EXPORTS = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}

require_app_frame(__file__)
studio = get_studio()
user, location = current_user(studio)
st.title("Search by image")

if studio.count_images() == 0:
    st.info("The gallery is empty: add images, or load the demo gallery, on the Gallery page.")
    st.page_link("pages/gallery.py", label="Open the Gallery", icon=":material/photo_library:")
    st.stop()

# The sidebar belongs to app.py (user, model, gallery); page controls stay in the main area.
source_column, k_column = st.columns([3, 2])
source = source_column.segmented_control(
    "Query",
    list(QUERY_SOURCE_LABELS),
    format_func=QUERY_SOURCE_LABELS.get,
    default="upload" if PICK_KEYS["source"] not in st.session_state else None,
    key=PICK_KEYS["source"],
)
k = k_column.slider("Results to show", min_value=5, max_value=50, value=10, step=5)
version = studio.active_version().version
state = (version, studio.count_images(), user.id, k)  # a new search when any changes

search: LoggedSearch | None = None
query_column, results_column = st.columns([1, 4])
if source == "gallery":
    labels = sorted(label for label in studio.label_counts() if label)
    label = query_column.selectbox("Label", [ALL_LABELS, *labels], key=PICK_KEYS["label"])
    records = studio.list_images(label=None if label == ALL_LABELS else label)
    record = query_column.selectbox(
        "Image",
        records,
        format_func=lambda r: f"{r.label or 'unlabelled'} / {r.original_name}",
        key=PICK_KEYS["image"],
    )
    if record is not None:
        query_column.image(str(studio.image_path(record)), caption="Query", width="stretch")
        search = remember(
            ("gallery", record.id, state),
            lambda: studio.logged_gallery_search(user.id, record.id, k, location),
        )
else:
    upload = query_column.file_uploader("Query image", type=UPLOAD_IMAGE_TYPES)
    if upload is not None:
        try:
            loaded = load_image(upload.getvalue(), limits=studio.settings.images, name=upload.name)
        except ImageError as exc:
            st.error(str(exc))
            st.stop()
        query_column.image(loaded.image, caption=f"Query · {upload.name}", width="stretch")
        search = remember(
            ("upload", loaded.id, state),
            lambda: studio.logged_search(user.id, loaded, k, location),
        )


def refine(root: LoggedSearch, current: int) -> None:
    """Callback: re-rank with the labels so far (it runs before the page redraws)."""
    labels = studio.result_labels(studio.query_chain(current))
    if any(lab.relevance or lab.grade is not None for lab in labels.values()):
        st.session_state["refined"][root.query_id] = studio.refine(current, k)
    else:
        st.session_state["refine_hint"] = True


def reset(root: LoggedSearch) -> None:
    st.session_state["refined"].pop(root.query_id, None)


@st.fragment
def results(search: LoggedSearch) -> None:
    """The result grid and its controls. A fragment: Similar, Not similar, grades and refine
    rerun only this part of the page, not the upload box and the rest (measured: the
    browser's rendering, not the server, is most of the time people wait)."""
    refined: dict[int, LoggedSearch] = st.session_state.setdefault("refined", {})
    shown = refined.get(search.query_id, search)
    chain = studio.query_chain(shown.query_id)
    title, refine_column, reset_column = st.columns([2, 1.3, 1.1], vertical_alignment="bottom")
    step = f" · refined ×{len(chain) - 1}" if len(chain) > 1 else ""
    title.subheader(f"Top {len(shown.results)} · model `{version}`{step}")
    refine_column.button(
        "Refine with my labels",
        icon=":material/tune:",
        on_click=refine,
        args=(search, shown.query_id),
        width="stretch",
    )
    reset_column.button(
        "Original ranking",
        disabled=len(chain) == 1,
        on_click=reset,
        args=(search,),
        width="stretch",
    )
    if st.session_state.pop("refine_hint", False):
        st.warning("Mark a few results Similar / Not similar (or grade them) first.")
    feedback_grid(studio, shown, chain)


if search is not None:
    with results_column:
        results(search)

with st.expander("Interaction log"):
    counts = studio.interaction_counts(user.id)
    by_type = " · ".join(f"{kind} {rows:,}" for kind, rows in counts.items())
    st.caption(
        f"{sum(counts.values()):,} rows logged for {user.name}"
        f"{f' ({by_type})' if by_type else ''}; exports hold everyone's."
    )
    for column, (fmt, mime) in zip(st.columns(2), EXPORTS.items(), strict=True):
        column.download_button(
            f"Export {fmt.capitalize() if fmt == 'parquet' else fmt.upper()}",
            data=lambda fmt=fmt: studio.log_bytes(fmt),
            file_name=f"interactions.{fmt}",
            mime=mime,
            icon=":material/download:",
            on_click="ignore",
        )
