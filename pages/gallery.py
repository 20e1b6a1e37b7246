"""Gallery: add images (folder path, zip, browser upload or the demo gallery) and browse them,
a page at a time: the catalog is paged and counted in SQL, and only the page's thumbnails are
read, so 70,000 images browse as fast as 70."""

from pathlib import Path

import pandas as pd
import streamlit as st

from core.gallery.demo import DemoDataError, fetch_demo_stamps
from core.gallery.ingest import IngestReport
from ui.resources import get_studio
from ui.state import require_app_frame
from ui.text import ALL_LABELS, GALLERY_COLUMNS, GALLERY_PAGE_SIZE, UPLOAD_GALLERY_TYPES
from ui.widgets import progress_bar

require_app_frame(__file__)
studio = get_studio()
st.title("Gallery")


def show_report(report: IngestReport) -> None:
    st.success(f"Added {report.added} images · {report.duplicates} duplicates skipped")
    if report.rejected:
        st.warning(f"{len(report.rejected)} files were rejected; the rest went in.")
        st.dataframe(pd.DataFrame(report.as_dict()["rejected"]), hide_index=True)


with st.expander("Add images", expanded=studio.count_images() == 0):
    by_path, by_upload, demo = st.tabs(
        ["Folder or zip on the server", "Upload files", "Demo gallery"]
    )
    with by_path:
        path = st.text_input("Path to a folder, an image or a .zip archive")
        labels_from_path = st.checkbox(
            "Label images by their folder", value=True, key="labels_path"
        )
        if st.button("Ingest", disabled=not path.strip()):
            target = Path(path.strip()).expanduser()
            report = studio.ingest(
                [target], label_from_folders=labels_from_path, progress=progress_bar("Ingesting")
            )
            show_report(report)
    with by_upload:
        uploads = st.file_uploader(
            "Images or zip archives",
            type=UPLOAD_GALLERY_TYPES,
            accept_multiple_files=True,
        )
        labels_from_zip = st.checkbox(
            "Label zip members by their folder", value=True, key="labels_zip"
        )
        if st.button("Ingest uploads", disabled=not uploads):
            report = studio.ingest_uploads(
                [(upload.name, upload.getvalue()) for upload in uploads or []],
                label_from_folders=labels_from_zip,
                progress=progress_bar("Ingesting"),
            )
            show_report(report)
    with demo:
        st.write(
            "About 800 photo cut-outs from Debian's `tuxpaint-stamps-default`, labelled by "
            "their category folders (`animals/mammals/cats`)."
        )
        if st.button("Load the demo gallery"):
            try:
                with st.spinner("Downloading the Debian package…"):
                    fetch_demo_stamps(studio.settings.demo_dir)
                show_report(studio.demo_data(progress=progress_bar("Ingesting the demo gallery")))
            except DemoDataError as exc:
                st.error(str(exc))

counts = studio.label_counts()
if not counts:
    st.info("No images yet: add some above.")
    st.stop()

browse, per_label = st.tabs(["Browse", "Counts per label"])
with per_label:
    table = pd.DataFrame({"label": list(counts), "images": list(counts.values())})
    table["label"] = table["label"].replace("", "(unlabelled)")
    st.dataframe(table, hide_index=True, width="stretch")
with browse:
    options = [ALL_LABELS, *sorted(label for label in counts if label)]
    label = st.selectbox(
        "Filter by label",
        options,
        format_func=lambda x: x if x == ALL_LABELS else f"{x} ({counts[x]})",
    )
    chosen = None if label == ALL_LABELS else label
    pages = max(1, -(-studio.count_images(label=chosen) // GALLERY_PAGE_SIZE))
    page = st.number_input(f"Page (of {pages:,})", min_value=1, max_value=pages, value=1)
    offset = (page - 1) * GALLERY_PAGE_SIZE
    shown = studio.list_images(chosen, limit=GALLERY_PAGE_SIZE, offset=offset)
    for start in range(0, len(shown), GALLERY_COLUMNS):
        row = shown[start : start + GALLERY_COLUMNS]
        for column, record in zip(st.columns(GALLERY_COLUMNS), row, strict=False):
            column.image(str(studio.thumb_path(record.id)), width="stretch")
            column.caption(f"{record.original_name}  \n{record.label or 'unlabelled'}")
    doomed = st.multiselect(
        "Remove images",
        shown,
        format_func=lambda r: f"{r.label or 'unlabelled'} / {r.original_name}",
    )
    if st.button("Remove selected", disabled=not doomed, type="secondary"):
        removed = studio.remove_images([r.id for r in doomed])
        st.toast(f"Removed {removed} images")
        st.rerun()
