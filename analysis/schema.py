"""The records' schema (docs/mlflow-schema.md): every name a study writes to MLflow and the analyses
read back, the defaults, and the MLflow read helpers both sides use.

`study/tracking.py` writes with these names and `analysis/*` reads with them; no other module spells
a tag. Writers pass a tag's short name (`"seed"`), which `tag` turns into the recorded one
(`iqa_ls.seed`); readers use the `TAG_*` constants. Importing this module imports neither torch nor
mlflow (the helpers import mlflow when called), so `analysis` stays light and `study` may use it.
"""
from __future__ import annotations

import json
from pathlib import Path

from trainables.metric_names import ACC_METRICS, TEST_SETS  # noqa: F401 - the analyses read them from here

# --- where the records are -------------------------------------------------------------------------
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "iqa-ls"
ANALYSIS_DIR = "analysis"  # the parent run's artifact folder of the analysis outputs
PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"  # "false": no tqdm bar per downloaded file

# --- tags ------------------------------------------------------------------------------------------
TAG_PREFIX = "iqa_ls."


def value_text(v) -> str:
    """A param or tag value as it is recorded (MLflow stores text): lists and dicts as sorted JSON."""
    return json.dumps(v, sort_keys=True) if isinstance(v, (list, tuple, dict)) else str(v)


def tag(name: str) -> str:
    """The recorded tag of a short name: "seed" -> "iqa_ls.seed"."""
    return TAG_PREFIX + name


# both kinds of run
TAG_ROLE = tag("role")  # ROLE_PARENT | ROLE_TRIAL
ROLE_PARENT = "parent"
ROLE_TRIAL = "trial"
TAG_STUDY = tag("study")  # the study's name (--name)
# the parent run
TAG_KIND = tag("kind")  # "table2" | "ablate-<what>"
TAG_PRESET = tag("preset")
TAG_SEEDS = tag("seeds")  # seeds per setting, a count (planned_seeds)
TAG_STRATEGIES = tag("strategies")  # the Table 2 rows the grid holds, "1,8,9"
TAG_STORAGE = tag("storage")  # the resolved --storage (a --resume elsewhere is refused)
TAG_SEARCH = tag("search")  # study.ablate --search: its space, objective and ASHA settings (JSON)
# provenance: on the parent and on every trial
TAG_DATA_SOURCE = tag("data_source")
TAG_DATA_CHECKSUM = tag("data_checksum")
TAG_GIT_COMMIT = tag("git_commit")
TAG_VERSIONS = tag("versions")  # JSON: python, torch, torchvision, ray, mlflow, kornia
TAG_DEVICE = tag("device_name")
PROVENANCE_TAGS = (TAG_DATA_SOURCE, TAG_DATA_CHECKSUM, TAG_DEVICE, TAG_VERSIONS, TAG_GIT_COMMIT)
# a trial's run
TAG_TRIAL_KEY = tag("trial_key")  # unique within the study: what finds the run again
TAG_STRATEGY = tag("strategy")  # Table 2 row 1-9, "0" outside Table 2
TAG_TRAIN_SET = tag("train_set")
TAG_REGULARIZATION = tag("regularization")
TAG_SEED = tag("seed")
TAG_PROTOCOL = tag("protocol")  # "scratch" (absent on runs recorded before it) | "finetune"
TAG_ERROR = tag("error")  # why a trial failed, one line
TAG_STOPPED = tag("stopped_early")  # the last epoch of a trial the scheduler (ASHA) stopped
TAG_NODE = tag("node")  # this attempt's "<ip>/<node id>"
TAG_NODES = tag("nodes")  # every attempt's, JSON
# an ablation's trial
TAG_ABLATION = tag("ablation")  # tmap | iqa | ratios | levels | search
TAG_SETTING = tag("setting")  # a short label of the ablated value
TAG_ORDER = tag("setting_order")  # row order within the ablation's grid; for search the Optuna trial number
TAG_ABLATED = tag("ablated")  # JSON: plot panel -> x value
TAG_MATCHED = tag("matched_mean_t")  # the matched uniform control: the IQA-LS mean T its eps was set to
TAG_MATCHED_TO = tag("matched_to")
# MLflow's own
TAG_PARENT_RUN = "mlflow.parentRunId"  # a child run's parent: what nests the trials under the study
TAG_NOTE = "mlflow.note.content"  # the run's description in the UI
TAG_RUN_NAME = "mlflow.runName"

FINISHED = "FINISHED"
RUNNING = "RUNNING"  # a parent run still RUNNING: its study is running (or its command died before closing it)

# --- metrics and params ----------------------------------------------------------------------------
# A trial's per-epoch metrics (step = epoch); its evaluations add <what>_<set> (trainables.metric_names).
EPOCH_METRICS = ("loss", "lr", "train_acc", "mean_t", "frac_below_chance",
                 "frac_below_chance_max_batch", "epoch_time", "images_per_s", "data_time", "data_share")
EVAL_METRICS = ("objective",)  # search trials: the searched objective, on the epochs they evaluate
# the parent run's wall time (seconds from the command's process start): the plan's estimate, and what
# it took (logged last, once the tables are written), so the estimate's error is on record
METRIC_ESTIMATED_WALL = "estimated_wall_s"
METRIC_TOOK_WALL = "took_wall_s"
# TEST_SETS (Sec. 4.2: pristine + 3 distortions x 3 levels) and ACC_METRICS ("acc_" + set, a trial's
# final accuracies) are imported above: defined once in trainables.metric_names (torch-free), beside
# what a trial evaluates.
# The schedule as the parent run's params record it: a --resume of a study recorded before manifests
# is compared on these (study.resume).
RESUME_SCHEDULE_PARAMS = ("epochs", "batch_size", "lr", "lr_decay_every", "subset", "test_subset", "data")
# The part of it a table states (analysis.common.provenance), read from the trials' params (the
# parent's params are the flags, where a preset value not overridden reads "None").
TABLE_SCHEDULE_PARAMS = ("epochs", "subset", "test_subset")


class AnalysisError(Exception):
    """A study's records cannot be read or used (store, study, runs); a CLI reports it in one line,
    exit code 2."""


def one_line(e: BaseException, typed: bool = False) -> str:
    """An exception in one line: the first non-blank line of its message (its type's name when it has
    none); `typed` puts the type's name first (an error that is not our own), cut to 300 characters."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if not typed:
        return lines[0] if lines else type(e).__name__
    return f"{type(e).__name__}: {lines[0]}"[:300] if lines else type(e).__name__


# --- reading MLflow --------------------------------------------------------------------------------
def sqlite_path(uri: str) -> Path | None:
    """The file of a sqlite:/// tracking URI (None for any other URI)."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def open_client(tracking_uri: str):
    """MlflowClient for `tracking_uri`; a SQLite store must already exist (a reader never creates one)."""
    from mlflow.tracking import MlflowClient

    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():
        raise AnalysisError(f"no MLflow store at {db} (tracking URI {tracking_uri})")
    return MlflowClient(tracking_uri)


def search_runs(client, experiment_id: str, filter_string: str) -> list:
    """Every active run of the experiment that matches the filter, page by page (MLflow returns 1,000
    at most per call)."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def children_filter(parent_run_id: str) -> str:
    """The search filter of a parent run's child runs."""
    return f"tags.`{TAG_PARENT_RUN}` = '{parent_run_id}'"


def child_runs(client, experiment_id: str, parent_run_id: str) -> list:
    """The child runs of a parent run (tag mlflow.parentRunId), in MLflow's order."""
    return search_runs(client, experiment_id, children_filter(parent_run_id))


def study_parents(client, experiment_id: str | None, study: str) -> list:
    """The parent runs of `study` (iqa_ls.study + iqa_ls.role = parent; one unless two commands made
    one at once), oldest first. The name is compared in Python: no user text inside a filter string."""
    if experiment_id is None:
        return []
    runs = [r for r in search_runs(client, experiment_id, f"tags.`{TAG_ROLE}` = '{ROLE_PARENT}'")
            if r.data.tags.get(TAG_STUDY) == study]
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def find_parent(client, tracking_uri: str, experiment: str = DEFAULT_EXPERIMENT,
                study: str | None = None, parent_run_id: str | None = None):
    """The parent run of a study: by run id, or by its name (exactly one parent run)."""
    if (study is None) == (parent_run_id is None):
        raise AnalysisError("give exactly one of a study name or a parent run id")
    if parent_run_id is not None:
        try:
            run = client.get_run(parent_run_id)
        except Exception as e:  # MlflowException(RESOURCE_DOES_NOT_EXIST) or a connection error
            raise AnalysisError(f"run {parent_run_id} not found at {tracking_uri}: {one_line(e)}") from e
        if run.data.tags.get(TAG_ROLE) != ROLE_PARENT:
            raise AnalysisError(f"run {parent_run_id} is not a study parent run "
                                f"({TAG_ROLE} = {run.data.tags.get(TAG_ROLE)!r}) at {tracking_uri}")
        return run
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise AnalysisError(f"no experiment {experiment!r} at {tracking_uri}, so no study {study!r}")
    parents = study_parents(client, exp.experiment_id, study)
    if len(parents) != 1:
        found = "no" if not parents else f"{len(parents)}"
        raise AnalysisError(f"{found} parent run(s) of study {study!r} in experiment {experiment!r} "
                            f"at {tracking_uri} (exactly one expected)")
    return parents[0]


def planned_seeds(text: str | None) -> list[int]:
    """The seeds a study planned, from its parent's tag iqa_ls.seeds: a count n (what study.runner
    writes) means seeds 0..n-1; a JSON list or "0,1,2" names them; [] when absent or unreadable."""
    try:
        value = json.loads(text) if text else None
    except json.JSONDecodeError:
        try:
            value = [int(v) for v in text.split(",")]
        except ValueError:
            return []
    if isinstance(value, int) and not isinstance(value, bool):
        return list(range(value))
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return sorted(value)
    return []
