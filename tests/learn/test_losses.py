"""core.learn.losses against hand-written references: the InfoNCE / NT-Xent and SupCon formulas
computed with plain Python loops and `math` on lists of floats, plus behavioural checks
(temperature, perfect alignment, gradients, scale invariance, argument validation)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch

from core.learn.losses import InfoNCELoss, SupConLoss

Vec = list[float]

# --- hand-written references, straight from the papers' formulas -----------------------------


def ref_sim(a: Vec, b: Vec, similarity: str) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    if similarity == "dot":
        return dot
    norm_a = math.sqrt(sum(x * x for x in a))
    norm_b = math.sqrt(sum(y * y for y in b))
    return dot / (norm_a * norm_b)


def ref_neg_log_softmax(logits: list[float], target: int) -> float:
    """-log( exp(l_target) / sum_j exp(l_j) ), shifted by the max for stability."""
    top = max(logits)
    total = sum(math.exp(v - top) for v in logits)
    return -(logits[target] - top - math.log(total))


def ref_weighted_mean(values: list[float], weights: list[float] | None) -> float:
    if weights is None:
        weights = [1.0] * len(values)
    return sum(w * v for w, v in zip(weights, values, strict=True)) / sum(weights)


def ref_info_nce_one_way(
    queries: list[Vec],
    candidates: list[Vec],
    negatives: list[list[Vec]] | None,
    temperature: float,
    similarity: str,
    weights: list[float] | None,
) -> float:
    """Query i's candidates: candidates[0..B-1] then its own negatives; the target is i."""
    losses = []
    for i, q in enumerate(queries):
        logits = [ref_sim(q, c, similarity) / temperature for c in candidates]
        if negatives is not None:
            logits += [ref_sim(q, n, similarity) / temperature for n in negatives[i]]
        losses.append(ref_neg_log_softmax(logits, i))
    return ref_weighted_mean(losses, weights)


def ref_supcon(
    embeddings: list[Vec],
    labels: list[int],
    temperature: float,
    similarity: str,
    weights: list[float] | None = None,
) -> float:
    """Khosla et al. 2020, eq. 2 (L_out), skipping anchors without a positive."""
    b = len(embeddings)
    losses, anchor_weights = [], []
    for i in range(b):
        positives = [p for p in range(b) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denom = sum(
            math.exp(ref_sim(embeddings[i], embeddings[a], similarity) / temperature)
            for a in range(b)
            if a != i
        )
        total = 0.0
        for p in positives:
            num = math.exp(ref_sim(embeddings[i], embeddings[p], similarity) / temperature)
            total += math.log(num / denom)
        losses.append(-total / len(positives))
        anchor_weights.append(1.0 if weights is None else weights[i])
    return ref_weighted_mean(losses, anchor_weights)


# --- helpers ---------------------------------------------------------------------------------


def batch(b: int, d: int, n: int = 0, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, d, generator=g)
    p = q + 0.8 * torch.randn(b, d, generator=g)  # correlated, so the loss is not degenerate
    negs = torch.randn(b, n, d, generator=g)
    return q, p, negs


def aligned_batch(b: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's positive is clearly its closest candidate (checked, not assumed)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, d, generator=g)
    p = q + 0.1 * torch.randn(b, d, generator=g)
    sims = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(p, dim=1).T
    assert (sims.argmax(dim=1) == torch.arange(b)).all()
    return q, p


def tolist(x: torch.Tensor) -> Any:
    return x.double().tolist()


# --- InfoNCE against the reference -----------------------------------------------------------


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("temperature", [0.07, 0.5, 2.0])
def test_info_nce_in_batch_matches_reference(similarity: str, temperature: float) -> None:
    q, p, _ = batch(6, 8, seed=1)
    got = InfoNCELoss(temperature, similarity)(q, p)
    want = ref_info_nce_one_way(tolist(q), tolist(p), None, temperature, similarity, None)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_info_nce_with_explicit_negatives_matches_reference(similarity: str) -> None:
    q, p, negs = batch(5, 8, n=3, seed=2)
    got = InfoNCELoss(0.2, similarity)(q, p, negs)
    want = ref_info_nce_one_way(tolist(q), tolist(p), tolist(negs), 0.2, similarity, None)
    assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-5)
    # the negatives really count: without them the loss differs (and is smaller)
    assert InfoNCELoss(0.2, similarity)(q, p).item() < got.item()


def test_explicit_negatives_belong_to_their_own_row_only() -> None:
    q, p, negs = batch(4, 8, n=3, seed=3)
    loss = InfoNCELoss(0.3)
    for i in range(4):
        # a one-hot weight isolates row i: its candidates are all positives + its own negatives
        one_hot = torch.zeros(4)
        one_hot[i] = 1.0
        logits = [ref_sim(q[i].tolist(), c, "cosine") / 0.3 for c in tolist(p)]
        logits += [ref_sim(q[i].tolist(), n, "cosine") / 0.3 for n in tolist(negs[i])]
        want = ref_neg_log_softmax(logits, i)
        assert loss(q, p, negs, one_hot).item() == pytest.approx(want, rel=1e-5)
    swapped = negs.clone()
    swapped[[0, 1]] = negs[[1, 0]]
    assert loss(q, p, negs).item() != pytest.approx(loss(q, p, swapped).item(), abs=1e-6)


def test_dot_and_cosine_differ_on_unnormalised_and_agree_on_unit_inputs() -> None:
    q, p, negs = batch(5, 8, n=2, seed=4)
    cos, dot = InfoNCELoss(0.5, "cosine"), InfoNCELoss(0.5, "dot")
    assert cos(q, p, negs).item() != pytest.approx(dot(q, p, negs).item(), abs=1e-3)
    qn, pn = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(p, dim=-1)
    nn_ = torch.nn.functional.normalize(negs, dim=-1)
    assert cos(q, p, negs).item() == pytest.approx(dot(qn, pn, nn_).item(), rel=1e-5)


@pytest.mark.parametrize("with_negatives", [False, True])
def test_weights_give_the_weighted_mean(with_negatives: bool) -> None:
    q, p, negs = batch(6, 8, n=3, seed=5)
    w = torch.tensor([1.0, 0.5, 0.0, 2.0, 0.25, 1.0])
    n = negs if with_negatives else None
    got = InfoNCELoss(0.1)(q, p, n, weights=w)
    want = ref_info_nce_one_way(
        tolist(q), tolist(p), tolist(negs) if with_negatives else None, 0.1, "cosine", w.tolist()
    )
    assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-5)
    # uniform weights are the plain mean, whatever their scale
    plain = InfoNCELoss(0.1)(q, p, n)
    assert InfoNCELoss(0.1)(q, p, n, weights=torch.full((6,), 3.0)).item() == pytest.approx(
        plain.item(), rel=1e-6
    )


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_symmetric_is_the_average_of_both_directions(similarity: str) -> None:
    q, p, negs = batch(5, 8, n=3, seed=6)
    w = torch.tensor([1.0, 2.0, 0.5, 1.0, 0.0])
    got = InfoNCELoss(0.25, similarity, symmetric=True)(q, p, negs, weights=w)
    forward = ref_info_nce_one_way(tolist(q), tolist(p), tolist(negs), 0.25, similarity, w.tolist())
    backward = ref_info_nce_one_way(tolist(p), tolist(q), None, 0.25, similarity, w.tolist())
    assert got.item() == pytest.approx((forward + backward) / 2, rel=1e-5, abs=1e-5)


def ref_info_nce_ignoring(
    queries: list[Vec],
    candidates: list[Vec],
    negatives: list[list[Vec]] | None,
    ignore: list[list[bool]],
    temperature: float,
    weights: list[float] | None,
) -> float:
    """Cosine InfoNCE where query i's in-batch candidates are only the j with not ignore[i][j]
    (i itself always stays); the target is candidate i."""
    losses = []
    for i, q in enumerate(queries):
        kept = [j for j in range(len(candidates)) if j == i or not ignore[i][j]]
        logits = [ref_sim(q, candidates[j], "cosine") / temperature for j in kept]
        if negatives is not None:
            logits += [ref_sim(q, n, "cosine") / temperature for n in negatives[i]]
        losses.append(ref_neg_log_softmax(logits, kept.index(i)))
    return ref_weighted_mean(losses, weights)


@pytest.mark.parametrize("with_negatives", [False, True])
def test_ignored_candidates_leave_both_directions_as_the_reference_says(
    with_negatives: bool,
) -> None:
    q, p, negs = batch(5, 8, n=2, seed=11)
    ignore = torch.zeros(5, 5, dtype=torch.bool)
    ignore[0, 1] = ignore[1, 0] = ignore[2, 4] = ignore[3, 0] = True  # not symmetric on purpose
    w = torch.tensor([1.0, 0.3, 1.0, 2.0, 1.0])
    explicit = negs if with_negatives else None
    got = InfoNCELoss(0.2, symmetric=True)(q, p, explicit, weights=w, ignore=ignore)
    rows = ignore.tolist()
    columns = ignore.T.tolist()  # positive i as the query: ignore[j, i]
    forward = ref_info_nce_ignoring(
        tolist(q), tolist(p), tolist(negs) if with_negatives else None, rows, 0.2, w.tolist()
    )
    backward = ref_info_nce_ignoring(tolist(p), tolist(q), None, columns, 0.2, w.tolist())
    assert got.item() == pytest.approx((forward + backward) / 2, rel=1e-5, abs=1e-5)
    # nothing ignored is the plain loss; ignoring a candidate can only lower a row's loss
    nothing = torch.zeros(5, 5, dtype=torch.bool)
    plain = InfoNCELoss(0.2, symmetric=True)(q, p, explicit, weights=w)
    same = InfoNCELoss(0.2, symmetric=True)(q, p, explicit, weights=w, ignore=nothing)
    assert same.item() == pytest.approx(plain.item(), rel=1e-6)
    assert got.item() < plain.item()


def test_ignore_errors() -> None:
    q, p, _ = batch(4, 8)
    loss = InfoNCELoss()
    cases = [
        (torch.zeros(4, 4), "bool"),
        (torch.zeros(3, 4, dtype=torch.bool), "shape"),
        (torch.eye(4, dtype=torch.bool), "diagonal"),
    ]
    for ignore, message in cases:
        with pytest.raises(ValueError, match=message):
            loss(q, p, ignore=ignore)


def test_symmetric_loss_is_symmetric_in_its_inputs_without_negatives() -> None:
    q, p, _ = batch(6, 8, seed=7)
    loss = InfoNCELoss(0.1, symmetric=True)
    assert loss(q, p).item() == pytest.approx(loss(p, q).item(), rel=1e-6)
    one_way = InfoNCELoss(0.1)
    assert one_way(q, p).item() != pytest.approx(one_way(p, q).item(), rel=1e-4)


def test_float64_inputs_stay_float64() -> None:
    q, p, negs = batch(4, 8, n=2, seed=8)
    got = InfoNCELoss(0.1)(q.double(), p.double(), negs.double())
    assert got.dtype == torch.float64
    want = ref_info_nce_one_way(tolist(q), tolist(p), tolist(negs), 0.1, "cosine", None)
    assert got.item() == pytest.approx(want, rel=1e-10)


# --- temperature and limits ------------------------------------------------------------------


def test_lower_temperature_sharpens_when_the_positive_is_closest() -> None:
    q, p = aligned_batch(8, 16, seed=9)
    losses = [InfoNCELoss(t)(q, p).item() for t in (2.0, 1.0, 0.5, 0.1, 0.05, 0.01)]
    assert all(a > b for a, b in itertools.pairwise(losses))


@pytest.mark.parametrize("n", [0, 3])
def test_very_large_temperature_approaches_log_candidates(n: int) -> None:
    q, p, negs = batch(6, 8, n=n, seed=10)
    got = InfoNCELoss(1e6)(q, p, negs if n else None).item()
    assert got == pytest.approx(math.log(6 + n), abs=1e-4)


def test_perfect_alignment_with_orthogonal_negatives_is_near_zero() -> None:
    b, n, d = 4, 3, 16
    eye = torch.eye(d)
    q = eye[:b]  # one-hot, mutually orthogonal
    p = q.clone()
    negs = torch.stack([eye[b + 3 * i : b + 3 * i + n] for i in range(b)])  # orthogonal to all q
    for symmetric in (False, True):
        got = InfoNCELoss(0.01, symmetric=symmetric)(q, p, negs).item()
        assert 0.0 <= got < 1e-6
    # and the closed form at a moderate temperature: log(1 + (B - 1 + N) e^{-1/t})
    got = InfoNCELoss(0.5)(q, p, negs).item()
    assert got == pytest.approx(math.log(1 + (b - 1 + n) * math.exp(-2.0)), rel=1e-5)


# --- gradients and invariances ---------------------------------------------------------------


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_gradients_flow_to_all_inputs(similarity: str, symmetric: bool) -> None:
    q, p, negs = batch(5, 8, n=3, seed=11)
    q.requires_grad_(True)
    p.requires_grad_(True)
    negs.requires_grad_(True)
    InfoNCELoss(0.1, similarity, symmetric)(q, p, negs).backward()
    for t in (q, p, negs):
        assert t.grad is not None
        assert torch.isfinite(t.grad).all()
        assert t.grad.abs().sum() > 0


def test_extreme_logits_stay_finite() -> None:
    q, p, negs = batch(4, 8, n=2, seed=12)
    q.requires_grad_(True)
    loss = InfoNCELoss(1e-4, "dot")(q * 100, p * 100, negs * 100)  # logits ~ 1e8
    loss.backward()
    assert torch.isfinite(loss)
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_cosine_is_invariant_to_rescaling_inputs() -> None:
    q, p, negs = batch(5, 8, n=3, seed=13)
    g = torch.Generator().manual_seed(14)
    sq, sp = torch.rand(5, 1, generator=g) * 10 + 0.1, torch.rand(5, 1, generator=g) * 10 + 0.1
    sn = torch.rand(5, 3, 1, generator=g) * 10 + 0.1
    for loss in (InfoNCELoss(0.1), InfoNCELoss(0.1, symmetric=True)):
        assert loss(q * sq, p * sp, negs * sn).item() == pytest.approx(
            loss(q, p, negs).item(), rel=1e-5
        )
    z, labels = q, torch.tensor([0, 0, 1, 1, 2])
    assert SupConLoss(0.1)(z * sq, labels).item() == pytest.approx(
        SupConLoss(0.1)(z, labels).item(), rel=1e-5
    )
    # while the dot product is not
    dot = InfoNCELoss(0.1, "dot")
    assert dot(q * sq, p * sp).item() != pytest.approx(dot(q, p).item(), rel=1e-3)


# --- SupCon ----------------------------------------------------------------------------------


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_supcon_matches_reference_with_repeats_and_a_lonely_anchor(similarity: str) -> None:
    g = torch.Generator().manual_seed(15)
    z = torch.randn(8, 6, generator=g)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 1])  # label 2 and 3 have no positive
    t = 0.5 if similarity == "cosine" else 2.0
    got = SupConLoss(t, similarity)(z, labels)
    assert got.item() == pytest.approx(
        ref_supcon(tolist(z), labels.tolist(), t, similarity), rel=1e-5, abs=1e-5
    )


def test_supcon_weights_and_grad() -> None:
    g = torch.Generator().manual_seed(16)
    z = torch.randn(7, 5, generator=g, requires_grad=True)
    labels = torch.tensor([3, 3, 7, 7, 7, 9, 3])
    w = torch.tensor([1.0, 0.5, 2.0, 0.0, 1.0, 4.0, 1.0])  # anchor 5 has no positive
    got = SupConLoss(0.2)(z, labels, w)
    want = ref_supcon(tolist(z.detach()), labels.tolist(), 0.2, "cosine", w.tolist())
    assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-5)
    got.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_supcon_with_two_views_per_label_reduces_to_a_reference_nt_xent() -> None:
    # SimCLR's NT-Xent is SupCon with exactly one positive per anchor (the other view).
    q, p, _ = batch(4, 8, seed=17)
    z = torch.cat([q, p])
    labels = torch.arange(4).repeat(2)
    emb = tolist(z)
    losses = []
    for i in range(8):
        j = (i + 4) % 8
        logits = [ref_sim(emb[i], emb[a], "cosine") / 0.1 for a in range(8) if a != i]
        losses.append(ref_neg_log_softmax(logits, j if j < i else j - 1))
    assert SupConLoss(0.1)(z, labels).item() == pytest.approx(sum(losses) / 8, rel=1e-5)


@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [5]])
def test_supcon_without_any_positive_is_a_zero_with_grad(labels: list[int]) -> None:
    z = torch.randn(len(labels), 4, requires_grad=True)
    got = SupConLoss()(z, torch.tensor(labels))
    assert got.item() == 0.0
    assert got.requires_grad
    got.backward()
    assert z.grad is not None and (z.grad == 0).all()


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, -0.1, math.nan, math.inf])
def test_temperature_must_be_positive(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(temperature)
    with pytest.raises(ValueError, match="temperature"):
        SupConLoss(temperature)


def test_unknown_similarity_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="cosine, dot"):
        InfoNCELoss(similarity="euclidean")
    with pytest.raises(ValueError, match="cosine, dot"):
        SupConLoss(similarity="l2")


def test_info_nce_shape_errors() -> None:
    loss = InfoNCELoss()
    q, p, negs = batch(4, 8, n=3)
    cases = [
        ((q, p[:3]), "rows"),  # batch mismatch
        ((q, p[:, :6]), "width"),  # width mismatch
        ((q[0], p[0]), "2-D"),
        ((q, p, negs[:, 0]), "3-D"),  # missing N axis
        ((q, p, negs[:3]), "rows"),
        ((q, p, negs[..., :6]), "width"),
        ((q[:0], p[:0]), "at least one"),
        ((q.long(), p), "floating"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            loss(*args)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (torch.ones(3), "shape"),
        (torch.ones(4, 1), "shape"),
        (torch.tensor([1.0, -0.5, 1.0, 1.0]), "non-negative"),
        (torch.zeros(4), "all be zero"),
        (torch.tensor([1.0, math.nan, 1.0, 1.0]), "finite"),
    ],
)
def test_weight_errors(weights: torch.Tensor, message: str) -> None:
    q, p, _ = batch(4, 8)
    with pytest.raises(ValueError, match=message):
        InfoNCELoss()(q, p, weights=weights)
    with pytest.raises(ValueError, match=message):
        SupConLoss()(q, torch.tensor([0, 0, 1, 1]), weights)


def test_supcon_label_errors() -> None:
    z = torch.randn(4, 8)
    with pytest.raises(ValueError, match="shape"):
        SupConLoss()(z, torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="integer"):
        SupConLoss()(z, torch.tensor([0.0, 1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="2-D"):
        SupConLoss()(z[0], torch.tensor([0]))
