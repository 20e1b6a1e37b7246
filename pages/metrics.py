"""Metrics: offline ranking metrics by version and by label, online CTR, the worst queries."""

import pandas as pd
import streamlit as st

from core.choices import EVAL_SPLITS, METRIC_NAMES, RELEVANCE_SOURCES
from core.measure.evaluation import (
    EvaluationError,
    Ranking,
    evaluate,
    metric_curves,
    studio_ranking,
    worst_queries,
)
from core.measure.online import click_through, labelled_share, rates_by, similar_share
from core.studio import Studio
from ui.charts import METRIC_LABELS, curves, rate_chart, versions_bars
from ui.resources import get_studio
from ui.state import require_app_frame
from ui.text import METRIC_NOTES

CURVE_KS = range(1, 51)

require_app_frame(__file__)
studio = get_studio()
st.title("Metrics")
if studio.count_images() == 0:
    st.info("The gallery is empty: add images on the Gallery page first.")
    st.stop()


@st.cache_data(show_spinner="Ranking…", max_entries=16)
def ranking(
    _studio: Studio, data_dir: str, version: str, split: str, relevance: str, signature: str
) -> Ranking:
    """Every query of the split ranked 50 deep; cached per gallery and log state."""
    return studio_ranking(_studio, version, split, relevance, max(CURVE_KS))


versions = studio.indexed_versions()
split_column, k_column, relevance_column = st.columns(3)
split = split_column.segmented_control("Split", EVAL_SPLITS, default="all", required=True)
k = k_column.slider("Cutoff k", min_value=1, max_value=50, value=10)
relevance = relevance_column.segmented_control(
    "Relevance",
    RELEVANCE_SOURCES,
    default="labels",
    required=True,
    help="labels: same category · feedback: what people marked similar / graded",
)
chosen = st.multiselect("Model versions", versions, default=versions)
signature = studio.state_signature()
offline, per_label, online, worst = st.tabs(["Offline", "By label", "Online", "Worst queries"])

try:
    evaluations = [evaluate(studio, v, split, k, relevance, reuse=True) for v in chosen]
    rankings = {
        v: ranking(studio, str(studio.settings.data_dir), v, split, relevance, signature)
        for v in chosen
    }
except EvaluationError as exc:
    evaluations, rankings = [], {}
    offline.info(str(exc))

with offline:
    if evaluations:
        counted = ", ".join(f"{e.model}: {e.n_queries} queries" for e in evaluations)
        st.caption(f"Split {split}, k = {k}, relevance from {relevance} ({counted}).")
        st.plotly_chart(versions_bars(evaluations), width="stretch")
        for name in METRIC_NAMES:
            st.caption(METRIC_NOTES[name])
        st.subheader("Metric@k, k = 1…50")
        frames = [metric_curves(r, CURVE_KS).assign(version=v) for v, r in rankings.items()]
        st.plotly_chart(curves(pd.concat(frames)), width="stretch")

with per_label:
    if evaluations:
        version = st.selectbox("Version", [e.model for e in evaluations], key="label_version")
        table = pd.DataFrame(next(e for e in evaluations if e.model == version).per_label)
        st.caption("Worst mAP first; click a column to sort.")
        st.dataframe(
            table.rename(columns=METRIC_LABELS),
            hide_index=True,
            width="stretch",
            column_config={
                label: st.column_config.ProgressColumn(label, min_value=0, max_value=1)
                for label in METRIC_LABELS.values()
            },
        )

with online:
    log = studio.interactions(with_query_id=True)
    ctr, similar, labelled = click_through(log), similar_share(log), labelled_share(log)
    if not ctr.trials:
        st.info("No searches logged yet: search on the Search page, or `python -m core simulate`.")
    else:
        a, b, c, d = st.columns(4)
        a.metric("Impressions", f"{ctr.trials:,}")
        b.metric("CTR", f"{ctr.rate:.3f}", help=f"95 % interval [{ctr.low:.3f}, {ctr.high:.3f}]")
        c.metric(
            "Labelled similar",
            f"{similar.rate:.3f}",
            help=f"95 % interval [{similar.low:.3f}, {similar.high:.3f}]",
        )
        d.metric("Labelled at all", f"{labelled.rate:.3f}", help=f"{labelled.successes:,} results")
        st.caption(METRIC_NOTES["ctr"])
        st.caption(METRIC_NOTES["similar_share"])
        charts = [
            rate_chart(rates_by(log, "model_version"), "model_version", "CTR by version"),
            rate_chart(rates_by(log, "position"), "position", "CTR by position", "line"),
            rate_chart(rates_by(log, "day"), "day", "CTR by day", "line"),
            rate_chart(
                rates_by(log, "model_version", "similar"), "model_version", "Similar by version"
            ),
        ]
        for column, chart in zip(st.columns(2) * 2, charts, strict=True):
            column.plotly_chart(chart, width="stretch")

with worst:
    if rankings:
        version = st.selectbox("Version", list(rankings), key="worst_version")
        metric = st.segmented_control(
            "Worst by", METRIC_NAMES, default="map", format_func=METRIC_LABELS.get, required=True
        )
        records = studio.images_by_id()
        for row in worst_queries(rankings[version], k, n=5, metric=metric).itertuples():
            query = records.get(row.query_id)
            score = getattr(row, metric)
            st.markdown(f"**{row.label or 'unlabelled'}** · {METRIC_LABELS[metric]} {score:.3f}")
            columns = st.columns(min(k, 10) + 1)
            if query is not None:
                columns[0].image(str(studio.thumb_path(query.id)), caption="query", width="stretch")
            for column, image_id, gain in zip(columns[1:], row.results, row.gains, strict=False):
                shown = records.get(image_id)
                mark = "✓" if gain > 0 else "✗"
                column.image(str(studio.thumb_path(image_id)), width="stretch")
                column.caption(f"{mark} {shown.label if shown else ''}")
