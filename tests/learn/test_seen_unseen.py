"""Fine-tuning that does not forget: the categories a version's feedback covered ("seen"), its
metrics over them and over the rest ("unseen"), the simulated hold-out of categories, the
guard on activating a version that forgets, and the terms that keep what the parent knows
(WiSE-FT, L2-SP, distillation).

References are independent of the code under test: the seen labels are read from the log with
plain loops, and the label-set metrics are recomputed by brute force (`reference_metrics`
restricted to the queries of those labels, every image still ranked).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core.config import Settings, load_settings
from core.encoder.heads import ResidualHead
from core.encoder.model import Encoder
from core.learn.finetune import fine_tune
from core.learn.pairs import feedback_labels
from core.learn.training import (
    Distillation,
    PairTensors,
    TrainingError,
    TrainSettings,
    fit,
    similarity_kl,
)
from core.learn.views import view_inputs, with_views
from core.measure.evaluation import EvaluationError, evaluate, label_set_metrics
from core.measure.seen import seen_unseen_rows
from core.measure.simulate import excluded_labels, simulate
from core.store import FORGETTING_TOLERANCE
from core.studio import ActivationRefused, Studio
from tests.helpers import FED_PER_LABEL, GALLERY_LABELS, reference_metrics, run_cli, run_json

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def held_out(studio: Studio, make_gallery: Callable[..., Path]) -> Studio:
    """The 4-label gallery, 40 simulated searches with half the categories left out."""
    studio.ingest([make_gallery(per_label=FED_PER_LABEL)], label_from_folders=True)
    simulate(studio, n_queries=40, seed=0, k=5, exclude_labels=0.5)
    return studio


def log_frame(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["QueryImageID", "DisplayedImageID", "InteractionType"])


def test_feedback_labels_are_queries_and_acted_on_results_of_allowed_images() -> None:
    labels = {"q": "cats", "a": "dogs", "b": "birds", "c": "fish", "t": "owls", "u": None}
    log = log_frame(
        [
            ("q", "a", "impression"),  # shown only: not feedback on dogs
            ("q", "b", "click"),
            ("q", "c", "not_similar"),  # a judged result counts, whatever the verdict
            ("q", "u", "similar"),  # unlabelled: no category
            ("t", "a", "impression"),  # t is outside `allowed` (a test image)
        ]
    )
    assert feedback_labels(log, labels, {"q", "a", "b", "c", "u"}) == ["birds", "cats", "fish"]
    assert feedback_labels(log.iloc[:0], labels, {"q"}) == []


def test_excluded_labels_are_a_seeded_share_drawn_apart_from_the_queries() -> None:
    labels = [f"label-{i:02d}" for i in range(20)]
    assert excluded_labels(labels, 0.0, seed=3) == []
    drawn = excluded_labels(labels, 0.3, seed=3)
    assert len(drawn) == 6 and drawn == sorted(drawn) and set(drawn) <= set(labels)
    assert excluded_labels(list(reversed(labels)), 0.3, seed=3) == drawn  # order-free
    assert excluded_labels(labels, 0.3, seed=4) != drawn
    with pytest.raises(ValueError, match="fraction"):
        excluded_labels(labels, 1.0, seed=0)


def test_simulated_feedback_never_touches_the_excluded_categories(held_out: Studio) -> None:
    records = {r.id: r for r in held_out.store.list_images()}
    log = held_out.store.feedback.interactions()
    excluded = {records[i].label for i in log.QueryImageID} ^ set(GALLERY_LABELS)
    assert len(excluded) == 2  # half of the four categories asked nothing
    acted = log[log.InteractionType != "impression"]
    assert not acted.empty
    assert {records[i].label for i in acted.DisplayedImageID}.isdisjoint(excluded)
    shown = {records[i].label for i in log.DisplayedImageID}
    assert shown & excluded  # still shown and logged as a person would have seen them

    # a second round with other queries keeps the same categories out with the first's seed
    again = simulate(held_out, n_queries=20, seed=1, k=5, exclude_labels=0.5, exclude_seed=0)
    assert set(again.excluded_labels) == excluded
    other = simulate(held_out, n_queries=5, seed=1, k=5, exclude_labels=0.5)
    assert other.excluded_labels == excluded_labels(GALLERY_LABELS, 0.5, seed=1)


def test_exclude_zero_simulates_exactly_as_without_the_option(
    settings_factory: Callable[[str], Studio], make_gallery: Callable[..., Path]
) -> None:
    gallery = make_gallery(per_label=FED_PER_LABEL)
    logs = []
    for name, extra in (("plain", {}), ("zero", {"exclude_labels": 0.0})):
        studio = settings_factory(name)
        studio.ingest([gallery], label_from_folders=True)
        simulate(studio, n_queries=20, seed=5, k=5, **extra)
        logs.append(studio.store.feedback.interactions().drop(columns=["Timestamp"]))
    pd.testing.assert_frame_equal(logs[0], logs[1])


@pytest.fixture
def settings_factory(
    tmp_path: Path, settings: Settings, tiny_encoder: Encoder
) -> Callable[[str], Studio]:
    """Studios over fresh data directories, configured like the `studio` fixture's."""

    def make(name: str) -> Studio:
        fresh = load_settings(tmp_path / name, environ={})
        own = replace(fresh, encoder=settings.encoder, batch_size=settings.batch_size)
        return Studio(own, encoder_loader=lambda _: tiny_encoder)

    return make


def brute_force_sets(studio: Studio, version: str, seen: set[str]) -> dict[str, dict[str, float]]:
    records = studio.store.list_images(split="test")
    ids = [r.id for r in records]
    found, vectors = studio.index.get_embeddings(version, ids)
    assert found == ids
    labels = [r.label for r in records]
    unseen = set(GALLERY_LABELS) - seen
    return {
        name: reference_metrics(ids, labels, vectors, 10, asked)
        for name, asked in (("seen", seen), ("unseen", unseen))
    }


def test_a_fine_tune_records_its_seen_labels_and_both_sets_before_and_after(
    held_out: Studio,
) -> None:
    log = held_out.store.feedback.interactions()
    records = {r.id: r for r in held_out.store.list_images()}
    acted = log[log.InteractionType != "impression"]
    expected = sorted(
        {records[i].label for i in log.QueryImageID}
        | {records[i].label for i in acted.DisplayedImageID}
    )
    assert len(expected) == 2

    report = fine_tune(held_out, TrainSettings(epochs=3))
    card = held_out.store.get_model_version(report.version).card
    assert card["seen_labels"] == expected
    for version, prefix in (("base", "metrics_before_"), (report.version, "metrics_")):
        reference = brute_force_sets(held_out, version, set(expected))
        for name in ("seen", "unseen"):
            n_queries = reference[name].pop("n_queries")
            assert card[f"{prefix}{name}"]["n_queries"] == n_queries > 0
            for metric, value in reference[name].items():
                assert card[f"{prefix}{name}"][metric] == pytest.approx(value, abs=1e-9)
    assert report.label_sets["unseen"]["after"] == card["metrics_unseen"]
    assert report.label_sets["seen"]["before"] == card["metrics_before_seen"]
    assert held_out.store.get_model_version(report.version).label_sets() == report.label_sets

    # evaluate --labels reads the card: the parent on its child's sets, the child on its own
    parent_unseen = evaluate(held_out, "base", "test", labels="unseen", labels_of=report.version)
    assert card["metrics_before_unseen"] == pytest.approx(
        parent_unseen.metrics() | {"n_queries": parent_unseen.n_queries}
    )
    assert (parent_unseen.labels, parent_unseen.labels_of) == ("unseen", report.version)
    child_seen = evaluate(held_out, report.version, "test", labels="seen")
    assert card["metrics_seen"] == pytest.approx(
        child_seen.metrics() | {"n_queries": child_seen.n_queries}
    )
    assert child_seen.labels_of == report.version
    whole = evaluate(held_out, report.version, "test")
    assert (
        child_seen.n_queries
        + evaluate(held_out, report.version, "test", labels="unseen").n_queries
        + child_seen.n_excluded
        <= whole.n_queries + whole.n_excluded
    )


def test_the_second_round_adds_to_the_first_rounds_seen_labels(held_out: Studio) -> None:
    first = fine_tune(held_out, TrainSettings(epochs=2), activate=True, force=True)
    seen_first = held_out.store.get_model_version(first.version).card["seen_labels"]
    # round 2: everything is asked about now, from the new version
    simulate(held_out, n_queries=40, seed=1, k=5)
    second = fine_tune(held_out, TrainSettings(epochs=2))
    card = held_out.store.get_model_version(second.version).card
    assert set(seen_first) < set(card["seen_labels"]) == set(GALLERY_LABELS)
    assert "metrics_unseen" not in card and set(second.label_sets) == {"seen"}  # none unseen
    assert second.parent == first.version


def test_evaluate_label_sets_need_a_version_trained_on_feedback(held_out: Studio) -> None:
    with pytest.raises(EvaluationError, match="not trained on feedback"):
        evaluate(held_out, "base", "test", labels="unseen")
    with pytest.raises(EvaluationError, match="Unknown label set"):
        evaluate(held_out, "base", "test", labels="forgotten")
    assert label_set_metrics(held_out, "base", []).keys() == {"unseen"}


def test_cli_evaluate_labels_and_simulate_exclude(
    studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    studio.ingest([make_gallery(per_label=FED_PER_LABEL)], label_from_folders=True)
    data = studio.settings.data_dir
    sim = run_json(data, "simulate", "--queries", "30", "--exclude-labels", "0.5", "-k", "5")
    assert len(sim["excluded_labels"]) == 2
    trained = run_json(data, "train", "--from-feedback", "--epochs", "2")
    assert set(trained["label_sets"]) == {"seen", "unseen"}
    payload = run_json(
        data, "evaluate", "--split", "test", "--labels", "unseen", "--labels-of", "ft-0001"
    )
    assert (payload["labels"], payload["labels_of"], payload["model"]) == (
        "unseen",
        "ft-0001",
        "base",
    )
    assert payload["map"] == pytest.approx(trained["label_sets"]["unseen"]["before"]["map"])
    plain = run_json(data, "evaluate", "--split", "test")
    assert (plain["labels"], plain["labels_of"]) == ("all", None)
    refused = run_cli(data, "evaluate", "--labels", "seen")  # base has no seen labels
    assert refused.returncode != 0 and "not trained on feedback" in refused.stderr
    rows = {row["version"]: row for row in run_json(data, "models")}
    assert rows["ft-0001"]["seen_labels"] == 2
    assert rows["ft-0001"]["label_sets"] == trained["label_sets"]
    assert rows["base"]["label_sets"] == {} and rows["base"]["seen_labels"] is None
    line = run_cli(data, "models").stdout.splitlines()[1]
    unseen = trained["label_sets"]["unseen"]
    assert f"unseen mAP {unseen['before']['map']:.4f}->{unseen['after']['map']:.4f}" in line


def forgetful(studio: Studio, drop: float) -> str:
    """A trained version whose recorded unseen mAP sits `drop` (relative) below its parent's."""
    report = fine_tune(studio, TrainSettings(epochs=1))
    before = {"map": 0.5, "mrr": 0.8}
    after = {"map": 0.5 * (1 - drop), "mrr": 0.8, "n_queries": 12}
    studio.store.update_card(report.version, metrics_unseen=after, metrics_before_unseen=before)
    return report.version


def test_activating_a_version_that_forgets_needs_a_confirmation(held_out: Studio) -> None:
    version = forgetful(held_out, drop=0.02)
    why = held_out.store.get_model_version(version).forgetting()
    assert why is not None and "mAP@10 0.4900 against 0.5000 (-2.0%)" in why
    assert why.endswith("on the test split (12 queries)")
    assert "MRR" not in why
    with pytest.raises(ActivationRefused, match="--force"):
        held_out.activate(version)
    assert held_out.active_version().version == "base"
    assert held_out.activate(version, force=True).active
    held_out.activate("base")  # rolling back to the parent is never guarded

    data = held_out.settings.data_dir
    refused = run_cli(data, "activate", version)
    assert refused.returncode != 0 and "never covered" in refused.stderr
    assert run_json(data, "activate", version, "--force") == {"active": version}
    assert [r["needs confirmation"] for r in seen_unseen_rows(held_out)] == [True]


def test_a_drop_within_the_tolerance_activates_without_asking(held_out: Studio) -> None:
    version = forgetful(held_out, drop=FORGETTING_TOLERANCE / 2)
    assert held_out.store.get_model_version(version).forgetting() is None
    assert held_out.activate(version).active


def test_train_activate_is_refused_for_a_version_that_forgets(
    held_out: Studio, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.learn.finetune as finetune

    real = finetune.label_set_metrics

    def worse_after(studio: Studio, version: str, seen: list[str]) -> dict[str, dict[str, float]]:
        found = real(studio, version, seen)
        if version != "base":
            found["unseen"] = {**found["unseen"], "map": found["unseen"]["map"] * 0.9}
        return found

    monkeypatch.setattr(finetune, "label_set_metrics", worse_after)
    with pytest.raises(ActivationRefused):
        fine_tune(held_out, TrainSettings(epochs=1), activate=True)
    # the version is kept (trained, indexed, evaluated); only the activation waits
    assert [v.version for v in held_out.versions()] == ["base", "ft-0001"]
    assert held_out.active_version().version == "base"
    report = fine_tune(held_out, TrainSettings(epochs=1), activate=True, force=True)
    assert held_out.active_version().version == report.version


# --- the terms that keep what the parent knows ----------------------------------------------


def toy_problem(seed: int = 0) -> tuple[torch.Tensor, PairTensors]:
    """(n, d) unit inputs in four clusters and pairs inside each cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 16))
    x = np.concatenate([c + 0.8 * rng.normal(size=(12, 16)) for c in centres])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    anchors = torch.arange(48)
    positives = torch.tensor([(i // 12) * 12 + (i + 1) % 12 for i in range(48)])
    pairs = PairTensors(
        anchors=anchors,
        positives=positives,
        negatives=torch.zeros((48, 0), dtype=torch.long),
        weights=torch.ones(48),
    )
    return torch.from_numpy(x.astype(np.float32)), pairs


def trained_head(**settings: object) -> tuple[ResidualHead, torch.Tensor]:
    inputs, pairs = toy_problem()
    head = ResidualHead(16)
    config = TrainSettings(epochs=8, batch_size=16, lr=1e-2, val_fraction=0.0, **settings)  # type: ignore[arg-type]
    fit(head, inputs, pairs, config, distillation=Distillation(inputs, torch.arange(48), 32))
    return head, inputs


def test_wise_keeps_that_share_of_the_update() -> None:
    full, _ = trained_head()
    half, _ = trained_head(wise=0.5)
    torch.testing.assert_close(half.linear.weight, 0.5 * full.linear.weight)
    assert float(full.linear.weight.detach().abs().max()) > 0


def test_l2sp_and_distillation_hold_the_head_nearer_its_start() -> None:
    free, inputs = trained_head()
    held, _ = trained_head(l2sp=1.0)
    assert held.linear.weight.norm() < 0.5 * free.linear.weight.norm()

    def drift(head: ResidualHead) -> float:
        with torch.no_grad():
            return float(similarity_kl(head(inputs), inputs, 0.05))

    distilled, _ = trained_head(distill=5.0)
    assert drift(distilled) < 0.5 * drift(free)


def test_similarity_kl_is_zero_for_the_same_ranking_and_positive_otherwise() -> None:
    inputs, _ = toy_problem()
    assert float(similarity_kl(inputs, inputs, 0.05)) == pytest.approx(0.0, abs=1e-6)
    moved = torch.nn.functional.normalize(inputs + 0.5 * torch.roll(inputs, 1, dims=1), dim=1)
    assert float(similarity_kl(moved, inputs, 0.05)) > 1e-3


def test_keep_settings_are_checked() -> None:
    for bad in ({"wise": 0.0}, {"wise": 1.5}, {"l2sp": -1.0}, {"distill": -0.1}):
        with pytest.raises(TrainingError):
            TrainSettings(**bad)  # type: ignore[arg-type]
    assert json.loads(json.dumps(TrainSettings().__dict__))["wise"] == 1.0


def test_with_views_adds_one_pair_per_source_sharing_its_group() -> None:
    base = PairTensors(
        anchors=torch.tensor([0, 1]),
        positives=torch.tensor([1, 0]),
        negatives=torch.tensor([[2, 3], [3, 2]]),
        weights=torch.tensor([1.0, 0.3]),
        groups=torch.tensor([0, 0, -1, -1, -1]),
    )
    sources = torch.tensor([0, 2, 3, 4])
    mixed = with_views(base, sources, first_view=5, weight=0.5, seed=0)
    assert mixed.anchors.tolist() == [0, 1, 0, 2, 3, 4]
    assert mixed.positives.tolist() == [1, 0, 5, 6, 7, 8]
    assert mixed.weights.tolist() == [1.0, 0.30000001192092896, 0.5, 0.5, 0.5, 0.5]
    assert mixed.negatives.shape == (6, 2)
    for source, negatives in zip(sources.tolist(), mixed.negatives[2:].tolist(), strict=True):
        assert source not in negatives and set(negatives) <= set(sources.tolist())
    groups = mixed.groups
    assert groups is not None and len(groups) == 9
    assert groups[5] == groups[0] == 0  # the view of a grouped image joins its group
    for k, source in enumerate([2, 3, 4]):  # an ungrouped image and its view: a fresh group
        assert groups[6 + k] == groups[source] >= 1
    assert len({int(groups[s]) for s in (2, 3, 4)}) == 3
    alike = mixed.known_alike()
    assert alike is not None and not alike[2, 2]  # a pair is never its own ignored candidate
    assert alike[0, 2] and alike[2, 0]  # image 0, its view and image 1: one group
    assert not alike[3, 4]  # image 2 against the view of image 3: a negative


def test_a_head_fine_tune_with_views_trains_on_one_view_per_train_image(fed: Studio) -> None:
    report = fine_tune(fed, TrainSettings(epochs=2, views=0.5))
    card = fed.store.get_model_version(report.version).card
    n_train = len(fed.store.list_images(split="train"))
    assert card["views"] == n_train and card["settings"]["views"] == 0.5
    ids = sorted(r.id for r in fed.store.list_images())
    found, _ = fed.index.get_embeddings(report.version, ids)
    assert found == ids  # the gallery is indexed, not the views


def test_view_inputs_are_seeded_rows_of_vector_and_taps(fed: Studio) -> None:
    encoder = fed.encoder(fed.active_version())
    ids = [r.id for r in fed.store.list_images(split="train")][:3]
    first = view_inputs(fed.gallery_image, encoder, ids, seed=0)
    np.testing.assert_array_equal(first, view_inputs(fed.gallery_image, encoder, ids, seed=0))
    assert not np.allclose(first, view_inputs(fed.gallery_image, encoder, ids, seed=1))
    assert first.shape[0] == 3 and first.shape[1] > encoder.dim  # the taps follow the vector
    np.testing.assert_allclose(np.linalg.norm(first[:, : encoder.dim], axis=1), 1.0, atol=1e-5)
