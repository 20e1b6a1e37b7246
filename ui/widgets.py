"""Widgets shared by several pages."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import streamlit as st

from core.studio import SearchResult, Studio


def sidebar(studio: Studio) -> None:
    """Active model and gallery size, on every page."""
    version = studio.active_version()
    st.sidebar.markdown(f"**Model** `{version.version}` · {version.encoder}")
    st.sidebar.markdown(f"**Gallery** {studio.store.count_images():,} images")


def progress_bar(label: str) -> Callable[[int, int], None]:
    """An `st.progress` bar fed by core's `progress(done, total)` callbacks."""
    bar = st.progress(0.0, text=label)

    def update(done: int, total: int) -> None:
        bar.progress(done / total if total else 1.0, text=f"{label} {done}/{total}")

    return update


def result_grid(studio: Studio, results: Sequence[SearchResult], columns: int = 5) -> None:
    """Thumbnails with rank, score and label, `columns` per row."""
    for start in range(0, len(results), columns):
        row = st.columns(columns)
        for column, result in zip(row, results[start : start + columns], strict=False):
            with column:
                st.image(str(studio.thumb_path(result.image_id)), width="stretch")
                st.caption(
                    f"**#{result.rank}** · {result.score:.3f}  \n{result.label or 'unlabelled'}"
                )
