"""A study command's flags: the ones every study command shares (`add_common_flags`) and the
TrialConfig fields they give (`schedule_fields`, `seed_fields`, `val_size`, `cifar10c_fields`,
`make_config`). A bad value is a StudyError naming the flag, its value and what is allowed.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from analysis.schema import DEFAULT_EXPERIMENT, DEFAULT_TRACKING_URI
from search_spaces.presets import PRESETS, resolve
from study.spec import EXECUTORS, StudyError
from trainables.config import CIFAR10C_REGENERATE, ConfigError, TrialConfig

DEFAULT_STORAGE = "ray_results"
DEFAULT_PRESET = "smoke"  # the pipeline check: minutes, not the hour of quick (help says each preset's time)
DEFAULT_PACK_SIZE = 16  # members per pack: Table 2 (9) or one ablation grid fits in one
# Bounds that keep a typo from becoming a study (docs/paper-mapping.md, Choice): the grid is built in the
# driver's memory before anything runs (--seeds 1000000000 grew it to 24 GB) and the plan's estimate
# must stay a number a person can read. Each is far above what the paper's schedule needs (2000
# epochs; Table 2 is 9 trials per seed). Constants, not flags: a flag to lift a bound would be the
# typo's way around it; a larger study is several studies.
MAX_SEEDS = 1000
MAX_EPOCHS = 100_000  # 50 x the paper's 2000
MAX_TRIALS = 10_000  # the grid's trials and the search's, in one study
# How long each preset takes (the help text; measured on the 2-core CPU, see README "Presets").
PRESET_TIMES = {"smoke": "pipeline check, ~3 min on 2 CPU cores; accuracies near chance",
                "demo": "the paper's robustness effect, ~30 min on 2 idle CPU cores",
                "quick": "~1 h on 2 CPU cores", "overfit": "~8 min per trial on 1 CPU thread",
                "paper": "Sec. 4.2 unchanged: GPUs, days",
                "finetune-demo": "strategies 1, 8, 9 from scratch and fine-tuned, with CIFAR-10-C: "
                                 "docs/results/finetune-cifar10c-demo.md"}


def add_common_flags(p: argparse.ArgumentParser, default_name: str) -> None:
    """The flags every study command has, in the order its help lists them."""
    _schedule_flags(p)
    _record_flags(p, default_name)
    _resource_flags(p)
    _run_flags(p)
    _cifar10c_flags(p)


def _schedule_flags(p: argparse.ArgumentParser) -> None:
    """What each trial trains: the preset and the flags that override it."""
    times = "; ".join(f"{k}: {PRESET_TIMES[k]}" for k in PRESETS if k in PRESET_TIMES)
    p.add_argument("--preset", default=DEFAULT_PRESET, help=f"schedule preset, one of {', '.join(PRESETS)} "
                   f"(default {DEFAULT_PRESET}). {times}")
    p.add_argument("--seeds", type=int, default=1, help="seeds per setting (default 1)")
    p.add_argument("--data", default="cifar10", help="cifar10 (download), a cifar-10-batches-py folder, "
                   "or a parquet folder/file (e.g. ../shared/data/cifar10-jpeg)")
    p.add_argument("--epochs", type=int, help="override the preset's epochs (decay step scales along)")
    p.add_argument("--subset", type=int, help="override the preset's training subset (0 = all)")
    p.add_argument("--test-subset", type=int, help="override the preset's test subset (0 = all)")


def _record_flags(p: argparse.ArgumentParser, default_name: str) -> None:
    """Where the study's records and checkpoints go, and under which name."""
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI),
                   help="where runs are recorded: sqlite:///PATH (a file; artifacts go to mlartifacts/ beside "
                   "it) or http(s)://HOST:PORT (an mlflow server) (default $MLFLOW_TRACKING_URI, else "
                   f"{DEFAULT_TRACKING_URI})")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment the study's runs go to, "
                   f"created when missing (default {DEFAULT_EXPERIMENT})")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="Ray storage_path and trial checkpoints "
                   "(a path every node reaches, or s3://...)")
    p.add_argument("--name", default=default_name, help=f"study name: 1-100 of A-Z a-z 0-9 . _ -, starting "
                   f"with a letter or digit (default {default_name})")
    p.add_argument("--resume", action="store_true", help="continue the study of this --name with the flags "
                   "it was started with (only --cpus/--gpus-per-trial, --device, --pack*, --progress-every, "
                   "--max-failures, --address and --out may differ)")


def _resource_flags(p: argparse.ArgumentParser) -> None:
    """What each trial gets and where it runs."""
    p.add_argument("--cpus-per-trial", type=float, default=None, help="default 1")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="default 0.25 when CUDA is visible (4 trials share a GPU), else 0")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or None,  # RAY_ADDRESS='' is unset
                   help="join a running Ray cluster: HOST:PORT of its head, auto (on one of its nodes) or "
                   "ray://HOST:PORT (checked before any work)")
    p.add_argument("--node-wait", type=float, default=600.0,
                   help="with --address: seconds to wait for a node that can hold a trial (an autoscaling "
                   "cluster adds one) before the study stops (default 600)")
    p.add_argument("--out", default=None, help="folder for tables and plots (default results/<name>)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (GPU N of this machine; "
                   "local Ray only)")
    p.add_argument("--max-failures", type=int, default=3, help="restarts of a trial after a lost worker")
    p.add_argument("--progress-every", type=float, default=10.0,
                   help="seconds between progress lines while trials run (default 10)")
    p.add_argument("--pack", default="auto", help="train trials that share a schedule as one packed "
                   "model per Ray trial: auto (on CUDA only) | on | off (default auto)")
    p.add_argument("--pack-size", type=int, default=DEFAULT_PACK_SIZE,
                   help=f"most members per pack (default {DEFAULT_PACK_SIZE})")


def _run_flags(p: argparse.ArgumentParser) -> None:
    """The validation split, the numerics, the executor, and how the training subset is drawn."""
    p.add_argument("--val-size", type=int, default=None,
                   help="images held out of the training pool as a validation split (stratified, never "
                   "trained on; evaluated on the 10 sets like the test set). Default: 0 for grids (the "
                   "paper's full training set; they select nothing), 10%% of the pool for a search")
    p.add_argument("--precision", default="auto",
                   help="numerics: auto (bf16 autocast on CUDA, fp32 on a CPU) | fp32 | tf32 | bf16 "
                   "(docs/paper-mapping.md)")
    p.add_argument("--step-impl", default="auto", help="how a step is launched (a run flag, trainables/fast.py): "
                   "auto (a captured CUDA graph on CUDA, eager on a CPU) | eager | cuda_graph")
    p.add_argument("--pack-data", default="per_member",
                   help="how a pack's members get their epoch's images (a run flag, trainables/loop.py): per_member "
                   "(one pass per member) | batched (one pass for all members: one gather, one distortion and "
                   "IQA call; bit-identical on a CPU)")
    p.add_argument("--pack-eval", default="per_member",
                   help="how a pack's members are evaluated (a run flag, trainables/packed.py): per_member | vmap "
                   "(all members in one vmapped pass; probabilities within 1e-5 of per_member)")
    p.add_argument("--executor", default="ray", help=f"what schedules the trials: {' | '.join(EXECUTORS)} "
                   "(default ray: Ray Tune, this machine or a cluster; local: in this process, one trial or "
                   "pack after another, without Ray; the same records, checkpoints and --resume)")
    p.add_argument("--estimate-only", action="store_true",
                   help="check every input, print the plan with its measured wall-time estimate, and stop "
                   "(nothing is written)")
    p.add_argument("--verbose", action="store_true",
                   help="print the full tables (every test set, the ECE and NLL pairs, every file) and a line per "
                   "finished trial; by default a study prints one compact table (the full ones are in its files)")
    p.add_argument("--fixed-subset", action="store_true",
                   help="draw the training subset with seed 0 for every trial (default: the trial's seed, "
                   "so the spread over seeds includes the subset's sampling; both arms of a pair share it)")


def _cifar10c_flags(p: argparse.ArgumentParser) -> None:
    """The final evaluation on CIFAR-10-C (issue 14)."""
    p.add_argument("--cifar10c", default=None, metavar="regenerate|DIR",
                   help="also evaluate every trial's final model on CIFAR-10-C (issue 14): 'regenerate' (the "
                   "corruptions made from the test split, cached) or a folder of the official files")
    p.add_argument("--cifar10c-subset", type=int, default=None, metavar="N",
                   help="--cifar10c on a stratified subset of N test images (default 0 = all 10,000: 91 sets x "
                   "10,000 forward passes per model; the plan's estimate counts them at the probed rate)")
    p.add_argument("--cifar10c-corruptions", default=None, metavar="NAME,...",
                   help="--cifar10c: only these corruptions (default: every one available)")


def seed_fields(args, seed: int) -> dict:
    """TrialConfig fields that follow the trial seed: the seed itself and the training subset's seed
    (the trial seed, or 0 for every trial with --fixed-subset; docs/paper-mapping.md)."""
    return {"seed": seed, "subset_seed": 0 if getattr(args, "fixed_subset", False) else seed}


def val_size(args, default: int = 0) -> int:
    """--val-size, or `default` when not given; refused below 0."""
    v = getattr(args, "val_size", None)
    if v is None:
        return default
    if v < 0:
        raise StudyError(f"--val-size {v} is not allowed; allowed: an integer >= 0 (0 = no validation split)")
    return v


def schedule_fields(args) -> dict:
    """The preset with the flags that override it (None = not given)."""
    if args.seeds is None or not 1 <= args.seeds <= MAX_SEEDS:
        raise StudyError(f"--seeds {args.seeds} is not allowed; allowed: an integer >= 1 and <= {MAX_SEEDS}")
    for flag in ("epochs",):
        v = getattr(args, flag)
        if v is not None and not 1 <= v <= MAX_EPOCHS:
            raise StudyError(f"--{flag} {v} is not allowed; allowed: an integer >= 1 and <= {MAX_EPOCHS}")
    for flag in ("subset", "test_subset"):
        v = getattr(args, flag)
        if v is not None and v < 0:
            raise StudyError(f"--{flag.replace('_', '-')} {v} is not allowed; allowed: an integer >= 0")
    try:
        fields = resolve(args.preset, epochs=args.epochs, subset=args.subset, test_subset=args.test_subset)
    except ConfigError as e:
        raise StudyError(f"--preset: {e}") from None
    return {**fields, **cifar10c_fields(args)}


def cifar10c_fields(args) -> dict:
    """The evaluation-only TrialConfig fields of --cifar10c, --cifar10c-subset, --cifar10c-corruptions
    ({} without --cifar10c); a folder is made absolute (Ray workers do not share our cwd)."""
    spec = getattr(args, "cifar10c", None)
    subset, names = getattr(args, "cifar10c_subset", None), getattr(args, "cifar10c_corruptions", None)
    if spec is None:
        given = [f for f, v in (("--cifar10c-subset", subset), ("--cifar10c-corruptions", names)) if v is not None]
        if given:
            raise StudyError(f"{given[0]} is not allowed without --cifar10c; allowed: --cifar10c regenerate|DIR")
        return {}
    if not spec:
        raise StudyError(f"--cifar10c {spec!r} is not allowed; allowed: {CIFAR10C_REGENERATE} or a folder of the "
                         "official CIFAR-10-C files")
    if subset is not None and subset < 0:
        raise StudyError(f"--cifar10c-subset {subset} is not allowed; allowed: an integer >= 0 (0 = all test images)")
    fields = {"cifar10c": spec if spec == CIFAR10C_REGENERATE else str(Path(spec).expanduser().resolve()),
              "cifar10c_subset": subset or 0}
    if names is not None:
        items = [c.strip() for c in names.split(",") if c.strip()]
        if not items:
            raise StudyError(f"--cifar10c-corruptions {names!r} is not allowed; allowed: NAME,... e.g. "
                             "gaussian_noise,fog")
        fields["cifar10c_corruptions"] = items
    return fields


def make_config(fields: dict) -> TrialConfig:
    try:
        return TrialConfig.from_dict(fields)
    except ConfigError as e:
        raise StudyError(str(e)) from None
