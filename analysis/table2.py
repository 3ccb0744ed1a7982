"""Table 2 of the paper (Sec. 4.3, "Performance comparisons") regenerated from a recorded study.

Reads the study's parent run and its child runs from MLflow (names: docs/mlflow-schema.md), puts the
mean ± sample std over seeds of the ten test-set accuracies of strategies 1-9 beside the paper's
Table 2 (analysis/paper_table2.json, the single copy of the published numbers), and compares each
IQA-LS strategy with its "Original" twin (Sec. 4.3.3) with a 95 % Welch t interval over seeds.

Launch: `python -m analysis.table2 --study NAME [--tracking-uri sqlite:///mlflow.db]
[--experiment iqa-ls] [--out results/NAME]` (or `--run-id PARENT_RUN_ID`). The study command calls
`build_table2(...)` and prints `format_console(result)`.

Only FINISHED child runs are results. A (strategy, seed) with no FINISHED run is a gap, listed with
its status and `iqa_ls.error`; a strategy without any FINISHED run shows "—" (NaN in the files). When
a (strategy, seed) has several FINISHED runs (a resumed study), the latest started one counts.

Outputs (in `out_dir`, and logged under `analysis/` of the parent run):
- `table2.md`        provenance line, ours ± std (n) / paper / Δ per strategy, the pairs, the gaps
- `table2.tex`       the same comparison as a booktabs table
- `table2.csv`, `table2.parquet`  the same LONG frame, one row per strategy × test set, columns
  strategy, regularization, train_set, test_set, mean, std, n, paper, diff (= mean − paper)
- `table2_pairs.csv` long, one row per pair × test set: original, iqa_ls, train_set, test_set, diff
  (= mean IQA-LS − mean Original), ci_low, ci_high, df, n_original, n_iqa_ls, paper_diff
- `table2_heatmap.png` (our mean accuracy) and `table2_diff_vs_paper.png` (ours − paper)
Nothing written depends on the clock, so the same runs give the same bytes.
"""
from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.common import (ACC_METRICS, DEFAULT_EXPERIMENT, DEFAULT_TRACKING_URI, MISSING,
                             TAG_ERROR, TAG_KIND, TAG_REGULARIZATION, TAG_SEED, TAG_SEEDS, TAG_STRATEGY,
                             TAG_TRAIN_SET, TEST_SET_LABELS, TEST_SETS, AnalysisError, TrialRecord, fmt,
                             log_files, mean_std_n, provenance, new_figure, provenance_line, provenance_warnings, read_study,
                             run_cli, save_figure, study_main, welch_ci, write_csv, write_parquet, write_text)

PAPER_JSON = Path(__file__).with_name("paper_table2.json")

# Table 2 rows: strategy -> (training set, regularisation), as the study tags them
# (`iqa_ls.train_set`, `iqa_ls.regularization`). The paper's row labels are kept here because analysis
# reads MLflow only; a trial whose tags disagree is reported as a note.
STRATEGY_ROWS: dict[int, tuple[str, str]] = {
    1: ("pristine", "onehot"), 2: ("mix_blur", "onehot"), 3: ("mix_blur", "iqa_ls"),
    4: ("mix_noise", "onehot"), 5: ("mix_noise", "iqa_ls"), 6: ("mix_jpeg", "onehot"),
    7: ("mix_jpeg", "iqa_ls"), 8: ("mix_all3", "onehot"), 9: ("mix_all3", "iqa_ls"),
}
# IQA-LS strategy vs its "Original" twin on the same training set (Sec. 4.3.3): (original, iqa_ls)
PAIRS: tuple[tuple[int, int], ...] = ((2, 3), (4, 5), (6, 7), (8, 9))
REGULARIZATION_LABELS = {"onehot": "Original", "iqa_ls": "IQA-LS"}  # Table 2 "Regularization Method"
TRAIN_SET_LABELS = {"pristine": "Pristine", "mix_blur": "MIX_blur", "mix_noise": "MIX_noise",
                    "mix_jpeg": "MIX_JPEG", "mix_all3": "MIX_all3"}
CI_LEVEL = 0.95

def load_paper(path: Path = PAPER_JSON) -> dict[int, dict[str, float]]:
    """The paper's Table 2: strategy -> test set -> accuracy."""
    data = json.loads(path.read_text())
    if tuple(data["columns"]) != TEST_SETS:
        raise AnalysisError(f"{path}: columns {data['columns']} are not the test sets {list(TEST_SETS)}")
    return {int(s): dict(zip(TEST_SETS, map(float, row))) for s, row in data["rows"].items()}


def row_labels(strategy: int) -> tuple[str, str]:
    train_set, reg = STRATEGY_ROWS[strategy]
    return REGULARIZATION_LABELS[reg], TRAIN_SET_LABELS[train_set]


def planned_seeds(text: str | None) -> list[int]:
    """Seeds the study planned (parent tag `iqa_ls.seeds`: a count, a JSON list or "0,1,2"); [] if unknown."""
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


def select_trials(trials: list[TrialRecord], seeds: list[int]):
    """Per strategy the FINISHED run of each seed (latest started wins), the gaps, and notes."""
    by_key: dict[tuple[int, int | None], list[TrialRecord]] = {}
    outside = 0
    for t in trials:
        s = t.tag_int(TAG_STRATEGY)
        if s not in STRATEGY_ROWS:
            outside += 1
            continue
        by_key.setdefault((s, t.tag_int(TAG_SEED)), []).append(t)

    selected: dict[int, list[TrialRecord]] = {s: [] for s in STRATEGY_ROWS}
    gaps, notes = [], []
    for (s, seed), runs in sorted(by_key.items(), key=lambda kv: (kv[0][0], _seed_key(kv[0][1]))):
        done = [t for t in runs if t.finished]
        if done:
            selected[s].append(max(done, key=lambda t: (t.start_time, t.run_id)))
            if len(done) > 1:
                notes.append(f"strategy {s}, seed {seed}: {len(done)} FINISHED runs, "
                             "the latest started counts")
        else:
            gaps += [{"strategy": s, "seed": seed, "run_name": t.run_name, "run_id": t.run_id,
                      "status": t.status, "error": t.tags.get(TAG_ERROR, "")} for t in runs]
    for s in STRATEGY_ROWS:
        for seed in seeds:
            if (s, seed) not in by_key:
                gaps.append({"strategy": s, "seed": seed, "run_name": "", "run_id": "",
                             "status": "MISSING", "error": "no run recorded"})
    for s, chosen in selected.items():
        for t in chosen:
            tagged = (t.tags.get(TAG_TRAIN_SET), t.tags.get(TAG_REGULARIZATION))
            if tagged != STRATEGY_ROWS[s]:
                notes.append(f"run {t.run_name or t.run_id} is tagged strategy {s} but trains {tagged[0]} "
                             f"with {tagged[1]}; Table 2 row {s} is {STRATEGY_ROWS[s][0]} with "
                             f"{STRATEGY_ROWS[s][1]}")
    if outside:
        notes.append(f"{outside} child run(s) outside Table 2 (strategy tag not 1-9) ignored")
    gaps.sort(key=lambda g: (g["strategy"], _seed_key(g["seed"]), g["run_name"], g["run_id"]))
    # object dtype: a missing seed tag stays None instead of turning the seeds into floats
    gaps_df = pd.DataFrame(gaps, columns=["strategy", "seed", "run_name", "run_id", "status", "error"],
                           dtype=object)
    return {s: sorted(v, key=lambda t: (_seed_key(t.tag_int(TAG_SEED)), t.run_id))
            for s, v in selected.items()}, gaps_df, notes


def _seed_key(seed: int | None) -> tuple[int, int]:
    return (1, 0) if seed is None else (0, seed)


def compute(trials: list[TrialRecord], seeds: list[int], paper: dict[int, dict[str, float]]):
    """The long cells frame, the pairs frame, the gaps frame and notes (pure: no MLflow, no files)."""
    selected, gaps, notes = select_trials(trials, seeds)
    values = {(s, ts): [t.metrics.get(m, math.nan) for t in selected[s]]
              for s in STRATEGY_ROWS for ts, m in zip(TEST_SETS, ACC_METRICS)}
    rows = []
    for s in STRATEGY_ROWS:
        reg, train = row_labels(s)
        for ts in TEST_SETS:
            mean, std, n = mean_std_n(values[s, ts])
            rows.append({"strategy": s, "regularization": reg, "train_set": train, "test_set": ts,
                         "mean": mean, "std": std, "n": n, "paper": paper[s][ts],
                         "diff": mean - paper[s][ts]})
    cells = pd.DataFrame(rows).astype({"strategy": "int64", "n": "int64"})
    pair_rows = []
    for a, b in PAIRS:
        for ts in TEST_SETS:
            w = welch_ci(values[a, ts], values[b, ts], CI_LEVEL)
            pair_rows.append({"original": a, "iqa_ls": b, "train_set": row_labels(b)[1], "test_set": ts,
                              "diff": w["diff"], "ci_low": w["ci_low"], "ci_high": w["ci_high"],
                              "df": w["df"], "n_original": w["n_a"], "n_iqa_ls": w["n_b"],
                              "paper_diff": paper[b][ts] - paper[a][ts]})
    pairs = pd.DataFrame(pair_rows).astype({"original": "int64", "iqa_ls": "int64", "n_original": "int64",
                                            "n_iqa_ls": "int64"})
    return cells, pairs, gaps, notes


def n_text(cells: pd.DataFrame, seeds: list[int]) -> str:
    """'2 seeds per strategy', or the range of finished seeds per cell when it varies."""
    ns = cells["n"]
    if ns.min() == ns.max():
        text = f"{ns.max()} seed{'s' if ns.max() != 1 else ''} per strategy"
    else:
        text = f"{ns.min()}-{ns.max()} finished seeds per cell"
    if seeds and len(seeds) != ns.max():
        text += f" ({len(seeds)} planned)"
    return text


# --- text outputs ------------------------------------------------------------------------------------
def _cell(cells: pd.DataFrame, s: int, ts: str) -> pd.Series:
    return cells.iloc[(s - 1) * len(TEST_SETS) + TEST_SETS.index(ts)]


def _ours(c: pd.Series, digits: int, sep: str = " ± ", with_n: bool = True) -> str:
    if c["n"] == 0:
        return MISSING
    if c["n"] == 1:  # one seed: the value alone, no spread to state
        return fmt(c["mean"], digits)
    return fmt(c["mean"], digits) + sep + fmt(c["std"], digits) + (f" ({c['n']})" if with_n else "")


def _pair_ci(p: pd.Series, digits: int = 4) -> str:
    if math.isnan(p["ci_low"]):
        return f"CI n/a (n={p['n_original']}/{p['n_iqa_ls']})"
    return f"[{fmt(p['ci_low'], digits, True)}, {fmt(p['ci_high'], digits, True)}]"


def format_markdown(result: dict) -> str:
    cells, pairs, gaps = result["cells"], result["pairs"], result["gaps"]
    labels = [TEST_SET_LABELS[t] for t in TEST_SETS]
    out = [f"# Table 2 — study `{result['study']}`, ours vs the paper", "",
           f"_{provenance_line(result['provenance'], result['n_text'])}_", "",
           f"Parent run `{result['parent_run_id']}` in experiment `{result['experiment']}`. Top-1 accuracy "
           "on the CIFAR-10 test sets (Sec. 4.3, Table 2). ours: mean ± sample std (n finished seeds; "
           "the value alone when n = 1); paper: Table 2 as published; Δ = ours − paper.", ""]
    notes = provenance_warnings(result["provenance"]) + result["notes"]
    out += [f"- note: {w}" for w in notes] + ([""] if notes else [])
    out += ["| Strategy | Regularization | Training set | | " + " | ".join(labels) + " |",
            "|---:|---|---|---|" + "---:|" * len(labels)]
    for s in STRATEGY_ROWS:
        reg, train = row_labels(s)
        row = [_cell(cells, s, ts) for ts in TEST_SETS]
        out.append(f"| {s} | {reg} | {train} | ours | " + " | ".join(_ours(c, 4) for c in row) + " |")
        out.append("| | | | paper | " + " | ".join(fmt(c["paper"], 3) for c in row) + " |")
        out.append("| | | | Δ | " + " | ".join(fmt(c["diff"], 4, True) for c in row) + " |")
    out += ["", "## IQA-LS − Original (Sec. 4.3.3)", "",
            f"Difference of the mean accuracy, IQA-LS strategy minus its Original twin, with a "
            f"{CI_LEVEL:.0%} Welch t interval over seeds (not available when a side has fewer than 2 "
            "finished seeds); paper: the same difference in the published Table 2.", "",
            "| Pair | Training set | | " + " | ".join(labels) + " |", "|---|---|---|" + "---:|" * len(labels)]
    for a, b in PAIRS:
        prs = pairs[(pairs["original"] == a) & (pairs["iqa_ls"] == b)]
        out.append(f"| {b} − {a} | {row_labels(b)[1]} | ours | "
                   + " | ".join(f"{fmt(p['diff'], 4, True)} {_pair_ci(p)}" for _, p in prs.iterrows()) + " |")
        out.append("| | | paper | " + " | ".join(fmt(p["paper_diff"], 3, True) for _, p in prs.iterrows())
                   + " |")
    out += ["", "## Gaps", ""]
    if gaps.empty:
        out.append("None: every planned (strategy, seed) has a FINISHED run.")
    for _, g in gaps.iterrows():
        name = f" `{g['run_name']}`" if g["run_name"] else ""
        out.append(f"- strategy {g['strategy']}, seed {g['seed']}:{name} {g['status']} — "
                   f"{g['error'] or 'no error tag'}")
    out += ["", "## Files", "",
            "- `table2.csv`, `table2.parquet`: the same long frame, one row per strategy × test set "
            "(strategy, regularization, train_set, test_set, mean, std, n, paper, diff = mean − paper).",
            "- `table2_pairs.csv`: one row per pair × test set (original, iqa_ls, train_set, test_set, "
            "diff = IQA-LS − Original, ci_low, ci_high, df, n_original, n_iqa_ls, paper_diff).",
            "- `table2.tex`, `table2_heatmap.png`, `table2_diff_vs_paper.png`: the same numbers.", ""]
    return "\n".join(out)


def _tex_escape(text: str) -> str:
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(repl.get(ch, ch) for ch in text)


def _tex_train(train: str) -> str:
    return train.replace("MIX_", r"MIX$_{") + "}$" if train.startswith("MIX_") else train


def _tex_num(x: float, digits: int, signed: bool = False) -> str:
    return "--" if not math.isfinite(x) else f"${fmt(x, digits, signed)}$"


def format_tex(result: dict) -> str:
    cells = result["cells"]
    prov = _tex_escape(provenance_line(result["provenance"], result["n_text"]).replace("·", ";"))
    out = [f"% Table 2 regenerated from MLflow study {_tex_escape(result['study'])} "
           f"(parent run {result['parent_run_id']}); requires booktabs.",
           r"\begin{table*}[t]", r"\centering", r"\small",
           r"\begin{tabular}{rlll" + "r" * len(TEST_SETS) + "}",
           r"\toprule",
           r" & & & & & \multicolumn{3}{c}{Blur} & \multicolumn{3}{c}{Noise} & \multicolumn{3}{c}{JPEG} \\",
           r"\cmidrule(lr){6-8} \cmidrule(lr){9-11} \cmidrule(lr){12-14}",
           r"Strategy & Regularization & Training set & & Pristine & "
           + " & ".join(["L1 & L2 & L3"] * 3) + r" \\",
           r"\midrule"]
    for s in STRATEGY_ROWS:
        reg, train = row_labels(s)
        row = [_cell(cells, s, ts) for ts in TEST_SETS]
        ours = ["--" if c["n"] == 0 else "$" + _ours(c, 3, sep=r" \pm ", with_n=False) + "$" for c in row]
        out.append(f"{s} & {reg} & {_tex_train(train)} & ours & " + " & ".join(ours) + r" \\")
        out.append(r" & & & paper & " + " & ".join(_tex_num(c["paper"], 3) for c in row) + r" \\")
        out.append(r" & & & $\Delta$ & " + " & ".join(_tex_num(c["diff"], 3, True) for c in row) + r" \\")
        out.append(r"\midrule" if s != max(STRATEGY_ROWS) else r"\bottomrule")
    out += [r"\end{tabular}",
            r"\caption{Top-1 accuracy of strategies 1--9 (Table 2): ours (mean $\pm$ sample std over seeds), "
            r"the paper's value, and $\Delta$ = ours $-$ paper. " + prov + "}",
            r"\label{tab:table2-" + _tex_escape(result["study"]).replace("\\", "") + "}", r"\end{table*}", ""]
    return "\n".join(out)


def format_console(result: dict) -> str:
    """Compact Table 2 (ours / paper / Δ per strategy, ≤ 160 columns), the pairs, the files written."""
    cells, pairs, gaps = result["cells"], result["pairs"], result["gaps"]
    w, lw = 12, 21  # cell width; width of "9 Original MIX_noise "
    head = " " * (lw + 10) + "".join(f"{TEST_SET_LABELS[t]:>{w}}" for t in TEST_SETS)
    lines = [f"Table 2, study {result['study']} (parent run {result['parent_run_id']})",
             textwrap.fill(provenance_line(result["provenance"], result["n_text"]), 156), head]
    for s in STRATEGY_ROWS:
        reg, train = row_labels(s)
        row = [_cell(cells, s, ts) for ts in TEST_SETS]
        ns = sorted({int(c["n"]) for c in row})
        n = f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}-{ns[-1]}"
        lines.append(f"{f'{s} {reg} {train}':<{lw}}{'ours ' + n:<10}"
                     + "".join(f"{_ours(c, 3, sep='±', with_n=False):>{w}}" for c in row))
        lines.append(f"{'':<{lw}}{'paper':<10}" + "".join(f"{fmt(c['paper'], 3):>{w}}" for c in row))
        lines.append(f"{'':<{lw}}{'Δ':<10}" + "".join(f"{fmt(c['diff'], 3, True):>{w}}" for c in row))
    lines += ["", f"IQA-LS − Original (Sec. 4.3.3): Δ of means, ± half-width of the {CI_LEVEL:.0%} Welch "
              "interval over seeds (n/a below 2 seeds a side), and the paper's Δ", head]
    for a, b in PAIRS:
        prs = [p for _, p in pairs[(pairs["original"] == a) & (pairs["iqa_ls"] == b)].iterrows()]
        half = ["n/a" if math.isnan(p["ci_low"]) else "±" + fmt((p["ci_high"] - p["ci_low"]) / 2, 3)
                for p in prs]
        lines.append(f"{f'{b} − {a} {row_labels(b)[1]}':<{lw}}{'ours Δ':<10}"
                     + "".join(f"{fmt(p['diff'], 3, True):>{w}}" for p in prs))
        lines.append(f"{'':<{lw}}{'95% CI':<10}" + "".join(f"{h:>{w}}" for h in half))
        lines.append(f"{'':<{lw}}{'paper Δ':<10}"
                     + "".join(f"{fmt(p['paper_diff'], 3, True):>{w}}" for p in prs))
    if not gaps.empty:
        lines += ["", f"Gaps ({len(gaps)}):"]
        lines += [f"  strategy {g['strategy']} seed {g['seed']} {g['run_name'] or '(no run)'}: "
                  f"{g['status']} — "
                  f"{g['error'] or 'no error tag'}" for _, g in gaps.iterrows()]
    notes = provenance_warnings(result["provenance"]) + result["notes"]
    lines += [f"note: {n}" for n in notes]
    logged = " (also logged to the parent run under analysis/)" if result["logged"] else ""
    lines += ["", f"Files{logged}:"]
    lines += [f"  {p}" for p in result["files"].values()]
    return "\n".join(lines)


# --- figures -----------------------------------------------------------------------------------------
def _matrix(cells: pd.DataFrame, column: str) -> np.ndarray:
    return cells[column].to_numpy(dtype=np.float64).reshape(len(STRATEGY_ROWS), len(TEST_SETS))


def _heatmap(result: dict, values: np.ndarray, title: str, cmap: str, signed: bool, path: Path) -> Path:
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    if signed:  # diverging, centred at 0
        lim = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 0.0
        norm = Normalize(-(lim or 0.01), lim or 0.01)
    else:
        finite = values[np.isfinite(values)]
        norm = Normalize(float(finite.min()), float(finite.max())) if finite.size else Normalize(0, 1)
    cm = colormaps[cmap].with_extremes(bad="#d9d9d9")  # gaps in grey
    fig = new_figure(figsize=(13, 6.5))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cm, norm=norm, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        text = MISSING if not math.isfinite(v) else fmt(v, 3, signed)
        dark = math.isfinite(v) and (abs(norm(v) - 0.5) > 0.3 if signed else norm(v) < 0.5)
        ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black")
    ax.set_xticks(range(len(TEST_SETS)), [TEST_SET_LABELS[t] for t in TEST_SETS])
    ax.set_yticks(range(len(STRATEGY_ROWS)), [f"{s} {' '.join(row_labels(s))}" for s in STRATEGY_ROWS])
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.text(0.01, 0.01, textwrap.fill(provenance_line(result["provenance"], result["n_text"]), 170),
             fontsize=7, va="bottom")
    fig.subplots_adjust(left=0.17, right=0.97, top=0.92, bottom=0.15)
    return save_figure(fig, path)


# --- the pipeline --------------------------------------------------------------------------------------
def build_table2(study: str | None = None, parent_run_id: str | None = None,
                 tracking_uri: str = DEFAULT_TRACKING_URI, experiment: str = DEFAULT_EXPERIMENT,
                 out_dir: str | Path | None = None, log_to_parent: bool = True) -> dict:
    """Read the study, write the Table 2 files to `out_dir` (default results/<study>) and, with
    `log_to_parent`, log them to the parent run under `analysis/`. Returns the frames and file paths."""
    client, parent, trials = read_study(tracking_uri, experiment, study, parent_run_id)
    seeds = planned_seeds(parent.data.tags.get(TAG_SEEDS))
    cells, pairs, gaps, notes = compute(trials, seeds, load_paper())
    kind = parent.data.tags.get(TAG_KIND)
    if kind not in (None, "table2"):
        notes.append(f"the parent run is a {kind!r} study, not 'table2'")
    prov = provenance(parent, trials)
    study = prov["study"]
    out = Path(out_dir) if out_dir is not None else Path("results") / study
    out.mkdir(parents=True, exist_ok=True)
    result = {"study": study, "parent_run_id": parent.info.run_id, "tracking_uri": tracking_uri,
              "experiment": experiment, "out_dir": out, "cells": cells, "pairs": pairs, "gaps": gaps,
              "notes": notes, "provenance": prov, "n_text": n_text(cells, seeds), "logged": False}

    files = {
        "table2.md": write_text(out / "table2.md", format_markdown(result)),
        "table2.csv": write_csv(cells, out / "table2.csv"),
        "table2.tex": write_text(out / "table2.tex", format_tex(result)),
        "table2.parquet": write_parquet(cells, out / "table2.parquet"),
        "table2_pairs.csv": write_csv(pairs, out / "table2_pairs.csv"),
        "table2_heatmap.png": _heatmap(result, _matrix(cells, "mean"),
                                       f"Table 2, ours: top-1 accuracy (mean, {result['n_text']})",
                                       "viridis", False, out / "table2_heatmap.png"),
        "table2_diff_vs_paper.png": _heatmap(result, _matrix(cells, "diff"),
                                             f"Table 2: ours − paper (mean, {result['n_text']}); "
                                             "blue = ours higher", "RdBu", True,
                                             out / "table2_diff_vs_paper.png"),
    }
    result["files"] = files
    if log_to_parent:
        log_files(client, parent.info.run_id, files.values())
        result["logged"] = True
    return result


def main(argv: list[str] | None = None) -> int:
    return study_main("python -m analysis.table2", __doc__.split("\n\n")[0], build_table2, format_console, argv)


if __name__ == "__main__":
    raise SystemExit(run_cli("table2", main))
