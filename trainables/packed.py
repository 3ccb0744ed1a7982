"""Packed trials: K trial configs that share a schedule, trained as one vmapped model.

A Table 1 CNN step at batch 100 is ~19 GFLOP: far too little to fill a large GPU, so trials run
one per GPU leave most of it idle. `run_packed(configs, report)` trains K configs together: their
parameters are stacked (`torch.func.stack_module_state`), one `vmap(functional_call(PaperCNN))`
runs all K models per step (convolutions become one grouped convolution, the fc layers batched
matmuls), and one SGD step updates the stacked parameters (SGD is elementwise, so that is K
separate SGDs). Everything else is per member and is exactly what its own `run_trial` does, by the
same code (trainables/loop.py: one `Member` per config, one `train_epoch`, the pack's `Step`): the
mixture draw, noise, batch order and targets come from the member's own seed and config; the
metrics carry the same names; checkpoints go to one folder per member in `run_trial`'s format, so
a member can resume alone (`run_trial`) or in a pack. A member whose epoch loss is not finite is
dropped from the pack and returned as failed; the others go on.

What members must share (PACK_SHARED): the schedule (epochs, batch size, lr and its decay,
momentum, fc weight decay), the training data (source, subset size, validation split size), the model code path
(LRN implementation, memory format, input normalisation, numerics), device, threads and how a step
is launched (eager or one CUDA graph, trainables/fast.py). They may differ in
everything else: seed, the training subset's seed (each member then trains on its own subset of
the pack's one size), train set, regularisation, T map, IQA metric, mix, init, distortion options,
test sets, evaluation and checkpoint cadence. `pack_key(cfg)` groups a study's configs into packs.

Numerics: the grouped convolution sums in another order than K separate ones, so a member's losses
and weights match its separate run to float32 rounding (tests/test_packed.py), not bit for bit.

Speed levers (issue 18; config fields, shared by a pack): `pack_data="batched"` draws all members'
epoch in one pass (prep.pack_epoch_data: bit for bit the per-member draws on a CPU);
`pack_eval="vmap"` evaluates all members in one vmapped pass (`Pack.evaluate`) instead of each
member's own model: its metrics differ from the per-member ones by float32 summation order.
"""
from __future__ import annotations

import copy
import time
from typing import Callable

import torch
from torch.func import functional_call, stack_module_state, vmap

from trainables import labels, robustness
from trainables.config import TrialConfig
from trainables.device import numerics, setup, step_impl_for
from trainables.evaluation import eval_due, evaluate_all_pack, evaluate_pack
from trainables.loop import Member, Step, loss_error, train_epoch
from trainables.model import build_optimizer

# Fields every member of a pack must share (see the module docstring). device and threads only run a
# trial (config.RUN_FIELDS) but a pack is one process on one device: its members share them by force.
# The training subset's seed may differ (members then train on their own subsets of one size).
PACK_SHARED = ("epochs", "batch_size", "lr", "lr_decay", "lr_decay_every", "momentum", "fc_weight_decay",
               "data", "subset", "val_size", "lrn_impl", "channels_last", "input_norm", "precision",
               "device", "threads", "step_impl", "pack_data", "pack_eval")


class PackError(ValueError):
    """Configs that cannot be packed together; the message names the field and the values."""


def pack_key(cfg: TrialConfig) -> tuple:
    """Configs with equal keys can share a pack."""
    return tuple((name, repr(getattr(cfg, name))) for name in PACK_SHARED)


def packable(cfg: TrialConfig) -> bool:
    """Whether a config may join a pack at all: a fine-tune (protocol "finetune") may not; it starts
    from its parent's weights, which a pack does not load (study.plan.make_packs runs it alone)."""
    return not cfg.finetune


def check_packable(configs: list[TrialConfig]) -> None:
    if not configs:
        raise PackError("configs=[] is not allowed; allowed: one or more TrialConfigs")
    for c in configs:
        if not packable(c):
            raise PackError(f"protocol={c.protocol!r} is not allowed in a pack; allowed: 'scratch' (a "
                            "fine-tune runs alone, from its parent's final weights: train.run_trial)")
    for name in PACK_SHARED:
        values = [getattr(c, name) for c in configs]
        if any(v != values[0] for v in values):
            raise PackError(f"{name} differs between pack members ({values}); allowed: one value per "
                            f"pack (members share {', '.join(PACK_SHARED)})")


class Pack:
    """The stacked parameters of K members and one SGD over them. `members` need `.model`,
    `.opt` (their own SGD, for resumed momentum) and `.cfg`; `Pack.of_models` builds one from bare
    models (bench.speed and the study's throughput probe time it)."""

    def __init__(self, members: list):
        self.members = members
        models = [m.model for m in members]
        params, buffers = stack_module_state(models)
        self.params, self.buffers = params, buffers
        self.base = copy.deepcopy(models[0]).to("meta")
        decay_names = {n for n, p in models[0].named_parameters()
                       if any(p is q for q in models[0].weight_decay_params())}
        cfg = members[0].cfg
        self.opt = torch.optim.SGD(
            [{"params": [p for n, p in params.items() if n in decay_names], "weight_decay": cfg.fc_weight_decay},
             {"params": [p for n, p in params.items() if n not in decay_names], "weight_decay": 0.0}],
            lr=cfg.lr, momentum=cfg.momentum)
        # momentum buffers of resumed members (run_trial's optimiser state) into the stacked state
        for name, p in params.items():
            bufs = [m.opt.state.get(dict(m.model.named_parameters())[name], {}).get("momentum_buffer")
                    for m in members]
            if all(b is not None for b in bufs):
                self.opt.state[p]["momentum_buffer"] = torch.stack(bufs)

    @classmethod
    def of_models(cls, cfg: TrialConfig, models: list) -> "Pack":
        from types import SimpleNamespace
        return cls([SimpleNamespace(model=m, opt=build_optimizer(cfg, m), cfg=cfg) for m in models])

    def forward(self, xb: torch.Tensor) -> torch.Tensor:
        """xb: K x B x 3 x 32 x 32 normalised -> K x B x classes logits."""
        def one(p, b, x):
            return functional_call(self.base, (p, b), (x,))
        return vmap(one)(self.params, self.buffers, xb)

    def loss(self, xb: torch.Tensor, qb: torch.Tensor, amp=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Every member's forward pass and soft cross-entropy on its own batch: xb K x B x 3 x 32 x 32
        (normalised), qb K x B x classes soft targets; `amp` the members' numerics
        (trainables.device.numerics). Returns the K losses and the K x B x classes logits."""
        import contextlib

        with (amp or contextlib.nullcontext)():
            logits = self.forward(xb)
        return vmap(labels.soft_cross_entropy)(logits.float(), qb), logits

    def stepper(self, step_impl: str, amp=None) -> Step:
        """The step `(xb, qb) -> (losses, logits)` of this pack (trainables.loop.Step: eager, or captured
        as one CUDA graph; `step_impl` already resolved for the device)."""
        return Step(lambda x, q: self.loss(x, q, amp), self.opt, self.params.values(), step_impl, stacked=True)

    def forward_of(self, ks: list[int]) -> Callable:
        """The vmapped forward of members `ks` only (all of them: `forward`)."""
        if list(ks) == list(range(len(self.members))):
            return self.forward
        rows = torch.tensor(ks, device=next(iter(self.params.values())).device)
        params = {n: p.index_select(0, rows) for n, p in self.params.items()}
        buffers = {n: b.index_select(0, rows) for n, b in self.buffers.items()}
        return lambda xb: vmap(lambda p, b, x: functional_call(self.base, (p, b), (x,)))(params, buffers, xb)

    @torch.no_grad()
    def evaluate(self, epoch: int, amp, ks: list[int]) -> dict[int, tuple[dict, dict | None, tuple | None]]:
        """The due evaluations after epoch `epoch` (0-based) of members `ks`, in one vmapped pass per
        group of members that share their evaluation sets and what is due (config `pack_eval="vmap"`),
        and after the last epoch CIFAR-10-C likewise (per group of members on the same CIFAR-10-C
        data): member index -> (metrics, calibration record or None, CIFAR-10-C (metrics, seconds of
        the group's pass) or None), for Member.finish_epoch."""
        done, groups, c10c_groups = epoch + 1, {}, {}
        same_norm = self.members[0].cfg.input_norm != "dataset"  # else each member's own mean and std
        for k in ks:
            m = self.members[k]
            test, val = eval_due(m.cfg, done)
            if test or val:
                groups.setdefault((m.d["eval_key"], test, val), []).append(k)
            if done == m.cfg.total_epochs and m.cfg.cifar10c:
                c10c_groups.setdefault(robustness.data_key_fields(m.cfg), []).append(k)
        out = {}
        for (_, test, val), idx in groups.items():
            ms = [self.members[k] for k in idx]
            records = [{} for _ in idx] if done == ms[0].cfg.total_epochs else None
            metrics = evaluate_all_pack(self.forward_of(idx), ms[0].d, [m.norm for m in ms], same_norm, test, val,
                                        records, amp)
            for j, k in enumerate(idx):
                out[k] = (metrics[j], None if records is None else records[j], None)
        for idx in c10c_groups.values():
            ms = [self.members[k] for k in idx]
            t0 = time.perf_counter()
            ev = robustness.load(ms[0].cfg, ms[0].cache_dir)
            forward, norms = self.forward_of(idx), [m.norm for m in ms]
            # as robustness.evaluate: in float32, without the trial's autocast
            metrics = robustness.evaluate_many(
                lambda sets, y: evaluate_pack(forward, norms, same_norm, sets, y, prefix=robustness.PREFIX), ev,
                next(iter(self.params.values())).device)
            seconds = time.perf_counter() - t0
            for j, k in enumerate(idx):
                out[k] = out[k][:2] + ((metrics[j], seconds),)
        return out

    @torch.no_grad()
    def sync_member(self, k: int) -> None:
        """Copy member k's slice of the pack into its own model and optimiser (checkpoint, eval)."""
        m = self.members[k]
        named = dict(m.model.named_parameters())
        for name, p in self.params.items():
            named[name].copy_(p[k])
            buf = self.opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                m.opt.state[named[name]]["momentum_buffer"] = buf[k].clone()
        for g_pack, g_own in zip(self.opt.param_groups, m.opt.param_groups):
            g_own["lr"] = g_pack["lr"]

    def without(self, drop: set[int]) -> "Pack":
        """A pack of the remaining members, their parameters and momentum carried over."""
        keep = [k for k in range(len(self.members)) if k not in drop]
        for k in keep:
            self.sync_member(k)
        return Pack([self.members[k] for k in keep])


def run_packed(configs: list[TrialConfig | dict], report: Callable[[int, dict], None] = lambda k, m: None,
               checkpoint_dirs: list | None = None, cache_dir=None, poison=()) -> list[dict]:
    """Train `configs` as one pack; returns, per member, what its own `run_trial` would return.

    `report(k, metrics)` gets member k's metrics each epoch (run_trial's names and values, the
    checkpoint key included). A member whose loss is NaN/inf is dropped and its entry is
    {"error": <run_trial's message>, "failed_epoch": e}. `checkpoint_dirs`: one folder per member
    (or None); members resume from them, and all unfinished members must resume from the same
    epoch (a pack has one schedule). Finished members are not trained again. `poison`: indices of
    members that start with a NaN weight, the fault-injection hook of study.tuning (IQA_LS_FAULT=nan
    on a packed trial: the lr that injects it unpacked is shared by the pack), nothing else.
    """
    cfgs = [c if isinstance(c, TrialConfig) else TrialConfig.from_dict(c) for c in configs]
    check_packable(cfgs)
    dirs = list(checkpoint_dirs) if checkpoint_dirs is not None else [None] * len(cfgs)
    if len(dirs) != len(cfgs):
        raise PackError(f"{len(dirs)} checkpoint_dirs for {len(cfgs)} configs; allowed: one per config")
    cfg0 = cfgs[0]
    device = setup(cfg0)
    bad = [k for k in poison if not 0 <= k < len(cfgs)]
    if bad:
        raise PackError(f"poison={sorted(poison)}: {bad} not allowed; allowed: member indices 0..{len(cfgs) - 1}")
    members = [Member(c, device, cache_dir, dirs[k], k, k in poison) for k, c in enumerate(cfgs)]
    results: list[dict] = [m.last if m.start_epoch >= m.cfg.epochs else {} for m in members]
    todo = [m for m in members if m.start_epoch < m.cfg.epochs]
    if not todo:
        return results
    start = check_resumable(todo)
    amp = numerics(cfg0, device)  # precision is shared by the pack (PACK_SHARED)
    impl = step_impl_for(cfg0, device)
    pack = Pack(todo)
    step = pack.stepper(impl, amp)
    for epoch in range(start, cfg0.epochs):
        failed = set()
        reports = train_epoch(pack.members, step, epoch, device)
        errors = [loss_error(metrics) for metrics in reports]
        evaluated = {}
        if cfg0.pack_eval == "vmap":  # pack_eval is shared by a pack (PACK_SHARED)
            evaluated = pack.evaluate(epoch, amp, [k for k, e in enumerate(errors) if not e])
        for k, (m, metrics) in enumerate(zip(pack.members, reports)):
            error = errors[k]
            if error:
                results[m.index] = {"error": error, "failed_epoch": epoch + 1}
                failed.add(k)
                continue
            metrics = m.finish_epoch(epoch, metrics, amp, device, lambda k=k: pack.sync_member(k), evaluated.get(k))
            report(m.index, metrics)
            results[m.index] = metrics
        if failed:
            if len(failed) == len(pack.members):
                break
            pack = pack.without(failed)
            step = pack.stepper(impl, amp)
    return results


def check_resumable(todo: list[Member]) -> int:
    """The one epoch the unfinished members resume from, after checking they share it and their
    training-set size (a pack has one schedule and one batch order length)."""
    starts = {m.start_epoch for m in todo}
    if len(starts) > 1:
        raise PackError(f"members resume from epochs {[m.start_epoch for m in todo]}; allowed: one start "
                        "epoch per pack (run the members of each start epoch as their own pack)")
    sizes = {m.d["train_y"].shape[0] for m in todo}
    if len(sizes) > 1:
        raise PackError(f"members train on {sorted(sizes)} images; allowed: one training-set size per pack")
    return starts.pop()
