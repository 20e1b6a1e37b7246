"""Threads for a query's encode: the cores other processes leave (core.encoder.threads)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch

from core.encoder.threads import (
    QueryThreads,
    busy_cpu_seconds,
    own_runnable,
    runnable_tasks,
    torch_threads,
)
from core.studio import Studio

TICKS = os.sysconf("SC_CLK_TCK")


class Machine:
    """A fake machine: a clock, busy CPU seconds, this process's CPU seconds, runnable tasks."""

    def __init__(self) -> None:
        self.now = 100.0
        self.busy: float | None = 1000.0
        self.own = 10.0
        self.runnable: int | None = 1
        self.own_runnable = 1

    def advance(self, seconds: float, others: float, ours: float = 0.0) -> None:
        """`seconds` pass with `others` cores busy elsewhere and `ours` here."""
        self.now += seconds
        assert self.busy is not None
        self.busy += (others + ours) * seconds
        self.own += ours * seconds

    def threads(self, most: int = 2) -> QueryThreads:
        return QueryThreads(
            most,
            busy=lambda: self.busy,
            own=lambda: self.own,
            runnable=lambda: self.runnable,
            own_runnable=lambda: self.own_runnable,
            clock=lambda: self.now,
        )


def test_a_quiet_machine_gives_a_query_every_core() -> None:
    machine = Machine()
    threads = machine.threads(2)
    assert threads() == 2
    machine.advance(0.5, others=0.0, ours=1.6)  # our own searches do not count against us
    assert threads() == 2


@pytest.mark.parametrize(("others", "expected"), [(0.2, 4), (1.0, 3), (1.9, 2), (3.0, 1), (7.0, 1)])
def test_a_query_gets_the_cores_other_processes_leave(others: float, expected: int) -> None:
    machine = Machine()
    threads = machine.threads(4)
    threads()
    machine.advance(1.0, others=others, ours=0.5)
    assert threads() == expected


def test_the_first_query_after_a_long_pause_looks_at_what_runs_now() -> None:
    machine = Machine()
    threads = machine.threads(2)
    threads()
    machine.advance(60.0, others=0.0)  # a minute of nothing: says nothing about now
    machine.runnable, machine.own_runnable = 3, 1  # ... but two threads of a job run now
    assert threads() == 1
    machine.advance(60.0, others=0.0)
    machine.runnable, machine.own_runnable = 2, 2  # only our own threads
    assert threads() == 2


def test_calls_too_close_together_look_at_what_runs_now() -> None:
    machine = Machine()
    threads = machine.threads(2)
    threads()
    machine.advance(0.001, others=2.0)  # below the clock's resolution
    machine.runnable = 1
    assert threads() == 2


def test_where_the_machine_does_not_say_the_default_is_kept() -> None:
    machine = Machine()
    machine.busy = None
    assert machine.threads(2)() == 2
    machine = Machine()
    machine.runnable = None
    assert machine.threads(2)() == 2  # no previous call, no instant figure


def test_proc_stat_busy_time_excludes_idle_iowait_and_guest(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 20 30 5000 400 5 6 7 50 0\ncpu0 1 2 3 4\nintr 1 2 3\n")
    assert busy_cpu_seconds(stat) == pytest.approx((100 + 20 + 30 + 5 + 6 + 7) / TICKS)
    stat.write_text("intr 1 2\n")
    assert busy_cpu_seconds(stat) is None
    assert busy_cpu_seconds(tmp_path / "missing") is None


def test_loadavg_and_task_states_are_read(tmp_path: Path) -> None:
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("0.52 0.31 0.20 3/412 8812\n")
    assert runnable_tasks(loadavg) == 3
    loadavg.write_text("garbage\n")
    assert runnable_tasks(loadavg) is None
    tasks = tmp_path / "task"
    for tid, state in [("10", "R"), ("11", "S"), ("12", "R")]:
        (tasks / tid).mkdir(parents=True)
        (tasks / tid / "stat").write_text(f"{tid} (py) thread) {state} 1 2 3\n")
    assert own_runnable(tasks) == 2
    assert own_runnable(tmp_path / "none") == 1


def test_the_real_machine_answers() -> None:
    """On Linux the real readers work; this test process is running, so it counts itself."""
    if not Path("/proc/stat").exists():
        pytest.skip("no /proc here")
    assert (busy_cpu_seconds() or 0) > 0
    assert (runnable_tasks() or 0) >= 1
    assert own_runnable() >= 1
    assert 1 <= QueryThreads(2)() <= 2


def several_threads() -> int:
    """torch's thread count here, skipping on a one-core machine (nothing to lower)."""
    count = torch.get_num_threads()
    if count < 2:
        pytest.skip("torch runs on one thread here")
    return count


def test_torch_threads_sets_the_count_for_the_block_only() -> None:
    before = several_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("restored even so")
    assert torch.get_num_threads() == before


def test_torch_threads_in_one_thread_leaves_another_threads_count() -> None:
    before = several_threads()
    inside, seen = threading.Event(), []

    def session() -> None:
        with torch_threads(1):
            inside.set()
            release.wait(5)

    release = threading.Event()
    worker = threading.Thread(target=session)
    worker.start()
    inside.wait(5)
    seen.append(torch.get_num_threads())
    release.set()
    worker.join()
    assert seen == [before]


def test_a_query_is_encoded_on_the_threads_the_policy_gives(studio: Studio) -> None:
    from PIL import Image

    counts: list[int] = []
    encoder = studio.encoder()
    original = encoder.encode

    def spy(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        counts.append(torch.get_num_threads())
        return original(*args, **kwargs)  # type: ignore[arg-type]

    encoder.encode = spy  # type: ignore[method-assign]
    studio.query_threads = lambda: 1
    before = several_threads()
    vectors = studio.encode_queries([Image.new("RGB", (32, 32), "red")])
    assert counts == [1] and vectors.shape == (1, encoder.dim)
    assert torch.get_num_threads() == before
