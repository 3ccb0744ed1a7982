"""Packed trials inside a study (--pack): how the grid is grouped into packs, what a pack trial
reports per member (without Ray), and a forced-packing study end to end on CPU whose member runs
match the same study run unpacked, with a NaN member failed alone and a crashing pack failed whole.
trainables.packed itself (pack == separate runs) is tests/test_packed.py."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from study import execution, plan
from study.table2 import main as table2_main
from trainables.config import TrialConfig
from trainables.train import run_trial

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "cifar10-mini"
LOSS_RTOL = 1e-4  # a pack's grouped convolutions sum in another order than separate ones


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IQA_LS_CACHE", str(tmp_path / "cache"))


def tiny(**kw) -> TrialConfig:
    base = dict(data=str(FIXTURE), epochs=2, lr_decay_every=1, batch_size=50, subset=100, test_subset=20,
                device="cpu", train_set="mix_all3", regularization="iqa_ls")
    base.update(kw)
    return TrialConfig(**base)


def spec(key: str, cfg: TrialConfig, root: Path, **kw) -> dict:
    return {"key": key, "config": cfg.to_dict(), "tags": {"setting": key}, "store": str(root / key),
            "cache_dir": os.environ["IQA_LS_CACHE"], **kw}


# ------------------------------------------------------------------ grouping
def test_make_packs_groups_by_schedule_and_cadence_in_grid_order(tmp_path):
    specs = [spec(f"a{i}", tiny(seed=i), tmp_path) for i in range(5)]
    specs += [spec("lr", tiny(lr=0.05), tmp_path), spec("ck", tiny(checkpoint_every=2), tmp_path),
              spec("lr2", tiny(lr=0.05, seed=3), tmp_path)]
    packs = plan.make_packs(specs, size=3)
    members = [[m["key"] for m in execution.members_of(p)] for p in packs]
    assert members == [["a0", "a1", "a2"], ["a3", "a4"], ["lr", "lr2"], ["ck"]]
    assert "members" not in packs[-1] and packs[-1] is specs[6]  # a pack of one is a plain trial
    for p in packs[:3]:
        assert all(m["tags"]["pack"] == p["key"] and m["tags"]["pack_size"] == len(p["members"])
                   and m["tags"]["setting"] == m["key"] for m in p["members"])
    assert len({p["key"] for p in packs[:3]}) == 3
    assert [len(execution.members_of(p)) for p in plan.make_packs(specs, size=16)] == [5, 2, 1]


def test_pack_flags_are_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for flags, needle in ((["--pack", "maybe"], "--pack maybe is not allowed; allowed: auto, on, off"),
                          (["--pack-size", "0"], "--pack-size 0 is not allowed; allowed: an integer >= 1")):
        assert table2_main(["--preset", "smoke", "--data", str(FIXTURE), *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert list(tmp_path.iterdir()) == []  # no mlflow.db, no ray_results, no results


# ------------------------------------------------------------------ one pack trial, without Ray
def _emit_to(results: list):
    return results.append


def test_pack_trial_reports_each_member_as_its_own_trial(tmp_path):
    cfgs = [tiny(seed=0), tiny(seed=1, train_set="mix_noise", regularization="onehot")]
    # member m0 ran one epoch before (a study first run unpacked, then killed): its checkpoint is at 1
    def stop_after_first(m):
        if m["epoch"] == 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_trial(cfgs[0], stop_after_first, checkpoint_dir=tmp_path / "m0")
    pack = {"key": "pack-0", "members": [spec("m0", cfgs[0], tmp_path), spec("m1", cfgs[1], tmp_path)],
            "cache_dir": os.environ["IQA_LS_CACHE"]}
    out: list[dict] = []
    execution.run_pack(pack, _emit_to(out), "10.0.0.9/abc")
    by = {k: [r for r in out if r["member"] == k] for k in ("m0", "m1")}
    assert [r["epoch"] for r in by["m0"]] == [2] and [r["epoch"] for r in by["m1"]] == [1, 2]
    assert by["m0"][0]["start_epoch"] == 1 and by["m1"][0]["start_epoch"] == 0
    assert all("start_epoch" not in r for r in by["m1"][1:])
    assert by["m1"][0]["node"] == "10.0.0.9/abc" and by["m1"][0]["device_name"].startswith("cpu")
    for key, cfg in zip(("m0", "m1"), cfgs):
        alone = []
        run_trial(cfg, alone.append)
        got = by[key]
        for r in got:
            ref = next(a for a in alone if a["epoch"] == r["epoch"])
            assert r["loss"] == pytest.approx(ref["loss"], rel=LOSS_RTOL)
        assert got[-1]["acc_mean_all"] == pytest.approx(alone[-1]["acc_mean_all"], abs=0.051)
        assert (tmp_path / key / "final_weights.pt").exists() and (tmp_path / key / "config.json").exists()
    # run again: both finished, each hands its final metrics back once and nothing trains
    again: list[dict] = []
    execution.run_pack(pack, _emit_to(again), "n2/b")
    assert sorted((r["member"], r["epoch"], r["start_epoch"]) for r in again) == [("m0", 2, 2), ("m1", 2, 2)]


def test_pack_trial_fails_a_nan_member_alone_and_a_raise_fault_crashes_the_pack(tmp_path):
    cfgs = [tiny(seed=0), tiny(seed=1)]
    pack = {"key": "pack-0", "members": [spec("ok", cfgs[0], tmp_path), spec("bad", cfgs[1], tmp_path, fault="nan")],
            "cache_dir": os.environ["IQA_LS_CACHE"]}
    out: list[dict] = []
    execution.run_pack(pack, _emit_to(out), "n/a")
    errors = [r for r in out if "trial_error" in r]
    assert len(errors) == 1 and errors[0]["member"] == "bad"
    assert re.match(r"loss is nan at epoch 1", errors[0]["trial_error"])
    assert [r["epoch"] for r in out if r["member"] == "ok" and "epoch" in r] == [1, 2]
    pack["members"][1]["fault"] = "raise"
    with pytest.raises(RuntimeError, match="fault injected by IQA_LS_FAULT=raise@bad"):
        execution.run_pack(pack, _emit_to([]), "n/a")


# ------------------------------------------------------------------ a packed study, end to end
def _study(tmp_path, name: str, *flags, env_extra=None):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for var in ("RAY_ADDRESS", "IQA_LS_FAULT"):
        env.pop(var, None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "study.table2", "--preset", "smoke", "--data", str(FIXTURE),
                           "--epochs", "2", "--subset", "100", "--test-subset", "50", "--name", name,
                           "--max-failures", "0", "--progress-every", "600", *flags],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


FOUR = ("--strategies", "1,2,3,4")  # two packs of two, one member failing


def _runs(tmp_path, name):
    from mlflow.tracking import MlflowClient
    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = c.get_experiment_by_name("iqa-ls")
    runs = c.search_runs([exp.experiment_id], f"tags.`iqa_ls.role` = 'trial' and tags.`iqa_ls.study` = '{name}'")
    return c, {r.data.tags["iqa_ls.trial_key"]: r for r in runs}


@pytest.mark.slow
def test_forced_packing_study_matches_the_unpacked_study_per_member(tmp_path, new_store):
    new_store(tmp_path / "mlflow.db")
    res = _study(tmp_path, "packed", *FOUR, "--pack", "on", "--pack-size", "2",
                 env_extra={"IQA_LS_FAULT": "nan@s3-seed0"})
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]  # s3-seed0 did not finish
    assert res.stderr.strip().splitlines()[-1].startswith("error: 1 of 4 trial(s) did not finish (s3-seed0: ")
    assert "packing (forced by --pack on): the 4 grid trials run as 2 pack(s) of up to 2 members" in res.stdout
    ref = _study(tmp_path, "separate", *FOUR, "--pack", "off")
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    assert "packing (" not in ref.stdout
    c, packed = _runs(tmp_path, "packed")
    _, separate = _runs(tmp_path, "separate")
    assert len(packed) == len(separate) == 4
    assert packed["s3-seed0"].info.status == "FAILED"
    assert re.match(r"loss is (nan|inf) at epoch 1", packed["s3-seed0"].data.tags["iqa_ls.error"])
    assert {r.data.tags["iqa_ls.pack"] for r in packed.values()} == {"pack-0", "pack-1"}
    for key, run in packed.items():
        if key == "s3-seed0":
            continue
        assert run.info.status == "FINISHED", key
        assert {a.path for a in c.list_artifacts(run.info.run_id)} >= {"final_weights.pt", "config.json"}
        mine = sorted(c.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
        theirs = sorted(c.get_metric_history(separate[key].info.run_id, "loss"), key=lambda m: m.step)
        assert [m.step for m in mine] == [m.step for m in theirs] == [1, 2], key  # no gap, no duplicate
        assert [m.value for m in mine] == pytest.approx([m.value for m in theirs], rel=LOSS_RTOL), key
        accs = {k: v for k, v in run.data.metrics.items() if k.startswith("acc_")}
        ref_accs = {k: v for k, v in separate[key].data.metrics.items() if k.startswith("acc_")}
        assert accs.keys() == ref_accs.keys() and len(accs) >= 10
        # 50 test images per set: one image flipped by float rounding moves an accuracy by 0.02
        assert all(abs(accs[k] - ref_accs[k]) <= 0.041 for k in accs), key
