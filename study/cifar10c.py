"""`python -m study.cifar10c`: evaluate the final weights of a recorded study on CIFAR-10-C (issue 14),
log the results to each trial's MLflow run, and build the CIFAR-10-C tables.

Examples:
  python -m study.cifar10c --study table2 --subset 1000                 # regenerated, 1,000 test images
  python -m study.cifar10c --study table2 --cifar10c /data/CIFAR-10-C     # the official files, all 10,000
  python -m analysis.cifar10c --study table2                              # the tables again, MLflow only

For every FINISHED child run of the study: download its `config.json` and `final_weights.pt`, rebuild
the Table 1 model (`trainables.model.build_model` + the weights) with the trial's normalisation,
evaluate it on the CIFAR-10-C sets (`trainables.robustness`, the same code a trial runs with
`--cifar10c`), and log the metrics `c10c_*` (step = the run's last epoch), the artifact
`cifar10c.json` and the tag `iqa_ls.cifar10c` (the evaluation's key) to that run. A run already
evaluated on the same data (same key: kind, corruptions, seed, implementation, images) is skipped and
said so, so the command can be run again; a run evaluated on OTHER CIFAR-10-C data is refused (one
line naming it) unless `--replace`, which keeps its old `cifar10c.json` as
`cifar10c_replaced/<n>.json` and logs the new evaluation over it (the same metric names at the same
step: the latest value counts; the old values stay in the metric history). Then the tables
(`analysis.cifar10c`) are written to `--out` and logged to the parent run.

It lives in study/ because it runs the model (torch); the tables it ends with are analysis's, which
reads MLflow only (`python -m analysis.cifar10c --study NAME` rebuilds them without evaluating).
Bad input is one line on stderr and exit code 2, before anything is logged.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from analysis.schema import DEFAULT_EXPERIMENT, DEFAULT_TRACKING_URI, AnalysisError
from study.runner import main_wrapper
from study.spec import StudyError
from trainables.config import CIFAR10C_REGENERATE, ConfigError, TrialConfig

TAG_KEY = "cifar10c"  # iqa_ls.cifar10c: the key of the evaluation logged to the run (JSON)
REPLACED_DIR = "cifar10c_replaced"


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m study.cifar10c", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--study", help="study name (parent run tag iqa_ls.study)")
    who.add_argument("--run-id", help="the study's parent run id, instead of --study")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI))
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT)
    p.add_argument("--cifar10c", default=CIFAR10C_REGENERATE, metavar="regenerate|DIR",
                   help="'regenerate' (default: the corruptions made from each run's test split, cached) or a "
                   "folder of the official CIFAR-10-C files")
    p.add_argument("--subset", type=int, default=0, metavar="N",
                   help="a stratified subset of N test images (default 0 = all 10,000: 91 sets x 10,000 forward "
                   "passes per model)")
    p.add_argument("--corruptions", default=None, metavar="NAME,...", help="only these (default: every one available)")
    p.add_argument("--seed", type=int, default=0, help="seed of the regenerated corruptions' draws (default 0)")
    p.add_argument("--data", default=None, help="the data the runs were trained on, if not at the recorded path "
                   "(the test split the corruptions are made from and the clean images)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--replace", action="store_true",
                   help="re-evaluate runs already evaluated on other CIFAR-10-C data (default: refused)")
    p.add_argument("--out", default=None, help="folder for the tables (default results/<study>)")
    p.add_argument("--no-log", action="store_true", help="do not log the tables to the parent run")
    return p.parse_args(argv)


def eval_config(cfg: TrialConfig, args) -> TrialConfig:
    """The run's config with this evaluation's fields (and --data, --device, --threads)."""
    spec = args.cifar10c if args.cifar10c == CIFAR10C_REGENERATE else str(Path(args.cifar10c).expanduser().resolve())
    names = [c.strip() for c in args.corruptions.split(",") if c.strip()] if args.corruptions is not None else []
    try:
        return cfg.replace(cifar10c=spec, cifar10c_subset=args.subset, cifar10c_seed=args.seed,
                           cifar10c_corruptions=tuple(names), device=args.device, threads=args.threads,
                           **({"data": args.data} if args.data else {}))
    except ConfigError as e:
        raise StudyError(str(e)) from None


def check_flags(args) -> None:
    if args.subset < 0:
        raise StudyError(f"--subset {args.subset} is not allowed; allowed: an integer >= 0 (0 = all test images)")
    if args.threads < 0:
        raise StudyError(f"--threads {args.threads} is not allowed; allowed: an integer >= 0")
    if args.corruptions is not None and not [c for c in args.corruptions.split(",") if c.strip()]:
        raise StudyError(f"--corruptions {args.corruptions!r} is not allowed; allowed: NAME,... e.g. gaussian_noise,fog")
    if not args.cifar10c:
        raise StudyError(f"--cifar10c {args.cifar10c!r} is not allowed; allowed: {CIFAR10C_REGENERATE} or a folder")
    if args.device not in ("auto", "cpu", "cuda") and not args.device.startswith("cuda:"):
        raise StudyError(f"--device {args.device} is not allowed; allowed: auto | cpu | cuda | cuda:N")
    from trainables.config import TrialError
    from trainables.device import pick_device
    try:
        pick_device(args.device)
    except TrialError as e:
        raise StudyError(str(e)) from None


def run(args) -> int:
    check_flags(args)
    with tempfile.TemporaryDirectory(prefix="iqa-ls-c10c-") as tmp:
        return evaluate_study(args, Path(tmp))


def _checked_run(args, r: dict, tmp: Path) -> tuple:
    """(run, config, evaluation data, previous artifact or None, evaluated on the same data already) of
    one FINISHED run, refused in one line before anything is logged (a missing artifact, a bad config,
    bad CIFAR-10-C data, an earlier evaluation on other data without --replace)."""
    from study import tracking
    from trainables import data as data_mod
    from trainables import robustness

    cfg_file = tracking.download_artifact(args.tracking_uri, r["run_id"], "config.json", tmp / r["run_id"])
    has_weights = "final_weights.pt" in tracking.list_artifacts(args.tracking_uri, r["run_id"])
    if cfg_file is None or not has_weights:
        raise StudyError(f"run {r['key']} ({r['run_id']}) has no {'config.json' if cfg_file is None else 'final_weights.pt'} "
                         "artifact; allowed: FINISHED runs of a study (they log config.json and final_weights.pt)")
    try:
        cfg = eval_config(TrialConfig.from_dict(json.loads(cfg_file.read_text())), args)
    except ConfigError as e:
        raise StudyError(f"run {r['key']}: config.json: {e}") from None
    try:
        ev = robustness.load(cfg)  # checks a folder (files, labels against the test split) or builds
    except data_mod.DataError as e:
        raise StudyError(f"run {r['key']}: {'--cifar10c' if cfg.cifar10c != CIFAR10C_REGENERATE else '--data'}: "
                         f"{e}") from None
    old = tracking.download_artifact(args.tracking_uri, r["run_id"], robustness.ARTIFACT, tmp / r["run_id"] / "old")
    old_doc = json.loads(old.read_text()) if old is not None else None
    same = old_doc is not None and old_doc.get("key") == ev.key
    if old_doc is not None and not same and not args.replace:
        raise StudyError(f"run {r['key']} ({r['run_id']}) was evaluated on other CIFAR-10-C data "
                         f"({json.dumps(old_doc.get('key'), sort_keys=True)[:300]}); allowed: the same data, "
                         "or --replace to evaluate it again (its cifar10c.json is kept under "
                         f"{REPLACED_DIR}/)")
    return r, cfg, ev, old, same


def _evaluate_run(args, r: dict, cfg: TrialConfig, ev, old: Path | None, tmp: Path) -> None:
    """Evaluate one run's final weights and log the metrics and cifar10c.json to it (with --replace,
    the previous artifact kept, numbered, under REPLACED_DIR)."""
    from study import tracking
    from trainables import robustness
    from trainables.device import pick_device

    t0 = time.perf_counter()
    device = pick_device(cfg.device)
    weights = tracking.download_artifact(args.tracking_uri, r["run_id"], "final_weights.pt", tmp / r["run_id"])
    model = robustness.load_model(cfg, weights, device)
    metrics = robustness.evaluate(model, ev, robustness.trial_norm(cfg, device), device)
    step = r["last_step"] if r["last_step"] is not None else cfg.total_epochs
    doc = robustness.artifact(metrics, ev, cfg, step)
    files, dirs = [], {}
    if old is not None:
        n = len(tracking.list_artifacts(args.tracking_uri, r["run_id"], REPLACED_DIR))
        kept = tmp / r["run_id"] / "kept" / f"{n}.json"
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_bytes(old.read_bytes())
        files.append(kept)
        dirs[str(kept)] = REPLACED_DIR
    robustness.write_artifact(tmp / r["run_id"], doc)
    files.append(tmp / r["run_id"] / robustness.ARTIFACT)
    metrics[f"{robustness.PREFIX}seconds"] = time.perf_counter() - t0
    tracking.log_evaluation(args.tracking_uri, r["run_id"], metrics, step, files,
                            {TAG_KEY: json.dumps(ev.key, sort_keys=True)}, dirs)
    print(f"  {r['key']}: clean {metrics['c10c_acc_clean']:.4f}, benchmark mean "
          f"{metrics.get('c10c_acc_mean_benchmark', float('nan')):.4f}, logged at step {step} "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)


def evaluate_study(args, tmp: Path) -> int:
    import torch

    from study import tracking
    from trainables import robustness

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        parent_id, runs = tracking.finished_trials(args.tracking_uri, args.study, args.run_id, args.experiment)
    except (tracking.TrackingError, AnalysisError) as e:
        raise StudyError(str(e)) from None
    if not runs:
        raise StudyError(f"study {args.study or args.run_id!r} has no FINISHED trial runs in {args.tracking_uri}")
    plan = [_checked_run(args, r, tmp) for r in runs]  # every check before anything is logged
    todo = [p for p in plan if not p[4]]
    ev0 = plan[0][2]
    print(f"study {args.study or parent_id}: {len(runs)} FINISHED runs; {len(plan) - len(todo)} already evaluated on "
          f"the same CIFAR-10-C data (skipped), {len(todo)} to evaluate")
    print(f"  {ev0.data.source.describe()}; {ev0.key['n_images']} test images per set; "
          f"{robustness.evaluation_sets(plan[0][1])} sets per model; device {plan[0][1].device}")
    for r, cfg, ev, old, same in plan:
        if same:
            print(f"  {r['key']}: skipped (already evaluated on the same data)")
        else:
            _evaluate_run(args, r, cfg, ev, old, tmp)

    from analysis.cifar10c import build_cifar10c, format_console
    res = build_cifar10c(parent_run_id=parent_id, tracking_uri=args.tracking_uri, experiment=args.experiment,
                         out_dir=args.out, log_to_parent=not args.no_log)
    print(format_console(res))
    return 0


def main(argv=None) -> int:
    args = parse(argv)

    def go():
        try:
            return run(args)
        except AnalysisError as e:
            raise StudyError(str(e)) from None
    return main_wrapper(go)


if __name__ == "__main__":
    sys.exit(main())
