"""One trial end to end without Ray: mixtures, training, evaluation, checkpoints, bad configs."""
import json
from pathlib import Path

import pytest
import torch

from trainables import mixture
from trainables.config import ConfigError, TrialConfig
from trainables.evaluation import make_test_sets
from trainables.metric_names import ACC_METRICS, TEST_SETS
from trainables.train import run_trial

FIXTURE = str(Path(__file__).parent / "fixtures" / "cifar10-mini")


def tiny(**kw) -> TrialConfig:
    base = dict(data=FIXTURE, epochs=2, lr_decay_every=1, batch_size=50, subset=200, test_subset=50, device="cpu",
                train_set="mix_all3", regularization="iqa_ls")
    base.update(kw)
    return TrialConfig(**base)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IQA_LS_CACHE", str(tmp_path / "cache"))


def test_config_round_trips_through_dict_and_json():
    cfg = tiny(tmap="power", tmap_params={"gamma": 2.0}, mix=(0.4, 0.2, 0.2, 0.2))
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg
    assert TrialConfig.from_dict(json.loads(cfg.to_json())) == cfg


@pytest.mark.parametrize("bad,needle", [
    ({"train_set": "mix_fog"}, "train_set='mix_fog'"),
    ({"iqa_metric": "vif"}, "iqa_metric='vif'"),
    ({"tmap": "cubic"}, "tmap='cubic'"),
    ({"mix": (0.5, 0.2, 0.2, 0.2)}, "summing to 1"),
    ({"mix": (1.2, -0.2, 0.0, 0.0)}, "non-negative"),
    ({"epochs": 0}, "epochs=0"),
    ({"seed": -1}, "seed=-1"),
    ({"distortion_types": ("blur", "rain")}, "distortion_types='rain'"),
    ({"tmap": "power", "tmap_params": {"gamma": -2}}, "gamma=-2"),
    ({"regularization": "mixup"}, "regularization='mixup'"),
])
def test_bad_config_values_are_refused_by_name(bad, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        tiny(**bad)


def test_unknown_config_key_is_refused():
    with pytest.raises(ConfigError, match="unknown trial config key"):
        TrialConfig.from_dict({"epochs": 2, "learning_rate": 0.1})


def test_level_counts_are_exact_paper_shares():
    assert mixture.level_counts(50_000, (0.6, 0.15, 0.15, 0.10)) == [30_000, 7_500, 7_500, 5_000]
    assert sum(mixture.level_counts(333, (0.6, 0.15, 0.15, 0.10))) == 333


def test_epoch_draw_is_redrawn_each_epoch_and_balanced_over_types():
    g = torch.Generator().manual_seed(0)
    lv1, k1 = mixture.draw_epoch(1000, (0.6, 0.15, 0.15, 0.10), 3, g)
    lv2, _ = mixture.draw_epoch(1000, (0.6, 0.15, 0.15, 0.10), 3, g)
    assert torch.bincount(lv1, minlength=4).tolist() == [600, 150, 150, 100]
    assert not torch.equal(lv1, lv2)
    for lv in (1, 2, 3):
        counts = torch.bincount(k1[lv1 == lv], minlength=3)
        assert int(counts.max() - counts.min()) <= 1


def test_pristine_train_set_keeps_every_image_pristine():
    cfg = tiny(train_set="pristine", regularization="onehot")
    assert cfg.effective_mix == (1.0, 0.0, 0.0, 0.0)
    lv, _ = mixture.draw_epoch(100, cfg.effective_mix, 0, torch.Generator().manual_seed(0))
    assert int(lv.sum()) == 0


def test_test_sets_are_deterministic_and_ten():
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    a = make_test_sets(x, 7, {})
    b = make_test_sets(x, 7, {})
    assert tuple(a) == TEST_SETS and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["noise_1"], x)


def test_short_run_lowers_loss_beats_chance_and_reports_every_epoch():
    reports = []
    cfg = tiny(train_set="pristine", regularization="onehot", epochs=6, lr_decay_every=6, subset=0)
    last = run_trial(cfg, reports.append)
    assert [r["epoch"] for r in reports] == list(range(1, 7))
    assert reports[-1]["loss"] < reports[0]["loss"]
    assert reports[-1]["train_acc"] > 0.2  # chance is 0.1
    assert set(ACC_METRICS) <= set(last) and "acc_mean_all" in last
    assert all(0.0 <= last[m] <= 1.0 for m in ACC_METRICS)


def test_iqa_ls_records_mean_t_and_below_chance_share():
    reports = []
    run_trial(tiny(epochs=1), reports.append)
    r = reports[0]
    assert 0.0 < r["mean_t"] < 1.0  # 40 % of the images are distorted, so T < 1 on average
    assert 0.0 <= r["frac_below_chance"] <= r["frac_below_chance_max_batch"] <= 1.0
    assert 0.0 <= r["data_share"] < 1.0


def test_onehot_has_mean_t_one():
    reports = []
    run_trial(tiny(epochs=1, regularization="onehot"), reports.append)
    assert reports[0]["mean_t"] == 1.0 and reports[0]["frac_below_chance"] == 0.0


def test_precomputed_bank_gives_the_same_epoch_as_on_the_fly():
    a, b = [], []
    run_trial(tiny(epochs=1, precompute=True), a.append)
    run_trial(tiny(epochs=1, precompute=False), b.append)
    assert a[0]["loss"] == pytest.approx(b[0]["loss"], rel=1e-6)
    assert a[0]["mean_t"] == pytest.approx(b[0]["mean_t"], rel=1e-6)


def test_resume_after_epoch_one_is_bit_identical(tmp_path):
    cfg = tiny(epochs=2, train_set="mix_noise")
    run_trial(cfg, lambda m: None, checkpoint_dir=tmp_path / "full")
    full = torch.load(tmp_path / "full" / "final_weights.pt")
    # stop after epoch 1: a config with epochs=1 would differ, so interrupt by raising in report
    class Stop(Exception):
        pass

    def stop_after_first(m):
        if m["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        run_trial(cfg, stop_after_first, checkpoint_dir=tmp_path / "resumed")
    reports = []
    run_trial(cfg, reports.append, checkpoint_dir=tmp_path / "resumed")
    assert [r["epoch"] for r in reports] == [2]
    resumed = torch.load(tmp_path / "resumed" / "final_weights.pt")
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_checkpoint_of_another_config_is_refused(tmp_path):
    run_trial(tiny(epochs=1), lambda m: None, checkpoint_dir=tmp_path)
    from trainables.config import TrialError
    with pytest.raises(TrialError, match="another config"):
        run_trial(tiny(epochs=1, seed=5), lambda m: None, checkpoint_dir=tmp_path)


def test_nan_loss_stops_the_trial_with_a_reason():
    from trainables.config import TrialError
    with pytest.raises(TrialError, match="loss is (nan|inf)"):
        run_trial(tiny(epochs=1, lr=1e6, regularization="onehot", train_set="pristine"), lambda m: None)


# ------------------------------------------------------------------ validation split, calibration
def test_validation_split_is_held_out_stratified_and_never_trained_on():
    from trainables import data as data_mod
    from trainables.prep import train_subset, validation_split

    train = data_mod.load_split(FIXTURE, "train")
    cfg = tiny(val_size=40, subset=100, subset_seed=3)
    vx, vy = validation_split(cfg, train)
    tx, ty = train_subset(cfg, train)
    assert vx.shape[0] == 40 and tx.shape[0] == 100
    # class shares kept (fixture: 40 of each class -> 4 per class)
    assert torch.bincount(vy, minlength=10).tolist() == [4] * 10
    flat = lambda x: {bytes(img.numpy().tobytes()) for img in x}  # noqa: E731
    assert not flat(vx) & flat(tx)  # no validation image is a training image
    # the split is fixed by val_seed, whatever the trial's subset draws
    assert torch.equal(validation_split(tiny(val_size=40, subset_seed=9), train)[0], vx)
    # without a split the subset is drawn from the whole set, exactly as before the split existed
    x0, _ = train_subset(tiny(subset=100, subset_seed=3), train)
    idx = data_mod.stratified_subset(train.labels, 100, 3)
    assert torch.equal(x0, train.images[idx])


def test_validation_metrics_on_eval_epochs_test_metrics_only_at_the_end():
    reports = []
    run_trial(tiny(epochs=3, lr_decay_every=3, val_size=20, eval_every=1), reports.append)
    assert all("val_acc_mean_all" in r and "val_ece_pristine" in r for r in reports)
    assert [("acc_pristine" in r) for r in reports] == [False, False, True]
    plain = []
    run_trial(tiny(epochs=2, eval_every=1), plain.append)  # no split: the test sets every eval epoch
    assert all("acc_pristine" in r and not any(k.startswith("val_") for k in r) for r in plain)


def test_calibration_metrics_equal_an_independent_computation():
    import numpy as np

    from trainables.calibration import Summary

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 10, generator=g) * 3
    y = torch.randint(0, 10, (500,), generator=g)
    s = Summary()
    for i in range(0, 500, 128):  # batched accumulation gives the whole-set numbers
        s.add(logits[i:i + 128], y[i:i + 128])
    m = s.metrics()
    p = np.exp(logits.double().numpy())
    p /= p.sum(1, keepdims=True)
    yy = y.numpy()
    conf, pred = p.max(1), p.argmax(1)
    assert m["acc"] == pytest.approx(float((pred == yy).mean()))
    assert m["nll"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-5)
    assert m["brier"] == pytest.approx(float(((p - np.eye(10)[yy]) ** 2).sum(1).mean()), rel=1e-5)
    assert m["conf"] == pytest.approx(float(conf.mean()), rel=1e-5)
    assert m["ptrue"] == pytest.approx(float(p[np.arange(500), yy].mean()), rel=1e-5)
    ece = 0.0  # Guo et al.: 15 bins (lo, hi], |acc - conf| weighted by the bin's share
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        inb = (conf > lo) & (conf <= hi)
        if inb.any():
            ece += inb.mean() * abs((pred[inb] == yy[inb]).mean() - conf[inb].mean())
    assert m["ece"] == pytest.approx(ece, rel=1e-5)
    assert sum(s.reliability()["count"]) == 500


def test_calibration_artifact_has_reliability_and_quality_bins(tmp_path):
    run_trial(tiny(epochs=1, val_size=20), lambda m: None, checkpoint_dir=tmp_path)
    doc = json.loads((tmp_path / "calibration.json").read_text())
    assert doc["quality_metric"] == "ssim" and doc["epoch"] == 1
    assert set(doc["test"]["reliability"]) == set(TEST_SETS)
    assert set(doc["test"]["quality"]) == set(TEST_SETS[1:]) == set(doc["val"]["quality"])
    assert sum(doc["test"]["quality"]["jpeg_3"]["count"]) == 50 and sum(doc["val"]["quality"]["noise_1"]["count"]) == 20
    # JPEG level 3 is worse than level 1: its images sit in lower SSIM bins
    def mean_bin(b):
        return sum(i * c for i, c in enumerate(b["count"])) / sum(b["count"])
    assert mean_bin(doc["test"]["quality"]["jpeg_3"]) < mean_bin(doc["test"]["quality"]["jpeg_1"])


def test_bf16_autocast_trains_close_to_fp32_and_fp32_is_the_default_path():
    from trainables.device import numerics
    a, b, c = [], [], []
    run_trial(tiny(epochs=1), a.append)
    run_trial(tiny(epochs=1, precision="fp32"), b.append)
    run_trial(tiny(epochs=1, precision="bf16"), c.append)
    assert a[0]["loss"] == b[0]["loss"]  # fp32 is the default: the same computation
    assert c[0]["loss"] == pytest.approx(a[0]["loss"], rel=0.05) and c[0]["loss"] != a[0]["loss"]
    assert 0.0 <= c[0]["acc_pristine"] <= 1.0
    with numerics(tiny(precision="bf16"), torch.device("cpu"))():
        y = torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4))
    assert y.dtype == torch.bfloat16  # the forward pass really runs in bfloat16


def test_precision_is_checked_by_name():
    with pytest.raises(ConfigError, match="precision='fp16'"):
        tiny(precision="fp16")
