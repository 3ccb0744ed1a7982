"""Reliability diagrams and "confidence against quality" from the trials' calibration artifacts.

Every trial logs `calibration.json` (docs/mlflow-schema.md; written by trainables.evaluation): for its final
evaluation, per test set (and validation set), the reliability bins (15 equal-width confidence bins:
count, summed confidence, correct) and, for the 9 distorted sets, the same three sums per bin of the
test image's SSIM to its pristine version (20 bins over [0, 1]). Sums add: a series (a Table 2
strategy, an ablation setting) pools its seeds and the sets of a test group by adding them, then
accuracy = correct / count and confidence = summed confidence / count per bin.

The paper's hypothesis in one picture (`quality_plot`): with IQA-LS the confidence a model gives an
image should follow the image's quality, as its training target T(SSIM) = SSIM did (the dotted
diagonal), and track the accuracy; with one-hot labels it stays high whatever the quality.
"""
from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence

import numpy as np

CALIBRATION_FILE = "calibration.json"
GROUPS = {"Pristine": ("pristine",), "Blur": ("blur_1", "blur_2", "blur_3"),
          "Noise": ("noise_1", "noise_2", "noise_3"), "JPEG": ("jpeg_1", "jpeg_2", "jpeg_3")}
DISTORTED = tuple(s for g in ("Blur", "Noise", "JPEG") for s in GROUPS[g])
MIN_COUNT = 20  # a bin with fewer images is not drawn (its accuracy is noise)


def pooled(docs: Sequence[Mapping], kind: str, sets: Sequence[str], group: str = "test") -> np.ndarray | None:
    """3 x bins array (count, conf_sum, correct) summed over the runs' `docs` and the `sets`;
    kind = "reliability" or "quality"; None when no run has them."""
    total = None
    for doc in docs:
        g = doc.get(group, {}).get(kind, {})
        for name in sets:
            b = g.get(name)
            if not b:
                continue
            arr = np.asarray([b["count"], b["conf_sum"], b["correct"]], dtype=np.float64)
            total = arr if total is None else total + arr
    return total


def curve(arr: np.ndarray | None, min_count: int = MIN_COUNT):
    """(bin centres, accuracy, confidence, counts) of the bins with at least `min_count` images."""
    if arr is None:
        return np.array([]), np.array([]), np.array([]), np.array([])
    m = arr.shape[1]
    centres = (np.arange(m) + 0.5) / m
    keep = arr[0] >= min_count
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = arr[2] / arr[0]
        conf = arr[1] / arr[0]
    return centres[keep], acc[keep], conf[keep], arr[0][keep]


def ece(arr: np.ndarray | None) -> float:
    """Pooled ECE of a reliability array (the same formula as trainables.calibration)."""
    if arr is None or arr[0].sum() == 0:
        return math.nan
    return float(np.abs(arr[1] - arr[2]).sum() / arr[0].sum())


def reliability_plot(series: Mapping[str, Sequence[Mapping]], styles: Mapping[str, dict], title: str,
                     footer: str, path, new_figure, save_figure):
    """One panel per test group (pristine, blur, noise, JPEG; each pooled over its levels): accuracy
    against confidence per confidence bin, one line per series; the diagonal is perfect calibration."""
    fig = new_figure(figsize=(16, 4.8))
    for i, (group, sets) in enumerate(GROUPS.items()):
        ax = fig.add_subplot(1, len(GROUPS), i + 1)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        for label, docs in series.items():
            arr = pooled(docs, "reliability", sets)
            x, acc, conf, _ = curve(arr)
            if len(x):
                ax.plot(conf, acc, marker="o", ms=2.5, lw=1.1,
                        label=f"{label} (ECE {ece(arr):.3f})", **styles.get(label, {}))
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (bin mean)")
        if i == 0:
            ax.set_ylabel("accuracy")
        ax.set_title(f"{group}", fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.text(0.01, 0.01, textwrap.fill(footer, 230), fontsize=6.5, va="bottom")
    fig.subplots_adjust(left=0.04, right=0.99, top=0.88 - title.count("\n") * 14 / 72 / fig.get_figheight(),
                        bottom=0.2, wspace=0.2)  # a line lower per caveat line of the title
    return save_figure(fig, path)


def quality_plot(panels: Mapping[str, Mapping[str, Sequence[Mapping]]], styles: Mapping[str, dict],
                 title: str, footer: str, path, new_figure, save_figure):
    """One panel per training set (or ablation group): mean top-1 confidence (solid) and accuracy
    (dashed) against the SSIM of the test image to its pristine version, pooled over the 9 distorted
    test sets and the seeds, one colour per series; dotted: IQA-LS's training target T(s) = s."""
    n = max(1, len(panels))
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = new_figure(figsize=(5.2 * cols, 4.2 * rows + 0.8))
    for i, (panel, series) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="T(s) = s")
        for label, docs in series.items():
            x, acc, conf, _ = curve(pooled(docs, "quality", DISTORTED))
            if len(x):
                st = dict(styles.get(label, {}))
                st.pop("ls", None)
                ax.plot(x, conf, lw=1.4, marker="o", ms=2.5, label=f"{label}: confidence", **st)
                ax.plot(x, acc, lw=1.0, ls="--", label=f"{label}: accuracy", **st)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("SSIM of the test image to its pristine version")
        if i % cols == 0:
            ax.set_ylabel("mean top-1 confidence / accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.text(0.01, 0.005, textwrap.fill(footer, int(fig.get_figwidth() * 15)), fontsize=6.5, va="bottom")
    fig.subplots_adjust(left=0.06, right=0.99, top=0.92 - title.count("\n") * 14 / 72 / fig.get_figheight(),
                        bottom=0.8 / fig.get_figheight() + 0.06,
                        hspace=0.35, wspace=0.2)
    return save_figure(fig, path)
