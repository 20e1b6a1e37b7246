"""Relevance feedback: `rocchio`, `feedback_examples`, and `Studio.refine` end to end.

Expected vectors and rankings are computed in the tests by hand (numpy, float64, brute-force
cosine over every vector), never taken from the code under test.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from core.encoder.model import Encoder
from core.gallery.images import load_image
from core.search.refine import RocchioWeights, feedback_examples, rocchio
from core.store import ImageRecord, ResultLabel, split_for
from core.studio import Studio
from tests.helpers import generated_image

# --- rocchio ----------------------------------------------------------------------------------


def by_hand(q, positives, negatives, alpha=1.0, beta=0.75, gamma=0.25) -> np.ndarray:
    """The formula as written: a·q + b·mean(pos) − c·mean(neg), divided by its norm."""
    moved = alpha * np.asarray(q, np.float64)
    if len(positives):
        moved = moved + beta * np.asarray(positives, np.float64).mean(axis=0)
    if len(negatives):
        moved = moved - gamma * np.asarray(negatives, np.float64).mean(axis=0)
    return moved / np.sqrt((moved**2).sum())


def test_rocchio_worked_example_in_two_dimensions():
    # q = (1, 0), liked (0, 1), disliked (1, 0): (1 − 0.25, 0.75) = (0.75, 0.75) -> (1, 1)/√2.
    out = rocchio(np.array([1.0, 0.0]), np.array([[0.0, 1.0]]), np.array([[1.0, 0.0]]))

    np.testing.assert_allclose(out, [2**-0.5, 2**-0.5], atol=1e-7)


@pytest.mark.parametrize(("n_pos", "n_neg"), [(3, 2), (1, 0), (0, 4), (0, 0)])
def test_rocchio_matches_the_formula_with_and_without_examples(n_pos: int, n_neg: int):
    rng = np.random.default_rng(n_pos * 10 + n_neg)
    d = 32
    q = rng.normal(size=d).astype(np.float32)  # not unit: the output is renormalised anyway
    pos = rng.normal(size=(n_pos, d)).astype(np.float32)
    neg = rng.normal(size=(n_neg, d)).astype(np.float32)

    out = rocchio(q, pos, neg)

    assert out.shape == (d,)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, by_hand(q, pos, neg), atol=1e-6)
    assert abs(np.linalg.norm(out.astype(np.float64)) - 1.0) < 1e-6


def test_rocchio_uses_the_given_weights():
    rng = np.random.default_rng(5)
    q, pos, neg = rng.normal(size=8), rng.normal(size=(2, 8)), rng.normal(size=(3, 8))
    weights = RocchioWeights(alpha=2.0, beta=0.5, gamma=1.5)

    out = rocchio(q, pos, neg, weights)

    np.testing.assert_allclose(out, by_hand(q, pos, neg, 2.0, 0.5, 1.5), atol=1e-6)


def test_rocchio_default_weights_are_the_classic_ones():
    assert RocchioWeights() == RocchioWeights(alpha=1.0, beta=0.75, gamma=0.25)


@pytest.mark.parametrize(
    ("alpha", "beta", "gamma"), [(0.0, 0.75, 0.25), (-1.0, 0.75, 0.25), (1, -0.1, 0), (1, 0, -1)]
)
def test_rocchio_weights_must_be_non_negative_with_a_positive_alpha(alpha, beta, gamma):
    with pytest.raises(ValueError, match="non-negative, with alpha > 0"):
        RocchioWeights(alpha=alpha, beta=beta, gamma=gamma)


def test_rocchio_weights_may_switch_off_the_examples():
    q = np.array([3.0, 4.0])

    out = rocchio(q, np.array([[0.0, 1.0]]), np.array([[1.0, 0.0]]), RocchioWeights(1, 0, 0))

    np.testing.assert_allclose(out, [0.6, 0.8], atol=1e-7)


def test_rocchio_refuses_a_query_that_vanishes():
    q = np.array([1.0, 0.0])

    with pytest.raises(ValueError, match="vanished"):
        rocchio(q, np.zeros((0, 2)), np.array([[1.0, 0.0]]), RocchioWeights(1, 0, 1))
    with pytest.raises(ValueError, match="vanished"):
        rocchio(np.array([np.nan, 0.0]), np.zeros((0, 2)), np.zeros((0, 2)))


# --- feedback_examples ------------------------------------------------------------------------


def test_feedback_examples_explicit_label_beats_grade_and_grade_1_is_neither():
    labels = {
        "k-similar": ResultLabel("similar", None),
        "j-similar-graded-0": ResultLabel("similar", 0),
        "i-not-similar": ResultLabel("not_similar", None),
        "h-not-similar-graded-3": ResultLabel("not_similar", 3),
        "g-graded-3": ResultLabel(None, 3),
        "f-graded-2": ResultLabel(None, 2),
        "e-graded-1": ResultLabel(None, 1),
        "d-graded-0": ResultLabel(None, 0),
        "c-undone": ResultLabel(None, None),
    }

    positives, negatives = feedback_examples(labels)

    assert positives == ["f-graded-2", "g-graded-3", "j-similar-graded-0", "k-similar"]
    assert negatives == ["d-graded-0", "h-not-similar-graded-3", "i-not-similar"]


def test_feedback_examples_of_no_labels_are_empty():
    assert feedback_examples({}) == ([], [])


# --- Studio.refine on a constructed gallery -----------------------------------------------------

D = 32  # like tiny-test; the index takes the width of the first vectors it gets


def fake_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def axis(i: int) -> np.ndarray:
    return np.eye(D)[i]


class Constructed:
    """A query on axis 0; cluster A leans to axis 1 and cluster B to axis 2, equally far from
    the query, each member pushed away by its own amount on a private axis so that the first
    search interleaves them (A0, B0, A1, B1, …); cluster C leans far to axis 3, last.
    No two images tie with the query or with any refined query below."""

    def __init__(self, studio: Studio) -> None:
        self.query = fake_id("query")
        self.a = [fake_id(f"a{i}") for i in range(6)]
        self.b = [fake_id(f"b{i}") for i in range(6)]
        self.c = [fake_id(f"c{i}") for i in range(4)]
        vectors = {self.query: unit(axis(0))}
        for i in range(6):
            vectors[self.a[i]] = unit(axis(0) + 0.8 * axis(1) + (0.1 + 0.2 * i) * axis(4 + i))
            vectors[self.b[i]] = unit(axis(0) + 0.8 * axis(2) + (0.2 + 0.2 * i) * axis(10 + i))
        for i in range(4):
            vectors[self.c[i]] = unit(axis(0) + 2.0 * axis(3) + (0.1 + 0.2 * i) * axis(16 + i))
        self.vectors = vectors
        self.gallery = [i for i in vectors if i != self.query]
        labels = {i: "a" for i in self.a} | {i: "b" for i in self.b} | {i: "c" for i in self.c}
        studio.store.add_images(
            ImageRecord(
                id=i,
                original_name=f"{labels.get(i, 'q')}.png",
                label=labels.get(i),
                split=split_for(i),
                width=1,
                height=1,
                file="x.png",
                source="test",
            )
            for i in vectors
        )
        ids = list(vectors)
        studio.index.upsert("base", ids, np.stack([vectors[i] for i in ids]))

    def ranking(self, q: np.ndarray) -> list[str]:
        """Brute force: every gallery image but the query by cosine with q, best first."""
        scores = {i: float(self.vectors[i].astype(np.float64) @ q) for i in self.gallery}
        return sorted(self.gallery, key=lambda i: -scores[i])

    def vector(self, image: str) -> np.ndarray:
        return self.vectors[image].astype(np.float64)


def ranks(results, members: list[str]) -> list[int]:
    rank_of = {r.image_id: r.rank for r in results}
    return [rank_of[m] for m in members]


@pytest.fixture
def constructed(studio: Studio) -> Constructed:
    return Constructed(studio)


def test_refine_moves_the_positives_neighbours_up_and_the_negatives_down(
    studio: Studio, constructed: Constructed
):
    c = constructed
    user = studio.store.ensure_user("alice", location="Europe/Berlin")
    k = len(c.gallery)
    first = studio.logged_gallery_search(user.id, c.query, k, location="Europe/Berlin")
    interleaved = [image for pair in zip(c.a, c.b, strict=True) for image in pair] + c.c
    assert [r.image_id for r in first.results] == interleaved == c.ranking(c.vector(c.query))

    studio.store.feedback.log_interaction(first.query_id, c.a[3], "similar")
    studio.store.feedback.log_interaction(first.query_id, c.b[1], "not_similar")
    refined = studio.refine(first.query_id, k)

    expected_q = by_hand(c.vector(c.query), [c.vector(c.a[3])], [c.vector(c.b[1])])
    assert [r.image_id for r in refined.results] == c.ranking(expected_q)
    for r in refined.results:
        assert r.score == pytest.approx(float(c.vector(r.image_id) @ expected_q), abs=1e-4)
    before_a, after_a = ranks(first.results, c.a), ranks(refined.results, c.a)
    before_b, after_b = ranks(first.results, c.b), ranks(refined.results, c.b)
    assert np.mean(after_a) < np.mean(before_a)
    assert np.mean(after_b) > np.mean(before_b)
    assert all(after >= before for after, before in zip(after_b, before_b, strict=True))
    assert max(after_a) < min(after_b)


def test_refine_is_logged_as_a_new_query_linked_to_the_first(
    studio: Studio, constructed: Constructed
):
    c = constructed
    user = studio.store.ensure_user("alice", location="Europe/Berlin")
    first = studio.logged_gallery_search(user.id, c.query, 8, location="Europe/Berlin")
    studio.store.feedback.log_interaction(first.query_id, c.a[0], "similar")
    studio.store.feedback.log_interaction(first.query_id, c.b[0], "not_similar")

    refined = studio.refine(first.query_id, 8)

    row = studio.store.feedback.get_query(refined.query_id)
    assert refined.query_id != first.query_id
    assert (row.parent_id, row.source, row.query_image_id, row.user_id, row.n_results) == (
        first.query_id,
        "refine",
        c.query,
        user.id,
        8,
    )
    assert row.location == "Europe/Berlin"
    log = studio.store.feedback.interactions()
    shown = log[log["InteractionType"] == "impression"].iloc[8:]  # the refined query's
    assert list(shown["DisplayedImageID"]) == [r.image_id for r in refined.results]
    assert list(shown["PositionInDisplayedList"]) == list(range(1, 9))
    assert c.query not in set(shown["DisplayedImageID"])  # a gallery query is not its result
    chain = studio.store.feedback.query_chain(refined.query_id)
    assert [q.id for q in chain] == [first.query_id, refined.query_id]
    assert studio.store.feedback.labels([q.id for q in chain]) == {
        c.a[0]: ResultLabel("similar", None),
        c.b[0]: ResultLabel("not_similar", None),
    }


def test_refine_without_labels_reproduces_the_original_ranking(
    studio: Studio, constructed: Constructed
):
    user = studio.store.ensure_user("alice")
    first = studio.logged_gallery_search(user.id, constructed.query, 10)

    refined = studio.refine(first.query_id, 10)

    assert [r.image_id for r in refined.results] == [r.image_id for r in first.results]


def test_refining_a_refinement_uses_every_label_of_the_chain_latest_first(
    studio: Studio, constructed: Constructed
):
    c = constructed
    user = studio.store.ensure_user("alice")
    k = len(c.gallery)
    first = studio.logged_gallery_search(user.id, c.query, k)
    studio.store.feedback.log_interaction(first.query_id, c.a[3], "similar")
    studio.store.feedback.log_interaction(first.query_id, c.b[1], "not_similar")
    second = studio.refine(first.query_id, k)
    # On the refined list: a[3] reappears and its label is undone there, b[4] is disliked.
    studio.store.feedback.log_interaction(second.query_id, c.a[3], "similar", value=0)
    studio.store.feedback.log_interaction(second.query_id, c.b[4], "not_similar")

    third = studio.refine(second.query_id, k)

    expected_q = by_hand(c.vector(c.query), [], [c.vector(c.b[1]), c.vector(c.b[4])])
    assert [r.image_id for r in third.results] == c.ranking(expected_q)
    chain = studio.store.feedback.query_chain(third.query_id)
    assert [q.id for q in chain] == [first.query_id, second.query_id, third.query_id]
    assert studio.store.feedback.get_query(third.query_id).parent_id == second.query_id


# --- Studio.refine of an uploaded query -------------------------------------------------------


def png_bytes(label_index: int, variant: int) -> bytes:
    buffer = io.BytesIO()
    generated_image(label_index, variant).save(buffer, format="PNG")
    return buffer.getvalue()


def test_refine_of_an_upload_re_encodes_the_stored_query_image(
    studio: Studio, make_gallery: Callable[..., Path], tiny_encoder: Encoder
):
    studio.ingest([make_gallery(per_label=5)], label_from_folders=True)
    user = studio.store.ensure_user("alice")
    loaded = load_image(png_bytes(1, 50))  # a square not in the gallery
    k = 6
    first = studio.logged_search(user.id, loaded, k)
    stored = studio.settings.queries_dir / str(studio.store.feedback.query_image_file(loaded.id))
    assert stored.read_bytes() == loaded.data
    liked, disliked = first.results[-1].image_id, first.results[0].image_id
    studio.store.feedback.log_interaction(first.query_id, liked, "similar")
    studio.store.feedback.log_interaction(first.query_id, disliked, "not_similar")

    refined = studio.refine(first.query_id, k)

    ids, vectors = studio.index.get_embeddings("base")
    vector_of = dict(zip(ids, vectors.astype(np.float64), strict=True))
    q = tiny_encoder.encode([load_image(stored).image])[0]
    expected_q = by_hand(q, [vector_of[liked]], [vector_of[disliked]])
    scores = {i: float(v @ expected_q) for i, v in vector_of.items()}
    assert [r.image_id for r in refined.results] == sorted(ids, key=lambda i: -scores[i])[:k]
    row = studio.store.feedback.get_query(refined.query_id)
    assert (row.source, row.parent_id, row.query_image_id) == ("refine", first.query_id, loaded.id)
