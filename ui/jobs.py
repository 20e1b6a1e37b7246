"""Background jobs as the pages see them: start the map or evaluation job when what a page
shows is missing, and follow its progress in a fragment, so no script computes a UMAP map or
ranks a gallery itself (`core.measure.jobs`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import streamlit as st

from core.measure import base_job, eval_job, lab_job, map_job
from core.measure.eval_job import EvalRequest, RankingCache
from core.measure.jobs import JobStatus
from core.measure.lab_job import LabRequest
from core.measure.projection import ProjectionCache
from core.studio import Studio

POLL_SECONDS = 1.0  # how often a waiting page reads the job's status

Ensure = Callable[[bool], JobStatus | None]  # (retry) -> the job's status; None: nothing missing


def map_cache(studio: Studio) -> ProjectionCache:
    return ProjectionCache(studio.settings.projections_dir)


def ranking_cache(studio: Studio) -> RankingCache:
    return RankingCache(studio.settings.rankings_dir)


def default_map_versions(studio: Studio) -> list[str]:
    """The versions the Embeddings page opens on: the active one (when it has vectors)."""
    active = studio.active_version().version
    return [active] if studio.index.count(active) else []


def ensure_maps(
    studio: Studio, versions: Sequence[str] | None = None, *, retry: bool = False
) -> JobStatus | None:
    """Start the map job for those of `versions` (default: `default_map_versions`) whose UMAP
    map or cohesion table is not cached for the gallery as it stands, unless a map job runs;
    its status, or None when nothing is missing. app.py calls it on every run, so a new gallery
    state or a newly activated version is mapped before anyone opens the page."""
    wanted = default_map_versions(studio) if versions is None else versions
    missing = map_job.missing_maps(studio.store, studio.index, map_cache(studio), wanted)
    if not missing:
        return None
    tag = studio.image_signature()
    return map_job.start_map_job(studio.settings, missing, tag=tag, retry=retry)


def ensure_evaluations(
    studio: Studio, request: EvalRequest, *, retry: bool = False
) -> JobStatus | None:
    """Start the evaluation job for the request's versions without a current stored run or
    cached ranking, unless one runs; its status, or None when nothing is missing."""
    missing = eval_job.missing_evaluations(studio.store, ranking_cache(studio), request)
    if not missing:
        return None
    tag = studio.state_signature()
    return eval_job.start_eval_job(studio.settings, request.only(missing), tag=tag, retry=retry)


def _unfinished(
    status: JobStatus | None, retry: bool, restart: Callable[[], JobStatus | None]
) -> JobStatus | None:
    """A job a person started, as a page follows it: its status while it runs or has failed
    (`restart` on a retry), None once done or when there is none."""
    if status is None or status.state == "done":
        return None
    if status.state == "failed" and retry:
        return restart()
    return status


def ensure_lab(
    studio: Studio, request: LabRequest, *, retry: bool = False, start: bool = True
) -> JobStatus | None:
    """The lab job's status while it runs (or its failure, until a retry); with `start` (a
    person pressed "Run") start it for `request` first, unless one runs. None when no lab job
    is running or failed: the page shows what is stored."""
    if start:
        return lab_job.start_lab_job(studio.settings, request, retry=retry)
    return _unfinished(
        lab_job.read_lab_status(studio.settings),
        retry,
        lambda: lab_job.start_lab_job(studio.settings, request, retry=True),
    )


def ensure_base(studio: Studio, encoder: str | None, *, retry: bool = False) -> JobStatus | None:
    """The new-base job's status while it runs (or its failure, until a retry); with an
    `encoder` (a person pressed "Create") start it first, unless one runs. None when no job
    runs or failed: the page shows the versions, the new one among them."""
    if encoder is not None:
        return base_job.start_base_job(studio.settings, encoder)
    status = base_job.read_base_status(studio.settings)
    if status is None:
        return None
    again = status.request[0]  # the encoder it was started for
    return _unfinished(status, retry, lambda: base_job.start_base_job(studio.settings, again))


def _elapsed(status: JobStatus) -> str:
    seconds = (datetime.now(UTC) - datetime.fromisoformat(status.started_at)).total_seconds()
    return f"{max(seconds, 0):.0f} s"


def show_status(status: JobStatus, what: str, ensure: Ensure) -> None:
    """A live job's progress bar; a failed one's reason, with a button to try again."""
    if status.live:
        st.progress(status.fraction, text=f"{what}: {status.describe()} · {_elapsed(status)}")
    elif status.state == "failed":
        st.error(f"{what}: {status.message}")
        if st.button("Try again", key=f"retry-{status.kind}"):
            ensure(True)
    else:
        st.caption(f"{what}: {status.describe()}")


def follow_job(what: str, ensure: Ensure) -> None:
    """Poll the job behind `what` every `POLL_SECONDS` in a fragment (only it reruns):
    `ensure` starts the job while something is missing and gives the status to show; once
    nothing is missing, the whole page reruns and draws what arrived."""

    @st.fragment(run_every=POLL_SECONDS)
    def poll() -> None:
        status = ensure(False)
        if status is None:
            st.rerun()
        else:
            show_status(status, what, ensure)

    poll()
