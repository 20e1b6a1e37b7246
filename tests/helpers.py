"""Helpers the test modules share: generated images, raw SQL, the command line as a user runs
it, brute-force references from DESIGN.md's formulas, and a real `streamlit run` for the browser.

Fixtures live in the conftest files; plain functions and constants live here, so no test module
imports from another.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core.encoder.taps import TAPS_DIR
from core.learn.training import TrainingCancelled
from core.measure import load
from core.studio import Studio

ROOT = Path(__file__).resolve().parents[1]  # the project folder, where `python -m core` runs

# The interaction log's columns as the seed names them, in the seed's order, then the model
# version and the grade value: written out by hand here, never imported from the code under test.
SEED_COLUMNS = [
    "UserID",
    "QueryImageID",
    "DisplayedImageID",
    "PositionInDisplayedList",
    "InteractionType",
    "Location",
    "Timestamp",
    "ModelVersion",
    "Value",
]
SEED_COLUMNS_WITH_QUERY_ID = [*SEED_COLUMNS, "QueryID"]  # interactions(with_query_id=True)


TINY = "tiny-test"


@dataclass(frozen=True)
class SpawnedJob:
    """A stand-in for a background job's process (the `fake_spawn` fixture)."""

    kind: str
    request: list[str]
    process: subprocess.Popen[bytes]


GALLERY_LABELS = ("shapes/circles", "shapes/squares", "colours/red", "colours/blue")


FED_PER_LABEL = 8  # the `fed` gallery: 4 labels x 8 images, about half of them train


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


def raw(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Rows straight from SQLite, bypassing the store: the independent view tests compare to."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# Fashion-MNIST's labels 0-9 as its README names them, written out by hand.
FASHION_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_IDX_DIR = Path("usr/share/datasets/fashion-mnist")  # in the .deb, as `dpkg -c` lists it


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """`array` in the IDX format as the MNIST page describes it: 0, 0, the type code, the number
    of dimensions, each dimension as a big-endian uint32, then the values big-endian."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def fake_fashion_mnist(idx_dir: Path, per_class: tuple[int, int] = (3, 1)) -> np.ndarray:
    """Write a small Fashion-MNIST into `idx_dir`, gzipped as Debian ships it: `per_class[0]`
    random 28x28 images of each class in the train files and `per_class[1]` in the t10k ones,
    classes shuffled. Returns the labels, train first."""
    rng = np.random.default_rng(0)
    idx_dir.mkdir(parents=True, exist_ok=True)
    labels = []
    for part, count in zip(("train", "t10k"), per_class, strict=True):
        classes = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), count))
        pixels = rng.integers(0, 256, (len(classes), 28, 28), dtype=np.uint8)
        (idx_dir / f"{part}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(pixels)))
        (idx_dir / f"{part}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(classes)))
        labels.append(classes)
    return np.concatenate(labels)


class FakeFashionApt:
    """A `run` for `fetch_package`: `apt-get download P` leaves a placeholder `P_1.0_all.deb`
    in the working directory, `dpkg -x DEB DIR` writes `fake_fashion_mnist` where the real
    package keeps its IDX files. Records the commands."""

    def __init__(self, per_class: tuple[int, int] = (3, 1)) -> None:
        self.per_class = per_class
        self.calls: list[list[str]] = []

    def __call__(self, command: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        command = list(command)
        self.calls.append(command)
        if command[0] == "apt-get" and "download" in command:
            (Path(cwd) / f"{command[-1]}_1.0_all.deb").write_bytes(b"!<arch>\nfake deb")
        elif command[:2] == ["dpkg", "-x"]:
            fake_fashion_mnist(Path(cwd, command[3]) / FASHION_IDX_DIR, self.per_class)
        else:
            raise AssertionError(f"unexpected command {command}")
        return subprocess.CompletedProcess(command, 0, stdout="", stderr="")


def run_cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOOKALIKE_DATA": str(data), "LOOKALIKE_ENCODER": "tiny-test"}
    return subprocess.run(
        [sys.executable, "-m", "core", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def run_json(data: Path, *args: str) -> Any:
    result = run_cli(data, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # stdout is exactly one JSON document


def reference_metrics(
    ids: list[str],
    labels: list[str | None],
    vectors: np.ndarray,
    k: int,
    query_labels: Collection[str] | None = None,
) -> dict[str, float]:
    """DESIGN.md "Metrics, exactly", written plainly: one query at a time, python loops; with
    `query_labels`, only the queries of those labels count (every image is still ranked)."""
    totals = {"mrr": 0.0, "map": 0.0, "precision_at_k": 0.0, "recall_at_k": 0.0, "ndcg_at_k": 0.0}
    counted = 0
    for q in range(len(ids)):
        if not labels[q] or (query_labels is not None and labels[q] not in query_labels):
            continue
        others = [j for j in range(len(ids)) if j != q]
        # Best first; ties go to the earlier catalog position (a stable sort).
        ranking = sorted(others, key=lambda j: -float(vectors[q] @ vectors[j]))
        relevant_total = sum(1 for j in others if labels[j] == labels[q])
        if relevant_total == 0:
            continue
        counted += 1
        top = [1 if labels[j] == labels[q] else 0 for j in ranking[:k]]
        first = next((i for i, r in enumerate(top, start=1) if r), None)
        totals["mrr"] += 1 / first if first else 0.0
        totals["precision_at_k"] += sum(top) / k
        totals["recall_at_k"] += sum(top) / relevant_total
        totals["map"] += (
            sum(sum(top[:i]) / i * top[i - 1] for i in range(1, len(top) + 1)) / relevant_total
        )
        dcg = sum(r / math.log2(i + 1) for i, r in enumerate(top, start=1))
        idcg = sum(1 / math.log2(i + 1) for i in range(1, min(k, relevant_total) + 1))
        totals["ndcg_at_k"] += dcg / idcg
    return {name: value / counted for name, value in totals.items()} | {"n_queries": counted}


def vectors_by_id(studio: Studio, version: str, ids: list[str]) -> np.ndarray:
    found, vectors = studio.index.get_embeddings(version, ids)
    assert found == ids
    return vectors


def leftovers(studio: Studio) -> tuple[list[str], list[str], list[str]]:
    """What a run can write of a version: catalog rows, index collections, files under models/
    (but the tap cache, `models/taps/`, which belongs to no version and is complete once
    written)."""
    models = studio.settings.models_dir
    found = models.rglob("*") if models.exists() else []
    files = sorted(
        str(p.relative_to(models)) for p in found if p.relative_to(models).parts[0] != TAPS_DIR
    )
    return [v.version for v in studio.store.list_model_versions()], studio.index.versions(), files


class CancelFirstStep:
    def on_step(self, epoch: int, step: int, steps: int, loss: float) -> None:
        raise TrainingCancelled("the user pressed stop")

    def on_epoch(self, epoch: int, train_loss: float, val_loss: float | None) -> None:
        raise AssertionError("cancelled on the first step")


CHROMIUM_FLAGS = list(load.CHROMIUM_FLAGS)


def chromium_path() -> str:
    """Debian's chromium; without it the browser tests skip, except under CI, where a missing
    browser is a set-up failure."""
    try:
        return load.chromium()
    except load.LoadBenchError as missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} (Debian package)")
        pytest.skip(str(missing))


def start_streamlit(data_dir: Path, encoder: str, log: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """`streamlit run app.py` on 127.0.0.1 and a free port, serving `data_dir`."""
    return load.serve_app(data_dir, encoder, log)
