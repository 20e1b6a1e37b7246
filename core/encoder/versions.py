"""A version's weights on disk: the heads and tower files a fine-tune writes, read back without
pickle (safetensors). The only module that imports safetensors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from core.encoder.heads import ResidualHead
from core.encoder.model import Encoder
from core.files import atomic_write

HEAD_FILE = "head.safetensors"
TOWER_FILE = "tower.safetensors"  # partial / full: the trained tower parameters


def load_tower(base: Encoder, models_dir: Path, files: Sequence[str]) -> Encoder:
    """`base` with a version's tower weights (safetensors files relative to `models_dir`, in
    order), loaded without pickle."""
    return base.with_tower([load_file(models_dir / name) for name in files])


def load_heads(models_dir: Path, files: Sequence[str]) -> list[torch.nn.Module]:
    """Adapters from safetensors files (relative to `models_dir`), loaded without pickle."""
    heads: list[torch.nn.Module] = []
    for name in files:
        weights = load_file(models_dir / name)
        rows, columns = weights["linear.weight"].shape  # (dim, dim + taps)
        head = ResidualHead(rows, taps=columns - rows)
        head.load_state_dict(weights)
        heads.append(head.eval())
    return heads


def save_weights(state: Mapping[str, torch.Tensor], target: Path) -> None:
    """Write weights atomically (`atomic_write`: a temporary file, then a rename)."""
    atomic_write(target, save({k: v.contiguous() for k, v in state.items()}))
