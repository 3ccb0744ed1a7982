"""What runs a study's trials, whatever schedules them: the one place for a trial's execution, its
records and its progress, shared by both executors (`--executor ray`: study/tuning.py, Ray Tune, one
machine or a cluster; `--executor local`: study/local.py, in this process). Nothing here imports Ray.

- `run_spec(spec, emit, node)`: one trial (or a pack of trials) from its spec: checkpoint folder
  under `<storage>/<study>/trials/<trial key>/` (shared storage on a cluster), so a trial that is
  restarted (a lost node, a killed driver, a crash) continues from its last epoch. The trial key,
  not an executor's id, names that folder and the MLflow run, which is why neither is ever
  duplicated. Each start claims the folder (`owner.json`, last claim wins) and a copy that finds
  itself superseded stops at its next epoch end, so a stale copy (a partitioned node, a dead
  driver's trial) never reports or uploads again. Its first report says where it runs and which
  checkpoint epoch it started from. `emit` gets every result: Ray's `tune.report` in a Ray trial,
  the local executor's handler in this process.
- `IQA_LS_FAULT`: a fault-injection hook for tests (docs/fault-tolerance.md), nothing else.
- `Recording`: turns the results into MLflow records through study/tracking.py (the only writer),
  in the driver; executors call `start`, `result`, `complete` and `error`.
- `Progress`: one line at most every `every_s` seconds: done / running, epochs, best so far, elapsed
  and remaining time.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path

from study.storage import Folder
from trainables.config import TrialConfig
from trainables.checkpoints import load_checkpoint, recover_checkpoint
from trainables.config import TrialError
from trainables.train import run_trial

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


# ------------------------------------------------------------------ checkpoint storage
class TrialStore:
    """A trial's checkpoint folder on the study's storage (a local/NFS path or an object store URI:
    study.storage).

    On a filesystem path the trial writes there directly; on object storage (s3://, gs://) it
    works in a local folder and uploads the files after every checkpoint.
    """

    def __init__(self, uri: str):
        self.uri = uri
        self.folder = Folder(uri)
        self.remote = not self.folder.local
        self.work_dir = Path(tempfile.mkdtemp(prefix="iqa-ls-ckpt-")) if self.remote else Path(self.folder.path)

    def pull(self) -> Path:
        """The trial's files as a local folder (the trial resumes from it; the driver logs the final
        artifacts from it)."""
        if self.remote:
            self.folder.download(self.work_dir, skip=(OWNER_FILE,))
        return self.work_dir

    def push(self) -> None:
        if self.remote:  # OWNER_FILE is written in place by claim(): a local copy would be stale
            self.folder.upload(self.work_dir, skip=(OWNER_FILE,))

    def claim(self, info: dict) -> str:
        """Make the caller the folder's owner (the last claim wins); returns its token. Readers see
        the old owner or the new, never half of one."""
        token = uuid.uuid4().hex
        self.folder.write_text(OWNER_FILE, json.dumps({"token": token, **info}, sort_keys=True))
        return token

    def owner(self) -> dict:
        """The current owner record ({} if none or unreadable)."""
        try:
            return json.loads(self.folder.read_text(OWNER_FILE) or "{}")
        except (OSError, ValueError):
            return {}


class Superseded(RuntimeError):
    """Another copy of this trial claimed its folder: this one stops without reporting."""


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


# ------------------------------------------------------------------ one trial
def local_node() -> str:
    """Where the local executor runs: '<host>/local' (Ray's trials say '<node ip>/<Ray node id>')."""
    return f"{socket.gethostname()}/local"


def run_spec(spec: dict, emit, node: str) -> None:
    """Run one trial spec {"key", "config" (TrialConfig dict), "store", "cache_dir", ...} or a pack
    {"key", "members": [such specs], "cache_dir"} (see run_pack), handing every result to `emit`."""
    if spec.get("env"):
        os.environ.update(spec["env"])
    if "members" in spec:
        return run_pack(spec, emit, node)
    cfg = TrialConfig.from_dict(spec["config"])
    fault = spec.get("fault")
    if fault == "raise":
        raise RuntimeError(f"fault injected by {FAULT_ENV}=raise@{spec['key']}")
    if fault == "nan":
        cfg = cfg.replace(lr=FAULT_KINDS["nan"])
    why = data_changed(cfg, spec)
    if why:  # not retried: the same files would be read again
        emit({"trial_error": why})
        return
    store = TrialStore(spec["store"])
    ckpt_dir = store.pull()
    # read only: the trial (trainables.loop.Member) recovers an unreadable checkpoint itself, once, and
    # its note goes out with its first report (a second recovery here would call the file "missing")
    state = load_checkpoint(ckpt_dir)
    start_epoch = int(state["epoch"]) if state else 0  # 0: from scratch; else resumed from there
    del state
    parent_dir = None
    if cfg.finetune and start_epoch < cfg.first_epoch:
        # no checkpoint of its own: it starts from its parent's final weights (run_trial checks them)
        parent_dir = TrialStore(spec["parent_store"]).pull() if spec.get("parent_store") else None
        start_epoch = cfg.first_epoch
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
        emit(metrics)

    try:
        last = run_trial(cfg, report, checkpoint_dir=ckpt_dir, cache_dir=spec.get("cache_dir"),
                         parent_dir=parent_dir)
    except TrialError as e:
        # A property of the trial (e.g. NaN loss), not of the machine: report it instead of raising,
        # so no executor retries it; Recording marks the MLflow run FAILED with this reason.
        emit({"trial_error": str(e)})
        return
    except Superseded:
        return  # a newer copy owns the folder and reports for the trial: this one says nothing more
    if first and last:  # resumed after its last epoch: hand the final metrics back once more
        report({k: v for k, v in last.items() if k != "checkpoint"})


def data_changed(cfg: TrialConfig, spec: dict) -> str | None:
    """Why the trial must not train (its data's checksums are not the ones the study recorded: a file
    replaced while the study ran), or None. So every run's recorded checksum is the one its epochs
    trained on. The splits are loaded as the trial loads them (memoised per process)."""
    from study.resume import DATA_CHECKSUM_KEYS
    from trainables import data as data_mod

    expected = spec.get("data_checksums") or {}
    for split, name in DATA_CHECKSUM_KEYS.items():
        if expected.get(name):
            now = data_mod.load_split(cfg.data, split, spec.get("cache_dir")).checksum
            if now != expected[name]:
                return (f"the {split} split of {cfg.data} has checksum {now}, but the study recorded "
                        f"{expected[name]} (a data file was replaced while the study ran); not trained")
    return None


def run_pack(spec: dict, emit, node: str) -> None:
    """A packed trial: its members train as one vmapped model (trainables.packed.run_packed) and
    each reports as if it ran alone — every result carries `member` (the member's trial key), so the
    driver's callback sends it to that member's MLflow run. Each member keeps its own checkpoint
    folder and owner claim (the same folder an unpacked run of it uses, so a study can switch
    packing between runs), its own first-report facts, and its own failure: a NaN member is
    reported failed and dropped while the others go on. A crash of the process fails the pack,
    and the executor restarts it like any trial. Members resume from their checkpoints; members at different
    epochs (e.g. a study first run unpacked) run as one pack per start epoch, in turn.
    `emit` is tune.report in a Ray trial, the local executor's handler, a list's append in tests."""
    from trainables.packed import run_packed

    members = spec["members"]
    for m in members:
        if m.get("fault") == "raise":
            raise RuntimeError(f"fault injected by {FAULT_ENV}=raise@{m['key']}")
    cfgs = [TrialConfig.from_dict(m["config"]) for m in members]
    stores = [TrialStore(m["store"]) for m in members]
    dirs = [s.pull() for s in stores]
    for m, cfg in zip(members, cfgs):
        why = data_changed(cfg, m)
        if why:  # a pack shares its data: no member trains
            for k in members:
                emit({"member": k["key"], "trial_error": why})
            return
    # read only, as in run_spec: a member that trains recovers its checkpoint itself (Member); one
    # finished before is recovered here, the only reading of its folder
    states = [load_checkpoint(d) for d in dirs]
    starts = [int(st["epoch"]) if st else 0 for st in states]
    notes = [recover_checkpoint(d)[1] if starts[k] >= cfgs[k].epochs else None for k, d in enumerate(dirs)]
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
            if notes[k]:
                metrics.setdefault("checkpoint_note", notes[k])
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


# ------------------------------------------------------------------ the records (driver side)
class RecordFailed(RuntimeError):
    """A write to the tracking store failed: the study cannot go on recording (study.runner stops it)."""


def _recording(method):
    """A callback hook whose MLflow writes must not fail quietly: the first failure is kept in
    `self.lost` (one line) and every hook after it raises, which ends the executor's run."""
    def hook(self, *args, **kwargs):
        if self.lost is not None:
            raise RecordFailed(self.lost)
        try:
            return method(self, *args, **kwargs)
        except Exception as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            self.lost = f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]
            raise RecordFailed(self.lost) from None
    hook.__name__, hook.__doc__ = method.__name__, method.__doc__
    return hook


class Recording:
    """Writes every trial's results to MLflow from the driver (the only writer), whatever executor
    ran them: `start(spec)` when a trial (or pack) starts, `result(spec, result)` for each of its
    results, `complete(spec, last_result)` when it returned, `error(spec, text)` when it crashed.

    Its state is small on purpose: Ray pickles the callbacks that hold it into the experiment state
    (tuner.pkl), so it holds the recorder, `tags_of` (a module-level function: trial config dict ->
    tags) and a dict of tags every trial shares (`common_tags`), never the data set."""

    def __init__(self, recorder, tags_of, common_tags: dict | None = None, say=None):
        # `say` None = print, looked up when used: Ray pickles this object into its experiment state,
        # and on a cluster driver builtins.print is wrapped (a stored reference then fails to pickle)
        self.rec, self.tags_of_config, self.common_tags, self._say = recorder, tags_of, common_tags or {}, say
        self.failed: dict[str, str] = {}
        self.stopped_early: dict[str, int] = {}  # key -> last epoch, trials a scheduler (ASHA) stopped
        self.lost: str | None = None  # why the tracking store stopped taking writes

    def tags_of(self, spec: dict) -> dict:
        return {**self.tags_of_config(spec["config"]), **spec["tags"], **self.common_tags}

    @_recording
    def start(self, spec: dict) -> None:
        for m in members_of(spec):
            tags = self.tags_of(m)
            if m.get("parent"):  # a fine-tune: which trial, and which MLflow run, it starts from
                tags.update(finetune_parent=m["parent"],
                            finetune_parent_run=self.rec.child_ids.get(m["parent"], ""))
            self.rec.open_child(m["key"], m["config"], tags, run_name=m.get("run_name"))

    @_recording
    def result(self, spec: dict, result: dict) -> None:
        # a packed trial's results name their member; an unpacked trial is its own one member
        key = result.get("member") or spec["key"]
        store = next(m["store"] for m in members_of(spec) if m["key"] == key)
        if "device_name" in result:
            self.rec.set_child_tag(key, "device_name", result["device_name"])
        if result.get("checkpoint_note"):  # an unreadable checkpoint was moved aside (recover_checkpoint)
            self.rec.set_child_tag(key, "checkpoint_recovery", result["checkpoint_note"])
            (self._say or print)(f"  {key}: {result['checkpoint_note']}", flush=True)
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
        local = store.pull()
        try:
            state = load_checkpoint(local)
            if state:
                self.rec.log_history(key, state.get("history", []))
        finally:
            if store.remote:
                shutil.rmtree(local, ignore_errors=True)

    @_recording
    def complete(self, spec: dict, last: dict) -> None:
        """The trial (or pack) returned; `last` is its last result (Tune marks one a scheduler stopped
        with `done`)."""
        for m in members_of(spec):
            if m["key"] not in self.failed:
                self._complete(m, last or {}, packed="members" in spec)

    def _complete(self, spec: dict, last: dict, packed: bool) -> None:
        store = TrialStore(spec["store"])
        local = store.pull()
        try:
            files = [local / a for a in ARTIFACTS if (local / a).exists()]
            extra = [local / a for a in OPTIONAL_ARTIFACTS if (local / a).exists()]
            if len(files) != len(ARTIFACTS) and not packed and last.get("done") and \
                    0 < int(last.get("epoch", 0)) < TrialConfig.from_dict(spec["config"]).total_epochs:
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

    @_recording
    def error(self, spec: dict, err: str | None) -> None:
        """The trial (or pack) crashed for good (its retries spent); `err` its traceback."""
        err = err or "trial raised an error (no error file)"
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
        for m in members_of(spec):  # a crashed pack fails each member still open
            if m["key"] not in self.failed:
                self.failed[m["key"]] = lines[-1] if lines else str(err)
                self.rec.fail_child(m["key"], self.failed[m["key"]])


def phases(runs: list[dict]) -> list[list[dict]]:
    """`runs` in the order they may start, for every executor: first every trial that starts from
    scratch (and every pack: fine-tunes are never packed), then the fine-tunes, which start from
    their parents' final weights (study/runner.py puts each parent in the grid)."""
    first = [r for r in runs if not r.get("parent")]
    then = [r for r in runs if r.get("parent")]
    return [p for p in (first, then) if p]


def without_orphans(runs: list[dict], recording: "Recording", progress: "Progress") -> list[dict]:
    """The fine-tunes of `runs` whose parent did not fail in this run of the study; each of the others
    is recorded FAILED with its parent's reason (never started: a fine-tune never trains from random
    weights). A parent that is not finished for another reason stops its child in run_trial
    (trainables.checkpoints.load_parent: a TrialError, recorded the same way)."""
    keep = []
    for r in runs:
        parent = r.get("parent")
        if parent and parent in recording.failed:
            reason = recording.failed[parent][:300]
            why = {"trial_error": f"not started: its parent {parent} failed ({reason}); a fine-tune never "
                                  "starts from random weights"}
            recording.start(r)
            recording.result(r, why)
            progress.result(r, why)
            progress.complete(r, set())
        else:
            keep.append(r)
    return keep


def members_of(spec: dict) -> list[dict]:
    """The trial specs a Ray trial runs: a pack's members, or the trial itself."""
    return spec.get("members") or [spec]


class Progress:
    """Quiet progress: one line at most every `every_s` seconds while trials run (epoch level: trials
    done, running and pending, epochs trained of those to train, the best so far, elapsed and left),
    one when a trial fails and one when the last ends; with `verbose` also one per finished trial.
    Counts are per study trial (a pack's members count one each), include the trials a --resume kept
    (`kept`), and the epochs are those this command trains (a resumed trial counts from its
    checkpoint). Executors call `result`, `complete`, `error` and `tick`; `running` is the keys of the
    trials running now."""

    def __init__(self, keys: list[str], total_epochs: int, every_s: float = 10.0, kept: int = 0,
                 n_search: int = 0, metric: str = "acc_mean_all", printer=None, verbose: bool = False):
        self.keys, self.total_epochs, self.every_s, self.kept = list(keys), total_epochs, every_s, kept
        self.n_total = kept + len(self.keys) + n_search
        self.metric, self._printer, self.verbose = metric, printer, verbose  # printer None = print (see Recording)
        self.t0 = time.time()
        self.last_print = 0.0
        self.epochs: dict[str, int] = {}  # key -> last epoch reported
        self.base: dict[str, int] = {}  # key -> the epoch its attempt started from
        self.ended: dict[str, str] = {}  # key -> "finished" | "FAILED"
        self.best: tuple[float, str] | None = None
        self.paced: tuple[float, int] | None = None  # (time, epochs trained) at the first report: the pace's start

    def say(self, *args, **kwargs) -> None:
        """A progress line (print unless a printer was given)."""
        (self._printer or print)(*args, **kwargs)

    def result(self, spec: dict, result: dict) -> None:
        key = result.get("member") or spec["key"]
        if "start_epoch" in result:
            self.base[key] = int(result["start_epoch"])
        if "epoch" in result:
            self.epochs[key] = int(result["epoch"])
            if self.paced is None:
                self.paced = (time.time(), self._trained())
        if "trial_error" in result:
            self.ended[key] = "FAILED"
        if self.metric in result and (self.best is None or result[self.metric] > self.best[0]):
            self.best = (float(result[self.metric]), key)

    def complete(self, spec: dict, running: set[str]) -> None:
        keys = [m["key"] for m in members_of(spec)]
        for k in keys:
            self.ended.setdefault(k, "finished")
        last = self.kept + len(self.ended) >= self.n_total  # the study's last trial: its final line
        self.line(running, force=self.verbose or last,
                  note=", ".join(f"{self.ended[k]} {k}" for k in keys) if self.verbose else "")

    def error(self, spec: dict, running: set[str]) -> None:
        keys = [m["key"] for m in members_of(spec)]
        for k in keys:
            self.ended[k] = "FAILED"
        self.line(running, force=True, note=", ".join(f"FAILED {k}" for k in keys))

    def tick(self, running: set[str]) -> None:
        self.line(running)

    def _trained(self) -> int:
        return sum(max(0, e - self.base.get(k, 0)) for k, e in self.epochs.items())

    def line(self, running_keys: set[str], force=False, note=""):
        from study.plan import wrap_line

        now = time.time()
        if not force and now - self.last_print < self.every_s:
            return
        running = sum(1 for k in running_keys if k not in self.ended)
        done = self.kept + len(self.ended)
        if not force and not running and done == self.kept:
            return  # nothing has started yet (the executor says what it is starting)
        self.last_print = now
        failed = sum(v == "FAILED" for v in self.ended.values())
        trained = self._trained()
        elapsed = now - self.t0
        # the pace since the first report: the executor's start and the workers' setup are behind it by then
        t1, trained1 = self.paced or (now, trained)
        left = max(0, self.total_epochs - trained)
        eta = (fmt_duration(0) if not left else fmt_duration((now - t1) * left / (trained - trained1))
               if trained > trained1 else "?")
        best = f" | best {self.metric} {self.best[0]:.3f} ({self.best[1]})" if self.best else ""
        extra = ", ".join(x for x in (f"{failed} failed" if failed else "",
                                      f"{self.kept} kept from before" if self.kept else "") if x)
        text = (f"[{fmt_duration(elapsed)}] trials {done}/{self.n_total} done" + (f" ({extra})" if extra else "")
                + f", {running} running | epochs {min(trained, self.total_epochs)}/{self.total_epochs}{best} | "
                f"left ~{eta}" + (f" | {note}" if note else ""))
        for part in wrap_line(text):
            self.say(part, flush=True)


def fmt_duration(s: float) -> str:
    """'4m05s' or '1h07m'."""
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
