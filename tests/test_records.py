"""study.records: a recorded study exported to parquet and imported into another store rebuilds the
same tables; damaged exports, non-empty folders and duplicate studies are refused in one line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from analysis import table2
from study.records import main
from study.tracking import StudyRecorder

REPO = Path(__file__).resolve().parents[1]
TEST_SETS = ["pristine", "blur_1", "blur_2", "blur_3", "noise_1", "noise_2", "noise_3", "jpeg_1", "jpeg_2", "jpeg_3"]
ROWS = {1: ("pristine", "onehot"), 2: ("mix_blur", "onehot"), 3: ("mix_blur", "iqa_ls"),
        4: ("mix_noise", "onehot"), 5: ("mix_noise", "iqa_ls"), 6: ("mix_jpeg", "onehot"),
        7: ("mix_jpeg", "iqa_ls"), 8: ("mix_all3", "onehot"), 9: ("mix_all3", "iqa_ls")}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A two-seed Table 2 written by the real recorder, with per-epoch metrics and a calibration.json."""
    root = tmp_path_factory.mktemp("records")
    uri = f"sqlite:///{root}/src.db"
    rec = StudyRecorder(uri, "t2", "table2")
    rec.open_parent(False, {"preset": "smoke", "seeds": 2, "data_source": "fixture"}, {"n_trials": 18})
    for s, (train_set, reg) in ROWS.items():
        for seed in (0, 1):
            key = f"s{s}-seed{seed}"
            rec.open_child(key, {"strategy": s, "seed": seed, "epochs": 2},
                           {"strategy": s, "train_set": train_set, "regularization": reg, "seed": seed})
            rec.log_epoch(key, {"epoch": 1, "loss": 2.0 - 0.01 * s, "mean_t": 0.9})
            accs = {f"acc_{t}": 0.3 + 0.01 * s + 0.003 * seed + 0.001 * i for i, t in enumerate(TEST_SETS)}
            rec.log_epoch(key, {"epoch": 2, "loss": 1.5, "mean_t": 0.9, **accs,
                                **{f"ece_{t}": 0.1 - 0.002 * s + 0.001 * seed for t in TEST_SETS},
                                **{f"nll_{t}": 1.9 - 0.01 * s - 0.002 * seed for t in TEST_SETS}})
            cal = root / f"cal-{key}" / "calibration.json"
            cal.parent.mkdir()
            cal.write_text(json.dumps({"epoch": 2, "test": {"reliability": {t: {
                "bins": 15, "count": [0] * 14 + [10], "conf_sum": [0.0] * 14 + [9.5], "correct": [0] * 14 + [4 + seed]}
                for t in TEST_SETS}}}))
            rec.finish_child(key, [cal])
    rec.close_parent()
    out = table2.build_table2("t2", tracking_uri=uri, out_dir=root / "tables-src", log_to_parent=False)
    return root, uri, out


def test_export_then_import_rebuilds_identical_tables(source):
    root, uri, src_tables = source
    assert main(["export", "--study", "t2", "--out", str(root / "exp"), "--tracking-uri", uri]) == 0
    files = {p.name for p in (root / "exp").rglob("*") if p.is_file()}
    assert {"runs.parquet", "params.parquet", "tags.parquet", "metrics.parquet", "manifest.json",
            "calibration.json"} <= files and not any(f.endswith(".pt") for f in files)
    dest = f"sqlite:///{root}/dest.db"
    assert main(["import", str(root / "exp"), "--tracking-uri", dest]) == 0
    again = table2.build_table2("t2", tracking_uri=dest, out_dir=root / "tables-dest", log_to_parent=False)
    for name in ("table2.csv", "table2_pairs.csv", "table2_ece_pairs.csv", "table2_nll.csv", "table2_reliability.png"):
        assert (root / "tables-src" / name).read_bytes() == (root / "tables-dest" / name).read_bytes(), name
    assert again["parent_run_id"] != src_tables["parent_run_id"]  # new ids, same records
    from mlflow.tracking import MlflowClient
    c = MlflowClient(dest)
    child = next(r for r in c.search_runs([c.get_experiment_by_name("iqa-ls").experiment_id],
                                          "tags.`iqa_ls.trial_key` = 's3-seed1'"))
    assert [m.step for m in c.get_metric_history(child.info.run_id, "loss")] == [1, 2]
    assert child.info.status == "FINISHED" and child.info.run_name == "s3-seed1"


def test_import_refuses_a_study_that_exists_and_a_damaged_export(source, tmp_path, capsys):
    root, uri, _ = source
    exp = tmp_path / "exp"
    assert main(["export", "--study", "t2", "--out", str(exp), "--tracking-uri", uri]) == 0
    assert main(["import", str(exp), "--tracking-uri", uri]) == 2  # already there
    assert "already exists" in capsys.readouterr().err
    (exp / "metrics.parquet").write_bytes(b"truncated")
    assert main(["import", str(exp), "--tracking-uri", f"sqlite:///{tmp_path}/x.db"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metrics.parquet" in err[0] and "damaged" in err[0]
    assert main(["export", "--study", "t2", "--out", str(exp), "--tracking-uri", uri]) == 2  # not empty
    assert main(["export", "--study", "nope", "--out", str(tmp_path / "e2"), "--tracking-uri", uri]) == 2


def test_the_command_line_exits_2_with_one_line(tmp_path):
    root = Path(__file__).resolve().parents[1]  # run from elsewhere, the package found by path, not install
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([sys.executable, "-m", "study.records", "import", str(tmp_path)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "manifest.json" in res.stderr
