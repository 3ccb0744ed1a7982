"""CIFAR-10-C end to end: a smoke study with `--cifar10c regenerate` (Ray local, MLflow SQLite), the
tables rebuilt from MLflow alone, `python -m study.cifar10c` on the recorded study (idempotent,
refusing other data, `--replace`), and the refusals of bad flags before any work."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "cifar10-mini"
FEW = "gaussian_noise,contrast"  # 1 seen + 1 unseen benchmark corruption: 11 sets per model, seconds
PAIR = ("--strategies", "2,3")  # one IQA-LS − Original pair (3 − 2): every table has a difference row
C10C_FLAGS = ("--cifar10c", "regenerate", "--cifar10c-subset", "20", "--cifar10c-corruptions", FEW)
TABLES = ("cifar10c.md", "cifar10c.csv", "cifar10c.tex", "cifar10c.parquet", "cifar10c_corruptions.csv",
          "cifar10c_pairs.csv", "cifar10c_robustbench.json")


def env_of(cwd: Path) -> dict:
    return dict(os.environ, IQA_LS_CACHE=str(cwd / "cache"), PYTHONPATH=str(REPO))


def study(cwd: Path, *flags, timeout=900):
    return subprocess.run([sys.executable, "-m", "study.table2", "--preset", "smoke", "--data", str(FIXTURE),
                           "--test-subset", "50", "--progress-every", "60", "--name", "c10c", *PAIR, *flags],
                          cwd=cwd, env=env_of(cwd), capture_output=True, text=True, timeout=timeout)


def evaluate(cwd: Path, *flags, timeout=600):
    return subprocess.run([sys.executable, "-m", "study.cifar10c", "--study", "c10c", "--tracking-uri",
                           f"sqlite:///{cwd}/mlflow.db", "--threads", "1", "--no-log", *flags],
                          cwd=cwd, env=env_of(cwd), capture_output=True, text=True, timeout=timeout)


def children(cwd: Path):
    c = MlflowClient(f"sqlite:///{cwd}/mlflow.db")
    exp = c.get_experiment_by_name("iqa-ls")
    runs = c.search_runs([exp.experiment_id], "tags.`iqa_ls.study` = 'c10c'", max_results=100)
    return c, [r for r in runs if r.data.tags.get("iqa_ls.role") == "trial"], \
        next(r for r in runs if r.data.tags.get("iqa_ls.role") == "parent")


def artifact(c, run_id: str, path: str, tmp: Path) -> dict:
    bar = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"  # no progress bar per download in the test log
    old = os.environ.get(bar)
    os.environ[bar] = "false"
    try:
        return json.loads(Path(c.download_artifacts(run_id, path, str(tmp))).read_text())
    finally:
        if old is None:
            os.environ.pop(bar)
        else:
            os.environ[bar] = old


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, new_store):
    cwd = tmp_path_factory.mktemp("c10c")
    new_store(cwd / "mlflow.db")
    res = study(cwd, *C10C_FLAGS)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return cwd, res


def test_every_trial_logs_its_cifar10c_metrics_and_artifact(recorded, tmp_path):
    cwd, res = recorded
    assert "CIFAR-10-C after each trial's last epoch: regenerated from the test split" in res.stdout
    assert "11 sets x 20 images per trial" in res.stdout
    c, runs, parent = children(cwd)
    assert len(runs) == 2
    for r in runs:
        assert r.info.status == "FINISHED"
        names = [k for k in r.data.metrics if k.startswith("c10c_")]
        assert len(names) == 11 * 6 + 4 * 6 + 1  # sets x metrics, the 4 means, c10c_seconds
        assert [m.step for m in c.get_metric_history(r.info.run_id, "c10c_acc_contrast_5")] == [2]  # last epoch
        assert r.data.params["cifar10c"] == "regenerate" and r.data.params["cifar10c_subset"] == "20"
        doc = artifact(c, r.info.run_id, "cifar10c.json", tmp_path / r.info.run_id)
        assert doc["source"]["corruptions"] == ["gaussian_noise", "contrast"] and doc["key"]["n_images"] == 20
        assert doc["sets"]["contrast"]["5"]["acc"] == r.data.metrics["c10c_acc_contrast_5"]
    arts = {a.path for a in c.list_artifacts(parent.info.run_id, "analysis")}
    assert {"analysis/cifar10c.md", "analysis/cifar10c_severity.png", "analysis/table2.md"} <= arts
    # the study printed the CIFAR-10-C table beside Table 2
    assert "CIFAR-10-C, study c10c" in res.stdout and "CIFAR-10-C (regenerated from the test split" in res.stdout
    assert "3 − 2" in res.stdout.split("CIFAR-10-C, study c10c")[1]
    for f in TABLES + ("cifar10c_severity.png",):
        assert (cwd / "results" / "c10c" / f).stat().st_size > 0


def test_analysis_rebuilds_the_same_tables_from_mlflow_alone(recorded):
    cwd, _ = recorded
    res = subprocess.run([sys.executable, "-m", "analysis.cifar10c", "--study", "c10c", "--tracking-uri",
                          f"sqlite:///{cwd}/mlflow.db", "--out", str(cwd / "again"), "--no-log"],
                         cwd=cwd, env=env_of(cwd), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    for f in TABLES:
        assert (cwd / "again" / f).read_bytes() == (cwd / "results" / "c10c" / f).read_bytes(), f


def test_evaluating_the_recorded_weights_again_on_the_same_data_skips_every_run(recorded):
    cwd, _ = recorded
    res = evaluate(cwd, "--subset", "20", "--corruptions", FEW, "--out", str(cwd / "same"))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "2 already evaluated on the same CIFAR-10-C data (skipped), 0 to evaluate" in res.stdout
    c, runs, _ = children(cwd)
    for r in runs:
        assert len(c.get_metric_history(r.info.run_id, "c10c_acc_clean")) == 1


def test_other_data_is_refused_then_replace_logs_it_and_keeps_the_old_artifact(recorded, tmp_path):
    cwd, _ = recorded
    more = "gaussian_noise,contrast,fog"
    res = evaluate(cwd, "--subset", "20", "--corruptions", more)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "was evaluated on other CIFAR-10-C data" in lines[0] and "--replace" in lines[0]
    c, runs, _ = children(cwd)
    assert all("c10c_acc_fog_1" not in r.data.metrics for r in runs)  # nothing was logged
    res = evaluate(cwd, "--subset", "20", "--corruptions", more, "--replace", "--out", str(cwd / "replaced"))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "0 already evaluated on the same CIFAR-10-C data (skipped), 2 to evaluate" in res.stdout
    c, runs, _ = children(cwd)
    for r in runs:
        rid = r.info.run_id
        old = artifact(c, rid, "cifar10c_replaced/0.json", tmp_path / rid / "old")
        new = artifact(c, rid, "cifar10c.json", tmp_path / rid / "new")
        assert new["source"]["corruptions"] == ["gaussian_noise", "fog", "contrast"]
        # the recorded weights, rebuilt, give what the trial measured on the same images
        for name in ("clean", "gaussian_noise", "contrast"):
            assert new["sets"][name] == old["sets"][name], name
        assert [m.step for m in c.get_metric_history(rid, "c10c_acc_fog_3")] == [2]
        assert json.loads(r.data.tags["iqa_ls.cifar10c"]) == new["key"]
    md = (cwd / "replaced" / "cifar10c.md").read_text()
    assert "3 corruptions x 5 severities" in md


def test_a_resume_with_other_cifar10c_flags_is_refused_before_any_work(recorded, monkeypatch, capsys):
    """The trials' checkpoints hold their config: with other flags every unfinished trial would fail."""
    from study import table2

    cwd, _ = recorded
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("IQA_LS_CACHE", str(cwd / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = {r.info.run_id: r.info.status for r in children(cwd)[1]}
    rc = table2.main(["--preset", "smoke", "--data", str(FIXTURE), "--test-subset", "50", "--name", "c10c",
                      *PAIR, "--resume", *C10C_FLAGS[:3], "30", *C10C_FLAGS[4:]])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "--resume with cifar10c_subset=30 is not allowed" in err[0] and "cifar10c_subset=20" in err[0]
    assert {r.info.run_id: r.info.status for r in children(cwd)[1]} == before


@pytest.fixture
def bare(tmp_path, monkeypatch):
    """An empty folder as the working directory, the data cache inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IQA_LS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _official_with_a_bad_file(folder: Path) -> Path:
    folder.mkdir()
    np.save(folder / "labels.npy", np.zeros(5 * 200, np.uint8))
    np.save(folder / "contrast.npy", np.zeros((1000, 32, 32, 1), np.uint8))
    return folder


@pytest.mark.parametrize("flags,needle", [
    (["--cifar10c", "/nonexistent/CIFAR-10-C"], "/nonexistent/CIFAR-10-C"),
    (["--cifar10c-subset", "5"], "--cifar10c-subset is not allowed without --cifar10c"),
    (["--cifar10c", "regenerate", "--cifar10c-corruptions", "frost"], "frost cannot be regenerated"),
    (["--cifar10c", "regenerate", "--cifar10c-subset", "-1"], "--cifar10c-subset -1"),
    (["--cifar10c", "BAD", "--cifar10c-corruptions", "contrast"], "contrast.npy' has shape (1000, 32, 32, 1)"),
])
def test_bad_cifar10c_flags_exit_with_one_line_before_any_work(bare, capsys, flags, needle):
    from study import table2

    if "BAD" in flags:
        flags = [str(_official_with_a_bad_file(bare / "C10C")) if f == "BAD" else f for f in flags]
    rc = table2.main(["--preset", "smoke", "--data", str(FIXTURE), "--name", "bad", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err
    assert not (bare / "mlflow.db").exists() and not (bare / "ray_results").exists()


@pytest.mark.parametrize("flags,needle", [
    (["--study", "nope"], "no MLflow store at"),
    (["--study", "nope", "--subset", "-1"], "--subset -1"),
    (["--study", "nope", "--device", "tpu"], "--device tpu"),
    (["--study", "nope", "--corruptions", ","], "--corruptions ','"),
])
def test_study_cifar10c_refuses_bad_input_in_one_line(bare, capsys, flags, needle):
    from study import cifar10c

    rc = cifar10c.main(flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err
    assert not (bare / "mlflow.db").exists()
