"""Shared fixtures: tiny random-init encoders, generated labelled galleries, temporary studios."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from core.config import Settings, load_settings
from core.encoder.model import Encoder, load_encoder
from core.gallery.demo import STAMPS_SUBDIR

if TYPE_CHECKING:
    from core.studio import Studio

TINY = "tiny-test"
GALLERY_LABELS = ("shapes/circles", "shapes/squares", "colours/red", "colours/blue")


@pytest.fixture(scope="session")
def tiny_encoder() -> Encoder:
    """timm's test_efficientnet behind open_clip, random init (seeded): fast, 32-d."""
    return load_encoder(TINY)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return replace(load_settings(tmp_path / "data", environ={}), encoder=TINY, batch_size=8)


@pytest.fixture
def studio(settings: Settings, tiny_encoder: Encoder) -> Studio:
    from core.studio import Studio  # imported here so module tests run without the index

    return Studio(settings, encoder_loader=lambda name: tiny_encoder)


def generated_image(label_index: int, variant: int, size: int = 96) -> Image.Image:
    """A picture whose look depends on its label (shape, colour) and a little on its variant."""
    rng = np.random.default_rng(1000 * label_index + variant)
    base = np.array([(230, 40, 40), (40, 40, 230), (40, 200, 60), (240, 200, 30)][label_index % 4])
    pixels = np.full((size, size, 3), 255, dtype=np.float64)
    yy, xx = np.mgrid[0:size, 0:size]
    centre = size / 2 + rng.uniform(-8, 8, size=2)
    if label_index % 2 == 0:
        mask = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < (size / 3) ** 2
    else:
        mask = (abs(yy - centre[0]) < size / 3) & (abs(xx - centre[1]) < size / 3)
    pixels[mask] = base
    pixels += rng.normal(0, 6, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture
def make_gallery(tmp_path: Path) -> Callable[..., Path]:
    """Write `per_label` PNGs for each label into nested folders; returns the root."""

    def make(per_label: int = 10, labels: tuple[str, ...] = GALLERY_LABELS) -> Path:
        root = tmp_path / "gallery"
        for label_index, label in enumerate(labels):
            folder = root / label
            folder.mkdir(parents=True, exist_ok=True)
            for variant in range(per_label):
                generated_image(label_index, variant).save(folder / f"img_{variant:03d}.png")
        return root

    return make


def raw(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Rows straight from SQLite, bypassing the store: the independent view tests compare to."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def demo_stamps_root() -> Path | None:
    """The unpacked demo stamps of the project's data directory, if `make demo` fetched them."""
    data = Path(os.environ.get("LOOKALIKE_DATA", Path(__file__).parents[1] / "data"))
    stamps = data / "demo" / "root" / STAMPS_SUBDIR
    return stamps if stamps.is_dir() else None


@pytest.fixture
def demo_stamps() -> Path:
    """Needs the demo gallery: `make test` fetches it first; elsewhere the test is skipped."""
    stamps = demo_stamps_root()
    if stamps is None:
        if os.environ.get("CI"):
            pytest.fail("CI must fetch the demo gallery first (make demo).")
        pytest.skip("the demo stamps are not fetched (run `make demo`)")
    return stamps


FED_PER_LABEL = 8  # the `fed` gallery: 4 labels x 8 images, about half of them train


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors: thread hand-offs cost more than they save on a loaded machine (training
    tests use it with `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fed(studio: Studio, make_gallery: Callable[..., Path]) -> Studio:
    """A labelled gallery and 40 simulated searches' worth of clicks and labels."""
    from core.measure.simulate import simulate

    studio.ingest([make_gallery(per_label=FED_PER_LABEL)], label_from_folders=True)
    simulate(studio, n_queries=40, seed=0, k=5)
    return studio
