"""trainables/fast.py: the CUDA-graph training step. Its state and shape logic runs on a CPU; the
capture itself only on CUDA (marked gpu, skipped without one)."""
import pytest
import torch

from trainables import fast
from trainables.config import ConfigError, TrialConfig
from trainables.device import step_impl_for
from trainables.model import build_model, build_optimizer


def _model_opt(momentum=0.9):
    cfg = TrialConfig(momentum=momentum, device="cpu")
    model = build_model(cfg, torch.device("cpu"))
    return cfg, model, build_optimizer(cfg, model)


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    q = torch.softmax(torch.randn(n, 10, generator=g), 1)
    return x, q


def _loss_fn(model):
    from trainables.labels import soft_cross_entropy

    def f(x, q):
        logits = model(x)
        return soft_cross_entropy(logits, q), logits
    return f


def test_auto_is_a_graph_on_cuda_and_eager_on_cpu():
    assert fast.resolve_step_impl("auto", torch.device("cpu")) == "eager"
    assert fast.resolve_step_impl("auto", torch.device("cuda")) == "cuda_graph"
    assert fast.resolve_step_impl("eager", torch.device("cuda")) == "eager"
    with pytest.raises(fast.CaptureError, match="needs a CUDA device"):
        fast.resolve_step_impl("cuda_graph", torch.device("cpu"))
    from trainables.config import TrialError
    with pytest.raises(TrialError, match="needs a CUDA device"):
        step_impl_for(TrialConfig(step_impl="cuda_graph"), torch.device("cpu"))
    with pytest.raises(ConfigError, match="step_impl='graph'"):
        TrialConfig(step_impl="graph")


def test_warm_up_steps_leave_no_trace_after_restore():
    """What capture does before recording: a few real SGD steps, then parameters and momentum put back."""
    _, model, opt = _model_opt(momentum=0.9)
    params = list(model.parameters())
    step = fast.CapturedStep(_loss_fn(model), opt, params)
    x, q = _batch()
    step.eager(x, q)  # momentum buffers exist now, with values
    snap = fast.snapshot(params, opt)
    before = [p.detach().clone() for p in params]
    bufs = [opt.state[p]["momentum_buffer"].clone() for p in params]
    for _ in range(fast.WARMUP_STEPS):
        step.eager(x, q)
    assert any(not torch.equal(p, b) for p, b in zip(params, before))
    fast.restore(params, opt, snap)
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert all(torch.equal(opt.state[p]["momentum_buffer"], b) for p, b in zip(params, bufs))


def test_momentum_created_during_warm_up_is_zeroed_which_equals_no_buffer():
    """SGD's first step without a buffer sets buf = grad; with a zeroed buffer it computes 0*m + grad."""
    x, q = _batch()
    _, a, opt_a = _model_opt(momentum=0.9)
    _, b, opt_b = _model_opt(momentum=0.9)  # same seed: same initial weights
    fa, fb = fast.CapturedStep(_loss_fn(a), opt_a, list(a.parameters())), \
        fast.CapturedStep(_loss_fn(b), opt_b, list(b.parameters()))
    snap = fast.snapshot(list(b.parameters()), opt_b)  # no momentum buffers yet
    fb.eager(x, q)
    fast.restore(list(b.parameters()), opt_b, snap)  # buffers now exist, zeroed
    for _ in range(3):
        fa.eager(x, q)
        fb.eager(x, q)
    assert all(torch.equal(p, r) for p, r in zip(a.parameters(), b.parameters()))


def test_static_buffers_keep_shape_dtype_and_memory_format():
    x, q = _batch()
    sx, sq = fast.static_like(x), fast.static_like(q)
    assert sx.shape == x.shape and sx.dtype == x.dtype and sx.is_contiguous(memory_format=torch.channels_last)
    assert sq.shape == q.shape and sq.is_contiguous() and float(sx.abs().sum()) == 0.0
    packed = torch.randn(3, 8, 3, 32, 32)  # a pack's K x B x C x H x W input stays contiguous
    assert fast.static_like(packed).is_contiguous()


def test_a_failed_capture_trains_eagerly_from_where_it_was(capsys):
    """On a CPU the capture cannot happen: the step warns once and is exactly the eager step."""
    x, q = _batch()
    _, a, opt_a = _model_opt()
    _, b, opt_b = _model_opt()
    graph_step = fast.CapturedStep(_loss_fn(a), opt_a, list(a.parameters()))
    eager_step = fast.CapturedStep(_loss_fn(b), opt_b, list(b.parameters()))
    for _ in range(2):
        la, _ = graph_step(x, q)
        lb, _ = eager_step.eager(x, q)
        assert torch.equal(la, lb)
    assert graph_step.failed and "CaptureError" in graph_step.failed
    assert capsys.readouterr().err.count("CUDA graph capture failed") == 1
    assert all(torch.equal(p, r) for p, r in zip(a.parameters(), b.parameters()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graph_step_equals_eager_on_cuda_including_an_lr_change_and_a_partial_batch():
    torch.backends.cudnn.deterministic = True
    dev = torch.device("cuda")
    cfg = TrialConfig(momentum=0.9, device="cuda")
    a, b = build_model(cfg, dev), build_model(cfg, dev)
    opt_a, opt_b = build_optimizer(cfg, a), build_optimizer(cfg, b)
    ga = fast.CapturedStep(_loss_fn(a), opt_a, list(a.parameters()))
    gb = fast.CapturedStep(_loss_fn(b), opt_b, list(b.parameters()))
    for i in range(6):
        x, q = (t.to(dev) for t in _batch(100 if i != 5 else 37, seed=i))
        if i == 3:
            for o in (opt_a, opt_b):
                for g in o.param_groups:
                    g["lr"] = g["lr"] * 0.1
        la, _ = ga(x, q)
        lb, _ = gb.eager(x, q)
        assert float(la) == pytest.approx(float(lb), rel=1e-4), i
    assert ga.failed is None and ga.graph is not None
    for p, r in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, r, atol=1e-4)
