"""Shared fixtures: tiny random-init encoders, generated labelled galleries, temporary studios."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from core.config import Settings, load_settings
from core.encoder.model import Encoder, load_encoder
from core.gallery.demo import STAMPS_SUBDIR
from tests.helpers import FED_PER_LABEL, GALLERY_LABELS, TINY, SpawnedJob, generated_image

if TYPE_CHECKING:
    from core.studio import Studio


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


@pytest.fixture
def fake_spawn(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[SpawnedJob]]:
    """Background measuring jobs start a stand-in instead of `python -m core <kind>-job`: a
    process that sleeps with the job's arguments on its command line (so it reads as that job,
    alive until killed), stopped at teardown. The list records each one, in order."""
    import core.measure.jobs

    spawned: list[SpawnedJob] = []

    def spawn(settings: object, kind: str, request: list[str]) -> int:
        command = [sys.executable, "-c", "import time; time.sleep(300)", f"{kind}-job", *request]
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        spawned.append(SpawnedJob(kind, list(request), process))
        # until the child has exec'd, /proc shows the parent's command line: the job would
        # read as another program's pid (failed) to a status read right after the start
        marker, cmdline = f"{kind}-job".encode(), Path(f"/proc/{process.pid}/cmdline")
        deadline = time.monotonic() + 10
        while cmdline.exists() and marker not in cmdline.read_bytes():
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)
        return process.pid

    monkeypatch.setattr(core.measure.jobs, "_spawn", spawn)
    yield spawned
    for job in spawned:
        job.process.kill()
        job.process.wait()
