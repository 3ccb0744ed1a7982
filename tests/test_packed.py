"""Packed trials (trainables.packed): each member trains exactly as its own run_trial would."""
import json
from pathlib import Path

import pytest
import torch

from trainables import loop
from trainables.config import TrialConfig
from trainables.packed import PackError, pack_key, run_packed
from trainables.metric_names import TEST_SETS
from trainables.train import run_trial

FIXTURE = str(Path(__file__).parent / "fixtures" / "cifar10-mini")
LOSS_RTOL = 1e-5  # grouped vs separate convolutions: float32 summation order, not semantics
WEIGHT_ATOL = 1e-5


def tiny(**kw) -> TrialConfig:
    # 100 images in batches of 50, 20 test and 20 validation images per set: a pack of 3 trains in
    # seconds on CPU
    base = dict(data=FIXTURE, epochs=2, lr_decay_every=1, batch_size=50, subset=100, test_subset=20,
                val_size=20, device="cpu", train_set="mix_all3", regularization="iqa_ls")
    base.update(kw)
    return TrialConfig(**base)


# Members that differ in what a pack allows to differ: seed, the training subset's seed, train set,
# regularisation, T map, IQA metric, mix, evaluation cadence.
MEMBERS = (
    dict(seed=0),
    dict(seed=1, subset_seed=1, train_set="mix_noise", regularization="onehot", mix=(0.4, 0.2, 0.2, 0.2),
         eval_every=1),
    dict(seed=2, subset_seed=2, train_set="mix_jpeg", tmap="power", tmap_params={"gamma": 2.0}, iqa_metric="gmsm"),
)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IQA_LS_CACHE", str(tmp_path / "cache"))


def _separate(cfg, ckpt=None):
    reports = []
    run_trial(cfg, reports.append, checkpoint_dir=ckpt)
    return reports


def _assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=WEIGHT_ATOL, rtol=0), (k, float((a[k] - b[k]).abs().max()))


def test_pack_of_three_matches_three_separate_trials(tmp_path):
    cfgs = [tiny(**m) for m in MEMBERS]
    separate = [_separate(c, tmp_path / f"sep{k}") for k, c in enumerate(cfgs)]
    packed: dict[int, list] = {0: [], 1: [], 2: []}
    out = run_packed(cfgs, lambda k, m: packed[k].append(m),
                     checkpoint_dirs=[tmp_path / f"pack{k}" for k in range(3)])
    for k in range(3):
        ref, got = separate[k], packed[k]
        assert [r["epoch"] for r in got] == [1, 2]
        assert set(got[-1]) == set(ref[-1])  # run_trial's metric names, no more, no fewer
        for r, g in zip(ref, got):
            assert g["loss"] == pytest.approx(r["loss"], rel=LOSS_RTOL)
            # the data stream is the member's own: identical targets, not merely close
            for key in ("mean_t", "frac_below_chance", "frac_below_chance_max_batch"):
                assert g[key] == r[key]
        assert out[k]["epoch"] == 2 and out[k]["checkpoint"] == str(tmp_path / f"pack{k}")
        _assert_same_weights(torch.load(tmp_path / f"sep{k}" / "final_weights.pt"),
                             torch.load(tmp_path / f"pack{k}" / "final_weights.pt"))
        a = torch.load(tmp_path / f"sep{k}" / "checkpoint.pt", weights_only=False)
        b = torch.load(tmp_path / f"pack{k}" / "checkpoint.pt", weights_only=False)
        assert a.keys() == b.keys() and a["config"] == b["config"] and a["epoch"] == b["epoch"]
        assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
        assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
        assert (tmp_path / f"pack{k}" / "scores_hist.json").read_text() == \
            (tmp_path / f"sep{k}" / "scores_hist.json").read_text()
        # the same evaluations on the same epochs (validation every epoch for member 1), the same
        # calibration artifact (its bins: counts equal; confidences to float rounding)
        assert [sorted(r) for r in got] == [sorted(r) for r in ref]
        for r, g in zip(ref, got):
            for m in r:
                if m.startswith(("acc_", "val_acc_", "val_ece_", "ece_", "nll_", "val_nll_")):
                    assert g[m] == pytest.approx(r[m], abs=0.051), m  # 20 images: one flip is 0.05
        cal_sep = json.loads((tmp_path / f"sep{k}" / "calibration.json").read_text())
        cal_pack = json.loads((tmp_path / f"pack{k}" / "calibration.json").read_text())
        assert cal_sep.keys() == cal_pack.keys() and set(cal_sep["val"]["quality"]) == set(TEST_SETS[1:])
        assert cal_sep["test"]["reliability"]["pristine"]["count"] != [] and \
            sum(cal_pack["val"]["reliability"]["blur_3"]["count"]) == 20


def test_member_checkpoints_resume_alone_or_in_a_pack(tmp_path):
    cfgs = [tiny(seed=0, momentum=0.9), tiny(seed=1, momentum=0.9, train_set="mix_noise")]
    full = [_separate(c, tmp_path / f"sep{k}") for k, c in enumerate(cfgs)]

    class Stop(Exception):
        pass

    def stop_after_first(k, m):
        if m["epoch"] == 1 and k == 1:
            raise Stop

    with pytest.raises(Stop):
        run_packed(cfgs, stop_after_first, checkpoint_dirs=[tmp_path / "p0", tmp_path / "p1"])
    state = torch.load(tmp_path / "p0" / "checkpoint.pt", weights_only=False)
    assert state["epoch"] == 1 and state["optimizer"]["state"]  # momentum buffers travel with it
    alone, in_pack = [], []
    run_trial(cfgs[0], alone.append, checkpoint_dir=tmp_path / "p0")  # member 0 alone
    run_packed(cfgs[1:], lambda k, m: in_pack.append(m), checkpoint_dirs=[tmp_path / "p1"])  # 1 in a pack
    for k, resumed in enumerate((alone, in_pack)):
        assert [r["epoch"] for r in resumed] == [2]
        assert resumed[0]["loss"] == pytest.approx(full[k][1]["loss"], rel=LOSS_RTOL)
        _assert_same_weights(torch.load(tmp_path / f"sep{k}" / "final_weights.pt"),
                             torch.load(tmp_path / f"p{k}" / "final_weights.pt"))
    # a finished member is not trained again: its final metrics come back from the checkpoint
    again = run_packed(cfgs, checkpoint_dirs=[tmp_path / "p0", tmp_path / "p1"])
    assert [r["epoch"] for r in again] == [2, 2]


def test_nan_member_is_dropped_and_the_others_finish(tmp_path, monkeypatch):
    cfgs = [tiny(seed=13), tiny(seed=2, train_set="mix_blur")]
    ref = _separate(cfgs[1])
    build = loop.build_model

    def poisoned(cfg, device):  # member seed 13 starts with a NaN weight: its loss is NaN at once
        model = build(cfg, device)
        if cfg.seed == 13:
            with torch.no_grad():
                model.fc3.bias[0] = float("nan")
        return model

    monkeypatch.setattr(loop, "build_model", poisoned)
    reports: dict[int, list] = {0: [], 1: []}
    out = run_packed(cfgs, lambda k, m: reports[k].append(m))
    assert reports[0] == [] and out[0]["failed_epoch"] == 1 and "loss is nan" in out[0]["error"]
    assert [r["epoch"] for r in reports[1]] == [1, 2]
    for r, g in zip(ref, reports[1]):
        assert g["loss"] == pytest.approx(r["loss"], rel=LOSS_RTOL)
    assert out[1]["acc_mean_all"] == pytest.approx(ref[-1]["acc_mean_all"], abs=0.011)


def test_configs_with_different_schedules_are_refused():
    with pytest.raises(PackError, match="batch_size differs"):
        run_packed([tiny(), tiny(batch_size=20)])
    assert pack_key(tiny(seed=1, tmap="power")) == pack_key(tiny(seed=2))
    assert pack_key(tiny(lr=0.05)) != pack_key(tiny())


def test_bf16_pack_matches_its_members_alone_within_bf16_rounding():
    cfgs = [tiny(seed=0, precision="bf16"), tiny(seed=1, precision="bf16", train_set="mix_noise")]
    alone = [_separate(c) for c in cfgs]
    packed: dict[int, list] = {0: [], 1: []}
    run_packed(cfgs, lambda k, m: packed[k].append(m))
    for k in range(2):
        for r, g in zip(alone[k], packed[k]):
            # bfloat16 keeps 8 bits of mantissa: grouped vs separate convolutions round differently
            assert g["loss"] == pytest.approx(r["loss"], rel=2e-2)
    with pytest.raises(PackError, match="precision differs"):
        run_packed([tiny(), tiny(precision="bf16")])


# ------------------------------------------------------------------ the speed levers of issue 18
TIMES = ("epoch_time", "images_per_s", "data_time", "data_share")  # clocks: the only fields that may differ


def test_batched_epoch_data_is_each_members_own_draw_bit_for_bit():
    from trainables.prep import epoch_data, pack_epoch_data, prepare_data, trial_bank

    # every kind of group: banked blur/JPEG, noise, another metric, score pooling, no bank, pristine
    cfgs = [tiny(seed=0, subset=150), tiny(seed=1, subset=150, train_set="mix_noise", score_pooling="level"),
            tiny(seed=2, subset=150, iqa_metric="gmsm", subset_seed=2),
            tiny(seed=3, subset=150, precompute=False, score_pooling="level"),
            tiny(seed=4, subset=150, train_set="pristine", regularization="onehot"),
            tiny(seed=5, subset=150, train_set="mix_jpeg", score_pooling="level", iqa_metric="psnr")]
    dev = torch.device("cpu")
    ds = [prepare_data(c, dev) for c in cfgs]
    banks = [trial_bank(c, d) for c, d in zip(cfgs, ds)]
    for epoch in (0, 5):
        xs, parts = pack_epoch_data(cfgs, epoch, [d["train_x"] for d in ds], dev, banks)
        assert xs.shape == (6, 150, 3, 32, 32)
        for k, c in enumerate(cfgs):
            want = epoch_data(c, epoch, ds[k]["train_x"], dev, banks[k])
            got = (xs[k], *parts[k])
            for a, b in zip(want[:4], got[:4]):  # images, scores, level, kind: equal, not close
                assert torch.equal(a, b), (k, epoch)
            # the draw's generator goes on to the batch order in the same state
            assert torch.equal(torch.randperm(150, generator=want[4]), torch.randperm(150, generator=got[4]))
        assert bool((parts[1][0] < 1).any()) and bool((parts[4][0] == 1).all())  # noise scored; pristine 1


def test_batched_pack_trains_bit_for_bit_as_the_per_member_pack(tmp_path):
    cfgs = [tiny(**m) for m in MEMBERS]
    runs = {}
    for path in ("per_member", "batched"):
        reports: dict[int, list] = {0: [], 1: [], 2: []}
        run_packed([c.replace(pack_data=path) for c in cfgs], lambda k, m: reports[k].append(m),
                   checkpoint_dirs=[tmp_path / path / str(k) for k in range(3)])
        runs[path] = [[{key: v for key, v in r.items() if key not in TIMES + ("checkpoint",)} for r in reports[k]]
                      for k in range(3)]
    assert runs["batched"] == runs["per_member"]  # losses, accuracies, targets: ==
    for k in range(3):
        a, b = (torch.load(tmp_path / path / str(k) / "final_weights.pt") for path in ("per_member", "batched"))
        assert all(torch.equal(a[n], b[n]) for n in a)
        assert (tmp_path / "batched" / str(k) / "scores_hist.json").read_text() == \
            (tmp_path / "per_member" / str(k) / "scores_hist.json").read_text()


def test_batched_pack_reproduces_the_loop_pins():
    from test_loop_pin import PACK, assert_pinned, pick
    from test_loop_pin import tiny as pin_tiny

    reports = {0: [], 1: []}
    run_packed([pin_tiny(seed=0, regularization="onehot", pack_data="batched"),
                pin_tiny(seed=1, subset_seed=1, pack_data="batched")], lambda k, m: reports[k].append(m))
    assert_pinned([[pick(r) for r in reports[k]] for k in (0, 1)], PACK)


# vmapped evaluation: the grouped convolution sums in another order than one model's convolution,
# so the logits move by float32 rounding; over 20 images a probability-based metric moves by far
# less than EVAL_ATOL, and an accuracy by at most one image whose top two logits tie to rounding.
EVAL_ATOL = 1e-5


def _eval_metric(name: str) -> bool:
    return name.startswith(("acc_", "nll_", "ece_", "brier_", "conf_", "ptrue_", "val_", "c10c_"))


@pytest.mark.parametrize("norm", ["per_image", "dataset"])
def test_vmapped_evaluation_matches_each_members_own_within_rounding(tmp_path, norm):
    # member 2 evaluates other test images (test_subset): its own group, through a sliced forward;
    # members 0 and 1 CIFAR-10-C too (two corruptions of 20 test images), member 2 not
    c10c = dict(cifar10c="regenerate", cifar10c_subset=20, cifar10c_corruptions=("gaussian_noise", "contrast"))
    cfgs = [tiny(seed=0, input_norm=norm, eval_every=1, **c10c),
            tiny(seed=1, subset_seed=1, input_norm=norm, eval_every=1, **c10c),
            tiny(seed=2, subset_seed=2, test_subset=30, input_norm=norm, train_set="mix_noise")]
    runs = {}
    for path in ("per_member", "vmap"):
        reports: dict[int, list] = {0: [], 1: [], 2: []}
        run_packed([c.replace(pack_eval=path) for c in cfgs], lambda k, m: reports[k].append(m),
                   checkpoint_dirs=[tmp_path / path / str(k) for k in range(3)])
        runs[path] = reports
    for k in range(3):
        for r, g in zip(runs["per_member"][k], runs["vmap"][k]):
            assert sorted(r) == sorted(g)  # the same evaluations on the same epochs
            for key in r:
                if key in TIMES + ("checkpoint", "c10c_seconds"):
                    continue
                if not _eval_metric(key):
                    assert g[key] == r[key], key  # training is untouched: ==
                elif "acc_" in key or "ece_" in key:
                    n = 30 if k == 2 and not key.startswith("val_") else 20  # CIFAR-10-C: 20 images
                    assert abs(g[key] - r[key]) <= 1 / n + 1e-12, key  # at most one image flips
                else:
                    assert g[key] == pytest.approx(r[key], abs=EVAL_ATOL), key
        a, b = (json.loads((tmp_path / path / str(k) / "calibration.json").read_text())
                for path in ("per_member", "vmap"))
        assert a.keys() == b.keys() and a["test"]["reliability"].keys() == b["test"]["reliability"].keys()
        for s in a["test"]["reliability"]:
            assert sum(a["test"]["reliability"][s]["count"]) == sum(b["test"]["reliability"][s]["count"])
        assert (tmp_path / "vmap" / str(k) / "final_weights.pt").is_file()
        assert (tmp_path / "vmap" / str(k) / "cifar10c.json").is_file() == (k < 2)
        assert ("c10c_acc_contrast_5" in runs["vmap"][k][-1]) == (k < 2)


def test_pack_levers_are_shared_config_fields():
    with pytest.raises(PackError, match="pack_data differs"):
        run_packed([tiny(), tiny(pack_data="batched")])
    with pytest.raises(Exception, match="pack_eval='fast' is not allowed; allowed: \\['per_member', 'vmap'\\]"):
        tiny(pack_eval="fast")
