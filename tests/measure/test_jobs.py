"""Background measuring jobs: a process of their own at low priority, one of a kind at a time,
a status file a page polls, processes that vanished, failures with their reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

import core.measure.jobs
from core.config import Settings
from core.measure.eval_job import EvalRequest, read_eval_status, start_eval_job
from core.measure.jobs import (
    JobError,
    JobReporter,
    JobStatus,
    claim_job,
    read_status,
    run_job,
    start_job,
    stop_jobs,
)
from core.measure.map_job import read_map_status, run_map_job, start_map_job
from core.measure.projection import ProjectionCache
from core.studio import Studio
from tests.helpers import SpawnedJob, run_cli

ROOT = Path(__file__).resolve().parents[2]

REQUEST = ["--model", "base", "--method", "umap"]


@pytest.fixture
def gallery(studio: Studio, make_gallery: Callable[..., Path]) -> Studio:
    studio.ingest([make_gallery(per_label=5)], label_from_folders=True)
    return studio


def wait_until(condition: Callable[[], bool], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.1)


def niceness(pid: int) -> int:
    """Field 19 of /proc/PID/stat (proc(5)), counted after the command name's parenthesis."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16])


def written(folder: Path, kind: str) -> dict[str, object]:
    """The status file itself, as a page's poll reads it."""
    return dict(json.loads((folder / f"{kind}.json").read_text()))


def a_status(settings: Settings, **fields: object) -> JobStatus:
    """A status written through the job's own reporter (the way a job writes one)."""
    base = JobStatus("map", "running", REQUEST, None, 0, 0, "x", None, "t0", "t0")
    reporter = JobReporter(settings.jobs_dir, replace(base, **fields))  # type: ignore[arg-type]
    reporter.step("x")
    return reporter.status


# --- the real thing -----------------------------------------------------------------------------


def test_start_runs_the_job_in_its_own_process_at_low_priority(gallery: Studio) -> None:
    settings = gallery.settings
    started = start_map_job(settings, ["base"], "pca", tag="sig")
    assert started.state == "queued" and started.pid not in (None, os.getpid())
    assert started.request == ["--model", "base", "--method", "pca"] and started.tag == "sig"
    assert started.pid is not None
    # once `nice` has exec'd Python (its imports take a second more), at the lower priority
    command = Path(f"/proc/{started.pid}/cmdline")
    wait_until(lambda: command.read_bytes().split(b"\0")[0] != b"nice", seconds=10)
    assert niceness(started.pid) == 10
    wait_until(lambda: not (status := read_map_status(settings)) or not status.live)
    ended = read_map_status(settings)
    assert ended is not None and ended.state == "done", ended and ended.message
    assert (ended.pid, ended.done, ended.total, ended.tag) == (started.pid, 1, 1, "sig")
    cache, signature = ProjectionCache(settings.projections_dir), gallery.image_signature()
    mapped = cache.get("base", "pca", signature)
    assert mapped is not None and sorted(mapped.ids) == sorted(gallery.index.ids("base"))
    assert cache.get_cohesion("base", signature) is not None
    assert "PCA of 20 points" in (settings.jobs_dir / "map.log").read_text()


def test_the_evaluation_job_runs_in_its_own_process(gallery: Studio) -> None:
    request = EvalRequest(("base",), "all", 5, "labels")
    started = start_eval_job(gallery.settings, request)
    wait_until(lambda: not (status := read_eval_status(gallery.settings)) or not status.live)
    ended = read_eval_status(gallery.settings)
    log = (gallery.settings.jobs_dir / "eval.log").read_text()
    assert ended is not None and ended.state == "done", (ended, log)
    assert ended.pid == started.pid and ended.request == request.args()
    [run] = gallery.store.runs.evaluations()
    assert (run.model_version, run.split, run.k, run.relevance) == ("base", "all", 5, "labels")


def test_the_command_line_reports_a_failed_job_in_one_sentence(gallery: Studio) -> None:
    done = run_cli(gallery.settings.data_dir, "map-job", "--model", "nope", "--json")
    assert done.returncode == 1
    assert done.stderr.strip().endswith("error: A map needs at least 3 images.")
    payload = json.loads(done.stdout)
    assert payload["state"] == "failed" and payload["request"] == [
        "--model",
        "nope",
        "--method",
        "umap",
    ]


# --- one at a time ------------------------------------------------------------------------------


def test_one_job_of_a_kind_at_a_time(settings: Settings, fake_spawn: list[SpawnedJob]) -> None:
    statuses: list[JobStatus] = []
    threads = [
        threading.Thread(target=lambda: statuses.append(start_job(settings, "map", REQUEST)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(fake_spawn) == 1 and {s.pid for s in statuses} == {fake_spawn[0].process.pid}
    other = start_job(settings, "map", ["--model", "ft-0001", "--method", "umap"])
    assert other.request == REQUEST and len(fake_spawn) == 1  # the live job's status
    assert start_job(settings, "eval", ["-k", "5"]).request == ["-k", "5"]  # another kind
    assert [job.kind for job in fake_spawn] == ["map", "eval"]
    with pytest.raises(JobError, match="already running"):
        claim_job(settings, "map", REQUEST)


def test_a_foreground_job_waits_for_the_running_one(
    settings: Settings, fake_spawn: list[SpawnedJob]
) -> None:
    start_job(settings, "map", REQUEST)
    claimed: list[JobReporter] = []
    waiter = threading.Thread(
        target=lambda: claimed.append(claim_job(settings, "map", REQUEST, wait=True))
    )
    waiter.start()
    time.sleep(1.5)
    assert not claimed, read_status(settings.jobs_dir, "map")  # still waiting
    fake_spawn[0].process.kill()
    fake_spawn[0].process.wait()
    waiter.join(timeout=30)
    [reporter] = claimed
    assert reporter.status.pid == os.getpid() and reporter.status.state == "running"
    assert written(settings.jobs_dir, "map")["pid"] == os.getpid()


# --- processes that are gone ---------------------------------------------------------------------


def test_a_job_whose_process_is_gone_reads_as_failed(
    settings: Settings, fake_spawn: list[SpawnedJob]
) -> None:
    started = start_job(settings, "map", REQUEST, tag="sig")
    status = read_status(settings.jobs_dir, "map")
    assert status is not None and status.live
    fake_spawn[0].process.kill()  # not waited for yet: a zombie, which `kill -0` still finds
    wait_until(
        lambda: Path(f"/proc/{started.pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    )
    status = read_status(settings.jobs_dir, "map")
    assert status is not None and status.state == "failed"
    assert "ended without finishing" in (status.message or "")
    fake_spawn[0].process.wait()  # reaped: no such process at all
    assert read_status(settings.jobs_dir, "map").state == "failed"  # type: ignore[union-attr]
    assert written(settings.jobs_dir, "map")["state"] == "queued"  # a read writes nothing
    # the same request on the same state is not started again on its own ...
    assert start_job(settings, "map", REQUEST, tag="sig").state == "failed"
    assert len(fake_spawn) == 1
    # ... but on request, or once the state it was asked on has changed
    assert start_job(settings, "map", REQUEST, tag="sig", retry=True).state == "queued"
    assert len(fake_spawn) == 2


def test_a_live_status_whose_pid_is_another_program_reads_as_failed(settings: Settings) -> None:
    a_status(settings, pid=os.getpid())  # alive, but pytest, not a map job
    assert read_status(settings.jobs_dir, "map").state == "failed"  # type: ignore[union-attr]
    a_status(settings, pid=2**22 + 12345)  # no such process
    assert read_status(settings.jobs_dir, "map").state == "failed"  # type: ignore[union-attr]


def test_a_failure_is_retried_when_the_state_changes(
    settings: Settings, fake_spawn: list[SpawnedJob]
) -> None:
    a_status(settings, state="failed", message="No map.", tag="sig-1")
    assert start_job(settings, "map", REQUEST, tag="sig-1").message == "No map."
    assert fake_spawn == []
    assert start_job(settings, "map", REQUEST[:2], tag="sig-1").state == "queued"  # another ask
    assert len(fake_spawn) == 1
    fake_spawn[0].process.kill()
    fake_spawn[0].process.wait()
    assert start_job(settings, "map", REQUEST[:2], tag="sig-2").state == "queued"
    assert len(fake_spawn) == 2


def test_an_unknown_kind_is_refused(settings: Settings) -> None:
    with pytest.raises(JobError, match="Unknown job kind 'tsne'; use one of map, eval"):
        start_job(settings, "tsne", [])


# --- what a job writes --------------------------------------------------------------------------


def test_the_status_a_job_writes_as_it_goes(
    gallery: Studio, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[JobStatus] = []
    real = core.measure.jobs._write

    def recording(folder: Path, status: JobStatus) -> None:
        writes.append(status)
        real(folder, status)

    monkeypatch.setattr(core.measure.jobs, "_write", recording)
    ended = run_map_job(gallery.settings, None, "pca")  # None: the active version
    assert [(w.state, w.done, w.total) for w in writes][:2] == [
        ("running", 0, 0),
        ("running", 0, 1),
    ]
    steps = [w.step for w in writes]
    assert steps[2:5] == [
        "base: reading its vectors",
        "base: PCA of 20 points",
        "base: cohesion per label",
    ]
    assert (writes[-2].done, writes[-2].state) == (1, "running")
    assert ended == writes[-1] and ended.state == "done" and ended.pid == os.getpid()
    assert ended.message == "PCA maps of base are ready."
    assert written(gallery.settings.jobs_dir, "map") == ended.as_dict()
    assert ended.describe() == "map job · done · 1/1 · PCA maps of base are ready."


def test_a_failing_job_reports_its_error(gallery: Studio) -> None:
    ended = run_map_job(gallery.settings, ["base", "nope"], "pca")
    assert ended.state == "failed" and ended.message == "A map needs at least 3 images."
    assert (ended.done, ended.total) == (1, 2)  # base was mapped before nope failed
    assert read_map_status(gallery.settings) == ended


def test_an_unexpected_error_is_recorded_and_raised(settings: Settings) -> None:
    reporter = claim_job(settings, "eval", ["-k", "5"])

    def broken(report: JobReporter) -> str:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_job(reporter, broken)
    status = read_status(settings.jobs_dir, "eval")
    assert (
        status is not None and status.state == "failed" and status.message == "RuntimeError: boom"
    )


def test_idle_priority_covers_threads_started_before_it() -> None:
    """numpy starts its BLAS threads on import, before a job can lower its priority: every
    thread of the process must end up under SCHED_IDLE, not only the caller."""
    if not hasattr(os, "SCHED_IDLE"):
        pytest.skip("no SCHED_IDLE on this platform")
    code = (
        "import os, threading\n"
        "from core.measure.jobs import idle_priority\n"
        "stop = threading.Event()\n"
        "early = threading.Thread(target=stop.wait); early.start()\n"
        "idle_priority()\n"
        "late = threading.Thread(target=stop.wait); late.start()\n"
        "policies = {os.sched_getscheduler(int(t)) for t in os.listdir('/proc/self/task')}\n"
        "stop.set(); early.join(); late.join()\n"
        "print(sorted(policies) == [os.SCHED_IDLE], len(os.listdir('/proc/self/task')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "True"


def test_stop_jobs_ends_every_live_job_and_names_them(
    settings: Settings, fake_spawn: list[SpawnedJob]
) -> None:
    start_job(settings, "map", REQUEST)
    start_job(settings, "lab", ["--model", "base"])
    assert stop_jobs(settings.jobs_dir) == ["map", "lab"]
    for job in fake_spawn:
        assert job.process.wait(timeout=10) != 0  # ended by the signal, not by finishing
    assert stop_jobs(settings.jobs_dir) == []  # nothing live any more: nothing to stop
