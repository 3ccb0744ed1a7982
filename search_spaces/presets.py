"""Named schedules shared by every study: `paper` is Sec. 4.2 unchanged, the others are scaled.

A preset is a set of TrialConfig overrides. Shorter schedules keep the paper's shape: the decay
step is scaled with the epoch count (350 of 2000 epochs -> the same fraction of E epochs), so the
learning rate still falls x0.1 five times over the run.

- paper: 2000 epochs, batch 100, lr 0.1, x0.1 every 350 epochs, all 50k images (Sec. 4.2).
- quick: the whole Table 2 in about an hour on a 2-core CPU: a stratified 5,000-image subset for
  24 epochs (120k training images per trial; at the ~240 images/s one thread gives, two trials side
  by side, plus evaluation on the full 10 x 10k test sets, the 9 trials need ~50 min). Many passes over a small set reach the
  over-confident regime that label smoothing acts against (one pass over 50k images does not).
- overfit: the regime where label smoothing matters, at CPU scale: a stratified 2,000-image subset
  for 60 epochs (lr x0.1 every 10), so each image is seen 10 times at lr 0.1 and the one-hot model
  then fits its training set (the paper's schedule, and the 10k x 64-epoch H200 run in
  docs/results/table2-h200-overfit.md, are in that regime; `quick` is not). 120k training images per
  trial: about 10 min per trial on one CPU thread plus the full-test-set evaluation; meant for
  several seeds of a few settings (`study.ablate --iqa --metrics ssim --seeds 3`), not all of Table 2.
- smoke: a couple of minutes for all 9 trials on a 2-core CPU: 200 images, 2 epochs, 500 test images.
"""
from __future__ import annotations

from trainables.config import PAPER_EPOCHS, PAPER_LR_DECAY_EVERY, ConfigError

PRESETS: dict[str, dict] = {
    "paper": {"epochs": PAPER_EPOCHS, "subset": 0, "test_subset": 0},
    "quick": {"epochs": 24, "subset": 5000, "test_subset": 0},
    "overfit": {"epochs": 60, "subset": 2000, "test_subset": 0},
    "smoke": {"epochs": 2, "subset": 200, "test_subset": 500, "checkpoint_every": 1},
}


def scaled_decay_every(epochs: int) -> int:
    """The paper's decay step (350 of 2000 epochs) scaled to `epochs`."""
    return max(1, round(PAPER_LR_DECAY_EVERY * epochs / PAPER_EPOCHS))


def resolve(preset: str, **overrides) -> dict:
    """TrialConfig fields of `preset` with `overrides` (None values ignored) applied on top.

    The decay step follows the epoch count unless it is overridden itself.
    """
    if preset not in PRESETS:
        raise ConfigError(f"preset={preset!r} is not allowed; allowed: {sorted(PRESETS)}")
    fields = dict(PRESETS[preset])
    fields.update({k: v for k, v in overrides.items() if v is not None})
    fields.setdefault("lr_decay_every", scaled_decay_every(fields["epochs"]))
    return fields
