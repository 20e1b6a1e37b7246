"""Self-supervised fine-tuning, SimCLR style: the seed's "train the model given images".

No labels at all: each image yields two augmented views (random resized crop, flip, colour
jitter, grayscale, blur — Chen et al. 2020), the frozen encoder embeds them, and the `head`
mode's adapter plus a projection MLP (used only for the loss, then dropped) learn to match the
two views of an image against the other images of the batch (NT-Xent = symmetric InfoNCE).
Same loop and same version bookkeeping as feedback fine-tuning; another pair source.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torch import nn

from core.encoder.heads import ResidualHead
from core.encoder.model import Encoder
from core.encoder.versions import HEAD_FILE
from core.gallery.images import ImageError, load_image
from core.gallery.ingest import Candidate, iter_candidates
from core.learn.finetune import FineTuneReport, head_vectors, register_version
from core.learn.training import (
    Callback,
    PairTensors,
    TrainingError,
    TrainSettings,
    fit,
)
from core.learn.views import encoder_normalisation, simclr_augment
from core.measure.evaluation import evaluate

if TYPE_CHECKING:
    from core.studio import Studio


class AugmentedViews:
    """Row numbers -> frozen-encoder unit features of a fresh random view of each image."""

    def __init__(self, encoder: Encoder, images: Sequence[Image.Image]) -> None:
        self.encoder, self.images = encoder, images
        self.augment = simclr_augment(*encoder_normalisation(encoder))

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, D)
        pixels = torch.stack([self.augment(self.images[int(i)]) for i in rows])
        with torch.no_grad():  # the encoder stays frozen: only the head learns
            features = self.encoder.features(pixels).float()
        return nn.functional.normalize(features, dim=-1)


class Projector(nn.Module):
    """SimCLR's projection MLP, used for the loss only (the head's output is what is indexed)."""

    def __init__(self, dim: int, hidden: int = 512, out: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, out)
        return nn.functional.normalize(self.mlp(x), dim=-1)


def load_folder(paths: Iterable[str | os.PathLike[str]]) -> list[Image.Image]:
    """Every readable image under the paths (unreadable files are skipped, not fatal)."""
    images: list[Image.Image] = []
    for candidate in iter_candidates(paths):
        if isinstance(candidate, Candidate):
            try:
                images.append(load_image(candidate.read(), name=candidate.name).image)
            except (ImageError, OSError):
                continue
    return images


def self_supervised(
    studio: Studio,
    images: Sequence[Image.Image],
    settings: TrainSettings,
    *,
    activate: bool = False,
    callbacks: Sequence[Callback] = (),
) -> FineTuneReport:
    """SimCLR-train a head for the active version on unlabelled `images`; a new version."""
    if len(images) < 4:
        raise TrainingError("Self-supervised training needs at least 4 readable images.")
    if settings.mode != "head":
        raise TrainingError("Self-supervised training trains the head mode only.")
    settings = replace(settings, taps=False)  # its head reads the embedding alone
    parent = studio.active_version()
    before = evaluate(studio, parent.version, split="test").metrics()
    encoder = studio.encoder(parent)
    rows = torch.arange(len(images))
    pairs = PairTensors(
        rows, rows, torch.zeros((len(images), 0), dtype=torch.long), torch.ones(len(images))
    )  # two views of each image
    head = ResidualHead(encoder.dim)
    model = nn.Sequential(head, Projector(encoder.dim))
    history = fit(model, AugmentedViews(encoder, images), pairs, settings, callbacks)
    card = {"mode": settings.mode, "source": "self-supervised", "images": len(images)}
    gallery = head_vectors(head, *studio.index.get_embeddings(parent.version))
    version, after = register_version(
        studio,
        parent,
        {HEAD_FILE: dict(head.state_dict())},
        gallery,
        settings,
        history,
        card,
        before,
        activate,
    )
    summary = {"images": len(images), "train_loss": [round(x, 4) for x in history.train_loss]}
    return FineTuneReport(
        version, parent.version, len(images), history.seconds, before, after, summary
    )
