"""Seen and unseen categories side by side: each fine-tuned version against its parent on the
test split, over the queries of the categories its training feedback covered ("seen") and of
the rest ("unseen"), as recorded on its card when it was trained (`core.learn.finetune`).

A version that is better on yesterday's categories and worse on tomorrow's is a trap: this is
the table that shows it (the Metrics page), and `ModelVersion.forgetting` is the guard on
activating one.
"""

from __future__ import annotations

from core.studio import Studio

LABEL_SET_METRICS = (("map", "mAP@10"), ("mrr", "MRR@10"))


def seen_unseen_rows(studio: Studio) -> list[dict[str, object]]:
    """One row per version with recorded label-set metrics, oldest first: its parent, how many
    categories it has seen, and for seen / unseen each metric's parent value, its own, and
    their ratio (None where the parent's is 0)."""
    rows: list[dict[str, object]] = []
    for version in studio.versions():
        sets = version.label_sets()
        if not sets:
            continue
        row: dict[str, object] = {
            "version": version.version,
            "parent": version.parent,
            "seen categories": len(version.card.get("seen_labels", [])),
        }
        for name in ("seen", "unseen"):
            found = sets.get(name, {"before": {}, "after": {}})
            for metric, shown in LABEL_SET_METRICS:
                before, after = found["before"].get(metric), found["after"].get(metric)
                row[f"{name} {shown} parent"] = before
                row[f"{name} {shown}"] = after
                row[f"{name} {shown} ×"] = after / before if before and after is not None else None
        row["needs confirmation"] = version.forgetting() is not None
        rows.append(row)
    return rows
