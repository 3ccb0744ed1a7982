"""One trial: train the Table 1 CNN under one TrialConfig and evaluate on the 10 test sets.

`run_trial(config, report, checkpoint_dir=None)` runs without Ray. It calls `report(metrics)` once
per epoch (the last call carries the 10 test accuracies) and, with `checkpoint_dir`, saves a
checkpoint (trainables/checkpoints.py: model, optimiser, epoch, RNG states, config; written
crash-safe, the one before kept, an unreadable one moved aside) that lets the trial continue exactly
as if it had not stopped: every epoch's randomness (mixture draw, noise, batch order) comes from
generators seeded by (seed, epoch), so the epoch number is all the RNG state a resume needs; the
global torch RNG state is stored as well for anything else that draws from it.

The step, the epoch and the per-epoch record are trainables/loop.py's, shared with the packed
trainer (trainables/packed.py): this module only runs them for one model.
"""
from __future__ import annotations

from typing import Callable

from trainables.checkpoints import load_parent
from trainables.config import TrialConfig, TrialError
from trainables.device import numerics, setup, step_impl_for
from trainables.loop import Member, Step, loss_error, model_loss, train_epoch


def run_trial(config: TrialConfig | dict, report: Callable[[dict], None] = lambda m: None,
              checkpoint_dir=None, cache_dir=None, parent_dir=None) -> dict:
    """Train and evaluate one trial; returns the last reported metrics.

    With `checkpoint_dir`, resumes from the checkpoint there (if any, and if it was written by the
    same config) and writes one every `checkpoint_every` epochs and after the last; each report
    that follows a checkpoint write carries `checkpoint: <dir>` so a caller (Ray) can pick it up.
    A fine-tune (protocol "finetune") without a checkpoint of its own starts from the final weights
    in `parent_dir` (load_parent) at epoch `epochs` with a fresh SGD; with one, it resumes from it.
    """
    cfg = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config)
    device = setup(cfg)
    amp, impl = numerics(cfg, device), step_impl_for(cfg, device)
    m = Member(cfg, device, cache_dir, checkpoint_dir, live_rng=True)
    if cfg.finetune and m.start_epoch < cfg.first_epoch:  # no checkpoint of its own yet: the parent's weights
        m.model.load_state_dict(load_parent(cfg, parent_dir))
        m.start_epoch = cfg.first_epoch
    # after the checkpoint is loaded: a captured graph holds these tensors
    step = Step(model_loss(m.model, amp), m.opt, m.model.parameters(), impl)
    last: dict = {}
    for epoch in range(m.start_epoch, cfg.total_epochs):
        [metrics] = train_epoch([m], step, epoch, device)
        error = loss_error(metrics)
        if error:
            raise TrialError(error)
        last = m.finish_epoch(epoch, metrics, amp, device)
        report(last)
    if not last and m.ckpt_dir:  # resumed a finished trial: hand back its final metrics
        last = dict(m.last)
        if m.note:
            last["checkpoint_note"] = m.note
    return last
