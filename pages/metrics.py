"""Metrics: offline ranking metrics by version and by label, bases side by side, seen and
unseen categories against each parent, online CTR, the worst queries.

The offline numbers are read, never computed here: stored evaluation runs (the bars, the
per-label table) and cached rankings (the curves, the worst queries). What is missing for the
chosen settings the evaluation job computes in the background, its progress shown on the page,
while what is stored shows at once (`core.measure.eval_job`). The one figure the page itself
may compute is a base's speed, when a person presses "Time …" (a few seconds per encoder).
"""

import pandas as pd
import streamlit as st

from core.choices import EVAL_SPLITS, METRIC_NAMES, RELEVANCE_SOURCES
from core.measure.bases import SPEED_BATCH, compare_bases, measure_speed, unmeasured
from core.measure.eval_job import (
    CURVE_DEPTH,
    EvalRequest,
    current_signature,
    missing_evaluations,
    stored_evaluations,
)
from core.measure.evaluation import worst_queries
from core.measure.online import click_through, labelled_share, rates_by, similar_share
from core.measure.seen import seen_unseen_rows
from ui.charts import METRIC_LABELS, curves, rate_chart, versions_bars
from ui.jobs import ensure_evaluations, follow_job, ranking_cache
from ui.resources import get_studio
from ui.state import require_app_frame
from ui.text import METRIC_NOTES

require_app_frame(__file__)
studio = get_studio()
st.title("Metrics")
if studio.count_images() == 0:
    st.info("The gallery is empty: add images on the Gallery page first.")
    st.stop()


versions = studio.indexed_versions()
split_column, k_column, relevance_column = st.columns(3)
split = split_column.segmented_control("Split", EVAL_SPLITS, default="all", required=True)
k = k_column.slider("Cutoff k", min_value=1, max_value=CURVE_DEPTH, value=10)
relevance = relevance_column.segmented_control(
    "Relevance",
    RELEVANCE_SOURCES,
    default="labels",
    required=True,
    help="labels: same category · feedback: what people marked similar / graded",
)
chosen = st.multiselect("Model versions", versions, default=versions)
request = EvalRequest(tuple(chosen), split, k, relevance)
stored = stored_evaluations(studio.store, request)
evaluations = [stored[v].evaluation for v in chosen if v in stored]
signature = current_signature(studio.store, relevance)
rankings = ranking_cache(studio)
curve_frames = {v: rankings.curves(v, split, relevance, signature) for v in chosen}
ranked = [v for v in chosen if curve_frames[v] is not None]
offline, per_label, online, worst = st.tabs(["Offline", "By label", "Online", "Worst queries"])

with offline:
    if chosen and missing_evaluations(studio.store, rankings, request):
        follow_job("Evaluating", lambda retry: ensure_evaluations(studio, request, retry=retry))
    if evaluations:
        counted = ", ".join(f"{e.model}: {e.n_queries} queries" for e in evaluations)
        st.caption(f"Split {split}, k = {k}, relevance from {relevance} ({counted}).")
        if stale := [v for v, s in stored.items() if not s.current]:
            st.caption(f"{', '.join(stale)}: measured before the latest changes; updating.")
        st.plotly_chart(versions_bars(evaluations), width="stretch")
        for name in METRIC_NAMES:
            st.caption(METRIC_NOTES[name])
    if ranked:
        st.subheader("Metric@k, k = 1…50")
        frames = [frame.assign(version=v) for v, frame in curve_frames.items() if frame is not None]
        st.plotly_chart(curves(pd.concat(frames)), width="stretch")
    st.subheader("Bases side by side")
    st.caption(
        f"The versions without a parent (one per encoder choice: Train page, New base) at split "
        f"{split}, k = {k}, relevance from {relevance}, with 95 % intervals. images/s: the "
        f"encoder's forward pass on this machine at its input size and precision, batch "
        f"{SPEED_BATCH}."
    )
    untimed = unmeasured(studio)
    if untimed and st.button(f"Time {', '.join(untimed)}", help="A few seconds per encoder"):
        with st.spinner("Timing the encoders' forward pass…"):
            for version in untimed:
                measure_speed(studio, version)
        st.rerun()
    by_version = {e.model: e for e in evaluations}
    st.dataframe(
        pd.DataFrame([row.as_row() for row in compare_bases(studio, by_version)]),
        hide_index=True,
        width="stretch",
    )
    st.subheader("Seen and unseen categories")
    st.caption(
        "Each fine-tuned version against its parent on the test split at k = 10, recorded when "
        "it was trained: over the queries of the categories its feedback covered (seen) and of "
        "the rest (unseen). Activating one that ranks unseen categories over 1 % worse than its "
        "parent needs a confirmation on the Train page."
    )
    if label_sets := seen_unseen_rows(studio):
        st.dataframe(pd.DataFrame(label_sets), hide_index=True, width="stretch")
    else:
        st.caption("No version was fine-tuned on feedback yet.")

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
    if ranked:
        version = st.selectbox("Version", ranked, key="worst_version")
        metric = st.segmented_control(
            "Worst by", METRIC_NAMES, default="map", format_func=METRIC_LABELS.get, required=True
        )
        ranking = rankings.get(version, split, relevance, signature)
        rows = [] if ranking is None else list(worst_queries(ranking, k, 5, metric).itertuples())
        records = studio.images([i for row in rows for i in [row.query_id, *row.results]])
        for row in rows:
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
