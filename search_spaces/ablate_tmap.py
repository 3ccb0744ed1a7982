"""Ablation of T, the map from IQA score to the true-class target of Eq. 1 (the paper fixes
T = identity, Sec. 3).

What it measures: IQA-LS on MIX_all3 (the Sec. 4.2 mixture, SSIM scores) with every score-based T map
of the registry (`trainables.labels.TMAPS`) at a few parameter values, beside the one-hot "Original"
as the reference: does the shape of T matter, or only that distorted images get less confidence?

Launch: `python -m study.ablate --tmap --preset quick --data ../shared/data/cifar10-jpeg`
(9 settings x 1 seed; about 1 h on a 2-core CPU); `--train-set mix_noise` changes the training set,
`--tmaps identity,power:gamma=2` picks the maps. Debug: `--preset smoke` (a couple of minutes).

What to expect: SSIM of the Sec. 4.2 distortions on CIFAR-10 lies around 0.5-0.95 (level 3 JPEG and
noise near 0.5; the `ablate_tmap_curves.png` plot shows the histogram), so identity gives the
distorted images targets of 0.5-0.95. power(gamma=4) and the steep logistic push the level-3 targets
towards or below 1/K = 0.1 (MLflow `frac_below_chance`): the label then says "not this class", and
level-3 accuracy should drop. power(gamma=0.5) and the affine floors stay close to one-hot. The
hypothesis to test: if the paper's effect holds, the maps in between (identity, power 2, affine
0.1-0.3) are above one-hot on pristine and level 1-2 by about the paper's 1-2 points (Table 2, row 9
vs 8, one run). One seed gives no interval, so it cannot tell; use `--seeds 3` or more and read the
paired intervals.
"""
from __future__ import annotations

TRAIN_SET = "mix_all3"  # the paper's broadest mixture (Sec. 4.2); --train-set changes it

# (name, parameters): identity (the paper), then each parameterised map of the registry
TMAPS: tuple[tuple[str, dict], ...] = (
    ("identity", {}),
    ("power", {"gamma": 0.5}), ("power", {"gamma": 2.0}), ("power", {"gamma": 4.0}),
    ("affine", {"a": 0.1}), ("affine", {"a": 0.3}), ("affine", {"a": 0.5}),
    ("logistic", {}),  # k = 10, s0 = 0.5 (labels._logistic defaults)
)
REFERENCE = "onehot (Original)"  # the paper's "Original", T = 1
PANEL = "T map"  # the plotted variable


def tmap_label(name: str, params: dict) -> str:
    """'identity', 'power(gamma=2)', 'logistic(k=10, s0=0.5)'."""
    if not params:
        return name
    return f"{name}(" + ", ".join(f"{k}={v:.3g}" for k, v in sorted(params.items())) + ")"


def settings(tmaps=TMAPS) -> list[dict]:
    """One dict per setting: label, TrialConfig field overrides, ablated variable(s) for the plots."""
    out = [{"setting": tmap_label(name, params),
            "fields": {"regularization": "iqa_ls", "tmap": name, "tmap_params": dict(params)},
            "ablated": {PANEL: tmap_label(name, params)}} for name, params in tmaps]
    out.append({"setting": REFERENCE, "fields": {"regularization": "onehot"}, "ablated": {PANEL: "onehot"}})
    return out
