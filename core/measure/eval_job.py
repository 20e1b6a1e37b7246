"""The evaluation job: the Metrics page's numbers computed in a background process and read
back, so the page shows what is stored at once and never ranks a gallery in its script.

- Stored evaluation runs (`evaluate`, kept in `evaluation_runs`): the bars and the per-label
  table, at the page's cutoff k.
- Each version's ranking of every query `CURVE_DEPTH` (50) deep, cached on disk as `.npz`
  (`RankingCache`): the metric@k curves and the worst queries. It is computed in the job and
  cached rather than computed inline when cheap: ranking the queries is the whole cost of an
  evaluation (over a minute for a 70,000-image gallery on 2 cores), and one ranking 50 deep
  serves every cutoff the page offers, so moving the k slider needs no new ranking.

What is current: a run or a ranking measured the gallery and the log as they stand. With
label relevance the log does not change the answer, so one of the same gallery is current too
(each search would otherwise make the page's numbers stale).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.choices import METRIC_NAMES
from core.config import Settings
from core.files import atomic_write
from core.measure import jobs
from core.measure.evaluation import (
    Evaluation,
    EvaluationError,
    Ranking,
    evaluate,
    evaluation_from_run,
    metric_curves,
    studio_ranking,
)
from core.measure.jobs import JobReporter, JobStatus
from core.store import Store
from core.studio import Studio

KIND = "eval"
CURVE_DEPTH = 50  # the ranking's depth: the page's curves and its k slider go up to it


@dataclass(frozen=True)
class EvalRequest:
    """What the Metrics page shows: versions at one split, cutoff and relevance source."""

    versions: tuple[str, ...]
    split: str = "all"
    k: int = 10
    relevance: str = "labels"

    def args(self) -> list[str]:
        """The job's command-line arguments (the starter's and the job's own)."""
        models = [arg for version in self.versions for arg in ("--model", version)]
        return [*models, "--split", self.split, "-k", str(self.k), "--relevance", self.relevance]

    def only(self, versions: Sequence[str]) -> EvalRequest:
        return EvalRequest(tuple(versions), self.split, self.k, self.relevance)


def current_signature(store: Store, relevance: str) -> str:
    """The state a `relevance` result depends on: the gallery for labels, else gallery and log."""
    return store.image_signature() if relevance == "labels" else store.state_signature()


def _measures(stored: str, current: str) -> bool:
    """Whether a result stored with state signature `stored` measured `current`."""
    return stored == current or stored.startswith(f"{current}|log=")


@dataclass(frozen=True)
class StoredEvaluation:
    """A version's newest stored run for a request, and whether it is current."""

    evaluation: Evaluation
    current: bool


def stored_evaluations(store: Store, request: EvalRequest) -> dict[str, StoredEvaluation]:
    """Each version's newest stored run at the request's split, k and relevance (whatever state
    it measured: a page shows it while a current one is computed); versions with none are absent."""
    signature = current_signature(store, request.relevance)
    out = {}
    for version in request.versions:
        run = store.runs.latest_evaluation(
            version, request.split, request.k, request.relevance, None
        )
        if run is not None:
            out[version] = StoredEvaluation(
                evaluation_from_run(run), _measures(run.signature, signature)
            )
    return out


class RankingCache:
    """Rankings on disk under `folder`, keyed by version, split, relevance and state signature,
    each with its metric@k curves, which can be read alone.

    Image ids are stored once, with (Q, depth) int32 rows into them (-1: no result), not as
    (Q, depth) strings: 70,000 queries 50 deep would be 0.9 GB of fixed-width text (stored
    this way, 79 MB, read back in 0.4 s). The curves are computed when the ranking is stored:
    for 70,000 queries they took 6 s, too long for a page to wait.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _path(self, version: str, split: str, relevance: str, signature: str) -> Path:
        key = f"{version}|{split}|{relevance}|{CURVE_DEPTH}|{signature}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:20]
        return self.folder / f"{version}-{split}-{relevance}-{digest}.npz"

    def has(self, version: str, split: str, relevance: str, signature: str) -> bool:
        return self._path(version, split, relevance, signature).exists()

    def get(self, version: str, split: str, relevance: str, signature: str) -> Ranking | None:
        path = self._path(version, split, relevance, signature)
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as data:
            return _unpack(dict(data))

    def curves(
        self, version: str, split: str, relevance: str, signature: str
    ) -> pd.DataFrame | None:
        """The ranking's metric@k for k = 1…CURVE_DEPTH, as `metric_curves` gives it, or None."""
        path = self._path(version, split, relevance, signature)
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as data:  # reads these two members only
            ks, values = data["curve_ks"], data["curves"]  # (K,), (K, metrics)
        rows = [
            {"k": int(k), "metric": name, "value": float(value)}
            for k, row in zip(ks, values, strict=True)
            for name, value in zip(METRIC_NAMES, row, strict=True)
        ]
        return pd.DataFrame(rows)

    def put(
        self, version: str, split: str, relevance: str, signature: str, ranking: Ranking
    ) -> None:
        """Write the ranking and its curves atomically, so a page never reads half of one."""
        ks = range(1, CURVE_DEPTH + 1)
        table = metric_curves(ranking, ks).pivot(index="k", columns="metric", values="value")
        arrays: dict[str, Any] = _pack(ranking)  # (savez's keywords include allow_pickle)
        arrays |= {"curve_ks": np.array(ks), "curves": table[list(METRIC_NAMES)].to_numpy()}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write(self._path(version, split, relevance, signature), buffer.getvalue())


def _pack(ranking: Ranking) -> dict[str, np.ndarray]:
    flat = ranking.ranked_ids.ravel()  # (Q * depth,) ids or None
    table = sorted({image for image in flat if image is not None})
    row_of = {image: n for n, image in enumerate(table)}
    rows = np.fromiter((row_of.get(image, -1) for image in flat), np.int32, len(flat))
    arrays = {
        "ids": np.array(table, dtype=str),
        "rows": rows.reshape(ranking.ranked_ids.shape),  # (Q, depth)
        "query_ids": np.array(ranking.query_ids, dtype=str),
        "query_labels": np.array([label or "" for label in ranking.query_labels], dtype=str),
        "labelled": np.array([label is not None for label in ranking.query_labels]),
        "gains": ranking.gains,
        "n_relevant": ranking.n_relevant,
    }
    if ranking.ideal_gains is not None:
        arrays["ideal_gains"] = ranking.ideal_gains
    return arrays


def _unpack(data: dict[str, np.ndarray]) -> Ranking:
    ids = np.array([*data["ids"].tolist(), None], dtype=object)  # row -1 reads the None
    labels = data["query_labels"].tolist()
    return Ranking(
        data["query_ids"].tolist(),
        [label if kept else None for label, kept in zip(labels, data["labelled"], strict=True)],
        ids[data["rows"]],
        data["gains"],
        data["n_relevant"],
        data.get("ideal_gains"),
    )


def missing_evaluations(store: Store, cache: RankingCache, request: EvalRequest) -> list[str]:
    """The request's versions without a current stored run or a current cached ranking."""
    signature = current_signature(store, request.relevance)
    stored = stored_evaluations(store, request)
    return [
        version
        for version in request.versions
        if not (version in stored and stored[version].current)
        or not cache.has(version, request.split, request.relevance, signature)
    ]


def _evaluate_version(
    studio: Studio, cache: RankingCache, request: EvalRequest, version: str, reporter: JobReporter
) -> None:
    split, relevance = request.split, request.relevance
    signature = current_signature(studio.store, relevance)
    stored = stored_evaluations(studio.store, request.only([version])).get(version)
    if stored is None or not stored.current:
        reporter.step(f"{version}: metrics at k = {request.k} ({split}, {relevance})")
        evaluate(studio, version, split, request.k, relevance)  # stores the run
    if not cache.has(version, split, relevance, signature):
        reporter.step(f"{version}: ranking every query {CURVE_DEPTH} deep for the curves")
        ranking = studio_ranking(studio, version, split, relevance, CURVE_DEPTH)
        cache.put(version, split, relevance, signature, ranking)


def compute_evaluations(
    studio: Studio, cache: RankingCache, request: EvalRequest, reporter: JobReporter
) -> str:
    """The job's body: each version's run and ranking, unless current. A version that cannot
    be evaluated does not stop the others; their sentences fail the job at the end."""
    reporter.begin(len(request.versions))
    problems = []
    for done, version in enumerate(request.versions, start=1):
        try:
            _evaluate_version(studio, cache, request, version, reporter)
        except EvaluationError as exc:
            problems.append(str(exc))
        reporter.advance(done)
    if problems:
        raise EvaluationError(" ".join(dict.fromkeys(problems)))
    return f"Metrics of {', '.join(request.versions)} are stored."


def run_eval_job(studio: Studio, request: EvalRequest, *, wait: bool = False) -> JobStatus:
    """`python -m core eval-job`: claim the evaluation job's status, compute what is missing,
    and return the status it ended with."""
    settings = studio.settings
    reporter = jobs.claim_job(settings, KIND, request.args(), wait=wait)
    cache = RankingCache(settings.rankings_dir)
    return jobs.run_job(
        reporter, lambda report: compute_evaluations(studio, cache, request, report)
    )


def start_eval_job(
    settings: Settings, request: EvalRequest, *, tag: str = "", retry: bool = False
) -> JobStatus:
    """Start the evaluation job in the background for `request` (see `jobs.start_job`)."""
    return jobs.start_job(settings, KIND, request.args(), tag=tag, retry=retry)


def read_eval_status(settings: Settings) -> JobStatus | None:
    return jobs.read_status(settings.jobs_dir, KIND)
