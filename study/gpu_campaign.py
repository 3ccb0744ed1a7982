"""`python -m study.gpu_campaign`: a lent GPU turned into a recorded Table 2 in one call (issue 18).

    python -m study.gpu_campaign --data DIR --out DIR [--back DIR] --budget-s 540 [--smoke]

In order, each step logged as it ends and all of it in <back>/campaign.json (rewritten after each):
1. correctness: per member epoch-1 loss of the captured step against eager (tf32), then of bf16
   against fp32 with the step that passed; a path that disagrees is not used, and the log says so;
2. speed: the pack of 9 (one seed) and of 27 (three seeds) at the paper preset's batch on the full
   training set: training images/s of a whole steady epoch, data-path share, FLOP share of the bf16
   matmul rate; the old path (tf32, eager) beside the chosen one (CIFAR-10-C is regenerated into the
   data cache beside step 1, in a child process, and waited for before this step); then the pack
   levers on both packs, old beside new (bench.gpu_check.lever_times: an epoch's data path per member
   vs batched, the final evaluation per member vs vmapped), and the pack's convolutions as vmap runs
   them (grouped) beside one per member and one wide convolution (bench.gpu_check.conv_formulations);
3. the largest rung of the ladder (search_spaces.presets.LADDER) that the measured speed fits into
   the budget left with a 20 % margin (`choose_rung`), run as `study.table2 --executor local` into a
   SQLite store under --out, all 9 strategies x 3 seeds, with --cifar10c regenerate, in a subprocess
   stopped (SIGTERM: its runs are marked KILLED) before the budget ends;
4. `study.records export` of the study and its tables packed as <back>/records.tar.gz, beside
   campaign.json and campaign.log: three files, within the device tool's 8 files / 64 MiB.
--out holds the work (store, checkpoints, tables, and state.json: the plan and the study's command);
--back (default <out>/back; $OUT on the device) only what comes back.

A short device window is spent on the study, not on measuring again:
- `--checks-from FILE` takes steps 1 and 2 from an earlier campaign.json of the same GPU model and
  torch version (anything else: they are measured, and the log says why);
- `--rung NAME` runs that rung even where the plan says it does not fit: the study is stopped at the
  cap, its partial records come back, and a next call with `--resume` (the same --out, on the same
  machine while it is still held) finishes it from its checkpoints and brings the whole back.
`--smoke` runs every step on a CPU at toy sizes (tests/fixtures/cifar10-mini, strategies 1 and 9,
2 seeds, the `smoke` rung): the rehearsal that CI runs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from search_spaces.presets import LADDER, resolve
from bench.gpu_check import (MFLOP_PER_IMAGE, conv_formulations, conv_line, grid_cfgs, lever_line, lever_times,
                             matmul_rate, speed_summary, timed_run)
from trainables import data as data_mod
from trainables.config import PAPER_EPOCHS, PAPER_LR_DECAY_EVERY
from trainables.packed import run_packed

REPO = Path(__file__).resolve().parents[1]
MARGIN = 0.2  # issue 18: the rung's estimate x 1.2 must fit into the budget left
TOL_STEP = {"cuda": 1e-3, "cpu": 1e-6}  # captured vs eager epoch-1 loss (cuDNN's backward is not deterministic)
TOL_BF16 = 2e-2  # bf16 vs fp32 epoch-1 loss: a wrong cast or an overflow is far off or NaN, rounding is not
STARTUP_S = 60.0  # the study process before its first epoch: imports, store migrations, preflight probe
RESERVE_S = 30.0  # export and packing after the study
STOP_GRACE_S = 45.0  # SIGTERM -> exit: the runs are marked KILLED before the process ends
LEVER_MIN_SPEEDUP = 1.1  # a pack lever is used by the study only if it is at least this much faster
LEVER_TOL = {"data_targets_max_abs": 1e-6, "eval_prob_max_abs": 1e-4, "eval_acc_max_abs": 1e-3}  # and agrees
C10C_SETS = 91  # 18 regenerated corruptions x 5 severities + clean (trainables.robustness)


@dataclass(frozen=True)
class Sizes:
    strategies: tuple  # Table 2 rows in every step
    seeds: int  # the study's seeds; the large speed pack has this many members per strategy
    check_subset: int  # training images of the correctness runs (one epoch)
    check_test: int  # test images per set there
    speed_epochs: int  # epochs per speed row; the last one is the steady epoch
    speed_test: int  # test images per set of a speed row (its final evaluation is not timed)
    ladder: tuple  # the rungs, smallest first
    c10c_subset: int  # --cifar10c-subset of the study
    lever_reps: int  # timed repeats of each pack lever, old and new (after one warm-up each)
    lever_seeds: tuple  # the packs (seeds per strategy) whose levers are timed
    conv_batch: int  # images per member of the convolution formulations' timing (the paper's batch)


FULL = Sizes(tuple(range(1, 10)), 3, 10_000, 500, 2, 1000, LADDER, 2000, 3, (1, 3), 100)
SMOKE = Sizes((1, 9), 2, 100, 50, 1, 50, ("smoke",), 20, 1, (1,), 10)  # the rehearsal: the levers of one pack


class Log:
    """Lines to stdout and to <back>/campaign.log, stamped with seconds since the start."""

    def __init__(self, path: Path):
        self.t0, self.f = time.monotonic(), open(path, "a", buffering=1)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def __call__(self, line: str, stamp: bool = True) -> None:
        text = f"[{self.elapsed():6.0f}s] {line}" if stamp else line
        print(text, flush=True)
        self.f.write(text + "\n")


def rel_diffs(a: list[float], b: list[float]) -> float:
    """Largest |a - b| / |b| over members; inf when any value is not finite (a NaN never passes)."""
    if not all(math.isfinite(v) for v in a + b):
        return math.inf
    return max(abs(x - y) / abs(y) for x, y in zip(a, b))


def epoch1_losses(data: str, device: str, sz: Sizes, impl: str, precision: str) -> list[float]:
    """Each member's epoch-1 loss, the strategies of `sz` packed (one seed), `impl` and `precision`."""
    cfgs = grid_cfgs(data, device, sz.strategies, 1, epochs=1, subset=sz.check_subset,
                      test_subset=sz.check_test, precision=precision, step_impl=impl)
    return [float(r.get("loss", math.nan)) for r in run_packed(cfgs)]


def check_paths(data: str, device: str, sz: Sizes, log: Log) -> dict:
    """The step and precision the study will use: the fast ones where they agree with the reference."""
    cuda = device == "cuda"
    fast, ref = ("cuda_graph", "tf32") if cuda else ("eager", "fp32")  # a CPU rehearses the same calls
    out = {"step": {"fast": fast, "reference": "eager", "precision": ref, "tol": TOL_STEP[device]}}
    out["step"]["loss_fast"] = epoch1_losses(data, device, sz, fast, ref)
    out["step"]["loss_reference"] = epoch1_losses(data, device, sz, "eager", ref)
    out["step"]["max_rel_diff"] = d = rel_diffs(out["step"]["loss_fast"], out["step"]["loss_reference"])
    out["step_impl"] = fast if d < TOL_STEP[device] else "eager"
    log(f"correctness: {fast} vs eager ({ref}), {len(sz.strategies)} members, epoch-1 loss max |rel diff| "
        f"{d:.1e} (tol {TOL_STEP[device]:.0e}): " + ("ok" if d < TOL_STEP[device] else
                                                     "MISMATCH, the study falls back to eager"))
    bf = {"precision": "bf16", "reference": "fp32", "tol": TOL_BF16}
    bf["loss_bf16"] = epoch1_losses(data, device, sz, out["step_impl"], "bf16")
    bf["loss_fp32"] = epoch1_losses(data, device, sz, out["step_impl"], "fp32")
    bf["max_rel_diff"] = d = rel_diffs(bf["loss_bf16"], bf["loss_fp32"])
    out["bf16"] = bf
    # a CPU study runs fp32 (bit-reproducible; bf16 is a GPU speed lever), whatever the check says
    out["precision"] = ("bf16" if d < TOL_BF16 else "tf32") if cuda else "fp32"
    log(f"correctness: bf16 vs fp32 ({out['step_impl']}), epoch-1 loss max |rel diff| {d:.1e} (tol {TOL_BF16:.0e}): "
        + ("ok" if d < TOL_BF16 else "MISMATCH") + f"; the study uses {out['step_impl']} + {out['precision']}")
    return out


def speed_row(data: str, device: str, sz: Sizes, seeds: int, precision: str, impl: str, peak) -> dict:
    """One pack at the paper preset's batch (100 per member) on the full training set, lr 0.1."""
    fields = resolve("paper", epochs=sz.speed_epochs, lr_decay_every=PAPER_LR_DECAY_EVERY)
    cfgs = grid_cfgs(data, device, sz.strategies, seeds, **{**fields, "test_subset": sz.speed_test},
                      precision=precision, step_impl=impl)
    n = data_mod.load_split(data, "train").labels.shape[0]
    out, wall, seen = timed_run(lambda rep: run_packed(cfgs, lambda k, m: rep((k, m))))
    failed = [k for k, r in enumerate(out) if "error" in r]
    if failed:
        raise RuntimeError(f"speed: members {failed} of the pack of {len(cfgs)} failed: {out[failed[0]]['error']}")
    first = [m for k, m in seen if k == 0]
    s = speed_summary([m["epoch_time"] for m in first], wall, len(cfgs), n, PAPER_EPOCHS)
    return {"members": len(cfgs), "precision": precision, "step_impl": impl, "train_images": n,
            "images_per_s": s["images_per_s"], "images_per_s_per_member": s["images_per_s"] / len(cfgs),
            "data_share": first[-1]["data_share"], "epoch_times_s": s["epoch_times_s"], "one_off_s": s["one_off_s"],
            "flop_share": s["images_per_s"] * MFLOP_PER_IMAGE * 1e6 / peak if peak else None,
            "paper_seed_min": PAPER_EPOCHS * n * len(sz.strategies) / s["images_per_s"] / 60}


def lever_row(data: str, device: str, sz: Sizes, seeds: int, precision: str, impl: str) -> dict:
    """The pack levers (config pack_data, pack_eval) old beside new on the speed rows' pack of `seeds`:
    the same configs (the data, memoised by the rows, is not loaded again)."""
    fields = resolve("paper", epochs=sz.speed_epochs, lr_decay_every=PAPER_LR_DECAY_EVERY)
    cfgs = grid_cfgs(data, device, sz.strategies, seeds, **{**fields, "test_subset": sz.speed_test},
                     precision=precision, step_impl=impl)
    return lever_times(cfgs, reps=sz.lever_reps)


def measure_speed(data: str, device: str, sz: Sizes, paths: dict, log: Log) -> dict:
    """The old path and the chosen one for the pack of one seed, the chosen one for all seeds; then the
    pack levers on the chosen path for both packs (`res["levers"]`)."""
    peak = matmul_rate(torch.device(device)) if device == "cuda" else None
    res = {"bf16_matmul_flops": peak, "rows": []}
    chosen = (paths["precision"], paths["step_impl"])
    for seeds, prec, impl in ((1, "tf32", "eager"), (1, *chosen), (sz.seeds, *chosen)):
        if res["rows"] and (seeds, prec, impl) == (1, "tf32", "eager"):  # both fell back: the old path
            res["rows"].append(res["rows"][0])
            continue
        row = speed_row(data, device, sz, seeds, prec, impl, peak)
        res["rows"].append(row)
        flops = f", FLOP share {row['flop_share']:.1%}" if row["flop_share"] is not None else ""
        log(f"speed: pack of {row['members']:>2} {prec}/{impl:<10} {row['images_per_s']:>11,.0f} images/s "
            f"({row['images_per_s_per_member']:,.0f} per member), data share {row['data_share']:.3f}{flops}, "
            f"paper schedule per seed {row['paper_seed_min']:.1f} min")
        if device == "cuda":
            torch.cuda.empty_cache()
    res["levers"] = []
    for seeds in sz.lever_seeds:
        res["levers"].append(lever_row(data, device, sz, seeds, *chosen))
        log("speed: " + lever_line(res["levers"][-1]))
        if device == "cuda":
            torch.cuda.empty_cache()
    res["conv"] = measure_convs(device, sz, paths, log)
    return res


def measure_convs(device: str, sz: Sizes, paths: dict, log: Log) -> list[dict]:
    """The pack's convolution formulations (bench.gpu_check.conv_formulations) for the packs of the
    levers: seconds on a GPU, so they run even when steps 1-2 come from a record (--checks-from)."""
    out = []
    for seeds in sz.lever_seeds:
        out.append(conv_formulations(device, len(sz.strategies) * seeds, sz.conv_batch, sz.lever_reps,
                                     bf16=paths["precision"] == "bf16"))
        log("speed: " + conv_line(out[-1]))
    return out


def choose_levers(levers: list[dict], pack_size: int) -> dict:
    """The study's --pack-data and --pack-eval from the speed step's lever rows (the row of the study's
    pack size, else the largest pack timed): the new path only where it is LEVER_MIN_SPEEDUP faster and
    agrees with the old one (the batched epoch's images equal, its targets and the vmapped evaluation
    within LEVER_TOL); otherwise the old path. `why` says which figure decided."""
    out = {"pack_data": "per_member", "pack_eval": "per_member", "why": "no lever measured"}
    if not levers:
        return out
    row = next((r for r in levers if r["members"] == pack_size), max(levers, key=lambda r: r["members"]))
    a, why = row["agreement"], []
    if (row["data_speedup"] >= LEVER_MIN_SPEEDUP and a["data_images_equal"]
            and a["data_targets_max_abs"] <= LEVER_TOL["data_targets_max_abs"]):
        out["pack_data"] = "batched"
    why.append(f"data path {row['data_speedup']:.2f}x, images equal {a['data_images_equal']}")
    if (row["eval_speedup"] >= LEVER_MIN_SPEEDUP and a["eval_prob_max_abs"] <= LEVER_TOL["eval_prob_max_abs"]
            and a["eval_acc_max_abs"] <= LEVER_TOL["eval_acc_max_abs"]):
        out["pack_eval"] = "vmap"
    why.append(f"evaluation {row['eval_speedup']:.2f}x, probabilities max |diff| {a['eval_prob_max_abs']:.1e}")
    out["why"] = f"pack of {row['members']}: " + "; ".join(why)
    return out


def checks_from(path: str, setup: dict) -> tuple[dict | None, str]:
    """Steps 1 and 2 (`correctness`, `speed`) of an earlier campaign.json, if it ran on the same GPU
    model and torch version as `setup`; else (None, why they are measured again)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        return None, f"--checks-from {path}: not readable ({type(e).__name__}); measuring"
    then = doc.get("setup", {})
    if not doc.get("correctness") or not doc.get("speed", {}).get("rows"):
        return None, f"--checks-from {path}: it holds no correctness and speed figures; measuring"
    for key in ("device_name", "torch"):
        if then.get(key) != setup[key]:
            return None, (f"--checks-from {path}: {key} {then.get(key)!r} there, {setup[key]!r} here; measuring")
    return {"correctness": doc["correctness"], "speed": doc["speed"]}, \
        f"steps 1-2 from {path} ({then['device_name']}, torch {then['torch']}): not measured again"


def warm_cifar10c(data: str, subset: int) -> float:
    """Regenerate the study's CIFAR-10-C subset into the data cache (the study then loads it); seconds."""
    from trainables import robustness
    from trainables.config import TrialConfig
    t0 = time.perf_counter()
    robustness.load(TrialConfig(data=data, cifar10c="regenerate", cifar10c_subset=subset), memo=False)
    return time.perf_counter() - t0


def child_env() -> dict:
    """This process's environment with the repository importable (a child runs from REPO)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def start_cifar10c(data: str, sz: Sizes) -> subprocess.Popen:
    """The CIFAR-10-C regeneration (CPU work) in a child while the correctness runs use the GPU; it
    is waited for before the speed step, whose timings it must not share the CPU with."""
    code = "import sys; from study.gpu_campaign import warm_cifar10c as w; print(w(sys.argv[1], int(sys.argv[2])))"
    return subprocess.Popen([sys.executable, "-c", code, data, str(sz.c10c_subset)], cwd=REPO, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_cifar10c(proc: subprocess.Popen, sz: Sizes, log: Log) -> dict:
    t0 = time.monotonic()
    out, err = proc.communicate()
    res = {"rc": proc.returncode, "waited_s": time.monotonic() - t0}
    if proc.returncode == 0:
        res["build_s"] = float(out.split()[-1])
        log(f"CIFAR-10-C: {sz.c10c_subset} test images regenerated into the cache in {res['build_s']:.0f} s "
            f"(beside the correctness runs; waited {res['waited_s']:.0f} s more)")
    else:  # the study regenerates them itself then, inside its own time
        log(f"CIFAR-10-C: the regeneration failed (exit code {proc.returncode}): {err.strip().splitlines()[-1:]}")
    return res


def choose_rung(rungs: dict, images_per_s: float, members: int, fixed_s: float, left_s: float,
                margin: float = MARGIN) -> tuple:
    """(the largest rung whose estimate x (1 + margin) fits into `left_s`, or None; every estimate).

    `rungs`: name -> (epochs, training images), smallest first; a rung's estimate is `fixed_s` plus
    its epochs of `members` x images at `images_per_s` (the measured rate of the pack the study runs).
    """
    if images_per_s <= 0 or left_s <= 0:
        raise ValueError(f"images_per_s={images_per_s}, left_s={left_s}; allowed: both > 0")
    est = {name: fixed_s + e * members * n / images_per_s for name, (e, n) in rungs.items()}
    fits = [name for name in rungs if est[name] * (1 + margin) <= left_s]
    return (fits[-1] if fits else None), est


def pick_pack(one: dict, all_: dict) -> dict:
    """The speed row of the pack the study trains in: every member trains the same images either way
    (packs of one seed's strategies one after another, or every seed in one pack), so the pack with
    the higher images/s in all finishes first (the first H200 campaign: 27 at 119,917 beats 9 at
    107,909, though each of its members trains at 4,441 against 11,990 images/s)."""
    return all_ if all_["images_per_s"] >= one["images_per_s"] else one


def plan_study(data: str, sz: Sizes, speed: dict, left_s: float) -> dict:
    """The pack size (pick_pack) and the rung."""
    row = pick_pack(speed["rows"][1], speed["rows"][2])
    members = len(sz.strategies) * sz.seeds
    n_train = data_mod.load_split(data, "train").labels.shape[0]
    n_test = data_mod.load_split(data, "test").labels.shape[0]
    packs = -(-members // row["members"])
    rungs = {}
    for name in sz.ladder:
        f = resolve(name)
        rungs[name] = (f["epochs"], min(f["subset"] or n_train, n_train))
    tests = min(resolve(sz.ladder[0])["test_subset"] or n_test, n_test)
    # forward passes of the final evaluations counted at the training rate: ~3x too many seconds
    evals = members * (10 * tests + C10C_SETS * min(sz.c10c_subset, n_test)) / row["images_per_s"]
    fixed = STARTUP_S + packs * row["one_off_s"] + evals
    rung, est = choose_rung(rungs, row["images_per_s"], members, fixed, left_s)
    return {"rung": rung, "estimates_s": est, "fixed_s": fixed, "left_s": left_s, "pack_size": row["members"],
            "packs": packs, "images_per_s": row["images_per_s"]}


def study_command(data: str, device: str, sz: Sizes, paths: dict, plan: dict, work: Path, name: str) -> list[str]:
    """study.table2 for the plan: its rung, pack size and levers, into the work folder's store."""
    return [sys.executable, "-m", "study.table2", "--executor", "local", "--device", device, "--preset", plan["rung"],
            "--seeds", str(sz.seeds), "--strategies", ",".join(map(str, sz.strategies)), "--data", data,
            "--name", name, "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}", "--storage", str(work / "checkpoints"),
            "--out", str(work / "tables"), "--cifar10c", "regenerate", "--cifar10c-subset", str(sz.c10c_subset),
            "--pack", "on", "--pack-size", str(plan["pack_size"]), "--precision", paths["precision"],
            "--step-impl", paths["step_impl"], "--pack-data", plan["levers"]["pack_data"],
            "--pack-eval", plan["levers"]["pack_eval"], "--progress-every", "30"]


def run_command(cmd: list[str], plan: dict, name: str, cap_s: float, log: Log) -> dict:
    """The study's command in a subprocess, its output into the log; SIGTERM at `cap_s` seconds."""
    log("study: " + " ".join(cmd[1:]))
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reader = threading.Thread(target=lambda: [log("  | " + ln.rstrip(), stamp=False) for ln in proc.stdout])
    reader.start()
    stopped = False
    try:
        proc.wait(timeout=max(1.0, cap_s))
    except subprocess.TimeoutExpired:
        stopped = True
        log(f"study: still running at its cap ({cap_s:.0f} s): SIGTERM (its unfinished runs are marked KILLED)")
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    reader.join()
    res = {"name": name, "rc": proc.returncode, "wall_s": time.monotonic() - t0, "stopped_at_cap": stopped,
           "estimate_s": plan["estimates_s"][plan["rung"]], "command": cmd[1:]}
    log(f"study: exit code {res['rc']} after {res['wall_s']:.0f} s (estimated {res['estimate_s']:.0f} s)")
    return res


def bring_back(work: Path, back: Path, name: str, log: Log) -> dict:
    """`study.records export` of the study, with its tables, as <back>/records.tar.gz."""
    import shutil

    from study.records import main as records_main
    shutil.rmtree(work / "export", ignore_errors=True)  # an earlier call's copy (--resume): the store is the record
    rc = records_main(["export", "--study", name, "--out", str(work / "export"),
                       "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}"])
    if rc != 0:
        log(f"export: failed (exit code {rc}); campaign.json and campaign.log come back without records")
        return {"rc": rc}
    with tarfile.open(back / "records.tar.gz", "w:gz") as tar:
        tar.add(work / "export", arcname=f"{name}/export")
        if (work / "tables").is_dir():
            tar.add(work / "tables", arcname=f"{name}/tables")
    size = (back / "records.tar.gz").stat().st_size
    log(f"export: {name} -> records.tar.gz ({size / 2**20:.1f} MiB)")
    return {"rc": 0, "file": "records.tar.gz", "bytes": size}


def campaign(args, log: Log, save) -> int:
    """The four steps; `save(key, value)` records each result in campaign.json as soon as it exists."""
    sz = SMOKE if args.smoke else FULL
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if device == "cpu" and not args.smoke:
        log("error: no CUDA device is visible; a CPU runs the rehearsal only (--smoke)")
        return 2
    data = str(data_mod.resolve_source(args.data))
    work = Path(args.out).resolve() / "work"
    setup = {"device": device, "device_name": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
             "torch": torch.__version__, "data": data, "data_checksum": data_mod.split_checksum(data, "train"),
             "budget_s": args.budget_s, "sizes": asdict(sz)}
    save("setup", setup)
    if args.resume:
        return resume(work, Path(args.back), args.budget_s, log, save)
    work.mkdir(parents=True, exist_ok=True)
    prior = None
    if args.checks_from:
        prior, why = checks_from(args.checks_from, setup)
        log(why)
    c10c = start_cifar10c(data, sz)
    try:
        paths = prior["correctness"] if prior else check_paths(data, device, sz, log)
    finally:
        save("cifar10c", finish_cifar10c(c10c, sz, log))
    save("correctness", paths)
    if prior:
        speed = {**prior["speed"], "from": args.checks_from, "conv": measure_convs(device, sz, paths, log)}
    else:
        speed = measure_speed(data, device, sz, paths, log)
    save("speed", speed)
    plan = plan_study(data, sz, speed, args.budget_s - log.elapsed() - RESERVE_S)
    plan["levers"] = choose_levers(speed.get("levers", []), plan["pack_size"])
    log(f"plan: --pack-data {plan['levers']['pack_data']} --pack-eval {plan['levers']['pack_eval']} "
        f"({plan['levers']['why']})")
    shown = ", ".join(f"{k} {v:.0f} s" for k, v in plan["estimates_s"].items())
    if args.rung:
        plan["chosen_by"] = "--rung"
        if plan["rung"] != args.rung:
            log(f"plan: --rung {args.rung} (the plan chose {plan['rung']}); estimated "
                f"{plan['estimates_s'][args.rung]:.0f} s against {plan['left_s']:.0f} s left: it is stopped at "
                "the cap if it runs longer, and a next call with --resume finishes it")
        plan["rung"] = args.rung
    save("plan", plan)
    if plan["rung"] is None:
        log(f"plan: no rung fits {plan['left_s']:.0f} s with a {MARGIN:.0%} margin ({shown}); no study run")
        return 1
    log(f"plan: rung {plan['rung']} in packs of {plan['pack_size']} ({shown}; {plan['left_s']:.0f} s left)")
    name = args.name or f"campaign-{plan['rung']}-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = study_command(data, device, sz, paths, plan, work, name)
    (work / "state.json").write_text(json.dumps({"name": name, "plan": plan, "command": cmd[1:]}, indent=1))
    study = run_command(cmd, plan, name, args.budget_s - log.elapsed() - RESERVE_S - STOP_GRACE_S, log)
    save("study", study)
    save("export", bring_back(work, Path(args.back), name, log))
    if study["stopped_at_cap"]:
        log(f"study: stopped at the cap; its partial records came back. To finish it: the same command with "
            f"--resume (the same --out, on this machine while it is held)")
    return 0 if study["rc"] == 0 else 1


def resume(work: Path, back: Path, budget_s: float, log: Log, save) -> int:
    """--resume: the study an earlier call of this --out started (work/state.json), with study.table2's
    own --resume (it refuses any change of what defines the study, and trains only what is left)."""
    state_path = work / "state.json"
    if not state_path.is_file():
        log(f"error: --resume: {state_path} does not exist (no earlier call started a study in this --out)")
        return 2
    state = json.loads(state_path.read_text())
    save("plan", state["plan"])
    log(f"resume: study {state['name']}, rung {state['plan']['rung']}")
    cmd = [sys.executable, *state["command"], "--resume"]
    study = run_command(cmd, state["plan"], state["name"], budget_s - log.elapsed() - RESERVE_S - STOP_GRACE_S, log)
    save("study", study)
    save("export", bring_back(work, back, state["name"], log))
    return 0 if study["rc"] == 0 else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m study.gpu_campaign", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="data source (the offline copy carried to the GPU machine)")
    p.add_argument("--out", required=True, help="work folder: store, checkpoints, tables")
    p.add_argument("--back", default=None, help="what comes back: campaign.json, campaign.log, records.tar.gz "
                   "(default <out>/back; $OUT on the device machine)")
    p.add_argument("--budget-s", type=float, default=540.0, help="seconds the whole campaign may take (default 540)")
    p.add_argument("--name", default=None, help="study name (default campaign-<rung>-<date>)")
    p.add_argument("--smoke", action="store_true", help="the CPU rehearsal: toy sizes, the smoke rung")
    p.add_argument("--checks-from", default=None, help="an earlier campaign.json: its correctness and speed "
                   "figures are used (not measured again) if it ran on the same GPU model and torch version")
    p.add_argument("--rung", default=None, help="run this rung of the ladder even if the plan says it does not "
                   "fit (stopped at the cap; a next call with --resume finishes it)")
    p.add_argument("--resume", action="store_true", help="finish the study an earlier call started in this --out "
                   "(its state.json), then bring the whole back")
    args = p.parse_args(argv)
    if args.budget_s <= 0:
        p.error(f"--budget-s {args.budget_s} is not allowed; allowed: seconds > 0")
    ladder = (SMOKE if args.smoke else FULL).ladder
    if args.rung is not None and args.rung not in ladder:
        p.error(f"--rung {args.rung} is not allowed; allowed: {', '.join(ladder)}")
    if args.resume and (args.rung or args.checks_from or args.name):
        p.error("--resume takes the study, its rung and its checks from the earlier call; allowed with it: "
                "--data, --out, --back, --budget-s, --smoke")
    if args.checks_from and not Path(args.checks_from).is_file():
        p.error(f"--checks-from {args.checks_from}: no such file; allowed: an earlier campaign.json")
    args.back = args.back or str(Path(args.out) / "back")
    back = Path(args.back)
    back.mkdir(parents=True, exist_ok=True)
    log, doc = Log(back / "campaign.log"), {}

    def save(key: str, value) -> None:
        doc[key] = value
        doc["elapsed_s"] = log.elapsed()
        (back / "campaign.json").write_text(json.dumps(doc, indent=1, sort_keys=True, default=str))

    try:
        rc = campaign(args, log, save)
    except Exception as e:  # noqa: BLE001 - whatever broke, the log and the json say it and come back
        import traceback
        log(traceback.format_exc(), stamp=False)
        log(f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        save("error", f"{type(e).__name__}: {e}")
        rc = 1
    save("rc", rc)
    for row in doc.get("speed", {}).get("rows", []):  # the figures again, last: the device's output tail
        log(f"summary: pack of {row['members']} {row['precision']}/{row['step_impl']}: {row['images_per_s']:,.0f} "
            f"images/s, data share {row['data_share']:.3f}", stamp=False)
    if doc.get("study"):
        st = doc["study"]
        log(f"summary: study {st['name']} exit code {st['rc']}, {st['wall_s']:.0f} s (estimated {st['estimate_s']:.0f})",
            stamp=False)
    log(f"campaign: exit code {rc}; back: {', '.join(sorted(f.name for f in back.iterdir()))}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
