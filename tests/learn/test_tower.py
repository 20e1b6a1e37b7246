"""core.learn.tower: the split reproduces the tower, only the intended parameters train, BatchNorm
stays frozen; and the `partial` / `full` modes end to end, through the studio, on the tiny
model: an indexed version whose encoder reproduces its index, unreadable images left out, a
cancelled run leaving nothing behind.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from open_clip.transformer import VisionTransformer
from safetensors.torch import load_file
from torch import nn

from core.encoder.model import Encoder
from core.encoder.registry import EncoderError
from core.encoder.taps import StageTaps, stage_modules
from core.encoder.versions import HEAD_FILE, TOWER_FILE
from core.gallery.images import load_image
from core.learn.finetune import fine_tune
from core.learn.tower import split_tower
from core.learn.training import TrainingCancelled, TrainingError, TrainSettings
from core.measure.evaluation import evaluate
from core.studio import Studio
from tests.helpers import CancelFirstStep, leftovers, run_cli, run_json, vectors_by_id

pytestmark = pytest.mark.usefixtures("one_thread")


def pixels(encoder: Encoder, n: int = 3) -> torch.Tensor:
    size = encoder.model.visual.image_size
    side = size[0] if isinstance(size, tuple) else size
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(0))


def trainable(module: nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if p.requires_grad}


# --- the split -------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "blocks"), [("partial", 1), ("partial", 2), ("full", 1)])
def test_suffix_of_prefix_is_the_tower_and_the_original_is_untouched(
    tiny_encoder: Encoder, mode: str, blocks: int
) -> None:
    visual = tiny_encoder.model.visual
    before = {k: v.clone() for k, v in visual.state_dict().items()}
    tower = split_tower(visual, mode, blocks)
    x = pixels(tiny_encoder)
    with torch.no_grad():
        np.testing.assert_allclose(
            tower.suffix(tower.prefix(x)).numpy(), visual(x).numpy(), atol=1e-5
        )
    # a training step moves the copy, never the encoder's own tower
    tower.suffix.train()
    loss = tower.suffix(tower.prefix(x)).pow(2).sum()
    loss.backward()
    with torch.no_grad():
        for p in tower.suffix.parameters():
            if p.grad is not None:
                p.add_(p.grad, alpha=-0.1)
    assert all(torch.equal(before[k], v) for k, v in visual.state_dict().items())
    assert tower.cached == ("pixels" if mode == "full" else f"stage {5 - blocks} input")


def test_partial_trains_the_last_stages_and_conv_head_only_with_batchnorm_frozen(
    tiny_encoder: Encoder,
) -> None:
    tower = split_tower(tiny_encoder.model.visual, "partial", blocks=1)
    names = trainable(tower.suffix)
    assert names and all(
        n.startswith(("visual.trunk.blocks.4.", "visual.trunk.conv_head.", "visual.head."))
        for n in names
    )
    assert any(n.startswith("visual.trunk.conv_head.") for n in names)
    assert set(tower.trainable_state()) == {n.removeprefix("visual.") for n in names}
    # no BatchNorm can update its statistics: all were swapped for frozen ones
    assert not [m for m in tower.suffix.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    full = split_tower(tiny_encoder.model.visual, "full")
    assert trainable(full.suffix) == {n for n, p in full.suffix.named_parameters()} and any(
        n.startswith("visual.trunk.conv_stem.") for n in trainable(full.suffix)
    )


@pytest.mark.parametrize(("mode", "blocks"), [("partial", 1), ("partial", 2), ("full", 1)])
def test_prefix_then_suffix_taps_are_the_whole_towers_taps(
    tiny_encoder: Encoder, mode: str, blocks: int
) -> None:
    tower = split_tower(tiny_encoder.model.visual, mode, blocks)
    x = pixels(tiny_encoder)
    with torch.no_grad():
        with StageTaps(tower.prefix_stages) as first:
            maps = tower.prefix(x)
        with StageTaps(tower.suffix_stages) as second:
            tower.suffix(maps)
        _, whole = tiny_encoder.tapped(x)
    joined = torch.cat([first.tensor(3), second.tensor(3)], dim=1)
    stages = len(stage_modules(tiny_encoder.model.visual))
    assert len(tower.prefix_stages) + len(tower.suffix_stages) == stages
    assert len(tower.suffix_stages) == (stages if mode == "full" else blocks)
    np.testing.assert_allclose(joined.numpy(), whole.numpy(), atol=1e-5)


def test_a_clip_vit_tower_is_split_with_open_clips_own_lock() -> None:
    vit = VisionTransformer(
        image_size=32, patch_size=8, width=32, layers=3, heads=2, mlp_ratio=2.0, output_dim=16
    ).eval()
    tower = split_tower(vit, "partial", blocks=1)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(tower.suffix(tower.prefix(x)).numpy(), vit(x).numpy(), atol=1e-5)
    names = trainable(tower.suffix)
    assert tower.cached == "pixels"
    assert not any(".resblocks.0." in n or ".resblocks.1." in n for n in names)  # locked
    assert (
        any(".resblocks.2." in n for n in names)
        and {"visual.proj", "visual.ln_post.weight"} <= names
    )


class UnlockableTower(nn.Linear):
    """Like open_clip's ModifiedResNet: a lock() that refuses partial unlocking."""

    def lock(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        assert unlocked_groups == 0, "partial locking not supported"


def test_a_tower_that_cannot_be_split_is_a_clear_error(tiny_encoder: Encoder) -> None:
    with pytest.raises(TrainingError, match="cannot split a Linear tower"):
        split_tower(nn.Linear(4, 4), "partial")
    with pytest.raises(TrainingError, match="cannot lock part of a UnlockableTower"):
        split_tower(UnlockableTower(4, 4), "partial")
    with pytest.raises(TrainingError, match="Unknown tower mode"):
        split_tower(nn.Linear(4, 4), "head")
    with pytest.raises(TrainingError, match="at most the 5 stages"):
        split_tower(tiny_encoder.model.visual, "partial", blocks=6)


def test_tower_weights_that_do_not_fit_are_refused(tiny_encoder: Encoder) -> None:
    with pytest.raises(EncoderError, match="do not fit"):
        tiny_encoder.with_tower([{"trunk.nowhere.weight": torch.zeros(1)}])
    name, value = next(iter(tiny_encoder.model.visual.state_dict().items()))
    with pytest.raises(EncoderError, match="do not fit"):
        tiny_encoder.with_tower([{name: torch.zeros(*value.shape, 2)}])


# --- the modes through the studio ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["partial", "full"])
def test_a_tower_version_reproduces_its_index_and_stacks_on_a_head(fed: Studio, mode: str) -> None:
    fine_tune(fed, TrainSettings(epochs=2, lr=1e-2), activate=True)  # ft-0001, a head
    report = fine_tune(fed, TrainSettings.for_mode(mode, epochs=2, lr=1e-2))
    assert (report.version, report.parent) == ("ft-0002", "ft-0001")
    version = fed.store.get_model_version("ft-0002")
    card = version.card
    assert card["mode"] == mode and card["cached"] == (
        "pixels" if mode == "full" else "stage 4 input"
    )
    assert card["tower"] == [f"ft-0002/{TOWER_FILE}"]
    assert card["heads"] == [f"ft-0001/{HEAD_FILE}", f"ft-0002/{HEAD_FILE}"]
    assert card["metrics"] == evaluate(fed, "ft-0002", split="test").metrics()

    # the new head reads the tuned tower's taps beside the embedding, as the parent's head does
    dim = fed.encoder(fed.store.get_model_version("base")).dim
    for name in ("ft-0001", "ft-0002"):
        weight = load_file(fed.settings.models_dir / name / HEAD_FILE)["linear.weight"]
        assert weight.shape[0] == dim and weight.shape[1] > dim, name

    tuned = load_file(fed.settings.models_dir / "ft-0002" / TOWER_FILE)
    base = fed.encoder(fed.store.get_model_version("base")).model.visual.state_dict()
    assert any(not torch.equal(tuned[k], base[k]) for k in tuned)  # the tower trained

    records = fed.store.list_images()
    gallery = sorted(r.id for r in records)
    assert sorted(fed.index.ids("ft-0002")) == gallery
    sample = records[:6]
    images = [load_image(fed.image_path(r)).image for r in sample]
    encoded = fed.encoder(version).encode(images)
    np.testing.assert_allclose(
        encoded, vectors_by_id(fed, "ft-0002", [r.id for r in sample]), atol=1e-4
    )
    # a head trained on top of the tower version runs through tower then both heads
    fed.store.activate("ft-0002")
    third = fine_tune(fed, TrainSettings(epochs=2, lr=1e-2))
    stacked = fed.store.get_model_version(third.version)
    assert stacked.card["tower"] == [f"ft-0002/{TOWER_FILE}"] and len(stacked.card["heads"]) == 3
    np.testing.assert_allclose(
        fed.encoder(stacked).encode(images),
        vectors_by_id(fed, third.version, [r.id for r in sample]),
        atol=1e-4,
    )


def test_an_unreadable_gallery_image_is_named_before_anything_trains(fed: Studio) -> None:
    victim = fed.store.list_images(split="train")[0]
    fed.image_path(victim).write_bytes(b"not an image any more")
    before = leftovers(fed)
    with pytest.raises(TrainingError, match=rf"1 gallery image\(s\).*{victim.id[:12]}.*Gallery"):
        fine_tune(fed, TrainSettings.for_mode("partial", epochs=1))
    assert leftovers(fed) == before


def test_a_cancelled_partial_run_leaves_nothing(fed: Studio) -> None:
    before = leftovers(fed)
    with pytest.raises(TrainingCancelled):
        fine_tune(fed, TrainSettings.for_mode("partial"), callbacks=[CancelFirstStep()])
    assert leftovers(fed) == before


def test_cli_train_partial_takes_the_mode_and_blocks(fed: Studio) -> None:
    data = fed.settings.data_dir
    result = run_cli(
        data,
        "train",
        "--from-feedback",
        "--mode",
        "partial",
        "--blocks",
        "2",
        "--epochs",
        "1",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    card = {row["version"]: row for row in run_json(data, "models")}["ft-0001"]
    assert card["mode"] == "partial"
    settings = fed.store.get_model_version("ft-0001").card["settings"]
    assert (settings["mode"], settings["blocks"], settings["epochs"]) == ("partial", 2, 1)
    assert settings["lr"] == TrainSettings.for_mode("partial").lr


def test_a_tower_version_on_a_tower_version_chains_both_towers(fed: Studio) -> None:
    settings = TrainSettings.for_mode("partial", epochs=1, lr=1e-2)
    fine_tune(fed, settings, activate=True)
    second = fine_tune(fed, settings)
    version = fed.store.get_model_version(second.version)
    assert version.card["tower"] == [f"ft-0001/{TOWER_FILE}", f"ft-0002/{TOWER_FILE}"]
    sample = fed.store.list_images()[:4]
    images = [load_image(fed.image_path(r)).image for r in sample]
    np.testing.assert_allclose(
        fed.encoder(version).encode(images),
        vectors_by_id(fed, "ft-0002", [r.id for r in sample]),
        atol=1e-4,
    )


class ActivateMidRun:
    """Someone activates another version while the run trains."""

    def __init__(self, studio: Studio, version: str) -> None:
        self.studio, self.version = studio, version

    def on_step(self, epoch: int, step: int, steps: int, loss: float) -> None:
        self.studio.store.activate(self.version)

    def on_epoch(self, epoch: int, train_loss: float, val_loss: float | None) -> None:
        return None


def test_activating_another_version_mid_run_does_not_change_the_new_versions_parent(
    fed: Studio,
) -> None:
    fine_tune(fed, TrainSettings(epochs=1, lr=1e-2))  # ft-0001, a head, inactive
    settings = TrainSettings.for_mode("partial", epochs=1)
    report = fine_tune(fed, settings, callbacks=[ActivateMidRun(fed, "ft-0001")])
    version = fed.store.get_model_version(report.version)
    assert (report.parent, version.parent) == ("base", "base")
    assert version.card["heads"] == [f"{report.version}/{HEAD_FILE}"]  # not ft-0001's
    sample = fed.store.list_images()[:4]
    images = [load_image(fed.image_path(r)).image for r in sample]
    np.testing.assert_allclose(
        fed.encoder(version).encode(images),
        vectors_by_id(fed, report.version, [r.id for r in sample]),
        atol=1e-4,
    )
