"""Stage taps and tower surgery: which modules of an image tower are its stages, their pooled
outputs, and frozen BatchNorm for the training copies."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from core.encoder.registry import EncoderError

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
