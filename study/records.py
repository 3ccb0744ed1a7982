"""`python -m study.records export|import`: a recorded study as plain files, and back.

    python -m study.records export --study NAME --out DIR [--tracking-uri URI] [--experiment E]
    python -m study.records import DIR [--tracking-uri URI] [--experiment E]

Export writes the study's parent and child runs as parquet (runs, params, tags, full metric
histories) plus each run's small artifacts (calibration.json, scores_hist.json, config.json; never
model weights) and a manifest of sha256 sums: a few MB that can be committed, so a study trained on a
lent GPU can be rebuilt by `analysis.table2` / `analysis.ablate` on a machine without one. Import
re-creates the runs in another store (new run ids, same names, tags, params, metric steps and
timestamps, statuses, artifacts) and refuses a damaged export or a study that already exists there.
The functions live in study/tracking.py (the one module of study/ that speaks MLflow).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from analysis.schema import DEFAULT_EXPERIMENT, DEFAULT_TRACKING_URI, one_line, sqlite_path
from study.spec import StudyError
from study.tracking import TrackingError, creation_lock_path, check_tracking_uri, export_study, import_study


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.records", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="write a recorded study as parquet + small artifacts")
    e.add_argument("--study", required=True, help="study name (parent run tag iqa_ls.study)")
    e.add_argument("--out", required=True, help="a new or empty folder")
    i = sub.add_parser("import", help="re-create an exported study in a tracking store")
    i.add_argument("folder", help="a folder written by `export`")
    for q in (e, i):
        q.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI,
                       help=f"MLflow store (default {DEFAULT_TRACKING_URI})")
        q.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                       help=f"MLflow experiment (default {DEFAULT_EXPERIMENT})")
    args = p.parse_args(argv)
    try:
        check_first(args)
        with own_lock_file(args.tracking_uri):
            run(args)
    except (TrackingError, StudyError, OSError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    return 0


def check_first(args) -> None:
    """What can be refused before the store is opened (opening a SQLite file creates it and its
    tables, and the lock beside it): the tracking URI, the experiment's name, and for an export a
    store that exists and an --out that is a new or empty folder that can be written."""
    from study.storage import writable_folder

    check_tracking_uri(args.tracking_uri)
    if not args.experiment.strip():
        raise StudyError(f"--experiment {args.experiment!r} is not allowed (empty); allowed: an MLflow experiment "
                         "name, e.g. iqa-ls")
    if args.cmd != "export":
        return
    db = sqlite_path(args.tracking_uri)
    if db is not None and not db.is_file():  # a reader never creates a store
        raise StudyError(f"no MLflow store at {db} (--tracking-uri {args.tracking_uri})")
    out = writable_folder("--out", args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StudyError(f"export folder {args.out} is not empty; allowed: a new or empty folder")


@contextlib.contextmanager
def own_lock_file(tracking_uri: str):
    """The lock file study.tracking makes for a SQLite store it opens (in the temp folder; it locks the
    store's first opening): removed again when this command made it, so a refused or finished export or import
    leaves the folder as it found it. Removed only while free: a study opening the store at that
    moment keeps its lock."""
    from filelock import FileLock, Timeout

    db = sqlite_path(tracking_uri)
    lock = creation_lock_path(db) if db is not None else None
    made = lock is not None and not lock.exists()
    try:
        yield
    finally:
        if made and lock.exists():
            try:
                with FileLock(str(lock), timeout=0):
                    lock.unlink()
            except (Timeout, OSError):
                pass


def run(args) -> None:
    if args.cmd == "export":
        m = export_study(args.tracking_uri, args.study, args.out, args.experiment)
        print(f"exported study {m['study']}: {m['runs']} runs, {m['metric_points']} metric points, "
              f"{len(m['files'])} files -> {args.out}")
    else:
        pid = import_study(args.folder, args.tracking_uri, args.experiment)
        print(f"imported {args.folder} into {args.tracking_uri} (experiment {args.experiment}), parent run {pid}; "
              f"rebuild its tables with python -m analysis.table2 (or analysis.ablate) --study NAME "
              f"--tracking-uri {args.tracking_uri}")


if __name__ == "__main__":
    sys.exit(main())
