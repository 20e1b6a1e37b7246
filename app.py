"""Lookalike's entry point: page config, navigation and the shared sidebar; no logic here."""

import streamlit as st

from ui.jobs import ensure_maps
from ui.resources import get_studio
from ui.state import mark_app_frame
from ui.widgets import calm_rendering, sidebar, user_picker

st.set_page_config(page_title="Lookalike", page_icon="assets/logo.svg", layout="wide")

navigation = st.navigation(
    [
        st.Page("pages/search.py", title="Search", icon=":material/image_search:", default=True),
        st.Page("pages/gallery.py", title="Gallery", icon=":material/photo_library:"),
        st.Page("pages/embeddings.py", title="Embeddings", icon=":material/scatter_plot:"),
        st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
        st.Page("pages/metrics.py", title="Metrics", icon=":material/monitoring:"),
        st.Page("pages/index_lab.py", title="Index lab", icon=":material/science:"),
    ]
)
st.logo("assets/logo.svg")
calm_rendering()
mark_app_frame()
studio = get_studio()
studio.encoder()  # load the cached encoder now, not on the first upload
user_picker(studio)
sidebar(studio)
ensure_maps(studio)  # a gallery state or version without its map: the map job computes it
navigation.run()
