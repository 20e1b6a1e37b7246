"""Fine-tuning inside the image tower: the `partial` and `full` modes.

`split_tower` cuts a copy of an open_clip image tower into a frozen *prefix* (pixels -> an
intermediate tensor, computed once per image and cached) and a trainable *suffix* (that tensor
-> the tower's output), so that suffix(prefix(pixels)) equals the tower's own output:

- `partial`, a timm trunk (the default `efficientnet-lite0`, `tiny-test`): the prefix is the
  stem and every stage but the last `blocks`; the suffix is those stages, `conv_head`, `bn2`,
  the pooling and open_clip's projection. Training runs only the suffix, on cached feature maps
  (192 x 7 x 7 per image for the last stage of efficientnet-lite0), which is what makes it
  affordable on two CPU cores.
- `partial`, any other open_clip tower (a CLIP ViT): open_clip's own `lock`, leaving the last
  `blocks` layer groups and the projection (its last group) trainable; the prefix is the
  identity on preprocessed pixels, so every step runs the whole tower forward (slow on a CPU,
  correct everywhere).
- `full`: every parameter of the tower trains; the prefix is the identity on pixels.

BatchNorm layers are frozen everywhere (statistics and affine: `encoder.freeze_batch_norm`):
batches of a few dozen pairs are far too small to re-estimate them. Cached inputs are the
evaluation preprocessing of each image, without augmentation.

The weights a version stores are the suffix's trainable parameters under the tower's own
parameter names (`trunk.blocks.6.0.conv_pw.weight`), so loading them is the tower's own
`load_state_dict` (`Encoder.with_tower`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from core.encoder.heads import ResidualHead, apply_heads
from core.encoder.taps import (
    StageTaps,
    TapCache,
    freeze_batch_norm,
    is_timm_trunk,
    stage_modules,
)
from core.gallery.images import ImageError
from core.learn.training import (
    Callback,
    Distillation,
    History,
    PairTensors,
    TrainingError,
    TrainSettings,
    fit,
)

if TYPE_CHECKING:
    from core.encoder.model import Encoder
    from core.store import ModelVersion
    from core.studio import Studio

TOWER_MODES = ("partial", "full")


class _TimmSuffix(nn.Module):
    """The last stages of a timm trunk and everything after them, on the tower's copy."""

    def __init__(self, visual: nn.Module, start: int) -> None:
        super().__init__()
        self.visual = visual
        self.start = start

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) maps -> (B, D)
        visual: Any = self.visual
        trunk = visual.trunk
        x = trunk.bn2(trunk.conv_head(trunk.blocks[self.start :](x)))
        out: torch.Tensor = visual.head(trunk.forward_head(x))
        return out


class _WholeTower(nn.Module):
    """The tower itself: pixels in."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, D)
        out: torch.Tensor = self.visual(x)
        return out


@dataclass
class Tower:
    """A split tower: `prefix` (frozen, no gradients) then `suffix` (trainable); the tapped
    stages (`core.encoder.model.stage_modules`) of each, in order."""

    prefix: Callable[[torch.Tensor], torch.Tensor]
    suffix: nn.Module
    cached: str  # what the prefix outputs, for the card: "pixels" or "stage N input"
    prefix_stages: Sequence[nn.Module] = ()
    suffix_stages: Sequence[nn.Module] = ()

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trained parameters under the tower's names, ready for safetensors."""
        return {
            name.removeprefix("visual."): param.detach().contiguous().clone()
            for name, param in self.suffix.named_parameters()
            if param.requires_grad
        }


def split_tower(visual: nn.Module, mode: str, blocks: int = 1) -> Tower:
    """A trainable copy of `visual` cut for `mode` (module doc); `visual` is left unchanged."""
    if mode not in TOWER_MODES:
        raise TrainingError(f"Unknown tower mode {mode!r}; available: {', '.join(TOWER_MODES)}.")
    if blocks < 1:
        raise TrainingError("partial mode unfreezes at least one block.")
    tower = freeze_batch_norm(copy.deepcopy(visual)).train()
    for param in tower.parameters():
        param.requires_grad_(mode == "full")
    stages = stage_modules(tower)
    if mode == "full":
        return Tower(lambda pixels: pixels, _WholeTower(tower), "pixels", (), stages)
    if is_timm_trunk(tower):
        trunk: Any = tower.trunk
        if blocks > len(trunk.blocks):
            raise TrainingError(
                f"partial mode can unfreeze at most the {len(trunk.blocks)} stages of this "
                "tower; use full for all of it."
            )
        start = len(trunk.blocks) - blocks
        for part in (trunk.blocks[start:], trunk.conv_head, tower.head):
            part.requires_grad_(True)

        def prefix(pixels: torch.Tensor) -> torch.Tensor:  # the frozen stem and first stages
            with torch.no_grad():
                out: torch.Tensor = trunk.blocks[:start](trunk.bn1(trunk.conv_stem(pixels)))
            return out

        return Tower(
            prefix,
            _TimmSuffix(tower, start),
            f"stage {start} input",
            stages[:start],
            stages[start:],
        )
    lock = getattr(tower, "lock", None)
    if lock is None:
        raise TrainingError(
            f"partial mode cannot split a {type(visual).__name__} tower; use head or full."
        )
    tower.requires_grad_(True)
    try:  # open_clip's ViT counts the projection as its last group; some towers cannot lock
        lock(unlocked_groups=blocks + 1, freeze_bn_stats=True)
    except (AssertionError, RuntimeError, NotImplementedError) as exc:
        raise TrainingError(
            f"partial mode cannot lock part of a {type(visual).__name__} tower; use head or full."
        ) from exc
    if not any(p.requires_grad for p in tower.parameters()):
        raise TrainingError(f"partial mode left nothing of the {type(visual).__name__} to train.")
    return Tower(lambda pixels: pixels, _WholeTower(tower), "pixels", (), stages)


class TowerModel(nn.Module):
    """What a tower mode trains: suffix -> unit vector -> the parent's heads (frozen) -> a new
    `ResidualHead`; heads that read taps get the prefix's (cached) then the suffix's. Its
    output is what the new version indexes."""

    def __init__(
        self,
        suffix: nn.Module,
        parent_heads: Sequence[nn.Module],
        head: nn.Module,
        stages: Sequence[nn.Module] = (),
    ) -> None:
        super().__init__()
        self.suffix = suffix
        # copies: the parent's heads are shared with cached encoders, and train() flips them
        self.parent_heads = nn.ModuleList(copy.deepcopy(list(parent_heads))).requires_grad_(False)
        self.head = head
        self._stages = list(stages)  # modules of `suffix`, tapped during its forward pass

    def forward(self, x: torch.Tensor, prefix_taps: torch.Tensor) -> torch.Tensor:
        """(B, ...) prefix outputs and their (B, t0) taps -> (B, D) unit vectors."""
        with StageTaps(self._stages) as stages:
            features = nn.functional.normalize(self.suffix(x).float(), dim=-1)
        taps = torch.cat([prefix_taps, stages.tensor(len(x))], dim=1)
        return apply_heads([*self.parent_heads, self.head], features, taps)


@dataclass(frozen=True)
class TowerResult:
    """A trained tower version, not yet registered."""

    tower: dict[str, torch.Tensor]  # trained tower parameters, the tower's names
    head: dict[str, torch.Tensor]  # the new ResidualHead's weights
    vectors: np.ndarray  # (n, D) unit vectors of the gallery, in the order of its ids
    history: History
    cached: str  # what was cached per image ("stage 6 input", "pixels")
    prepare_seconds: float  # running the prefix over the gallery, before training


PixelReader = Callable[[str], Image.Image]  # image id -> its RGB image (`Studio.gallery_image`)


def over_gallery(
    read: PixelReader,
    encoder: Encoder,
    ids: Sequence[str],
    run: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
    batch: int = 32,
) -> tuple[torch.Tensor, ...]:
    """`run` on the preprocessed pixels of `ids` (each read with `read`), batch by batch, its
    outputs concatenated in order. Every image is read before anything trains: one that fails
    is a `TrainingError` naming it, not a version with holes."""
    chunks: list[tuple[torch.Tensor, ...]] = []
    unreadable: list[str] = []
    for start in range(0, len(ids), batch):
        pixels = []
        for image_id in ids[start : start + batch]:
            try:
                pixels.append(encoder.preprocess(read(image_id)))
            except (ImageError, KeyError, OSError):
                unreadable.append(image_id)
        if pixels and not unreadable:
            chunks.append(run(torch.stack(pixels)))
    if unreadable:
        named = ", ".join(f"{i[:12]}…" for i in unreadable[:3])
        raise TrainingError(
            f"{len(unreadable)} gallery image(s) can no longer be read ({named}); remove them "
            "on the Gallery page or ingest them again, then train again."
        )
    return tuple(torch.cat(parts) for parts in zip(*chunks, strict=True))


def gallery_taps(
    read: PixelReader, encoder: Encoder, ids: Sequence[str], cache: TapCache | None = None
) -> np.ndarray:
    """(n, t) float32 stage taps of `ids` (read with `read`) through `encoder`'s tower, in its
    precision (`head` mode's extra inputs); (n, 0), reading nothing, for a tower without
    stages.

    With the tower's `cache` (`Studio.tap_cache`, which ingest fills from its own forward
    pass), only images missing from it are read and computed, and their taps are added to it;
    a gallery ingested since the cache existed is not read at all."""
    if not stage_modules(encoder.model.visual):
        return np.zeros((len(ids), 0), dtype=np.float32)

    def taps(pixels: torch.Tensor) -> tuple[torch.Tensor]:
        return (torch.from_numpy(encoder.encode_pixels_tapped(pixels)[1]),)

    known = cache.read(ids) if cache is not None else {}
    missing = [image_id for image_id in dict.fromkeys(ids) if image_id not in known]
    if missing:
        computed = over_gallery(read, encoder, missing, taps)[0].numpy()
        known.update(zip(missing, computed, strict=True))
        if cache is not None:  # kept, and merged with the rest (unreadable shards go)
            cache.append(missing, computed)
            cache.compact(at=2)
    return np.stack([known[image_id] for image_id in ids]).astype(np.float32)


def _prefix_all(
    read: PixelReader, encoder: Encoder, tower: Tower, ids: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, ...) prefix outputs of the catalogued `ids`, in order (pixels, 0.6 MB per image at
    224², when the prefix is the identity: `full`, and `partial` on a non-timm tower), and
    (n, t0) taps of the prefix's stages."""

    def prefix(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with StageTaps(tower.prefix_stages) as taps, torch.no_grad():
            out = tower.prefix(pixels)
        return out, taps.tensor(len(pixels))

    inputs, taps = over_gallery(read, encoder, ids, prefix)
    return inputs, taps


def tower_fit(
    studio: Studio,
    parent: ModelVersion,
    ids: Sequence[str],
    pairs: PairTensors,
    settings: TrainSettings,
    callbacks: Sequence[Callback] = (),
    distillation: Distillation | None = None,
) -> TowerResult:
    """Train `parent`'s tower in `settings.mode` on `pairs` (rows into `ids`, `parent`'s
    gallery), then embed that gallery with it. The prefix runs once per image and its outputs
    are kept for both."""
    encoder = studio.encoder(parent)
    tower = split_tower(encoder.model.visual, settings.mode, settings.blocks)
    started = time.perf_counter()
    inputs, prefix_taps = _prefix_all(studio.gallery_image, encoder, tower, ids)
    prepared = round(time.perf_counter() - started, 2)
    with StageTaps(tower.suffix_stages) as probe, torch.no_grad():  # the suffix's tap width
        tower.suffix(inputs[:1])
    width = prefix_taps.shape[1] + probe.tensor(1).shape[1]
    head = ResidualHead(encoder.dim, taps=width if settings.taps else 0)
    model = TowerModel(tower.suffix, encoder.heads, head, tower.suffix_stages)
    history = fit(model, (inputs, prefix_taps), pairs, settings, callbacks, distillation)
    model.eval()
    with torch.no_grad():
        vectors = torch.cat(
            [model(inputs[s : s + 64], prefix_taps[s : s + 64]) for s in range(0, len(inputs), 64)]
        )
    return TowerResult(
        tower=tower.trainable_state(),
        head={k: v.contiguous() for k, v in model.head.state_dict().items()},
        vectors=vectors.numpy(),
        history=history,
        cached=tower.cached,
        prepare_seconds=prepared,
    )
