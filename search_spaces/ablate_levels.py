"""Ablation of the distortion levels trained on (the paper mixes levels 1-3, Sec. 4.2).

What it measures: IQA-LS (SSIM, identity) on MIX_all3 at the paper's pristine share (60 %) with the
distorted 40 % all at level 1, all at level 2, all at level 3, or spread over all three in the
paper's 15:15:10: does training on one level carry over to the others?

Launch: `python -m study.ablate --levels --preset quick --data ../shared/data/cifar10-jpeg`
(4 settings x 1 seed, about 30 min on a 2-core CPU).

What to expect (a hypothesis, not measured here; one seed gives no interval, so test it with
`--seeds 3` or more): each single level is best near its own test level; level 3 carries over
downwards (to levels 1-2) better than level 1 upwards, at some cost on pristine; the paper's spread
sits in between on every test set.
"""
from __future__ import annotations

from search_spaces.ablate_ratios import PAPER_PRISTINE, PAPER_SPLIT, mix, split_label

LEVEL_SETS: tuple[tuple[int, ...], ...] = ((1,), (2,), (3,), (1, 2, 3))
PANEL = "training levels"


def settings(level_sets=LEVEL_SETS) -> list[dict]:
    out = []
    for levels in level_sets:
        if tuple(levels) == (1, 2, 3):
            split, label = PAPER_SPLIT, f"L1-3 ({split_label(PAPER_SPLIT)})"
        else:
            split = tuple(1 if lv in levels else 0 for lv in (1, 2, 3))
            label = "+".join(f"L{lv}" for lv in levels) + " only"
        out.append({"setting": label, "fields": {"mix": mix(PAPER_PRISTINE, split), "regularization": "iqa_ls",
                                                 "iqa_metric": "ssim", "tmap": "identity"},
                    "ablated": {PANEL: label.split(" ")[0]}})
    return out
