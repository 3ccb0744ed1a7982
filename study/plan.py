"""The plan a study prints before it starts, with its measured wall-time estimate: what runs, where,
packed how, what a --resume has left, where the records go. The plan is also the parent run's
description. The estimate is the whole command's wall time, from its process start: the time spent
until the plan (measured), the training and evaluation at the rates a throughput probe in the
driver measures (`probe_throughput`), as many runs side by side as fit (`estimate_seconds`), and the
fixed costs around them (`FIXED_COSTS`: the executor's start, each worker's data and test sets, the
records, the tables; `fixed_seconds`). `make_packs` groups the trials a packed study runs.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from pathlib import Path

from study.resume import epochs_left
from study.spec import StudyRun
from trainables.config import CIFAR10C_REGENERATE, TrialConfig

# The fixed costs around the probed step and evaluation (a Choice, docs/paper-mapping.md "The
# estimate's fixed costs"): seconds on the 2-core VM (AMD EPYC x2), read off the MLflow timestamps of
# smoke studies (docs/commands.md "The plan's estimate" has the commands). What scales with a size
# is a rate (per image); the rest is a constant.
FIXED_COSTS = {
    "ray_start": 10.0,  # ray.init to the first trial's start: Ray's processes, the workers' imports (idle machine;
    # it grows with the load: x max(1, (1-min load average + 1) / cores), see ray_start_seconds)
    "local_start": 0.0,  # --executor local: the trials start in this process, which has loaded the data
    "load_per_image": 40e-6,  # a Ray worker reads the decoded data set from the cache (per image of the pool)
    "end": 6.0,  # closing the parent run, the tables and plots
}

SMOKE_NOTE = "preset smoke is a pipeline check, not a result: accuracies near 0.10 (chance) are expected"


@dataclass
class Estimate:
    """The plan's wall-time estimate and what it rests on."""
    n_train: int  # training images per epoch
    n_test: int  # test images per set
    c10c_sets: int  # a trial's final CIFAR-10-C evaluation: sets x images (0 sets without --cifar10c)
    c10c_n: int
    n_runs: int  # what the executor runs: packs (packed) or trials
    members: int  # members of the largest pack (1 unpacked): what the probe times
    parallel: int  # runs side by side
    train_ips: float | None = None  # probed; None: not probed
    eval_ips: float | None = None
    prep_ips: float | None = None  # test sets and distortion banks: images distorted and scored per second
    seconds: float | None = None  # the whole command, from its process start
    parts: dict[str, float] | None = None  # what `seconds` adds up (fmt_estimate prints it)


@dataclass
class Plan:
    lines: list[str]  # printed, and the parent run's description
    left: dict[str, int]  # trial key -> epochs still to train
    nothing_left: bool  # a --resume of a study whose every trial is finished
    probed: bool  # the probe ran (the parent run then names the probed device)
    seconds: float | None = None  # the estimated wall time of the whole command (None: no estimate)


def make_plan(run: StudyRun, extra: tuple = ()) -> Plan:
    """Count what is left, probe, estimate, and print the plan (`extra`: the command's own lines)."""
    spec, trials = run.spec, run.trials
    if run.rec is not None:
        left, left_note = epochs_left(spec, trials, run.rec, run.storage)
    else:  # nothing recorded yet: every epoch is left
        left, left_note = {t.key: t.config.total_epochs - t.config.first_epoch for t in trials}, ""
    nothing_left = spec.resume and run.search is None and not left
    est = estimate(run, left, nothing_left)
    lines = [*_study_lines(run, est, extra), *_run_lines(run, est), *_schedule_lines(run, est)]
    if left_note:
        lines.append(f"  {left_note}")
    if run.lock is not None and run.lock.broke:
        lines.append(f"  study lock: {run.lock.broke}")
    lines += [*_probe_lines(run, est, nothing_left), _records_line(run)]
    lines = [w for line in lines for w in wrap_line(line)]
    for line in lines:
        print(line, flush=True)
    return Plan(lines, left, nothing_left, probed=bool(est.train_ips), seconds=est.seconds)


CONSOLE_WIDTH = 120  # what a study prints per line, at most (a longer word, e.g. a path, stays whole)


def wrap_line(line: str, width: int = CONSOLE_WIDTH) -> list[str]:
    """A printed line cut at spaces to `width`, its continuation indented under its text."""
    import textwrap

    if len(line) <= width:
        return [line]
    indent = " " * (len(line) - len(line.lstrip()) + 2)
    return textwrap.wrap(line, width, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)


def process_started() -> float:
    """When this process started (time.time() scale): the start a user's `time` measures from, so the
    estimate and the `took` it is held against include the imports. Linux: /proc/self/stat; elsewhere
    (or unreadable) the import of the study package."""
    import study

    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        started = boot + ticks / os.sysconf("SC_CLK_TCK")
        # btime is whole seconds: never later than the package import, never in the future
        return min(started, study.IMPORTED, time.time())
    except (OSError, ValueError, IndexError, StopIteration, AttributeError):
        return study.IMPORTED


def estimate(run: StudyRun, left: dict[str, int], nothing_left: bool) -> Estimate:
    """The sizes, the probe and the estimate. The probe runs where the driver is: on a cluster whose
    head has no GPU it cannot measure the workers' GPUs, so the estimate is left out rather than
    guessed; a resume with nothing left to run has nothing to estimate. With packing it times the
    pack's step (the largest pack's size)."""
    import torch

    from trainables.evaluation import EVAL_BATCH
    from trainables.robustness import evaluation_sets

    spec, cfg0 = run.spec, run.first_config
    n_images = run.train.images.shape[0]
    # packs are planned from every trial of the grid (a resumed run packs what is left)
    packs = make_packs([{"config": t.config.to_dict(), "tags": {}, "cache_dir": ""} for t in run.trials],
                       spec.pack_size) if spec.packing else []
    n_runs = len(packs) if spec.packing else len(run.trials)
    cpus, gpus = spec.cpus_per_trial, spec.gpus_per_trial
    total_cpus = os.cpu_count() or 1
    if spec.executor == "local":
        parallel = 1  # one trial (or pack) after another
    else:
        parallel = max(1, min(n_runs + run.n_search,
                              int(total_cpus // cpus) if gpus == 0 else int(1 / gpus) if gpus else 1))
    est = Estimate(n_train=min(cfg0.subset or n_images, n_images),
                   n_test=min(cfg0.test_subset or run.n_test, run.n_test),
                   c10c_sets=evaluation_sets(cfg0), c10c_n=min(cfg0.cifar10c_subset or run.n_test, run.n_test),
                   n_runs=n_runs, members=max((len(p.get("members", [p])) for p in packs), default=1),
                   parallel=parallel)
    if not nothing_left and (spec.run_device == "cpu" or torch.cuda.is_available()):
        est.train_ips, est.eval_ips = probe_throughput(cfg0, spec.threads, spec.probe_device, members=est.members,
                                                       eval_batch=min(EVAL_BATCH, est.n_test))
        est.prep_ips = probe_prep(cfg0, spec.threads, spec.probe_device)
    if est.train_ips:
        trials = estimate_seconds(run_seconds(run, left, est), parallel,
                                  shared_device=gpus > 0 or spec.executor == "local")
        before, after = fixed_seconds(run, est, n_images)
        est.parts = {"so far": time.time() - process_started(), **before, "trials": trials, **after}
        est.seconds = sum(est.parts.values())
    return est


def ray_start_seconds() -> float:
    """Ray's start on this machine now: FIXED_COSTS["ray_start"] (an idle machine) times the load per
    core. Ray starts a dozen processes that import Ray and torch: on the 2-core VM it took 10.6 s at
    a load average of 0.7, 27.5 s at 2.5-2.9 and 45 s at 8.6 (docs/commands.md "The plan's estimate")."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # not on every platform
        load = 0.0
    return FIXED_COSTS["ray_start"] * max(1.0, (load + 1) / (os.cpu_count() or 1))


def fixed_seconds(run: StudyRun, est: Estimate, n_pool: int) -> tuple[dict[str, float], dict[str, float]]:
    """The fixed costs before and after the trials' training and evaluation (FIXED_COSTS): the
    executor's start, each worker's data and test sets (the workers build theirs side by side:
    counted once); the tables at the end."""
    spec, cfg0 = run.spec, run.first_config
    ray = spec.executor == "ray"
    images = 9 * est.n_test + (9 * est.n_train if cfg0.types else 0)  # the 9 distorted test sets, the bank
    data = (n_pool + run.n_test) * FIXED_COSTS["load_per_image"] if ray else 0.0  # local: loaded already
    return ({("Ray start" if ray else "start"): ray_start_seconds() if ray else FIXED_COSTS["local_start"],
             "worker data": data + images / est.prep_ips}, {"tables": FIXED_COSTS["end"]})


def run_seconds(run: StudyRun, left: dict[str, int], est: Estimate) -> list[float]:
    """Seconds each run takes alone at the probed rates: its epochs left, then the final evaluation on
    the 10 test sets (and on CIFAR-10-C). A trial's records (its MLflow writes, its checkpoints) add
    no term: on the 2-core VM a smoke trial took less than these rates give (docs/commands.md
    "The plan's estimate")."""
    c10c_images = est.c10c_sets * est.c10c_n
    if run.spec.packing:  # the probed rate is the pack's, all its members at once: the packs share it
        total = (sum(left.values()) * est.n_train / est.train_ips
                 + len(left) * (10 * est.n_test + c10c_images) / est.eval_ips)
        secs = [total / est.n_runs] * est.n_runs if left else []
    else:
        secs = [left[t.key] * est.n_train / est.train_ips + (10 * est.n_test + c10c_images) / est.eval_ips
                for t in run.trials if t.key in left]
    search = run.search
    if search is not None:  # at most: every search trial runs all its epochs and evaluations
        secs += [search.base.epochs * est.n_train / est.train_ips
                 + (search.evals * 10 * est.n_test + c10c_images) / est.eval_ips] * run.n_search
    return secs


def _study_lines(run: StudyRun, est: Estimate, extra: tuple) -> list[str]:
    """What the study is: its trials, schedule and data (and the command's own lines)."""
    spec, cfg0, train = run.spec, run.first_config, run.train
    searched = f" + a search of {run.n_search}" if run.search is not None else ""
    lines = [f"study {spec.name} ({run.kind}): {len(run.trials)} trials{searched}, {cfg0.epochs} epochs each, "
             f"{est.n_train} training images ({train.source}, {train.checksum[:19]}), {est.n_test} test images "
             "x 10 sets"]
    if spec.preset == "smoke":
        lines.append(f"  {SMOKE_NOTE}")
    return lines + [f"  {line}" for line in (*extra, *run.notes)]


def _run_lines(run: StudyRun, est: Estimate) -> list[str]:
    """Where and how the trials run: device, resources, side by side, packed."""
    spec = run.spec
    where = (f"Ray {'at ' + spec.address if spec.address else 'local'}" if spec.executor == "ray"
             else "--executor local: in this process")
    lines = [f"  device {spec.run_device}, precision {spec.precision}; {spec.cpus_per_trial:g} CPU + "
             f"{spec.gpus_per_trial:g} GPU per {'pack' if spec.packing else 'trial'}; up to {est.parallel} side "
             f"by side; {where}"]
    if spec.packing:
        lines.append(f"  packing ({'forced by --pack on' if spec.pack == 'on' else 'auto: CUDA'}): the "
                     f"{len(run.trials)} grid trials run as {est.n_runs} pack(s) of up to {spec.pack_size} members"
                     + ("; search trials run unpacked" if run.search is not None else ""))
    return lines


def _schedule_lines(run: StudyRun, est: Estimate) -> list[str]:
    """What runs after training: the CIFAR-10-C evaluation, the fine-tunes."""
    cfg0, trials, lines = run.first_config, run.trials, []
    if cfg0.cifar10c:
        where_c = ("regenerated from the test split (built once per worker process unless cached)"
                   if cfg0.cifar10c == CIFAR10C_REGENERATE else f"official files in {cfg0.cifar10c}")
        lines.append(f"  CIFAR-10-C after each trial's last epoch: {where_c}; {est.c10c_sets} sets x {est.c10c_n} "
                     "images per trial (in the estimate)")
    tunes = [t.config for t in trials if t.config.finetune]
    if tunes:
        f = tunes[0]
        decay = (f"x{f.lr_decay:g} every {f.finetune_lr_decay_every} epochs" if f.finetune_lr_decay_every
                 else "constant")
        lines.append(f"  fine-tune: {len(tunes)} trial(s) start from their Original parent's final weights once "
                     f"the {len(trials) - len(tunes)} from-scratch trials are done: epochs {f.epochs + 1}.."
                     f"{f.total_epochs}, lr {f.finetune_lr:g} {decay}, a fresh SGD; unpacked")
    return lines


def _probe_lines(run: StudyRun, est: Estimate, nothing_left: bool) -> list[str]:
    from study.execution import device_name

    spec = run.spec
    probed = f"{'a pack of ' + str(est.members) if est.members > 1 else 'one trial'}"
    if est.train_ips:
        return [f"  probe: {est.train_ips:.0f} training, {est.eval_ips:.0f} test, {est.prep_ips:.0f} distorted+scored "
                f"images/s ({probed}, {spec.threads} thread(s), batch {run.first_config.batch_size}, "
                f"{device_name(spec.probe_device)})",
                f"  estimated wall time {fmt_estimate(est)}"]
    if nothing_left:
        return ["  probe: skipped (every trial is finished: nothing to run)"]
    return [f"  probe: skipped (the driver has no {spec.run_device}); no wall-time estimate"]


def fmt_estimate(est: Estimate) -> str:
    """'1m52s = 0m26s so far + 0m10s Ray start + ...': the estimate and its parts."""
    from study.execution import fmt_duration

    return " + ".join([fmt_duration(est.seconds) + " =",
                       *(f"{fmt_duration(v)} {k}" for k, v in (est.parts or {}).items())]).replace("= +", "=")


def _records_line(run: StudyRun) -> str:
    from study import tracking

    spec = run.spec
    artifacts = (run.rec.artifact_location() if run.rec is not None
                 else tracking.artifact_location_for(spec.tracking_uri))
    return (f"  runs -> {spec.tracking_uri} (experiment {spec.experiment}; artifacts -> {artifacts}); "
            f"checkpoints -> {_short(f'{run.storage}/{spec.name}/trials')}; tables -> {run.out}")


def _short(path: str) -> str:
    """A path under the working folder as a relative one (what a person typed), others as they are."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def make_packs(specs: list[dict], size: int) -> list[dict]:
    """Group trial specs into packs (one Ray trial each): members share trainables.packed.pack_key
    (schedule, data, model code path, device) and checkpoint cadence (so they resume from one
    epoch), in grid order, at most `size` per pack and the packs of a group as even as can be (9
    trials, size 4: 3 + 3 + 3, not 4 + 4 + 1). A group of one stays an ordinary trial spec."""
    from trainables.packed import pack_key, packable

    groups: dict[tuple, list[dict]] = {}
    out = []
    for s in specs:
        cfg = TrialConfig.from_dict(s["config"])
        if not packable(cfg):  # a fine-tune runs alone, from its parent's final weights
            out.append(s)
            continue
        groups.setdefault((pack_key(cfg), cfg.checkpoint_every), []).append(s)
    for group in groups.values():
        n = -(-len(group) // size)  # packs this group needs
        bounds = [-(-i * len(group) // n) for i in range(n + 1)]  # ceil: larger packs first
        for lo, hi in zip(bounds, bounds[1:]):
            chunk = group[lo:hi]
            if len(chunk) == 1:
                out.append(chunk[0])
                continue
            key = f"pack-{len(out)}"
            members = [{**m, "tags": {**m["tags"], "pack": key, "pack_size": len(chunk)}} for m in chunk]
            out.append({"key": key, "members": members, "cache_dir": chunk[0]["cache_dir"]})
    return out

PROBE_WARMUP_CUDA, PROBE_WARMUP_CPU = 5, 1  # untimed steps before the probe's clock starts
PREP_PROBE_IMAGES = 64  # images the prep probe distorts (9 ways) and scores: ~0.1 s on the 2-core CPU


def probe_prep(cfg: TrialConfig, threads: int, device: str) -> float:
    """Images/s of what a trial's process builds before it trains: the 9 distorted copies of an image
    (trainables.evaluation.make_test_sets; a distortion bank makes the same 9) and each copy's IQA
    score (the test sets' SSIM; the bank's the trial's metric). Random images: the rate, not values."""
    import torch

    from trainables import iqa
    from trainables.device import pick_device
    from trainables.evaluation import make_test_sets
    from trainables.metric_names import QUALITY_METRIC
    from trainables.prep import distortion_options

    old = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        dev = pick_device(device)
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (PREP_PROBE_IMAGES, 3, 32, 32), dtype=torch.uint8, generator=g).to(dev)
        t0 = time.perf_counter()
        sets = make_test_sets(x, 0, distortion_options(cfg))
        for name, d in sets.items():
            if name != "pristine":
                for metric in {QUALITY_METRIC, cfg.iqa_metric}:
                    iqa.score(metric, d, x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return 9 * PREP_PROBE_IMAGES / max(time.perf_counter() - t0, 1e-9)
    finally:
        torch.set_num_threads(old)


def probe_throughput(cfg: TrialConfig, threads: int, device: str, seconds: float = 3.0,
                     members: int = 1, eval_batch: int | None = None) -> tuple[float, float]:
    """(training images/s at the trial's batch size, test images/s of the evaluation's forward pass at
    its batch size: `eval_batch`, default EVAL_BATCH; a test set smaller than that is one batch) of
    the Table 1 model on this machine, with the trial's precision, memory format and step
    (trainables/fast.py: one CUDA graph per step on CUDA). With `members` > 1, the training rate of a
    pack of that many (trainables.packed, all members' images counted): what a packed study's
    trials run at. Measured rather than assumed: on the 2-core CPU the probe gave 366 test vs 287
    training images/s (1.3x), not the ~3x a FLOP count suggests."""
    import torch

    from trainables.device import numerics, pick_device, step_impl_for
    from trainables.evaluation import EVAL_BATCH
    from trainables.loop import Step, model_loss
    from trainables.model import build_model, build_optimizer

    def rate(step, batch: int, budget: float) -> float:
        # warm-up steps: on CUDA a graph is captured on the first and the allocator settles over a few;
        # on a CPU the first step's one-time work (oneDNN primitives, allocations) is all there is, and
        # each further warm-up step costs a whole step there (~3 s for an evaluation batch on 2 cores)
        warm = PROBE_WARMUP_CUDA if dev.type == "cuda" else PROBE_WARMUP_CPU
        n, t0 = 0, None
        while True:
            step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            n += 1
            if n == warm:
                t0 = time.perf_counter()
            elif t0 and time.perf_counter() - t0 > budget:
                return (n - warm) * batch / (time.perf_counter() - t0)

    old = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        dev = pick_device(device)
        cfg = cfg.replace(device=str(dev))
        amp, impl = numerics(cfg, dev), step_impl_for(cfg, dev)
        models = [build_model(cfg.replace(seed=cfg.seed + k), dev) for k in range(members)]
        x = torch.randn(members, cfg.batch_size, 3, 32, 32, device=dev)
        q = torch.full((members, cfg.batch_size, 10), 0.1, device=dev)
        if members > 1:  # the training step of trainables.loop, as the trials run it
            from trainables.packed import Pack
            step = Pack.of_models(cfg, models).stepper(impl, amp)
        else:
            model, x, q = models[0], x[0], q[0]
            x = x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x
            step = Step(model_loss(model, amp), build_optimizer(cfg, model), model.parameters(), impl)
        train_ips = rate(lambda: step(x, q), members * cfg.batch_size, seconds)
        model = models[0]
        eval_batch = eval_batch or EVAL_BATCH
        xe = torch.randn(eval_batch, 3, 32, 32, device=dev)  # as trainables.evaluation feeds it (prep.batch_norm_fn)
        xe = xe.contiguous(memory_format=torch.channels_last) if cfg.channels_last else xe
        model.eval()
        with torch.no_grad(), amp():
            eval_ips = rate(lambda: model(xe), eval_batch, seconds / 2)
        return train_ips, eval_ips
    finally:
        torch.set_num_threads(old)


def estimate_seconds(trial_seconds: list[float], parallel: int, shared_device: bool) -> float:
    """Wall time of runs that each take `trial_seconds` alone at the probed rates. CPU: `parallel` run
    side by side, each at its own probed rate, in rounds (9 runs on 2 slots take 5 rounds, not 4.5:
    the last one runs alone). A shared device (GPU): the runs split one device's rate, so their
    times add up."""
    if not trial_seconds:
        return 0.0
    if shared_device:
        return sum(trial_seconds)
    rounds = -(-len(trial_seconds) // max(1, parallel))
    return sum(trial_seconds) / len(trial_seconds) * rounds
