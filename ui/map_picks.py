"""What a selection on the Embeddings map shows: the clicked image, and the images inside a
dragged box (how many, per label, the first few), each one a search away."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.store import ImageRecord
from core.studio import Studio
from ui.charts import MapPick, label_counts
from ui.state import preset_gallery_pick

BOX_THUMBNAILS = 24  # a box's images drawn at most
BOX_COLUMNS = 6  # thumbnails per row


def show_pick(studio: Studio, pick: MapPick, records: dict[str, ImageRecord], key: str) -> None:
    """The first clicked image, then the box's images (`key`: the map's, for widget keys)."""
    if pick.clicked and pick.clicked[0] in records:
        _show_image(studio, records[pick.clicked[0]])
    if pick.boxed is not None:
        _show_box(studio, pick.boxed, records, key)


def _search_with(record: ImageRecord) -> None:
    preset_gallery_pick(record)
    st.switch_page("pages/search.py")


def _show_image(studio: Studio, record: ImageRecord) -> None:
    picture, about = st.columns([1, 4])
    picture.image(str(studio.thumb_path(record.id)), width="stretch")
    about.markdown(f"**{record.original_name}** · {record.label or 'unlabelled'}")
    if about.button("Search with this image", icon=":material/image_search:"):
        _search_with(record)


def _show_box(
    studio: Studio, boxed: pd.DataFrame, records: dict[str, ImageRecord], key: str
) -> None:
    """`boxed`: the map's points inside the box (image_id, label, …), in the map's order."""
    count = len(boxed)
    shown = [records[i] for i in boxed.image_id if i in records][:BOX_THUMBNAILS]
    more = f" · the first {len(shown)} below" if count > len(shown) else ""
    st.markdown(f"**{count:,} image{'' if count == 1 else 's'} in the box**{more}")
    if not count:
        return
    st.dataframe(label_counts(boxed), hide_index=True, width="content")
    for start in range(0, len(shown), BOX_COLUMNS):
        row = shown[start : start + BOX_COLUMNS]
        for cell, record in zip(st.columns(BOX_COLUMNS), row, strict=False):
            cell.image(str(studio.thumb_path(record.id)), caption=record.label or "unlabelled")
            if cell.button(
                "Search",
                key=f"box-{key}-{record.id}",
                icon=":material/image_search:",
                help=f"Search with {record.original_name}",
            ):
                _search_with(record)
