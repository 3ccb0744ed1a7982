"""Shared helpers of the analysis modules: read a recorded study back from MLflow, summarise seeds,
state provenance, and write tables and figures so that the same runs give the same bytes.

This is the reader side of docs/mlflow-schema.md; the names below are the ones `study/tracking.py`
writes. Analysis reads MLflow only: nothing here imports torch, Ray or the training code.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


# --- MLflow names (docs/mlflow-schema.md) -----------------------------------------------------------
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "iqa-ls"
ARTIFACT_DIR = "analysis"  # parent-run artifact folder of the analysis outputs

TAG_ROLE = "iqa_ls.role"  # "parent" | "trial"
TAG_STUDY = "iqa_ls.study"
TAG_KIND = "iqa_ls.kind"
TAG_PRESET = "iqa_ls.preset"
TAG_SEEDS = "iqa_ls.seeds"
TAG_DATA_SOURCE = "iqa_ls.data_source"
TAG_DATA_CHECKSUM = "iqa_ls.data_checksum"
TAG_GIT_COMMIT = "iqa_ls.git_commit"
TAG_VERSIONS = "iqa_ls.versions"  # JSON: python, torch, torchvision, ray, mlflow, kornia
TAG_DEVICE = "iqa_ls.device_name"
TAG_TRIAL_KEY = "iqa_ls.trial_key"
TAG_STRATEGY = "iqa_ls.strategy"  # Table 2 row 1-9, "0" outside Table 2
TAG_TRAIN_SET = "iqa_ls.train_set"
TAG_REGULARIZATION = "iqa_ls.regularization"
TAG_SEED = "iqa_ls.seed"
TAG_ERROR = "iqa_ls.error"
TAG_PROTOCOL = "iqa_ls.protocol"  # "scratch" (absent on runs recorded before it) | "finetune"
TAG_FINETUNE_PARENT = "iqa_ls.finetune_parent"  # a fine-tune's parent trial key
TAG_STRATEGIES = "iqa_ls.strategies"  # parent run: the Table 2 rows the grid holds, "1,8,9"
TAG_PARENT_RUN = "mlflow.parentRunId"

# Provenance tags every trial carries too; the header states the parent's and flags disagreement.
PROVENANCE_TAGS = (TAG_DATA_SOURCE, TAG_DATA_CHECKSUM, TAG_DEVICE, TAG_VERSIONS, TAG_GIT_COMMIT)
VERSION_ORDER = ("python", "torch", "torchvision", "ray", "mlflow", "kornia")
# Schedule fields a table must state, read from the trials' resolved TrialConfig params (the parent's
# params are the CLI flags, where an un-overridden preset value reads "None").
SCHEDULE_PARAMS = ("epochs", "subset", "test_subset")

# The ten test sets (Sec. 4.2: pristine + 3 distortions x 3 levels); final metric = "acc_" + name.
TEST_SETS = ("pristine", "blur_1", "blur_2", "blur_3", "noise_1", "noise_2", "noise_3",
             "jpeg_1", "jpeg_2", "jpeg_3")
ACC_METRICS = tuple(f"acc_{t}" for t in TEST_SETS)
TEST_SET_LABELS = {"pristine": "Pristine",
                   **{f"{d}_{k}": f"{label} L{k}" for d, label in (("blur", "Blur"), ("noise", "Noise"),
                                                                   ("jpeg", "JPEG")) for k in (1, 2, 3)}}

FINISHED = "FINISHED"
MISSING = "—"  # how a gap is shown in text outputs


class AnalysisError(Exception):
    """A problem with the input (store, study, runs) that the CLI reports in one line, exit code 2."""


# --- reading MLflow ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialRecord:
    """One child run as the analysis sees it (final metric values = the latest logged value)."""
    run_id: str
    run_name: str
    status: str
    start_time: int
    end_time: int
    tags: dict
    params: dict
    metrics: dict

    @property
    def finished(self) -> bool:
        return self.status == FINISHED

    def tag_int(self, key: str) -> int | None:
        try:
            return int(self.tags[key])
        except (KeyError, TypeError, ValueError):
            return None


def protocol_of(t: TrialRecord) -> str:
    """How the run's trial started: "scratch" or "finetune" (docs/paper-mapping.md)."""
    return t.tags.get(TAG_PROTOCOL) or "scratch"


def open_client(tracking_uri: str):
    """MlflowClient for `tracking_uri`; a SQLite store must already exist (a reader never creates one)."""
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///"):])
        if not path.is_file():
            raise AnalysisError(f"no MLflow store at {path} (tracking URI {tracking_uri})")
    return MlflowClient(tracking_uri)


def find_parent(client, tracking_uri: str, experiment: str = DEFAULT_EXPERIMENT,
                study: str | None = None, parent_run_id: str | None = None):
    """The parent run of a study: by run id, or by `iqa_ls.study` + `iqa_ls.role = parent` (exactly one)."""
    if (study is None) == (parent_run_id is None):
        raise AnalysisError("give exactly one of a study name or a parent run id")
    if parent_run_id is not None:
        try:
            run = client.get_run(parent_run_id)
        except Exception as e:  # MlflowException(RESOURCE_DOES_NOT_EXIST) or a connection error
            raise AnalysisError(f"run {parent_run_id} not found at {tracking_uri}: {first_line(e)}") from e
        if run.data.tags.get(TAG_ROLE) != "parent":
            raise AnalysisError(f"run {parent_run_id} is not a study parent run "
                                f"({TAG_ROLE} = {run.data.tags.get(TAG_ROLE)!r}) at {tracking_uri}")
        return run
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise AnalysisError(f"no experiment {experiment!r} at {tracking_uri}, so no study {study!r}")
    # Filter the study name in Python: no quoting of user text inside an MLflow filter string.
    parents = [r for r in search_all(client, [exp.experiment_id], f"tags.`{TAG_ROLE}` = 'parent'")
               if r.data.tags.get(TAG_STUDY) == study]
    if len(parents) != 1:
        found = "no" if not parents else f"{len(parents)}"
        raise AnalysisError(f"{found} parent run(s) of study {study!r} in experiment {experiment!r} "
                            f"at {tracking_uri} (exactly one expected)")
    return parents[0]


def search_all(client, experiment_ids: list[str], filter_string: str) -> list:
    """Every active run matching the filter, all pages."""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def child_runs(client, parent) -> list[TrialRecord]:
    """The parent's child runs (tag `mlflow.parentRunId`), sorted by (start time, run id)."""
    runs = search_all(client, [parent.info.experiment_id],
                      f"tags.`{TAG_PARENT_RUN}` = '{parent.info.run_id}'")
    records = [TrialRecord(run_id=r.info.run_id, run_name=r.info.run_name or "", status=r.info.status,
                           start_time=r.info.start_time or 0, end_time=r.info.end_time or 0,
                           tags=dict(r.data.tags), params=dict(r.data.params),
                           metrics=dict(r.data.metrics)) for r in runs]
    return sorted(records, key=lambda t: (t.start_time, t.run_id))


PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


def download_json(client, run_ids: Iterable[str], name: str) -> dict[str, dict]:
    """run id -> the run's JSON artifact `name` parsed, for the runs that have it (older runs may not)."""
    import tempfile

    out = {}
    quiet = os.environ.get(PROGRESS_BAR_ENV)
    os.environ[PROGRESS_BAR_ENV] = "false"  # one tqdm bar per download would bury the console table
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for run_id in run_ids:
                try:
                    f = client.download_artifacts(run_id, name, str(Path(tmp) / run_id))
                except Exception:  # noqa: BLE001 - a run without the artifact
                    continue
                out[run_id] = json.loads(Path(f).read_text())
    finally:
        if quiet is None:
            os.environ.pop(PROGRESS_BAR_ENV, None)
        else:
            os.environ[PROGRESS_BAR_ENV] = quiet
    return out


def log_files(client, run_id: str, paths: Iterable[Path], artifact_path: str = ARTIFACT_DIR) -> None:
    """Log exactly these files (not the whole folder, which other analyses share) to the run."""
    for p in paths:
        client.log_artifact(run_id, str(p), artifact_path)


# --- provenance ------------------------------------------------------------------------------------
def parse_versions(text: str | None) -> dict:
    try:
        v = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {"?": text}
    return v if isinstance(v, dict) else {"?": text}


def versions_text(versions: dict) -> str:
    keys = [k for k in VERSION_ORDER if k in versions] + sorted(k for k in versions if k not in VERSION_ORDER)
    return ", ".join(f"{k} {versions[k]}" for k in keys) or "unknown"


def provenance(parent, trials: Sequence[TrialRecord]) -> dict:
    """What a table must state about where its numbers come from (STYLE.md 9): the parent's tags, the
    trials' schedule, and under `disagree` any provenance tag where a trial differs from the parent."""
    tags = parent.data.tags
    out = {"study": tags.get(TAG_STUDY, parent.info.run_name), "parent_run_id": parent.info.run_id,
           "kind": tags.get(TAG_KIND), "preset": tags.get(TAG_PRESET), "seeds": tags.get(TAG_SEEDS),
           **{k: _schedule_value(k, parent, trials) for k in SCHEDULE_PARAMS},
           "data_source": tags.get(TAG_DATA_SOURCE),
           "data_checksum": tags.get(TAG_DATA_CHECKSUM), "device_name": tags.get(TAG_DEVICE),
           "git_commit": tags.get(TAG_GIT_COMMIT), "versions": parse_versions(tags.get(TAG_VERSIONS))}
    disagree = {}
    for key in PROVENANCE_TAGS:
        values = sorted({t.tags[key] for t in trials if t.finished and key in t.tags} - {tags.get(key)})
        if values:
            disagree[key] = values
    out["disagree"] = disagree
    return out


def _schedule_value(key: str, parent, trials: Sequence[TrialRecord]) -> str | None:
    """Distinct values of a TrialConfig field over the finished trials ("30" or "10/30"), else the
    parent's param when it holds a value."""
    values = {t.params[key] for t in trials if t.finished and key in t.params}
    if values:
        return "/".join(sorted(values, key=lambda v: (len(v), v)))
    value = parent.data.params.get(key)
    return None if value in (None, "None", "") else value


def _subset_text(value: str | None) -> str:
    return "?" if value is None else ("all" if value == "0" else value)


def provenance_line(prov: dict, n_text: str) -> str:
    """One line: n seeds, data copy + checksum, hardware, versions, preset/schedule, commit."""
    return (f"n = {n_text} · data: {prov['data_source'] or 'unknown'} "
            f"(checksum {prov['data_checksum'] or 'unknown'}) · "
            f"device: {prov['device_name'] or 'unknown'} · "
            f"{versions_text(prov['versions'])} · preset {prov['preset'] or 'unknown'}, "
            f"{prov['epochs'] or '?'} epochs, train subset {_subset_text(prov['subset'])}, "
            f"test subset {_subset_text(prov['test_subset'])} · git {prov['git_commit'] or 'unknown'}")


def provenance_warnings(prov: dict) -> list[str]:
    return [f"trials disagree with the parent on {key}: {', '.join(values)}"
            for key, values in sorted(prov["disagree"].items())]


# --- statistics: analysis/stats.py; how its intervals read ------------------------------------------
def interval_text(row, digits: int = 4, signed: bool = False, mark: bool = True) -> str:
    """A mean or difference with its 95 % interval: '0.7940 [0.7901, 0.7979]'; 'n < 2' beside the
    value when there is no interval; '—' for no value; the Holm mark ('*') and '(Welch)' appended."""
    key = "mean" if "mean" in row else "diff"  # a cell (mean over seeds) or a comparison (difference)
    value = row[key]
    if value is None or not math.isfinite(value):
        return MISSING
    text = fmt(value, digits, signed)
    if row.get("no_spread") is True:
        text += " (no spread)"
    elif math.isfinite(row.get("ci_low", math.nan)):
        text += f" [{fmt(row['ci_low'], digits, signed)}, {fmt(row['ci_high'], digits, signed)}]"
    elif row.get("n", 0) >= 1 and key == "diff":
        text += " (n < 2)"
    if mark and row.get("mark"):
        text += row["mark"]
    if row.get("method") == "welch":
        text += " (Welch)"
    return text


def half_width(row) -> float:
    """Half the 95 % interval's width (NaN without one): the '±' of the compact console cells."""
    lo, hi = row.get("ci_low", math.nan), row.get("ci_high", math.nan)
    return (hi - lo) / 2 if math.isfinite(lo) and math.isfinite(hi) else math.nan


def plus_minus(row, digits: int = 3, signed: bool = False) -> str:
    """Compact '0.794±0.004' (± = half-width of the 95 % t interval); the value alone when n < 2."""
    key = "mean" if "mean" in row else "diff"
    if row[key] is None or not math.isfinite(row[key]):
        return MISSING
    h = half_width(row)
    return fmt(row[key], digits, signed) + ("" if not math.isfinite(h) else "±" + fmt(h, digits))


# --- deterministic text and files -------------------------------------------------------------------
def fmt(x: float | None, digits: int = 4, signed: bool = False) -> str:
    """Fixed-point text of a number, MISSING for NaN/None."""
    if x is None or not math.isfinite(x):
        return MISSING
    text = f"{x:+.{digits}f}"
    if float(text) == 0.0:  # "+0.000", never "-0.000"
        text = "+" + text[1:]
    return text if signed else text.lstrip("+")


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def write_text(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))  # "\n" line ends on every platform
    return path


def write_csv(df, path: Path, digits: int = 6) -> Path:
    df.to_csv(path, index=False, float_format=f"%.{digits}f", lineterminator="\n")
    return path


def write_parquet(df, path: Path) -> Path:
    """Parquet without the pandas index; no timestamps are written, so the bytes depend on the data only."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)
    return path


def new_figure(**kwargs):
    """A matplotlib Figure outside pyplot: rendered by Agg on savefig, no GUI backend, no global
    figure registry (a caller's pyplot state is left alone)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """PNG without the 'Software' text chunk (matplotlib version) so equal figures are equal bytes."""
    fig.savefig(path, dpi=dpi, metadata={"Software": None})
    return path


# --- CLI ---------------------------------------------------------------------------------------------
def run_cli(prog: str, main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run an analysis CLI: bad input is one line on stderr and exit code 2, never a traceback."""
    # Fail fast on an unreachable tracking server (MLflow's default retries take minutes); a caller
    # that sets these variables keeps its own values.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    for name in ("mlflow", "alembic"):  # store-migration INFO lines would bury the one-line error
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return main(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI's contract is one line, exit code 2
        kind = "" if isinstance(e, AnalysisError) else f"{type(e).__name__}: "
        print(f"{prog}: error: {kind}{first_line(e)}", file=sys.stderr)
        return 2


def study_main(prog: str, description: str, build: Callable, format_console: Callable,
               argv: list[str] | None = None) -> int:
    """The analysis CLIs' shared arguments: which study (name or parent run id), where MLflow is,
    where the files go; `build(study=, parent_run_id=, tracking_uri=, experiment=, out_dir=,
    log_to_parent=)` makes them and `format_console` prints the result."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--study", help="study name (parent run tag iqa_ls.study)")
    who.add_argument("--run-id", help="the study's parent run id, instead of --study")
    p.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI)
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT)
    p.add_argument("--out", default=None, help="output folder (default results/<study>)")
    p.add_argument("--no-log", action="store_true", help="do not log the files to the parent run")
    args = p.parse_args(argv)
    result = build(study=args.study, parent_run_id=args.run_id, tracking_uri=args.tracking_uri,
                   experiment=args.experiment, out_dir=args.out, log_to_parent=not args.no_log)
    print(format_console(result))
    return 0


def read_study(tracking_uri: str, experiment: str, study: str | None, parent_run_id: str | None):
    """(client, parent run, trial records) of a recorded study; any failure to read it is one
    AnalysisError naming the study and the store."""
    client = open_client(tracking_uri)
    try:
        parent = find_parent(client, tracking_uri, experiment, study=study, parent_run_id=parent_run_id)
        return client, parent, child_runs(client, parent)
    except AnalysisError:
        raise
    except Exception as e:  # an unreachable server, a broken store: say which study and where
        what = f"study {study!r}" if study is not None else f"run {parent_run_id}"
        raise AnalysisError(f"cannot read {what} from {tracking_uri}: {first_line(e)}") from e
