"""Packed trials: K trial configs that share a schedule, trained as one vmapped model.

A Table 1 CNN step at batch 100 is ~19 GFLOP: far too little to fill a large GPU, so trials run
one per GPU leave most of it idle. `run_packed(configs, report)` trains K configs together: their
parameters are stacked (`torch.func.stack_module_state`), one `vmap(functional_call(PaperCNN))`
runs all K models per step (convolutions become one grouped convolution, the fc layers batched
matmuls), and one SGD step updates the stacked parameters (SGD is elementwise, so that is K
separate SGDs). Everything else is per member and is exactly what its own `run_trial` does: the
mixture draw, noise, batch order and targets come from `trainables.train.epoch_data` with the
member's own seed and config; the metrics carry the same names; checkpoints go to one folder per
member in `run_trial`'s format, so a member can resume alone (`run_trial`) or in a pack. A member
whose epoch loss is not finite is dropped from the pack and returned as failed; the others go on.

What members must share (PACK_SHARED): the schedule (epochs, batch size, lr and its decay,
momentum, fc weight decay), the training data (source, subset size, validation split size), the model code path
(LRN implementation, memory format, input normalisation, numerics), device, threads and how a step
is launched (eager or one CUDA graph, trainables/fast.py). They may differ in
everything else: seed, the training subset's seed (each member then trains on its own subset of
the pack's one size), train set, regularisation, T map, IQA metric, mix, init, distortion options,
test sets, evaluation and checkpoint cadence. `pack_key(cfg)` groups a study's configs into packs.

Numerics: the grouped convolution sums in another order than K separate ones, so a member's losses
and weights match its separate run to float32 rounding (tests/test_packed.py), not bit for bit.
"""
from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
from torch.func import functional_call, stack_module_state, vmap

from trainables import data as data_mod
from trainables import labels
from trainables import train as T
from trainables.config import NUM_CLASSES, TrialConfig
from trainables.mixture import DistortionBank

# Fields every member of a pack must share (see the module docstring). device and threads only run a
# trial (config.RUN_FIELDS) but a pack is one process on one device: its members share them by force.
# The training subset's seed may differ (members then train on their own subsets of one size).
PACK_SHARED = ("epochs", "batch_size", "lr", "lr_decay", "lr_decay_every", "momentum", "fc_weight_decay",
               "data", "subset", "val_size", "lrn_impl", "channels_last", "input_norm", "precision",
               "device", "threads", "step_impl")


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


class _Member:
    """One trial of the pack: its config, data, model (for evaluation and checkpoints) and record."""

    def __init__(self, index: int, cfg: TrialConfig, device, cache_dir, ckpt_dir, poison: bool = False):
        self.index, self.cfg, self.ckpt_dir = index, cfg, Path(ckpt_dir) if ckpt_dir else None
        self.d = T.prepare_data(cfg, device, cache_dir)
        self.tmap = T.target_map(cfg)
        self.bank = None
        if cfg.precompute and cfg.types:  # shared with every trial of this process, as in run_trial
            bkey = (self.d["subset_key"], cfg.iqa_metric)
            if bkey not in self.d["banks"]:
                self.d["banks"][bkey] = DistortionBank(self.d["train_x"], self.d["subset_key"], cfg.iqa_metric,
                                                       T.distortion_options(cfg),
                                                       cache_dir or data_mod.default_cache_dir())
            self.bank = self.d["banks"][bkey]
        self.model = T.build_model(cfg, device)
        if poison:  # fault injection (run_packed's `poison`): a NaN weight makes every loss NaN
            with torch.no_grad():
                self.model.fc3.bias[0] = float("nan")
        self.rng = torch.get_rng_state()  # what run_trial's checkpoint stores: the state after init
        self.opt = T.build_optimizer(cfg, self.model)
        self.start_epoch, self.history, self.last = 0, [], {}
        self.note = None  # what recover_checkpoint did, if anything (run_trial's checkpoint_note)
        self._stats = None  # input_norm="dataset": mean and std of the training images
        if self.ckpt_dir:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            state, self.note = T.recover_checkpoint(self.ckpt_dir)
            if state is not None:
                T.check_checkpoint_config(state, cfg, self.ckpt_dir)  # as run_trial: defining fields
                self.model.load_state_dict(state["model"])
                self.opt.load_state_dict(state["optimizer"])
                self.rng = state["rng"]["torch"]
                self.start_epoch = state["epoch"]
                self.history = list(state.get("history", []))
                self.last = dict(state["metrics"], checkpoint=str(self.ckpt_dir))

    def norm(self, xb):
        """run_trial's batch normalisation for this member."""
        mean = std = None
        if self.cfg.input_norm == "dataset":
            if self._stats is None:
                x = self.d["train_x"].float().div(255)
                self._stats = (x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True))
            mean, std = self._stats
        fmt = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
        return T.normalize(xb, self.cfg.input_norm, mean, std).contiguous(memory_format=fmt)


class Pack:
    """The stacked parameters of K members and one SGD over them. `members` need `.model`,
    `.opt` (their own SGD, for resumed momentum) and `.cfg`; `Pack.of_models` builds one from bare
    models (study.bench times packed against separate steps with it)."""

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
        return cls([SimpleNamespace(model=m, opt=T.build_optimizer(cfg, m), cfg=cfg) for m in models])

    def forward(self, xb: torch.Tensor) -> torch.Tensor:
        """xb: K x B x 3 x 32 x 32 normalised -> K x B x classes logits."""
        def one(p, b, x):
            return functional_call(self.base, (p, b), (x,))
        return vmap(one)(self.params, self.buffers, xb)

    def loss(self, xb: torch.Tensor, qb: torch.Tensor, amp=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Every member's forward pass and soft cross-entropy on its own batch: xb K x B x 3 x 32 x 32
        (normalised), qb K x B x classes soft targets; `amp` the members' numerics
        (trainables.train.numerics). Returns the K losses and the K x B x classes logits."""
        import contextlib

        with (amp or contextlib.nullcontext)():
            logits = self.forward(xb)
        return vmap(labels.soft_cross_entropy)(logits.float(), qb), logits

    def train_step(self, xb: torch.Tensor, qb: torch.Tensor, amp=None) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step of every member on its own batch (see `loss`). Returns the K losses and the
        logits (detached)."""
        loss, logits = self.loss(xb, qb, amp)
        self.opt.zero_grad(set_to_none=True)
        loss.sum().backward()  # member k's parameters only see member k's loss
        self.opt.step()
        return loss.detach(), logits.detach()

    def stepper(self, step_impl: str, amp=None):
        """The step `(xb, qb) -> (losses, logits)` of this pack: eager, or captured as one CUDA graph
        (trainables/fast.py; `step_impl` already resolved for the device)."""
        if step_impl == "cuda_graph":
            from trainables.fast import CapturedStep
            return CapturedStep(lambda x, q: self.loss(x, q, amp), self.opt, list(self.params.values()))
        return lambda x, q: self.train_step(x, q, amp)

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


def _save(m: _Member, epoch: int, metrics: dict, last_epoch: bool) -> None:
    """run_trial's checkpoint, written for one member (same keys, same files)."""
    cfg, ckpt_dir = m.cfg, m.ckpt_dir
    T.save_checkpoint(ckpt_dir, {"config": cfg.to_dict(), "epoch": epoch + 1,
                                 "model": m.model.state_dict(), "optimizer": m.opt.state_dict(),
                                 "rng": {"torch": m.rng}, "metrics": metrics, "history": m.history})
    if last_epoch:
        T._atomic_torch_save(m.model.state_dict(), ckpt_dir / T.FINAL_WEIGHTS_FILE)
        T._atomic_write_text(ckpt_dir / T.FINAL_CONFIG_FILE, cfg.to_json())


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
    if cfg0.threads:
        torch.set_num_threads(cfg0.threads)
    device = T.pick_device(cfg0.device)
    if device.type == "cpu":
        T.keep_freed_memory()
    bad = [k for k in poison if not 0 <= k < len(cfgs)]
    if bad:
        raise PackError(f"poison={sorted(poison)}: {bad} not allowed; allowed: member indices 0..{len(cfgs) - 1}")
    members = [_Member(k, c, device, cache_dir, dirs[k], k in poison) for k, c in enumerate(cfgs)]
    results: list[dict] = [m.last if m.start_epoch >= m.cfg.epochs else {} for m in members]
    todo = [m for m in members if m.start_epoch < m.cfg.epochs]
    if not todo:
        return results
    starts = {m.start_epoch for m in todo}
    if len(starts) > 1:
        raise PackError(f"members resume from epochs {[m.start_epoch for m in todo]}; allowed: one start "
                        "epoch per pack (run the members of each start epoch as their own pack)")
    sizes = {m.d["train_y"].shape[0] for m in todo}
    if len(sizes) > 1:
        raise PackError(f"members train on {sorted(sizes)} images; allowed: one training-set size per pack")
    n, bs = sizes.pop(), cfg0.batch_size
    amp = T.numerics(cfg0, device)  # precision is shared by the pack (PACK_SHARED)
    impl = T.step_impl_for(cfg0, device)
    pack = Pack(todo)
    step = pack.stepper(impl, amp)
    for epoch in range(starts.pop(), cfg0.epochs):
        t0 = time.perf_counter()
        lr = cfg0.lr_at(epoch)
        for group in pack.opt.param_groups:
            group["lr"] = lr
        # -- each member's epoch, exactly as its run_trial builds it
        xs, ys, ts, targets, orders = [], [], [], [], []
        for m in pack.members:
            y = m.d["train_y"]  # each member's own subset (its subset_seed), of the pack's one size
            x_e, scores, level, kind, g = T.epoch_data(m.cfg, epoch, m.d["train_x"], device, m.bank)
            t = T.true_class_t(m.cfg, m.tmap, scores)
            if epoch == 0 and m.ckpt_dir:
                T._atomic_write_text(m.ckpt_dir / T.SCORE_HIST_FILE,
                                     json.dumps(T.score_histogram(m.cfg, m.tmap, scores, level, kind), sort_keys=True))
            xs.append(x_e)
            ys.append(y)
            ts.append(t)
            targets.append(labels.targets_from_t(y, t, NUM_CLASSES))
            orders.append(torch.randperm(n, generator=g).to(device))
        X, Y, Q, O = torch.stack(xs), torch.stack(ys), torch.stack(targets), torch.stack(orders)  # K x n x ...
        K = len(pack.members)
        rows = torch.arange(K, device=device)[:, None]
        if device.type == "cuda":
            torch.cuda.synchronize()
        t_data = time.perf_counter() - t0
        # -- the optimisation, all members per step
        loss_sum = torch.zeros(K, device=device)
        correct = torch.zeros(K, device=device, dtype=torch.long)
        steps = 0
        # input_norm is shared; "dataset" normalises by each member's own training images
        per_member = cfg0.input_norm == "dataset"
        norm = pack.members[0].norm
        for i in range(0, n, bs):
            idx = O[:, i:i + bs]
            b = idx.shape[1]
            if per_member:
                xb = torch.stack([m.norm(X[k, idx[k]]) for k, m in enumerate(pack.members)])
            else:
                xb = norm(X[rows, idx].flatten(0, 1)).unflatten(0, (K, b))
            loss, logits = step(xb, Q[rows, idx])
            loss_sum += loss
            correct += (logits.argmax(-1) == Y[rows, idx]).sum(-1)
            steps += 1
        mean_loss = [v / steps for v in loss_sum.tolist()]  # as run_trial: float(sum) / steps
        correct = correct.tolist()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        failed = set()
        for k, m in enumerate(pack.members):
            if not math.isfinite(mean_loss[k]):
                msg = f"loss is {mean_loss[k]} at epoch {epoch + 1} (lr={lr}); trial stopped"
                results[m.index] = {"error": msg, "failed_epoch": epoch + 1}
                failed.add(k)
                continue
            below = (ts[k][orders[k]] < 1.0 / NUM_CLASSES).float()
            nb = n // bs
            below_chance_max = float(below[: nb * bs].view(nb, -1).mean(1).max()) if nb else 0.0
            metrics = {
                "epoch": epoch + 1, "loss": mean_loss[k], "lr": lr, "train_acc": correct[k] / n,
                **labels.target_stats(ts[k], NUM_CLASSES), "frac_below_chance_max_batch": below_chance_max,
                "epoch_time": dt, "images_per_s": n / dt, "data_time": t_data, "data_share": t_data / dt,
            }
            last_epoch = epoch + 1 == m.cfg.epochs
            test_due, val_due = T.eval_due(m.cfg, epoch + 1)
            due_ckpt = m.ckpt_dir and (last_epoch or (epoch + 1) % m.cfg.checkpoint_every == 0)
            if test_due or val_due or due_ckpt:
                pack.sync_member(k)
            record = {} if last_epoch else None
            metrics.update(T.evaluate_all(m.model, m.d, m.norm, test_due, val_due, record, amp))
            if last_epoch:
                T.write_calibration(m.ckpt_dir, m.cfg, epoch + 1, record)
                if m.cfg.cifar10c:  # as run_trial: the final model on CIFAR-10-C (trainables/robustness.py)
                    from trainables import robustness
                    metrics.update(robustness.final_evaluation(m.model, m.cfg, m.norm, device, m.ckpt_dir,
                                                               cache_dir, epoch + 1))
            m.history.append(dict(metrics))
            if due_ckpt:
                _save(m, epoch, metrics, last_epoch)
                metrics["checkpoint"] = str(m.ckpt_dir)
            if m.note:
                metrics["checkpoint_note"], m.note = m.note, None
            report(m.index, metrics)
            results[m.index] = metrics
        if failed:
            if len(failed) == K:
                break
            pack = pack.without(failed)
            step = pack.stepper(impl, amp)
    return results
