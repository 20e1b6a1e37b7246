"""Background training: a job runs in its own process, never in a Streamlit script thread.

`start_training` queues a run in the store (one live run at a time) and starts
`python -m core train-job RUN_ID` in a new session, so closing the browser — or restarting the
app — does not stop it. The job writes its progress (epoch, step, loss, ETA) and per-epoch
losses to the store, where the Train page polls them, and checks for a cancel request at
every step. A cancelled or failed run writes no version (see `core.learn.finetune`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from core.config import Settings
from core.learn.finetune import fine_tune
from core.learn.training import TrainingCancelled, TrainSettings
from core.store import Store, TrainingRun
from core.studio import Studio

ROOT = Path(__file__).resolve().parents[2]  # the project folder, where `python -m core` runs


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale(store: Store) -> None:
    """Mark live runs whose process is gone (killed, machine restarted) as failed."""
    for run in store.training.runs(limit=5):
        if run.live and run.pid is not None and not _alive(run.pid):
            store.training.update(
                run.id, status="failed", message="The training process ended unexpectedly."
            )


def start_training(settings: Settings, train: TrainSettings) -> TrainingRun:
    """Queue a run and start its process; raises StoreError while another run is live."""
    store = Store(settings.catalog_path)
    reap_stale(store)
    run = store.training.queue(store.active_version().version, asdict(train))
    log = (settings.data_dir / "logs").resolve()
    log.mkdir(parents=True, exist_ok=True)
    with (log / f"train-{run.id}.log").open("ab") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "core",
                "train-job",
                str(run.id),
                "--data-dir",
                str(settings.data_dir.resolve()),
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the app and the browser session that started it
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    store.training.update(run.id, pid=process.pid)
    return store.training.get(run.id)


class StoreProgress:
    """Training callback: progress into the store, cancellation out of it."""

    def __init__(self, store: Store, run_id: int, epochs: int) -> None:
        self.store, self.run_id, self.epochs = store, run_id, epochs
        # (time, steps done) at the first step: the ETA is the training rate since then, not
        # counting the pass over the gallery before it (taps, a tower's prefix)
        self.first: tuple[float, int] | None = None
        self.losses: list[dict[str, Any]] = []
        self._last_write = 0.0

    def _check_cancel(self) -> None:
        if self.store.training.get(self.run_id).status == "cancelling":
            raise TrainingCancelled("Cancelled from the Train page.")

    def on_step(self, epoch: int, step: int, steps: int, loss: float) -> None:
        now = time.monotonic()
        done = (epoch - 1) * steps + step
        if self.first is None:
            self.first = (now, done)
        elif now - self._last_write < 0.5 and step != steps:  # a few writes a second at most
            return
        self._last_write = now
        since, measured = now - self.first[0], done - self.first[1]
        eta = round(since / measured * (self.epochs * steps - done), 1) if measured else None
        progress = {
            "epoch": epoch,
            "epochs": self.epochs,
            "step": step,
            "steps": steps,
            "loss": loss,
            "eta_s": eta,
        }
        self.store.training.update(self.run_id, progress=progress)
        self._check_cancel()

    def on_epoch(self, epoch: int, train_loss: float, val_loss: float | None) -> None:
        self.losses.append({"epoch": epoch, "train": train_loss, "val": val_loss})
        self.store.training.update(self.run_id, losses=self.losses)
        self._check_cancel()


def run_training_job(studio: Studio, run_id: int) -> TrainingRun:
    """The job process's body: train, and leave the run done, cancelled or failed."""
    training = studio.store.training
    run = training.get(run_id)
    if run.status != "queued":
        return run
    training.update(
        run_id, status="running", pid=os.getpid(), message="Reading the gallery, then training."
    )
    settings = TrainSettings(**run.settings)
    callback = StoreProgress(studio.store, run_id, settings.epochs)
    try:
        report = fine_tune(studio, settings, callbacks=[callback])
    except TrainingCancelled:
        training.update(run_id, status="cancelled", message="Cancelled; nothing was written.")
    except Exception as exc:  # the page must learn why; the version was cleaned up
        training.update(run_id, status="failed", message=f"{type(exc).__name__}: {exc}")
    else:
        before, after = report.metrics_before["map"], report.metrics_after["map"]
        message = f"{report.version}: test mAP@10 {before:.4f} -> {after:.4f}"
        for name, found in report.label_sets.items():  # seen, unseen categories
            message += f"; {name} {found['before']['map']:.4f} -> {found['after']['map']:.4f}"
        training.update(run_id, status="done", version=report.version, message=message)
    return training.get(run_id)
