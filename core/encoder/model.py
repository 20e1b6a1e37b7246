"""`Encoder`: an open_clip model in eval mode with its preprocessing; images in, (n, d) float32
unit vectors out. `load_encoder` builds one from the registry (`core.encoder.registry`).

The tower's weights are kept `channels_last` (2x faster convolutions on CPU, measured) and its
inference runs in the encoder's `precision` (`core.encoder.precision`): fp32, or bf16 autocast
on CPUs that have it natively. Training (`features` with gradients) always runs in fp32."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from core.choices import PRECISIONS
from core.encoder.allocator import keep_freed_memory
from core.encoder.heads import apply_heads, head_taps
from core.encoder.registry import (
    DEFAULT_ENCODER,
    EncoderError,
    EncoderSpec,
    build_open_clip,
    efficientnet_lite_state_dict,
    get_encoder_spec,
)
from core.encoder.taps import pooled_unit, stage_modules


@dataclass(frozen=True)
class _SplitPreprocess:
    """An open_clip preprocessing cut where it leaves PIL: the image steps (resize, crop, RGB)
    and the `ToTensor` + `Normalize(mean, std)` at its end, which `Encoder.pixels` applies to
    a whole batch at once."""

    image_steps: Callable[[Image.Image], Image.Image]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _split(preprocess: Callable[[Image.Image], torch.Tensor]) -> _SplitPreprocess | None:
    """The split of a `Compose([...PIL steps, ToTensor, Normalize])`; None for anything else
    (then every image goes through `preprocess` whole)."""
    steps = list(getattr(preprocess, "transforms", []))
    if len(steps) < 2:
        return None
    *image_steps, to_tensor, normalize = steps
    if not isinstance(to_tensor, transforms.ToTensor):  # open_clip's MaybeToTensor is one
        return None
    if not isinstance(normalize, transforms.Normalize) or normalize.inplace:
        return None
    mean, std = tuple(map(float, normalize.mean)), tuple(map(float, normalize.std))
    return _SplitPreprocess(transforms.Compose(image_steps), mean, std)


class Encoder:
    """An open_clip model in eval mode with its own preprocessing; images in, unit vectors out."""

    def __init__(
        self,
        spec: EncoderSpec,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
    ) -> None:
        self.spec = spec
        self.model: Any = model.eval()  # an open_clip CLIP; typed loosely (no stubs)
        self.preprocess = preprocess
        self.heads: tuple[torch.nn.Module, ...] = ()  # fine-tuned adapters, applied in order
        self.precision = "fp32"  # inference arithmetic: "fp32" or "bf16" (`with_precision`)
        self.dim = int(spec.config["embed_dim"]) if spec.config else self._probe_dim()
        self._split = _split(preprocess)

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """The per-image part of `preprocess`, cheap and free of torch's thread pool (ingest
        runs it on worker threads beside the tower): the (H, W, 3) uint8 pixels after the
        image steps, or the whole (3, H, W) float `preprocess` when it does not split.
        `pixels` turns a batch of them into the tower's input."""
        if self._split is not None:
            image = self._split.image_steps(image)
            if image.mode == "RGB":
                return torch.from_numpy(np.array(image, dtype=np.uint8))
        return self.preprocess(image)

    def pixels(self, prepared: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, 3, H, W) float tower input, channels_last, from `prepare`d images: equal to
        stacking `preprocess` of each (the same float operations in the same order:
        ToTensor's divide by 255, then Normalize), but one vectorised pass for the batch.
        Measured on Fashion-MNIST's 28 x 28 PNGs: ToTensor and Normalize per image cost 2.2 ms
        of CPU, more than the image steps, and ran torch's thread pool from worker threads."""
        if self._split is None or any(item.dtype != torch.uint8 for item in prepared):
            return torch.stack([self._to_float(item) for item in prepared])
        batch = torch.stack(list(prepared)).permute(0, 3, 1, 2)  # (B, 3, H, W) channels_last
        mean = torch.tensor(self._split.mean).view(1, -1, 1, 1)
        std = torch.tensor(self._split.std).view(1, -1, 1, 1)
        return batch.float().div_(255).sub_(mean).div_(std)  # in place: one float batch

    def _to_float(self, item: torch.Tensor) -> torch.Tensor:
        if item.dtype != torch.uint8 or self._split is None:
            return item
        pixels = item.permute(2, 0, 1).float().div(255)
        mean = torch.tensor(self._split.mean).view(-1, 1, 1)
        return pixels.sub(mean).div(torch.tensor(self._split.std).view(-1, 1, 1))

    def with_heads(self, heads: Sequence[torch.nn.Module]) -> Encoder:
        """The same model and preprocessing with adapters on its normalised features (a
        fine-tuned version in `head` mode); this encoder is left unchanged."""
        adapted = copy.copy(self)
        adapted.heads = tuple(head.eval() for head in heads)
        return adapted

    def with_precision(self, precision: str) -> Encoder:
        """The same model whose inference (`encode`, `encode_pixels`) runs in `precision`, one
        of `core.choices.PRECISIONS` as resolved by `core.encoder.precision`; this encoder is
        left unchanged."""
        if precision not in PRECISIONS:
            raise EncoderError(f"Unknown precision {precision!r}.")
        changed = copy.copy(self)
        changed.precision = precision
        return changed

    def with_tower(self, states: Sequence[Mapping[str, torch.Tensor]]) -> Encoder:
        """A copy whose image tower carries fine-tuned weights (a version in `partial` or
        `full` mode): each state names tower parameters, later states win. This encoder is
        left unchanged."""
        model = copy.deepcopy(self.model)
        own = model.visual.state_dict()
        for state in states:
            unknown = sorted(set(state) - set(own))
            wrong = sorted(k for k in state if k in own and state[k].shape != own[k].shape)
            if unknown or wrong:
                raise EncoderError(
                    f"The fine-tuned tower weights do not fit {self.name}: "
                    f"{', '.join([*unknown, *wrong][:3])}."
                )
            model.visual.load_state_dict(dict(state), strict=False)
        tuned = copy.copy(self)
        tuned.model = model.eval()
        return tuned

    @property
    def name(self) -> str:
        return self.spec.name

    def _probe_dim(self) -> int:
        image_size = getattr(self.model.visual, "image_size", (224, 224))
        size = image_size if isinstance(image_size, tuple) else (image_size, image_size)
        with torch.inference_mode():
            return int(self.model.encode_image(torch.zeros(1, 3, *size)).shape[1])

    def tapped(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) preprocessed pixels -> the tower's (B, d) raw features and its (B, t)
        stage taps (`StageTaps`; t = 0 for towers without stages).

        A timm trunk is walked stage by stage, as its own forward does, rather than hooked:
        cached encoders share one model between sessions, and hooks on it would catch the
        other sessions' passes."""
        visual = self.model.visual
        if not stage_modules(visual):
            plain: torch.Tensor = self.model.encode_image(batch)
            return plain, torch.zeros(len(batch), 0)
        trunk = visual.trunk
        x = trunk.bn1(trunk.conv_stem(batch))
        taps = []
        for stage in trunk.blocks:
            x = stage(x)
            taps.append(pooled_unit(x))
        features: torch.Tensor = visual.head(trunk.forward_head(trunk.bn2(trunk.conv_head(x))))
        return features, torch.cat(taps, dim=1)

    def _tower(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The tower's raw features, and its stage taps when a head needs them (else None)."""
        if any(head_taps(head) for head in self.heads):
            return self.tapped(batch)
        return self.model.encode_image(batch), None

    def _adapt(self, features: torch.Tensor, taps: torch.Tensor | None) -> torch.Tensor:
        """The heads on the tower's output: they were trained on the unit vectors the parent
        indexes (and the tower's taps), in fp32."""
        if not self.heads:
            return features
        features = torch.nn.functional.normalize(features.float(), dim=-1)
        taps = torch.zeros(len(features), 0) if taps is None else taps.float()
        return apply_heads(self.heads, features, taps)

    def features(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed pixels -> (B, d) raw image features (gradients allowed,
        fp32)."""
        return self._adapt(*self._tower(batch))

    def _infer(self, pixels: torch.Tensor, all_taps: bool) -> tuple[np.ndarray, torch.Tensor]:
        """Unit embeddings without gradients, the tower in the encoder's precision, and the
        (B, t) stage taps when computed (always with `all_taps`, else when a head reads
        them; (B, 0) when not)."""
        pixels = pixels.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            bf16 = self.precision == "bf16"
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                features, taps = self.tapped(pixels) if all_taps else self._tower(pixels)
            taps = torch.zeros(len(pixels), 0) if taps is None else taps.float()
            features = self._adapt(features.float(), taps)
            return torch.nn.functional.normalize(features.float(), dim=-1).numpy(), taps

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """(B, 3, H, W) preprocessed pixels (`preprocess` of each image) -> (B, d) float32
        unit-norm embeddings, without gradients; the tower runs in the encoder's precision."""
        return self._infer(pixels, all_taps=False)[0]

    def encode_pixels_tapped(self, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """`encode_pixels` and, from the same forward pass, the tower's (B, t) float32 stage
        taps (t = 0 for towers without stages): what ingest keeps for `head` versions."""
        vectors, taps = self._infer(pixels, all_taps=True)
        return vectors, taps.numpy()

    def encode(
        self,
        images: Sequence[Image.Image],
        batch_size: int = 32,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """RGB images -> (n, d) float32 unit-norm embeddings, in batches, without gradients.

        `progress(done, total)` is called after each batch.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1.")
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            pixels = self.pixels([self.prepare(img) for img in chunk])  # (B, 3, H, W)
            out[start : start + len(chunk)] = self.encode_pixels(pixels)
            if progress is not None:
                progress(start + len(chunk), len(images))
        return out


def load_encoder(name: str = DEFAULT_ENCODER, *, seed: int = 0) -> Encoder:
    """Build a registry encoder (or an open_clip ARCH/TAG pair) ready for `encode`.

    Random-init parts (the untrained text tower, `tiny-test`) are seeded so two loads agree.
    """
    spec = get_encoder_spec(name)
    keep_freed_memory()  # every batch would otherwise fault its activations in afresh
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, preprocess = build_open_clip(spec)
    if spec.packaged_trunk is not None:
        trunk = model.visual.trunk
        weights = efficientnet_lite_state_dict(spec.packaged_trunk)
        del weights["classifier.weight"], weights["classifier.bias"]
        missing, unexpected = trunk.load_state_dict(weights, strict=False)
        if unexpected or any(not key.startswith("classifier") for key in missing):
            raise EncoderError(f"ImageNet weights did not fit the trunk: {missing} {unexpected}.")
    model.visual.to(memory_format=torch.channels_last)
    return Encoder(spec, model, preprocess)
