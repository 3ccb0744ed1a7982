"""How fast the study's hot paths are, each beside a baseline written the way a typical user would.

    python -m bench.speed [--device cpu|cuda] [--json PATH] [--tiny] [--data SPEC]

Every figure is measured in one run, on one device, interleaved with its baseline (ours, baseline,
ours, baseline, ...), median of --repeats after warm-up, so the ratios hold on a noisy machine
(absolute rates do not: say what else ran). Before any timing the bench checks that ours and the
baseline compute the same thing on the same images and stops if they do not.

1. Data path of one MIX_all3 IQA-LS epoch (mixture draw, distortions, SSIM, soft targets), images/s:
   ours = `trainables.prep.epoch_data` (draw_epoch + build_epoch with a DistortionBank) + the
   targets, exactly run_trial's per-epoch work; the bank (blur and JPEG of every image and their
   scores, computed once per data set) is timed once, apart. Baseline = a torch Dataset whose
   __getitem__ distorts one image (scipy gaussian_filter, numpy noise, PIL JPEG), scores it with
   scikit-image's SSIM and builds its soft target, through a DataLoader with 0 and cpu_count
   workers. Per-sample SSIM is slow, so the baseline is timed on the first --baseline-n images of
   the epoch and reported per image. Stages (distort / score / targets) too.
2. Training step of the Table 1 CNN at batch 100, images/s: ours (FastLRN, channels_last, as
   run_trial builds it) vs the plain model (nn.LocalResponseNorm, NCHW); achieved FLOP/s as a share
   of the peak measured through the same backend (conv2d forward + backward, best of a few
   compute-bound shapes, same dtype and threads).
3. One epoch of a MIX_all3 IQA-LS trial: wall time and the share spent outside the model's
   forward/backward (run_trial's own epoch, trainables.loop, with clocks in its step; checked
   against run_trial's loss).
4. CUDA only (or --gpu-extras): steps/s eager vs torch.compile vs CUDA graphs, and K packed
   trials (trainables.packed) vs K separate models.
5. The pack levers of issue 18 (bench.gpu_check.lever_times), old beside new on one pack of Table 2
   strategies (one seed): an epoch's data path per member vs batched (config pack_data) and the
   final evaluation of the test sets per member vs one vmapped pass (config pack_eval), seconds,
   with their agreement checked first.

Measured with `python -m bench.speed --device cpu` (full sizes: 5,000-image epoch, baseline timed
on 1,000, median of 5 after 1 warm-up, 1 torch thread) on a 2-core AMD EPYC VM, torch 2.14.1, while
other jobs kept the load average at ~8 (so absolute rates are low; the ratios are the figures):
data path 48.7x the per-sample pipeline with 0 workers and 53.6x with 2 workers (the loaded
machine gave the workers nothing to run on); training step 1.96x the plain model, 64 % of the
measured conv2d peak (45.7 GFLOP/s); 2.5 % of a 2,000-image MIX_all3 IQA-LS epoch outside the
forward/backward. Rerun it for your machine: the JSON holds the machine, versions and every sample.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.gpu_check import grid_cfgs, lever_line, lever_times
from trainables import data as data_mod
from trainables import distortions, iqa, labels
from trainables.config import LEVELS, NUM_CLASSES, TrialConfig
from trainables.device import keep_freed_memory, numerics, pick_device
from trainables.loop import Member, Step, model_loss, sync, train_epoch
from trainables.mixture import DistortionBank, draw_epoch
from trainables.model import build_model, build_optimizer
from trainables.prep import distortion_options, epoch_data, epoch_seed, normalize, target_map, train_subset, true_class_t
from trainables.train import run_trial

try:  # the baseline's libraries (the "test" extra): scipy is a core dependency, the others are not
    from PIL import Image
    from scipy.ndimage import gaussian_filter
    from skimage.metrics import structural_similarity
except ImportError as e:  # main() says what to install
    _MISSING = e
else:
    _MISSING = None

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg"
FIXTURE = ROOT / "tests" / "fixtures" / "cifar10-mini"
ISSUE_MFLOP = 186.8  # issue 6: FLOPs per training image of the Table 1 CNN, forward + backward
BATCH = 100  # Sec. 4.2: the paper's batch size
SCIPY_MODES = {"reflect": "mirror", "replicate": "nearest", "circular": "wrap"}  # torch pad -> scipy
# Agreement before timing (ours vs baseline on the same images): JPEG identical; blur and noise
# within one grey level (float32 vs float64 rounding at .5); SSIM and targets within 1e-3.
TOL = {"jpeg": 0, "blur": 1, "noise": 1, "pristine": 0, "ssim": 1e-3, "targets": 1e-3}

SIZES = {  # what each mode measures; --tiny is CI's smoke run (~1 minute on a 2-core CPU)
    # epoch_n: the outside share is a ratio of two costs that both scale with n, so 2,000 images
    # (20 steps) measure it as well as 5,000 in 40 % of the time
    "full": dict(data_n=5000, baseline_n=1000, repeats=5, warmup=1, step_reps=3, epoch_n=2000,
                 pack_ks=(4, 8, 16), lever_strategies=tuple(range(1, 10)), lever_n=2000, lever_test=200),
    "tiny": dict(data_n=200, baseline_n=100, repeats=3, warmup=1, step_reps=1, epoch_n=200, pack_ks=(2,),
                 lever_strategies=(1, 9), lever_n=200, lever_test=20),
}
PEAK_SHAPES = {  # conv2d (N, C, H, W, k), C -> C channels, 'same' padding: compute-bound shapes
    "cpu": [(64, 64, 32, 32, 3), (32, 128, 32, 32, 3), (128, 64, 16, 16, 5), (64, 128, 16, 16, 5)],
    "cuda": [(256, 256, 32, 32, 3), (256, 128, 32, 32, 5), (512, 256, 16, 16, 3), (128, 512, 16, 16, 3)],
    "tiny": [(16, 64, 16, 16, 5), (16, 128, 16, 16, 3)],
}


# ------------------------------------------------------------------ helpers
def timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def machine_info(device: torch.device, threads: int) -> dict:
    import PIL
    import scipy
    import skimage
    import torchvision

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "torch_threads": threads, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
            "dtype": "float32", "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                                             "numpy": np.__version__, "scipy": scipy.__version__,
                                             "scikit-image": skimage.__version__, "pillow": PIL.__version__}}
    if device.type == "cuda":
        info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        info["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    if hasattr(os, "getloadavg"):
        info["loadavg_start"] = list(os.getloadavg())
    return info


# ------------------------------------------------------------------ 1. data path: the baseline
class PerSampleMixture(torch.utils.data.Dataset):
    """The per-sample pipeline a typical user writes: one image per __getitem__, numpy/scipy/PIL/
    scikit-image, the mixture assignment (level, type) given. `z` feeds the noise (the agreement
    check replays ours' normal draws); without it each worker draws its own with numpy. `stage_s`
    accumulates distort / score / targets seconds (meaningful with 0 workers)."""

    def __init__(self, images: np.ndarray, labels_: np.ndarray, level: np.ndarray, kind: np.ndarray,
                 types: tuple[str, ...], cfg: TrialConfig, z: np.ndarray | None = None):
        self.images, self.labels, self.level, self.kind = images, labels_, level, kind
        self.types, self.cfg, self.z = types, cfg, z
        self.rng = None
        self.stage_s = [0.0, 0.0, 0.0]

    def __len__(self):
        return len(self.images)

    def _blur(self, img, lv):
        sigma = distortions.BLUR_SIGMAS[lv - 1]
        r = math.ceil(self.cfg.blur_truncate * sigma)
        y = gaussian_filter(img.astype(np.float64), sigma=(0, sigma, sigma), radius=(0, r, r),
                            mode=SCIPY_MODES[self.cfg.blur_border])
        return np.clip(np.round(y), 0, 255).astype(np.uint8)

    def _noise(self, img, lv, i):
        if self.z is not None:
            z = self.z[i]
        else:
            if self.rng is None:  # one generator per worker process
                info = torch.utils.data.get_worker_info()
                self.rng = np.random.default_rng(1234 + (info.id if info else 0))
            z = self.rng.standard_normal(img.shape)
        y = np.clip(img / 255.0 + math.sqrt(distortions.NOISE_VARIANCES[lv - 1]) * z, 0.0, 1.0)
        return np.round(y * 255.0).astype(np.uint8)

    def _jpeg(self, img, lv):
        buf = io.BytesIO()
        Image.fromarray(img.transpose(1, 2, 0)).save(buf, format="JPEG", quality=distortions.JPEG_QUALITIES[lv - 1])
        buf.seek(0)
        return np.asarray(Image.open(buf).convert("RGB")).transpose(2, 0, 1)

    def __getitem__(self, i):
        t0 = time.perf_counter()
        img, lv = self.images[i], int(self.level[i])
        kind = self.types[int(self.kind[i])] if lv else "pristine"
        if kind == "blur":
            out = self._blur(img, lv)
        elif kind == "noise":
            out = self._noise(img, lv, i)
        elif kind == "jpeg":
            out = self._jpeg(img, lv)
        else:
            out = img
        t1 = time.perf_counter()
        s = 1.0 if kind == "pristine" else structural_similarity(
            out / 255.0, img / 255.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
            data_range=1.0, channel_axis=0)
        t2 = time.perf_counter()
        t = min(max(s, self.cfg.score_floor), 1.0)  # Eq. 1, T = identity on the clamped score
        q = np.full(NUM_CLASSES, (1.0 - t) / (NUM_CLASSES - 1), dtype=np.float32)
        q[self.labels[i]] = t
        t3 = time.perf_counter()
        self.stage_s[0] += t1 - t0
        self.stage_s[1] += t2 - t1
        self.stage_s[2] += t3 - t2
        return torch.from_numpy(np.ascontiguousarray(out)), torch.from_numpy(q), np.float32(s)


def replay_noise_draws(cfg: TrialConfig, epoch: int, level, kind, n: int, device) -> np.ndarray:
    """The N(0, 1) draws ours' noise used this epoch, in build_epoch's order (types, then levels;
    gaussian_noise draws distortions.CHUNK images at a time): the baseline gets the same noise."""
    assert [t for t in cfg.types if not distortions.DISTORTIONS[t].deterministic] == ["noise"]
    g = torch.Generator(device=device).manual_seed(epoch_seed(cfg.seed, epoch, 1))
    z = torch.zeros(n, 3, 32, 32)
    ti = cfg.types.index("noise")
    for lv in LEVELS:
        idx = torch.nonzero((level == lv) & (kind == ti)).flatten()
        for i in range(0, idx.numel(), distortions.CHUNK):
            part = idx[i:i + distortions.CHUNK]
            z[part] = torch.randn((part.numel(), 3, 32, 32), generator=g, device=device).cpu()
    return z.double().numpy()


def ours_stages(cfg, epoch, x, y, bank, tmap, device):
    """build_epoch split into distort / score / targets (same calls, same order), for the stage figures."""
    times = []
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch, 0))
    g_noise = torch.Generator(device=device).manual_seed(epoch_seed(cfg.seed, epoch, 1))
    level, kind = draw_epoch(x.shape[0], cfg.effective_mix, len(cfg.types), g, cfg.all3_draw)
    level, kind = level.to(device), kind.to(device)
    out = x.clone()
    groups = []
    for ti, t in enumerate(cfg.types):
        for lv in LEVELS:
            idx = torch.nonzero((level == lv) & (kind == ti)).flatten()
            if idx.numel() == 0:
                continue
            if distortions.DISTORTIONS[t].deterministic:
                out[idx] = bank.get(t, lv)[0][idx]
                groups.append((t, lv, idx, None))
            else:
                xn = distortions.distort(x[idx], t, lv, generator=g_noise, **distortion_options(cfg).get(t, {}))
                out[idx] = xn
                groups.append((t, lv, idx, xn))
    sync(device)
    times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    scores = torch.ones(x.shape[0], device=device)
    for t, lv, idx, xn in groups:
        scores[idx] = bank.get(t, lv)[1][idx] if xn is None else iqa.score(cfg.iqa_metric, xn, x[idx])
    sync(device)
    times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    q = labels.targets_from_t(y, true_class_t(cfg, tmap, scores), NUM_CLASSES)
    sync(device)
    times.append(time.perf_counter() - t0)
    return times, (out, scores, q)


def bench_data_path(cfg, x, y, device, sz, workers) -> dict:
    n = x.shape[0]
    opts = distortion_options(cfg)
    tmap = target_map(cfg)
    # -- the one-off bank: every deterministic (kind, level) of the set, computed fresh (no disk cache)
    t0 = time.perf_counter()
    bank = DistortionBank(x, f"bench:{n}", cfg.iqa_metric, opts, None)
    entries = [(t, lv) for t in cfg.types if distortions.DISTORTIONS[t].deterministic for lv in LEVELS]
    for t, lv in entries:
        bank.get(t, lv)
    sync(device)
    bank_s = time.perf_counter() - t0

    def ours_epoch(epoch):
        xs, scores, level, kind, g = epoch_data(cfg, epoch, x, device, bank)
        q = labels.targets_from_t(y, true_class_t(cfg, tmap, scores), NUM_CLASSES)
        order = torch.randperm(n, generator=g).to(device)
        return xs, scores, level, kind, q, order

    # -- agreement: ours' epoch 0 vs the baseline fed the same assignment and normal draws
    xs, scores, level, kind, q, _ = ours_epoch(0)
    _, (xs2, scores2, q2) = ours_stages(cfg, 0, x, y, bank, tmap, device)
    assert torch.equal(xs2, xs) and torch.equal(scores2, scores) and torch.equal(q2, q), \
        "the stage split of build_epoch does not reproduce epoch_data"
    level_np, kind_np = level.cpu().numpy(), kind.cpu().numpy()
    x_np, y_np = x.cpu().numpy(), y.cpu().numpy()
    z = replay_noise_draws(cfg, 0, level.cpu(), kind.cpu(), n, device)
    check_n = n  # every image of the epoch
    ds = PerSampleMixture(x_np[:check_n], y_np[:check_n], level_np[:check_n], kind_np[:check_n], cfg.types, cfg, z)
    base = [ds[i] for i in range(check_n)]
    b_img = torch.stack([b[0] for b in base]).int()
    b_q = torch.stack([b[1] for b in base])
    b_s = torch.tensor([float(b[2]) for b in base])
    o_img, o_s, o_q = xs[:check_n].cpu().int(), scores[:check_n].cpu(), q[:check_n].cpu()
    agreement = {"n_checked": check_n, "noise": "same N(0,1) draws (replayed from the trial's noise generator)"}
    for gi, name in enumerate(("pristine",) + cfg.types):
        m = torch.from_numpy((level_np[:check_n] == 0) if name == "pristine" else
                             (level_np[:check_n] > 0) & (kind_np[:check_n] == gi - 1))
        diff = int((b_img[m] - o_img[m]).abs().max()) if bool(m.any()) else 0
        agreement[f"{name}_images"] = int(m.sum())
        agreement[f"{name}_max_abs_grey"] = diff
        agreement[f"{name}_pixels_differing"] = int((b_img[m] != o_img[m]).sum())
    distorted = torch.from_numpy(level_np[:check_n] > 0)
    agreement["ssim_max_abs"] = float((b_s[distorted] - o_s[distorted]).abs().max())
    agreement["targets_max_abs"] = float((b_q - o_q).abs().max())
    ok = (all(agreement[f"{k}_max_abs_grey"] <= TOL[k] for k in ("pristine",) + cfg.types)
          and agreement["ssim_max_abs"] <= TOL["ssim"] and agreement["targets_max_abs"] <= TOL["targets"])
    agreement["tolerances"] = TOL
    agreement["passed"] = ok
    if not ok:
        raise AssertionError(f"ours and the per-sample baseline disagree: {agreement}")

    # -- timing, interleaved: ours epoch, ours stages, baseline 0 workers, baseline W workers
    bn = min(sz["baseline_n"], n)
    ds0 = PerSampleMixture(x_np[:bn], y_np[:bn], level_np[:bn], kind_np[:bn], cfg.types, cfg)
    dsw = PerSampleMixture(x_np[:bn], y_np[:bn], level_np[:bn], kind_np[:bn], cfg.types, cfg)
    dl0 = torch.utils.data.DataLoader(ds0, batch_size=BATCH, num_workers=0)
    dlw = torch.utils.data.DataLoader(dsw, batch_size=BATCH, num_workers=workers, persistent_workers=True)
    rec = {"ours": [], "ours_stages": [], "base0": [], "base0_stages": [], "basew": []}
    for r in range(sz["warmup"] + sz["repeats"]):
        t_ours = timed(lambda: ours_epoch(r + 1), device)
        st, _ = ours_stages(cfg, r + 1, x, y, bank, tmap, device)
        ds0.stage_s = [0.0, 0.0, 0.0]
        t0 = time.perf_counter()
        for _ in dl0:
            pass
        t_b0 = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in dlw:  # persistent workers: their start-up is paid in the warm-up round only
            pass
        t_bw = time.perf_counter() - t0
        if r >= sz["warmup"]:
            rec["ours"].append(n / t_ours)
            rec["ours_stages"].append([n / s for s in st])
            rec["base0"].append(bn / t_b0)
            rec["base0_stages"].append([bn / s for s in ds0.stage_s])
            rec["basew"].append(bn / t_bw)
    del dlw
    stages = ("distort", "score", "targets")
    res = {
        "images": n, "baseline_images": bn, "workers": workers, "train_set": cfg.train_set,
        "regularization": cfg.regularization, "iqa_metric": cfg.iqa_metric,
        "ours_images_per_s": med(rec["ours"]),
        "baseline_0_workers_images_per_s": med(rec["base0"]),
        "baseline_workers_images_per_s": med(rec["basew"]),
        "ours_stage_images_per_s": {s: med([v[i] for v in rec["ours_stages"]]) for i, s in enumerate(stages)},
        "baseline_stage_images_per_s": {s: med([v[i] for v in rec["base0_stages"]]) for i, s in enumerate(stages)},
        "bank_build_s": bank_s, "bank_entries": len(entries),
        "bank_build_images_per_s": len(entries) * n / bank_s,
        "raw": rec, "agreement": agreement,
    }
    res["speedup_0_workers"] = res["ours_images_per_s"] / res["baseline_0_workers_images_per_s"]
    res["speedup_workers"] = res["ours_images_per_s"] / res["baseline_workers_images_per_s"]
    return res


# ------------------------------------------------------------------ 2. training step
def count_flops(model: torch.nn.Module) -> dict:
    """MACs of the conv and fc modules for one 3 x 32 x 32 image, by hooks on a forward pass.
    Training FLOPs = 2 x forward MACs (forward) + 2 x that (input and weight gradients) minus conv1's
    input gradient (the image needs none). The LRN's banded 1x1 convolution (an implementation of
    a normalisation, not a model layer), pools and elementwise work are not counted."""
    macs = {}

    def hook(mod, inp, out, name=None):
        if isinstance(mod, torch.nn.Conv2d):
            macs[name] = out[0].numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
        else:
            macs[name] = mod.in_features * mod.out_features

    hs = [m.register_forward_hook(lambda mod, i, o, name=n: hook(mod, i, o, name))
          for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32, device=next(model.parameters()).device))
    for h in hs:
        h.remove()
    fwd = 2 * sum(macs.values())
    bwd = 2 * fwd - 2 * macs["conv1"]
    return {"macs_per_layer": macs, "forward_flop": fwd, "backward_flop": bwd, "train_flop": fwd + bwd,
            "train_mflop": (fwd + bwd) / 1e6, "issue_mflop": ISSUE_MFLOP,
            "matches_issue": abs((fwd + bwd) / 1e6 - ISSUE_MFLOP) < 0.05}


def conv_peak_op(shape, device):
    n, c, h, w, k = shape
    fmt = torch.channels_last
    x = torch.randn(n, c, h, w, device=device).contiguous(memory_format=fmt).requires_grad_()
    wt = (torch.randn(c, c, k, k, device=device) * 0.01).contiguous(memory_format=fmt).requires_grad_()
    gy = torch.randn(n, c, h, w, device=device).contiguous(memory_format=fmt)

    def op():
        y = torch.nn.functional.conv2d(x, wt, padding=k // 2)
        y.backward(gy)
        x.grad = wt.grad = None
    return op, 3 * 2 * n * c * c * k * k * h * w  # forward + input grad + weight grad


def bench_train_step(x_u8, y, device, sz, peak_shapes) -> dict:
    base_cfg = TrialConfig(device=str(device))
    cfg_ours = base_cfg.replace(lrn_impl="fast", channels_last=True)
    cfg_plain = base_cfg.replace(lrn_impl="torch", channels_last=False)
    xb = x_u8[:BATCH].to(device)
    qb = labels.targets_from_t(y[:BATCH].to(device), torch.full((BATCH,), 0.9, device=device), NUM_CLASSES)
    runs = {}
    for name, cfg in (("ours", cfg_ours), ("plain", cfg_plain)):
        model = build_model(cfg, device)
        opt = build_optimizer(cfg, model)
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format

        def step(model=model, opt=opt, fmt=fmt):
            logits = model(normalize(xb, "per_image").contiguous(memory_format=fmt))
            loss = labels.soft_cross_entropy(logits, qb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        runs[name] = step
    flops = count_flops(build_model(cfg_ours, device))
    peaks = {s: conv_peak_op(s, device) for s in peak_shapes}
    rec = {"ours": [], "plain": [], **{str(s): [] for s in peak_shapes}}
    for r in range(sz["warmup"] + sz["repeats"]):
        for s, (op, fl) in peaks.items():
            dt = timed(op, device)
            if r >= sz["warmup"]:
                rec[str(s)].append(fl / dt)
        for name, step in runs.items():
            dt = timed(lambda: [step() for _ in range(sz["step_reps"])], device) / sz["step_reps"]
            if r >= sz["warmup"]:
                rec[name].append(BATCH / dt)
    peak_by_shape = {s: med(rec[str(s)]) for s in peak_shapes}
    best = max(peak_by_shape, key=peak_by_shape.get)
    ours = med(rec["ours"])
    achieved = ours * flops["train_flop"]
    return {"batch": BATCH, "ours_images_per_s": ours, "plain_images_per_s": med(rec["plain"]),
            "speedup": ours / med(rec["plain"]), "flops": flops, "achieved_flop_per_s": achieved,
            "peak_flop_per_s": peak_by_shape[best], "peak_shape_nchwk": list(best),
            "peak_by_shape_flop_per_s": {str(s): v for s, v in peak_by_shape.items()},
            "peak_share": achieved / peak_by_shape[best], "steps_per_sample": sz["step_reps"], "raw": rec}


# ------------------------------------------------------------------ 3. a whole epoch
class TimedStep(Step):
    """The trials' eager step (trainables.loop.Step) with clocks around its forward (+ loss) and its
    backward: `inside` adds up their seconds."""

    def __init__(self, loss_fn, opt, params, device):
        super().__init__(loss_fn, opt, params, "eager")
        self.device, self.inside = device, 0.0

    def _timed(self, fn, *args):
        sync(self.device)
        t0 = time.perf_counter()
        out = fn(*args)
        sync(self.device)
        self.inside += time.perf_counter() - t0
        return out

    def forward(self, x, q):
        return self._timed(super().forward, x, q)

    def backward(self, loss):
        return self._timed(super().backward, loss)


def bench_epoch(cfg, device, sz, cache_dir) -> dict:
    """run_trial's epoch (trainables.loop.train_epoch on a Member) with the step's forward+loss and
    backward timed (TimedStep); everything else (the epoch's data, batch gather + normalisation,
    zero_grad, SGD step, metric sums) is 'outside'. Its epoch-1 loss is checked against run_trial's own."""
    m = Member(cfg, device, cache_dir)
    if m.bank is not None:  # the one-off bank is not an epoch's cost: built before the clock
        for t in cfg.types:
            if distortions.DISTORTIONS[t].deterministic:
                for lv in LEVELS:
                    m.bank.get(t, lv)
    step = TimedStep(model_loss(m.model, numerics(cfg, device)), m.opt, m.model.parameters(), device)
    rows = []
    for epoch in range(sz["warmup"] + sz["repeats"]):
        step.inside = 0.0
        sync(device)
        [r] = train_epoch([m], step, epoch, device)
        rows.append({"epoch": epoch + 1, "loss": r["loss"], "epoch_time": r["epoch_time"],
                     "data_time": r["data_time"], "forward_backward_time": step.inside,
                     "outside_share": 1.0 - step.inside / r["epoch_time"], "data_share": r["data_share"],
                     "images_per_s": r["images_per_s"]})
    reports = []
    run_trial(cfg.replace(epochs=1), reports.append, cache_dir=cache_dir)
    ref = reports[0]
    # CPU: the same code (only the clocks differ), so the same loss, bit for bit. CUDA: cuDNN's backward
    # kernels accumulate with atomics (run-to-run differences) and run_trial replays a captured graph,
    # so over an epoch's steps the two runs drift apart (2e-4 relative on an H200, 2,000 images).
    tol = 0.0 if device.type == "cpu" else 2e-3
    if not math.isclose(ref["loss"], rows[0]["loss"], rel_tol=tol):
        raise AssertionError(f"the instrumented epoch (loss {rows[0]['loss']}) is not run_trial's "
                             f"(loss {ref['loss']}; relative tolerance {tol})")
    n = m.d["train_x"].shape[0]
    timed_rows = rows[sz["warmup"]:]
    return {"images": n, "train_set": cfg.train_set, "regularization": cfg.regularization,
            "batch": cfg.batch_size, "epoch_time_s": med([r["epoch_time"] for r in timed_rows]),
            "images_per_s": med([r["images_per_s"] for r in timed_rows]),
            "outside_share": med([r["outside_share"] for r in timed_rows]),
            "data_share": med([r["data_share"] for r in timed_rows]),
            "run_trial_epoch_time_s": ref["epoch_time"], "run_trial_data_share": ref["data_share"],
            "run_trial_loss_matches": True, "epochs": rows}


# ------------------------------------------------------------------ 4. CUDA: compile, graphs, packing
def bench_cuda_extras(x_u8, y, device, sz) -> dict:
    from trainables.packed import Pack

    cfg = TrialConfig(device=str(device))
    fmt = torch.channels_last
    xb = normalize(x_u8[:BATCH].to(device), "per_image").contiguous(memory_format=fmt)
    qb = labels.targets_from_t(y[:BATCH].to(device), torch.full((BATCH,), 0.9, device=device), NUM_CLASSES)
    out: dict = {}
    variants = {"eager": None, "compile": {}}
    if device.type == "cuda":
        variants["compile_cudagraphs"] = {"mode": "reduce-overhead"}
    steps = {}
    for name, kw in variants.items():
        model = build_model(cfg, device)
        opt = build_optimizer(cfg, model)
        fwd = model if kw is None else torch.compile(model, **kw)
        graphs = bool(kw) and kw.get("mode") == "reduce-overhead"

        def step(fwd=fwd, opt=opt, graphs=graphs):
            if graphs:  # a new iteration: the graph's previous outputs may be overwritten
                torch.compiler.cudagraph_mark_step_begin()
            loss = labels.soft_cross_entropy(fwd(xb), qb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        t0 = time.perf_counter()
        for _ in range(3):  # compiles (and records the graphs) here
            step()
        sync(device)
        out[f"{name}_warmup_s"] = time.perf_counter() - t0
        steps[name] = step
    if device.type == "cuda":  # the trials' own step (trainables.loop.Step, step_impl auto on CUDA)
        model = build_model(cfg, device)
        captured = Step(model_loss(model, numerics(cfg, device)), build_optimizer(cfg, model), model.parameters(),
                        "cuda_graph")
        t0 = time.perf_counter()
        for _ in range(3):  # the first call warms up and captures
            captured(xb, qb)
        sync(device)
        out["fast_path_warmup_s"] = time.perf_counter() - t0
        out["fast_path_failed"] = captured.captured.failed
        steps["fast_path"] = lambda captured=captured: captured(xb, qb)
    reps = 20 if device.type == "cuda" else sz["step_reps"]
    rec = {k: [] for k in steps}
    for _ in range(sz["repeats"]):
        for name, step in steps.items():
            rec[name].append(reps / timed(lambda: [step() for _ in range(reps)], device))
    out["steps_per_s"] = {k: med(v) for k, v in rec.items()}
    # -- K trials: one packed step (trainables.packed.Pack) vs K separate eager steps, same batches
    out["raw"] = {"steps_per_s": rec}
    out["pack"] = {}
    for k in sz["pack_ks"]:
        models = [build_model(cfg.replace(seed=s), device) for s in range(k)]
        opts = [build_optimizer(cfg, m) for m in models]
        pack = Pack.of_models(cfg, [build_model(cfg.replace(seed=s), device) for s in range(k)])
        xk = xb.unsqueeze(0).expand(k, -1, -1, -1, -1).clone()
        qk = qb.unsqueeze(0).expand(k, -1, -1).clone()

        def separate(models=models, opts=opts):
            for m, o in zip(models, opts):
                loss = labels.soft_cross_entropy(m(xb), qb)
                o.zero_grad(set_to_none=True)
                loss.backward()
                o.step()

        def packed(step=pack.stepper("eager"), xk=xk, qk=qk):
            step(xk, qk)
        for _ in range(2):
            separate()
            packed()
        recp = {"separate": [], "packed": []}
        for _ in range(sz["repeats"]):
            recp["separate"].append(k * BATCH / timed(separate, device))
            recp["packed"].append(k * BATCH / timed(packed, device))
        out["pack"][str(k)] = {"separate_images_per_s": med(recp["separate"]),
                               "packed_images_per_s": med(recp["packed"]),
                               "speedup": med(recp["packed"]) / med(recp["separate"]), "raw": recp}
        del models, opts, pack
    kmax = str(max(sz["pack_ks"]))
    out["pack_k"] = int(kmax)
    out["packed_speedup"] = out["pack"][kmax]["speedup"]
    return out


# ------------------------------------------------------------------ 5. the pack levers
def bench_levers(data: str, device, sz, threads: int) -> dict:
    """Section 5: lever_times on the Table 2 strategies of `sz` (one seed), `lever_n` training images,
    `lever_test` test images per set, the study's precision and step for this device."""
    from search_spaces.presets import resolve

    fields = resolve("paper", epochs=1, subset=sz["lever_n"], test_subset=sz["lever_test"])
    cuda = device.type == "cuda"
    cfgs = grid_cfgs(data, str(device), sz["lever_strategies"], 1, threads=threads,
                     precision="bf16" if cuda else "fp32", step_impl="cuda_graph" if cuda else "eager", **fields)
    return lever_times(cfgs, reps=sz["repeats"])


# ------------------------------------------------------------------ the report
def fmt_rate(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"


def table(res: dict) -> str:
    m, dp, ts, ep = res["machine"], res["data_path"], res["train_step"], res["epoch"]
    sz = res["sizes"]
    lines = [f"bench.speed on {m['device_name']} ({m['device']}, {m['cpu_count']} CPUs, {m['torch_threads']} "
             f"torch thread(s)), torch {m['versions']['torch']}, {m['dtype']}; median of {sz['repeats']} after "
             f"{sz['warmup']} warm-up, ours and baseline interleaved",
             f"load average at start {m.get('loadavg_start')}, at end {m.get('loadavg_end')} (other work on the "
             "machine slows both sides; the ratios are the figures)", ""]
    w = 50
    lines.append(f"{'figure':<{w}}{'ours':>14}{'baseline':>16}{'ratio':>9}")
    lines.append(f"{'data path, ' + dp['train_set'] + ' IQA-LS (images/s)':<{w}}{fmt_rate(dp['ours_images_per_s']):>14}"
                 f"{fmt_rate(dp['baseline_0_workers_images_per_s']):>16}{dp['speedup_0_workers']:>8.1f}x")
    lines.append(f"{'  baseline DataLoader, ' + str(dp['workers']) + ' workers':<{w}}{'':>14}"
                 f"{fmt_rate(dp['baseline_workers_images_per_s']):>16}{dp['speedup_workers']:>8.1f}x")
    for s in ("distort", "score", "targets"):
        o, b = dp["ours_stage_images_per_s"][s], dp["baseline_stage_images_per_s"][s]
        lines.append(f"{'  stage ' + s + ' (images/s, 0 workers)':<{w}}{fmt_rate(o):>14}{fmt_rate(b):>16}{o / b:>8.1f}x")
    lines.append(f"{'  ours: ' + str(dp['images']) + ' images/epoch; baseline timed on':<{w}}"
                 f"{'':>14}{str(dp['baseline_images']) + ' images':>16}")
    lines.append(f"{'  bank build, one-off (' + str(dp['bank_entries']) + ' x ' + str(dp['images']) + ' images)':<{w}}"
                 f"{dp['bank_build_s']:>12.1f} s")
    lines.append(f"{'train step, batch 100 (images/s)':<{w}}{fmt_rate(ts['ours_images_per_s']):>14}"
                 f"{fmt_rate(ts['plain_images_per_s']):>16}{ts['speedup']:>8.2f}x")
    lines.append(f"{'  achieved FLOP/s; share of the measured peak':<{w}}{ts['achieved_flop_per_s'] / 1e9:>10.1f} G/s"
                 f"{ts['peak_share'] * 100:>15.0f} %")
    lines.append(f"{'  measured peak: conv2d fwd+bwd, best shape':<{w}}{ts['peak_flop_per_s'] / 1e9:>10.1f} G/s"
                 f"  (N,C,H,W,k) = {tuple(ts['peak_shape_nchwk'])}")
    fl = ts["flops"]
    lines.append(f"{'  FLOPs per training image':<{w}}{fl['train_mflop']:>9.2f} MFLOP  (fwd {fl['forward_flop'] / 1e6:.2f}"
                 f" + bwd {fl['backward_flop'] / 1e6:.2f}; issue states {fl['issue_mflop']}: "
                 f"{'matches' if fl['matches_issue'] else 'DIFFERS'})")
    lines.append(f"{'epoch, ' + ep['train_set'] + ' IQA-LS, ' + str(ep['images']) + ' images':<{w}}"
                 f"{ep['epoch_time_s']:>12.1f} s  ({fmt_rate(ep['images_per_s'])} images/s)")
    fp = res.get("fast_path", {})
    lines.append(f"{'  run_trial here: step_impl, precision':<{w}}{fp.get('step_impl', '?')}, {fp.get('precision', '?')}"
                 "  (the study's --precision auto picks bf16 on CUDA)")
    lines.append(f"{'  outside forward/backward':<{w}}{ep['outside_share'] * 100:>12.1f} %  (epoch data "
                 f"{ep['data_share'] * 100:.1f} %; run_trial's own data_share {ep['run_trial_data_share'] * 100:.1f} %)")
    ag = dp["agreement"]
    lines.append(f"{'agreement before timing (' + str(ag['n_checked']) + ' images)':<{w}}"
                 f"{'passed' if ag['passed'] else 'FAILED'}: JPEG max {ag.get('jpeg_max_abs_grey')} grey, blur max "
                 f"{ag.get('blur_max_abs_grey')}, noise max {ag.get('noise_max_abs_grey')} (same draws), "
                 f"SSIM max {ag['ssim_max_abs']:.1e}, targets max {ag['targets_max_abs']:.1e}")
    if "cuda" in res:
        c = res["cuda"]
        sp = ", ".join(f"{k} {v:.1f}" for k, v in c["steps_per_s"].items())
        lines.append(f"{'steps/s at batch 100':<{w}}{sp}")
        for k, pk in c["pack"].items():
            lines.append(f"{'K=' + k + ' trials: packed vs separate (images/s)':<{w}}"
                         f"{fmt_rate(pk['packed_images_per_s']):>14}{fmt_rate(pk['separate_images_per_s']):>16}"
                         f"{pk['speedup']:>8.2f}x")
    if "levers" in res:
        lines.append(lever_line(res["levers"]))
    return "\n".join(lines)


def default_data() -> str:
    return str(SHARED_DATA) if SHARED_DATA.exists() else str(FIXTURE)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--tiny", action="store_true", help="CI smoke run: tiny n, 3 repeats (about a minute on 2 CPUs)")
    p.add_argument("--data", default=None, help=f"data source spec (default {SHARED_DATA} if present, else the "
                   "test fixture)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: the study's "
                   "per-trial default, --cpus-per-trial 1); 0 = torch's default")
    p.add_argument("--gpu-extras", action="store_true", help="run section 4 on a non-CUDA device too")
    p.add_argument("--skip-levers", action="store_true", help="leave out section 5 (the pack levers)")
    p.add_argument("--levers-only", action="store_true", help="run section 5 (the pack levers) alone")
    args = p.parse_args(argv)
    if _MISSING is not None:
        sys.exit(f"bench.speed needs the baseline's libraries ({_MISSING}); install with pip install -e '.[test]'")
    device = pick_device(args.device)
    from trainables.fast import resolve_step_impl

    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cpu":
        keep_freed_memory()  # what run_trial does; process-wide, so the baselines get it too
    sz = dict(SIZES["tiny" if args.tiny else "full"])
    res: dict = {"machine": machine_info(device, torch.get_num_threads()), "sizes": sz,
                 "data": args.data or default_data(),
                 # what a trial's run_trial uses here (the 3/3 epoch's run_trial check runs it)
                 "fast_path": {"step_impl": resolve_step_impl(TrialConfig().step_impl, device),
                               "precision": TrialConfig().precision}}
    cfg = TrialConfig(data=res["data"], train_set="mix_all3", regularization="iqa_ls", iqa_metric="ssim",
                      device=str(device), test_subset=20 if args.tiny else 100)
    train = data_mod.load_split(cfg.data, "train")
    n_all = train.images.shape[0]
    cfg_dp = cfg.replace(subset=min(sz["data_n"], n_all))
    x, y = train_subset(cfg_dp, train)
    x, y = x.to(device), y.to(device)
    workers = os.cpu_count() or 1
    print(f"bench.speed: {device} ({res['machine']['device_name']}), data {cfg.data}, "
          f"{'tiny' if args.tiny else 'full'} sizes", flush=True)
    if args.levers_only:
        res["levers"] = bench_levers(res["data"], device, sz, args.threads)
        print(lever_line(res["levers"]))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(res, indent=1, sort_keys=True, default=str))
        return res
    print("  1/3 data path ...", flush=True)
    res["data_path"] = bench_data_path(cfg_dp, x, y, device, sz, workers)
    print("  2/3 training step ...", flush=True)
    shapes = PEAK_SHAPES["tiny" if args.tiny else ("cuda" if device.type == "cuda" else "cpu")]
    res["train_step"] = bench_train_step(x, y, device, sz, shapes)
    print("  3/3 epoch ...", flush=True)
    res["epoch"] = bench_epoch(cfg.replace(subset=min(sz["epoch_n"], n_all), epochs=sz["warmup"] + sz["repeats"]),
                               device, sz, None)
    if device.type == "cuda" or args.gpu_extras:
        print("  +   compile / graphs / packed ...", flush=True)
        res["cuda"] = bench_cuda_extras(x, y, device, sz)
    if not args.skip_levers:
        print("  +   pack levers (data path, evaluation) ...", flush=True)
        res["levers"] = bench_levers(res["data"], device, sz, args.threads)
    if hasattr(os, "getloadavg"):
        res["machine"]["loadavg_end"] = list(os.getloadavg())
    res.update({
        "data_path_speedup_0_workers": res["data_path"]["speedup_0_workers"],
        "data_path_speedup_workers": res["data_path"]["speedup_workers"],
        "train_step_speedup": res["train_step"]["speedup"],
        "train_step_peak_share": res["train_step"]["peak_share"],
        "epoch_outside_share": res["epoch"]["outside_share"],
        "agreement_passed": res["data_path"]["agreement"]["passed"],
    })
    print()
    print(table(res))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1, sort_keys=True, default=str))
    return res


if __name__ == "__main__":
    main()
