"""Index lab: the seed's nearest-neighbour methods side by side on a version's gallery.

Results are read from the lab's store, never computed here: "Run the lab" starts the lab job in
the background (`core.measure.lab_job`) and the page follows its progress; a stored run shows
at once, with a note when the gallery has changed since.
"""

import streamlit as st

from core.measure.index_lab import DEFAULT_QUERIES, client_overhead_ms, fastest_at
from core.measure.lab_job import LabRequest, LabStore
from core.search.nn import get_method, list_methods
from ui.jobs import ensure_lab, follow_job
from ui.lab_charts import build_costs, exact_growth, points_frame, recall_speed
from ui.resources import get_studio
from ui.state import require_app_frame
from ui.text import LAB_CAPTION

require_app_frame(__file__)
studio = get_studio()
st.title("Index lab")
st.caption(LAB_CAPTION)
versions = studio.indexed_versions()
if not versions:
    st.info("The lab needs a gallery: add images on the Gallery page first.")
    st.stop()

version_column, queries_column, k_column = st.columns([2, 1, 1])
active = studio.active_version().version
version = version_column.selectbox(
    "Model version", versions, index=versions.index(active) if active in versions else 0
)
n_queries = queries_column.number_input(
    "Held-out queries", min_value=1, max_value=5_000, value=DEFAULT_QUERIES
)
k = k_column.number_input("k", min_value=1, max_value=100, value=10)
methods = st.multiselect("Methods", list_methods(), default=list_methods())
request = LabRequest(version, tuple(methods), int(n_queries), int(k))

stored = LabStore(studio.settings.lab_dir).get(version)
if st.button("Run the lab" if stored is None else "Run the lab again", disabled=not methods):
    ensure_lab(studio, request, retry=True)
if ensure_lab(studio, request, start=False) is not None:  # a lab job runs (or failed)
    follow_job("Index lab", lambda retry: ensure_lab(studio, request, retry=retry, start=False))
if stored is None:
    st.info("No lab run for this version yet.")
    st.stop()

result = stored.result
changed = stored.signature != studio.image_signature()
st.caption(
    f"Measured {stored.created_at[:16].replace('T', ' ')} UTC on {result.n_vectors:,} vectors × "
    f"{result.dim} dims, {result.n_queries} held-out queries, k = {result.k}"
    + (" · the gallery has changed since." if changed else ".")
)
best = fastest_at(result.points, 0.98)
exact = next((p for p in result.points if p.method == "exact"), None)
if best is not None:
    speedup = f", {best.qps_single / exact.qps_single:.0f}× exact search" if exact else ""
    st.markdown(
        f"Fastest at recall@{result.k} ≥ 0.98: **{best.method}** "
        f"({', '.join(f'{key}={v}' for key, v in best.params.items())}) at "
        f"{best.qps_single:,.0f} queries/s one at a time{speedup}."
    )

curves, costs, growth, table = st.tabs(["Recall vs speed", "Build and memory", "Exact", "Table"])
with curves:
    batched = st.toggle("Batched queries", help="all queries in one call instead of one by one")
    st.plotly_chart(recall_speed(result, batched), width="stretch")
    overhead = client_overhead_ms(result.points)
    if overhead:
        st.caption(
            "Chroma's client adds per query, against faiss's bare HNSW at the same settings: "
            + ", ".join(f"ef {ef}: {ms:+.2f} ms" for ef, ms in sorted(overhead.items()))
        )
with costs:
    st.plotly_chart(build_costs(result), width="stretch")
with growth:
    if result.growth:
        st.plotly_chart(exact_growth(result), width="stretch")
    else:
        st.caption("Measured when the lab runs the hand-written exact method.")
with table:
    st.dataframe(points_frame(result), hide_index=True, width="stretch")

st.subheader("What each method trades")
for name in dict.fromkeys(p.method for p in result.points):
    st.markdown(f"**{name}** — {get_method(name).note}")
