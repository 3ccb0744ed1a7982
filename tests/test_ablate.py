"""`python -m study.ablate` and `analysis.ablate`: the grids as data, the level oracle, the matched
uniform control, the Optuna search with ASHA, refusals, and one union study end to end."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from search_spaces import ablate_iqa, ablate_levels, ablate_ratios, ablate_search, ablate_tmap
from trainables import iqa, labels
from trainables.config import PAPER_MIX, TrialConfig
from trainables.mixture import DistortionBank, build_epoch, draw_epoch

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "cifar10-mini"
ACC = ["acc_pristine"] + [f"acc_{t}_{lv}" for t in ("blur", "noise", "jpeg") for lv in (1, 2, 3)]
EPOCH_METRICS = ("loss", "lr", "train_acc", "mean_t", "frac_below_chance", "epoch_time")


# ------------------------------------------------------------------ the grids as data
def test_tmap_grid_covers_every_score_map_of_the_registry_and_the_onehot_reference():
    names = {s["fields"].get("tmap") for s in ablate_tmap.settings() if s["fields"]["regularization"] == "iqa_ls"}
    assert names == {n for n, (_, constant) in labels.TMAPS.items() if not constant}
    assert [s["fields"]["regularization"] for s in ablate_tmap.settings()].count("onehot") == 1
    for s in ablate_tmap.settings():
        TrialConfig(train_set="mix_all3", **s["fields"])  # every setting is a valid trial config


def test_iqa_grid_covers_every_metric_of_the_registry_plus_the_controls():
    settings = ablate_iqa.settings()
    assert [s["fields"]["iqa_metric"] for s in settings[:len(iqa.METRICS)]] == list(iqa.METRICS)
    assert sum(s["fields"].get("score_pooling") == "level" for s in settings) == 1
    assert sum(bool(s.get("match")) and s["fields"]["regularization"] == "uniform" for s in settings) == 1
    assert len({s["setting"] for s in settings}) == len(settings)


def test_ratio_mixes_sum_to_one_keep_the_paper_split_and_include_the_paper_once():
    assert ablate_ratios.mix(0.6) == PAPER_MIX
    settings = ablate_ratios.settings()
    assert len(settings) == len(ablate_ratios.PRISTINE_SHARES) + len(ablate_ratios.LEVEL_SPLITS) - 1
    for p in ablate_ratios.PRISTINE_SHARES:
        m = ablate_ratios.mix(p)
        assert sum(m) == pytest.approx(1.0, abs=1e-9)
        assert m[1] / m[3] == pytest.approx(1.5) and m[1] == pytest.approx(m[2])  # 15:15:10
    assert sum(s["fields"]["mix"] == PAPER_MIX for s in settings) == 1


def test_level_settings_put_the_whole_distorted_share_on_their_levels():
    mixes = {s["setting"]: s["fields"]["mix"] for s in ablate_levels.settings()}
    assert mixes["L1 only"] == (0.6, 0.4, 0.0, 0.0) and mixes["L3 only"] == (0.6, 0.0, 0.0, 0.4)
    assert mixes["L1-3 (15:15:10)"] == PAPER_MIX


def test_matched_epsilon_gives_uniform_smoothing_the_same_true_class_target():
    for mean_t in (0.95, 0.9002645, 0.5):
        eps = ablate_iqa.matched_epsilon(mean_t, 10)
        t = labels.make_tmap("uniform", epsilon=eps, num_classes=10)(torch.ones(4))
        assert torch.allclose(t, torch.full((4,), mean_t), atol=1e-6)  # float32 T


def test_search_suggestions_are_valid_trial_configs():
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    families = set()
    for _ in range(100):
        fields, tags = ablate_search.suggest(study.ask())
        TrialConfig(train_set="mix_all3", **fields)
        families.add(fields["tmap"])
        assert json.loads(tags["ablated"])["pristine"] == fields["mix"][0]
    assert families == set(ablate_search.FAMILIES)


@pytest.mark.parametrize("epochs", [1, 2, 7, 24, 2000])
def test_asha_rungs_are_epochs_the_search_trials_evaluate(epochs):
    grace = ablate_search.grace_period(epochs)
    rung = grace
    while rung <= epochs:  # eval_every = grace, so every rung grace * 2^k is an evaluated epoch
        assert rung % grace == 0
        rung *= ablate_search.REDUCTION_FACTOR
    assert grace >= 1 and grace <= epochs and math.ceil(epochs / grace) <= ablate_search.EVALS


# ------------------------------------------------------------------ the level oracle
def test_level_pooling_gives_every_image_of_a_group_its_group_mean(cifar_mini_images):
    x = cifar_mini_images[:90]
    level, kind = draw_epoch(90, (0.4, 0.2, 0.2, 0.2), 3, torch.Generator().manual_seed(0))
    bank = DistortionBank(x, "test-pooling", "ssim", {}, None)
    types = ("blur", "noise", "jpeg")
    _, per_image = build_epoch(x, level, kind, types, "ssim", {}, torch.Generator().manual_seed(1), bank)
    _, pooled = build_epoch(x, level, kind, types, "ssim", {}, torch.Generator().manual_seed(1), bank,
                            score_pooling="level")
    assert torch.equal(pooled[level == 0], torch.ones(int((level == 0).sum())))
    for ti, t in enumerate(types):
        for lv in (1, 2, 3):
            m = (level == lv) & (kind == ti)
            # deterministic kinds: the whole set's mean from the bank; noise: this epoch's group mean
            group = bank.get(t, lv)[1].mean() if t != "noise" else per_image[m].mean()
            assert torch.allclose(pooled[m], group.expand(int(m.sum())), atol=1e-6)
            assert per_image[m].std() > 0  # the control really removes the per-image spread


# ------------------------------------------------------------------ the MLflow callback
class _FakeRecorder:
    def __init__(self):
        self.calls = []

    def stop_child_early(self, key, epoch, artifacts=()):
        self.calls.append(("KILLED", key, epoch, sorted(a.name for a in artifacts)))

    def finish_child(self, key, files):
        self.calls.append(("FINISHED", key, sorted(f.name for f in files)))

    def fail_child(self, key, reason):
        self.calls.append(("FAILED", key, reason))


class _FakeTrial:
    def __init__(self, store, last):
        self.config = {"trial": {"key": "search-0", "store": str(store), "config": {"epochs": 4}}}
        self.last_result = last


@pytest.mark.parametrize("files,last,status", [
    (["scores_hist.json", "checkpoint.pt"], {"epoch": 1, "done": True}, "KILLED"),  # ASHA stopped it
    (["scores_hist.json", "final_weights.pt", "config.json"], {"epoch": 4, "done": True}, "FINISHED"),
    (["scores_hist.json"], {"epoch": 2}, "FAILED"),  # ended early without the scheduler: a failure
])
def test_scheduler_stopped_trial_is_killed_with_its_epoch_not_failed(tmp_path, files, last, status):
    from study.execution import Recording

    for f in files:
        (tmp_path / f).write_text("x")
    rec = _FakeRecorder()
    cb = Recording(rec, tags_of=None)
    trial = _FakeTrial(tmp_path, last)
    cb.complete(trial.config["trial"], trial.last_result)
    assert rec.calls[0][0] == status
    if status == "KILLED":
        assert rec.calls[0][2:] == (1, ["scores_hist.json"]) and cb.stopped_early == {"search-0": 1}
    if status == "FINISHED":
        assert rec.calls[0][2] == ["config.json", "final_weights.pt", "scores_hist.json"]


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("flags,needle", [
    (["--tmap", "--tmaps", "cubic"], "tmap='cubic'"),
    (["--tmap", "--tmaps", "power:gamma=-1"], "gamma"),
    (["--tmap", "--tmaps", "power:gamma"], "--tmaps"),
    (["--iqa", "--metrics", "vif"], "iqa_metric='vif'"),
    (["--ratios", "--pristine-shares", "0.4,1.5"], "--pristine-shares"),
    (["--ratios", "--level-splits", "1:2"], "--level-splits"),
    (["--ratios", "--level-splits", "0:0:0"], "--level-splits"),
    (["--levels", "--train-set", "pristine"], "--train-set pristine"),
    (["--search", "bayes", "--trials", "3"], "--search bayes"),
    (["--search", "optuna"], "--trials"),
    (["--search", "optuna", "--trials", "3", "--objective", "best"], "--objective best"),
    (["--search", "optuna", "--trials", "3", "--resume"], "--resume"),
    (["--tmaps", "identity"], "nothing to run"),
    (["--levels", "--preset", "huge"], "preset='huge'"),
    (["--search", "optuna", "--trials", "3", "--val-size", "0"], "--val-size 0 is not allowed with --search"),
    (["--tmap", "--val-size", "-5"], "--val-size -5"),
])
def test_bad_values_are_refused_in_one_line_before_any_work(tmp_path, monkeypatch, capsys, flags, needle):
    from study import ablate

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IQA_LS_CACHE", str(tmp_path / "cache"))
    assert ablate.main([*flags, "--data", str(FIXTURE)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


def test_refusal_exits_with_code_two_from_the_command_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "study.ablate", "--tmap", "--tmaps", "identity,cubic",
                          "--data", str(FIXTURE)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(REPO), IQA_LS_CACHE=str(tmp_path / "cache")))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "cubic" in res.stderr
    assert not (tmp_path / "mlflow.db").exists()


# ------------------------------------------------------------------ one union study, end to end
# Grid values shrunk through the CLI (the default grids' sizes are pinned above): 3 + 5 + 3 + 4 grid
# trials and a 3-trial search, 2 epochs (ASHA has a rung at epoch 1), 100 training images.
UNION = ["--tmap", "--tmaps", "identity", "--iqa", "--metrics", "ssim",
         "--ratios", "--pristine-shares", "0.2", "--level-splits", "1:2:3", "--levels",
         "--search", "optuna", "--trials", "3"]
EXPECTED = {"tmap": 2, "iqa": 4, "ratios": 2, "levels": 4, "search": 3}
NAME = "ablate-tmap-iqa-ratios-levels-search"
TABLES = ("md", "csv", "tex", "parquet")


@pytest.fixture(scope="module")
def union(tmp_path_factory, new_store):
    cwd = tmp_path_factory.mktemp("ablate")
    new_store(cwd / "mlflow.db")
    env = dict(os.environ, IQA_LS_CACHE=str(cwd / "cache"), PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-m", "study.ablate", *UNION, "--preset", "smoke", "--seeds", "1",
                          "--epochs", "2", "--subset", "100", "--test-subset", "50", "--data", str(FIXTURE),
                          "--tracking-uri", f"sqlite:///{cwd}/mlflow.db", "--storage", str(cwd / "ray_results"),
                          "--progress-every", "600"], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    c = MlflowClient(f"sqlite:///{cwd}/mlflow.db")
    exp = c.get_experiment_by_name("iqa-ls")
    runs = c.search_runs([exp.experiment_id], f"tags.`iqa_ls.study` = '{NAME}'", max_results=1000)
    parents = [r for r in runs if r.data.tags.get("iqa_ls.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("iqa_ls.role") == "trial"]
    return {"cwd": cwd, "res": res, "client": c, "parents": parents, "children": children}


def _by_key(children):
    return {r.data.tags["iqa_ls.trial_key"]: r for r in children}


@pytest.mark.slow
def test_union_records_one_parent_and_the_planned_children(union):
    assert len(union["parents"]) == 1
    children = union["children"]
    counts = pd.Series([r.data.tags["iqa_ls.ablation"] for r in children]).value_counts().to_dict()
    assert counts == EXPECTED
    assert len(_by_key(children)) == len(children) == sum(EXPECTED.values())  # keys unique
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {union["parents"][0].info.run_id}
    assert all(r.data.tags.get("iqa_ls.setting") for r in children)
    out = union["res"].stdout
    assert "estimated wall time" in out and "--search optuna: 3 trials" in out and "[iqa]" in out


@pytest.mark.slow
def test_every_grid_trial_finished_with_every_metric_and_its_score_histogram(union):
    c = union["client"]
    for r in union["children"]:
        if r.data.tags["iqa_ls.ablation"] == "search":
            continue
        assert r.info.status == "FINISHED", r.info.run_name
        assert set(ACC + ["acc_mean_all", "acc_mean_distorted"]) <= set(r.data.metrics)
        for m in EPOCH_METRICS:
            assert [p.step for p in c.get_metric_history(r.info.run_id, m)] == [1, 2], (r.info.run_name, m)
        assert {"final_weights.pt", "config.json", "scores_hist.json", "calibration.json"} <= \
            {a.path for a in c.list_artifacts(r.info.run_id)}
        assert r.data.params["val_size"] == "0" and not any(m.startswith("val_") for m in r.data.metrics)
        for what in ("nll", "ece", "brier", "conf", "ptrue"):
            assert {f"{what}_{t}" for t in ["pristine", "blur_1", "jpeg_3"]} <= set(r.data.metrics)


@pytest.mark.slow
def test_search_trials_finish_or_are_stopped_early_honestly(union):
    c = union["client"]
    search = [r for r in union["children"] if r.data.tags["iqa_ls.ablation"] == "search"]
    assert sorted(r.data.tags["iqa_ls.trial_key"] for r in search) == ["search-0", "search-1", "search-2"]
    for r in search:
        obj = sorted(c.get_metric_history(r.info.run_id, "objective"), key=lambda m: m.step)
        val = {m.step: m.value for m in c.get_metric_history(r.info.run_id, "val_acc_mean_all")}
        # the recorded objective IS the validation metric, epoch by epoch; the test sets play no part
        assert obj and all(math.isclose(o.value, val[o.step]) for o in obj)
        test_steps = [m.step for m in c.get_metric_history(r.info.run_id, "acc_mean_all")]
        if r.info.status == "KILLED":  # ASHA's rung at epoch 1: recorded as stopped, not failed
            assert r.data.tags["iqa_ls.stopped_early"] == "1" and "iqa_ls.error" not in r.data.tags
            assert [p.step for p in obj] == [1] and test_steps == []  # stopped before it saw the test sets
        else:
            assert r.info.status == "FINISHED" and [p.step for p in obj] == [1, 2]
            assert test_steps == [2] and set(ACC) <= set(r.data.metrics)  # the test sets once, at the end
        assert r.data.params["eval_every"] == "1" and r.data.params["val_size"] == "40"  # 10 % of 400
        assert {f"val_{m}" for m in ACC} <= set(r.data.metrics) and "val_ece_pristine" in r.data.metrics
    spec = json.loads(union["parents"][0].data.tags["iqa_ls.search"])
    assert spec["objective"] == "mean" and spec["trials"] == 3
    assert spec["objective_of"] == ["val_acc_mean_all"]
    md = (union["cwd"] / "results" / NAME / "ablate_search.md").read_text()
    assert "## The chosen setting on the test sets" in md and "validation sets" in md


@pytest.mark.slow
def test_matched_uniform_control_records_the_mean_t_of_iqa_ls_in_epoch_one(union):
    c, runs = union["client"], _by_key(union["children"])
    uniform, iqa_ls = runs["iqa-uniform-ls-matched-mean-t-seed0"], runs["iqa-ssim-seed0"]
    t_uniform = c.get_metric_history(uniform.info.run_id, "mean_t")[0].value
    t_iqa = [m.value for m in c.get_metric_history(iqa_ls.info.run_id, "mean_t") if m.step == 1][0]
    # Both are float32 means of the same 100 targets: IQA-LS's from per-image T, the driver's from the
    # same epoch-1 build (possibly summed in another order), uniform's of a constant q(y) that is the
    # float32 rounding of a float64 value. Their gap is a few float32 ulps (~1e-7); 1e-5 leaves room,
    # while a different epoch's draw or seed moves mean T by ~1e-3 on 100 images (0.900 vs 0.907).
    assert t_uniform == pytest.approx(t_iqa, abs=1e-5)
    assert float(uniform.data.tags["iqa_ls.matched_mean_t"]) == pytest.approx(t_iqa, abs=1e-6)
    eps = float(uniform.data.params["ls_epsilon"])
    q_true = 1 - eps + eps / 10  # the uniform target's true-class probability, K = 10
    assert q_true == pytest.approx(t_iqa, abs=1e-6) and uniform.data.params["regularization"] == "uniform"


@pytest.mark.slow
def test_level_oracle_labels_have_one_score_per_group(union, tmp_path):
    c, runs = union["client"], _by_key(union["children"])
    pooled = runs["iqa-ssim-level-pooled-oracle-seed0"]
    assert pooled.data.params["score_pooling"] == "level"
    hist = json.loads(Path(c.download_artifacts(pooled.info.run_id, "scores_hist.json", str(tmp_path))).read_text())
    assert sum(map(sum, hist["counts"].values())) == 100
    assert all(sum(v > 0 for v in counts) == 1 for counts in hist["counts"].values())


@pytest.mark.slow
def test_tables_and_plots_written_and_logged_to_the_parent(union):
    out = union["cwd"] / "results" / NAME
    for a in EXPECTED:
        for ext in TABLES:
            assert (out / f"ablate_{a}.{ext}").stat().st_size > 0
        assert (out / f"ablate_{a}_groups.png").stat().st_size > 0
        df = pd.read_parquet(out / f"ablate_{a}.parquet")
        assert df["order"].nunique() == EXPECTED[a] and set(ACC) <= set(df["metric"])
        assert (df.loc[df["metric"] == "acc_pristine", "n"] == 1).all()
    for f in ("ablate_tmap_curves.png", "ablate_search_history.png", "ablate_search_importance.png",
              "ablate_search_trials.csv"):
        assert (out / f).stat().st_size > 0
    c = union["client"]
    logged = {a.path for a in c.list_artifacts(union["parents"][0].info.run_id, "analysis")}
    assert {f"analysis/ablate_{a}.md" for a in EXPECTED} <= logged and "analysis/ablate_tmap_curves.png" in logged


@pytest.mark.slow
def test_analysis_rebuilds_identical_tables_from_mlflow_alone(union):
    cwd = union["cwd"]
    res = subprocess.run([sys.executable, "-m", "analysis.ablate", "--study", NAME, "--tracking-uri",
                          f"sqlite:///{cwd}/mlflow.db", "--out", str(cwd / "again"), "--no-log"],
                         cwd=cwd, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert res.returncode == 0, res.stderr[-2000:]
    for a in EXPECTED:
        for ext in TABLES:
            f = f"ablate_{a}.{ext}"
            assert (cwd / "again" / f).read_bytes() == (cwd / "results" / NAME / f).read_bytes(), f


# ------------------------------------------------------------------ analysis on a fake recorded study
def test_analysis_summarises_seeds_and_lists_gaps_from_a_fake_store(tmp_path):
    """Two seeds of two tmap settings written straight into MLflow (one seed FAILED): mean, sample std
    and n per setting computed here with `statistics`, independently of analysis.common."""
    import statistics

    from mlflow.entities import Metric, Param

    from analysis.ablate import build_ablate

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    c = MlflowClient(uri)
    exp = c.create_experiment("iqa-ls", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = c.create_run(exp, run_name="fake", tags={"iqa_ls.role": "parent", "iqa_ls.study": "fake",
                                                      "iqa_ls.kind": "ablate-tmap", "iqa_ls.seeds": "2"}).info.run_id
    accs = {("identity", 0): [0.5 + 0.01 * i for i in range(10)], ("identity", 1): [0.6 - 0.01 * i for i in range(10)],
            ("power(gamma=2)", 0): [0.4] * 9 + [0.2]}
    for order, setting in enumerate(("identity", "power(gamma=2)")):
        for seed in (0, 1):
            run = c.create_run(exp, run_name=f"tmap-{order}-seed{seed}", tags={
                "mlflow.parentRunId": parent, "iqa_ls.role": "trial", "iqa_ls.study": "fake",
                "iqa_ls.ablation": "tmap", "iqa_ls.setting": setting, "iqa_ls.setting_order": str(order),
                "iqa_ls.ablated": json.dumps({"T map": setting}), "iqa_ls.seed": str(seed)}).info.run_id
            c.log_batch(run, params=[Param("epochs", "3")])
            if (setting, seed) not in accs:
                c.set_tag(run, "iqa_ls.error", "loss is nan at epoch 2")
                c.set_terminated(run, "FAILED")
                continue
            a = accs[setting, seed]
            c.log_batch(run, metrics=[Metric(m, v, 0, 3) for m, v in zip(ACC, a)]
                        + [Metric("acc_mean_all", sum(a) / 10, 0, 3), Metric("mean_t", 0.9, 0, 3)])
            c.set_terminated(run, "FINISHED")
    res = build_ablate(study="fake", tracking_uri=uri, out_dir=tmp_path / "out", log_to_parent=False)
    cells = res["ablations"]["tmap"]["cells"].set_index(["setting", "metric"])
    ident = [accs["identity", 0], accs["identity", 1]]
    assert cells.loc[("identity", "acc_blur_2"), "mean"] == pytest.approx(statistics.mean(x[2] for x in ident))
    assert cells.loc[("identity", "acc_blur_2"), "std"] == pytest.approx(statistics.stdev(x[2] for x in ident))
    assert cells.loc[("identity", "acc_worst"), "mean"] == pytest.approx(statistics.mean(min(x) for x in ident))
    assert cells.loc[("power(gamma=2)", "acc_worst"), "n"] == 1 and math.isnan(cells.loc[("power(gamma=2)", "acc_worst"), "std"])
    from scipy import stats as sps
    x = [a[2] for a in ident]
    lo, hi = sps.t.interval(0.95, 1, loc=statistics.mean(x), scale=sps.sem(x))
    assert (cells.loc[("identity", "acc_blur_2"), "ci_low"], cells.loc[("identity", "acc_blur_2"), "ci_high"]) == \
        pytest.approx((lo, hi))
    gaps = res["ablations"]["tmap"]["gaps"]
    assert gaps[["setting", "status"]].values.tolist() == [["power(gamma=2)", "FAILED"]]
    md = (tmp_path / "out" / "ablate_tmap.md").read_text()
    assert "loss is nan at epoch 2" in md and "| identity | 2 |" in md
    from analysis.ablate import format_compact  # issue 20: the console's table, <= 120 characters a line
    lines = format_compact(res).splitlines()
    assert max(map(len, lines)) <= 120
    row = next(ln for ln in lines if ln.startswith("identity "))
    assert row.split()[1] == "2" and f"{statistics.mean(sum(x) / 10 for x in ident):.3f}" in row.split()
    assert any(ln.startswith("  gaps: power(gamma=2) seed 1 FAILED") for ln in lines)


def _record(setting: str, order: int, seed: int, reg: str, pristine: float, status: str = "FINISHED"):
    from analysis.common import TrialRecord
    from analysis.schema import ACC_METRICS
    metrics = {m: 0.5 for m in ACC_METRICS}
    metrics.update(acc_pristine=pristine, acc_mean_all=0.5, mean_t=0.9)
    tags = {"iqa_ls.ablation": "iqa", "iqa_ls.setting": setting, "iqa_ls.setting_order": str(order),
            "iqa_ls.seed": str(seed), "iqa_ls.regularization": reg, "iqa_ls.ablated": "{}"}
    return TrialRecord(f"{setting}-{seed}", f"{setting}-{seed}", status, seed, seed, tags, {}, metrics)


def test_paired_differences_subtract_one_hot_seed_by_seed():
    from analysis.ablate import compute, paired_differences
    trials = [_record("ssim", 0, 0, "iqa_ls", 0.52), _record("ssim", 0, 1, "iqa_ls", 0.63),
              _record("ssim", 0, 2, "iqa_ls", 0.40, status="FAILED"),  # not counted: no pair for seed 2
              _record("onehot", 1, 0, "onehot", 0.50), _record("onehot", 1, 1, "onehot", 0.60),
              _record("onehot", 1, 2, "onehot", 0.45)]
    a = compute(trials, "iqa", [0, 1, 2])
    ref, diffs = paired_differences(a)
    assert ref == "onehot"
    row = diffs[(diffs["setting"] == "ssim") & (diffs["metric"] == "acc_pristine")].iloc[0]
    # per seed +0.02 and +0.03: the paired t test's interval, not Welch's of the two arms (stds ~0.07)
    from scipy import stats as sps
    ref = sps.ttest_rel([0.52, 0.63], [0.50, 0.60])
    ci = ref.confidence_interval(0.95)
    assert row["n"] == 2 and row["diff"] == pytest.approx(0.025) and row["method"] == "paired"
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high)) and row["p"] == pytest.approx(ref.pvalue)
    assert set(diffs["setting"]) == {"ssim"} and set(diffs["family"]) == {"accuracy", "calibration"}
    no_ref = compute([t for t in trials if t.tags["iqa_ls.regularization"] != "onehot"], "iqa", [0, 1, 2])
    ref, diffs = paired_differences(no_ref)
    assert ref is None and diffs.empty
