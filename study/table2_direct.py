"""Table 2 without Ray or MLflow: the grid trained as packs in this process, results to JSON.

    python -m study.table2_direct --preset paper --epochs 64 --subset 10000 --seeds 3 --json out.json

For a machine that has torch but not the study stack (the lent GPU machine, a notebook), or to run
a whole multi-seed Table 2 as one vmapped model on one GPU. Everything else is `study.table2`'s: the
grid (`search_spaces.table2`), the presets and their scaled lr decay (`search_spaces.presets`), the
trial code (`trainables.packed.run_packed`, which gives each member what its own `run_trial`
would). What it lacks is what Ray and MLflow give: no checkpoints or resume, no fault tolerance,
no run records; a member whose loss turns NaN is reported failed and the rest go on. Use
`study.table2` wherever it runs; this prints the same accuracies per strategy as mean ± sample std
over seeds, and the IQA-LS - Original differences paired by seed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from search_spaces import table2 as space
from search_spaces.presets import PRESETS, resolve
from trainables import train as T
from trainables.config import ConfigError, TrialConfig
from trainables.packed import run_packed

COLUMNS = ("pristine", "blur_1", "blur_3", "noise_1", "noise_3", "jpeg_1", "jpeg_3", "mean_all")


def _ms(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.4f}"
    return f"{statistics.mean(xs):.4f}±{statistics.stdev(xs):.4f}"


def run(fields: dict, seeds: int, progress=print) -> dict:
    """Train the grid (9 strategies x seeds) as one pack with TrialConfig `fields`; per-member results."""
    cfgs = [TrialConfig(**{**fields, **t}) for t in space.grid(seeds)]
    history: list[list[dict]] = [[] for _ in cfgs]
    t0 = time.perf_counter()

    def report(k: int, m: dict) -> None:
        history[k].append({key: m[key] for key in ("epoch", "loss", "train_acc", "mean_t", "lr") if key in m})
        if k == 0:
            progress(f"[{time.perf_counter() - t0:7.1f}s] epoch {m['epoch']}/{cfgs[0].epochs}: member 0 loss "
                     f"{m['loss']:.4f}, train acc {m['train_acc']:.4f}")
    out = run_packed(cfgs, report)
    return {"wall_s": time.perf_counter() - t0, "members": [
        {"config": c.to_dict(), "result": r, "history": h} for c, r, h in zip(cfgs, out, history)]}


def summarize(res: dict) -> str:
    by_strategy: dict[int, list[dict]] = {}
    for m in res["members"]:
        if "error" not in m["result"]:
            by_strategy.setdefault(m["config"]["strategy"], []).append(m)
    head = f"{'strategy':<26}{'n':>3}" + "".join(f"{c:>17}" for c in COLUMNS) + f"{'train acc':>17}"
    lines = [head]
    for s, (ts, reg) in space.STRATEGIES.items():
        ms = by_strategy.get(s, [])
        if not ms:
            lines.append(f"{f'{s} {ts} {reg}':<26}{0:>3}  (no finished member)")
            continue
        cells = "".join(f"{_ms([m['result'][f'acc_{c}'] for m in ms]):>17}" for c in COLUMNS)
        lines.append(f"{f'{s} {ts} {reg}':<26}{len(ms):>3}{cells}{_ms([m['result']['train_acc'] for m in ms]):>17}")
    lines += ["", "IQA-LS - Original, paired by seed (mean±std over seeds):"]
    for a, b in space.PAIRS:
        seeds_a = {m["config"]["seed"]: m for m in by_strategy.get(a, [])}
        seeds_b = {m["config"]["seed"]: m for m in by_strategy.get(b, [])}
        common = sorted(set(seeds_a) & set(seeds_b))
        if not common:
            continue
        cells = "".join(f"{_ms([seeds_b[k]['result'][f'acc_{c}'] - seeds_a[k]['result'][f'acc_{c}'] for k in common]):>17}"
                        for c in COLUMNS)
        lines.append(f"{f'{b} - {a}':<26}{len(common):>3}{cells}")
    failed = [m for m in res["members"] if "error" in m["result"]]
    if failed:
        lines.append(f"failed: {[(m['config']['strategy'], m['config']['seed'], m['result']['error']) for m in failed]}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.table2_direct", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="quick", help=f"schedule preset: {', '.join(PRESETS)} (default quick)")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs (lr decay scales)")
    p.add_argument("--subset", type=int, default=None, help="override the preset's training subset (0 = all)")
    p.add_argument("--test-subset", type=int, default=None, help="override the preset's test subset (0 = all)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per strategy (default 1)")
    p.add_argument("--data", default=None, help="data source spec (default ../shared/data/cifar10-jpeg if present, "
                   "else the test fixture)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--json", default=None, help="write configs, per-epoch history and results here")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds {args.seeds} is not allowed; allowed: an integer >= 1")
    try:
        device = T.pick_device(args.device)
        fields = resolve(args.preset, epochs=args.epochs, subset=args.subset, test_subset=args.test_subset)
        from study.bench import default_data
        fields.update(data=args.data or default_data(), device=str(device))
        TrialConfig(**fields)  # every field checked before any work
    except (T.TrialError, ConfigError, ValueError) as e:
        p.error(str(e).splitlines()[0])
    print(f"table2_direct: 9 strategies x {args.seeds} seed(s) as one pack on {device}; preset {args.preset}: "
          f"{fields['epochs']} epochs, lr x0.1 every {fields['lr_decay_every']}, subset {fields['subset'] or 'all'}, "
          f"data {fields['data']}", flush=True)
    res = run(fields, args.seeds, progress=lambda line: print(line, flush=True))
    res.update(fields=fields, seeds=args.seeds, torch=torch.__version__,
               device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1, sort_keys=True, default=str))
    print(f"\nwall time {res['wall_s']:.0f} s on {res['device_name']}, torch {res['torch']}")
    print(summarize(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
