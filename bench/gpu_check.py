"""Issue #13's GPU check in one run (meant for < 8 minutes on one H200): correctness, then speed.

    python -m bench.gpu_check --data DIR --json OUT.json [--quick]

Needs torch and the trainables' dependencies only (no Ray, no MLflow: the lent GPU machine has
neither). What it does, in order, each step printed as it finishes and all of it in the JSON:

1. the bf16 matrix rate of this GPU (an 8192^3 matmul, best of 10): the 100 % of the FLOP share;
2. CUDA graph vs eager: the nine Table 2 strategies packed, 1 epoch of a 10,000-image subset, tf32,
   once eagerly and once with the step captured (trainables/fast.py): per member epoch-1 loss, which
   must agree to cuDNN's non-determinism (|rel| < 1e-3), or the fast path is wrong;
3. bf16 vs fp32, paired: strategies 1, 8 and 9 x 3 seeds as one pack, 8 epochs of a 10,000-image
   subset (lr 0.1, decay after 6), 2,000 test images per set, once in fp32 and once in bf16; per
   (strategy, seed) bf16 - fp32 of pristine and mean accuracy, paired, with the 95 % t interval
   (analysis.stats) beside the fp32 seed-to-seed spread: the fast precision should be within it;
4. speed at the paper preset (50,000 images, batch 100 per member, all 10 x 10,000 test images; 2
   epochs, the second one steady): the pack of 9 in tf32/eager (the old path), bf16/eager, tf32/graph
   and bf16/graph, and the pack of 27 (3 seeds) in bf16/graph; for each the training images/s of the
   whole epoch (data path, steps and, for the projection, the final evaluation), the projected paper
   schedule (2000 epochs), the data path's share of the epoch, and the achieved FLOP/s (186.8 MFLOP
   per training image, forward + backward) as a share of step 1's rate;
5. the pack levers of issue 18 on the packs of 9 and 27 (`lever_times`): an epoch's data path per
   member vs batched (config pack_data) and the final evaluation per member vs vmapped (pack_eval).

Targets (issue #13): >= 1,000,000 training images/s for the pack of 9 (paper schedule <= 15 min,
stretch 10), the pack of 27 at >= the per-member rate of the pack of 9, data share <= 10 %.
`--quick` measures 1 epoch less where it can (a smoke test of the script, not figures).
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
from trainables.config import PAPER_EPOCHS, PAPER_LR_DECAY_EVERY, TrialConfig
from trainables.packed import run_packed
from trainables.train import run_trial

MFLOP_PER_IMAGE = 186.8  # forward + backward of the Table 1 CNN per training image (bench.speed)
SUBSET = 10_000


# ------------------------------------------------------------------ a few epochs of Table 2, projected
# (what was study.pack_probe; the study commands' own estimate is `--estimate-only`, which probes the
# pack's step instead of whole epochs)
ALONE_STRATEGY = 9  # MIX_all3 + IQA-LS: the trial with the most per-epoch data work


def timed_run(fn) -> tuple[list, float, list[dict]]:
    """Run fn(report) and return (its result, wall seconds, the reported metrics in order)."""
    seen: list[dict] = []
    t0 = time.perf_counter()
    out = fn(seen.append)
    return out, time.perf_counter() - t0, seen


def speed_summary(epoch_times: list[float], wall: float, members: int, n_images: int, paper_epochs: int) -> dict:
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

    out, wall, seen = timed_run(lambda rep: run_packed(cfgs, lambda k, m: rep((k, m)), cache_dir=cache_dir))
    failed = [cfgs[k].strategy for k, r in enumerate(out) if "error" in r]
    if failed:
        raise SystemExit(f"pack_probe: strategies {failed} failed in the pack: {out}")
    pack_times = [m["epoch_time"] for k, m in seen if k == 0]
    res = {"paper_epochs": paper_epochs, "epochs": epochs, "train_images": n_images, "data": data,
           "device": device, "precision": precision, "step_impl": step_impl,
           "packed": speed_summary(pack_times, wall, len(cfgs), n_images, paper_epochs)}
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
    r1, wall1, seen1 = timed_run(lambda rep: run_trial(cfgs[k_alone], rep, cache_dir=cache_dir))
    res["alone"] = speed_summary([m["epoch_time"] for m in seen1], wall1, 1, n_images, paper_epochs)
    res["alone"]["pristine_acc"] = r1["acc_pristine"]
    loss_alone = next(m["loss"] for m in seen1 if m["epoch"] == 1)
    res["epoch1_loss"] = {"packed": loss_packed, "alone": loss_alone, "abs_diff": abs(loss_packed - loss_alone)}
    # the grid one trial after another, each at the alone trial's pace (an upper bound: the other
    # strategies do less data work than MIX_all3 IQA-LS)
    res["sequential_projection_s"] = len(cfgs) * res["alone"]["paper_projection_s"]
    res["packed_speedup"] = res["sequential_projection_s"] / res["packed"]["paper_projection_s"]
    return res


# ------------------------------------------------------------------ the pack levers of issue 18
LEVER_EVAL_KEYS = ("nll", "brier", "conf", "ptrue")  # probability metrics: compared to float rounding


def lever_times(cfgs: list[TrialConfig], reps: int = 3, cache_dir=None) -> dict:
    """The two pack levers of issue 18 side by side on one pack of `cfgs` (its members at their initial
    weights: the speed of a pass does not depend on them), interleaved, median of `reps` after one
    warm-up each: an epoch's data path (trainables.loop.epoch_batches: every member's draw, targets,
    batch order and the stacked batches) per member vs batched (config pack_data), and the final
    evaluation of the test sets per member (each member's model, trainables.evaluation.evaluate_all)
    vs one vmapped pass (trainables.packed.Pack.evaluate, config pack_eval). Before timing, their
    agreement: the batched epoch's images and targets against the per-member ones (equal on a CPU),
    the vmapped evaluation's probability metrics and accuracies against the per-member ones."""
    import statistics

    from trainables.device import numerics, setup
    from trainables.evaluation import eval_due, evaluate_all
    from trainables.loop import Member, epoch_batches, sync
    from trainables.packed import Pack, check_packable

    check_packable(cfgs)
    device = setup(cfgs[0])
    members = [Member(c, device, cache_dir, None, k) for k, c in enumerate(cfgs)]
    amp = numerics(cfgs[0], device)
    pack = Pack(members)
    last = cfgs[0].total_epochs - 1  # the epoch after which the test sets are due
    ks = list(range(len(members)))

    def data(batched: bool, epoch: int):
        drawn, batches = epoch_batches(members, epoch, device, True, batched)
        return [d.targets for d in drawn], batches.xs

    def per_member_eval():  # what Member.finish_epoch does after the last epoch
        out = []
        for k, m in enumerate(members):
            pack.sync_member(k)
            out.append(evaluate_all(m.model, m.d, m.norm, *eval_due(m.cfg, last + 1), {}, amp))
        return out

    def vmap_eval():
        got = pack.evaluate(last, amp, ks)
        return [got[k][0] for k in ks]

    # agreement (and the warm-up: banks, the batched path's source pool, the evaluation's kernels)
    (q_old, x_old), (q_new, x_new) = data(False, 0), data(True, 0)
    e_old, e_new = per_member_eval(), vmap_eval()
    agree = {"data_images_equal": bool(torch.equal(x_old, x_new)),
             "data_targets_max_abs": max(float((a - b).abs().max()) for a, b in zip(q_old, q_new)),
             "eval_prob_max_abs": max(abs(a[key] - b[key]) for a, b in zip(e_old, e_new) for key in a
                                      if key.split("_")[0] in LEVER_EVAL_KEYS),
             "eval_acc_max_abs": max(abs(a[key] - b[key]) for a, b in zip(e_old, e_new) for key in a
                                     if key.startswith("acc_"))}
    del q_old, x_old, q_new, x_new

    def timed(fn) -> float:
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - t0

    rec = {"data_per_member": [], "data_batched": [], "eval_per_member": [], "eval_vmap": []}
    for r in range(reps):
        rec["data_per_member"].append(timed(lambda: data(False, r + 1)))
        rec["data_batched"].append(timed(lambda: data(True, r + 1)))
        rec["eval_per_member"].append(timed(per_member_eval))
        rec["eval_vmap"].append(timed(vmap_eval))
    med = {k: statistics.median(v) for k, v in rec.items()}
    test_images = sum(x.shape[0] for x in members[0].d["evals"]["test"]["sets"].values())
    return {"members": len(cfgs), "train_images": int(members[0].d["train_y"].shape[0]),
            "test_images": test_images, "device": str(device), "precision": cfgs[0].precision, "reps": reps,
            "data_s": {"per_member": med["data_per_member"], "batched": med["data_batched"]},
            "data_speedup": med["data_per_member"] / med["data_batched"],
            "eval_s": {"per_member": med["eval_per_member"], "vmap": med["eval_vmap"]},
            "eval_speedup": med["eval_per_member"] / med["eval_vmap"], "agreement": agree, "raw": rec}


def lever_line(r: dict) -> str:
    """One log line of lever_times' figures."""
    a = r["agreement"]
    return (f"levers, pack of {r['members']}: epoch data path {r['data_s']['per_member']:.3f} s per member -> "
            f"{r['data_s']['batched']:.3f} s batched ({r['data_speedup']:.2f}x; images equal "
            f"{a['data_images_equal']}, targets max |diff| {a['data_targets_max_abs']:.1e}); final evaluation "
            f"of {r['test_images']:,} test images {r['eval_s']['per_member']:.2f} s per member -> "
            f"{r['eval_s']['vmap']:.2f} s vmapped ({r['eval_speedup']:.2f}x; probabilities max |diff| "
            f"{a['eval_prob_max_abs']:.1e}, accuracy {a['eval_acc_max_abs']:.1e})")


# the Table 1 convolutions (trainables/model.py): (in channels, out channels, input size), 5x5, pad 2
CONV_LAYERS = {"conv1": (3, 64, 32), "conv2": (64, 64, 16)}


def conv_formulations(device, members: int, batch: int = 100, reps: int = 5, bf16: bool | None = None) -> dict:
    """Forward + backward of each Table 1 convolution for a pack of `members` at `batch` images each,
    in three forms (issue 18: the first H200 campaign's pack ran at ~3 % of the bf16 matmul rate and
    the grouped convolution vmap makes is the suspect): `grouped`, what vmap(functional_call) runs (one
    convolution over members x channels, groups = members); `loop`, one convolution per member; and
    `one_wide`, a single convolution of members x batch images with one shared weight (not a pack:
    the rate a pack would reach if its convolutions ran as fast as one model's). Median seconds of
    `reps` after a warm-up, FLOP/s of each, and the agreement of grouped with loop (max |diff| of
    outputs and input gradients). bf16 autocast on CUDA by default, float32 on a CPU."""
    import statistics

    import torch.nn.functional as F

    device = torch.device(device)
    bf16 = device.type == "cuda" if bf16 is None else bf16
    g = torch.Generator(device="cpu").manual_seed(0)
    out = {"members": members, "batch": batch, "reps": reps, "device": str(device), "bf16": bf16, "layers": {}}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for name, (c_in, c_out, size) in CONV_LAYERS.items():
        x = torch.randn(members, batch, c_in, size, size, generator=g).to(device)
        w = (torch.randn(members, c_out, c_in, 5, 5, generator=g) * 0.05).to(device)
        gy = torch.randn(members, batch, c_out, size, size, generator=g).to(device)

        def grouped():
            xi = x.permute(1, 0, 2, 3, 4).reshape(batch, members * c_in, size, size).requires_grad_()
            wi = w.reshape(members * c_out, c_in, 5, 5).requires_grad_()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                y = F.conv2d(xi, wi, padding=2, groups=members)
            y = y.float().reshape(batch, members, c_out, size, size).permute(1, 0, 2, 3, 4)
            y.backward(gy)
            return y.detach(), xi.grad.reshape(batch, members, c_in, size, size).permute(1, 0, 2, 3, 4)

        def loop():
            ys, gs = [], []
            for k in range(members):
                xk, wk = x[k].clone().requires_grad_(), w[k].clone().requires_grad_()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    yk = F.conv2d(xk, wk, padding=2)
                yk.float().backward(gy[k])
                ys.append(yk.detach().float())
                gs.append(xk.grad)
            return torch.stack(ys), torch.stack(gs)

        def one_wide():
            xi = x.reshape(members * batch, c_in, size, size).requires_grad_()
            wi = w[0].clone().requires_grad_()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                y = F.conv2d(xi, wi, padding=2)
            y.float().backward(gy.reshape(members * batch, c_out, size, size))
            return y.detach(), xi.grad

        (y_g, gx_g), (y_l, gx_l) = grouped(), loop()
        one_wide()  # warm-up
        agree = {"out_max_abs": float((y_g - y_l).abs().max()), "grad_max_abs": float((gx_g - gx_l).abs().max())}
        del y_g, gx_g, y_l, gx_l
        times = {"grouped": [], "loop": [], "one_wide": []}
        for _ in range(reps):
            for form, fn in (("grouped", grouped), ("loop", loop), ("one_wide", one_wide)):
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times[form].append(time.perf_counter() - t0)
        flop = 3 * 2 * members * batch * c_out * c_in * 25 * size * size  # forward, and 2x that backward
        med = {form: statistics.median(v) for form, v in times.items()}
        out["layers"][name] = {"s": med, "flops": {form: flop / t for form, t in med.items()}, "agreement": agree}
    return out


def conv_line(r: dict) -> str:
    """One log line of conv_formulations' figures."""
    parts = []
    for name, L in r["layers"].items():
        s = L["s"]
        parts.append(f"{name} grouped {s['grouped'] * 1e3:.2f} ms, loop {s['loop'] * 1e3:.2f} ms, one wide "
                     f"{s['one_wide'] * 1e3:.2f} ms ({L['flops']['grouped'] / 1e12:.1f} / {L['flops']['loop'] / 1e12:.1f}"
                     f" / {L['flops']['one_wide'] / 1e12:.1f} TFLOP/s; grouped vs loop max |diff| "
                     f"{L['agreement']['out_max_abs']:.1e})")
    return f"convolutions, pack of {r['members']} x {r['batch']} images, forward + backward: " + "; ".join(parts)


def matmul_rate(device, n: int = 8192, reps: int = 10) -> float:
    """Best bf16 FLOP/s of an n x n x n matmul on `device`."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def grid_cfgs(data, device, strategies, seeds, **fields):
    return [TrialConfig(**{**fields, **t, "subset_seed": t["seed"], "data": data, "device": device})
            for t in space.grid(seeds) if t["strategy"] in strategies]


def graph_vs_eager(data, device) -> dict:
    common = dict(epochs=1, subset=SUBSET, test_subset=1000, precision="tf32")
    out = {}
    for impl in ("eager", "cuda_graph"):
        cfgs = grid_cfgs(data, device, range(1, 10), 1, step_impl=impl, **common)
        res = run_packed(cfgs)
        out[impl] = [r["loss"] for r in res]
    rel = [abs(g - e) / abs(e) for g, e in zip(out["cuda_graph"], out["eager"])]
    return {"loss_eager": out["eager"], "loss_graph": out["cuda_graph"], "max_rel_diff": max(rel),
            "ok": max(rel) < 1e-3}


def bf16_vs_fp32(data, device, epochs: int) -> dict:
    from analysis.stats import mean_ci, paired

    common = dict(epochs=epochs, lr_decay_every=max(1, epochs - 2), subset=SUBSET, test_subset=2000,
                  step_impl="cuda_graph")
    res = {}
    for prec in ("fp32", "bf16"):
        cfgs = grid_cfgs(data, device, (1, 8, 9), 3, precision=prec, **common)
        t0 = time.perf_counter()
        out = run_packed(cfgs)
        res[prec] = {"wall_s": time.perf_counter() - t0,
                     "runs": {(c.strategy, c.seed): r for c, r in zip(cfgs, out)}}
    rows = {}
    for metric in ("acc_pristine", "acc_mean_all"):
        for s in (1, 8, 9):
            a = {seed: res["fp32"]["runs"][s, seed][metric] for seed in range(3)}
            b = {seed: res["bf16"]["runs"][s, seed][metric] for seed in range(3)}
            d = paired(a, b)
            rows[f"s{s} {metric}"] = {"bf16_minus_fp32": d["diff"], "ci": [d["ci_low"], d["ci_high"]],
                                      "fp32_seed_std": mean_ci(list(a.values()))["std"]}
    return {"epochs": epochs, "wall_s": {p: res[p]["wall_s"] for p in res}, "paired": rows}


def speed(data, device, epochs: int, peak: float) -> list[dict]:
    out = []
    for seeds, prec, impl in ((1, "tf32", "eager"), (1, "bf16", "eager"), (1, "tf32", "cuda_graph"),
                              (1, "bf16", "cuda_graph"), (3, "bf16", "cuda_graph")):
        r = probe(data, device, epochs, seeds, precision=prec, step_impl=impl, alone=False)
        p = r["packed"]
        row = {"members": p["members"], "precision": prec, "step_impl": impl, "images_per_s": p["images_per_s"],
               "images_per_s_per_member": p["images_per_s"] / p["members"],
               "paper_projection_min": p["paper_projection_s"] / 60 * (9 / p["members"]),
               "data_share": p["data_share"][-1], "flop_share": p["images_per_s"] * MFLOP_PER_IMAGE * 1e6 / peak,
               "epoch_times_s": p["epoch_times_s"]}
        out.append(row)
        print(f"  pack of {row['members']:>2} {prec}/{impl:<10}: {row['images_per_s']:>11,.0f} images/s "
              f"({row['images_per_s_per_member']:,.0f} per member), one seed of the paper schedule "
              f"{row['paper_projection_min']:.1f} min, data share {row['data_share']:.3f}, "
              f"FLOP share {row['flop_share']:.1%}", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="data source spec (the offline copy carried to the GPU machine)")
    p.add_argument("--json", default=None, help="write everything here")
    p.add_argument("--quick", action="store_true", help="fewer epochs (checks the script, not the figures)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: bench.gpu_check needs a CUDA device; none is visible", file=sys.stderr)
        return 2
    device = "cuda"
    t0 = time.perf_counter()
    res = {"device_name": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda}
    res["bf16_matmul_flops"] = peak = matmul_rate(torch.device(device))
    print(f"[{time.perf_counter() - t0:5.0f}s] bf16 matmul 8192^3: {peak / 1e12:.0f} TFLOP/s on {res['device_name']}, "
          f"torch {res['torch']}", flush=True)
    res["graph_vs_eager"] = g = graph_vs_eager(args.data, device)
    print(f"[{time.perf_counter() - t0:5.0f}s] CUDA graph vs eager, 9 members, epoch-1 loss: max |rel diff| "
          f"{g['max_rel_diff']:.1e} ({'ok' if g['ok'] else 'MISMATCH'})", flush=True)
    res["bf16_vs_fp32"] = b = bf16_vs_fp32(args.data, device, 4 if args.quick else 8)
    print(f"[{time.perf_counter() - t0:5.0f}s] bf16 - fp32, paired over 3 seeds, {b['epochs']} epochs of {SUBSET} images:")
    for name, r in b["paired"].items():
        print(f"  {name:<20} {r['bf16_minus_fp32']:+.4f} [{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}] "
              f"(fp32 seed-to-seed std {r['fp32_seed_std']:.4f})", flush=True)
    print(f"[{time.perf_counter() - t0:5.0f}s] speed at the paper preset ({'1 epoch' if args.quick else '2 epochs'}):",
          flush=True)
    res["speed"] = speed(args.data, device, 1 if args.quick else 2, peak)
    fields = resolve("paper", epochs=1, lr_decay_every=PAPER_LR_DECAY_EVERY)
    for seeds in (1, 3):  # the pack levers of issue 18: old vs new on the packs just timed
        res.setdefault("levers", []).append(lever_times(
            grid_cfgs(args.data, device, range(1, 10), seeds, precision="bf16", step_impl="cuda_graph", **fields)))
        print(f"[{time.perf_counter() - t0:5.0f}s] " + lever_line(res["levers"][-1]), flush=True)
    res["wall_s"] = time.perf_counter() - t0
    print(f"[{res['wall_s']:5.0f}s] done", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1, sort_keys=True, default=str))
    return 0 if g["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
