"""Table 2 of the paper: nine training strategies = training set x regularisation.

Launch: `python -m study.table2 --preset quick --data ../shared/data/cifar10-jpeg` (CPU) or
`--preset paper` (Sec. 4.2 unchanged). Expect with the paper's schedule (Table 2): mixture training
lifts the distorted-test accuracy of its own distortion type by tens of points at level 3, and
IQA-LS (3, 5, 7, 9) raises pristine and level 1-2 accuracy by about 1-4 points over its "Original"
twin (2, 4, 6, 8) while losing a little at level 3.
"""
from __future__ import annotations

# strategy number -> (train_set, regularization), exactly the rows of Table 2
STRATEGIES: dict[int, tuple[str, str]] = {
    1: ("pristine", "onehot"),
    2: ("mix_blur", "onehot"),
    3: ("mix_blur", "iqa_ls"),
    4: ("mix_noise", "onehot"),
    5: ("mix_noise", "iqa_ls"),
    6: ("mix_jpeg", "onehot"),
    7: ("mix_jpeg", "iqa_ls"),
    8: ("mix_all3", "onehot"),
    9: ("mix_all3", "iqa_ls"),
}

# IQA-LS vs Original pairs the paper compares (Sec. 4.3.3): (original, iqa_ls)
PAIRS: tuple[tuple[int, int], ...] = ((2, 3), (4, 5), (6, 7), (8, 9))

# Table 2's row labels ("Regularization Method", "Training set"): they name the MLflow runs
# (`s3 IQA-LS MIX_blur seed0`). analysis/table2.py holds the same labels for its tables: it reads
# MLflow only and imports nothing of the study side.
REGULARIZATION_LABELS = {"onehot": "Original", "iqa_ls": "IQA-LS"}
TRAIN_SET_LABELS = {"pristine": "Pristine", "mix_blur": "MIX_blur", "mix_noise": "MIX_noise",
                    "mix_jpeg": "MIX_JPEG", "mix_all3": "MIX_all3"}

# The paper's metric and T map for IQA-LS (Sec. 3): SSIM, identity.
IQA_METRIC = "ssim"
TMAP = "identity"


def grid(seeds: int = 1) -> list[dict]:
    """TrialConfig fields of every trial: 9 strategies x `seeds` seeds (0 .. seeds-1)."""
    return [{"strategy": s, "train_set": ts, "regularization": reg, "iqa_metric": IQA_METRIC,
             "tmap": TMAP, "seed": seed}
            for s, (ts, reg) in STRATEGIES.items() for seed in range(seeds)]


def title(strategy: int, seed: int) -> str:
    """The run name of a trial: 's3 IQA-LS MIX_blur seed0'."""
    train_set, reg = STRATEGIES[strategy]
    return f"s{strategy} {REGULARIZATION_LABELS[reg]} {TRAIN_SET_LABELS[train_set]} seed{seed}"
