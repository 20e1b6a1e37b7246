"""Stage taps and tower surgery: which modules of an image tower are its stages, their pooled
outputs, the on-disk cache of a gallery's taps, and frozen BatchNorm for the training copies."""

from __future__ import annotations

import hashlib
import io
import os
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.encoder.registry import EncoderError
from core.files import atomic_write

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


TAPS_DIR = "taps"  # under the models folder: one cache folder per tower
TAPS_FORMAT = 2  # bump when the taps' arithmetic changes: old caches are then never read


def taps_key(visual: torch.nn.Module, precision: str) -> str:
    """A cache key for a tower's taps: the bytes of its weights (base and fine-tuned alike),
    the precision it runs in and `TAPS_FORMAT`. 0.02 s for efficientnet-lite0's 3.4 M
    parameters, so no image has to be recomputed to know that a cache still holds."""
    digest = hashlib.sha256(f"{TAPS_FORMAT}|{precision}".encode())
    for name, tensor in sorted(visual.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


class TapCache:
    """A gallery's stage taps on disk, by image id, for one tower (`folder` is
    `models/taps/KEY`, KEY from `taps_key`): taps depend only on the tower and the image bytes
    (ids are their sha256), so ingest writes them from the forward pass it runs anyway and a
    `head` version trains and re-indexes without decoding an image (`core.learn.finetune`).

    Appendable: each `append` is one shard file (`ids`, `taps`), written atomically, so a run
    killed half-way loses at most its last shard; `compact` merges the shards into one. A
    missing, truncated or malformed shard reads as empty (the taps it held are recomputed)."""

    COMPACT_AT = 16  # shards before `compact` merges them

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _shards(self) -> list[Path]:
        return sorted(self.folder.glob("*.npz")) if self.folder.exists() else []

    @staticmethod
    def _read_shard(path: Path) -> dict[str, np.ndarray]:
        try:
            with np.load(path, allow_pickle=False) as data:
                ids, taps = data["ids"].tolist(), data["taps"]
        except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile):
            return {}
        if taps.ndim != 2 or len(taps) != len(ids):
            return {}
        return dict(zip(ids, taps, strict=True))

    def read(self, ids: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Cached (t,) float32 taps by image id (those of `ids` only, when given)."""
        wanted = None if ids is None else set(ids)
        found: dict[str, np.ndarray] = {}
        for shard in self._shards():
            for image_id, taps in self._read_shard(shard).items():
                if wanted is None or image_id in wanted:
                    found[image_id] = taps
        return found

    def append(self, ids: Sequence[str], taps: np.ndarray) -> None:
        """Add (n, t) taps of `ids` as one new shard (nothing for n = 0)."""
        if len(ids) != len(taps):
            raise EncoderError(f"{len(ids)} ids for {len(taps)} rows of taps.")
        if not len(ids):
            return
        buffer = io.BytesIO()
        np.savez(buffer, ids=np.array(list(ids), dtype=str), taps=taps.astype(np.float32))
        name = f"{time.time_ns():020d}-{os.getpid()}-{id(buffer):x}.npz"
        atomic_write(self.folder / name, buffer.getvalue())

    def compact(self, at: int | None = None) -> None:
        """Merge the shards into one when there are at least `at` (default `COMPACT_AT`): the
        merged shard is written before the others are removed, so a reader in between sees
        every tap (twice, equal)."""
        shards = self._shards()
        if len(shards) < (self.COMPACT_AT if at is None else at) or len(shards) < 2:
            return
        merged = self.read()
        if merged:
            self.append(list(merged), np.stack(list(merged.values())))
        for shard in shards:
            shard.unlink(missing_ok=True)
