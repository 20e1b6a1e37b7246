"""The allocator tuning: freed tensor memory is reused, not faulted in again for each batch."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from core.encoder import allocator

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# 40 batches' worth of a 64 MB tensor (a batch's activations are this large: above the 32 MB
# ceiling of glibc's self-raising mmap threshold), each freed before the next: the page faults
# of them all. (Tuned, the first few still fault: a freed chunk serves an aligned request of
# the same size only once freed neighbours have coalesced; the arena then stops growing.)
PROBE = """
import resource, sys
import torch
from core.encoder.allocator import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "tune" else False
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    torch.ones(16 * 1024 * 1024).sum()
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str, **env: str) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    tuned, count = result.stdout.split()
    return tuned == "True", int(count)


def huge_pages_always() -> bool:
    """Transparent huge pages for every mapping: faults then count 2 MB pages, not 4 kB ones."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as handle:
            return "[always]" in handle.read()
    except OSError:
        return False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the tuning is glibc's mallopt")
@pytest.mark.skipif(huge_pages_always(), reason="page faults count huge pages here")
def test_freed_memory_is_reused_instead_of_faulted_in_again() -> None:
    tuned, reused = faults("tune")
    untuned, fresh = faults("plain")
    assert tuned and not untuned
    assert fresh >= 40 * 16_000  # every batch: 64 MB of 4 kB pages, touched afresh
    assert reused < fresh / 2


def test_the_environment_keeps_its_own_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert allocator._tune() is False
    assert faults("tune", MALLOC_MMAP_THRESHOLD_="131072")[0] is False


def test_it_is_decided_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(allocator, "_tuned", None)
    monkeypatch.setattr(allocator, "_tune", lambda: calls.append(1) or True)
    assert allocator.keep_freed_memory() and allocator.keep_freed_memory()
    assert calls == [1]


RELEASE = """
import torch
from core.encoder.allocator import keep_freed_memory, release_freed_memory
def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20
assert keep_freed_memory()
batch = [torch.ones(16 * 1024 * 1024) for _ in range(8)]  # 512 MB
del batch
kept = resident_mb()
release_freed_memory()
print(kept, resident_mb())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the tuning is glibc's mallopt")
def test_releasing_hands_the_kept_memory_back() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result = subprocess.run(
        [sys.executable, "-c", RELEASE], cwd=ROOT, env=clean, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    kept, released = (int(x) for x in result.stdout.split())
    assert kept - released >= 400
