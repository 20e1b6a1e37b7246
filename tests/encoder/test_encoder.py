"""Encoder registry, the embedding contract, and the ImageNet weight mapping."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from core.encoder import registry as encoder_module
from core.encoder.model import Encoder, load_encoder
from core.encoder.registry import (
    DEFAULT_ENCODER,
    EncoderError,
    UnknownEncoderError,
    WeightsUnavailableError,
    efficientnet_lite_state_dict,
    get_encoder_spec,
    imagenet_head,
    list_encoders,
)
from core.encoder.taps import StageTaps, stage_modules
from core.gallery.images import load_image
from tests.helpers import generated_image


def test_registry_lists_the_default_and_names_choices_for_a_bad_name() -> None:
    assert DEFAULT_ENCODER in list_encoders()
    with pytest.raises(UnknownEncoderError) as info:
        get_encoder_spec("resnet-9000")
    assert "efficientnet-lite0" in str(info.value) and "resnet-9000" in str(info.value)


def test_any_open_clip_pretrained_pair_is_accepted() -> None:
    spec = get_encoder_spec("RN50/openai")
    assert (spec.architecture, spec.pretrained) == ("RN50", "openai")
    with pytest.raises(UnknownEncoderError):
        get_encoder_spec("RN50/not-a-tag")


def test_encode_returns_unit_norm_float32_rows(tiny_encoder: Encoder) -> None:
    images = [generated_image(i % 4, i) for i in range(5)]
    out = tiny_encoder.encode(images, batch_size=2)
    assert out.shape == (5, tiny_encoder.dim) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_batching_does_not_change_embeddings(tiny_encoder: Encoder) -> None:
    images = [generated_image(i % 4, i) for i in range(6)]
    np.testing.assert_allclose(
        tiny_encoder.encode(images, batch_size=1),
        tiny_encoder.encode(images, batch_size=6),
        atol=1e-5,
    )


def test_progress_reports_each_batch(tiny_encoder: Encoder) -> None:
    calls: list[tuple[int, int]] = []
    tiny_encoder.encode(
        [generated_image(0, i) for i in range(5)], 2, progress=lambda d, t: calls.append((d, t))
    )
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_random_init_is_seeded_so_two_loads_agree() -> None:
    image = [generated_image(1, 1)]
    np.testing.assert_allclose(
        load_encoder("tiny-test").encode(image), load_encoder("tiny-test").encode(image), atol=1e-6
    )


def test_offline_pretrained_tag_fails_fast_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(encoder_module, "_hub_reachable", lambda timeout=3.0: False)
    started = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as info:
        load_encoder("ViT-B-32/laion2b_s34b_b79k")
    message = str(info.value)
    assert "ViT-B-32 / laion2b_s34b_b79k" in message and "could not download" in message.lower()
    assert time.perf_counter() - started < 30  # no 45-second retry loop against a dead hub


LITES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")


@pytest.mark.parametrize("name", LITES)
def test_packaged_weights_map_one_to_one_onto_timm(name: str) -> None:
    trunk = get_encoder_spec(name).packaged_trunk
    assert trunk == name.replace("-", "_")
    weights = efficientnet_lite_state_dict(trunk)
    reference = timm.create_model(trunk, pretrained=False).state_dict()
    assert list(weights) == list(reference)
    assert all(weights[key].shape == reference[key].shape for key in reference)


def native_size(name: str) -> int:
    config = get_encoder_spec(name).config
    assert config is not None
    return int(config["vision_cfg"]["image_size"])


def test_every_lite_is_registered_at_its_native_resolution() -> None:
    sizes = {name: native_size(name) for name in LITES}
    assert sizes == {LITES[0]: 224, LITES[1]: 240, LITES[2]: 260}
    assert set(LITES) <= set(list_encoders()) and LITES[0] == DEFAULT_ENCODER


@pytest.fixture(scope="module")
def default_encoder() -> Encoder:
    return load_encoder(DEFAULT_ENCODER)


@pytest.fixture(scope="module")
def lites(default_encoder: Encoder) -> dict[str, Encoder]:
    return {LITES[0]: default_encoder, **{name: load_encoder(name) for name in LITES[1:]}}


@pytest.mark.parametrize("name", LITES)
def test_lite_embeddings_are_the_pretrained_pooled_features(
    lites: dict[str, Encoder], name: str
) -> None:
    """Independent reference: timm's own model with the weights loaded, classifier removed."""
    encoder = lites[name]
    trunk_name = name.replace("-", "_")
    trunk = timm.create_model(trunk_name, pretrained=False, num_classes=0)
    weights = efficientnet_lite_state_dict(trunk_name)
    del weights["classifier.weight"], weights["classifier.bias"]
    trunk.load_state_dict(weights)
    trunk.eval()
    image = generated_image(2, 3, size=160)
    pixels = encoder.preprocess(image)
    size = native_size(name)
    assert tuple(pixels.shape) == (3, size, size)
    with torch.inference_mode():
        pooled = trunk(pixels[None])
    expected = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    assert encoder.dim == 1280
    np.testing.assert_allclose(encoder.encode([image]), expected, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", LITES)
@pytest.mark.parametrize(
    ("stamp", "imagenet_class"),
    [
        ("animals/mammals/cats/tiger.png", "tiger, Panthera tigris"),
        ("food/fruit/banana.png", "banana"),
    ],
)
def test_imagenet_head_names_demo_stamps(
    lites: dict[str, Encoder], demo_stamps: Path, name: str, stamp: str, imagenet_class: str
) -> None:
    """The classifier shipped with the weights names real photos: the mapping is right."""
    from timm.data import ImageNetInfo

    encoder = lites[name]
    image: Image.Image = load_image(demo_stamps / stamp).image
    with torch.inference_mode():
        head = imagenet_head(name.replace("-", "_"))
        logits = head(encoder.features(encoder.preprocess(image)[None]))
    top = ImageNetInfo().index_to_description(int(logits.argmax()))
    assert top == imagenet_class


def test_missing_packaged_weights_say_how_to_install() -> None:
    with pytest.raises(EncoderError, match="No packaged ImageNet weights"):
        efficientnet_lite_state_dict("efficientnet_lite4")


# --- stage taps ------------------------------------------------------------------------------


def test_taps_are_each_stages_pooled_unit_vector_and_leave_no_hook(
    tiny_encoder: Encoder,
) -> None:
    stages = stage_modules(tiny_encoder.model.visual)
    assert stages  # tiny-test is a timm trunk
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features, taps = tiny_encoder.tapped(x)
        plain = tiny_encoder.model.encode_image(x)
        np.testing.assert_allclose(features.numpy(), plain.numpy(), atol=1e-6)
    widths = []
    with torch.no_grad():  # walk the trunk by hand: stem, then each stage
        trunk = tiny_encoder.model.visual.trunk
        h = trunk.bn1(trunk.conv_stem(x))
        start = 0
        for stage in trunk.blocks:
            h = stage(h)
            pooled = torch.nn.functional.normalize(h.mean(dim=(2, 3)), dim=-1)
            width = pooled.shape[1]
            np.testing.assert_allclose(
                taps[:, start : start + width].numpy(), pooled.numpy(), atol=1e-6
            )
            widths.append(width)
            start += width
    assert taps.shape == (3, sum(widths))
    assert all(not stage._forward_hooks for stage in stages)  # shared models stay hook-free


def test_a_tower_without_stages_has_no_taps_and_heads_read_the_embedding_alone() -> None:
    from open_clip.transformer import VisionTransformer

    vit = VisionTransformer(
        image_size=32, patch_size=8, width=32, layers=2, heads=2, mlp_ratio=2.0, output_dim=16
    ).eval()
    assert stage_modules(vit) == []
    with StageTaps([]) as taps, torch.no_grad():
        vit(torch.randn(2, 3, 32, 32))
    assert taps.tensor(2).shape == (2, 0)


def test_taps_of_a_stage_that_did_not_run_are_an_error(tiny_encoder: Encoder) -> None:
    with StageTaps(stage_modules(tiny_encoder.model.visual)) as taps:
        pass
    with pytest.raises(EncoderError, match="did not run"):
        taps.tensor(1)


def _images_of_every_kind() -> list[Image.Image]:
    """Modes and sizes ingest meets: RGB, grey, palette, alpha, tiny, wide, tall."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (90, 130, 3), dtype=np.uint8))
    return [
        rgb,
        rgb.convert("L"),
        rgb.convert("P"),
        rgb.convert("RGBA"),
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (300, 40, 3), dtype=np.uint8)),
    ]


@pytest.mark.parametrize("size", [64, 224])
def test_prepared_batches_equal_preprocess_exactly(size: int) -> None:
    import open_clip

    from core.encoder.model import _split

    preprocess = open_clip.image_transform(size, is_train=False, mean=(0.48, 0.45, 0.4))
    assert _split(preprocess) is not None
    encoder = Encoder.__new__(Encoder)  # only the preprocessing is under test
    encoder.preprocess, encoder._split = preprocess, _split(preprocess)
    images = _images_of_every_kind()
    prepared = [encoder.prepare(image) for image in images]
    assert all(p.dtype == torch.uint8 and p.shape == (size, size, 3) for p in prepared)
    batch = encoder.pixels(prepared)
    expected = torch.stack([preprocess(image) for image in images])
    assert batch.shape == expected.shape == (len(images), 3, size, size)
    assert torch.equal(batch, expected)  # the same float operations: bit for bit
    assert batch.is_contiguous(memory_format=torch.channels_last)


def test_a_preprocess_that_does_not_split_is_applied_whole(tiny_encoder: Encoder) -> None:
    def whole(image: Image.Image) -> torch.Tensor:
        return tiny_encoder.preprocess(image.convert("L").convert("RGB"))

    plain = Encoder(tiny_encoder.spec, tiny_encoder.model, whole)
    images = _images_of_every_kind()
    prepared = [plain.prepare(image) for image in images]
    assert all(p.dtype == torch.float32 for p in prepared)
    assert torch.equal(plain.pixels(prepared), torch.stack([whole(i) for i in images]))
    np.testing.assert_array_equal(
        plain.encode(images), plain.encode_pixels(torch.stack([whole(i) for i in images]))
    )


def test_encode_is_preprocess_then_the_tower(tiny_encoder: Encoder) -> None:
    images = _images_of_every_kind()
    expected = tiny_encoder.encode_pixels(torch.stack([tiny_encoder.preprocess(i) for i in images]))
    np.testing.assert_allclose(tiny_encoder.encode(images, batch_size=4), expected, atol=1e-6)
