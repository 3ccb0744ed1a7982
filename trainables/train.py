"""One trial: train the Table 1 CNN under one TrialConfig and evaluate on the 10 test sets.

`run_trial(config, report, checkpoint_dir=None)` runs without Ray. It calls `report(metrics)` once
per epoch (the last call carries the 10 test accuracies) and, with `checkpoint_dir`, saves a
checkpoint (model, optimiser, epoch, RNG states, config; written crash-safe, the one before kept as
checkpoint.prev.pt, an unreadable one moved aside: `recover_checkpoint`) that lets the trial continue
exactly as if it had not stopped: every epoch's randomness (mixture draw, noise, batch order) comes from
generators seeded by (seed, epoch), so the epoch number is all the RNG state a resume needs; the
global torch RNG state is stored as well for anything else that draws from it.

The hot path follows airbench: the data set is one uint8 tensor on the device; each epoch builds
its mixture with whole-tensor gathers, batches are slices of it, and normalisation happens on the
batch on the device.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from trainables import calibration
from trainables import data as data_mod
from trainables import labels
from trainables.config import LEVELS, NUM_CLASSES, TEST_SETS, TEST_TYPES, TrialConfig
from trainables.mixture import DistortionBank, build_epoch, draw_epoch
from trainables.model import PaperCNN

EVAL_WHATS = ("acc",) + calibration.CALIBRATION_METRICS  # per evaluation set: <what>_<set>
VAL_PREFIX = "val_"  # validation metrics: val_<what>_<set>
C10C_PREFIX = "c10c_"  # CIFAR-10-C metrics of the final model (trainables/robustness.py): c10c_<what>_<set>
# metric name prefixes of every evaluation (test, validation, CIFAR-10-C), for the recorder
EVAL_METRIC_PREFIXES = tuple(f"{p}{w}_" for p in ("", VAL_PREFIX) for w in EVAL_WHATS) + (C10C_PREFIX,)
# the quality measure of the confidence-against-quality record: the paper's SSIM (Sec. 3), whatever
# IQA metric the trial's labels use, so every trial is read on the same axis
QUALITY_METRIC = "ssim"
CALIBRATION_FILE = "calibration.json"  # per trial: reliability and quality bins of the final evaluation
CHECKPOINT_FILE = "checkpoint.pt"
PREVIOUS_CHECKPOINT_FILE = "checkpoint.prev.pt"  # the checkpoint before the latest: a resume's fallback
FINAL_WEIGHTS_FILE = "final_weights.pt"  # the final model's weights (a fine-tune's child starts from them)
FINAL_CONFIG_FILE = "config.json"  # the config that made them, written with them after the last epoch
CHECKPOINT_KEYS = ("config", "epoch", "model", "optimizer", "rng")  # what a resume needs of one
EVAL_BATCH = 1000
# Epoch 1's training scores as the labels saw them (docs/mlflow-schema.md, artifact of every trial):
SCORE_HIST_FILE = "scores_hist.json"
SCORE_HIST_BINS = 50  # equal bins over [0, 1] (width 0.02); a score of exactly 1 counts in the last
T_CURVE_POINTS = 101  # T sampled at s = 0, 0.01, ..., 1 (after the score floor), for plots


class TrialError(RuntimeError):
    """A trial that cannot go on (e.g. the loss became NaN); the message says why."""


def keep_freed_memory() -> bool:
    """Keep freed CPU tensor memory in the process heap instead of handing it back to the OS.

    glibc returns every freed block above 128 kB to the OS (munmap / heap trim), so each CPU training
    step of the Table 1 CNN re-faults ~80 MB of fresh pages: ~20,000 page faults per batch-100 step
    and 20-25 % of its time (2-core EPYC, torch 2.14.1; study.bench measures the step). Raising the
    mmap threshold to glibc's maximum (32 MB) and the trim threshold to 1 GB stops that; the cost is
    that the process keeps its peak heap. Process-wide; a no-op (False) without glibc.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def numerics(cfg: TrialConfig, device: torch.device):
    """Apply the trial's `precision` and return the context its forward passes run in.

    On CUDA, TF32 for matmuls and cuDNN convolutions is set explicitly for every trial (PyTorch's own
    default lets cuDNN use TF32, which "fp32" switches off); it is process state, so each trial sets it
    before it trains, never relying on what an earlier trial left. "bf16" autocasts the forward pass
    (convolutions and matmuls in bfloat16, log-softmax and the loss in float32) while the parameters,
    gradients and SGD stay float32. On a CPU "tf32" is "fp32" (no TF32 there)."""
    import contextlib

    if device.type == "cuda":
        allow = cfg.precision in ("tf32", "bf16")
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.backends.cudnn.allow_tf32 = allow
    if cfg.precision == "bf16":
        # no weight cache: a captured CUDA graph (trainables/fast.py) must not hold cached casts, and in
        # a step every weight is cast once anyway
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext


def step_impl_for(cfg: TrialConfig, device: torch.device) -> str:
    """The trial's step_impl resolved for its device (trainables/fast.py); a bad pairing is a TrialError."""
    from trainables.fast import CaptureError, resolve_step_impl

    try:
        return resolve_step_impl(cfg.step_impl, device)
    except CaptureError as e:
        raise TrialError(str(e)) from None


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrialError(f"device={name!r} requested but CUDA is not available; use device='cpu' or 'auto'")
    return torch.device(name)


def distortion_options(cfg: TrialConfig) -> dict[str, dict]:
    """Per-type keyword options of trainables.distortions.distort taken from the config."""
    return {"blur": {"truncate": cfg.blur_truncate, "border": cfg.blur_border}}


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    # distinct, reproducible streams per (trial seed, epoch, purpose)
    return (seed * 1_000_003 + epoch * 7919 + stream * 104_729) % (2**63 - 1)


# ------------------------------------------------------------------ data, prepared once per process
_PREPARED: dict = {}


def prepare_data(cfg: TrialConfig, device: torch.device, cache_dir=None):
    """Training subset, test sets and (with `val_size`) validation sets on the device, memoised per
    process; with each evaluation set the SSIM of every distorted image to its pristine version
    (`quality`: the x axis of the confidence-against-quality record, computed once per set)."""
    cache_dir = Path(cache_dir) if cache_dir else data_mod.default_cache_dir()
    train = data_mod.load_split(cfg.data, "train", cache_dir)
    test = data_mod.load_split(cfg.data, "test", cache_dir)
    key = (train.checksum, cfg.subset, cfg.subset_seed, cfg.val_size, cfg.val_seed, cfg.test_subset,
           cfg.test_seed, json.dumps(distortion_options(cfg), sort_keys=True), str(device))
    if key not in _PREPARED:
        x, y = train_subset(cfg, train)
        tx, ty = test.images, test.labels
        if 0 < cfg.test_subset < tx.shape[0]:
            idx = data_mod.stratified_subset(ty, cfg.test_subset, 0)
            tx, ty = tx[idx], ty[idx]
        evals = {"test": eval_sets(tx, ty, cfg.test_seed, distortion_options(cfg), device)}
        if cfg.val_size:
            vx, vy = validation_split(cfg, train)
            evals["val"] = eval_sets(vx, vy, cfg.val_seed, distortion_options(cfg), device)
        _PREPARED[key] = {
            "train_x": x.to(device), "train_y": y.to(device),
            "test_sets": evals["test"]["sets"], "test_y": evals["test"]["y"], "evals": evals,
            "checksum": train.checksum, "test_checksum": test.checksum,
            "subset_key": subset_key(cfg, train.checksum),
            "banks": {},
        }
    return _PREPARED[key]


def subset_key(cfg: TrialConfig, checksum: str) -> str:
    """Names the training images of a trial (the distortion bank's content key): data, split, subset."""
    split = f":val{cfg.val_size}@{cfg.val_seed}" if cfg.val_size else ""
    return f"{checksum}:{cfg.subset}:{cfg.subset_seed}{split}"


def _pool(cfg: TrialConfig, train) -> torch.Tensor | None:
    """Indices of the training pool: every image but the validation split (None = all of them)."""
    if not cfg.val_size:
        return None
    n = train.labels.shape[0]
    if not 0 < cfg.val_size < n:
        raise TrialError(f"val_size={cfg.val_size} is not allowed for {n} training images; allowed: 0..{n - 1}")
    keep = torch.ones(n, dtype=torch.bool)
    keep[data_mod.stratified_subset(train.labels, cfg.val_size, cfg.val_seed)] = False
    return torch.nonzero(keep).flatten()


def validation_split(cfg: TrialConfig, train) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out validation images and labels (CPU): stratified, drawn with `val_seed`."""
    idx = data_mod.stratified_subset(train.labels, cfg.val_size, cfg.val_seed)
    return train.images[idx], train.labels[idx]


def train_subset(cfg: TrialConfig, train) -> tuple[torch.Tensor, torch.Tensor]:
    """The trial's training images and labels (CPU): the pool (all images but the validation split),
    or a stratified, seeded subset of it."""
    x, y = train.images, train.labels
    pool = _pool(cfg, train)
    if pool is not None:
        x, y = x[pool], y[pool]
    if 0 < cfg.subset < x.shape[0]:  # a subset as large as the pool is the pool
        idx = data_mod.stratified_subset(y, cfg.subset, cfg.subset_seed)
        x, y = x[idx], y[idx]
    return x, y


def make_test_sets(images: torch.Tensor, seed: int, options: dict[str, dict]) -> dict[str, torch.Tensor]:
    """The 10 test sets of Sec. 4.2, identical for every trial (noise from a fixed seed)."""
    from trainables import distortions

    sets = {"pristine": images}
    for ti, t in enumerate(TEST_TYPES):
        for lv in LEVELS:
            g = torch.Generator(device=images.device).manual_seed(seed + 100 * ti + lv)
            sets[f"{t}_{lv}"] = distortions.distort(images, t, lv, generator=g, **options.get(t, {}))
    return sets


def eval_sets(images: torch.Tensor, labels: torch.Tensor, seed: int, options: dict[str, dict], device) -> dict:
    """One evaluation group (the test sets, or the validation sets): the 10 sets of Sec. 4.2 on the
    device, their labels, and per distorted set the SSIM of each image to its pristine version."""
    from trainables import iqa

    sets = make_test_sets(images, seed, options)
    quality = {name: iqa.score(QUALITY_METRIC, x, images) for name, x in sets.items() if name != "pristine"}
    return {"sets": {k: v.to(device) for k, v in sets.items()}, "y": labels.to(device),
            "quality": {k: v.to(device) for k, v in quality.items()}}


def normalize(x_uint8: torch.Tensor, mode: str, mean=None, std=None) -> torch.Tensor:
    """uint8 batch -> float input. "per_image" = tf.image.per_image_standardization (TF tutorial)."""
    x = x_uint8.float().div_(255.0)
    if mode == "per_image":
        flat = x.flatten(1)
        m = flat.mean(1)
        s = flat.std(1, unbiased=False).clamp_min(1.0 / math.sqrt(flat.shape[1]))
        return (x - m.view(-1, 1, 1, 1)) / s.view(-1, 1, 1, 1)
    if mode == "dataset":
        return (x - mean) / std
    return x


@torch.no_grad()
def evaluate(model, test_sets: dict[str, torch.Tensor], test_y: torch.Tensor, norm,
             quality: dict[str, torch.Tensor] | None = None, prefix: str = "",
             record: dict | None = None, amp=None) -> dict[str, float]:
    """Top-1 accuracy and calibration (trainables.calibration: nll, ece, brier, conf, ptrue) on each
    set, plus their means over the 9 distorted sets and all 10; metric names `<prefix><what>_<set>`
    (prefix "" for the test sets, "val_" for the validation sets). With `record`, the reliability bins
    of each set and, for the sets in `quality`, accuracy and confidence per quality bin go into
    record["reliability"][set] and record["quality"][set] (the calibration artifact)."""
    import contextlib

    amp = amp or contextlib.nullcontext  # the trial's numerics (numerics()): evaluate as it trained
    model.eval()
    out: dict[str, float] = {}
    for name, x in test_sets.items():
        summ = calibration.Summary()
        q = (quality or {}).get(name)
        for i in range(0, x.shape[0], EVAL_BATCH):
            with amp():
                logits = model(norm(x[i:i + EVAL_BATCH]))
            summ.add(logits, test_y[i:i + EVAL_BATCH], None if q is None else q[i:i + EVAL_BATCH])
        for what, v in summ.metrics().items():
            out[f"{prefix}{what}_{name}"] = v
        if record is not None:
            record.setdefault("reliability", {})[name] = summ.reliability()
            if summ.by_quality() is not None:
                record.setdefault("quality", {})[name] = summ.by_quality()
    model.train()
    for what in EVAL_WHATS:
        distorted = [out[f"{prefix}{what}_{n}"] for n in TEST_SETS[1:] if f"{prefix}{what}_{n}" in out]
        every = [out[f"{prefix}{what}_{n}"] for n in TEST_SETS if f"{prefix}{what}_{n}" in out]
        if len(every) == len(TEST_SETS):
            out[f"{prefix}{what}_mean_distorted"] = sum(distorted) / len(distorted)
            out[f"{prefix}{what}_mean_all"] = sum(every) / len(every)
    return out


def evaluate_all(model, d: dict, norm, test: bool, val: bool, record: dict | None = None,
                 amp=None) -> dict[str, float]:
    """The evaluations of one epoch: the test sets (`test`) and the validation sets (`val`, when the
    trial has a split); `record` collects the calibration artifact's bins per group (test / val)."""
    out = {}
    for group, prefix, wanted in (("test", "", test), ("val", VAL_PREFIX, val)):
        e = d["evals"].get(group)
        if wanted and e is not None:
            sub = None if record is None else record.setdefault(group, {})
            out.update(evaluate(model, e["sets"], e["y"], norm, e["quality"], prefix, sub, amp))
    return out


def eval_due(cfg: TrialConfig, epoch: int) -> tuple[bool, bool]:
    """(test, validation) evaluations due after epoch `epoch` (1-based). The last epoch evaluates both;
    an `eval_every` epoch evaluates the validation sets when the trial has a split (what a search
    selects on) and the test sets otherwise, so a trial that selects never looks at the test sets
    before its end."""
    last = epoch == cfg.total_epochs
    cadence = bool(cfg.eval_every) and epoch % cfg.eval_every == 0
    return last or (cadence and not cfg.val_size), bool(cfg.val_size) and (last or cadence)


def write_calibration(ckpt_dir: Path | None, cfg: TrialConfig, epoch: int, record: dict) -> None:
    """The trial's calibration artifact (CALIBRATION_FILE): reliability bins per set and accuracy /
    confidence per SSIM bin of the distorted sets, for the test and validation groups."""
    if ckpt_dir is None or not record:
        return
    doc = {"epoch": epoch, "ece_bins": calibration.ECE_BINS, "quality_metric": QUALITY_METRIC,
           "quality_bins": calibration.QUALITY_BINS, "regularization": cfg.regularization,
           "train_set": cfg.train_set, **record}
    tmp = ckpt_dir / f".{CALIBRATION_FILE}.tmp"
    tmp.write_text(json.dumps(doc, sort_keys=True))
    os.replace(tmp, ckpt_dir / CALIBRATION_FILE)


_UMASK = os.umask(0)
os.umask(_UMASK)  # read once at import: the process's file-creation mask


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Callable, keep_previous: Path | None = None) -> None:
    """Write a file so that a crash at any moment leaves the old file or the whole new one: into a
    temp file in the same folder, flushed to disk (fsync), then renamed over `path`. With
    `keep_previous`, the file `path` held so far is renamed there first, so a new file that turns
    out unreadable (a disk that lied about fsync, a copy cut short) still has the one before it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; the file gets what open() would give it
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _atomic_torch_save(obj, path: Path, keep_previous: Path | None = None) -> None:
    _atomic_write(path, lambda fh: torch.save(obj, fh), keep_previous)


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda fh: fh.write(text.encode()))


def save_checkpoint(checkpoint_dir: Path, state: dict) -> None:
    """Write a trial's checkpoint (run_trial's and run_packed's): CHECKPOINT_FILE, replaced atomically,
    with the one it replaces kept as PREVIOUS_CHECKPOINT_FILE."""
    d = Path(checkpoint_dir)
    _atomic_torch_save(state, d / CHECKPOINT_FILE, keep_previous=d / PREVIOUS_CHECKPOINT_FILE)


def _read_checkpoint(f: Path) -> tuple[dict | None, str | None]:
    """(state, None) for a readable checkpoint file, (None, why) for one that is not."""
    try:
        state = torch.load(f, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, bad pickle, wrong format: whatever torch says
        return None, " ".join(f"{type(e).__name__}: {e}".split())[:200]
    if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        return None, f"not a trial checkpoint (holds {keys}; needs {list(CHECKPOINT_KEYS)})"
    if not isinstance(state["epoch"], int) or state["epoch"] < 0:
        return None, f"epoch {state['epoch']!r} is not an integer >= 0"
    return state, None


def load_checkpoint(checkpoint_dir) -> dict | None:
    """The trial's latest readable checkpoint: CHECKPOINT_FILE, else PREVIOUS_CHECKPOINT_FILE, else None.
    Reads only: unreadable files are left where they are (recover_checkpoint moves them aside)."""
    if not checkpoint_dir:
        return None
    for name in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE):
        f = Path(checkpoint_dir) / name
        if f.exists():
            state, _ = _read_checkpoint(f)
            if state is not None:
                return state
    return None


def recover_checkpoint(checkpoint_dir) -> tuple[dict | None, str | None]:
    """(state, note) of the checkpoint a trial resumes from, before it trains.

    An unreadable CHECKPOINT_FILE (or PREVIOUS_CHECKPOINT_FILE) is moved aside, kept as
    `<name>.unreadable-<UTC time>`, and the trial resumes from the previous checkpoint or, with none
    readable, from scratch. `note` is one line saying what happened (None when nothing did); the
    study driver prints it and tags the trial's run with it.
    """
    if not checkpoint_dir:
        return None, None
    d = Path(checkpoint_dir)
    moved, state, used = [], None, None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for name in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE):
        f = d / name
        if state is not None or not f.exists():
            continue
        state, why = _read_checkpoint(f)
        if state is None:
            aside = f.with_name(f"{name}.unreadable-{stamp}")
            os.replace(f, aside)
            moved.append(f"{f} is unreadable ({why}), kept as {aside.name}")
        else:
            used = name
    if not moved and used in (None, CHECKPOINT_FILE):
        return state, None
    if state is None:
        return None, "; ".join(moved) + "; the trial restarts from scratch"
    what = "; ".join(moved) or f"{d / CHECKPOINT_FILE} is missing"
    return state, f"{what}; the trial resumes from {used} (epoch {state['epoch']})"


def build_model(cfg: TrialConfig, device) -> PaperCNN:
    torch.manual_seed(cfg.seed)  # model init is the one draw from the global RNG
    model = PaperCNN(NUM_CLASSES, lrn_impl=cfg.lrn_impl, init=cfg.init).to(device)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def build_optimizer(cfg: TrialConfig, model: PaperCNN) -> torch.optim.SGD:
    decay = {id(p) for p in model.weight_decay_params()}
    groups = [
        {"params": [p for p in model.parameters() if id(p) in decay], "weight_decay": cfg.fc_weight_decay},
        {"params": [p for p in model.parameters() if id(p) not in decay], "weight_decay": 0.0},
    ]
    # TF: loss + 0.004 * l2_loss(w) = loss + 0.004 * sum(w^2) / 2, whose gradient is 0.004 * w:
    # exactly SGD's coupled weight_decay=0.004.
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def target_map(cfg: TrialConfig) -> labels.TMap:
    if cfg.regularization == "onehot":
        return labels.make_tmap("onehot")
    if cfg.regularization == "uniform":
        return labels.make_tmap("uniform", epsilon=cfg.ls_epsilon, num_classes=NUM_CLASSES)
    return labels.make_tmap(cfg.tmap, **cfg.tmap_params)


def epoch_data(cfg: TrialConfig, epoch: int, x_train: torch.Tensor, device: torch.device,
               bank: DistortionBank | None):
    """Epoch `epoch` (0-based): training images, IQA scores, level and type index of every image, and
    the generator of the draw, which goes on to draw the batch order (one stream per epoch)."""
    n = x_train.shape[0]
    g = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch, 0))
    g_noise = torch.Generator(device=device).manual_seed(epoch_seed(cfg.seed, epoch, 1))
    level, kind = draw_epoch(n, cfg.effective_mix, len(cfg.types), g, cfg.all3_draw)
    if cfg.types:
        xs, scores = build_epoch(x_train, level, kind, cfg.types, cfg.iqa_metric, distortion_options(cfg),
                                 g_noise, bank, cfg.score_pooling)
    else:
        xs, scores = x_train, torch.ones(n, device=device)
    return xs, scores, level, kind, g


def true_class_t(cfg: TrialConfig, tmap: labels.TMap, scores: torch.Tensor) -> torch.Tensor:
    """T of every image: score-based maps see the clamped scores, constant maps ignore them."""
    return tmap(scores) if tmap.constant else tmap(labels.clamp_scores(scores, cfg.score_floor))


def epoch_targets(cfg: TrialConfig | dict, epoch: int = 0, cache_dir=None) -> torch.Tensor:
    """T of every training image in epoch `epoch` (0-based) exactly as `run_trial` builds it, without
    training or test sets: lets a study driver match a control to it before any trial starts."""
    cfg = cfg if isinstance(cfg, TrialConfig) else TrialConfig.from_dict(cfg)
    device = pick_device(cfg.device)
    cache_dir = Path(cache_dir) if cache_dir else data_mod.default_cache_dir()
    train = data_mod.load_split(cfg.data, "train", cache_dir)
    x, _ = train_subset(cfg, train)
    x = x.to(device)
    bank = None
    if cfg.precompute and cfg.types:
        bank = DistortionBank(x, subset_key(cfg, train.checksum), cfg.iqa_metric,
                              distortion_options(cfg), cache_dir)
    _, scores, _, _, _ = epoch_data(cfg, epoch, x, device, bank)
    return true_class_t(cfg, target_map(cfg), scores)


def score_histogram(cfg: TrialConfig, tmap: labels.TMap, scores: torch.Tensor, level: torch.Tensor,
                    kind: torch.Tensor, epoch: int = 1) -> dict:
    """Counts of the scores T saw (clamped; pooled under score_pooling="level") per group (pristine,
    <type>_<level>) in SCORE_HIST_BINS bins over [0, 1], and T sampled on [0, 1]: what the labels were,
    in the trial's first epoch `epoch` (1-based; a fine-tune's is epochs + 1)."""
    s = labels.clamp_scores(scores, cfg.score_floor).cpu()
    bins = (s * SCORE_HIST_BINS).long().clamp_(0, SCORE_HIST_BINS - 1)
    level, kind = level.cpu(), kind.cpu()
    groups = {"pristine": level == 0}
    groups.update({f"{t}_{lv}": (level == lv) & (kind == ti) for ti, t in enumerate(cfg.types) for lv in LEVELS})
    grid = torch.linspace(0.0, 1.0, T_CURVE_POINTS)
    return {"epoch": epoch, "bins": SCORE_HIST_BINS, "range": [0.0, 1.0], "iqa_metric": cfg.iqa_metric,
            "score_pooling": cfg.score_pooling, "score_floor": cfg.score_floor,
            "regularization": cfg.regularization, "tmap": tmap.name, "tmap_params": cfg.tmap_params,
            "counts": {name: torch.bincount(bins[m], minlength=SCORE_HIST_BINS).tolist()
                       for name, m in groups.items() if bool(m.any())},
            "t_curve": {"s": [round(v, 6) for v in grid.tolist()],
                        "t": [round(v, 6) for v in true_class_t(cfg, tmap, grid).tolist()]}}


def load_parent(cfg: TrialConfig, parent_dir) -> dict:
    """The final weights a fine-tune (protocol "finetune") starts from: `final_weights.pt` of its
    parent's trial folder `parent_dir`, after checking the parent's `config.json` (written with the
    final weights, so both exist only once the parent finished) against the fine-tune
    (TrialConfig.parent_mismatch). Anything missing or different is a TrialError naming it: a
    fine-tune never starts from random weights."""
    who = f"fine-tune of {cfg.finetune_from!r}"
    if not parent_dir:
        raise TrialError(f"{who}: no parent folder given; a fine-tune never starts from random weights")
    d = Path(parent_dir)
    weights, conf = d / FINAL_WEIGHTS_FILE, d / FINAL_CONFIG_FILE
    if not weights.exists() or not conf.exists():
        raise TrialError(f"{who}: the parent has not finished ({weights.name} / {conf.name} not in {d}); "
                         "a fine-tune never starts from random weights")
    try:
        parent = TrialConfig.from_dict(json.loads(conf.read_text()))
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever made them unreadable, in one line
        raise TrialError(f"{who}: the parent's final files in {d} are unreadable ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:200]})") from None
    diff = cfg.parent_mismatch(parent)
    if diff:
        shown = ", ".join(f"{k} {a!r} there, {b!r} needed" for k, a, b in diff[:3])
        raise TrialError(f"{who}: {d} holds another trial ({shown}); the parent must be the Original "
                         "(onehot, from scratch) of the same training set, data, schedule and seed")
    return state


def run_trial(config: TrialConfig | dict, report: Callable[[dict], None] = lambda m: None,
              checkpoint_dir=None, cache_dir=None, parent_dir=None) -> dict:
    """Train and evaluate one trial; returns the last reported metrics.

    With `checkpoint_dir`, resumes from the checkpoint there (if any, and if it was written by the
    same config) and writes one every `checkpoint_every` epochs and after the last; each report
    that follows a checkpoint write carries `checkpoint: <dir>` so a caller (Ray) can pick it up.
    A fine-tune (protocol "finetune") without a checkpoint of its own starts from the final weights
    in `parent_dir` (load_parent) at epoch `epochs` with a fresh SGD; with one, it resumes from it.
    """
    cfg = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    if device.type == "cpu":
        keep_freed_memory()
    d = prepare_data(cfg, device, cache_dir)
    x_train, y_train = d["train_x"], d["train_y"]
    n = x_train.shape[0]
    types = cfg.types
    opts = distortion_options(cfg)
    tmap = target_map(cfg)
    bank = None
    if cfg.precompute and types:
        bkey = (d["subset_key"], cfg.iqa_metric)
        if bkey not in d["banks"]:
            d["banks"][bkey] = DistortionBank(x_train, d["subset_key"], cfg.iqa_metric, opts,
                                              cache_dir or data_mod.default_cache_dir())
        bank = d["banks"][bkey]
    mean = x_train.float().div(255).mean((0, 2, 3), keepdim=True) if cfg.input_norm == "dataset" else None
    std = x_train.float().div(255).std((0, 2, 3), keepdim=True) if cfg.input_norm == "dataset" else None
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format

    def norm(xb):
        return normalize(xb, cfg.input_norm, mean, std).contiguous(memory_format=fmt)

    model = build_model(cfg, device)
    opt = build_optimizer(cfg, model)
    amp = numerics(cfg, device)
    impl = step_impl_for(cfg, device)
    start_epoch = 0
    history: list[dict] = []  # every epoch's reported metrics, kept in the checkpoint (see below)
    note = None  # what recover_checkpoint did, if anything: goes out with the first report
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
    if ckpt_dir:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        state, note = recover_checkpoint(ckpt_dir)
        if state is not None:
            check_checkpoint_config(state, cfg, ckpt_dir)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"]["torch"])
            start_epoch = state["epoch"]
            history = list(state.get("history", []))
    if cfg.finetune and start_epoch < cfg.first_epoch:  # no checkpoint of its own yet: the parent's weights
        model.load_state_dict(load_parent(cfg, parent_dir))
        start_epoch = cfg.first_epoch

    def loss_fn(xb, qb):
        with amp():
            logits = model(xb)
        return labels.soft_cross_entropy(logits.float(), qb), logits

    if impl == "cuda_graph":  # after the checkpoint is loaded: the captured graph holds these tensors
        from trainables.fast import CapturedStep
        step = CapturedStep(loss_fn, opt, list(model.parameters()))
    else:
        def step(xb, qb):
            loss, logits = loss_fn(xb, qb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach(), logits.detach()
    last: dict = {}
    for epoch in range(start_epoch, cfg.total_epochs):
        t0 = time.perf_counter()
        lr = cfg.lr_at(epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        # -- the epoch's data: mixture draw, distortion, IQA, targets (timed: the overhead figure)
        xs, scores, level, kind, g = epoch_data(cfg, epoch, x_train, device, bank)
        t = true_class_t(cfg, tmap, scores)
        targets = labels.targets_from_t(y_train, t, NUM_CLASSES)
        if epoch == cfg.first_epoch and ckpt_dir:  # before the first checkpoint, so a resume keeps it
            _atomic_write_text(ckpt_dir / SCORE_HIST_FILE, json.dumps(
                score_histogram(cfg, tmap, scores, level, kind, epoch + 1), sort_keys=True))
        order = torch.randperm(n, generator=g).to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t_data = time.perf_counter() - t0
        # -- the optimisation
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        below_chance_max = 0.0
        steps = 0
        for i in range(0, n, cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            loss, logits = step(norm(xs[idx]), targets[idx])
            loss_sum += loss
            correct += (logits.argmax(1) == y_train[idx]).sum()
            steps += 1
        # per-batch record of Eq. 1's hazard, vectorised: targets below 1/K per batch of the order
        below = (t[order] < 1.0 / NUM_CLASSES).float()
        nb = n // cfg.batch_size
        if nb:
            below_chance_max = float(below[: nb * cfg.batch_size].view(nb, -1).mean(1).max())
        mean_loss = float(loss_sum) / steps
        if not math.isfinite(mean_loss):
            raise TrialError(f"loss is {mean_loss} at epoch {epoch + 1} (lr={lr}); trial stopped")
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        metrics = {
            "epoch": epoch + 1, "loss": mean_loss, "lr": lr, "train_acc": float(correct) / n,
            **labels.target_stats(t, NUM_CLASSES), "frac_below_chance_max_batch": below_chance_max,
            "epoch_time": dt, "images_per_s": n / dt, "data_time": t_data, "data_share": t_data / dt,
        }
        last_epoch = epoch + 1 == cfg.total_epochs
        test_due, val_due = eval_due(cfg, epoch + 1)
        record = {} if last_epoch else None
        metrics.update(evaluate_all(model, d, norm, test_due, val_due, record, amp))
        if last_epoch:  # before the checkpoint that marks the trial finished, so a resume keeps it
            write_calibration(ckpt_dir, cfg, epoch + 1, record)
            if cfg.cifar10c:  # issue 14: the final model on CIFAR-10-C (trainables/robustness.py)
                from trainables import robustness
                metrics.update(robustness.final_evaluation(model, cfg, norm, device, ckpt_dir, cache_dir, epoch + 1))
        # The metrics of every epoch so far travel with the checkpoint: a driver that died (or a
        # node lost) between a checkpoint and the report reaching MLflow can fill that gap from it.
        history.append(dict(metrics))
        if ckpt_dir and (last_epoch or (epoch + 1) % cfg.checkpoint_every == 0):
            save_checkpoint(ckpt_dir, {"config": cfg.to_dict(), "epoch": epoch + 1,
                                       "model": model.state_dict(), "optimizer": opt.state_dict(),
                                       "rng": {"torch": torch.get_rng_state()}, "metrics": metrics,
                                       "history": history})
            if last_epoch:  # the final artifacts: weights alone and the config that made them
                _atomic_torch_save(model.state_dict(), ckpt_dir / FINAL_WEIGHTS_FILE)
                _atomic_write_text(ckpt_dir / FINAL_CONFIG_FILE, cfg.to_json())
            metrics["checkpoint"] = str(ckpt_dir)
        if note:
            metrics["checkpoint_note"], note = note, None
        report(metrics)
        last = metrics
    if not last and ckpt_dir:  # resumed a finished trial: hand back its final metrics
        state = load_checkpoint(ckpt_dir)
        last = dict(state["metrics"], checkpoint=str(ckpt_dir))
        if note:
            last["checkpoint_note"] = note
    return last


def check_checkpoint_config(state: dict, cfg: TrialConfig, ckpt_dir) -> None:
    """Refuse a checkpoint of another trial. Compared on the defining fields only (config.RUN_FIELDS:
    device, threads and cadences may change between runs), as configs, not dicts: a field added to
    TrialConfig since the checkpoint was written takes its default, which by rule keeps the old
    behaviour."""
    diff = TrialConfig.from_dict(state["config"]).defining_diff(cfg)
    if diff:
        shown = ", ".join(f"{k} {a!r} there, {b!r} here" for k, a, b in diff[:3])
        raise TrialError(f"checkpoint in {ckpt_dir} was written by another config ({shown}); "
                         "use a fresh checkpoint_dir")
