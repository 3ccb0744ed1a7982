"""A study you can leave running for a week (issue 11): one driver per study, no silent reuse of
checkpoints, a --resume checked against what the study recorded, unreadable checkpoints set aside,
checked names and devices, caches keyed by their content, a lost tracking store stopping the study
in one line, and Ctrl-C never leaving runs RUNNING. These run without Ray (in-process refusals and
the pieces themselves); tests/test_study_trust_e2e.py drives real studies.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from study import table2
from trainables import data, labels
from trainables.config import TrialConfig
from trainables.checkpoints import CHECKPOINT_FILE, load_checkpoint
from trainables.config import TrialError
from trainables.train import run_trial

# Names this issue added are imported inside the tests that use them, so that run against the code
# before it, each test fails on its own behaviour rather than the whole file on an import.
PREVIOUS_CHECKPOINT_FILE = "checkpoint.prev.pt"
LOCK_FILE = "driver.lock"

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "cifar10-mini"


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("IQA_LS_CACHE", str(tmp_path / "cache"))
    for var in ("IQA_LS_FAULT", "MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)




def tiny(**kw) -> TrialConfig:
    base = dict(data=str(FIXTURE), epochs=3, lr_decay_every=1, batch_size=50, subset=100, test_subset=20,
                device="cpu", train_set="mix_blur", regularization="iqa_ls", threads=1)
    return TrialConfig(**{**base, **kw})


class Stop(Exception):
    pass


def stop_after(epoch: int):
    def report(m):
        if m["epoch"] == epoch:
            raise Stop
    return report


# ------------------------------------------------------------------ 1. one driver per study
def process_start(pid: int) -> str | None:
    """/proc/<pid>/stat field 22 (start time in clock ticks), read here independently of study.lock."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None


def holder_info() -> dict:
    """What a driver's lock records (study/lock.py's format), for this process."""
    boot = Path("/proc/sys/kernel/random/boot_id")
    return {"host": socket.gethostname(), "boot_id": boot.read_text().strip() if boot.exists() else "",
            "pid": os.getpid(), "start": process_start(os.getpid()), "token": "t" * 32, "since": time.time(),
            "command": "python -m study.table2"}


@pytest.fixture
def live_process():
    """Another process on this host (a stand-in for a running driver)."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    for _ in range(100):
        if process_start(p.pid):
            break
        time.sleep(0.05)
    yield p
    p.kill()
    p.wait()


def write_lock(folder: Path, **holder) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_FILE).write_text(json.dumps({**holder_info(), **holder}))
    return folder / LOCK_FILE


def test_a_second_driver_is_refused_naming_the_holder_and_writes_nothing(tmp_path, live_process, refuse):
    lock = write_lock(tmp_path / "run" / "ray_results" / "table2", pid=live_process.pid,
                      start=process_start(live_process.pid))
    line = refuse(decoded=True)  # the lock is taken after the data's checks
    assert f"pid {live_process.pid} on host {socket.gethostname()}" in line and str(lock) in line
    assert lock.exists()  # the holder's lock is untouched


def test_a_lock_left_by_a_dead_or_replaced_driver_is_broken(tmp_path, live_process):
    from study.lock import StudyLock
    folder = tmp_path / "st"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for holder, why in (({"pid": dead.pid}, f"no process has pid {dead.pid}"),
                        ({"pid": live_process.pid, "start": "1"}, "is now another process"),
                        ({"boot_id": "an-earlier-boot"}, "rebooted")):
        write_lock(folder, **holder)
        lock = StudyLock(str(folder))
        me = lock.acquire()
        assert why in lock.broke and json.loads((folder / LOCK_FILE).read_text())["token"] == me["token"]
        lock.release()
        assert not (folder / LOCK_FILE).exists()


def test_a_lock_of_another_host_is_never_broken_and_says_how_to_break_it(tmp_path):
    from study.lock import LockHeld, StudyLock
    lock = write_lock(tmp_path / "st", host="node-7", pid=1)
    with pytest.raises(LockHeld, match=rf"pid 1 on host node-7 .*rm {lock}"):
        StudyLock(str(tmp_path / "st")).acquire()
    assert json.loads(lock.read_text())["host"] == "node-7"


def test_the_lock_is_released_on_an_exception_and_removes_what_it_made(tmp_path):
    from study.lock import LockHeld, StudyLock
    folder = tmp_path / "storage" / "st"
    with pytest.raises(RuntimeError):
        with StudyLock(str(folder)):
            assert (folder / LOCK_FILE).exists()
            with pytest.raises(LockHeld, match=f"pid {os.getpid()}"):
                StudyLock(str(folder)).acquire()
            raise RuntimeError("the study failed")
    assert not (tmp_path / "storage").exists()  # made for the lock alone, empty again: removed


# ------------------------------------------------------------------ 2. no silent reuse of checkpoints
def test_checkpoints_of_the_same_name_without_resume_are_refused(tmp_path, refuse):
    trial = tmp_path / "run" / "ray_results" / "table2" / "trials" / "s1-seed0"
    trial.mkdir(parents=True)
    torch.save({"epoch": 2}, trial / CHECKPOINT_FILE)
    line = refuse()  # a fresh tracking store: no parent run
    assert "already holds 1 trial checkpoint folder(s) of a study named 'table2'" in line
    assert "--resume" in line and "--name" in line and "--storage" in line
    assert "--storage ray_results (the default) already holds" in line  # not passed: named as the default
    assert "delete that folder and the study's runs in MLflow" in line  # starting again needs both gone


# ------------------------------------------------------------------ 3. what defines a trial vs what runs it
def test_a_checkpoint_resumes_with_other_threads_cadence_and_device_spelling(tmp_path):
    cfg = tiny(threads=1)
    full: list[dict] = []
    run_trial(cfg, full.append, checkpoint_dir=tmp_path / "full")
    with pytest.raises(Stop):
        run_trial(cfg, stop_after(1), checkpoint_dir=tmp_path / "moved")
    seen: list[dict] = []  # the same trial on "another machine": 2 threads, other cadences
    run_trial(cfg.replace(threads=2, eval_every=1, checkpoint_every=2), seen.append,
              checkpoint_dir=tmp_path / "moved")
    assert [m["epoch"] for m in seen] == [2, 3] and "acc_pristine" in seen[0]
    assert seen[-1]["loss"] == pytest.approx(full[-1]["loss"], rel=1e-5)
    with pytest.raises(TrialError, match=r"another config \(seed 0 there, 4 here"):
        run_trial(cfg.replace(seed=4), checkpoint_dir=tmp_path / "moved")
    from trainables.config import RUN_FIELDS
    assert set(RUN_FIELDS) == {"device", "threads", "eval_every", "checkpoint_every", "step_impl",
                               "pack_data", "pack_eval"}


def test_resume_with_other_schedule_flags_is_refused_naming_flag_and_both_values():
    from study.resume import check_resume_matches, study_settings
    from study.spec import StudyError, Trial

    def settings(**flags):
        args = SimpleNamespace(preset="smoke", seeds=1, data="d", epochs=None, subset=None, test_subset=None,
                               threads=None, name="st", resume=True, cpus_per_trial=None, device="auto")
        vars(args).update(flags)
        cfg = tiny(epochs=flags.get("epochs") or 2)
        spec = SimpleNamespace(name=args.name, flags={k: v for k, v in vars(args).items() if v is not None})
        return spec, study_settings(spec, [Trial("s1-seed0", cfg)], None)

    _, recorded = settings()
    args, same = settings(cpus_per_trial=2.0, device="cpu")  # flags that only run it may differ
    check_resume_matches(args, same, json.loads(json.dumps(recorded)), {})
    args, given = settings(epochs=2)  # the preset's own value, given explicitly: the same trials
    check_resume_matches(args, given, json.loads(json.dumps(recorded)), {})
    args, given = settings(epochs=8)
    with pytest.raises(StudyError, match=r"--epochs is 8 but study 'st' was recorded with \(not given: 2\)"):
        check_resume_matches(args, given, json.loads(json.dumps(recorded)), {})
    # a study recorded before manifests: its parent run's params are compared
    args, given = settings(epochs=8)
    with pytest.raises(StudyError, match="--epochs is 8 but study 'st' was recorded with 6"):
        check_resume_matches(args, given, None, {"epochs": "6", "cpus_per_trial": "1.0"})


# ------------------------------------------------------------------ 4. an unreadable checkpoint
def test_a_truncated_checkpoint_is_kept_aside_and_the_trial_resumes_from_the_previous(tmp_path):
    cfg = tiny()
    straight: list[dict] = []
    run_trial(cfg, straight.append, checkpoint_dir=tmp_path / "straight")
    d = tmp_path / "cut"
    with pytest.raises(Stop):
        run_trial(cfg, stop_after(2), checkpoint_dir=d)
    assert load_checkpoint(d)["epoch"] == 2 and torch.load(d / PREVIOUS_CHECKPOINT_FILE)["epoch"] == 1
    blob = (d / CHECKPOINT_FILE).read_bytes()
    (d / CHECKPOINT_FILE).write_bytes(blob[: len(blob) // 3])  # a crash or a full disk mid-copy
    assert load_checkpoint(d)["epoch"] == 1  # the plan's read: no traceback, the previous counts
    seen: list[dict] = []
    run_trial(cfg, seen.append, checkpoint_dir=d)
    assert [m["epoch"] for m in seen] == [2, 3]
    note = seen[0]["checkpoint_note"]
    assert str(d / CHECKPOINT_FILE) in note and "resumes from checkpoint.prev.pt (epoch 1)" in note
    kept = [p for p in d.iterdir() if p.name.startswith(f"{CHECKPOINT_FILE}.unreadable-")]
    assert len(kept) == 1 and kept[0].read_bytes() == blob[: len(blob) // 3]
    a, b = torch.load(tmp_path / "straight" / "final_weights.pt"), torch.load(d / "final_weights.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same trial, as if nothing had happened


def test_with_no_readable_checkpoint_the_trial_restarts_from_scratch(tmp_path):
    from trainables.checkpoints import recover_checkpoint
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 not a whole zip")
    (tmp_path / PREVIOUS_CHECKPOINT_FILE).write_bytes(b"")
    state, note = recover_checkpoint(tmp_path)
    assert state is None and note.endswith("the trial restarts from scratch") and note.count(" is unreadable (") == 2
    assert not (tmp_path / CHECKPOINT_FILE).exists() and len(list(tmp_path.iterdir())) == 2
    assert recover_checkpoint(tmp_path) == (None, None)


def test_the_trainable_reports_the_recovery_and_the_callback_tags_the_run(tmp_path, monkeypatch):
    from study import execution
    from study.tracking import StudyRecorder
    store = tmp_path / "trials" / "k"
    with pytest.raises(Stop):
        run_trial(tiny(), stop_after(1), checkpoint_dir=store)
    (store / CHECKPOINT_FILE).write_bytes(b"truncated")
    reports: list[dict] = []
    spec = {"key": "k", "config": tiny().to_dict(), "tags": {}, "store": str(store),
            "cache_dir": os.environ["IQA_LS_CACHE"]}
    execution.run_spec(spec, reports.append, "10.0.0.9/abc")
    assert reports[0]["start_epoch"] == 0 and "restarts from scratch" in reports[0]["checkpoint_note"]
    assert [r["epoch"] for r in reports] == [1, 2, 3]
    rec = StudyRecorder(f"sqlite:///{tmp_path}/mlflow.db", "rec", "table2")
    rec.open_parent(False, {}, {})
    said: list[str] = []
    cb = execution.Recording(rec, lambda c: {}, {}, say=lambda line, **kw: said.append(line))
    cb.start(spec)
    cb.result(spec, reports[0])
    tag = rec.client.get_run(rec.child_ids["k"]).data.tags["iqa_ls.checkpoint_recovery"]
    assert tag == reports[0]["checkpoint_note"] and said == [f"  k: {tag}"]


# ------------------------------------------------------------------ 6. study names
@pytest.mark.parametrize("name", ["", "../escape", "/tmp/abs", "it's", "a b", "-x", ".hidden", "a/b", "x" * 101])
def test_unsafe_study_names_are_refused(name, refuse):
    line = refuse(f"--name={name}")
    assert f"--name {name!r} is not allowed" in line and "A-Z a-z 0-9 . _ -" in line


# ------------------------------------------------------------------ 7. caches keyed by their content
def test_the_distortion_cache_does_not_return_another_sigmas_images(tmp_path, monkeypatch, cifar_mini_images):
    import dataclasses

    from trainables import distortions
    from trainables.mixture import DistortionBank
    x = cifar_mini_images[:64]
    cache = tmp_path / "bank"
    first, _ = DistortionBank(x, "set-a", "ssim", {}, cache).get("blur", 3)
    sharper = dataclasses.replace(distortions.DISTORTIONS["blur"], params=(0.7, 1.0, 0.5))
    monkeypatch.setitem(distortions.DISTORTIONS, "blur", sharper)
    got, _ = DistortionBank(x, "set-a", "ssim", {}, cache).get("blur", 3)
    assert torch.equal(got, distortions.gaussian_blur(x, 0.5)) and not torch.equal(got, first)


def test_a_cache_file_whose_stored_key_differs_is_recomputed(tmp_path, cifar_mini_images):
    from trainables.mixture import DistortionBank
    x = cifar_mini_images[:64]
    bank = DistortionBank(x, "set-a", "ssim", {}, tmp_path)
    good = bank.get("jpeg", 1)
    f = bank._file("jpeg", 1)
    d = torch.load(f)
    meta = json.loads(d["meta"])
    meta["torch"] = "1.0"  # e.g. written by another torch under the same file name
    torch.save({"images": torch.zeros_like(x), "scores": torch.zeros(64), "meta": json.dumps(meta)}, f)
    again = DistortionBank(x, "set-a", "ssim", {}, tmp_path).get("jpeg", 1)
    assert torch.equal(again[0], good[0]) and torch.equal(again[1], good[1])
    torch.save({"images": torch.zeros_like(x), "scores": torch.zeros(64, dtype=torch.float64),
                "meta": d["meta"]}, f)  # right key, wrong dtype
    assert torch.equal(DistortionBank(x, "set-a", "ssim", {}, tmp_path).get("jpeg", 1)[0], good[0])


def test_the_decoded_cache_is_used_only_when_its_stored_key_matches(tmp_path, monkeypatch):
    s = data.load_split(str(FIXTURE), "test", tmp_path)
    f = tmp_path / "decoded" / f"{s.checksum.removeprefix('sha256:')}-test.npz"
    import numpy as np
    with np.load(f) as z:
        meta = json.loads(str(z["meta"]))
    assert meta["source"] == s.checksum and "torchvision" in meta and "code" in meta
    meta["torchvision"] = "0.1"  # decoded by another torchvision (another libjpeg)
    np.savez(f, images=np.zeros_like(s.images.numpy()), labels=s.labels.numpy(), meta=np.array(json.dumps(meta)))
    data.clear_memo()
    assert torch.equal(data.load_split(str(FIXTURE), "test", tmp_path).images, s.images)


# ------------------------------------------------------------------ 8. the smaller points
def test_logistic_t_stays_in_the_unit_interval():
    for k, s0 in ((2, 0.3), (3, 0.6), (10, 0.3), (20, 0.9), (1000, 0.5)):
        t = labels.make_tmap("logistic", k=k, s0=s0)(torch.tensor([1e-3, 0.5, 1.0]))
        assert bool((t > 0).all()) and bool((t <= 1).all()) and float(t[-1]) == 1.0, (k, s0, t)


@pytest.mark.parametrize("device,needle", [("tpu", "--device tpu is not allowed; allowed: auto, cpu, cuda, cuda:N"),
                                           ("cuda:x", "--device cuda:x is not allowed")])
def test_a_bad_device_is_refused(device, needle, refuse):
    assert needle in refuse("--device", device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_cuda_is_refused(refuse):
    assert "CUDA is not available" in refuse("--device", "cuda")


def test_resume_of_a_study_that_is_not_there_writes_nothing(refuse):
    line = refuse("--resume")
    assert "--resume: no tracking store at mlflow.db" in line


def test_a_source_with_bad_labels_leaves_no_decoded_cache(tmp_path):
    t = pq.read_table(FIXTURE / "train.parquet")
    bad = t.set_column(t.schema.get_field_index("label"), "label",
                       pa.array([12] + t.column("label").to_pylist()[1:], pa.int64()))
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(bad, src / "train.parquet")
    pq.write_table(pq.read_table(FIXTURE / "test.parquet"), src / "test.parquet")
    with pytest.raises(data.DataError, match=r"span 0\.\.12; allowed: 0\.\.9"):
        data.load_split(str(src), "train", tmp_path / "cache")
    assert not (tmp_path / "cache" / "decoded").exists() or not any((tmp_path / "cache" / "decoded").iterdir())


def test_a_failed_tracking_write_stops_the_study_and_every_later_hook(tmp_path):
    from study import execution, tuning

    class DeadStore:
        child_ids = {}

        def open_child(self, *a, **k):
            raise ConnectionError("HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded\nmore")

    cb = execution.Recording(DeadStore(), lambda c: {}, {})
    stop = tuning.StopWhenLost(cb)
    spec = {"key": "k", "config": {}, "tags": {}, "store": str(tmp_path)}
    assert not stop.stop_all()
    with pytest.raises(execution.RecordFailed, match="ConnectionError: HTTPConnectionPool"):
        tuning.MlflowCallback(cb).on_trial_start(0, [], SimpleNamespace(config={"trial": spec}))
    assert cb.lost.startswith("ConnectionError: ") and "\n" not in cb.lost and stop.stop_all()
    with pytest.raises(execution.RecordFailed):
        cb.result(spec, {"epoch": 1})


def test_the_driver_sets_fast_fail_http_settings_without_overriding_the_users(monkeypatch):
    from study.tracking import HTTP_ENV, set_http_env
    for k in HTTP_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "99")
    set_http_env()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == HTTP_ENV["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "99"


def test_ctrl_c_during_the_closing_writes_is_held_until_they_are_done(capsys):
    from study.runner import shielded
    done = []
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with shielded("recording the interruption in MLflow"):
            os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C
            time.sleep(0.1)
            done.append("runs KILLED")
    assert done == ["runs KILLED"] and signal.getsignal(signal.SIGINT) is before
    assert "Ctrl-C: recording the interruption in MLflow first" in capsys.readouterr().err


RACE = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from study.tracking import StudyRecorder
go = Path(sys.argv[2]) / "go"
while not go.exists():
    time.sleep(0.005)
rec = StudyRecorder(f"sqlite:///{sys.argv[2]}/mlflow.db", sys.argv[3], "table2")
rec.open_parent(False, {}, {})
print("ok")
"""


@pytest.mark.slow  # three processes, ~40 s: outside the fast suite
def test_studies_creating_one_new_store_at_once_all_start(tmp_path):
    # without the lock beside the store, two or more concurrent first openings run MLflow's migrations
    # into one file at once and leave it broken (alembic_tmp_experiments already exists)
    names = ("a", "b", "c")
    (tmp_path / "race.py").write_text(RACE)
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "race.py"), str(REPO), str(tmp_path), name],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in names]
    time.sleep(10)  # all past their imports, waiting
    (tmp_path / "go").touch()
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(names), [o[1][-2000:] for o in outs]
    assert [o[0].strip() for o in outs] == ["ok"] * len(names)


def test_opening_a_sqlite_store_waits_for_its_lock(tmp_path):
    import threading
    from filelock import FileLock
    from study.tracking import StudyRecorder, creation_lock_path
    db = tmp_path / "mlflow.db"
    held = FileLock(str(creation_lock_path(db)))
    held.acquire()
    opened = threading.Thread(target=StudyRecorder, args=(f"sqlite:///{db}", "s", "table2"))
    opened.start()
    opened.join(3)
    waited, made_while_held = opened.is_alive(), db.exists()
    held.release()
    opened.join(120)
    assert waited and not made_while_held and not opened.is_alive() and db.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]  # no lock file beside the store


def test_sqlite_artifacts_go_beside_the_store_not_into_the_working_folder(tmp_path, monkeypatch):
    from study.tracking import StudyRecorder
    (tmp_path / "db").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    rec = StudyRecorder(f"sqlite:///{tmp_path}/db/mlflow.db", "art", "table2")
    rec.open_parent(False, {}, {})
    rec.open_child("k", {}, {})
    (tmp_path / "w.txt").write_text("weights")
    rec.finish_child("k", [tmp_path / "w.txt"])
    assert rec.artifact_location() == (tmp_path / "db" / "mlartifacts").as_uri()
    assert list((tmp_path / "db" / "mlartifacts").rglob("w.txt")) and not list((tmp_path / "elsewhere").iterdir())


# ------------------------------------------------------------------ 11, 12. what a new user sees
def test_progress_counts_the_trial_that_just_finished_and_those_kept_by_a_resume():
    from study.execution import Progress
    lines: list[str] = []
    p = Progress(["s2-seed0", "s3-seed0"], total_epochs=3, kept=1, printer=lambda s, **k: lines.append(s),
                 verbose=True)
    s2 = {"key": "s2-seed0"}
    p.result(s2, {"epoch": 2, "start_epoch": 1})  # resumed at epoch 1 of 2
    p.complete(s2, {"s2-seed0"})
    assert "trials 2/3 done (1 kept from before), 0 running | epochs 1/3" in lines[-1]
    assert lines[-1].endswith("| finished s2-seed0")


def test_progress_is_quiet_by_default_a_line_per_interval_while_trials_run_and_one_at_the_end():
    """Issue 20: no line while nothing runs yet, none per finished trial (--verbose has them), at most
    one per `every_s` while trials run, one when the last trial ends; every line <= 120 characters."""
    from study.execution import Progress
    lines: list[str] = []
    p = Progress(["a", "b"], total_epochs=4, every_s=3600, printer=lambda s, **k: lines.append(s))
    p.tick(set())
    p.last_print = 0.0
    p.tick(set())
    assert lines == []  # the executor is still starting: nothing to say yet
    p.result({"key": "a"}, {"epoch": 1, "start_epoch": 0})
    p.tick({"a"})
    assert len(lines) == 1 and "trials 0/2 done, 1 running | epochs 1/4" in lines[0] and "left ~" in lines[0]
    p.result({"key": "a"}, {"epoch": 2, "acc_mean_all": 0.5})
    p.complete({"key": "a"}, {"b"})
    p.tick({"b"})
    assert len(lines) == 1  # within every_s, and a finished trial is no line of its own
    p.result({"key": "b"}, {"epoch": 2, "acc_mean_all": 0.25})
    p.complete({"key": "b"}, set())
    assert len(lines) == 2 and "trials 2/2 done, 0 running | epochs 4/4 | best acc_mean_all 0.500 (a)" in lines[1]
    assert all(len(line) <= 120 for line in lines)


def test_help_says_what_the_tracking_flags_mean_and_what_each_preset_costs(capsys):
    with pytest.raises(SystemExit) as e:
        table2.main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default smoke)" in text and "smoke: pipeline check" in text and "demo: the paper's robustness" in text
    assert "where runs are recorded: sqlite:///PATH" in text and "MLflow experiment the study's runs go to" in text


def test_table2_runs_are_named_by_strategy_and_keep_the_key():
    from search_spaces.table2 import title
    args = SimpleNamespace(seeds=1, preset="smoke", epochs=None, subset=None, test_subset=None, data=str(FIXTURE))
    trials = table2.build_trials(args)
    assert [t.key for t in trials][:3] == ["s1-seed0", "s2-seed0", "s3-seed0"]
    assert trials[2].title == "s3 blur+LS #0" == title(3, 0)
    assert trials[0].title == "s1 pristine #0"


def test_the_callbacks_pickle_when_print_is_wrapped(monkeypatch):
    """Ray pickles the callbacks into its experiment state; on a cluster driver builtins.print is
    wrapped, and a stored reference to the original print then fails to pickle (seen in
    tests/test_multinode.py)."""
    import builtins

    import cloudpickle

    from study import execution

    recording, progress = execution.Recording(None, lambda c: {}, {}), execution.Progress(["k"], 2)
    original = builtins.print
    monkeypatch.setattr(builtins, "print", lambda *a, **k: original(*a, **k))
    for obj in (recording, progress):
        assert len(cloudpickle.dumps(obj)) < 10_000
