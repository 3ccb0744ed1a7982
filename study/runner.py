"""What every study command shares: flags, checks before any work, the plan, the run, the end.

A study command (`study.table2`, `study.ablate`) turns its flags into a list of trials — each a
key, a TrialConfig and a few tags — and hands them to `run_study`. Everything is checked before
the first trial starts (and before anything is written); a bad value exits with one line on
stderr and code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from search_spaces.presets import PRESETS, resolve
from trainables import data as data_mod
from trainables.config import CIFAR10C_REGENERATE, ConfigError, TrialConfig

DEFAULT_STORAGE = "ray_results"
PACK_MODES = ("auto", "on", "off")
DEFAULT_PACK_SIZE = 16  # members per pack: Table 2 (9) or one ablation grid fits in one


class StudyError(RuntimeError):
    """Refused before any trial starts; the message is the one line the user sees."""


@dataclass
class Trial:
    key: str  # unique within the study: names the MLflow run and the checkpoint folder
    config: TrialConfig
    tags: dict = field(default_factory=dict)  # extra MLflow tags (e.g. setting, ablation)


@dataclass
class Search:
    """An adaptive search a study runs after its grid trials (`study.tuning.run_search`): Optuna
    proposes each trial's TrialConfig fields through `suggest`, ASHA stops weak trials early. The
    trials report the objective (min of `objective_of`) on the epochs they evaluate."""
    base: TrialConfig  # what every search trial shares (schedule, data, seed, eval_every)
    n_trials: int
    suggest: Callable  # (Optuna trial) -> (TrialConfig field overrides, extra MLflow tags)
    objective_of: tuple  # reported metric names; objective = their minimum
    grace_period: int = 1  # ASHA: epochs before the first stop; an epoch the trials evaluate
    reduction_factor: int = 2  # ASHA: keep the best 1/reduction_factor at each rung
    sampler_seed: int = 0  # TPE sampler seed
    key_format: str = "search-{n}"  # trial key from the Optuna trial number n
    metric: str = "objective"
    mode: str = "max"
    tags: dict = field(default_factory=dict)  # MLflow tags of every search trial
    parent_tags: dict = field(default_factory=dict)  # MLflow tags of the study's parent run

    def __post_init__(self):
        # selection reads the validation split only: an objective on a test metric would fit the
        # choice to the test set that is then reported as if it were independent of it
        from trainables.train import VAL_PREFIX

        test = [m for m in self.objective_of if not m.startswith(VAL_PREFIX)]
        if test:
            raise StudyError(f"search objective {test} is not allowed; allowed: validation metrics "
                             f"({VAL_PREFIX}*, e.g. {VAL_PREFIX}acc_mean_all): the test sets only report")
        if not self.base.val_size:
            raise StudyError("a search needs a validation split (val_size >= 1); allowed: --val-size N >= 1")

    def key(self, number: int) -> str:
        return self.key_format.format(n=number)

    @property
    def evals(self) -> int:
        """Evaluations a search trial that is not stopped early makes (for the time estimate)."""
        e, every = self.base.epochs, self.base.eval_every
        return len({k for k in range(1, e + 1) if k == e or (every and k % every == 0)})


def add_common_flags(p: argparse.ArgumentParser, default_name: str) -> None:
    p.add_argument("--preset", default="quick", help=f"schedule preset: {', '.join(PRESETS)} (default quick)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per setting (default 1)")
    p.add_argument("--data", default="cifar10", help="cifar10 (download), a cifar-10-batches-py folder, "
                   "or a parquet folder/file (e.g. ../shared/data/cifar10-jpeg)")
    p.add_argument("--epochs", type=int, help="override the preset's epochs (decay step scales along)")
    p.add_argument("--subset", type=int, help="override the preset's training subset (0 = all)")
    p.add_argument("--test-subset", type=int, help="override the preset's test subset (0 = all)")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    p.add_argument("--experiment", default="iqa-ls", help="MLflow experiment (default iqa-ls)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="Ray storage_path and trial checkpoints "
                   "(a path every node reaches, or s3://...)")
    p.add_argument("--name", default=default_name, help=f"study name (default {default_name})")
    p.add_argument("--resume", action="store_true", help="continue the study of this --name")
    p.add_argument("--cpus-per-trial", type=float, default=None, help="default 1")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="default 0.25 when CUDA is visible (4 trials share a GPU), else 0")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="join a running Ray cluster")
    p.add_argument("--out", default=None, help="folder for tables and plots (default results/<name>)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--max-failures", type=int, default=3, help="restarts of a trial after a lost worker")
    p.add_argument("--progress-every", type=float, default=30.0, help="seconds between progress lines")
    p.add_argument("--pack", default="auto", help="train trials that share a schedule as one packed "
                   "model per Ray trial: auto (on CUDA only) | on | off (default auto)")
    p.add_argument("--pack-size", type=int, default=DEFAULT_PACK_SIZE,
                   help=f"most members per pack (default {DEFAULT_PACK_SIZE})")
    p.add_argument("--val-size", type=int, default=None,
                   help="images held out of the training pool as a validation split (stratified, never "
                   "trained on; evaluated on the 10 sets like the test set). Default: 0 for grids (the "
                   "paper's full training set; they select nothing), 10%% of the pool for a search")
    p.add_argument("--fixed-subset", action="store_true",
                   help="draw the training subset with seed 0 for every trial (default: the trial's seed, "
                   "so the spread over seeds includes the subset's sampling; both arms of a pair share it)")
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
    if args.seeds is None or args.seeds < 1:
        raise StudyError(f"--seeds {args.seeds} is not allowed; allowed: an integer >= 1")
    for flag in ("epochs",):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise StudyError(f"--{flag} {v} is not allowed; allowed: an integer >= 1")
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


def _git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict:
    import kornia
    import mlflow
    import ray
    import torch
    import torchvision
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "kornia": kornia.__version__,
            "ray": ray.__version__, "mlflow": mlflow.__version__}


def check_storage(storage: str) -> str:
    if "://" in storage:
        return storage
    p = Path(storage).resolve()
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise StudyError(f"--storage {storage}: {probe} is not a folder; allowed: a writable folder "
                         "(or one that can be made in one) or s3://...")
    try:  # a real write (and delete) in the nearest existing folder: os.access says yes to root on a
        # read-only mount; nothing is left behind and the storage folder itself is not created yet
        with tempfile.TemporaryFile(dir=probe, prefix=".iqa-ls-probe-"):
            pass
    except OSError as e:
        raise StudyError(f"--storage {storage}: cannot write in {probe} ({e.strerror or e}); allowed: "
                         "a writable folder (or one that can be made in one) or s3://...") from None
    return str(p)


def preflight(args, trials: list[Trial]) -> dict:
    """Every check that can fail, before anything is written. Returns facts for the plan."""
    from study.tracking import TrackingError, check_tracking_uri

    if not trials:
        raise StudyError("no trials to run (empty grid)")
    keys = [t.key for t in trials]
    if len(set(keys)) != len(keys):
        raise StudyError(f"duplicate trial keys in the grid: {sorted({k for k in keys if keys.count(k) > 1})}")
    if args.cpus_per_trial is not None and args.cpus_per_trial <= 0:
        raise StudyError(f"--cpus-per-trial {args.cpus_per_trial} is not allowed; allowed: a number > 0")
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        raise StudyError(f"--gpus-per-trial {args.gpus_per_trial} is not allowed; allowed: a number >= 0")
    if getattr(args, "pack", "auto") not in PACK_MODES:
        raise StudyError(f"--pack {args.pack} is not allowed; allowed: {', '.join(PACK_MODES)}")
    if getattr(args, "pack_size", 1) < 1:
        raise StudyError(f"--pack-size {args.pack_size} is not allowed; allowed: an integer >= 1")
    if args.max_failures < 0:
        raise StudyError(f"--max-failures {args.max_failures} is not allowed; allowed: an integer >= 0")
    try:
        check_tracking_uri(args.tracking_uri)
    except TrackingError as e:
        raise StudyError(str(e)) from None
    storage = check_storage(args.storage)
    try:
        train = data_mod.load_split(trials[0].config.data, "train")
        test = data_mod.load_split(trials[0].config.data, "test")
    except data_mod.DataError as e:
        raise StudyError(f"--data: {e}") from None
    from trainables import robustness
    try:  # an official folder is read and checked here (every file, labels against the test split)
        robustness.check(trials[0].config)
    except data_mod.DataError as e:
        raise StudyError(f"--cifar10c: {e}") from None
    return {"storage": storage, "train": train, "n_test": test.images.shape[0]}


def check_resume_evaluation(recorded: dict | None, cfg: TrialConfig) -> None:
    """Refuse a --resume whose CIFAR-10-C flags differ from the ones the study's trials were recorded
    with: a checkpoint of another config is refused by the trial itself, so every unfinished trial would
    fail. (Evaluate a finished study on other data with `python -m study.cifar10c`.)"""
    if not recorded:
        return
    from trainables.config import EVAL_FIELDS

    def value(f: str):  # params are text (study.tracking: lists as JSON); absent = recorded before the field
        if f not in recorded:
            return getattr(TrialConfig(), f)
        if f == "cifar10c_corruptions":
            return tuple(json.loads(recorded[f]))
        return int(recorded[f]) if isinstance(getattr(cfg, f), int) else recorded[f]
    for f in EVAL_FIELDS:
        if value(f) != getattr(cfg, f):
            raise StudyError(f"--resume with {f}={getattr(cfg, f)!r} is not allowed: the study's trials were "
                             f"recorded with {f}={value(f)!r}; allowed: the same --cifar10c flags as the first run "
                             "(evaluate a finished study on other data with python -m study.cifar10c)")


def make_packs(specs: list[dict], size: int) -> list[dict]:
    """Group trial specs into packs (one Ray trial each): members share trainables.packed.pack_key
    (schedule, data, model code path, device) and checkpoint cadence (so they resume from one
    epoch), in grid order, at most `size` per pack and the packs of a group as even as can be (9
    trials, size 4: 3 + 3 + 3, not 4 + 4 + 1). A group of one stays an ordinary trial spec."""
    from trainables.packed import pack_key

    groups: dict[tuple, list[dict]] = {}
    for s in specs:
        cfg = TrialConfig.from_dict(s["config"])
        groups.setdefault((pack_key(cfg), cfg.checkpoint_every), []).append(s)
    out = []
    for group in groups.values():
        n = -(-len(group) // size)  # packs this group needs
        bounds = [-(-i * len(group) // n) for i in range(n + 1)]  # ceil: larger packs first
        for lo, hi in zip(bounds, bounds[1:]):
            chunk = group[lo:hi]
            if len(chunk) == 1:
                out.append(chunk[0])
                continue
            key = f"pack-{len(out)}"
            members = [{**m, "tags": {**m["tags"], "pack": key, "pack_size": len(chunk)}} for m in chunk]
            out.append({"key": key, "members": members, "cache_dir": chunk[0]["cache_dir"]})
    return out


def epochs_left(args, trials: list[Trial], rec, storage: str) -> tuple[dict[str, int], str]:
    """trial key -> epochs still to train, for the plan's estimate: all of them on a new study; on
    --resume, none for a finished trial and the epochs after its checkpoint for the others (read
    where the storage is a filesystem path; on object storage they count from epoch 0)."""
    if not args.resume:
        return {t.key: t.config.epochs for t in trials}, ""
    from study.tuning import trial_store_uri
    from trainables.train import load_checkpoint

    finished = rec.recorded_finished_keys()
    left = {}
    for t in trials:
        if t.key in finished:
            continue
        start = 0
        if "://" not in storage:
            state = load_checkpoint(Path(trial_store_uri(storage, args.name, t.key)))
            start = int(state["epoch"]) if state else 0
        left[t.key] = max(0, t.config.epochs - start)
    total = sum(t.config.epochs for t in trials)
    return left, (f"resume: {sum(left.values())} of {total} epochs left ({len(finished)} trials finished"
                  + (", checkpoints on object storage counted from epoch 0)" if "://" in storage else ")"))


def probe_throughput(cfg: TrialConfig, threads: int, device: str, seconds: float = 3.0) -> tuple[float, float]:
    """(training images/s at the trial's batch size, test images/s of the evaluation's forward pass at
    its batch size) of the Table 1 model on this machine. Measured rather than assumed: on the 2-core
    CPU the probe gave 366 test vs 287 training images/s (1.3x), not the ~3x a FLOP count suggests."""
    import torch

    from trainables.labels import soft_cross_entropy
    from trainables.train import EVAL_BATCH, build_model, build_optimizer, pick_device

    def rate(step, batch: int, budget: float) -> float:
        n, t0 = 0, None
        while True:
            step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            n += 1
            if n == 2:
                t0 = time.perf_counter()  # two warm-up steps
            elif t0 and time.perf_counter() - t0 > budget:
                return (n - 2) * batch / (time.perf_counter() - t0)

    old = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        dev = pick_device(device)
        model = build_model(cfg, dev)
        opt = build_optimizer(cfg, model)
        x = torch.randn(cfg.batch_size, 3, 32, 32, device=dev)
        q = torch.full((cfg.batch_size, 10), 0.1, device=dev)

        def train_step():
            loss = soft_cross_entropy(model(x), q)
            opt.zero_grad()
            loss.backward()
            opt.step()
        train_ips = rate(train_step, cfg.batch_size, seconds)
        xe = torch.randn(EVAL_BATCH, 3, 32, 32, device=dev)
        model.eval()
        with torch.no_grad():
            eval_ips = rate(lambda: model(xe), EVAL_BATCH, seconds / 2)
        return train_ips, eval_ips
    finally:
        torch.set_num_threads(old)


def estimate_seconds(trial_seconds: list[float], parallel: int, shared_device: bool) -> float:
    """Wall time of runs that each take `trial_seconds` alone at the probed rates. CPU: `parallel` run
    side by side, each at its own probed rate, in rounds (9 runs on 2 slots take 5 rounds, not 4.5:
    the last one runs alone). A shared device (GPU): the runs split one device's rate, so their
    times add up."""
    if not trial_seconds:
        return 0.0
    if shared_device:
        return sum(trial_seconds)
    rounds = -(-len(trial_seconds) // max(1, parallel))
    return sum(trial_seconds) / len(trial_seconds) * rounds


def run_study(args, kind: str, trials: list[Trial], tags_of_config, analyse, plan_lines=(),
              search: Search | None = None) -> int:
    """Check, print the plan, run the trials through Ray Tune with MLflow, then analyse. With
    `search`, an Optuna search runs after the grid trials (`trials` may then be empty)."""
    import torch

    if search is not None and args.resume:
        # Optuna's sampler state is not recorded, so a search cannot be continued where it stopped
        raise StudyError("--resume is not supported for a study with a search (Optuna's sampler state "
                         "is not recorded); start the search again under a new --name")
    facts = preflight(args, trials or ([Trial(search.key(0), search.base)] if search is not None else []))
    cuda = torch.cuda.is_available() and args.device != "cpu"
    # packing (trainables.packed): the grid's trials that share a schedule train as one model per Ray
    # trial; worth it on a GPU (one small model leaves it idle), not on a CPU (no idle units to fill)
    packing = args.pack == "on" or (args.pack == "auto" and cuda)
    cpus = args.cpus_per_trial if args.cpus_per_trial is not None else 1.0
    # a pack fills a GPU by itself; single trials share one (fractional GPUs)
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else (
        (1.0 if packing else 0.25) if cuda else 0.0)
    device = "cuda" if gpus > 0 else "cpu"
    trials = [Trial(t.key, t.config.replace(device=device, threads=max(1, int(cpus))), t.tags) for t in trials]
    if search is not None:
        search = dataclasses.replace(search, base=search.base.replace(device=device, threads=max(1, int(cpus))))
    n_search = search.n_trials if search is not None else 0
    out = Path(args.out or Path("results") / args.name)

    from study import tracking, tuning

    try:  # the fault-injection test hook (docs/fault-tolerance.md); refused like any bad value
        faults = tuning.parse_faults(os.environ.get(tuning.FAULT_ENV), {t.key for t in trials})
    except ValueError as e:
        raise StudyError(str(e)) from None
    rec = tracking.StudyRecorder(args.tracking_uri, args.name, kind, args.experiment)
    if rec.find_parent() and not args.resume:
        raise StudyError(f"study {args.name!r} already exists in {args.tracking_uri}; "
                         "pass --resume to continue it or choose another --name")
    if args.resume and rec.find_parent() is None:
        raise StudyError(f"--resume: no study named {args.name!r} in {args.tracking_uri}")
    if args.resume and trials:
        check_resume_evaluation(rec.recorded_trial_params(), trials[0].config)

    # --- the plan, with a measured throughput probe
    train = facts["train"]
    cfg0 = trials[0].config if trials else search.base
    n_train = min(cfg0.subset or train.images.shape[0], train.images.shape[0])
    threads = max(1, int(cpus))
    # the probe runs where the driver is: on a cluster whose head has no GPU it cannot measure the
    # workers' GPUs, so the estimate is left out rather than guessed
    ips, eval_ips = (probe_throughput(cfg0, threads, device) if device == "cpu" or torch.cuda.is_available()
                     else (None, None))
    total_cpus = os.cpu_count() or 1
    # packs are planned from every trial of the grid (a resumed run packs what is left, below)
    n_ray = (len(make_packs([{"config": t.config.to_dict(), "tags": {}, "cache_dir": ""} for t in trials],
                            args.pack_size)) if packing else len(trials))
    parallel = max(1, min(n_ray + n_search, int(total_cpus // cpus) if gpus == 0 else int(1 / gpus) if gpus else 1))
    n_test = min(cfg0.test_subset or facts["n_test"], facts["n_test"])
    left, left_note = epochs_left(args, trials, rec, facts["storage"])
    est = None
    from trainables.robustness import evaluation_sets
    # the final CIFAR-10-C evaluation of one trial: sets x images (0 sets without --cifar10c)
    c10c_sets, c10c_n = evaluation_sets(cfg0), min(cfg0.cifar10c_subset or facts["n_test"], facts["n_test"])
    c10c_images = c10c_sets * c10c_n
    if ips:
        # seconds of each run alone: its epochs left, then the final evaluation on the 10 test sets
        # (and on CIFAR-10-C)
        secs = [left[t.key] * n_train / ips + (10 * n_test + c10c_images) / eval_ips for t in trials if t.key in left]
        if packing and secs:  # no speed-up from packing assumed: the packs share their members' time
            secs = [sum(secs) / n_ray] * n_ray
        if search is not None:  # at most: every search trial runs all its epochs and evaluations
            secs += [search.base.epochs * n_train / ips + (search.evals * 10 * n_test + c10c_images) / eval_ips
                     ] * n_search
        est = estimate_seconds(secs, parallel, shared_device=gpus > 0)
    commit = _git_commit()
    vers = versions()
    searched = f" + a search of {n_search}" if search is not None else ""
    print(f"study {args.name} ({kind}): {len(trials)} trials{searched}, {cfg0.epochs} epochs each, "
          f"{n_train} training images ({train.source}, {train.checksum[:19]}), {n_test} test images x 10 sets")
    for line in plan_lines:
        print(f"  {line}")
    print(f"  device {device}; {cpus:g} CPU + {gpus:g} GPU per {'pack' if packing else 'trial'}; "
          f"up to {parallel} side by side; Ray {'at ' + args.address if args.address else 'local'}")
    if packing:
        print(f"  packing ({'forced by --pack on' if args.pack == 'on' else 'auto: CUDA'}): the {len(trials)} "
              f"grid trials run as {n_ray} Ray trial(s) of up to {args.pack_size} members"
              + ("; search trials run unpacked" if search is not None else "")
              + "; the estimate assumes no speed-up from packing")
    if cfg0.cifar10c:
        where = "regenerated from the test split (built once per worker process unless cached)" \
            if cfg0.cifar10c == CIFAR10C_REGENERATE else f"official files in {cfg0.cifar10c}"
        print(f"  CIFAR-10-C after each trial's last epoch: {where}; {c10c_sets} sets x {c10c_n} images per "
              "trial (in the estimate)")
    if left_note:
        print(f"  {left_note}")
    if ips:
        print(f"  probe: {ips:.0f} training images/s, {eval_ips:.0f} test images/s per trial ({threads} thread(s), "
              f"batch {cfg0.batch_size}, {tuning.device_name(device)}); estimated wall time {tuning._fmt(est)}")
    else:
        print(f"  probe: skipped (the driver has no {device}); no wall-time estimate")
    print(f"  runs -> {args.tracking_uri} (experiment {args.experiment}); checkpoints -> {facts['storage']}/"
          f"{args.name}/trials; tables -> {out}")

    parent_tags = {"preset": args.preset, "seeds": args.seeds, "data_source": train.source,
                   "data_checksum": train.checksum, "git_commit": commit, "versions": vers,
                   "device_name": tuning.device_name(device) if ips else device,
                   **(search.parent_tags if search is not None else {})}
    sched = {k: getattr(cfg0, k) for k in ("epochs", "batch_size", "lr", "lr_decay_every", "subset",
                                            "test_subset", "data")}
    flags = {k: v for k, v in vars(args).items() if k != "resume" and v is not None}
    rec.open_parent(args.resume, parent_tags, {**flags, **sched, "n_trials": len(trials) + n_search})
    done = rec.finished_keys() if args.resume else set()
    todo = [t for t in trials if t.key not in done]
    if done:
        print(f"  resume: {len(done)} finished trials kept, {len(todo)} to run (from their checkpoints)")

    def tags_of(spec):
        return {**tags_of_config(spec["config"]), **spec["tags"], "data_source": train.source,
                "data_checksum": train.checksum, "git_commit": commit, "versions": vers}

    def spec_of(key: str, config: TrialConfig, tags: dict) -> dict:
        return {"key": key, "config": config.to_dict(), "tags": tags,
                "store": tuning.trial_store_uri(facts["storage"], args.name, key),
                "cache_dir": str(data_mod.default_cache_dir()), "fault": faults.get(key)}

    specs = [spec_of(t.key, t.config, t.tags) for t in todo]
    runs = make_packs(specs, args.pack_size) if packing else specs  # what Ray runs: trials or packs
    status = "FINISHED"
    if specs or search is not None:
        import ray
        ray.init(address=args.address, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR", **({} if args.address else {"object_store_memory": 256 * 2**20}))
        printer = tuning.ProgressPrinter(sum(t.config.epochs for t in todo)
                                         + n_search * (search.base.epochs if search is not None else 0),
                                         args.progress_every)
        cb = tuning.MlflowCallback(rec, tags_of)
        try:
            if runs:
                tuning.run_tuner(runs, name=args.name, storage=facts["storage"],
                                 resources={"cpu": cpus, "gpu": gpus}, callbacks=[cb, printer],
                                 max_failures=args.max_failures)
            if search is not None:
                tuning.run_search(search, spec_of, name=args.name, storage=facts["storage"],
                                  resources={"cpu": cpus, "gpu": gpus}, callbacks=[cb, printer],
                                  max_failures=args.max_failures)
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            if status == "KILLED":
                rec.interrupt_running_children()
                rec.close_parent("KILLED")
            ray.shutdown()
        if cb.failed:
            print(f"  {len(cb.failed)} trial(s) failed: " + "; ".join(f"{k}: {v}" for k, v in sorted(cb.failed.items())))
        if cb.stopped_early:
            print(f"  {len(cb.stopped_early)} trial(s) stopped early by ASHA: "
                  + ", ".join(f"{k} (epoch {e})" for k, e in sorted(cb.stopped_early.items())))
        # Ray answers Ctrl-C by stopping the trials and returning normally: a study is finished
        # only when every trial of the grid reached an end (finished or failed)
        ended = rec.finished_keys() | set(cb.failed)
        unfinished = sorted(s["key"] for s in specs if s["key"] not in ended)
        if unfinished:
            status = "KILLED"
            rec.interrupt_running_children()  # their MLflow runs say so too (a --resume opens them again)
            print(f"  interrupted: {len(unfinished)} trial(s) unfinished ({', '.join(unfinished)}); "
                  f"run the same command with --resume to continue them from their checkpoints")
    rec.close_parent(status)
    files = analyse(rec.parent_id, out)
    if cfg0.cifar10c:  # issue 14: the CIFAR-10-C tables beside the study's own (analysis.cifar10c)
        from analysis.cifar10c import AnalysisError, build_cifar10c
        from analysis.cifar10c import format_console as c10c_console
        try:
            print(c10c_console(build_cifar10c(parent_run_id=rec.parent_id, tracking_uri=args.tracking_uri,
                                              experiment=args.experiment, out_dir=out)))
        except AnalysisError as e:
            print(f"  CIFAR-10-C tables not built: {e}")
    print(f"open these runs: {tracking.ui_command(args.tracking_uri)}  (experiment {args.experiment}, "
          f"parent run {args.name})")
    return 0 if files is not None and status == "FINISHED" else 1


def main_wrapper(fn) -> int:
    """Run a study main; a refusal is one line on stderr and exit code 2."""
    try:
        return fn()
    except (StudyError, ConfigError, data_mod.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def dump_json(obj) -> str:
    return json.dumps(obj, sort_keys=True)
