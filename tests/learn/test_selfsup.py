"""Self-supervised (SimCLR) fine-tuning: augmented views, a new version, bad input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from core.encoder.model import Encoder
from core.gallery.images import load_image
from core.learn.selfsup import AugmentedViews, Projector, load_folder, self_supervised
from core.learn.training import TrainingError, TrainSettings
from core.measure.evaluation import evaluate
from core.studio import Studio
from tests.helpers import generated_image


def test_two_calls_give_two_different_views_of_the_same_images(tiny_encoder: Encoder) -> None:
    views = AugmentedViews(tiny_encoder, [generated_image(i % 4, i) for i in range(6)])
    torch.manual_seed(0)
    first, second = views(torch.arange(6)), views(torch.arange(6))
    assert first.shape == (6, tiny_encoder.dim)
    np.testing.assert_allclose(first.norm(dim=1).numpy(), 1.0, atol=1e-5)
    assert not torch.allclose(first, second)  # fresh crops, flips, colours every call


def test_the_projector_is_unit_norm_and_smaller() -> None:
    out = Projector(32, hidden=16, out=8)(torch.randn(5, 32))
    assert out.shape == (5, 8)
    np.testing.assert_allclose(out.norm(dim=1).detach().numpy(), 1.0, atol=1e-5)


def test_load_folder_skips_what_it_cannot_read(make_gallery: Callable[..., Path]) -> None:
    root = make_gallery(per_label=2)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    images = load_folder([root])
    assert len(images) == 8 and all(image.mode == "RGB" for image in images)


def test_self_supervised_training_writes_an_evaluated_version(
    studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    root = make_gallery(per_label=6)
    studio.ingest([root], label_from_folders=True)
    report = self_supervised(studio, load_folder([root]), TrainSettings(epochs=2, batch_size=8))
    version = studio.store.get_model_version(report.version)
    assert (report.version, report.parent, report.pairs) == ("ft-0001", "base", 24)
    assert version.card["source"] == "self-supervised" and not version.active
    assert version.card["metrics_before"] == evaluate(studio, "base", split="test").metrics()
    assert studio.index.count("ft-0001") == studio.index.count("base") == 24
    # Search through the new version reproduces its indexed vectors (base encoder + head).
    record = studio.store.list_images()[0]
    [stored] = studio.index.get_embeddings("ft-0001", [record.id])[1]
    [base] = studio.index.get_embeddings("base", [record.id])[1]
    [encoded] = studio.encoder(version).encode([load_image(studio.image_path(record)).image])
    assert float(encoded @ stored) == pytest.approx(1.0, abs=1e-4)
    assert float(stored @ base) < 1 - 1e-6  # the head moved it


def test_too_few_images_is_a_clear_error(studio: Studio, make_gallery: Callable[..., Path]) -> None:
    studio.ingest([make_gallery(per_label=1)], label_from_folders=True)
    with pytest.raises(TrainingError, match="at least 4"):
        self_supervised(studio, [generated_image(0, 0)] * 3, TrainSettings(epochs=1))
    assert [v.version for v in studio.store.list_model_versions()] == ["base"]
