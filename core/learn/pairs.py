"""Training pairs from the feedback log: positives, negatives, re-balancing. Pure, seeded, no I/O.

The log is `FeedbackLog.interactions(with_query_id=True)` (oldest first, the seed's column
names: `QueryID`, `QueryImageID`, `DisplayedImageID`, `PositionInDisplayedList`,
`InteractionType`, `Value`, …). A *judgement* is the
current verdict on one (query image, displayed image) pair, pooled over every search with that
query image, as `core.measure.evaluation.feedback_gains` pools them:

- **Explicit** (weights `label_weight` / `grade_weight`): the latest `grade` row, when it is not
  cleared (NaN), decides — positive when >= `positive_grade`, negative when <= `negative_grade`,
  and a middling grade is a judgement of "neither" (no pair). Without a grade, the latest
  `similar` / `not_similar` row decides, if it has value 1; value 0 means undone, i.e. never
  labelled. A grade beats a label because it is the finer statement (as in evaluation).
- **Click** (weight `click_weight`, lower: clicks are noisy, seed): a displayed image clicked in
  any search of the query image is a positive.
- **Hard negative** (weight `click_weight`, the same noisy source): within one search
  (`QueryID`), a result shown above the deepest click and not clicked in that search
  (Joachims' "skip above"). Nothing below the deepest click is judged.

Precedence per pair: explicit > click > hard negative, so a clicked result labelled not
similar is a negative and a skipped result labelled similar is a positive. Self pairs (an image
shown for itself) are dropped.

- **Transitive** (weight: the weaker of `label_weight` and `grade_weight`, the evidence it
  chains): "similar" is an equivalence on the demo's categories, and people judge only what
  they were shown, so explicit positives (labels, grades) chain: A ~ B and B ~ C make C a
  positive for A. The images joined by explicit positives (inside `allowed`, edges taken both
  ways) form groups; each member gets up to `transitive` positives among the other members it
  has no judgement with (either way round), drawn at random (seeded). Clicks never chain (they
  are noisy: one stray click would merge two categories), an explicit or hard negative for the
  pair stands, and random negatives are never drawn from the anchor's group. On the demo loop
  this roughly triples the positives and was the largest single gain (README, "The closed
  loop").

`build_pairs` keeps judgements whose two images are both in `allowed` (e.g. the train split;
the rest are dropped and counted, so evaluation data never leaks into training), then:

1. **Image cap**: no image is the positive of more than max(3, 2 × median) pairs, the median
   over images that are a positive at least once, so one popular image cannot dominate.
2. **Label cap**: pairs are counted per anchor label (`labels[anchor]`, or `UNLABELLED`); a
   label above `max_per_label` (default max(1, 2 × median count per label)) is down-sampled.
   Both caps keep the highest-weight pairs first (a human label over a click), at random
   (seeded) among equal weights.
3. **Up-sampling**: a label with fewer than `min_per_label` pairs is repeated up to it, cycling
   through a seeded permutation so repeats are as even as possible. Repeats may push an image
   past the image cap; that is the point of up-sampling a rare type.

Each pair then gets N = `random_negatives` negatives. The anchor's explicit and hard negatives
come first, shuffled (seeded) and dealt cyclically across its pairs, so all are used when it has
more than N; the rest are random: drawn from `allowed` minus the anchor, everything judged
positive or negative for it, and what the pair already holds. Each random draw picks a label
uniformly among the labels with a candidate left, then an image uniformly within it, so popular
image types do not dominate the negatives (seed). When fewer candidates than N remain, a pair
repeats some (with none at all, `PairError`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core.errors import LookalikeError

UNLABELLED = "(unlabelled)"  # the anchor-label bucket of images without a category
JUDGEMENT_COLUMNS = ("query_image_id", "displayed_image_id", "relevance", "source", "weight")
POSITIVE_SOURCES = ("label", "grade", "click", "transitive")
NEGATIVE_SOURCES = ("label", "grade", "hard", "random")
_PAIR = ["query_image_id", "displayed_image_id"]  # a judgement's pair
_LOG_PAIR = ["QueryImageID", "DisplayedImageID"]  # the same pair in the log
_NEEDED = ("QueryID", *_LOG_PAIR, "PositionInDisplayedList", "InteractionType", "Value")


class PairError(LookalikeError, ValueError):
    """Settings or a population that cannot give training pairs; the message is for the UI."""


@dataclass(frozen=True)
class PairSettings:
    """How the log becomes pairs (see the module doc)."""

    click_weight: float = 0.3  # a click is weaker evidence than a label (seed: clicks are noisy)
    label_weight: float = 1.0  # similar / not similar labels
    grade_weight: float = 1.0  # grades >= positive_grade, or <= negative_grade
    positive_grade: int = 2  # grades >= this are positives
    negative_grade: int = 0  # grades <= this are explicit negatives
    hard_negatives: bool = True  # shown above a clicked result and not clicked
    random_negatives: int = 3  # N, negatives per positive pair, explicit first (seed: N = 2-3)
    transitive: int = 3  # positives per image inferred through chains of explicit ones (0: off)
    max_per_label: int | None = None  # cap per anchor label (None: max(1, 2 × median))
    min_per_label: int = 0  # up-sample rare anchor labels to at least this many pairs
    seed: int = 0  # every random choice derives from it

    def __post_init__(self) -> None:
        weights = (self.click_weight, self.label_weight, self.grade_weight)
        if not all(np.isfinite(w) and w >= 0 for w in weights):
            raise PairError(f"Pair weights must be finite and >= 0, not {weights}.")
        if self.negative_grade >= self.positive_grade:
            raise PairError(
                f"negative_grade ({self.negative_grade}) must be below positive_grade "
                f"({self.positive_grade})."
            )
        if self.random_negatives < 0 or self.min_per_label < 0 or self.transitive < 0:
            raise PairError("random_negatives, min_per_label and transitive cannot be negative.")
        if self.max_per_label is not None and self.max_per_label < 1:
            raise PairError(f"max_per_label must be at least 1, not {self.max_per_label}.")
        if self.max_per_label is not None and self.min_per_label > self.max_per_label:
            raise PairError(
                f"min_per_label ({self.min_per_label}) exceeds max_per_label "
                f"({self.max_per_label})."
            )


DEFAULT_SETTINGS = PairSettings()


@dataclass(frozen=True)
class TrainingPairs:
    """P (anchor, positive) pairs, each with N negatives; rows may repeat (up-sampling)."""

    anchors: list[str]  # (P,) query image ids
    positives: list[str]  # (P,)
    weights: np.ndarray  # (P,) float64, the positive's evidence weight
    negatives: list[list[str]]  # (P, N) explicit and hard first, then random
    summary: dict[str, object]  # counts for the Train page, JSON-serialisable (see build_pairs)
    # images joined by explicit positives (`positive_groups`, train images): known alike, so
    # training never treats two of one group as an in-batch negative
    groups: list[list[str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.anchors)


def _checked(log: pd.DataFrame) -> pd.DataFrame:
    """The columns read here, with numeric position/value; an empty log may lack columns."""
    if log.empty:
        log = log.reindex(columns=list(_NEEDED))
    missing = [c for c in _NEEDED if c not in log.columns]
    if missing:
        raise PairError(
            f"The log is missing the columns {', '.join(missing)}; "
            "pass FeedbackLog.interactions(with_query_id=True)."
        )
    numeric = {
        c: pd.to_numeric(log[c]).astype("float64") for c in ("PositionInDisplayedList", "Value")
    }
    return log.assign(**numeric).reset_index(drop=True)


def _verdicts(
    keys: pd.DataFrame, relevance: object, source: str, weight: object, pair: list[str] = _PAIR
) -> pd.DataFrame:
    """Judgement rows for `keys` (a frame with the two `pair` columns: query, displayed)."""
    frame = pd.DataFrame(
        {
            "query_image_id": keys[pair[0]].astype(object).to_numpy(),
            "displayed_image_id": keys[pair[1]].astype(object).to_numpy(),
        }
    )
    return frame.assign(relevance=relevance, source=source, weight=weight).astype(
        {"relevance": object, "source": object, "weight": "float64"}
    )


def _grades(log: pd.DataFrame, settings: PairSettings) -> pd.DataFrame:
    """The latest grade per pair, unless cleared: positive, negative or neutral."""
    rows = log[log["InteractionType"] == "grade"].drop_duplicates(_LOG_PAIR, keep="last")
    rows = rows[rows["Value"].notna()]
    relevance = np.select(
        [rows["Value"] >= settings.positive_grade, rows["Value"] <= settings.negative_grade],
        ["positive", "negative"],
        "neutral",
    )
    return _verdicts(rows, relevance, "grade", settings.grade_weight, _LOG_PAIR)


def _labels(log: pd.DataFrame, settings: PairSettings) -> pd.DataFrame:
    """The latest similar / not_similar row per pair, unless undone (value 0)."""
    rows = log[log["InteractionType"].isin(["similar", "not_similar"])]
    rows = rows.drop_duplicates(_LOG_PAIR, keep="last")
    rows = rows[rows["Value"] == 1]
    relevance = np.where(rows["InteractionType"] == "similar", "positive", "negative")
    return _verdicts(rows, relevance, "label", settings.label_weight, _LOG_PAIR)


def _clicks(log: pd.DataFrame, settings: PairSettings) -> pd.DataFrame:
    """Every clicked pair, once."""
    rows = log.loc[log["InteractionType"] == "click", _LOG_PAIR].drop_duplicates()
    return _verdicts(rows, "positive", "click", settings.click_weight, _LOG_PAIR)


def _hard_negatives(log: pd.DataFrame, settings: PairSettings) -> pd.DataFrame:
    """Results shown above the deepest click of their search and not clicked in it."""
    search = ["QueryID", "DisplayedImageID"]
    clicks = log[log["InteractionType"] == "click"]
    deepest = clicks.groupby("QueryID")["PositionInDisplayedList"].max()
    shown = log[log["InteractionType"] == "impression"].drop_duplicates(search)
    shown = shown.merge(deepest.rename("_deepest").reset_index(), on="QueryID")
    shown = shown[shown["PositionInDisplayedList"] < shown["_deepest"]]
    clicked = clicks[search].drop_duplicates()
    skipped = shown.merge(clicked, on=search, how="left", indicator=True)
    skipped = skipped[skipped["_merge"] == "left_only"].drop_duplicates(_LOG_PAIR)
    return _verdicts(skipped, "negative", "hard", settings.click_weight, _LOG_PAIR)


FEEDBACK_TYPES = ("click", "similar", "not_similar", "grade")  # what a person did to a result


def feedback_labels(
    log: pd.DataFrame, labels: Mapping[str, str | None], allowed: Collection[str]
) -> list[str]:
    """The categories the log's feedback covered, sorted: the labels of `allowed` images that
    appear in it as a query, or as a clicked or judged result (a result only shown is not
    feedback on its category). What a fine-tune learned from: its "seen" labels."""
    acted = log.loc[log["InteractionType"].isin(FEEDBACK_TYPES), "DisplayedImageID"]
    touched = set(log["QueryImageID"].dropna()) | set(acted.dropna())
    return sorted({label for i in touched & set(allowed) if (label := labels.get(i))})


def judgements(log: pd.DataFrame, settings: PairSettings = DEFAULT_SETTINGS) -> pd.DataFrame:
    """One row per judged (query_image_id, displayed_image_id) pair (see the module doc).

    Columns `JUDGEMENT_COLUMNS`: the two ids, `relevance` ("positive" / "negative"), `source`
    ("label", "grade", "click", "hard") and `weight` (from `settings`). Sorted by the ids.
    """
    log = _checked(log)
    frames = [_grades(log, settings), _labels(log, settings), _clicks(log, settings)]
    if settings.hard_negatives:
        frames.append(_hard_negatives(log, settings))
    merged = pd.concat(frames, ignore_index=True).drop_duplicates(_PAIR, keep="first")
    keep = (merged["relevance"] != "neutral") & (
        merged["query_image_id"] != merged["displayed_image_id"]
    )
    merged = merged[keep].sort_values(_PAIR, kind="stable")
    return merged.reset_index(drop=True)[list(JUDGEMENT_COLUMNS)]


def _groups(edges: pd.DataFrame) -> list[list[str]]:
    """Connected components (two or more images, each sorted) of an undirected edge list."""
    parent: dict[str, str] = {}

    def root(node: str) -> str:
        while parent.setdefault(node, node) != node:
            parent[node] = parent[parent[node]]  # path halving
            node = parent[node]
        return node

    for a, b in zip(edges["query_image_id"], edges["displayed_image_id"], strict=True):
        parent[root(str(a))] = root(str(b))
    members: dict[str, list[str]] = {}
    for node in sorted(parent):
        members.setdefault(root(node), []).append(node)
    return [group for group in members.values() if len(group) > 1]


def positive_groups(judged: pd.DataFrame) -> list[list[str]]:
    """The groups explicit positives (labels, grades) in `judged` join, edges both ways."""
    explicit = judged["source"].isin(["label", "grade"]) & (judged["relevance"] == "positive")
    return _groups(judged[explicit])


def transitive_positives(
    judged: pd.DataFrame,
    groups: list[list[str]],
    settings: PairSettings,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Judgement rows (source "transitive") inside the `groups` of explicit positives: up to
    `settings.transitive` per image, never for a pair judged already (either way round).
    Their weight is the weaker of the label and grade weights, the evidence they chain."""
    weight = min(settings.label_weight, settings.grade_weight)
    partners: dict[str, set[str]] = {}
    for a, b in zip(judged["query_image_id"], judged["displayed_image_id"], strict=True):
        partners.setdefault(str(a), set()).add(str(b))
        partners.setdefault(str(b), set()).add(str(a))
    anchors: list[str] = []
    inferred: list[str] = []
    for group in groups:  # none when chaining is off (build_pairs)
        for anchor in group:
            taken = partners.get(anchor, set())
            # enough draws to find `transitive` open members even if every judged one comes up
            size = min(len(group), settings.transitive + 1 + len(taken))
            draws = (group[i] for i in rng.choice(len(group), size=size, replace=False))
            found = [b for b in draws if b != anchor and b not in taken][: settings.transitive]
            anchors.extend([anchor] * len(found))
            inferred.extend(found)
    keys = pd.DataFrame({"query_image_id": anchors, "displayed_image_id": inferred})
    return _verdicts(keys, "positive", "transitive", weight)


def _counts(values: pd.Series, keys: Collection[str] = ()) -> dict[str, int]:
    """{value: count}, sorted, with zeros for `keys` that do not occur."""
    found = {str(k): int(n) for k, n in values.value_counts().items()}
    return {k: found.get(k, 0) for k in sorted({*keys, *found})}


def _median_cap(counts: pd.Series, floor: int) -> int:
    """max(floor, 2 × median of the counts); `floor` when there are none."""
    return max(floor, int(2 * counts.median())) if len(counts) else floor


def _keep_at_most(pairs: pd.DataFrame, by: str, cap: int, rng: np.random.Generator) -> pd.DataFrame:
    """At most `cap` rows per value of `by`: highest weight first, seeded random among ties."""
    ranked = pairs.assign(_tie=rng.random(len(pairs)))
    ranked = ranked.sort_values(["weight", "_tie"], ascending=[False, True], kind="stable")
    kept = ranked.groupby(by, sort=False).head(cap).index
    return pairs.loc[pairs.index.isin(kept)]


def _repeat_up_to(pairs: pd.DataFrame, minimum: int, rng: np.random.Generator) -> pd.DataFrame:
    """Repeat the rows of each label with fewer than `minimum` until it has `minimum`."""
    extra = []
    for _, group in pairs.groupby("label", sort=True):
        missing = minimum - len(group)
        if missing > 0:
            order = rng.permutation(len(group))
            extra.append(group.iloc[order[np.arange(missing) % len(group)]])
    return pd.concat([pairs, *extra]) if extra else pairs


def _rebalance(
    pairs: pd.DataFrame, settings: PairSettings, rng: np.random.Generator
) -> tuple[pd.DataFrame, dict[str, object]]:
    """Image cap, label cap, up-sampling (module doc, steps 1–3); returns pairs and counts."""
    image_cap = _median_cap(pairs["displayed_image_id"].value_counts(), 3)
    capped = _keep_at_most(pairs, "displayed_image_id", image_cap, rng)
    label_cap = settings.max_per_label
    if label_cap is None:
        label_cap = _median_cap(capped["label"].value_counts(), 1)
    down = _keep_at_most(capped, "label", label_cap, rng)
    up = _repeat_up_to(down, settings.min_per_label, rng)
    up = up.sort_values(["query_image_id", "displayed_image_id"], kind="stable")
    return up.reset_index(drop=True), {
        "image_cap": image_cap,
        "dropped_by_image_cap": len(pairs) - len(capped),
        "max_per_label": label_cap,
        "dropped_by_label_cap": len(capped) - len(down),
        "min_per_label": settings.min_per_label,
        "added_by_up_sampling": len(up) - len(down),
    }


def _label_groups(
    population: np.ndarray, codes: np.ndarray, excluded: set[str]
) -> list[np.ndarray]:
    """The eligible images of each label, one array per label with any; `population` is
    sorted by label `codes`."""
    keep = ~np.isin(population, list(excluded))
    ids, kept_codes = population[keep], codes[keep]
    if not len(ids):
        return []
    starts = np.flatnonzero(kept_codes[1:] != kept_codes[:-1]) + 1
    return np.split(ids, starts)


def _balanced_draw(groups: list[np.ndarray], k: int, rng: np.random.Generator) -> list[str]:
    """k images: a label uniformly among those with one left, then an image of it uniformly.

    Without replacement while candidates last, then a new round (repeats only when forced).
    """
    taken: list[set[int]] = [set() for _ in groups]
    drawn: list[str] = []
    while len(drawn) < k:
        open_labels = [i for i, g in enumerate(groups) if len(taken[i]) < len(g)]
        if not open_labels:
            taken = [set() for _ in groups]
            continue
        label = open_labels[int(rng.integers(len(open_labels)))]
        left = np.setdiff1d(np.arange(len(groups[label])), list(taken[label]))
        image = int(left[rng.integers(len(left))])
        taken[label].add(image)
        drawn.append(str(groups[label][image]))
    return drawn


def _population(allowed: Collection[str], labels: Mapping[str, str | None]) -> pd.DataFrame:
    """The allowed images with their label bucket, sorted by (label, id)."""
    ids = sorted(allowed)
    frame = pd.DataFrame({"id": ids, "label": [labels.get(i) or UNLABELLED for i in ids]})
    frame = frame.sort_values(["label", "id"], kind="stable").astype(object)
    return frame.assign(code=pd.factorize(frame["label"])[0])


def _negatives(
    pairs: pd.DataFrame,
    judged: pd.DataFrame,
    population: pd.DataFrame,
    settings: PairSettings,
    rng: np.random.Generator,
    linked: Mapping[str, Collection[str]],
) -> tuple[list[list[str]], list[str]]:
    """(P, N) negatives for the sorted `pairs`, and the source of every slot, row-major.
    Random ones never come from the anchor's `linked` images (its group of explicit
    positives: similar by the same chaining)."""
    n = settings.random_negatives
    ids, codes = population["id"].to_numpy(), population["code"].to_numpy()
    rows: list[list[str]] = []
    sources: list[str] = []
    for anchor, group in pairs.groupby("query_image_id", sort=True):
        mine = judged[judged["query_image_id"] == anchor]
        explicit = mine[mine["relevance"] == "negative"]
        explicit = explicit.iloc[rng.permutation(len(explicit))]
        held = list(zip(explicit["displayed_image_id"], explicit["source"], strict=True))
        excluded = {str(anchor), *mine["displayed_image_id"], *linked.get(str(anchor), ())}
        groups = _label_groups(ids, codes, excluded)
        for k in range(len(group)):
            chosen = [held[(k * n + i) % len(held)] for i in range(min(n, len(held)))]
            if len(chosen) < n and not groups:
                raise PairError(
                    f"No image is left to serve as a random negative for {str(anchor)[:12]}…; "
                    "add images to the split or lower random_negatives."
                )
            drawn = _balanced_draw(groups, n - len(chosen), rng)
            rows.append([str(i) for i, _ in chosen] + drawn)
            sources.extend([s for _, s in chosen] + ["random"] * len(drawn))
    return rows, sources


def _split_allowed(
    judged: pd.DataFrame, allowed: Collection[str]
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The judgements inside `allowed`, and how many were dropped by relevance."""
    allowed_set = set(allowed)
    inside = judged["query_image_id"].isin(allowed_set) & judged["displayed_image_id"].isin(
        allowed_set
    )
    dropped = _counts(judged.loc[~inside, "relevance"], ("positive", "negative"))
    return judged[inside], {**dropped, "total": int((~inside).sum())}


def _summary(
    all_judged: pd.DataFrame,
    judged: pd.DataFrame,
    positives: pd.DataFrame,
    pairs: pd.DataFrame,
    negatives: tuple[list[list[str]], list[str]],
    label_of: Mapping[str, str],
) -> dict[str, object]:
    """The counts `build_pairs` reports, JSON-serialisable (plain ints, str keys)."""
    explicit = judged[judged["relevance"] == "negative"]
    slots = [i for row in negatives[0] for i in row]
    randoms = [label_of[i] for i, s in zip(slots, negatives[1], strict=True) if s == "random"]
    unused = ~explicit["query_image_id"].isin(pairs["query_image_id"])
    return {
        "judgements": len(all_judged),
        "positives": _counts(positives["source"], POSITIVE_SOURCES),
        "explicit_negatives": _counts(explicit["source"], ("label", "grade", "hard")),
        "unused_negatives": int(unused.sum()),
        "pairs_before": len(positives),
        "pairs": len(pairs),
        "labels_before": _counts(positives["label"]),
        "labels_after": _counts(pairs["label"]),
        "negatives": _counts(pd.Series(negatives[1], dtype=object), NEGATIVE_SOURCES),
        "random_negative_labels": _counts(pd.Series(randoms, dtype=object)),
    }


def build_pairs(
    log: pd.DataFrame,
    labels: Mapping[str, str | None],
    allowed: Collection[str],
    settings: PairSettings = DEFAULT_SETTINGS,
) -> TrainingPairs:
    """Training pairs from the log, restricted to `allowed` image ids (module doc).

    `labels` maps image id -> category (None or missing: `UNLABELLED`). The summary holds:
    `judgements` (pairs judged in the whole log), `dropped_outside_allowed` ({positive,
    negative, total} judgements touching an image outside `allowed`), `positives` (by source,
    before re-balancing), `explicit_negatives` (by source), `unused_negatives` (explicit
    negatives of anchors left without a pair), `pairs_before`, `pairs`, `labels_before` /
    `labels_after` (anchor label -> pairs), `image_cap`, `dropped_by_image_cap`,
    `max_per_label`, `dropped_by_label_cap`, `min_per_label`, `added_by_up_sampling`,
    `negatives_per_pair`, `negatives` (slots by source, `NEGATIVE_SOURCES`) and
    `random_negative_labels` (label -> random negatives drawn).
    """
    rebalance_seed, negative_seed, chain_seed = np.random.SeedSequence(settings.seed).spawn(3)
    all_judged = judgements(log, settings)
    judged, dropped = _split_allowed(all_judged, allowed)
    groups = positive_groups(judged)
    chained = groups if settings.transitive else []
    inferred = transitive_positives(judged, chained, settings, np.random.default_rng(chain_seed))
    judged = pd.concat([judged, inferred], ignore_index=True).sort_values(_PAIR, kind="stable")
    linked = {image: group for group in chained for image in group}
    positives = judged[judged["relevance"] == "positive"].reset_index(drop=True)
    positives = positives.assign(
        label=pd.Series(
            [labels.get(i) or UNLABELLED for i in positives["query_image_id"]], dtype=object
        )
    )
    pairs, rebalanced = _rebalance(positives, settings, np.random.default_rng(rebalance_seed))
    population = _population(allowed, labels)
    negatives = _negatives(
        pairs, judged, population, settings, np.random.default_rng(negative_seed), linked
    )
    label_of = dict(zip(population["id"], population["label"], strict=True))
    summary: dict[str, object] = {
        "dropped_outside_allowed": dropped,
        **_summary(all_judged, judged, positives, pairs, negatives, label_of),
        **rebalanced,
        "negatives_per_pair": settings.random_negatives,
    }
    return TrainingPairs(
        anchors=[str(a) for a in pairs["query_image_id"]],
        positives=[str(p) for p in pairs["displayed_image_id"]],
        weights=pairs["weight"].to_numpy(dtype=np.float64),
        negatives=negatives[0],
        summary=summary,
        groups=groups,
    )
