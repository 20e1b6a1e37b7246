"""core.learn.pairs on hand-made logs: every expectation below is counted by hand from the log."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from core.learn.pairs import (
    JUDGEMENT_COLUMNS,
    UNLABELLED,
    PairError,
    PairSettings,
    TrainingPairs,
    build_pairs,
    judgements,
)
from tests.helpers import SEED_COLUMNS_WITH_QUERY_ID

COLUMNS = SEED_COLUMNS_WITH_QUERY_ID
NAN = float("nan")
# Transitive positives off unless a test is about them: these logs are counted by hand.
SETTINGS = PairSettings(click_weight=0.3, label_weight=1.0, grade_weight=0.8, transitive=0)


class Log:
    """A tiny log builder: `search` writes the impressions, `act` an action on a shown result."""

    def __init__(self) -> None:
        self.rows: list[dict[str, object]] = []
        self._query_image: dict[int, str] = {}
        self._position: dict[tuple[int, str], int] = {}

    def _row(self, query_id: int, image: str, kind: str, value: float | None) -> None:
        self.rows.append(
            {
                "UserID": 1,
                "QueryImageID": self._query_image[query_id],
                "DisplayedImageID": image,
                "PositionInDisplayedList": self._position[(query_id, image)],
                "InteractionType": kind,
                "Location": None,
                "Timestamp": f"2026-11-25T12:00:{len(self.rows):02d}.000+00:00",
                "ModelVersion": "base",
                "Value": value,
                "QueryID": query_id,
            }
        )

    def search(self, query_id: int, query_image: str, shown: list[str]) -> Log:
        self._query_image[query_id] = query_image
        for position, image in enumerate(shown, start=1):
            self._position[(query_id, image)] = position
            self._row(query_id, image, "impression", None)
        return self

    def act(self, query_id: int, image: str, kind: str, value: float | None = None) -> Log:
        if kind in ("similar", "not_similar") and value is None:
            value = 1.0  # FeedbackLog stores a set label as 1
        self._row(query_id, image, kind, value)
        return self

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame(self.rows, columns=COLUMNS)
        return frame.astype(
            {
                "UserID": "int64",
                "PositionInDisplayedList": "int64",
                "Value": "float64",
                "QueryID": "int64",
            }
        )


def verdicts(log: Log, settings: PairSettings = SETTINGS) -> dict[tuple[str, str], tuple]:
    """{(query image, shown image): (relevance, source, weight)} from `judgements`."""
    table = judgements(log.frame(), settings)
    assert list(table.columns) == list(JUDGEMENT_COLUMNS)
    return {(q, d): (r, s, w) for q, d, r, s, w in table.itertuples(index=False, name=None)}


def pair_counts(pairs: TrainingPairs) -> Counter[tuple[str, str]]:
    return Counter(zip(pairs.anchors, pairs.positives, strict=True))


# --- judgements -------------------------------------------------------------------------------


def test_latest_label_wins_undo_and_cleared_grade() -> None:
    log = Log().search(1, "q", ["a", "b", "c", "d"])
    log.act(1, "a", "similar").act(1, "a", "not_similar")  # relabelled: negative
    log.act(1, "b", "similar").act(1, "b", "similar", 0)  # undone: no judgement
    log.act(1, "c", "similar").act(1, "c", "grade", 0).act(1, "c", "grade", NAN)  # cleared grade
    log.act(1, "d", "not_similar").act(1, "d", "grade", 3)  # a grade beats a label
    assert verdicts(log) == {
        ("q", "a"): ("negative", "label", 1.0),
        ("q", "c"): ("positive", "label", 1.0),
        ("q", "d"): ("positive", "grade", 0.8),
    }


def test_labels_pool_over_searches_of_one_query_image() -> None:
    log = Log().search(1, "q", ["a"]).search(2, "q", ["a"]).search(3, "r", ["a"])
    log.act(1, "a", "similar").act(2, "a", "not_similar").act(3, "a", "similar")
    assert verdicts(log) == {
        ("q", "a"): ("negative", "label", 1.0),  # the later search's label wins
        ("r", "a"): ("positive", "label", 1.0),  # another query image is another pair
    }


def test_grades_positive_negative_and_middling() -> None:
    log = Log().search(1, "q", ["a", "b", "c", "d"])
    log.act(1, "a", "grade", 2).act(1, "b", "grade", 3).act(1, "d", "grade", 0)
    log.act(1, "c", "click").act(1, "c", "grade", 1)  # explicit "somewhat": beats the click
    assert verdicts(log, PairSettings(grade_weight=0.8, hard_negatives=False)) == {
        ("q", "a"): ("positive", "grade", 0.8),
        ("q", "b"): ("positive", "grade", 0.8),
        ("q", "d"): ("negative", "grade", 0.8),
    }


def test_clicks_are_weaker_positives_and_a_label_overrides_them() -> None:
    log = Log().search(1, "q", ["a", "b", "c"])
    log.act(1, "c", "click").act(1, "c", "click")  # twice: still one pair
    log.act(1, "b", "click").act(1, "b", "not_similar")  # clicked, then labelled not similar
    log.act(1, "a", "similar").act(1, "a", "click")
    assert verdicts(log, PairSettings(click_weight=0.3, hard_negatives=False)) == {
        ("q", "a"): ("positive", "label", 1.0),
        ("q", "b"): ("negative", "label", 1.0),
        ("q", "c"): ("positive", "click", 0.3),
    }


def test_hard_negatives_are_skipped_results_above_the_deepest_click() -> None:
    log = Log().search(1, "q", ["a", "b", "c", "d", "e", "f"])
    log.act(1, "b", "click").act(1, "d", "click")  # a and c skipped; e and f below: unjudged
    log.act(1, "c", "similar")  # skipped but labelled similar: a positive
    log.search(2, "r", ["a", "b"])  # no click in this search: nothing is hard
    assert verdicts(log) == {
        ("q", "a"): ("negative", "hard", 0.3),
        ("q", "b"): ("positive", "click", 0.3),
        ("q", "c"): ("positive", "label", 1.0),
        ("q", "d"): ("positive", "click", 0.3),
    }
    off = PairSettings(click_weight=0.3, hard_negatives=False)
    assert ("q", "a") not in verdicts(log, off)


def test_a_click_elsewhere_beats_a_hard_negative_and_self_pairs_are_dropped() -> None:
    log = Log().search(1, "q", ["a", "q", "b"]).search(2, "q", ["a"])
    log.act(1, "b", "click").act(2, "a", "click")  # a skipped in search 1, clicked in 2
    assert verdicts(log) == {
        ("q", "a"): ("positive", "click", 0.3),
        ("q", "b"): ("positive", "click", 0.3),
    }


# --- build_pairs ------------------------------------------------------------------------------


def test_pairs_outside_the_allowed_set_are_dropped_and_counted() -> None:
    log = Log().search(1, "q", ["a", "x", "b"]).search(2, "t", ["a"])
    log.act(1, "a", "similar").act(1, "x", "similar")  # x is in the test split
    log.act(1, "b", "not_similar").act(2, "a", "not_similar")  # t is a test query
    allowed = ["q", "a", "b", "r1", "r2", "r3"]
    pairs = build_pairs(log.frame(), {}, allowed, PairSettings(random_negatives=3, transitive=0))
    assert (pairs.anchors, pairs.positives) == (["q"], ["a"])
    assert pairs.summary["dropped_outside_allowed"] == {"negative": 1, "positive": 1, "total": 2}
    assert pairs.negatives[0][0] == "b"  # the explicit negative comes first
    assert set(pairs.negatives[0][1:]) <= {"r1", "r2", "r3"}  # never x or t


def test_random_negatives_exclude_anchor_and_positives_and_are_reproducible() -> None:
    log = Log().search(1, "q", ["p1", "p2", "n1"]).search(2, "s", ["r1", "p1"])
    log.act(1, "p1", "similar").act(1, "p2", "click").act(1, "n1", "not_similar")
    log.act(2, "r1", "grade", 3).act(2, "p1", "similar")
    randoms = [f"r{i}" for i in range(1, 9)]
    allowed = ["q", "s", "p1", "p2", "n1", *randoms]
    labels = {i: ("odd" if int(i[1]) % 2 else "even") for i in randoms}
    settings = PairSettings(random_negatives=3, hard_negatives=False, seed=7, transitive=0)
    pairs = build_pairs(log.frame(), labels, allowed, settings)
    assert list(pair_counts(pairs)) == [("q", "p1"), ("q", "p2"), ("s", "p1"), ("s", "r1")]
    np.testing.assert_allclose(pairs.weights, [1.0, 0.3, 1.0, 1.0])
    assert all(len(row) == len(set(row)) == 3 for row in pairs.negatives)
    for anchor, row in zip(pairs.anchors, pairs.negatives, strict=True):
        if anchor == "q":
            assert row[0] == "n1" and set(row[1:]) <= set(randoms)
        else:  # s: never itself, p1 or r1 (its positives)
            assert set(row) <= set(allowed) - {"s", "p1", "r1"}
    again = build_pairs(log.frame(), labels, allowed, settings)
    assert again.negatives == pairs.negatives
    other = build_pairs(
        log.frame(), labels, allowed, PairSettings(seed=8, hard_negatives=False, transitive=0)
    )
    assert other.negatives != pairs.negatives
    assert pairs.summary["negatives"] == {"grade": 0, "hard": 0, "label": 2, "random": 10}


def test_many_explicit_negatives_are_dealt_across_the_anchors_pairs() -> None:
    negatives = ["n1", "n2", "n3", "n4"]
    log = Log().search(1, "q", ["p1", "p2", *negatives])
    log.act(1, "p1", "similar").act(1, "p2", "similar")
    for image in negatives:
        log.act(1, image, "not_similar")
    pairs = build_pairs(log.frame(), {}, ["q", "p1", "p2", *negatives, "r1"], SETTINGS)
    assert all(len(set(row)) == 3 and set(row) <= set(negatives) for row in pairs.negatives)
    assert set(pairs.negatives[0]) | set(pairs.negatives[1]) == set(negatives)
    assert pairs.summary["negatives"] == {"grade": 0, "hard": 0, "label": 6, "random": 0}


def test_random_negatives_are_balanced_over_labels_not_images() -> None:
    population = {f"a{i}": "A" for i in range(80)}
    population |= {f"b{i}": "B" for i in range(15)} | {f"c{i}": "C" for i in range(5)}
    log = Log().search(1, "x", ["y"]).act(1, "y", "similar")
    labels = {**population, "x": "A", "y": "A"}
    settings = PairSettings(random_negatives=3, min_per_label=300, seed=3, transitive=0)
    pairs = build_pairs(log.frame(), labels, [*population, "x", "y"], settings)
    assert len(pairs) == 300 and set(pair_counts(pairs)) == {("x", "y")}  # repeated
    drawn = Counter(labels[i] for row in pairs.negatives for i in row)
    # 900 draws, 1/3 per label (sd ≈ 14); uniform over images would give A ≈ 720, C ≈ 45
    assert all(abs(drawn[label] - 300) < 60 for label in "ABC"), drawn
    assert pairs.summary["random_negative_labels"] == dict(sorted(drawn.items()))


def labelled_pairs(pairs_per_anchor: dict[str, int]) -> Log:
    """Anchor `k` labels `n` distinct results similar: `k-1`, `k-2`, …"""
    log = Log()
    for query_id, (anchor, n) in enumerate(pairs_per_anchor.items(), start=1):
        shown = [f"{anchor}-{i}" for i in range(1, n + 1)]
        log.search(query_id, anchor, shown)
        for image in shown:
            log.act(query_id, image, "similar")
    return log


def test_rebalancing_caps_a_popular_label_and_repeats_a_rare_one() -> None:
    log = labelled_pairs({"h1": 2, "h2": 2, "h3": 2, "h4": 2, "m1": 2, "c1": 1})
    labels = {"h1": "hot", "h2": "hot", "h3": "hot", "h4": "hot", "m1": "mid", "c1": "cold"}
    allowed = {*labels, *(f"{a}-{i}" for a in labels for i in (1, 2)), "r1", "r2", "r3"}
    settings = PairSettings(max_per_label=4, min_per_label=3, random_negatives=2, transitive=0)
    pairs = build_pairs(log.frame(), labels, allowed, settings)
    summary = pairs.summary
    assert summary["labels_before"] == {"cold": 1, "hot": 8, "mid": 2}
    assert summary["labels_after"] == {"cold": 3, "hot": 4, "mid": 3}
    counts = pair_counts(pairs)
    hot = {p: n for p, n in counts.items() if p[0].startswith("h")}
    assert len(hot) == 4 and set(hot.values()) == {1}  # 4 distinct hot pairs, none repeated
    assert counts[("c1", "c1-1")] == 3
    assert sorted([counts[("m1", "m1-1")], counts[("m1", "m1-2")]]) == [1, 2]
    assert (summary["pairs_before"], summary["pairs"]) == (11, 10)
    assert (summary["dropped_by_label_cap"], summary["added_by_up_sampling"]) == (4, 3)
    assert len(pairs.negatives) == len(pairs.weights) == 10


def test_default_label_cap_is_twice_the_median_and_unlabelled_is_a_bucket() -> None:
    log = labelled_pairs({"h1": 4, "h2": 4, "m1": 3, "c1": 1, "u1": 2})
    labels: dict[str, str | None] = {"h1": "hot", "h2": "hot", "m1": "mid", "c1": "cold"}
    labels["u1"] = None
    allowed = {*labels, *(f"{a}-{i}" for a in labels for i in range(1, 5)), "r1"}
    pairs = build_pairs(
        log.frame(), labels, allowed, PairSettings(random_negatives=1, transitive=0)
    )
    before = {"cold": 1, "hot": 8, "mid": 3, UNLABELLED: 2}
    assert pairs.summary["labels_before"] == before
    assert pairs.summary["max_per_label"] == 5  # 2 × median(1, 2, 3, 8) = 2 × 2.5
    assert pairs.summary["labels_after"] == before | {"hot": 5}


def test_an_image_positive_for_many_anchors_is_capped_keeping_labels_over_clicks() -> None:
    log = Log()
    for k in range(1, 7):
        log.search(k, f"a{k}", [f"o{k}", "pop"]).act(k, f"o{k}", "similar")
        log.act(k, "pop", "similar" if k <= 3 else "click")
    allowed = [*(f"a{k}" for k in range(1, 7)), *(f"o{k}" for k in range(1, 7)), "pop", "r1"]
    pairs = build_pairs(log.frame(), {}, allowed, PairSettings(random_negatives=1, transitive=0))
    counts = pair_counts(pairs)
    assert pairs.summary["image_cap"] == 3  # max(3, 2 × median(6, 1, 1, 1, 1, 1, 1))
    assert sorted(a for a, p in counts if p == "pop") == ["a1", "a2", "a3"]  # the labelled ones
    assert pairs.summary["dropped_by_image_cap"] == 3
    assert pairs.summary["positives"] == {"click": 3, "grade": 0, "label": 9, "transitive": 0}


def test_summary_counts_and_json() -> None:
    log = Log().search(1, "q", ["a", "b", "c", "d", "e"])
    log.act(1, "d", "click").act(1, "b", "similar").act(1, "c", "grade", 3)
    log.act(1, "e", "not_similar").search(2, "lonely", ["a"]).act(2, "a", "grade", 0)
    allowed = ["q", "a", "b", "c", "d", "e", "lonely", "r1", "r2"]
    pairs = build_pairs(log.frame(), {"r1": "x"}, allowed, SETTINGS)
    summary = json.loads(json.dumps(pairs.summary))  # JSON-serialisable
    assert summary["positives"] == {"click": 1, "grade": 1, "label": 1, "transitive": 0}
    assert summary["explicit_negatives"] == {"grade": 1, "hard": 1, "label": 1}  # a, e, lonely
    assert summary["unused_negatives"] == 1  # lonely's a: lonely has no positive
    # 3 pairs × 3 slots: a (hard) and e (label) in every pair, one random each
    assert summary["negatives"] == {"grade": 0, "hard": 3, "label": 3, "random": 3}
    assert summary["judgements"] == 6 and summary["negatives_per_pair"] == 3


def test_empty_log_gives_zero_pairs() -> None:
    for log in (Log().frame(), pd.DataFrame()):
        pairs = build_pairs(log, {}, ["a", "b"])
        assert len(pairs) == 0 and pairs.negatives == [] and pairs.weights.shape == (0,)
        assert json.loads(json.dumps(pairs.summary))["pairs"] == 0
        assert judgements(log).empty


def test_errors_a_user_can_cause() -> None:
    log = Log().search(1, "q", ["p"]).act(1, "p", "similar")
    with pytest.raises(PairError, match="random negative"):
        build_pairs(log.frame(), {}, ["q", "p"])
    with pytest.raises(PairError, match="QueryID"):
        judgements(log.frame().drop(columns="QueryID"))
    with pytest.raises(PairError, match="InteractionType, Value"):
        judgements(log.frame().drop(columns=["InteractionType", "Value"]))
    old_names = log.frame().rename(columns=str.lower)  # the log before it spoke the seed's names
    with pytest.raises(PairError, match="missing the columns QueryID"):
        judgements(old_names)
    with pytest.raises(PairError, match="negative_grade"):
        PairSettings(positive_grade=1, negative_grade=1)
    with pytest.raises(PairError, match="min_per_label"):
        PairSettings(max_per_label=2, min_per_label=3)


def test_explicit_positives_chain_into_transitive_pairs_but_clicks_do_not() -> None:
    # q ~ a and a ~ b (labels) make b a positive for q and q one for b; a click a -> c does not
    # chain, and q's explicit "not similar" on d stands although d ~ b (a grade).
    log = Log().search(1, "q", ["a", "d"]).act(1, "a", "similar").act(1, "d", "not_similar")
    log.search(2, "a", ["b", "c"]).act(2, "b", "similar").act(2, "c", "click")
    log.search(3, "b", ["d"]).act(3, "d", "grade", 3)
    allowed = ["q", "a", "b", "c", "d", "r1", "r2"]
    settings = PairSettings(random_negatives=1, hard_negatives=False, max_per_label=100)
    pairs = build_pairs(log.frame(), {}, allowed, settings)
    inferred = {("q", "b"), ("b", "q"), ("a", "d"), ("d", "a")}  # q-d is judged: not similar
    direct = {("q", "a"), ("a", "b"), ("a", "c"), ("b", "d")}
    assert set(zip(pairs.anchors, pairs.positives, strict=True)) == direct | inferred
    assert pairs.summary["positives"] == {"click": 1, "grade": 1, "label": 2, "transitive": 4}
    off = build_pairs(log.frame(), {}, allowed, replace(settings, transitive=0))
    assert set(zip(off.anchors, off.positives, strict=True)) == direct
    # the groups (for training: never an in-batch negative of each other) with chaining or not
    assert pairs.groups == off.groups == [["a", "b", "d", "q"]]


def test_transitive_pairs_are_capped_per_image_and_stay_inside_the_allowed_set() -> None:
    # One chain of labels p0 ~ p1 ~ ... ~ p5, and p6 in the test split: each image gets at most
    # `transitive` inferred positives, none of them p6.
    log = Log()
    for k in range(6):
        log.search(k, f"p{k}", [f"p{k + 1}"]).act(k, f"p{k + 1}", "similar")
    allowed = [f"p{k}" for k in range(6)] + ["r1"]
    settings = PairSettings(random_negatives=1, transitive=2, max_per_label=100, seed=4)
    pairs = build_pairs(log.frame(), {}, allowed, settings)
    inferred = Counter(
        a
        for a, p in zip(pairs.anchors, pairs.positives, strict=True)
        if abs(int(a[1]) - int(p[1])) > 1
    )
    assert set(inferred.values()) == {2} and len(inferred) == 6
    assert "p6" not in {*pairs.anchors, *pairs.positives}
    again = build_pairs(log.frame(), {}, allowed, settings)
    assert (again.anchors, again.positives) == (pairs.anchors, pairs.positives)  # seeded


def test_random_negatives_never_come_from_the_anchors_group_and_chains_weigh_the_weaker() -> None:
    # A chain of 8 labelled-similar images and 3 others: with transitive=1 most of an anchor's
    # group stays unpaired, yet no random negative may come from it; only o1..o3 can.
    log = Log()
    for k in range(7):
        log.search(k, f"g{k}", [f"g{k + 1}"]).act(k, f"g{k + 1}", "similar")
    log.search(7, "g7", ["g0"]).act(7, "g0", "grade", 3)  # a grade closes the ring
    allowed = [f"g{k}" for k in range(8)] + ["o1", "o2", "o3"]
    settings = PairSettings(random_negatives=3, transitive=1, max_per_label=100, grade_weight=0.8)
    pairs = build_pairs(log.frame(), {}, allowed, settings)
    assert {i for row in pairs.negatives for i in row} == {"o1", "o2", "o3"}
    inferred = [
        w
        for a, p, w in zip(pairs.anchors, pairs.positives, pairs.weights, strict=True)
        if abs(int(a[1]) - int(p[1])) not in (1, 7)
    ]
    assert len(inferred) == 8 and set(inferred) == {0.8}  # one per image, the weaker weight
