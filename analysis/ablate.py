"""The ablations of `study.ablate` (T map, IQA measure, mixture ratios, levels, Optuna search) rebuilt
from a recorded study: one table and one plot per ablation, from MLflow alone.

Reads the study's parent run and its child runs (names: docs/mlflow-schema.md). Child runs carry
`iqa_ls.ablation` (tmap | iqa | ratios | levels | search), `iqa_ls.setting` (the row label),
`iqa_ls.setting_order` (the row order of the grid; the Optuna trial number for search) and
`iqa_ls.ablated` (JSON: the ablated variable(s) per plot panel). Per setting, the table gives the mean
± sample std over seeds (and n) of the 10 test accuracies (Sec. 4.2), their mean, the worst of the
10 (per run, then averaged) and the last epoch's mean true-class target T.

Only FINISHED runs count, and for the search also the trials ASHA stopped early (status KILLED with
tag `iqa_ls.stopped_early` = the epoch reached; their accuracies are those of that epoch, marked in
the table). A (setting, seed) without such a run is a gap, listed with its status and error; when a
(setting, seed) has several, the latest started counts.

Launch: `python -m analysis.ablate --study NAME [--tracking-uri sqlite:///mlflow.db]
[--experiment iqa-ls] [--out results/NAME] [--no-log]` (or `--run-id PARENT_RUN_ID`); the study
command calls `build_ablate(...)` and prints `format_console(result)`.

Outputs per ablation A present in the study (in `out_dir`, and logged under `analysis/` of the parent):
- `ablate_A.md`, `ablate_A.tex`: the table (provenance line, settings x metrics, gaps)
- `ablate_A.csv`, `ablate_A.parquet`: the same LONG frame, one row per setting x metric; columns
  ablation, order, setting, metric, mean, std, n
- `ablate_A_groups.png`: accuracy vs the ablated variable per test group (pristine, blur, noise, JPEG;
  a group = the mean over its 3 levels, per run, then mean ± std over seeds)
- tmap: `ablate_tmap_curves.png`, every setting's T drawn over the histogram of the training scores
  per distortion level (artifact `scores_hist.json` of the runs: epoch 1's scores as T saw them)
- search: `ablate_search_trials.csv` (per Optuna trial: number, key, status, epochs, objective, params),
  `ablate_search_importance.csv` + `.png` (fANOVA importances over the trials' params, seed 0),
  `ablate_search_history.png` (objective per trial and the best so far)
Nothing written depends on the clock, so the same runs give the same bytes. Titles and the `caveat`
column say what the numbers are, per ablation, and a running or other-kind study is handled, as in
analysis.table2.
"""
from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import calibration as cal
from analysis import stats
from analysis.common import (MISSING, NUM_CLASSES, TEST_SET_LABELS, TrialRecord, check_kind, console_caveats,
                             download_json, fmt, header_lines, interval_text, legend_line, log_outputs, n_caveat,
                             near_chance, new_figure, new_result, plus_minus, provenance_line, provenance_warnings,
                             read_study, run_cli, save_figure, study_main, title_top, titled, write_csv, write_parquet,
                             write_text)
from analysis.schema import (ACC_METRICS, DEFAULT_EXPERIMENT, DEFAULT_TRACKING_URI, TAG_ABLATED, TAG_ABLATION,
                             TAG_ERROR, TAG_KIND, TAG_MATCHED, TAG_MATCHED_TO, TAG_ORDER, TAG_PRESET,
                             TAG_REGULARIZATION, TAG_SEARCH, TAG_SEED, TAG_SEEDS, TAG_SETTING, TAG_STOPPED, TAG_STUDY,
                             TEST_SETS, AnalysisError, one_line, planned_seeds)
from trainables.metric_names import VAL_PREFIX

ABLATIONS = ("tmap", "iqa", "ratios", "levels", "search")  # table order
DESCRIPTIONS = {
    "tmap": "IQA-LS with each T map (Sec. 3 fixes T = identity); onehot = the paper's Original.",
    "iqa": "IQA-LS (T = identity) with each IQA measure (Sec. 3 fixes SSIM), a level oracle (each image "
           "scored by the mean SSIM of its type and level) and uniform label smoothing whose q(y) equals "
           "IQA-LS's mean T in epoch 1.",
    "ratios": "IQA-LS with other mixture proportions (Sec. 4.2 fixes 60 % pristine, levels 15:15:10).",
    "levels": "IQA-LS trained on single distortion levels vs all three (Sec. 4.2).",
    "search": "Optuna (TPE) + ASHA over the T family and parameters and the pristine share.",
}
SCORES_HIST = "scores_hist.json"

METRICS = ACC_METRICS + ("acc_mean_all", "acc_worst", "mean_t")
# the calibration companion (trainables.calibration): ECE and NLL on pristine, over the 9 distorted
# sets and over all 10, then Brier, mean confidence and mean p(true class) over all 10
CAL_METRICS = ("ece_pristine", "ece_mean_distorted", "ece_mean_all", "nll_pristine", "nll_mean_distorted",
               "nll_mean_all", "brier_mean_all", "conf_mean_all", "ptrue_mean_all")
VAL = VAL_PREFIX  # a search selects on the validation sets: its table shows val_<metric>
METRIC_LABELS = {**{f"acc_{t}": TEST_SET_LABELS[t] for t in TEST_SETS}, "acc_mean_all": "Mean",
                 "acc_worst": "Worst", "mean_t": "mean T",
                 "ece_pristine": "ECE pristine", "ece_mean_distorted": "ECE dist.", "ece_mean_all": "ECE all",
                 "nll_pristine": "NLL pristine", "nll_mean_distorted": "NLL dist.", "nll_mean_all": "NLL all",
                 "brier_mean_all": "Brier all", "conf_mean_all": "conf all", "ptrue_mean_all": "p(y) all"}
GROUPS = {"Pristine": ("acc_pristine",),
          **{label: tuple(f"acc_{d}_{k}" for k in (1, 2, 3))
             for d, label in (("blur", "Blur"), ("noise", "Noise"), ("jpeg", "JPEG"))}}
GROUP_COLORS = {"Pristine": "black", "Blur": "tab:blue", "Noise": "tab:orange", "JPEG": "tab:green"}


# --- selecting runs --------------------------------------------------------------------------------
def run_values(t: TrialRecord, prefix: str = "") -> dict[str, float]:
    """A run's table values under the table's names: the 10 accuracies, their mean, the worst of them,
    the last mean T and the calibration metrics; `prefix` "val_" reads the validation sets instead."""
    v = {m: t.metrics.get(prefix + m, math.nan) for m in ACC_METRICS + ("acc_mean_all",) + CAL_METRICS}
    v["mean_t"] = t.metrics.get("mean_t", math.nan)
    accs = [v[m] for m in ACC_METRICS]
    v["acc_worst"] = min(accs) if all(math.isfinite(a) for a in accs) else math.nan
    return v


def counted(t: TrialRecord, ablation: str) -> bool:
    """A result: FINISHED, or (search) stopped early by ASHA."""
    return t.finished or (ablation == "search" and t.status == "KILLED" and TAG_STOPPED in t.tags)


def _order(t: TrialRecord) -> int:
    o = t.tag_int(TAG_ORDER)
    return o if o is not None else 10**9


def select(trials: list[TrialRecord], ablation: str, seeds: list[int]):
    """Settings (order, label, ablated), the counted run per (setting, seed), the gaps and notes."""
    mine = [t for t in trials if t.tags.get(TAG_ABLATION) == ablation]
    settings: dict[int, tuple[str, dict]] = {}
    by_key: dict[tuple[int, int | None], list[TrialRecord]] = {}
    for t in mine:
        o = _order(t)
        try:
            ablated = json.loads(t.tags.get(TAG_ABLATED, "{}"))
        except json.JSONDecodeError:
            ablated = {}
        settings.setdefault(o, (t.tags.get(TAG_SETTING, t.run_name), ablated))
        by_key.setdefault((o, t.tag_int(TAG_SEED)), []).append(t)
    chosen: dict[int, list[TrialRecord]] = {o: [] for o in settings}
    gaps, notes = [], []
    for (o, seed), runs in sorted(by_key.items(), key=lambda kv: (kv[0][0], _seed_key(kv[0][1]))):
        ok = [t for t in runs if counted(t, ablation)]
        if ok:
            chosen[o].append(max(ok, key=lambda t: (t.start_time, t.run_id)))
            if len(ok) > 1:
                notes.append(f"{settings[o][0]}, seed {seed}: {len(ok)} counted runs, the latest started counts")
        else:
            gaps += [{"setting": settings[o][0], "seed": seed, "run_name": t.run_name, "status": t.status,
                      "error": t.tags.get(TAG_ERROR, "")} for t in runs]
    if ablation != "search":
        for o in settings:
            for seed in seeds:
                if (o, seed) not in by_key:
                    gaps.append({"setting": settings[o][0], "seed": seed, "run_name": "", "status": "MISSING",
                                 "error": "no run recorded"})
    gaps.sort(key=lambda g: (g["setting"], _seed_key(g["seed"]), g["run_name"]))
    chosen = {o: sorted(v, key=lambda t: (_seed_key(t.tag_int(TAG_SEED)), t.run_id)) for o, v in chosen.items()}
    return dict(sorted(settings.items())), chosen, gaps, notes


def _seed_key(seed: int | None) -> tuple[int, int]:
    return (1, 0) if seed is None else (0, seed)


def _label(ablation: str, label: str, runs: list[TrialRecord]) -> str:
    stopped = [t.tags[TAG_STOPPED] for t in runs if TAG_STOPPED in t.tags and not t.finished]
    return label + (f" [stopped at epoch {stopped[0]}]" if ablation == "search" and stopped else "")


def compute(trials: list[TrialRecord], ablation: str, seeds: list[int]) -> dict:
    """The long cells frame (mean over seeds with its t interval per setting x metric), the group
    values per setting, gaps and notes (pure: no MLflow, no files). A search's cells are its
    validation metrics (what it selected on)."""
    settings, chosen, gaps, notes = select(trials, ablation, seeds)
    prefix = VAL if ablation == "search" else ""
    rows, groups = [], []
    for o, (label, ablated) in settings.items():
        vals = [run_values(t, prefix) for t in chosen[o]]
        shown = _label(ablation, label, chosen[o])
        for m in METRICS + CAL_METRICS:
            rows.append({"ablation": ablation, "order": o, "setting": shown, "metric": m,
                         **stats.mean_ci([v[m] for v in vals])})
        for g, ms in GROUPS.items():
            per_run = [float(np.mean([v[m] for m in ms])) for v in vals]
            groups.append({"order": o, "setting": shown, "ablated": ablated, "group": g, **stats.mean_ci(per_run)})
    cols = ["ablation", "order", "setting", "metric", "mean", "ci_low", "ci_high", "std", "n"]
    cells = pd.DataFrame(rows, columns=cols).astype({"order": "int64", "n": "int64"})
    gaps_df = pd.DataFrame(gaps, columns=["setting", "seed", "run_name", "status", "error"], dtype=object)
    return {"ablation": ablation, "cells": cells, "groups": groups, "gaps": gaps_df, "notes": notes,
            "settings": settings, "chosen": chosen, "prefix": prefix}


PAIRED_METRICS = ACC_METRICS + ("acc_mean_all", "acc_worst")
# the two tables of paired differences; Holm runs over each table's comparisons
PAIRED_FAMILIES = {"accuracy": PAIRED_METRICS, "calibration": CAL_METRICS}


def paired_differences(a: dict) -> tuple[str | None, pd.DataFrame]:
    """(the one-hot setting's label, each other setting minus it, paired by seed over the seeds both
    finished: mean difference, 95 % t interval, n, paired p; Holm-adjusted within the accuracy table
    and within the calibration table). Settings of one seed share its subset, mixture draws and
    initial weights, so the per-seed difference removes what the seeds do alike (analysis/stats.py).
    (None, empty) unless exactly one setting is one-hot."""
    cols = ["family", "order", "setting", "metric", "diff", "ci_low", "ci_high", "p", "p_holm", "mark", "method",
            "df", "n", "no_spread"]
    refs = [o for o, runs in a["chosen"].items()
            if runs and all(t.tags.get(TAG_REGULARIZATION) == "onehot" for t in runs)]
    if len(refs) != 1:
        return None, pd.DataFrame([], columns=cols)
    ref = refs[0]
    prefix = a.get("prefix", "")
    base = {t.tag_int(TAG_SEED): run_values(t, prefix) for t in a["chosen"][ref]}
    rows = []
    for family, metrics in PAIRED_FAMILIES.items():
        fam_rows = []
        for o, runs in a["chosen"].items():
            if o == ref:
                continue
            vals = {t.tag_int(TAG_SEED): run_values(t, prefix) for t in runs}
            for m in metrics:
                c = stats.compare({k: v[m] for k, v in base.items()}, {k: v[m] for k, v in vals.items()})
                fam_rows.append({"family": family, "order": o, "setting": a["settings"][o][0], "metric": m,
                                 **{k: c[k] for k in ("diff", "ci_low", "ci_high", "p", "method", "df", "n")},
                                 "no_spread": bool(c.get("no_spread", False))})
        rows += stats.with_holm(fam_rows)
    return a["settings"][ref][0], pd.DataFrame(rows, columns=cols).astype({"order": "int64", "n": "int64"})


def chosen_setting(a: dict) -> dict | None:
    """The search's choice: the counted trial with the best objective (a validation metric), and its
    test accuracies (its last epoch's; a trial stopped early has none: it never reached the test)."""
    best = None
    for o, runs in a["chosen"].items():
        for t in runs:
            obj = t.metrics.get("objective", math.nan)
            if math.isfinite(obj) and (best is None or obj > best[0]):
                best = (obj, o, t)
    if best is None:
        return None
    obj, o, t = best
    test = run_values(t)
    return {"order": o, "setting": a["settings"][o][0], "run_name": t.run_name, "objective": obj,
            "finished": t.finished, "test": {m: test[m] for m in PAIRED_METRICS}}


def n_text(cells: pd.DataFrame, seeds: list[int], ablation: str) -> str:
    ns = cells.loc[cells["metric"] == "acc_pristine", "n"]
    if ns.empty:
        return "no runs"
    if ablation == "search":
        return f"{int(ns.sum())} Optuna trials, 1 run (seed 0) each"
    text = (f"{ns.max()} seed{'s' if ns.max() != 1 else ''} per setting" if ns.min() == ns.max()
            else f"{ns.min()}-{ns.max()} finished seeds per setting")
    if seeds and len(seeds) != ns.max():
        text += f" ({len(seeds)} planned)"
    return text


# --- the search: trials, importances ----------------------------------------------------------------
def search_trials(res: dict) -> pd.DataFrame:
    rows = []
    for o, (label, ablated) in res["settings"].items():
        runs = res["chosen"][o]
        t = runs[0] if runs else None
        status = "—" if t is None else ("finished" if t.finished else f"stopped early at epoch {t.tags[TAG_STOPPED]}")
        rows.append({"number": o, "key": t.run_name if t else "", "setting": label, "status": status,
                     "epochs": int(t.tags.get(TAG_STOPPED) or t.params.get("epochs", 0)) if t else 0,
                     "objective": t.metrics.get("objective", math.nan) if t else math.nan,
                     "params": json.dumps(ablated, sort_keys=True)})
    return pd.DataFrame(rows, columns=["number", "key", "setting", "status", "epochs", "objective", "params"])


def importances(trials_df: pd.DataFrame, search_tag: str | None) -> tuple[pd.DataFrame, str]:
    """fANOVA importances (optuna, seed 0) over the trials' params and objective; ('', reason) if none."""
    empty = pd.DataFrame(columns=["param", "importance"])
    try:
        spec = json.loads(search_tag) if search_tag else None
    except json.JSONDecodeError:
        spec = None
    if not spec or "space" not in spec:
        return empty, f"the parent run has no search space (tag {TAG_SEARCH})"
    done = trials_df[np.isfinite(trials_df["objective"].to_numpy(dtype=float))]
    if len(done) < 2:
        return empty, f"{len(done)} trial(s) with an objective; importances need at least 2"
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def dist(d):
        if d["kind"] == "categorical":
            return CategoricalDistribution(d["choices"])
        return FloatDistribution(d["low"], d["high"], log=d.get("log", False), step=d.get("step"))

    study = optuna.create_study(direction="maximize")
    try:
        for _, r in done.iterrows():
            params = json.loads(r["params"])
            study.add_trial(optuna.trial.create_trial(
                params=params, distributions={k: dist(spec["space"][k]) for k in params}, value=float(r["objective"])))
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except Exception as e:  # noqa: BLE001 - e.g. scikit-learn missing, or a degenerate set of trials
        return empty, f"importances not available: {one_line(e)}"
    df = pd.DataFrame([{"param": k, "importance": float(v)} for k, v in imp.items()],
                      columns=["param", "importance"])
    return df.sort_values(["importance", "param"], ascending=[False, True], ignore_index=True), ""


# --- the matched uniform control ----------------------------------------------------------------------
def matched_check(client, res: dict) -> list[dict]:
    """Per uniform-control run: the mean T it was matched to (tag), its own recorded mean T, and the
    epoch-1 mean T the IQA-LS reference run (same ablation, seed and matched fields) recorded."""
    runs = [t for ts in res["chosen"].values() for t in ts]
    out = []
    for t in runs:
        if TAG_MATCHED not in t.tags:
            continue
        try:
            match = json.loads(t.tags.get(TAG_MATCHED_TO, "{}"))
        except json.JSONDecodeError:
            match = {}
        want = {k: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v) for k, v in match.items()}
        refs = [r for r in runs if r is not t and r.tags.get(TAG_SEED) == t.tags.get(TAG_SEED)
                and all(r.params.get(k) == v for k, v in want.items())]
        ref_t = math.nan
        if refs:
            hist = client.get_metric_history(refs[0].run_id, "mean_t")
            ref_t = next((m.value for m in sorted(hist, key=lambda m: m.step) if m.step == 1), math.nan)
        own = client.get_metric_history(t.run_id, "mean_t")
        own_t = next((m.value for m in sorted(own, key=lambda m: m.step) if m.step == 1), math.nan)
        out.append({"seed": t.tags.get(TAG_SEED), "eps": t.params.get("ls_epsilon", "?"),
                    "matched_mean_t": float(t.tags[TAG_MATCHED]), "uniform_mean_t": own_t,
                    "iqa_ls_mean_t_epoch1": ref_t})
    return out


# --- text outputs ------------------------------------------------------------------------------------
def _cell(cells: pd.DataFrame, order: int, metric: str) -> pd.Series:
    return cells[(cells["order"] == order) & (cells["metric"] == metric)].iloc[0]


def _ours(c: pd.Series, digits: int) -> str:
    return MISSING if c["n"] == 0 else interval_text(c, digits)


def _orders(cells: pd.DataFrame) -> list[tuple[int, str]]:
    first = cells.drop_duplicates("order")
    return list(zip(first["order"].tolist(), first["setting"].tolist()))


def _value_table(cells: pd.DataFrame, metrics: tuple[str, ...], digits: int) -> list[str]:
    out = ["| Setting | n | " + " | ".join(METRIC_LABELS[m] for m in metrics) + " |",
           "|---|---:|" + "---:|" * len(metrics)]
    for o, label in _orders(cells):
        row = [_cell(cells, o, m) for m in metrics]
        out.append(f"| {label} | {row[0]['n']} | " + " | ".join(_ours(c, digits) for c in row) + " |")
    return out


def paired_summary(diffs: pd.DataFrame) -> str:
    return stats.tally_text(diffs.to_dict("records"))


def _paired_table(diffs: pd.DataFrame, metrics: tuple[str, ...], digits: int) -> list[str]:
    out = ["| Setting | n | " + " | ".join(METRIC_LABELS[m] for m in metrics) + " |",
           "|---|---:|" + "---:|" * len(metrics)]
    for o, label in _orders(diffs):
        row = [_cell(diffs, o, m) for m in metrics]
        n = "/".join(map(str, sorted({int(c["n"]) for c in row})))
        out.append(f"| {label} | {n} | " + " | ".join(interval_text(c, digits, signed=True) for c in row) + " |")
    return out


def format_markdown(result: dict, a: dict) -> str:
    cells, gaps = a["cells"], a["gaps"]
    search = a["ablation"] == "search"
    where = ("validation sets (a held-out split of the training pool, what the search selects on)" if search
             else "test sets")
    out = [titled(f"# Ablation `{a['ablation']}` — study `{result['study']}`", a["caveats"]), "",
           f"_{provenance_line(result['provenance'], a['n_text'])}_", "", *header_lines(result),
           f"{DESCRIPTIONS[a['ablation']]} Parent run `{result['parent_run_id']}` in experiment "
           f"`{result['experiment']}`. Top-1 accuracy on the 10 CIFAR-10 {where} of Sec. 4.2: mean over seeds "
           f"with the {stats.CI_LEVEL:.0%} t interval of the mean in brackets (the value alone when n = 1); "
           "Mean = mean of the 10; Worst = the lowest of the 10 (per run); mean T = the last epoch's mean "
           "true-class target.", "", legend_line(), ""]
    notes = provenance_warnings(result["provenance"]) + a["notes"]
    out += [f"- note: {w}" for w in notes] + ([""] if notes else [])
    out += _value_table(cells, METRICS, 4)
    out += ["", "## Calibration", "",
            f"On the same {where}: expected calibration error (15 equal-width bins, top-label), negative "
            "log-likelihood (nats), Brier score, mean top-1 confidence and mean probability of the true class; "
            "'dist.' = mean over the 9 distorted sets, 'all' = over all 10. Lower ECE / NLL / Brier is better.", ""]
    out += _value_table(cells, CAL_METRICS, 4)
    ref, diffs = a.get("paired", (None, None))
    if ref is not None and not diffs.empty:
        for family, metrics in PAIRED_FAMILIES.items():
            d = diffs[diffs["family"] == family]
            out += ["", f"## Difference to {ref}, paired by seed ({family})", "",
                    f"Each setting minus {ref} of the same seed (same subset, mixture draws and initial weights), "
                    f"over the seeds both finished (n): mean difference with its {stats.CI_LEVEL:.0%} t interval; "
                    f"* = Holm-adjusted p < {stats.ALPHA:g} over the {len(d)} comparisons of this table. An "
                    "interval that spans 0 is unresolved, whatever its sign; '(n < 2)': no interval.", "",
                    f"Summary: {paired_summary(d)}.", ""]
            out += _paired_table(d, metrics, 4)
    if a.get("matched"):
        out += ["", "## The matched uniform control", "",
                "eps was set in the driver so that q(y) = 1 − eps + eps/K equals the IQA-LS reference's "
                "mean T in epoch 1 (same data, mixture draw and scores); both runs record mean_t each epoch.",
                "", "| Seed | eps | matched mean T | uniform run's mean T | IQA-LS run's mean T (epoch 1) |",
                "|---:|---:|---:|---:|---:|"]
        out += [f"| {m['seed']} | {m['eps']} | {fmt(m['matched_mean_t'], 6)} | {fmt(m['uniform_mean_t'], 6)} | "
                f"{fmt(m['iqa_ls_mean_t_epoch1'], 6)} |" for m in a["matched"]]
    if search:
        st = a["search_trials"]
        out += ["", "## Optuna trials", "", f"Objective: {a['objective_text']} (validation sets).", "",
                "| # | Key | Setting | Status | Epochs | Objective |", "|---:|---|---|---|---:|---:|"]
        out += [f"| {r['number']} | {r['key']} | {r['setting']} | {r['status']} | {r['epochs']} | "
                f"{fmt(r['objective'], 4)} |" for _, r in st.iterrows()]
        out += ["", "## The chosen setting on the test sets", ""]
        ch = a.get("chosen_setting")
        if ch is None:
            out.append("No trial has an objective: nothing was chosen.")
        else:
            out += [f"Chosen on the validation sets: `{ch['run_name']}` ({ch['setting']}), objective "
                    f"{fmt(ch['objective'], 4)}. Its test accuracies (reported only; never selected on; one run, "
                    "seed 0, so no interval):", "",
                    "| " + " | ".join(METRIC_LABELS[m] for m in PAIRED_METRICS) + " |",
                    "|" + "---:|" * len(PAIRED_METRICS),
                    "| " + " | ".join(fmt(ch["test"][m], 4) for m in PAIRED_METRICS) + " |"]
            if not ch["finished"]:
                out.append("\n(The chosen trial did not finish, so it has no test accuracies.)")
        out += ["", "## Parameter importances (fANOVA, seed 0)", ""]
        if a["importance"].empty:
            out.append(f"Not available: {a['importance_note']}.")
        else:
            out += ["| Parameter | Importance |", "|---|---:|"]
            out += [f"| {r['param']} | {fmt(r['importance'], 3)} |" for _, r in a["importance"].iterrows()]
    out += ["", "## Gaps", ""]
    if gaps.empty:
        out.append("None: every recorded setting has a counted run for every planned seed.")
    for _, g in gaps.iterrows():
        name = f" `{g['run_name']}`" if g["run_name"] else ""
        out.append(f"- {g['setting']}, seed {g['seed']}:{name} {g['status']} — {g['error'] or 'no error tag'}")
    out += ["", "## Files", ""] + [f"- `{Path(p).name}`" for p in a["files"].values()] + [""]
    return "\n".join(out)


def _tex_escape(text: str) -> str:
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(repl.get(ch, ch) for ch in text)


def format_tex(result: dict, a: dict) -> str:
    cells = a["cells"]
    prov = _tex_escape(provenance_line(result["provenance"], a["n_text"]).replace("·", ";"))
    heads = [_tex_escape(METRIC_LABELS[m]) for m in METRICS]
    out = [f"% Ablation {a['ablation']} regenerated from MLflow study {_tex_escape(result['study'])} "
           f"(parent run {result['parent_run_id']}); requires booktabs.",
           *[f"% {_tex_escape(c)}" for c in a["caveats"]],
           r"\begin{table*}[t]", r"\centering", r"\scriptsize",
           r"\begin{tabular}{lr" + "r" * len(METRICS) + "}", r"\toprule",
           "Setting & $n$ & " + " & ".join(heads) + r" \\", r"\midrule"]
    for o, label in _orders(cells):
        row = [_cell(cells, o, m) for m in METRICS]
        vals = ["--" if c["n"] == 0 else "$" + plus_minus(c, 3).replace("±", r" \pm ") + "$" for c in row]
        out.append(f"{_tex_escape(label)} & {row[0]['n']} & " + " & ".join(vals) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}",
            r"\caption{" + "".join(r"\textbf{" + _tex_escape(c[0].upper() + c[1:]) + ".} " for c in a["caveats"])
            + "Ablation " + _tex_escape(a["ablation"]) + ": " + _tex_escape(DESCRIPTIONS[a["ablation"]])
            + r" Top-1 accuracy, mean over seeds $\pm$ half-width of the 95\,\% t interval of the mean. " + prov + "}",
            r"\label{tab:ablate-" + _tex_escape(a["ablation"]) + "}", r"\end{table*}", ""]
    return "\n".join(out)


def format_console(result: dict) -> str:
    lines = [f"Ablations, study {result['study']} (parent run {result['parent_run_id']})",
             *console_caveats({**result, "caveats": []}, 156)]
    lw = 34
    for a in result["ablations"].values():
        cells = a["cells"]
        ref, diffs = a.get("paired", (None, None))
        diffs = diffs if diffs is not None else pd.DataFrame()
        lines += ["", f"[{a['ablation']}] {DESCRIPTIONS[a['ablation']]}",
                  *console_caveats({**result, "caveats": a["caveats"], "running": False}, 156),
                  textwrap.fill(provenance_line(result["provenance"], a["n_text"]), 156),
                  f"mean over seeds ± half-width of its {stats.CI_LEVEL:.0%} t interval (value alone when n = 1)"
                  + ("; VALIDATION sets (what the search selects on)" if a["ablation"] == "search" else "")]
        for title, metrics, family in (("accuracy", METRICS, "accuracy"), ("calibration", CAL_METRICS, "calibration")):
            rows = [(label, [_cell(cells, o, m) for m in metrics]) for o, label in _orders(cells)]
            d = diffs[diffs["family"] == family] if not diffs.empty else diffs
            pm = PAIRED_METRICS if family == "accuracy" else CAL_METRICS
            drows = [] if d.empty else [(label, [_cell(d, o, m) for m in pm]) for o, label in _orders(d)]
            # one space between columns however wide the cells are
            w = 1 + max([len(METRIC_LABELS[m]) for m in metrics]
                        + [len(plus_minus(c, 3)) for _, r in rows for c in r]
                        + [len(plus_minus(c, 3, True) + c["mark"]) for _, r in drows for c in r])
            lines.append(f"{title + ':':<{lw}}{'n':>3}" + "".join(f"{METRIC_LABELS[m]:>{w}}" for m in metrics))
            for label, row in rows:
                lines.append(f"{label[:lw - 1]:<{lw}}{row[0]['n']:>3}" + "".join(f"{plus_minus(c, 3):>{w}}" for c in row))
            if drows:
                lines += textwrap.wrap(f"  minus {ref}, paired by seed (same columns"
                                       + (", without mean T" if family == "accuracy" else "")
                                       + f"; * = Holm-adjusted p < {stats.ALPHA:g}): {paired_summary(d)}", 156)
                for label, row in drows:
                    lines.append(f"  {label[:lw - 3]:<{lw - 2}}{row[0]['n']:>3}"
                                 + "".join(f"{plus_minus(c, 3, True) + c['mark']:>{w}}" for c in row))
        for m in a.get("matched", []):
            lines.append(f"  matched control, seed {m['seed']}: eps {m['eps']}, uniform mean T "
                         f"{fmt(m['uniform_mean_t'], 6)} vs IQA-LS epoch-1 mean T {fmt(m['iqa_ls_mean_t_epoch1'], 6)}")
        if a["ablation"] == "search":
            ch = a.get("chosen_setting")
            if ch is not None:
                lines.append(f"  chosen on validation: {ch['run_name']} ({ch['setting']}), objective "
                             f"{fmt(ch['objective'], 4)}; its TEST accuracies: "
                             + ", ".join(f"{METRIC_LABELS[m]} {fmt(ch['test'][m], 3)}"
                                         for m in ("acc_pristine", "acc_mean_all", "acc_worst")))
            imp = ", ".join(f"{r['param']} {fmt(r['importance'], 2)}" for _, r in a["importance"].iterrows())
            lines.append(f"  importances: {imp or a['importance_note']}")
        if not a["gaps"].empty:
            lines.append(f"  gaps ({len(a['gaps'])}): " + "; ".join(
                f"{g['setting']} seed {g['seed']} {g['status']}" for _, g in a["gaps"].iterrows()))
        lines += [f"  note: {n}" for n in a["notes"]]
    lines += [f"note: {n}" for n in provenance_warnings(result["provenance"]) + result["notes"]]
    logged = " (also logged to the parent run under analysis/)" if result["logged"] else ""
    lines += ["", f"Files{logged}:"] + [f"  {p}" for a in result["ablations"].values() for p in a["files"].values()]
    return "\n".join(lines)


def format_compact(result: dict) -> str:
    """The ablations for a person (<= 120 characters a line): per setting its n, the mean accuracy on
    the pristine set, over each distortion's three levels, over all 10 sets and on the worst set, its
    mean T, and (a grid with one one-hot setting) its paired difference to that setting over all 10
    sets with the verdict; a legend, the verdict line per ablation, gaps and notes in one line each,
    and where the files are. `format_console` (--verbose) and the files hold every test set, the
    intervals and the calibration tables."""
    cols = [("Pristine", GROUPS["Pristine"]), *((f"{g} L1-3", GROUPS[g]) for g in ("Blur", "Noise", "JPEG")),
            ("all 10", ("acc_mean_all",)), ("worst", ("acc_worst",)), ("mean T", ("mean_t",))]
    lw, w = 32, 10
    lines = [f"Ablations, study {result['study']}: top-1 accuracy (mean over seeds; Blur/Noise/JPEG L1-3: mean of "
             "3 levels)"]
    for a in result["ablations"].values():
        cells = a["cells"]
        ref, diffs = a.get("paired", (None, None))
        d = diffs[diffs["family"] == "accuracy"] if diffs is not None and not diffs.empty else pd.DataFrame()
        lines += [f"[{a['ablation']}] {DESCRIPTIONS[a['ablation']]}"[:120], f"{'setting':<{lw}}{'n':>3}"
                  + "".join(f"{c:>{w}}" for c, _ in cols) + (f"  all 10 − {ref}"[:22] if ref else "")]
        for o, label in _orders(cells):
            row = f"{label[:lw - 1]:<{lw}}{int(_cell(cells, o, 'acc_mean_all')['n']):>3}"
            for _, metrics in cols:
                vals = [_cell(cells, o, m) for m in metrics]
                mean = float(np.mean([c["mean"] for c in vals])) if all(c["n"] > 0 for c in vals) else math.nan
                row += f"{fmt(mean, 3):>{w}}"
            if not d.empty and o in set(d["order"]):
                c = _cell(d, o, "acc_mean_all")
                row += f"{fmt(c['diff'], 3, True) + c['mark']:>9}  {stats.verdict(c)}"
            lines.append(row.rstrip())
        if not d.empty:
            tl = stats.tally(d.to_dict("records"))
            lines.append(f"  verdict ({tl['total']} paired vs {ref}): {tl['higher']} resolved higher, {tl['lower']} "
                         f"lower, {tl['unresolved']} unresolved" + (f", {tl['no_ci']} n<2" if tl["no_ci"] else "")
                         + f", {tl['holm']} Holm *")
        if not a["gaps"].empty:
            lines.append(("  gaps: " + "; ".join(f"{g['setting']} seed {g['seed']} {g['status']}"
                                                 for _, g in a["gaps"].iterrows()))[:120])
    notes = provenance_warnings(result["provenance"]) + result["notes"] + [
        n for a in result["ablations"].values() for n in a["notes"]]
    if notes:
        lines.append(f"notes ({len(notes)}, in the .md files): {notes[0]}"[:120])
    lines.append("resolved: the 95% t interval of the paired difference excludes 0; * Holm-adjusted p < "
                 f"{stats.ALPHA:g}")
    files = [p for a in result["ablations"].values() for p in a["files"].values()]
    folder = Path(files[0]).parent if files else ""
    logged = ", also on the parent run" if result["logged"] else ""
    lines.append(f"files: {folder}/ ({len(files)}: every test set, the intervals, calibration, plots{logged}; "
                 "--verbose prints them)")
    return "\n".join(w_ for line in lines for w_ in (textwrap.wrap(line, 120, subsequent_indent="  ",
                                                                break_long_words=False) if len(line) > 120 else [line]))


# --- figures -----------------------------------------------------------------------------------------
def _footer(fig, result: dict, a: dict) -> None:
    width = int(fig.get_figwidth() * 17)  # characters of 6.5 pt text per line (20 overran the edge)
    fig.text(0.01, 0.01, textwrap.fill(provenance_line(result["provenance"], a["n_text"]), width),
             fontsize=6.5, va="bottom")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def groups_plot(result: dict, a: dict, path: Path) -> Path:
    """Accuracy vs the ablated variable, one panel per variable, one line per test group."""
    panels: dict[str, list[dict]] = {}
    for g in a["groups"]:
        for name, x in g["ablated"].items():
            panels.setdefault(name, []).append({**g, "x": x})
    first = ("tmap", "pristine")  # the search's always-present params lead
    names = sorted(panels, key=lambda k: (k not in first, first.index(k) if k in first else 0)) \
        or ["(no ablated variable recorded)"]
    scatter = a["ablation"] == "search"  # settings drawn at random: no line between them
    fig = new_figure(figsize=(max(8.0, 4.8 * len(names)), 5.2))
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        pts = panels.get(name, [])
        numeric = bool(pts) and all(_is_number(p["x"]) for p in pts)
        cats = list(dict.fromkeys(str(p["x"]) for p in pts))
        for group, color in GROUP_COLORS.items():
            mine = [p for p in pts if p["group"] == group and p["n"] > 0]
            if numeric:
                mine.sort(key=lambda p: (p["x"], p["order"]))
                xs = [float(p["x"]) for p in mine]
            else:
                xs = [cats.index(str(p["x"])) for p in mine]
            ys = [p["mean"] for p in mine]
            err = [0.0 if not math.isfinite(p["ci_low"]) else (p["ci_high"] - p["ci_low"]) / 2 for p in mine]
            unique = len(set(xs)) == len(xs) and not scatter
            ax.errorbar(xs, ys, yerr=err, color=color, marker="o", ms=4, capsize=3,
                        linestyle="-" if unique else "none", label=group)
        if not numeric:
            ax.set_xticks(range(len(cats)), cats, rotation=35, ha="right", fontsize=8)
        ax.set_xlabel(name)
        if i == 0:
            ax.set_ylabel("top-1 accuracy (group mean over levels)")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
    fig.suptitle(titled(f"Ablation {a['ablation']}: accuracy per test group ({a['n_text']}; error bars: 95% t interval "
                        "of the mean over seeds)", a["plot_caveats"], "\n"), fontsize=10)
    _footer(fig, result, a)
    fig.subplots_adjust(left=0.7 / fig.get_figwidth(), right=0.98, top=title_top(fig, 0.9), bottom=0.32, wspace=0.25)
    return save_figure(fig, path)


def curves_plot(result: dict, a: dict, hists: dict[int, dict], path: Path) -> Path:
    """Each setting's T over the histogram of the training scores, one panel per distortion level."""
    fig = new_figure(figsize=(15, 5))
    ref_order = min(hists) if hists else None
    ref = hists.get(ref_order, {})
    counts = ref.get("counts", {})
    bins = int(ref.get("bins", 50))
    edges = np.linspace(0.0, 1.0, bins + 1)
    types = sorted({k.rsplit("_", 1)[0] for k in counts if k != "pristine"})
    for i, lv in enumerate((1, 2, 3)):
        ax = fig.add_subplot(1, 3, i + 1)
        for t, color in zip(types, ("tab:blue", "tab:orange", "tab:green", "tab:red")):
            c = counts.get(f"{t}_{lv}")
            if c:
                ax.stairs(c, edges, color=color, fill=True, alpha=0.35, label=f"{t} L{lv}")
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"IQA score s ({ref.get('iqa_metric', '?')}), level {lv}")
        if i == 0:
            ax.set_ylabel("training images (epoch 1)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", fontsize=7)
        tx = ax.twinx()
        for o, h in sorted(hists.items()):
            tc = h.get("t_curve", {})
            tx.plot(tc.get("s", []), tc.get("t", []), lw=1.2, label=a["settings"][o][0])
        tx.axhline(1.0 / NUM_CLASSES, color="grey", ls=":", lw=1)
        tx.set_ylim(0, 1.05)
        if i == 2:
            tx.set_ylabel("T(s) = target of the true class (dotted: 1/K)")
            if tx.get_legend_handles_labels()[0]:
                tx.legend(loc="lower right", fontsize=7)
    src = a["settings"][ref_order][0] if ref_order is not None else "no run"
    fig.suptitle(titled(f"T maps over the training-set scores per level (histogram: run of setting '{src}', "
                        f"score pooling {ref.get('score_pooling', '?')}; pristine images score 1)", a["caveats"], "\n"),
                 fontsize=10)
    _footer(fig, result, a)
    fig.subplots_adjust(left=0.05, right=0.95, top=title_top(fig, 0.9), bottom=0.2, wspace=0.3)
    return save_figure(fig, path)


def history_plot(result: dict, a: dict, path: Path) -> Path:
    st = a["search_trials"]
    fig = new_figure(figsize=(8, 4.8))
    ax = fig.add_subplot()
    ok = st[np.isfinite(st["objective"].to_numpy(dtype=float))]
    done = ok[ok["status"] == "finished"]
    stopped = ok[ok["status"] != "finished"]
    ax.plot(done["number"], done["objective"], "o", color="tab:blue", label="finished")
    ax.plot(stopped["number"], stopped["objective"], "x", color="tab:red", label="stopped early (ASHA)")
    if not ok.empty:
        ax.step(ok["number"], np.maximum.accumulate(ok["objective"].to_numpy(dtype=float)), where="post",
                color="black", lw=1, label="best so far")
    ax.set_xlabel("Optuna trial number")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(a["objective_text"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(titled(f"Optuna search history ({len(st)} trials)", a["plot_caveats"], "\n"), fontsize=10)
    _footer(fig, result, a)
    fig.subplots_adjust(left=0.12, right=0.97, top=title_top(fig, 0.9), bottom=0.25)
    return save_figure(fig, path)


def importance_plot(result: dict, a: dict, path: Path) -> Path:
    fig = new_figure(figsize=(7, 4))
    ax = fig.add_subplot()
    imp = a["importance"]
    if imp.empty:
        ax.text(0.5, 0.5, textwrap.fill(f"Not available: {a['importance_note']}", 60), ha="center", va="center")
        ax.set_axis_off()
    else:
        ax.barh(imp["param"][::-1], imp["importance"][::-1], color="tab:blue")
        ax.set_xlabel("fANOVA importance (sums to 1)")
    ax.set_title(titled("Parameter importances of the search", a["caveats"], "\n"), fontsize=10)
    _footer(fig, result, a)
    fig.subplots_adjust(left=0.2, right=0.97, top=title_top(fig, 0.9), bottom=0.3)
    return save_figure(fig, path)


def _score_hists(client, a: dict, notes: list[str]) -> dict[int, dict]:
    """The first (lowest seed) counted run's scores_hist.json of every setting that has one."""
    found = download_json(client, [t.run_id for runs in a["chosen"].values() for t in runs], SCORES_HIST)
    out = {}
    for o, runs in a["chosen"].items():
        doc = next((found[t.run_id] for t in runs if t.run_id in found), None)
        if doc is not None:
            out[o] = doc
    if not out:
        notes.append(f"no run of the tmap ablation has a {SCORES_HIST} artifact; the T plot has no histogram")
    return out


def calibration_plots(client, result: dict, a: dict, out: Path) -> dict[str, Path]:
    """Reliability per test group (one line per setting) and confidence against quality (one panel per
    setting, the one-hot reference beside it), from the runs' calibration.json artifacts."""
    stem = f"ablate_{a['ablation']}"
    found = download_json(client, [t.run_id for runs in a["chosen"].values() for t in runs], cal.CALIBRATION_FILE)
    docs = {label: [found[t.run_id] for t in a["chosen"][o] if t.run_id in found]
            for o, (label, _) in a["settings"].items()}
    if not any(docs.values()):
        a["notes"].append(f"no run has a {cal.CALIBRATION_FILE} artifact; the calibration plots are empty")
    group = "val" if a["ablation"] == "search" else "test"
    if group == "val":  # the search's records: its validation sets (its test sets are seen once, at the end)
        docs = {k: [{"test": d.get("val", {})} for d in v] for k, v in docs.items()}
    colors = [f"C{i % 10}" for i in range(len(docs))]
    styles = {label: {"color": c} for label, c in zip(docs, colors)}
    footer = provenance_line(result["provenance"], a["n_text"])
    ref = (a.get("paired") or (None, None))[0]
    panels = {label: ({label: d, ref: docs[ref]} if ref and label != ref else {label: d}) for label, d in docs.items()}
    where = "validation" if group == "val" else "test"
    return {f"{stem}_reliability.png": cal.reliability_plot(
                docs, styles, titled(f"Ablation {a['ablation']}: reliability per {where} group ({a['n_text']})",
                                     a["plot_caveats"], "\n"), footer,
                out / f"{stem}_reliability.png", new_figure, save_figure),
            f"{stem}_confidence_quality.png": cal.quality_plot(
                panels, styles, titled(f"Ablation {a['ablation']}: confidence (solid) and accuracy (dashed) against the "
                                       f"SSIM of the distorted {where} image to its pristine version ({a['n_text']})",
                                       a["plot_caveats"], "\n"), footer,
                out / f"{stem}_confidence_quality.png", new_figure, save_figure)}


# --- the pipeline --------------------------------------------------------------------------------------
def build_ablate(study: str | None = None, parent_run_id: str | None = None,
                 tracking_uri: str = DEFAULT_TRACKING_URI, experiment: str = DEFAULT_EXPERIMENT,
                 out_dir: str | Path | None = None, log_to_parent: bool = True) -> dict:
    """Read the study, write each ablation's files to `out_dir` (default results/<study>) and, with
    `log_to_parent`, log them to the parent run under `analysis/`. Returns the frames and file paths."""
    client, parent, trials = read_study(tracking_uri, experiment, study, parent_run_id)
    check_kind(parent, "analysis.ablate")
    seeds = planned_seeds(parent.data.tags.get(TAG_SEEDS))
    notes = []
    if TAG_KIND not in parent.data.tags:  # recorded before the tag: read by its runs' ablation tags
        notes.append(f"the parent run has no {TAG_KIND} tag")
    present = [a for a in ABLATIONS if any(t.tags.get(TAG_ABLATION) == a for t in trials)]
    outside = sum(t.tags.get(TAG_ABLATION) not in ABLATIONS for t in trials)
    if outside:
        notes.append(f"{outside} child run(s) without a known {TAG_ABLATION} tag ignored")
    if not present:
        raise AnalysisError(f"study {parent.data.tags.get(TAG_STUDY)!r} has no ablation runs "
                            f"(child tag {TAG_ABLATION})")
    result, out = new_result(parent, trials, tracking_uri, experiment, out_dir, notes=notes, ablations={})
    for name in present:
        a = compute(trials, name, seeds)
        a["n_text"] = n_text(a["cells"], seeds, name)
        accs = a["cells"][a["cells"]["metric"].isin(ACC_METRICS)]
        a["caveats"] = result["caveats"] + [c for c in [n_caveat(parent.data.tags.get(TAG_PRESET), accs["n"])] if c]
        a["plot_caveats"] = a["caveats"] + [c for c in [near_chance(accs["mean"])] if c]
        a["paired"] = paired_differences(a)
        a["files"] = {}
        if name == "search":
            a["chosen_setting"] = chosen_setting(a)
        stem = f"ablate_{name}"
        if name == "iqa":
            a["matched"] = matched_check(client, a)
        if name == "search":
            spec = parent.data.tags.get(TAG_SEARCH)
            try:
                obj = json.loads(spec) if spec else {}
            except json.JSONDecodeError:
                obj = {}
            a["objective_text"] = (f"{obj.get('objective', '?')} = min of {', '.join(obj.get('objective_of', []))}"
                                   if obj else f"objective (unknown: no {TAG_SEARCH} tag)")
            a["search_trials"] = search_trials(a)
            if obj.get("trials") and len(a["search_trials"]) < obj["trials"]:
                a["notes"].append(f"{len(a['search_trials'])} of the {obj['trials']} planned search trials "
                                  "were recorded (an interrupted search is not resumed)")
            a["importance"], a["importance_note"] = importances(a["search_trials"], spec)
        files = a["files"]
        cav = a["caveats"]
        files[f"{stem}.csv"] = write_csv(a["cells"], out / f"{stem}.csv", cav)
        files[f"{stem}.parquet"] = write_parquet(a["cells"], out / f"{stem}.parquet", cav)
        if a["paired"][0] is not None:
            files[f"{stem}_paired.csv"] = write_csv(a["paired"][1], out / f"{stem}_paired.csv", cav)
        files[f"{stem}_groups.png"] = groups_plot(result, a, out / f"{stem}_groups.png")
        files.update(calibration_plots(client, result, a, out))
        if name == "tmap":
            files[f"{stem}_curves.png"] = curves_plot(result, a, _score_hists(client, a, a["notes"]),
                                                      out / f"{stem}_curves.png")
        if name == "search":
            files[f"{stem}_trials.csv"] = write_csv(a["search_trials"], out / f"{stem}_trials.csv", cav)
            files[f"{stem}_importance.csv"] = write_csv(a["importance"], out / f"{stem}_importance.csv", cav)
            files[f"{stem}_history.png"] = history_plot(result, a, out / f"{stem}_history.png")
            files[f"{stem}_importance.png"] = importance_plot(result, a, out / f"{stem}_importance.png")
        files[f"{stem}.tex"] = write_text(out / f"{stem}.tex", format_tex(result, a))
        md = out / f"{stem}.md"
        files[f"{stem}.md"] = md
        write_text(md, format_markdown(result, a))
        result["ablations"][name] = a
    return log_outputs(client, parent, result, [p for a in result["ablations"].values() for p in a["files"].values()],
                       log_to_parent)


def main(argv: list[str] | None = None) -> int:
    return study_main("python -m analysis.ablate", __doc__.split("\n\n")[0], build_ablate, format_console, argv)


if __name__ == "__main__":
    raise SystemExit(run_cli("ablate", main))
