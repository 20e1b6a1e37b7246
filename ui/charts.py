"""Plotly figures for the dashboards: data frames in, figures out (no Streamlit calls)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from core.evaluation import Evaluation

METRIC_LABELS = {
    "mrr": "MRR",
    "map": "mAP",
    "precision_at_k": "Precision@k",
    "recall_at_k": "Recall@k",
    "ndcg_at_k": "nDCG@k",
}


def versions_bars(evaluations: Sequence[Evaluation]) -> go.Figure:
    """Grouped bars: one group per metric, one bar per version, 95 % intervals as error bars."""
    rows = [
        {
            "metric": METRIC_LABELS[name],
            "version": e.model,
            "value": value,
            "plus": e.intervals[name][1] - value,
            "minus": value - e.intervals[name][0],
        }
        for e in evaluations
        for name, value in e.metrics().items()
    ]
    frame = pd.DataFrame(rows)
    figure = px.bar(
        frame, x="metric", y="value", color="version", barmode="group",
        error_y="plus", error_y_minus="minus", range_y=[0, 1],
    )  # fmt: skip
    figure.update_layout(yaxis_title=None, xaxis_title=None, legend_title="version")
    return figure


def curves(frame: pd.DataFrame) -> go.Figure:
    """Metric@k lines: `frame` has columns version, k, metric, value."""
    frame = frame.assign(metric=frame.metric.map(METRIC_LABELS))
    figure = px.line(
        frame, x="k", y="value", color="metric", line_dash="version", range_y=[0, 1],
        markers=False,
    )  # fmt: skip
    figure.update_layout(yaxis_title=None, legend_title=None)
    return figure


def rate_chart(table: pd.DataFrame, by: str, title: str, kind: str = "bar") -> go.Figure:
    """A rate with its Wilson interval per group (`core.online.rates_by` output)."""
    table = table.assign(plus=table.high - table.rate, minus=table.rate - table.low)
    x = table[by].astype(str) if by != "position" else table[by]
    hover = "%{y:.3f} of %{customdata} impressions"
    if kind == "line":
        band = {"width": 0}
        figure = go.Figure(
            [
                go.Scatter(
                    x=x, y=table.high, mode="lines", line=band, showlegend=False, hoverinfo="skip",
                ),
                go.Scatter(
                    x=x, y=table.low, mode="lines", fill="tonexty", line=band, name="95 % interval",
                    fillcolor="rgba(79,70,229,0.15)", hoverinfo="skip",
                ),
                go.Scatter(
                    x=x, y=table.rate, mode="lines+markers", name=title,
                    customdata=table.impressions, hovertemplate=hover,
                ),
            ]
        )  # fmt: skip
    else:
        figure = go.Figure(
            go.Bar(
                x=x, y=table.rate, customdata=table.impressions,
                error_y={"type": "data", "array": table.plus, "arrayminus": table.minus},
                hovertemplate=hover,
            )
        )  # fmt: skip
    figure.update_layout(title=title, yaxis_title=None, xaxis_title=by.replace("_", " "))
    if by != "position":
        figure.update_xaxes(type="category")  # days and versions are labels, not a scale
    return figure
