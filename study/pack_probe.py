"""How long would the paper's Table 2 take on this device? Measure a few epochs and project.

    python -m study.pack_probe [--device cuda] [--data SPEC] [--epochs 2] [--seeds 1] [--json PATH]

Trains the Table 2 grid (9 strategies x --seeds) with the paper preset (all training images of
--data, batch 100, lr 0.1, all 10 x 10k test images) for --epochs epochs twice:
1. packed: all trials as one vmapped model (`trainables.packed.run_packed`, what `study.table2
   --pack on` runs in each Ray trial);
2. alone: strategy 9 (MIX_all3, IQA-LS) by itself (`trainables.train.run_trial`, one unpacked trial).
Then it projects PAPER_EPOCHS epochs: the measured run (loading, the distortion bank, the first
epoch, which pays for cuDNN's algorithm search and allocator growth, the final evaluation) plus the
remaining epochs at the steady pace (the fastest epoch after the first). The unpacked projection is for the trials run
one after another on the device; `study.table2` without packing runs up to 4 per GPU side by side,
which this probe does not measure. It also prints strategy 9's epoch-1 loss in the pack and alone:
on CPU they agree to float32 rounding; on CUDA they drift apart by ~1e-3 over an epoch, because the
grouped and the separate convolutions round differently (TF32 by default in cuDNN) and cuDNN's
backward is not deterministic.

No Ray and no MLflow: it runs where only torch and the trainables' dependencies are installed (the
lent GPU machine). The numbers are for the device it runs on; the JSON holds machine and versions.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from search_spaces import table2 as space
from search_spaces.presets import resolve
from trainables import data as data_mod
from trainables import train as T
from trainables.config import PAPER_EPOCHS, PAPER_LR_DECAY_EVERY, TrialConfig
from trainables.packed import run_packed

ALONE_STRATEGY = 9  # MIX_all3 + IQA-LS: the trial with the most per-epoch data work


def _timed_run(fn) -> tuple[list, float, list[dict]]:
    """Run fn(report) and return (its result, wall seconds, the reported metrics in order)."""
    seen: list[dict] = []
    t0 = time.perf_counter()
    out = fn(seen.append)
    return out, time.perf_counter() - t0, seen


def _summary(epoch_times: list[float], wall: float, members: int, n_images: int, paper_epochs: int) -> dict:
    steady = min(epoch_times[1:] or epoch_times)
    one_off = wall - sum(epoch_times)  # loading, the distortion bank, test sets, the final evaluation
    # the measured run as it was (warm-up epoch included), then the remaining epochs at the steady pace
    projection = wall + (paper_epochs - len(epoch_times)) * steady
    return {"members": members, "epoch_times_s": epoch_times, "steady_epoch_s": steady, "wall_s": wall,
            "one_off_s": one_off, "images_per_s": members * n_images / steady, "paper_projection_s": projection}


def probe(data: str, device: str, epochs: int, seeds: int, cache_dir=None, paper_epochs: int = PAPER_EPOCHS,
          precision: str = "fp32", step_impl: str = "eager", alone: bool = True) -> dict:
    # the paper's decay step, not one scaled to `epochs`: the epochs measured run at lr 0.1, as the
    # paper's first 350 do
    fields = resolve("paper", epochs=epochs, lr_decay_every=PAPER_LR_DECAY_EVERY)
    cfgs = [TrialConfig(**{**fields, **t, "data": data, "device": device, "threads": 0, "precision": precision,
                           "step_impl": step_impl}) for t in space.grid(seeds)]
    k_alone = next(k for k, c in enumerate(cfgs) if c.strategy == ALONE_STRATEGY and c.seed == 0)
    n_images = data_mod.load_split(data, "train", cache_dir).labels.shape[0]

    out, wall, seen = _timed_run(lambda rep: run_packed(cfgs, lambda k, m: rep((k, m)), cache_dir=cache_dir))
    failed = [cfgs[k].strategy for k, r in enumerate(out) if "error" in r]
    if failed:
        raise SystemExit(f"pack_probe: strategies {failed} failed in the pack: {out}")
    pack_times = [m["epoch_time"] for k, m in seen if k == 0]
    res = {"paper_epochs": paper_epochs, "epochs": epochs, "train_images": n_images, "data": data,
           "device": device, "precision": precision, "step_impl": step_impl,
           "packed": _summary(pack_times, wall, len(cfgs), n_images, paper_epochs)}
    res["packed"]["data_share"] = [m["data_share"] for k, m in seen if k == 0]
    res["packed"]["pristine_acc"] = {f"s{cfgs[k].strategy}-seed{cfgs[k].seed}": r["acc_pristine"]
                                     for k, r in enumerate(out)}
    loss_packed = next(m["loss"] for k, m in seen if k == k_alone and m["epoch"] == 1)
    res["epoch1_loss_packed"] = {f"s{cfgs[k].strategy}-seed{cfgs[k].seed}": m["loss"]
                                 for k, m in seen if m["epoch"] == 1}
    if not alone:
        return res

    # alone: data, test sets and distortion bank are memoised in this process and on disk by now, so
    # its one-off cost is lower than the pack's; the pack's one_off_s is the cold figure
    r1, wall1, seen1 = _timed_run(lambda rep: T.run_trial(cfgs[k_alone], rep, cache_dir=cache_dir))
    res["alone"] = _summary([m["epoch_time"] for m in seen1], wall1, 1, n_images, paper_epochs)
    res["alone"]["pristine_acc"] = r1["acc_pristine"]
    loss_alone = next(m["loss"] for m in seen1 if m["epoch"] == 1)
    res["epoch1_loss"] = {"packed": loss_packed, "alone": loss_alone, "abs_diff": abs(loss_packed - loss_alone)}
    # the grid one trial after another, each at the alone trial's pace (an upper bound: the other
    # strategies do less data work than MIX_all3 IQA-LS)
    res["sequential_projection_s"] = len(cfgs) * res["alone"]["paper_projection_s"]
    res["packed_speedup"] = res["sequential_projection_s"] / res["packed"]["paper_projection_s"]
    return res


def _hours(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min"


def report(res: dict) -> str:
    p, a = res["packed"], res.get("alone")
    e = res["epochs"]
    if a is None:
        return (f"pack_probe {res['precision']}/{res['step_impl']}, {p['members']} trials packed: epochs "
                f"{', '.join(f'{t:.2f}' for t in p['epoch_times_s'])} s; steady {p['images_per_s']:,.0f} training "
                f"images/s; data share {', '.join(f'{v:.3f}' for v in p['data_share'])}; projected paper schedule "
                f"{_hours(p['paper_projection_s'])}")
    lines = [f"pack_probe on {res['machine']['device_name']} ({res['device']}), torch {res['machine']['torch']}, "
             f"{res['train_images']} training images, {e} epoch(s) measured, projected to {res['paper_epochs']}",
             f"  packed, {p['members']} trials: epochs {', '.join(f'{t:.1f}' for t in p['epoch_times_s'])} s; "
             f"steady {p['steady_epoch_s']:.2f} s = {p['images_per_s']:,.0f} training images/s; one-off "
             f"{p['one_off_s']:.1f} s (cold cache)",
             f"  alone, strategy {ALONE_STRATEGY}: epochs {', '.join(f'{t:.1f}' for t in a['epoch_times_s'])} s; "
             f"steady {a['steady_epoch_s']:.2f} s = {a['images_per_s']:,.0f} training images/s; one-off "
             f"{a['one_off_s']:.1f} s (warm cache)",
             f"  epoch-1 loss of strategy {ALONE_STRATEGY}: packed {res['epoch1_loss']['packed']:.6f}, alone "
             f"{res['epoch1_loss']['alone']:.6f} (|diff| {res['epoch1_loss']['abs_diff']:.1e})",
             f"  pristine accuracy after {e} epoch(s): packed "
             + ", ".join(f"{k.split('-')[0]} {v:.3f}" for k, v in p["pristine_acc"].items())
             + f"; alone {a['pristine_acc']:.3f}",
             f"  projected paper schedule: packed {_hours(p['paper_projection_s'])}; the same {p['members']} trials "
             f"one after another {_hours(res['sequential_projection_s'])} ({res['packed_speedup']:.1f}x)"]
    return "\n".join(lines)


def main(argv=None) -> int:
    from study.bench import default_data

    p = argparse.ArgumentParser(prog="python -m study.pack_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--data", default=None, help="data source spec (default ../shared/data/cifar10-jpeg if present, "
                   "else the test fixture)")
    p.add_argument("--epochs", type=int, default=2, help="epochs to measure (default 2: one warm-up, one steady)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per strategy (default 1: 9 trials)")
    p.add_argument("--paper-epochs", type=int, default=PAPER_EPOCHS, help=f"project to this many epochs "
                   f"(default {PAPER_EPOCHS}, Sec. 4.2)")
    p.add_argument("--cache-dir", default=None, help="distortion-bank cache (default trainables' own)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    for name in ("epochs", "seeds", "paper_epochs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)} is not allowed; allowed: an integer >= 1")
    if args.epochs > args.paper_epochs:
        p.error(f"--epochs {args.epochs} is not allowed; allowed: at most --paper-epochs ({args.paper_epochs})")
    try:
        device = T.pick_device(args.device)  # refuses a CUDA device that is not there, before any work
    except T.TrialError as e:
        p.error(str(e))
    data = args.data or default_data()
    res = probe(data, str(device), args.epochs, args.seeds, args.cache_dir, args.paper_epochs)
    res["machine"] = {"device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                      "torch": torch.__version__, "cuda": torch.version.cuda}
    print(report(res))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
