"""The app under load, in a real browser: N people at once upload, wait for results, label one.

`serve_app` starts `streamlit run app.py` on a free loopback port (the browser tests use it
too); `browser_load` drives N concurrent Chromium sessions (Playwright's async API: one browser,
one context per person) against a scratch copy of a data directory, so the benchmark's rows
never enter the real log. Time-to-results runs from handing the file to the upload box to the
moment every result image of the new list is decoded on screen (checked in the page, on each
animation frame). Afterwards the log is audited: one query per upload, exactly k impressions
each and exactly the one label each person gave — no more, no less.

The only module that imports playwright (a development requirement: `requirements-dev.txt`).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import LookalikeError
from core.measure.jobs import KINDS, read_status, stop_jobs
from core.store import Store

ROOT = Path(__file__).resolve().parents[2]  # the project folder, where app.py lives
CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    # This machine has no internet: without these, chromium keeps dialling Google's services.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
# In the page: every result image of the list for `name` decoded, none left from the last run.
_RESULTS_READY = """([name, count]) => {
  const main = document.querySelector('[data-testid="stMain"]');
  if (!main || document.querySelector('[data-testid="stStatusWidget"]')) return false;
  const captions = [...main.querySelectorAll('[data-testid="stImageCaption"]')];
  if (!captions.some(c => c.innerText.includes(name) && !c.closest('[data-stale="true"]')))
    return false;
  const images = [...main.querySelectorAll('[data-testid="stImage"] img')];
  if (images.length < count + 1) return false;
  return images.every(img => img.complete && img.naturalWidth > 0 &&
                             !img.closest('[data-stale="true"]'));
}"""


TIMEOUT_MS = 120_000  # an upload whose results take longer fails the benchmark
LABEL_WAIT_MS = 30_000  # a press not drawn as pressed by then counts as a lost label
_BENCH_KINDS = ("impression", "similar")  # the only rows the benchmark's people leave


# In the page: the second result's Similar button is drawn pressed, and no script runs.
_LABEL_SHOWN = """() => {
  if (document.querySelector('[data-testid="stStatusWidget"]')) return false;
  const main = document.querySelector('[data-testid="stMain"]');
  const pressed = main.querySelectorAll('[data-testid="stBaseButton-primary"]');
  return [...pressed].some(b => b.innerText.trim().endsWith("Similar") &&
                               !b.closest('[data-stale="true"]'));
}"""


class LoadBenchError(LookalikeError):
    """The load benchmark cannot run here (no browser, no Playwright, an empty gallery)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, process: subprocess.Popen[bytes], seconds: float = 90) -> None:
    """Until Streamlit's health endpoint answers "ok"; an early exit or a time-out raises."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LoadBenchError(f"streamlit exited early with code {process.returncode}.")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise LoadBenchError(f"streamlit did not answer at {url} within {seconds:.0f} s.")


def serve_app(
    data_dir: Path, encoder: str | None, log: Path
) -> tuple[str, subprocess.Popen[bytes]]:
    """`streamlit run app.py` on 127.0.0.1 and a free port, serving `data_dir` (with
    `encoder` as the base encoder when given); returns its URL and process."""
    port = free_port()
    env = {**os.environ, "LOOKALIKE_DATA": str(data_dir)}
    if encoder:
        env["LOOKALIKE_ENCODER"] = encoder
    command = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py")]
    command += ["--server.port", str(port), "--server.address", "127.0.0.1"]
    command += ["--server.headless", "true"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
    except BaseException:
        process.kill()
        raise
    return url, process


def chromium() -> str:
    """Debian's chromium (`make browser`); Playwright cannot download its own browsers here."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise LoadBenchError("chromium is not installed: `make browser` installs it.")
    return path


@dataclass(frozen=True)
class Upload:
    user: int
    round: int
    seconds: float  # file handed to the upload box -> every result image decoded
    labelled: bool  # the Similar press was drawn as pressed (within LABEL_WAIT_MS)


async def _person(
    browser: Any,
    url: str,
    user: int,
    queries: list[Path],
    k: int,
    ready: asyncio.Event,
    start: asyncio.Event,
    shots: Path,
) -> list[Upload]:
    """One person: open the app, then per query upload, wait for results, mark #2 similar."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1100})
    page = await context.new_page()
    await page.goto(url, wait_until="domcontentloaded")
    await page.get_by_text("Search by image").wait_for(timeout=120_000)
    ready.set()
    await start.wait()
    done: list[Upload] = []
    for number, query in enumerate(queries):
        started = time.perf_counter()
        await page.locator('input[type="file"]').first.set_input_files(str(query))
        try:
            await page.wait_for_function(
                _RESULTS_READY, arg=[query.name, k], polling="raf", timeout=TIMEOUT_MS
            )
        except Exception as exc:  # playwright's TimeoutError: the results never showed
            shots.mkdir(parents=True, exist_ok=True)
            shot = shots / f"load-timeout-{query.stem}.png"
            await page.screenshot(path=str(shot), full_page=True)
            raise LoadBenchError(
                f"Person {user}'s upload {number + 1} showed no results within "
                f"{TIMEOUT_MS / 1000:.0f} s (screenshot: {shot})."
            ) from exc
        seconds = time.perf_counter() - started
        main = page.locator('[data-testid="stMain"]')
        similar = main.get_by_role("button").filter(has_text=re.compile("Similar$"))
        await similar.nth(1).click()  # result #2 (a regex: "Not similar" must not match)
        try:  # the label is on screen (the button turned primary) and no run is left
            await page.wait_for_function(_LABEL_SHOWN, timeout=LABEL_WAIT_MS)
            labelled = True
        except Exception:  # playwright's TimeoutError: counted, and the log audited for it
            labelled = False
        done.append(Upload(user, number, seconds, labelled))
    await context.close()
    return done


async def _drive(
    url: str, users: int, queries: list[list[Path]], k: int, shots: Path
) -> tuple[list[Upload], float]:
    """Everyone's uploads, and the seconds from the moment all pages were open (the app's
    first load, which loads the encoder, is not counted) to the last label."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium(), args=list(CHROMIUM_FLAGS)
        )
        ready = [asyncio.Event() for _ in range(users)]
        start = asyncio.Event()
        people = [
            asyncio.create_task(_person(browser, url, n, queries[n], k, ready[n], start, shots))
            for n in range(users)
        ]
        opened = asyncio.gather(*(event.wait() for event in ready))
        waiting: list[asyncio.Future[Any]] = [opened, *people]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED, timeout=300)
        for person in people:  # a page that failed to open fails the run, not hangs it
            if person.done() and person.exception():
                opened.cancel()
                raise person.exception()  # type: ignore[misc]
        if not opened.done():
            raise LoadBenchError("The app's pages did not open within 300 s.")
        started = time.perf_counter()
        start.set()
        results = await asyncio.gather(*people)
        elapsed = time.perf_counter() - started
        await browser.close()
    return [upload for person in results for upload in person], elapsed


def audit_log(
    store: Store, after_query: int, uploads: int, k: int, labels: int
) -> dict[str, int | bool]:
    """The benchmark's rows (queries logged after `after_query`): one query per upload, k
    impressions each, and exactly one `similar` row per press drawn as pressed (`labels`)."""
    log = store.feedback.interactions(with_query_id=True)
    log = log[log.QueryID > after_query]
    queries = log.QueryID.nunique()  # every logged search has its impressions
    kinds = {str(kind): int(n) for kind, n in log.InteractionType.value_counts().items()}
    per_query = log[log.InteractionType == "impression"].groupby("QueryID").size()
    exact = (
        queries == uploads
        and kinds == {"impression": uploads * k, **({"similar": labels} if labels else {})}
        and bool((per_query == k).all())
    )
    return {
        "log_queries": int(queries),
        "log_impressions": int(kinds.get("impression", 0)),
        "log_labels": int(kinds.get("similar", 0)),
        "log_other_rows": int(
            sum(kinds.values()) - kinds.get("impression", 0) - kinds.get("similar", 0)
        ),
        "log_exact": bool(exact),
    }


def _jobs_started(folder: Path) -> list[str]:
    """The kinds of background job with a status under `folder`: in the scratch copy (made
    without jobs/), the ones the app started during the run."""
    return [kind for kind in KINDS if read_status(folder, kind) is not None]


def browser_load(
    data_dir: Path, users: int, rounds: int = 3, k: int = 10, encoder: str | None = None
) -> dict[str, object]:
    """N concurrent people, `rounds` uploads each, against a scratch copy of `data_dir`'s
    gallery, whose log is audited for the benchmark's queries only. Query images are gallery
    images, a different one for every upload."""
    if users < 1 or rounds < 1:
        raise LoadBenchError("--browser-users and the rounds must be at least 1.")
    with tempfile.TemporaryDirectory(prefix="lookalike-load-") as tmp:
        scratch = Path(tmp) / "data"
        # without jobs/: a copied status of a job running on the real data directory would
        # read as live here, and be stopped below
        shutil.copytree(data_dir, scratch, ignore=shutil.ignore_patterns("logs", "*.log", "jobs"))
        store = Store(scratch / "catalog.db")
        earlier = store.feedback.interactions(with_query_id=True).QueryID
        after_query = int(earlier.max()) if len(earlier) else 0  # the copy's own log stays
        files = [record.file for record in sorted(store.list_images(), key=lambda r: r.id)]
        if len(files) < users * rounds:
            raise LoadBenchError("The gallery has too few images for that many uploads.")
        picks = np.random.default_rng(0).choice(len(files), users * rounds, replace=False)
        queries: list[list[Path]] = []
        for user in range(users):
            mine = []
            for number in range(rounds):
                source = scratch / "images" / files[int(picks[user * rounds + number])]
                target = Path(tmp) / f"user{user}-query{number}{source.suffix}"
                shutil.copyfile(source, target)
                mine.append(target)
            queries.append(mine)
        url, process = serve_app(scratch, encoder, Path(tmp) / "streamlit.log")
        try:
            uploads, wall = asyncio.run(_drive(url, users, queries, k, data_dir / "logs"))
            shown = sum(upload.labelled for upload in uploads)
            audit = audit_log(store, after_query, users * rounds, k, shown)
        finally:
            process.terminate()
            process.wait(timeout=30)
            background = _jobs_started(scratch / "jobs")
            stop_jobs(scratch / "jobs")  # before the copy goes: a job would write into it
    seconds = np.array([u.seconds for u in uploads])
    return {
        "users": users,
        "uploads": len(uploads),
        "time_to_results_p50_s": round(float(np.percentile(seconds, 50)), 3),
        "time_to_results_p95_s": round(float(np.percentile(seconds, 95)), 3),
        "time_to_results_max_s": round(float(seconds.max()), 3),
        "searches_per_s": round(len(uploads) / wall, 3),
        "labels_not_shown": sum(not upload.labelled for upload in uploads),
        "background_jobs": background,  # jobs the app started during the run (sharing the cores)
        **audit,
    }
