"""Issue 11 end to end: real study drivers (Ray local, MLflow SQLite or a real server) on the fixture.

- a second terminal on a running study is refused in one line and the first one finishes untouched;
- nothing of the data set is in Ray's pickles (tuner.pkl was 147 MB: a closure held the data);
- runs are named by what they are, the parent run describes the study and carries summary metrics,
  artifacts sit beside the SQLite store, the printed link opens the runs view;
- a --resume with other schedule flags is refused naming the flag and both values, one with other
  run-only flags is accepted, and a --resume of a finished study neither probes nor reopens it;
- a tracking server that dies mid-study stops the driver in one line (exit 1), and a --resume after
  it is back finishes every trial with each epoch logged once.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from helpers_mlflow import free_port, mlflow_server

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "cifar10-mini"
SMOKE = ["--preset", "smoke", "--data", str(FIXTURE), "--subset", "100", "--test-subset", "50",
         "--progress-every", "60", "--strategies", "1,2,3"]  # three rows: two rounds on two CPUs


def env_for(tmp: Path) -> dict:
    env = dict(os.environ, IQA_LS_CACHE=str(tmp / "cache"), PYTHONPATH=str(REPO))
    for var in ("RAY_ADDRESS", "IQA_LS_FAULT", "MLFLOW_TRACKING_URI"):
        env.pop(var, None)
    return env


def command(module: str, *flags) -> list[str]:
    return [sys.executable, "-m", module, *flags]


@pytest.fixture(scope="module")
def study(tmp_path_factory, new_store):
    """Driver A runs a smoke Table 2 (store in db/, run from run/); driver B starts the same study with
    --resume in a second terminal while A holds it."""
    tmp = tmp_path_factory.mktemp("trust")
    new_store(tmp / "db" / "mlflow.db")
    (tmp / "run").mkdir()
    uri = f"sqlite:///{tmp}/db/mlflow.db"
    flags = [*SMOKE, "--tracking-uri", uri]
    a = subprocess.Popen(command("study.table2", *flags), cwd=tmp / "run", env=env_for(tmp),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = tmp / "run" / "ray_results" / "table2" / "driver.lock"
    deadline = time.time() + 300
    while not lock.exists() and a.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    b = subprocess.run(command("study.table2", *flags, "--resume"), cwd=tmp / "run", env=env_for(tmp),
                       capture_output=True, text=True, timeout=300)
    a_running_after_b = a.poll() is None
    out, err = a.communicate(timeout=900)
    return {"tmp": tmp, "uri": uri, "flags": flags, "a": (a.returncode, out, err), "b": b, "pid": a.pid,
            "a_running_after_b": a_running_after_b}


def runs(uri: str):
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("iqa-ls")
    all_runs = c.search_runs([exp.experiment_id], "", max_results=1000)
    parents = [r for r in all_runs if r.data.tags.get("iqa_ls.role") == "parent"]
    children = [r for r in all_runs if r.data.tags.get("iqa_ls.role") == "trial"]
    return c, exp, parents, children


def test_a_second_terminal_is_refused_while_the_first_drives_the_study(study):
    b = study["b"]
    assert study["a_running_after_b"], "driver A ended before B was refused: the test saw no overlap"
    err = b.stderr.strip().splitlines()
    assert b.returncode == 2 and len(err) == 1, b.stderr[-2000:]
    assert f"study is driven by another process: pid {study['pid']} on host {socket.gethostname()}" in err[0]
    rc, out, a_err = study["a"]
    assert rc == 0, out[-3000:] + a_err[-3000:]
    c, _, parents, children = runs(study["uri"])
    assert len(parents) == 1 and len(children) == 3
    for r in children:
        assert r.info.status == "FINISHED" and "acc_mean_all" in r.data.metrics
        assert sorted(m.step for m in c.get_metric_history(r.info.run_id, "loss")) == [1, 2]
    assert not (study["tmp"] / "run" / "ray_results" / "table2" / "driver.lock").exists()  # released


def test_nothing_of_the_data_set_is_in_rays_pickles(study):
    from trainables.data import load_split
    first_image = load_split(str(FIXTURE), "train", study["tmp"] / "cache").images[0].numpy().tobytes()
    storage = study["tmp"] / "run" / "ray_results" / "table2"
    pickles = list(storage.rglob("*.pkl"))
    assert any(p.name == "tuner.pkl" for p in pickles)
    for p in pickles:
        blob = p.read_bytes()
        assert len(blob) < 1 << 20, (p, len(blob))
        assert first_image not in blob, p
    ray_dirs = [d for d in storage.iterdir() if d.name.startswith("ray-")]
    assert sum(f.stat().st_size for d in ray_dirs for f in d.rglob("*") if f.is_file()) < 5 << 20


def test_runs_say_what_they_are_and_the_parent_describes_the_study(study):
    _, out, _ = study["a"]
    c, exp, parents, children = runs(study["uri"])
    names = {r.data.tags["iqa_ls.trial_key"]: r.info.run_name for r in children}
    assert names["s3-seed0"] == "s3 blur+LS #0" and names["s1-seed0"] == "s1 pristine #0"
    parent = parents[0]
    note = parent.data.tags["mlflow.note.content"]
    assert "python -m study.table2 --preset smoke" in note and "Plan:" in note and "probe:" in note
    m = parent.data.metrics
    assert m["trials"] == 3 and m["trials_finished"] == 3 and m["trials_failed"] == 0 and "acc_mean_all_mean" in m
    # artifacts beside the store, not in ./mlruns of the folder the command ran in
    assert not (study["tmp"] / "run" / "mlruns").exists()
    assert exp.artifact_location == (study["tmp"] / "db" / "mlartifacts").as_uri()
    assert list((study["tmp"] / "db" / "mlartifacts").rglob("final_weights.pt"))
    assert f"#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning" in out
    assert "preset smoke is a pipeline check" in out  # in the plan and after the table
    assert "trials 3/3 done" in out


def test_resume_with_other_schedule_flags_is_refused_and_run_flags_are_not(study):
    tmp, flags = study["tmp"], study["flags"]
    res = subprocess.run(command("study.table2", *flags, "--resume", "--epochs", "3"), cwd=tmp / "run",
                         env=env_for(tmp), capture_output=True, text=True, timeout=300)
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(err) == 1, res.stderr[-2000:]
    assert "--epochs is 3 but study 'table2' was recorded with (not given: 2)" in err[0]
    _, _, parents, _ = runs(study["uri"])
    end = parents[0].info.end_time
    res = subprocess.run(command("study.table2", *flags, "--resume", "--cpus-per-trial", "2", "--pack", "off"),
                         cwd=tmp / "run", env=env_for(tmp), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "probe: skipped (every trial is finished: nothing to run)" in res.stdout
    assert "3 finished trials kept, 0 to run" in res.stdout
    _, _, parents, children = runs(study["uri"])
    assert len(parents) == 1 and len(children) == 3
    assert parents[0].info.status == "FINISHED" and parents[0].info.end_time == end  # not reopened


# ------------------------------------------------------------------ a tracking server that dies
def _server(tmp: Path, port: int) -> subprocess.Popen:
    # its own session: _stop kills the server and its workers at once, as a crash would
    return mlflow_server(tmp, port, "--artifacts-destination", str(tmp / "artifacts"), new_session=True)


def _stop(p: subprocess.Popen) -> None:
    os.killpg(p.pid, signal.SIGKILL)  # the server and its workers, at once: a crash, not a shutdown
    p.wait(timeout=30)


def test_a_dead_tracking_server_stops_the_study_in_one_line_and_resume_finishes_it(tmp_path, new_store):
    new_store(tmp_path / "server.db")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    flags = ["--levels", "--preset", "smoke", "--data", str(FIXTURE), "--subset", "100", "--test-subset", "50",
             "--epochs", "2", "--tracking-uri", uri, "--progress-every", "60", "--name", "lost"]
    server = _server(tmp_path, port)
    try:
        driver = subprocess.Popen(command("study.ablate", *flags), cwd=tmp_path, env=env_for(tmp_path),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        store = MlflowClient(f"sqlite:///{tmp_path}/server.db")  # the server's file, read directly
        deadline = time.time() + 600
        while time.time() < deadline and driver.poll() is None:
            exp = store.get_experiment_by_name("iqa-ls")
            kids = store.search_runs([exp.experiment_id], "tags.`iqa_ls.role` = 'trial'") if exp else []
            if any(store.get_metric_history(r.info.run_id, "loss") for r in kids):
                break
            time.sleep(0.5)
        assert driver.poll() is None, driver.communicate()[1][-3000:]
        _stop(server)
        t_dead = time.time()
        out, err = driver.communicate(timeout=300)
        waited = time.time() - t_dead
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert driver.returncode == 1, out[-2000:] + err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        assert lines[-1].startswith(f"error: writing to the tracking store {uri} failed (")
        assert "run the same command with --resume" in lines[-1]
        assert waited < 120, waited
        server = _server(tmp_path, port)
        res = subprocess.run(command("study.ablate", *flags, "--resume"), cwd=tmp_path, env=env_for(tmp_path),
                             capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        c = MlflowClient(uri)
        exp = c.get_experiment_by_name("iqa-ls")
        kids = c.search_runs([exp.experiment_id], "tags.`iqa_ls.role` = 'trial'")
        assert len(kids) == 4
        for r in kids:
            assert r.info.status == "FINISHED"
            assert sorted(m.step for m in c.get_metric_history(r.info.run_id, "loss")) == [1, 2]
    finally:
        if server.poll() is None:
            _stop(server)
