"""Everything is checked before work, cheaply first (issue 21): bad paths, tracking URIs, resources,
clusters, bounds, empty lists and values the data cannot hold are refused with one line and exit
code 2, before the data is decoded and before anything is written (the `refuse` fixture checks the
folder the command runs in and the cache), in seconds rather than after a study's training."""
from __future__ import annotations

import importlib.util
import os
import socket
import time

import pytest

FAST_S = 3.0  # a refusal before the data is decoded (issue 21); the 2-core test machine is shared


def timed(refuse, *flags, **kw) -> tuple[str, float]:
    """The refusal's line and its seconds, after a warm-up refusal that imports what every command
    imports before its checks (torch, the trainer's config registries: paid once per interpreter)."""
    refuse("--test-subset", "100000")
    t = time.monotonic()
    line = refuse(*flags, **kw)
    return line, time.monotonic() - t


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ where the study writes
@pytest.mark.parametrize("flag", ["--storage", "--out"])
def test_an_empty_path_flag_is_refused_not_taken_for_the_current_folder(flag, refuse):
    line = refuse(f"{flag}=")
    assert f"{flag} ''" in line and "empty" in line and "allowed: a writable folder" in line


@pytest.mark.parametrize("where", ["a_file", "under_a_file", "read_only"])
def test_an_out_folder_that_cannot_hold_the_tables_is_refused_before_training(tmp_path, where, refuse):
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = {"a_file": str(afile), "under_a_file": str(afile / "out"),
           "read_only": "/sys/iqa-ls-out"}[where]  # /sys: read-only even to root (os.access says yes)
    line = refuse("--out", out)
    assert f"--out {out}" in line and "allowed: a writable folder" in line
    assert ("is not a folder" if where != "read_only" else "cannot write in /sys") in line
    assert afile.read_text() == "x"


# ------------------------------------------------------------------ where the study records
@pytest.mark.parametrize("uri,needle", [
    ("ftp://host/mlflow", "scheme ftp: is not a tracking store"),
    ("postgresql://user@db.example.org/mlflow", "postgresql database store"),
    ("mysql+pymysql://user@db.example.org/mlflow", "mysql database store"),
    ("databricks", "Databricks"),
    ("sqlite://", "no file"),
    ("sqlite:///", "names no file"),
    ("http://", "names no host"),
])
def test_a_tracking_uri_this_install_cannot_keep_records_in_is_refused(uri, needle, refuse):
    line = refuse("--tracking-uri", uri)
    assert repr(uri) in line and needle in line and "allowed: sqlite:///PATH or http(s)://HOST:PORT" in line


def test_a_database_uri_says_its_driver_is_missing_only_when_it_is(refuse):
    line = refuse("--tracking-uri", "postgresql://user@db.example.org/mlflow")
    assert ("no driver for it, psycopg2, is installed" in line) == (importlib.util.find_spec("psycopg2") is None)
    assert "mlflow server --backend-store-uri postgresql://user@db.example.org/mlflow" in line


@pytest.mark.parametrize("slash", ["", "/"])
def test_a_sqlite_uri_naming_a_folder_is_refused_at_once(tmp_path, slash, refuse):
    folder = tmp_path / "afolder"
    folder.mkdir()
    line, seconds = timed(refuse, "--tracking-uri", f"sqlite:///{folder}{slash}")
    assert f"sqlite:///{folder}{slash}" in line and ("names a folder" in line or "names no file" in line)
    assert seconds < FAST_S, seconds  # it took 419 s of SQLite's retries before
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("name", ["", "  "])
def test_an_empty_experiment_is_refused_before_the_store_is_made(name, refuse):
    line = refuse("--experiment", name)
    assert f"--experiment {name!r}" in line and "empty" in line


# ------------------------------------------------------------------ what the data can hold
@pytest.mark.parametrize("flags,needle", [
    (["--val-size", "100000"], "--val-size 100000 is not allowed for the data's 400 training images; allowed: 0..399"),
    (["--val-size", "400"], "--val-size 400 is not allowed for the data's 400 training images; allowed: 0..399"),
    (["--subset", "401"], "--subset 401 is more than the data's 400 training images; allowed: 0..400"),
    (["--val-size", "100", "--subset", "301"],
     "--subset 301 is more than the data's 300 training images (400 minus the 100-image validation split); "
     "allowed: 0..300"),
    (["--test-subset", "201"], "--test-subset 201 is more than the data's 200 test images; allowed: 0..200"),
    (["--cifar10c", "regenerate", "--cifar10c-subset", "201"],
     "--cifar10c-subset 201 is more than the data's 200 test images; allowed: 0..200"),
])
def test_a_value_the_data_cannot_hold_is_refused_before_it_is_decoded(flags, needle, refuse):
    line, seconds = timed(refuse, *flags)
    assert needle in line, line
    assert seconds < FAST_S, seconds


def test_the_ablation_grid_checks_the_data_before_its_matched_control_reads_it(refuse):
    line = refuse("--iqa", "--val-size", "100000", command="ablate")
    assert "--val-size 100000 is not allowed for the data's 400 training images" in line


def test_sizes_at_the_datas_limits_pass_and_a_presets_subset_above_it_is_said_in_the_plan():
    from study.runner import check_sizes
    from study.spec import StudySpec

    spec = StudySpec(name="s", preset="smoke", seeds=1, tracking_uri="sqlite:///x.db", experiment="e",
                     storage="r", out=None, flags={"subset": 300, "val_size": 100})
    assert check_sizes(spec, {(100, 300, 200, 200), (0, 0, 0, 0)}, 400, 200) == []
    preset = StudySpec(name="s", preset="smoke", seeds=1, tracking_uri="sqlite:///x.db", experiment="e",
                       storage="r", out=None, flags={})
    assert check_sizes(preset, {(0, 2000, 500, 0)}, 400, 200) == [
        "the preset's subset of 2000 is more than the data's 400 training images: all 400 are used",
        "the preset's test_subset of 500 is more than the data's 200 test images: all 200 are used"]


# ------------------------------------------------------------------ empty lists, bounds
@pytest.mark.parametrize("flags,command,needle", [
    (["--protocol="], "table2", "--protocol '' is not allowed"),
    (["--strategies="], "table2", "--strategies '' is not allowed"),
    (["--tmap", "--tmaps="], "ablate", "--tmaps is empty"),
    (["--iqa", "--metrics="], "ablate", "--metrics '' is empty"),
    (["--ratios", "--pristine-shares="], "ablate", "--pristine-shares '' is not allowed"),
    (["--ratios", "--level-splits="], "ablate", "--level-splits is empty"),
    (["--search", "optuna", "--trials", "2", "--objective="], "ablate", "--objective  is not allowed"),
])
def test_an_empty_list_is_refused_not_read_as_the_default_grid(flags, command, needle, refuse):
    assert needle in refuse(*flags, command=command)


@pytest.mark.parametrize("flags,command,needle", [
    (["--seeds", "1000000000"], "table2", "--seeds 1000000000 is not allowed; allowed: an integer >= 1 and <= 1000"),
    (["--seeds", "1001"], "table2", "--seeds 1001 is not allowed"),
    (["--epochs", "99999999999"], "table2",
     "--epochs 99999999999 is not allowed; allowed: an integer >= 1 and <= 100000"),
    (["--protocol", "finetune", "--strategies", "8,9", "--finetune-epochs", "100001"], "table2",
     "--finetune-epochs 100001 is not allowed"),
    (["--search", "optuna", "--trials", "10001"], "ablate", "--trials 10001 is not allowed"),
])
def test_bounds_on_seeds_epochs_and_trials_are_refused_in_seconds(flags, command, needle, refuse):
    line, seconds = timed(refuse, *flags, command=command)
    assert needle in line, line
    assert seconds < FAST_S, seconds  # --seeds 1000000000 grew the driver to 24 GB before


def test_a_grid_above_the_trial_bound_is_refused_naming_its_size(monkeypatch, refuse):
    from study import flags
    monkeypatch.setattr(flags, "MAX_TRIALS", 8)
    line = refuse()  # Table 2: 9 trials per seed
    assert "9 trials is more than a study may hold; allowed: at most 8" in line


# ------------------------------------------------------------------ resources and clusters
def test_more_cpus_per_trial_than_this_machine_has_is_refused(refuse):
    n = os.cpu_count()
    line = refuse("--cpus-per-trial", str(n + 1))
    assert f"--cpus-per-trial {n + 1} is more than this machine's {n} CPUs" in line


def test_a_gpu_share_without_cuda_or_above_the_gpus_here_is_refused(refuse):
    import torch
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    line = refuse("--gpus-per-trial", str(n + 1))
    assert (f"more than this machine's {n} GPU(s)" if n else "CUDA is not available on this machine") in line


@pytest.mark.parametrize("address,needle", [
    ("", "--address '' is not allowed (empty)"),
    ("garbage:99999", "--address garbage:99999: the Ray head at garbage:99999 does not answer"),
    ("free", "does not answer"),
])
def test_an_unreachable_cluster_is_one_line_within_seconds(address, needle, refuse):
    address = f"127.0.0.1:{free_port()}" if address == "free" else address
    line, seconds = timed(refuse, f"--address={address}")
    assert needle in line, line
    assert seconds < 30, seconds  # it waited forever before


def test_address_auto_without_a_cluster_is_refused(monkeypatch, refuse):
    from ray._private import services
    monkeypatch.setattr(services, "find_gcs_addresses", lambda: [])  # no cluster on this node, whatever
    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir=None: None)  # runs beside the test
    line = refuse("--address", "auto")
    assert "--address auto: no Ray cluster found" in line


# ------------------------------------------------------------------ the cheap checks come first
def test_a_typo_in_the_preset_is_refused_in_seconds(refuse):
    line, seconds = timed(refuse, "--preset", "smok")
    assert "preset='smok'" in line
    assert seconds < FAST_S, seconds


def test_a_study_already_in_the_storage_is_refused_before_the_ablation_reads_the_data(tmp_path, refuse):
    from study.storage import MANIFEST_FILE
    folder = tmp_path / "run" / "ray_results" / "ablate-iqa"  # the refuse fixture runs in tmp_path/run
    folder.mkdir(parents=True)
    (folder / MANIFEST_FILE).write_text("{}")
    line = refuse("--iqa", command="ablate")  # its matched control would decode the data and score it
    assert f"already holds the study's {MANIFEST_FILE} of a study named 'ablate-iqa'" in line


# ------------------------------------------------------------------ study.records
def test_an_export_from_a_missing_store_writes_nothing(tmp_path, monkeypatch, capsys):
    from study.records import main
    monkeypatch.chdir(tmp_path)
    rc = main(["export", "--study", "t2", "--out", "exp", "--tracking-uri", "sqlite:///mlflow.db"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no MLflow store at mlflow.db" in err[0], err
    assert list(tmp_path.iterdir()) == []  # no store, no mlflow.db.lock, no export folder


def test_export_and_import_refusals_leave_no_lock_file(tmp_path, new_store, monkeypatch, capsys):
    from study.records import main
    store = new_store(tmp_path / "mlflow.db")
    uri = f"sqlite:///{store}"
    (tmp_path / "afile").write_text("x")
    before = sorted(p.name for p in tmp_path.iterdir())
    for argv, needle in ((["export", "--study", "nope", "--out", str(tmp_path / "exp")], "no study named 'nope'"),
                         (["export", "--study", "t2", "--out", str(tmp_path / "afile")], "is not a folder"),
                         (["export", "--study", "t2", "--out", str(tmp_path / "e"), "--experiment", ""], "empty"),
                         (["import", str(tmp_path)], "manifest.json")):
        assert main([*argv, "--tracking-uri", uri]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], (argv, err)
        assert sorted(p.name for p in tmp_path.iterdir()) == before, argv
    assert main(["import", str(tmp_path), "--tracking-uri", "ftp://host/x"]) == 2
    assert "scheme ftp:" in capsys.readouterr().err


def test_a_refusal_imports_neither_mlflow_nor_the_trainer(tmp_path):
    """What keeps a refusal from the command line in seconds: MLflow's import (~1.5 s) and the
    trainer's (study.execution pulls in the training loop) wait until the checks have passed."""
    import subprocess
    import sys
    from pathlib import Path

    from study import execution
    from tests.conftest import CIFAR_MINI
    assert execution.FAULT_ENV == "IQA_LS_FAULT"  # study.runner.check reads it by name, not by importing it
    repo = Path(__file__).resolve().parents[1]
    code = ("import sys; from study import table2; "
            f"rc = table2.main(['--data', {str(CIFAR_MINI)!r}, '--test-subset', '100000']); "
            "print(rc, 'mlflow' in sys.modules, 'study.execution' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(repo), "IQA_LS_CACHE": str(tmp_path / "cache")}
    for var in ("IQA_LS_FAULT", "MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        env.pop(var, None)
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.stdout.split() == ["2", "False", "False"], (res.stdout, res.stderr)
    assert "--test-subset 100000 is more than the data's 200 test images" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
