"""Ablation of s, the IQA measure of Eq. 1 (the paper fixes SSIM, Sec. 3), with two controls.

What it measures: IQA-LS (T = identity) on MIX_all3 with every metric of the registry
(`trainables.iqa.METRICS`: ssim, ssim_y, gmsm, psnr), plus
- an oracle of the distortion level, `score_pooling="level"`: every distorted image gets the mean
  SSIM of its (type, level) group, so the label knows the level and nothing about the image;
  if it matches per-image SSIM, IQA-LS works through the level, not through image quality;
- uniform label smoothing with the same average confidence: eps chosen so that its
  q(y) = 1 - eps + eps/K equals the mean T that IQA-LS (SSIM, identity) gives the same training
  set in epoch 1 (computed in the driver before the trials start, per seed; recorded as tag
  `iqa_ls.matched_mean_t`); if it matches IQA-LS, the effect is plain label smoothing;
- the one-hot "Original" as the reference.

Launch: `python -m study.ablate --iqa --preset quick --data ../shared/data/cifar10-jpeg`
(7 settings x 1 seed, about 50 min on a 2-core CPU); `--metrics ssim,gmsm` picks the metrics.

What to expect: the metrics rank the levels alike but spread differently (psnr / 50 dB compresses
everything into 0.4-0.7 and so smooths the most). The hypothesis to test: if the paper's reading
holds, per-image SSIM is above both controls on pristine and level 1-2, with paired intervals that
exclude 0 (which needs `--seeds 3` or more; one seed gives none); if the level oracle or the matched
uniform smoothing reach it, the gain of Table 2 is not due to per-image quality. Measured so far:
docs/results/ablate-iqa-overfit-n5.md.
"""
from __future__ import annotations

TMAP = "identity"  # the paper's T (Sec. 3)
POOLED_METRIC = "ssim"  # the level oracle pools the paper's metric
MATCH_TO = {"regularization": "iqa_ls", "iqa_metric": "ssim", "tmap": "identity", "tmap_params": {},
            "score_pooling": "image"}  # the IQA-LS run whose mean confidence the uniform control copies
PANEL = "IQA measure"


def metrics() -> tuple[str, ...]:
    """Every metric of the registry, in registry order."""
    from trainables.iqa import METRICS
    return tuple(METRICS)


def matched_epsilon(mean_t: float, num_classes: int) -> float:
    """Classic label smoothing puts q(y) = 1 - eps + eps/K on the true class; the eps whose q(y) equals
    IQA-LS's mean T: eps = (1 - mean_t) K / (K - 1)."""
    return (1.0 - mean_t) * num_classes / (num_classes - 1)


def settings(names=None) -> list[dict]:
    """One dict per setting: label, TrialConfig field overrides, ablated variable for the plots. The
    uniform control carries `match: True`: its ls_epsilon is filled in per seed by the driver."""
    out = [{"setting": m, "fields": {"regularization": "iqa_ls", "iqa_metric": m, "tmap": TMAP},
            "ablated": {PANEL: m}} for m in (names or metrics())]
    out.append({"setting": f"{POOLED_METRIC}, level-pooled (oracle)",
                "fields": {"regularization": "iqa_ls", "iqa_metric": POOLED_METRIC, "tmap": TMAP,
                           "score_pooling": "level"},
                "ablated": {PANEL: "level oracle"}})
    out.append({"setting": "uniform LS, matched mean T", "fields": {"regularization": "uniform"},
                "ablated": {PANEL: "uniform LS"}, "match": True})
    out.append({"setting": "onehot (Original)", "fields": {"regularization": "onehot"},
                "ablated": {PANEL: "onehot"}})
    return out
