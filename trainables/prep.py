"""A trial's data, prepared: the training subset, the evaluation sets (memoised per process), the
distortion bank, the batch normalisation, and every epoch's draw and targets.

The hot path follows airbench: the data set is one uint8 tensor on the device; each epoch builds
its mixture with whole-tensor gathers, batches are slices of it, and normalisation happens on the
batch on the device. Every epoch's randomness (mixture draw, noise, batch order) comes from
generators seeded by (seed, epoch), so the epoch number is all the RNG state a resume needs.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from trainables import data as data_mod
from trainables import labels
from trainables import distortions, iqa
from trainables.config import LEVELS, NUM_CLASSES, TrialConfig, TrialError
from trainables.device import pick_device
from trainables.evaluation import eval_sets
from trainables.mixture import DistortionBank, build_epoch, draw_epoch

# Epoch 1's training scores as the labels saw them (docs/mlflow-schema.md, artifact of every trial):
SCORE_HIST_FILE = "scores_hist.json"
SCORE_HIST_BINS = 50  # equal bins over [0, 1] (width 0.02); a score of exactly 1 counts in the last
T_CURVE_POINTS = 101  # T sampled at s = 0, 0.01, ..., 1 (after the score floor), for plots


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
            # what makes the evaluation sets: members with equal keys are evaluated on the same images
            # (Pack.evaluate runs them in one pass)
            "eval_key": (train.checksum, test.checksum, cfg.test_subset, cfg.test_seed, cfg.val_size, cfg.val_seed,
                         json.dumps(distortion_options(cfg), sort_keys=True), str(device)),
            "subset_key": subset_key(cfg, train.checksum),
            "banks": {},
        }
    return _PREPARED[key]


def trial_bank(cfg: TrialConfig, d: dict, cache_dir=None) -> DistortionBank | None:
    """The distortion bank of a trial's training images (None without `precompute` or distortions),
    shared by every trial of this process that trains on the same images with the same IQA metric."""
    if not (cfg.precompute and cfg.types):
        return None
    bkey = (d["subset_key"], cfg.iqa_metric)
    if bkey not in d["banks"]:
        d["banks"][bkey] = DistortionBank(d["train_x"], d["subset_key"], cfg.iqa_metric, distortion_options(cfg),
                                          cache_dir or data_mod.default_cache_dir())
    return d["banks"][bkey]


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


# ------------------------------------------------------------------ batches
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


def batch_norm_fn(cfg: TrialConfig, x_train: torch.Tensor):
    """The trial's batch normalisation `norm(uint8 batch) -> model input`: `input_norm` (input_norm
    "dataset" by the mean and std of the trial's own training images `x_train`) in the model's
    memory format."""
    mean = std = None
    if cfg.input_norm == "dataset":
        x = x_train.float().div(255)
        mean, std = x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format

    def norm(xb):
        return normalize(xb, cfg.input_norm, mean, std).contiguous(memory_format=fmt)
    return norm


# ------------------------------------------------------------------ every epoch's data and targets
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


# The static sources of a pack's batched epoch: its members' pristine images and bank entries in one
# tensor, built once and kept for the last pack only (it holds the tensors it was built from, so
# their ids stay theirs while it is kept).
_POOL: dict = {}


def _source_pool(images: list[torch.Tensor], scores: list[torch.Tensor], key: tuple):
    if _POOL.get("key") != key:
        _POOL.clear()
        _POOL.update(key=key, images=torch.cat(images), scores=torch.cat(scores), held=(images, scores))
    return _POOL["images"], _POOL["scores"]


def pack_epoch_data(cfgs: list[TrialConfig], epoch: int, x_trains: list[torch.Tensor], device: torch.device,
                    banks: list[DistortionBank | None]):
    """Epoch `epoch` (0-based) of a pack's K members in one pass (config `pack_data="batched"`): what
    `epoch_data` gives each member, bit for bit on a CPU (tests/test_packed.py), with the images
    stacked K x N. Each member's draws (mixture, noise) come from its own generators in epoch_data's
    order; then every member's noise (and unbanked) images are scored by one IQA call per metric, and
    the stacked images are one gather from a pool of the members' pristine images and bank entries
    (built once per pack; memory: one more copy of the bank) plus one scatter of the noise images.
    Returns (xs K x N uint8, per member (scores, level, kind, generator))."""
    n, k_all = x_trains[0].shape[0], len(cfgs)
    src_images, src_scores, img_ids, score_ids, offsets = [], [], {}, {}, []

    def add(store, ids, key, tensor):  # the offset of a source in its pool, added once
        if key not in ids:
            ids[key] = sum(t.shape[0] for t in store)
            store.append(tensor)
        return ids[key]

    ones = torch.ones(n, device=device)
    parts, tables, fresh = [], [], {}  # fresh: metric -> [(member, idx, distorted, reference, pooled)]
    for k, (cfg, x, bank) in enumerate(zip(cfgs, x_trains, banks)):
        if x.shape[0] != n:
            raise TrialError(f"members train on {x.shape[0]} and {n} images; allowed: one training-set size per pack")
        g = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch, 0))
        g_noise = torch.Generator(device=device).manual_seed(epoch_seed(cfg.seed, epoch, 1))
        level, kind = draw_epoch(n, cfg.effective_mix, len(cfg.types), g, cfg.all3_draw)
        pooled = cfg.score_pooling == "level"
        base = (add(src_images, img_ids, id(x), x), add(src_scores, score_ids, "ones", ones))
        table = {(0, 0): base}  # (level, type index) -> (image offset, score offset); pristine
        for ti, t in enumerate(cfg.types):
            deterministic = distortions.DISTORTIONS[t].deterministic
            for lv in LEVELS:
                table[(lv, ti)] = base  # noise and unbanked groups: overwritten by the scatter below
                idx = torch.nonzero((level == lv) & (kind == ti)).flatten()  # on the CPU: no device sync
                if idx.numel() == 0:
                    continue
                if deterministic and bank is not None:
                    x_all, s_all = bank.get(t, lv)
                    s_src = s_all.mean().expand(n) if pooled else s_all
                    table[(lv, ti)] = (add(src_images, img_ids, id(x_all), x_all),
                                       add(src_scores, score_ids, (id(s_all), pooled), s_src))
                else:
                    idx = idx.to(device)
                    ref = x[idx]
                    xd = distortions.distort(ref, t, lv, generator=g_noise, **distortion_options(cfg).get(t, {}))
                    fresh.setdefault(cfg.iqa_metric, []).append((k, idx, xd, ref, pooled))
        code = level * max(len(cfg.types), 1) + kind
        lut = torch.zeros(4 * max(len(cfg.types), 1), 2, dtype=torch.long)
        for (lv, ti), offs in table.items():
            lut[lv * max(len(cfg.types), 1) + ti] = torch.tensor(offs)
        tables.append(lut[code] + torch.arange(n)[:, None])
        parts.append((level, kind, g))
    pool, spool = _source_pool(src_images, src_scores, tuple(img_ids) + tuple(score_ids))
    src = torch.cat(tables).to(device)
    xs = pool[src[:, 0]].view(k_all, n, *x_trains[0].shape[1:])  # the one gather
    scores = spool[src[:, 1]].view(k_all, n)
    where, images, values = [], [], []
    for metric, groups in fresh.items():  # one IQA call per metric for every member's fresh images
        s_all = iqa.score(metric, torch.cat([gr[2] for gr in groups]), torch.cat([gr[3] for gr in groups]))
        for (k, idx, xd, _, pooled), s in zip(groups, s_all.split([gr[2].shape[0] for gr in groups])):
            where.append(idx + k * n)
            images.append(xd)
            values.append(s.clone().mean().expand(s.shape[0]) if pooled else s)
    if where:  # the one scatter
        flat = torch.cat(where)
        xs.view(k_all * n, *xs.shape[2:])[flat] = torch.cat(images)
        scores.view(-1)[flat] = torch.cat(values)
    return xs, [(scores[k], *parts[k]) for k in range(k_all)]


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
