"""Command line: `python -m core COMMAND [--data-dir D] [--json] …` (DESIGN.md, "Command line").

Thin like the pages: parse, call `Studio`, print. With `--json` stdout carries exactly one JSON
document; progress and logs go to stderr. User errors exit 1 with one sentence on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core.choices import (
    DEMO_SETS,
    EVAL_SPLITS,
    EXPORT_FORMATS,
    LABEL_SETS,
    PROJECTION_METHODS,
    RELEVANCE_SOURCES,
    TRAIN_MODES,
)
from core.errors import LookalikeError
from core.search.nn import list_methods


def _progress(label: str) -> Callable[[int, int], None]:
    """Progress on stderr: one line updated in place on a terminal, every 10 % in a log."""
    interactive = sys.stderr.isatty()
    last_tenth = {"value": -1}

    def report(done: int, total: int) -> None:
        if interactive:
            end = "\n" if done >= total else ""
            print(f"\r{label}: {done}/{total}", end=end, file=sys.stderr, flush=True)
            return
        tenth = 10 * done // max(total, 1)
        if tenth != last_tenth["value"]:
            last_tenth["value"] = tenth
            print(f"{label}: {done}/{total}", file=sys.stderr, flush=True)

    return report


def _emit(payload: Any, as_json: bool, text: str) -> None:
    print(json.dumps(payload, indent=2) if as_json else text)


def cmd_ingest(studio: Any, args: argparse.Namespace) -> int:
    report = studio.ingest(
        args.paths, label_from_folders=args.label_from_folders, progress=_progress("ingest")
    )
    return _report_ingest(report, args.json)


def cmd_demo_data(studio: Any, args: argparse.Namespace) -> int:
    report = studio.demo_data(
        progress=_progress("demo-data"), dataset=args.dataset, limit=args.limit
    )
    return _report_ingest(report, args.json)


def _report_ingest(report: Any, as_json: bool) -> int:
    lines = [
        f"added {report.added}, duplicates {report.duplicates}, rejected {len(report.rejected)}"
    ]
    lines += [f"  rejected {r.path}: {r.reason}" for r in report.rejected]
    _emit(report.as_dict(), as_json, "\n".join(lines))
    return 0


def cmd_search(studio: Any, args: argparse.Namespace) -> int:
    from core.gallery.images import ImageError, load_image

    queries: list[dict[str, Any]] = []
    failed = 0
    for path in args.images:
        try:
            image = load_image(path, limits=studio.settings.images).image
        except ImageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            queries.append({"query": path, "error": str(exc), "results": []})
            failed += 1
            continue
        results = studio.search([image], k=args.k)[0]
        queries.append({"query": path, "results": [r.as_dict() for r in results]})
    payload = {"model": studio.active_version().version, "queries": queries}
    text = "\n".join(
        f"{q['query']}\n"
        + "\n".join(
            f"  {r['rank']:>3}  {r['score']:.4f}  {r['label'] or '-':<32} {r['path']}"
            for r in q["results"]
        )
        for q in queries
    )
    _emit(payload, args.json, text)
    return 1 if failed else 0


def cmd_evaluate(studio: Any, args: argparse.Namespace) -> int:
    from core.measure.evaluation import evaluate

    result = evaluate(
        studio,
        args.model,
        args.split,
        args.k,
        args.relevance,
        labels=args.labels,
        labels_of=args.labels_of,
    )
    payload = result.as_dict(per_label=args.per_label)
    asked = "" if result.labels == "all" else f" · {result.labels} labels of {result.labels_of}"
    lines = [
        f"{result.model} · split {result.split} · k={result.k} · relevance {result.relevance}"
        f"{asked}",
        f"{result.n_queries} queries ({result.n_excluded} without a relevant item left out)"
        f" in {result.seconds:.2f} s",
    ]
    for name, (low, high) in result.intervals.items():
        lines.append(f"{name:>15}: {payload[name]:.4f}  [{low:.4f}, {high:.4f}]")
    if args.per_label:
        lines.append(f"{'label':<40} {'queries':>7} {'mAP':>7} {'MRR':>7} {'nDCG':>7}")
        for row in result.per_label:
            lines.append(
                f"{row['label']:<40} {row['n_queries']:>7} {row['map']:>7.3f}"
                f" {row['mrr']:>7.3f} {row['ndcg_at_k']:>7.3f}"
            )
    _emit(payload, args.json, "\n".join(lines))
    return 0


def _version_line(row: dict[str, Any]) -> str:
    """One `models` line: active mark, name, parent, mode and test metrics when trained."""
    metrics, whole = row["metrics"], row["whole_gallery"]
    scores = f" test mAP {metrics['map']:.4f} MRR {metrics['mrr']:.4f}" if metrics else ""
    for name, shown in (("map", "mAP@10"), ("mrr", "MRR@10")):
        if name in whole:
            low, high = whole.get(f"{name}_interval", (whole[name], whole[name]))
            scores += f" gallery {shown} {whole[name]:.4f} [{low:.4f}, {high:.4f}]"
    for name, found in row["label_sets"].items():
        before, after = found["before"].get("map"), found["after"]["map"]
        scores += f" {name} mAP {before:.4f}->{after:.4f}" if before else f" {name} mAP {after:.4f}"
    mode = f" mode={row['mode']}" if row["mode"] else ""
    speed = row["speed"]
    shape = (
        f" {speed['input_px']} px {speed['vector_size']}-d {speed['images_per_s']:.1f} images/s"
        if speed
        else ""
    )
    return (
        f"{'*' if row['active'] else ' '} {row['version']:<10} {row['encoder']}"
        f" ({row['precision']}){shape} parent={row['parent']}{mode}{scores} {row['created_at']}"
    )


def _whole_gallery(studio: Any, version: str) -> dict[str, Any]:
    """The newest stored whole-gallery evaluation (k = 10, labels) of a version, with its 95 %
    intervals: how bases compare before any feedback (`new-base` stores one); {} when none."""
    run = studio.store.runs.latest_evaluation(version, "all", 10, "labels", None)
    if run is None:
        return {}
    keep = ("map", "mrr", "map_interval", "mrr_interval")
    return {key: run.metrics[key] for key in keep if key in run.metrics}


def cmd_models(studio: Any, args: argparse.Namespace) -> int:
    if args.measure:
        from core.measure.bases import measure_speed, unmeasured

        for version in unmeasured(studio):
            measure_speed(studio, version)
    keys = (
        "version",
        "active",
        "parent",
        "encoder",
        "precision",
        "mode",
        "created_at",
        "metrics",
        "seen_labels",
        "label_sets",
    )
    versions = studio.versions()
    rows = [{key: row[key] for key in keys} for row in (v.summary() for v in versions)]
    for row, version in zip(rows, versions, strict=True):
        row["whole_gallery"] = _whole_gallery(studio, row["version"])
        row["speed"] = version.card.get("speed", {})
    _emit(rows, args.json, "\n".join(_version_line(r) for r in rows))
    return 0


def cmd_new_base(studio: Any, args: argparse.Namespace) -> int:
    from core.measure.base_job import new_base_and_evaluate

    made = new_base_and_evaluate(studio, args.encoder, _progress(f"new-base {args.encoder}"))
    payload = made.as_dict()
    text = (
        f"{made.version}: {made.encoder}, {made.images} images indexed in {made.seconds:.1f} s "
        f"(not active: python -m core activate {made.version})"
    )
    _emit(payload, args.json, text)
    return 0


def cmd_activate(studio: Any, args: argparse.Namespace) -> int:
    version = studio.activate(args.version, force=args.force)
    _emit({"active": version.version}, args.json, f"active: {version.version}")
    return 0


def cmd_simulate(studio: Any, args: argparse.Namespace) -> int:
    from core.measure.simulate import ClickModel, simulate

    model = ClickModel(noise=args.noise)
    report = simulate(
        studio,
        n_queries=args.queries,
        seed=args.seed,
        k=args.k,
        model=model,
        exclude_labels=args.exclude_labels,
        exclude_seed=args.exclude_seed,
    )
    payload = report.as_dict()
    text = (
        f"{report.queries} queries, {report.impressions} impressions, "
        f"{report.clicks} clicks, CTR {report.ctr:.4f}"
    )
    if report.excluded_labels:
        text += f"; no feedback on {len(report.excluded_labels)} categories"
    _emit(payload, args.json, text)
    return 0


def cmd_export(studio: Any, args: argparse.Namespace) -> int:
    out = Path(args.out)
    fmt = args.format or ("parquet" if out.suffix == ".parquet" else "csv")
    rows = studio.store.feedback.export(out, fmt)
    _emit({"path": str(out), "format": fmt, "rows": rows}, args.json, f"{rows} rows -> {out}")
    return 0


class _EpochPrinter:
    """Training progress on stderr: one line per epoch."""

    def on_step(self, epoch: int, step: int, steps: int, loss: float) -> None:
        return None

    def on_epoch(self, epoch: int, train_loss: float, val_loss: float | None) -> None:
        val = "" if val_loss is None else f" val {val_loss:.4f}"
        print(f"train: epoch {epoch} loss {train_loss:.4f}{val}", file=sys.stderr, flush=True)


def cmd_train(studio: Any, args: argparse.Namespace) -> int:
    from core.learn.finetune import fine_tune
    from core.learn.training import TrainSettings

    settings = TrainSettings.for_mode(
        args.mode,
        epochs=args.epochs,
        blocks=args.blocks,
        taps=False if args.no_taps else None,
        seed=args.seed,
        wise=args.wise,
        l2sp=args.l2sp,
        distill=args.distill,
        views=args.views,
    )
    if args.images:  # self-supervised: no labels, two augmented views per image
        from core.learn.selfsup import load_folder, self_supervised

        report = self_supervised(
            studio,
            load_folder(args.images),
            settings,
            activate=args.activate,
            callbacks=[_EpochPrinter()],
        )
    else:
        report = fine_tune(
            studio,
            settings,
            activate=args.activate,
            force=args.force,
            callbacks=[_EpochPrinter()],
        )
    payload = report.as_dict()
    del payload["summary"]  # on the version's card (`models`); too long for a terminal
    unit = "images" if args.images else "pairs"
    reading = ""
    if report.prepare_seconds:
        reading = f" (+ {report.prepare_seconds} s reading the gallery)"
    lines = [
        f"{report.version} (parent {report.parent}): {report.pairs} {unit}, "
        f"{report.seconds} s training{reading}"
    ]
    for name, after in report.metrics_after.items():
        before = report.metrics_before[name]
        lines.append(
            f"{name:>15}: {before:.4f} -> {after:.4f}  ({after / max(before, 1e-12):.3f}x)"
        )
    for name, found in report.label_sets.items():
        shown = {m: f"{found['before'][m]:.4f} -> {found['after'][m]:.4f}" for m in ("map", "mrr")}
        lines.append(f"{name + ' labels':>15}: mAP {shown['map']}, MRR {shown['mrr']}")
    _emit(payload, args.json, "\n".join(lines))
    return 0


def cmd_new_categories(studio: Any, args: argparse.Namespace) -> int:
    from core.learn.finetune import fine_tune
    from core.measure.new_categories import new_category_check

    check = new_category_check(
        studio,
        lambda s: fine_tune(s).version,
        hold_out=args.hold_out,
        seed=args.seed,
        queries=args.queries,
    )
    lines = [
        f"{len(check.held_out)} categories held out ({check.images} images, {check.queries} "
        f"queries over the whole gallery); {check.version} against {check.parent}, k = 10:"
    ]
    for name, before in check.metrics_parent.items():
        after = check.metrics_version[name]
        ratio = check.ratios.get(name)
        shown = f"  ({ratio:.3f}x)" if ratio is not None else ""
        lines.append(f"{name:>15}: {before:.4f} -> {after:.4f}{shown}")
    lines.append(f"in {check.seconds} s")
    _emit(check.as_dict(), args.json, "\n".join(lines))
    return 0


def cmd_train_job(studio: Any, args: argparse.Namespace) -> int:
    from core.learn.jobs import run_training_job

    run = run_training_job(studio, args.run_id)
    _emit(
        {"run": run.id, "status": run.status, "version": run.version, "message": run.message},
        args.json,
        f"run {run.id}: {run.status} {run.message or ''}",
    )
    return 0 if run.status in ("done", "cancelled") else 1


def cmd_project(studio: Any, args: argparse.Namespace) -> int:
    import pandas as pd

    from core.measure.maps import layout

    def stage(text: str) -> None:
        print(f"project: {text}", file=sys.stderr, flush=True)

    mapped = layout(studio, args.model, args.method, stage)
    records = studio.images_by_id()
    table = pd.DataFrame(
        {
            "image_id": mapped.ids,
            "label": [records[i].label if i in records else None for i in mapped.ids],
            "x": mapped.coords[:, 0],
            "y": mapped.coords[:, 1],
        }
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    payload = {
        "path": str(out),
        "method": mapped.method,
        "points": len(table),
        "total": mapped.total,
    }
    _emit(payload, args.json, f"{len(table)} points ({mapped.method}) -> {out}")
    return 0


# --- background measuring jobs: the app starts them; `make run` runs the map job first --------


def _job_result(status: Any, as_json: bool) -> int:
    _emit(status.as_dict(), as_json, status.describe())
    if status.state == "failed":
        print(f"error: {status.message}", file=sys.stderr)
    return 0 if status.state == "done" else 1


def cmd_map_job(settings: Any, args: argparse.Namespace) -> int:
    """Torch-free (no Studio): the store, the index and the map cache are all it needs."""
    from core.measure.projection import NUMBA_CACHE_ENV

    # numba reads its cache folder once, on import: set it before anything imports umap
    os.environ[NUMBA_CACHE_ENV] = str(settings.numba_cache_dir.resolve())
    from core.measure.map_job import run_map_job

    return _job_result(run_map_job(settings, args.model, args.method, wait=True), args.json)


def _vectors_file(path: str, what: str) -> Any:
    import numpy as np

    from core.search.nn import NNError

    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise NNError(f"Cannot read {what} from {path}: {exc}") from exc
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise NNError(f"{path} must hold a 2-D float array (rows = {what}); got {array.shape}.")
    return array.astype(np.float32, copy=False)


def cmd_index_lab(settings: Any, args: argparse.Namespace) -> int:
    """Torch-free: a version's vectors come from the index, or arrays from .npy files."""
    from core.measure.index_lab import lab_table, run_lab
    from core.measure.lab_job import LabRequest, index_reader, run_and_store
    from core.search.nn import NNError

    report = _progress("index-lab")

    def progress(text: str, done: int, total: int) -> None:
        print(f"index-lab: {text}", file=sys.stderr, flush=True)
        report(done, total)

    save = Path(args.save_neighbours) if args.save_neighbours else None
    if args.vectors or args.queries:
        if not (args.vectors and args.queries):
            raise NNError("--vectors and --queries go together: the gallery and its queries.")
        if args.model:
            raise NNError("--model reads a version's gallery; --vectors replaces it: pick one.")
        base = _vectors_file(args.vectors, "vectors")
        queries = _vectors_file(args.queries, "queries")
        result = run_lab(
            base, queries, args.k, args.methods, save_neighbours=save, progress=progress
        )
    else:
        from core.store import Store

        version = args.model or Store(settings.catalog_path).active_version().version
        request = LabRequest(version, tuple(args.methods or ()), args.n_queries, args.k, args.seed)
        read = index_reader(settings)
        result = run_and_store(settings, read, request, save_neighbours=save, progress=progress)
    _emit(result.as_dict(), args.json, lab_table(result))
    return 0


def cmd_lab_job(settings: Any, args: argparse.Namespace) -> int:
    from core.measure.lab_job import LabRequest, run_lab_job

    request = LabRequest(args.model, tuple(args.methods or ()), args.n_queries, args.k, args.seed)
    return _job_result(run_lab_job(settings, request, wait=True), args.json)


def cmd_base_job(studio: Any, args: argparse.Namespace) -> int:
    from core.measure.base_job import run_base_job

    return _job_result(run_base_job(studio, args.encoder, wait=True), args.json)


def cmd_eval_job(studio: Any, args: argparse.Namespace) -> int:
    from core.measure.eval_job import EvalRequest, run_eval_job

    versions = tuple(args.model or [studio.active_version().version])
    request = EvalRequest(versions, args.split, args.k, args.relevance)
    return _job_result(run_eval_job(studio, request, wait=True), args.json)


def _bench_browser(studio: Any, args: argparse.Namespace) -> int:
    from core.measure.load import browser_load

    load = browser_load(
        studio.settings.data_dir, args.browser_users, args.rounds, args.k, args.encoder
    )
    _emit(load, args.json, "\n".join(f"{key:>22}: {value}" for key, value in load.items()))
    return 0 if load["log_exact"] else 1


def cmd_bench(studio: Any, args: argparse.Namespace) -> int:
    from core.gallery.demo import STAMPS_SUBDIR
    from core.measure.bench import run_bench

    if args.browser_users:  # N people at once in Chromium, against a copy of this gallery
        return _bench_browser(studio, args)
    if args.beside_lab:  # search latency alone, then beside a real index-lab job
        from core.measure.beside import bench_beside_lab

        figures = bench_beside_lab(
            studio,
            studio.settings,
            n_alone=args.queries,
            k=args.k,
            progress=lambda text: print(f"bench --beside-lab: {text}", file=sys.stderr, flush=True),
        )
        lines = "\n".join(f"{key:>32}: {value}" for key, value in figures.items())
        _emit(figures, args.json, lines)
        return 0
    if args.scale:  # a demo set into this (fresh) data directory, then everything at that size
        from core.measure.scale import run_scale_bench

        def stage(text: str) -> None:
            print(f"bench --scale: {text}", file=sys.stderr, flush=True)

        figures = run_scale_bench(studio, args.dataset, args.limit, args.queries, stage)
        _emit(
            figures, args.json, "\n".join(f"{key:>26}: {value}" for key, value in figures.items())
        )
        return 0
    folder = Path(args.folder) if args.folder else studio.settings.demo_dir / "root" / STAMPS_SUBDIR
    figures = run_bench(studio, folder, args.images, args.queries, args.k, args.umap)
    _emit(figures, args.json, "\n".join(f"{key:>22}: {value}" for key, value in figures.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", help="data directory (default: $LOOKALIKE_DATA or ./data)")
    common.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser = argparse.ArgumentParser(prog="python -m core", description="Lookalike command line.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(
        name: str, handler: Callable[[Any, argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        command = sub.add_parser(name, parents=[common], help=help_, description=help_)
        command.set_defaults(handler=handler)
        return command

    ingest = add("ingest", cmd_ingest, "Add files, folders and zip archives to the gallery.")
    ingest.add_argument("paths", nargs="+")
    ingest.add_argument(
        "--label-from-folders", action="store_true", help="label = parent folder path"
    )
    demo = add("demo-data", cmd_demo_data, "Fetch a Debian demo gallery and ingest it with labels.")
    demo.add_argument(
        "--set",
        dest="dataset",
        choices=DEMO_SETS,
        default=DEMO_SETS[0],
        help="tuxpaint: ~800 photo stamps, folder labels; fashion-mnist: 70,000 28x28 greyscale "
        "clothes, the 10 class names as labels",
    )
    demo.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="fashion-mnist: N images, an equal share per class (the same ones every time)",
    )
    search = add("search", cmd_search, "Rank the gallery against one or more query images.")
    search.add_argument("images", nargs="+")
    search.add_argument("-k", type=int, default=10)
    evaluate = add("evaluate", cmd_evaluate, "Offline ranking metrics of a model version.")
    evaluate.add_argument("--model", help="version (default: the active one)")
    evaluate.add_argument("--split", choices=EVAL_SPLITS, default="all")
    evaluate.add_argument("-k", type=int, default=10)
    evaluate.add_argument(
        "--relevance",
        choices=RELEVANCE_SOURCES,
        default="labels",
        help="same label, or the logged similar / not similar / grades",
    )
    evaluate.add_argument("--per-label", action="store_true", help="add the per-label breakdown")
    evaluate.add_argument(
        "--labels",
        choices=LABEL_SETS,
        default="all",
        help="count only the queries of the categories a fine-tune's feedback covered (seen) or "
        "did not (unseen); the gallery ranked stays the whole split",
    )
    evaluate.add_argument(
        "--labels-of",
        metavar="VERSION",
        help="whose seen categories --labels means (default: the version evaluated)",
    )
    models = add("models", cmd_models, "List model versions.")
    models.add_argument(
        "--measure",
        action="store_true",
        help="first time the forward pass of every base without a recorded speed (a few s each)",
    )
    new_base = add(
        "new-base",
        cmd_new_base,
        "Make a new base version (no parent) with another encoder, index the gallery into it "
        "and evaluate it; it is not activated.",
    )
    new_base.add_argument(
        "encoder",
        help="efficientnet-lite0, efficientnet-lite1, efficientnet-lite2, or an open_clip "
        "ARCH/TAG pair (downloads: needs the internet)",
    )
    base_job = add("base-job", cmd_base_job, "Run new-base as the Train page's background job.")
    base_job.add_argument("encoder")
    activate = add("activate", cmd_activate, "Make a model version the one search uses.")
    activate.add_argument("version")
    activate.add_argument(
        "--force",
        action="store_true",
        help="even if it ranks the categories its feedback never covered over 1 %% worse than "
        "its parent",
    )
    simulate = add("simulate", cmd_simulate, "Log searches of a simulated user over train images.")
    simulate.add_argument("--queries", type=int, default=100)
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("-k", type=int, default=10)
    simulate.add_argument(
        "--noise", type=float, default=0.05, help="P(click on an irrelevant result)"
    )
    simulate.add_argument(
        "--exclude-labels",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="leave this share of the train categories (drawn by --seed) without any feedback",
    )
    simulate.add_argument(
        "--exclude-seed",
        type=int,
        help="draw the excluded categories with this seed instead of --seed (a later round "
        "keeps the first round's out)",
    )
    export = add("export-interactions", cmd_export, "Write the interaction log as CSV or Parquet.")
    export.add_argument("out")
    export.add_argument("--format", choices=EXPORT_FORMATS, help="default: from the extension")
    train = add("train", cmd_train, "Fine-tune the active version into a new model version.")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--from-feedback", action="store_true", help="pairs from the log (train split only)"
    )
    source.add_argument(
        "--images",
        nargs="+",
        metavar="DIR",
        help="self-supervised (SimCLR): two augmented views per image, no labels",
    )
    train.add_argument(
        "--mode",
        choices=TRAIN_MODES,
        default="head",
        help="head: an adapter on the frozen encoder's features and stage taps (about half a "
        "minute on the demo); partial: the last blocks of the image tower too (about a minute); "
        "full: the whole tower",
    )
    train.add_argument(
        "--epochs", type=int, help="upper bound, early stopping (default: per mode, 40 for head)"
    )
    train.add_argument(
        "--blocks", type=int, help="partial: how many of the tower's last stages train (1)"
    )
    train.add_argument(
        "--no-taps",
        action="store_true",
        help="the new head reads the embedding alone, not the tower's stage outputs too",
    )
    train.add_argument("--seed", type=int, help="training seed: split, batches, init (0)")
    train.add_argument(
        "--wise",
        type=float,
        help="WiSE-FT: the share of the trained update kept, in (0, 1] (default: per mode)",
    )
    train.add_argument("--l2sp", type=float, help="L2-SP: weight of ||θ - θ_parent||² (0)")
    train.add_argument(
        "--distill",
        type=float,
        help="weight of distilling the parent's similarities over train images (default: per mode)",
    )
    train.add_argument(
        "--views",
        type=float,
        help="head: weight of (train image, augmented view) pairs mixed into the feedback (0)",
    )
    train.add_argument("--activate", action="store_true", help="make the new version active")
    train.add_argument(
        "--force",
        action="store_true",
        help="with --activate: even if it forgets the categories its feedback never covered",
    )
    new_categories = add(
        "new-categories",
        cmd_new_categories,
        "On an empty data directory: hold categories out of the demo gallery, simulate feedback, "
        "fine-tune, add the held-out images, and compare the new version with its parent on them.",
    )
    new_categories.add_argument("--hold-out", type=int, default=24, help="categories held out")
    new_categories.add_argument("--seed", type=int, default=0)
    new_categories.add_argument("--queries", type=int, default=300, help="simulated searches")
    job = add("train-job", cmd_train_job, "Run a queued training run (the Train page starts it).")
    job.add_argument("run_id", type=int)
    project = add("project", cmd_project, "Write a 2-D map of a version's gallery as CSV.")
    project.add_argument("out", help="CSV with image_id, label, x, y")
    project.add_argument("--model", help="version (default: the active one)")
    project.add_argument("--method", choices=PROJECTION_METHODS, default="umap")
    map_job = add(
        "map-job",
        cmd_map_job,
        "Compute and cache the maps and cohesion tables the Embeddings page shows (the app "
        "starts it in the background when one is missing).",
    )
    map_job.add_argument("--model", action="append", help="version, repeatable (default: active)")
    map_job.add_argument("--method", choices=PROJECTION_METHODS, default="umap")
    map_job.set_defaults(studio=False)  # torch-free: the handler gets the settings
    eval_job = add(
        "eval-job",
        cmd_eval_job,
        "Store the evaluations and cache the rankings the Metrics page shows (the page starts "
        "it in the background for what is missing).",
    )
    eval_job.add_argument("--model", action="append", help="version, repeatable (default: active)")
    eval_job.add_argument("--split", choices=EVAL_SPLITS, default="all")
    eval_job.add_argument("-k", type=int, default=10)
    eval_job.add_argument("--relevance", choices=RELEVANCE_SOURCES, default="labels")
    methods = list_methods()
    lab = add(
        "index-lab",
        cmd_index_lab,
        "Nearest-neighbour methods side by side (exact, K-D tree, LSH, IVF, HNSW): each swept "
        "over its main parameter on a version's gallery, held-out images as queries; recall@k "
        "against exact search, queries/s one at a time and batched, build seconds, memory.",
    )
    lab.add_argument("--model", help="version whose vectors to use (default: the active one)")
    lab.add_argument("--methods", nargs="+", choices=methods, help="default: every method")
    lab.add_argument("--n-queries", type=int, default=200, help="gallery images held out")
    lab.add_argument("-k", type=int, default=10)
    lab.add_argument("--seed", type=int, default=0, help="which images are held out")
    lab.add_argument("--vectors", metavar="A.npy", help="instead of a version: any float vectors")
    lab.add_argument("--queries", metavar="B.npy", help="with --vectors: the queries")
    lab.add_argument(
        "--save-neighbours",
        metavar="DIR",
        help="write each point's (queries x k) neighbour row numbers into the vectors as .npy",
    )
    lab.set_defaults(studio=False)
    lab_job = add("lab-job", cmd_lab_job, "Run the index lab for the Index lab page and store it.")
    lab_job.add_argument("--model", required=True)
    lab_job.add_argument("--methods", nargs="+", choices=methods)
    lab_job.add_argument("--n-queries", type=int, default=200)
    lab_job.add_argument("-k", type=int, default=10)
    lab_job.add_argument("--seed", type=int, default=0)
    lab_job.set_defaults(studio=False)
    bench = add("bench", cmd_bench, "Measure ingest speed, search latency and index recall.")
    bench.add_argument("--folder", help="images to time ingest on (default: the demo stamps)")
    bench.add_argument(
        "--scale",
        action="store_true",
        help="ingest a demo set (--set, default fashion-mnist: all 70,000 images) into the "
        "data directory, which must be empty, and measure ingest, search, recall, evaluate and "
        "the map at that size",
    )
    bench.add_argument(
        "--set", dest="dataset", choices=DEMO_SETS, default="fashion-mnist", help="with --scale"
    )
    bench.add_argument(
        "--limit", type=int, help="with --scale: this many Fashion-MNIST images (stratified)"
    )
    bench.add_argument("--images", type=int, default=200, help="how many images to ingest")
    bench.add_argument("--queries", type=int, default=50, help="how many searches to time")
    bench.add_argument("-k", type=int, default=10)
    bench.add_argument("--umap", action="store_true", help="also time UMAP (about 2 minutes)")
    bench.add_argument(
        "--browser-users",
        type=int,
        metavar="N",
        help="instead: N people at once in Chromium (upload, results, one label), against a "
        "copy of the gallery; time-to-results p50/p95, searches/s, and whether the log is exact",
    )
    bench.add_argument(
        "--beside-lab",
        action="store_true",
        help="instead: search latency alone (--queries searches) and while an index-lab job "
        "runs on the active version (the whole sweep), per thread policy for the query encode",
    )
    bench.add_argument("--rounds", type=int, default=3, help="--browser-users: uploads each")
    bench.add_argument("--encoder", help="--browser-users: the app's base encoder (tests)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    warnings.simplefilter("ignore")  # library deprecation chatter is not for users
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from core.config import load_settings

    try:
        settings = load_settings(args.data_dir)
        if not getattr(args, "studio", True):  # a command that needs no encoder or Studio
            return int(args.handler(settings, args))
        from core.studio import Studio

        return int(args.handler(Studio(settings), args))
    except LookalikeError as exc:  # a user's mistake: one sentence, never a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
