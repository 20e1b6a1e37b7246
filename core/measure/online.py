"""Online metrics from the interaction log: pure functions of a DataFrame, no I/O.

The log is `FeedbackLog.interactions(with_query_id=True)`: one row per event, oldest first, with
the seed's columns `UserID, QueryImageID, DisplayedImageID, PositionInDisplayedList,
InteractionType, Location, Timestamp, ModelVersion, Value, QueryID`. Everything here is counted
per *impression*:

- **Impression**: one `impression` row, unique per (QueryID, DisplayedImageID) by
  construction (should a duplicate appear, the first row is kept).
- **Clicked**: an impression with at least one `click` row for the same (QueryID,
  DisplayedImageID). Opening the same result again in one query counts once, so
  CTR = clicked impressions / impressions ≤ 1 (the seed's clicks / exposures) and the binomial
  Wilson interval applies. The same image shown in two queries is two impressions, kept apart by
  `QueryID`. Clicks without a matching impression should not exist and are ignored.
- **Labelled / similar**: the latest `similar` / `not_similar` row of an impression (row order,
  i.e. oldest first, latest wins, as in `FeedbackLog.labels`) decides. The impression is
  *labelled* when that row has value 1 (value 0 means the label was undone) and *similar* when
  it is moreover a `similar` row. Relabelling similar → not_similar therefore leaves it labelled
  but not similar. Grades are not used here.
- **Grouping keys** (`GROUPINGS`, columns of `impressions_table`): `model_version`, `position`
  and `user_id` (the log's `ModelVersion`, `PositionInDisplayedList` and `UserID`) and `day`,
  the UTC calendar date of the *impression's* `Timestamp` as an ISO string "YYYY-MM-DD" (sorts
  as dates and is JSON-ready). A click or label always belongs to its impression's group,
  whenever it happened.

Every rate comes with its counts and a 95 % Wilson score interval
(`core.measure.metrics.wilson_interval`); with no impressions a rate is 0.0 with the
interval (0.0, 1.0), never NaN.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

from core.measure.metrics import ctr, wilson_interval

GROUPINGS: tuple[str, ...] = ("model_version", "position", "day", "user_id")
OUTCOMES: tuple[str, ...] = ("clicked", "similar", "labelled")
LOG_COLUMNS: tuple[str, ...] = (
    "QueryID",
    "DisplayedImageID",
    "InteractionType",
    "PositionInDisplayedList",
    "ModelVersion",
    "UserID",
    "Timestamp",
    "Value",
)  # the log columns read here; others (Location, QueryImageID) may be present and are ignored
TABLE_COLUMNS: tuple[str, ...] = (
    "query_id",
    "displayed_image_id",
    "model_version",
    "position",
    "day",
    "user_id",
    "clicked",
    "labelled",
    "similar",
)
RATE_COLUMNS: tuple[str, ...] = ("impressions", "successes", "rate", "low", "high")
_KEY = ["QueryID", "DisplayedImageID"]  # one impression, in the log
_TABLE_NAMES = {  # log column -> its `impressions_table` column (and grouping key)
    "QueryID": "query_id",
    "DisplayedImageID": "displayed_image_id",
    "ModelVersion": "model_version",
    "PositionInDisplayedList": "position",
    "UserID": "user_id",
}


@dataclass(frozen=True)
class Rate:
    """A binomial rate with its counts and 95 % Wilson interval."""

    successes: int  # impressions with the outcome
    trials: int  # impressions
    rate: float  # successes / trials, 0.0 when trials == 0
    low: float  # 95 % Wilson interval, (0.0, 1.0) when trials == 0
    high: float

    def as_dict(self) -> dict[str, float | int]:
        """The fields as a plain dict, in declaration order (JSON-ready)."""
        return asdict(self)


def make_rate(successes: int, trials: int) -> Rate:
    """A `Rate` from counts, using `core.measure.metrics.ctr` and `wilson_interval`."""
    successes, trials = int(successes), int(trials)
    low, high = wilson_interval(successes, trials)
    return Rate(successes, trials, ctr(successes, trials), low, high)


def _check_log(log: pd.DataFrame) -> None:
    if "QueryID" not in log.columns:
        raise ValueError(
            "The log has no QueryID column, so clicks cannot be matched to impressions; "
            "pass FeedbackLog.interactions(with_query_id=True)."
        )
    missing = [c for c in LOG_COLUMNS if c not in log.columns]
    if missing:
        raise ValueError(f"The log is missing the columns {', '.join(missing)}.")


def _utc_day(timestamps: pd.Series) -> pd.Series:
    """ISO-8601 timestamps (any offset) → their UTC calendar date as "YYYY-MM-DD"."""
    parsed = pd.to_datetime(timestamps, utc=True, format="ISO8601")
    return parsed.dt.strftime("%Y-%m-%d").astype(object)


def _latest_labels(log: pd.DataFrame) -> pd.DataFrame:
    """Per (QueryID, DisplayedImageID) with a label row: `labelled`, `similar` (latest wins)."""
    rows = log.loc[log["InteractionType"].isin(["similar", "not_similar"])]
    latest = rows.drop_duplicates(_KEY, keep="last")  # the log is oldest first
    labelled = latest["Value"] == 1
    return latest[_KEY].assign(
        labelled=labelled.astype(bool),
        similar=(labelled & (latest["InteractionType"] == "similar")).astype(bool),
    )


def impressions_table(log: pd.DataFrame) -> pd.DataFrame:
    """One row per impression with its keys and outcomes.

    Columns `TABLE_COLUMNS`: query_id, displayed_image_id, model_version, position, day (UTC,
    "YYYY-MM-DD"), user_id, and the booleans clicked, labelled, similar (see the module doc);
    the keys are the log's QueryID, DisplayedImageID, ModelVersion, PositionInDisplayedList,
    Timestamp and UserID. Rows keep the log's order of impressions.
    """
    _check_log(log)
    impressions = log.loc[log["InteractionType"] == "impression"].drop_duplicates(_KEY)
    table = impressions[list(_TABLE_NAMES)].assign(day=_utc_day(impressions["Timestamp"]))
    clicks = log.loc[log["InteractionType"] == "click", _KEY].drop_duplicates()
    table = table.merge(clicks, on=_KEY, how="left", indicator="_click")
    table = table.merge(_latest_labels(log), on=_KEY, how="left").rename(columns=_TABLE_NAMES)
    return pd.DataFrame(
        {
            **{c: table[c] for c in TABLE_COLUMNS[:6]},
            "clicked": table["_click"] == "both",
            "labelled": table["labelled"].eq(True),
            "similar": table["similar"].eq(True),
        },
        columns=list(TABLE_COLUMNS),
    ).reset_index(drop=True)


def _rate_of(table: pd.DataFrame, outcome: str) -> Rate:
    return make_rate(int(table[outcome].sum()), len(table))


def click_through(log: pd.DataFrame) -> Rate:
    """CTR: clicked impressions / impressions, with counts and Wilson interval."""
    return _rate_of(impressions_table(log), "clicked")


def similar_share(log: pd.DataFrame) -> Rate:
    """Impressions whose current label is `similar` / impressions."""
    return _rate_of(impressions_table(log), "similar")


def labelled_share(log: pd.DataFrame) -> Rate:
    """Impressions with a current label (similar or not_similar) / impressions: coverage."""
    return _rate_of(impressions_table(log), "labelled")


def rates_by(log: pd.DataFrame, by: str, outcome: str = "clicked") -> pd.DataFrame:
    """The rate of `outcome` per value of the impression's `by` key, sorted by `by`.

    `by` is one of `GROUPINGS`, `outcome` one of `OUTCOMES`. Columns: `[by, "impressions",
    "successes", "rate", "low", "high"]`, one row per group that has impressions (an empty log
    gives an empty table). `by="position"` is the position-bias curve.
    """
    if by not in GROUPINGS:
        raise ValueError(f"Cannot group by {by!r}; valid keys: {', '.join(GROUPINGS)}.")
    if outcome not in OUTCOMES:
        raise ValueError(f"Unknown outcome {outcome!r}; valid outcomes: {', '.join(OUTCOMES)}.")
    table = impressions_table(log)
    if table.empty:
        return pd.DataFrame(columns=[by, *RATE_COLUMNS])
    counts = (
        table.groupby(by, sort=True, dropna=False)[outcome]
        .agg(impressions="size", successes="sum")
        .reset_index()
    )
    pairs = zip(counts["successes"], counts["impressions"], strict=True)
    rates = [make_rate(s, n) for s, n in pairs]  # one per group, not per log row
    return counts.assign(
        impressions=counts["impressions"].astype("int64"),
        successes=counts["successes"].astype("int64"),
        rate=[r.rate for r in rates],
        low=[r.low for r in rates],
        high=[r.high for r in rates],
    )[[by, *RATE_COLUMNS]]


def online_summary(log: pd.DataFrame) -> dict[str, object]:
    """The headline numbers, JSON-serialisable.

    `{"impressions": int, "ctr": Rate.as_dict(), "similar_share": …, "labelled_share": …}`.
    """
    table = impressions_table(log)
    return {
        "impressions": len(table),
        "ctr": _rate_of(table, "clicked").as_dict(),
        "similar_share": _rate_of(table, "similar").as_dict(),
        "labelled_share": _rate_of(table, "labelled").as_dict(),
    }
