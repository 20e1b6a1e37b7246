"""A new base version as a background job: what the Train page's "New base" control starts.

`python -m core base-job ENCODER` does what `new-base` does (`new_base_and_evaluate`): a
parentless version with the encoder's shipped weights, the whole gallery indexed into its own
collection, its forward speed timed, the whole-gallery and test-split evaluations stored. The
job reports the indexing as it goes, runs at idle priority (searches keep their cores,
`jobs.idle_priority`; so a search during the timing lowers the speed it records) and leaves
the version inactive: activation stays a person's choice.
"""

from __future__ import annotations

from collections.abc import Callable

from core.config import Settings
from core.gallery.ingest import Progress
from core.measure import jobs
from core.measure.bases import measure_speed
from core.measure.evaluation import evaluate
from core.measure.jobs import JobReporter, JobStatus
from core.studio import NewBase, Studio

KIND = "base"
SPLITS = ("all", "test")  # what a base is compared on: the whole gallery, and the loop's split


def new_base_and_evaluate(
    studio: Studio,
    encoder: str,
    progress: Progress | None = None,
    step: Callable[[str], None] | None = None,
) -> NewBase:
    """`Studio.new_base`, its forward speed (on its card: `bases.measure_speed`), then its
    evaluations at k = 10 (labels) on `SPLITS`, stored; `step(text)` names each stage as it
    starts."""
    if step is not None:
        step(f"indexing the gallery with {encoder}")
    made = studio.new_base(encoder, progress)
    if step is not None:
        step(f"timing {made.version}'s encoder")
    measure_speed(studio, made.version)
    if step is not None:
        step(f"evaluating {made.version}")
    for split in SPLITS:
        evaluate(studio, made.version, split, 10, "labels")
    return made


def run_base_job(studio: Studio, encoder: str, *, wait: bool = False) -> JobStatus:
    """`python -m core base-job ENCODER`: claim the job's status, make and evaluate the base."""
    reporter = jobs.claim_job(studio.settings, KIND, [encoder], wait=wait)
    jobs.idle_priority()

    def body(report: JobReporter) -> str:
        begun = False

        def progress(done: int, total: int) -> None:
            nonlocal begun
            if not begun:
                report.begin(total)
                begun = True
            report.advance(done)

        made = new_base_and_evaluate(studio, encoder, progress, report.step)
        return (
            f"{made.version} ({made.encoder}): {made.images} images indexed in "
            f"{made.seconds:.0f} s and evaluated; activate it to search with it."
        )

    return jobs.run_job(reporter, body)


def start_base_job(settings: Settings, encoder: str, *, retry: bool = True) -> JobStatus:
    """Start the job in the background (see `jobs.start_job`); a live one's status instead."""
    return jobs.start_job(settings, KIND, [encoder], retry=retry)


def read_base_status(settings: Settings) -> JobStatus | None:
    return jobs.read_status(settings.jobs_dir, KIND)
