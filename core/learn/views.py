"""Augmented views of gallery images: SimCLR's augmentations (Chen et al. 2020), and views of
the gallery's train images as extra positives for a `head` fine-tune.

A fine-tune learns only from the categories people gave feedback on. Mixing in pairs of
(image, an augmented view of it) over *every* train image, with no label, asks the adapter to
keep each image near its own views whatever its category: the seed's self-supervised
positives beside the feedback ones (`TrainSettings.views`, its weight; README, "Fine-tuning
that does not forget"). The views go through the frozen tower once, with their stage taps, so
training steps stay on cached rows like the rest of the `head` mode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from core.encoder.model import Encoder
from core.learn.training import PairTensors

PixelReader = Callable[[str], Image.Image]  # image id -> its RGB image (`Studio.gallery_image`)
VIEW_BATCH = 32


def simclr_augment(size: int, mean: Sequence[float], std: Sequence[float]) -> transforms.Compose:
    """SimCLR's augmentations at the encoder's input size and normalisation."""
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(size, scale=(0.2, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            transforms.RandomGrayscale(p=0.2),
            transforms.RandomApply([transforms.GaussianBlur(9, sigma=(0.1, 2.0))], p=0.5),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def encoder_normalisation(encoder: Encoder) -> tuple[int, Sequence[float], Sequence[float]]:
    """Input size, mean and std of the encoder's own preprocessing."""
    steps = getattr(encoder.preprocess, "transforms", [])
    normalise = next((t for t in steps if isinstance(t, transforms.Normalize)), None)
    size = getattr(encoder.model.visual, "image_size", 224)
    size = size[0] if isinstance(size, tuple) else int(size)
    if normalise is None:
        return size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return size, list(normalise.mean), list(normalise.std)


def view_inputs(read: PixelReader, encoder: Encoder, ids: Sequence[str], seed: int) -> np.ndarray:
    """(len(ids), D + t) float32: one SimCLR view of each image through `encoder` (its
    version's vector, then the tower's stage taps: a `head`'s input row), seeded."""
    augment = simclr_augment(*encoder_normalisation(encoder))
    rows = []
    with torch.random.fork_rng():  # the augmentations draw from torch's global generator
        torch.manual_seed(seed)
        for start in range(0, len(ids), VIEW_BATCH):
            batch = ids[start : start + VIEW_BATCH]
            pixels = torch.stack([augment(read(image_id)) for image_id in batch])
            vectors, taps = encoder.encode_pixels_tapped(pixels)
            rows.append(np.concatenate([vectors, taps], axis=1).astype(np.float32))
    width = encoder.dim + (rows[0].shape[1] - encoder.dim if rows else 0)
    return np.concatenate(rows) if rows else np.zeros((0, width), np.float32)


def with_views(
    pairs: PairTensors, sources: torch.Tensor, first_view: int, weight: float, seed: int
) -> PairTensors:
    """`pairs` plus one (source row, its view's row) pair per source, at `weight`: the views
    sit at rows `first_view + k` of the inputs, in `sources`' order. Each view shares its
    source's group (a fresh one for an ungrouped source), so an image and its view are never
    each other's in-batch negatives; its negatives are other sources, drawn at random."""
    n_views = len(sources)
    groups = pairs.groups
    if groups is None:
        groups = torch.full((first_view,), -1, dtype=torch.long)
    groups = torch.cat([groups, torch.full((n_views,), -1, dtype=torch.long)])
    fresh = int(groups.max()) + 1
    for k, source in enumerate(sources.tolist()):
        if groups[source] < 0:
            groups[source], fresh = fresh, fresh + 1
        groups[first_view + k] = groups[source]
    width = pairs.negatives.shape[1]
    generator = torch.Generator().manual_seed(seed)
    drawn = torch.randint(0, max(n_views - 1, 1), (n_views, width), generator=generator)
    drawn += (drawn >= torch.arange(n_views)[:, None]).long()  # never the source itself
    negatives = sources[drawn.clamp(max=n_views - 1)]
    return PairTensors(
        anchors=torch.cat([pairs.anchors, sources]),
        positives=torch.cat([pairs.positives, first_view + torch.arange(n_views)]),
        negatives=torch.cat([pairs.negatives, negatives]),
        weights=torch.cat([pairs.weights, torch.full((n_views,), float(weight))]),
        groups=groups,
    )
