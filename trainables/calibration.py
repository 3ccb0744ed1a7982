"""Calibration and confidence of a classifier's predictions: pure batched functions of logits.

Label smoothing acts on confidence first (Müller, Kornblith & Hinton 2019, "When does label smoothing
help?"), and the paper's argument (Sec. 3) is that the confidence should follow the image quality. So
every evaluation records, per test (and validation) set, beside the top-1 accuracy:

- `nll`: mean negative log-likelihood of the true class, -log p_y (natural log);
- `ece`: expected calibration error, top-label, `ECE_BINS` = 15 equal-width bins over [0, 1] (Guo et
  al. 2017): sum over bins of |accuracy - mean confidence| weighted by the bin's share of images; an
  image of confidence c falls in bin ceil(c * 15) - 1 (bins (lo, hi], c = 0 in the first);
- `brier`: multi-class Brier score, mean over images of sum_k (p_k - 1[k = y])^2 (range [0, 2]);
- `conf`: mean top-1 confidence max_k p_k;
- `ptrue`: mean probability of the true class p_y.

`Summary` accumulates these over batches (the evaluation runs in batches of 1000) and keeps the
reliability bins (count, summed confidence, correct per bin) that the reliability diagrams draw, and,
given a quality score per image, accuracy and confidence per quality bin (`QUALITY_BINS` equal bins
of SSIM over [0, 1]): the "confidence against quality" picture.
"""
from __future__ import annotations

import math

import torch

from trainables.metric_names import CALIBRATION_METRICS  # noqa: F401 - per set, beside "acc"

ECE_BINS = 15  # Guo et al. 2017: 15 equal-width confidence bins
QUALITY_BINS = 20  # bins of the test image's SSIM to its pristine version, width 0.05 over [0, 1]


def confidence_bin(conf: torch.Tensor, bins: int = ECE_BINS) -> torch.Tensor:
    """Bin index of each confidence in `bins` equal-width bins (lo, hi] over [0, 1]."""
    return (torch.ceil(conf * bins).long() - 1).clamp_(0, bins - 1)


def quality_bin(score: torch.Tensor, bins: int = QUALITY_BINS) -> torch.Tensor:
    """Bin index of each quality score in `bins` equal bins [lo, hi) over [0, 1] (1 in the last;
    scores below 0 in the first)."""
    return (score * bins).floor().long().clamp_(0, bins - 1)


def ece_from_bins(count, conf_sum, correct) -> float:
    """Expected calibration error from reliability bins (lists or tensors of equal length)."""
    count, conf_sum, correct = (torch.as_tensor(v, dtype=torch.float64) for v in (count, conf_sum, correct))
    n = float(count.sum())
    if n == 0:
        return math.nan
    return float((conf_sum - correct).abs().sum() / n)  # sum_b n_b/N |acc_b - conf_b|


class Summary:
    """Accumulates one set's accuracy, calibration and reliability bins over batches of logits."""

    def __init__(self, quality_bins: int = QUALITY_BINS):
        self.n = 0
        self.correct = 0.0
        self.nll = 0.0
        self.brier = 0.0
        self.conf = 0.0
        self.ptrue = 0.0
        self.bins = torch.zeros(3, ECE_BINS, dtype=torch.float64)  # count, conf_sum, correct
        self.qbins = torch.zeros(3, quality_bins, dtype=torch.float64)
        self.has_quality = False

    @torch.no_grad()
    def add(self, logits: torch.Tensor, y: torch.Tensor, quality: torch.Tensor | None = None) -> None:
        logp = torch.log_softmax(logits.float(), dim=1)
        p = logp.exp()
        conf, pred = p.max(dim=1)
        hit = (pred == y).double()
        p_true = p.gather(1, y.view(-1, 1)).squeeze(1)
        self.n += int(y.shape[0])
        self.correct += float(hit.sum())
        self.nll += float(-logp.gather(1, y.view(-1, 1)).double().sum())
        onehot = torch.zeros_like(p).scatter_(1, y.view(-1, 1), 1.0)
        self.brier += float((p - onehot).double().pow(2).sum())
        self.conf += float(conf.double().sum())
        self.ptrue += float(p_true.double().sum())
        self._bin(self.bins, confidence_bin(conf), conf, hit)
        if quality is not None:
            self.has_quality = True
            self._bin(self.qbins, quality_bin(quality.float(), self.qbins.shape[1]), conf, hit)

    @staticmethod
    def _bin(acc: torch.Tensor, idx: torch.Tensor, conf: torch.Tensor, hit: torch.Tensor) -> None:
        idx = idx.cpu()
        m = acc.shape[1]
        acc[0] += torch.bincount(idx, minlength=m).double()
        acc[1] += torch.bincount(idx, weights=conf.double().cpu(), minlength=m)
        acc[2] += torch.bincount(idx, weights=hit.cpu(), minlength=m)

    def metrics(self) -> dict[str, float]:
        """acc and the CALIBRATION_METRICS of the set (NaN for an empty set)."""
        n = self.n or math.nan
        return {"acc": self.correct / n, "nll": self.nll / n, "ece": ece_from_bins(*self.bins),
                "brier": self.brier / n, "conf": self.conf / n, "ptrue": self.ptrue / n}

    def reliability(self) -> dict:
        return {"bins": ECE_BINS, "count": [int(v) for v in self.bins[0].tolist()],
                "conf_sum": [round(v, 6) for v in self.bins[1].tolist()],
                "correct": [int(v) for v in self.bins[2].tolist()]}

    def by_quality(self) -> dict | None:
        if not self.has_quality:
            return None
        m = self.qbins.shape[1]
        return {"bins": m, "range": [0.0, 1.0], "count": [int(v) for v in self.qbins[0].tolist()],
                "conf_sum": [round(v, 6) for v in self.qbins[1].tolist()],
                "correct": [int(v) for v in self.qbins[2].tolist()]}
