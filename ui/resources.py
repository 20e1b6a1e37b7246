"""Cached resources for the pages: the encoder, fine-tuned heads and the index client
(STYLE.md habit 6).

The catalog is never cached: `Studio` opens a short SQLite connection per operation, so a fresh
`Studio` per script run is cheap and thread-safe.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st
import torch

from core.config import Settings, load_settings
from core.encoder.model import Encoder, load_encoder
from core.encoder.versions import load_heads, load_tower
from core.search.index import VectorIndex
from core.studio import Studio


@st.cache_resource(show_spinner="Loading the image encoder…")
def cached_encoder(name: str) -> Encoder:
    return load_encoder(name)


@st.cache_resource(show_spinner=False)
def cached_heads(models_dir: str, files: tuple[str, ...]) -> list[torch.nn.Module]:
    """A fine-tuned version's adapters, read once per server rather than on every rerun."""
    return load_heads(Path(models_dir), files)


@st.cache_resource(show_spinner="Loading the fine-tuned encoder…", max_entries=4)
def cached_tower(name: str, models_dir: str, files: tuple[str, ...]) -> Encoder:
    """A `partial` / `full` version's encoder (a copy of the base with its tower weights)."""
    return load_tower(cached_encoder(name), Path(models_dir), files)


@st.cache_resource(show_spinner=False)
def cached_index(key: str, _settings: Settings) -> VectorIndex:
    """One index client per (data directory, index settings); `key` says which."""
    return VectorIndex.from_settings(_settings)


def get_studio() -> Studio:
    """The studio for this server's data directory ($LOOKALIKE_DATA or ./data)."""
    settings = load_settings()
    return Studio(
        settings,
        index=cached_index(f"{settings.data_dir.resolve()}|{settings.index}", settings),
        encoder_loader=cached_encoder,
        heads_loader=lambda folder, files: cached_heads(str(folder), tuple(files)),
        tower_loader=lambda base, folder, files: cached_tower(base.name, str(folder), tuple(files)),
    )
