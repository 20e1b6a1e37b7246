"""The Index lab page's figures (Plotly): data frames of lab points in, figures out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from core.measure.index_lab import LabPoint, LabResult, pareto_front
from core.search.nn import get_method


def points_frame(result: LabResult) -> pd.DataFrame:
    """One row per lab point: method, a label of its parameters, and its figures."""
    return pd.DataFrame(
        [
            {
                "method": p.method,
                "params": " ".join(f"{key}={value}" for key, value in p.params.items()),
                "recall": p.recall_at_k,
                "queries/s (one at a time)": p.qps_single,
                "queries/s (batched)": p.qps_batch,
                "build s": p.build_seconds,
                "MB": p.memory_mb,
            }
            for p in result.points
        ]
    )


def recall_speed(result: LabResult, batched: bool = False) -> go.Figure:
    """Recall@k against queries/s (log scale), one line per method in sweep order, the Pareto
    front (single-query speed) as a dashed line."""
    frame = points_frame(result)
    speed = "queries/s (batched)" if batched else "queries/s (one at a time)"
    figure = px.line(
        frame,
        x="recall",
        y=speed,
        color="method",
        markers=True,
        hover_data=["params", "build s", "MB"],
        log_y=True,
    )
    if not batched:
        front = pareto_front(result.points)
        figure.add_trace(
            go.Scatter(
                x=[p.recall_at_k for p in front],
                y=[p.qps_single for p in front],
                mode="lines",
                line={"dash": "dash", "color": "grey"},
                name="Pareto front",
            )
        )
    figure.update_layout(xaxis_title=f"recall@{result.k} against exact search")
    return figure


def build_costs(result: LabResult) -> go.Figure:
    """Bars of build seconds and memory (MB), one bar per distinct build of each method."""
    rows: list[dict[str, object]] = []
    for p in _distinct_builds(result.points):
        label = f"{p.method} {_build_label(p)}".strip()
        rows.append({"index": label, "what": "build s", "value": p.build_seconds})
        rows.append({"index": label, "what": "memory MB", "value": p.memory_mb})
    figure = px.bar(pd.DataFrame(rows), x="index", y="value", facet_row="what", color="what")
    figure.update_yaxes(matches=None, title=None)
    figure.update_layout(showlegend=False, xaxis_title=None)
    return figure


def exact_growth(result: LabResult) -> go.Figure:
    """The hand-written exact search's single-query time at growing gallery sizes, with the
    O(N·D) line (time proportional to N at this D, fitted through the origin)."""
    growth = pd.DataFrame(result.growth)
    figure = px.scatter(growth, x="n", y="ms_per_query", labels={"n": "vectors N"})
    if len(growth):
        n, ms = growth.n.to_numpy(), growth.ms_per_query.to_numpy()
        slope = float(n @ ms / (n @ n))  # least squares through the origin
        line = np.linspace(0, n.max(), 20)
        figure.add_trace(
            go.Scatter(
                x=line,
                y=slope * line,
                mode="lines",
                name=f"O(N·D): {slope * 1e6 / result.dim:.3f} ns per vector-dimension",
            )
        )
    figure.update_layout(yaxis_title="ms per query (one at a time)")
    return figure


def _build_label(point: LabPoint) -> str:
    keys = get_method(point.method).build_keys
    return " ".join(f"{key}={point.params[key]}" for key in keys)


def _distinct_builds(points: Sequence[LabPoint]) -> list[LabPoint]:
    """The first point of each (method, build parameters): the builds the lab made."""
    seen: dict[tuple[str, str], LabPoint] = {}
    for p in points:
        seen.setdefault((p.method, _build_label(p)), p)
    return list(seen.values())
