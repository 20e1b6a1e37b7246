"""Lookalike's product code: everything but the Streamlit pages. Never imports streamlit.

Packages follow the loop: `gallery` (images in) → `encoder` (images to vectors) → `search`
(vectors to ranked images) → `store` (catalog and interaction log) → `learn` (feedback to a new
version) → `measure` (did search get better). `studio.Studio` is the facade over one data
directory; `errors`, `choices`, `files` and `config` sit below everything.
"""
