"""CIFAR-10-C tables of a recorded study (issue 14), from MLflow alone: does a training strategy make
the model more robust to corruptions it never saw, or only better at the ones it trained on?

Reads the study's child runs (names: docs/mlflow-schema.md): the metrics `c10c_<what>_<set>` of the
final model (set = `clean` or `<corruption>_<severity>`, what = acc, nll, ece, ...) and each run's
`cifar10c.json` artifact (where the images came from: "regenerated" or "official files", which
corruptions, how many test images). Written by the trial itself (`--cifar10c` on a study) or after
the fact by `python -m study.cifar10c --study NAME`, which evaluates the recorded final weights and
then calls this module. Per arm — a Table 2 strategy, or an ablation's setting — and per seed:

- `clean`: accuracy on the same test images uncorrupted; `mean_benchmark`: mean accuracy over the
  benchmark's 15 corruptions x 5 severities that are present (RobustBench's `corruptions_acc`; a
  regenerated set lacks frost, so it is over 14, and every table says so); `mean_corrupted`: over
  every corruption present (the 4 extras too); `sev1`..`sev5`: over the benchmark corruptions present
  at one severity; `mean_seen` / `mean_unseen`: over the corruptions of the kinds our mixtures train
  on (gaussian_noise, jpeg_compression, gaussian_blur) and over all the others present.
- Corruption error as in Hendrycks & Dietterich (ICLR 2019), with OUR baseline, not their AlexNet:
  CE_c = sum_s E_{s,c} / sum_s E^base_{s,c} (E = top-1 error), `mce` = mean of CE_c over the
  benchmark corruptions present; relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^base_{s,c} -
  E^base_clean), `rel_mce` its mean. The baseline is strategy 1 (Original, Pristine) of a Table 2
  study, the one-hot setting of an ablation, and it is the run of the SAME seed (same subset, initial
  weights, test images): CE is computed per seed, then summarised over seeds.
- Calibration: `ece_clean`, `ece_mean_benchmark`, `nll_clean`, `nll_mean_benchmark`.

Each value is summarised over seeds by its mean and 95 % t interval (analysis/stats.py). Pairs —
IQA-LS minus Original (Table 2: 3−2, 5−4, 7−6, 9−8), or each setting minus the one-hot setting of its
ablation — are paired by seed, Holm-adjusted within each table: the summary metrics (accuracy and CE),
the calibration metrics, and the per-corruption accuracies (mean over severities).

Only FINISHED runs with CIFAR-10-C results count. All counted runs must share one evaluation (the
artifact's `key`: kind, corruptions, seed, implementation, images); runs evaluated otherwise are left
out and listed; runs without results are gaps ("run python -m study.cifar10c"). Ablation studies:
every grid ablation gets its own section (the search's single-seed trials are left out, noted).

Launch: `python -m analysis.cifar10c --study NAME [--tracking-uri URI] [--out DIR] [--no-log]`.
Outputs (in `out_dir`, logged under `analysis/` of the parent run):
- `cifar10c.md`, `cifar10c.tex`: provenance, the data line, the summary table, the pairs, the
  per-corruption table, gaps
- `cifar10c.csv` / `.parquet`: long, one row per arm x summary metric (group, arm, label,
  regularization, train_set, metric, mean, ci_low, ci_high, std, n)
- `cifar10c_corruptions.csv` / `.parquet`: one row per arm x corruption x severity ("1".."5", "all" =
  mean over the severities) x metric (acc; ce and rel_ce at "all"), with seen and benchmark flags
- `cifar10c_pairs.csv`: the paired differences of every family (column family)
- `cifar10c_severity.png`: accuracy against severity (0 = clean) per arm
- `cifar10c_robustbench.json`: per arm the RobustBench-style block (percent): clean_acc,
  corruptions_acc, corruptions_acc_unaggregated, means over seeds, with n, seeds and the data line
The same runs give the same bytes. Titles and the `caveat` column (and the RobustBench file's `caveat`)
say what the numbers are, and a running or other-kind study is handled, as in analysis.table2; this
command reads Table 2 and ablation studies.
"""
from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import ablate as ab
from analysis import stats
from analysis import table2 as t2
from analysis.common import (
    MISSING,
    TrialRecord,
    caveat_text,
    check_kind,
    console_caveats,
    download_json,
    fmt,
    header_lines,
    interval_text,
    legend_line,
    log_outputs,
    n_caveat,
    near_chance,
    new_figure,
    new_result,
    plus_minus,
    protocol_of,
    provenance_line,
    provenance_warnings,
    read_study,
    run_cli,
    save_figure,
    study_main,
    title_top,
    titled,
    write_csv,
    write_parquet,
    write_text,
)
from analysis.schema import (
    DEFAULT_EXPERIMENT,
    DEFAULT_TRACKING_URI,
    TAG_ABLATION,
    TAG_KIND,
    TAG_PRESET,
    TAG_REGULARIZATION,
    TAG_SEED,
    TAG_SEEDS,
    TAG_STRATEGIES,
    TAG_STRATEGY,
    TAG_STUDY,
    TAG_TRAIN_SET,
    AnalysisError,
    planned_seeds,
)
from trainables.metric_names import C10C_PREFIX, EVAL_WHATS

ARTIFACT = "cifar10c.json"
PREFIX, WHATS = C10C_PREFIX, EVAL_WHATS  # c10c_<what>_<set>, as the trials record them
CLEAN = "clean"
SEVERITIES = (1, 2, 3, 4, 5)
# The reference generator's order (ImageNet-C/create_c/make_cifar_c.py): the 15 of the benchmark,
# then the 4 extras. analysis reads MLflow only, so the names live here too; tests/test_analysis_cifar10c.py
# checks them against trainables.corruptions.
BENCHMARK = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
             "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
             "jpeg_compression")
EXTRAS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ORDER = BENCHMARK + EXTRAS
SEEN = ("gaussian_noise", "jpeg_compression", "gaussian_blur")  # the kinds of our training distortions
ACC_SUMMARY = ("clean", "mean_benchmark", "mean_corrupted", "mean_seen", "mean_unseen",
               "sev1", "sev2", "sev3", "sev4", "sev5", "mce", "rel_mce")
CAL_SUMMARY = ("ece_clean", "ece_mean_benchmark", "nll_clean", "nll_mean_benchmark")
SUMMARY = ACC_SUMMARY + CAL_SUMMARY
LABELS = {"clean": "Clean", "mean_benchmark": "Bench.", "mean_corrupted": "All C", "mean_seen": "Seen",
          "mean_unseen": "Unseen", **{f"sev{s}": f"Sev {s}" for s in SEVERITIES}, "mce": "mCE",
          "rel_mce": "rel. mCE", "ece_clean": "ECE clean", "ece_mean_benchmark": "ECE bench.",
          "nll_clean": "NLL clean", "nll_mean_benchmark": "NLL bench."}
FAMILIES = {"accuracy": ACC_SUMMARY, "calibration": CAL_SUMMARY}  # Holm within each (and "corruptions")
CONSOLE = ("clean", "mean_benchmark", "mean_seen", "mean_unseen", "sev1", "sev3", "sev5", "mce", "rel_mce")


# --- one run's numbers -------------------------------------------------------------------------------
def set_name(corruption: str, severity: int) -> str:
    return f"{corruption}_{severity}"


def run_sets(t: TrialRecord, corruptions) -> dict[str, dict[str, float]] | None:
    """what -> set -> value of a run (`clean` and every corruption x severity of `corruptions`); None
    when the run has no CIFAR-10-C accuracy for one of them."""
    out = {}
    for what in WHATS:
        out[what] = {CLEAN: t.metrics.get(f"{PREFIX}{what}_{CLEAN}", math.nan)}
        for c in corruptions:
            for s in SEVERITIES:
                out[what][set_name(c, s)] = t.metrics.get(f"{PREFIX}{what}_{set_name(c, s)}", math.nan)
    acc = out["acc"]
    return out if all(math.isfinite(v) for v in acc.values()) else None


def corruptions_in_metrics(t: TrialRecord) -> tuple[str, ...]:
    """The corruptions a run has every severity's accuracy of (for a run without the artifact)."""
    return tuple(c for c in ORDER if all(f"{PREFIX}acc_{set_name(c, s)}" in t.metrics for s in SEVERITIES))


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else math.nan


def summary(sets: dict, corruptions) -> dict[str, float]:
    """The summary metrics of one run without the baseline (CE needs it: `corruption_errors`)."""
    acc = sets["acc"]
    bench = [c for c in corruptions if c in BENCHMARK]
    over = {"mean_benchmark": bench, "mean_corrupted": list(corruptions),
            "mean_seen": [c for c in corruptions if c in SEEN],
            "mean_unseen": [c for c in corruptions if c not in SEEN]}
    out = {"clean": acc[CLEAN]}
    for name, cs in over.items():
        out[name] = _mean(acc[set_name(c, s)] for c in cs for s in SEVERITIES)
    for s in SEVERITIES:
        out[f"sev{s}"] = _mean(acc[set_name(c, s)] for c in bench)
    for what in ("ece", "nll"):
        out[f"{what}_clean"] = sets[what][CLEAN]
        out[f"{what}_mean_benchmark"] = _mean(sets[what][set_name(c, s)] for c in bench for s in SEVERITIES)
    return out


def corruption_errors(sets: dict, base: dict | None, corruptions) -> dict[str, dict[str, float]]:
    """CE_c and relative CE_c of a run against the baseline run of its seed (module docstring); NaN
    without a baseline or where a denominator is 0."""
    out = {"ce": {}, "rel_ce": {}}
    for c in corruptions:
        ce = rel = math.nan
        if base is not None:
            err = [1 - sets["acc"][set_name(c, s)] for s in SEVERITIES]
            berr = [1 - base["acc"][set_name(c, s)] for s in SEVERITIES]
            e0, b0 = 1 - sets["acc"][CLEAN], 1 - base["acc"][CLEAN]
            ce = sum(err) / sum(berr) if sum(berr) > 0 else math.nan
            denom = sum(b - b0 for b in berr)
            rel = sum(e - e0 for e in err) / denom if denom != 0 else math.nan
        out["ce"][c], out["rel_ce"][c] = ce, rel
    return out


# --- the arms of a study -------------------------------------------------------------------------------
def arms_of(trials: list[TrialRecord], kind: str, seeds: list[int], strategies=tuple(t2.STRATEGY_ROWS)):
    """[(group, arms)], the gaps of the selection and notes. An arm: {"arm", "label", "regularization",
    "train_set", "runs" (by seed)}; each group has "baseline" (an arm id or None) and "pairs"."""
    groups, gaps, notes = [], [], []
    if kind.startswith("ablate"):
        present = [a for a in ab.ABLATIONS if any(t.tags.get(TAG_ABLATION) == a for t in trials)]
        if "search" in present:
            notes.append("the search's trials (one seed each, chosen by Optuna) are not tabled here")
        for name in [a for a in present if a != "search"]:
            settings, chosen, g, n = ab.select(trials, name, seeds)
            gaps += [{"group": name, "arm": gg["setting"], "seed": gg["seed"], "run_name": gg["run_name"],
                      "status": gg["status"], "error": gg["error"]} for gg in g]
            notes += n
            arms = [{"arm": o, "label": label, "regularization": _one(chosen[o], TAG_REGULARIZATION),
                     "train_set": _one(chosen[o], TAG_TRAIN_SET), "runs": chosen[o]}
                    for o, (label, _) in settings.items()]
            refs = [a["arm"] for a in arms if a["runs"] and a["regularization"] == "onehot"]
            base = refs[0] if len(refs) == 1 else None
            if base is None:
                notes.append(f"ablation {name}: {len(refs)} one-hot settings, so no baseline: no CE, no pairs")
            groups.append({"group": name, "arms": arms, "baseline": base,
                           "pairs": [(base, a["arm"]) for a in arms if base is not None and a["arm"] != base]})
        if not groups:
            raise AnalysisError(f"the study has no grid ablation runs (child tag {TAG_ABLATION})")
    else:
        scratch = [t for t in trials if protocol_of(t) == "scratch"]
        tuned = [t for t in trials if protocol_of(t) == "finetune"]
        selected, g, n = t2.select_trials(scratch, seeds, strategies)
        gaps += [{"group": "table2", "arm": str(r["strategy"]), "seed": r["seed"], "run_name": r["run_name"],
                  "status": r["status"], "error": r["error"]} for r in g.to_dict("records")]
        notes += n
        arms = []
        for s in strategies:
            reg, train = t2.row_labels(s)
            arms.append({"arm": s, "label": f"{s} {reg} {train}", "regularization": t2.STRATEGY_ROWS[s][1],
                         "train_set": train, "runs": selected[s]})
        # CE needs strategy 1 (Original, Pristine) of the same seed; a study of other rows has none
        groups.append({"group": "table2", "arms": arms, "baseline": 1 if 1 in strategies else None,
                       "no_baseline": "strategy 1 (Original, Pristine) is not among the study's strategies",
                       "pairs": t2.pairs_of(strategies)})
        if tuned:
            groups.append(finetune_group(arms, tuned, seeds, gaps, notes))
    return groups, gaps, notes


FT_ARM = 100  # arm id of fine-tuned strategy s: FT_ARM + s (shown "9ft"; arms are integers in the frames)
FT_GROUP = "table2-finetune"
GROUP_TITLES = {"table2": "Table 2 strategies",
                FT_GROUP: "Table 2, fine-tune protocol (Nft: fine-tuned from its Original's final weights; "
                          "an Original's Nft: continued one-hot as long, the epochs control)"}
PAIR_TITLES = {"table2": "IQA-LS − Original", FT_GROUP: "IQA-LS fine-tuned − reference"}


def arm_name(arm: int) -> str:
    """A Table 2 arm's short name: "9", or "9ft" for strategy 9 fine-tuned (analysis.table2.ft_arm)."""
    return t2.ft_arm(arm - FT_ARM) if arm > FT_ARM else str(arm)


def finetune_group(scratch_arms: list[dict], tuned: list[TrialRecord], seeds, gaps: list,
                   notes: list) -> dict:
    """The fine-tune protocol's group: strategy 1 (the CE baseline), the from-scratch arms the fine-tunes are
    compared with and the fine-tuned arms; pairs as analysis.table2.FT_REFERENCES: each fine-tuned IQA-LS arm
    against its parent (the Original), the Original continued as long (the epochs control) and IQA-LS from
    scratch, each paired by seed."""
    planned = sorted({t.tag_int(TAG_STRATEGY) for t in tuned} & set(t2.STRATEGY_ROWS))
    selected, g, n = t2.select_trials(tuned, seeds, planned)
    gaps += [{"group": FT_GROUP, "arm": t2.ft_arm(r["strategy"]), "seed": r["seed"],
              "run_name": r["run_name"], "status": r["status"], "error": r["error"]}
             for r in g.to_dict("records")]
    notes += [f"fine-tune protocol: {x}" for x in n]
    by_arm = {a["arm"]: a for a in scratch_arms}
    arms = [dict(a) for a in scratch_arms if a["arm"] == 1]
    pairs = []
    for a, b in t2.PAIRS:
        if not selected.get(b):
            continue
        for s in (a, b):
            if s in by_arm and all(x["arm"] != s for x in arms):
                arms.append(dict(by_arm[s]))
        for s in (a, b):
            if selected.get(s):
                reg, train = t2.row_labels(s)
                arms.append({"arm": FT_ARM + s, "label": f"{t2.ft_arm(s)} {reg} {train}",
                             "regularization": t2.STRATEGY_ROWS[s][1], "train_set": train,
                             "runs": selected[s]})
        pairs += [(ref, FT_ARM + b) for ref in (a, FT_ARM + a, b) if any(x["arm"] == ref for x in arms)]
    return {"group": FT_GROUP, "arms": arms, "baseline": 1 if 1 in by_arm else None, "pairs": pairs}


def _one(runs: list[TrialRecord], tag: str) -> str:
    values = sorted({t.tags.get(tag, "") for t in runs})
    return values[0] if len(values) == 1 else "/".join(values)


def _key_text(doc: dict | None) -> str:
    return json.dumps(doc.get("key"), sort_keys=True) if doc else "(no cifar10c.json)"


def choose_evaluation(groups, docs: dict[str, dict], notes: list[str]):
    """The one CIFAR-10-C evaluation the tables use: the key most counted runs share. Returns (key
    text, the artifact of one such run or None, per run id its corruptions), and prunes the arms."""
    keys: dict[str, list[str]] = {}
    for g in groups:
        for a in g["arms"]:
            for t in a["runs"]:
                doc = docs.get(t.run_id)
                if doc is not None or corruptions_in_metrics(t):
                    keys.setdefault(_key_text(doc), []).append(t.run_id)
    if not keys:
        return None, None
    chosen = max(sorted(keys), key=lambda k: len(keys[k]))
    for k, ids in sorted(keys.items()):
        if k != chosen:
            notes.append(f"{len(ids)} run(s) evaluated on other CIFAR-10-C data ({k}) left out")
    doc = next((docs[r] for r in keys[chosen] if r in docs), None)
    return chosen, doc


# --- the tables ----------------------------------------------------------------------------------------
def compute(groups, docs: dict[str, dict], chosen_key: str | None):
    """Cells (summary), per-corruption cells, pairs, the evaluated runs per arm and the not-evaluated gaps."""
    rows, crow, prow, gaps = [], [], [], []
    per_arm: dict[tuple[str, int], dict] = {}
    for g in groups:
        gname = g["group"]
        for a in g["arms"]:
            vals = {}
            for t in a["runs"]:
                doc = docs.get(t.run_id)
                corr = tuple(doc["source"]["corruptions"]) if doc else corruptions_in_metrics(t)
                gap = {"group": gname, "arm": a["label"], "seed": t.tag_int(TAG_SEED), "run_name": t.run_name}
                if not corr:
                    gaps.append({**gap, "status": "NOT EVALUATED",
                                 "error": "no CIFAR-10-C results: run python -m study.cifar10c"})
                    continue
                if _key_text(doc) != chosen_key:
                    continue  # evaluated on other data: choose_evaluation noted it
                sets = run_sets(t, corr)
                if sets is None:
                    gaps.append({**gap, "status": "INCOMPLETE", "error": "cifar10c.json lists corruptions "
                                 "whose c10c_acc_* metrics the run lacks"})
                    continue
                vals[t.tag_int(TAG_SEED)] = {"sets": sets, "corruptions": corr, "run": t}
            per_arm[(gname, a["arm"])] = vals
        base = per_arm.get((gname, g["baseline"]), {}) if g["baseline"] is not None else {}
        for a in g["arms"]:
            vals = per_arm[(gname, a["arm"])]
            for seed, v in vals.items():
                b = base.get(seed)
                v["summary"] = summary(v["sets"], v["corruptions"])
                v["ce"] = corruption_errors(v["sets"], b["sets"] if b else None, v["corruptions"])
                bench = [c for c in v["corruptions"] if c in BENCHMARK]
                v["summary"]["mce"] = _mean(v["ce"]["ce"][c] for c in bench) if b else math.nan
                v["summary"]["rel_mce"] = _mean(v["ce"]["rel_ce"][c] for c in bench) if b else math.nan
            head = {"group": gname, "arm": a["arm"], "label": a["label"], "regularization": a["regularization"],
                    "train_set": a["train_set"]}
            for m in SUMMARY:
                rows.append({**head, "metric": m, **stats.mean_ci([v["summary"][m] for v in vals.values()])})
            corr = _corruptions(vals)
            for c in corr:
                flags = {"corruption": c, "seen": c in SEEN, "benchmark": c in BENCHMARK}
                for s in SEVERITIES:
                    crow.append({**head, **flags, "severity": str(s), "metric": "acc",
                                 **stats.mean_ci([v["sets"]["acc"][set_name(c, s)] for v in vals.values()])})
                crow.append({**head, **flags, "severity": "all", "metric": "acc",
                             **stats.mean_ci([_mean(v["sets"]["acc"][set_name(c, s)] for s in SEVERITIES)
                                              for v in vals.values()])})
                for m in ("ce", "rel_ce"):
                    crow.append({**head, **flags, "severity": "all", "metric": m,
                                 **stats.mean_ci([v["ce"][m][c] for v in vals.values()])})
        prow += _pairs(g, per_arm)
    head_cols = ["group", "arm", "label", "regularization", "train_set"]
    stat_cols = ["mean", "ci_low", "ci_high", "std", "n"]
    cells = pd.DataFrame(rows, columns=head_cols + ["metric"] + stat_cols)
    cells = cells.astype({"arm": "int64", "n": "int64"})
    corr = pd.DataFrame(crow, columns=head_cols + ["corruption", "seen", "benchmark", "severity", "metric"] + stat_cols)
    corr = corr.astype({"arm": "int64", "n": "int64", "seen": "bool", "benchmark": "bool"})
    pcols = ["family", "group", "baseline", "arm", "label", "metric", "diff", "ci_low", "ci_high", "p", "p_holm",
             "mark", "method", "df", "n", "no_spread"]
    pairs = pd.DataFrame(prow, columns=pcols).astype({"baseline": "int64", "arm": "int64", "n": "int64"})
    return cells, corr, pairs, per_arm, gaps


def _corruptions(vals: dict) -> list[str]:
    present = set()
    for v in vals.values():
        present |= set(v["corruptions"])
    return [c for c in ORDER if c in present]


def _pairs(g: dict, per_arm: dict) -> list[dict]:
    gname = g["group"]
    labels = {a["arm"]: a["label"] for a in g["arms"]}
    out = []
    for family, metrics in list(FAMILIES.items()) + [("corruptions", None)]:
        rows = []
        for a, b in g["pairs"]:
            va, vb = per_arm.get((gname, a), {}), per_arm.get((gname, b), {})
            if metrics is None:  # per corruption: accuracy, mean over the severities
                names = [c for c in ORDER if any(c in v["corruptions"] for v in [*va.values(), *vb.values()])]
                items = [(c, lambda v, c=c: _mean(v["sets"]["acc"][set_name(c, s)] for s in SEVERITIES)
                          if c in v["corruptions"] else math.nan) for c in names]
            else:
                items = [(m, lambda v, m=m: v["summary"][m]) for m in metrics]
            for name, get in items:
                c = stats.compare({k: get(v) for k, v in va.items()}, {k: get(v) for k, v in vb.items()})
                rows.append({"family": family, "group": gname, "baseline": a, "arm": b, "label": labels[b],
                             "metric": name, **{k: c[k] for k in ("diff", "ci_low", "ci_high", "p", "method", "df", "n")},
                             "no_spread": bool(c.get("no_spread", False))})
        out += stats.with_holm(rows)
    return out


def robustbench(groups, per_arm, data_line: str) -> dict:
    """Per arm, the RobustBench-style block (percent) averaged over its seeds, with n and the seeds."""
    out = {}
    for g in groups:
        for a in g["arms"]:
            vals = per_arm[(g["group"], a["arm"])]
            if not vals:
                continue
            bench = [c for c in _corruptions(vals) if c in BENCHMARK]
            unagg = {c: {str(s): round(100 * _mean(v["sets"]["acc"][set_name(c, s)] for v in vals.values()), 2)
                         for s in SEVERITIES} for c in bench}
            key = a["label"] if g["group"] == "table2" else f"{g['group']}: {a['label']}"
            out[key] = {"dataset": "cifar10", "threat_model": "corruptions", "unit": "percent",
                        "n_seeds": len(vals), "seeds": sorted(vals, key=lambda s: (s is None, s or 0)),
                        "clean_acc": round(100 * _mean(v["summary"]["clean"] for v in vals.values()), 2),
                        "corruptions_acc": round(100 * _mean(v["summary"]["mean_benchmark"] for v in vals.values()), 2),
                        "corruptions_covered": bench, "corruptions_missing": [c for c in BENCHMARK if c not in bench],
                        "corruptions_acc_unaggregated": unagg, "data": data_line}
    return out


# --- text ------------------------------------------------------------------------------------------------
def data_line(doc: dict | None) -> str:
    """Which CIFAR-10-C the numbers are on: kind, corruptions, what is missing, the images."""
    if doc is None:
        return "CIFAR-10-C: source unknown (the runs have metrics but no cifar10c.json)"
    key, src = doc["key"], doc["source"]
    missing = [c for c in BENCHMARK if c not in src["corruptions"]]
    images = (f"all {key['n_images']} test images" if not key.get("subset") else
              f"a stratified subset of {key['n_images']} of the {key.get('test_images', '?')} test images "
              f"(seed {doc.get('subset_seed', 0)})")
    made = (f"regenerated from the test split of {doc.get('data')}, seed {src['seed']}, implementation "
            f"{src['implementation']}" if src["kind"] == "regenerated" else f"official files in {src['location']}")
    bench = len([c for c in src["corruptions"] if c in BENCHMARK])
    return (f"CIFAR-10-C ({made}): {len(src['corruptions'])} corruptions x 5 severities, "
            f"{bench} of the 15 benchmark ones" + (f" (missing: {', '.join(missing)})" if missing else "")
            + f"; {images}, the same images clean")


def n_text(cells: pd.DataFrame, seeds: list[int]) -> str:
    ns = cells.loc[cells["metric"] == "clean", "n"]
    if ns.empty or ns.max() == 0:
        return "no evaluated runs"
    text = (f"{ns.max()} seed{'s' if ns.max() != 1 else ''} per arm" if ns.min() == ns.max()
            else f"{ns.min()}-{ns.max()} evaluated seeds per arm")
    if seeds and len(seeds) != ns.max():
        text += f" ({len(seeds)} planned)"
    return text


def _cell(frame: pd.DataFrame, group: str, arm: int, metric: str, **extra) -> pd.Series:
    m = (frame["group"] == group) & (frame["arm"] == arm) & (frame["metric"] == metric)
    for k, v in extra.items():
        m &= frame[k] == v
    return frame[m].iloc[0]


def _baseline_text(g: dict) -> str:
    if g["baseline"] is None:
        return f"no baseline ({g.get('no_baseline', 'the group has not exactly one one-hot setting')}): no CE"
    label = next(a["label"] for a in g["arms"] if a["arm"] == g["baseline"])
    return (f"CE baseline: our {label} of the same seed (not AlexNet, the benchmark's baseline), so its own "
            "mCE is 1")


def pair_text(pairs: pd.DataFrame) -> str:
    return stats.tally_text(pairs.to_dict("records"))


def format_markdown(result: dict) -> str:
    cells, corr, pairs = result["cells"], result["corruptions"], result["pairs"]
    out = [titled(f"# CIFAR-10-C — study `{result['study']}`", result["caveats"]), "",
           f"_{provenance_line(result['provenance'], result['n_text'])}_", "", *header_lines(result),
           f"_{result['data_line']}_", "",
           f"Parent run `{result['parent_run_id']}` in experiment `{result['experiment']}`. Top-1 accuracy of the "
           "final models on CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019): mean over the seeds with the "
           f"{stats.CI_LEVEL:.0%} t interval of the mean in brackets. Clean = the same test images uncorrupted; "
           "Bench. = mean over the benchmark corruptions present x 5 severities (RobustBench's corruptions_acc "
           "when all 15 are); All C = every corruption present; Seen = gaussian_noise, jpeg_compression, "
           "gaussian_blur (the kinds our mixtures train on, at other strengths); Unseen = the others; Sev s = "
           "benchmark corruptions at severity s; mCE = mean over the benchmark corruptions of CE_c = Σ_s E_s,c / "
           "Σ_s E^base_s,c (E = error), rel. mCE with the clean error subtracted (lower is better).", "",
           legend_line(), ""]
    notes = provenance_warnings(result["provenance"]) + result["notes"]
    out += [f"- note: {w}" for w in notes] + ([""] if notes else [])
    for g in result["groups"]:
        gname = g["group"]
        title = GROUP_TITLES.get(gname, f"ablation `{gname}`")
        out += [f"## {title}", "", _baseline_text(g) + ".", "",
                "| Arm | n | " + " | ".join(LABELS[m] for m in SUMMARY) + " |",
                "|---|---:|" + "---:|" * len(SUMMARY)]
        for a in g["arms"]:
            row = [_cell(cells, gname, a["arm"], m) for m in SUMMARY]
            out.append(f"| {a['label']} | {row[0]['n']} | "
                       + " | ".join(MISSING if c["n"] == 0 else interval_text(c, 4) for c in row) + " |")
        gp = pairs[pairs["group"] == gname]
        what = PAIR_TITLES.get(gname, "each setting − the one-hot setting")
        for family in ("accuracy", "calibration", "corruptions"):
            fp = gp[gp["family"] == family]
            if fp.empty:
                continue
            metrics = list(dict.fromkeys(fp["metric"]))
            heads = [LABELS.get(m, m) for m in metrics]
            out += ["", f"### {what}, paired by seed ({family}{': accuracy, mean over severities' if family == 'corruptions' else ''})",
                    "", f"Seed by seed over the seeds both arms have; {stats.CI_LEVEL:.0%} t interval; * = Holm-adjusted "
                    f"p < {stats.ALPHA:g} over the {len(fp)} comparisons of this table. Summary: {pair_text(fp)}.", "",
                    "| Pair | n | " + " | ".join(heads) + " |", "|---|---:|" + "---:|" * len(heads)]
            for a, b in g["pairs"]:
                pr = fp[(fp["baseline"] == a) & (fp["arm"] == b)]
                if pr.empty:
                    continue
                n = "/".join(map(str, sorted(set(pr["n"].tolist()))))
                cellmap = {r["metric"]: r for r in pr.to_dict("records")}
                out.append(f"| {arm_name(b)} − {arm_name(a)} | {n} | " + " | ".join(
                    interval_text(cellmap[m], 4, signed=True) if m in cellmap else MISSING for m in metrics) + " |")
        gc = corr[(corr["group"] == gname) & (corr["severity"] == "all")]
        names = [c for c in ORDER if c in set(gc["corruption"])]
        if names:
            out += ["", "### Per corruption (accuracy, mean over severities; CE against the baseline)", "",
                    "| Arm | | " + " | ".join(f"{c}{' (seen)' if c in SEEN else ''}" for c in names) + " |",
                    "|---|---|" + "---:|" * len(names)]
            for a in g["arms"]:
                for m in ("acc", "ce"):
                    cs = [_cell(gc, gname, a["arm"], m, corruption=c) if len(gc[(gc["arm"] == a["arm"]) & (gc["corruption"] == c)]) else None
                          for c in names]
                    out.append(f"| {a['label'] if m == 'acc' else ''} | {m} | "
                               + " | ".join(MISSING if c is None or c["n"] == 0 else plus_minus(c, 3) for c in cs) + " |")
    out += ["", "## Gaps", ""]
    if not result["gaps"]:
        out.append("None: every planned run has CIFAR-10-C results.")
    for gp in result["gaps"]:
        name = f" `{gp['run_name']}`" if gp["run_name"] else ""
        out.append(f"- {gp['group']} {gp['arm']}, seed {gp['seed']}:{name} {gp['status']} — {gp['error'] or 'no error tag'}")
    out += ["", "## Files", ""] + [f"- `{Path(p).name}`" for p in result["files"].values()] + [""]
    return "\n".join(out)


def _tex_escape(text: str) -> str:
    return t2._tex_escape(text)


def format_tex(result: dict) -> str:
    cells = result["cells"]
    prov = _tex_escape((provenance_line(result["provenance"], result["n_text"]) + "; " + result["data_line"])
                       .replace("·", ";"))
    out = [f"% CIFAR-10-C summary regenerated from MLflow study {_tex_escape(result['study'])} "
           f"(parent run {result['parent_run_id']}); requires booktabs.",
           *[f"% {_tex_escape(c)}" for c in result["caveats"]],
           r"\begin{table*}[t]", r"\centering", r"\scriptsize",
           r"\begin{tabular}{lr" + "r" * len(ACC_SUMMARY) + "}", r"\toprule",
           "Arm & $n$ & " + " & ".join(_tex_escape(LABELS[m]) for m in ACC_SUMMARY) + r" \\", r"\midrule"]
    for g in result["groups"]:
        for a in g["arms"]:
            row = [_cell(cells, g["group"], a["arm"], m) for m in ACC_SUMMARY]
            vals = ["--" if c["n"] == 0 or not math.isfinite(c["mean"]) else
                    "$" + plus_minus(c, 3).replace("±", r" \pm ") + "$" for c in row]
            label = a["label"] if g["group"] == "table2" else f"{g['group']}: {a['label']}"
            out.append(f"{_tex_escape(label)} & {row[0]['n']} & " + " & ".join(vals) + r" \\")
        out.append(r"\midrule" if g is not result["groups"][-1] else r"\bottomrule")
    out += [r"\end{tabular}",
            r"\caption{" + t2._tex_caveats(result["caveats"]) + r"CIFAR-10-C top-1 accuracy (mean over seeds $\pm$ half-width of the 95\,\% t interval) and "
            r"mCE against our own baseline (" + _tex_escape("; ".join(_baseline_text(g) for g in result["groups"]))
            + "). " + prov + "}",
            r"\label{tab:cifar10c-" + _tex_escape(result["study"]).replace("\\", "") + "}", r"\end{table*}", ""]
    return "\n".join(out)


def format_console(result: dict) -> str:
    """The summary per arm and the pairs (≤ 160 columns), the notes and the files."""
    cells, pairs = result["cells"], result["pairs"]
    w, lw = 12, 24
    lines = [f"CIFAR-10-C, study {result['study']} (parent run {result['parent_run_id']})",
             *console_caveats(result, 156),
             *textwrap.wrap(provenance_line(result["provenance"], result["n_text"]), 156),
             *textwrap.wrap(result["data_line"], 156),
             f"mean over seeds ± half-width of its {stats.CI_LEVEL:.0%} t interval (the value alone when n = 1); "
             "mCE: lower is better"]
    head = " " * (lw + 5) + "".join(f"{LABELS[m]:>{w}}" for m in CONSOLE)
    for g in result["groups"]:
        lines += ["", GROUP_TITLES.get(g["group"], f"ablation {g['group']}")
                  + f" — {_baseline_text(g)}", head]
        for a in g["arms"]:
            row = [_cell(cells, g["group"], a["arm"], m) for m in CONSOLE]
            lines.append(f"{a['label'][:lw - 1]:<{lw}}{'n=' + str(row[0]['n']):<5}"
                         + "".join(f"{plus_minus(c, 3) if c['n'] else MISSING:>{w}}" for c in row))
        gp = pairs[(pairs["group"] == g["group"]) & (pairs["family"] == "accuracy")]
        if gp.empty:
            continue
        what = PAIR_TITLES.get(g["group"], "setting − one-hot")
        lines += [""] + textwrap.wrap(f"{what}, paired by seed: Δ (* = Holm-adjusted p < {stats.ALPHA:g} over "
                                      f"{len(gp)}), second line ± half-width of the {stats.CI_LEVEL:.0%} t interval. "
                                      f"{pair_text(gp)}.", 156) + [head]
        for a, b in g["pairs"]:
            pr = {r["metric"]: r for r in gp[(gp["baseline"] == a) & (gp["arm"] == b)].to_dict("records")}
            label = (f"{arm_name(b)} − {arm_name(a)}" if g["group"] in ("table2", FT_GROUP)
                     else next(x["label"] for x in g["arms"] if x["arm"] == b))
            ns = sorted({int(r["n"]) for r in pr.values()})
            lines.append(f"{label[:lw - 1]:<{lw}}{'n=' + '/'.join(map(str, ns)):<5}"
                         + "".join(f"{fmt(pr[m]['diff'], 3, True) + pr[m]['mark']:>{w}}" for m in CONSOLE))
            half = ["n<2" if not math.isfinite(pr[m]["ci_low"]) else "no spread" if pr[m]["no_spread"]
                    else "±" + fmt((pr[m]["ci_high"] - pr[m]["ci_low"]) / 2, 3) for m in CONSOLE]
            lines.append(f"{'':<{lw + 5}}" + "".join(f"{h:>{w}}" for h in half))
    if result["gaps"]:
        lines += ["", f"Gaps ({len(result['gaps'])}):"] + [
            f"  {g['group']} {g['arm']} seed {g['seed']} {g['run_name'] or '(no run)'}: {g['status']} — "
            f"{g['error'] or 'no error tag'}" for g in result["gaps"]]
    lines += [f"note: {n}" for n in provenance_warnings(result["provenance"]) + result["notes"]]
    logged = " (also logged to the parent run under analysis/)" if result["logged"] else ""
    lines += ["", f"Files{logged}:"] + [f"  {p}" for p in result["files"].values()]
    return "\n".join(lines)


# --- figure ----------------------------------------------------------------------------------------------
def severity_plot(result: dict, path: Path) -> Path:
    """Accuracy against severity (0 = clean, then the benchmark corruptions present at 1..5), one line
    per arm, one panel per group; error bars: the 95 % t interval of the mean over seeds."""
    cells, groups = result["cells"], result["groups"]
    fig = new_figure(figsize=(max(8.0, 6.5 * len(groups)), 5.6))
    xs = [0, *SEVERITIES]
    for i, g in enumerate(groups):
        ax = fig.add_subplot(1, len(groups), i + 1)
        for k, a in enumerate(g["arms"]):
            cs = [_cell(cells, g["group"], a["arm"], m) for m in ("clean", *[f"sev{s}" for s in SEVERITIES])]
            if not cs[0]["n"]:
                continue
            ys = [c["mean"] for c in cs]
            err = [0.0 if not math.isfinite(c["ci_low"]) else (c["ci_high"] - c["ci_low"]) / 2 for c in cs]
            if g["group"] in ("table2", FT_GROUP):
                style = {"color": t2.TRAIN_SET_COLORS[t2.STRATEGY_ROWS[a["arm"] % FT_ARM][0]],
                         "ls": ":" if a["arm"] > FT_ARM else "-" if a["regularization"] == "iqa_ls" else "--"}
            else:
                style = {"color": f"C{k % 10}", "ls": "--" if a["regularization"] == "onehot" else "-"}
            ax.errorbar(xs, ys, yerr=err, marker="o", ms=3.5, capsize=2.5, lw=1.2, label=a["label"], **style)
        ax.set_xticks(xs, ["clean", *map(str, SEVERITIES)])
        ax.set_xlabel("severity (benchmark corruptions present, mean)")
        if i == 0:
            ax.set_ylabel("top-1 accuracy")
        ax.set_title({"table2": "Table 2 strategies (solid: IQA-LS, dashed: Original)",
                      FT_GROUP: "fine-tune protocol (dotted: fine-tuned, solid: IQA-LS, dashed: "
                                "Original)"}.get(
                          g["group"], f"ablation {g['group']} (dashed: one-hot)"), fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(titled(f"CIFAR-10-C: accuracy against severity ({result['n_text']}; error bars: 95% t interval over "
                        "seeds)", result["plot_caveats"], "\n"), fontsize=10)
    width = int(fig.get_figwidth() * 17)
    fig.text(0.01, 0.01, textwrap.fill(provenance_line(result["provenance"], result["n_text"]) + " · "
                                       + result["data_line"], width), fontsize=6.5, va="bottom")
    fig.subplots_adjust(left=0.7 / fig.get_figwidth(), right=0.98, top=title_top(fig, 0.9), bottom=0.24, wspace=0.2)
    return save_figure(fig, path)


# --- the pipeline ----------------------------------------------------------------------------------------
def build_cifar10c(study: str | None = None, parent_run_id: str | None = None,
                   tracking_uri: str = DEFAULT_TRACKING_URI, experiment: str = DEFAULT_EXPERIMENT,
                   out_dir: str | Path | None = None, log_to_parent: bool = True) -> dict:
    """Read the study, write the CIFAR-10-C files to `out_dir` (default results/<study>) and, with
    `log_to_parent`, log them to the parent run under `analysis/`. Returns the frames and paths."""
    client, parent, trials = read_study(tracking_uri, experiment, study, parent_run_id)
    check_kind(parent, "analysis.cifar10c")
    kind = parent.data.tags.get(TAG_KIND) or "table2"
    seeds = planned_seeds(parent.data.tags.get(TAG_SEEDS))
    strategies = t2.planned_strategies(parent.data.tags.get(TAG_STRATEGIES))
    groups, gaps, notes = arms_of(trials, kind, seeds, strategies)
    runs = [t for g in groups for a in g["arms"] for t in a["runs"]]
    docs = download_json(client, [t.run_id for t in runs], ARTIFACT)
    chosen_key, doc = choose_evaluation(groups, docs, notes)
    if chosen_key is None:
        raise AnalysisError(f"no run of study {parent.data.tags.get(TAG_STUDY)!r} has CIFAR-10-C results; "
                            "run python -m study.cifar10c --study NAME (or a study with --cifar10c)")
    cells, corr, pairs, per_arm, not_evaluated = compute(groups, docs, chosen_key)
    result, out = new_result(parent, trials, tracking_uri, experiment, out_dir, groups=groups, cells=cells,
                             corruptions=corr, pairs=pairs, gaps=gaps + not_evaluated, notes=notes,
                             n_text=n_text(cells, seeds), data_line=data_line(doc), artifact=doc)
    clean = cells[cells["metric"] == "clean"]
    cav = result["caveats"] = result["caveats"] + [
        c for c in [n_caveat(parent.data.tags.get(TAG_PRESET), clean["n"])] if c]
    accs = cells[cells["metric"].isin(("clean", "mean_corrupted"))]["mean"]
    result["plot_caveats"] = cav + [c for c in [near_chance(accs)] if c]
    files = {"cifar10c.csv": write_csv(cells, out / "cifar10c.csv", cav),
             "cifar10c.parquet": write_parquet(cells, out / "cifar10c.parquet", cav),
             "cifar10c_corruptions.csv": write_csv(corr, out / "cifar10c_corruptions.csv", cav),
             "cifar10c_corruptions.parquet": write_parquet(corr, out / "cifar10c_corruptions.parquet", cav),
             "cifar10c_pairs.csv": write_csv(pairs, out / "cifar10c_pairs.csv", cav)}
    rb = {"study": result["study"], "caveat": caveat_text(cav),
          "provenance": provenance_line(result["provenance"], result["n_text"]),
          "data": result["data_line"],
          "arms": robustbench(groups, per_arm, result["data_line"])}
    files["cifar10c_robustbench.json"] = write_text(out / "cifar10c_robustbench.json",
                                                    json.dumps(rb, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    files["cifar10c_severity.png"] = severity_plot(result, out / "cifar10c_severity.png")
    files["cifar10c.tex"] = write_text(out / "cifar10c.tex", format_tex(result))
    files["cifar10c.md"] = out / "cifar10c.md"
    result["files"] = files
    write_text(files["cifar10c.md"], format_markdown(result))
    return log_outputs(client, parent, result, files.values(), log_to_parent)


def main(argv: list[str] | None = None) -> int:
    return study_main("python -m analysis.cifar10c", __doc__.split("\n\n")[0], build_cifar10c, format_console, argv)


if __name__ == "__main__":
    raise SystemExit(run_cli("cifar10c", main))
