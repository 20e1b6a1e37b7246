"""Contrastive losses on tensors: pure `nn.Module`s, no I/O, no knowledge of the encoder.

The seed's recipe: embeddings of a batch → cosine similarity (or dot product) of each query with
every candidate → softmax → cross-entropy against the true positive. Two losses follow it:

- `InfoNCELoss`: one positive per query; the other queries' positives are in-batch negatives,
  and optional explicit negatives per query (the seed's N = 2–3) join that query's candidates.
  van den Oord et al. 2018, "Representation Learning with Contrastive Predictive Coding"
  (InfoNCE); Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
  Representations" (NT-Xent, the temperature-scaled cosine form); the symmetric option is the
  two-direction average of Radford et al. 2021 (CLIP).
- `SupConLoss`: several items of a batch share the anchor's label and all count as positives.
  Khosla et al. 2020, "Supervised Contrastive Learning", the `L_out` form (eq. 2).

Both compute in float32 (float64 inputs stay float64), use log-softmax / logsumexp for
stability, and are differentiable. Shapes: B batch, D embedding width, N explicit negatives.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SIMILARITIES: tuple[str, ...] = ("cosine", "dot")


# --- argument checks -------------------------------------------------------------------------


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def _check_similarity(similarity: str) -> str:
    if similarity not in SIMILARITIES:
        raise ValueError(
            f"unknown similarity {similarity!r}; valid names: {', '.join(SIMILARITIES)}"
        )
    return similarity


def _as_float(x: Tensor, name: str, ndim: int) -> Tensor:
    """`x` checked for rank and floating dtype, upcast to float32 if narrower."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    return x if x.dtype == torch.float64 else x.float()


def _check_weights(weights: Tensor | None, batch: int, like: Tensor) -> Tensor:
    """Per-item weights `(B,)`, non-negative and not all zero; ones when None."""
    if weights is None:
        return torch.ones(batch, dtype=like.dtype, device=like.device)
    if not isinstance(weights, Tensor):
        raise ValueError(f"weights must be a torch.Tensor, got {type(weights).__name__}")
    if weights.shape != (batch,):
        raise ValueError(f"weights must have shape ({batch},), got {tuple(weights.shape)}")
    w = weights.to(dtype=like.dtype, device=like.device)
    if not torch.isfinite(w).all():
        raise ValueError("weights must be finite (no NaN or inf)")
    if (w < 0).any():
        raise ValueError("weights must be non-negative")
    if not (w > 0).any():
        raise ValueError("weights must not all be zero")
    return w


def _weighted_mean(losses: Tensor, weights: Tensor) -> Tensor:
    """`sum(w_i * l_i) / sum(w_i)` of `(B,)` losses and `(B,)` weights."""
    return (losses * weights).sum() / weights.sum()


def _check_ignore(ignore: Tensor, batch: int, like: Tensor) -> Tensor:
    if not isinstance(ignore, Tensor) or ignore.dtype != torch.bool:
        raise ValueError("ignore must be a bool torch.Tensor")
    if ignore.shape != (batch, batch):
        raise ValueError(f"ignore must have shape ({batch}, {batch}), got {tuple(ignore.shape)}")
    if bool(ignore.diagonal().any()):
        raise ValueError("ignore cannot drop a query's own positive (its diagonal)")
    return ignore.to(like.device)


def _cross_entropy_diagonal(logits: Tensor) -> Tensor:
    """Per-row cross-entropy `(B,)` of `(B, C)` logits whose target for row i is column i."""
    idx = torch.arange(logits.shape[0], device=logits.device)
    return torch.logsumexp(logits, dim=1) - logits[idx, idx]


# --- losses ----------------------------------------------------------------------------------


class InfoNCELoss(nn.Module):
    """van den Oord et al. 2018 (CPC) / Chen et al. 2020 (SimCLR NT-Xent).

    For query i, with `s` the similarity and `t` the temperature, the candidates are every
    positive of the batch plus query i's own explicit negatives::

        logits_i = [s(q_i, p_0), ..., s(q_i, p_{B-1}), s(q_i, n_{i,0}), ..., s(q_i, n_{i,N-1})] / t
        loss_i   = -log softmax(logits_i)[i]

    and the loss is the (weighted) mean of `loss_i` over the batch. With `symmetric=True` the
    positives also act as queries against all queries (CLIP's two directions; explicit
    negatives only in the query → positive direction) and the two means are averaged.

    `ignore[i, j]` (off the diagonal) drops positive j from query i's candidates: in-batch
    "negatives" already known to be like query i (the same image, the same group of labelled
    positives) would otherwise be pushed away from it. The positive → query direction drops
    `ignore.T` likewise.

    Args:
        temperature: `t` > 0; lower sharpens the softmax. 0.07 is CLIP's initial value.
        similarity: "cosine" (inputs L2-normalised first, as in NT-Xent) or "dot" (raw inner
            product, for embeddings already normalised or deliberately unnormalised).
        symmetric: also average in the positive → query direction.
    """

    def __init__(
        self, temperature: float = 0.07, similarity: str = "cosine", symmetric: bool = False
    ) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)
        self.similarity = _check_similarity(similarity)
        if not isinstance(symmetric, bool):
            raise ValueError(f"symmetric must be a bool, got {symmetric!r}")
        self.symmetric = symmetric

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, similarity={self.similarity!r}, "
            f"symmetric={self.symmetric}"
        )

    def forward(
        self,
        queries: Tensor,
        positives: Tensor,
        negatives: Tensor | None = None,
        weights: Tensor | None = None,
        ignore: Tensor | None = None,
    ) -> Tensor:
        """The scalar loss of a batch of (query, positive) pairs.

        Args:
            queries: `(B, D)`; row i is the i-th query.
            positives: `(B, D)`; row i is query i's positive and an in-batch negative of the rest.
            negatives: optional `(B, N, D)`; `negatives[i]` are explicit negatives of query i
                only (N may be 0).
            weights: optional `(B,)` non-negative per-pair weights (e.g. clicks weigh less than
                labels); the loss becomes the weighted mean over pairs.
            ignore: optional `(B, B)` bool; True at [i, j] removes positive j from query i's
                candidates (the diagonal must stay False: it is the target).

        Returns:
            A 0-d tensor.
        """
        q = _as_float(queries, "queries", 2)  # (B, D)
        p = _as_float(positives, "positives", 2)  # (B, D)
        batch, dim = q.shape
        if batch == 0:
            raise ValueError("queries must hold at least one row")
        if p.shape[0] != batch:
            raise ValueError(f"positives has {p.shape[0]} rows but queries has {batch}")
        if p.shape[1] != dim:
            raise ValueError(f"positives have width {p.shape[1]} but queries have width {dim}")
        n: Tensor | None = None
        if negatives is not None:
            n = _as_float(negatives, "negatives (B, N, D)", 3)  # (B, N, D)
            if n.shape[0] != batch:
                raise ValueError(f"negatives has {n.shape[0]} rows but queries has {batch}")
            if n.shape[2] != dim:
                raise ValueError(f"negatives have width {n.shape[2]} but queries have width {dim}")
        dtype = torch.promote_types(q.dtype, p.dtype)
        if n is not None:
            dtype = torch.promote_types(dtype, n.dtype)
        q, p = q.to(dtype), p.to(dtype)
        w = _check_weights(weights, batch, q)

        if self.similarity == "cosine":
            q, p = F.normalize(q, dim=-1), F.normalize(p, dim=-1)
        in_batch = q @ p.T / self.temperature  # (B, B), [i, j] = s(q_i, p_j) / t
        if ignore is not None:
            in_batch = in_batch.masked_fill(_check_ignore(ignore, batch, q), -math.inf)
        logits = in_batch
        if n is not None:
            n = n.to(dtype)
            if self.similarity == "cosine":
                n = F.normalize(n, dim=-1)
            explicit = torch.einsum("bd,bnd->bn", q, n) / self.temperature  # (B, N)
            logits = torch.cat([in_batch, explicit], dim=1)  # (B, B + N)
        loss = _weighted_mean(_cross_entropy_diagonal(logits), w)
        if self.symmetric:
            # in_batch.T[i, j] = s(p_i, q_j) / t: positive i as query against every query.
            backward = _weighted_mean(_cross_entropy_diagonal(in_batch.T), w)
            loss = (loss + backward) / 2
        return loss


class SupConLoss(nn.Module):
    """Khosla et al. 2020, supervised contrastive ('L_out' form).

    For anchor i, with P(i) the other items sharing its label and A(i) every item but i::

        loss_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip / t) / sum_{a in A(i)} exp(s_ia / t) )

    The loss is the (weighted) mean of `loss_i` over anchors with |P(i)| >= 1; anchors without
    a positive are skipped. If no anchor has one (or all that do have weight 0) the loss is a
    zero that still carries a gradient, so a training step on such a batch is a no-op rather
    than an error.

    Args:
        temperature: `t` > 0.
        similarity: "cosine" (L2-normalised first, as in the paper) or "dot".
    """

    def __init__(self, temperature: float = 0.07, similarity: str = "cosine") -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature)
        self.similarity = _check_similarity(similarity)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, similarity={self.similarity!r}"

    def forward(self, embeddings: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        """The scalar loss of a labelled batch.

        Args:
            embeddings: `(B, D)`.
            labels: `(B,)` integer class ids; equal ids are positives of each other.
            weights: optional `(B,)` non-negative per-anchor weights; the loss becomes the
                weighted mean over the anchors that have a positive.

        Returns:
            A 0-d tensor.
        """
        z = _as_float(embeddings, "embeddings", 2)  # (B, D)
        batch = z.shape[0]
        if batch == 0:
            raise ValueError("embeddings must hold at least one row")
        if not isinstance(labels, Tensor):
            raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
        if labels.shape != (batch,):
            raise ValueError(f"labels must have shape ({batch},), got {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
        w = _check_weights(weights, batch, z)

        labels = labels.to(z.device)
        self_mask = torch.eye(batch, dtype=torch.bool, device=z.device)  # (B, B)
        pos_mask = (labels[:, None] == labels[None, :]) & ~self_mask  # (B, B)
        n_pos = pos_mask.sum(dim=1)  # (B,)
        has_pos = n_pos > 0  # (B,)
        if not bool(has_pos.any()) or not bool((w[has_pos] > 0).any()):
            return 0 * embeddings.sum()

        if self.similarity == "cosine":
            z = F.normalize(z, dim=-1)
        sim = z @ z.T / self.temperature  # (B, B)
        # A(i) excludes i itself; B >= 2 here, so every row keeps a finite entry.
        log_denom = torch.logsumexp(sim.masked_fill(self_mask, -math.inf), dim=1, keepdim=True)
        log_prob = sim - log_denom  # (B, B)
        pos_sum = torch.where(pos_mask, log_prob, torch.zeros_like(log_prob)).sum(dim=1)  # (B,)
        per_anchor = -pos_sum[has_pos] / n_pos[has_pos].to(sim.dtype)
        return _weighted_mean(per_anchor, w[has_pos])
