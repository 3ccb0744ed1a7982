"""study.gpu_campaign (issue 18): the ladder, the rung choice, and the CPU rehearsal of the one GPU call
end to end (what comes back fits the device tool's limits and rebuilds Table 2 on another store)."""
import json
import math
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from search_spaces.presets import LADDER, resolve
from study.gpu_campaign import MARGIN, choose_rung, rel_diffs

REPO = Path(__file__).resolve().parents[1]
CIFAR_MINI = REPO / "tests" / "fixtures" / "cifar10-mini"


def test_ladder_is_the_paper_schedule_scaled_on_all_data():
    assert LADDER == ("full32", "full64", "full128", "full256", "full512", "paper")
    decays = {"full32": 6, "full64": 11, "full128": 22, "full256": 45, "full512": 90, "paper": 350}
    for rung in LADDER:
        f = resolve(rung)
        assert f["epochs"] == (2000 if rung == "paper" else int(rung[4:]))
        assert f["lr_decay_every"] == decays[rung] == round(0.175 * f["epochs"])
        assert f["subset"] == 0 and f["test_subset"] == 0 and "batch_size" not in f and "lr" not in f  # 100, 0.1


def test_ladder_rungs_have_a_row_in_the_paper_mapping():
    text = (REPO / "docs" / "paper-mapping.md").read_text()
    for rung in LADDER[:-1]:
        assert f"`--preset {rung}`" in text, rung


RUNGS = {"full32": (32, 50_000), "full64": (64, 50_000), "full128": (128, 50_000)}


def test_choose_rung_takes_the_largest_that_fits_with_the_margin():
    # 27 members x 50k images per epoch at 1.35M images/s: 1 s per epoch, plus 40 s fixed
    rung, est = choose_rung(RUNGS, 1_350_000, 27, 40.0, left_s=(40 + 64) * (1 + MARGIN))
    assert rung == "full64" and math.isclose(est["full64"], 104.0) and math.isclose(est["full128"], 168.0)
    rung, _ = choose_rung(RUNGS, 1_350_000, 27, 40.0, left_s=(40 + 64) * (1 + MARGIN) - 0.01)
    assert rung == "full32"  # full64 fits without the margin, not with it
    rung, est = choose_rung(RUNGS, 1_350_000, 27, 40.0, left_s=80.0)
    assert rung is None and est["full32"] == pytest.approx(72.0)
    assert choose_rung(RUNGS, 1_350_000, 27, 0.0, left_s=1e9)[0] == "full128"


def test_choose_rung_refuses_a_rate_or_budget_that_is_not_positive():
    with pytest.raises(ValueError, match="images_per_s=0"):
        choose_rung(RUNGS, 0, 27, 0.0, 100.0)
    with pytest.raises(ValueError, match="left_s=-1"):
        choose_rung(RUNGS, 1.0, 27, 0.0, -1)


def test_a_nan_loss_never_agrees():
    assert rel_diffs([2.0, 2.1], [2.0, 2.1]) == 0.0
    assert rel_diffs([2.0, 2.2], [2.0, 2.0]) == pytest.approx(0.1)
    assert rel_diffs([math.nan, 2.0], [2.0, 2.0]) == math.inf


def test_speed_measures_the_old_path_once_when_the_study_falls_back_to_it(monkeypatch, tmp_path):
    from study import gpu_campaign as gc
    calls = []

    def row(data, device, sz, seeds, precision, impl, peak):
        calls.append((seeds, precision, impl))
        return {"members": 9 * seeds, "precision": precision, "step_impl": impl, "images_per_s": 1.0,
                "images_per_s_per_member": 1.0 / (9 * seeds), "data_share": 0.1, "flop_share": None,
                "paper_seed_min": 1.0}
    levers = []

    def lever(data, device, sz, seeds, precision, impl):
        levers.append((seeds, precision, impl))
        return {"members": 9 * seeds, "test_images": 10, "data_s": {"per_member": 2.0, "batched": 1.0},
                "data_speedup": 2.0, "eval_s": {"per_member": 2.0, "vmap": 1.0}, "eval_speedup": 2.0,
                "agreement": {"data_images_equal": True, "data_targets_max_abs": 0.0, "eval_prob_max_abs": 0.0,
                              "eval_acc_max_abs": 0.0}}
    monkeypatch.setattr(gc, "speed_row", row)
    monkeypatch.setattr(gc, "lever_row", lever)
    convs = []

    def conv(device, members, batch, reps, bf16):
        convs.append((members, batch, bf16))
        return {"members": members, "batch": batch, "layers": {}}
    monkeypatch.setattr(gc, "conv_formulations", conv)
    res = gc.measure_speed("d", "cpu", gc.FULL, {"precision": "tf32", "step_impl": "eager"}, gc.Log(tmp_path / "log"))
    assert calls == [(1, "tf32", "eager"), (3, "tf32", "eager")] and len(res["rows"]) == 3
    assert res["rows"][1] is res["rows"][0]
    # the pack levers, old beside new, on the chosen path for both packs
    assert levers == [(1, "tf32", "eager"), (3, "tf32", "eager")] and len(res["levers"]) == 2
    assert "levers, pack of 27: epoch data path 2.000 s per member -> 1.000 s batched" in (tmp_path / "log").read_text()
    # the pack's convolution formulations at the paper's batch, in the precision the study uses
    assert convs == [(9, 100, False), (27, 100, False)] and len(res["conv"]) == 2


def test_study_refuses_an_unknown_step_impl(refuse):
    assert "--step-impl fast is not allowed; allowed: auto, eager, cuda_graph" in refuse("--step-impl", "fast")


@pytest.mark.slow
def test_smoke_campaign_brings_back_records_that_rebuild_table2(tmp_path, new_store):
    out, back = tmp_path / "out", tmp_path / "back"
    env = {**os.environ, "PYTHONPATH": str(REPO), "IQA_LS_CACHE": str(tmp_path / "cache")}
    for var in ("IQA_LS_FAULT", "MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        env.pop(var, None)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "study.gpu_campaign", "--data", str(CIFAR_MINI), "--out", str(out),
                           "--back", str(back), "--budget-s", "900", "--smoke", "--name", "rehearsal"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert time.monotonic() - t0 < 900
    # what comes back: within the device tool's limits (8 files, 16 MiB each), names it accepts
    files = sorted(p.name for p in back.iterdir())
    assert files == ["campaign.json", "campaign.log", "records.tar.gz"]
    assert all((back / f).stat().st_size < 16 * 2**20 for f in files)
    doc = json.loads((back / "campaign.json").read_text())
    assert doc["rc"] == 0 and doc["correctness"]["step_impl"] == "eager" and doc["correctness"]["precision"] == "fp32"
    assert [r["members"] for r in doc["speed"]["rows"]] == [2, 2, 4]
    assert all(r["images_per_s"] > 0 and 0 <= r["data_share"] < 1 for r in doc["speed"]["rows"])
    # the pack levers ran old beside new on both packs, and agreed before they were timed
    assert [r["members"] for r in doc["speed"]["levers"]] == [2]
    for r in doc["speed"]["levers"]:
        assert min(r["data_s"].values()) > 0 and min(r["eval_s"].values()) > 0
        a = r["agreement"]
        assert a["data_images_equal"] is True and a["data_targets_max_abs"] == 0.0 and a["eval_prob_max_abs"] < 1e-5
    assert [r["members"] for r in doc["speed"]["conv"]] == [2]
    for layer in doc["speed"]["conv"][0]["layers"].values():
        assert min(layer["s"].values()) > 0 and layer["agreement"]["out_max_abs"] < 1e-4
    assert doc["plan"]["rung"] == "smoke" and doc["study"]["rc"] == 0 and not doc["study"]["stopped_at_cap"]
    log = (back / "campaign.log").read_text()
    assert "correctness: eager vs eager" in log and "study: exit code 0" in log and "| Table 2, study rehearsal" in log

    # back on another machine: unpack, import into a new store, rebuild Table 2 from it alone
    with tarfile.open(back / "records.tar.gz") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    dest = f"sqlite:///{new_store(tmp_path / 'dest' / 'mlflow.db')}"
    imp = subprocess.run([sys.executable, "-m", "study.records", "import", str(tmp_path / "unpacked/rehearsal/export"),
                          "--tracking-uri", dest], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert imp.returncode == 0, imp.stderr
    from analysis.table2 import build_table2
    res = build_table2("rehearsal", tracking_uri=dest, out_dir=tmp_path / "tables", log_to_parent=False)
    cells = res["cells"]
    assert set(cells["strategy"]) >= {1, 9} and (tmp_path / "tables" / "table2.csv").is_file()
    assert (tmp_path / "unpacked/rehearsal/tables/table2.csv").is_file()


def lever(members=9, data_speedup=2.0, eval_speedup=2.0, equal=True, targets=0.0, probs=0.0, acc=0.0):
    return {"members": members, "data_speedup": data_speedup, "eval_speedup": eval_speedup,
            "agreement": {"data_images_equal": equal, "data_targets_max_abs": targets, "eval_prob_max_abs": probs,
                          "eval_acc_max_abs": acc}}


def test_the_study_takes_a_pack_lever_only_where_it_is_faster_and_agrees():
    from study.gpu_campaign import choose_levers
    assert choose_levers([], 9) == {"pack_data": "per_member", "pack_eval": "per_member", "why": "no lever measured"}
    got = choose_levers([lever()], 9)
    assert (got["pack_data"], got["pack_eval"]) == ("batched", "vmap") and got["why"].startswith("pack of 9: ")
    assert choose_levers([lever(data_speedup=1.05, eval_speedup=0.26)], 9)["pack_data"] == "per_member"
    assert choose_levers([lever(data_speedup=1.05, eval_speedup=0.26)], 9)["pack_eval"] == "per_member"
    assert choose_levers([lever(equal=False)], 9)["pack_data"] == "per_member"  # faster but not the same images
    assert choose_levers([lever(probs=1e-3)], 9)["pack_eval"] == "per_member"  # faster but further off than 1e-4
    # the row of the study's pack size decides; without one, the largest pack timed
    rows = [lever(9, data_speedup=3.0), lever(27, data_speedup=0.5)]
    assert choose_levers(rows, 27)["pack_data"] == "per_member" and choose_levers(rows, 9)["pack_data"] == "batched"
    assert choose_levers(rows, 18)["pack_data"] == "per_member"


def test_checks_are_taken_from_an_earlier_campaign_only_of_the_same_gpu_and_torch(tmp_path):
    from study.gpu_campaign import checks_from
    setup = {"device_name": "NVIDIA H200", "torch": "2.11.0+cu130"}
    doc = {"setup": dict(setup), "correctness": {"precision": "bf16", "step_impl": "cuda_graph"},
           "speed": {"rows": [{"members": 9}]}}
    f = tmp_path / "campaign.json"
    f.write_text(json.dumps(doc))
    got, why = checks_from(str(f), setup)
    assert got == {"correctness": doc["correctness"], "speed": doc["speed"]} and "not measured again" in why
    got, why = checks_from(str(f), {**setup, "device_name": "NVIDIA H100 80GB HBM3"})
    assert got is None and "device_name 'NVIDIA H200' there, 'NVIDIA H100 80GB HBM3' here; measuring" in why
    got, why = checks_from(str(f), {**setup, "torch": "2.14.1"})
    assert got is None and "torch" in why
    f.write_text(json.dumps({"setup": setup, "rc": 1}))
    assert checks_from(str(f), setup)[0] is None
    f.write_text("{")
    assert "not readable" in checks_from(str(f), setup)[1]
    # the record of the first H200 campaign is usable by a session on the same image
    real = REPO / "docs" / "results" / "records" / "campaign-2026-12-04" / "campaign.json"
    assert checks_from(str(real), setup)[0]["correctness"]["step_impl"] == "cuda_graph"


@pytest.mark.parametrize("argv,said", [
    (["--rung", "full1000"], "--rung full1000 is not allowed; allowed: full32, full64"),
    (["--resume", "--rung", "full32"], "--resume takes the study"),
    (["--checks-from", "/nonexistent/campaign.json"], "--checks-from /nonexistent/campaign.json: no such file"),
])
def test_campaign_refuses_bad_flags_before_any_work(tmp_path, argv, said):
    proc = subprocess.run([sys.executable, "-m", "study.gpu_campaign", "--data", str(CIFAR_MINI), "--out",
                           str(tmp_path / "out"), *argv], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and said in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_campaign_with_checks_on_record_runs_the_study_and_a_second_call_resumes_it(tmp_path):
    """--checks-from skips steps 1-2 (a record of this CPU and torch), --rung forces the rung, and a
    second call with --resume on the same --out runs study.table2 --resume and brings the records back."""
    import torch
    env = {**os.environ, "PYTHONPATH": str(REPO), "IQA_LS_CACHE": str(tmp_path / "cache")}
    for var in ("IQA_LS_FAULT", "MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        env.pop(var, None)
    row = {"members": 2, "precision": "fp32", "step_impl": "eager", "images_per_s": 400.0,
           "images_per_s_per_member": 200.0, "data_share": 0.1, "one_off_s": 1.0}
    record = {"setup": {"device_name": "cpu", "torch": torch.__version__},
              "correctness": {"precision": "fp32", "step_impl": "eager"},
              "speed": {"rows": [row, row, {**row, "members": 4, "images_per_s_per_member": 100.0}],
                        "levers": [lever(2, data_speedup=2.0, eval_speedup=0.5)]}}
    (tmp_path / "record.json").write_text(json.dumps(record))
    out = tmp_path / "out"
    base = [sys.executable, "-m", "study.gpu_campaign", "--data", str(CIFAR_MINI), "--out", str(out),
            "--budget-s", "900", "--smoke"]
    first = subprocess.run([*base, "--back", str(tmp_path / "back1"), "--checks-from", str(tmp_path / "record.json"),
                            "--rung", "smoke", "--name", "two-calls"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    doc = json.loads((tmp_path / "back1" / "campaign.json").read_text())
    assert doc["speed"]["from"] == str(tmp_path / "record.json") and doc["setup"]["data_checksum"].startswith("sha256:")
    assert doc["plan"]["levers"]["pack_data"] == "batched" and doc["plan"]["levers"]["pack_eval"] == "per_member"
    assert "--pack-data batched --pack-eval per_member" in " ".join(doc["study"]["command"])
    assert "not measured again" in first.stdout and "speed: pack of" not in first.stdout
    assert "speed: convolutions, pack of 2 x 10 images" in first.stdout and len(doc["speed"]["conv"]) == 1
    second = subprocess.run([*base, "--back", str(tmp_path / "back2"), "--resume"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    doc2 = json.loads((tmp_path / "back2" / "campaign.json").read_text())
    assert doc2["study"]["command"] == [*doc["study"]["command"], "--resume"] and doc2["study"]["rc"] == 0
    assert sorted(p.name for p in (tmp_path / "back2").iterdir()) == ["campaign.json", "campaign.log",
                                                                       "records.tar.gz"]
    assert "resume: study two-calls, rung smoke" in second.stdout


def test_the_study_trains_in_the_pack_with_the_higher_rate_in_all():
    from study.gpu_campaign import pick_pack
    real = json.loads((REPO / "docs/results/records/campaign-2026-12-04/campaign.json").read_text())["speed"]["rows"]
    assert pick_pack(real[1], real[2])["members"] == 27  # 119,917 images/s in all against 107,909
    assert pick_pack({"members": 9, "images_per_s": 2.0}, {"members": 27, "images_per_s": 1.0})["members"] == 9
