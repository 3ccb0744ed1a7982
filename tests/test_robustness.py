"""The CIFAR-10-C evaluation of a trained model (trainables/robustness.py): its numbers against an
independent computation, its names against the recorder's filter, the lone and packed trial hooks,
the post-hoc path of study.cifar10c, the official-files path and the refusals."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables import cifar10c as C10C
from trainables import data as data_mod
from trainables import robustness as R
from trainables.metric_names import EVAL_METRIC_PREFIXES
from trainables.model import build_model
from trainables.train import run_trial
from trainables.config import ConfigError, TrialConfig
from trainables.corruptions import BENCHMARK
from trainables.packed import run_packed

FIXTURE = str(Path(__file__).parent / "fixtures" / "cifar10-mini")
FEW = ("gaussian_noise", "fog", "contrast")  # reference order; 1 seen + 2 unseen benchmark kinds; 16 sets


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IQA_LS_CACHE", str(tmp_path / "cache"))


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread, as a study's trial on one CPU: on a shared 2-core machine two threads made
    these forward passes 15x slower (oversubscription), not faster."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def cfg_of(**kw) -> TrialConfig:
    base = dict(data=FIXTURE, epochs=1, lr_decay_every=1, batch_size=50, subset=100, test_subset=20,
                device="cpu", train_set="mix_noise", regularization="iqa_ls", cifar10c="regenerate",
                cifar10c_subset=40, cifar10c_corruptions=FEW, threads=1)
    base.update(kw)
    return TrialConfig(**base)


@pytest.fixture(scope="module")
def lone(tmp_path_factory):
    """One trial with the CIFAR-10-C evaluation (20 images, FEW): (config, metrics, checkpoint folder)."""
    root = tmp_path_factory.mktemp("lone")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IQA_LS_CACHE", str(root / "cache"))
        cfg = cfg_of(cifar10c_subset=20)
        return cfg, run_trial(cfg, checkpoint_dir=root / "ckpt"), root / "ckpt"


def _one_line(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)


def _reference(model, x_uint8: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """acc, nll, brier, conf, ptrue and 15-bin ECE of one set, in float64 numpy, with the per-image
    standardisation (tf.image.per_image_standardization) written out here."""
    x = x_uint8.double() / 255.0
    flat = x.flatten(1)
    m = flat.mean(1)
    s = torch.maximum(flat.std(1, unbiased=False), torch.tensor(1.0 / math.sqrt(flat.shape[1]), dtype=torch.float64))
    xn = ((x - m.view(-1, 1, 1, 1)) / s.view(-1, 1, 1, 1)).float().contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        logits = model(xn).double().numpy()
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    p = np.exp(logp)
    yy = y.numpy()
    conf, pred = p.max(1), p.argmax(1)
    hit = (pred == yy).astype(float)
    onehot = np.eye(10)[yy]
    bins = np.clip(np.ceil(conf * 15).astype(int) - 1, 0, 14)
    ece = sum(abs(hit[bins == b].sum() - conf[bins == b].sum()) for b in range(15)) / len(yy)
    return {"acc": hit.mean(), "nll": -logp[np.arange(len(yy)), yy].mean(), "brier": ((p - onehot) ** 2).sum(1).mean(),
            "conf": conf.mean(), "ptrue": p[np.arange(len(yy)), yy].mean(), "ece": ece}


def test_every_set_matches_an_independent_computation():
    cfg = cfg_of()
    ev = R.load(cfg)
    test = data_mod.load_split(FIXTURE, "test")
    idx = data_mod.stratified_subset(test.labels, 40, 0)
    assert torch.equal(ev.clean, test.images[idx]) and torch.equal(ev.data.labels, test.labels[idx])
    assert np.bincount(ev.data.labels.numpy(), minlength=10).tolist() == [4] * 10  # stratified
    model = build_model(cfg, "cpu")
    with torch.no_grad():  # random, but not near-uniform outputs: a spread of classes and confidences
        torch.manual_seed(1)
        model.fc3.weight.normal_(0, 0.5)
    got = R.evaluate(model, ev, R.trial_norm(cfg, "cpu"), "cpu")
    sets = {"clean": ev.clean, **{f"{c}_{s}": ev.data.images[c][s] for c in FEW for s in range(1, 6)}}
    preds = set()
    for name, x in sets.items():
        ref = _reference(model, x, ev.data.labels)
        for what, v in ref.items():
            assert got[f"c10c_{what}_{name}"] == pytest.approx(v, abs=1e-5), (what, name)
        with torch.no_grad():
            preds |= set(model(R.trial_norm(cfg, "cpu")(x)).argmax(1).tolist())
    assert len(preds) >= 4  # the model does not answer one class everywhere
    acc = {n: got[f"c10c_acc_{n}"] for n in sets}
    assert got["c10c_acc_mean_corrupted"] == pytest.approx(np.mean([acc[n] for n in sets if n != "clean"]))
    assert got["c10c_acc_mean_benchmark"] == pytest.approx(got["c10c_acc_mean_corrupted"])  # all 3 are benchmark
    assert got["c10c_acc_mean_seen"] == pytest.approx(np.mean([acc[f"gaussian_noise_{s}"] for s in range(1, 6)]))
    assert got["c10c_acc_mean_unseen"] == pytest.approx(
        np.mean([acc[f"{c}_{s}"] for c in ("contrast", "fog") for s in range(1, 6)]))


def test_all_corruptions_give_names_the_recorder_keeps_within_one_log_batch():
    cfg = cfg_of(cifar10c_subset=10, cifar10c_corruptions=())
    ev = R.load(cfg)
    assert len(ev.data.images) == 18 and "frost" not in ev.data.images
    got = R.evaluate(build_model(cfg, "cpu"), ev, R.trial_norm(cfg, "cpu"), "cpu")
    assert len(got) == (18 * 5 + 1) * 6 + 4 * 6 == 570
    assert all(k.startswith(EVAL_METRIC_PREFIXES) for k in got)
    # with a final epoch's test and validation metrics and the epoch's own, still under log_batch's 1,000
    assert len(got) + 2 * (10 + 2) * 6 + 20 < 1000
    assert R.evaluation_sets(cfg) == 91


def test_lone_and_packed_trials_record_the_same_cifar10c_metrics(tmp_path, lone):
    cfg, lone, lone_dir = lone
    packed = run_packed([cfg, cfg.replace(seed=1, subset_seed=1)], checkpoint_dirs=[tmp_path / "p0", tmp_path / "p1"])
    names = sorted(k for k in lone if k.startswith("c10c_"))
    assert len(names) == 16 * 6 + 4 * 6 + 1  # 16 sets x 6 metrics, the 4 means x 6, c10c_seconds
    for member in packed:
        assert sorted(k for k in member if k.startswith("c10c_")) == names
    for k in names:
        if k != "c10c_seconds":  # float32 rounding of the grouped convolution only (tests/test_packed.py)
            assert packed[0][k] == pytest.approx(lone[k], abs=1e-5), k
    docs = [json.loads((d / R.ARTIFACT).read_text()) for d in (lone_dir, tmp_path / "p0", tmp_path / "p1")]
    assert docs[0]["key"] == docs[1]["key"] == docs[2]["key"] and docs[0]["epoch"] == 1
    # the evaluation changes no training number
    plain = run_trial(cfg.replace(cifar10c="", cifar10c_subset=0, cifar10c_corruptions=()))
    trained = [k for k in plain if k.startswith(("loss", "train_acc", "mean_t", "acc_", "nll_", "ece_"))]
    assert len(trained) > 20 and {k: lone[k] for k in trained} == {k: plain[k] for k in trained}


@pytest.mark.parametrize("input_norm", ["per_image", "dataset"])
def test_recorded_final_weights_evaluate_as_the_trial_did(tmp_path, lone, input_norm):
    """study.cifar10c's path (config.json + final_weights.pt -> model, normalisation, evaluation)."""
    if input_norm == "per_image":  # the module's trial
        _, trial, tmp_path = lone
    else:  # the normalisation by the trial's own training images: rebuilt from its data and subset
        trial = run_trial(cfg_of(input_norm=input_norm, cifar10c_subset=20), checkpoint_dir=tmp_path)
    recorded = TrialConfig.from_dict(json.loads((tmp_path / "config.json").read_text()))
    model = R.load_model(recorded, tmp_path / "final_weights.pt", "cpu")
    got = R.evaluate(model, R.load(recorded), R.trial_norm(recorded, "cpu"), "cpu")
    assert got == {k: v for k, v in trial.items() if k.startswith("c10c_") and k != "c10c_seconds"}


def test_artifact_names_its_data_and_holds_every_number(lone):
    _, m, ckpt = lone
    doc = json.loads((ckpt / R.ARTIFACT).read_text())
    assert doc["source"]["kind"] == "regenerated" and doc["source"]["corruptions"] == list(FEW)
    assert "lacks shot_noise" in doc["source"]["describe"]
    assert doc["key"]["n_images"] == 20 and doc["key"]["subset"] == 20 and doc["key"]["test_images"] == 200
    assert doc["sets"]["fog"]["3"]["nll"] == m["c10c_nll_fog_3"] and doc["sets"]["clean"]["acc"] == m["c10c_acc_clean"]
    rb = doc["robustbench"]
    bench = [c for c in BENCHMARK if c in FEW]
    assert rb["corruptions_covered"] == bench and "frost" in rb["corruptions_missing"] and len(rb["corruptions_missing"]) == 12
    expected = 100 * np.mean([m[f"c10c_acc_{c}_{s}"] for c in bench for s in range(1, 6)])
    assert rb["corruptions_acc"] == pytest.approx(round(expected, 2))
    assert rb["clean_acc"] == pytest.approx(round(100 * m["c10c_acc_clean"], 2))
    assert rb["corruptions_acc_unaggregated"]["contrast"]["5"] == pytest.approx(round(100 * m["c10c_acc_contrast_5"], 2))


def _write_official(folder: Path, c10c: C10C.Cifar10C) -> None:
    """`c10c` in the published layout: <name>.npy uint8 (5n, 32, 32, 3) and labels.npy (5n,) uint8."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, sev in c10c.images.items():
        np.save(folder / f"{name}.npy", np.concatenate([sev[s].permute(0, 2, 3, 1).numpy() for s in range(1, 6)]))
    np.save(folder / "labels.npy", np.tile(c10c.labels.numpy().astype(np.uint8), 5))


def test_official_files_give_the_numbers_of_the_same_images_regenerated(tmp_path):
    test = data_mod.load_split(FIXTURE, "test")
    full = C10C.build_cifar10c(test.images, test.labels, ["gaussian_noise", "contrast"], seed=0)
    _write_official(tmp_path / "C10C", full)
    regen = cfg_of(cifar10c_corruptions=("gaussian_noise", "contrast"))
    official = regen.replace(cifar10c=str(tmp_path / "C10C"))
    a, b = R.load(regen), R.load(official)
    assert b.data.source.kind == "official files" and a.data.source.kind == "regenerated"
    assert torch.equal(a.clean, b.clean) and torch.equal(a.data.labels, b.data.labels)
    # the subset of the corrupted full set is the corrupted subset for the deterministic corruption
    assert torch.equal(a.data.images["contrast"][4], b.data.images["contrast"][4])
    model = build_model(regen, "cpu")
    norm = R.trial_norm(regen, "cpu")
    ga, gb = R.evaluate(model, a, norm, "cpu"), R.evaluate(model, b, norm, "cpu")
    assert ga["c10c_acc_contrast_2"] == gb["c10c_acc_contrast_2"] and ga["c10c_acc_clean"] == gb["c10c_acc_clean"]
    assert a.key["kind"] != b.key["kind"] and b.key["location"] == str((tmp_path / "C10C").resolve())


def test_official_files_of_another_test_set_are_refused_in_one_line(tmp_path):
    test = data_mod.load_split(FIXTURE, "test")
    few = C10C.build_cifar10c(test.images[:50], test.labels[:50], ["contrast"], seed=0)
    _write_official(tmp_path / "short", few)
    with pytest.raises(C10C.CIFAR10CError) as e:
        R.load(cfg_of(cifar10c=str(tmp_path / "short"), cifar10c_corruptions=("contrast",)))
    _one_line(e, str(tmp_path / "short"), "50 images per severity", "200")
    full = C10C.build_cifar10c(test.images, test.labels, ["contrast"], seed=0)
    _write_official(tmp_path / "shuffled", C10C.Cifar10C(full.images, full.labels.roll(1), full.source))
    with pytest.raises(C10C.CIFAR10CError) as e:
        R.load(cfg_of(cifar10c=str(tmp_path / "shuffled"), cifar10c_corruptions=("contrast",)))
    _one_line(e, "labels", "differ from the test split")
    np.save(tmp_path / "shuffled" / "contrast.npy", np.zeros((1000, 32, 32, 1), np.uint8))
    with pytest.raises(C10C.CIFAR10CError) as e:
        R.check(cfg_of(cifar10c=str(tmp_path / "shuffled"), cifar10c_corruptions=("contrast",)))
    _one_line(e, "contrast.npy", "(1000, 32, 32, 1)")


@pytest.mark.parametrize("fields,needle", [
    ({"cifar10c_subset": -1}, "cifar10c_subset=-1"),
    ({"cifar10c_corruptions": ("frost",)}, "frost cannot be regenerated"),
    ({"cifar10c_corruptions": ("fgo",)}, "cifar10c_corruptions='fgo'"),
    ({"cifar10c_corruptions": ("fog", "fog")}, "distinct names"),
    ({"cifar10c": "", "cifar10c_corruptions": ()}, "cifar10c_subset=40"),
    ({"cifar10c": 3}, "cifar10c=3"),
])
def test_bad_cifar10c_fields_are_refused_in_one_line(fields, needle):
    with pytest.raises(ConfigError) as e:
        cfg_of(**fields)
    _one_line(e, needle)


def test_evaluation_fields_round_trip_through_a_dict():
    cfg = cfg_of()
    d = json.loads(cfg.to_json())
    assert d["cifar10c_corruptions"] == list(FEW) and TrialConfig.from_dict(d) == cfg
