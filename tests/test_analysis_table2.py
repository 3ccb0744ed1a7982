"""analysis.table2 against a fake recorded study written straight into a temporary MLflow store.

The expected numbers (mean, sample std, t intervals, paired t tests, Holm) are computed here with
`statistics` and `scipy.stats`, independently of analysis.stats.
"""
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param

from analysis import table2
from analysis.common import run_cli
from helpers_mlflow import PROVENANCE, ROWS, SCHEDULE, new_experiment

REPO = Path(__file__).resolve().parents[1]
TEST_SETS = ["pristine", "blur_1", "blur_2", "blur_3", "noise_1", "noise_2", "noise_3",
             "jpeg_1", "jpeg_2", "jpeg_3"]
OUTPUTS = {f"{stem}{ext}" for stem in ("table2", "table2_ece", "table2_nll")
           for ext in (".md", ".csv", ".tex", ".parquet", "_pairs.csv")} | {
    "table2_heatmap.png", "table2_diff_vs_paper.png", "table2_reliability.png", "table2_confidence_quality.png"}


def record_study(client, exp_id, name, accs, failed=None):
    """A parent run + one child run per (strategy, seed) in `accs` ({(s, seed): [10 accuracies]});
    `failed` = {(s, seed): error} adds FAILED runs without final metrics."""
    failed = failed or {}
    seeds = sorted({seed for _, seed in [*accs, *failed]})
    parent = client.create_run(exp_id, run_name=name, tags={
        "iqa_ls.role": "parent", "iqa_ls.study": name, "iqa_ls.kind": "table2", "iqa_ls.preset": "quick",
        "iqa_ls.seeds": str(len(seeds)), **PROVENANCE}).info.run_id
    client.log_param(parent, "epochs", "None")  # the CLI flag: the preset's value was not overridden
    for key in sorted([*accs, *failed]):
        s, seed = key
        tags = {"mlflow.parentRunId": parent, "iqa_ls.role": "trial", "iqa_ls.study": name,
                "iqa_ls.trial_key": f"s{s}-seed{seed}", "iqa_ls.strategy": str(s),
                "iqa_ls.train_set": ROWS[s][0], "iqa_ls.regularization": ROWS[s][1],
                "iqa_ls.seed": str(seed), **PROVENANCE}
        run = client.create_run(exp_id, run_name=f"s{s}-seed{seed}", tags=tags).info.run_id
        client.log_batch(run, params=[Param(k, v) for k, v in SCHEDULE.items()])
        if key in failed:
            client.set_tag(run, "iqa_ls.error", failed[key])
            client.set_terminated(run, "FAILED")
            continue
        client.log_batch(run, metrics=[Metric(f"acc_{t}", v, 0, 3) for t, v in zip(TEST_SETS, accs[key])]
                         + [Metric(f"ece_{t}", round(1 - v, 4) / 5, 0, 3) for t, v in zip(TEST_SETS, accs[key])]
                         + [Metric(f"nll_{t}", 2 * (1 - v) + 0.01 * s, 0, 3) for t, v in zip(TEST_SETS, accs[key])])
        log_calibration(client, run, accs[key])
        client.set_terminated(run, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return parent


def log_calibration(client, run, accs):
    """A calibration.json artifact as trainables.evaluation writes it: 15 reliability bins per set and 20
    quality bins per distorted set (the counts here only need to be plausible)."""
    import tempfile

    def bins(m, acc):
        count = [0] * m
        count[m - 2], count[m - 1] = 60, 40
        conf = [0.0] * m
        conf[m - 2], conf[m - 1] = 60 * (m - 1.5) / m, 40 * (m - 0.5) / m
        correct = [0] * m
        correct[m - 2], correct[m - 1] = round(60 * acc), round(40 * acc)
        return {"bins": m, "count": count, "conf_sum": conf, "correct": correct}
    doc = {"epoch": 3, "test": {"reliability": {t: bins(15, a) for t, a in zip(TEST_SETS, accs)},
                                "quality": {t: bins(20, a) for t, a in zip(TEST_SETS[1:], accs[1:])}}}
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "calibration.json"
        f.write_text(json.dumps(doc))
        client.log_artifact(run, str(f))


pytestmark = pytest.mark.usefixtures("fast_http_failure")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root, uri, client, exp_id = new_experiment(tmp_path_factory)
    rng = np.random.default_rng(0)
    # accuracies on a 10k test set: multiples of 1e-4
    accs = {(s, seed): list(np.round(rng.uniform(0.4, 0.85, 10), 4))
            for s in ROWS for seed in (0, 1)}
    gap_accs = {(s, 0): list(np.round(rng.uniform(0.4, 0.85, 10), 4)) for s in ROWS if s != 5}
    parents = {"two-seeds": record_study(client, exp_id, "two-seeds", accs),
               "gap": record_study(client, exp_id, "gap", gap_accs, failed={(5, 0): "CUDA out of memory"})}
    for _ in range(2):  # a study name recorded twice: ambiguous, must be refused
        record_study(client, exp_id, "dup", {(1, 0): [0.5] * 10})
    result = table2.build_table2("two-seeds", tracking_uri=uri, out_dir=root / "out-two-seeds")
    gap = table2.build_table2("gap", tracking_uri=uri, out_dir=root / "out-gap", log_to_parent=False)
    return {"uri": uri, "root": root, "client": client, "accs": accs, "parents": parents,
            "result": result, "gap": gap}


def cell(result, s, test_set):
    cells = result["cells"]
    return cells[(cells["strategy"] == s) & (cells["test_set"] == test_set)].iloc[0]


def test_table_has_nine_strategies_by_ten_accuracies(store):
    wide = store["result"]["cells"].pivot(index="strategy", columns="test_set", values="mean")
    assert list(wide.index) == list(range(1, 10)) and sorted(wide.columns) == sorted(TEST_SETS)
    assert wide.notna().all().all()
    md = (store["result"]["out_dir"] / "table2.md").read_text()
    assert sum(line.split("|")[4].strip() == "ours" for line in md.splitlines() if line.count("|") > 10) == 9


def test_mean_std_n_match_independent_computation(store):
    for (s, _), _ in store["accs"].items():
        for j, t in enumerate(TEST_SETS):
            values = [store["accs"][s, seed][j] for seed in (0, 1)]
            c = cell(store["result"], s, t)
            assert c["n"] == 2
            assert c["mean"] == pytest.approx(statistics.mean(values), abs=1e-12)
            assert c["std"] == pytest.approx(statistics.stdev(values), abs=1e-12)


def test_diff_vs_paper_for_one_cell(store):
    c = cell(store["result"], 3, "blur_2")
    ours = statistics.mean([store["accs"][3, seed][2] for seed in (0, 1)])
    assert c["paper"] == pytest.approx(0.766)  # Table 2, strategy 3, Blur level 2
    assert c["diff"] == pytest.approx(ours - 0.766, abs=1e-12)


@pytest.mark.parametrize("what", ["acc", "ece", "nll"])
@pytest.mark.parametrize("pair", [(2, 3), (4, 5), (6, 7), (8, 9)])
def test_pair_is_paired_by_seed_and_matches_scipy_ttest_rel(store, pair, what):
    """Both arms have seeds 0 and 1: the interval and p value are the paired t test's, never Welch's."""
    from scipy import stats

    a, b = pair
    pairs = store["result"]["tables"][what]["pairs"]
    client = store["client"]
    for t in TEST_SETS:
        runs = {(s, seed): client.search_runs([client.get_experiment_by_name("iqa-ls").experiment_id],
                                              f"tags.`iqa_ls.trial_key` = 's{s}-seed{seed}' and "
                                              f"tags.`iqa_ls.study` = 'two-seeds'")[0]
                for s in pair for seed in (0, 1)}
        xa = [runs[a, seed].data.metrics[f"{what}_{t}"] for seed in (0, 1)]
        xb = [runs[b, seed].data.metrics[f"{what}_{t}"] for seed in (0, 1)]
        ref = stats.ttest_rel(xb, xa)
        ci = ref.confidence_interval(0.95)
        welch = stats.ttest_ind(xb, xa, equal_var=False).confidence_interval(0.95)
        p = pairs[(pairs["original"] == a) & (pairs["test_set"] == t)].iloc[0]
        assert p["iqa_ls"] == b and p["n"] == 2 and p["method"] == "paired"
        assert p["diff"] == pytest.approx(statistics.mean(xb) - statistics.mean(xa), abs=1e-12)
        assert (p["ci_low"], p["ci_high"]) == pytest.approx((ci.low, ci.high), abs=1e-9)
        assert p["p"] == pytest.approx(ref.pvalue, rel=1e-9)
        assert (p["ci_low"], p["ci_high"]) != pytest.approx((welch.low, welch.high), abs=1e-9)


def test_holm_is_over_the_forty_comparisons_of_one_table(store):
    pairs = store["result"]["tables"]["acc"]["pairs"]
    p = pairs["p"].to_numpy()
    order = np.argsort(p, kind="stable")
    expected = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):  # by hand: (m - rank) * p, running max, capped at 1
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        expected[i] = running
    assert len(pairs) == 40 and np.allclose(pairs["p_holm"], expected)
    assert (pairs["mark"] == "*").tolist() == (pairs["p_holm"] < 0.05).tolist()


def test_cells_carry_the_t_interval_of_the_mean(store):
    from scipy import stats

    for s in (1, 9):
        for j, t in enumerate(TEST_SETS):
            values = [store["accs"][s, seed][j] for seed in (0, 1)]
            lo, hi = stats.t.interval(0.95, 1, loc=np.mean(values), scale=stats.sem(values))
            c = cell(store["result"], s, t)
            assert (c["ci_low"], c["ci_high"]) == pytest.approx((lo, hi), abs=1e-9)
    md = (store["result"]["out_dir"] / "table2.md").read_text()
    c = cell(store["result"], 1, "pristine")
    assert f"{c['mean']:.4f} [{c['ci_low']:.4f}, {c['ci_high']:.4f}]" in md and "±" not in md


def test_single_seed_gives_no_ci(store):
    pairs = store["gap"]["pairs"]
    assert pairs["n"].max() == 1
    assert pairs[["ci_low", "ci_high", "df", "p"]].isna().all().all()
    assert pairs.loc[pairs["original"] != 4, "diff"].notna().all()
    md = (store["gap"]["out_dir"] / "table2.md").read_text()
    assert "(n < 2)" in md
    row1 = next(line for line in md.splitlines() if line.startswith("| 1 |"))
    assert "[" not in row1 and "(1)" not in row1  # one seed: the value alone
    assert f"| {store['gap']['cells']['mean'].iloc[0]:.4f} |" in row1


def test_companion_tables_have_the_same_layout(store):
    out = store["result"]["out_dir"]
    for what in ("ece", "nll"):
        cells = store["result"]["tables"][what]["cells"]
        assert len(cells) == 90 and "paper" not in cells.columns and cells["n"].eq(2).all()
        md = (out / f"table2_{what}.md").read_text()
        assert "IQA-LS − Original (Sec. 4.3.3), paired by seed" in md and "lower is better" in md
        assert sum(line.startswith(("| 3 − 2", "| 5 − 4", "| 7 − 6", "| 9 − 8")) for line in md.splitlines()) == 4
    nll = store["result"]["tables"]["nll"]["cells"]
    # the fake NLL = 2 (1 - acc) + 0.01 s: a cell's mean follows from the accuracies
    c = nll[(nll["strategy"] == 3) & (nll["test_set"] == "blur_2")].iloc[0]
    assert c["mean"] == pytest.approx(statistics.mean(2 * (1 - store["accs"][3, k][2]) + 0.03 for k in (0, 1)))


def test_failed_run_is_a_gap_with_its_error(store):
    gap = store["gap"]
    cells = gap["cells"]
    assert (cells.loc[cells["strategy"] == 5, "n"] == 0).all()
    assert cells.loc[cells["strategy"] == 5, ["mean", "diff"]].isna().all().all()
    assert cells.loc[cells["strategy"] != 5, "mean"].notna().all()
    assert gap["gaps"][["strategy", "seed", "status", "error"]].values.tolist() == \
        [[5, 0, "FAILED", "CUDA out of memory"]]
    md = (gap["out_dir"] / "table2.md").read_text()
    row5 = next(line for line in md.splitlines() if line.startswith("| 5 |"))
    assert row5.count("—") == 10
    assert "`s5-seed0` FAILED — CUDA out of memory" in md
    assert pd.read_csv(gap["out_dir"] / "table2.csv").query("strategy == 5")["mean"].isna().all()
    assert "CUDA out of memory" in table2.format_console(gap)


def test_all_files_written_and_logged_to_parent(store):
    result = store["result"]
    assert set(result["files"]) == OUTPUTS
    assert all(p.is_file() and p.stat().st_size > 0 for p in result["files"].values())
    logged = store["client"].list_artifacts(store["parents"]["two-seeds"], "analysis")
    assert {Path(f.path).name for f in logged} == OUTPUTS
    assert store["client"].list_artifacts(store["parents"]["gap"], "analysis") == []


def test_same_runs_give_same_bytes_by_study_or_run_id(store, tmp_path):
    """A second build (selected by parent run id this time) writes byte-identical files."""
    again = table2.build_table2(parent_run_id=store["parents"]["two-seeds"], tracking_uri=store["uri"],
                                out_dir=tmp_path, log_to_parent=False)
    assert again["study"] == "two-seeds"
    first = store["result"]["out_dir"]
    for name in sorted(OUTPUTS):  # PNGs included: savefig without the Software chunk
        assert (tmp_path / name).read_bytes() == (first / name).read_bytes(), name
    assert again["cells"].equals(store["result"]["cells"])


def test_csv_and_parquet_hold_the_same_long_frame(store):
    out = store["result"]["out_dir"]
    pq = pd.read_parquet(out / "table2.parquet", engine="pyarrow")
    csv = pd.read_csv(out / "table2.csv")
    cols = ["strategy", "regularization", "train_set", "test_set", "mean", "ci_low", "ci_high", "std", "n",
            "paper", "diff", "caveat"]
    assert list(pq.columns) == cols and list(csv.columns) == cols and len(pq) == 90
    # two seeds of the quick preset: a result, so the caveat column is empty (issue 20)
    assert pq["caveat"].eq("").all() and csv["caveat"].isna().all()
    assert isinstance(pq.index, pd.RangeIndex)
    pd.testing.assert_frame_equal(pq[["strategy", "n"]], csv[["strategy", "n"]])
    assert np.allclose(pq["mean"], csv["mean"], atol=1e-6)
    assert pq.loc[pq["strategy"] == 9, "regularization"].eq("IQA-LS").all()
    assert pq.loc[pq["strategy"] == 1, "train_set"].eq("Pristine").all()


def test_header_states_n_data_device_versions_preset(store):
    md = (store["result"]["out_dir"] / "table2.md").read_text().splitlines()
    header = md[2]
    for text in ("2 seeds per strategy", "/data/cifar10-jpeg", "sha256:0123abcd", "Test CPU x2",
                 "torch 2.14.1", "preset quick, 3 epochs, train subset all, test subset 2000"):
        assert text in header


@pytest.mark.parametrize("which", ["result", "gap"])
def test_console_fits_160_columns(store, which):
    text = table2.format_console(store[which])
    assert max(map(len, text.splitlines())) <= 160
    assert str(store[which]["files"]["table2.md"]) in text


@pytest.mark.parametrize("which", ["result", "gap"])
def test_the_compact_table_is_for_a_person(store, which):
    """Issue 20: one row per strategy, ours beside the paper, the pair's difference with how many of its
    10 comparisons are resolved; a one-line legend, the verdict line, the gaps, where the files are;
    every line <= 120 characters."""
    res = store[which]
    lines = table2.format_compact(res).splitlines()
    assert max(map(len, lines)) <= 120 and len(lines) <= 20
    rows = [ln for ln in lines if ln[:1].isdigit()]
    assert [int(r.split()[0]) for r in rows] == list(range(1, 10))
    cells, pairs = res["tables"]["acc"]["cells"], res["tables"]["acc"]["pairs"]
    # row 1: ours over all 10 sets beside the paper's, as the files have them
    ours = cells[cells["strategy"] == 1]
    assert f"{ours['mean'].mean():.3f}" in rows[0] and f"{ours['paper'].mean():.3f}" in rows[0]
    # row 9: its difference to its Original over the 10 sets, and how many are resolved
    d9 = pairs[pairs["iqa_ls"] == 9]
    assert f"{d9['diff'].mean():+.3f}" in rows[8] and rows[8].endswith(" /10" if which == "result" else "  n<2")
    assert any(ln.startswith("all 10 sets = acc_mean_all") and "Holm" in ln and "resolved" in ln for ln in lines)
    assert any(ln.startswith("verdict (IQA-LS − Original, 40 paired)") for ln in lines)
    assert any(ln.startswith(f"files: {res['files']['table2.md'].parent}/") for ln in lines[-2:])  # a long path wraps
    assert any(ln.startswith("gaps (1") for ln in lines) == (which == "gap")


def test_console_lists_files_and_pairs(store):
    text = table2.format_console(store["result"])
    assert "IQA-LS − Original" in text and str(store["result"]["files"]["table2.md"]) in text


def test_strategy_rows_match_the_search_space():
    from search_spaces.table2 import PAIRS, STRATEGIES

    assert table2.STRATEGY_ROWS == STRATEGIES == ROWS
    assert table2.PAIRS == PAIRS


def test_cli_unknown_study_exits_2_with_one_line(store):
    proc = subprocess.run([sys.executable, "-m", "analysis.table2", "--study", "nope",
                           "--tracking-uri", store["uri"], "--out", str(store["root"] / "never")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "'nope'" in proc.stderr and store["uri"] in proc.stderr
    assert not (store["root"] / "never").exists()


@pytest.mark.parametrize("args,expected", [
    (["--study", "x", "--tracking-uri", "sqlite:////nonexistent/dir/mlflow.db"], "no MLflow store"),
    (["--study", "two-seeds", "--experiment", "other"], "no experiment 'other'"),
    (["--run-id", "0" * 32], "not found"),
    (["--study", "dup"], "2 parent run(s) of study 'dup'"),
    (["--study", "x", "--tracking-uri", "http://127.0.0.1:9"],
     "cannot read study 'x' from http://127.0.0.1:9"),
])
def test_bad_input_is_one_line_and_exit_2(store, capsys, args, expected):
    if "--tracking-uri" not in args:
        args = [*args, "--tracking-uri", store["uri"]]
    assert run_cli("table2", table2.main, args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and expected in err


def test_child_run_id_is_not_a_parent(store, capsys):
    child = store["client"].search_runs(
        [store["client"].get_experiment_by_name("iqa-ls").experiment_id],
        "tags.`iqa_ls.trial_key` = 's1-seed0'")[0].info.run_id
    assert run_cli("table2", table2.main, ["--run-id", child, "--tracking-uri", store["uri"]]) == 2
    assert "not a study parent run" in capsys.readouterr().err


def test_reads_what_study_tracking_writes(store, tmp_path):
    """Round trip through the real writer (study/tracking.py): both sides use docs/mlflow-schema.md."""
    from study.tracking import StudyRecorder

    rec = StudyRecorder(store["uri"], "writer", "table2")
    tags = {"preset": "smoke", "seeds": 1, **{k.removeprefix("iqa_ls."): v for k, v in PROVENANCE.items()}}
    rec.open_parent(False, tags, {"epochs": None, "n_trials": 9})
    for s in ROWS:
        key = f"s{s}-seed0"
        rec.open_child(key, {**SCHEDULE, "strategy": s, "seed": 0},
                       {"strategy": s, "train_set": ROWS[s][0], "regularization": ROWS[s][1], "seed": 0})
        if s == 9:
            rec.fail_child(key, "diverged:\n  loss is NaN")
            continue
        rec.log_epoch(key, {"epoch": 3, "loss": 1.0, **{f"acc_{t}": 0.5 + 0.01 * s for t in TEST_SETS}})
        rec.finish_child(key, [])
    rec.close_parent()
    res = table2.build_table2("writer", tracking_uri=store["uri"], out_dir=tmp_path, log_to_parent=False)
    cells = res["cells"]
    assert cells.loc[cells["strategy"] == 4, "mean"].tolist() == pytest.approx([0.54] * 10)
    assert cells["n"].tolist() == [1] * 80 + [0] * 10
    assert res["gaps"]["error"].tolist() == ["diverged: loss is NaN"]
    assert res["provenance"]["epochs"] == "3" and res["provenance"]["device_name"] == "Test CPU x2"
    # no calibration.json was logged here: the only note says so
    assert [n for n in res["notes"] if "calibration.json" not in n] == [] and len(res["notes"]) == 1
    assert res["provenance"]["disagree"] == {}
