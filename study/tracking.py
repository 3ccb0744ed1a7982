"""The MLflow side of a study: the one module in study/ that imports mlflow.

Names follow docs/mlflow-schema.md and are defined in analysis/schema.py, which the readers use too.
Only the driver process writes (a Ray Tune callback calls into `StudyRecorder`), so a SQLite store
sees one writer and a tracking server one client per study. Every write is idempotent: runs are
found again by tags before one is created, and per-epoch metrics whose step was already logged are
skipped, so a resumed or restarted trial neither duplicates a run nor a metric point.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from filelock import FileLock
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from analysis.schema import (DEFAULT_EXPERIMENT, EPOCH_METRICS, EVAL_METRICS, FINISHED, PROGRESS_BAR_ENV, ROLE_PARENT,
                             ROLE_TRIAL, TAG_ERROR, TAG_KIND, TAG_NODE, TAG_NODES, TAG_NOTE, TAG_PARENT_RUN, TAG_ROLE,
                             TAG_RUN_NAME, TAG_STOPPED, TAG_STUDY, TAG_TRIAL_KEY, child_runs, children_filter,
                             find_parent, one_line, open_client, sqlite_path, study_parents, tag,
                             value_text)
from study.spec import TrackingError, check_tracking_uri  # noqa: F401 - names of this module too
from trainables.metric_names import EVAL_METRIC_PREFIXES

MAX_NODES = 32  # attempts listed in the iqa_ls.nodes tag (MLflow caps a tag value at 8000 chars)


# TrackingError and check_tracking_uri live in study.spec (with the other refusals and checks of a
# study's values): a refused command then never imports MLflow (~1.5 s); they are this module's names too


# A study driver talks to a tracking server for days: MLflow's own HTTP retries (7, with backoff) and
# 120 s timeout make a dead server stall a driver for minutes before the error. A few quick retries
# ride out a restarting server; then the study stops with one line (study.runner). A caller's own
# values of these variables win.
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
ARTIFACT_DIR = "mlartifacts"  # beside a SQLite store: the experiment's artifact root (open_parent)
OPEN_TRIES = 4  # a store that cannot be opened at once (a restarting server): try again
LOCK_PREFIX = "iqa-ls-mlflow-"  # <temp dir>/iqa-ls-mlflow-<hash of the store's path>.lock: held while a
# process opens a SQLite store (and maybe creates its tables)


def set_http_env() -> None:
    for k, v in HTTP_ENV.items():
        os.environ.setdefault(k, v)


def artifact_location_for(uri: str) -> str:
    """Where a new experiment's artifacts go for this tracking URI (StudyRecorder.ensure_experiment)."""
    db = sqlite_path(uri)
    return (db.resolve().parent / ARTIFACT_DIR).as_uri() if db else "the tracking server's artifact store"


def creation_lock_path(db: Path) -> Path:
    """The lock file of SQLite store `db`: in the system's temp folder, named by the store's resolved
    path, so it is never left in the user's folder (where `git status` would show it)."""
    import hashlib
    import tempfile

    digest = hashlib.sha256(str(Path(db).resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"{LOCK_PREFIX}{digest}.lock"


def _creation_lock(uri: str):
    """Only one process at a time opens a SQLite store: the first opening of a new file runs MLflow's
    alembic migrations, and two processes migrating one file at once break it for good (a
    half-made `alembic_tmp_*` table that every later opening trips over). The lock holds between
    the processes of one machine (a SQLite store is written by one machine's drivers; trials never
    open it). A server needs no lock."""
    db = sqlite_path(uri)
    return FileLock(str(creation_lock_path(db))) if db and db.parent.is_dir() else contextlib.nullcontext()


class StudyRecorder:
    """Parent run of one study plus one child run per trial key.

    Creating one writes nothing: the experiment is made by `open_parent` of a new study, so a refused
    command (e.g. `--resume` of a study that is not there) leaves the store as it was."""

    def __init__(self, tracking_uri: str, study: str, kind: str, experiment: str = DEFAULT_EXPERIMENT):
        self.uri, self.study, self.kind, self.experiment = tracking_uri, study, kind, experiment
        with _creation_lock(tracking_uri):
            exp = None
            for attempt in range(OPEN_TRIES):
                try:  # the client's first use of a new SQLite file creates its tables (alembic migrations)
                    self.client = MlflowClient(tracking_uri)
                    exp = self.client.get_experiment_by_name(experiment)
                    break
                except Exception as e:  # a store that cannot be opened yet (a restarting server)
                    if attempt == OPEN_TRIES - 1:
                        raise TrackingError(f"tracking URI {tracking_uri} cannot be opened "
                                            f"({one_line(e, typed=True)})") from None
                    time.sleep(1.0 + attempt)
        self.experiment_id = exp.experiment_id if exp else None
        self.parent_id: str | None = None
        self.child_ids: dict[str, str] = {}
        self.last_step: dict[str, int] = {}

    def artifact_location(self) -> str:
        """Where the runs' artifacts go: the experiment's root, or where open_parent will put it."""
        if self.experiment_id is not None:
            return self.client.get_experiment(self.experiment_id).artifact_location
        return artifact_location_for(self.uri)

    def ensure_experiment(self) -> None:
        if self.experiment_id is not None:
            return
        # MLflow's default artifact root for a SQLite store is ./mlruns of whatever folder the command
        # runs in; beside the store file, the runs and their files stay together
        db = sqlite_path(self.uri)
        location = (db.resolve().parent / ARTIFACT_DIR).as_uri() if db else None
        try:
            self.experiment_id = self.client.create_experiment(self.experiment, artifact_location=location)
        except Exception:  # made by a study starting at the same moment: use that one
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise
            self.experiment_id = exp.experiment_id

    # ------------------------------------------------------------------ lookup
    def find_parent(self):
        """This study's parent run, None if there is none (two are an error)."""
        runs = study_parents(self.client, self.experiment_id, self.study)
        if len(runs) > 1:
            raise TrackingError(f"study {self.study!r} has {len(runs)} parent runs in {self.uri}; expected one")
        return runs[0] if runs else None

    def children(self) -> dict[str, object]:
        """trial key -> the child run (latest info) of this study."""
        if self.parent_id is None:
            return {}
        return {r.data.tags.get(TAG_TRIAL_KEY): r for r in child_runs(self.client, self.experiment_id, self.parent_id)}

    def recorded_finished_keys(self) -> set[str]:
        """The finished trial keys of this study as recorded, without opening its parent run (the
        plan of a --resume run counts what is left before anything is written)."""
        found = self.find_parent()
        if found is None:
            return set()
        return {r.data.tags.get(TAG_TRIAL_KEY) for r in child_runs(self.client, self.experiment_id, found.info.run_id)
                if r.info.status == FINISHED}

    def recorded_trial_params(self) -> dict | None:
        """The params (the resolved TrialConfig) of one recorded child run of this study, None if it has none."""
        found = self.find_parent()
        if found is None:
            return None
        page = self.client.search_runs([self.experiment_id], children_filter(found.info.run_id), max_results=1)
        return dict(page[0].data.params) if page else None

    # ------------------------------------------------------------------ parent
    def open_parent(self, resume: bool, tags: dict, params: dict, description: str = "",
                    reopen: bool = True) -> str:
        """Create the parent run, or with `resume` find the existing one (never a second). A resumed
        parent is set RUNNING again unless `reopen` is False (nothing left to run: its status and
        duration stay as they were). `description` is the run's note (mlflow.note.content: the
        command and the plan); a resume appends its own."""
        found = self.find_parent()
        if found and not resume:
            raise TrackingError(f"study {self.study!r} already exists in {self.uri} "
                                f"(run {found.info.run_id}); pass --resume to continue it or choose another --name")
        if not found and resume:
            raise TrackingError(f"--resume: no study named {self.study!r} in {self.uri}")
        if found:
            self.parent_id = found.info.run_id
            if reopen:
                self.client.update_run(self.parent_id, status="RUNNING")
                if description:
                    old = found.data.tags.get(TAG_NOTE, "")
                    self.client.set_tag(self.parent_id, TAG_NOTE, _note(old + "\n\n" + description))
        else:
            self.ensure_experiment()
            run = self.client.create_run(self.experiment_id, run_name=self.study, tags={
                TAG_ROLE: ROLE_PARENT, TAG_STUDY: self.study, TAG_KIND: self.kind,
                **({TAG_NOTE: _note(description)} if description else {}),
                **{tag(k): value_text(v) for k, v in tags.items()}})
            self.parent_id = run.info.run_id
            self.client.log_batch(self.parent_id, params=[Param(k, value_text(v)) for k, v in sorted(params.items())])
            self._check_single_parent()
            self.client.set_experiment_tag(self.experiment_id, VIEW_TAG, json.dumps(view_state()))
        for key, run in self.children().items():
            self.child_ids[key] = run.info.run_id
        return self.parent_id

    def _check_single_parent(self) -> None:
        """Two new studies of one name started at the same moment (with different --storage, so not
        held apart by the study lock) both create a parent: the later one deletes its own and stops."""
        parents = study_parents(self.client, self.experiment_id, self.study)
        if len(parents) > 1 and parents[0].info.run_id != self.parent_id:
            self.client.delete_run(self.parent_id)
            self.parent_id = None
            raise TrackingError(f"study {self.study!r} was created in {self.uri} by another command at "
                                "the same moment; pass --resume to continue it or choose another --name")

    def recorded(self) -> tuple[dict, dict] | None:
        """(params, tags) of this study's parent run as recorded, or None when there is none."""
        found = self.find_parent()
        return (dict(found.data.params), dict(found.data.tags)) if found else None

    def log_summary(self, metrics: dict) -> None:
        """Summary metrics of the study on its parent run (the latest value is the one shown)."""
        now = int(time.time() * 1000)
        self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())
                                                       if isinstance(v, (int, float))])

    def close_parent(self, status: str = FINISHED) -> None:
        """End the parent run; its description then starts with the results table (results_table),
        the command and plan below it (a resumed study's table replaces the one before)."""
        table = results_table(list(self.children().values()))
        if table:
            old = self.client.get_run(self.parent_id).data.tags.get(TAG_NOTE, "")
            self.client.set_tag(self.parent_id, TAG_NOTE, _note(old, results=table))
        self.client.set_terminated(self.parent_id, status=status)

    def finished_keys(self) -> set[str]:
        return {k for k, r in self.children().items() if r.info.status == FINISHED}

    # ------------------------------------------------------------------ children
    def open_child(self, key: str, config: dict, tags: dict, run_name: str | None = None) -> str:
        """The trial's child run, created once (named `run_name`, default the key; the key is the
        tag iqa_ls.trial_key, which is what finds it again) or set RUNNING again."""
        if key in self.child_ids:
            run_id = self.child_ids[key]
            run = self.client.get_run(run_id)
            if run.info.status != FINISHED:  # a failed or interrupted trial runs again
                self.client.update_run(run_id, status="RUNNING")
                if TAG_ERROR in run.data.tags:
                    self.client.delete_tag(run_id, TAG_ERROR)
        else:
            run = self.client.create_run(self.experiment_id, run_name=run_name or key, tags={
                TAG_PARENT_RUN: self.parent_id, TAG_ROLE: ROLE_TRIAL, TAG_STUDY: self.study,
                TAG_TRIAL_KEY: key, **{tag(k): value_text(v) for k, v in tags.items()}})
            run_id = self.child_ids[key] = run.info.run_id
            self.client.log_batch(run_id, params=[Param(k, value_text(v)) for k, v in sorted(config.items())])
        if key not in self.last_step:
            hist = self.client.get_metric_history(run_id, "loss")
            self.last_step[key] = max((m.step for m in hist), default=0)
        return run_id

    def log_epoch(self, key: str, metrics: dict) -> bool:
        """Log one epoch's metrics unless that epoch was logged before (resume/restore)."""
        step = int(metrics["epoch"])
        if step <= self.last_step.get(key, 0):
            return False
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in sorted(metrics.items())
                 if (k in EPOCH_METRICS or k in EVAL_METRICS or k.startswith(EVAL_METRIC_PREFIXES))
                 and isinstance(v, (int, float))]
        for i in range(0, len(batch), MLFLOW_BATCH["metrics"]):  # a final epoch with CIFAR-10-C: ~650
            self.client.log_batch(self.child_ids[key], metrics=batch[i:i + MLFLOW_BATCH["metrics"]])
        self.last_step[key] = step
        return True

    def log_history(self, key: str, history: list[dict]) -> int:
        """Log the epochs of `history` (a checkpoint's per-epoch metrics) that MLflow lacks, in order:
        fills the gap a lost node or a killed driver leaves between the last logged epoch and the
        checkpoint a trial resumes from. Returns the number of epochs logged."""
        return sum(self.log_epoch(key, m) for m in sorted(history, key=lambda m: int(m["epoch"])))

    def record_attempt(self, key: str, start_epoch: int, node: str) -> None:
        """One start of a trial (its first, a Ray restart after a lost node, or a --resume run): metric
        `start_epoch` (step = attempt number) = the checkpoint epoch it continued from, 0 = from scratch;
        tags `iqa_ls.node` (this attempt's "<ip>/<node id>") and `iqa_ls.nodes` (every attempt's)."""
        run_id = self.child_ids[key]
        attempts = len(self.client.get_metric_history(run_id, "start_epoch"))
        nodes = json.loads(self.client.get_run(run_id).data.tags.get(TAG_NODES, "[]"))
        nodes = (nodes + [node])[-MAX_NODES:]
        self.client.log_batch(run_id, metrics=[Metric("start_epoch", float(start_epoch), int(time.time() * 1000),
                                                      attempts + 1)],
                              tags=[RunTag(TAG_NODE, node), RunTag(TAG_NODES, json.dumps(nodes))])

    def finish_child(self, key: str, artifacts: list[Path]) -> None:
        run_id = self.child_ids[key]
        if self.client.get_run(run_id).info.status == FINISHED:
            return  # finished before (a resumed study): nothing is logged twice
        for f in artifacts:
            self.client.log_artifact(run_id, str(f))
        self.client.set_terminated(run_id, status=FINISHED)

    def fail_child(self, key: str, reason: str) -> None:
        run_id = self.child_ids.get(key)
        if run_id is None:
            return
        line = " ".join(str(reason).split())[:500]
        self.client.set_tag(run_id, TAG_ERROR, line)
        self.client.set_terminated(run_id, status="FAILED")

    def interrupt_running_children(self) -> list[str]:
        """Trials left unfinished by an interrupted study (Ctrl-C): KILLED, not RUNNING, until a
        --resume run opens them again (open_child sets them RUNNING). Returns their keys."""
        running = {k: r.info.run_id for k, r in self.children().items() if r.info.status == "RUNNING"}
        for run_id in running.values():
            self.client.set_terminated(run_id, status="KILLED")
        return sorted(running)

    def stop_child_early(self, key: str, epoch: int, artifacts: list[Path] = ()) -> None:
        """A trial the scheduler (ASHA) stopped after `epoch`: not a failure and not finished."""
        run_id = self.child_ids[key]
        for f in artifacts:
            self.client.log_artifact(run_id, str(f))
        self.client.set_tag(run_id, TAG_STOPPED, str(epoch))
        self.client.set_terminated(run_id, status="KILLED")

    def set_child_tag(self, key: str, name: str, value) -> None:
        self.client.set_tag(self.child_ids[key], tag(name), value_text(value))


UI_PORT = 5000  # mlflow ui's default


# MLflow 3.17's UI picks its view (GenAI or "Model training") from the page address's `workflowType`,
# else from the browser's last choice (GenAI at first); the experiment tag mlflow.experimentKind is not
# read while the sidebar's switch exists (checked in its JS bundle, docs/mlflow-schema.md). So every
# link a study prints carries `workflowType=machine_learning`.
ML_VIEW = "workflowType=machine_learning"
VIEW_KEY = "iqa-ls"  # the experiment's shared view: tag mlflow.sharedViewState.<key>, link ?viewStateShareKey=<key>
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
VIEW_METRICS = ("acc_pristine", "acc_mean_distorted", "acc_mean_all")  # the runs list's columns


def view_state() -> dict:
    """The runs list as the study's link opens it (MLflow's "share view" state, stored on the
    experiment): the accuracy columns shown (checked with headless Chromium, docs/mlflow-schema.md)."""
    return {"selectedColumns": [f"metrics.`{m}`" for m in VIEW_METRICS]}


def runs_url(base: str, experiment_id: str | None) -> str:
    """The UI page of the experiment's runs, in the "Model training" view, with the accuracy columns
    (view_state; docs/mlflow-schema.md)."""
    base = base.rstrip("/")
    if experiment_id is None:
        return f"{base}/#/experiments?{ML_VIEW}"
    return f"{base}/#/experiments/{experiment_id}/runs?{ML_VIEW}&viewStateShareKey={VIEW_KEY}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """The UI page of one run, in the "Model training" view."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{ML_VIEW}"


def ui_command(tracking_uri: str, experiment_id: str | None = None, run_id: str | None = None) -> str:
    """How to open this study's runs in the MLflow UI: the command to start it, and the page (the
    runs list; with `run_id`, that run's page too)."""
    db = sqlite_path(tracking_uri)
    base = f"http://127.0.0.1:{UI_PORT}" if db is not None else tracking_uri
    pages = runs_url(base, experiment_id)
    if run_id and experiment_id is not None:
        pages += f" (the study's own page: {run_url(base, experiment_id, run_id)})"
    if db is not None:
        return f"mlflow ui --backend-store-uri sqlite:///{db.resolve()} --port {UI_PORT}, then open {pages}"
    return f"open {pages}"


NOTE_MAX = 5000  # characters kept (MLflow caps a tag value at 8000)
RESULTS_HEAD = "**Results**"  # the first line of a note that starts with the results table
RESULTS_END = "\n\n---\n\n"  # between the results table and the command and plan


def _note(text: str, results: str = "") -> str:
    """A run's description: `results` (a table) first, then `text` (the command and plan; a results
    table it starts with is replaced), its oldest part cut to fit NOTE_MAX."""
    text = text.strip()
    if text.startswith(RESULTS_HEAD) and RESULTS_END in text:
        text = text.split(RESULTS_END, 1)[1].strip()
    head = f"{results.strip()}{RESULTS_END}" if results else ""
    room = max(0, NOTE_MAX - len(head))
    return head + (text if len(text) <= room else "...\n" + text[-room:])


def results_table(children: list) -> str:
    """The short results table a study's page opens with: per arm (a Table 2 row, or an ablation's
    setting; the seeds pooled) its finished runs and the mean test accuracies over them; with one run
    no interval can be given, and the table says so."""
    from analysis.stats import mean_ci

    arms: dict[str, list] = {}
    for r in sorted(children, key=lambda r: (int(r.data.tags.get(tag("strategy"), 0) or 0),
                                              r.data.tags.get(tag("setting_order"), ""), r.info.run_name or "")):
        t = r.data.tags
        if t.get(tag("strategy"), "0") != "0":
            arm = " ".join(x for x in (f"s{t[tag('strategy')]}", t.get(tag("regularization"), ""),
                                       t.get(tag("train_set"), ""),
                                       "fine-tuned" if t.get(tag("protocol")) == "finetune" else "") if x)
        else:
            arm = " ".join(x for x in (t.get(tag("ablation"), ""), t.get(tag("setting"), "")) if x) or \
                (r.info.run_name or t.get(TAG_TRIAL_KEY, ""))
        arms.setdefault(arm, []).append(r)
    if not arms:
        return ""
    lines = ["| arm | finished | " + " | ".join(VIEW_METRICS) + " |", "|---|---|" + "---|" * len(VIEW_METRICS)]
    most = 0
    for arm, runs in arms.items():
        done = [r for r in runs if r.info.status == FINISHED]
        cells = []
        for m in VIEW_METRICS:
            c = mean_ci([r.data.metrics[m] for r in done if m in r.data.metrics])
            most = max(most, c["n"])
            cells.append("-" if not c["n"] else f"{c['mean']:.3f}" if c["n"] < 2 else
                         f"{c['mean']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}]")
        lines.append(f"| {arm} | {len(done)}/{len(runs)} | " + " | ".join(cells) + " |")
    caveat = ("one run per arm: no interval can be given" if most < 2 else
              "mean over seeds [95 % t interval]")
    return f"{RESULTS_HEAD} (test accuracy; {caveat}; the full tables: the artifacts)\n\n" + "\n".join(lines)



# ------------------------------------------------------------------ a study as files (export / import)
EXPORT_TABLES = ("runs", "params", "tags", "metrics")  # <name>.parquet in an export folder
EXPORT_ARTIFACTS = (".json", ".md", ".csv", ".txt")  # small files kept with the runs; never weights
MANIFEST = "manifest.json"
MLFLOW_BATCH = {"metrics": 1000, "params": 100, "tags": 100}  # MLflow's limits per log_batch call


def export_study(tracking_uri: str, study: str, out_dir, experiment: str = DEFAULT_EXPERIMENT) -> dict:
    """Write study `study` (its parent run and every child run) as parquet tables into `out_dir`:
    runs (id, name, status, times, parent), params, tags and the full metric histories (key, value,
    step, timestamp), plus each run's small artifacts (EXPORT_ARTIFACTS: calibration.json,
    scores_hist.json, config.json; never model weights) under artifacts/<run id>/, and a manifest
    with the files' sha256. Together they rebuild every table of `analysis` (import_study). Returns
    the manifest."""
    import hashlib
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    os.environ.setdefault(PROGRESS_BAR_ENV, "false")  # no bar per downloaded file
    rec = StudyRecorder(tracking_uri, study, "export", experiment)
    parent = rec.find_parent()
    if parent is None:
        raise TrackingError(f"no study named {study!r} in {tracking_uri} (experiment {experiment})")
    rec.parent_id = parent.info.run_id
    runs = [parent] + sorted(rec.children().values(), key=lambda r: (r.data.tags.get(TAG_TRIAL_KEY, ""),
                                                                       r.info.run_id))
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise TrackingError(f"export folder {out} is not empty; allowed: a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict]] = {name: [] for name in EXPORT_TABLES}
    for r in runs:
        rid = r.info.run_id
        rows["runs"].append({"run_id": rid, "run_name": r.info.run_name or "", "status": r.info.status,
                             "start_time": int(r.info.start_time or 0), "end_time": int(r.info.end_time or 0),
                             "parent_run_id": r.data.tags.get(TAG_PARENT_RUN, "")})
        rows["params"] += [{"run_id": rid, "key": k, "value": v} for k, v in sorted(r.data.params.items())]
        rows["tags"] += [{"run_id": rid, "key": k, "value": v} for k, v in sorted(r.data.tags.items())]
        for key in sorted(r.data.metrics):
            rows["metrics"] += [{"run_id": rid, "key": key, "value": float(m.value), "step": int(m.step),
                                 "timestamp": int(m.timestamp)}
                                for m in sorted(rec.client.get_metric_history(rid, key),
                                                key=lambda m: (m.step, m.timestamp))]
        with tempfile.TemporaryDirectory() as tmp:
            for a in rec.client.list_artifacts(rid):
                if a.is_dir or not a.path.endswith(EXPORT_ARTIFACTS):
                    continue
                local = rec.client.download_artifacts(rid, a.path, tmp)
                dest = out / "artifacts" / rid / a.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(Path(local).read_bytes())
    schemas = {"runs": {"run_id": pa.string(), "run_name": pa.string(), "status": pa.string(),
                        "start_time": pa.int64(), "end_time": pa.int64(), "parent_run_id": pa.string()},
               "params": {"run_id": pa.string(), "key": pa.string(), "value": pa.string()},
               "tags": {"run_id": pa.string(), "key": pa.string(), "value": pa.string()},
               "metrics": {"run_id": pa.string(), "key": pa.string(), "value": pa.float64(), "step": pa.int64(),
                           "timestamp": pa.int64()}}
    for name in EXPORT_TABLES:
        schema = pa.schema(list(schemas[name].items()))
        pq.write_table(pa.Table.from_pylist(rows[name], schema=schema), out / f"{name}.parquet")
    files = sorted(p for p in out.rglob("*") if p.is_file())
    manifest = {"study": study, "experiment": experiment, "parent_run_id": parent.info.run_id,
                "runs": len(runs), "metric_points": len(rows["metrics"]),
                "files": {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def import_study(export_dir, tracking_uri: str, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Re-create an exported study in `tracking_uri` (same run names, tags, params, metric histories
    with their steps and timestamps, statuses, times and small artifacts; new run ids, the child runs
    nested under the new parent). Refused if the study already exists there or a file does not match
    the manifest. Returns the new parent run id."""
    import hashlib

    import pyarrow.parquet as pq

    src = Path(export_dir)
    mf = src / MANIFEST
    if not mf.is_file():
        raise TrackingError(f"{src} has no {MANIFEST}; allowed: a folder written by export_study")
    manifest = json.loads(mf.read_text())
    for rel, sha in manifest["files"].items():
        f = src / rel
        if not f.is_file() or hashlib.sha256(f.read_bytes()).hexdigest() != sha:
            raise TrackingError(f"{f} is missing or does not match {MANIFEST} (sha256); the export is damaged")
    study = manifest["study"]
    rec = StudyRecorder(tracking_uri, study, "import", experiment)
    if rec.find_parent() is not None:
        raise TrackingError(f"study {study!r} already exists in {tracking_uri}; import into another store "
                            "or experiment")
    rec.ensure_experiment()
    tables = {name: pq.read_table(src / f"{name}.parquet").to_pylist() for name in EXPORT_TABLES}
    by_run: dict[str, dict[str, list]] = {}
    for name in ("params", "tags", "metrics"):
        for row in tables[name]:
            by_run.setdefault(row["run_id"], {}).setdefault(name, []).append(row)
    old_parent = manifest["parent_run_id"]
    new_ids: dict[str, str] = {}
    for run in sorted(tables["runs"], key=lambda r: r["run_id"] != old_parent):  # the parent first
        old = run["run_id"]
        parts = by_run.get(old, {})
        tags = {t["key"]: t["value"] for t in parts.get("tags", [])}
        if run["parent_run_id"]:
            tags[TAG_PARENT_RUN] = new_ids[run["parent_run_id"]]
        tags.pop(TAG_RUN_NAME, None)
        created = rec.client.create_run(rec.experiment_id, start_time=run["start_time"] or None,
                                        tags=tags, run_name=run["run_name"] or None)
        rid = new_ids[old] = created.info.run_id
        params = [Param(p["key"], p["value"]) for p in parts.get("params", [])]
        metrics = [Metric(m["key"], m["value"], m["timestamp"], m["step"]) for m in parts.get("metrics", [])]
        for i in range(0, len(params), MLFLOW_BATCH["params"]):
            rec.client.log_batch(rid, params=params[i:i + MLFLOW_BATCH["params"]])
        for i in range(0, len(metrics), MLFLOW_BATCH["metrics"]):
            rec.client.log_batch(rid, metrics=metrics[i:i + MLFLOW_BATCH["metrics"]])
        art = src / "artifacts" / old
        if art.is_dir():
            for f in sorted(p for p in art.rglob("*") if p.is_file()):
                rel = f.relative_to(art).parent
                rec.client.log_artifact(rid, str(f), None if str(rel) == "." else str(rel))
        rec.client.set_terminated(rid, status=run["status"], end_time=run["end_time"] or None)
    return new_ids[old_parent]


# ------------------------------------------------------------------ evaluating a recorded study (study.cifar10c)
def finished_trials(tracking_uri: str, study: str | None = None, parent_run_id: str | None = None,
                    experiment: str = DEFAULT_EXPERIMENT) -> tuple[str, list[dict]]:
    """(parent run id, the study's FINISHED child runs sorted by trial key), each as {"run_id", "key",
    "tags", "params", "last_step"}; last_step = the last epoch logged (max step of `loss`), None if the
    run has no `loss` history. The study is named (tag iqa_ls.study) or given by its parent run id.
    A store or study that cannot be read is an AnalysisError (analysis.schema)."""
    check_tracking_uri(tracking_uri)
    client = open_client(tracking_uri)
    parent = find_parent(client, tracking_uri, experiment, study=study, parent_run_id=parent_run_id)
    out = []
    for r in child_runs(client, parent.info.experiment_id, parent.info.run_id):
        if r.info.status != FINISHED:
            continue
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "loss")]
        out.append({"run_id": r.info.run_id, "key": r.data.tags.get(TAG_TRIAL_KEY) or r.info.run_name,
                    "tags": dict(r.data.tags), "params": dict(r.data.params),
                    "last_step": max(steps) if steps else None})
    return parent.info.run_id, sorted(out, key=lambda t: (t["key"], t["run_id"]))


def download_artifact(tracking_uri: str, run_id: str, path: str, dst_dir) -> Path | None:
    """The run's artifact `path` downloaded into `dst_dir`, or None when the run has none there."""
    os.environ.setdefault(PROGRESS_BAR_ENV, "false")  # no bar per downloaded file
    client = MlflowClient(tracking_uri)
    folder = str(Path(path).parent) if str(Path(path).parent) != "." else None
    if path not in {a.path for a in client.list_artifacts(run_id, folder)}:
        return None
    Path(dst_dir).mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, path, str(dst_dir)))


def list_artifacts(tracking_uri: str, run_id: str, folder: str | None = None) -> list[str]:
    """The artifact paths of a run (in `folder`, or at its root)."""
    return sorted(a.path for a in MlflowClient(tracking_uri).list_artifacts(run_id, folder))


def log_evaluation(tracking_uri: str, run_id: str, metrics: dict, step: int, artifacts=(), tags: dict | None = None,
                   artifact_dirs: dict | None = None) -> None:
    """Add an evaluation to a (finished) trial's run: `metrics` at `step` (in log_batch's chunks), the
    `artifacts` (files; `artifact_dirs` maps a file to its artifact folder, default the root), then the
    `tags` (`iqa_ls.` prefixed): written last, so a tag says the evaluation was logged whole."""
    client = MlflowClient(tracking_uri)
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, int(step)) for k, v in sorted(metrics.items())
             if isinstance(v, (int, float))]
    for i in range(0, len(batch), MLFLOW_BATCH["metrics"]):
        client.log_batch(run_id, metrics=batch[i:i + MLFLOW_BATCH["metrics"]])
    for f in artifacts:
        client.log_artifact(run_id, str(f), (artifact_dirs or {}).get(str(f)))
    if tags:
        client.log_batch(run_id, tags=[RunTag(tag(k), value_text(v)) for k, v in tags.items()])
