"""The names of a trial's evaluation metrics (MLflow, tables, plots): torch-free, so the study's
records and the analysis can use them without loading a model.

Per evaluation set, `<prefix><what>_<set>`: what in EVAL_WHATS, prefix "" for the test sets, VAL_PREFIX
for the validation sets, C10C_PREFIX for CIFAR-10-C (trainables/robustness.py).
"""
from __future__ import annotations

from trainables.config import LEVELS

TEST_TYPES = ("blur", "noise", "jpeg")  # Sec. 4.2: the 9 distorted test sets, 3 types x 3 levels
TEST_SETS = ("pristine",) + tuple(f"{t}_{lv}" for t in TEST_TYPES for lv in LEVELS)
ACC_METRICS = tuple(f"acc_{name}" for name in TEST_SETS)  # stable metric names (MLflow, tables)
CALIBRATION_METRICS = ("nll", "ece", "brier", "conf", "ptrue")  # per set, beside "acc" (trainables/calibration.py)
EVAL_WHATS = ("acc",) + CALIBRATION_METRICS  # per evaluation set: <what>_<set>
VAL_PREFIX = "val_"  # validation metrics: val_<what>_<set>
C10C_PREFIX = "c10c_"  # CIFAR-10-C metrics of the final model (trainables/robustness.py): c10c_<what>_<set>
# metric name prefixes of every evaluation (test, validation, CIFAR-10-C), for the recorder
EVAL_METRIC_PREFIXES = tuple(f"{p}{w}_" for p in ("", VAL_PREFIX) for w in EVAL_WHATS) + (C10C_PREFIX,)
# the quality measure of the confidence-against-quality record: the paper's SSIM (Sec. 3), whatever
# IQA metric the trial's labels use, so every trial is read on the same axis
QUALITY_METRIC = "ssim"
