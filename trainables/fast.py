"""The training step captured as one CUDA graph: forward, backward and SGD update replayed as a unit.

One Table 1 CNN step at batch 100 is bound by kernel launches on a large GPU (H200, bench.speed: CUDA
graphs 795 vs eager 354 steps/s for one model), and a pack of K members is the same number of
launches with K times the work per launch. `CapturedStep` records the whole step once and replays it
for every batch of the same shape: the batch is copied into static input buffers, `replay()` runs
every kernel of forward, backward and `optimizer.step()`, and the losses and logits appear in static
output buffers. What makes it correct:

- warm-up: a few steps on a side stream before capture (cuDNN picks its algorithms, the allocator
  settles, lazily created optimizer state exists), then the parameters and the optimizer's momentum
  buffers are restored in place (`snapshot` / `restore`), so the warm-up steps leave no trace;
- capture records without running: the first real step is the first replay;
- the learning rate is a constant inside the captured SGD kernels, so a change of lr (the staircase
  decay) re-captures (a handful of times in 2000 epochs);
- a batch of another shape (the last, partial batch of an epoch) runs eagerly on the same tensors;
- autocast under capture needs its weight cache off (trainables.device.numerics does that always).

`trainables.loop.Step` builds one for every trainer whose step_impl resolves to "cuda_graph".

`step_impl` (TrialConfig, a run field: the replayed kernels are the eager ones) chooses: "auto" =
"cuda_graph" on CUDA and "eager" on a CPU; "eager"; "cuda_graph" (CUDA only). If a capture fails the
step falls back to eager with one line on stderr, and the trial goes on. Only CUDA runs this path; on
a CPU its shape and state logic is what the tests check.
"""
from __future__ import annotations

import sys
from typing import Callable

import torch

from trainables.config import STEP_IMPLS  # the names live with the config field
WARMUP_STEPS = 3  # PyTorch's CUDA graph notes: a few eager iterations on a side stream before capture


class CaptureError(RuntimeError):
    """The step cannot be captured here (no CUDA, or capture failed); the message says why."""


def resolve_step_impl(step_impl: str, device: torch.device) -> str:
    """"auto" -> "cuda_graph" on CUDA, "eager" elsewhere; "cuda_graph" off CUDA is a CaptureError."""
    if step_impl not in STEP_IMPLS:
        raise CaptureError(f"step_impl={step_impl!r} is not allowed; allowed: {list(STEP_IMPLS)}")
    if step_impl == "auto":
        return "cuda_graph" if device.type == "cuda" else "eager"
    if step_impl == "cuda_graph" and device.type != "cuda":
        raise CaptureError(f"step_impl='cuda_graph' needs a CUDA device, not {device}; allowed here: eager, auto")
    return step_impl


def snapshot(params: list[torch.Tensor], opt: torch.optim.Optimizer) -> dict:
    """Copies of the parameters and of the optimizer's per-parameter tensors (momentum buffers)."""
    return {"params": [p.detach().clone() for p in params],
            "state": {id(p): {k: v.detach().clone() for k, v in opt.state[p].items() if torch.is_tensor(v)}
                      for p in params if p in opt.state}}


@torch.no_grad()
def restore(params: list[torch.Tensor], opt: torch.optim.Optimizer, snap: dict) -> None:
    """Put back what `snapshot` saw, in place (a captured graph keeps the same storage). Optimizer
    state created since (SGD's momentum buffer, made on the first step) is zeroed: SGD's first step
    with a zero buffer computes buf = grad, exactly what it does without one (dampening 0)."""
    for p, saved in zip(params, snap["params"]):
        p.copy_(saved)
    for p in params:
        before = snap["state"].get(id(p), {})
        for k, v in opt.state.get(p, {}).items():
            if torch.is_tensor(v):
                v.copy_(before[k]) if k in before else v.zero_()


def static_like(x: torch.Tensor) -> torch.Tensor:
    """A zeroed buffer of x's shape, dtype, device and memory format: the graph's fixed input."""
    fmt = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous() else torch.contiguous_format
    return torch.zeros_like(x, memory_format=fmt)


class CapturedStep:
    """`step(x, q)` = loss_fn's forward, `.sum().backward()` of its loss and `opt.step()`, replayed from
    one CUDA graph for inputs of the captured shape. `loss_fn(x, q) -> (loss, logits)`; `loss` may be a
    vector (one per pack member: they are summed for backward, each member's parameters only see its
    own). Returns detached (loss, logits) — the static outputs, valid until the next step."""

    def __init__(self, loss_fn: Callable, opt: torch.optim.Optimizer, params: list[torch.Tensor]):
        self.loss_fn, self.opt, self.params = loss_fn, opt, list(params)
        self.graph = None
        self.shape = None
        self.lrs: tuple = ()
        self.failed: str | None = None

    def eager(self, x: torch.Tensor, q: torch.Tensor):
        loss, logits = self.loss_fn(x, q)
        self.opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        self.opt.step()
        return loss.detach(), logits.detach()

    def _lrs(self) -> tuple:
        return tuple(float(g["lr"]) for g in self.opt.param_groups)

    def capture(self, x: torch.Tensor, q: torch.Tensor) -> None:
        """Warm up on a side stream, restore the state, capture one step. On any failure the state is
        restored too, so the caller can go on eagerly from exactly where it was."""
        if x.device.type != "cuda":
            raise CaptureError(f"a CUDA graph needs CUDA tensors, not {x.device}")
        snap = snapshot(self.params, self.opt)
        try:
            self.static_x, self.static_q = static_like(x), static_like(q)
            self.static_x.copy_(x)
            self.static_q.copy_(q)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self.eager(self.static_x, self.static_q)
            torch.cuda.current_stream().wait_stream(side)
            restore(self.params, self.opt, snap)
            self.opt.zero_grad(set_to_none=True)  # grads are allocated inside the graph's pool
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=side):
                loss, logits = self.loss_fn(self.static_x, self.static_q)
                loss.sum().backward()
                self.opt.step()
        except Exception:
            torch.cuda.synchronize()
            restore(self.params, self.opt, snap)
            self.opt.zero_grad(set_to_none=True)
            raise
        self.static_loss, self.static_logits = loss.detach(), logits.detach()
        self.graph, self.shape, self.lrs = graph, (tuple(x.shape), tuple(q.shape)), self._lrs()

    def __call__(self, x: torch.Tensor, q: torch.Tensor):
        if self.failed is not None:
            return self.eager(x, q)
        if self.graph is not None and (tuple(x.shape), tuple(q.shape)) != self.shape:
            return self.eager(x, q)  # another shape: the partial last batch of an epoch
        if self.graph is None or self._lrs() != self.lrs:
            try:
                self.capture(x, q)  # restores the state it warmed up on: the replay below is the step
            except Exception as e:  # noqa: BLE001 - any capture failure: say it once, train eagerly
                self.failed = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                print(f"warning: CUDA graph capture failed ({self.failed}); the step runs eagerly",
                      file=sys.stderr, flush=True)
                self.graph = None
                return self.eager(x, q)
        self.static_x.copy_(x)
        self.static_q.copy_(q)
        self.graph.replay()
        return self.static_loss, self.static_logits
