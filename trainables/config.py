"""One frozen trial config: every choice a trial makes, paper values as defaults.

The paper (Chen et al., "Image quality assessment based label smoothing in deep neural network
learning") fixes the values cited next to each constant; where it is silent the default is our
choice, recorded in docs/paper-mapping.md. A config round-trips through a plain dict (Ray param
space, MLflow params, checkpoints); an unknown key or a bad value raises ConfigError naming it.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields

NUM_CLASSES = 10  # CIFAR-10, Sec. 4.1
LEVELS = (1, 2, 3)  # distortion levels, Sec. 4.2

# Sec. 4.2: "60% of the pristine training samples are maintained, the rest samples are corrupted
# by level 1/2/3 distortions in the ratio of 15% / 15% / 10%".
PAPER_MIX = (0.60, 0.15, 0.15, 0.10)  # (pristine, level 1, level 2, level 3)

# Sec. 4.2 schedule: batch 100, 2000 epochs, lr 0.1 decayed x0.1 every 350 epochs.
PAPER_EPOCHS = 2000
PAPER_BATCH_SIZE = 100
PAPER_LR = 0.1
PAPER_LR_DECAY = 0.1
PAPER_LR_DECAY_EVERY = 350
PAPER_FC_WEIGHT_DECAY = 0.004  # Sec. 4.2: L2 loss x 0.004 on the two hidden fc layers

# Training sets of Sec. 4.2: which distortion types a mixture draws from.
TRAIN_SETS: dict[str, tuple[str, ...]] = {
    "pristine": (),
    "mix_blur": ("blur",),
    "mix_noise": ("noise",),
    "mix_jpeg": ("jpeg",),
    "mix_all3": ("blur", "noise", "jpeg"),
}

# Regularisation = how the training target is built (Eq. 1). "onehot" is the paper's "Original",
# "iqa_ls" the paper's IQA-LS, "uniform" classic label smoothing (a control the paper did not run).
REGULARIZATIONS = ("onehot", "iqa_ls", "uniform")
# How a distorted image's IQA score enters T: its own ("image", Eq. 1) or its (type, level) group
# mean ("level": the labels then carry the distortion level and nothing of the image content).
SCORE_POOLINGS = ("image", "level")
# How a trial starts (docs/paper-mapping.md, "IQA-LS from scratch or as fine-tuning"): "scratch" = from
# the initial weights (Sec. 4.3.3's reading), "finetune" = from the final weights of its parent trial
# (`finetune_from`, an Original of the same training set, data, schedule and seed), trained
# `finetune_epochs` more (the introduction's "then ... by fine-tuning the network with the IQA measure")
PROTOCOLS = ("scratch", "finetune")
# what a fine-tune's parent is checked against: every defining field but these (how the targets are
# built, the Table 2 row, and the fine-tune's own fields); see TrialConfig.parent_mismatch
TARGET_FIELDS = ("strategy", "regularization", "iqa_metric", "tmap", "tmap_params", "ls_epsilon",
                 "score_floor", "score_pooling")
FINETUNE_FIELDS = ("protocol", "finetune_from", "finetune_epochs", "finetune_lr", "finetune_lr_decay_every")
PRECISIONS = ("fp32", "tf32", "bf16")  # TrialConfig.precision; trainables.device.numerics applies it
STEP_IMPLS = ("auto", "eager", "cuda_graph")  # TrialConfig.step_impl; trainables/fast.py (same tuple)
PACK_DATA = ("per_member", "batched")  # TrialConfig.pack_data; trainables/loop.py train_epoch
PACK_EVAL = ("per_member", "vmap")  # TrialConfig.pack_eval; trainables/packed.py Pack.evaluate


# Evaluation-only fields (see TrialConfig): they define what a finished trial is also evaluated on,
# not how it trains, so a checkpoint or a pack member need not agree on them.
EVAL_FIELDS = ("cifar10c", "cifar10c_subset", "cifar10c_seed", "cifar10c_corruptions")
CIFAR10C_REGENERATE = "regenerate"  # cifar10c: build the corruptions from the trial's test split


class ConfigError(ValueError):
    """A bad config value; the message names the field, the value and what is allowed."""


class TrialError(RuntimeError):
    """A trial that cannot go on (e.g. the loss became NaN); the message says why."""


@dataclass(frozen=True)
class TrialConfig:
    # --- what is trained (Table 2 row) ---
    strategy: int = 0  # Table 2 row 1-9; 0 = not a Table 2 row (ablations)
    train_set: str = "pristine"  # a key of TRAIN_SETS
    regularization: str = "onehot"  # one of REGULARIZATIONS
    iqa_metric: str = "ssim"  # a name in trainables.iqa.METRICS (Sec. 3: SSIM)
    tmap: str = "identity"  # a name in trainables.labels.TMAPS (Sec. 3: identity)
    tmap_params: dict = field(default_factory=dict)  # keyword parameters of the T map
    ls_epsilon: float = 0.1  # "uniform" only: classic label smoothing epsilon (Szegedy et al.)
    score_floor: float = 1e-3  # IQA scores are clamped to [score_floor, 1] before T (see docs)
    # "image" = Eq. 1 (each image's own score); "level" = an oracle control for the ablations: every
    # distorted image gets the mean score of its (type, level) group (mixture.build_epoch)
    score_pooling: str = "image"
    mix: tuple = PAPER_MIX  # shares of (pristine, level 1, level 2, level 3); sums to 1
    distortion_types: tuple = ()  # override the train set's types; () = those of train_set
    # --- schedule (Sec. 4.2) ---
    epochs: int = PAPER_EPOCHS
    batch_size: int = PAPER_BATCH_SIZE
    lr: float = PAPER_LR
    lr_decay: float = PAPER_LR_DECAY
    lr_decay_every: int = PAPER_LR_DECAY_EVERY  # epochs between x lr_decay steps (staircase)
    momentum: float = 0.0  # plain SGD as in the TF CIFAR-10 tutorial (the paper says "SGD")
    fc_weight_decay: float = PAPER_FC_WEIGHT_DECAY
    # --- fine-tuning (issue 14 part 2; docs/paper-mapping.md). With protocol "finetune" the trial starts
    # from the final weights of trial `finetune_from` (its parent: the Original of the same training set,
    # data, schedule and seed, which trained `epochs` epochs under the schedule above) and trains
    # `finetune_epochs` more, its epochs numbered epochs+1 .. epochs+finetune_epochs (so each epoch's
    # mixture draw, noise and batch order are the fresh ones of a continued run), at `finetune_lr`, x
    # lr_decay every `finetune_lr_decay_every` fine-tune epochs (0 = constant), with a fresh SGD
    protocol: str = "scratch"  # one of PROTOCOLS
    finetune_from: str = ""  # the parent's trial key ("" with protocol scratch)
    finetune_epochs: int = 0  # F >= 1 with protocol finetune, 0 otherwise
    finetune_lr: float = 0.01  # the paper's lr after its first decay; the demo parent's last lr
    finetune_lr_decay_every: int = 0  # 0 = constant finetune_lr over the F epochs
    # --- model choices the paper leaves open (docs/paper-mapping.md) ---
    init: str = "tf_cifar10"  # "tf_cifar10" (truncated normal as in the TF tutorial) | "torch"
    input_norm: str = "per_image"  # "per_image" (tf.image.per_image_standardization) | "dataset" | "none"
    lrn_impl: str = "fast"  # "fast" (banded 1x1 conv, exact) | "torch" (nn.LocalResponseNorm)
    channels_last: bool = True  # NHWC activations: faster convolutions on CPU (measured, see README)
    # numerics of the forward/backward passes (docs/paper-mapping.md): "fp32" = float32 everywhere (on
    # CUDA with TF32 switched off), "tf32" = float32 with TF32 matmuls/convolutions on CUDA (on a CPU the
    # same as fp32), "bf16" = bfloat16 autocast with float32 master weights and float32 loss. The study
    # commands pick bf16 on CUDA and fp32 on a CPU unless --precision says otherwise
    precision: str = "fp32"
    # --- distortion choices the paper leaves open ---
    blur_truncate: float = 3.0  # Gaussian kernel radius = ceil(blur_truncate * sigma)
    blur_border: str = "reflect"  # border rule of the blur: reflect | replicate | circular
    all3_draw: str = "balanced"  # MIX_all3 type per image: "balanced" (equal thirds per level) | "iid"
    # --- data ---
    data: str = "cifar10"  # source spec, see trainables.data.load_split
    subset: int = 0  # 0 (or >= N) = all training images; else a stratified, seeded subset
    # seed of the subset draw; the study commands set it to the trial seed (both arms of a pair share
    # it, the spread over seeds includes the subset's sampling), or 0 for every trial (--fixed-subset)
    subset_seed: int = 0
    # validation split: `val_size` images (stratified, drawn with `val_seed`) held out of the training
    # pool before the training subset is drawn, so never trained on; evaluated on the same pristine +
    # 9 distorted versions as the test sets (noise from `val_seed`). 0 = no split (the paper's grids)
    val_size: int = 0
    val_seed: int = 20190102
    test_subset: int = 0  # 0 (or >= N) = all test images; else a stratified subset (fixed seed)
    test_seed: int = 20190101  # seed of the deterministic test-set noise (same for every trial)
    # --- run ---
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_every: int = 0  # evaluate the 10 test sets every N epochs (0 = only after the last)
    checkpoint_every: int = 1  # epochs between checkpoints
    precompute: bool = True  # cache the deterministic distortions (blur, JPEG) and their scores
    threads: int = 0  # torch intra-op threads (0 = leave torch's default)
    # how a training step is launched (trainables/fast.py): "auto" = one CUDA graph per step on CUDA,
    # eager on a CPU; "eager"; "cuda_graph". The replayed kernels are the eager ones: it only runs a trial
    step_impl: str = "auto"
    # speed levers of a pack (issue 18; docs/paper-mapping.md): "batched" draws every member's epoch in
    # one pass (one IQA call for all members' noise images, one gather of the stacked images), bit for
    # bit what "per_member" draws on a CPU; "vmap" evaluates all members in one vmapped forward pass
    # (grouped convolutions: the logits differ from a lone model's by float32 summation order)
    pack_data: str = "per_member"
    pack_eval: str = "per_member"
    # --- evaluation only (issue 14): what the FINAL model is also evaluated on, after its last
    # epoch. They change no training step, weight or draw: resume and packing need not compare them
    # (EVAL_FIELDS); they do change what the trial records, so they stay MLflow params.
    cifar10c: str = ""  # "" = off | "regenerate" (from this trial's test split) | a folder of the official files
    cifar10c_subset: int = 0  # 0 (or >= N) = all 10,000 test images; else a stratified subset (seed 0)
    cifar10c_seed: int = 0  # "regenerate" only: seed of the corruptions' random draws
    cifar10c_corruptions: tuple = ()  # () = every one available (regenerated: 18, frost missing); else these

    def __post_init__(self):
        # tuples/dicts arrive as lists from JSON; normalise so equality and hashing of values hold
        object.__setattr__(self, "mix", tuple(float(x) for x in self.mix))
        object.__setattr__(self, "distortion_types", tuple(self.distortion_types))
        object.__setattr__(self, "tmap_params", dict(self.tmap_params))
        if isinstance(self.cifar10c_corruptions, (list, tuple)):
            object.__setattr__(self, "cifar10c_corruptions", tuple(self.cifar10c_corruptions))
        self.validate()

    # ---------------------------------------------------------------- derived
    @property
    def types(self) -> tuple[str, ...]:
        """Distortion types this trial's mixture draws from."""
        return self.distortion_types or TRAIN_SETS[self.train_set]

    @property
    def effective_mix(self) -> tuple[float, float, float, float]:
        """The pristine training set keeps every image pristine whatever `mix` says."""
        return (1.0, 0.0, 0.0, 0.0) if not self.types else self.mix

    @property
    def finetune(self) -> bool:
        return self.protocol == "finetune"

    @property
    def first_epoch(self) -> int:
        """The epoch (0-based) the trial's own training starts at: 0, or `epochs` for a fine-tune (its
        parent trained epochs 0 .. epochs-1)."""
        return self.epochs if self.finetune else 0

    @property
    def total_epochs(self) -> int:
        """The epoch number of the trial's last epoch: `epochs`, or `epochs + finetune_epochs`."""
        return self.epochs + (self.finetune_epochs if self.finetune else 0)

    def lr_at(self, epoch: int) -> float:
        """Staircase decay (Sec. 4.2), epoch counted from 0; a fine-tune's epochs (>= `epochs`) follow
        its own schedule: finetune_lr, x lr_decay every finetune_lr_decay_every epochs (0 = constant)."""
        if self.finetune and epoch >= self.epochs:
            k = epoch - self.epochs
            steps = k // self.finetune_lr_decay_every if self.finetune_lr_decay_every else 0
            return self.finetune_lr * self.lr_decay ** steps
        return self.lr * self.lr_decay ** (epoch // self.lr_decay_every)

    def parent_mismatch(self, parent: "TrialConfig") -> list[tuple[str, object, object]]:
        """Why `parent` cannot be this fine-tune's parent: (field, parent's value, the value it needs).
        The parent is an Original (one-hot labels) trained from scratch; it shares every defining field
        but the targets' (TARGET_FIELDS) and the fine-tune's own (FINETUNE_FIELDS): the same training
        set, mixture, data, subset, schedule, seed, model and numerics."""
        out = [(k, getattr(parent, k), v) for k, v in (("protocol", "scratch"), ("regularization", "onehot"))
               if getattr(parent, k) != v]
        mine, theirs = self.defining(), parent.defining()
        skip = set(TARGET_FIELDS) | set(FINETUNE_FIELDS)
        return out + [(k, theirs.get(k), mine[k]) for k in sorted(mine)
                      if k not in skip and mine[k] != theirs.get(k)]

    def defining(self) -> dict:
        """The config without RUN_FIELDS (below) and EVAL_FIELDS (what the final model is also evaluated
        on): what checkpoints, packs and a resumed trial compare. A resumed study still refuses other
        CIFAR-10-C flags (study.resume: its recorded flags, check_resume_evaluation)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUN_FIELDS and k not in EVAL_FIELDS}

    def defining_diff(self, other: "TrialConfig") -> list[tuple[str, object, object]]:
        """(field, self's value, other's value) of each defining field where the two configs differ."""
        mine, theirs = self.defining(), other.defining()
        return [(k, mine[k], theirs.get(k)) for k in sorted(mine) if mine[k] != theirs.get(k)]

    # ---------------------------------------------------------------- dict round trip
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["mix"] = list(self.mix)
        d["distortion_types"] = list(self.distortion_types)
        d["cifar10c_corruptions"] = list(self.cifar10c_corruptions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrialConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown trial config key(s) {unknown}; allowed: {sorted(known)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **changes) -> "TrialConfig":
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        from trainables import distortions, iqa, labels  # registries; late import avoids a cycle

        def bad(name, value, allowed):
            raise ConfigError(f"{name}={value!r} is not allowed; allowed: {allowed}")

        if self.train_set not in TRAIN_SETS:
            bad("train_set", self.train_set, sorted(TRAIN_SETS))
        if self.regularization not in REGULARIZATIONS:
            bad("regularization", self.regularization, list(REGULARIZATIONS))
        if self.iqa_metric not in iqa.METRICS:
            bad("iqa_metric", self.iqa_metric, sorted(iqa.METRICS))
        if self.tmap not in labels.TMAPS:
            bad("tmap", self.tmap, sorted(labels.TMAPS))
        try:
            labels.make_tmap(self.tmap, **self.tmap_params)
        except (TypeError, ValueError) as e:
            bad("tmap_params", self.tmap_params, f"the keyword parameters of T map {self.tmap!r} ({e})")
        for t in self.distortion_types:
            if t not in distortions.DISTORTIONS:
                bad("distortion_types", t, sorted(distortions.DISTORTIONS))
        if len(set(self.distortion_types)) != len(self.distortion_types):
            bad("distortion_types", self.distortion_types, "distinct names")
        if len(self.mix) != 4 or any((not math.isfinite(x)) or x < 0 for x in self.mix):
            bad("mix", self.mix, "4 non-negative shares (pristine, level 1, level 2, level 3)")
        if abs(sum(self.mix) - 1.0) > 1e-6:
            bad("mix", self.mix, f"shares summing to 1 (they sum to {sum(self.mix):.6g})")
        if not 0.0 <= self.ls_epsilon < 1.0:
            bad("ls_epsilon", self.ls_epsilon, "0 <= ls_epsilon < 1")
        if not 0.0 < self.score_floor <= 1.0:
            bad("score_floor", self.score_floor, "0 < score_floor <= 1")
        if self.score_pooling not in SCORE_POOLINGS:
            bad("score_pooling", self.score_pooling, list(SCORE_POOLINGS))
        for name in ("epochs", "batch_size", "lr_decay_every", "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(name, v, "an integer >= 1")
        for name in ("subset", "subset_seed", "test_subset", "val_size", "val_seed", "eval_every", "threads",
                     "strategy"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                bad(name, v, "an integer >= 0")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            bad("seed", self.seed, "an integer >= 0")
        for name in ("lr", "lr_decay"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                bad(name, v, "a finite number > 0")
        if not (0.0 <= self.momentum < 1.0):
            bad("momentum", self.momentum, "0 <= momentum < 1")
        if not (self.fc_weight_decay >= 0 and math.isfinite(self.fc_weight_decay)):
            bad("fc_weight_decay", self.fc_weight_decay, "a finite number >= 0")
        if self.init not in ("tf_cifar10", "torch"):
            bad("init", self.init, ["tf_cifar10", "torch"])
        if self.input_norm not in ("per_image", "dataset", "none"):
            bad("input_norm", self.input_norm, ["per_image", "dataset", "none"])
        if self.step_impl not in STEP_IMPLS:
            bad("step_impl", self.step_impl, list(STEP_IMPLS))
        if self.precision not in PRECISIONS:
            bad("precision", self.precision, list(PRECISIONS))
        if self.pack_data not in PACK_DATA:
            bad("pack_data", self.pack_data, list(PACK_DATA))
        if self.pack_eval not in PACK_EVAL:
            bad("pack_eval", self.pack_eval, list(PACK_EVAL))
        if self.lrn_impl not in ("fast", "torch"):
            bad("lrn_impl", self.lrn_impl, ["fast", "torch"])
        if not (self.blur_truncate > 0):
            bad("blur_truncate", self.blur_truncate, "a number > 0")
        if self.blur_border not in ("reflect", "replicate", "circular"):
            bad("blur_border", self.blur_border, ["reflect", "replicate", "circular"])
        if self.all3_draw not in ("balanced", "iid"):
            bad("all3_draw", self.all3_draw, ["balanced", "iid"])
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            bad("device", self.device, "auto | cpu | cuda | cuda:N")
        if not isinstance(self.data, str) or not self.data:
            bad("data", self.data, "a data source spec (cifar10, a folder or a .parquet path)")
        self._validate_cifar10c(bad)
        self._validate_finetune(bad)

    def _validate_finetune(self, bad) -> None:
        if self.protocol not in PROTOCOLS:
            bad("protocol", self.protocol, list(PROTOCOLS))
        v = self.finetune_epochs
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            bad("finetune_epochs", v, "an integer >= 1 with protocol finetune (0 with scratch)")
        v = self.finetune_lr_decay_every
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            bad("finetune_lr_decay_every", v, "an integer >= 0 (0 = constant finetune_lr)")
        lr = self.finetune_lr
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            bad("finetune_lr", self.finetune_lr, "a finite number > 0")
        if not isinstance(self.finetune_from, str):
            bad("finetune_from", self.finetune_from, "a trial key (text)")
        if self.finetune:
            if self.finetune_epochs < 1:
                bad("finetune_epochs", self.finetune_epochs, "an integer >= 1 with protocol finetune")
            if not self.finetune_from:
                bad("finetune_from", "", "the parent's trial key with protocol finetune (a fine-tune never "
                    "starts from random weights)")
            if self.strategy == 1 or self.train_set == "pristine":
                bad("protocol", "finetune", f"'scratch' for a pristine training set (train_set="
                    f"{self.train_set!r}: fine-tuning applies IQA-LS to a mixture's Original)")
        else:
            # a fine-tune option without the fine-tune would be silently ignored: refuse it
            for f in fields(self):
                if f.name in FINETUNE_FIELDS[1:] and getattr(self, f.name) != f.default:
                    bad(f.name, getattr(self, f.name), f"{f.default!r} with protocol 'scratch' (only a "
                        "fine-tune reads it)")

    def _validate_cifar10c(self, bad) -> None:
        from trainables import corruptions  # the registry; imported late like the others

        if not isinstance(self.cifar10c, str):
            bad("cifar10c", self.cifar10c, f"'' (off), '{CIFAR10C_REGENERATE}' or a folder of the official files")
        for name in ("cifar10c_subset", "cifar10c_seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                bad(name, v, "an integer >= 0")
        names = self.cifar10c_corruptions
        if not isinstance(names, tuple) or not all(isinstance(c, str) for c in names):
            bad("cifar10c_corruptions", names, "a list of corruption names (empty = every one available)")
        unknown = [c for c in names if c not in corruptions.REFERENCE_ORDER]
        if unknown:
            bad("cifar10c_corruptions", unknown[0], list(corruptions.REFERENCE_ORDER))
        if len(set(names)) != len(names):
            bad("cifar10c_corruptions", list(names), "distinct names")
        if self.cifar10c == CIFAR10C_REGENERATE:
            missing = [c for c in names if c in corruptions.NOT_IMPLEMENTED]
            if missing:
                bad("cifar10c_corruptions", missing[0], f"{list(corruptions.CORRUPTIONS)} with cifar10c="
                    f"'{CIFAR10C_REGENERATE}' ({missing[0]} cannot be regenerated: it "
                    f"{corruptions.NOT_IMPLEMENTED[missing[0]]})")
        if not self.cifar10c:
            # a CIFAR-10-C option without the evaluation would be silently ignored: refuse it
            for f in fields(self):
                if f.name in EVAL_FIELDS[1:] and getattr(self, f.name) != f.default:
                    bad(f.name, getattr(self, f.name), f"{f.default!r} while cifar10c is '' (the CIFAR-10-C "
                        "evaluation is off)")


# ---------------------------------------------------------------- what defines a trial vs what runs it
# A trial is what it trains and reports; a run of it is where and how fast. The fields below only
# run a trial: they never change the trained weights (up to float rounding across devices and thread
# counts) nor the final metrics, so a checkpoint, a pack or a study resumed with other values goes on
# as the same trial. Resume, packing and caches compare the defining fields only:
# - device, threads: where and on how many cores; the hardware is recorded per attempt instead
#   (MLflow tag iqa_ls.device_name, docs/mlflow-schema.md);
# - eval_every: when the 10 test sets are read in between; evaluation is a pure read of the model
#   (no dropout or batch norm in the Table 1 CNN, no draw from any generator), so the weights and the
#   final accuracies are the same; only the intermediate acc_* points differ;
# - checkpoint_every: how often the state is written; the state at every epoch is the same, only what
#   a restart recomputes changes;
# - step_impl: how a step is launched (eager or one CUDA graph replaying the eager kernels,
#   trainables/fast.py): the same kernels either way;
# - pack_data: how a pack's epoch is drawn (per member, or all members in one pass): the same draws,
#   bit for bit on a CPU; on CUDA the SSIM of the noise images to its reductions' rounding (~1e-7);
# - pack_eval: how a pack is evaluated (per member's model, or all members in one vmapped pass): no
#   training step changes; the metrics move by the grouped convolution's float32 rounding, as
#   across devices and thread counts.
# Everything else (seeds, schedule, data, targets, model choices, distortion options, precision: fp32
# and bf16 train different numbers) defines the trial, and so does `precompute`: the bank's scores
# match the on-the-fly ones to float rounding
# (tests/test_train.py), not bit for bit, and a resumed trial should stay on one code path. A field
# added later defines the trial unless it is listed here.
RUN_FIELDS = ("device", "threads", "eval_every", "checkpoint_every", "step_impl", "pack_data", "pack_eval")

