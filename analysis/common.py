"""Shared helpers of the analysis modules: read a recorded study back from MLflow, summarise seeds,
state provenance, and write tables and figures so that the same runs give the same bytes.

The names it reads and the MLflow read helpers are analysis/schema.py's, the ones `study/tracking.py`
writes with. Analysis reads MLflow only: nothing here imports torch, Ray or the training code.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from analysis.schema import (ANALYSIS_DIR, DEFAULT_EXPERIMENT, DEFAULT_TRACKING_URI, FINISHED, PROGRESS_BAR_ENV,
                             PROVENANCE_TAGS, RUNNING, TABLE_SCHEDULE_PARAMS, TAG_DATA_CHECKSUM, TAG_DATA_SOURCE,
                             TAG_DEVICE, TAG_GIT_COMMIT, TAG_KIND, TAG_PRESET, TAG_PROTOCOL, TAG_SEEDS, TAG_STUDY,
                             TAG_VERSIONS, AnalysisError, child_runs, find_parent, one_line, open_client)

VERSION_ORDER = ("python", "torch", "torchvision", "ray", "mlflow", "kornia")
TEST_SET_LABELS = {"pristine": "Pristine",
                   **{f"{d}_{k}": f"{label} L{k}" for d, label in (("blur", "Blur"), ("noise", "Noise"),
                                                                   ("jpeg", "JPEG")) for k in (1, 2, 3)}}

MISSING = "—"  # how a gap is shown in text outputs


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


def trial_records(client, parent) -> list[TrialRecord]:
    """The parent's child runs as TrialRecords, sorted by (start time, run id)."""
    runs = child_runs(client, parent.info.experiment_id, parent.info.run_id)
    records = [TrialRecord(run_id=r.info.run_id, run_name=r.info.run_name or "", status=r.info.status,
                           start_time=r.info.start_time or 0, end_time=r.info.end_time or 0,
                           tags=dict(r.data.tags), params=dict(r.data.params),
                           metrics=dict(r.data.metrics)) for r in runs]
    return sorted(records, key=lambda t: (t.start_time, t.run_id))


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


def new_result(parent, trials: Sequence[TrialRecord], tracking_uri: str, experiment: str, out_dir,
               **fields) -> tuple[dict, Path]:
    """An analysis's result as it starts (the study, its parent run, the store, the provenance, not yet
    logged; then `fields`) and its output folder, made: `out_dir`, default results/<study>."""
    prov = provenance(parent, trials)
    out = Path(out_dir) if out_dir is not None else Path("results") / prov["study"]
    out.mkdir(parents=True, exist_ok=True)
    running = parent.info.status == RUNNING
    return {"study": prov["study"], "parent_run_id": parent.info.run_id, "tracking_uri": tracking_uri,
            "experiment": experiment, "out_dir": out, "provenance": prov, "logged": False, "running": running,
            "caveats": [RUNNING_CAVEAT] if running else [], **fields}, out


def running_line(result: dict) -> str | None:
    """The header line of a study still running (its parent run RUNNING), None otherwise."""
    if not result.get("running"):
        return None
    return (f"study {result['study']!r} is still running (parent run {result['parent_run_id']} is RUNNING, or its "
            f"command died before closing it): these tables are partial, written to {result['out_dir']} only "
            "and not logged to the parent run")


def header_lines(result: dict) -> list[str]:
    """The Markdown lines under a table's heading that say the study is still running ([] when not)."""
    line = running_line(result)
    return [f"**{line}.**", ""] if line else []


def console_caveats(result: dict, width: int) -> list[str]:
    """The console's lines under its title: the caveats of the tables (the files' words), then the
    running study's line, each wrapped to `width`."""
    lines = [f"caveat: {c}" for c in result["caveats"] if c != RUNNING_CAVEAT]
    if result.get("running"):
        lines.append(running_line(result))
    return [w for line in lines for w in textwrap.wrap(line, width)]


def log_outputs(client, parent, result: dict, paths: Iterable[Path], log_to_parent: bool) -> dict:
    """With `log_to_parent`, log exactly these files (not the whole folder, which other analyses
    share) to the parent run's ANALYSIS_DIR and mark `result["logged"]`; returns `result`. A study
    still running is never written to: a partial table in its live parent run would pass for its result."""
    if log_to_parent and not result.get("running"):
        for p in paths:
            client.log_artifact(parent.info.run_id, str(p), ANALYSIS_DIR)
        result["logged"] = True
    return result


# --- which study a command reads (issue 21) ----------------------------------------------------------
# The kind of study (parent tag iqa_ls.kind) by family: "table2", or "ablate" for every "ablate-<what>";
# the command that reads each family, and the families each command reads.
KIND_COMMANDS = {"table2": "analysis.table2", "ablate": "analysis.ablate"}
READS = {"analysis.table2": ("table2",), "analysis.ablate": ("ablate",), "analysis.cifar10c": ("table2", "ablate")}


def kind_family(kind: str | None) -> str | None:
    """"ablate" for every "ablate-<what>" kind, else the kind itself."""
    return "ablate" if kind is not None and kind.startswith("ablate") else kind


def check_kind(parent, command: str) -> None:
    """Refuse a study of a kind `command` (a key of READS) does not read, in one line naming its kind and
    the command that reads it: before anything is written, so no table of the wrong kind ever reaches the
    parent run. A parent without the tag (recorded before it existed) is read as before."""
    kind = parent.data.tags.get(TAG_KIND)
    if kind is None or kind_family(kind) in READS[command]:
        return
    study = parent.data.tags.get(TAG_STUDY, parent.info.run_name)
    other = KIND_COMMANDS.get(kind_family(kind))
    hint = f"use python -m {other} --study {shlex.quote(study)}" if other else "no analysis command reads that kind"
    raise AnalysisError(f"study {study!r} is a {kind!r} study, which {command} does not read; {hint}")


# --- what a table is (issue 20): the words its titles carry -------------------------------------------
# Every title an analysis writes (the Markdown heading, the LaTeX caption, the figure's title and its PNG
# "Title" chunk, the `caveat` column of a CSV / Parquet frame and the Parquet file's "caveat" metadata)
# carries the caveats of its numbers, in these words and no others, so `grep "not a result"` finds every
# file of a pipeline check or of a single-seed table, and a rebuild by `python -m analysis.*` says the same.
PIPELINE_CHECK_PRESETS = ("smoke",)  # search_spaces.presets: the preset that checks the pipeline, not the method
NOT_A_RESULT = "not a result"
NUM_CLASSES = 10  # CIFAR-10 (Sec. 4.1)
CHANCE = 1 / NUM_CLASSES
# A figure whose accuracies average below twice chance says "near chance" in its title (a choice of this
# module: smoke's heatmap spans 0.10-0.17, where the colour scale alone makes a row look like a winner).
NEAR_CHANCE = 2 * CHANCE
RUNNING_CAVEAT = "study still running — partial, not logged to its parent run"
CAVEAT_COLUMN = "caveat"  # the column of every written CSV / Parquet frame: its caveats ("" for none)


def seeds_text(ns: Iterable[int]) -> str:
    """'n = 1 seed', 'n = 1-3 seeds' over the cells' seed counts (cells without a run left out)."""
    ns = sorted({int(n) for n in ns if n > 0})
    if not ns:
        return "no finished run"
    n = f"{ns[0]}" if ns[0] == ns[-1] else f"{ns[0]}-{ns[-1]}"
    return f"n = {n} seed{'' if ns[-1] == 1 else 's'}"


def n_caveat(preset: str | None, ns: Iterable[int]) -> str | None:
    """The words of a table that is no result: a pipeline check (its preset), or cells of fewer than 2
    seeds (no interval: one seed cannot say how far another would land). None for a table of intervals."""
    ns = [int(n) for n in ns]
    seeds = seeds_text(ns)
    if preset in PIPELINE_CHECK_PRESETS:
        return f"pipeline check — {NOT_A_RESULT} ({preset} preset, {seeds})"
    positive = [n for n in ns if n > 0]
    if not positive:
        return f"no finished run — {NOT_A_RESULT}"
    if min(positive) < 2:
        label = "single seed" if max(positive) < 2 else "single-seed cells"
        return f"{label} — {NOT_A_RESULT} ({seeds}, no interval)"
    return None


def near_chance(accuracies: Iterable[float]) -> str | None:
    """'accuracies near chance (mean 0.131, chance 0.10)' when the finite accuracies average below
    NEAR_CHANCE, else None: the words a figure of such numbers carries in its title."""
    values = [float(a) for a in accuracies if a is not None and math.isfinite(float(a))]
    if not values or sum(values) / len(values) >= NEAR_CHANCE:
        return None
    return f"accuracies near chance (mean {sum(values) / len(values):.3f}, chance {CHANCE:.2f})"


def titled(title: str, caveats: Sequence[str], sep: str = " — ") -> str:
    """A title with its caveats after it (a figure passes sep="\n": one line each)."""
    return sep.join([title, *[c for c in caveats if c]])


def caveat_text(caveats: Sequence[str]) -> str:
    """The caveats in one cell: what the `caveat` column of a written frame holds."""
    return "; ".join(c for c in caveats if c)


def legend_line() -> str:
    """The one-line legend of the words a table uses without defining them."""
    from analysis.stats import ALPHA, CI_LEVEL

    return (f"Legend: acc_mean_all (Mean) = mean top-1 accuracy over the 10 test sets (pristine + blur, noise, "
            f"JPEG at 3 levels); * = Holm: p < {ALPHA:g} after Holm's adjustment over the comparisons of that "
            f"table; resolved = the {CI_LEVEL:.0%} interval of a difference excludes 0 (unresolved: it spans 0, "
            "whatever the sign).")


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
    """What a table must state about where its numbers come from (n, the data copy, the hardware, the
    versions): the parent's tags, the trials' schedule, and under `disagree` any provenance tag where a
    trial differs from the parent."""
    tags = parent.data.tags
    out = {"study": tags.get(TAG_STUDY, parent.info.run_name), "parent_run_id": parent.info.run_id,
           "kind": tags.get(TAG_KIND), "preset": tags.get(TAG_PRESET), "seeds": tags.get(TAG_SEEDS),
           **{k: _schedule_value(k, parent, trials) for k in TABLE_SCHEDULE_PARAMS},
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


def write_text(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))  # "\n" line ends on every platform
    return path


def with_caveat(df, caveats: Sequence[str]):
    """The frame with its caveats as the last column, CAVEAT_COLUMN ("" for none), on every row: a
    CSV has no title, and a column survives any reader."""
    return df.assign(**{CAVEAT_COLUMN: caveat_text(caveats)})


def write_csv(df, path: Path, caveats: Sequence[str], digits: int = 6) -> Path:
    with_caveat(df, caveats).to_csv(path, index=False, float_format=f"%.{digits}f", lineterminator="\n")
    return path


def write_parquet(df, path: Path, caveats: Sequence[str]) -> Path:
    """Parquet without the pandas index, with the caveat column and the same text as the file's
    "caveat" metadata; no timestamps are written, so the bytes depend on the data only."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(with_caveat(df, caveats), preserve_index=False)
    meta = {**(table.schema.metadata or {}), CAVEAT_COLUMN.encode(): caveat_text(caveats).encode("utf-8")}
    pq.write_table(table.replace_schema_metadata(meta), path)
    return path


def new_figure(**kwargs):
    """A matplotlib Figure outside pyplot: rendered by Agg on savefig, no GUI backend, no global
    figure registry (a caller's pyplot state is left alone)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def figure_title(fig) -> str:
    """The figure's title as drawn: its suptitle, else its first axes' title."""
    return fig.get_suptitle() or (fig.axes[0].get_title() if fig.axes else "")


def title_top(fig, top: float) -> float:
    """The axes' top edge for subplots_adjust, `top` lowered by one line of 10 pt text per title line
    after the first (the caveats), so a longer title never runs into the panels."""
    return top - figure_title(fig).count("\n") * 14 / 72 / fig.get_figheight()


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """PNG without the 'Software' text chunk (matplotlib version) so equal figures are equal bytes; its
    'Title' chunk is the drawn title (caveats included), so a search of the files finds them."""
    title = " — ".join(line.strip() for line in figure_title(fig).splitlines() if line.strip())
    fig.savefig(path, dpi=dpi, metadata={"Software": None, "Title": title})
    return path


# --- CLI ---------------------------------------------------------------------------------------------
def run_cli(prog: str, main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run an analysis CLI: bad input is one line on stderr and exit code 2, never a traceback."""
    # Fail fast on an unreachable tracking server (MLflow's default retries take minutes); a caller
    # that sets these variables keeps its own values.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its loggers' level on import
    for name in ("mlflow", "alembic"):  # store-migration INFO lines would bury the one-line error
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return main(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI's contract is one line, exit code 2
        print(f"{prog}: error: {one_line(e, typed=not isinstance(e, AnalysisError))}", file=sys.stderr)
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
        return client, parent, trial_records(client, parent)
    except AnalysisError:
        raise
    except Exception as e:  # an unreachable server, a broken store: say which study and where
        what = f"study {study!r}" if study is not None else f"run {parent_run_id}"
        raise AnalysisError(f"cannot read {what} from {tracking_uri}: {one_line(e)}") from e
