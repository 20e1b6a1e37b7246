"""Plotly figures for the dashboards: data frames in, figures out (no Streamlit calls)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from core.measure.evaluation import Evaluation

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
        frame,
        x="metric",
        y="value",
        color="version",
        barmode="group",
        error_y="plus",
        error_y_minus="minus",
        range_y=[0, 1],
    )
    figure.update_layout(yaxis_title=None, xaxis_title=None, legend_title="version")
    return figure


def curves(frame: pd.DataFrame) -> go.Figure:
    """Metric@k lines: `frame` has columns version, k, metric, value."""
    frame = frame.assign(metric=frame.metric.map(METRIC_LABELS))
    figure = px.line(
        frame,
        x="k",
        y="value",
        color="metric",
        line_dash="version",
        range_y=[0, 1],
        markers=False,
    )
    figure.update_layout(yaxis_title=None, legend_title=None)
    return figure


def rate_chart(table: pd.DataFrame, by: str, title: str, kind: str = "bar") -> go.Figure:
    """A rate with its Wilson interval per group (`core.measure.online.rates_by` output)."""
    table = table.assign(plus=table.high - table.rate, minus=table.rate - table.low)
    x = table[by].astype(str) if by != "position" else table[by]
    hover = "%{y:.3f} of %{customdata} impressions"
    if kind == "line":
        band = {"width": 0}
        figure = go.Figure(
            [
                go.Scatter(
                    x=x,
                    y=table.high,
                    mode="lines",
                    line=band,
                    showlegend=False,
                    hoverinfo="skip",
                ),
                go.Scatter(
                    x=x,
                    y=table.low,
                    mode="lines",
                    fill="tonexty",
                    line=band,
                    name="95 % interval",
                    fillcolor="rgba(79,70,229,0.15)",
                    hoverinfo="skip",
                ),
                go.Scatter(
                    x=x,
                    y=table.rate,
                    mode="lines+markers",
                    name=title,
                    customdata=table.impressions,
                    hovertemplate=hover,
                ),
            ]
        )
    else:
        figure = go.Figure(
            go.Bar(
                x=x,
                y=table.rate,
                customdata=table.impressions,
                error_y={"type": "data", "array": table.plus, "arrayminus": table.minus},
                hovertemplate=hover,
            )
        )
    figure.update_layout(title=title, yaxis_title=None, xaxis_title=by.replace("_", " "))
    if by != "position":
        figure.update_xaxes(type="category")  # days and versions are labels, not a scale
    return figure


FEEDBACK_STYLES = (
    (True, "#16a34a", "labelled similar"),
    (False, "#dc2626", "labelled not similar"),
)


def embedding_map(
    points: pd.DataFrame,
    color: str,
    title: str,
    query: tuple[float, float] | None = None,
    query_links: pd.DataFrame | None = None,
    feedback: pd.DataFrame | None = None,
) -> go.Figure:
    """Scatter of a 2-D layout. `points`: image_id, x, y, label, category, name.

    `query` is drawn as a star with lines to `query_links` (x, y of its results); `feedback`
    holds segments (x0, y0, x1, y1, similar) between a query image and a judged result.
    """
    figure = px.scatter(
        points,
        x="x",
        y="y",
        color=color,
        custom_data=["image_id"],
        hover_data={"label": True, "name": True, "x": False, "y": False, color: False},
        title=title,
        render_mode="webgl",
    )
    figure.update_traces(marker={"size": 6, "opacity": 0.8})
    if feedback is not None and not feedback.empty:
        for similar, colour, name in FEEDBACK_STYLES:
            part = feedback[feedback.similar == similar]
            figure.add_trace(_segments(part, colour, name, dash="solid" if similar else "dot"))
    if query is not None:
        if query_links is not None and not query_links.empty:
            links = query_links.assign(x0=query[0], y0=query[1], x1=query_links.x, y1=query_links.y)
            figure.add_trace(_segments(links, "#111827", "last query → results", dash="solid"))
        figure.add_trace(
            go.Scatter(
                x=[query[0]],
                y=[query[1]],
                mode="markers",
                name="last query",
                marker={
                    "symbol": "star",
                    "size": 18,
                    "color": "#f59e0b",
                    "line": {"width": 1, "color": "#111827"},
                },
            )
        )
    figure.update_layout(
        xaxis={"visible": False},
        yaxis={"visible": False},
        legend={"itemsizing": "constant"},
        height=620,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        dragmode="select",
    )
    return figure


def _segments(frame: pd.DataFrame, colour: str, name: str, dash: str) -> go.Scatter:
    """Many line segments as one trace (None breaks the line between segments)."""
    xs: list[float | None] = []
    ys: list[float | None] = []
    for row in frame.itertuples():
        xs += [row.x0, row.x1, None]
        ys += [row.y0, row.y1, None]
    return go.Scatter(
        x=xs,
        y=ys,
        mode="lines",
        name=name,
        hoverinfo="skip",
        line={"color": colour, "width": 1, "dash": dash},
        opacity=0.6,
    )


def pairs_balance(summary: dict[str, Any], top: int = 25) -> go.Figure:
    """Grouped bars of training pairs per anchor label, before and after re-balancing (the
    `summary` of `core.learn.pairs.TrainingPairs`), the `top` largest labels."""
    balance = pd.DataFrame(
        {"before": pd.Series(summary["labels_before"]), "after": pd.Series(summary["labels_after"])}
    ).fillna(0)
    balance = balance.sort_values("before", ascending=False).head(top).reset_index(names="label")
    return px.bar(
        balance.melt(id_vars="label", var_name="re-balancing", value_name="pairs"),
        x="label",
        y="pairs",
        color="re-balancing",
        barmode="group",
        title=f"Pairs per anchor label, before and after re-balancing (top {top})",
    )


def loss_curves(losses: Sequence[dict[str, float]]) -> go.Figure:
    """Train / validation loss per epoch from a run's `losses` rows ({epoch, train, val})."""
    frame = pd.DataFrame(losses).melt(id_vars="epoch", var_name="loss", value_name="value")
    return px.line(frame, x="epoch", y="value", color="loss", markers=True, title="Loss per epoch")
