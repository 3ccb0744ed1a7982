"""Ablation of the training mixture's proportions (the paper fixes 60 % pristine and the distorted
40 % split 15 / 15 / 10 % over levels 1 / 2 / 3, Sec. 4.2).

What it measures: IQA-LS (SSIM, identity) on MIX_all3 with the pristine share p in {0.2, 0.4, 0.6,
0.8} (the distorted share split over the levels in the paper's 15:15:10 proportion), and at the
paper's p = 0.6 a few other level splits (1:1:1, 3:2:1 towards mild, 1:2:3 towards severe).

Launch: `python -m study.ablate --ratios --preset quick --data ../shared/data/cifar10-jpeg`
(7 settings x 1 seed, about 50 min on a 2-core CPU); `--pristine-shares 0.3,0.9` and
`--level-splits 1:1:1,1:0:0` pick the values.

What to expect (a hypothesis, not measured here; one seed gives no interval, so test it with
`--seeds 3` or more): a trade-off: pristine accuracy rises with p while the distorted sets, level 3
most, lose (the paper's Table 2 mixture rows are 0-4.1 points below row 1 on pristine at p = 0.6,
one run); splits towards severe levels help level 3 and cost pristine / level 1.
"""
from __future__ import annotations

from trainables.config import PAPER_MIX

PRISTINE_SHARES = (0.2, 0.4, 0.6, 0.8)
PAPER_PRISTINE = PAPER_MIX[0]  # Sec. 4.2: 60 %
PAPER_SPLIT = (15, 15, 10)  # Sec. 4.2: levels 1 / 2 / 3 in the ratio 15 % / 15 % / 10 %
LEVEL_SPLITS = (PAPER_SPLIT, (1, 1, 1), (3, 2, 1), (1, 2, 3))
SHARE_PANEL = "pristine share"
SPLIT_PANEL = f"level split at pristine {PAPER_PRISTINE:g}"


def split_label(split) -> str:
    return ":".join(f"{v:g}" for v in split)


def mix(pristine: float, split=PAPER_SPLIT) -> tuple[float, float, float, float]:
    """(pristine, level 1, level 2, level 3) shares: the distorted rest divided in the ratio `split`
    (rounded to 12 digits so that the paper's setting is exactly config.PAPER_MIX)."""
    rest, total = 1.0 - pristine, float(sum(split))
    return (round(pristine, 12),) + tuple(round(rest * v / total, 12) for v in split)


def settings(shares=PRISTINE_SHARES, splits=LEVEL_SPLITS) -> list[dict]:
    """Pristine shares with the paper's split, then the other splits at the paper's share (the paper's
    own setting appears once, in both plot panels)."""
    out = []
    for p in shares:
        ablated = {SHARE_PANEL: p}
        if p == PAPER_PRISTINE and PAPER_SPLIT in splits:
            ablated[SPLIT_PANEL] = split_label(PAPER_SPLIT)
        out.append({"setting": f"p={p:g}, {split_label(PAPER_SPLIT)}", "fields": {"mix": mix(p)},
                    "ablated": ablated})
    for split in splits:
        if tuple(split) == PAPER_SPLIT and PAPER_PRISTINE in shares:
            continue
        out.append({"setting": f"p={PAPER_PRISTINE:g}, {split_label(split)}",
                    "fields": {"mix": mix(PAPER_PRISTINE, split)},
                    "ablated": {SPLIT_PANEL: split_label(split)}})
    for s in out:
        s["fields"].update(regularization="iqa_ls", iqa_metric="ssim", tmap="identity")
    return out
