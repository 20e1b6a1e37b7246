"""core.learn.training on constructed data: a learnable problem is learnt (loss falls, held-out
recall rises, measured by brute force here), early stopping keeps the best epoch, the NaN / collapse
guardrails stop the run, and callbacks hear every step and epoch and may cancel."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from core.encoder.heads import ResidualHead
from core.encoder.registry import EncoderError
from core.learn.training import PairTensors, TrainingCancelled, TrainingError, TrainSettings, fit

N_POINTS, DIM, N_CLASSES = 200, 16, 8
TRAIN_ROWS = np.arange(120)  # pairs are drawn from these only
HELD_OUT = np.arange(120, N_POINTS)  # recall is measured on these


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tensors here are tiny: thread hand-offs cost more than they save (much more on a
    loaded machine), so run single-threaded and put the setting back after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def hidden_classes(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 16) unit vectors of 8 classes: the class lives in 4 latent dims, 12 more are noise
    as strong, and a fixed random mixing hides which is which, so plain cosine is mediocre
    but a linear map can undo it."""
    rng = np.random.default_rng(seed)
    labels = np.arange(N_POINTS) % N_CLASSES  # (n,)
    centres = rng.normal(size=(N_CLASSES, 4))
    signal = centres[labels] + rng.normal(scale=0.15, size=(N_POINTS, 4))
    latent = np.concatenate([signal, rng.normal(size=(N_POINTS, DIM - 4))], axis=1)
    mixed = latent @ rng.normal(size=(DIM, DIM))
    return (mixed / np.linalg.norm(mixed, axis=1, keepdims=True)).astype(np.float32), labels


def class_pairs(labels: np.ndarray, n_pairs: int = 400, seed: int = 1) -> PairTensors:
    """Random same-class (anchor, positive) pairs among TRAIN_ROWS, 3 other-class negatives."""
    rng = np.random.default_rng(seed)
    train_labels = labels[TRAIN_ROWS]
    anchors = rng.choice(TRAIN_ROWS, n_pairs)
    positives = []
    for a in anchors:
        same = TRAIN_ROWS[train_labels == labels[a]]
        positives.append(rng.choice(same[same != a]))
    negatives = [
        rng.choice(TRAIN_ROWS[train_labels != labels[a]], 3, replace=False) for a in anchors
    ]
    return PairTensors(
        anchors=torch.as_tensor(anchors, dtype=torch.long),
        positives=torch.as_tensor(np.array(positives), dtype=torch.long),
        negatives=torch.as_tensor(np.array(negatives), dtype=torch.long),
        weights=torch.ones(n_pairs),
    )


def random_pairs(n_points: int, n_pairs: int, seed: int) -> PairTensors:
    rng = np.random.default_rng(seed)
    return PairTensors(
        anchors=torch.as_tensor(rng.integers(0, n_points, n_pairs)),
        positives=torch.as_tensor(rng.integers(0, n_points, n_pairs)),
        negatives=torch.as_tensor(rng.integers(0, n_points, (n_pairs, 3))),
        weights=torch.ones(n_pairs),
    )


def reference_recall_at_5(vectors: np.ndarray, labels: np.ndarray) -> float:
    """Mean over queries of (same-class items among the 5 nearest others) / (same-class others),
    one query at a time with plain cosine."""
    total = 0.0
    for q in range(len(vectors)):
        others = [j for j in range(len(vectors)) if j != q]
        cosine = {
            j: float(vectors[q] @ vectors[j])
            / float(np.linalg.norm(vectors[q]) * np.linalg.norm(vectors[j]))
            for j in others
        }
        top = sorted(others, key=lambda j: -cosine[j])[:5]
        relevant = sum(1 for j in others if labels[j] == labels[q])
        total += sum(1 for j in top if labels[j] == labels[q]) / relevant
    return total / len(vectors)


def apply(model: nn.Module, inputs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out: np.ndarray = model(torch.from_numpy(inputs)).numpy()
    return out


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class Recorder:
    """A callback that writes down what it hears and can cancel at a given (epoch, step)."""

    model: nn.Module | None = None
    cancel_at: tuple[int, int] | None = None
    events: list[tuple[Any, ...]] = field(default_factory=list)
    states: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    def on_step(self, epoch: int, step: int, steps: int, loss: float) -> None:
        self.events.append(("step", epoch, step, steps, loss))
        if (epoch, step) == self.cancel_at:
            raise TrainingCancelled("stopped by the user")

    def on_epoch(self, epoch: int, train_loss: float, val_loss: float | None) -> None:
        self.events.append(("epoch", epoch, train_loss, val_loss))
        if self.model is not None:
            self.states[epoch] = state_of(self.model)


# --- the head --------------------------------------------------------------------------------


def test_residual_head_starts_as_the_identity_on_normalised_inputs() -> None:
    raw = np.random.default_rng(3).normal(size=(10, DIM)).astype(np.float32) * 5
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    out = apply(ResidualHead(DIM), raw)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_a_head_with_taps_starts_as_the_identity_and_refuses_other_widths() -> None:
    raw = np.random.default_rng(5).normal(size=(6, DIM + 3)).astype(np.float32)
    head = ResidualHead(DIM, taps=3)
    assert tuple(head.linear.weight.shape) == (DIM, DIM + 3)
    embedding = raw[:, :DIM]
    np.testing.assert_allclose(
        apply(head, raw), embedding / np.linalg.norm(embedding, axis=1, keepdims=True), atol=1e-6
    )
    with pytest.raises(EncoderError, match="columns"):
        apply(head, raw[:, :DIM])


# --- in-batch candidates known to be alike ---------------------------------------------------


def test_known_alike_marks_the_same_group_and_the_same_image_off_the_diagonal() -> None:
    # rows 0, 1 form group 0; rows 3, 4 group 1; rows 2 and 5 belong to none
    groups = torch.tensor([0, 0, -1, 1, 1, -1])
    pairs = PairTensors(
        anchors=torch.tensor([0, 3, 2, 5]),
        positives=torch.tensor([1, 4, 0, 2]),
        negatives=torch.zeros(4, 0, dtype=torch.long),
        weights=torch.ones(4),
        groups=groups,
    )
    alike = pairs.known_alike()
    assert alike is not None
    # [i, j]: positive j is like anchor i (one group, or the same image), or is the image of
    # positive i again; never i's own pair
    expected = [
        [False, False, True, False],  # anchor 0 (group 0): positive 0 (row 0) is in its group
        [False, False, False, False],
        # anchor 2 (alone): positive 3 is row 2 itself, and positive 0 (row 1) shares a group
        # with anchor 2's own positive (row 0), so it is as alike as that one
        [True, False, False, True],
        [False, False, False, False],  # anchor 5: positive 3 is row 2, another image
    ]
    assert alike.tolist() == expected
    assert (
        PairTensors(pairs.anchors, pairs.positives, pairs.negatives, pairs.weights).known_alike()
        is None
    )
    taken = pairs.take(torch.tensor([0, 2])).known_alike()
    assert taken is not None and taken.tolist() == [[False, True], [True, False]]
    # two pairs of one query image (row 5, in no group): each positive is like the other anchor
    shared = PairTensors(
        torch.tensor([5, 5, 2]),
        torch.tensor([2, 0, 3]),
        torch.zeros(3, 0, dtype=torch.long),
        torch.ones(3),
        groups,
    )
    alike = shared.known_alike()
    assert alike is not None
    assert alike.tolist() == [[False, True, False], [True, False, False], [True, False, False]]


def test_known_alike_candidates_are_left_out_of_the_loss() -> None:
    vectors, labels = hidden_classes()
    pairs = class_pairs(labels, 64)
    grouped = PairTensors(
        pairs.anchors,
        pairs.positives,
        pairs.negatives,
        pairs.weights,
        torch.as_tensor(labels, dtype=torch.long),
    )
    settings = TrainSettings(epochs=1, val_fraction=0, batch_size=64)
    plain = fit(ResidualHead(DIM), torch.from_numpy(vectors), pairs, settings).train_loss
    masked = fit(ResidualHead(DIM), torch.from_numpy(vectors), grouped, settings).train_loss
    assert masked[0] < plain[0]  # same-class positives no longer count against each anchor


def test_a_batch_whose_anchors_are_one_image_is_not_a_collapse() -> None:
    vectors, _ = hidden_classes()
    pairs = PairTensors(
        anchors=torch.zeros(8, dtype=torch.long),
        positives=torch.arange(1, 9),
        negatives=torch.arange(10, 34).reshape(8, 3),
        weights=torch.ones(8),
    )
    history = fit(
        ResidualHead(DIM), torch.from_numpy(vectors), pairs, TrainSettings(epochs=2, val_fraction=0)
    )
    assert len(history.train_loss) == 2


class TwoInputs(nn.Module):
    """A head whose taps come as a second argument (a tower's cached maps and taps)."""

    def __init__(self, head: ResidualHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([x, taps], dim=1))


def test_fit_passes_a_tuple_of_inputs_row_by_row_as_arguments() -> None:
    vectors, labels = hidden_classes()
    taps = np.random.default_rng(2).normal(size=(N_POINTS, 4)).astype(np.float32)
    pairs, settings = class_pairs(labels, 100), TrainSettings(epochs=3, lr=1e-2)
    joined, split = ResidualHead(DIM, taps=4), TwoInputs(ResidualHead(DIM, taps=4))
    together = fit(
        joined, torch.from_numpy(np.concatenate([vectors, taps], axis=1)), pairs, settings
    )
    apart = fit(split, (torch.from_numpy(vectors), torch.from_numpy(taps)), pairs, settings)
    assert together.train_loss == pytest.approx(apart.train_loss, rel=1e-5)
    torch.testing.assert_close(joined.linear.weight, split.head.linear.weight)


# --- learning --------------------------------------------------------------------------------


def test_fit_learns_hidden_classes_loss_falls_and_held_out_recall_rises() -> None:
    vectors, labels = hidden_classes()
    head = ResidualHead(DIM)
    settings = TrainSettings(epochs=40, lr=2e-2, batch_size=64, patience=40)
    history = fit(head, torch.from_numpy(vectors), class_pairs(labels), settings)

    assert history.train_loss[-1] < history.train_loss[0]
    assert len(history.train_loss) == len(history.val_loss) == 40 and not history.stopped_early
    before = reference_recall_at_5(vectors[HELD_OUT], labels[HELD_OUT])
    after = reference_recall_at_5(apply(head, vectors)[HELD_OUT], labels[HELD_OUT])
    assert before < 0.25  # the mixing hides the classes from plain cosine
    assert after > before + 0.15, (before, after)
    np.testing.assert_allclose(np.linalg.norm(apply(head, vectors), axis=1), 1.0, atol=1e-5)


def test_fit_is_reproducible_for_a_seed() -> None:
    vectors, labels = hidden_classes(seed=4)
    pairs, settings = class_pairs(labels, n_pairs=100), TrainSettings(epochs=3, lr=1e-2)
    first, second = ResidualHead(DIM), ResidualHead(DIM)
    assert fit(first, torch.from_numpy(vectors), pairs, settings).train_loss == (
        fit(second, torch.from_numpy(vectors), pairs, settings).train_loss
    )
    assert torch.equal(first.linear.weight, second.linear.weight)


def test_early_stopping_restores_the_best_validation_epoch() -> None:
    # Random pairs: nothing generalises, so the validation loss soon stops improving.
    inputs = torch.from_numpy(np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32))
    head = ResidualHead(8)
    recorder = Recorder(model=head)
    settings = TrainSettings(epochs=30, lr=5e-2, batch_size=16, val_fraction=0.3, patience=1)
    history = fit(head, inputs, random_pairs(60, 60, seed=0), settings, [recorder])

    epochs_run = len(history.train_loss)
    assert history.stopped_early and epochs_run < settings.epochs
    # patience 1: the run ends on the first epoch that is no better than the best so far
    assert history.best_epoch == epochs_run - 1
    assert history.val_loss[history.best_epoch - 1] == min(history.val_loss)
    assert history.val_loss[-1] >= history.val_loss[history.best_epoch - 1]
    final = state_of(head)
    assert all(torch.equal(final[k], v) for k, v in recorder.states[history.best_epoch].items())
    assert not torch.equal(final["linear.weight"], recorder.states[epochs_run]["linear.weight"])


# --- callbacks -------------------------------------------------------------------------------


def test_callbacks_hear_every_step_then_the_epoch_in_order() -> None:
    vectors, labels = hidden_classes()
    recorder = Recorder()
    settings = TrainSettings(epochs=3, batch_size=32, val_fraction=0.0)
    history = fit(
        ResidualHead(DIM),
        torch.from_numpy(vectors),
        class_pairs(labels, 80),
        settings,
        [recorder, Recorder()],
    )

    steps = 3  # ceil(80 / 32), every pair trains without a validation slice
    expected = [
        kind
        for epoch in range(1, 4)
        for kind in [("step", epoch, s, steps) for s in range(1, steps + 1)] + [("epoch", epoch)]
    ]
    assert [e[:4] if e[0] == "step" else e[:2] for e in recorder.events] == expected
    for epoch in range(1, 4):
        step_losses = [e[4] for e in recorder.events if e[0] == "step" and e[1] == epoch]
        [(_, _, train_loss, val_loss)] = [
            e for e in recorder.events if e[0] == "epoch" and e[1] == epoch
        ]
        assert train_loss == pytest.approx(np.mean(step_losses), rel=1e-9)
        assert train_loss == history.train_loss[epoch - 1] and val_loss is None
    assert history.val_loss == history.train_loss  # no slice: training loss stands in


def test_a_callback_raising_cancelled_stops_the_run_where_it_was() -> None:
    vectors, labels = hidden_classes()
    recorder = Recorder(cancel_at=(2, 1))
    settings = TrainSettings(epochs=10, batch_size=32)
    with pytest.raises(TrainingCancelled):
        fit(
            ResidualHead(DIM),
            torch.from_numpy(vectors),
            class_pairs(labels, 100),
            settings,
            [recorder],
        )
    assert recorder.events[-1][:3] == ("step", 2, 1)
    assert [e[1] for e in recorder.events if e[0] == "epoch"] == [1]


# --- guardrails ------------------------------------------------------------------------------


def test_a_nan_loss_stops_with_a_training_error() -> None:
    vectors, labels = hidden_classes()
    vectors[TRAIN_ROWS[0]] = np.nan  # a corrupt vector: every pair below uses it
    pairs = class_pairs(labels, 40)
    pairs.negatives[:, 0] = int(TRAIN_ROWS[0])
    with pytest.raises(TrainingError, match="NaN"):
        fit(ResidualHead(DIM), torch.from_numpy(vectors), pairs, TrainSettings(epochs=2))


class Constant(nn.Module):
    """Every input maps to the same unit vector: a collapsed embedding."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, D)
        return nn.functional.normalize(self.scale * torch.ones_like(x), dim=-1)


def test_a_collapsed_embedding_stops_with_a_training_error() -> None:
    vectors, labels = hidden_classes()
    recorder = Recorder()
    with pytest.raises(TrainingError, match="collapse"):
        fit(
            Constant(DIM),
            torch.from_numpy(vectors),
            class_pairs(labels, 40),
            TrainSettings(epochs=2),
            [recorder],
        )
    assert recorder.events == []  # stopped on the first step, before reporting it


@pytest.mark.parametrize("n_pairs", [0, 1])
def test_fewer_than_two_pairs_is_a_training_error(n_pairs: int) -> None:
    vectors, labels = hidden_classes()
    pairs = class_pairs(labels, 40).take(torch.arange(n_pairs))
    with pytest.raises(TrainingError, match="pairs"):
        fit(ResidualHead(DIM), torch.from_numpy(vectors), pairs, TrainSettings())


@pytest.mark.parametrize(
    "bad",
    [
        {"mode": "everything"},
        {"blocks": 0},
        {"epochs": 0},
        {"batch_size": 1},
        {"lr": 0.0},
        {"temperature": -0.1},
        {"val_fraction": 1.0},
        {"val_fraction": -0.1},
        {"patience": 0},
    ],
)
def test_bad_settings_are_a_training_error(bad: dict[str, Any]) -> None:
    with pytest.raises(TrainingError):
        TrainSettings(**bad)


def test_an_unknown_mode_names_the_available_ones() -> None:
    with pytest.raises(TrainingError, match=r"'everything'.*head, partial, full"):
        TrainSettings(mode="everything")
    with pytest.raises(TrainingError, match=r"'everything'.*head, partial, full"):
        TrainSettings.for_mode("everything")


def test_mode_defaults_then_overrides_and_none_keeps_the_default() -> None:
    partial = TrainSettings.for_mode("partial", epochs=None, temperature=0.1)
    assert (partial.mode, partial.lr, partial.epochs, partial.temperature) == (
        "partial",
        3e-4,
        15,
        0.1,
    )
    # the head's one default beyond the dataclass's: L2-SP toward where it starts
    assert TrainSettings.for_mode("head") == TrainSettings(l2sp=0.03)
    assert TrainSettings.for_mode("head", l2sp=0.0) == TrainSettings()
