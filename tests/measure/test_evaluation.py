"""Evaluation of a version on a split, against a loop-by-loop reference of the definitions."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.choices import METRIC_NAMES
from core.encoder.model import Encoder
from core.gallery.images import LoadedImage, load_image
from core.measure.evaluation import (
    EvaluationError,
    Ranking,
    _intervals,
    build_ranking,
    evaluate,
    evaluate_version,
    feedback_gains,
    metric_curves,
    per_label_table,
    worst_queries,
)
from core.store import ImageRecord
from core.studio import LoggedSearch, Studio
from tests.helpers import GALLERY_LABELS, SEED_COLUMNS, generated_image, reference_metrics


@pytest.mark.parametrize("k", [1, 5, 10])
@pytest.mark.parametrize("split", ["all", "train", "test"])
def test_evaluate_equals_the_brute_force_reference(
    studio: Studio, make_gallery: Callable[..., Path], split: str, k: int
) -> None:
    studio.ingest([make_gallery(per_label=10)], label_from_folders=True)
    records = studio.store.list_images(split=None if split == "all" else split)
    ids, vectors = studio.index.get_embeddings("base", [r.id for r in records])
    by_id = dict(zip(ids, vectors, strict=True))
    matrix = np.stack([by_id[r.id] for r in records])
    expected = reference_metrics([r.id for r in records], [r.label for r in records], matrix, k)
    result = evaluate_version(studio.store, studio.index, "base", split, k).as_dict()
    assert result["n_queries"] == expected.pop("n_queries")
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, abs=1e-9), name


def test_unlabelled_gallery_cannot_be_evaluated(
    studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    studio.ingest([make_gallery(per_label=2)])
    with pytest.raises(EvaluationError, match="no labelled images"):
        evaluate(studio)


def test_bad_split_version_and_k_are_refused(
    studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    studio.ingest([make_gallery(per_label=2)], label_from_folders=True)
    with pytest.raises(EvaluationError, match="split"):
        evaluate(studio, split="validation")
    with pytest.raises(EvaluationError, match="ft-0042"):
        evaluate(studio, version="ft-0042")
    with pytest.raises(EvaluationError, match="k"):
        evaluate(studio, k=0)


# --- a graded reference: any gains, any query vector --------------------------------------------


def split_vectors(studio: Studio, split: str = "all") -> tuple[list[ImageRecord], np.ndarray]:
    """The split's records in catalog order and their stored "base" vectors `(N, d)` float64."""
    records = studio.store.list_images(split=None if split == "all" else split)
    ids, vectors = studio.index.get_embeddings("base", [r.id for r in records])
    by_id = dict(zip(ids, vectors, strict=True))
    return records, np.stack([by_id[r.id] for r in records]).astype(np.float64)


def reference_ranking(
    query_id: str, query_vector: np.ndarray, ids: list[str], vectors: np.ndarray
) -> list[str]:
    """Every split image but the query, by exact cosine, best first; ties keep catalog order."""
    q = np.asarray(query_vector, dtype=np.float64)
    others = [j for j in range(len(ids)) if ids[j] != query_id]
    return [ids[j] for j in sorted(others, key=lambda j: -float(q @ vectors[j]))]  # stable sort


def reference_query(ranking: list[str], gains: dict[str, float], k: int) -> dict[str, float] | None:
    """DESIGN.md's metrics of one ranked list (`gains` of unjudged items: 0); binary view gain > 0
    for all but nDCG, which uses the gains and an IDCG from all relevant items of the list.
    None when nothing in the list is relevant (the query is left out)."""
    relevant = sorted((gains[i] for i in ranking if gains.get(i, 0.0) > 0), reverse=True)
    if not relevant:
        return None
    top = [gains.get(i, 0.0) for i in ranking[:k]]
    hits = [1 if g > 0 else 0 for g in top]
    first = next((i for i, r in enumerate(hits, start=1) if r), None)

    def dcg(values: list[float]) -> float:
        return sum(g / math.log2(i + 1) for i, g in enumerate(values, start=1))

    precisions = [sum(hits[:i]) / i for i in range(1, len(hits) + 1)]
    return {
        "mrr": 1 / first if first else 0.0,
        "map": sum(p for p, r in zip(precisions, hits, strict=True) if r) / len(relevant),
        "precision_at_k": sum(hits) / k,
        "recall_at_k": sum(hits) / len(relevant),
        "ndcg_at_k": dcg(top) / dcg(relevant[:k]),
    }


def label_reference(studio: Studio, k: int, split: str = "all") -> dict[str, dict[str, float]]:
    """Per-query reference metrics under label relevance: {query id: metrics}, counted only."""
    records, vectors = split_vectors(studio, split)
    ids = [r.id for r in records]
    out = {}
    for record, vector in zip(records, vectors, strict=True):
        if not record.label:
            continue
        gains = {r.id: 1.0 for r in records if r.label == record.label}
        result = reference_query(reference_ranking(record.id, vector, ids, vectors), gains, k)
        if result is not None:
            out[record.id] = result
    return out


def mean_of(per_query: list[dict[str, float]]) -> dict[str, float]:
    return {name: sum(m[name] for m in per_query) / len(per_query) for name in METRIC_NAMES}


def assert_metrics(actual: object, expected: dict[str, float]) -> None:
    for name, value in expected.items():
        got = actual[name] if isinstance(actual, dict) else getattr(actual, name)
        assert got == pytest.approx(value, abs=1e-9), name


def test_the_graded_reference_agrees_with_the_label_reference(
    studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    """The two references are written independently; on labels they must say the same."""
    studio.ingest([make_gallery(per_label=5)], label_from_folders=True)
    records, vectors = split_vectors(studio)
    for k in (1, 4, 30):
        labels = [r.label for r in records]
        expected = reference_metrics([r.id for r in records], labels, vectors, k)
        per_query = label_reference(studio, k)
        assert len(per_query) == expected.pop("n_queries")
        assert_metrics(mean_of(list(per_query.values())), expected)


def test_the_seed_ndcg_example_through_the_reference() -> None:
    ranking = ["a", "b", "c", "d", "e"]
    gains = dict(zip(ranking, [0.0, 5.0, 1.0, 4.0, 2.0], strict=True))
    result = reference_query(ranking, gains, 5)
    assert result is not None
    assert result["ndcg_at_k"] == pytest.approx(0.6869, abs=1e-4)


# --- human relevance from the log -----------------------------------------------------------------


def png_bytes(label_index: int, variant: int) -> bytes:
    buffer = io.BytesIO()
    generated_image(label_index, variant).save(buffer, format="PNG")
    return buffer.getvalue()


Event = tuple[str, str, str, float | None]  # query image, shown image, interaction, value


def reference_judgements(events: list[Event]) -> dict[str, dict[str, float]]:
    """The module docstring's rules replayed event by event: {query image: {shown: gain}}."""
    labels: dict[tuple[str, str], float | None] = {}
    grades: dict[tuple[str, str], float | None] = {}
    for query, shown, kind, value in events:
        if kind == "grade":
            grades[query, shown] = value  # None clears the grade
        else:
            labels[query, shown] = (1.0 if kind == "similar" else 0.0) if value == 1 else None
    out: dict[str, dict[str, float]] = {}
    for pair in labels.keys() | grades.keys():
        grade, label = grades.get(pair), labels.get(pair)
        gain = grade if grade is not None else label
        if gain is not None:
            out.setdefault(pair[0], {})[pair[1]] = gain
    return out


class Judge:
    """Logs a judgement on the result at a 1-based rank and remembers it for the reference."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio
        self.events: list[Event] = []

    def __call__(self, search: LoggedSearch, rank: int, kind: str, value: float | None) -> str:
        shown = search.results[rank - 1].image_id
        self.studio.store.feedback.log_interaction(search.query_id, shown, kind, value=value)
        query_image = self.studio.store.feedback.get_query(search.query_id).query_image_id
        self.events.append((query_image, shown, kind, value))
        return shown


def log_judgements(studio: Studio) -> tuple[Judge, LoadedImage]:
    """Searches by ann (four gallery images, one upload) judged every way the log allows."""
    records = studio.store.list_images()
    first = {label: next(r.id for r in records if r.label == label) for label in GALLERY_LABELS}
    user = studio.store.ensure_user("ann")
    judge = Judge(studio)

    circles = studio.logged_gallery_search(user.id, first["shapes/circles"], 10)
    judge(circles, 1, "similar", 1)
    judge(circles, 2, "similar", 1)
    judge(circles, 3, "not_similar", 1)
    judge(circles, 4, "similar", 1)
    judge(circles, 4, "similar", 0)  # undone: no judgement
    judge(circles, 5, "similar", 1)
    judge(circles, 5, "not_similar", 1)  # relabelled: 0
    judge(circles, 6, "not_similar", 1)
    judge(circles, 6, "grade", 3)  # the grade beats the label: 3
    judge(circles, 7, "grade", 2)
    judge(circles, 7, "grade", None)  # cleared, no label: no judgement
    judge(circles, 8, "similar", 1)
    judge(circles, 8, "grade", 0)  # a grade of 0 beats "similar": 0
    judge(circles, 9, "similar", 1)
    judge(circles, 9, "grade", 1)
    judge(circles, 9, "grade", None)  # cleared: back to the label, 1
    again = studio.logged_gallery_search(user.id, first["shapes/circles"], 10)
    assert again.results[1].image_id == circles.results[1].image_id
    judge(again, 2, "not_similar", 1)  # a later search of the same image: latest row wins

    red = studio.logged_gallery_search(user.id, first["colours/red"], 10)
    judge(red, 1, "grade", 2)
    judge(red, 2, "not_similar", 1)
    judge(red, 4, "grade", 1)
    judge(red, 10, "similar", 1)

    upload = load_image(png_bytes(1, 50))  # a square that is not in the gallery
    uploaded = studio.logged_search(user.id, upload, 40)  # the whole gallery, least similar last
    judge(uploaded, 1, "grade", 3)
    judge(uploaded, 2, "not_similar", 1)
    judge(uploaded, 40, "similar", 1)  # relevant but ranked last: only k >= 40 finds it

    blue = studio.logged_gallery_search(user.id, first["colours/blue"], 5)
    judge(blue, 1, "not_similar", 1)
    judge(blue, 2, "similar", 1)
    judge(blue, 2, "similar", 0)  # nothing relevant left: a query, excluded and counted

    squares = studio.logged_gallery_search(user.id, first["shapes/squares"], 5)
    judge(squares, 3, "grade", 2)
    judge(squares, 3, "grade", None)  # no judgement at all: not a query
    return judge, upload


def feedback_reference(
    studio: Studio, judge: Judge, query_vectors: dict[str, np.ndarray], split: str, k: int
) -> tuple[dict[str, dict[str, float]], int]:
    """Per-query reference metrics under human relevance, and the number of queries left out."""
    records, vectors = split_vectors(studio, split)
    ids = [r.id for r in records]
    per_query, excluded = {}, 0
    for query, gains in reference_judgements(judge.events).items():
        ranking = reference_ranking(query, query_vectors[query], ids, vectors)
        result = reference_query(ranking, gains, k)
        if result is None:
            excluded += 1
        else:
            per_query[query] = result
    return per_query, excluded


def grouped_by_label(
    studio: Studio, per_query: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """Reference per-label rows: mean metrics and query count per query label."""
    label_of = {r.id: r.label for r in studio.store.list_images()}
    groups: dict[str, list[dict[str, float]]] = {}
    for query, metrics in per_query.items():
        groups.setdefault(label_of.get(query) or "(unlabelled)", []).append(metrics)
    return {label: mean_of(rows) | {"n_queries": len(rows)} for label, rows in groups.items()}


def assert_per_label(rows: list[dict[str, object]], expected: dict[str, dict[str, float]]) -> None:
    assert sorted(str(row["label"]) for row in rows) == sorted(expected)
    for row in rows:
        assert_metrics(row, expected[str(row["label"])])
    assert pd.DataFrame(rows)["map"].is_monotonic_increasing  # worst mAP first


def test_feedback_relevance_equals_the_brute_force_reference(
    studio: Studio, make_gallery: Callable[..., Path], tiny_encoder: Encoder
) -> None:
    studio.ingest([make_gallery(per_label=10)], label_from_folders=True)
    judge, upload = log_judgements(studio)
    judged = reference_judgements(judge.events)
    assert len(judged) == 4  # circles, red, the upload and blue; the squares query has none
    ids, vectors = studio.index.get_embeddings("base", [q for q in judged if q != upload.id])
    query_vectors = dict(zip(ids, vectors, strict=True))
    assert upload.id not in studio.store.get_images([upload.id])  # not in the gallery
    stored = studio.settings.queries_dir / str(studio.store.feedback.query_image_file(upload.id))
    query_vectors[upload.id] = tiny_encoder.encode([load_image(stored).image])[0]

    for split in ("all", "test"):
        for k in (1, 5, 10, 500):
            per_query, excluded = feedback_reference(studio, judge, query_vectors, split, k)
            result = evaluate(studio, split=split, k=k, relevance="feedback")
            assert (result.n_queries, result.n_excluded) == (len(per_query), excluded), (split, k)
            assert_metrics(result, mean_of(list(per_query.values())))
            assert_per_label(result.per_label, grouped_by_label(studio, per_query))
            if split == "all":
                assert (len(per_query), excluded) == (3, 1)
                assert upload.id in per_query
    # k beyond the split: the upload ranks all 40 images, so its last-ranked relevant one counts
    per_query, _ = feedback_reference(studio, judge, query_vectors, "all", 500)
    assert per_query[upload.id]["recall_at_k"] == 1.0
    row = next(
        r
        for r in evaluate(studio, k=500, relevance="feedback").per_label
        if r["label"] == "(unlabelled)"
    )
    assert row["recall_at_k"] == 1.0


def test_feedback_evaluation_needs_judgements(
    studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    studio.ingest([make_gallery(per_label=3)], label_from_folders=True)
    with pytest.raises(EvaluationError, match="judgements"):
        evaluate(studio, relevance="feedback")
    with pytest.raises(EvaluationError, match="relevance"):
        evaluate(studio, relevance="clicks")


def log_frame(rows: list[tuple[str, str, str, float | None]]) -> pd.DataFrame:
    """A log as `FeedbackLog.interactions` returns it (oldest first), from (q, shown, kind, v)."""
    frame = pd.DataFrame(
        [
            (1, query, shown, position, kind, None, f"2024-01-01T00:00:{n:02d}", "base", value)
            for n, (position, (query, shown, kind, value)) in enumerate(enumerate(rows, start=1))
        ],
        columns=SEED_COLUMNS,
    )
    return frame.astype({"Value": "float64"})


def test_feedback_gains_from_a_hand_made_log() -> None:
    log = log_frame(
        [
            ("q1", "a", "impression", None),
            ("q1", "b", "impression", None),
            ("q1", "a", "similar", 1),
            ("q1", "b", "similar", 1),
            ("q1", "c", "similar", 1),
            ("q1", "a", "click", None),
            ("q1", "b", "similar", 0),  # undo: b has no judgement
            ("q1", "c", "not_similar", 1),  # relabel: c is 0
            ("q1", "d", "not_similar", 1),
            ("q1", "d", "grade", 3),  # grade beats label: d is 3
            ("q1", "e", "similar", 1),
            ("q1", "e", "grade", 2),
            ("q1", "e", "grade", None),  # cleared: e falls back to its label, 1
            ("q1", "f", "grade", 2),
            ("q1", "f", "grade", None),  # cleared, never labelled: no judgement
            ("q1", "g", "grade", 0),
            ("q1", "g", "similar", 1),  # a later label does not beat an earlier grade: 0
            ("q1", "h", "not_similar", 1),
            ("q1", "h", "not_similar", 0),  # undone "not similar": no judgement
            ("q2", "a", "not_similar", 1),  # another query image keeps its own judgements
            ("q2", "c", "grade", 1),
            ("q3", "a", "similar", 1),
            ("q3", "a", "similar", 0),  # q3 ends with nothing: not in the result
            ("q4", "a", "click", None),  # clicks and impressions are not judgements
        ]
    )
    assert feedback_gains(log) == {
        "q1": {"a": 1.0, "c": 0.0, "d": 3.0, "e": 1.0, "g": 0.0},
        "q2": {"a": 0.0, "c": 1.0},
    }


def test_feedback_gains_of_a_log_without_judgements_is_empty() -> None:
    assert feedback_gains(log_frame([])) == {}
    assert feedback_gains(log_frame([("q", "a", "impression", None)])) == {}


# --- edge cases -----------------------------------------------------------------------------------


def test_a_label_with_a_single_image_is_excluded_and_counted(
    studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    root = make_gallery(per_label=4, labels=GALLERY_LABELS[:3])
    (root / "solo").mkdir()
    generated_image(3, 0).save(root / "solo" / "only.png")
    studio.ingest([root], label_from_folders=True)
    result = evaluate(studio, k=3)
    assert (result.n_queries, result.n_excluded) == (12, 1)
    assert "solo" not in [row["label"] for row in result.per_label]
    assert_metrics(result, mean_of(list(label_reference(studio, 3).values())))


def test_k_larger_than_the_split(studio: Studio, make_gallery: Callable[..., Path]) -> None:
    studio.ingest([make_gallery(per_label=10)], label_from_folders=True)
    result = evaluate(studio, k=500)
    assert result.n_queries == 40
    assert result.recall_at_k == 1.0  # every relevant item is somewhere in the list
    assert result.precision_at_k == pytest.approx(9 / 500)  # still divided by k
    assert result.mrr > 0
    records, vectors = split_vectors(studio)
    expected = reference_metrics([r.id for r in records], [r.label for r in records], vectors, 500)
    assert expected.pop("n_queries") == 40
    assert_metrics(result, expected)
    assert_metrics(result, mean_of(list(label_reference(studio, 500).values())))


def test_all_relevant(studio: Studio, make_gallery: Callable[..., Path]) -> None:
    studio.ingest([make_gallery(per_label=6, labels=("only",))], label_from_folders=True)
    full = evaluate(studio, k=5)  # exactly the 5 other images
    assert full.n_queries == 6
    assert full.metrics() == dict.fromkeys(METRIC_NAMES, 1.0)
    short = evaluate(studio, k=8)  # fewer than k items: precision cannot reach 1
    assert short.metrics() == dict.fromkeys(METRIC_NAMES, 1.0) | {"precision_at_k": 5 / 8}
    assert_metrics(short, mean_of(list(label_reference(studio, 8).values())))


def fake_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def test_ties_rank_in_catalog_order_not_by_id(studio: Studio) -> None:
    """Equal scores keep catalog order (added_at, then id): here the reverse of id order."""
    names = {"a": "x", "b": "x", "c": "y", "d": "x", "e": "y"}
    q, tied_1, tied_2, zero_1, zero_2 = [fake_id(n) for n in names]
    late_tie, early_tie = sorted([tied_1, tied_2])  # the larger id is catalogued first
    late_zero, early_zero = sorted([zero_1, zero_2])
    catalog = [q, early_tie, late_tie, early_zero, late_zero]
    label = dict(zip([fake_id(n) for n in names], names.values(), strict=True))
    studio.store.add_images(
        ImageRecord(
            id=i,
            original_name=f"{n}.png",
            label=label[i],
            split="train",
            width=1,
            height=1,
            file="x.png",
            source="test",
            added_at=f"2024-01-01T00:00:0{n}Z",
        )
        for n, i in enumerate(catalog)
    )
    assert [r.id for r in studio.store.list_images()] == catalog
    e = np.eye(32, dtype=np.float32)
    half = (e[0] + e[1] + e[2] + e[3]) / 2  # exact in binary: every score below is exact
    vectors = {q: e[0], tied_1: half, tied_2: half, zero_1: e[4], zero_2: e[5]}
    studio.index.upsert("base", list(vectors), np.stack(list(vectors.values())))

    ranking = build_ranking(studio.store, studio.index, "base", depth=4)
    assert list(ranking.ranked_ids[ranking.query_ids.index(q)]) == [
        early_tie,  # 0.5
        late_tie,  # 0.5
        early_zero,  # 0.0
        late_zero,  # 0.0
    ]
    # e[4] and e[5] are orthogonal to every other vector: all four score 0, in catalog order
    assert list(ranking.ranked_ids[ranking.query_ids.index(late_zero)]) == [
        q,
        early_tie,
        late_tie,
        early_zero,
    ]
    result = evaluate(studio, k=2)
    expected = reference_metrics(
        catalog, [label[i] for i in catalog], np.stack([vectors[i] for i in catalog]), 2
    )
    assert result.n_queries == expected.pop("n_queries")
    assert_metrics(result, expected)


# --- per-label table, curves, worst queries, intervals ------------------------------------------


def test_per_label_table_is_the_mean_per_query_label_worst_map_first(
    studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    root = make_gallery(per_label=6)
    (root / "solo").mkdir()
    generated_image(5, 0).save(root / "solo" / "only.png")  # excluded: no row of its own
    studio.ingest([root], label_from_folders=True)
    for split, k in (("all", 5), ("test", 3)):
        per_query = label_reference(studio, k, split)
        ranking = build_ranking(studio.store, studio.index, "base", split, depth=k)
        rows = per_label_table(ranking, k)
        assert_per_label(rows, grouped_by_label(studio, per_query))  # n_queries included
        assert "solo" not in [row["label"] for row in rows]
        assert evaluate(studio, split=split, k=k).per_label == rows


def test_metric_curves_and_worst_queries_follow_the_reference(
    studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    studio.ingest([make_gallery(per_label=6)], label_from_folders=True)
    ranking = build_ranking(studio.store, studio.index, "base", depth=20)
    ks = [1, 3, 10, 20]
    curves = metric_curves(ranking, ks)
    assert len(curves) == len(ks) * len(METRIC_NAMES)
    for k in ks:
        at_k = curves[curves.k == k].set_index("metric").value.to_dict()
        assert_metrics(at_k, mean_of(list(label_reference(studio, k).values())))
        assert_metrics(at_k, evaluate(studio, k=k).metrics())

    records, vectors = split_vectors(studio)
    ids, label_of = [r.id for r in records], {r.id: r.label for r in records}
    k = 5
    per_query = label_reference(studio, k)
    for metric in ("map", "ndcg_at_k"):
        worst = worst_queries(ranking, k, n=4, metric=metric)
        lowest = sorted(m[metric] for m in per_query.values())[:4]
        assert list(worst[metric]) == pytest.approx(lowest, abs=1e-9)
        for row in worst.itertuples():
            assert getattr(row, metric) == pytest.approx(per_query[row.query_id][metric])
            assert row.label == label_of[row.query_id]
            query_vector = vectors[ids.index(row.query_id)]
            assert row.results == reference_ranking(row.query_id, query_vector, ids, vectors)[:k]
            assert row.gains == [float(label_of[i] == row.label) for i in row.results]


def hand_ranking() -> Ranking:
    """Four queries, one relevant item each, found at rank 2, 4, 2, 4 of four."""
    hit_at = [2, 4, 2, 4]
    gains = np.array([[float(i + 1 == h) for i in range(4)] for h in hit_at])  # (4, 4)
    return Ranking(
        query_ids=["q0", "q1", "q2", "q3"],
        query_labels=["a", "b", "a", None],
        ranked_ids=np.array([[f"r{i}" for i in range(4)]] * 4, dtype=object),
        gains=gains,
        n_relevant=np.ones(4, dtype=np.int64),
        ideal_gains=np.ones((4, 1)),
    )


def test_intervals_on_a_worked_example() -> None:
    intervals = _intervals(hand_ranking(), 4)
    # mrr per query 1/2, 1/4, 1/2, 1/4: mean 0.375, sample std 0.125·2/√3, n = 4
    half = 1.96 * (0.25 / math.sqrt(3)) / 2
    assert intervals["mrr"] == pytest.approx((0.375 - half, 0.375 + half))
    assert intervals["map"] == pytest.approx((0.375 - half, 0.375 + half))  # AP = 1/rank here
    assert intervals["precision_at_k"] == pytest.approx((0.25, 0.25))  # no spread: no width
    assert intervals["recall_at_k"] == pytest.approx((1.0, 1.0))
    one = Ranking(
        ["q"],
        ["a"],
        np.array([["r0", "r1"]], dtype=object),
        np.array([[0.0, 1.0]]),
        np.array([1]),
        np.ones((1, 1)),
    )
    assert _intervals(one, 2)["mrr"] == (0.5, 0.5)  # a single query: the mean, no width


def test_per_label_and_worst_queries_on_a_worked_example() -> None:
    ranking = hand_ranking()
    rows = per_label_table(ranking, 4)
    assert [(r["label"], r["n_queries"], r["mrr"]) for r in rows] == [
        ("(unlabelled)", 1, 0.25),
        ("b", 1, 0.25),
        ("a", 2, 0.5),
    ]
    worst = worst_queries(ranking, 2, n=2)
    assert list(worst.query_id) == ["q1", "q3"]  # map 0 at k = 2; ties keep query order
    assert list(worst.results) == [["r0", "r1"], ["r0", "r1"]]
    assert list(worst.gains) == [[0.0, 0.0], [0.0, 0.0]]


def test_the_mean_lies_in_its_interval_with_the_normal_approximation(
    studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    studio.ingest([make_gallery(per_label=6)], label_from_folders=True)
    result = evaluate(studio, k=5)
    per_query = label_reference(studio, 5)
    for name in METRIC_NAMES:
        low, high = result.intervals[name]
        assert low <= result.metrics()[name] <= high, name
        values = [m[name] for m in per_query.values()]
        half = 1.96 * statistics.stdev(values) / math.sqrt(len(values))
        mean = statistics.fmean(values)
        expected = (max(0.0, mean - half), min(1.0, mean + half))  # metrics live in [0, 1]
        assert (low, high) == pytest.approx(expected, abs=1e-9), name


# --- the command line -------------------------------------------------------------------------


def run_evaluate(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOOKALIKE_DATA": str(data), "LOOKALIKE_ENCODER": "tiny-test"}
    return subprocess.run(
        [sys.executable, "-m", "core", "evaluate", *args],
        cwd=Path(__file__).parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def test_cli_evaluate_with_feedback_relevance_and_per_label(
    studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    studio.ingest([make_gallery(per_label=10)], label_from_folders=True)
    log_judgements(studio)
    expected = evaluate(studio, k=5, relevance="feedback")
    studio.index.close()
    data = studio.settings.data_dir

    full = run_evaluate(data, "--json", "--per-label", "--relevance", "feedback", "-k", "5")
    assert full.returncode == 0, full.stderr
    payload = json.loads(full.stdout)
    assert (payload["relevance"], payload["k"], payload["model"]) == ("feedback", 5, "base")
    assert (payload["n_queries"], payload["n_excluded"]) == (3, 1)
    assert_metrics(payload, expected.metrics())
    assert [row["label"] for row in payload["per_label"]] == [
        row["label"] for row in expected.per_label
    ]
    assert set(payload["intervals"]) == set(METRIC_NAMES)

    summary = run_evaluate(data, "--json", "--relevance", "feedback", "-k", "5")
    assert summary.returncode == 0, summary.stderr
    assert "per_label" not in json.loads(summary.stdout)

    bogus = run_evaluate(data, "--json", "--relevance", "bogus")
    assert bogus.returncode != 0
    assert "invalid choice" in bogus.stderr
