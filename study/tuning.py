"""The Ray side of a study: the one module in study/ that imports Ray Tune.

- `trainable`: the function Ray runs per trial. It calls `trainables.train.run_trial` with a
  checkpoint folder under `<storage>/<study>/trials/<trial key>/` (shared storage on a cluster),
  so a trial that Ray restarts after a lost node, or that a `--resume` run starts again after a
  killed driver, continues from its last epoch. The trial key, not Ray's trial id, names that
  folder and the MLflow run, which is why neither is ever duplicated.
- `MlflowCallback`: runs in the driver and is the only writer to MLflow (see study/tracking.py).
- `ProgressPrinter`: one line every `every_s` seconds: done / running / pending, best so far,
  elapsed and remaining time.
- `run_tuner`: the Tuner call.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs
from ray import tune

from trainables.config import TrialConfig
from trainables.train import TrialError, run_trial

ARTIFACTS = ("final_weights.pt", "config.json")


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
                if f.type == pafs.FileType.File:
                    pafs.copy_files(f.path, str(self.work_dir / f.base_name), source_filesystem=self.fs,
                                    destination_filesystem=pafs.LocalFileSystem())
        return self.work_dir

    def push(self) -> None:
        if self.remote:
            for f in self.work_dir.iterdir():
                pafs.copy_files(str(f), f"{self.path}/{f.name}", source_filesystem=pafs.LocalFileSystem(),
                                destination_filesystem=self.fs)

    def fetch(self) -> Path:
        """The trial's files as a local folder (the driver logs the final artifacts from it)."""
        return self.pull()


def trial_store_uri(storage: str, study: str, key: str) -> str:
    return f"{storage.rstrip('/')}/{study}/trials/{key}"


# ------------------------------------------------------------------ the trainable
def trainable(param: dict) -> None:
    """Ray function trainable; param["trial"] = {"key", "config" (TrialConfig dict), "store", "cache_dir"}."""
    spec = param["trial"]
    if spec.get("env"):
        os.environ.update(spec["env"])
    cfg = TrialConfig.from_dict(spec["config"])
    store = TrialStore(spec["store"])
    ckpt_dir = store.pull()
    first = True

    def report(metrics: dict) -> None:
        nonlocal first
        if metrics.pop("checkpoint", None):
            store.push()
        if first:  # who ran it: shown as a tag of the MLflow run
            metrics["device_name"] = device_name(cfg.device)
            first = False
        tune.report(metrics)

    try:
        last = run_trial(cfg, report, checkpoint_dir=ckpt_dir, cache_dir=spec.get("cache_dir"))
    except TrialError as e:
        # A property of the trial (e.g. NaN loss), not of the machine: report it instead of raising,
        # so Ray does not retry it; the callback marks the MLflow run FAILED with this reason.
        tune.report({"trial_error": str(e)})
        return
    if first and last:  # resumed after its last epoch: hand the final metrics back once more
        tune.report({k: v for k, v in last.items() if k != "checkpoint"})


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

    def on_trial_start(self, iteration, trials, trial, **info):
        spec = trial.config["trial"]
        self.rec.open_child(spec["key"], spec["config"], self.tags_of(spec))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        key = trial.config["trial"]["key"]
        if "device_name" in result:
            self.rec.client.set_tag(self.rec.child_ids[key], "iqa_ls.device_name", result["device_name"])
        if "trial_error" in result:
            self.failed[key] = result["trial_error"]
            self.rec.fail_child(key, result["trial_error"])
        elif "epoch" in result:
            self.rec.log_epoch(key, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        spec = trial.config["trial"]
        if spec["key"] in self.failed:
            return
        store = TrialStore(spec["store"])
        local = store.fetch()
        files = [local / a for a in ARTIFACTS if (local / a).exists()]
        if len(files) != len(ARTIFACTS):
            self.failed[spec["key"]] = f"trial ended without its final artifacts in {spec['store']}"
            self.rec.fail_child(spec["key"], self.failed[spec["key"]])
            return
        self.rec.finish_child(spec["key"], files)
        if store.remote:
            shutil.rmtree(local, ignore_errors=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        key = trial.config["trial"]["key"]
        err = trial.get_error() or "trial raised an error (no error file)"
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
        self.failed[key] = lines[-1] if lines else str(err)
        self.rec.fail_child(key, self.failed[key])


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
        key = trial.config["trial"]["key"]
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
