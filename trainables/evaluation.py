"""A trial's evaluations: the 10 test sets of Sec. 4.2 (and, with a validation split, the same 10 of
its validation images), top-1 accuracy and calibration per set (trainables/calibration.py), when
they are due, and the calibration artifact of the final evaluation (CALIBRATION_FILE). The metric
names are in trainables/metric_names.py."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from trainables import calibration, distortions, iqa
from trainables.config import LEVELS, TrialConfig
from trainables.files import atomic_write_text
from trainables.metric_names import EVAL_WHATS, QUALITY_METRIC, TEST_SETS, TEST_TYPES, VAL_PREFIX

CALIBRATION_FILE = "calibration.json"  # per trial: reliability and quality bins of the final evaluation
EVAL_BATCH = 1000


def make_test_sets(images: torch.Tensor, seed: int, options: dict[str, dict]) -> dict[str, torch.Tensor]:
    """The 10 test sets of Sec. 4.2, identical for every trial (noise from a fixed seed)."""
    sets = {"pristine": images}
    for ti, t in enumerate(TEST_TYPES):
        for lv in LEVELS:
            g = torch.Generator(device=images.device).manual_seed(seed + 100 * ti + lv)
            sets[f"{t}_{lv}"] = distortions.distort(images, t, lv, generator=g, **options.get(t, {}))
    return sets


def eval_sets(images: torch.Tensor, labels: torch.Tensor, seed: int, options: dict[str, dict], device) -> dict:
    """One evaluation group (the test sets, or the validation sets): the 10 sets of Sec. 4.2 on the
    device, their labels, and per distorted set the SSIM of each image to its pristine version."""
    sets = make_test_sets(images, seed, options)
    quality = {name: iqa.score(QUALITY_METRIC, x, images) for name, x in sets.items() if name != "pristine"}
    return {"sets": {k: v.to(device) for k, v in sets.items()}, "y": labels.to(device),
            "quality": {k: v.to(device) for k, v in quality.items()}}


@torch.no_grad()
def evaluate(model, test_sets: dict[str, torch.Tensor], test_y: torch.Tensor, norm,
             quality: dict[str, torch.Tensor] | None = None, prefix: str = "",
             record: dict | None = None, amp=None) -> dict[str, float]:
    """Top-1 accuracy and calibration (trainables.calibration: nll, ece, brier, conf, ptrue) on each
    set, plus their means over the 9 distorted sets and all 10; metric names `<prefix><what>_<set>`
    (prefix "" for the test sets, "val_" for the validation sets). With `record`, the reliability bins
    of each set and, for the sets in `quality`, accuracy and confidence per quality bin go into
    record["reliability"][set] and record["quality"][set] (the calibration artifact)."""
    model.eval()
    try:
        return _evaluate(lambda x: model(norm(x)).unsqueeze(0), 1, test_sets, test_y, quality, prefix,
                         None if record is None else [record], amp)[0]
    finally:
        model.train()


@torch.no_grad()
def evaluate_pack(forward, norms: list, same_norm: bool, test_sets: dict[str, torch.Tensor], test_y: torch.Tensor,
                  quality: dict[str, torch.Tensor] | None = None, prefix: str = "",
                  records: list[dict] | None = None, amp=None) -> list[dict[str, float]]:
    """`evaluate` of K models at once (config `pack_eval="vmap"`): `forward(K x B x 3 x 32 x 32) -> K x B x
    classes` (a pack's vmapped forward), `norms` the K members' normalisations (`same_norm`: they are
    one function of the batch, so it is normalised once). Each member's metrics and record are what
    `evaluate` makes of its logits; the logits differ from its own model's by the grouped
    convolution's float32 summation order (tests/test_packed.py)."""
    k = len(norms)
    if same_norm:
        def logits_of(x):
            xb = norms[0](x)
            return forward(xb.unsqueeze(0).expand(k, *xb.shape))
    else:
        def logits_of(x):
            return forward(torch.stack([n(x) for n in norms]))
    return _evaluate(logits_of, k, test_sets, test_y, quality, prefix, records, amp)


def _evaluate(logits_of, k: int, test_sets, test_y, quality, prefix, records, amp) -> list[dict[str, float]]:
    """The sets through `logits_of(uint8 batch) -> k x B x classes`, each of the k models' logits into
    its own calibration.Summary; per model its metrics (and its record, see `evaluate`)."""
    amp = amp or contextlib.nullcontext  # the trial's numerics (device.numerics): evaluate as it trained
    outs: list[dict[str, float]] = [{} for _ in range(k)]
    for name, x in test_sets.items():
        summs = [calibration.Summary() for _ in range(k)]
        q = (quality or {}).get(name)
        for i in range(0, x.shape[0], EVAL_BATCH):
            with amp():
                logits = logits_of(x[i:i + EVAL_BATCH])
            for j, summ in enumerate(summs):
                summ.add(logits[j], test_y[i:i + EVAL_BATCH], None if q is None else q[i:i + EVAL_BATCH])
        for j, summ in enumerate(summs):
            for what, v in summ.metrics().items():
                outs[j][f"{prefix}{what}_{name}"] = v
            if records is not None:
                records[j].setdefault("reliability", {})[name] = summ.reliability()
                if summ.by_quality() is not None:
                    records[j].setdefault("quality", {})[name] = summ.by_quality()
    for out in outs:
        for what in EVAL_WHATS:
            distorted = [out[f"{prefix}{what}_{n}"] for n in TEST_SETS[1:] if f"{prefix}{what}_{n}" in out]
            every = [out[f"{prefix}{what}_{n}"] for n in TEST_SETS if f"{prefix}{what}_{n}" in out]
            if len(every) == len(TEST_SETS):
                out[f"{prefix}{what}_mean_distorted"] = sum(distorted) / len(distorted)
                out[f"{prefix}{what}_mean_all"] = sum(every) / len(every)
    return outs


def evaluate_all(model, d: dict, norm, test: bool, val: bool, record: dict | None = None,
                 amp=None) -> dict[str, float]:
    """The evaluations of one epoch: the test sets (`test`) and the validation sets (`val`, when the
    trial has a split); `record` collects the calibration artifact's bins per group (test / val)."""
    out = {}
    for group, prefix, wanted in (("test", "", test), ("val", VAL_PREFIX, val)):
        e = d["evals"].get(group)
        if wanted and e is not None:
            sub = None if record is None else record.setdefault(group, {})
            out.update(evaluate(model, e["sets"], e["y"], norm, e["quality"], prefix, sub, amp))
    return out


def evaluate_all_pack(forward, d: dict, norms: list, same_norm: bool, test: bool, val: bool,
                      records: list[dict] | None = None, amp=None) -> list[dict[str, float]]:
    """`evaluate_all` of K models that share the evaluation sets of `d` (prep's eval_key), in one
    pass per batch (evaluate_pack); `records`: one calibration record per model, or None."""
    outs: list[dict[str, float]] = [{} for _ in norms]
    for group, prefix, wanted in (("test", "", test), ("val", VAL_PREFIX, val)):
        e = d["evals"].get(group)
        if wanted and e is not None:
            subs = None if records is None else [r.setdefault(group, {}) for r in records]
            for out, part in zip(outs, evaluate_pack(forward, norms, same_norm, e["sets"], e["y"], e["quality"],
                                                     prefix, subs, amp)):
                out.update(part)
    return outs


def eval_due(cfg: TrialConfig, epoch: int) -> tuple[bool, bool]:
    """(test, validation) evaluations due after epoch `epoch` (1-based). The last epoch evaluates both;
    an `eval_every` epoch evaluates the validation sets when the trial has a split (what a search
    selects on) and the test sets otherwise, so a trial that selects never looks at the test sets
    before its end."""
    last = epoch == cfg.total_epochs
    cadence = bool(cfg.eval_every) and epoch % cfg.eval_every == 0
    return last or (cadence and not cfg.val_size), bool(cfg.val_size) and (last or cadence)


def write_calibration(ckpt_dir: Path | None, cfg: TrialConfig, epoch: int, record: dict) -> None:
    """The trial's calibration artifact (CALIBRATION_FILE): reliability bins per set and accuracy /
    confidence per SSIM bin of the distorted sets, for the test and validation groups."""
    if ckpt_dir is None or not record:
        return
    doc = {"epoch": epoch, "ece_bins": calibration.ECE_BINS, "quality_metric": QUALITY_METRIC,
           "quality_bins": calibration.QUALITY_BINS, "regularization": cfg.regularization,
           "train_set": cfg.train_set, **record}
    atomic_write_text(Path(ckpt_dir) / CALIBRATION_FILE, json.dumps(doc, sort_keys=True))
