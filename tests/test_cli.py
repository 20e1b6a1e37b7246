"""The command line end to end, as a user runs it: ingest ~40 labelled images, search, evaluate."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.config import load_settings
from core.gallery import demo
from core.gallery.fashion import FASHION_DIR, FASHION_PACKAGE
from core.search.index import VectorIndex
from core.store import Store
from tests.helpers import (
    FASHION_IDX_DIR,
    FASHION_NAMES,
    GALLERY_LABELS,
    SEED_COLUMNS,
    FakeFashionApt,
    generated_image,
    raw,
    reference_metrics,
    run_cli,
    run_json,
)


@pytest.fixture(scope="module")
def gallery_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """~40 generated images in labelled folders, ingested through the CLI once for the module."""

    root = tmp_path_factory.mktemp("cli") / "gallery"
    for label_index, label in enumerate(GALLERY_LABELS):
        (root / label).mkdir(parents=True)
        for variant in range(10):
            generated_image(label_index, variant).save(root / label / f"{variant}.png")
    data = root.parent / "data"
    report = run_json(data, "ingest", str(root), "--label-from-folders")
    assert report == {"added": 40, "duplicates": 0, "rejected": []}
    return root, data


def test_search_returns_the_query_itself_first(gallery_data: tuple[Path, Path]) -> None:
    root, data = gallery_data
    query = root / GALLERY_LABELS[2] / "3.png"
    payload = run_json(data, "search", str(query), "-k", "5")
    assert payload["model"] == "base"
    [only] = payload["queries"]
    first = only["results"][0]
    assert first["image_id"] == hashlib.sha256(query.read_bytes()).hexdigest()
    assert first["score"] == pytest.approx(1.0, abs=1e-4) and first["label"] == GALLERY_LABELS[2]
    assert [r["rank"] for r in only["results"]] == [1, 2, 3, 4, 5]
    assert all(Path(r["path"]).is_file() for r in only["results"])


def test_evaluate_matches_a_brute_force_computation(gallery_data: tuple[Path, Path]) -> None:
    _, data = gallery_data
    payload = run_json(data, "evaluate", "-k", "10")
    settings = load_settings(data, environ={})
    records = Store(settings.catalog_path).list_images()
    ids, vectors = VectorIndex.from_settings(settings).get_embeddings(
        "base", [r.id for r in records]
    )
    by_id = dict(zip(ids, vectors, strict=True))
    matrix = np.stack([by_id[r.id] for r in records])
    expected = reference_metrics([r.id for r in records], [r.label for r in records], matrix, 10)
    assert (payload["model"], payload["split"], payload["k"]) == ("base", "all", 10)
    assert payload["n_queries"] == expected.pop("n_queries") == 40
    for name, value in expected.items():
        assert payload[name] == pytest.approx(value, abs=1e-9), name


def test_second_ingest_is_idempotent_and_models_lists_base(gallery_data: tuple[Path, Path]) -> None:
    root, data = gallery_data
    assert run_json(data, "ingest", str(root), "--label-from-folders")["added"] == 0
    [base] = run_json(data, "models")
    assert base["version"] == "base" and base["active"] is True
    assert base["speed"] == {}  # untimed until asked
    [base] = run_json(data, "models", "--measure")
    speed = base["speed"]
    assert speed["images_per_s"] > 0 and (speed["input_px"], speed["vector_size"]) == (64, 32)
    assert f"64 px 32-d {speed['images_per_s']:.1f} images/s" in run_cli(data, "models").stdout


def test_bad_query_is_an_error_that_loses_nothing_else(
    gallery_data: tuple[Path, Path], tmp_path: Path
) -> None:
    root, data = gallery_data
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    result = run_cli(data, "search", str(bad), str(root / GALLERY_LABELS[0] / "0.png"), "--json")
    assert result.returncode == 1 and "notes.png" in result.stderr
    payload = json.loads(result.stdout)
    assert payload["queries"][0]["error"] and len(payload["queries"][1]["results"]) == 10


def test_user_errors_exit_non_zero_with_one_sentence(tmp_path: Path) -> None:
    result = run_cli(tmp_path / "empty", "evaluate", "--json")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    unknown = run_cli(tmp_path / "empty", "activate", "ft-0009")
    assert unknown.returncode == 1 and "ft-0009" in unknown.stderr


def test_ingest_json_reports_rejections(tmp_path: Path, make_gallery: Callable[..., Path]) -> None:
    root = make_gallery(per_label=1)
    (root / "broken.png").write_bytes(b"garbage")
    payload = run_json(tmp_path / "d", "ingest", str(root))
    assert payload["added"] == len(GALLERY_LABELS)
    assert [Path(r["path"]).name for r in payload["rejected"]] == ["broken.png"]


def test_export_interactions_writes_the_seeds_column_names(
    tmp_path: Path, make_gallery: Callable[..., Path]
) -> None:
    data = tmp_path / "data"
    assert run_json(data, "ingest", str(make_gallery(per_label=4)), "--label-from-folders")["added"]
    run_json(data, "simulate", "--queries", "3", "--seed", "0", "-k", "4")
    logged = raw(load_settings(data, environ={}).catalog_path, "SELECT COUNT(*) FROM interactions")
    seed_columns = SEED_COLUMNS
    for name, read in (("log.csv", pd.read_csv), ("log.parquet", pd.read_parquet)):
        out = tmp_path / name
        report = run_json(data, "export-interactions", str(out))
        assert report["rows"] == logged[0][0] > 0
        back = read(out)
        assert list(back.columns) == seed_columns
        assert len(back) == report["rows"]
        assert set(back["InteractionType"]) >= {"impression"}
    header = (tmp_path / "log.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header.split(",") == seed_columns


def test_demo_data_fashion_mnist_limit_ingests_two_of_each_class_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    monkeypatch.setattr(demo.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    fake = FakeFashionApt(per_class=(4, 1))  # 50 images; the CLI then finds them fetched
    demo.fetch_package(data / "demo" / FASHION_DIR, FASHION_PACKAGE, FASHION_IDX_DIR, run=fake)

    args = ("demo-data", "--set", "fashion-mnist", "--limit", "20")
    first, second = run_json(data, *args), run_json(data, *args)

    assert first == {"added": 20, "duplicates": 0, "rejected": []}
    assert second == {"added": 0, "duplicates": 20, "rejected": []}
    rows = raw(load_settings(data, environ={}).catalog_path, "SELECT label, split FROM images")
    assert Counter(label for label, _ in rows) == {name: 2 for name in FASHION_NAMES}
    assert {split for _, split in rows} <= {"train", "test"}
    assert len(list((data / "demo" / FASHION_DIR / "png").rglob("*.png"))) == 20


@pytest.mark.slow  # the forward-speed probes (3 s each) and UMAP's first compilation
def test_bench_scale_ingests_into_a_fresh_dir_and_reports_exactly_its_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    monkeypatch.setattr(demo.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    fake = FakeFashionApt(per_class=(4, 1))  # 50 images; the CLI then finds them fetched
    demo.fetch_package(data / "demo" / FASHION_DIR, FASHION_PACKAGE, FASHION_IDX_DIR, run=fake)

    figures = run_json(data, "bench", "--scale", "--limit", "30", "--queries", "5")

    assert list(figures) == [
        "images",
        "ingest_seconds",
        "ingest_images_per_s",
        "encoder_fp32_images_per_s",
        "encoder_images_per_s",
        "precision",
        "peak_rss_mb",
        "search_p50_ms",
        "search_p95_ms",
        "index_recall_at_10",
        "evaluate_seconds",
        "map_seconds",
    ]
    assert figures["images"] == 30
    assert figures["precision"] in ("fp32", "bf16")
    assert 0 <= figures["index_recall_at_10"] <= 1
    assert figures["search_p50_ms"] <= figures["search_p95_ms"]
    assert figures["peak_rss_mb"] > 100  # torch alone is more than that
    assert all(figures[key] > 0 for key in ("ingest_seconds", "encoder_images_per_s"))
    rows = raw(load_settings(data, environ={}).catalog_path, "SELECT label FROM images")
    assert Counter(label for (label,) in rows) == {name: 3 for name in FASHION_NAMES}

    again = run_cli(data, "bench", "--scale", "--limit", "30")
    assert again.returncode == 1
    assert "fresh data directory" in again.stderr and "30 images" in again.stderr


def test_index_lab_on_any_vectors_works_on_an_empty_data_dir(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 24))
    vectors = (centres[rng.integers(0, 8, 600)] + 0.4 * rng.normal(size=(600, 24))) * 3
    queries = centres[rng.integers(0, 8, 30)] + 0.4 * rng.normal(size=(30, 24))
    np.save(tmp_path / "a.npy", vectors.astype(np.float32))  # rows need not be unit-norm
    np.save(tmp_path / "b.npy", queries.astype(np.float32))
    data, saved = tmp_path / "data", tmp_path / "neighbours"
    payload = run_json(
        data,
        "index-lab",
        "--vectors",
        str(tmp_path / "a.npy"),
        "--queries",
        str(tmp_path / "b.npy"),
        "--methods",
        "exact",
        "ivf",
        "-k",
        "5",
        "--save-neighbours",
        str(saved),
    )
    assert (payload["k"], payload["n_vectors"], payload["n_queries"], payload["dim"]) == (
        5,
        600,
        30,
        24,
    )
    assert {p["method"] for p in payload["points"]} == {"exact", "ivf"}
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    truth = np.argsort(-(queries @ unit.T), axis=1)[:, :5]  # cosine by hand
    for point in payload["points"]:
        rows = np.load(point["neighbours_file"])
        assert Path(point["neighbours_file"]).parent == saved and rows.shape == (30, 5)
        mine = np.mean([len(set(r) & set(t)) / 5 for r, t in zip(rows, truth, strict=True)])
        assert point["recall_at_k"] == pytest.approx(mine)
    assert not (data / "catalog.db").exists()  # nothing of a gallery was opened


def test_index_lab_on_a_version_holds_out_gallery_images_and_stores_the_run(
    gallery_data: tuple[Path, Path],
) -> None:
    _, data = gallery_data
    payload = run_json(
        data, "index-lab", "--methods", "exact", "lsh", "--n-queries", "8", "-k", "5"
    )
    assert payload["n_queries"] == 8 and payload["n_vectors"] >= 32  # 40 images, 8 held out
    assert payload["points"][0]["method"] == "exact"
    stored = json.loads((data / "lab" / "base.json").read_text())
    assert stored["request"]["version"] == "base" and stored["result"]["n_queries"] == 8
    text = run_cli(data, "index-lab", "--methods", "exact", "--n-queries", "8")
    assert text.returncode == 0 and "recall@10 against exact search" in text.stdout


def test_index_lab_refuses_half_a_pair_of_files(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.ones((20, 4), np.float32))
    result = run_cli(tmp_path / "data", "index-lab", "--vectors", str(tmp_path / "a.npy"))
    assert result.returncode == 1 and "go together" in result.stderr
    np.save(tmp_path / "bad.npy", np.ones(20, np.float32))
    result = run_cli(
        tmp_path / "data",
        "index-lab",
        "--vectors",
        str(tmp_path / "bad.npy"),
        "--queries",
        str(tmp_path / "a.npy"),
    )
    assert result.returncode == 1 and "2-D float array" in result.stderr
