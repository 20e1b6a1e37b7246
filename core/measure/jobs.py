"""Background measuring jobs: maps and evaluations computed in a process of their own.

`start_job(settings, kind, request)` starts `python -m core <kind>-job REQUEST… --data-dir D`
in a new session, as `core.learn.jobs` starts training: never in a Streamlit script thread,
and closing the browser or the app does not stop it. It runs under `nice` (10), so searches
keep the two cores while a 70,000-image map is computed. The job claims its status
(`claim_job`) and reports through a `JobReporter`: its state, the step it is on, how many of
its targets are done, and why it failed.

The status is a small JSON file per kind, `jobs/<kind>.json`, replaced whole with
`atomic_write` (a reader never sees half of one), beside the job's output in `jobs/<kind>.log`.
Not store rows, as training has: these jobs make derived data that lives on disk (maps,
rankings) or that `evaluate` stores itself; their status is one record per kind that is only
ever replaced; pages poll it every second without opening SQLite; the map job never writes
to the catalog at all; and a file needs no schema migration.

One job of a kind at a time per data directory: a start and a claim both hold an exclusive
`flock` on `jobs/<kind>.lock` while they read and write the status, so two sessions (or two
servers, or `make run` and the app) asking at once start one process. A live status whose
process is gone (killed, the machine restarted, a zombie, or its pid reused by another
program) reads as failed, and the next start replaces it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from core.config import Settings
from core.errors import LookalikeError
from core.files import atomic_write
from core.store import utc_now

KINDS = ("map", "eval", "lab", "base")  # each is the command `python -m core <kind>-job`
LIVE_STATES = ("queued", "running")  # then done or failed
NICENESS = 10  # background jobs yield the CPU to the app's searches
ROOT = Path(__file__).resolve().parents[2]  # the project folder, where `python -m core` runs

log = logging.getLogger(__name__)


class JobError(LookalikeError, RuntimeError):
    """A job cannot start or run as asked (unknown kind, another one of its kind running)."""


@dataclass(frozen=True)
class JobStatus:
    """What a background job of one kind is doing, or last did."""

    kind: str  # one of KINDS
    state: str  # queued, running, then done or failed
    request: list[str]  # the job's command-line arguments: what it computes
    pid: int | None  # the job's process
    done: int  # targets finished (a version's map, a version's evaluation)
    total: int  # targets asked for; 0 until the job has looked
    step: str  # what it is doing now, a few words
    message: str | None  # done: a summary; failed: the reason, a sentence
    started_at: str
    updated_at: str
    tag: str = ""  # what the starter saw (a gallery signature): failures are not retried on it

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def fraction(self) -> float:
        """How many of its targets are done, 0–1."""
        return min(self.done / self.total, 1.0) if self.total else 0.0

    def describe(self) -> str:
        """One line for a progress bar or a terminal."""
        counted = f" · {self.done}/{self.total}" if self.total else ""
        detail = self.step if self.live else (self.message or "")
        return f"{self.kind} job · {self.state}{counted} · {detail}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def new(
        cls, kind: str, state: str, request: Sequence[str], pid: int, tag: str = ""
    ) -> JobStatus:
        """A job's first status: nothing done yet, its targets not yet counted."""
        now = utc_now()
        return cls(kind, state, list(request), pid, 0, 0, "starting", None, now, now, tag)


def idle_priority() -> None:
    """Run every thread of this process under Linux's SCHED_IDLE (it gets a core only when
    the core would otherwise idle), for jobs whose work should not slow a search; elsewhere
    nice 10 is all there is. Threads started before the call count too: numpy starts its BLAS
    pool on import, before a job gets here. This is not enough on its own: a query encoded on
    every core still stalls beside a busy job (up to 1.7 s on the 2-core VM), which is why a
    query takes only the cores other processes leave (`core.encoder.threads`); measured by
    `python -m core bench --beside-lab`."""
    if not (hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE")):
        return
    try:
        threads = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]
    for tid in threads:  # threads started before this call (numpy's BLAS pool) included
        with suppress(OSError):  # a thread that has just ended
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))


def _status_path(folder: Path, kind: str) -> Path:
    if kind not in KINDS:
        raise JobError(f"Unknown job kind {kind!r}; use one of {', '.join(KINDS)}.")
    return folder / f"{kind}.json"


def _alive(pid: int | None, kind: str) -> bool:
    """Whether `pid` is a running process of a `kind` job (not a zombie, not a reused pid)."""
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: /proc says what it is
        pass
    proc = Path("/proc") / str(pid)
    try:
        stat = (proc / "stat").read_text()
        arguments = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:  # no /proc (not Linux), or it ended just now: the pid is all we know
        return True
    state = stat.rsplit(")", 1)[-1].split()[0]  # after the command name, which may hold spaces
    if not any(arguments):  # read mid-exec (`nice` becoming python): no command line to judge
        return state != "Z"
    return state != "Z" and f"{kind}-job".encode() in arguments


def read_status(folder: Path, kind: str) -> JobStatus | None:
    """The `kind` job's last status under `folder` (`Settings.jobs_dir`), None before the
    first; a live one whose process is gone reads as failed."""
    path = _status_path(folder, kind)
    try:
        status = JobStatus(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    if status.live and not _alive(status.pid, kind):
        return replace(
            status,
            state="failed",
            message=f"The {kind} job (pid {status.pid}) ended without finishing; "
            f"see {folder / f'{kind}.log'}.",
        )
    return status


def _signal(pid: int, sig: signal.Signals) -> None:
    """Signal a job's process group (a job leads a session of its own), else the process."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:  # not a group leader: the process alone
        with suppress(ProcessLookupError):
            os.kill(pid, sig)
    except PermissionError:
        pass


def stop_jobs(folder: Path, timeout: float = 10.0) -> list[str]:
    """Stop every live job under `folder` (its whole process group: a job starts a session of
    its own) and return their kinds: for whoever throws the data directory away, such as the
    browser load benchmark's scratch copy, where the app may have started a map job."""
    stopped = []
    for kind in KINDS:
        status = read_status(folder, kind)
        if status is None or not status.live or status.pid is None:
            continue
        _signal(status.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(status.pid, kind) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(status.pid, kind):
            _signal(status.pid, signal.SIGKILL)
        stopped.append(kind)
    return stopped


def _write(folder: Path, status: JobStatus) -> None:
    path = _status_path(folder, status.kind)
    atomic_write(path, json.dumps(status.as_dict(), indent=1).encode())


@contextmanager
def _locked(folder: Path, kind: str) -> Iterator[None]:
    """Hold the kind's lock: one start or claim at a time, across threads and processes (each
    `open` is a lock of its own); the system drops it if the holder dies."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{kind}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _spawn(settings: Settings, kind: str, request: Sequence[str]) -> int:
    """`python -m core <kind>-job REQUEST --data-dir D` in a new session, at low priority,
    its output in `jobs/<kind>.log`; returns its pid (`nice` execs Python in place)."""
    data_dir = str(settings.data_dir.resolve())
    command = [sys.executable, "-m", "core", f"{kind}-job", *request, "--data-dir", data_dir]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with (settings.jobs_dir / f"{kind}.log").open("wb") as out:
        process = subprocess.Popen(
            ["nice", "-n", str(NICENESS), *command],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the app and the session that started it
            env=env,
        )
    return process.pid


def start_job(
    settings: Settings, kind: str, request: Sequence[str], *, tag: str = "", retry: bool = False
) -> JobStatus:
    """Start the `kind` job for `request` and return its status; or return the status that
    stands instead: a live job's (one at a time), or, unless `retry`, a failure on the same
    request and `tag` (a page shows why rather than failing again every second)."""
    folder = settings.jobs_dir
    with _locked(folder, kind):
        current = read_status(folder, kind)
        if current is not None and (
            current.live
            or (
                not retry
                and current.state == "failed"
                and (current.request, current.tag) == (list(request), tag)
            )
        ):
            return current
        status = JobStatus.new(kind, "queued", request, _spawn(settings, kind, request), tag)
        _write(folder, status)
    return status


class JobReporter:
    """A job's own writes to its status (get one from `claim_job`)."""

    def __init__(self, folder: Path, status: JobStatus) -> None:
        self.folder, self.status = folder, status

    def _update(self, **fields: Any) -> JobStatus:
        self.status = replace(self.status, **fields, updated_at=utc_now())
        with _locked(self.folder, self.status.kind):
            _write(self.folder, self.status)
        return self.status

    def begin(self, total: int) -> None:
        """The job knows how many targets it has."""
        self._update(total=total, done=0)

    def step(self, text: str) -> None:
        """The step starting now ("base: UMAP of 795 points")."""
        log.info("%s job: %s", self.status.kind, text)
        self._update(step=text)

    def advance(self, done: int) -> None:
        """`done` targets are finished."""
        self._update(done=done)

    def finish(self, message: str, *, failed: bool = False) -> JobStatus:
        return self._update(state="failed" if failed else "done", message=message)


def claim_job(
    settings: Settings, kind: str, request: Sequence[str], *, wait: bool = False
) -> JobReporter:
    """Take the `kind` job's status for this process: the one its starter wrote, or a new one
    (a job run in the foreground). While another live job of the kind holds it: JobError, or,
    with `wait`, wait for that job to end first."""
    folder = settings.jobs_dir
    while True:
        with _locked(folder, kind):
            current = read_status(folder, kind)
            ours = current is not None and current.pid == os.getpid()
            if current is None or ours or not current.live:
                tag = current.tag if current is not None and ours else ""
                status = JobStatus.new(kind, "running", request, os.getpid(), tag)
                _write(folder, status)
                return JobReporter(folder, status)
        if not wait:
            raise JobError(
                f"A {kind} job is already running (pid {current.pid}); one at a time: wait "
                "for it to finish."
            )
        time.sleep(1.0)


def run_job(reporter: JobReporter, body: Callable[[JobReporter], str]) -> JobStatus:
    """Run a claimed job's `body` (it returns a summary) and leave its status done or failed:
    a user's mistake as its sentence; anything else with its type, then raised again."""
    try:
        summary = body(reporter)
    except LookalikeError as exc:
        return reporter.finish(str(exc), failed=True)
    except Exception as exc:
        reporter.finish(f"{type(exc).__name__}: {exc}", failed=True)
        raise
    return reporter.finish(summary)
