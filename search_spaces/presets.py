"""Named schedules shared by every study: `paper` is Sec. 4.2 unchanged, the others are scaled.

A preset is a set of TrialConfig overrides. The decay step (`lr_decay_every`, staircase x0.1):
- `paper` 350, and `quick` and the ladder `full32`-`full512` the paper's step scaled to their epochs,
  round(350 E / 2000) (4; 6, 11, 22, 45, 90): five decays over the run, as in the paper;
- `smoke` the same rule floored at 1: every epoch, so one decay in its 2 epochs;
- `demo` (every 6 of 8 epochs), `overfit` (50 of 100) and `finetune-demo` (4 of 5) a step of their
  own: one decay each, ending at lr 0.01 (why: each entry below).
`--epochs E` rescales the step: the paper's scaled to E, or a preset's own scaled by E / its epochs
(`resolve`). docs/paper-mapping.md prints each preset's decays.

- paper: 2000 epochs, batch 100, lr 0.1, x0.1 every 350 epochs, all 50k images (Sec. 4.2).
- quick: the whole Table 2 in about an hour on a 2-core CPU: a stratified 5,000-image subset for
  24 epochs (120k training images per trial; at the ~240 images/s one thread gives, two trials side
  by side, plus evaluation on the full 10 x 10k test sets, the 9 trials need ~50 min). Meant to
  approach the over-confident regime with many passes over a small set, it stays under-trained:
  pristine accuracy near 0.50 in its one run (docs/results/table2-quick.md, n = 1).
- overfit: the regime where label smoothing matters, at CPU scale: a stratified 1,000-image subset
  for 100 epochs at lr 0.1 then 0.01 (x0.1 once, after 50 epochs: 500 SGD steps each), so the
  one-hot model fits its training set, as the paper's does (2000 epochs); evaluation on 5,000 of each
  test set's 10,000 images. Measured: docs/results/ablate-iqa-overfit-n5.md (n = 5 seeds).
  Not the paper's lr shape: a CPU cannot afford enough steps between the scaled decays (an earlier
  version, 2,000 images x 60 epochs with the decay every 10, ended at 0.71-0.72 training accuracy). 100k
  training images per trial, about 8 min on one CPU thread with the evaluation: meant for a few
  settings x 3 seeds (`study.ablate --iqa --metrics ssim --seeds 3`), not all of Table 2.
- demo: Table 2's robustness comparison on a 2-core CPU in about half an hour (27m46s estimated at
  the idle machine's probe rates; 1h28m measured while two other studies shared it): a stratified
  10,000-image subset for 8 epochs, lr 0.1 then 0.01 after epoch 6, 2,000 of each test set's images.
  800 SGD steps per trial, meant to let each mixture learn its own distortion: in its one run (n = 1,
  no interval, no effect claimed) each single-distortion mixture printed a level-3 accuracy above
  strategy 1's by +6.1 (blur), +4.9 (noise), +3.2 (JPEG) points (docs/results/table2-demo.md); too
  few steps to reach the over-confident regime label smoothing acts in.
- finetune-demo: issue 14 part 2's CPU check of the two readings (IQA-LS from scratch or as
  fine-tuning) with CIFAR-10-C, strategies 1, 8, 9 x 3 seeds in well under an hour on a shared 2-core
  CPU: a stratified 2,000-image subset for 5 epochs, lr 0.1 then 0.01 after epoch 4, 500 of each test
  set's images. The command (fine-tune flags are study flags, not preset fields): docs/results/
  finetune-cifar10c-demo.md. Far from the paper's regime (100 SGD steps): it shows that the protocols
  run, are recorded apart and are compared paired by seed, not the paper's effect.
- full32, full64, full128, full256, full512 (the ladder, issue 18): the paper's schedule shortened
  and nothing else: all 50,000 training images, all 10 x 10,000 test images, batch 100, lr 0.1
  x0.1 every round(0.175 E) epochs (6, 11, 22, 45, 90), so five decays as in the paper; `paper`
  (2000 epochs) is the rung above full512. A lent GPU runs the largest rung its measured speed fits
  into its window (`study.gpu_campaign`), so results of one rung from different sessions are
  comparable and a faster session climbs a rung. A checkpoint every E/8 epochs (a run field: it
  defines nothing): a campaign cannot resume across device calls, and 27 members' state every epoch
  would cost a measurable share of a short epoch on a GPU.
- smoke: a pipeline check, a couple of minutes for all 9 trials on a 2-core CPU: 200 images, 2
  epochs (lr 0.1, then 0.01), 500 test images. Accuracies stay near chance (0.10): it checks that
  everything runs and is recorded, not what the paper measured.
"""
from __future__ import annotations

from trainables.config import PAPER_EPOCHS, PAPER_LR_DECAY_EVERY, ConfigError

LADDER_EPOCHS = (32, 64, 128, 256, 512)  # the full-data rungs below `paper` (2000), issue 18
PRESETS: dict[str, dict] = {
    "paper": {"epochs": PAPER_EPOCHS, "subset": 0, "test_subset": 0},
    "demo": {"epochs": 8, "subset": 10000, "test_subset": 2000, "lr_decay_every": 6},
    "quick": {"epochs": 24, "subset": 5000, "test_subset": 0},
    "overfit": {"epochs": 100, "subset": 1000, "test_subset": 5000, "lr_decay_every": 50},
    "finetune-demo": {"epochs": 5, "subset": 2000, "test_subset": 500, "lr_decay_every": 4},
    **{f"full{e}": {"epochs": e, "subset": 0, "test_subset": 0, "checkpoint_every": e // 8} for e in LADDER_EPOCHS},
    "smoke": {"epochs": 2, "subset": 200, "test_subset": 500, "checkpoint_every": 1},
}


LADDER = tuple(f"full{e}" for e in LADDER_EPOCHS) + ("paper",)  # smallest first


def scaled_decay_every(epochs: int) -> int:
    """The paper's decay step (350 of 2000 epochs) scaled to `epochs`."""
    return max(1, round(PAPER_LR_DECAY_EVERY * epochs / PAPER_EPOCHS))


def resolve(preset: str, **overrides) -> dict:
    """TrialConfig fields of `preset` with `overrides` (None values ignored) applied on top.

    The decay step follows the epoch count unless it is overridden itself: the paper's step scaled, or
    a preset's own step scaled from the preset's epochs.
    """
    if preset not in PRESETS:
        raise ConfigError(f"preset={preset!r} is not allowed; allowed: {sorted(PRESETS)}")
    base = PRESETS[preset]
    fields = dict(base)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    if overrides.get("lr_decay_every") is None:
        if "lr_decay_every" in base:  # the preset's own step, scaled like the paper's with --epochs
            fields["lr_decay_every"] = max(1, round(base["lr_decay_every"] * fields["epochs"] / base["epochs"]))
        else:
            fields["lr_decay_every"] = scaled_decay_every(fields["epochs"])
    return fields
