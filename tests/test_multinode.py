"""`python -m study.table2` on a real multi-node Ray cluster on this machine, with a node and then the
driver killed mid-study (docs/fault-tolerance.md reports what these runs saw).

The cluster (tests/helpers_cluster.py): a head in its own network namespace running the Ray head
(no CPUs), a real `mlflow server` and the study driver, and 1-CPU worker nodes, each in its own
namespace with its own address (separate processes on their own loopback addresses where
namespaces cannot be made).
Storage is one shared temp folder. Sizes (smoke preset on the fixture, 100 images, 4 epochs) make an
epoch last about a second, so the test can watch the MLflow store and kill in the middle of a trial.
The test process reads the server's SQLite file directly: it may not reach the head's address.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers_cluster import Cluster, proc_title, trial_progress, wait_for
from helpers_mlflow import study_runs

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "cifar10-mini"
EPOCHS = 4
STRATEGIES = (1, 2, 3, 4, 5)  # five rows: more trials than the cluster's slots, in fewer minutes than nine
KEYS = {f"s{s}-seed0" for s in STRATEGIES}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # IQA_LS_TEST_CLUSTER=loopback forces the fallback (separate processes on loopback addresses)
    c = Cluster(tmp_path_factory.mktemp("cluster"), mode=os.environ.get("IQA_LS_TEST_CLUSTER", "auto"))
    try:
        c.start(workers=2)
        yield c
    finally:
        c.stop()


def study_cmd(c: Cluster, name: str, *flags) -> list[str]:
    return [sys.executable, "-m", "study.table2", "--preset", "smoke", "--data", str(FIXTURE),
            "--epochs", str(EPOCHS), "--subset", "100", "--test-subset", "50", "--progress-every", "30",
            "--address", c.address, "--tracking-uri", c.tracking_uri, "--storage", str(c.root / "storage"),
            "--name", name, "--out", str(c.root / "results" / name),
            "--strategies", ",".join(map(str, STRATEGIES)), *flags]


def start_driver(c: Cluster, name: str, *flags) -> subprocess.Popen:
    return c.popen("head", study_cmd(c, name, *flags), c.root / "logs" / f"driver-{name}.log")


def driver_log(c: Cluster, name: str) -> str:
    return (c.root / "logs" / f"driver-{name}.log").read_text(errors="replace")


def client(c: Cluster) -> MlflowClient:
    return MlflowClient(f"sqlite:///{c.mlflow_db}")  # the server's own store, read from here


def cluster_runs(c: Cluster, name: str):
    return study_runs(f"sqlite:///{c.mlflow_db}", name)  # the server's own store, read from here


def history(mc, run_id: str, metric: str) -> list:
    return [(m.step, m.value) for m in sorted(mc.get_metric_history(run_id, metric), key=lambda m: m.step)]


def assert_one_finished_run_per_trial(c: Cluster, name: str) -> dict:
    """Exactly one FINISHED child run per trial key, each with loss at steps 1..E once; returns facts."""
    mc, parents, children = cluster_runs(c, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    keys = [r.data.tags["iqa_ls.trial_key"] for r in children]
    assert sorted(keys) == sorted(KEYS)  # one run per trial, no duplicate
    facts = {}
    for r in children:
        key = r.data.tags["iqa_ls.trial_key"]
        assert r.info.status == "FINISHED", (key, r.info.status, r.data.tags.get("iqa_ls.error"))
        steps = [s for s, _ in history(mc, r.info.run_id, "loss")]
        assert steps == list(range(1, EPOCHS + 1)), (key, steps)  # no gap, no duplicate
        assert "acc_mean_all" in r.data.metrics
        facts[key] = {"run_id": r.info.run_id, "loss_steps": len(steps),
                      "start_epochs": [v for _, v in history(mc, r.info.run_id, "start_epoch")],
                      "nodes": json.loads(r.data.tags["iqa_ls.nodes"])}
    arts = c.root / "mlflow" / "artifacts"
    for f in facts.values():  # the final artifacts went through the server into its artifact store
        assert {p.name for p in arts.rglob("*") if f["run_id"] in p.parts} >= {"final_weights.pt", "config.json"}
    return facts


def record(c: Cluster, name: str, facts: dict) -> None:
    (c.root / f"facts-{name}.json").write_text(json.dumps(facts, indent=1, sort_keys=True))
    print(f"\n[{name}] cluster mode {c.mode}: " + json.dumps(facts, sort_keys=True))


def test_lost_worker_node_mid_trial_resumes_on_another_node(cluster):
    c, name = cluster, "lost-node"
    w1 = f"{c.nodes['w1'].ip}/{c.node_id('w1')}"
    t0 = time.time()
    driver = start_driver(c, name)
    try:
        def victim():  # a trial running on w1 with at least one epoch done and at least two to go
            for key, p in trial_progress(c.mlflow_db, name).items():
                if p["status"] == "RUNNING" and p["node"] == w1 and 1 <= p["last_step"] <= EPOCHS - 2:
                    return key, p["last_step"]
            assert driver.poll() is None, driver_log(c, name)[-3000:]
        key, step = wait_for(victim, 240, what="a trial mid-way on w1")
        t_kill = time.time() - t0
        killed = c.kill_node("w1")
        c.start_worker("w3")  # what an autoscaler does: a replacement node (the study does not wait for it)
        rc = driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    log = driver_log(c, name)
    assert rc == 0, log[-4000:]
    facts = assert_one_finished_run_per_trial(c, name)
    hit = facts[key]
    assert len(hit["start_epochs"]) >= 2 and hit["start_epochs"][0] == 0
    assert hit["start_epochs"][-1] >= step >= 1  # continued from its checkpoint, not from epoch 0
    assert hit["nodes"][0] == w1 and w1 not in hit["nodes"][1:]  # and on another node
    used = {n for f in facts.values() for n in f["nodes"]}
    assert len(used) >= 2 and w1 in used  # trials ran on more than one node
    record(c, name, {"killed_node": w1, "killed_pids": len(killed), "killed_at_s": round(t_kill, 1),
                     "victim": key, "victim_last_logged_epoch": step, "wall_s": round(time.time() - t0, 1),
                     "runs": {k: {kk: v[kk] for kk in ("loss_steps", "start_epochs")} | {
                         "nodes": [n.split("/")[0] + "/" + n.split("/")[1][:8] for n in v["nodes"]]}
                              for k, v in facts.items()}})


def test_killed_driver_then_resume_keeps_finished_and_continues_the_rest(cluster):
    c, name = cluster, "killed-driver"
    storage = c.root / "storage" / name / "trials"
    t0 = time.time()
    driver = start_driver(c, name)
    try:
        def moment():  # a trial finished and one mid-way (an epoch done, two to go)
            prog = trial_progress(c.mlflow_db, name)
            done = [k for k, p in prog.items() if p["status"] == "FINISHED"]
            mid = [k for k, p in prog.items() if p["status"] == "RUNNING" and 1 <= p["last_step"] <= EPOCHS - 2]
            assert driver.poll() is None, driver_log(c, name)[-3000:]
            return (done, mid) if done and mid else None
        wait_for(moment, 240, what="a finished trial and one mid-way")
        assert "study.table2" in proc_title(driver.pid)  # the driver itself, not a wrapper
        alive_at_kill = sum(len(p) for p in c.trial_processes().values())
        t_kill = time.time() - t0
        os.kill(driver.pid, signal.SIGKILL)
        t_dead = time.time()
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert alive_at_kill >= 1  # the mid-way trial's process was seen (so "gone" below means something)
    # What Ray does with a dead driver's trials (a job's actors die with its driver): observed, and
    # reported, not relied on; the owner file fences a copy that would outlive its driver.
    try:
        wait_for(lambda: not any(c.trial_processes().values()), 60, every=0.05, what="trial processes gone")
        gone_after = round(time.time() - t_dead, 2)
    except TimeoutError:
        gone_after = None
    time.sleep(1)
    at_kill = trial_progress(c.mlflow_db, name)
    finished = {k for k, p in at_kill.items() if p["status"] == "FINISHED"}
    unfinished = {k: p["last_step"] for k, p in at_kill.items() if p["status"] != "FINISHED"}
    ckpt_mtime = {k: (storage / k / "checkpoint.pt").stat().st_mtime_ns for k in finished}
    ids_before = {k: p["run_id"] for k, p in at_kill.items()}

    res = subprocess.run(c.prefix("head") + study_cmd(c, name, "--resume"), cwd=c.root, env=c.env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"resume: {len(finished)} finished trials kept, {len(KEYS) - len(finished)} to run" in res.stdout
    facts = assert_one_finished_run_per_trial(c, name)
    assert {k: f["run_id"] for k, f in facts.items() if k in ids_before} == ids_before  # same runs again
    for k in finished:  # not re-run: one attempt, checkpoint untouched
        assert facts[k]["start_epochs"] == [0.0]
        assert ckpt_mtime[k] == (storage / k / "checkpoint.pt").stat().st_mtime_ns
    resumed = [k for k, step in unfinished.items() if step >= 1]
    assert resumed
    for k in resumed:  # continued from its checkpoint (at or after the last epoch MLflow had)
        assert facts[k]["start_epochs"][-1] >= unfinished[k] >= 1, (k, facts[k])
    record(c, name, {"killed_at_s": round(t_kill, 1), "finished_at_kill": sorted(finished),
                     "unfinished_at_kill_last_logged_epoch": unfinished,
                     "trial_processes_alive_at_kill": alive_at_kill, "trial_processes_gone_after_s": gone_after,
                     "wall_s": round(time.time() - t0, 1),
                     "runs": {k: {kk: v[kk] for kk in ("loss_steps", "start_epochs")} for k, v in facts.items()}})


def test_a_trial_no_node_can_hold_is_reported_and_the_study_stopped(cluster):
    """Issue 21: the worker nodes have 1 CPU each; a trial asking for 2 is never scheduled by Ray Tune
    (it waits forever). The study waits --node-wait seconds for such a node, then stops: one line,
    exit code 1, the parent run FAILED and no trial run."""
    c, name = cluster, "unschedulable"
    t0 = time.time()
    res = subprocess.run(c.prefix("head") + study_cmd(c, name, "--cpus-per-trial", "2", "--node-wait", "3"),
                         cwd=c.root, env=c.env, capture_output=True, text=True, timeout=300)
    took = time.time() - t0
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    err = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith(f"error: no node of the cluster at {c.address} can hold a trial "
                                               "(2 CPU + 0 GPU per trial; its nodes: "), err
    assert "none joined within --node-wait 3 s" in err[0]
    assert "waiting up to 3 s for one to join (--node-wait)" in res.stdout
    _, parents, children = cluster_runs(c, name)
    assert [p.info.status for p in parents] == ["FAILED"] and children == []
    record(c, name, {"wall_s": round(took, 1), "line": err[0]})
