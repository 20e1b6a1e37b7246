"""core.measure.online against hand-counted logs, the Wilson formula written out, and plain-loop
references on a random log."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from core.measure import online
from core.measure.metrics import wilson_interval
from core.measure.online import Rate
from tests.helpers import SEED_COLUMNS_WITH_QUERY_ID

COLUMNS = SEED_COLUMNS_WITH_QUERY_ID
NOON = "2026-11-25T12:00:00.000+00:00"


def row(
    query_id: int,
    image: str,
    kind: str,
    *,
    position: int = 1,
    user: int = 1,
    model: str = "base",
    ts: str = NOON,
    value: float | None = None,
) -> dict[str, object]:
    """One log row, shaped like `FeedbackLog.interactions(with_query_id=True)`."""
    return {
        "UserID": user,
        "QueryImageID": f"q{query_id}",
        "DisplayedImageID": image,
        "PositionInDisplayedList": position,
        "InteractionType": kind,
        "Location": None,
        "Timestamp": ts,
        "ModelVersion": model,
        "Value": value,
        "QueryID": query_id,
    }


def shown(query_id: int, images: list[str], **kw: object) -> list[dict[str, object]]:
    """The impressions of one query: `images` at positions 1…n."""
    return [
        row(query_id, image, "impression", position=p, **kw)  # type: ignore[arg-type]
        for p, image in enumerate(images, start=1)
    ]


def make_log(rows: list[dict[str, object]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.astype(
        {
            "UserID": "int64",
            "PositionInDisplayedList": "int64",
            "Value": "float64",
            "QueryID": "int64",
        }
    )


def wilson_ref(s: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)."""
    p = s / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denom = 1 + z * z / n
    return ((centre - half) / denom, (centre + half) / denom)


# --- click-through ---------------------------------------------------------------------------


def test_repeated_clicks_on_one_result_count_once() -> None:
    log = make_log(
        [
            *shown(1, ["a", "b", "c"]),
            row(1, "a", "click"),
            row(1, "a", "click"),
            row(1, "a", "click", position=1),
            row(1, "b", "click", position=2),
        ]
    )
    rate = online.click_through(log)
    assert (rate.successes, rate.trials) == (2, 3)
    assert rate.rate == pytest.approx(2 / 3)
    assert (rate.low, rate.high) == pytest.approx(wilson_ref(2, 3))


def test_same_image_in_two_queries_is_kept_apart_by_query_id() -> None:
    log = make_log([*shown(1, ["a"]), *shown(2, ["a"]), row(2, "a", "click")])
    rate = online.click_through(log)
    assert (rate.successes, rate.trials) == (1, 2)
    table = online.impressions_table(log).set_index("query_id")
    assert not table.loc[1, "clicked"]
    assert table.loc[2, "clicked"]


def test_click_without_impression_is_ignored() -> None:
    log = make_log([*shown(1, ["a"]), row(1, "zzz", "click"), row(9, "a", "click")])
    rate = online.click_through(log)
    assert (rate.successes, rate.trials) == (0, 1)


def test_impressions_table_columns_and_types() -> None:
    log = make_log([*shown(1, ["a", "b"], user=7, model="ft-0001"), row(1, "b", "click")])
    table = online.impressions_table(log)
    assert list(table.columns) == list(online.TABLE_COLUMNS)
    assert table["displayed_image_id"].tolist() == ["a", "b"]
    assert table["position"].tolist() == [1, 2]
    assert table["user_id"].tolist() == [7, 7]
    assert table["query_id"].tolist() == [1, 1]
    assert table["model_version"].tolist() == ["ft-0001", "ft-0001"]
    assert table["day"].tolist() == ["2026-11-25", "2026-11-25"]
    assert table["clicked"].tolist() == [False, True]
    for col in ("clicked", "labelled", "similar"):
        assert table[col].dtype == bool


# --- grouping --------------------------------------------------------------------------------


def test_position_bias_curve_with_wilson_bounds() -> None:
    rows: list[dict[str, object]] = []
    for q in range(1, 5):
        rows += shown(q, [f"x{q}", f"y{q}"])
    rows += [row(q, f"x{q}", "click", position=1) for q in (1, 2, 3)]  # position 1: 3 of 4
    rows += [row(4, "y4", "click", position=2), row(4, "y4", "click", position=2)]  # 1 of 4
    table = online.rates_by(make_log(rows), "position")

    assert list(table.columns) == ["position", "impressions", "successes", "rate", "low", "high"]
    assert table["position"].tolist() == [1, 2]
    assert table["impressions"].tolist() == [4, 4]
    assert table["successes"].tolist() == [3, 1]
    assert table["rate"].tolist() == pytest.approx([0.75, 0.25])
    for (low, high), s in zip(zip(table["low"], table["high"], strict=True), (3, 1), strict=True):
        assert (low, high) == pytest.approx(wilson_ref(s, 4))
    # the textbook values for 3/4 and 1/4 at 95 %
    assert table.loc[0, ["low", "high"]].tolist() == pytest.approx([0.3006, 0.9544], abs=1e-4)
    assert table.loc[1, ["low", "high"]].tolist() == pytest.approx([0.0456, 0.6994], abs=1e-4)


def test_by_day_splits_at_utc_midnight_and_uses_the_impressions_day() -> None:
    log = make_log(
        [
            *shown(1, ["a"], ts="2026-11-25T23:59:59.999+00:00"),
            row(1, "a", "click", ts="2026-11-26T00:00:05.000+00:00"),  # belongs to the 25th
            *shown(2, ["b"], ts="2026-11-26T00:00:00.000+00:00"),
            *shown(3, ["c"], ts="2026-11-26T01:30:00.000+02:00"),  # 23:30 UTC on the 25th
        ]
    )
    table = online.rates_by(log, "day")
    assert table["day"].tolist() == ["2026-11-25", "2026-11-26"]
    assert table["impressions"].tolist() == [2, 1]
    assert table["successes"].tolist() == [1, 0]
    assert table["rate"].tolist() == pytest.approx([0.5, 0.0])
    assert table.loc[1, ["low", "high"]].tolist() == pytest.approx(wilson_ref(0, 1))


def test_by_model_version_and_user() -> None:
    log = make_log(
        [
            *shown(1, ["a", "b"], model="ft-0001", user=2),
            row(1, "a", "click"),
            *shown(2, ["a", "b", "c"], model="base", user=1),
            row(2, "a", "click"),
            row(2, "b", "click"),
            row(2, "c", "click"),
        ]
    )
    by_model = online.rates_by(log, "model_version")
    assert by_model["model_version"].tolist() == ["base", "ft-0001"]
    assert by_model["impressions"].tolist() == [3, 2]
    assert by_model["successes"].tolist() == [3, 1]
    assert by_model["rate"].tolist() == pytest.approx([1.0, 0.5])
    by_user = online.rates_by(log, "user_id")
    assert by_user["user_id"].tolist() == [1, 2]
    assert by_user["successes"].tolist() == [3, 1]


# --- labels ----------------------------------------------------------------------------------


def label_log() -> pd.DataFrame:
    return make_log(
        [
            *shown(1, ["a", "b", "c", "d", "e"]),
            row(1, "a", "similar", value=1),  # similar
            row(1, "b", "similar", value=1),
            row(1, "b", "similar", value=0),  # undone: unlabelled
            row(1, "c", "similar", value=1),
            row(1, "c", "not_similar", value=1),  # relabelled: labelled, not similar
            row(1, "d", "grade", value=3),  # a grade is not a label
            row(1, "e", "not_similar", value=1),
            row(1, "e", "not_similar", value=0),
            row(1, "e", "similar", value=1),  # similar in the end
            *shown(2, ["a"]),  # same image, other query: unlabelled
        ]
    )


def test_similar_share_with_undo_and_relabel() -> None:
    rate = online.similar_share(label_log())
    assert (rate.successes, rate.trials) == (2, 6)  # a and e of query 1
    assert (rate.low, rate.high) == pytest.approx(wilson_ref(2, 6))
    table = online.impressions_table(label_log())
    assert table["similar"].tolist() == [True, False, False, False, True, False]


def test_labelled_share() -> None:
    rate = online.labelled_share(label_log())
    assert (rate.successes, rate.trials) == (3, 6)  # a, c, e
    assert rate.rate == pytest.approx(0.5)
    table = online.impressions_table(label_log())
    assert table["labelled"].tolist() == [True, False, True, False, True, False]


def test_similar_by_position() -> None:
    table = online.rates_by(label_log(), "position", outcome="similar")
    assert table["position"].tolist() == [1, 2, 3, 4, 5]
    assert table["impressions"].tolist() == [2, 1, 1, 1, 1]
    assert table["successes"].tolist() == [1, 0, 0, 0, 1]


# --- summary, empty log, errors --------------------------------------------------------------


def test_online_summary_is_json_ready() -> None:
    log = label_log()
    summary = online.online_summary(log)
    assert json.loads(json.dumps(summary)) == summary
    assert summary["impressions"] == 6
    assert summary["ctr"] == {"successes": 0, "trials": 6, "rate": 0.0, **_bounds(0, 6)}
    assert summary["similar_share"] == online.similar_share(log).as_dict()
    assert summary["labelled_share"] == online.labelled_share(log).as_dict()


def _bounds(s: int, n: int) -> dict[str, float]:
    low, high = wilson_interval(s, n)
    return {"low": low, "high": high}


@pytest.mark.parametrize(
    "log", [make_log([]), pd.DataFrame(columns=COLUMNS)], ids=["typed", "untyped"]
)
def test_empty_log_gives_zeros_and_empty_tables(log: pd.DataFrame) -> None:
    zero = Rate(successes=0, trials=0, rate=0.0, low=0.0, high=1.0)
    assert online.click_through(log) == zero
    assert online.similar_share(log) == zero
    assert online.labelled_share(log) == zero
    summary = online.online_summary(log)
    assert summary == {
        "impressions": 0,
        "ctr": zero.as_dict(),
        "similar_share": zero.as_dict(),
        "labelled_share": zero.as_dict(),
    }
    json.dumps(summary)
    table = online.impressions_table(log)
    assert table.empty
    assert list(table.columns) == list(online.TABLE_COLUMNS)
    for by in online.GROUPINGS:
        for outcome in online.OUTCOMES:
            rates = online.rates_by(log, by, outcome)
            assert rates.empty
            assert list(rates.columns) == [by, "impressions", "successes", "rate", "low", "high"]


def test_log_with_only_actions_has_no_impressions() -> None:
    log = make_log([row(1, "a", "click"), row(1, "a", "similar", value=1)])
    assert online.click_through(log).trials == 0
    assert online.rates_by(log, "position").empty


def test_missing_query_id_says_how_to_read_the_log() -> None:
    log = make_log(shown(1, ["a"])).drop(columns="QueryID")
    with pytest.raises(ValueError, match=r"with_query_id=True"):
        online.click_through(log)
    with pytest.raises(ValueError, match=r"with_query_id=True"):
        online.rates_by(log, "day")


def test_missing_other_column_is_named() -> None:
    log = make_log(shown(1, ["a"])).drop(columns="Timestamp")
    with pytest.raises(ValueError, match="Timestamp"):
        online.impressions_table(log)
    old_names = make_log(shown(1, ["a"])).rename(columns=str.lower).assign(QueryID=1)
    with pytest.raises(ValueError, match="missing the columns DisplayedImageID"):
        online.impressions_table(old_names)


def test_bad_grouping_or_outcome_names_the_valid_ones() -> None:
    log = make_log(shown(1, ["a"]))
    with pytest.raises(ValueError, match="model_version, position, day, user_id"):
        online.rates_by(log, "hour")
    with pytest.raises(ValueError, match="clicked, similar, labelled"):
        online.rates_by(log, "position", outcome="grade")


# --- random log against plain loops ----------------------------------------------------------


def random_log(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pool = [f"img{i}" for i in range(8)]
    rows: list[dict[str, object]] = []
    for q in range(1, 41):
        images = list(rng.choice(pool, size=int(rng.integers(1, 7)), replace=False))
        rows += shown(q, images, model=str(rng.choice(["base", "ft-0001"])))
        for _ in range(int(rng.integers(0, 6))):
            image = str(rng.choice(pool))  # sometimes not shown in q: must be ignored
            kind = str(rng.choice(["click", "click", "similar", "not_similar", "grade"]))
            value = None if kind == "click" else float(rng.integers(0, 2))
            target = q if rng.random() < 0.9 else q + 100  # a few clicks on unknown queries
            rows.append(row(target, image, kind, value=value))
    return make_log(rows)


def loop_reference(log: pd.DataFrame) -> tuple[int, int, int, int]:
    """(impressions, clicked, similar, labelled), counted row by row."""
    records = log.to_dict("records")
    impressions = {
        (r["QueryID"], r["DisplayedImageID"])
        for r in records
        if r["InteractionType"] == "impression"
    }
    clicked = set()
    latest: dict[tuple[object, object], tuple[str, float]] = {}
    for r in records:
        key = (r["QueryID"], r["DisplayedImageID"])
        if r["InteractionType"] == "click" and key in impressions:
            clicked.add(key)
        if r["InteractionType"] in ("similar", "not_similar"):
            latest[key] = (r["InteractionType"], r["Value"])
    labelled = [k for k in impressions if k in latest and latest[k][1] == 1]
    similar = [k for k in labelled if latest[k][0] == "similar"]
    return len(impressions), len(clicked), len(similar), len(labelled)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_log_matches_plain_loops(seed: int) -> None:
    log = random_log(seed)
    n, clicks, similar, labelled = loop_reference(log)
    rate = online.click_through(log)
    assert (rate.successes, rate.trials) == (clicks, n)
    assert rate.rate == pytest.approx(clicks / n)
    assert (rate.low, rate.high) == pytest.approx(wilson_ref(clicks, n))
    assert online.similar_share(log).successes == similar
    assert online.labelled_share(log).successes == labelled
    by_position = online.rates_by(log, "position")
    assert by_position["impressions"].sum() == n
    assert by_position["successes"].sum() == clicks
