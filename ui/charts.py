"""Figures for the dashboards: data frames in, figures out (no Streamlit calls). Plotly for the
Metrics and Train pages; the embedding map is Vega-Lite (Altair), which a browser draws sooner."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from core.measure.evaluation import Evaluation
from core.search.nn.spatial import MapTree

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
QUERY_STYLE = ("#111827", "last query → results")
SOLID, DOTTED = [1, 0], [2, 2]  # Vega-Lite strokeDash: dash, gap (px)
# A five-pointed star in Vega's custom-shape square (-1..1, y down): Vega 6 has no "star" shape
# and reads the name as an SVG path ("Invalid SVG path" in the console, no legends drawn).
STAR = (
    "M0 -1L0.235 -0.324L0.951 -0.309L0.38 0.124L0.588 0.809L0 0.4L-0.588 0.809L-0.38 0.124"
    "L-0.951 -0.309L-0.235 -0.324Z"
)
# The names of the map's selection parameters: the keys of `st.altair_chart(...).selection`.
MAP_POINT = "map_point"  # clicked points (shift-click adds): [{"image_id": …}, …]
MAP_BOX = "map_box"  # a dragged box: {"x": [lo, hi], "y": [lo, hi]}
MAP_SELECTIONS = (MAP_POINT, MAP_BOX)  # legend clicks only filter, without a rerun


def embedding_map(
    points: pd.DataFrame,
    color: str,
    title: str,
    query: tuple[float, float] | None = None,
    query_links: pd.DataFrame | None = None,
    feedback: pd.DataFrame | None = None,
) -> alt.LayerChart:
    """Vega-Lite scatter of a 2-D layout. `points`: image_id, x, y, label, category, name.

    `query` is drawn as a star with lines to `query_links` (x, y of its results); `feedback`
    holds segments (x0, y0, x1, y1, similar) between a query image and a judged result.
    Vega-Lite rather than Plotly: a fresh Chromium session drew the demo map (795 points) 2.0–2.8 s
    after opening the page, against 3.1–4.7 s with Plotly, whose 4.6 MB bundle (Vega's: 0.8 MB)
    Chromium loads for a session's first chart. Altair's 5,000-row limit does not apply through
    `st.altair_chart`, which swaps in its own data transformer (Arrow datasets); a bare
    `chart.to_dict()` of 20,000 points raises `MaxRowsError`.
    """
    x = alt.X("x:Q", axis=None, scale=alt.Scale(zero=False))
    y = alt.Y("y:Q", axis=None, scale=alt.Scale(zero=False))
    layers = [_points(points, color, x, y)]
    segments = _segments(query, query_links, feedback)
    if not segments.empty:
        layers.append(_lines(segments))
    if query is not None:
        star = pd.DataFrame({"x": [query[0]], "y": [query[1]], "what": ["last query"]})
        layers.append(
            alt.Chart(star)
            .mark_point(shape=STAR, size=320, filled=True, opacity=1, strokeWidth=1)
            .encode(
                x=x,
                y=y,
                fill=alt.value("#f59e0b"),
                stroke=alt.value("#111827"),
                tooltip=alt.Tooltip("what:N", title=None),
            )
        )
    return (
        alt.layer(*layers)
        .resolve_scale(color="independent", strokeDash="independent")  # points, lines: two legends
        .properties(title=title, height=620)
    )


def _points(points: pd.DataFrame, color: str, x: alt.X, y: alt.Y) -> alt.Chart:
    """The images, coloured by `color`; carry their image_id for the selections."""
    picked = alt.selection_point(name=MAP_POINT, fields=["image_id"])
    box = alt.selection_interval(name=MAP_BOX, encodings=["x", "y"])
    legend = alt.selection_point(name="map_legend", fields=[color], bind="legend")
    opacity = (
        alt.when(legend, picked, box)
        .then(alt.value(0.8))
        .when(legend)
        .then(alt.value(0.25))  # shown, outside the selection
        .otherwise(alt.value(0.04))  # filtered out in the legend
    )
    return (
        alt.Chart(points[["image_id", "x", "y", "label", "category", "name"]], name="points")
        .mark_circle(size=30)
        .encode(
            x=x,
            y=y,
            color=alt.Color(f"{color}:N", scale=alt.Scale(scheme="tableau20"), title=color),
            opacity=opacity,
            tooltip=[alt.Tooltip("label:N"), alt.Tooltip("name:N", title="file")],
        )
        .add_params(picked, box, legend)
    )


def _segments(
    query: tuple[float, float] | None,
    query_links: pd.DataFrame | None,
    feedback: pd.DataFrame | None,
) -> pd.DataFrame:
    """Every line of the map, one row each: x0, y0, x1, y1, kind (a `FEEDBACK_STYLES` or
    `QUERY_STYLE` name)."""
    parts = []
    if feedback is not None and not feedback.empty:
        for similar, _, name in FEEDBACK_STYLES:
            part = feedback[feedback.similar == similar]
            parts.append(part[["x0", "y0", "x1", "y1"]].assign(kind=name))
    if query is not None and query_links is not None and not query_links.empty:
        links = pd.DataFrame({"x1": query_links.x, "y1": query_links.y})
        parts.append(links.assign(x0=query[0], y0=query[1], kind=QUERY_STYLE[1]))
    columns = ["x0", "y0", "x1", "y1", "kind"]
    return pd.concat([p[columns] for p in parts], ignore_index=True) if parts else pd.DataFrame()


def _lines(segments: pd.DataFrame) -> alt.Chart:
    """Feedback pairs (similar solid, not similar dotted) and the last query's result lines."""
    styles = [
        (name, colour, SOLID if similar else DOTTED) for similar, colour, name in FEEDBACK_STYLES
    ]
    styles.append((QUERY_STYLE[1], QUERY_STYLE[0], SOLID))
    names, colours, dashes = (list(column) for column in zip(*styles, strict=True))
    return (
        alt.Chart(segments)
        .mark_rule(strokeWidth=1, opacity=0.6)
        .encode(
            x=alt.X("x0:Q", axis=None, scale=alt.Scale(zero=False)),
            y=alt.Y("y0:Q", axis=None, scale=alt.Scale(zero=False)),
            x2="x1:Q",
            y2="y1:Q",
            color=alt.Color("kind:N", scale=alt.Scale(domain=names, range=colours), title=None),
            strokeDash=alt.StrokeDash(
                "kind:N", scale=alt.Scale(domain=names, range=dashes), title=None
            ),  # same field and title as the colour: one legend, its symbols dashed too
        )
    )


Within = Callable[[float, float, float, float], np.ndarray]  # (x0, x1, y0, y1) -> (k,) rows


@dataclass(frozen=True, eq=False)
class MapPick:
    """What an `embedding_map` selection picked."""

    clicked: list[str]  # image ids of the clicked points, in click order
    boxed: pd.DataFrame | None  # the rows of the map's points inside the dragged box; None: no box

    @property
    def ids(self) -> list[str]:
        """The clicked images, then the box's others in the map's order."""
        clicked = set(self.clicked)
        inside = [] if self.boxed is None else list(self.boxed.image_id)
        return self.clicked + [i for i in inside if i not in clicked]


def map_pick(
    selection: Mapping[str, Any], points: pd.DataFrame, within: Within | None = None
) -> MapPick | None:
    """What `st.altair_chart(...).selection` of an `embedding_map` picked: the clicked points
    (`MAP_POINT`: [{"image_id": …}, …]) and the rows of `points` (image_id, x, y, …) inside the
    dragged box (`MAP_BOX`: {"x": [lo, hi], "y": [lo, hi]}), found by `within` (the map's
    R-tree, `ProjectionCache.tree(...).within`; by default one built over `points`). An empty
    selection is `{}`; no selection, None."""
    clicked = [p["image_id"] for p in selection.get(MAP_POINT) or [] if "image_id" in p]
    box = selection.get(MAP_BOX) or {}
    boxed = None
    if "x" in box and "y" in box:
        if within is None:
            within = MapTree.build(points[["x", "y"]].to_numpy()).within
        boxed = points.iloc[within(*box["x"], *box["y"])]
    return MapPick(clicked, boxed) if clicked or boxed is not None else None


def map_selection(
    selection: Mapping[str, Any], points: pd.DataFrame, within: Within | None = None
) -> list[str]:
    """The image ids a selection picked (`map_pick`): the clicked points first, then those
    inside the box in the order of `points`; no selection, []."""
    pick = map_pick(selection, points, within)
    return [] if pick is None else pick.ids


def label_counts(points: pd.DataFrame) -> pd.DataFrame:
    """Images per label among `points` (a `MapPick.boxed`): label, images; most first."""
    counts = points.label.value_counts(sort=False).rename("images").rename_axis("label")
    table = counts.reset_index()
    return table.sort_values(["images", "label"], ascending=[False, True], ignore_index=True)


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
