"""A study's grid without Ray or MLflow: trained as one pack in this process, results to JSON.

    python -m study.direct --grid table2 --preset paper --epochs 64 --subset 10000 --seeds 3 --json out.json
    python -m study.direct --grid iqa --preset quick --seeds 3

For a machine that has torch but not the study stack (the lent GPU machine, a notebook), or to run
a whole multi-seed grid as one vmapped model on one GPU. Everything else is the studies': the grids
(`search_spaces`: Table 2, or one ablation's settings on MIX_all3, the matched uniform-LS control
computed as `study.ablate` does), the presets and their scaled lr decay (`search_spaces.presets`),
the trial code (`trainables.packed.run_packed`, which gives each member what its own `run_trial`
would). What it lacks is what Ray and MLflow give: no checkpoints or resume, no fault tolerance, no
run records; a member whose loss turns NaN is reported failed and the rest go on. Use
`study.table2` / `study.ablate` wherever they run. It prints each setting's accuracies as mean ±
sample std over seeds and the differences to the reference (Table 2: IQA-LS - Original per pair;
an ablation: setting - one-hot), paired by seed, with their 95 % t intervals (analysis/stats.py).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from search_spaces import ablate_iqa, ablate_levels, ablate_ratios, ablate_tmap
from search_spaces import table2 as space
from search_spaces.presets import PRESETS, resolve
from trainables import data as data_mod
from trainables import train as T
from trainables.config import ConfigError, TrialConfig
from trainables.packed import run_packed

COLUMNS = ("pristine", "blur_1", "blur_3", "noise_1", "noise_3", "jpeg_1", "jpeg_3", "mean_all")
GRIDS = ("table2", "tmap", "iqa", "ratios", "levels")
ABLATION_TRAIN_SET = ablate_tmap.TRAIN_SET  # study.ablate's default --train-set


def _ms(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.4f}"
    return f"{statistics.mean(xs):.4f}±{statistics.stdev(xs):.4f}"


def _ci(d: dict) -> str:
    if d["ci_low"] != d["ci_low"]:  # NaN: fewer than 2 paired seeds
        return f"{d['diff']:+.4f}"
    return f"{d['diff']:+.4f}[{d['ci_low']:+.3f},{d['ci_high']:+.3f}]"


def members(grid: str, fields: dict, seeds: int) -> tuple[list[tuple[str, TrialConfig]], list[tuple[str, str]]]:
    """(label, config) per member in grid order, and the (reference, compared) label pairs."""
    from types import SimpleNamespace

    from study.runner import seed_fields  # the study commands' rule: the subset follows the seed

    args = SimpleNamespace(seeds=seeds, fixed_subset=False)
    if grid == "table2":
        label = {s: f"{s} {ts} {reg}" for s, (ts, reg) in space.STRATEGIES.items()}
        out = [(label[t["strategy"]], TrialConfig(**{**fields, **t, **seed_fields(args, t["seed"])}))
               for t in space.grid(seeds)]
        return out, [(label[a], label[b]) for a, b in space.PAIRS]
    settings = {"tmap": ablate_tmap.settings, "iqa": ablate_iqa.settings, "ratios": ablate_ratios.settings,
                "levels": ablate_levels.settings}[grid]()
    base = {**fields, "train_set": ABLATION_TRAIN_SET, "strategy": 0}
    matched = {}
    if any(st.get("match") for st in settings):
        from study.ablate import matched_controls  # imports neither Ray nor MLflow
        matched = matched_controls(args, base)
    out = []
    for st in settings:
        for seed in range(seeds):
            cfg = TrialConfig(**{**base, **st["fields"], **seed_fields(args, seed)})
            if st.get("match"):
                cfg = cfg.replace(ls_epsilon=matched[seed][1])
            out.append((st["setting"], cfg))
    labels = list(dict.fromkeys(lab for lab, _ in out))
    ref = next((lab for lab in labels if lab.startswith("onehot")), None)
    return out, [(ref, lab) for lab in labels if ref and lab != ref]


def run(grid: str, fields: dict, seeds: int, progress=print) -> dict:
    """Train the grid's members as one pack with TrialConfig `fields`; per-member results."""
    todo, pairs = members(grid, fields, seeds)
    cfgs = [c for _, c in todo]
    history: list[list[dict]] = [[] for _ in cfgs]
    t0 = time.perf_counter()

    def report(k: int, m: dict) -> None:
        history[k].append({key: m[key] for key in ("epoch", "loss", "train_acc", "mean_t", "lr") if key in m})
        if k == 0:
            progress(f"[{time.perf_counter() - t0:7.1f}s] epoch {m['epoch']}/{cfgs[0].epochs}: member 0 loss "
                     f"{m['loss']:.4f}, train acc {m['train_acc']:.4f}")
    out = run_packed(cfgs, report)
    return {"grid": grid, "wall_s": time.perf_counter() - t0, "pairs": pairs, "members": [
        {"label": lab, "config": c.to_dict(), "result": r, "history": h}
        for (lab, c), r, h in zip(todo, out, history)]}


def summarize(res: dict) -> str:
    by_label: dict[str, list[dict]] = {}
    for m in res["members"]:
        by_label.setdefault(m["label"], [])
        if "error" not in m["result"]:
            by_label[m["label"]].append(m)
    w = 2 + max([26] + [len(lab) for lab in by_label] + [len(f"{lab} - {ref}") for ref, lab in res["pairs"]])
    lines = [f"{'setting':<{w}}{'n':>3}" + "".join(f"{c:>17}" for c in COLUMNS) + f"{'train acc':>17}"]
    for lab, ms in by_label.items():
        if not ms:
            lines.append(f"{lab:<{w}}{0:>3}  (no finished member)")
            continue
        cells = "".join(f"{_ms([m['result'][f'acc_{c}'] for m in ms]):>17}" for c in COLUMNS)
        lines.append(f"{lab:<{w}}{len(ms):>3}{cells}{_ms([m['result']['train_acc'] for m in ms]):>17}")
    lines += ["", "difference to the reference, paired by seed: mean and 95 % t interval (analysis.stats; "
              "n < 2: no interval)"]
    from analysis.stats import paired

    for ref, lab in res["pairs"]:
        a = {m["config"]["seed"]: m for m in by_label.get(ref, [])}
        b = {m["config"]["seed"]: m for m in by_label.get(lab, [])}
        common = sorted(set(a) & set(b))
        if common:
            diffs = [paired({k: a[k]["result"][f"acc_{c}"] for k in common},
                            {k: b[k]["result"][f"acc_{c}"] for k in common}) for c in COLUMNS]
            cells = "".join(f"{_ci(d):>24}" for d in diffs)
            lines.append(f"{f'{lab} - {ref}':<{w}}{len(common):>3}{cells}")
    failed = [m for m in res["members"] if "error" in m["result"]]
    if failed:
        lines.append(f"failed: {[(m['label'], m['config']['seed'], m['result']['error']) for m in failed]}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.direct", description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", default="table2", help=f"which grid: {', '.join(GRIDS)} (default table2; the "
                   f"ablations on {ABLATION_TRAIN_SET} with their default settings)")
    p.add_argument("--preset", default="quick", help=f"schedule preset: {', '.join(PRESETS)} (default quick)")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs (lr decay scales)")
    p.add_argument("--subset", type=int, default=None, help="override the preset's training subset (0 = all)")
    p.add_argument("--test-subset", type=int, default=None, help="override the preset's test subset (0 = all)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per setting (default 1)")
    p.add_argument("--data", default=None, help="data source spec (default ../shared/data/cifar10-jpeg if present, "
                   "else the test fixture)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--json", default=None, help="write configs, per-epoch history and results here")
    args = p.parse_args(argv)
    if args.grid not in GRIDS:
        p.error(f"--grid {args.grid} is not allowed; allowed: {', '.join(GRIDS)}")
    if args.seeds < 1:
        p.error(f"--seeds {args.seeds} is not allowed; allowed: an integer >= 1")
    try:
        device = T.pick_device(args.device)
        fields = resolve(args.preset, epochs=args.epochs, subset=args.subset, test_subset=args.test_subset)
        from study.bench import default_data
        fields.update(data=data_mod.resolve_source(args.data or default_data()), device=str(device))
        TrialConfig(**fields)  # every field checked before any work
    except (T.TrialError, ConfigError, data_mod.DataError, ValueError) as e:
        p.error(str(e).splitlines()[0])
    print(f"study.direct: grid {args.grid} x {args.seeds} seed(s) as one pack on {device}; preset {args.preset}: "
          f"{fields['epochs']} epochs, lr x0.1 every {fields['lr_decay_every']}, subset {fields['subset'] or 'all'}, "
          f"data {fields['data']}", flush=True)
    res = run(args.grid, fields, args.seeds, progress=lambda line: print(line, flush=True))
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
