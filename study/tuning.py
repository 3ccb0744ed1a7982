"""The Ray side of a study: the one module in study/ that imports Ray Tune.

- `trainable`: the function Ray runs per trial. It calls `trainables.train.run_trial` with a
  checkpoint folder under `<storage>/<study>/trials/<trial key>/` (shared storage on a cluster),
  so a trial that Ray restarts after a lost node, or that a `--resume` run starts again after a
  killed driver, continues from its last epoch. The trial key, not Ray's trial id, names that
  folder and the MLflow run, which is why neither is ever duplicated. Each start claims the folder
  (`owner.json`, last claim wins) and a copy that finds itself superseded stops at its next epoch
  end, so a stale copy (a partitioned node, a dead driver's trial) never reports or uploads again.
  Its first report says where it runs and which checkpoint epoch it started from.
- `IQA_LS_FAULT`: a fault-injection hook for tests (docs/fault-tolerance.md), nothing else.
- `MlflowCallback`: runs in the driver and is the only writer to MLflow (see study/tracking.py).
- `ProgressPrinter`: one line every `every_s` seconds: done / running / pending, best so far,
  elapsed and remaining time.
- `run_tuner`: the Tuner call; `run_search`: an Optuna search (OptunaSearch + ASHA) through it.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow.fs as pafs
import ray
from ray import tune

from trainables.config import TrialConfig
from trainables.train import TrialError, load_checkpoint, run_trial

ARTIFACTS = ("final_weights.pt", "config.json")
OWNER_FILE = "owner.json"  # who runs the trial now: {"token", "node", "pid", "since", "start_epoch"}

# Fault injection, for tests only: IQA_LS_FAULT="KIND@TRIAL_KEY[,KIND@TRIAL_KEY...]" in the driver's
# environment (the driver hands it to that trial, on whatever node it runs).
FAULT_ENV = "IQA_LS_FAULT"
FAULT_KINDS = {
    # the trial trains with lr=1e38: SGD overflows and run_trial's own check stops it on the first
    # non-finite epoch loss (a TrialError: not retried, the run is marked FAILED with the reason)
    "nan": 1e38,
    # the trainable raises before training, on every attempt: a crash, retried --max-failures times
    "raise": None,
}
# logged when the trial wrote them: epoch 1's score histogram, the final evaluation's calibration bins,
# the final model's CIFAR-10-C evaluation (trials with cifar10c set)
OPTIONAL_ARTIFACTS = ("scores_hist.json", "calibration.json", "cifar10c.json")
STRICT_METRICS_ENV = "TUNE_DISABLE_STRICT_METRIC_CHECKING"


# ------------------------------------------------------------------ checkpoint storage
class TrialStore:
    """A trial's checkpoint folder on the study's storage (local/NFS path or a pyarrow URI).

    On a filesystem path the trial writes there directly; on object storage (s3://, gs://) it
    works in a local folder and uploads the files after every checkpoint.
    """

    def __init__(self, uri: str):
        self.uri = uri
        self.fs, self.path = pafs.FileSystem.from_uri(uri) if "://" in uri else (pafs.LocalFileSystem(), uri)
        self.remote = not isinstance(self.fs, pafs.LocalFileSystem)
        self.work_dir = Path(tempfile.mkdtemp(prefix="iqa-ls-ckpt-")) if self.remote else Path(self.path)

    def pull(self) -> Path:
        if self.remote:
            info = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
            for f in info:
                if f.type == pafs.FileType.File and f.base_name != OWNER_FILE:
                    pafs.copy_files(f.path, str(self.work_dir / f.base_name), source_filesystem=self.fs,
                                    destination_filesystem=pafs.LocalFileSystem())
        return self.work_dir

    def push(self) -> None:
        if self.remote:
            for f in self.work_dir.iterdir():
                if f.name == OWNER_FILE:  # written in place by claim(); a local copy would be stale
                    continue
                pafs.copy_files(str(f), f"{self.path}/{f.name}", source_filesystem=pafs.LocalFileSystem(),
                                destination_filesystem=self.fs)

    def fetch(self) -> Path:
        """The trial's files as a local folder (the driver logs the final artifacts from it)."""
        return self.pull()

    def claim(self, info: dict) -> str:
        """Make the caller the folder's owner (the last claim wins); returns its token."""
        token = uuid.uuid4().hex
        data = json.dumps({"token": token, **info}, sort_keys=True).encode()
        if self.remote:
            with self.fs.open_output_stream(f"{self.path}/{OWNER_FILE}") as f:
                f.write(data)
        else:
            folder = Path(self.path)
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{OWNER_FILE}.{token}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, folder / OWNER_FILE)  # readers see the old owner or the new, never half
        return token

    def owner(self) -> dict:
        """The current owner record ({} if none or unreadable)."""
        try:
            if self.remote:
                with self.fs.open_input_stream(f"{self.path}/{OWNER_FILE}") as f:
                    return json.loads(f.read())
            return json.loads((Path(self.path) / OWNER_FILE).read_text())
        except (OSError, ValueError):
            return {}


class Superseded(RuntimeError):
    """Another copy of this trial claimed its folder: this one stops without reporting."""


def trial_store_uri(storage: str, study: str, key: str) -> str:
    return f"{storage.rstrip('/')}/{study}/trials/{key}"


def parse_faults(value: str | None, keys) -> dict[str, str]:
    """IQA_LS_FAULT's value -> {trial key: fault kind}; a malformed value is a ValueError naming it."""
    faults: dict[str, str] = {}
    for item in filter(None, (v.strip() for v in (value or "").split(","))):
        kind, at, key = item.partition("@")
        if not at or kind not in FAULT_KINDS or key not in keys:
            raise ValueError(f"{FAULT_ENV}={value!r}: {item!r} is not allowed; allowed: KIND@TRIAL_KEY, "
                             f"KIND in {sorted(FAULT_KINDS)}, TRIAL_KEY one of this study's "
                             f"({', '.join(sorted(keys)[:3])}, ...)")
        faults[key] = kind
    return faults


# ------------------------------------------------------------------ the trainable
def trainable(param: dict) -> None:
    """Ray function trainable; param["trial"] = {"key", "config" (TrialConfig dict), "store", "cache_dir"},
    or a pack: {"key", "members": [such specs], "cache_dir"} (see run_pack)."""
    spec = param["trial"]
    if spec.get("env"):
        os.environ.update(spec["env"])
    if "members" in spec:
        return run_pack(spec, tune.report, _node())
    cfg = TrialConfig.from_dict(spec["config"])
    fault = spec.get("fault")
    if fault == "raise":
        raise RuntimeError(f"fault injected by {FAULT_ENV}=raise@{spec['key']}")
    if fault == "nan":
        cfg = cfg.replace(lr=FAULT_KINDS["nan"])
    store = TrialStore(spec["store"])
    ckpt_dir = store.pull()
    state = load_checkpoint(ckpt_dir)
    start_epoch = int(state["epoch"]) if state else 0  # 0: from scratch; else resumed from there
    del state
    node = _node()
    token = store.claim({"node": node, "pid": os.getpid(), "since": time.time(), "start_epoch": start_epoch})
    first = True

    def with_objective(metrics: dict) -> dict:
        # search trials: the searched objective = min of the named metrics, on the epochs that have them
        obj = spec.get("objective")
        if obj and all(m in metrics for m in obj["min_of"]):
            metrics[obj["metric"]] = min(metrics[m] for m in obj["min_of"])
        return metrics

    def report(metrics: dict) -> None:
        nonlocal first
        owner = store.owner()
        if owner.get("token") != token:
            raise Superseded(f"{spec['store']} was claimed by node {owner.get('node')} pid {owner.get('pid')}")
        with_objective(metrics)
        if metrics.pop("checkpoint", None):
            store.push()
        if first:  # who ran this attempt, and from where: tags and a metric of the MLflow run
            metrics.update(device_name=device_name(cfg.device), node=node, start_epoch=start_epoch)
            first = False
        tune.report(metrics)

    try:
        last = run_trial(cfg, report, checkpoint_dir=ckpt_dir, cache_dir=spec.get("cache_dir"))
    except TrialError as e:
        # A property of the trial (e.g. NaN loss), not of the machine: report it instead of raising,
        # so Ray does not retry it; the callback marks the MLflow run FAILED with this reason.
        tune.report({"trial_error": str(e)})
        return
    except Superseded:
        return  # a newer copy owns the folder and reports for the trial: this one says nothing more
    if first and last:  # resumed after its last epoch: hand the final metrics back once more
        report({k: v for k, v in last.items() if k != "checkpoint"})


def _node() -> str:
    return f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()}"


def run_pack(spec: dict, emit, node: str) -> None:
    """A packed trial: its members train as one vmapped model (trainables.packed.run_packed) and
    each reports as if it ran alone — every result carries `member` (the member's trial key), so the
    driver's callback sends it to that member's MLflow run. Each member keeps its own checkpoint
    folder and owner claim (the same folder an unpacked run of it uses, so a study can switch
    packing between runs), its own first-report facts, and its own failure: a NaN member is
    reported failed and dropped while the others go on. A crash of the process fails the pack,
    and Ray restarts it like any trial. Members resume from their checkpoints; members at different
    epochs (e.g. a study first run unpacked) run as one pack per start epoch, in turn.
    `emit` is tune.report in a Ray trial (a list's append in tests)."""
    from trainables.packed import run_packed

    members = spec["members"]
    for m in members:
        if m.get("fault") == "raise":
            raise RuntimeError(f"fault injected by {FAULT_ENV}=raise@{m['key']}")
    cfgs = [TrialConfig.from_dict(m["config"]) for m in members]
    stores = [TrialStore(m["store"]) for m in members]
    dirs = [s.pull() for s in stores]
    states = [load_checkpoint(d) for d in dirs]
    starts = [int(st["epoch"]) if st else 0 for st in states]
    lasts = [dict(st["metrics"]) if st else {} for st in states]
    del states
    tokens = [s.claim({"node": node, "pid": os.getpid(), "since": time.time(), "start_epoch": starts[k],
                       "pack": spec["key"]}) for k, s in enumerate(stores)]
    first = [True] * len(members)

    def report(k: int, metrics: dict) -> None:
        owner = stores[k].owner()
        if owner.get("token") != tokens[k]:
            raise Superseded(f"{members[k]['store']} was claimed by node {owner.get('node')} pid {owner.get('pid')}")
        if metrics.pop("checkpoint", None):
            stores[k].push()
        if first[k]:
            metrics.update(device_name=device_name(cfgs[k].device), node=node, start_epoch=starts[k])
            first[k] = False
        emit({**metrics, "member": members[k]["key"]})

    ended: set[int] = set()
    try:
        for k, cfg in enumerate(cfgs):
            if starts[k] >= cfg.epochs:  # resumed after its last epoch: hand the final metrics back once
                report(k, {n: v for n, v in lasts[k].items() if n != "checkpoint"})
                ended.add(k)
        for start in sorted({starts[k] for k in range(len(cfgs)) if k not in ended}):
            group = [k for k in range(len(cfgs)) if starts[k] == start and k not in ended]
            out = run_packed([cfgs[k] for k in group], lambda j, m: report(group[j], m),
                             checkpoint_dirs=[dirs[k] for k in group], cache_dir=spec.get("cache_dir"),
                             poison={j for j, k in enumerate(group) if members[k].get("fault") == "nan"})
            for j, k in enumerate(group):
                ended.add(k)
                if "error" in out[j]:
                    emit({"member": members[k]["key"], "trial_error": out[j]["error"]})
    except TrialError as e:  # a property of the members (e.g. a checkpoint of another config): not retried
        for k in range(len(members)):
            if k not in ended:
                emit({"member": members[k]["key"], "trial_error": str(e)})
    except Superseded:
        return  # a newer copy of the pack owns the folders and reports for it


def device_name(device: str) -> str:
    """'NVIDIA H200' or 'cpu: AMD EPYC x2': the hardware a number was measured on."""
    import torch
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return _cpu_name()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    import platform
    return f"cpu: {platform.processor() or platform.machine()} x{os.cpu_count()}"


# ------------------------------------------------------------------ driver-side callbacks
class MlflowCallback(tune.Callback):
    """Writes every trial's results to MLflow from the driver (the only writer)."""

    def __init__(self, recorder, tags_of):
        self.rec, self.tags_of = recorder, tags_of
        self.failed: dict[str, str] = {}
        self.stopped_early: dict[str, int] = {}  # key -> last epoch, trials a scheduler (ASHA) stopped

    def on_trial_start(self, iteration, trials, trial, **info):
        for m in members_of(trial.config["trial"]):
            self.rec.open_child(m["key"], m["config"], self.tags_of(m))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        # a packed trial's results name their member; an unpacked trial is its own one member
        spec = trial.config["trial"]
        key = result.get("member") or spec["key"]
        store = next(m["store"] for m in members_of(spec) if m["key"] == key)
        if "device_name" in result:
            self.rec.client.set_tag(self.rec.child_ids[key], "iqa_ls.device_name", result["device_name"])
        if "start_epoch" in result:  # the first report of an attempt
            start = int(result["start_epoch"])
            if start > self.rec.last_step.get(key, 0):
                self._fill_gap(store, key)
            self.rec.record_attempt(key, start, result.get("node") or str(result.get("node_ip")))
        if "trial_error" in result:
            self.failed[key] = result["trial_error"]
            self.rec.fail_child(key, result["trial_error"])
        elif "epoch" in result:
            self.rec.log_epoch(key, result)

    def _fill_gap(self, store_uri: str, key: str) -> None:
        """The attempt resumed past the last epoch MLflow holds (the node or the driver died between
        a checkpoint and its report): log the missing epochs from the checkpoint's history."""
        store = TrialStore(store_uri)
        local = store.fetch()
        try:
            state = load_checkpoint(local)
            if state:
                self.rec.log_history(key, state.get("history", []))
        finally:
            if store.remote:
                shutil.rmtree(local, ignore_errors=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        spec = trial.config["trial"]
        for m in members_of(spec):
            if m["key"] not in self.failed:
                self._complete(m, trial.last_result or {}, packed="members" in spec)

    def _complete(self, spec: dict, last: dict, packed: bool) -> None:
        store = TrialStore(spec["store"])
        local = store.fetch()
        try:
            files = [local / a for a in ARTIFACTS if (local / a).exists()]
            extra = [local / a for a in OPTIONAL_ARTIFACTS if (local / a).exists()]
            if len(files) != len(ARTIFACTS) and not packed and last.get("done") and \
                    0 < int(last.get("epoch", 0)) < spec["config"]["epochs"]:
                # the scheduler stopped it before its last epoch (Tune marks that result done): an
                # honest KILLED with the epoch it reached, neither a failure nor a finished trial
                self.stopped_early[spec["key"]] = int(last["epoch"])
                self.rec.stop_child_early(spec["key"], int(last["epoch"]), extra)
            elif len(files) != len(ARTIFACTS):
                self.failed[spec["key"]] = f"trial ended without its final artifacts in {spec['store']}"
                self.rec.fail_child(spec["key"], self.failed[spec["key"]])
            else:
                self.rec.finish_child(spec["key"], files + extra)
        finally:
            if store.remote:
                shutil.rmtree(local, ignore_errors=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        err = _error_text(trial) or "trial raised an error (no error file)"
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
        for m in members_of(trial.config["trial"]):  # a crashed pack fails each member still open
            if m["key"] not in self.failed:
                self.failed[m["key"]] = lines[-1] if lines else str(err)
                self.rec.fail_child(m["key"], self.failed[m["key"]])


def members_of(spec: dict) -> list[dict]:
    """The trial specs a Ray trial runs: a pack's members, or the trial itself."""
    return spec.get("members") or [spec]


def _error_text(trial) -> str | None:
    """The trial's error trace. Ray writes it first to the driver's staging folder (trial.error_file)
    and syncs it to storage later, so `trial.get_error()` (which reads storage) can still be empty
    when on_trial_error runs: read the local file first."""
    local = trial.error_file
    if local and Path(local).exists():
        text = Path(local).read_text(errors="replace")
        if text.strip():
            return text
    return trial.get_error()


class ProgressPrinter(tune.Callback):
    """Quiet progress: one line every `every_s` seconds and one per finished trial."""

    def __init__(self, total_epochs: int, every_s: float = 30.0, metric: str = "acc_mean_all",
                 printer=print):
        self.total_epochs, self.every_s, self.metric, self.print = total_epochs, every_s, metric, printer
        self.t0 = time.time()
        self.last_print = 0.0
        self.epochs: dict[str, int] = {}
        self.best: tuple[float, str] | None = None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        key = result.get("member") or trial.config["trial"]["key"]
        if "epoch" in result:
            self.epochs[key] = int(result["epoch"])
        if self.metric in result and (self.best is None or result[self.metric] > self.best[0]):
            self.best = (float(result[self.metric]), key)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._line(trials, force=True, note=f"finished {trial.config['trial']['key']}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trials, force=True, note=f"FAILED {trial.config['trial']['key']}")

    def on_step_end(self, iteration, trials, **info):
        self._line(trials)

    def _line(self, trials, force=False, note=""):
        now = time.time()
        if not force and now - self.last_print < self.every_s:
            return
        self.last_print = now
        states = [t.status for t in trials]
        done = sum(s in ("TERMINATED", "ERROR") for s in states)
        running = states.count("RUNNING")
        elapsed = now - self.t0
        progress = sum(self.epochs.values()) / max(1, self.total_epochs)
        eta = f"{_fmt(elapsed * (1 - progress) / progress)}" if progress > 0 else "?"
        best = f" | best {self.metric} {self.best[0]:.3f} ({self.best[1]})" if self.best else ""
        self.print(f"[{_fmt(elapsed)}] trials {done} done, {running} running, "
                   f"{len(states) - done - running} pending | epochs {sum(self.epochs.values())}/"
                   f"{self.total_epochs}{best} | left ~{eta}" + (f" | {note}" if note else ""), flush=True)


def _fmt(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# ------------------------------------------------------------------ the Tuner call
def run_tuner(specs: list[dict], *, name: str, storage: str, resources: dict, callbacks: list,
              max_failures: int = 3, search_alg=None, scheduler=None, metric=None, mode=None,
              param_space=None, num_samples: int = 1):
    """Run the trials; returns Ray's ResultGrid. `specs` are grid-searched unless `param_space`
    (with a search algorithm) is given."""
    storage_path = storage if "://" in storage else str(Path(storage).resolve())
    space = param_space if param_space is not None else {"trial": tune.grid_search(specs)}
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=space,
        # reuse_actors: a worker process keeps its decoded data and distortion bank between
        # trials (trainables memoises them per process), so only the first trial per worker pays
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, metric=metric,
                                    mode=mode, num_samples=num_samples, reuse_actors=True),
        run_config=tune.RunConfig(
            # a fresh Ray experiment folder per invocation: resume state lives in our trial
            # folders and MLflow, so a killed driver never needs Ray's experiment snapshot
            name=f"{name}/ray-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=storage_path,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            verbose=0,
        ),
    )
    return tuner.fit()


# ------------------------------------------------------------------ an Optuna search
def _optuna_search_class():
    from ray.tune.search.optuna import OptunaSearch

    class EvalEpochOptunaSearch(OptunaSearch):
        """OptunaSearch that hears only the results carrying the objective (the epochs a search trial
        evaluates), and whose saved state leaves out the define-by-run space (code, not state)."""

        def on_trial_result(self, trial_id, result):
            if self.metric in result:
                super().on_trial_result(trial_id, result)

        def save(self, checkpoint_path):
            import pickle
            with open(checkpoint_path, "wb") as f:
                pickle.dump({k: v for k, v in self.__dict__.items() if k != "_space"}, f)

    return EvalEpochOptunaSearch


def run_search(search, spec_of, *, name: str, storage: str, resources: dict, callbacks: list,
               max_failures: int = 3):
    """Run `search` (a study.runner.Search): Optuna's TPE sampler (Ray Tune's OptunaSearch, define-by-run)
    proposes the fields of each trial; ASHA (time = epoch) stops weak trials at its rungs, which are
    epochs the search trials evaluate. Trial key = `search.key(Optuna trial number)`, numbers counted
    in the order Optuna is asked, so a Ray restart of a trial finds its checkpoint folder again.
    `spec_of(key, config, tags)` makes the trainable's spec (as for grid trials)."""
    import optuna
    from ray.tune.schedulers import ASHAScheduler

    base = search.base
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" line in the driver log

    def space(ot_trial):  # runs in the driver; only suggestions, no work
        fields, tags = search.suggest(ot_trial)
        spec = spec_of(search.key(ot_trial.number), base.replace(**fields),
                       {**search.tags, **tags, "setting_order": ot_trial.number})
        spec["objective"] = {"metric": search.metric, "min_of": list(search.objective_of)}
        return {"trial": spec}

    searcher = _optuna_search_class()(space=space, metric=search.metric, mode=search.mode,
                                      sampler=optuna.samplers.TPESampler(seed=search.sampler_seed))
    scheduler = ASHAScheduler(time_attr="epoch", metric=search.metric, mode=search.mode, max_t=base.epochs,
                              grace_period=search.grace_period, reduction_factor=search.reduction_factor)
    # Search trials carry the objective only on the epochs they evaluate; Tune's strict check would
    # reject the other epochs' results. ASHA and the searcher above skip results without it.
    old = os.environ.get(STRICT_METRICS_ENV)
    os.environ[STRICT_METRICS_ENV] = "1"
    try:
        return run_tuner([], name=f"{name}/search", storage=storage, resources=resources,
                         callbacks=callbacks, max_failures=max_failures, search_alg=searcher,
                         scheduler=scheduler, param_space={}, num_samples=search.n_trials)
    finally:
        if old is None:
            os.environ.pop(STRICT_METRICS_ENV, None)
        else:
            os.environ[STRICT_METRICS_ENV] = old
