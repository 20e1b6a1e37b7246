"""Fine-tuned heads: the residual adapter a `head`-mode version adds on the encoder's unit
vectors (and stage taps), and applying a chain of them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from core.encoder.registry import EncoderError


def head_taps(head: torch.nn.Module) -> int:
    """How many tap columns a head reads after the embedding (0: the embedding alone)."""
    return int(getattr(head, "taps", 0))


def apply_heads(
    heads: Sequence[torch.nn.Module], features: torch.Tensor, taps: torch.Tensor
) -> torch.Tensor:
    """(B, d) unit vectors through `heads` in order; a head that reads taps gets the (B, t)
    taps after the vector."""
    for head in heads:
        features = head(torch.cat([features, taps], dim=1) if head_taps(head) else features)
    return features


class ResidualHead(nn.Module):
    """[x, taps] -> normalise(x + W [x, taps]): W (dim x (dim + taps)) starts at zero, so
    fine-tuning starts from the parent's ranking. `taps` > 0 columns after the (B, dim) unit
    vector are the tower's stage taps (`core.encoder.taps.StageTaps`)."""

    def __init__(self, dim: int, taps: int = 0) -> None:
        super().__init__()
        self.dim, self.taps = dim, taps
        self.linear = nn.Linear(dim + taps, dim, bias=False)
        nn.init.zeros_(self.linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, dim + taps) -> (B, dim)
        if x.shape[1] != self.dim + self.taps:
            raise EncoderError(
                f"This head reads {self.dim} + {self.taps} columns, not {x.shape[1]}."
            )
        return nn.functional.normalize(x[:, : self.dim] + self.linear(x), dim=-1)
