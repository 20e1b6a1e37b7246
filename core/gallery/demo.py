"""The demo gallery: Debian's `tuxpaint-stamps-default`, ~800 photo cut-outs in category folders.

Fetched with `apt-get download` (no root needed for that, but a fresh machine may need
`apt-get update` first, which does) and unpacked with `dpkg -x` under `data/demo/`. Idempotent:
a completed unpack is marked and reused. `fetch_package` does the same for the other demo sets'
packages (`core.gallery.fashion`), each in a folder of its own below `data/demo/`.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from core.errors import LookalikeError

log = logging.getLogger(__name__)

DEMO_PACKAGE = "tuxpaint-stamps-default"
STAMPS_SUBDIR = Path("usr/share/tuxpaint/stamps")
DEMO_EXTENSIONS = frozenset({".png"})  # the photo stamps; their sounds, texts and SVGs stay out
_DONE_MARKER = ".unpacked"

Runner = Callable[[Sequence[str], Path], subprocess.CompletedProcess[str]]


class DemoDataError(LookalikeError, RuntimeError):
    """The demo gallery cannot be fetched here; the message says why and what to do instead."""


def _run(command: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(
        list(command), cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )


def _download(workdir: Path, package: str, run: Runner) -> Path:
    """`apt-get download` the package into `workdir`, refreshing the package lists if needed."""
    # Download as root without handing the file to the _apt sandbox user (it cannot write here).
    download = ["apt-get", "-o", "APT::Sandbox::User=root", "download", "-y", package]
    result = run(download, workdir)
    if result.returncode != 0:
        log.info("apt-get download failed (%s); running apt-get update", result.stderr.strip())
        update = run(["apt-get", "update", "-y"], workdir)
        if update.returncode != 0:
            raise DemoDataError(
                f"apt-get update failed ({update.stderr.strip()[-300:]}); the demo gallery needs "
                "Debian's package lists (and root for the update)."
            )
        result = run(download, workdir)
    debs = sorted(workdir.glob(f"{package}_*.deb"))
    if result.returncode != 0 or not debs:
        raise DemoDataError(f"apt-get could not download {package}: {result.stderr.strip()[-300:]}")
    return debs[-1]


def fetch_package(workdir: Path, package: str, content: Path, run: Runner | None = None) -> Path:
    """Download and unpack a Debian package once under `workdir/root`; returns `root/content`,
    the folder of the package the caller wants (it must exist after unpacking). `run` runs the
    apt-get and dpkg commands (default: a subprocess, non-interactive, no stdin)."""
    run = run or _run
    workdir = workdir.resolve()  # commands run inside it; paths handed to them must not be relative
    root = workdir / "root"
    wanted = root / content
    if (workdir / _DONE_MARKER).exists() and wanted.is_dir():
        return wanted
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise DemoDataError(
                f"{tool} is not available on this machine: the demo gallery comes from Debian's "
                f"package {package}. Ingest your own images instead with "
                "`python -m core ingest FOLDER --label-from-folders`."
            )
    workdir.mkdir(parents=True, exist_ok=True)
    deb = _download(workdir, package, run)
    shutil.rmtree(root, ignore_errors=True)
    unpacked = run(["dpkg", "-x", str(deb), str(root)], workdir)
    if unpacked.returncode != 0 or not wanted.is_dir():
        raise DemoDataError(
            f"dpkg -x could not unpack {deb.name}: {unpacked.stderr.strip()[-300:]}"
        )
    deb.unlink()  # what we keep is the unpacked content (the stamps' .deb is 160 MB)
    (workdir / _DONE_MARKER).write_text(package + "\n")
    return wanted


def fetch_demo_stamps(demo_dir: Path, run: Runner = _run) -> Path:
    """Download and unpack the stamps once; returns the stamps root (category folders below)."""
    return fetch_package(demo_dir, DEMO_PACKAGE, STAMPS_SUBDIR, run)
