"""`python -m study.table2` end to end (Ray local, MLflow SQLite and a real mlflow server)."""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers_mlflow import free_port, mlflow_server, study_runs

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "cifar10-mini"
ACC = ["acc_pristine"] + [f"acc_{t}_{lv}" for t in ("blur", "noise", "jpeg") for lv in (1, 2, 3)]
TABLES = ("table2.md", "table2.csv", "table2.tex", "table2.parquet")


def study(cwd: Path, *flags, timeout=900):
    env = dict(os.environ, IQA_LS_CACHE=str(cwd / "cache"), PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "study.table2", "--preset", "smoke", "--data", str(FIXTURE),
                           "--test-subset", "50", "--progress-every", "60", *flags],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def assert_complete_study(uri: str, name: str, epochs: int = 2, strategies=tuple(range(1, 10))):
    c, parents, children = study_runs(uri, name)
    assert len(parents) == 1 and len(children) == len(strategies)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted(int(r.data.tags["iqa_ls.strategy"]) for r in children) == list(strategies)
    for r in children:
        assert r.info.status == "FINISHED"
        assert set(ACC) <= set(r.data.metrics)
        steps = [m.step for m in c.get_metric_history(r.info.run_id, "loss")]
        assert steps == list(range(1, epochs + 1))  # every epoch once: no gap, no duplicate
        for tag in ("train_set", "regularization", "iqa_metric", "tmap", "seed", "data_checksum",
                    "git_commit", "versions", "device_name"):
            assert f"iqa_ls.{tag}" in r.data.tags
        assert r.data.params["epochs"] == str(epochs)
        arts = {a.path for a in c.list_artifacts(r.info.run_id)}
        assert {"final_weights.pt", "config.json"} <= arts
    return c, parents[0]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, new_store):
    cwd = tmp_path_factory.mktemp("study")
    new_store(cwd / "mlflow.db")
    t0 = time.time()
    res = study(cwd)
    res.wall_s = time.time() - t0  # what `time` would say: the estimate is held against it
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return cwd, res


def test_smoke_study_records_nine_finished_runs_under_one_parent(recorded):
    cwd, res = recorded
    c, parent = assert_complete_study(f"sqlite:///{cwd}/mlflow.db", "table2")
    assert "estimated wall time" in res.stdout and "mlflow ui --backend-store-uri" in res.stdout
    arts = {a.path for a in c.list_artifacts(parent.info.run_id, "analysis")}
    assert "analysis/table2.md" in arts


def test_the_estimate_is_held_against_the_time_taken_and_both_are_recorded(recorded):
    """Issue 20: the plan's estimate (the whole command, from its process start: the time so far, the
    start, the workers' data, the trials, the tables) within a wide band of the wall time the study
    took (the suite runs beside other studies: the band is wide, the estimate must not be 2-2.5x low
    as when it counted the training step alone); the last line says both, the parent run has both."""
    cwd, res = recorded
    last = res.stdout.splitlines()[-1]
    m = re.fullmatch(r"estimated (\d+)m(\d\d)s, took (\d+)m(\d\d)s \(([+-]\d+)% against the estimate\)", last)
    assert m, last
    estimated, took = int(m[1]) * 60 + int(m[2]), int(m[3]) * 60 + int(m[4])
    # took: from the process start (the imports included) to its last line; the process exit follows
    assert 0.8 * res.wall_s - 2 <= took <= res.wall_s + 1, (took, res.wall_s)
    assert 0.5 <= estimated / res.wall_s <= 2.0, (estimated, res.wall_s, res.stdout)
    c, parents, _ = study_runs(f"sqlite:///{cwd}/mlflow.db", "table2")
    metrics = parents[0].data.metrics
    assert abs(metrics["estimated_wall_s"] - estimated) <= 1 and abs(metrics["took_wall_s"] - took) <= 1


def test_smoke_study_writes_table_files_nine_by_ten(recorded):
    cwd, _ = recorded
    out = cwd / "results" / "table2"
    for f in TABLES + ("table2_heatmap.png", "table2_diff_vs_paper.png"):
        assert (out / f).stat().st_size > 0
    df = pd.read_parquet(out / "table2.parquet")
    assert df.shape[0] > 0
    csv = pd.read_csv(out / "table2.csv")
    ours = csv[csv.columns[0]].nunique() if "strategy" not in csv.columns else csv["strategy"].nunique()
    assert ours == 9


def test_resume_after_finished_study_creates_no_new_runs(recorded):
    cwd, _ = recorded
    uri = f"sqlite:///{cwd}/mlflow.db"
    before = {r.info.run_id for r in study_runs(uri, "table2")[2]}
    res = study(cwd, "--resume")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "9 finished trials kept, 0 to run" in res.stdout
    assert "resume: 0 of 18 epochs left (9 trials finished)" in res.stdout  # the plan counts what is left
    _, parents, children = study_runs(uri, "table2")
    assert len(parents) == 1 and {r.info.run_id for r in children} == before


def test_analysis_rebuilds_identical_files_from_mlflow_alone(recorded):
    cwd, _ = recorded
    res = subprocess.run([sys.executable, "-m", "analysis.table2", "--study", "table2", "--tracking-uri",
                          f"sqlite:///{cwd}/mlflow.db", "--out", str(cwd / "again")],
                         cwd=cwd, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert res.returncode == 0, res.stderr[-2000:]
    for f in TABLES:
        assert (cwd / "again" / f).read_bytes() == (cwd / "results" / "table2" / f).read_bytes(), f


def test_second_study_with_same_name_is_refused_without_resume(recorded):
    cwd, _ = recorded
    res = study(cwd)
    assert res.returncode == 2 and "pass --resume" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flags,needle", [
    (["--preset", "huge"], "preset='huge'"),
    (["--seeds", "0"], "--seeds 0"),
    (["--data", "/nonexistent/cifar"], "/nonexistent/cifar"),
    (["--tracking-uri", "http://127.0.0.1:9"], "http://127.0.0.1:9"),
    (["--epochs", "0"], "--epochs 0"),
])
def test_bad_flags_exit_with_one_line_before_any_work(flags, needle, refuse):
    assert needle in refuse(*flags)


def test_a_refusal_from_the_command_line_is_one_line_and_exit_code_two(tmp_path):
    res = study(tmp_path, "--preset", "huge", timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "preset='huge'" in lines[0]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


def test_smoke_study_against_a_real_mlflow_server(tmp_path, new_store):
    new_store(tmp_path / "server.db")
    port = free_port()
    server = mlflow_server(tmp_path, port, "--artifacts-destination", str(tmp_path / "artifacts"))
    uri = f"http://127.0.0.1:{port}"
    try:
        res = study(tmp_path, "--tracking-uri", uri, "--strategies", "2,3")  # the server path, not the grid
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert_complete_study(uri, "table2", strategies=(2, 3))
        assert not (tmp_path / "mlflow.db").exists()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_plan_counts_the_epochs_a_resume_leaves(tmp_path):
    """--resume: finished trials count 0 epochs, the others the epochs after their checkpoint."""
    from types import SimpleNamespace

    import torch

    from study.resume import epochs_left
    from study.spec import Trial
    from trainables.config import TrialConfig
    from trainables.checkpoints import CHECKPOINT_FILE
    trials = [Trial(k, TrialConfig(epochs=10)) for k in ("a", "b", "c")]
    (tmp_path / "st" / "trials" / "b").mkdir(parents=True)
    torch.save({"config": {}, "epoch": 4, "model": {}, "optimizer": {}, "rng": {}},  # what a checkpoint holds
               tmp_path / "st" / "trials" / "b" / CHECKPOINT_FILE)
    rec = SimpleNamespace(recorded_finished_keys=lambda: {"a"})
    args = SimpleNamespace(resume=True, name="st")
    left, note = epochs_left(args, trials, rec, str(tmp_path))
    assert left == {"b": 6, "c": 10} and note == "resume: 16 of 30 epochs left (1 trials finished)"
    assert epochs_left(SimpleNamespace(resume=False, name="st"), trials, rec, str(tmp_path)) == (
        {"a": 10, "b": 10, "c": 10}, "")
    left, note = epochs_left(args, trials, rec, "s3://bucket/x")
    assert left == {"b": 10, "c": 10} and "counted from epoch 0" in note


def test_presets_scale_their_decay_step_with_the_epochs():
    from search_spaces.presets import resolve
    assert resolve("paper")["lr_decay_every"] == 350 and resolve("paper", epochs=1000)["lr_decay_every"] == 175
    assert resolve("quick")["lr_decay_every"] == 4  # the paper's 350/2000 of 24 epochs
    assert resolve("overfit")["lr_decay_every"] == 50 and resolve("overfit", epochs=40)["lr_decay_every"] == 20
    assert resolve("overfit", epochs=40, lr_decay_every=7)["lr_decay_every"] == 7


def test_estimate_counts_rounds_on_cpu_and_adds_up_on_a_shared_device():
    from study.plan import estimate_seconds
    assert estimate_seconds([10.0] * 9, parallel=2, shared_device=False) == 50.0  # 5 rounds, the last alone
    assert estimate_seconds([10.0] * 8, parallel=2, shared_device=False) == 40.0
    assert estimate_seconds([10.0, 30.0], parallel=4, shared_device=False) == 20.0  # one round, mean time
    assert estimate_seconds([10.0] * 9, parallel=4, shared_device=True) == 90.0
    assert estimate_seconds([], parallel=2, shared_device=False) == 0.0


def test_probe_measures_training_and_evaluation_rates():
    from study.plan import probe_throughput
    from trainables.config import TrialConfig
    train_ips, eval_ips = probe_throughput(TrialConfig(), threads=1, device="cpu", seconds=0.5)
    # both measured, not assumed (their ratio is machine-dependent: 1.3x on the 2-core CPU here)
    assert all(isinstance(v, float) and 0 < v < float("inf") for v in (train_ips, eval_ips))


def _table2_args(*flags):
    import argparse

    from study.flags import add_common_flags
    p = argparse.ArgumentParser()
    add_common_flags(p, "table2")
    args = p.parse_args(["--preset", "smoke", "--data", str(FIXTURE), *flags])
    return args


def test_the_training_subset_follows_the_trial_seed_unless_fixed():
    from study.table2 import build_trials
    trials = build_trials(_table2_args("--seeds", "3"))
    assert {(t.config.seed, t.config.subset_seed) for t in trials} == {(0, 0), (1, 1), (2, 2)}
    # both arms of a pair share the seed's subset: the pairs stay paired
    by = {(t.config.strategy, t.config.seed): t.config for t in trials}
    assert all(by[2, s].subset_seed == by[3, s].subset_seed for s in range(3))
    fixed = build_trials(_table2_args("--seeds", "3", "--fixed-subset"))
    assert {t.config.subset_seed for t in fixed} == {0}


def test_grids_keep_the_full_pool_and_take_a_validation_split_only_when_asked():
    from study.spec import StudyError
    from study.table2 import build_trials
    assert {t.config.val_size for t in build_trials(_table2_args())} == {0}
    assert {t.config.val_size for t in build_trials(_table2_args("--val-size", "40"))} == {40}
    with pytest.raises(StudyError, match="--val-size -1"):
        build_trials(_table2_args("--val-size", "-1"))


def test_a_search_objective_on_test_metrics_is_refused():
    from study.spec import Search, StudyError
    from trainables.config import TrialConfig
    base = TrialConfig(val_size=40)
    with pytest.raises(StudyError, match=r"search objective \['acc_mean_all'\] is not allowed"):
        Search(base=base, n_trials=3, suggest=None, objective_of=("acc_mean_all",))
    with pytest.raises(StudyError, match="needs a validation split"):
        Search(base=TrialConfig(), n_trials=3, suggest=None, objective_of=("val_acc_mean_all",))
    Search(base=base, n_trials=3, suggest=None, objective_of=("val_acc_mean_all",))  # allowed
