"""What every study command shares: flags, checks before any work, the plan, the run, the end.

A study command (`study.table2`, `study.ablate`) turns its flags into a list of trials — each a
key, a TrialConfig and a few tags — and hands them to `run_study`. Everything is checked before
the first trial starts (and before anything is written); a bad value exits with one line on
stderr and code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from search_spaces.presets import PRESETS, resolve
from study.spec import EXECUTORS, SpecError, StudySpec
from trainables import data as data_mod
from trainables.config import CIFAR10C_REGENERATE, ConfigError, TrialConfig

DEFAULT_STORAGE = "ray_results"
DEFAULT_PRESET = "smoke"  # the pipeline check: minutes, not the hour of quick (help says each preset's time)
DEFAULT_PACK_SIZE = 16  # members per pack: Table 2 (9) or one ablation grid fits in one
MANIFEST_FILE = "study.json"  # <storage>/<name>/study.json: what the study was started with
# Flags that only run a study (where, how fast, how loud, where its records go): a --resume may give
# other values. Every other flag, the resolved schedule and the grid define the study (as
# trainables.config.RUN_FIELDS does for one trial) and must be what the study recorded.
RUN_FLAGS = ("resume", "cpus_per_trial", "gpus_per_trial", "address", "out", "device", "max_failures",
             "progress_every", "pack", "pack_size", "tracking_uri", "experiment", "storage", "name", "executor",
             "estimate_only", "step_impl")
# How long each preset takes (the help text; measured on the 2-core CPU, see README "Presets").
PRESET_TIMES = {"smoke": "pipeline check, ~3 min on 2 CPU cores; accuracies near chance",
                "demo": "the paper's robustness effect, ~30 min on 2 idle CPU cores",
                "quick": "~1 h on 2 CPU cores", "overfit": "~8 min per trial on 1 CPU thread",
                "paper": "Sec. 4.2 unchanged: GPUs, days",
                "finetune-demo": "strategies 1, 8, 9 from scratch and fine-tuned, with CIFAR-10-C: "
                                 "docs/results/finetune-cifar10c-demo.md"}


class StudyError(RuntimeError):
    """Refused before any trial starts; the message is the one line the user sees."""


@dataclass
class Trial:
    key: str  # unique within the study: names the checkpoint folder, tags the MLflow run
    config: TrialConfig
    tags: dict = field(default_factory=dict)  # extra MLflow tags (e.g. setting, ablation)
    title: str = ""  # the MLflow run name, e.g. "s3 IQA-LS MIX_blur seed0" (default: the key)


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
    times = "; ".join(f"{k}: {PRESET_TIMES[k]}" for k in PRESETS if k in PRESET_TIMES)
    p.add_argument("--preset", default=DEFAULT_PRESET, help=f"schedule preset, one of {', '.join(PRESETS)} "
                   f"(default {DEFAULT_PRESET}). {times}")
    p.add_argument("--seeds", type=int, default=1, help="seeds per setting (default 1)")
    p.add_argument("--data", default="cifar10", help="cifar10 (download), a cifar-10-batches-py folder, "
                   "or a parquet folder/file (e.g. ../shared/data/cifar10-jpeg)")
    p.add_argument("--epochs", type=int, help="override the preset's epochs (decay step scales along)")
    p.add_argument("--subset", type=int, help="override the preset's training subset (0 = all)")
    p.add_argument("--test-subset", type=int, help="override the preset's test subset (0 = all)")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
                   help="where runs are recorded: sqlite:///PATH (a file; artifacts go to mlartifacts/ beside "
                   "it) or http(s)://HOST:PORT (an mlflow server) (default $MLFLOW_TRACKING_URI, else "
                   "sqlite:///mlflow.db)")
    p.add_argument("--experiment", default="iqa-ls", help="MLflow experiment the study's runs go to, created "
                   "when missing (default iqa-ls)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="Ray storage_path and trial checkpoints "
                   "(a path every node reaches, or s3://...)")
    p.add_argument("--name", default=default_name, help=f"study name: 1-100 of A-Z a-z 0-9 . _ -, starting "
                   f"with a letter or digit (default {default_name})")
    p.add_argument("--resume", action="store_true", help="continue the study of this --name with the flags "
                   "it was started with (only --cpus/--gpus-per-trial, --device, --pack*, --progress-every, "
                   "--max-failures, --address and --out may differ)")
    p.add_argument("--cpus-per-trial", type=float, default=None, help="default 1")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="default 0.25 when CUDA is visible (4 trials share a GPU), else 0")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="join a running Ray cluster")
    p.add_argument("--out", default=None, help="folder for tables and plots (default results/<name>)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (GPU N of this machine; "
                   "local Ray only)")
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
    p.add_argument("--precision", default="auto",
                   help="numerics: auto (bf16 autocast on CUDA, fp32 on a CPU) | fp32 | tf32 | bf16 "
                   "(docs/paper-mapping.md)")
    p.add_argument("--step-impl", default="auto",
                   help="how a training step is launched: auto (one captured CUDA graph on CUDA, eager on a CPU) | "
                   "eager | cuda_graph; a run flag (trainables/fast.py): study.gpu_campaign falls back to eager "
                   "when the captured step disagrees with it")
    p.add_argument("--executor", default="ray", help=f"what schedules the trials: {' | '.join(EXECUTORS)} "
                   "(default ray: Ray Tune, this machine or a cluster; local: in this process, one trial or "
                   "pack after another, without Ray; the same records, checkpoints and --resume)")
    p.add_argument("--estimate-only", action="store_true",
                   help="check every input, print the plan with its measured wall-time estimate, and stop "
                   "(nothing is written)")
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
    """The library versions a run records. Ray's is read from its package metadata, not by importing
    it: `--executor local` runs where Ray is not installed (then "not installed")."""
    from importlib import metadata

    import kornia
    import mlflow
    import torch
    import torchvision
    try:
        ray_version = metadata.version("ray")
    except metadata.PackageNotFoundError:
        ray_version = "not installed"
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "kornia": kornia.__version__,
            "ray": ray_version, "mlflow": mlflow.__version__}


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


def preflight(spec: StudySpec, trials: list[Trial]) -> dict:
    """Every check of the inputs that can fail (the spec checked the flags), before anything is
    written. Returns facts for the plan."""
    from study.tracking import TrackingError, check_tracking_uri

    if not trials:
        raise StudyError("no trials to run (empty grid)")
    keys = [t.key for t in trials]
    if len(set(keys)) != len(keys):
        raise StudyError(f"duplicate trial keys in the grid: {sorted({k for k in keys if keys.count(k) > 1})}")
    try:
        check_tracking_uri(spec.tracking_uri)
    except TrackingError as e:
        raise StudyError(str(e)) from None
    storage = check_storage(spec.storage)
    try:
        train = data_mod.load_split(trials[0].config.data, "train")
        test = data_mod.load_split(trials[0].config.data, "test")
    except data_mod.DataError as e:
        raise StudyError(f"--data: {e}") from None
    check_parents(trials)
    from trainables import robustness
    try:  # an official folder is read and checked here (every file, labels against the test split)
        robustness.check(trials[0].config)
    except data_mod.DataError as e:
        raise StudyError(f"--cifar10c: {e}") from None
    return {"storage": storage, "train": train, "n_test": test.images.shape[0]}


def check_parents(trials: list[Trial]) -> None:
    """Every fine-tune's parent (TrialConfig.finetune_from) is a from-scratch Original of the same
    grid that shares its training set, data, schedule and seed (TrialConfig.parent_mismatch): the
    study trains it first and the fine-tune starts from its final weights. Refused in one line."""
    by_key = {t.key: t for t in trials}
    for t in trials:
        if not t.config.finetune:
            continue
        parent = by_key.get(t.config.finetune_from)
        if parent is None:
            raise StudyError(f"trial {t.key}: finetune_from={t.config.finetune_from!r} is not allowed; "
                             f"allowed: a trial of this study's grid ({', '.join(sorted(by_key)[:4])}, ...)")
        diff = t.config.parent_mismatch(parent.config)
        if diff:
            k, a, b = diff[0]
            raise StudyError(f"trial {t.key}: its parent {parent.key} has {k}={a!r}; allowed: {k}={b!r} "
                             "(a fine-tune starts from the Original of the same training set, data, schedule "
                             "and seed)")


# ------------------------------------------------------------------ the study's own records in storage
def study_folder(storage: str, name: str) -> str:
    """<storage>/<name>: the study's trial checkpoints, Ray folders, manifest and driver lock."""
    return f"{storage.rstrip('/')}/{name}"


def _read_text(uri: str) -> str | None:
    """A small file on a path or a pyarrow filesystem URI; None when it is not there."""
    if "://" not in uri:
        try:
            return Path(uri).read_text()
        except FileNotFoundError:
            return None
    import pyarrow.fs as pafs
    fs, path = pafs.FileSystem.from_uri(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def _write_text(uri: str, text: str) -> None:
    if "://" not in uri:
        from trainables.train import _atomic_write_text
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(Path(uri), text)
        return
    import pyarrow.fs as pafs
    fs, path = pafs.FileSystem.from_uri(uri)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def trial_folders(storage: str, name: str) -> list[str]:
    """Names of the trial checkpoint folders the storage holds for study `name`."""
    root = f"{study_folder(storage, name)}/trials"
    if "://" not in root:
        d = Path(root)
        return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []
    import pyarrow.fs as pafs
    fs, path = pafs.FileSystem.from_uri(root)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def check_no_checkpoints(spec: StudySpec, storage: str) -> None:
    """Without --resume, a study's checkpoints are never picked up: refuse a name the storage holds."""
    if spec.resume:
        return
    found = trial_folders(storage, spec.name)
    manifest = _read_text(f"{study_folder(storage, spec.name)}/{MANIFEST_FILE}")
    if found or manifest is not None:
        what = f"{len(found)} trial checkpoint folder(s)" if found else f"the study's {MANIFEST_FILE}"
        raise StudyError(f"--storage {spec.storage} already holds {what} of a study named {spec.name!r} "
                         f"({study_folder(storage, spec.name)}); pass --resume to continue that study, or "
                         "choose another --name or --storage (or delete that folder to start it again)")


def study_settings(spec: StudySpec, trials: list[Trial], search) -> dict:
    """What defines the study, as recorded in its manifest: the flags that are not RUN_FLAGS and each
    trial's defining config (TrialConfig.defining)."""
    flags = {k: v for k, v in sorted(spec.flags.items()) if k not in RUN_FLAGS and v is not None}
    return {"flags": flags, "trials": {t.key: t.config.defining() for t in trials},
            "search": search.n_trials if search is not None else 0}


def _shown(v) -> str:
    return "(not given)" if v is None else (json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else str(v))


def check_resume_matches(spec: StudySpec, settings: dict, recorded_manifest: dict | None,
                         recorded_params: dict) -> None:
    """--resume continues the recorded study only: the grid and every trial's defining config must be
    the recorded ones. A difference is refused in one line naming the flag (or, when no flag explains
    it, the trial and field) with the recorded and the given value."""
    from study.tracking import _val

    given = settings["flags"]
    if recorded_manifest is not None:
        old_trials, new_trials = recorded_manifest["trials"], settings["trials"]
        if old_trials == new_trials:
            return  # the same trials: flags that differ change nothing a trial does
        old_flags = recorded_manifest.get("flags", {})

        def effective(flags: dict, trials: dict, k: str) -> str:
            # a schedule flag not given is the preset's value: say which, from the trials themselves
            if flags.get(k) is None and trials and k in next(iter(trials.values())):
                return f"(not given: {_shown(next(iter(trials.values()))[k])})"
            return _shown(flags.get(k))

        for k in sorted(set(old_flags) | set(given)):
            if _shown(old_flags.get(k)) != _shown(given.get(k)):
                raise StudyError(_mismatch(spec, f"--{k.replace('_', '-')}", effective(old_flags, old_trials, k),
                                           effective(given, new_trials, k)))
        if set(old_trials) != set(new_trials):
            raise StudyError(_mismatch(spec, "the grid", f"{len(old_trials)} trials", f"{len(new_trials)} trials "
                                       f"(new: {', '.join(sorted(set(new_trials) - set(old_trials))[:3]) or '-'}; "
                                       f"gone: {', '.join(sorted(set(old_trials) - set(new_trials))[:3]) or '-'})"))
        defaults = TrialConfig().defining()  # a field added since a trial was recorded: its default
        for key in sorted(new_trials):
            old = {**defaults, **old_trials[key]}
            diff = [(k, old.get(k), v) for k, v in sorted(new_trials[key].items()) if old.get(k) != v]
            if diff:
                k, a, b = diff[0]
                raise StudyError(_mismatch(spec, f"trial {key}'s {k}", _shown(a), _shown(b)))
        return
    # a study recorded before manifests: its parent run's params hold the flags and the schedule
    first = next(iter(settings["trials"].values()), {})
    current = {**{k: _val(first[k]) for k in SCHEDULE_PARAMS if k in first},
               **{k: _val(v) for k, v in given.items()}}
    for k in sorted(recorded_params):
        if k in RUN_FLAGS or k == "n_trials":
            continue
        if k in current and recorded_params[k] != current[k]:
            raise StudyError(_mismatch(spec, f"--{k.replace('_', '-')}", recorded_params[k], current[k]))
    n = len(settings["trials"]) + settings["search"]
    if "n_trials" in recorded_params and recorded_params["n_trials"] != str(n):
        raise StudyError(_mismatch(spec, "the grid", f"{recorded_params['n_trials']} trials", f"{n} trials"))


def _mismatch(spec: StudySpec, what: str, recorded: str, given: str) -> str:
    return (f"--resume: {what} is {given} but study {spec.name!r} was recorded with {recorded}; resume with "
            "the recorded value, or start a new study under another --name")


SCHEDULE_PARAMS = ("epochs", "batch_size", "lr", "lr_decay_every", "subset", "test_subset", "data")


def resume_schedule_params(trials: list[Trial], search) -> dict:
    """The schedule as the parent run's params record it (compared on a resume of an older study)."""
    cfg0 = trials[0].config if trials else search.base
    return {k: getattr(cfg0, k) for k in SCHEDULE_PARAMS}


def take_lock(storage: str, name: str):
    """The study's driver lock (study.lock), or a StudyError naming its holder."""
    from study.lock import LockHeld, StudyLock

    lock = StudyLock(study_folder(storage, name))
    try:
        lock.acquire()
    except LockHeld as e:
        raise StudyError(str(e)) from None
    return lock


@contextlib.contextmanager
def shielded(what: str):
    """Hold Ctrl-C while `what` (the MLflow writes that close a study) runs, then raise it: a second
    Ctrl-C must not leave runs RUNNING. One line says why the command did not stop at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hits = []

    def hold(sig, frame):
        if not hits:
            print(f"  Ctrl-C: {what} first (a few seconds)", file=sys.stderr, flush=True)
        hits.append(sig)

    old = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if hits:
        raise KeyboardInterrupt


def check_resume_evaluation(recorded: dict | None, cfg: TrialConfig) -> None:
    """Refuse a --resume whose CIFAR-10-C flags differ from the ones the study's trials were recorded
    with: its finished trials would be evaluated on other data than the rest. (Evaluate a finished study
    on other data with `python -m study.cifar10c`.) The manifest's flag check (check_resume_matches)
    catches this too; this check also covers a study recorded before manifests (its params)."""
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
    from trainables.packed import pack_key, packable

    groups: dict[tuple, list[dict]] = {}
    out = []
    for s in specs:
        cfg = TrialConfig.from_dict(s["config"])
        if not packable(cfg):  # a fine-tune runs alone, from its parent's final weights
            out.append(s)
            continue
        groups.setdefault((pack_key(cfg), cfg.checkpoint_every), []).append(s)
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


def epochs_left(spec, trials: list[Trial], rec, storage: str) -> tuple[dict[str, int], str]:
    """trial key -> epochs still to train, for the plan's estimate: all of them on a new study; on
    --resume, none for a finished trial and the epochs after its checkpoint for the others (read
    where the storage is a filesystem path; on object storage they count from epoch 0)."""
    if not spec.resume:
        return {t.key: t.config.total_epochs - t.config.first_epoch for t in trials}, ""
    from study.execution import trial_store_uri
    from trainables.train import load_checkpoint

    finished = rec.recorded_finished_keys()
    left = {}
    for t in trials:
        if t.key in finished:
            continue
        start = 0
        if "://" not in storage:
            state = load_checkpoint(Path(trial_store_uri(storage, spec.name, t.key)))
            start = int(state["epoch"]) if state else 0
        left[t.key] = max(0, t.config.total_epochs - max(start, t.config.first_epoch))
    total = sum(t.config.total_epochs - t.config.first_epoch for t in trials)
    return left, (f"resume: {sum(left.values())} of {total} epochs left ({len(finished)} trials finished"
                  + (", checkpoints on object storage counted from epoch 0)" if "://" in storage else ")"))


PROBE_WARMUP_CUDA, PROBE_WARMUP_CPU = 5, 1  # untimed steps before the probe's clock starts


def probe_throughput(cfg: TrialConfig, threads: int, device: str, seconds: float = 3.0,
                     members: int = 1) -> tuple[float, float]:
    """(training images/s at the trial's batch size, test images/s of the evaluation's forward pass at
    its batch size) of the Table 1 model on this machine, with the trial's precision and step
    (trainables/fast.py: one CUDA graph per step on CUDA). With `members` > 1, the training rate of a
    pack of that many (trainables.packed, all members' images counted): what a packed study's
    trials run at. Measured rather than assumed: on the 2-core CPU the probe gave 366 test vs 287
    training images/s (1.3x), not the ~3x a FLOP count suggests."""
    import torch

    from trainables.labels import soft_cross_entropy
    from trainables.train import (
        EVAL_BATCH,
        build_model,
        build_optimizer,
        numerics,
        pick_device,
        step_impl_for,
    )

    def rate(step, batch: int, budget: float) -> float:
        # warm-up steps: on CUDA a graph is captured on the first and the allocator settles over a few;
        # on a CPU the first step's one-time work (oneDNN primitives, allocations) is all there is, and
        # each further warm-up step costs a whole step there (~3 s for an evaluation batch on 2 cores)
        warm = PROBE_WARMUP_CUDA if dev.type == "cuda" else PROBE_WARMUP_CPU
        n, t0 = 0, None
        while True:
            step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            n += 1
            if n == warm:
                t0 = time.perf_counter()
            elif t0 and time.perf_counter() - t0 > budget:
                return (n - warm) * batch / (time.perf_counter() - t0)

    old = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        dev = pick_device(device)
        cfg = cfg.replace(device=str(dev))
        amp, impl = numerics(cfg, dev), step_impl_for(cfg, dev)
        models = [build_model(cfg.replace(seed=cfg.seed + k), dev) for k in range(members)]
        x = torch.randn(members, cfg.batch_size, 3, 32, 32, device=dev)
        q = torch.full((members, cfg.batch_size, 10), 0.1, device=dev)
        if members > 1:
            from trainables.packed import Pack
            pack = Pack.of_models(cfg, models)
            step = pack.stepper(impl, amp)
            train_ips = rate(lambda: step(x, q), members * cfg.batch_size, seconds)
        else:
            model, opt = models[0], build_optimizer(cfg, models[0])
            xm = x[0].contiguous(memory_format=torch.channels_last) if cfg.channels_last else x[0]

            def loss_fn(xb, qb):
                with amp():
                    logits = model(xb)
                return soft_cross_entropy(logits.float(), qb), logits
            if impl == "cuda_graph":
                from trainables.fast import CapturedStep
                step = CapturedStep(loss_fn, opt, list(model.parameters()))
            else:
                def step(xb, qb):
                    loss, _ = loss_fn(xb, qb)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            train_ips = rate(lambda: step(xm, q[0]), cfg.batch_size, seconds)
        model = models[0]
        xe = torch.randn(EVAL_BATCH, 3, 32, 32, device=dev)
        model.eval()
        with torch.no_grad(), amp():
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


def run_study(spec: StudySpec, kind: str, trials: list[Trial], tags_of_config, analyse, plan_lines=(),
              search: Search | None = None) -> int:
    """Check, print the plan, run the trials with the spec's executor (Ray Tune or this process),
    recording them in MLflow, then analyse. With `search`, an Optuna search runs after the grid trials
    (`trials` may then be empty). The study's driver lock (study.lock) is held from the checks that
    read its records to the end, and released however the command ends. Returns 0 when every trial
    finished, 1 when any did not."""
    with contextlib.ExitStack() as held:
        return _run_study(spec, kind, trials, tags_of_config, analyse, plan_lines, search, held)


def executor_module(name: str):
    """The module that runs a study's trials: study.tuning (Ray) or study.local (this process). Only
    `--executor ray` imports Ray."""
    if name == "local":
        from study import local
        return local
    from study import tuning
    return tuning


def _run_study(spec: StudySpec, kind, trials, tags_of_config, analyse, plan_lines, search, held) -> int:
    import torch

    from study import execution, tracking

    tracking.set_http_env()
    t_start = time.time()
    if search is not None and spec.resume:
        # Optuna's sampler state is not recorded, so a search cannot be continued where it stopped
        raise StudyError("--resume is not supported for a study with a search (Optuna's sampler state "
                         "is not recorded); start the search again under a new --name")
    if search is not None and spec.executor == "local":
        raise StudyError("--search is not allowed with --executor local (Optuna's trials and ASHA's stops are "
                         "scheduled by Ray Tune); allowed: --executor ray")
    facts = preflight(spec, trials or ([Trial(search.key(0), search.base)] if search is not None else []))
    device, packing, cpus, gpus = spec.run_device, spec.packing, spec.cpus_per_trial, spec.gpus_per_trial
    trials = [Trial(t.key, t.config.replace(device=device, threads=spec.threads, precision=spec.precision,
                                             step_impl=spec.step_impl),
                    t.tags, t.title) for t in trials]
    if search is not None:
        search = dataclasses.replace(search, base=search.base.replace(device=device, threads=spec.threads,
                                                                      precision=spec.precision,
                                                                      step_impl=spec.step_impl))
    n_search = search.n_trials if search is not None else 0
    out = Path(spec.out or Path("results") / spec.name)

    try:  # the fault-injection test hook (docs/fault-tolerance.md); refused like any bad value
        faults = execution.parse_faults(os.environ.get(execution.FAULT_ENV), {t.key for t in trials})
    except ValueError as e:
        raise StudyError(str(e)) from None
    storage = facts["storage"]
    db = tracking.sqlite_path(spec.tracking_uri)
    if spec.resume and db is not None and not db.is_file():  # refused before the store is created
        raise StudyError(f"--resume: no tracking store at {db} (--tracking-uri {spec.tracking_uri}), so no "
                         f"study named {spec.name!r} to resume")
    check_no_checkpoints(spec, storage)  # read-only; again below, under the lock
    settings = study_settings(spec, trials, search)
    if not spec.estimate_only:
        # the lock first: a second driver is refused before it writes anything (not even a new store)
        lock = take_lock(storage, spec.name)
        held.callback(lock.release)  # on return, exception, Ctrl-C and SIGTERM (Ray's handler exits)
        # under the lock: what the study's records say now cannot change until we are done
        check_no_checkpoints(spec, storage)
    if spec.estimate_only and db is not None and not db.is_file():
        rec = None  # nothing recorded yet, and an estimate creates no store
    else:
        rec = tracking.StudyRecorder(spec.tracking_uri, spec.name, kind, spec.experiment)
    recorded = rec.recorded() if rec is not None else None
    if recorded and not spec.resume:
        raise StudyError(f"study {spec.name!r} already exists in {spec.tracking_uri}; "
                         "pass --resume to continue it or choose another --name")
    if spec.resume and recorded is None:
        raise StudyError(f"--resume: no study named {spec.name!r} in {spec.tracking_uri}")
    manifest_uri = f"{study_folder(storage, spec.name)}/{MANIFEST_FILE}"
    if spec.resume:
        manifest = _read_text(manifest_uri)
        rec_storage = recorded[1].get(f"{tracking.T}storage")
        if manifest is None and rec_storage and rec_storage != storage:
            raise StudyError(f"--resume: --storage {storage} holds no study {spec.name!r}, which was recorded "
                             f"with --storage {rec_storage}; resume with --storage {rec_storage}")
        check_resume_matches(spec, settings, json.loads(manifest) if manifest else None, recorded[0])
    if spec.resume and trials:
        check_resume_evaluation(rec.recorded_trial_params(), trials[0].config)

    # --- the plan, with a measured throughput probe
    plan: list[str] = []

    def say(line: str) -> None:  # the plan is printed and becomes the parent run's description
        plan.append(line)
        print(line, flush=True)

    train = facts["train"]
    cfg0 = trials[0].config if trials else search.base
    n_train = min(cfg0.subset or train.images.shape[0], train.images.shape[0])
    left, left_note = epochs_left(spec, trials, rec, storage) if rec is not None else (
        {t.key: t.config.total_epochs - t.config.first_epoch for t in trials}, "")
    nothing_left = spec.resume and search is None and not left
    # packs are planned from every trial of the grid (a resumed run packs what is left, below)
    packs = make_packs([{"config": t.config.to_dict(), "tags": {}, "cache_dir": ""} for t in trials],
                       spec.pack_size) if packing else []
    n_ray = len(packs) if packing else len(trials)
    members = max((len(p.get("members", [p])) for p in packs), default=1)
    # the probe runs where the driver is: on a cluster whose head has no GPU it cannot measure the
    # workers' GPUs, so the estimate is left out rather than guessed; a resume with nothing left to
    # run has nothing to estimate. With packing it times the pack's step (the largest pack's size).
    ips, eval_ips = (probe_throughput(cfg0, spec.threads, spec.probe_device, members=members)
                     if not nothing_left and (device == "cpu" or torch.cuda.is_available()) else (None, None))
    total_cpus = os.cpu_count() or 1
    if spec.executor == "local":
        parallel = 1  # one trial (or pack) after another
    else:
        parallel = max(1, min(n_ray + n_search, int(total_cpus // cpus) if gpus == 0 else int(1 / gpus) if gpus else 1))
    n_test = min(cfg0.test_subset or facts["n_test"], facts["n_test"])
    est = None
    from trainables.robustness import evaluation_sets
    # the final CIFAR-10-C evaluation of one trial: sets x images (0 sets without --cifar10c)
    c10c_sets, c10c_n = evaluation_sets(cfg0), min(cfg0.cifar10c_subset or facts["n_test"], facts["n_test"])
    c10c_images = c10c_sets * c10c_n
    if ips:
        if packing:  # the probed rate is the pack's, all its members at once: the packs share it
            total = sum(left.values()) * n_train / ips + len(left) * (10 * n_test + c10c_images) / eval_ips
            secs = [total / n_ray] * n_ray if left else []
        else:  # seconds of each run alone: its epochs left, then the final evaluation on the 10 test sets
            # (and on CIFAR-10-C)
            secs = [left[t.key] * n_train / ips + (10 * n_test + c10c_images) / eval_ips
                    for t in trials if t.key in left]
        if search is not None:  # at most: every search trial runs all its epochs and evaluations
            secs += [search.base.epochs * n_train / ips + (search.evals * 10 * n_test + c10c_images) / eval_ips] * n_search
        est = estimate_seconds(secs, parallel, shared_device=gpus > 0 or spec.executor == "local")
    commit = _git_commit()
    vers = versions()
    searched = f" + a search of {n_search}" if search is not None else ""
    say(f"study {spec.name} ({kind}): {len(trials)} trials{searched}, {cfg0.epochs} epochs each, "
        f"{n_train} training images ({train.source}, {train.checksum[:19]}), {n_test} test images x 10 sets")
    if spec.preset == "smoke":
        say(f"  {SMOKE_NOTE}")
    for line in plan_lines:
        say(f"  {line}")
    where = (f"Ray {'at ' + spec.address if spec.address else 'local'}" if spec.executor == "ray"
             else "this process (--executor local), one after another")
    say(f"  device {device}, precision {spec.precision}; {cpus:g} CPU + {gpus:g} GPU per "
        f"{'pack' if packing else 'trial'}; up to {parallel} side by side; {where}")
    if packing:
        say(f"  packing ({'forced by --pack on' if spec.pack == 'on' else 'auto: CUDA'}): the {len(trials)} "
            f"grid trials run as {n_ray} pack(s) of up to {spec.pack_size} members"
            + ("; search trials run unpacked" if search is not None else ""))
    if cfg0.cifar10c:
        where_c = ("regenerated from the test split (built once per worker process unless cached)"
                   if cfg0.cifar10c == CIFAR10C_REGENERATE else f"official files in {cfg0.cifar10c}")
        say(f"  CIFAR-10-C after each trial's last epoch: {where_c}; {c10c_sets} sets x {c10c_n} images per "
            "trial (in the estimate)")
    tunes = [t.config for t in trials if t.config.finetune]
    if tunes:
        f = tunes[0]
        decay = (f"x{f.lr_decay:g} every {f.finetune_lr_decay_every} epochs" if f.finetune_lr_decay_every
                 else "constant")
        say(f"  fine-tune: {len(tunes)} trial(s) start from their Original parent's final weights once the "
            f"{len(trials) - len(tunes)} from-scratch trials are done: epochs {f.epochs + 1}.."
            f"{f.total_epochs}, lr {f.finetune_lr:g} {decay}, a fresh SGD; unpacked")
    if left_note:
        say(f"  {left_note}")
    if not spec.estimate_only and lock.broke:
        say(f"  study lock: {lock.broke}")
    probed = f"{'a pack of ' + str(members) if members > 1 else 'one trial'}"
    if ips:
        say(f"  probe: {ips:.0f} training images/s, {eval_ips:.0f} test images/s for {probed} ({spec.threads} "
            f"thread(s), batch {cfg0.batch_size}, {execution.device_name(spec.probe_device)}); estimated wall "
            f"time {execution.fmt_duration(est)}")
    elif nothing_left:
        say("  probe: skipped (every trial is finished: nothing to run)")
    else:
        say(f"  probe: skipped (the driver has no {device}); no wall-time estimate")
    artifacts = rec.artifact_location() if rec is not None else tracking.artifact_location_for(spec.tracking_uri)
    say(f"  runs -> {spec.tracking_uri} (experiment {spec.experiment}; artifacts -> {artifacts}); "
        f"checkpoints -> {storage}/{spec.name}/trials; tables -> {out}")
    if spec.estimate_only:
        print("estimate only (--estimate-only): nothing was written")
        return 0

    parent_tags = {"preset": spec.preset, "seeds": spec.seeds, "data_source": train.source,
                   "data_checksum": train.checksum, "git_commit": commit, "versions": vers,
                   "device_name": execution.device_name(spec.probe_device) if ips else device, "storage": storage,
                   "executor": spec.executor, **grid_tags(trials),
                   **(search.parent_tags if search is not None else {})}
    sched = resume_schedule_params(trials, search)
    flags = {k: v for k, v in spec.flags.items() if k != "resume"}
    description = (f"{'Resumed' if spec.resume else 'Started'} {time.strftime('%Y-%m-%d %H:%M:%S')} with:\n\n"
                   f"    {spec.command}\n\nPlan:\n\n" + "\n".join(f"    {line}" for line in plan))
    rec.open_parent(spec.resume, parent_tags, {**flags, **sched, "n_trials": len(trials) + n_search},
                    description=description, reopen=not nothing_left)
    if not spec.resume or _read_text(manifest_uri) is None:  # what a later --resume is checked against
        _write_text(manifest_uri, json.dumps({"name": spec.name, "kind": kind, "created": time.time(),
                                              **settings}, sort_keys=True, indent=1))
    done = rec.finished_keys() if spec.resume else set()
    todo = [t for t in trials if t.key not in done]
    if done:
        print(f"  resume: {len(done)} finished trials kept, {len(todo)} to run (from their checkpoints)")

    # what every trial's run is tagged with besides its config: a small dict, never the data (Ray
    # pickles the callbacks into its experiment state)
    common_tags = {"data_source": train.source, "data_checksum": train.checksum, "git_commit": commit,
                   "versions": vers}

    def spec_of(key: str, config: TrialConfig, tags: dict, title: str = "") -> dict:
        out = {"key": key, "config": config.to_dict(), "tags": tags, "run_name": title or key,
               "store": execution.trial_store_uri(storage, spec.name, key),
               "cache_dir": str(data_mod.default_cache_dir()), "fault": faults.get(key)}
        if config.finetune:  # where its parent's final weights are: only runs it (never compared)
            out.update(parent=config.finetune_from,
                       parent_store=execution.trial_store_uri(storage, spec.name, config.finetune_from))
        return out

    specs = [spec_of(t.key, t.config, t.tags, t.title) for t in todo]
    runs = make_packs(specs, spec.pack_size) if packing else specs  # what the executor runs: trials or packs
    status = "FINISHED"
    failed: dict[str, str] = {}
    if specs or search is not None:
        progress = execution.Progress(
            [s["key"] for s in specs], sum(left.get(s["key"], 0) for s in specs)
            + n_search * (search.base.epochs if search is not None else 0),
            spec.progress_every, kept=len(done), n_search=n_search)
        recording = execution.Recording(rec, tags_of_config, common_tags)
        run = dataclasses.replace(spec, storage=storage, cpus_per_trial=cpus, gpus_per_trial=gpus)
        try:
            executor_module(spec.executor).execute(run, runs, search, spec_of, recording, progress)
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except Exception:
            if recording.lost is None:
                raise
        finally:
            if recording.lost is not None and status != "KILLED":
                status = "LOST"  # the tracking store stopped answering: handled below, in one line
            with shielded("recording the interruption in MLflow"):
                if status == "KILLED":
                    try:
                        rec.interrupt_running_children()
                        rec.close_parent("KILLED")
                    except Exception as e:  # e.g. Ctrl-C because the server hangs: say it, in one line
                        print(f"  could not mark the runs KILLED ({tracking.one_line(e)}); a --resume "
                              "continues them all the same", file=sys.stderr)
        if status == "LOST":
            with shielded("stopping"):
                try:  # one quick try: a server that is back gets its runs KILLED, a dead one stays as is
                    rec.interrupt_running_children()
                    rec.close_parent("KILLED")
                except Exception:
                    pass
            raise TrackingLost(f"writing to the tracking store {spec.tracking_uri} failed ({recording.lost}); the "
                               "study stopped and its checkpoints are kept: run the same command with --resume "
                               "once the store answers again")
        failed = dict(recording.failed)
        if recording.failed:
            print(f"  {len(recording.failed)} trial(s) failed: "
                  + "; ".join(f"{k}: {v}" for k, v in sorted(recording.failed.items())))
        if recording.stopped_early:
            print(f"  {len(recording.stopped_early)} trial(s) stopped early by ASHA: "
                  + ", ".join(f"{k} (epoch {e})" for k, e in sorted(recording.stopped_early.items())))
        # Ray answers Ctrl-C by stopping the trials and returning normally: a study is finished
        # only when every trial of the grid reached an end (finished or failed)
        with shielded("recording the interruption in MLflow"):
            ended = rec.finished_keys() | set(recording.failed)
            unfinished = sorted(s["key"] for s in specs if s["key"] not in ended)
            if unfinished:
                status = "KILLED"
                rec.interrupt_running_children()  # their MLflow runs say so too (a --resume opens them again)
                print(f"  interrupted: {len(unfinished)} trial(s) unfinished ({', '.join(unfinished)}); "
                      f"run the same command with --resume to continue them from their checkpoints")
                failed.update({k: "interrupted" for k in unfinished})
    if not nothing_left:
        rec.close_parent(status)
        rec.log_summary(study_summary(rec, len(trials) + n_search, time.time() - t_start))
    files = analyse(rec.parent_id, out)
    if spec.preset == "smoke":
        print(SMOKE_NOTE)
    if cfg0.cifar10c:  # issue 14: the CIFAR-10-C tables beside the study's own (analysis.cifar10c)
        from analysis.cifar10c import AnalysisError, build_cifar10c
        from analysis.cifar10c import format_console as c10c_console
        try:
            print(c10c_console(build_cifar10c(parent_run_id=rec.parent_id, tracking_uri=spec.tracking_uri,
                                              experiment=spec.experiment, out_dir=out)))
        except AnalysisError as e:
            print(f"  CIFAR-10-C tables not built: {e}")
    print(f"open these runs: {tracking.ui_command(spec.tracking_uri, rec.experiment_id)}  (experiment "
          f"{spec.experiment}, parent run {spec.name})")
    if failed:
        shown = "; ".join(f"{k}: {v}" for k, v in sorted(failed.items()))
        print(f"error: {len(failed)} of {len(trials) + n_search} trial(s) did not finish ({shown[:1500]}); the "
              "tables leave them out; fix the cause and run the same command with --resume", file=sys.stderr)
        return 1
    return 0 if files is not None and status == "FINISHED" else 1


SMOKE_NOTE = ("preset smoke is a pipeline check (a few hundred images, 2 epochs): accuracies near 0.10 (chance) and "
              "differences to the paper near -0.65 are expected; --preset demo shows the paper's robustness "
              "effect in about 30 min on 2 idle CPU cores")


class TrackingLost(RuntimeError):
    """The tracking store stopped answering mid-study; the message is the one line the user sees."""


def grid_tags(trials: list[Trial]) -> dict:
    """Parent-run tags of what the grid holds, for the analyses (which read MLflow only): the Table 2
    strategies (`strategies`, e.g. "1,8,9") and the protocols ("scratch,finetune")."""
    strategies = sorted({t.config.strategy for t in trials if t.config.strategy})
    protocols = [p for p in ("scratch", "finetune") if any(t.config.protocol == p for t in trials)]
    return {**({"strategies": ",".join(map(str, strategies))} if strategies else {}),
            **({"protocols": ",".join(protocols)} if protocols else {})}


def study_summary(rec, n_trials: int, session_s: float) -> dict:
    """Summary metrics of the parent run: trial counts by status, this command's wall time, and the
    mean and best of the trials' mean accuracy over the 10 test sets."""
    runs = list(rec.children().values())
    finished = [r for r in runs if r.info.status == "FINISHED"]
    accs = [r.data.metrics["acc_mean_all"] for r in finished if "acc_mean_all" in r.data.metrics]
    out = {"trials": n_trials, "trials_finished": len(finished),
           "trials_failed": sum(r.info.status == "FAILED" for r in runs),
           "trials_unfinished": n_trials - len(finished) - sum(r.info.status == "FAILED" for r in runs),
           "session_wall_s": session_s}
    if accs:
        out.update(acc_mean_all_mean=sum(accs) / len(accs), acc_mean_all_best=max(accs))
    return out


def main_wrapper(fn) -> int:
    """Run a study main; a refusal is one line on stderr and exit code 2."""
    import logging

    from study.tracking import TrackingError
    for name in ("mlflow", "alembic"):  # store-creation INFO lines would bury the one-line messages
        logging.getLogger(name).setLevel(logging.WARNING)
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        # SIGTERM ends the command through Python's `finally` (the study lock is released, runs KILLED)
        signal.signal(signal.SIGTERM, lambda sig, frame: sys.exit(128 + sig))
    try:
        return fn()
    except (StudyError, SpecError, ConfigError, data_mod.DataError, TrackingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrackingLost as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the unfinished trials' runs are KILLED and their checkpoints kept; run the same "
              "command with --resume to continue", file=sys.stderr)
        return 130


def dump_json(obj) -> str:
    return json.dumps(obj, sort_keys=True)
