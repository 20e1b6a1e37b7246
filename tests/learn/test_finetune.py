"""core.learn.finetune through the studio: simulated feedback -> a new, inactive, indexed, evaluated
version whose encoder reproduces its index; a cancelled, diverged or failed run leaves nothing.

References are independent of the code under test: the head is re-applied with numpy to the
weights read by safetensors' numpy loader, metrics are recomputed by brute force
(tests.test_evaluation.reference_metrics), and "nothing left" is checked on the catalog, the
index and the models folder directly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as load_numpy

import core.learn.training
import core.studio
from core.encoder.heads import ResidualHead
from core.encoder.registry import EncoderError
from core.encoder.taps import TAPS_DIR, TapCache, taps_key
from core.encoder.versions import HEAD_FILE, load_heads
from core.gallery.images import load_image
from core.learn.finetune import FineTuneReport, fine_tune
from core.learn.training import TrainingCancelled, TrainingError, TrainSettings
from core.measure.evaluation import EvaluationError, evaluate
from core.studio import Studio
from tests.helpers import (
    FED_PER_LABEL,
    GALLERY_LABELS,
    CancelFirstStep,
    leftovers,
    reference_metrics,
    run_cli,
    run_json,
    vectors_by_id,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def reference_taps(studio: Studio, ids: list[str]) -> np.ndarray:
    """(n, t) stage taps walked by hand through the base tiny-test trunk, stage by stage:
    each stage's output averaged over space and L2-normalised, in order (no hooks)."""
    encoder = studio.encoder(studio.store.get_model_version("base"))
    trunk = encoder.model.visual.trunk
    records = studio.store.get_images(ids)
    pixels = torch.stack(
        [encoder.preprocess(load_image(studio.image_path(records[i])).image) for i in ids]
    )
    taps = []
    with torch.no_grad():
        x = trunk.bn1(trunk.conv_stem(pixels))
        for stage in trunk.blocks:
            x = stage(x)
            pooled = x.mean(dim=(2, 3)).double().numpy()
            taps.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
    return np.concatenate(taps, axis=1)


def reference_head(vectors: np.ndarray, head_file: Path, taps: np.ndarray) -> np.ndarray:
    """[x, taps] -> normalise(x + W [x, taps]), W read from the safetensors file by numpy."""
    weight = load_numpy(head_file)["linear.weight"].astype(np.float64)  # (D, D + t)
    x = vectors.astype(np.float64)
    out = x + np.concatenate([x, taps], axis=1) @ weight.T
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def brute_force_metrics(studio: Studio, version: str) -> dict[str, float]:
    """Brute-force label metrics of `version` on the test split at k=10 (the card's)."""
    records = studio.store.list_images(split="test")
    ids = [r.id for r in records]
    expected = reference_metrics(
        ids, [r.label for r in records], vectors_by_id(studio, version, ids), 10
    )
    del expected["n_queries"]
    return expected


def tmp_files(studio: Studio) -> list[Path]:
    models = studio.settings.models_dir
    return list(models.rglob(".tmp-*")) if models.exists() else []


# --- a run -----------------------------------------------------------------------------------


def test_fine_tune_writes_an_inactive_indexed_evaluated_version(fed: Studio) -> None:
    base_ids, base_vectors = fed.index.get_embeddings("base")
    report = fine_tune(fed, TrainSettings(epochs=5))

    assert isinstance(report, FineTuneReport)
    assert (report.version, report.parent) == ("ft-0001", "base")
    version = fed.store.get_model_version("ft-0001")
    assert (version.active, version.parent, version.encoder) == (False, "base", "tiny-test")
    assert fed.active_version().version == "base"  # activation is the user's decision

    # one vector per gallery image, each the head applied to the parent's vector
    gallery = sorted(r.id for r in fed.store.list_images())
    assert base_ids == gallery and len(gallery) == 4 * FED_PER_LABEL
    head_file = fed.settings.models_dir / "ft-0001" / HEAD_FILE
    assert head_file.is_file() and tmp_files(fed) == []
    new = vectors_by_id(fed, "ft-0001", gallery)
    taps = reference_taps(fed, gallery)
    dim = base_vectors.shape[1]
    assert load_numpy(head_file)["linear.weight"].shape == (dim, dim + taps.shape[1])
    assert taps.shape[1] > 0  # tiny-test has stages: the head reads them
    np.testing.assert_allclose(new, reference_head(base_vectors, head_file, taps), atol=1e-5)
    [head] = load_heads(fed.settings.models_dir, [f"ft-0001/{HEAD_FILE}"])
    assert isinstance(head, ResidualHead) and not head.training
    assert float(head.linear.weight.detach().abs().max()) > 0  # it trained

    card = version.card
    assert card["mode"] == "head" and card["heads"] == [f"ft-0001/{HEAD_FILE}"]
    assert card["settings"]["epochs"] == 5 and 1 <= card["epochs_run"] <= 5
    assert len(card["train_loss"]) == len(card["val_loss"]) == card["epochs_run"]
    assert card["pairs"] == report.summary and card["pairs"]["pairs"] == report.pairs >= 2
    assert card["metrics"] == report.metrics_after
    assert card["metrics_before"] == report.metrics_before
    assert card["metrics_before"] == evaluate(fed, "base", split="test").metrics()
    assert card["metrics"] == evaluate(fed, "ft-0001", split="test").metrics()
    for name, value in brute_force_metrics(fed, "base").items():
        assert card["metrics_before"][name] == pytest.approx(value, abs=1e-9), name
    for name, value in brute_force_metrics(fed, "ft-0001").items():
        assert card["metrics"][name] == pytest.approx(value, abs=1e-9), name


def test_the_encoder_with_heads_reproduces_the_index_and_runs_stack(fed: Studio) -> None:
    settings = TrainSettings(epochs=5, lr=1e-2)  # a clearer move away from the base
    fine_tune(fed, settings)
    fed.store.activate("ft-0001")
    second = fine_tune(fed, settings, activate=True)

    assert (second.version, second.parent) == ("ft-0002", "ft-0001")
    version = fed.active_version()
    assert (version.version, version.parent) == ("ft-0002", "ft-0001")
    assert version.card["heads"] == [f"ft-0001/{HEAD_FILE}", f"ft-0002/{HEAD_FILE}"]
    gallery = sorted(r.id for r in fed.store.list_images())
    models = fed.settings.models_dir
    base = vectors_by_id(fed, "base", gallery)
    taps = reference_taps(fed, gallery)  # both heads read the base tower's taps
    stacked = reference_head(
        reference_head(base, models / "ft-0001" / HEAD_FILE, taps),
        models / "ft-0002" / HEAD_FILE,
        taps,
    )
    np.testing.assert_allclose(vectors_by_id(fed, "ft-0002", gallery), stacked, atol=1e-5)

    records = [fed.store.list_images(label=label, limit=1)[0] for label in GALLERY_LABELS]
    images = [load_image(fed.image_path(r)).image for r in records]
    ids = [r.id for r in records]
    for name in ("ft-0001", "ft-0002"):
        stored = vectors_by_id(fed, name, ids)
        encoded = fed.encoder(fed.store.get_model_version(name)).encode(images)
        np.testing.assert_allclose(encoded, stored, atol=1e-5)
        assert np.abs(stored - vectors_by_id(fed, "base", ids)).max() > 1e-3  # heads matter
    for record, results in zip(records, fed.search(images, k=1), strict=True):
        assert results[0].image_id == record.id
        assert results[0].score == pytest.approx(1.0, abs=1e-5)


# --- runs that stop --------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["cancelled", "nan", "register"])
def test_a_stopped_run_leaves_no_half_written_version(
    fed: Studio, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    before = leftovers(fed)
    callbacks: list[Any] = []
    written: list[tuple[bool, list[str]]] = []
    expected: type[BaseException] = TrainingError
    if failure == "cancelled":
        callbacks, expected = [CancelFirstStep()], TrainingCancelled
    elif failure == "nan":
        real = core.learn.training._loss

        def nan_loss(*args: object) -> tuple[torch.Tensor, torch.Tensor]:
            loss, outputs = real(*args)  # type: ignore[arg-type]
            return loss * float("nan"), outputs

        monkeypatch.setattr(core.learn.training, "_loss", nan_loss)
    else:

        def refuse(*args: object, **kwargs: object) -> None:
            written.append(
                ((fed.settings.models_dir / "ft-0001" / HEAD_FILE).is_file(), fed.index.versions())
            )
            raise OSError("disk full")

        monkeypatch.setattr(fed.store, "add_model_version", refuse)
        expected = OSError

    with pytest.raises(expected) as caught:
        fine_tune(fed, TrainSettings(epochs=3), callbacks=callbacks)
    if failure == "nan":
        assert "NaN" in str(caught.value)
    if failure == "register":  # the head and the collection existed, then were removed
        assert written == [(True, ["base", "ft-0001"])]
    assert leftovers(fed) == before
    assert fed.active_version().version == "base"

    monkeypatch.undo()  # the studio is unharmed: the next run takes the same name
    assert fine_tune(fed, TrainSettings(epochs=1)).version == "ft-0001"


def test_a_test_split_that_cannot_be_evaluated_stops_the_run_before_writing(
    fed: Studio,
) -> None:
    # Feedback on train images is there, but no test image is left to measure before/after.
    fed.remove_images([r.id for r in fed.store.list_images(split="test")])
    before = leftovers(fed)
    with pytest.raises(EvaluationError, match="test split"):
        fine_tune(fed, TrainSettings(epochs=1))
    assert leftovers(fed) == before


def test_without_feedback_there_is_nothing_to_train_on(
    studio: Studio, make_gallery: Callable[..., Path]
) -> None:
    studio.ingest([make_gallery(per_label=2)], label_from_folders=True)
    before = leftovers(studio)
    with pytest.raises(TrainingError, match="feedback"):
        fine_tune(studio, TrainSettings(epochs=1))
    assert leftovers(studio) == before


# --- the command line ------------------------------------------------------------------------


def test_cli_train_reports_before_and_after_and_does_not_activate(fed: Studio) -> None:
    data = fed.settings.data_dir
    result = run_cli(data, "train", "--from-feedback", "--epochs", "3", "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert set(payload) == {
        "version",
        "parent",
        "pairs",
        "seconds",
        "metrics_before",
        "metrics_after",
        "prepare_seconds",
        "label_sets",
    }
    assert isinstance(payload["prepare_seconds"], float)  # reading the cached taps
    assert payload["prepare_seconds"] >= 0
    assert (payload["version"], payload["parent"]) == ("ft-0001", "base")
    assert payload["pairs"] >= 2 and payload["seconds"] >= 0
    assert set(payload["metrics_after"]) == set(payload["metrics_before"]) >= {"mrr", "map"}
    assert "train: epoch 1 loss" in result.stderr

    rows = {row["version"]: row for row in run_json(data, "models")}
    assert set(rows) == {"base", "ft-0001"}
    assert rows["base"]["active"] is True and rows["ft-0001"]["active"] is False
    assert rows["ft-0001"]["parent"] == "base"
    assert rows["ft-0001"]["metrics"] == payload["metrics_after"]

    text = run_cli(data, "models").stdout.splitlines()
    assert text[0].startswith("* base") and "mode=" not in text[0]
    expected = payload["metrics_after"]
    assert f"mode=head test mAP {expected['map']:.4f} MRR {expected['mrr']:.4f}" in text[1]


def test_cli_no_taps_trains_a_head_on_the_embedding_alone(fed: Studio) -> None:
    data = fed.settings.data_dir
    result = run_cli(data, "train", "--from-feedback", "--epochs", "2", "--no-taps")
    assert result.returncode == 0, result.stderr
    version = fed.store.get_model_version("ft-0001")
    assert version.card["settings"]["taps"] is False
    head_file = fed.settings.models_dir / "ft-0001" / HEAD_FILE
    dim = fed.encoder(fed.store.get_model_version("base")).dim
    assert load_numpy(head_file)["linear.weight"].shape == (dim, dim)
    gallery = sorted(r.id for r in fed.store.list_images())
    no_taps = np.zeros((len(gallery), 0))
    np.testing.assert_allclose(
        vectors_by_id(fed, "ft-0001", gallery),
        reference_head(vectors_by_id(fed, "base", gallery), head_file, no_taps),
        atol=1e-5,
    )


def cached_taps(studio: Studio, ids: list[str]) -> np.ndarray:
    """The tap cache's rows for `ids`, read from its shard files with numpy alone."""
    [folder] = list((studio.settings.models_dir / TAPS_DIR).iterdir())
    found: dict[str, np.ndarray] = {}
    for shard in sorted(folder.glob("*.npz")):
        with np.load(shard, allow_pickle=False) as data:
            found.update(zip(data["ids"].tolist(), data["taps"], strict=True))
    assert set(ids) <= found.keys()
    return np.stack([found[i] for i in ids])


def count_image_reads(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """From now on, every gallery image the studio decodes is appended to the list returned."""
    read: list[object] = []
    real_load_image = core.studio.load_image

    def counting(*args: Any, **kwargs: Any) -> Any:
        read.append(args[0])
        return real_load_image(*args, **kwargs)

    monkeypatch.setattr(core.studio, "load_image", counting)
    return read


def test_ingest_fills_the_tap_cache_and_a_head_run_reads_no_image(
    fed: Studio, monkeypatch: pytest.MonkeyPatch
) -> None:
    gallery = sorted(r.id for r in fed.store.list_images())
    np.testing.assert_allclose(cached_taps(fed, gallery), reference_taps(fed, gallery), atol=1e-5)

    read = count_image_reads(monkeypatch)
    report = fine_tune(fed, TrainSettings(epochs=2))
    assert read == []  # vectors from the index, taps from the cache ingest wrote
    head_file = fed.settings.models_dir / report.version / HEAD_FILE
    base = vectors_by_id(fed, "base", gallery)
    np.testing.assert_allclose(
        vectors_by_id(fed, report.version, gallery),
        reference_head(base, head_file, reference_taps(fed, gallery)),
        atol=1e-5,
    )


def test_taps_missing_from_the_cache_are_computed_and_kept(
    fed: Studio, monkeypatch: pytest.MonkeyPatch
) -> None:
    gallery = sorted(r.id for r in fed.store.list_images())
    [folder] = list((fed.settings.models_dir / TAPS_DIR).iterdir())
    for shard in folder.glob("*.npz"):  # an unreadable shard is no shard: recomputed
        shard.write_bytes(b"not a zip")
    fine_tune(fed, TrainSettings(epochs=2))
    np.testing.assert_allclose(cached_taps(fed, gallery), reference_taps(fed, gallery), atol=1e-5)
    assert not list(folder.glob(".tmp-*"))

    read = count_image_reads(monkeypatch)
    fine_tune(fed, TrainSettings(epochs=2))
    assert read == []


def test_the_tap_cache_appends_shards_and_compacts_them(tmp_path: Path) -> None:
    cache = TapCache(tmp_path / "key")
    assert cache.read() == {}
    rng = np.random.default_rng(0)
    rows = {f"{n:04d}": rng.standard_normal(6).astype(np.float32) for n in range(40)}
    names = list(rows)
    for start in range(0, 40, 8):
        chunk = names[start : start + 8]
        cache.append(chunk, np.stack([rows[i] for i in chunk]))
    assert len(list((tmp_path / "key").glob("*.npz"))) == 5
    cache.compact(at=6)  # not yet
    assert len(list((tmp_path / "key").glob("*.npz"))) == 5
    cache.compact(at=5)
    assert len(list((tmp_path / "key").glob("*.npz"))) == 1
    found = cache.read(["0003", "0039", "absent"])
    assert sorted(found) == ["0003", "0039"]
    np.testing.assert_array_equal(found["0039"], rows["0039"])
    assert {k: v.tolist() for k, v in cache.read().items()} == {
        k: v.tolist() for k, v in rows.items()
    }
    with pytest.raises(EncoderError, match="2 ids for 1 rows"):
        cache.append(["a", "b"], np.zeros((1, 6)))


def test_the_taps_key_follows_the_weights_and_the_precision() -> None:
    first, second = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    with torch.no_grad():
        second.weight.copy_(first.weight)
        second.bias.copy_(first.bias)
    assert taps_key(first, "fp32") == taps_key(second, "fp32")
    assert taps_key(first, "fp32") != taps_key(first, "bf16")
    with torch.no_grad():
        second.bias[0] += 1e-6
    assert taps_key(first, "fp32") != taps_key(second, "fp32")
