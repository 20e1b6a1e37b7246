"""The demo gallery fetcher, driven by a fake apt-get / dpkg: no network, no real packages."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from core.gallery import demo
from core.gallery.demo import DEMO_PACKAGE, STAMPS_SUBDIR, DemoDataError, fetch_demo_stamps

DEB_NAME = f"{DEMO_PACKAGE}_1.0_all.deb"
NOT_FOUND = f"E: Unable to locate package {DEMO_PACKAGE}"


def kind_of(command: list[str]) -> str:
    """What a command does: "download", "update", "unpack", or the command itself."""
    if command[:2] == ["dpkg", "-x"] and len(command) == 4:
        return "unpack"
    if command[0] == "apt-get" and "update" in command:
        return "update"
    if command[0] == "apt-get" and "download" in command and DEMO_PACKAGE in command:
        return "download"
    return " ".join(command)


class FakeApt:
    """A `run` callable that records commands and behaves like apt-get and dpkg would.

    `download_failures` downloads fail (exit 100) before one succeeds by writing the .deb into
    the working directory; `dpkg -x DEB DIR` unpacks one stamp, resolving paths against cwd.
    """

    def __init__(
        self, *, download_failures: int = 0, update_ok: bool = True, dpkg_ok: bool = True
    ) -> None:
        self.download_failures = download_failures
        self.update_ok = update_ok
        self.dpkg_ok = dpkg_ok
        self.calls: list[tuple[list[str], Path]] = []

    @property
    def kinds(self) -> list[str]:
        """Each command reduced to what it does, in order."""
        return [kind_of(command) for command, _ in self.calls]

    def __call__(self, command: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        command = list(command)
        self.calls.append((command, Path(cwd)))
        kind = kind_of(command)
        if kind == "update":
            return self._done(command, 0 if self.update_ok else 100, "E: Permission denied")
        if kind == "download":
            if self.download_failures > 0:
                self.download_failures -= 1
                return self._done(command, 100, NOT_FOUND)
            (Path(cwd) / DEB_NAME).write_bytes(b"!<arch>\nfake deb")
            return self._done(command, 0)
        if kind == "unpack":
            deb, target = Path(cwd) / command[2], Path(cwd) / command[3]
            if not self.dpkg_ok or not deb.is_file():
                return self._done(command, 2, f"dpkg-deb: error: failed to read archive '{deb}'")
            stamp = target / STAMPS_SUBDIR / "animals" / "cats" / "a.png"
            stamp.parent.mkdir(parents=True)
            stamp.write_bytes(b"\x89PNG fake")
            return self._done(command, 0)
        raise AssertionError(f"unexpected command {command}")

    @staticmethod
    def _done(command: list[str], code: int, stderr: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, code, stdout="", stderr=stderr)


@pytest.fixture(autouse=True)
def tools_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend apt-get and dpkg exist, whatever this machine has."""
    monkeypatch.setattr(demo.shutil, "which", lambda tool: f"/usr/bin/{tool}")


@pytest.fixture
def demo_dir(tmp_path: Path) -> Path:
    return tmp_path / "data" / "demo"


def test_fetch_updates_after_a_failed_download_unpacks_and_cleans_up(demo_dir: Path):
    fake = FakeApt(download_failures=1)

    stamps = fetch_demo_stamps(demo_dir, run=fake)

    assert stamps == demo_dir.resolve() / "root" / "usr/share/tuxpaint/stamps"
    assert (stamps / "animals" / "cats" / "a.png").read_bytes() == b"\x89PNG fake"
    assert fake.kinds == ["download", "update", "download", "unpack"]
    assert {cwd for _, cwd in fake.calls} == {demo_dir.resolve()}
    unpack = fake.calls[-1][0]
    assert Path(demo_dir.resolve(), unpack[2]).name == DEB_NAME
    assert list(demo_dir.glob("*.deb")) == []  # the big package file is not kept


def test_fetch_skips_the_update_when_the_first_download_works(demo_dir: Path):
    fake = FakeApt()

    fetch_demo_stamps(demo_dir, run=fake)

    assert fake.kinds == ["download", "unpack"]


def test_a_second_fetch_runs_no_command(demo_dir: Path, monkeypatch: pytest.MonkeyPatch):
    first = fetch_demo_stamps(demo_dir, run=FakeApt())
    monkeypatch.setattr(demo.shutil, "which", lambda tool: None)  # not even needed any more
    again = FakeApt()

    assert fetch_demo_stamps(demo_dir, run=again) == first
    assert again.calls == []


def test_fetch_works_with_a_relative_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # The default data dir is ./data; paths handed to commands run in demo_dir must still resolve.
    monkeypatch.chdir(tmp_path)

    stamps = fetch_demo_stamps(Path("data/demo"), run=FakeApt())

    assert (stamps / "animals" / "cats" / "a.png").is_file()
    assert stamps.resolve() == (tmp_path / "data/demo/root" / STAMPS_SUBDIR).resolve()


def test_a_failed_update_is_a_demo_data_error(demo_dir: Path):
    fake = FakeApt(download_failures=1, update_ok=False)

    with pytest.raises(DemoDataError, match=r"apt-get update failed \(E: Permission denied\)"):
        fetch_demo_stamps(demo_dir, run=fake)

    assert fake.kinds == ["download", "update"]


def test_a_download_that_keeps_failing_reports_apt_gets_message(demo_dir: Path):
    fake = FakeApt(download_failures=2)

    with pytest.raises(DemoDataError) as excinfo:
        fetch_demo_stamps(demo_dir, run=fake)

    assert NOT_FOUND in str(excinfo.value)
    assert fake.kinds == ["download", "update", "download"]  # one update, one retry


def test_a_failed_unpack_is_a_demo_data_error_and_a_retry_starts_over(demo_dir: Path):
    with pytest.raises(DemoDataError, match="dpkg-deb: error: failed to read archive"):
        fetch_demo_stamps(demo_dir, run=FakeApt(dpkg_ok=False))

    retry = FakeApt()
    stamps = fetch_demo_stamps(demo_dir, run=retry)

    assert retry.kinds == ["download", "unpack"]
    assert (stamps / "animals" / "cats" / "a.png").is_file()


@pytest.mark.parametrize("missing", ["apt-get", "dpkg"])
def test_a_missing_tool_is_a_demo_data_error_pointing_to_ingest(
    demo_dir: Path, monkeypatch: pytest.MonkeyPatch, missing: str
):
    monkeypatch.setattr(
        demo.shutil, "which", lambda tool: None if tool == missing else f"/usr/bin/{tool}"
    )
    fake = FakeApt()

    with pytest.raises(DemoDataError) as excinfo:
        fetch_demo_stamps(demo_dir, run=fake)

    message = str(excinfo.value)
    assert f"{missing} is not available" in message
    assert DEMO_PACKAGE in message
    assert "ingest" in message
    assert fake.calls == []


def test_run_is_non_interactive_with_no_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    seen: dict[str, object] = {}

    def fake_run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen["command"] = command
        seen.update(kwargs)
        return subprocess.CompletedProcess(command, 0, stdout="", stderr="")

    monkeypatch.setenv("LOOKALIKE_TEST_MARKER", "kept")
    monkeypatch.setattr(demo.subprocess, "run", fake_run)

    demo._run(("apt-get", "update", "-y"), tmp_path)

    assert seen["command"] == ["apt-get", "update", "-y"]
    assert seen["cwd"] == tmp_path
    assert seen["stdin"] is subprocess.DEVNULL
    env = seen["env"]
    assert isinstance(env, dict)
    assert env["DEBIAN_FRONTEND"] == "noninteractive"
    assert env["LOOKALIKE_TEST_MARKER"] == "kept"  # the rest of the environment passes through


def test_run_really_gives_the_child_an_empty_stdin_and_the_environment(tmp_path: Path):
    script = (
        "import os, sys; print(os.environ['DEBIAN_FRONTEND'], repr(sys.stdin.read()), os.getcwd())"
    )

    result = demo._run([sys.executable, "-c", script], tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["noninteractive", "''", str(tmp_path.resolve())]
