"""`--executor local` against `--executor ray`: the same study gives the same MLflow records and
tables; a local study killed with SIGKILL resumes to one run per trial and every epoch once; the
local executor runs where Ray cannot be imported."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "cifar10-mini"
FLAGS = ["--preset", "smoke", "--data", str(FIXTURE), "--test-subset", "50", "--progress-every", "5",
         "--cpus-per-trial", "1"]
PAIR = ["--strategies", "2,3"]  # one IQA-LS − Original pair (3 − 2): the pair tables are not empty
FIVE = ["--strategies", "1,2,3,4,5"]  # the killed study: three finish before the kill, the rest after


def _env(cwd: Path, hide_ray: bool = False) -> dict:
    path = [str(REPO)]
    if hide_ray:  # a `ray` package that cannot be imported, first on the path
        fake = cwd / "no-ray" / "ray"
        fake.mkdir(parents=True, exist_ok=True)
        (fake / "__init__.py").write_text("raise ImportError('ray is hidden by the test')\n")
        path.insert(0, str(cwd / "no-ray"))
    return dict(os.environ, IQA_LS_CACHE=str(cwd / "cache"), PYTHONPATH=os.pathsep.join(path))


def study(cwd: Path, *flags, hide_ray=False, timeout=900):
    return subprocess.run([sys.executable, "-m", "study.table2", *FLAGS, *flags], cwd=cwd,
                          env=_env(cwd, hide_ray), capture_output=True, text=True, timeout=timeout)


def records(cwd: Path, name: str = "table2") -> dict:
    """trial key -> (status, params, the tags a trial's config gives, loss history [(step, value)])."""
    c = MlflowClient(f"sqlite:///{cwd}/mlflow.db")
    exp = c.get_experiment_by_name("iqa-ls")
    runs = c.search_runs([exp.experiment_id], f"tags.`iqa_ls.study` = '{name}' and tags.`iqa_ls.role` = 'trial'",
                         max_results=1000)
    out = {}
    for r in runs:
        key = r.data.tags["iqa_ls.trial_key"]
        assert key not in out, f"two runs for {key}"
        tags = {k: v for k, v in r.data.tags.items() if k.split(".")[-1] in
                ("strategy", "train_set", "regularization", "iqa_metric", "tmap", "seed", "data_checksum")}
        hist = sorted((m.step, m.value) for m in c.get_metric_history(r.info.run_id, "loss"))
        arts = sorted(a.path for a in c.list_artifacts(r.info.run_id))
        out[key] = (r.info.status, dict(r.data.params), tags, hist, arts, r.info.run_name)
    return out


@pytest.fixture(scope="module")
def both(tmp_path_factory, new_store):
    ray_dir, local_dir = tmp_path_factory.mktemp("ray"), tmp_path_factory.mktemp("local")
    new_store(ray_dir / "mlflow.db"), new_store(local_dir / "mlflow.db")
    a = study(ray_dir, *PAIR)
    assert a.returncode == 0, a.stdout[-3000:] + a.stderr[-3000:]
    b = study(local_dir, *PAIR, "--executor", "local", hide_ray=True)  # and Ray is never imported
    assert b.returncode == 0, b.stdout[-3000:] + b.stderr[-3000:]
    return ray_dir, local_dir, b, a


def test_both_executors_give_the_same_records(both):
    ray_dir, local_dir, *_ = both
    a, b = records(ray_dir), records(local_dir)
    assert sorted(a) == sorted(b) == ["s2-seed0", "s3-seed0"]
    for key in a:
        (sa, pa, ta, ha, aa, na), (sb, pb, tb, hb, ab, nb) = a[key], b[key]
        assert sa == sb == "FINISHED" and pa == pb and ta == tb and aa == ab and na == nb, key
        assert [s for s, _ in ha] == [s for s, _ in hb] == [1, 2]
        for (_, x), (_, y) in zip(ha, hb):
            assert x == pytest.approx(y, rel=1e-6), key  # CPU, one thread: the same computation


def test_both_executors_give_the_same_tables(both):
    ray_dir, local_dir, *_ = both
    for f in ("table2.csv", "table2_pairs.csv", "table2_ece.csv", "table2_nll_pairs.csv"):
        assert (ray_dir / "results" / "table2" / f).read_bytes() == (local_dir / "results" / "table2" / f).read_bytes(), f


def test_the_local_plan_says_where_it_runs(both):
    out = both[2].stdout
    assert "--executor local: in this process" in out and "estimated wall time" in out


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_study_prints_for_a_person(both, executor):
    """Issue 20: <= 40 lines of <= 120 characters, the estimate held against the time taken as the
    last line, and nothing of Ray's own console output (its configuration box, the experiment path,
    the TensorBoard hint)."""
    out = (both[2] if executor == "local" else both[3]).stdout
    err = (both[2] if executor == "local" else both[3]).stderr
    assert " INFO mlflow" not in err, err[-2000:]  # MLflow's store-migration lines stay off the console
    lines = out.splitlines()
    assert len(lines) <= 40, out
    assert max(map(len, lines)) <= 120, max(lines, key=len)
    assert lines[0].startswith("checking study table2") and "estimated wall time" in out
    assert lines[-1].startswith("estimated ") and ", took " in lines[-1]
    for ray_text in ("Configuration for experiment", "TensorBoard", "View detailed results", "Trial status"):
        assert ray_text not in out


def test_a_killed_local_study_resumes_without_ray_to_one_run_per_trial_and_every_epoch_once(tmp_path, new_store):
    """SIGKILL the local driver (and with it the training, the same process) mid-study, then resume
    it with Ray hidden: no run doubled, none missing, every epoch step once."""
    new_store(tmp_path / "mlflow.db")
    log = tmp_path / "first.log"
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, "-m", "study.table2", *FLAGS, *FIVE, "--executor", "local", "--epochs", "3",
                              "--verbose"],  # a line per finished trial
                             cwd=tmp_path, env=_env(tmp_path, hide_ray=True), stdout=f, stderr=subprocess.STDOUT,
                             start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and "finished s3-seed0" not in log.read_text():
        time.sleep(0.5)
    assert p.poll() is None, log.read_text()[-3000:]
    os.killpg(p.pid, signal.SIGKILL)  # mid-way: three trials done, the fourth in training
    p.wait(timeout=60)
    before = records(tmp_path)
    assert 3 <= sum(v[0] == "FINISHED" for v in before.values()) < 5
    res = study(tmp_path, *FIVE, "--executor", "local", "--epochs", "3", "--resume", hide_ray=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    after = records(tmp_path)
    assert len(after) == 5 and all(v[0] == "FINISHED" for v in after.values())
    for key, (_, _, _, hist, arts, _) in after.items():
        assert [s for s, _ in hist] == [1, 2, 3], key  # no epoch twice, none missing
        assert {"final_weights.pt", "config.json", "calibration.json"} <= set(arts), key
    kept = [k for k, v in before.items() if v[0] == "FINISHED"]
    assert f"{len(kept)} finished trials kept" in res.stdout
