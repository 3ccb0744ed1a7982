"""The one training loop of every trainer: a lone trial (trainables/train.py), a pack
(trainables/packed.py), the bench (bench/speed.py) and a study's throughput probe all train with it.

- `Step`: one SGD step (forward, soft cross-entropy, backward, update) of one model or of a pack,
  eager or replayed from one CUDA graph (trainables/fast.py), in the trial's numerics
  (device.numerics). Every speed lever of a step lands here.
- `Member`: one trial's state: config, prepared data, distortion bank, target map, normalisation,
  model, optimiser, checkpoint folder and its record (resumed from a checkpoint when there is one).
- `train_epoch`: one epoch of one or K members: each member's own data draw (mixture, noise, batch
  order, targets), the steps, and each member's training metrics (`epoch_metrics`, built once).
- `Member.finish_epoch`: the evaluations that are due, the calibration and CIFAR-10-C artifacts after
  the last epoch, the history and the checkpoint.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from trainables import labels, robustness
from trainables.checkpoints import check_checkpoint_config, recover_checkpoint, save_checkpoint, save_finished
from trainables.config import NUM_CLASSES, TrialConfig
from trainables.evaluation import eval_due, evaluate_all, write_calibration
from trainables.fast import CapturedStep
from trainables.files import atomic_write_text
from trainables.model import build_model, build_optimizer
from trainables.prep import (SCORE_HIST_FILE, batch_norm_fn, epoch_data, pack_epoch_data, prepare_data,
                             score_histogram, target_map, trial_bank, true_class_t)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so a clock reads the work done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------ the step
def model_loss(model, amp) -> Callable:
    """`loss_fn(x, q) -> (loss, logits)` of one model: forward in the trial's numerics `amp`
    (device.numerics), soft cross-entropy in float32."""
    def loss_fn(xb, qb):
        with amp():
            logits = model(xb)
        return labels.soft_cross_entropy(logits.float(), qb), logits
    return loss_fn


class Step:
    """`step(x, q) -> (losses, logits)`, detached: `loss_fn`'s forward, `.sum().backward()` of its loss
    (a scalar for one model, K losses for a pack: member k's parameters only see member k's loss) and
    `opt.step()`. `impl` is the trial's step_impl resolved for its device (device.step_impl_for):
    "cuda_graph" replays the whole step from one CUDA graph (trainables/fast.py), "eager" runs it.
    `stacked`: the batches are K x B (a pack) rather than B (one model). `forward` and `backward` are
    the eager step's two halves (the bench times them)."""

    def __init__(self, loss_fn: Callable, opt: torch.optim.Optimizer, params, impl: str = "eager",
                 stacked: bool = False):
        self.loss_fn, self.opt, self.stacked = loss_fn, opt, stacked
        self.captured = CapturedStep(loss_fn, opt, list(params)) if impl == "cuda_graph" else None

    def forward(self, x: torch.Tensor, q: torch.Tensor):
        return self.loss_fn(x, q)

    def backward(self, loss: torch.Tensor) -> None:
        loss.sum().backward()

    def __call__(self, x: torch.Tensor, q: torch.Tensor):
        if self.captured is not None:
            return self.captured(x, q)
        loss, logits = self.forward(x, q)
        self.opt.zero_grad(set_to_none=True)
        self.backward(loss)
        self.opt.step()
        return loss.detach(), logits.detach()


# ------------------------------------------------------------------ one trial's state
class Member:
    """One trial: its config, data, model (trained alone, or a pack's copy for evaluation and
    checkpoints) and record. With `ckpt_dir` it resumes from the checkpoint there (recover_checkpoint;
    refused if another config wrote it). `live_rng`: a lone trial, whose checkpoint stores the process's
    global torch RNG state and restores it on resume; a pack's member stores its state after its
    model's init instead (the process's state is the last member's). `poison`: a NaN weight, the
    fault-injection hook of run_packed."""

    def __init__(self, cfg: TrialConfig, device: torch.device, cache_dir=None, ckpt_dir=None, index: int = 0,
                 poison: bool = False, live_rng: bool = False):
        self.index, self.cfg, self.cache_dir, self.live_rng = index, cfg, cache_dir, live_rng
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir else None
        self.d = prepare_data(cfg, device, cache_dir)
        self.tmap = target_map(cfg)
        self.bank = trial_bank(cfg, self.d, cache_dir)
        self.norm = batch_norm_fn(cfg, self.d["train_x"])
        self.model = build_model(cfg, device)
        if poison:
            with torch.no_grad():
                self.model.fc3.bias[0] = float("nan")
        self.rng = torch.get_rng_state()  # the state after init: what a pack member's checkpoint stores
        self.opt = build_optimizer(cfg, self.model)
        self.start_epoch, self.history, self.last = 0, [], {}
        self.note = None  # what recover_checkpoint did, if anything: goes out with the first report
        if self.ckpt_dir:
            self.resume()

    def resume(self) -> None:
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        state, self.note = recover_checkpoint(self.ckpt_dir)
        if state is None:
            return
        check_checkpoint_config(state, self.cfg, self.ckpt_dir)  # the defining fields
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.rng = state["rng"]["torch"]
        if self.live_rng:
            torch.set_rng_state(self.rng)
        self.start_epoch = state["epoch"]
        self.history = list(state.get("history", []))  # every epoch's metrics so far (see finish_epoch)
        if "metrics" in state:
            self.last = dict(state["metrics"], checkpoint=str(self.ckpt_dir))

    def save(self, epochs_done: int, metrics: dict, last_epoch: bool) -> None:
        """The checkpoint after `epochs_done` epochs and, after the last, the final weights and config."""
        rng = torch.get_rng_state() if self.live_rng else self.rng
        state = {"config": self.cfg.to_dict(), "epoch": epochs_done, "model": self.model.state_dict(),
                 "optimizer": self.opt.state_dict(), "rng": {"torch": rng}, "metrics": metrics,
                 "history": self.history}
        if last_epoch:  # the final artifacts (weights alone, the config) and a checkpoint that names them
            save_finished(self.ckpt_dir, self.cfg, state)
        else:
            save_checkpoint(self.ckpt_dir, state)

    def draw(self, epoch: int, device: torch.device, drawn: tuple | None = None) -> "Drawn":
        """This member's epoch `epoch` (0-based): images, T, soft targets and batch order, from its own
        seed (prep.epoch_data, or `drawn`: its part of prep.pack_epoch_data); its first epoch's score
        histogram goes to its checkpoint folder, before the first checkpoint, so a resume keeps it."""
        cfg = self.cfg
        xs, scores, level, kind, g = drawn or epoch_data(cfg, epoch, self.d["train_x"], device, self.bank)
        t = true_class_t(cfg, self.tmap, scores)
        targets = labels.targets_from_t(self.d["train_y"], t, NUM_CLASSES)
        if epoch == cfg.first_epoch and self.ckpt_dir:
            atomic_write_text(self.ckpt_dir / SCORE_HIST_FILE, json.dumps(
                score_histogram(cfg, self.tmap, scores, level, kind, epoch + 1), sort_keys=True))
        order = torch.randperm(xs.shape[0], generator=g).to(device)
        return Drawn(xs, self.d["train_y"], t, targets, order)

    def finish_epoch(self, epoch: int, metrics: dict, amp, device: torch.device,
                     sync_model: Callable[[], None] | None = None, evaluated: tuple | None = None) -> dict:
        """After epoch `epoch` (0-based) trained: the due evaluations, the final artifacts, the history
        and the checkpoint; returns the epoch's report. `sync_model` copies a pack's weights into
        `self.model` (called only when they are needed). `evaluated`: (metrics, calibration record,
        CIFAR-10-C (metrics, seconds) or None) of this epoch's due evaluations done already (a pack's
        vmapped pass, Pack.evaluate)."""
        cfg, done = self.cfg, epoch + 1
        last_epoch = done == cfg.total_epochs
        test_due, val_due = eval_due(cfg, done)
        due_ckpt = bool(self.ckpt_dir) and (last_epoch or done % cfg.checkpoint_every == 0)
        c10c_done = None if evaluated is None else evaluated[2]
        needs_model = (due_ckpt or (evaluated is None and (test_due or val_due))
                       or (last_epoch and bool(cfg.cifar10c) and c10c_done is None))
        if sync_model is not None and needs_model:
            sync_model()
        record = {} if last_epoch else None
        if evaluated is None:
            metrics.update(evaluate_all(self.model, self.d, self.norm, test_due, val_due, record, amp))
        else:
            metrics.update(evaluated[0])
            if record is not None and evaluated[1]:
                record.update(evaluated[1])
        if last_epoch:  # before the checkpoint that marks the trial finished, so a resume keeps them
            write_calibration(self.ckpt_dir, cfg, done, record)
            if cfg.cifar10c:  # issue 14: the final model on CIFAR-10-C (trainables/robustness.py)
                metrics.update(robustness.final_evaluation(self.model, cfg, self.norm, device, self.ckpt_dir,
                                                           self.cache_dir, done, c10c_done))
        # The metrics of every epoch so far travel with the checkpoint: a driver that died (or a
        # node lost) between a checkpoint and the report reaching MLflow can fill that gap from it.
        self.history.append(dict(metrics))
        if due_ckpt:
            self.save(done, metrics, last_epoch)
            metrics["checkpoint"] = str(self.ckpt_dir)
        if self.note:
            metrics["checkpoint_note"], self.note = self.note, None
        return metrics


# ------------------------------------------------------------------ the epoch
@dataclass
class Drawn:
    """One member's epoch: images (uint8), labels, T, soft targets, batch order (all on the device)."""
    xs: torch.Tensor
    y: torch.Tensor
    t: torch.Tensor
    targets: torch.Tensor
    order: torch.Tensor


class Batches:
    """The epoch's batches (x normalised, soft targets, labels): B-sized for one model, K x B for a
    pack (each member's own images in its own order; input_norm "dataset" by each member's own
    statistics). A pack's epoch is stacked here, at once (it is part of the epoch's data time)."""

    def __init__(self, members: list[Member], drawn: list[Drawn], stacked: bool, batch_size: int,
                 xs: torch.Tensor | None = None):
        self.members, self.drawn, self.stacked, self.bs = members, drawn, stacked, batch_size
        self.n = drawn[0].order.shape[0]
        if stacked:  # `xs`: the images stacked already (prep.pack_epoch_data)
            self.ys, self.qs, self.orders = (torch.stack([getattr(e, f) for e in drawn])
                                             for f in ("y", "targets", "order"))
            self.xs = xs if xs is not None else torch.stack([e.xs for e in drawn])
            self.rows = torch.arange(len(members), device=self.orders.device)[:, None]

    def __iter__(self):
        if not self.stacked:
            m, e = self.members[0], self.drawn[0]
            for i in range(0, self.n, self.bs):
                idx = e.order[i:i + self.bs]
                yield m.norm(e.xs[idx]), e.targets[idx], e.y[idx]
            return
        k, rows = len(self.members), self.rows
        per_member = self.members[0].cfg.input_norm == "dataset"  # input_norm is shared by a pack
        for i in range(0, self.n, self.bs):
            idx = self.orders[:, i:i + self.bs]
            if per_member:
                xb = torch.stack([m.norm(self.xs[j, idx[j]]) for j, m in enumerate(self.members)])
            else:
                xb = self.members[0].norm(self.xs[rows, idx].flatten(0, 1)).unflatten(0, (k, idx.shape[1]))
            yield xb, self.qs[rows, idx], self.ys[rows, idx]


def epoch_batches(members: list[Member], epoch: int, device: torch.device, stacked: bool,
                  batched: bool) -> tuple[list[Drawn], Batches]:
    """Every member's epoch `epoch` drawn and its batches: one member at a time, or (`batched`, the
    config's pack_data="batched", shared by a pack) all in one pass (prep.pack_epoch_data), bit for
    bit the same on a CPU. bench.gpu_check.lever_times times the two side by side."""
    xs = None
    if batched:
        xs, parts = pack_epoch_data([m.cfg for m in members], epoch, [m.d["train_x"] for m in members], device,
                                    [m.bank for m in members])
        drawn = [m.draw(epoch, device, (xs[k], *parts[k])) for k, m in enumerate(members)]
    else:
        drawn = [m.draw(epoch, device) for m in members]
    return drawn, Batches(members, drawn, stacked, members[0].cfg.batch_size, xs)


def epoch_metrics(cfg: TrialConfig, epoch: int, lr: float, loss: float, correct: int, e: Drawn,
                  epoch_time: float, data_time: float) -> dict:
    """A member's training metrics of epoch `epoch` (0-based), the names every trainer reports."""
    n, bs = e.order.shape[0], cfg.batch_size
    # per-batch record of Eq. 1's hazard, vectorised: targets below 1/K per batch of the order
    below = (e.t[e.order] < 1.0 / NUM_CLASSES).float()
    nb = n // bs
    below_chance_max = float(below[: nb * bs].view(nb, -1).mean(1).max()) if nb else 0.0
    return {"epoch": epoch + 1, "loss": loss, "lr": lr, "train_acc": correct / n,
            **labels.target_stats(e.t, NUM_CLASSES), "frac_below_chance_max_batch": below_chance_max,
            "epoch_time": epoch_time, "images_per_s": n / epoch_time, "data_time": data_time,
            "data_share": data_time / epoch_time}


def loss_error(metrics: dict) -> str | None:
    """Why a member cannot go on after this epoch (its loss is not finite), or None."""
    if math.isfinite(metrics["loss"]):
        return None
    return f"loss is {metrics['loss']} at epoch {metrics['epoch']} (lr={metrics['lr']}); trial stopped"


def train_epoch(members: list[Member], step: Step, epoch: int, device: torch.device) -> list[dict]:
    """Epoch `epoch` (0-based) of `members` (one, or a pack's K) with `step` (whose optimiser gets the
    epoch's lr): each member's data drawn (timed: the data_time figure; one member at a time, or with
    the config's `pack_data="batched"` all in one pass, prep.pack_epoch_data), the steps, and per
    member `epoch_metrics`. A non-finite loss is reported, not raised (loss_error)."""
    t0 = time.perf_counter()
    cfg = members[0].cfg  # the schedule is shared by a pack
    lr = cfg.lr_at(epoch)
    for group in step.opt.param_groups:
        group["lr"] = lr
    drawn, data = epoch_batches(members, epoch, device, step.stacked, cfg.pack_data == "batched")
    sync(device)
    t_data = time.perf_counter() - t0
    loss_sum = torch.zeros(len(members), device=device)
    correct = torch.zeros(len(members), device=device, dtype=torch.long)
    steps = 0
    for xb, qb, yb in data:
        loss, logits = step(xb, qb)
        loss_sum += loss
        correct += (logits.argmax(-1) == yb).sum(-1)
        steps += 1
    mean_loss = [v / steps for v in loss_sum.tolist()]  # float32 sums, as a Python float each
    correct = correct.tolist()
    sync(device)
    dt = time.perf_counter() - t0
    return [epoch_metrics(m.cfg, epoch, lr, mean_loss[k], correct[k], drawn[k], dt, t_data)
            for k, m in enumerate(members)]

