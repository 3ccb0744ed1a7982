"""analysis.cifar10c against hand-built studies written straight into a temporary MLflow store.

The expected numbers (means, t intervals, CE, mCE, relative mCE, paired t tests, Holm) are computed
here with numpy and scipy.stats, independently of analysis.stats and analysis.cifar10c.
"""
import ast
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from scipy import stats as sps

from analysis import cifar10c as A
from analysis.common import run_cli
from helpers_mlflow import PROVENANCE, ROWS, SCHEDULE, new_experiment

REPO = Path(__file__).resolve().parents[1]
# 4 benchmark corruptions (2 seen), 1 seen extra: the tables must handle a partial benchmark
CORR = ("gaussian_noise", "shot_noise", "fog", "jpeg_compression", "gaussian_blur")
BENCH = ("gaussian_noise", "shot_noise", "fog", "jpeg_compression")
SEEN = ("gaussian_noise", "jpeg_compression", "gaussian_blur")
SEEDS = (0, 1, 2)


def key(corruptions=CORR, n=500):
    return {"kind": "regenerated", "corruptions": list(corruptions), "seed": 0, "implementation": 1,
            "location": None, "subset": n, "test_images": 10000, "n_images": n, "images": "sha256:feed"}


def artifact_doc(k: dict) -> dict:
    """What trainables.robustness.artifact writes, the fields the analysis reads."""
    return {"epoch": 3, "key": k, "spec": "regenerate", "subset": k["subset"], "subset_seed": 0,
            "data": "/data/cifar10-jpeg",
            "source": {"kind": k["kind"], "corruptions": k["corruptions"], "location": "/cache/cifar10c", "seed": 0,
                       "implementation": 1, "describe": "regenerated (...)"}}


def values(rng, s: int, seed: int) -> dict[str, float]:
    """c10c_<what>_<set> of one run: accuracies on a 500-image subset (multiples of 1/500), falling with
    severity, IQA-LS strategies a little higher; plausible NLL / ECE."""
    out = {}
    clean = round(0.70 + 0.01 * (s % 2 == 1 and s > 1) + rng.uniform(-0.02, 0.02), 3)
    sets = {"clean": clean}
    for c in CORR:
        for sev in range(1, 6):
            sets[f"{c}_{sev}"] = round(max(0.1, clean - 0.06 * sev + rng.uniform(-0.03, 0.03)), 3)
    for name, acc in sets.items():  # (brier, conf, ptrue are recorded too; the tables do not read them)
        out[f"c10c_acc_{name}"] = acc
        out[f"c10c_nll_{name}"] = round(2.5 * (1 - acc) + rng.uniform(0, 0.1), 4)
        out[f"c10c_ece_{name}"] = round(0.3 * (1 - acc), 4)
    return out


def log_json(client, run, name, doc):
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / name
        f.write_text(json.dumps(doc))
        client.log_artifact(run, str(f))


def parent_run(client, exp_id, name, kind, seeds):
    run = client.create_run(exp_id, run_name=name, tags={
        "iqa_ls.role": "parent", "iqa_ls.study": name, "iqa_ls.kind": kind, "iqa_ls.preset": "quick",
        "iqa_ls.seeds": str(seeds), **PROVENANCE}).info.run_id
    client.log_param(run, "epochs", "None")
    return run


def child_run(client, exp_id, parent, name, tags, metrics, doc):
    run = client.create_run(exp_id, run_name=name, tags={
        "mlflow.parentRunId": parent, "iqa_ls.role": "trial", "iqa_ls.trial_key": name, **tags,
        **PROVENANCE}).info.run_id
    client.log_batch(run, params=[Param(k, v) for k, v in SCHEDULE.items()])
    if metrics:
        client.log_batch(run, metrics=[Metric(k, v, 0, 3) for k, v in metrics.items()])
    if doc is not None:
        log_json(client, run, "cifar10c.json", doc)
    client.set_terminated(run, "FINISHED")
    return run


pytestmark = pytest.mark.usefixtures("fast_http_failure")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root, uri, client, exp_id = new_experiment(tmp_path_factory)
    rng = np.random.default_rng(0)
    vals = {(s, seed): values(rng, s, seed) for s in ROWS for seed in SEEDS}
    p = parent_run(client, exp_id, "t2", "table2", len(SEEDS))
    for (s, seed), m in vals.items():
        tags = {"iqa_ls.study": "t2", "iqa_ls.strategy": str(s), "iqa_ls.train_set": ROWS[s][0],
                "iqa_ls.regularization": ROWS[s][1], "iqa_ls.seed": str(seed)}
        child_run(client, exp_id, p, f"s{s}-seed{seed}", tags, m, artifact_doc(key()))
    client.set_terminated(p, "FINISHED")
    # gaps: strategy 9 seed 3 trained without the evaluation; strategy 8 seed 3 on other data
    g = parent_run(client, exp_id, "gaps", "table2", 1)
    for s in ROWS:
        tags = {"iqa_ls.study": "gaps", "iqa_ls.strategy": str(s), "iqa_ls.train_set": ROWS[s][0],
                "iqa_ls.regularization": ROWS[s][1], "iqa_ls.seed": "0"}
        m = {} if s == 9 else vals[(s, 0)]
        doc = None if s == 9 else artifact_doc(key(n=1000) if s == 8 else key())
        child_run(client, exp_id, g, f"s{s}-seed0", tags, m, doc)
    # an ablation: one-hot, two IQA-LS settings, 2 seeds
    a = parent_run(client, exp_id, "abl", "ablate-tmap", 2)
    settings = [("onehot", "onehot"), ("identity", "iqa_ls"), ("power(gamma=2)", "iqa_ls")]
    abl = {}
    for order, (label, reg) in enumerate(settings):
        for seed in (0, 1):
            m = values(rng, 3 if reg == "iqa_ls" else 2, seed)
            abl[(order, seed)] = m
            tags = {"iqa_ls.study": "abl", "iqa_ls.strategy": "0", "iqa_ls.train_set": "mix_all3",
                    "iqa_ls.regularization": reg, "iqa_ls.seed": str(seed), "iqa_ls.ablation": "tmap",
                    "iqa_ls.setting": label, "iqa_ls.setting_order": str(order), "iqa_ls.ablated": "{}"}
            child_run(client, exp_id, a, f"tmap-{label}-seed{seed}", tags, m, artifact_doc(key()))
    client.set_terminated(a, "FINISHED")
    # a study of two rows (--strategies 2,3): one pair, no strategy 1 to measure CE against
    pr = parent_run(client, exp_id, "pair", "table2", 2)
    client.set_tag(pr, "iqa_ls.strategies", "2,3")
    for s in (2, 3):
        for seed in (0, 1):
            tags = {"iqa_ls.study": "pair", "iqa_ls.strategy": str(s), "iqa_ls.train_set": ROWS[s][0],
                    "iqa_ls.regularization": ROWS[s][1], "iqa_ls.seed": str(seed)}
            child_run(client, exp_id, pr, f"s{s}-seed{seed}", tags, vals[(s, seed)], artifact_doc(key()))
    client.set_terminated(pr, "FINISHED")
    none = parent_run(client, exp_id, "none", "table2", 1)
    child_run(client, exp_id, none, "s1-seed0", {"iqa_ls.study": "none", "iqa_ls.strategy": "1",
                                                 "iqa_ls.train_set": "pristine", "iqa_ls.regularization": "onehot",
                                                 "iqa_ls.seed": "0"}, {"acc_pristine": 0.5}, None)
    res = A.build_cifar10c("t2", tracking_uri=uri, out_dir=root / "out")
    return {"uri": uri, "root": root, "client": client, "vals": vals, "abl": abl, "result": res,
            "gaps": A.build_cifar10c("gaps", tracking_uri=uri, out_dir=root / "out-gaps", log_to_parent=False),
            "ablate": A.build_cifar10c("abl", tracking_uri=uri, out_dir=root / "out-abl", log_to_parent=False),
            "pair": A.build_cifar10c("pair", tracking_uri=uri, out_dir=root / "out-pair", log_to_parent=False)}


def cell(res, arm, metric, group="table2"):
    c = res["cells"]
    return c[(c["group"] == group) & (c["arm"] == arm) & (c["metric"] == metric)].iloc[0]


def mean_bench(m):
    return np.mean([m[f"c10c_acc_{c}_{s}"] for c in BENCH for s in range(1, 6)])


def ce(m, b, corruption, relative=False):
    err = np.array([1 - m[f"c10c_acc_{corruption}_{s}"] for s in range(1, 6)])
    berr = np.array([1 - b[f"c10c_acc_{corruption}_{s}"] for s in range(1, 6)])
    if relative:
        return (err - (1 - m["c10c_acc_clean"])).sum() / (berr - (1 - b["c10c_acc_clean"])).sum()
    return err.sum() / berr.sum()


def t_interval(x):
    x = np.asarray(x, float)
    half = sps.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return x.mean(), x.mean() - half, x.mean() + half


def test_summary_cells_match_independent_computation(store):
    res, vals = store["result"], store["vals"]
    for s in (1, 5, 9):
        for metric, f in [("clean", lambda m: m["c10c_acc_clean"]), ("mean_benchmark", mean_bench),
                          ("mean_corrupted", lambda m: np.mean([m[f"c10c_acc_{c}_{v}"] for c in CORR for v in range(1, 6)])),
                          ("mean_seen", lambda m: np.mean([m[f"c10c_acc_{c}_{v}"] for c in SEEN for v in range(1, 6)])),
                          ("mean_unseen", lambda m: np.mean([m[f"c10c_acc_{c}_{v}"] for c in ("shot_noise", "fog")
                                                             for v in range(1, 6)])),
                          ("sev4", lambda m: np.mean([m[f"c10c_acc_{c}_4"] for c in BENCH])),
                          ("nll_mean_benchmark", lambda m: np.mean([m[f"c10c_nll_{c}_{v}"] for c in BENCH
                                                                    for v in range(1, 6)]))]:
            mean, lo, hi = t_interval([f(vals[(s, seed)]) for seed in SEEDS])
            c = cell(res, s, metric)
            assert c["n"] == 3 and c["mean"] == pytest.approx(mean) and c["ci_low"] == pytest.approx(lo), metric
            assert c["ci_high"] == pytest.approx(hi)


def test_corruption_error_is_against_strategy_1_of_the_same_seed(store):
    res, vals = store["result"], store["vals"]
    for s in (3, 8):
        mce = [np.mean([ce(vals[(s, k)], vals[(1, k)], c) for c in BENCH]) for k in SEEDS]
        rel = [np.mean([ce(vals[(s, k)], vals[(1, k)], c, True) for c in BENCH]) for k in SEEDS]
        assert cell(res, s, "mce")["mean"] == pytest.approx(np.mean(mce))
        assert cell(res, s, "mce")["ci_low"] == pytest.approx(t_interval(mce)[1])
        assert cell(res, s, "rel_mce")["mean"] == pytest.approx(np.mean(rel))
    assert cell(res, 1, "mce")["mean"] == pytest.approx(1.0) and cell(res, 1, "mce")["std"] == pytest.approx(0.0)
    corr = res["corruptions"]
    row = corr[(corr["arm"] == 5) & (corr["corruption"] == "fog") & (corr["metric"] == "ce")].iloc[0]
    assert row["mean"] == pytest.approx(np.mean([ce(vals[(5, k)], vals[(1, k)], "fog") for k in SEEDS]))
    # gaussian_blur is an extra: it has a CE but is not in mCE
    assert set(corr.loc[(corr["metric"] == "ce"), "corruption"]) == set(CORR)


@pytest.mark.parametrize("pair,metric", [((2, 3), "mean_unseen"), ((8, 9), "mean_seen"), ((4, 5), "mce")])
def test_pairs_are_paired_by_seed_as_scipy_ttest_rel(store, pair, metric):
    a, b = pair
    vals, res = store["vals"], store["result"]
    if metric == "mce":
        def f(s, k):
            return np.mean([ce(vals[(s, k)], vals[(1, k)], c) for c in BENCH])
    else:
        cs = SEEN if metric == "mean_seen" else ("shot_noise", "fog")

        def f(s, k):
            return np.mean([vals[(s, k)][f"c10c_acc_{c}_{v}"] for c in cs for v in range(1, 6)])
    xa, xb = [f(a, k) for k in SEEDS], [f(b, k) for k in SEEDS]
    d = np.array(xb) - np.array(xa)
    p = res["pairs"]
    row = p[(p["family"] == "accuracy") & (p["baseline"] == a) & (p["arm"] == b) & (p["metric"] == metric)].iloc[0]
    assert row["diff"] == pytest.approx(d.mean()) and row["n"] == 3 and row["method"] == "paired"
    assert row["p"] == pytest.approx(sps.ttest_rel(xb, xa).pvalue)
    assert row["ci_low"] == pytest.approx(t_interval(d)[1]) and row["ci_high"] == pytest.approx(t_interval(d)[2])


def test_holm_runs_within_each_table(store):
    p = store["result"]["pairs"]
    assert (p["family"] == "accuracy").sum() == 4 * 12 and (p["family"] == "calibration").sum() == 4 * 4
    assert (p["family"] == "corruptions").sum() == 4 * len(CORR)
    for family, rows in p.groupby("family"):
        ps = rows["p"].to_numpy()
        order = np.argsort(ps, kind="stable")
        m = np.isfinite(ps).sum()
        adj = np.empty_like(ps)
        running = 0.0
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (m - rank) * ps[i]))
            adj[i] = running
        assert rows["p_holm"].to_numpy() == pytest.approx(adj), family


def test_tables_name_the_data_the_baseline_and_what_is_missing(store):
    md = (store["root"] / "out" / "cifar10c.md").read_text()
    assert "n = 3 seeds per arm" in md and "data: /data/cifar10-jpeg" in md and "device: Test CPU x2" in md
    assert "CIFAR-10-C (regenerated from the test split" in md and "4 of the 15 benchmark ones" in md and "frost" in md
    assert "a stratified subset of 500 of the 10000 test images" in md
    assert "our 1 Original Pristine of the same seed (not AlexNet" in md
    console = A.format_console(store["result"])
    assert max(len(line) for line in console.splitlines()) <= 160
    assert "3 − 2" in console and "mCE" in console
    rb = json.loads((store["root"] / "out" / "cifar10c_robustbench.json").read_text())
    arm = rb["arms"]["5 IQA-LS MIX_noise"]
    vals = store["vals"]
    assert arm["n_seeds"] == 3 and arm["corruptions_missing"][0] == "impulse_noise"
    assert arm["corruptions_acc"] == pytest.approx(round(100 * np.mean([mean_bench(vals[(5, k)]) for k in SEEDS]), 2))
    assert arm["corruptions_acc_unaggregated"]["fog"]["2"] == pytest.approx(
        round(100 * np.mean([vals[(5, k)]["c10c_acc_fog_2"] for k in SEEDS]), 2))
    assert "gaussian_blur" not in arm["corruptions_acc_unaggregated"]  # an extra: not RobustBench's


def test_files_are_written_logged_and_the_same_bytes_again(store, tmp_path):
    res = store["result"]
    names = {"cifar10c.md", "cifar10c.tex", "cifar10c.csv", "cifar10c.parquet", "cifar10c_corruptions.csv",
             "cifar10c_corruptions.parquet", "cifar10c_pairs.csv", "cifar10c_severity.png", "cifar10c_robustbench.json"}
    assert set(res["files"]) == names
    logged = {a.path for a in store["client"].list_artifacts(res["parent_run_id"], "analysis")}
    assert {f"analysis/{n}" for n in names} <= logged
    again = A.build_cifar10c(parent_run_id=res["parent_run_id"], tracking_uri=store["uri"], out_dir=tmp_path,
                             log_to_parent=False)
    for n in names:
        assert (tmp_path / n).read_bytes() == (store["root"] / "out" / n).read_bytes(), n
    written = pd.read_parquet(tmp_path / "cifar10c.parquet")
    assert written.shape == (9 * len(A.SUMMARY), 12) and written["caveat"].eq("").all()  # 3 seeds: no caveat
    assert again["cells"].equals(written.drop(columns="caveat"))


def test_gaps_list_runs_without_results_and_runs_on_other_data(store):
    res = store["gaps"]
    gaps = {(g["arm"], g["status"]) for g in res["gaps"]}
    assert ("9 IQA-LS MIX_all3", "NOT EVALUATED") in gaps
    assert any("1 run(s) evaluated on other CIFAR-10-C data" in n and '"n_images": 1000' in n for n in res["notes"])
    assert cell(res, 8, "clean")["n"] == 0 and cell(res, 7, "clean")["n"] == 1
    assert "python -m study.cifar10c" in (store["root"] / "out-gaps" / "cifar10c.md").read_text()


def test_an_ablation_is_tabled_against_its_one_hot_setting(store):
    res, abl = store["ablate"], store["abl"]
    assert [g["group"] for g in res["groups"]] == ["tmap"] and res["groups"][0]["baseline"] == 0
    mce = [np.mean([ce(abl[(2, k)], abl[(0, k)], c) for c in BENCH]) for k in (0, 1)]
    assert cell(res, 2, "mce", "tmap")["mean"] == pytest.approx(np.mean(mce))
    p = res["pairs"]
    row = p[(p["family"] == "accuracy") & (p["arm"] == 1) & (p["metric"] == "clean")].iloc[0]
    assert row["baseline"] == 0 and row["diff"] == pytest.approx(
        np.mean([abl[(1, k)]["c10c_acc_clean"] - abl[(0, k)]["c10c_acc_clean"] for k in (0, 1)]))
    assert "the one-hot setting" in (store["root"] / "out-abl" / "cifar10c.md").read_text()


def test_a_study_without_strategy_1_has_its_pairs_and_says_why_it_has_no_ce(store):
    res, vals = store["pair"], store["vals"]
    assert res["groups"][0]["baseline"] is None and [a["arm"] for a in res["groups"][0]["arms"]] == [2, 3]
    p = res["pairs"]
    row = p[(p["family"] == "accuracy") & (p["arm"] == 3) & (p["metric"] == "clean")].iloc[0]
    assert row["baseline"] == 2 and row["diff"] == pytest.approx(
        np.mean([vals[(3, k)]["c10c_acc_clean"] - vals[(2, k)]["c10c_acc_clean"] for k in (0, 1)]))
    ce_cells = res["cells"][res["cells"]["metric"].isin(["mce", "rel_mce"])]
    assert len(ce_cells) == 4 and ce_cells["mean"].isna().all()
    for f in ("cifar10c.md", "cifar10c.tex"):
        assert "strategy 1 (Original, Pristine) is not among the study's strategies" in (
            store["root"] / "out-pair" / f).read_text().replace("\\", "")


def test_a_study_without_results_is_refused_in_one_line(store, capsys):
    assert run_cli("cifar10c", A.main, ["--study", "none", "--tracking-uri", store["uri"], "--no-log"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no run of study 'none' has CIFAR-10-C results" in err[0]
    assert run_cli("cifar10c", A.main, ["--study", "nope", "--tracking-uri", store["uri"]]) == 2
    assert "study 'nope'" in capsys.readouterr().err


def test_names_follow_the_writer():
    """analysis keeps its own copy of the names (it reads MLflow only); they must be the trainables'."""
    from trainables import corruptions, metric_names, robustness

    assert A.BENCHMARK == corruptions.BENCHMARK and A.EXTRAS == corruptions.EXTRAS
    assert set(A.SEEN) == {c for c, v in corruptions.CORRUPTIONS.items() if v.seen} == set(robustness.SEEN)
    assert A.PREFIX == metric_names.C10C_PREFIX and A.WHATS == metric_names.EVAL_WHATS and A.ARTIFACT == robustness.ARTIFACT
    assert A.CLEAN == robustness.CLEAN


def test_every_analysis_module_reads_mlflow_only():
    """No training code: only trainables.metric_names (torch-free), where the metric and test sets'
    names are defined once, may be imported, and importing every analysis module imports no torch, Ray or MLflow."""
    banned = {"torch", "torchvision", "ray", "kornia", "trainables", "study", "search_spaces"}
    shared = {"trainables.metric_names"}
    for path in sorted((REPO / "analysis").glob("*.py")):
        tree = ast.parse(path.read_text())
        modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        roots = {m.split(".")[0] for m in modules - shared}
        assert not roots & banned, (path.name, roots & banned)
    names = sorted(f"analysis.{p.stem}" for p in (REPO / "analysis").glob("*.py") if p.stem != "__init__")
    code = f"import sys, {', '.join(names)}; print(sorted({{'torch', 'ray', 'mlflow'}} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
