"""An Optuna search over the T map (family and parameters) and the pristine share of the mixture:
the joint version of the --tmap and --ratios grids, for a budget of N trials.

What it measures: which T family / parameters and which pristine share p maximise the chosen
objective over the 10 sets of Sec. 4.2 built from a VALIDATION split held out of the training pool
(`--val-size`, default 10 % of the pool; `mean` = val_acc_mean_all, `pristine` = val_acc_pristine,
`worst` = min of the 10); the test sets are evaluated once per trial, at its end, and only reported, under IQA-LS with SSIM on MIX_all3 (the distorted 1 - p split 15:15:10
over the levels as in the paper). Optuna's TPE sampler (seed 0) proposes each trial through Ray
Tune's `OptunaSearch` (define-by-run, `SPACE` below); ASHA stops weak trials at its rungs (epochs
grace, 2 x grace, 4 x grace, ...; the search trials evaluate every `grace` epochs, and ASHA keeps
the best 1/2 at each rung). Every search trial uses seed 0: the trials differ in their settings only.

Launch: `python -m study.ablate --search optuna --trials 20 --objective worst --preset quick
--data ../shared/data/cifar10-jpeg` (at most 20 trials, two at a time on a 2-core CPU; a full quick
trial is ~7 min of training plus 4 evaluations of the 10 x 10k test sets at ~2 min each, so up to
~2 h 30 min, less what ASHA stops; `--test-subset 2000` makes the evaluations 5x cheaper);
debug: `--preset smoke --trials 3` (a few minutes).

What to expect: the first 10 trials are TPE's random start-up, so below ~20 trials the history is
close to random search; `worst` favours low p and gentle T (level-3 sets dominate the minimum),
`pristine` high p and T near one-hot. Importances (fANOVA over the trials' recorded params, in
analysis.ablate) rank the T family against p; with few trials read them as a hint, not a result.

Resume: `--resume` is refused for a study with a search (Optuna's sampler state is not recorded);
keys are `search-<n>` in Optuna's trial order, which keeps a Ray restart of one trial on its own
checkpoint folder.
"""
from __future__ import annotations

import math

from search_spaces.ablate_ratios import PAPER_SPLIT, mix
from search_spaces.ablate_tmap import tmap_label

TRAIN_SET = "mix_all3"
FAMILIES = ("identity", "power", "affine", "logistic")  # the score-based T maps of the registry
# Optuna distributions as data: name -> (kind, low, high, log, step); conditional ones in CONDITIONAL
SPACE: dict[str, dict] = {
    "tmap": {"kind": "categorical", "choices": list(FAMILIES)},
    "gamma": {"kind": "float", "low": 0.25, "high": 4.0, "log": True},  # power: T = s^gamma
    "a": {"kind": "float", "low": 0.0, "high": 0.7, "step": 0.05},  # affine: T = a + (1 - a) s
    "k": {"kind": "float", "low": 2.0, "high": 30.0, "log": True},  # logistic steepness
    "s0": {"kind": "float", "low": 0.3, "high": 0.9, "step": 0.05},  # logistic midpoint
    "pristine": {"kind": "float", "low": 0.2, "high": 0.9, "step": 0.05},  # pristine share p
}
CONDITIONAL = {"power": ("gamma",), "affine": ("a",), "logistic": ("k", "s0")}  # T parameters per family
# The objective reads the VALIDATION sets only (val_* metrics: the same 10 sets built from images held
# out of the training pool); the test sets are reported, never selected on.
VAL_ACC = ("val_acc_pristine",) + tuple(f"val_acc_{t}_{lv}" for t in ("blur", "noise", "jpeg") for lv in (1, 2, 3))
OBJECTIVES: dict[str, tuple[str, ...]] = {  # objective = min of these reported metrics
    "mean": ("val_acc_mean_all",),
    "pristine": ("val_acc_pristine",),
    "worst": VAL_ACC,
}
VAL_SHARE = 0.10  # default validation split of a search: 10 % of the training pool


def default_val_size(pool: int, test_subset: int = 0) -> int:
    """A search's validation split: VAL_SHARE of the pool, but no larger than the preset's test subset
    when it evaluates on one (smoke: 500, overfit: 5,000), so a validation pass costs no more than the
    test pass the preset was sized for."""
    n = max(1, round(VAL_SHARE * pool))
    return min(n, test_subset) if test_subset else n
EVALS = 4  # evaluations a full search trial makes: grace = ceil(epochs / EVALS) = eval_every
REDUCTION_FACTOR = 2  # ASHA keeps the best half at each rung
SAMPLER_SEED = 0


def grace_period(epochs: int) -> int:
    """ASHA's first rung and the search trials' eval_every: rungs grace * 2^k are evaluated epochs."""
    return max(1, math.ceil(epochs / EVALS))


def _suggest(trial, name: str):
    d = SPACE[name]
    if d["kind"] == "categorical":
        return trial.suggest_categorical(name, d["choices"])
    if "step" in d:
        return round(trial.suggest_float(name, d["low"], d["high"], step=d["step"]), 10)
    return trial.suggest_float(name, d["low"], d["high"], log=d.get("log", False))


def suggest(trial) -> tuple[dict, dict]:
    """Define-by-run (an optuna.Trial): TrialConfig field overrides and the trial's MLflow tags."""
    import json

    family = _suggest(trial, "tmap")
    params = {name: _suggest(trial, name) for name in CONDITIONAL.get(family, ())}
    p = _suggest(trial, "pristine")
    fields = {"regularization": "iqa_ls", "iqa_metric": "ssim", "tmap": family, "tmap_params": params,
              "mix": mix(p, PAPER_SPLIT)}
    ablated = {"tmap": family, **params, "pristine": p}
    return fields, {"setting": f"{tmap_label(family, params)}, p={p:g}",
                    "ablated": json.dumps(ablated, sort_keys=True)}
