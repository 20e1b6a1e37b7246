"""How many threads one query's encode may use: all the cores when the machine is otherwise
quiet, fewer while other work runs.

A query encode is a few milliseconds of torch work split across its OpenMP threads, and each
parallel region waits for its slowest thread. When another process keeps the cores busy (a
background job: the index lab, training, a map) one of those threads can sit behind it, and
the whole encode with it: on the 2-core VM the README describes, searches beside the index lab
stalled for up to 1.7 s with two threads (p95 0.3-1.0 s), while with one thread they stayed
under a tenth of a second at p95. Background jobs already run under SCHED_IDLE
(`core.measure.jobs`); that alone did not remove the stalls.

So before each query encode, `QueryThreads` measures how many cores other processes used since
the previous query: the machine's busy CPU time (/proc/stat) minus this process's own
(`os.times`), over the wall time between the two calls. When the previous call is too old to
say anything about now (longer ago than `window_seconds`), it counts the threads runnable at
this instant instead (/proc/loadavg's fourth field, less this process's runnable threads). A
query gets the cores the others leave, at least one and at most torch's default. Where /proc
cannot be read the default is used: the same as before this module existed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

PROC_STAT = Path("/proc/stat")
LOADAVG = Path("/proc/loadavg")
OWN_TASKS = Path("/proc/self/task")
WINDOW_SECONDS = 5.0
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def busy_cpu_seconds(stat: Path = PROC_STAT) -> float | None:
    """CPU seconds the whole machine has spent busy since boot (not idle, not waiting on
    I/O), or None where /proc/stat cannot be read."""
    try:
        with stat.open() as file:
            fields = file.readline().split()
        if fields[0] != "cpu":
            return None
        ticks = [int(value) for value in fields[1:]]
    except (OSError, IndexError, ValueError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    guest = sum(ticks[8:10])  # guest time is counted in user time already
    return (sum(ticks) - idle - guest) / _TICKS


def own_cpu_seconds() -> float:
    """CPU seconds this process has used, all its threads."""
    times = os.times()
    return times.user + times.system


def runnable_tasks(loadavg: Path = LOADAVG) -> int | None:
    """Runnable threads on the machine now (including the caller), or None if unknown."""
    try:
        field = loadavg.read_text().split()[3]  # "running/total"
        return int(field.split("/")[0])
    except (OSError, IndexError, ValueError):
        return None


def own_runnable(tasks: Path = OWN_TASKS) -> int:
    """This process's runnable threads (at least 1: the caller)."""
    count = 0
    try:
        names = os.listdir(tasks)
    except OSError:
        return 1
    for name in names:
        try:
            stat = (tasks / name / "stat").read_text()
        except OSError:  # the thread ended while we looked
            continue
        count += stat.rsplit(")", 1)[-1].split()[0] == "R"  # after the name, which may hold ")"
    return max(count, 1)


@dataclass(frozen=True)
class _Sample:
    when: float
    busy: float  # the machine's busy CPU seconds
    own: float  # this process's CPU seconds


class QueryThreads:
    """Call it before a query encode: the number of threads that encode should use."""

    def __init__(
        self,
        most: int | None = None,
        *,
        window_seconds: float = WINDOW_SECONDS,
        busy: Callable[[], float | None] = busy_cpu_seconds,
        own: Callable[[], float] = own_cpu_seconds,
        runnable: Callable[[], int | None] = runnable_tasks,
        own_runnable: Callable[[], int] = own_runnable,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.most = most or torch.get_num_threads()
        self.window_seconds = window_seconds
        self._busy, self._own, self._clock = busy, own, clock
        self._runnable, self._own_runnable = runnable, own_runnable
        self._last: _Sample | None = None
        self._lock = threading.Lock()

    def others_now(self) -> int | None:
        """Runnable threads of other processes at this instant, or None if unknown."""
        total = self._runnable()
        if total is None:
            return None
        if total <= 1:  # only the caller: no need to look at our own threads
            return 0
        return max(total - self._own_runnable(), 0)

    def others(self) -> float | None:
        """Cores other processes kept busy since the previous call (or at this instant, when
        that call is older than the window); None where the machine does not say."""
        busy = self._busy()
        if busy is None:
            return None
        now = _Sample(self._clock(), busy, self._own())
        with self._lock:
            last, self._last = self._last, now
        elapsed = now.when - last.when if last is not None else 0.0
        if last is None or not 0.05 <= elapsed <= self.window_seconds:
            instant = self.others_now()
            return None if instant is None else float(instant)
        return max((now.busy - last.busy) - (now.own - last.own), 0.0) / elapsed

    def __call__(self) -> int:
        others = self.others()
        if others is None:
            return self.most
        return max(1, min(self.most, self.most - round(others)))


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block's torch work on `n` intra-op threads, then restore the previous count.

    torch keeps the count per calling thread (OpenMP's and MKL's settings are thread-local),
    so a Streamlit session encoding on one thread does not change another session's. Only a
    thread that first runs torch work during the block starts from `n` (torch's default for
    new threads changes with the call too) until it sets its own."""
    before = torch.get_num_threads()
    if n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
