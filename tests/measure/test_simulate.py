"""Simulated users: reproducible, train-only, logged through the store like the UI.

Expected values come from the exported log, raw SQL on the catalog and brute-force cosine over
the stored vectors, never from the simulation's own report alone.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.config import Settings
from core.encoder.model import Encoder
from core.measure.simulate import SIMULATOR_USER, ClickModel, SimulationError, simulate
from core.studio import Studio
from tests.helpers import raw

PER_LABEL = 6  # 4 labels x 6 images: about a dozen train images


def split_of(studio: Studio) -> dict[str, str]:
    return dict(raw(studio.settings.catalog_path, "SELECT id, split FROM images"))


def label_of(studio: Studio) -> dict[str, str | None]:
    return dict(raw(studio.settings.catalog_path, "SELECT id, label FROM images"))


def shown(studio: Studio, interaction_type: str) -> list[tuple[int, str, str, int]]:
    """(query_id, query_image_id, displayed_image_id, position) of every row of one type."""
    return raw(
        studio.settings.catalog_path,
        "SELECT query_id, query_image_id, displayed_image_id, position FROM interactions"
        " WHERE interaction_type = ? ORDER BY id",
        (interaction_type,),
    )


def without_timestamps(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns="Timestamp")


@pytest.fixture
def gallery(make_gallery: Callable[..., Path]) -> Path:
    return make_gallery(per_label=PER_LABEL)


@pytest.fixture
def labelled(studio: Studio, gallery: Path) -> Studio:
    studio.ingest([gallery], label_from_folders=True)
    return studio


def studio_at(settings: Settings, tiny_encoder: Encoder, data_dir: Path) -> Studio:
    return Studio(replace(settings, data_dir=data_dir), encoder_loader=lambda n: tiny_encoder)


@pytest.fixture
def twin(settings: Settings, tiny_encoder: Encoder, gallery: Path, tmp_path: Path) -> Studio:
    """A second data directory holding the same gallery."""
    other = studio_at(settings, tiny_encoder, tmp_path / "data-twin")
    other.ingest([gallery], label_from_folders=True)
    return other


# --- reproducibility --------------------------------------------------------------------------


def test_the_same_seed_on_the_same_gallery_gives_the_same_log(labelled: Studio, twin: Studio):
    first = simulate(labelled, n_queries=12, seed=3, k=5)
    second = simulate(twin, n_queries=12, seed=3, k=5)

    log = labelled.store.feedback.interactions()
    assert first == second
    assert {"impression", "click", "similar", "not_similar"} <= set(log["InteractionType"])
    pd.testing.assert_frame_equal(
        without_timestamps(log), without_timestamps(twin.store.feedback.interactions())
    )


def test_the_same_seed_gives_the_same_log_whatever_order_the_gallery_was_ingested_in(
    labelled: Studio, settings: Settings, tiny_encoder: Encoder, gallery: Path, tmp_path: Path
):
    reordered = studio_at(settings, tiny_encoder, tmp_path / "data-reordered")
    for folder in sorted(gallery.glob("*/*"), reverse=True):  # the same images, other order
        reordered.ingest([folder])
    conn = sqlite3.connect(reordered.settings.catalog_path)
    with conn:  # the same labels too
        conn.executemany(
            "UPDATE images SET label = ? WHERE id = ?",
            [(r.label, r.id) for r in labelled.store.list_images()],
        )
    conn.close()
    assert reordered.store.label_counts() == labelled.store.label_counts()
    assert [r.id for r in reordered.store.list_images()] != [
        r.id for r in labelled.store.list_images()
    ]  # the catalogue order differs

    simulate(labelled, n_queries=12, seed=3, k=5)
    simulate(reordered, n_queries=12, seed=3, k=5)

    pd.testing.assert_frame_equal(
        without_timestamps(labelled.store.feedback.interactions()),
        without_timestamps(reordered.store.feedback.interactions()),
    )


def test_a_different_seed_gives_a_different_log(labelled: Studio, twin: Studio):
    simulate(labelled, n_queries=12, seed=3, k=5)
    simulate(twin, n_queries=12, seed=4, k=5)

    first = without_timestamps(labelled.store.feedback.interactions())
    second = without_timestamps(twin.store.feedback.interactions())
    assert not first.equals(second)


# --- the report against the exported log --------------------------------------------------------


def test_report_json_counts_equal_the_exported_log(labelled: Studio, tmp_path: Path):
    report = json.loads(json.dumps(simulate(labelled, n_queries=15, seed=1, k=4).as_dict()))

    out = tmp_path / "log.csv"
    labelled.store.feedback.export(out, "csv")
    log = pd.read_csv(out)
    impressions = int((log["InteractionType"] == "impression").sum())
    clicks = int((log["InteractionType"] == "click").sum())
    queries = raw(labelled.settings.catalog_path, "SELECT COUNT(*) FROM queries")[0][0]

    assert clicks > 0
    assert report == {
        "queries": queries,
        "impressions": impressions,
        "clicks": clicks,
        "ctr": pytest.approx(clicks / impressions),
        "excluded_labels": [],
    }
    assert (queries, impressions) == (15, 15 * 4)


# --- what is searched and shown -------------------------------------------------------------------


def test_queries_and_results_are_train_images_only(labelled: Studio):
    splits = split_of(labelled)
    assert set(splits.values()) == {"train", "test"}  # so the check below could fail

    simulate(labelled, n_queries=20, seed=2, k=50)  # k past the train split: all of it shown

    train = {i for i, split in splits.items() if split == "train"}
    per_query: dict[tuple[int, str], set[str]] = {}
    for query_id, query_image, image, _ in shown(labelled, "impression"):
        per_query.setdefault((query_id, query_image), set()).add(image)
    assert len(per_query) == 20
    for (_, query_image), images in per_query.items():
        assert query_image in train
        assert images == train - {query_image}


def test_results_are_the_exact_cosine_ranking_of_the_train_split(labelled: Studio):
    simulate(labelled, n_queries=10, seed=5, k=4)

    splits = split_of(labelled)
    ids, vectors = labelled.index.get_embeddings("base")
    train = [i for i in ids if splits[i] == "train"]
    vector_of = dict(zip(ids, vectors.astype(np.float64), strict=True))
    rows = shown(labelled, "impression")
    for query_id in sorted({q for q, _, _, _ in rows}):
        mine = [(image, pos) for q, _, image, pos in rows if q == query_id]
        query_image = next(qi for q, qi, _, _ in rows if q == query_id)
        others = [i for i in train if i != query_image]
        best = sorted(others, key=lambda i: -float(vector_of[i] @ vector_of[query_image]))[:4]
        assert mine == [(image, pos) for pos, image in enumerate(best, start=1)]


def test_queries_are_logged_under_the_simulator_with_source_simulate(labelled: Studio):
    labelled.store.ensure_user("alice")

    simulate(labelled, n_queries=6, seed=0, k=3)

    path = labelled.settings.catalog_path
    simulator = raw(path, "SELECT id FROM users WHERE name = ?", (SIMULATOR_USER,))
    assert SIMULATOR_USER == "simulator" and len(simulator) == 1
    assert set(raw(path, "SELECT user_id, source, parent_id, model_version FROM queries")) == {
        (simulator[0][0], "simulate", None, "base")
    }
    assert set(raw(path, "SELECT DISTINCT user_id FROM interactions")) == {simulator[0]}


# --- the click model ---------------------------------------------------------------------------


def test_without_noise_every_click_shares_the_query_label(labelled: Studio):
    simulate(labelled, n_queries=30, seed=7, k=6, model=ClickModel(noise=0.0))

    labels = label_of(labelled)
    clicks = shown(labelled, "click")
    assert clicks
    assert all(labels[image] == labels[query] for _, query, image, _ in clicks)
    impressions = shown(labelled, "impression")
    assert any(labels[image] != labels[query] for _, query, image, _ in impressions)


def test_labels_follow_the_true_categories(labelled: Studio):
    simulate(labelled, n_queries=30, seed=8, k=6, model=ClickModel(label_share=1.0))

    labels = label_of(labelled)
    similar, not_similar = shown(labelled, "similar"), shown(labelled, "not_similar")
    assert similar and not_similar
    assert all(labels[image] == labels[query] for _, query, image, _ in similar)
    assert all(labels[image] != labels[query] for _, query, image, _ in not_similar)


def test_full_noise_and_no_position_decay_click_every_result(labelled: Studio):
    report = simulate(
        labelled, n_queries=8, seed=9, k=5, model=ClickModel(examine_decay=0.0, noise=1.0)
    )

    impressions = shown(labelled, "impression")
    clicks = shown(labelled, "click")
    assert sorted(clicks) == sorted(impressions)
    assert (report.clicks, report.impressions, report.ctr) == (40, 40, 1.0)


def test_only_examined_positions_are_clicked_or_labelled(labelled: Studio):
    # p ** -60 is 1 at the top and below 1e-18 from position 2 on: only the top is examined.
    model = ClickModel(examine_decay=60.0, noise=1.0, label_share=1.0)

    simulate(labelled, n_queries=10, seed=10, k=5, model=model)

    acted = shown(labelled, "click") + shown(labelled, "similar") + shown(labelled, "not_similar")
    assert len(shown(labelled, "click")) == 10
    assert {position for _, _, _, position in acted} == {1}


def test_click_rate_per_position_follows_the_examination_curve(labelled: Studio):
    # With noise 1 every examined result is clicked, so the click rate at p is P(examine p).
    model = ClickModel(examine_decay=0.6, noise=1.0, label_share=0.0)
    n = 200

    simulate(labelled, n_queries=n, seed=11, k=5, model=model)

    per_position = Counter(position for _, _, _, position in shown(labelled, "click"))
    for position in range(1, 6):
        assert per_position[position] / n == pytest.approx(position**-0.6, abs=0.12), position
    assert per_position[1] == n


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"examine_decay": -0.1}, "examine_decay must be >= 0"),
        ({"noise": -0.01}, r"noise must be a probability in \[0, 1\]"),
        ({"noise": 1.5}, r"noise must be a probability in \[0, 1\]"),
        ({"label_share": -1.0}, r"label_share must be a probability in \[0, 1\]"),
        ({"label_share": 1.01}, r"label_share must be a probability in \[0, 1\]"),
    ],
)
def test_click_model_refuses_values_out_of_range(options: dict[str, float], message: str):
    with pytest.raises(SimulationError, match=message):
        ClickModel(**options)


def test_simulate_refuses_no_queries_or_k_below_one_and_writes_nothing(labelled: Studio):
    for n_queries, k in [(0, 10), (-3, 10), (5, 0)]:
        with pytest.raises(SimulationError, match="at least one query and k >= 1"):
            simulate(labelled, n_queries=n_queries, k=k)

    path = labelled.settings.catalog_path
    assert raw(path, "SELECT COUNT(*) FROM queries") == [(0,)]
    assert raw(path, "SELECT COUNT(*) FROM users") == [(0,)]


def test_simulate_refuses_a_gallery_without_labelled_train_images(studio: Studio, gallery: Path):
    studio.ingest([gallery])  # no labels

    with pytest.raises(SimulationError, match="labelled train images"):
        simulate(studio, n_queries=5)

    assert raw(studio.settings.catalog_path, "SELECT COUNT(*) FROM queries") == [(0,)]


def test_simulate_refuses_an_empty_gallery(studio: Studio):
    with pytest.raises(SimulationError, match="labelled train images"):
        simulate(studio, n_queries=5)
