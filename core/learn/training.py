"""Contrastive fine-tuning: a model-agnostic loop with callbacks, and the `head` mode.

`fit` trains any module whose forward maps (B, D) inputs to (B, D') unit vectors on pairs
(anchor, positive, negatives, weight) with a contrastive loss; it knows nothing about the model.
AdamW, a cosine learning-rate schedule, gradient clipping, early stopping on a validation
slice of the pairs, and two guardrails: a NaN loss or a collapsed embedding (variance near
zero) stops the run with `TrainingError`. Callbacks hear about every step and epoch and may
cancel by raising `TrainingCancelled`.

`ResidualHead` is the `head` mode's adapter on frozen encoder features:
x -> normalise(x + W x), with W initialised to zero, so training starts from the base ranking.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn

from core.choices import TRAIN_MODES
from core.errors import LookalikeError
from core.learn.losses import InfoNCELoss

MODES = TRAIN_MODES
# Per-mode defaults (`TrainSettings.for_mode`): the tower modes move pretrained convolutions,
# which wants a lower rate and fewer epochs than an adapter starting at zero (demo loop). The
# head keeps near its start with L2-SP 0.03: on the demo loop, over three training seeds, it
# lifted test mAP 1.153x -> 1.173x, the held-out categories' 0.98x -> 1.04x and new
# categories' 1.00x -> 1.08x (README, "Fine-tuning that does not forget").
MODE_DEFAULTS: dict[str, dict[str, float | int]] = {
    "head": {"l2sp": 0.03},
    "partial": {"lr": 3e-4, "epochs": 15, "batch_size": 64},
    "full": {"lr": 1e-4, "epochs": 5, "batch_size": 32},
}


class TrainingError(LookalikeError, RuntimeError):
    """Training stopped because it went wrong (NaN loss, collapse, no pairs); one sentence."""


class TrainingCancelled(RuntimeError):
    """A callback asked the run to stop; nothing is written."""


@dataclass(frozen=True)
class TrainSettings:
    """Hyper-parameters of one fine-tuning run."""

    mode: str = "head"  # head: an adapter on frozen features; partial: + the last blocks; full
    blocks: int = 1  # partial: trunk stages (timm) or layer groups (open_clip lock) unfrozen
    epochs: int = 40  # upper bound; early stopping usually ends sooner
    batch_size: int = 128  # pairs per step; 128 beat 64 and 256 for the head on the demo loop
    lr: float = 1e-3  # AdamW peak learning rate (cosine decay to 0)
    weight_decay: float = 1e-4
    temperature: float = 0.2  # InfoNCE; 0.2 beat 0.07 and 0.1 on the demo loop
    grad_clip: float = 1.0  # max gradient norm
    val_fraction: float = 0.15  # pairs held out for early stopping
    patience: int = 5  # epochs without a better validation loss before stopping
    collapse_std: float = 1e-4  # mean per-dimension std of outputs below this = collapse
    seed: int = 0
    taps: bool = True  # the new head also reads the tower's stage taps (none on a ViT)
    # Keeping what the parent knows (README, "Fine-tuning that does not forget"):
    # WiSE-FT: the share of the trained update kept, θ = θ0 + wise (θ - θ0) (1: all of it; a
    # residual head starts at 0, so this scales its update)
    wise: float = 1.0
    l2sp: float = 0.0  # L2-SP: + l2sp x ||θ - θ0||² on the trainable weights
    # distillation: + distill x KL(parent's similarities || the model's) over a batch of
    # gallery rows each step, softmax at `distill_temperature` (needs `Distillation` data)
    distill: float = 0.0
    distill_temperature: float = 0.05
    # head: + one (image, augmented view) pair per train image at this weight (0: none;
    # `core.learn.views`): self-supervised positives over every category beside the feedback
    views: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise TrainingError(f"Unknown mode {self.mode!r}; available: {', '.join(MODES)}.")
        if self.blocks < 1:
            raise TrainingError("blocks must be at least 1.")
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0 or self.temperature <= 0:
            raise TrainingError("epochs >= 1, batch_size >= 2, lr > 0 and temperature > 0.")
        if not 0 <= self.val_fraction < 1 or self.patience < 1:
            raise TrainingError("val_fraction must be in [0, 1) and patience >= 1.")
        if self.grad_clip <= 0 or self.weight_decay < 0 or self.collapse_std < 0:
            raise TrainingError("grad_clip > 0, weight_decay >= 0 and collapse_std >= 0.")
        if not 0 < self.wise <= 1 or min(self.l2sp, self.distill, self.views) < 0:
            raise TrainingError("wise must be in (0, 1]; l2sp, distill and views >= 0.")
        if self.distill_temperature <= 0:
            raise TrainingError("distill_temperature must be > 0.")
        if self.views and self.mode != "head":
            raise TrainingError("Augmented views train the head mode only (views = 0).")

    @classmethod
    def for_mode(cls, mode: str = "head", **overrides: object) -> TrainSettings:
        """The defaults of `mode` (`MODE_DEFAULTS`), then `overrides` (None values ignored)."""
        if mode not in MODES:
            raise TrainingError(f"Unknown mode {mode!r}; available: {', '.join(MODES)}.")
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(mode=mode, **{**MODE_DEFAULTS[mode], **given})  # type: ignore[arg-type]


@dataclass
class History:
    """What a run did, epoch by epoch."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    stopped_early: bool = False


class Callback(Protocol):
    def on_step(self, epoch: int, step: int, steps: int, loss: float) -> None: ...

    def on_epoch(self, epoch: int, train_loss: float, val_loss: float | None) -> None: ...


@dataclass(frozen=True)
class PairTensors:
    """Training pairs as row numbers into a (n, D) input matrix."""

    anchors: torch.Tensor  # (P,) long
    positives: torch.Tensor  # (P,) long
    negatives: torch.Tensor  # (P, N) long
    weights: torch.Tensor  # (P,) float
    # (n,) long over input rows: rows known to be alike share a group id >= 0 (-1: none);
    # an in-batch candidate of the anchor's group is not its negative (`known_alike`)
    groups: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.anchors)

    def take(self, rows: torch.Tensor) -> PairTensors:
        return PairTensors(
            self.anchors[rows],
            self.positives[rows],
            self.negatives[rows],
            self.weights[rows],
            self.groups,
        )

    def known_alike(self) -> torch.Tensor | None:
        """(B, B) bool: [i, j] when positive j is known to be like anchor i (the same image,
        or one group), like i's own positive, or the positive of an anchor like anchor i (two
        pairs of one query image), though it is not i's pair: `InfoNCELoss`'s `ignore`. None
        without groups."""
        groups = self.groups
        if groups is None:
            return None

        def keys(rows: torch.Tensor) -> torch.Tensor:  # group id, or a key of the row alone
            group = groups[rows]
            return torch.where(group >= 0, group, -1 - rows)

        anchors, positives = keys(self.anchors), keys(self.positives)
        same_anchor = anchors[:, None] == positives[None, :]  # like the anchor
        same_positive = positives[:, None] == positives[None, :]  # like the anchor's positive
        shared_anchor = anchors[:, None] == anchors[None, :]  # a positive of the anchor's kind
        alike = same_anchor | same_positive | shared_anchor
        return alike & ~torch.eye(len(self), dtype=torch.bool)


@dataclass(frozen=True)
class Distillation:
    """What the distillation term reads: the parent's (n, D) unit vectors over the model's
    input rows, and the rows it may sample (the gallery's train images: no labels are read,
    and the test split stays out of training)."""

    targets: torch.Tensor  # (n, D) float
    rows: torch.Tensor  # (R,) long, rows of `targets` and of the model's inputs
    batch_size: int = 256

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        picked = torch.randperm(len(self.rows), generator=generator)[: self.batch_size]
        return self.rows[picked]


def similarity_kl(outputs: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(targets targets^T / t) || softmax(outputs outputs^T / t)) per row, mean;
    (B, D') model outputs and (B, D) parent vectors, both unit; each row's own score left out.
    Zero exactly when the model ranks the batch as the parent does, at this temperature."""
    own = torch.eye(len(outputs), dtype=torch.bool)
    ours = (outputs @ outputs.T / temperature).masked_fill(own, -torch.inf)
    theirs = (targets @ targets.T / temperature).masked_fill(own, -torch.inf)
    log_p, log_q = theirs.log_softmax(dim=1), ours.log_softmax(dim=1)
    terms = log_p.exp() * (log_p - log_q)
    return terms.masked_fill(own, 0.0).sum(dim=1).mean()


# (B,) row numbers -> the model's inputs for those rows: a (B, D) tensor, or a tuple of
# tensors passed as separate arguments (a tower's cached maps and taps)
Features = Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...]]


def _rows_of(parts: tuple[torch.Tensor, ...]) -> Features:
    def rows_of(rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(part[rows] for part in parts)

    return rows_of


def _run(model: nn.Module, inputs: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    out: torch.Tensor = model(*inputs) if isinstance(inputs, tuple) else model(inputs)
    return out


def _loss(
    model: nn.Module, features: Features, batch: PairTensors, loss_fn: InfoNCELoss
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's loss, and the outputs of its distinct anchors for the collapse check (a
    batch whose anchors are all one image has no spread to check)."""
    anchors = _run(model, features(batch.anchors))  # (B, D')
    positives = _run(model, features(batch.positives))  # (B, D')
    b, n = batch.negatives.shape
    negatives = _run(model, features(batch.negatives.reshape(-1))).reshape(b, n, -1) if n else None
    loss = loss_fn(anchors, positives, negatives, batch.weights, batch.known_alike())
    distinct = np.unique(batch.anchors.numpy(), return_index=True)[1]
    return loss, anchors[torch.from_numpy(distinct)]


def _validation_loss(
    model: nn.Module,
    features: Features,
    val: PairTensors | None,
    loss_fn: InfoNCELoss,
    batch_size: int,
) -> float | None:
    """The validation slice's loss in training-sized batches (a whole tower on pixels would
    not fit one pass), averaged by batch size; None without a slice."""
    if val is None:
        return None
    total = 0.0
    for start in range(0, len(val), batch_size):
        batch = val.take(torch.arange(start, min(start + batch_size, len(val))))
        total += float(_loss(model, features, batch, loss_fn)[0]) * len(batch)
    return total / len(val)


def _split(
    pairs: PairTensors, fraction: float, seed: int
) -> tuple[PairTensors, PairTensors | None]:
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))
    n_val = int(len(pairs) * fraction)
    if n_val < 2 or len(pairs) - n_val < 2:
        return pairs, None
    return pairs.take(order[n_val:]), pairs.take(order[:n_val])


def _check_health(outputs: torch.Tensor, loss: float, settings: TrainSettings) -> None:
    """NaN loss, or a batch whose outputs (B, D') all coincide: stop with a message."""
    if not math.isfinite(loss):
        raise TrainingError("The loss became NaN or infinite; lower the learning rate.")
    if len(outputs) > 1 and float(outputs.detach().std(dim=0).mean()) < settings.collapse_std:
        raise TrainingError("The embeddings collapsed to one point; training stopped.")


def _keep_terms(
    model: nn.Module,
    features: Features,
    trainable: list[nn.Parameter],
    start: list[torch.Tensor],
    settings: TrainSettings,
    distillation: Distillation | None,
    draws: torch.Generator,
) -> torch.Tensor:
    """The terms that hold the model near its parent: L2-SP on the weights, distillation of
    the parent's similarities over a fresh batch of gallery rows."""
    total = torch.zeros(())
    if settings.l2sp:
        drift = sum(((p - p0) ** 2).sum() for p, p0 in zip(trainable, start, strict=True))
        total = total + settings.l2sp * drift
    if settings.distill and distillation is not None:
        rows = distillation.sample(draws)
        outputs = _run(model, features(rows))
        kl = similarity_kl(outputs, distillation.targets[rows], settings.distill_temperature)
        total = total + settings.distill * kl
    return total


def fit(
    model: nn.Module,
    inputs: torch.Tensor | tuple[torch.Tensor, ...] | Features,
    pairs: PairTensors,
    settings: TrainSettings,
    callbacks: Sequence[Callback] = (),
    distillation: Distillation | None = None,
) -> History:
    """Train `model` on `pairs` over `inputs`: an (n, D) matrix, a tuple of (n, ...) tensors
    (the model's arguments, row by row), or a function of row numbers (which may, say,
    augment images afresh on every call); returns its history. The model ends at
    its best epoch: lowest validation loss, or lowest training loss without a validation
    slice (too few pairs to hold any out), then moved back toward where it started by
    `settings.wise`. `settings.l2sp` and `settings.distill` (with `distillation`) add their
    terms to the training loss; the validation loss is the contrastive one alone."""
    if len(pairs) < 2:
        raise TrainingError("Fewer than 2 training pairs: log more feedback first.")
    torch.manual_seed(settings.seed)
    features = _rows_of(inputs) if isinstance(inputs, tuple) else inputs
    if not callable(features):
        features = features.__getitem__
    started, history = time.perf_counter(), History()
    train, val = _split(pairs, settings.val_fraction, settings.seed)
    loss_fn = InfoNCELoss(temperature=settings.temperature, symmetric=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in trainable]  # θ0: L2-SP's anchor, WiSE-FT's end
    optimiser = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    steps = math.ceil(len(train) / settings.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=settings.epochs * steps)
    generator = torch.Generator().manual_seed(settings.seed)
    draws = torch.Generator().manual_seed(settings.seed + 1)  # distillation's gallery rows
    best, best_state, waited = math.inf, None, 0
    for epoch in range(1, settings.epochs + 1):
        model.train()
        order, losses = torch.randperm(len(train), generator=generator), []
        for step in range(steps):
            batch = train.take(order[step * settings.batch_size : (step + 1) * settings.batch_size])
            loss, outputs = _loss(model, features, batch, loss_fn)
            total = loss + _keep_terms(
                model, features, trainable, start, settings, distillation, draws
            )
            optimiser.zero_grad()
            total.backward()
            nn.utils.clip_grad_norm_(trainable, settings.grad_clip)
            optimiser.step()
            schedule.step()
            losses.append(float(loss.detach()))
            _check_health(outputs, losses[-1], settings)
            for callback in callbacks:
                callback.on_step(epoch, step + 1, steps, losses[-1])
        model.eval()
        with torch.no_grad():
            val_loss = _validation_loss(model, features, val, loss_fn, settings.batch_size)
        history.train_loss.append(float(np.mean(losses)))
        history.val_loss.append(val_loss if val_loss is not None else history.train_loss[-1])
        for callback in callbacks:
            callback.on_epoch(epoch, history.train_loss[-1], val_loss)
        if history.val_loss[-1] < best - 1e-6:
            best, waited, history.best_epoch = history.val_loss[-1], 0, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
            if waited >= settings.patience:
                history.stopped_early = True
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    if settings.wise < 1:
        with torch.no_grad():
            for param, begun in zip(trainable, start, strict=True):
                param.copy_(begun + settings.wise * (param - begun))
    history.seconds = round(time.perf_counter() - started, 2)
    return history
