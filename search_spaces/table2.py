"""Table 2 of the paper: nine training strategies = training set x regularisation.

Launch: `python -m study.table2 --preset quick --data ../shared/data/cifar10-jpeg` (CPU) or
`--preset paper` (Sec. 4.2 unchanged). What the paper's Table 2 reports (one run per strategy, no
interval): each single-distortion mixture (2, 4, 6) 21.6-35.7 points above strategy 1 at level 3 of
its own distortion, and IQA-LS (3, 5, 7, 9) 1.3-3.8 points above its "Original" twin (2, 4, 6, 8) on
pristine images. Whether a run here agrees needs several seeds: the study's tables give IQA-LS -
Original paired by seed with its 95 % interval, and none with one seed.
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
SHORT_SET_LABELS = {"pristine": "pristine", "mix_blur": "blur", "mix_noise": "noise", "mix_jpeg": "jpeg",
                    "mix_all3": "all3"}  # run names (title)

# The paper's metric and T map for IQA-LS (Sec. 3): SSIM, identity.
IQA_METRIC = "ssim"
TMAP = "identity"


def grid(seeds: int = 1, strategies=tuple(STRATEGIES)) -> list[dict]:
    """TrialConfig fields of every trial: the strategies (all 9 by default) x `seeds` seeds (0 .. seeds-1)."""
    return [{"strategy": s, "train_set": ts, "regularization": reg, "iqa_metric": IQA_METRIC,
             "tmap": TMAP, "seed": seed}
            for s, (ts, reg) in STRATEGIES.items() if s in strategies for seed in range(seeds)]


# The two readings of the paper (docs/paper-mapping.md): Sec. 4.3.3 trains IQA-LS from scratch; the
# introduction trains on the mixture first "then" fine-tunes "with the IQA measure". A fine-tune of
# IQA-LS strategy b starts from the final weights of its Original twin a (PAIRS) of the same seed.
PARENT = {b: a for a, b in PAIRS}  # IQA-LS strategy -> the Original it fine-tunes


def plan(seeds: int = 1, strategies=tuple(STRATEGIES), protocols=("scratch",),
         control: bool = False) -> list[dict]:
    """The trials of a Table 2 study: the chosen strategies from scratch (an IQA-LS strategy only
    with protocol scratch: Originals and strategy 1 have no other), then with protocol finetune each
    chosen IQA-LS strategy fine-tuned from its Original (which must be chosen too), and with
    `control` that Original continued one-hot as long (the epochs control). Each fine-tune's fields
    carry protocol "finetune" and finetune_from = its parent's key (key())."""
    from trainables.config import ConfigError

    tuned = [b for b in strategies if b in PARENT] if "finetune" in protocols else []
    if "finetune" in protocols and not tuned:
        raise ConfigError(f"protocol finetune with strategies {list(strategies)} is not allowed; allowed: "
                          f"at least one IQA-LS strategy ({', '.join(map(str, PARENT))}) to fine-tune")
    missing = [b for b in tuned if PARENT[b] not in strategies]
    if missing:
        b = missing[0]
        chosen = ",".join(map(str, strategies))
        fixed = ",".join(map(str, sorted(set(strategies) | {PARENT[b]})))
        raise ConfigError(f"strategies {chosen} with protocol finetune is not allowed: strategy {b} "
                          f"fine-tunes strategy {PARENT[b]}'s final weights; allowed: add {PARENT[b]} "
                          f"(e.g. {fixed})")
    scratch = [t for t in grid(seeds, strategies)
               if "scratch" in protocols or t["strategy"] not in PARENT]
    out = [{**t, "protocol": "scratch"} for t in scratch]
    for b in tuned:
        for arm in ([PARENT[b]] if control else []) + [b]:
            for t in grid(seeds, (arm,)):
                parent = {**t, "strategy": PARENT[b], "protocol": "scratch"}
                out.append({**t, "protocol": "finetune", "finetune_from": key(parent)})
    return out


def key(trial: dict) -> str:
    """The trial key: 's9-seed0' from scratch, 's9-seed0-ft' fine-tuned (names its folder and MLflow run)."""
    tail = "-ft" if trial.get("protocol") == "finetune" else ""
    return f"s{trial['strategy']}-seed{trial['seed']}{tail}"


def title(strategy: int, seed: int, protocol: str = "scratch") -> str:
    """The run name of a trial, short enough for the MLflow runs list's default Run Name column (190 px,
    a child indented under its parent): 's3 blur+LS #0' (Table 2 row 3: MIX_blur with IQA-LS, seed 0),
    's1 pristine #0', 's8 all3 #2' (an Original); fine-tuned 's9 all3+LS #0 ft', an Original's
    continuation (the control) 's8 all3 #0 cont'. The full words are in the run's tags and params."""
    train_set, reg = STRATEGIES[strategy]
    name = f"s{strategy} {SHORT_SET_LABELS[train_set]}{'+LS' if reg == 'iqa_ls' else ''} #{seed}"
    return name + ({"onehot": " cont"}.get(reg, " ft") if protocol == "finetune" else "")
