"""Where a trial runs and in which numerics: the device, the process's threads and heap, the
precision's autocast context, and how a step is launched (trainables/fast.py)."""
from __future__ import annotations

import contextlib

import torch

from trainables.config import TrialConfig, TrialError
from trainables.fast import CaptureError, resolve_step_impl


def keep_freed_memory() -> bool:
    """Keep freed CPU tensor memory in the process heap instead of handing it back to the OS.

    glibc returns every freed block above 128 kB to the OS (munmap / heap trim), so each CPU training
    step of the Table 1 CNN re-faults ~80 MB of fresh pages: ~20,000 page faults per batch-100 step
    and 20-25 % of its time (2-core EPYC, torch 2.14.1; bench.speed measures the step). Raising the
    mmap threshold to glibc's maximum (32 MB) and the trim threshold to 1 GB stops that; the cost is
    that the process keeps its peak heap. Process-wide; a no-op (False) without glibc.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrialError(f"device={name!r} requested but CUDA is not available; use device='cpu' or 'auto'")
    return torch.device(name)


def setup(cfg: TrialConfig) -> torch.device:
    """The process set up for a trial (or a pack) of `cfg`: its threads, its device, and on a CPU the
    heap that keeps freed memory (keep_freed_memory)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    if device.type == "cpu":
        keep_freed_memory()
    return device


def numerics(cfg: TrialConfig, device: torch.device):
    """Apply the trial's `precision` and return the context its forward passes run in.

    On CUDA, TF32 for matmuls and cuDNN convolutions is set explicitly for every trial (PyTorch's own
    default lets cuDNN use TF32, which "fp32" switches off); it is process state, so each trial sets it
    before it trains, never relying on what an earlier trial left. "bf16" autocasts the forward pass
    (convolutions and matmuls in bfloat16, log-softmax and the loss in float32) while the parameters,
    gradients and SGD stay float32. On a CPU "tf32" is "fp32" (no TF32 there)."""
    if device.type == "cuda":
        allow = cfg.precision in ("tf32", "bf16")
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.backends.cudnn.allow_tf32 = allow
    if cfg.precision == "bf16":
        # no weight cache: a captured CUDA graph (trainables/fast.py) must not hold cached casts, and in
        # a step every weight is cast once anyway
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext


def step_impl_for(cfg: TrialConfig, device: torch.device) -> str:
    """The trial's step_impl resolved for its device (trainables/fast.py); a bad pairing is a TrialError."""
    try:
        return resolve_step_impl(cfg.step_impl, device)
    except CaptureError as e:
        raise TrialError(str(e)) from None
