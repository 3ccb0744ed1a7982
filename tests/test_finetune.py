"""Issue 14 part 2: IQA-LS as fine-tuning (protocol "finetune"): the config, the start from the parent's
final weights, the refusals, the grid of `study.table2 --protocol`, and the study end to end."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from search_spaces import table2 as space
from trainables.config import ConfigError, TrialConfig
from trainables.checkpoints import FINAL_WEIGHTS_FILE
from trainables.config import TrialError
from trainables.metric_names import TEST_SETS
from trainables.train import run_trial

REPO = Path(__file__).resolve().parents[1]
FIXTURE = str(REPO / "tests" / "fixtures" / "cifar10-mini")


def parent_cfg(**kw) -> TrialConfig:
    base = dict(data=FIXTURE, epochs=2, lr_decay_every=1, batch_size=50, subset=200, test_subset=50,
                device="cpu", train_set="mix_all3", regularization="onehot", strategy=8)
    base.update(kw)
    return TrialConfig(**base)


def tune_cfg(**kw) -> TrialConfig:
    fields = dict(strategy=9, regularization="iqa_ls", protocol="finetune", finetune_from="s8-seed0",
                  finetune_epochs=2)
    fields.update(kw)
    return parent_cfg().replace(**fields)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IQA_LS_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def parent_dir(tmp_path):
    d = tmp_path / "s8-seed0"
    run_trial(parent_cfg(), checkpoint_dir=d)
    return d


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("fields,needle", [
    ({"protocol": "warmstart"}, "protocol='warmstart' is not allowed; allowed: ['scratch', 'finetune']"),
    ({"finetune_epochs": 0}, "finetune_epochs=0 is not allowed; allowed: an integer >= 1 with protocol"),
    ({"finetune_epochs": -1}, "finetune_epochs=-1"),
    ({"finetune_from": ""}, "finetune_from='' is not allowed; allowed: the parent's trial key"),
    ({"finetune_lr": 0.0}, "finetune_lr=0.0 is not allowed; allowed: a finite number > 0"),
    ({"finetune_lr_decay_every": -2}, "finetune_lr_decay_every=-2"),
    ({"train_set": "pristine", "strategy": 1}, "protocol='finetune' is not allowed; allowed: 'scratch'"),
])
def test_bad_finetune_values_are_refused_in_one_line_naming_them(fields, needle):
    with pytest.raises(ConfigError) as e:
        tune_cfg(**fields)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("field,value", [("finetune_epochs", 3), ("finetune_from", "s8-seed0"),
                                         ("finetune_lr", 0.5), ("finetune_lr_decay_every", 2)])
def test_a_finetune_field_on_a_scratch_trial_is_refused_not_ignored(field, value):
    with pytest.raises(ConfigError, match=f"{field}=.* with protocol 'scratch'"):
        parent_cfg(**{field: value})


def test_finetune_schedule_numbers_its_epochs_after_the_parent_and_uses_its_own_lr():
    cfg = tune_cfg(finetune_epochs=4, finetune_lr=0.05, finetune_lr_decay_every=2)
    assert (cfg.first_epoch, cfg.total_epochs) == (2, 6)
    assert [cfg.lr_at(e) for e in range(2)] == [0.1, pytest.approx(0.01)]  # the parent's staircase
    assert [cfg.lr_at(e) for e in range(2, 6)] == pytest.approx([0.05, 0.05, 0.005, 0.005])
    assert tune_cfg(finetune_epochs=3).lr_at(4) == 0.01  # default: constant 0.01
    assert parent_cfg().total_epochs == 2 and parent_cfg().first_epoch == 0


def test_parent_mismatch_names_what_differs_and_ignores_the_targets():
    assert tune_cfg().parent_mismatch(parent_cfg()) == []
    assert tune_cfg(tmap="power", tmap_params={"gamma": 2.0}).parent_mismatch(parent_cfg()) == []
    assert tune_cfg().parent_mismatch(parent_cfg(seed=1)) == [("seed", 1, 0)]
    diff = tune_cfg().parent_mismatch(parent_cfg(regularization="iqa_ls"))
    assert ("regularization", "iqa_ls", "onehot") in diff
    assert tune_cfg().parent_mismatch(parent_cfg(train_set="mix_blur"))[0][0] == "train_set"


def test_fine_tune_fields_define_the_trial():
    assert tune_cfg().defining_diff(tune_cfg(finetune_epochs=3)) == [("finetune_epochs", 2, 3)]
    assert tune_cfg().defining_diff(tune_cfg(finetune_from="s8-seed1"))[0][0] == "finetune_from"


# ------------------------------------------------------------------ training
def test_fine_tune_starts_from_exactly_the_parents_final_weights(parent_dir, tmp_path):
    """With a learning rate of 1e-12 the fine-tune's weights can only equal its parent's: a fine-tune
    that trained from random weights (or another parent) fails this."""
    reports = []
    run_trial(tune_cfg(finetune_epochs=1, finetune_lr=1e-12), reports.append, checkpoint_dir=tmp_path / "ft",
              parent_dir=parent_dir)
    parent = torch.load(parent_dir / FINAL_WEIGHTS_FILE)
    child = torch.load(tmp_path / "ft" / FINAL_WEIGHTS_FILE)
    assert parent.keys() == child.keys()
    for k in parent:
        torch.testing.assert_close(child[k], parent[k], rtol=0, atol=1e-9)
    scratch = torch.load(parent_dir / "checkpoint.pt")["history"][0]  # the parent's epoch 1, from init
    assert reports[0]["epoch"] == 3 and reports[0]["loss"] < scratch["loss"]


def test_fine_tune_trains_f_epochs_with_its_schedule_and_changes_the_weights(parent_dir, tmp_path):
    reports = []
    cfg = tune_cfg(finetune_epochs=2, finetune_lr=0.05, finetune_lr_decay_every=1)
    last = run_trial(cfg, reports.append, checkpoint_dir=tmp_path / "ft", parent_dir=parent_dir)
    assert [r["epoch"] for r in reports] == [3, 4]
    assert [r["lr"] for r in reports] == pytest.approx([0.05, 0.005])
    assert 0 < reports[0]["mean_t"] < 1  # IQA-LS targets in the fine-tune (the parent's were one-hot)
    assert "acc_pristine" in last and last["epoch"] == 4
    state = torch.load(tmp_path / "ft" / "checkpoint.pt", weights_only=False)
    assert state["epoch"] == 4 and TrialConfig.from_dict(state["config"]) == cfg
    p, c = torch.load(parent_dir / FINAL_WEIGHTS_FILE), torch.load(tmp_path / "ft" / FINAL_WEIGHTS_FILE)
    assert any(not torch.equal(p[k], c[k]) for k in p)


def test_a_resumed_fine_tune_continues_from_its_own_checkpoint_not_the_parent(parent_dir, tmp_path):
    cfg = tune_cfg(finetune_epochs=2)
    whole = []
    run_trial(cfg, whole.append, checkpoint_dir=tmp_path / "a", parent_dir=parent_dir)

    class Stop(Exception):
        pass

    def stop_after_first(m):
        raise Stop

    with pytest.raises(Stop):
        run_trial(cfg, stop_after_first, checkpoint_dir=tmp_path / "b", parent_dir=parent_dir)
    rest = []
    run_trial(cfg, rest.append, checkpoint_dir=tmp_path / "b", parent_dir=tmp_path / "nowhere")  # not read
    assert [m["epoch"] for m in rest] == [4]
    assert rest[0]["loss"] == whole[1]["loss"]  # bit-identical continuation on CPU


@pytest.mark.parametrize("case", ["no folder", "unfinished", "another trial"])
def test_a_fine_tune_without_a_finished_matching_parent_is_refused_never_trained_from_scratch(case, tmp_path):
    reports = []
    if case == "no folder":
        where = None
    elif case == "unfinished":
        where = tmp_path / "p"
        where.mkdir()
        (where / FINAL_WEIGHTS_FILE).write_bytes(b"")  # final weights without config.json: not finished
    else:
        where = tmp_path / "p"
        run_trial(parent_cfg(seed=1), checkpoint_dir=where)
    with pytest.raises(TrialError) as e:
        run_trial(tune_cfg(), reports.append, checkpoint_dir=tmp_path / "ft", parent_dir=where)
    msg = str(e.value)
    assert "\n" not in msg and "s8-seed0" in msg
    assert {"no folder": "no parent folder", "unfinished": "has not finished",
            "another trial": "seed 1 there, 0 needed"}[case] in msg
    assert reports == [] and not (tmp_path / "ft" / "checkpoint.pt").exists()


def test_a_pack_refuses_a_fine_tune_and_make_packs_runs_it_alone():
    from study.runner import make_packs
    from trainables.packed import PackError, check_packable

    with pytest.raises(PackError, match="protocol='finetune' is not allowed in a pack"):
        check_packable([parent_cfg(), tune_cfg()])
    specs = [{"key": k, "config": c.to_dict(), "tags": {}, "cache_dir": ""}
             for k, c in (("s8-seed0", parent_cfg()), ("s8-seed1", parent_cfg(seed=1)),
                          ("s9-seed0-ft", tune_cfg()))]
    runs = make_packs(specs, 16)
    assert [r["key"] for r in runs] == ["s9-seed0-ft", "pack-1"]
    assert [m["key"] for m in runs[1]["members"]] == ["s8-seed0", "s8-seed1"]


# ------------------------------------------------------------------ the grid and the scheduling
def test_plan_of_strategies_1_8_9_with_both_protocols_and_the_control():
    trials = space.plan(2, (1, 8, 9), ("scratch", "finetune"), control=True)
    keys = [space.key(t) for t in trials]
    assert keys == ["s1-seed0", "s1-seed1", "s8-seed0", "s8-seed1", "s9-seed0", "s9-seed1",
                    "s8-seed0-ft", "s8-seed1-ft", "s9-seed0-ft", "s9-seed1-ft"]
    seed1 = {t["finetune_from"] for t in trials if t["protocol"] == "finetune" and t["seed"] == 1}
    assert seed1 == {"s8-seed1"}
    only = [space.key(t) for t in space.plan(1, (1, 8, 9), ("finetune",))]
    assert only == ["s1-seed0", "s8-seed0", "s9-seed0-ft"]  # the Original parents always from scratch
    with pytest.raises(ConfigError, match="strategy 9 fine-tunes strategy 8's final weights; allowed: add 8"):
        space.plan(1, (1, 9), ("finetune",))
    assert space.title(9, 0, "finetune") == "s9 all3+LS #0 ft"
    assert space.title(8, 0, "finetune") == "s8 all3 #0 cont"


def test_phases_put_fine_tunes_after_their_parents_and_an_orphan_fails_with_the_parents_reason():
    from study.execution import Progress, Recording, phases, without_orphans

    runs = [{"key": "s9-seed0-ft", "parent": "s8-seed0"}, {"key": "pack-0", "members": []},
            {"key": "s8-seed1"}, {"key": "s9-seed1-ft", "parent": "s8-seed1"}]
    order = [[r["key"] for r in p] for p in phases(runs)]
    assert order == [["pack-0", "s8-seed1"], ["s9-seed0-ft", "s9-seed1-ft"]]

    class Rec:
        child_ids = {"s8-seed0": "run-of-s8"}
        opened, failed_runs = {}, {}

        def open_child(self, key, config, tags, run_name=None):
            self.opened[key] = tags

        def fail_child(self, key, reason):
            self.failed_runs[key] = reason

    rec = Rec()
    recording = Recording(rec, lambda config: {}, say=lambda *a, **k: None)
    recording.failed["s8-seed0"] = "loss is nan at epoch 1"
    progress = Progress(["s9-seed0-ft", "s9-seed1-ft"], 4, printer=lambda *a, **k: None)
    tunes = [dict(r, config={}, tags={}, store="/x") for r in phases(runs)[1]]
    left = without_orphans(tunes, recording, progress)
    assert [r["key"] for r in left] == ["s9-seed1-ft"]
    assert "its parent s8-seed0 failed (loss is nan at epoch 1)" in rec.failed_runs["s9-seed0-ft"]
    assert rec.opened["s9-seed0-ft"]["finetune_parent_run"] == "run-of-s8"
    assert progress.ended == {"s9-seed0-ft": "FAILED"}


# ------------------------------------------------------------------ the command
def _study(cwd: Path, *flags, env_extra=None, timeout=600):
    env = dict(os.environ, IQA_LS_CACHE=str(cwd / "cache"), PYTHONPATH=str(REPO), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "study.table2", "--preset", "smoke", "--data", FIXTURE,
                           "--test-subset", "50", "--progress-every", "600", "--executor", "local",
                           *flags], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("flags,needle", [
    (["--strategies", "1,10"], "--strategies '1,10' is not allowed; allowed: distinct Table 2 rows"),
    (["--strategies", "1,9", "--protocol", "finetune"], "strategy 9 fine-tunes strategy 8's final weights"),
    (["--protocol", "warm"], "--protocol 'warm' is not allowed; allowed: scratch, finetune or scratch,"),
    (["--finetune-epochs", "2"], "--finetune-epochs is not allowed without a fine-tune"),
    (["--protocol", "finetune", "--finetune-epochs", "0"], "--finetune-epochs 0 is not allowed"),
    (["--strategies", "1,8", "--protocol", "finetune"], "at least one IQA-LS strategy"),
])
def test_bad_finetune_flags_are_refused_before_anything_is_written(flags, needle, refuse):
    assert needle in refuse("--executor", "local", *flags)


@pytest.mark.slow
def test_a_both_protocols_study_trains_parents_first_tags_them_and_resumes_after_a_failure(tmp_path, new_store):
    """Strategies 1, 8, 9 x 2 seeds, both protocols and the control, --executor local: the Original
    parents train before their fine-tunes, each fine-tune's run names its parent trial and run, a
    fine-tune whose parent failed fails with that reason, and --resume keeps what finished and runs the
    rest."""
    from mlflow.tracking import MlflowClient

    new_store(tmp_path / "mlflow.db")
    flags = ["--strategies", "1,8,9", "--seeds", "2", "--protocol", "scratch,finetune", "--finetune-control",
             "--finetune-epochs", "1", "--epochs", "1"]
    first = _study(tmp_path, *flags, env_extra={"IQA_LS_FAULT": "nan@s8-seed1"})
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-2000:]
    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = c.get_experiment_by_name("iqa-ls")
    runs = {r.data.tags["iqa_ls.trial_key"]: r for r in c.search_runs([exp.experiment_id],
                                                                      "tags.`iqa_ls.role` = 'trial'")}
    assert sorted(runs) == sorted(["s1-seed0", "s1-seed1", "s8-seed0", "s8-seed1", "s9-seed0", "s9-seed1",
                                   "s8-seed0-ft", "s8-seed1-ft", "s9-seed0-ft", "s9-seed1-ft"])
    status = {k: r.info.status for k, r in runs.items()}
    assert [status[k] for k in ("s8-seed1", "s9-seed1-ft", "s8-seed1-ft")] == ["FAILED"] * 3
    assert "its parent s8-seed1 failed" in runs["s9-seed1-ft"].data.tags["iqa_ls.error"]
    assert c.get_metric_history(runs["s9-seed1-ft"].info.run_id, "loss") == []  # never trained
    for k in ("s9-seed0-ft", "s8-seed0-ft"):
        r = runs[k]
        assert status[k] == "FINISHED" and r.data.tags["iqa_ls.protocol"] == "finetune"
        assert r.data.tags["iqa_ls.finetune_parent"] == "s8-seed0"
        assert r.data.tags["iqa_ls.finetune_parent_run"] == runs["s8-seed0"].info.run_id
        assert [m.step for m in c.get_metric_history(r.info.run_id, "loss")] == [2]  # epochs E+1..E+F
        assert r.info.start_time >= max(runs[p].info.end_time for p in runs if not p.endswith("-ft"))
    assert runs["s9-seed0"].data.tags["iqa_ls.protocol"] == "scratch"
    parent = c.search_runs([exp.experiment_id], "tags.`iqa_ls.role` = 'parent'")[0]
    assert parent.data.tags["iqa_ls.strategies"] == "1,8,9"
    assert parent.data.tags["iqa_ls.protocols"] == "scratch,finetune"

    again = _study(tmp_path, *flags, "--resume", "--verbose")  # --verbose: the full tables, the fine-tune's too
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]
    assert "resume: 7 finished trials kept, 3 to run" in again.stdout
    runs2 = {r.data.tags["iqa_ls.trial_key"]: r for r in c.search_runs([exp.experiment_id],
                                                                       "tags.`iqa_ls.role` = 'trial'")}
    assert len(runs2) == 10 and all(r.info.status == "FINISHED" for r in runs2.values())
    assert runs2["s9-seed0-ft"].info.end_time == runs["s9-seed0-ft"].info.end_time  # kept, not retrained
    assert runs2["s9-seed1-ft"].data.tags["iqa_ls.finetune_parent_run"] == runs["s8-seed1"].info.run_id
    out = again.stdout
    assert "Fine-tune protocol" in out and "9ft − 8 (parent)" in out and "9ft − 8ft (continued)" in out
    assert "9ft − 9 (scratch)" in out
    assert (tmp_path / "results" / "table2" / "table2_finetune.md").exists()


# ------------------------------------------------------------------ the analyses tell the protocols apart
@pytest.fixture(scope="module")
def ft_store(tmp_path_factory):
    """A hand-built study in a temporary MLflow store: strategies 1, 8, 9 x 3 seeds from scratch, plus 9
    fine-tuned (9ft) and 8 continued (8ft), each run with Table 2 accuracies and CIFAR-10-C metrics."""
    import numpy as np
    from mlflow.tracking import MlflowClient

    import test_analysis_cifar10c as H

    root = tmp_path_factory.mktemp("ftstore")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("iqa-ls", artifact_location=(root / "artifacts").as_uri())
    rng = np.random.default_rng(1)
    p = H.parent_run(client, exp_id, "ft", "table2", 3)
    client.set_tag(p, "iqa_ls.strategies", "1,8,9")
    vals = {}
    arms = [(1, "scratch"), (8, "scratch"), (9, "scratch"), (8, "finetune"), (9, "finetune")]
    for s, protocol in arms:
        for seed in range(3):
            m = H.values(rng, s + (10 if protocol == "finetune" else 0), seed)
            m.update({f"acc_{ts}": float(rng.uniform(0.3, 0.7)) for ts in TEST_SETS})
            vals[(s, protocol, seed)] = m
            tags = {"iqa_ls.study": "ft", "iqa_ls.strategy": str(s), "iqa_ls.train_set": H.ROWS[s][0],
                    "iqa_ls.regularization": H.ROWS[s][1], "iqa_ls.seed": str(seed),
                    "iqa_ls.protocol": protocol}
            key = f"s{s}-seed{seed}" + ("-ft" if protocol == "finetune" else "")
            H.child_run(client, exp_id, p, key, tags, m, H.artifact_doc(H.key()))
    client.set_terminated(p, "FINISHED")
    return {"uri": uri, "root": root, "vals": vals}


def test_analysis_table2_pairs_each_protocol_by_seed(ft_store):
    import numpy as np
    from scipy import stats as sps

    from analysis.table2 import build_table2, format_console

    res = build_table2("ft", tracking_uri=ft_store["uri"], out_dir=ft_store["root"] / "t2",
                       log_to_parent=False)
    vals = ft_store["vals"]
    main = res["tables"]["acc"]["pairs"]
    assert set(zip(main["original"], main["iqa_ls"])) == {(8, 9)} and res["gaps"].empty  # only planned rows
    row = main[main["test_set"] == "pristine"].iloc[0]  # from scratch only: the fine-tunes stay out
    d = [vals[(9, "scratch", k)]["acc_pristine"] - vals[(8, "scratch", k)]["acc_pristine"] for k in range(3)]
    assert row["diff"] == pytest.approx(np.mean(d)) and row["n"] == 3
    ft = res["finetune"]["acc"]["pairs"]
    refs = list(dict.fromkeys(zip(ft["reference"], ft["baseline"])))
    assert refs == [("parent", "8"), ("continued", "8ft"), ("scratch", "9")]
    arms = {"parent": (8, "scratch"), "continued": (8, "finetune"), "scratch": (9, "scratch")}
    for ref, (s, protocol) in arms.items():
        r = ft[(ft["reference"] == ref) & (ft["test_set"] == "noise_2")].iloc[0]
        xb = [vals[(9, "finetune", k)]["acc_noise_2"] for k in range(3)]
        xa = [vals[(s, protocol, k)]["acc_noise_2"] for k in range(3)]
        assert r["diff"] == pytest.approx(np.mean(np.subtract(xb, xa))) and r["method"] == "paired"
        assert r["p"] == pytest.approx(sps.ttest_rel(xb, xa).pvalue)
    text = format_console(res)
    assert "9ft − 8 (parent)" in text and "1 Original Pristine" in text and "2 Original" not in text
    page = (ft_store["root"] / "t2" / "table2_finetune.md").read_text()
    assert page.count("| 9ft − ") == 3 * 3  # 3 references per family


def test_analysis_cifar10c_has_a_fine_tune_group_paired_by_seed(ft_store):
    import numpy as np
    from scipy import stats as sps

    import test_analysis_cifar10c as H
    from analysis import cifar10c as A

    res = A.build_cifar10c("ft", tracking_uri=ft_store["uri"], out_dir=ft_store["root"] / "c",
                           log_to_parent=False)
    vals = ft_store["vals"]
    assert [g["group"] for g in res["groups"]] == ["table2", A.FT_GROUP]
    assert [a["arm"] for a in res["groups"][0]["arms"]] == [1, 8, 9]
    p = res["pairs"]
    ftp = p[(p["group"] == A.FT_GROUP) & (p["family"] == "accuracy") & (p["metric"] == "mean_seen")]
    assert sorted(zip(ftp["baseline"], ftp["arm"])) == [(8, 109), (9, 109), (108, 109)]

    def seen(m):
        return np.mean([m[f"c10c_acc_{c}_{v}"] for c in H.SEEN for v in range(1, 6)])
    row = ftp[ftp["baseline"] == 108].iloc[0]
    xb = [seen(vals[(9, "finetune", k)]) for k in range(3)]
    xa = [seen(vals[(8, "finetune", k)]) for k in range(3)]
    assert row["diff"] == pytest.approx(np.mean(np.subtract(xb, xa)))
    assert row["p"] == pytest.approx(sps.ttest_rel(xb, xa).pvalue)
    text = A.format_console(res)
    assert "fine-tune protocol" in text and "9ft − 8ft" in text and "9ft − 9" in text


@pytest.mark.slow
def test_ray_runs_the_fine_tunes_after_their_parents_in_a_second_tuner_run(tmp_path, new_store):
    new_store(tmp_path / "mlflow.db")
    from mlflow.tracking import MlflowClient

    res = _study(tmp_path, "--strategies", "8,9", "--protocol", "finetune", "--epochs", "1",
                 "--finetune-epochs", "1", "--executor", "ray", "--cpus-per-trial", "1")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = c.get_experiment_by_name("iqa-ls")
    runs = {r.data.tags["iqa_ls.trial_key"]: r for r in c.search_runs([exp.experiment_id],
                                                                      "tags.`iqa_ls.role` = 'trial'")}
    assert sorted(runs) == ["s8-seed0", "s9-seed0-ft"]
    ft, parent = runs["s9-seed0-ft"], runs["s8-seed0"]
    assert ft.info.status == "FINISHED" and ft.info.start_time >= parent.info.end_time
    assert ft.data.tags["iqa_ls.finetune_parent_run"] == parent.info.run_id
    assert list((tmp_path / "ray_results" / "table2" / "finetune").glob("ray-*"))  # the second Tuner run
