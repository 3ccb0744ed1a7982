"""Bad input refused before the first trial, and faults a study survives, on one node.

Refusals (extending tests/test_study_table2.py, which covers --preset, --seeds, a missing --data,
a closed tracking port and --epochs): each is one line naming the value and what is allowed, exit
code 2, and nothing written (no mlflow.db, no ray_results, no results). They run `study.table2.main`
in-process (the wiring to a process exit code is what test_study_table2 checks).
Faults: a trial whose loss turns NaN and a trial that crashes (IQA_LS_FAULT, the documented
fault-injection hook) are FAILED in MLflow with the reason while the rest finish and the table
shows the gap; the pieces behind node/driver loss (owner fence, checkpoint history, gap filling,
attempt records) are checked here without Ray; tests/test_multinode.py kills real nodes and drivers.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers_mlflow import free_port, mlflow_server
from search_spaces import table2 as table2_space
from study import table2
from trainables import data, distortions, iqa, labels
from trainables.config import REGULARIZATIONS, TRAIN_SETS, TrialConfig
from trainables.checkpoints import load_checkpoint
from trainables.train import run_trial

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "cifar10-mini"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IQA_LS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("IQA_LS_FAULT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


# ------------------------------------------------------------------ numbers and names on the command line
@pytest.mark.parametrize("flags,needles", [
    (["--subset", "-1"], ["--subset -1", ">= 0"]),
    (["--test-subset", "-5"], ["--test-subset -5", ">= 0"]),
    (["--seeds", "-3"], ["--seeds -3", ">= 1"]),
    (["--epochs", "-2"], ["--epochs -2", ">= 1"]),
    (["--cpus-per-trial", "0"], ["--cpus-per-trial 0", "> 0"]),
    (["--gpus-per-trial", "-0.5"], ["--gpus-per-trial -0.5", ">= 0"]),
    (["--max-failures", "-1"], ["--max-failures -1", ">= 0"]),
    (["--preset", "Smoke"], ["'Smoke'", "'paper'", "'quick'", "'smoke'"]),
])
def test_bad_numbers_and_names_are_refused_in_one_line(flags, needles, refuse):
    line = refuse(*flags)
    for n in needles:
        assert n in line, line


def test_a_non_integer_is_refused_by_argparse_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        table2.main(["--seeds", "two"])
    assert e.value.code == 2
    assert "argument --seeds: invalid int value: 'two'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


REGISTRIES = {  # config field -> every name it allows (the registries the trials choose from)
    "train_set": sorted(TRAIN_SETS),
    "regularization": list(REGULARIZATIONS),
    "iqa_metric": sorted(iqa.METRICS),
    "tmap": sorted(labels.TMAPS),
    "distortion_types": sorted(distortions.DISTORTIONS),
}


@pytest.mark.parametrize("field", sorted(REGISTRIES))
def test_an_unknown_name_in_the_grid_is_refused_listing_every_allowed_name(monkeypatch, field, refuse):
    bad = ("fog",) if field == "distortion_types" else "nope"
    rows = table2_space.grid(1)
    monkeypatch.setattr(table2_space, "grid", lambda seeds, strategies=None: [{**rows[0], field: bad}] + rows[1:])
    line = refuse()
    assert f"{field}=" in line and ("'fog'" in line or "'nope'" in line)
    for name in REGISTRIES[field]:
        assert name in line, (name, line)


@pytest.mark.parametrize("field,value,needle", [
    ("mix", (0.6, 0.15, 0.15, 0.15), "summing to 1"),  # ratios
    ("mix", (0.7, 0.3, 0.0), "4 non-negative shares"),  # levels: pristine + 3
    ("seed", -1, "seed=-1"),
    ("lr", float("nan"), "lr=nan"),
])
def test_an_invalid_number_in_the_grid_is_refused(monkeypatch, field, value, needle, refuse):
    rows = table2_space.grid(1)
    monkeypatch.setattr(table2_space, "grid", lambda seeds, strategies=None: [{**rows[0], field: value}] + rows[1:])
    assert needle in refuse()


# ------------------------------------------------------------------ tracking store and storage
def test_tracking_uri_schemes_other_than_sqlite_and_http_are_refused(refuse):
    for uri in ("file:///tmp/mlruns", "mlruns"):
        line = refuse("--tracking-uri", uri)
        assert repr(uri) in line and "sqlite:///PATH or http(s)://HOST:PORT" in line


def test_sqlite_in_a_missing_folder_is_refused(tmp_path, refuse):
    line = refuse("--tracking-uri", f"sqlite:///{tmp_path}/nowhere/mlflow.db")
    assert f"{tmp_path}/nowhere" in line and "not writable" in line
    assert not (tmp_path / "nowhere").exists()


def test_a_tracking_server_that_accepts_but_never_answers_is_refused(refuse):
    with socket.socket() as s:  # a listening socket nobody accepts on: the connection hangs
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
        line = refuse("--tracking-uri", uri)
    assert uri in line and "does not answer" in line


@pytest.mark.slow
def test_a_tracking_server_that_answers_health_but_refuses_the_api_is_refused(tmp_path, refuse):
    port = free_port()
    server = mlflow_server(tmp_path, port, "--allowed-hosts", "mlflow.example.org")  # MLflow 3: not us
    uri = f"http://127.0.0.1:{port}"
    try:
        line = refuse("--tracking-uri", uri)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert uri in line and "HTTP 403" in line and "--allowed-hosts" in line


@pytest.mark.parametrize("where", ["under_a_file", "read_only"])
def test_storage_that_cannot_be_written_is_refused(tmp_path, where, refuse):
    if where == "under_a_file":
        (tmp_path / "afile").write_text("x")
        storage = str(tmp_path / "afile" / "results")
    else:  # a read-only mount: os.access says "writable" to root here, a real write does not
        storage = "/sys/iqa-ls-results"
    line = refuse("--storage", storage)
    assert f"--storage {storage}" in line and "allowed: a writable folder" in line


# ------------------------------------------------------------------ data files: missing, truncated, checksums
def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def copy(tmp_path) -> Path:
    d = tmp_path / "data"
    shutil.copytree(FIXTURE, d)
    return d


def test_a_missing_data_file_is_refused(copy, refuse):
    (copy / "test.parquet").unlink()
    line = refuse(data_dir=copy)
    assert str(copy) in line and "train.parquet and test.parquet" in line


def test_a_truncated_data_file_is_refused(copy, refuse):
    f = copy / "train.parquet"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    line = refuse(data_dir=copy)
    assert str(f) in line and "not a readable parquet file" in line


def test_matching_sha256sums_are_accepted(copy):
    names = ("train.parquet", "test.parquet")
    (copy / "SHA256SUMS").write_text("".join(f"{sha256(copy / n)}  {n}\n" for n in names))
    assert data.resolve_source(str(copy)) == str(copy)


def test_a_file_that_fails_its_sha256sums_entry_is_refused_naming_both_hashes(copy, refuse):
    good = sha256(copy / "test.parquet")
    (copy / "SHA256SUMS").write_text(f"# sha256sum *.parquet\n{'0' * 64}  train.parquet\n{good} *test.parquet\n")
    line = refuse(data_dir=copy)
    assert str(copy / "train.parquet") in line and sha256(copy / "train.parquet") in line and "0" * 64 in line


def test_a_truncated_file_with_a_checksum_is_reported_as_a_checksum_mismatch(copy):
    (copy / "SHA256SUMS").write_text(f"{sha256(copy / 'train.parquet')}  train.parquet\n")
    f = copy / "train.parquet"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(data.DataError, match="has sha256 .* but .*SHA256SUMS' lists"):
        data.resolve_source(str(copy))


def test_a_sidecar_sha256_is_checked_for_a_single_file_source(copy):
    (copy / "test.parquet.sha256").write_text(f"{'f' * 64}  test.parquet\n")
    with pytest.raises(data.DataError, match="test.parquet.sha256' lists f{64}"):
        data.resolve_source(str(copy / "train.parquet"))  # the sibling split is checked too
    (copy / "test.parquet.sha256").write_text(sha256(copy / "test.parquet"))
    assert data.resolve_source(str(copy / "train.parquet")) == str(copy / "train.parquet")


def test_a_malformed_sha256sums_line_is_refused(copy):
    (copy / "SHA256SUMS").write_text("train.parquet deadbeef\n")
    with pytest.raises(data.DataError, match="line 1 of .*SHA256SUMS.*the output of sha256sum"):
        data.resolve_source(str(copy))


# ------------------------------------------------------------------ the fault-injection hook itself
def test_fault_hook_values_are_refused_before_anything_is_written(monkeypatch, refuse):
    for value, needle in (("boom@s1-seed0", "'boom@s1-seed0'"), ("nan@s99-seed0", "'nan@s99-seed0'"),
                          ("nan", "'nan'")):
        monkeypatch.setenv("IQA_LS_FAULT", value)
        line = refuse()
        assert needle in line and "['nan', 'raise']" in line


# ------------------------------------------------------------------ what a restarted trial relies on (no Ray)
def tiny(**kw) -> TrialConfig:
    base = dict(data=str(FIXTURE), epochs=3, lr_decay_every=1, batch_size=50, subset=100, test_subset=20,
                device="cpu", train_set="pristine", regularization="onehot", threads=1)
    return TrialConfig(**{**base, **kw})


def test_checkpoint_carries_every_epochs_metrics_across_a_resume(tmp_path):
    seen = []
    run_trial(tiny(epochs=1), seen.append, checkpoint_dir=tmp_path)
    assert [m["epoch"] for m in load_checkpoint(tmp_path)["history"]] == [1]
    cfg = tiny(epochs=2)  # the same trial, resumed (as a longer schedule of the same config would be refused,
    state = load_checkpoint(tmp_path)  # continue by hand: epoch 1 done, run epoch 2 on top)
    state["config"] = cfg.to_dict()
    torch.save(state, tmp_path / "checkpoint.pt")
    run_trial(cfg, seen.append, checkpoint_dir=tmp_path)
    history = load_checkpoint(tmp_path)["history"]
    assert [m["epoch"] for m in history] == [1, 2] == [m["epoch"] for m in seen]
    assert history[1]["loss"] == seen[1]["loss"] and "acc_pristine" in history[1]
    assert "checkpoint" not in history[0]


def test_last_claim_on_a_trial_folder_wins(tmp_path):
    from study.execution import OWNER_FILE, TrialStore
    a, b = TrialStore(str(tmp_path / "t")), TrialStore(str(tmp_path / "t"))
    ta = a.claim({"node": "n1"})
    assert a.owner()["token"] == ta and a.owner()["node"] == "n1"
    tb = b.claim({"node": "n2"})
    assert a.owner()["token"] == tb != ta
    assert [p.name for p in (tmp_path / "t").iterdir()] == [OWNER_FILE]  # no temp file left behind


def test_a_superseded_trial_copy_stops_reporting(tmp_path, monkeypatch):
    """A stale copy (its driver died, or its node was cut off and the trial restarted elsewhere)
    stops at its next epoch end once a newer copy claimed the folder, and says nothing more."""
    from study import execution
    store = tmp_path / "trials" / "k"
    reports = []

    def fake_report(m):
        reports.append(m)
        if m.get("epoch") == 1:  # meanwhile a newer copy of the trial starts and claims the folder
            execution.TrialStore(str(store)).claim({"node": "other", "pid": 1})

    execution.run_spec({"key": "k", "config": tiny().to_dict(), "store": str(store),
                        "cache_dir": os.environ["IQA_LS_CACHE"]}, fake_report, "10.0.0.9/abc")
    assert [m.get("epoch") for m in reports] == [1]
    assert reports[0]["start_epoch"] == 0 and reports[0]["node"] == "10.0.0.9/abc"


def test_parse_faults():
    from study.execution import parse_faults
    assert parse_faults("nan@a, raise@b", {"a", "b"}) == {"a": "nan", "b": "raise"}
    assert parse_faults("", {"a"}) == {} and parse_faults(None, {"a"}) == {}
    for bad in ("nan@c", "kill@a", "a"):
        with pytest.raises(ValueError, match="IQA_LS_FAULT"):
            parse_faults(bad, {"a", "b"})


@pytest.fixture(scope="module")
def recorder(tmp_path_factory):
    from study.tracking import StudyRecorder
    rec = StudyRecorder(f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db", "faults", "table2")
    rec.open_parent(False, {}, {})
    return rec


def test_callback_fills_the_epochs_a_dead_driver_never_logged(recorder, tmp_path):
    """The driver logged epoch 1, then died after the trial had checkpointed epochs 2 and 3; the
    resumed attempt starts at 3, so MLflow gets 2 and 3 from the checkpoint's history, once."""
    from study.execution import Recording
    key, seen = "gap-1", []
    run_trial(tiny(), seen.append, checkpoint_dir=tmp_path / key)
    spec = {"key": key, "config": tiny().to_dict(), "tags": {}, "store": str(tmp_path / key)}
    cb = Recording(recorder, lambda s: {})
    cb.start(spec)
    cb.result(spec, {**seen[0], "start_epoch": 0, "node": "n1/a"})
    resumed = {k: v for k, v in seen[2].items() if k != "checkpoint"}  # run_trial's "already done" report
    cb.result(spec, {**resumed, "start_epoch": 3, "node": "n2/b"})
    run_id = recorder.child_ids[key]
    hist = sorted(recorder.client.get_metric_history(run_id, "loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in hist] == [(m["epoch"], pytest.approx(m["loss"])) for m in seen]
    starts = sorted(recorder.client.get_metric_history(run_id, "start_epoch"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in starts] == [(1, 0.0), (2, 3.0)]
    tags = recorder.client.get_run(run_id).data.tags
    assert tags["iqa_ls.node"] == "n2/b" and json.loads(tags["iqa_ls.nodes"]) == ["n1/a", "n2/b"]


# ------------------------------------------------------------------ a study with a NaN trial and a crashing one
@pytest.mark.slow
def test_nan_and_crashing_trials_fail_with_the_reason_and_the_rest_finish(tmp_path, new_store):
    new_store(tmp_path / "mlflow.db")
    from mlflow.tracking import MlflowClient
    env = dict(os.environ, IQA_LS_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(REPO),
               IQA_LS_FAULT="nan@s3-seed0,raise@s5-seed0")
    env.pop("RAY_ADDRESS", None)
    res = subprocess.run([sys.executable, "-m", "study.table2", "--preset", "smoke", "--data", str(FIXTURE),
                          "--epochs", "2", "--subset", "100", "--test-subset", "50", "--max-failures", "1",
                          "--progress-every", "60", "--strategies", "1,3,5"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=900)
    # trials that did not finish: exit 1, after the tables, with one line naming them and why
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 2 of 3 trial(s) did not finish (s3-seed0: loss is ") and "s5-seed0: " in last
    assert "--resume" in last
    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = c.get_experiment_by_name("iqa-ls")
    runs = {r.data.tags["iqa_ls.trial_key"]: r
            for r in c.search_runs([exp.experiment_id], "tags.`iqa_ls.role` = 'trial'")}
    assert len(runs) == 3
    assert runs["s3-seed0"].info.status == "FAILED"
    assert re.match(r"loss is (nan|inf) at epoch \d", runs["s3-seed0"].data.tags["iqa_ls.error"])
    assert runs["s5-seed0"].info.status == "FAILED"
    assert "fault injected by IQA_LS_FAULT=raise@s5-seed0" in runs["s5-seed0"].data.tags["iqa_ls.error"]
    assert sorted(k for k, r in runs.items() if r.info.status == "FINISHED") == ["s1-seed0"]
    assert "2 trial(s) failed: s3-seed0: loss is " in res.stdout
    md = (tmp_path / "results" / "table2" / "table2.md").read_text()
    for s in (3, 5):  # the gap is listed, and the row holds no number
        assert any(line.startswith(f"- strategy {s}, seed 0") and "FAILED" in line for line in md.splitlines()), md
    row3 = next(line for line in res.stdout.splitlines() if line.startswith("3 IQA-LS MIX_blur"))
    cols = row3.split()[3:]  # the compact table: n, then ours and the paper's per group of test sets
    assert cols[0] == "0" and cols[1:11:2] == ["—"] * 5 and all(c.startswith("0.") for c in cols[2:11:2]), row3


def test_an_interrupted_study_leaves_no_run_running(tmp_path):
    """Ctrl-C: the unfinished trials' runs become KILLED (not RUNNING forever); --resume reopens them."""
    from study.tracking import StudyRecorder
    rec = StudyRecorder(f"sqlite:///{tmp_path}/mlflow.db", "stopped", "table2")
    rec.open_parent(False, {}, {})
    for key in ("done", "mid"):
        rec.open_child(key, {"seed": 0}, {})
    rec.finish_child("done", [])
    assert rec.interrupt_running_children() == ["mid"]
    status = {k: r.info.status for k, r in rec.children().items()}
    assert status == {"done": "FINISHED", "mid": "KILLED"}
    again = StudyRecorder(f"sqlite:///{tmp_path}/mlflow.db", "stopped", "table2")
    again.open_parent(True, {}, {})
    again.open_child("mid", {"seed": 0}, {})
    assert again.children()["mid"].info.status == "RUNNING" and again.finished_keys() == {"done"}


# ------------------------------------------------------------------ a write the file system refuses (issue 21)
class _FailingFile(io.FileIO):
    """A file whose writes fail as a full disk (or a read-only mount, no permission) makes them fail."""
    code = errno.ENOSPC

    def write(self, b):
        raise OSError(self.code, os.strerror(self.code))


class _OsWithAFullDisk:
    """trainables.files' `os`, but fdopen of a temp file for a name in `names` gives a _FailingFile
    (the real write path: torch.save and np.savez write into it and hide its OSError)."""

    def __init__(self, names, code=errno.ENOSPC, after=0):
        self.names, self.code, self.after, self.failed = names, code, after, []

    def __getattr__(self, name):
        return getattr(os, name)

    def fdopen(self, fd, mode="r", *args, **kwargs):
        path = os.readlink(f"/proc/self/fd/{fd}")
        hit = next((n for n in self.names if Path(path).name.startswith(n)), None)
        if hit is not None:
            if self.after > 0:
                self.after -= 1
            else:
                self.failed.append(hit)
                f = _FailingFile(fd, "wb")
                f.code = self.code
                return f
        return os.fdopen(fd, mode, *args, **kwargs)


@pytest.mark.parametrize("code,cause", [
    (errno.ENOSPC, "the disk is full (no space left on device) [ENOSPC]"),
    (errno.EROFS, "the file system is read-only [EROFS]"),
    (errno.EACCES, "permission denied [EACCES]"),
])
def test_a_refused_write_names_the_file_and_the_cause_and_keeps_the_file_before(tmp_path, monkeypatch, code, cause):
    from trainables import files
    from trainables.checkpoints import atomic_torch_save
    f = tmp_path / "checkpoint.pt"
    atomic_torch_save({"epoch": 1}, f)
    before = f.read_bytes()
    monkeypatch.setattr(files, "os", _OsWithAFullDisk(["checkpoint.pt", "a.txt"], code))
    with pytest.raises(files.WriteError) as e:
        atomic_torch_save({"epoch": 2, "w": torch.zeros(1000)}, f)
    assert str(e.value) == f"cannot write {f}: {cause}" and e.value.errno == code
    assert "enforce fail" not in str(e.value)
    with pytest.raises(OSError, match=re.escape(f"cannot write {tmp_path / 'a.txt'}: {cause}")):
        files.atomic_write_text(tmp_path / "a.txt", "x")
    assert f.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_a_full_disk_during_a_checkpoint_keeps_the_one_before_and_the_trial_resumes_from_it(tmp_path, monkeypatch):
    from trainables import files
    cfg = tiny()
    straight: list[dict] = []
    run_trial(cfg, straight.append, checkpoint_dir=tmp_path / "straight")
    d = tmp_path / "full"
    full = _OsWithAFullDisk(["checkpoint.pt"], after=1)  # the first checkpoint is written, the second is not
    monkeypatch.setattr(files, "os", full)
    with pytest.raises(files.WriteError, match=re.escape(f"cannot write {d / 'checkpoint.pt'}: the disk is full")):
        run_trial(cfg, checkpoint_dir=d)
    assert full.failed == ["checkpoint.pt"] and load_checkpoint(d)["epoch"] == 1
    monkeypatch.undo()
    seen: list[dict] = []
    run_trial(cfg, seen.append, checkpoint_dir=d)
    assert [m["epoch"] for m in seen] == [2, 3]
    a, b = torch.load(tmp_path / "straight" / "final_weights.pt"), torch.load(d / "final_weights.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _study(tmp_path, capsys, *flags, data_dir=FIXTURE) -> tuple[int, list[str], str]:
    """study.table2 in this process (--executor local: the trial runs here, so a patch reaches it),
    in tmp_path/run; (exit code, stderr lines, stdout)."""
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    cwd = os.getcwd()
    os.chdir(run)
    try:
        capsys.readouterr()
        rc = table2.main(["--preset", "smoke", "--data", str(data_dir), "--epochs", "3", "--subset", "100",
                          "--test-subset", "50", "--strategies", "1", "--executor", "local",
                          "--max-failures", "0", "--progress-every", "60",
                          # absolute: MLflow keeps one store per URI in a process, a relative one included
                          "--tracking-uri", f"sqlite:///{run}/mlflow.db", *flags])
    finally:
        os.chdir(cwd)
    out = capsys.readouterr()
    return rc, out.err.strip().splitlines(), out.out


def _statuses(tmp_path) -> dict:
    from mlflow.tracking import MlflowClient
    c = MlflowClient(f"sqlite:///{tmp_path}/run/mlflow.db")
    exp = c.get_experiment_by_name("iqa-ls")
    return {r.data.tags.get("iqa_ls.trial_key") or "parent": r.info.status for r in c.search_runs([exp.experiment_id])}


@pytest.mark.slow
def test_a_study_on_a_full_disk_says_so_in_one_line_and_resume_finishes_it(tmp_path, monkeypatch, capsys, new_store):
    from trainables import files
    new_store(tmp_path / "run" / "mlflow.db")
    full = _OsWithAFullDisk(["checkpoint.pt"], after=1)
    monkeypatch.setattr(files, "os", full)
    rc, err, out = _study(tmp_path, capsys)
    ckpt = tmp_path / "run" / "ray_results" / "table2" / "trials" / "s1-seed0" / "checkpoint.pt"
    assert rc == 1 and full.failed == ["checkpoint.pt"]
    assert f"s1-seed0: trainables.files.WriteError: cannot write {ckpt}: the disk is full" in err[-1], err
    assert "enforce fail" not in "\n".join(err) + out
    assert load_checkpoint(ckpt.parent)["epoch"] == 1 and _statuses(tmp_path)["s1-seed0"] == "FAILED"
    monkeypatch.setattr(files, "os", os)
    rc, err, out = _study(tmp_path, capsys, "--resume")
    assert rc == 0, err
    assert _statuses(tmp_path) == {"parent": "FINISHED", "s1-seed0": "FINISHED"}


def test_a_manifest_that_cannot_be_written_is_one_line_and_leaves_no_run_running(tmp_path, monkeypatch, capsys,
                                                                                    new_store):
    from trainables import files
    new_store(tmp_path / "run" / "mlflow.db")
    monkeypatch.setattr(files, "os", _OsWithAFullDisk(["study.json"], errno.EROFS))
    rc, err, _ = _study(tmp_path, capsys)
    manifest = tmp_path / "run" / "ray_results" / "table2" / "study.json"
    assert rc == 1 and err == [f"error: cannot write {manifest}: the file system is read-only [EROFS]; fix it "
                               "and run the same command with --resume"], err
    assert _statuses(tmp_path) == {"parent": "FAILED"}
    assert not (tmp_path / "run" / "ray_results" / "table2" / "driver.lock").exists()


# ------------------------------------------------------------------ the data a study trains on (issue 21)
@pytest.mark.slow
def test_resume_on_data_replaced_at_the_same_path_is_refused_naming_both_checksums(copy, tmp_path, monkeypatch,
                                                                                   capsys, new_store):
    import pyarrow.parquet as pq
    new_store(tmp_path / "run" / "mlflow.db")
    monkeypatch.setenv("IQA_LS_FAULT", "raise@s1-seed0")  # the study stops with its trial unfinished
    rc, err, _ = _study(tmp_path, capsys, data_dir=copy)
    assert rc == 1 and _statuses(tmp_path)["s1-seed0"] == "FAILED"
    monkeypatch.delenv("IQA_LS_FAULT")
    manifest = json.loads((tmp_path / "run" / "ray_results" / "table2" / "study.json").read_text())
    old = "sha256:" + sha256(copy / "train.parquet")
    assert manifest["data_checksum"] == old and manifest["test_data_checksum"] == "sha256:" + sha256(copy / "test.parquet")
    original = (copy / "train.parquet").read_bytes()
    t = pq.read_table(copy / "train.parquet")  # the same images in another order: other content, same path
    pq.write_table(t.take(list(range(t.num_rows))[::-1]), copy / "train.parquet")
    new = "sha256:" + sha256(copy / "train.parquet")
    assert new != old
    rc, err, _ = _study(tmp_path, capsys, "--resume", data_dir=copy)
    assert rc == 2 and len(err) == 1, err
    assert old in err[0] and new in err[0] and "--resume: the train split of --data" in err[0]
    assert _statuses(tmp_path)["s1-seed0"] == "FAILED"  # not run again
    (copy / "train.parquet").write_bytes(original)  # the recorded data back: the resume goes on
    rc, err, _ = _study(tmp_path, capsys, "--resume", data_dir=copy)
    assert rc == 0, err
    assert _statuses(tmp_path) == {"parent": "FINISHED", "s1-seed0": "FINISHED"}


def test_a_trial_refuses_data_other_than_the_study_recorded(tmp_path):
    from study import execution
    good = data.load_split(str(FIXTURE), "train").checksum
    reports: list[dict] = []
    spec = {"key": "k", "config": tiny().to_dict(), "tags": {}, "store": str(tmp_path / "k"),
            "cache_dir": os.environ["IQA_LS_CACHE"], "data_checksums": {"data_checksum": "sha256:" + "0" * 64}}
    execution.run_spec(spec, reports.append, "here/local")
    assert reports == [{"trial_error": f"the train split of {FIXTURE} has checksum {good}, but the study recorded "
                                       f"sha256:{'0' * 64} (a data file was replaced while the study ran); not trained"}]
    assert not (tmp_path / "k").exists()


def test_a_truncated_checkpoint_with_a_readable_previous_is_reported_once_as_unreadable(tmp_path):
    from study import execution
    from trainables.checkpoints import CHECKPOINT_FILE

    class Stop(Exception):
        pass

    def stop_after_2(m):
        if m["epoch"] == 2:
            raise Stop
    store = tmp_path / "k"
    with pytest.raises(Stop):
        run_trial(tiny(), stop_after_2, checkpoint_dir=store)
    f = store / CHECKPOINT_FILE
    f.write_bytes(f.read_bytes()[:200])
    reports: list[dict] = []
    spec = {"key": "k", "config": tiny().to_dict(), "tags": {}, "store": str(store),
            "cache_dir": os.environ["IQA_LS_CACHE"]}
    execution.run_spec(spec, reports.append, "here/local")
    notes = [r["checkpoint_note"] for r in reports if "checkpoint_note" in r]
    assert len(notes) == 1 and reports[0]["start_epoch"] == 1 and [r["epoch"] for r in reports] == [2, 3]
    assert notes[0].startswith(f"{f} is unreadable (") and "is missing" not in notes[0]
    assert notes[0].endswith("the trial resumes from checkpoint.prev.pt (epoch 1)")
    assert len([p for p in store.iterdir() if ".unreadable-" in p.name]) == 1
