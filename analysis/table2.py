"""Table 2 of the paper (Sec. 4.3, "Performance comparisons") regenerated from a recorded study, with
its calibration companions.

Reads the study's parent run and its child runs from MLflow (names: docs/mlflow-schema.md), puts the
mean over seeds of the ten test-set accuracies of strategies 1-9, with the 95 % t interval of that
mean, beside the paper's Table 2 (analysis/paper_table2.json, the single copy of the published
numbers), and compares each IQA-LS strategy with its "Original" twin (Sec. 4.3.3) PAIRED BY SEED
(both arms of a seed share the subset, the mixture draws, the batch order and the initial weights):
mean difference, 95 % t interval, n and the paired p value, Holm-adjusted over the table's 4 pairs x
10 test sets ("*" = adjusted p < 0.05); Welch's interval only where the arms share no seed, labelled
so (analysis/stats.py). A difference whose interval spans 0 is unresolved, whatever its sign.

The same layout for the expected calibration error (`ece_*`) and the negative log-likelihood
(`nll_*`) of every test set: `table2_ece.*`, `table2_nll.*` (no paper row: the paper reports accuracy
only). From the trials' `calibration.json` artifacts: reliability diagrams per test group and the
confidence against the test image's SSIM per strategy (analysis/calibration.py).

Launch: `python -m analysis.table2 --study NAME [--tracking-uri sqlite:///mlflow.db]
[--experiment iqa-ls] [--out results/NAME]` (or `--run-id PARENT_RUN_ID`). The study command calls
`build_table2(...)` and prints `format_console(result)`.

Only FINISHED child runs are results. A (strategy, seed) with no FINISHED run is a gap, listed with
its status and `iqa_ls.error`; a strategy without any FINISHED run shows "—" (NaN in the files). When
a (strategy, seed) has several FINISHED runs (a resumed study), the latest started one counts.

Outputs (in `out_dir`, and logged under `analysis/` of the parent run), for W in table2, table2_ece,
table2_nll:
- `W.md`        provenance line, ours [95 % CI] (n) / paper / Δ per strategy, the pairs, the gaps
- `W.tex`       the same cells as a booktabs table (± = half-width of the 95 % interval)
- `W.csv`, `W.parquet`  the same LONG frame, one row per strategy × test set, columns strategy,
  regularization, train_set, test_set, mean, ci_low, ci_high, std, n (accuracy also paper, diff =
  mean − paper)
- `W_pairs.csv` long, one row per pair × test set: original, iqa_ls, train_set, test_set, diff
  (= IQA-LS − Original), ci_low, ci_high, p, p_holm, mark, method, df, n, n_a, n_b, no_spread
  (accuracy also paper_diff)
- `table2_heatmap.png` (our mean accuracy), `table2_diff_vs_paper.png` (ours − paper),
  `table2_reliability.png`, `table2_confidence_quality.png`
Nothing written depends on the clock, so the same runs give the same bytes.

What the numbers are (analysis.common, "what a table is"): a pipeline check (preset smoke), cells of fewer
than 2 seeds and a study still running are said in the title of every file (Markdown heading, LaTeX
caption, figure title and PNG Title chunk) and in the last column `caveat` of every CSV and Parquet frame
(empty for a result); figures of accuracies near chance say so too. A study still running (parent run
RUNNING) is written to `out_dir` only, never logged to its live parent run; a study of another kind
(parent tag iqa_ls.kind) is refused before anything is written.
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
from analysis.common import (MISSING, TEST_SET_LABELS, TrialRecord, check_kind, download_json, fmt, interval_text,
                             console_caveats, header_lines, legend_line, log_outputs, n_caveat, near_chance, new_figure,
                             new_result, plus_minus, protocol_of, provenance_line, provenance_warnings, read_study,
                             run_cli,
                             save_figure, study_main, titled, write_csv, write_parquet, write_text)
from analysis.schema import (DEFAULT_EXPERIMENT, DEFAULT_TRACKING_URI, TAG_ERROR, TAG_PRESET, TAG_REGULARIZATION,
                             TAG_SEED, TAG_SEEDS, TAG_STRATEGIES, TAG_STRATEGY, TAG_TRAIN_SET, TEST_SETS,
                             AnalysisError, planned_seeds)

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
CI_LEVEL = stats.CI_LEVEL
# The tables: what (the metric family, metric = "<what>_<test set>"), file stem, title, and whether the
# paper has numbers for it (accuracy only). ECE and NLL: lower is better.
FAMILIES: dict[str, dict] = {
    "acc": {"stem": "table2", "title": "top-1 accuracy", "paper": True, "better": "higher"},
    "ece": {"stem": "table2_ece", "title": "expected calibration error (15 equal-width bins, top-label)",
            "paper": False, "better": "lower"},
    "nll": {"stem": "table2_nll", "title": "negative log-likelihood of the true class (nats)",
            "paper": False, "better": "lower"},
}
TRAIN_SET_COLORS = {"pristine": "black", "mix_blur": "tab:blue", "mix_noise": "tab:orange",
                    "mix_jpeg": "tab:green", "mix_all3": "tab:red"}


def load_paper(path: Path = PAPER_JSON) -> dict[int, dict[str, float]]:
    """The paper's Table 2: strategy -> test set -> accuracy."""
    data = json.loads(path.read_text())
    if tuple(data["columns"]) != TEST_SETS:
        raise AnalysisError(f"{path}: columns {data['columns']} are not the test sets {list(TEST_SETS)}")
    return {int(s): dict(zip(TEST_SETS, map(float, row))) for s, row in data["rows"].items()}


def row_labels(strategy: int) -> tuple[str, str]:
    train_set, reg = STRATEGY_ROWS[strategy]
    return REGULARIZATION_LABELS[reg], TRAIN_SET_LABELS[train_set]


def planned_strategies(text: str | None) -> list[int]:
    """The Table 2 rows the study planned (parent tag `iqa_ls.strategies`, "1,8,9"); all nine when the tag
    is absent (studies recorded before --strategies) or unreadable."""
    try:
        chosen = sorted({int(v) for v in (text or "").split(",") if v.strip()})
    except ValueError:
        chosen = []
    return [s for s in chosen if s in STRATEGY_ROWS] or list(STRATEGY_ROWS)


def pairs_of(strategies) -> list[tuple[int, int]]:
    """The IQA-LS − Original pairs (PAIRS) whose two strategies the study planned."""
    return [(a, b) for a, b in PAIRS if a in strategies and b in strategies]


def select_trials(trials: list[TrialRecord], seeds: list[int], strategies=tuple(STRATEGY_ROWS)):
    """Per strategy the FINISHED run of each seed (latest started wins), the gaps, and notes; a planned
    (strategy, seed) without any run is a MISSING gap. Callers pass the runs of one protocol."""
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
    for s in strategies:
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


def compute(trials: list[TrialRecord], seeds: list[int], paper: dict[int, dict[str, float]],
            what: str = "acc", strategies=tuple(STRATEGY_ROWS)):
    """The long cells frame, the pairs frame, the gaps frame and notes of metric family `what`
    (pure: no MLflow, no files). Cells: the mean over seeds with its t interval; pairs: IQA-LS −
    Original paired by seed (analysis/stats.py), Holm-adjusted over the table's comparisons (4 pairs x
    10 test sets when every strategy is planned). `trials`: the runs trained from scratch."""
    selected, gaps, notes = select_trials(trials, seeds, strategies)
    with_paper = FAMILIES[what]["paper"]
    values = {(s, ts): {t.tag_int(TAG_SEED): t.metrics.get(f"{what}_{ts}", math.nan) for t in selected[s]}
              for s in STRATEGY_ROWS for ts in TEST_SETS}
    rows = []
    for s in STRATEGY_ROWS:
        reg, train = row_labels(s)
        for ts in TEST_SETS:
            c = stats.mean_ci(list(values[s, ts].values()))
            row = {"strategy": s, "regularization": reg, "train_set": train, "test_set": ts, **c}
            if with_paper:
                row.update(paper=paper[s][ts], diff=c["mean"] - paper[s][ts])
            rows.append(row)
    cols = ["strategy", "regularization", "train_set", "test_set", "mean", "ci_low", "ci_high", "std", "n"]
    cells = pd.DataFrame(rows, columns=cols + (["paper", "diff"] if with_paper else []))
    cells = cells.astype({"strategy": "int64", "n": "int64"})
    pair_rows = []
    for a, b in pairs_of(strategies):
        for ts in TEST_SETS:
            c = stats.compare(values[a, ts], values[b, ts], CI_LEVEL)
            row = {"original": a, "iqa_ls": b, "train_set": row_labels(b)[1], "test_set": ts,
                   **{k: c[k] for k in ("diff", "ci_low", "ci_high", "p", "method", "df", "n", "n_a", "n_b")},
                   "no_spread": bool(c.get("no_spread", False))}
            if with_paper:
                row["paper_diff"] = paper[b][ts] - paper[a][ts]
            pair_rows.append(row)
    pair_rows = stats.with_holm(pair_rows)
    pcols = ["original", "iqa_ls", "train_set", "test_set", "diff", "ci_low", "ci_high", "p", "p_holm", "mark",
             "method", "df", "n", "n_a", "n_b", "no_spread"] + (["paper_diff"] if with_paper else [])
    pairs = pd.DataFrame(pair_rows, columns=pcols).astype(
        {"original": "int64", "iqa_ls": "int64", "n": "int64", "n_a": "int64", "n_b": "int64"})
    return cells, pairs, gaps, notes


# --- the fine-tune protocol (docs/paper-mapping.md: the introduction's reading) ----------------------------
# A fine-tuned IQA-LS strategy b ("9ft") started from the final weights of its Original a of the same seed
# and trained F epochs more. It is compared, paired by seed, with: its parent (the Original: the
# introduction's "first train ... then fine-tune"), the Original continued one-hot for the same F epochs
# ("8ft", the epochs control, when the study ran it), and IQA-LS trained from scratch (the other reading).
FT_REFERENCES = (("parent", "Original (its parent, E epochs)"),
                 ("continued", "Original continued one-hot as long (E + F epochs: the epochs control)"),
                 ("scratch", "IQA-LS from scratch (Sec. 4.3.3's reading)"))


def ft_arm(s: int) -> str:
    """The label of a fine-tuned arm: "9ft" (an Original's, "8ft", is its one-hot continuation)."""
    return f"{s}ft"


def compute_finetune(scratch: dict[int, list[TrialRecord]], tuned: dict[int, list[TrialRecord]],
                     what: str = "acc"):
    """Cells of the fine-tuned arms and the fine-tune pairs (FT_REFERENCES) of metric family `what`, paired
    by seed, Holm-adjusted over the frame's comparisons. `scratch` / `tuned`: per strategy the selected
    FINISHED runs of each protocol (select_trials)."""
    def values(sel, s, ts):
        return {t.tag_int(TAG_SEED): t.metrics.get(f"{what}_{ts}", math.nan) for t in sel.get(s, [])}
    rows = []
    for s in STRATEGY_ROWS:
        if tuned.get(s):
            reg, train = row_labels(s)
            rows += [{"arm": ft_arm(s), "strategy": s, "regularization": reg, "train_set": train,
                      "test_set": ts, **stats.mean_ci(list(values(tuned, s, ts).values()))}
                     for ts in TEST_SETS]
    cells = pd.DataFrame(rows, columns=["arm", "strategy", "regularization", "train_set", "test_set", "mean",
                                        "ci_low", "ci_high", "std", "n"])
    pair_rows = []
    for a, b in PAIRS:
        if not tuned.get(b):
            continue
        refs = {"parent": (scratch, a, str(a)), "continued": (tuned, a, ft_arm(a)),
                "scratch": (scratch, b, str(b))}
        for ref, _ in FT_REFERENCES:
            sel, s, label = refs[ref]
            if not sel.get(s):
                continue
            for ts in TEST_SETS:
                c = stats.compare(values(sel, s, ts), values(tuned, b, ts), CI_LEVEL)
                keep = ("diff", "ci_low", "ci_high", "p", "method", "df", "n", "n_a", "n_b")
                pair_rows.append({"reference": ref, "baseline": label, "arm": ft_arm(b),
                                  "train_set": row_labels(b)[1], "test_set": ts, **{k: c[k] for k in keep},
                                  "no_spread": bool(c.get("no_spread", False))})
    pair_rows = stats.with_holm(pair_rows)
    pcols = ["reference", "baseline", "arm", "train_set", "test_set", "diff", "ci_low", "ci_high", "p",
             "p_holm", "mark", "method", "df", "n", "n_a", "n_b", "no_spread"]
    return cells, pd.DataFrame(pair_rows, columns=pcols)


def finetune_markdown(result: dict) -> str:
    """The fine-tune protocol's page (table2_finetune.md): the fine-tuned arms and their pairs, per family."""
    ft = result["finetune"]
    labels = [TEST_SET_LABELS[x] for x in TEST_SETS]
    out = [titled(f"# Table 2, fine-tune protocol — study `{result['study']}`", result["caveats"]), "",
           f"_{provenance_line(result['provenance'], result['n_text'])}_", "", *header_lines(result),
           f"Parent run `{result['parent_run_id']}`. An arm `Nft` started from the final weights of the "
           "Original of its training set and seed (E epochs) and trained F epochs more "
           "(docs/paper-mapping.md, \"IQA-LS from scratch or as fine-tuning\"): `9ft` = IQA-LS fine-tuned, "
           "`8ft` = the Original continued one-hot as long (the epochs control). Pairs are paired by seed "
           f"with the 95 % t interval; * = Holm-adjusted p < {stats.ALPHA:g} within each table. An interval "
           "that spans 0 is unresolved.", "", legend_line(), ""]
    for what, fam in FAMILIES.items():
        cells, pairs = ft[what]["cells"], ft[what]["pairs"]
        out += [f"## {fam['title'].capitalize()} ({fam['better']} is better)", "",
                "| Arm | Regularization | Training set | n | " + " | ".join(labels) + " |",
                "|---|---|---|---:|" + "---:|" * len(labels)]
        for arm in dict.fromkeys(cells["arm"]):
            rows = cells[cells["arm"] == arm]
            r0 = rows.iloc[0]
            out.append(f"| {arm} | {r0['regularization']} | {r0['train_set']} | {int(rows['n'].max())} | "
                       + " | ".join(_ours(r, 4) for _, r in rows.iterrows()) + " |")
        if not pairs.empty:
            out += ["", f"Summary: {summary_text(pairs)}.", "",
                    "| Pair | vs | n | " + " | ".join(labels) + " |",
                    "|---|---|---:|" + "---:|" * len(labels)]
            for (ref, base, arm), prs in pairs.groupby(["reference", "baseline", "arm"], sort=False):
                n = "/".join(map(str, sorted(set(prs["n"].tolist()))))
                out.append(f"| {arm} − {base} | {dict(FT_REFERENCES)[ref]} | {n} | "
                           + " | ".join(interval_text(p, 4, signed=True) for _, p in prs.iterrows()) + " |")
        out.append("")
    return "\n".join(out)


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


def summary_text(pairs: pd.DataFrame) -> str:
    return stats.tally_text(pairs.to_dict("records"))


# --- text outputs ------------------------------------------------------------------------------------
def _cell(cells: pd.DataFrame, s: int, ts: str) -> pd.Series:
    return cells.iloc[(s - 1) * len(TEST_SETS) + TEST_SETS.index(ts)]


def _ours(c: pd.Series, digits: int) -> str:
    if c["n"] == 0:
        return MISSING
    return interval_text(c, digits)


def format_markdown(result: dict, what: str = "acc") -> str:
    fam = FAMILIES[what]
    t = result["tables"][what]
    cells, pairs, gaps = t["cells"], t["pairs"], result["gaps"]
    labels = [TEST_SET_LABELS[x] for x in TEST_SETS]
    title = "ours vs the paper" if fam["paper"] else f"{fam['title']} ({fam['better']} is better)"
    out = [titled(f"# Table 2{'' if what == 'acc' else ' — ' + what.upper()} — study `{result['study']}`, {title}",
                  result["caveats"]), "",
           f"_{provenance_line(result['provenance'], result['n_text'])}_", "", *header_lines(result),
           f"Parent run `{result['parent_run_id']}` in experiment `{result['experiment']}`. {fam['title'].capitalize()} "
           f"on the CIFAR-10 test sets (Sec. 4.3, Table 2). ours: mean over the n finished seeds with the "
           f"{CI_LEVEL:.0%} t interval of the mean in brackets (no interval when n = 1)"
           + ("; paper: Table 2 as published; Δ = ours − paper." if fam["paper"] else "."), "", legend_line(), ""]
    notes = provenance_warnings(result["provenance"]) + result["notes"]
    out += [f"- note: {w}" for w in notes] + ([""] if notes else [])
    out += ["| Strategy | Regularization | Training set | | " + " | ".join(labels) + " |",
            "|---:|---|---|---|" + "---:|" * len(labels)]
    for s in result["strategies"]:
        reg, train = row_labels(s)
        row = [_cell(cells, s, ts) for ts in TEST_SETS]
        out.append(f"| {s} | {reg} | {train} | ours | " + " | ".join(_ours(c, 4) for c in row) + " |")
        if fam["paper"]:
            out.append("| | | | paper | " + " | ".join(fmt(c["paper"], 3) for c in row) + " |")
            out.append("| | | | Δ | " + " | ".join(fmt(c["diff"], 4, True) for c in row) + " |")
    out += ["", "## IQA-LS − Original (Sec. 4.3.3), paired by seed", "",
            f"IQA-LS strategy minus its Original twin, seed by seed over the seeds both finished (same subset, "
            f"mixture draws, batch order and initial weights), then the mean difference with its {CI_LEVEL:.0%} "
            f"t interval; * = Holm-adjusted p < {stats.ALPHA:g} over the {len(pairs)} comparisons of this table. "
            "An interval that spans 0 is unresolved, whatever its sign; '(n < 2)': fewer than 2 paired seeds, no "
            "interval; '(Welch)': the arms share no seed, unpaired interval."
            + (" paper: the same difference in the published Table 2." if fam["paper"] else ""), "",
            f"Summary: {summary_text(pairs)}.", "",
            "| Pair | Training set | | n | " + " | ".join(labels) + " |", "|---|---|---|---:|" + "---:|" * len(labels)]
    for a, b in pairs_of(result["strategies"]):
        prs = pairs[(pairs["original"] == a) & (pairs["iqa_ls"] == b)]
        n = sorted(set(prs["n"].tolist()))
        out.append(f"| {b} − {a} | {row_labels(b)[1]} | ours | {'/'.join(map(str, n))} | "
                   + " | ".join(interval_text(p, 4, signed=True) for _, p in prs.iterrows()) + " |")
        if fam["paper"]:
            out.append("| | | paper | | " + " | ".join(fmt(p["paper_diff"], 3, True) for _, p in prs.iterrows())
                       + " |")
    out += ["", "## Gaps", ""]
    if gaps.empty:
        out.append("None: every planned (strategy, seed) has a FINISHED run.")
    for _, g in gaps.iterrows():
        name = f" `{g['run_name']}`" if g["run_name"] else ""
        out.append(f"- strategy {g['strategy']}, seed {g['seed']}:{name} {g['status']} — "
                   f"{g['error'] or 'no error tag'}")
    stem = fam["stem"]
    out += ["", "## Files", "",
            f"- `{stem}.csv`, `{stem}.parquet`: the same long frame, one row per strategy × test set "
            "(strategy, regularization, train_set, test_set, mean, ci_low, ci_high, std, n"
            + (", paper, diff = mean − paper" if fam["paper"] else "") + ").",
            f"- `{stem}_pairs.csv`: one row per pair × test set (original, iqa_ls, train_set, test_set, diff = "
            "IQA-LS − Original, ci_low, ci_high, p, p_holm, mark, method, df, n, n_a, n_b, no_spread"
            + (", paper_diff" if fam["paper"] else "") + ").",
            f"- `{stem}.tex`" + (", `table2_heatmap.png`, `table2_diff_vs_paper.png`" if fam["paper"] else "")
            + ": the same numbers.",
            "- companions: " + ", ".join(f"`{FAMILIES[w]['stem']}.md` ({w.upper()})" for w in FAMILIES if w != what)
            + "; `table2_reliability.png`, `table2_confidence_quality.png` (from the runs' calibration.json).", ""]
    return "\n".join(out)


def _tex_escape(text: str) -> str:
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(repl.get(ch, ch) for ch in text)


def _tex_caveats(caveats) -> str:
    """The caption's first words: the caveats, bold, each closed by a full stop."""
    return "".join(r"\textbf{" + _tex_escape(c[0].upper() + c[1:]) + ".} " for c in caveats)


def _tex_train(train: str) -> str:
    return train.replace("MIX_", r"MIX$_{") + "}$" if train.startswith("MIX_") else train


def _tex_num(x: float, digits: int, signed: bool = False) -> str:
    return "--" if not math.isfinite(x) else f"${fmt(x, digits, signed)}$"


def format_tex(result: dict, what: str = "acc") -> str:
    fam = FAMILIES[what]
    cells = result["tables"][what]["cells"]
    prov = _tex_escape(provenance_line(result["provenance"], result["n_text"]).replace("·", ";"))
    out = [f"% Table 2 ({what}) regenerated from MLflow study {_tex_escape(result['study'])} "
           f"(parent run {result['parent_run_id']}); requires booktabs.",
           *[f"% {_tex_escape(c)}" for c in result["caveats"]],
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
        ours = ["--" if c["n"] == 0 else "$" + plus_minus(c, 3).replace("±", r" \pm ") + "$" for c in row]
        out.append(f"{s} & {reg} & {_tex_train(train)} & ours & " + " & ".join(ours) + r" \\")
        if fam["paper"]:
            out.append(r" & & & paper & " + " & ".join(_tex_num(c["paper"], 3) for c in row) + r" \\")
            out.append(r" & & & $\Delta$ & " + " & ".join(_tex_num(c["diff"], 3, True) for c in row) + r" \\")
        out.append(r"\midrule" if s != max(STRATEGY_ROWS) else r"\bottomrule")
    out += [r"\end{tabular}",
            r"\caption{" + _tex_caveats(result["caveats"]) + _tex_escape(fam["title"].capitalize()) + r" of strategies 1--9 (Table 2): ours (mean "
            r"over seeds $\pm$ half-width of the 95\,\% t interval of the mean)"
            + (r", the paper's value, and $\Delta$ = ours $-$ paper. " if fam["paper"] else ". ") + prov + "}",
            r"\label{tab:" + fam["stem"].replace("_", "-") + "-" + _tex_escape(result["study"]).replace("\\", "") + "}",
            r"\end{table*}", ""]
    return "\n".join(out)


def format_console(result: dict) -> str:
    """Compact Table 2 (ours / paper / Δ per strategy, ≤ 160 columns), the pairs with their intervals
    and Holm marks, the ECE and NLL pairs, the files written."""
    t = result["tables"]["acc"]
    cells, gaps = t["cells"], result["gaps"]
    w, lw = 12, 21  # cell width; width of "9 Original MIX_noise "
    head = " " * (lw + 10) + "".join(f"{TEST_SET_LABELS[x]:>{w}}" for x in TEST_SETS)
    lines = [f"Table 2, study {result['study']} (parent run {result['parent_run_id']})",
             *console_caveats(result, 156), textwrap.fill(provenance_line(result["provenance"], result["n_text"]), 156),
             f"ours: mean over seeds ± half-width of its {CI_LEVEL:.0%} t interval (the value alone when n = 1)", head]
    for s in result["strategies"]:
        reg, train = row_labels(s)
        row = [_cell(cells, s, ts) for ts in TEST_SETS]
        ns = sorted({int(c["n"]) for c in row})
        n = f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}-{ns[-1]}"
        lines.append(f"{f'{s} {reg} {train}':<{lw}}{'ours ' + n:<10}" + "".join(f"{plus_minus(c, 3):>{w}}" for c in row))
        lines.append(f"{'':<{lw}}{'paper':<10}" + "".join(f"{fmt(c['paper'], 3):>{w}}" for c in row))
        lines.append(f"{'':<{lw}}{'Δ':<10}" + "".join(f"{fmt(c['diff'], 3, True):>{w}}" for c in row))
    for what, fam in FAMILIES.items():
        pairs = result["tables"][what]["pairs"]
        lines += [""] + textwrap.wrap(
            f"IQA-LS − Original, {fam['title']} ({fam['better']} is better), paired by seed: Δ of the means "
            f"(* = Holm-adjusted p < {stats.ALPHA:g} over {len(pairs)}), ± half-width of the {CI_LEVEL:.0%} t "
            f"interval. {summary_text(pairs)}.", 156) + [head]
        for a, b in pairs_of(result["strategies"]):
            prs = [p for _, p in pairs[(pairs["original"] == a) & (pairs["iqa_ls"] == b)].iterrows()]
            half = ["n<2" if not math.isfinite(p["ci_low"]) else "no spread" if p["no_spread"]
                    else "±" + fmt((p["ci_high"] - p["ci_low"]) / 2, 3) for p in prs]
            lines.append(f"{f'{b} − {a} {row_labels(b)[1]}':<{lw}}{'ours Δ':<10}"
                         + "".join(f"{fmt(p['diff'], 3, True) + p['mark']:>{w}}" for p in prs))
            lines.append(f"{'':<{lw}}{'95% CI':<10}" + "".join(f"{h:>{w}}" for h in half))
            if fam["paper"]:
                lines.append(f"{'':<{lw}}{'paper Δ':<10}" + "".join(f"{fmt(p['paper_diff'], 3, True):>{w}}" for p in prs))
    ft = result.get("finetune")
    if ft is not None:
        cells_ft, pairs = ft["acc"]["cells"], ft["acc"]["pairs"]
        lines += [""] + textwrap.wrap(
            "Fine-tune protocol (the introduction's reading): Nft = strategy N started from the final "
            "weights of its Original (same seed) and trained F epochs more; an Original's Nft (e.g. 8ft) "
            "is its one-hot continuation, the epochs control", 156) + [head]
        for arm in dict.fromkeys(cells_ft["arm"]):
            rows = [r for _, r in cells_ft[cells_ft["arm"] == arm].iterrows()]
            label = f"{arm} {rows[0]['regularization']}"
            lines.append(f"{label:<{lw}}{'ours n=' + str(int(max(r['n'] for r in rows))):<10}"
                         + "".join(f"{plus_minus(r, 3):>{w}}" for r in rows))
        if not pairs.empty:
            lines += [""] + textwrap.wrap(
                f"Fine-tuned IQA-LS − reference, top-1 accuracy, paired by seed: Δ of the means (* = "
                f"Holm-adjusted p < {stats.ALPHA:g} over {len(pairs)}), ± half-width of the {CI_LEVEL:.0%} t "
                "interval. "
                f"{summary_text(pairs)}.", 156) + [head]
            for (ref, base, arm), prs in pairs.groupby(["reference", "baseline", "arm"], sort=False):
                prs = [p for _, p in prs.iterrows()]
                half = ["n<2" if not math.isfinite(p["ci_low"]) else "no spread" if p["no_spread"]
                        else "±" + fmt((p["ci_high"] - p["ci_low"]) / 2, 3) for p in prs]
                lines.append(f"{f'{arm} − {base} ({ref})':<{lw + 10}}"
                             + "".join(f"{fmt(p['diff'], 3, True) + p['mark']:>{w}}" for p in prs))
                lines.append(f"{'':<{lw}}{'95% CI':<10}" + "".join(f"{h:>{w}}" for h in half))
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


COMPACT_GROUPS = (("all 10 sets", TEST_SETS), ("Pristine", ("pristine",)),
                  *((f"{t.capitalize() if t != 'jpeg' else 'JPEG'} L1-3", tuple(x for x in TEST_SETS if x.startswith(t)))
                    for t in ("blur", "noise", "jpeg")))


def format_compact(result: dict) -> str:
    """Table 2 for a person (<= 120 characters a line): per strategy the mean accuracy over all 10
    test sets (acc_mean_all), the pristine set and each distortion's three levels, ours beside the
    paper's; per IQA-LS strategy its paired difference to its Original over the 10 sets and how many
    of them are resolved; a one-line legend, the verdict line (the tally of every comparison), gaps
    and notes in one line each, and where the files are. `format_console` (--verbose) and the files
    hold every test set, the intervals, the ECE and NLL tables."""
    t = result["tables"]["acc"]
    cells, pairs, gaps = t["cells"], t["pairs"], result["gaps"]
    lw, gw = 20, 14  # the label's width ("9 IQA-LS MIX_noise "), a group's ("  0.102  0.794")
    lines = [f"Table 2, study {result['study']}: top-1 accuracy, ours beside the paper ({result['n_text']})",
             f"{'':<{lw}}{'':>3}" + "".join(f"{g:>{gw}}" for g, _ in COMPACT_GROUPS) + "  IQA-LS − Original",
             f"{'Strategy':<{lw}}{'n':>3}" + f"{'ours  paper':>{gw}}" * len(COMPACT_GROUPS) + "  Δ all 10  resolved"]
    by_b = {b: pairs[pairs["iqa_ls"] == b] for _, b in pairs_of(result["strategies"])}
    for s in result["strategies"]:
        reg, train = row_labels(s)
        mine = cells[cells["strategy"] == s]
        row = f"{f'{s} {reg} {train}':<{lw}}{int(mine['n'].max()):>3}"
        for _, sets in COMPACT_GROUPS:
            g = mine[mine["test_set"].isin(sets)]
            ours = g["mean"].mean() if g["n"].min() > 0 else math.nan
            row += f"{fmt(ours, 3):>{gw - 7}}{fmt(g['paper'].mean(), 3):>7}"
        prs = by_b.get(s)
        if prs is not None and not prs.empty:
            tl = stats.tally(prs.to_dict("records"))
            done = tl["total"] - tl["no_ci"] - tl["no_spread"]
            resolved = (f"{tl['higher']}+ {tl['lower']}- /{tl['total']}" if done else "n<2")
            row += f"{fmt(prs['diff'].mean(), 3, True):>10}  {resolved}" + (f" {tl['holm']}*" if tl["holm"] else "")
        lines.append(row.rstrip())
    lines.append(f"all 10 sets = acc_mean_all; L1-3: mean of 3 levels; resolved: 95% interval excludes 0 (+ higher, "
                 f"- lower); * Holm p<{stats.ALPHA:g}")
    tl = stats.tally(pairs.to_dict("records"))
    if tl["total"]:
        lines.append(f"verdict (IQA-LS − Original, {tl['total']} paired): {tl['higher']} resolved "
                     f"higher, {tl['lower']} lower, {tl['unresolved']} unresolved"
                     + (f", {tl['no_ci']} without interval (n<2)" if tl["no_ci"] else "")
                     + (f", {tl['no_spread']} no spread" if tl["no_spread"] else "") + f", {tl['holm']} Holm *")
    cut = [] if gaps.empty else [f"gaps ({len(gaps)}, see table2.md): " + "; ".join(
        f"{g['strategy']} seed {g['seed']} {g['status']}" for _, g in gaps.iterrows())]
    notes = provenance_warnings(result["provenance"]) + result["notes"]
    cut += [f"notes ({len(notes)}, see table2.md): {notes[0]}"] if notes else []
    lines += [line if len(line) <= 120 else line[:119] + "…" for line in cut]  # the rest is in table2.md
    if result.get("finetune") is not None:
        lines.append("fine-tune protocol: table2_finetune.md (or --verbose)")
    files = list(result["files"].values())
    folder = Path(files[0]).parent if files else result.get("out", "")
    logged = ", also on the parent run" if result["logged"] else ""
    lines.append(f"files: {folder}/ ({len(files)}: every test set and interval, ECE, NLL, plots{logged}; --verbose prints them)")
    return "\n".join(w for line in lines for w in (textwrap.wrap(line, 120, subsequent_indent="  ",
                                                              break_long_words=False) if len(line) > 120 else [line]))


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
    if not signed and finite.size:  # a narrow span (smoke: 0.10-0.17) would make a row look like a winner
        title += f"; colours span only {fmt(norm.vmin, 3)}–{fmt(norm.vmax, 3)}"
    fig = new_figure(figsize=(13, 6.5 + 0.25 * len(result["plot_caveats"])))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cm, norm=norm, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        text = MISSING if not math.isfinite(v) else fmt(v, 3, signed)
        dark = math.isfinite(v) and (abs(norm(v) - 0.5) > 0.3 if signed else norm(v) < 0.5)
        ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black")
    ax.set_xticks(range(len(TEST_SETS)), [TEST_SET_LABELS[t] for t in TEST_SETS])
    ax.set_yticks(range(len(STRATEGY_ROWS)), [f"{s} {' '.join(row_labels(s))}" for s in STRATEGY_ROWS])
    ax.set_title(titled(title, result["plot_caveats"], "\n"))
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.text(0.01, 0.01, textwrap.fill(provenance_line(result["provenance"], result["n_text"]), 170),
             fontsize=7, va="bottom")
    fig.subplots_adjust(left=0.17, right=0.97, top=0.92 - 0.03 * len(result["plot_caveats"]), bottom=0.15)
    return save_figure(fig, path)


def _series_label(s: int) -> str:
    reg, train = row_labels(s)
    return f"{s} {reg} {train}"


def _styles() -> dict[str, dict]:
    return {_series_label(s): {"color": TRAIN_SET_COLORS[STRATEGY_ROWS[s][0]],
                               "ls": "-" if STRATEGY_ROWS[s][1] == "iqa_ls" else "--"} for s in STRATEGY_ROWS}


def calibration_plots(result: dict, docs: dict[int, list[dict]], out: Path) -> dict[str, Path]:
    """The reliability diagrams per test group and the confidence against quality per training set,
    from the strategies' calibration artifacts (`docs`: strategy -> the runs' calibration.json)."""
    footer = provenance_line(result["provenance"], result["n_text"])
    series = {_series_label(s): docs.get(s, []) for s in STRATEGY_ROWS}
    rel = cal.reliability_plot(series, _styles(), titled(f"Reliability per test group (test sets pooled over their "
                               f"levels and the seeds; {result['n_text']}; solid: IQA-LS, dashed: Original)",
                               result["plot_caveats"], "\n"), footer,
                               out / "table2_reliability.png", new_figure, save_figure)
    panels: dict[str, dict] = {}
    for s, (train, _) in STRATEGY_ROWS.items():
        panels.setdefault(TRAIN_SET_LABELS[train], {})[_series_label(s)] = docs.get(s, [])
    # within a training set's panel: Original grey, IQA-LS blue (solid: confidence, dashed: accuracy)
    qstyles = {_series_label(s): {"color": "tab:blue" if reg == "iqa_ls" else "dimgray"}
               for s, (_, reg) in STRATEGY_ROWS.items()}
    qual = cal.quality_plot(panels, qstyles, titled("Confidence against quality: mean top-1 confidence (solid) and "
                            f"accuracy (dashed) per SSIM bin of the 9 distorted test sets ({result['n_text']}; grey: "
                            "Original, blue: IQA-LS)", result["plot_caveats"], "\n"), footer,
                            out / "table2_confidence_quality.png", new_figure, save_figure)
    return {"table2_reliability.png": rel, "table2_confidence_quality.png": qual}


# --- the pipeline --------------------------------------------------------------------------------------
def build_table2(study: str | None = None, parent_run_id: str | None = None,
                 tracking_uri: str = DEFAULT_TRACKING_URI, experiment: str = DEFAULT_EXPERIMENT,
                 out_dir: str | Path | None = None, log_to_parent: bool = True) -> dict:
    """Read the study, write the Table 2 files and their ECE / NLL companions to `out_dir` (default
    results/<study>) and, with `log_to_parent`, log them to the parent run under `analysis/`. Returns
    the frames and file paths."""
    client, parent, every = read_study(tracking_uri, experiment, study, parent_run_id)
    check_kind(parent, "analysis.table2")
    seeds = planned_seeds(parent.data.tags.get(TAG_SEEDS))
    strategies = planned_strategies(parent.data.tags.get(TAG_STRATEGIES))
    trials = [t for t in every if protocol_of(t) == "scratch"]  # Table 2 itself: trained from scratch
    tuned_runs = [t for t in every if protocol_of(t) == "finetune"]
    paper = load_paper()
    tables = {}
    for what in FAMILIES:
        cells, pairs, gaps, notes = compute(trials, seeds, paper, what, strategies)
        tables[what] = {"cells": cells, "pairs": pairs}
    finetune = None
    if tuned_runs:
        scratch_sel, _, _ = select_trials(trials, seeds, strategies)
        planned_ft = sorted({t.tag_int(TAG_STRATEGY) for t in tuned_runs} & set(STRATEGY_ROWS))
        tuned_sel, ft_gaps, ft_notes = select_trials(tuned_runs, seeds, planned_ft)
        notes += [f"fine-tune protocol: {n}" for n in ft_notes]
        ft_gaps["strategy"] = [ft_arm(s) if isinstance(s, int) else s for s in ft_gaps["strategy"]]
        gaps = pd.concat([gaps, ft_gaps], ignore_index=True) if not ft_gaps.empty else gaps
        finetune = {}
        for what in FAMILIES:
            c, p = compute_finetune(scratch_sel, tuned_sel, what)
            finetune[what] = {"cells": c, "pairs": p}
    cells = tables["acc"]["cells"]
    planned = cells[cells["strategy"].isin(strategies)]
    result, out = new_result(parent, trials, tracking_uri, experiment, out_dir, tables=tables, cells=cells,
                             pairs=tables["acc"]["pairs"], gaps=gaps, notes=notes,
                             n_text=n_text(planned, seeds), strategies=strategies, finetune=finetune)
    result["caveats"] += [c for c in [n_caveat(parent.data.tags.get(TAG_PRESET), planned["n"])] if c]
    # a figure of accuracies near chance says so (the tables' caveats, then this)
    result["plot_caveats"] = result["caveats"] + [c for c in [near_chance(planned["mean"])] if c]
    selected, _, _ = select_trials(trials, seeds)
    found = download_json(client, [t.run_id for runs in selected.values() for t in runs], cal.CALIBRATION_FILE)
    docs = {s: [found[t.run_id] for t in runs if t.run_id in found] for s, runs in selected.items()}
    if not any(docs.values()):
        notes.append(f"no run has a {cal.CALIBRATION_FILE} artifact (recorded before it existed?); the "
                     "calibration plots are empty")

    files = {}
    cav = result["caveats"]
    for what, fam in FAMILIES.items():
        stem, t = fam["stem"], tables[what]
        files[f"{stem}.md"] = write_text(out / f"{stem}.md", format_markdown(result, what))
        files[f"{stem}.csv"] = write_csv(t["cells"], out / f"{stem}.csv", cav)
        files[f"{stem}.tex"] = write_text(out / f"{stem}.tex", format_tex(result, what))
        files[f"{stem}.parquet"] = write_parquet(t["cells"], out / f"{stem}.parquet", cav)
        files[f"{stem}_pairs.csv"] = write_csv(t["pairs"], out / f"{stem}_pairs.csv", cav)
    if finetune is not None:
        files["table2_finetune.md"] = write_text(out / "table2_finetune.md", finetune_markdown(result))
        ft_cells = pd.concat([f["cells"].assign(family=w) for w, f in finetune.items()], ignore_index=True)
        files["table2_finetune.csv"] = write_csv(ft_cells, out / "table2_finetune.csv", cav)
        files["table2_finetune_pairs.csv"] = write_csv(
            pd.concat([f["pairs"].assign(family=w) for w, f in finetune.items()], ignore_index=True),
            out / "table2_finetune_pairs.csv", cav)
    files["table2_heatmap.png"] = _heatmap(result, _matrix(cells, "mean"),
                                           f"Table 2, ours: top-1 accuracy (mean, {result['n_text']})",
                                           "viridis", False, out / "table2_heatmap.png")
    files["table2_diff_vs_paper.png"] = _heatmap(result, _matrix(cells, "diff"),
                                                 f"Table 2: ours − paper (mean, {result['n_text']}); "
                                                 "blue = ours higher", "RdBu", True, out / "table2_diff_vs_paper.png")
    files.update(calibration_plots(result, docs, out))
    result["files"] = files
    return log_outputs(client, parent, result, files.values(), log_to_parent)


def main(argv: list[str] | None = None) -> int:
    return study_main("python -m analysis.table2", __doc__.split("\n\n")[0], build_table2, format_console, argv)


if __name__ == "__main__":
    raise SystemExit(run_cli("table2", main))
