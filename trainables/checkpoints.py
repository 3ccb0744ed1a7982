"""A trial's files: its checkpoint (model, optimiser, epoch, RNG state, config, metrics; written
crash-safe, the one before kept as checkpoint.prev.pt, an unreadable one moved aside:
`recover_checkpoint`), its final weights and config (what a fine-tune starts from: `load_parent`).
A finished trial keeps one copy of its weights: final_weights.pt, which its last checkpoint names
instead of holding them again, and no checkpoint.prev.pt (`save_finished`).
Every write goes through trainables.files.atomic_write."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from trainables.config import TrialConfig, TrialError
from trainables.files import atomic_write, atomic_write_text

CHECKPOINT_FILE = "checkpoint.pt"
PREVIOUS_CHECKPOINT_FILE = "checkpoint.prev.pt"  # the checkpoint before the latest: a resume's fallback
FINAL_WEIGHTS_FILE = "final_weights.pt"  # the final model's weights (a fine-tune's child starts from them)
FINAL_CONFIG_FILE = "config.json"  # the config that made them, written with them after the last epoch
CHECKPOINT_KEYS = ("config", "epoch", "model", "optimizer", "rng")  # what a resume needs of one


def atomic_torch_save(obj, path: Path, keep_previous: Path | None = None) -> None:
    """torch.save, crash-safe (trainables.files.atomic_write)."""
    atomic_write(path, lambda fh: torch.save(obj, fh), keep_previous)


def save_checkpoint(checkpoint_dir: Path, state: dict) -> None:
    """Write a trial's checkpoint (run_trial's and run_packed's): CHECKPOINT_FILE, replaced atomically,
    with the one it replaces kept as PREVIOUS_CHECKPOINT_FILE."""
    d = Path(checkpoint_dir)
    atomic_torch_save(state, d / CHECKPOINT_FILE, keep_previous=d / PREVIOUS_CHECKPOINT_FILE)


def save_final(checkpoint_dir: Path, cfg: TrialConfig, weights: dict) -> None:
    """The final artifacts of a trial: its weights alone and the config that made them."""
    d = Path(checkpoint_dir)
    atomic_torch_save(weights, d / FINAL_WEIGHTS_FILE)
    atomic_write_text(d / FINAL_CONFIG_FILE, cfg.to_json())


def save_finished(checkpoint_dir: Path, cfg: TrialConfig, state: dict) -> None:
    """The checkpoint after a trial's last epoch, with one copy of its weights: the final artifacts
    (save_final) first, then CHECKPOINT_FILE holding FINAL_WEIGHTS_FILE's name in place of the
    weights and the optimiser without its momentum (a finished trial takes no further step; a
    fine-tune starts a fresh SGD from the weights), then PREVIOUS_CHECKPOINT_FILE removed. A crash
    between these steps leaves the previous epoch's checkpoint or this one, each readable."""
    d = Path(checkpoint_dir)
    save_final(d, cfg, state["model"])
    optimizer = {**state["optimizer"], "state": {}}
    atomic_torch_save({**state, "model": FINAL_WEIGHTS_FILE, "optimizer": optimizer}, d / CHECKPOINT_FILE)
    (d / PREVIOUS_CHECKPOINT_FILE).unlink(missing_ok=True)


def read_checkpoint(f: Path) -> tuple[dict | None, str | None]:
    """(state, None) for a readable checkpoint file, (None, why) for one that is not. A finished
    trial's checkpoint (save_finished) gets its weights back from FINAL_WEIGHTS_FILE beside it."""
    try:
        state = torch.load(f, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated zip, bad pickle, wrong format: whatever torch says
        return None, " ".join(f"{type(e).__name__}: {e}".split())[:200]
    if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        return None, f"not a trial checkpoint (holds {keys}; needs {list(CHECKPOINT_KEYS)})"
    if not isinstance(state["epoch"], int) or state["epoch"] < 0:
        return None, f"epoch {state['epoch']!r} is not an integer >= 0"
    if state["model"] == FINAL_WEIGHTS_FILE:
        try:
            state["model"] = torch.load(Path(f).parent / FINAL_WEIGHTS_FILE, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - missing or unreadable: whatever torch says
            return None, (f"its weights {FINAL_WEIGHTS_FILE} are unreadable ("
                          + " ".join(f"{type(e).__name__}: {e}".split())[:200] + ")")
    return state, None


def load_checkpoint(checkpoint_dir) -> dict | None:
    """The trial's latest readable checkpoint: CHECKPOINT_FILE, else PREVIOUS_CHECKPOINT_FILE, else None.
    Reads only: unreadable files are left where they are (recover_checkpoint moves them aside)."""
    if not checkpoint_dir:
        return None
    for name in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE):
        f = Path(checkpoint_dir) / name
        if f.exists():
            state, _ = read_checkpoint(f)
            if state is not None:
                return state
    return None


def recover_checkpoint(checkpoint_dir) -> tuple[dict | None, str | None]:
    """(state, note) of the checkpoint a trial resumes from, before it trains.

    An unreadable CHECKPOINT_FILE (or PREVIOUS_CHECKPOINT_FILE) is moved aside, kept as
    `<name>.unreadable-<UTC time>`, and the trial resumes from the previous checkpoint or, with none
    readable, from scratch. `note` is one line saying what happened (None when nothing did); the
    study driver prints it and tags the trial's run with it.
    """
    if not checkpoint_dir:
        return None, None
    d = Path(checkpoint_dir)
    moved, state, used = [], None, None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for name in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE):
        f = d / name
        if state is not None or not f.exists():
            continue
        state, why = read_checkpoint(f)
        if state is None:
            aside = f.with_name(f"{name}.unreadable-{stamp}")
            os.replace(f, aside)
            moved.append(f"{f} is unreadable ({why}), kept as {aside.name}")
        else:
            used = name
    if not moved and used in (None, CHECKPOINT_FILE):
        return state, None
    if state is None:
        return None, "; ".join(moved) + "; the trial restarts from scratch"
    what = "; ".join(moved) or f"{d / CHECKPOINT_FILE} is missing"
    return state, f"{what}; the trial resumes from {used} (epoch {state['epoch']})"


def check_checkpoint_config(state: dict, cfg: TrialConfig, ckpt_dir) -> None:
    """Refuse a checkpoint of another trial. Compared on the defining fields only (config.RUN_FIELDS:
    device, threads and cadences may change between runs), as configs, not dicts: a field added to
    TrialConfig since the checkpoint was written takes its default, which by rule keeps the old
    behaviour."""
    diff = TrialConfig.from_dict(state["config"]).defining_diff(cfg)
    if diff:
        shown = ", ".join(f"{k} {a!r} there, {b!r} here" for k, a, b in diff[:3])
        raise TrialError(f"checkpoint in {ckpt_dir} was written by another config ({shown}); "
                         "use a fresh checkpoint_dir")


def load_parent(cfg: TrialConfig, parent_dir) -> dict:
    """The final weights a fine-tune (protocol "finetune") starts from: `final_weights.pt` of its
    parent's trial folder `parent_dir`, after checking the parent's `config.json` (written with the
    final weights, so both exist only once the parent finished) against the fine-tune
    (TrialConfig.parent_mismatch). Anything missing or different is a TrialError naming it: a
    fine-tune never starts from random weights."""
    who = f"fine-tune of {cfg.finetune_from!r}"
    if not parent_dir:
        raise TrialError(f"{who}: no parent folder given; a fine-tune never starts from random weights")
    d = Path(parent_dir)
    weights, conf = d / FINAL_WEIGHTS_FILE, d / FINAL_CONFIG_FILE
    if not weights.exists() or not conf.exists():
        raise TrialError(f"{who}: the parent has not finished ({weights.name} / {conf.name} not in {d}); "
                         "a fine-tune never starts from random weights")
    try:
        parent = TrialConfig.from_dict(json.loads(conf.read_text()))
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever made them unreadable, in one line
        raise TrialError(f"{who}: the parent's final files in {d} are unreadable ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:200]})") from None
    diff = cfg.parent_mismatch(parent)
    if diff:
        shown = ", ".join(f"{k} {a!r} there, {b!r} needed" for k, a, b in diff[:3])
        raise TrialError(f"{who}: {d} holds another trial ({shown}); the parent must be the Original "
                         "(onehot, from scratch) of the same training set, data, schedule and seed")
    return state
