"""CIFAR-10-C evaluation of a trained model (issue 14): does IQA-LS make a model more robust, or
only better at the three distortions it was trained on?

The data come from `trainables.cifar10c` (the official files, or the corruptions regenerated from the
trial's own test split); which one, and on how many images, are the evaluation fields of the
TrialConfig (`cifar10c`, `cifar10c_subset`, `cifar10c_seed`, `cifar10c_corruptions`; they change no
training step). Every (corruption, severity) is one evaluation set named `<corruption>_<severity>`,
plus `clean`: the same test images uncorrupted, so clean and corrupted accuracy are measured on the
same images. Each set is evaluated by `trainables.evaluation.evaluate` with the trial's normalisation, so
the metric names are `c10c_<what>_<set>` for what in acc, nll, ece, brier, conf, ptrue
(trainables/calibration.py), plus per what the means over the corruption x severity sets:
`_mean_corrupted` (every corruption present), `_mean_benchmark` (the 15 of the benchmark that are
present: RobustBench's `corruptions_acc` when all 15 are), `_mean_seen` / `_mean_unseen` (the kinds
our mixtures train on: Gaussian noise, JPEG, Gaussian blur; and the rest). 18 corruptions give
(18 x 5 + 1) x 6 + 4 x 6 = 570 metrics, under MLflow's 1,000 per log_batch.

`final_evaluation` is the trial-time hook (run_trial and run_packed call it after the last epoch's
evaluation when `cfg.cifar10c` is set): it evaluates, writes the per-trial artifact `cifar10c.json`
(ARTIFACT) and returns the metrics. `study.cifar10c` evaluates a recorded study's final weights with
the same functions. The data are built (or read) once per process and memoised; the regenerated
corruptions are also cached on disk by the data layer, keyed by their content.

The subset: `cifar10c_subset` = n draws a stratified subset of the test images with seed 0 (the rule
of `test_subset`), the same indices for the official files (whose severity blocks hold the test set
in order) and for the regenerated ones (only those images are corrupted).
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from trainables import cifar10c as C10C
from trainables import data as data_mod
from trainables.config import CIFAR10C_REGENERATE, TrialConfig
from trainables.corruptions import BENCHMARK, CORRUPTIONS, REFERENCE_ORDER, SEVERITIES
from trainables.evaluation import evaluate as evaluate_sets
from trainables.files import atomic_write_text
from trainables.metric_names import C10C_PREFIX, EVAL_WHATS
from trainables.model import build_model
from trainables.prep import batch_norm_fn, train_subset

PREFIX = C10C_PREFIX  # metric names: c10c_<what>_<set>
CLEAN = "clean"  # the evaluation set of the uncorrupted test images
ARTIFACT = "cifar10c.json"  # per trial: the evaluation's source, its numbers, a RobustBench block
SUBSET_SEED = 0  # the stratified subset's seed, as test_subset's
SEEN = ("gaussian_noise", "jpeg_compression", "gaussian_blur")  # issue 14: the kinds our mixtures train on
MEANS = ("mean_corrupted", "mean_benchmark", "mean_seen", "mean_unseen")  # <what>_<mean> per evaluation
assert set(SEEN) == {c for c, spec in CORRUPTIONS.items() if spec.seen}  # the registry's flag, checked


def set_name(corruption: str, severity: int) -> str:
    """The evaluation set of one corruption at one severity: `<corruption>_<severity>`."""
    return f"{corruption}_{severity}"


def is_seen(corruption: str) -> bool:
    return corruption in SEEN


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no truth value
class EvalData:
    """What a model is evaluated on: the corrupted sets (`data`, subset applied), the same images
    clean, and `key`: what identifies these images (study.cifar10c skips a run evaluated on the same)."""
    data: C10C.Cifar10C
    clean: torch.Tensor  # uint8 N x 3 x 32 x 32, CPU: the test images the corruptions were made from
    key: dict


_LOADED: dict = {}


def data_key_fields(cfg: TrialConfig) -> tuple:
    """The TrialConfig fields that choose the evaluation data (the memo key, with the cache folder)."""
    return (cfg.data, cfg.cifar10c, cfg.cifar10c_subset, cfg.cifar10c_seed, cfg.cifar10c_corruptions)


def load(cfg: TrialConfig, cache_dir=None, memo: bool = True) -> EvalData:
    """The CIFAR-10-C sets of `cfg` (subset applied). `cache_dir`: the data cache root (None: the data
    layer's default); the regenerated corruptions go to its `cifar10c/` folder. memo=False builds
    without keeping the result in this process (a driver that only checks or warms the cache).
    A bad folder, file or label is a one-line CIFAR10CError (a DataError) naming it."""
    if not cfg.cifar10c:
        raise C10C.CIFAR10CError("cifar10c='' is not allowed here; allowed: 'regenerate' or a folder of the "
                                 "official CIFAR-10-C files")
    memo_key = data_key_fields(cfg) + (str(Path(cache_dir) if cache_dir else data_mod.default_cache_dir()),)
    if memo and memo_key in _LOADED:
        return _LOADED[memo_key]
    test = data_mod.load_split(cfg.data, "test", cache_dir)
    n_test = test.labels.shape[0]
    idx = None
    if 0 < cfg.cifar10c_subset < n_test:
        idx = data_mod.stratified_subset(test.labels, cfg.cifar10c_subset, SUBSET_SEED)
    clean = test.images if idx is None else test.images[idx]
    labels = test.labels if idx is None else test.labels[idx]
    names = list(cfg.cifar10c_corruptions) or None
    if cfg.cifar10c == CIFAR10C_REGENERATE:
        root = Path(cache_dir).expanduser() / C10C.CACHE_SUBDIR if cache_dir else None
        data = C10C.build_cifar10c(clean, labels, names, seed=cfg.cifar10c_seed, cache_dir=root)
    else:
        data = _official(cfg.cifar10c, names, test, idx)
    key = {"kind": data.source.kind, "corruptions": list(data.source.corruptions),
           "seed": data.source.seed, "implementation": data.source.implementation,
           "location": data.source.location if data.source.kind == C10C.KIND_OFFICIAL else None,
           "subset": 0 if idx is None else cfg.cifar10c_subset, "test_images": n_test,
           "n_images": int(labels.shape[0]), "images": C10C.images_checksum(clean)}
    ev = EvalData(data, clean.contiguous(), key)
    if memo:
        _LOADED[memo_key] = ev
    return ev


def _official(folder: str, names, test, idx) -> C10C.Cifar10C:
    """The official files, checked against the test split they were made from (same images, same
    order: the clean images of the evaluation are that split's), subset applied."""
    data = C10C.read_cifar10c(folder, names, per_severity=None)
    n, n_test = data.labels.shape[0], test.labels.shape[0]
    if n != n_test:
        raise C10C.CIFAR10CError(f"CIFAR-10-C folder {folder!r} holds {n} images per severity, the test split of "
                                 f"{test.source} {n_test}; expected the CIFAR-10-C of that test set (same images, "
                                 "same order)")
    differ = torch.nonzero(data.labels != test.labels).flatten()
    if differ.numel():
        i = int(differ[0])
        raise C10C.CIFAR10CError(f"CIFAR-10-C labels in {folder!r} differ from the test split of {test.source} at "
                                 f"{differ.numel()} of {n} images (first: index {i}, {int(data.labels[i])} vs "
                                 f"{int(test.labels[i])}); expected the CIFAR-10-C of that test set, in its order")
    if idx is None:
        return data
    images = {c: {s: x[idx].contiguous() for s, x in sev.items()} for c, sev in data.images.items()}
    return C10C.Cifar10C(images, data.labels[idx].clone(), data.source)


def check(cfg: TrialConfig) -> None:
    """The checks a study runs before any work: the official folder is read and checked (every file
    present, of the published shape, labels equal to the test split's). Regeneration needs nothing
    beyond the config's own validation."""
    if cfg.cifar10c and cfg.cifar10c != CIFAR10C_REGENERATE:
        load(cfg, memo=False)


# ------------------------------------------------------------------ evaluation
def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


@torch.no_grad()
def evaluate(model, ev: EvalData, norm: Callable, device) -> dict[str, float]:
    """`c10c_<what>_<set>` for the clean set and every corruption x severity, and the means (module
    docstring). One corruption's five sets are on the device at a time."""
    return evaluate_many(lambda sets, y: [evaluate_sets(model, sets, y, norm, prefix=PREFIX)], ev, device)[0]


def evaluate_many(run: Callable, ev: EvalData, device) -> list[dict[str, float]]:
    """`evaluate` of the models that `run(sets, y) -> one metrics dict per model` evaluates (one model,
    or a pack's members in one vmapped pass: trainables.packed.Pack.evaluate)."""
    y = ev.data.labels.to(device)
    outs = run({CLEAN: ev.clean.to(device)}, y)
    for corruption, severities in ev.data.images.items():
        sets = {set_name(corruption, s): severities[s].to(device) for s in SEVERITIES}
        for out, part in zip(outs, run(sets, y)):
            out.update(part)
    present = list(ev.data.images)
    groups = {"mean_corrupted": present, "mean_benchmark": [c for c in present if c in BENCHMARK],
              "mean_seen": [c for c in present if is_seen(c)],
              "mean_unseen": [c for c in present if not is_seen(c)]}
    for out in outs:
        for what in EVAL_WHATS:
            for mean, members in groups.items():
                if members:  # an empty group (e.g. only seen corruptions asked for) has no mean
                    out[f"{PREFIX}{what}_{mean}"] = _mean([out[f"{PREFIX}{what}_{set_name(c, s)}"]
                                                           for c in members for s in SEVERITIES])
    return outs


def robustbench_block(metrics: dict[str, float], corruptions, n_images: int) -> dict:
    """RobustBench's corruption numbers (percent, as its model_info files): `clean_acc`,
    `corruptions_acc` = mean accuracy over the benchmark's 15 corruptions x 5 severities (here those
    present; `corruptions_missing` lists the others, so a mean over 14 is never read as one over 15)
    and `corruptions_acc_unaggregated` per corruption and severity."""
    bench = [c for c in BENCHMARK if c in corruptions]
    acc = {c: {str(s): metrics[f"{PREFIX}acc_{set_name(c, s)}"] for s in SEVERITIES} for c in bench}
    mean = _mean([v for c in bench for v in acc[c].values()])
    return {"dataset": "cifar10", "threat_model": "corruptions", "unit": "percent", "n_examples": n_images,
            "clean_acc": round(100 * metrics[f"{PREFIX}acc_{CLEAN}"], 2),
            "corruptions_acc": round(100 * mean, 2) if bench else None,
            "corruptions_covered": bench, "corruptions_missing": [c for c in BENCHMARK if c not in bench],
            "corruptions_acc_unaggregated": {c: {s: round(100 * v, 2) for s, v in acc[c].items()} for c in bench}}


def artifact(metrics: dict[str, float], ev: EvalData, cfg: TrialConfig, epoch: int) -> dict:
    """The per-trial `cifar10c.json`: the key and source of the data, the per-set numbers (every
    metric of every set, fractions), the means, and the RobustBench block."""
    src = ev.data.source
    whats = EVAL_WHATS
    sets = {CLEAN: {w: metrics[f"{PREFIX}{w}_{CLEAN}"] for w in whats}}
    for c in ev.data.images:
        sets[c] = {str(s): {w: metrics[f"{PREFIX}{w}_{set_name(c, s)}"] for w in whats} for s in SEVERITIES}
    means = {m: {w: metrics[f"{PREFIX}{w}_{m}"] for w in whats} for m in MEANS
             if f"{PREFIX}acc_{m}" in metrics}
    return {"epoch": epoch, "key": ev.key, "spec": cfg.cifar10c, "subset": ev.key["subset"],
            "subset_seed": SUBSET_SEED, "data": cfg.data,
            "source": {"kind": src.kind, "corruptions": list(src.corruptions), "location": src.location,
                       "seed": src.seed, "implementation": src.implementation, "describe": src.describe()},
            "seen": [c for c in src.corruptions if is_seen(c)], "severities": list(SEVERITIES),
            "order": list(REFERENCE_ORDER), "sets": sets, "means": means,
            "robustbench": robustbench_block(metrics, src.corruptions, ev.key["n_images"])}


def write_artifact(ckpt_dir: Path | None, doc: dict) -> None:
    if ckpt_dir is None:
        return
    atomic_write_text(Path(ckpt_dir) / ARTIFACT, json.dumps(doc, sort_keys=True))  # old file or whole new


def final_evaluation(model, cfg: TrialConfig, norm: Callable, device, ckpt_dir, cache_dir, epoch: int,
                     done: tuple[dict, float] | None = None) -> dict[str, float]:
    """The trial-time hook: evaluate the final model on CIFAR-10-C, write `cifar10c.json` into the
    checkpoint folder (before the checkpoint that marks the trial finished, so a resume keeps it),
    return the metrics (+ `c10c_seconds`: loading and evaluating, wall time). `done`: (metrics,
    seconds) evaluated already (a pack's vmapped pass; its seconds are the whole pass's)."""
    t0 = time.perf_counter()
    ev = load(cfg, cache_dir)
    if done is not None:
        metrics, t0 = dict(done[0]), t0 - done[1]
    else:
        metrics = evaluate(model, ev, norm, device)
    write_artifact(Path(ckpt_dir) if ckpt_dir else None, artifact(metrics, ev, cfg, epoch))
    metrics[f"{PREFIX}seconds"] = time.perf_counter() - t0
    return metrics


# ------------------------------------------------------------------ a recorded model (study.cifar10c)
def trial_norm(cfg: TrialConfig, device, cache_dir=None) -> Callable:
    """The batch normalisation `run_trial` used for `cfg` (input_norm "dataset" needs the trial's own
    training images' mean and std, rebuilt from its data, split and subset)."""
    x = None
    if cfg.input_norm == "dataset":
        x, _ = train_subset(cfg, data_mod.load_split(cfg.data, "train", cache_dir))
        x = x.to(device)
    return batch_norm_fn(cfg, x)


def load_model(cfg: TrialConfig, weights: Path, device):
    """The Table 1 model of `cfg` with the recorded final weights (a state dict, `final_weights.pt`)."""
    model = build_model(cfg, device)
    model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    return model


def evaluation_sets(cfg: TrialConfig) -> int:
    """Evaluation sets of one trial (clean + corruptions x severities), for time estimates."""
    if not cfg.cifar10c:
        return 0
    n = len(cfg.cifar10c_corruptions) or (len(CORRUPTIONS) if cfg.cifar10c == CIFAR10C_REGENERATE
                                          else len(REFERENCE_ORDER))
    return 1 + n * len(SEVERITIES)
