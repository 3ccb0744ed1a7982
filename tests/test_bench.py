"""bench.speed runs end to end and its agreement checks pass; the hot-path rewrites it measures
(hand-written LRN backward, ceil-mode pooling, FLOP count) are exact. No speed targets here: CI
machines are noisy, and the ratios are for `python -m bench.speed` on a named machine."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from trainables.model import FastLRN, PaperCNN, tf_same_pool, torch_lrn

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "cifar10-mini"
TOP_LEVEL = ("data_path_speedup_0_workers", "data_path_speedup_workers", "train_step_speedup",
             "train_step_peak_share", "epoch_outside_share")


@pytest.mark.slow
def test_tiny_bench_writes_numbers_and_its_agreement_checks_pass(tmp_path):
    pytest.importorskip("skimage")
    out = tmp_path / "bench.json"
    env = dict(os.environ, IQA_LS_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "bench.speed", "--tiny", "--device", "cpu", "--json", str(out),
                           "--data", str(FIXTURE)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    for key in TOP_LEVEL:
        assert isinstance(res[key], float) and math.isfinite(res[key]) and res[key] > 0, key
    assert 0 < res["epoch_outside_share"] < 1 and 0 < res["train_step_peak_share"]
    ag = res["data_path"]["agreement"]
    assert res["agreement_passed"] is True and ag["passed"] is True and ag["n_checked"] > 0
    for kind in ("blur", "noise", "jpeg"):  # every kind was compared on real images
        assert ag[f"{kind}_images"] > 0
    assert ag["jpeg_max_abs_grey"] == 0 and ag["pristine_max_abs_grey"] == 0
    assert ag["ssim_max_abs"] <= 1e-3 and ag["targets_max_abs"] <= 1e-3
    assert res["epoch"]["run_trial_loss_matches"] is True
    m = res["machine"]
    assert m["dtype"] == "float32" and m["versions"]["torch"] == torch.__version__
    assert res["sizes"]["repeats"] >= 3
    assert "agreement before timing" in proc.stdout and "passed" in proc.stdout
    # the report says which step a trial's run_trial takes here: eager fp32 on a CPU (the CUDA graph on CUDA)
    assert res["fast_path"] == {"step_impl": "eager", "precision": "fp32"}
    assert "step_impl, precision" in proc.stdout and "eager, fp32" in proc.stdout
    # section 5: the pack levers old beside new, agreeing before they were timed
    lv = res["levers"]
    assert lv["members"] == 2 and lv["agreement"]["data_images_equal"] is True
    assert min(lv["data_s"].values()) > 0 and min(lv["eval_s"].values()) > 0 and "levers, pack of 2" in proc.stdout


def test_flop_count_is_the_issues_186_8_mflop_per_training_image():
    from bench.speed import count_flops

    # by hand: conv1 32*32*64*75, conv2 16*16*64*1600, fc 4096*384 + 384*192 + 192*10 MACs
    macs = 32 * 32 * 64 * 75 + 16 * 16 * 64 * 1600 + 4096 * 384 + 384 * 192 + 192 * 10
    conv1 = 32 * 32 * 64 * 75
    flops = count_flops(PaperCNN())
    assert flops["forward_flop"] == 2 * macs
    assert flops["train_flop"] == 6 * macs - 2 * conv1  # backward = 2 x forward - conv1's input grad
    assert round(flops["train_mflop"], 1) == 186.8


def test_fast_lrn_backward_passes_gradcheck():
    torch.manual_seed(0)
    x = (torch.randn(1, 10, 3, 3, dtype=torch.float64) * 3).requires_grad_()
    lrn = FastLRN(10).double()
    assert torch.autograd.gradcheck(lambda t: lrn(t), (x,))
    lrn.beta = 0.6  # the general d^-beta branch too
    assert torch.autograd.gradcheck(lambda t: lrn(t), (x,))


def test_fast_lrn_gradient_equals_torch_lrn_in_channels_last():
    torch.manual_seed(0)
    x = (torch.randn(4, 64, 16, 16) * 3).contiguous(memory_format=torch.channels_last)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = FastLRN(64)(a), torch_lrn()(b)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    assert torch.allclose(ya, yb, atol=1e-5) and torch.allclose(a.grad, b.grad, atol=1e-5)


@pytest.mark.parametrize("h,w", [(32, 32), (16, 16), (4, 4), (7, 8), (9, 9), (8, 5)])
def test_pool_equals_tf_same_padding_formula(h, w):
    def tf_same(x):  # TF: out = ceil(n / 2), pad total max((out - 1) * 2 + 3 - n, 0), the extra one after
        pads = []
        for n in (w, h):
            total = max((-(-n // 2) - 1) * 2 + 3 - n, 0)
            pads += [total // 2, total - total // 2]
        return F.max_pool2d(F.pad(x, pads, value=float("-inf")), 3, 2)

    x = torch.randn(2, 3, h, w)
    assert torch.equal(tf_same_pool(x), tf_same(x))
    xr = x.clone().requires_grad_()
    xt = x.clone().requires_grad_()
    tf_same_pool(xr).sum().backward()
    tf_same(xt).sum().backward()
    assert torch.equal(xr.grad, xt.grad)  # the same argmax: identical gradients


def test_keep_freed_memory_is_harmless_to_call():
    from trainables.device import keep_freed_memory

    assert keep_freed_memory() in (True, False)
    assert torch.ones(1 << 22).sum() == 1 << 22  # allocation still works


def test_lever_times_measures_both_paths_of_both_levers_and_their_agreement(tmp_path, monkeypatch):
    from bench.gpu_check import lever_line, lever_times
    from trainables.config import TrialConfig

    monkeypatch.setenv("IQA_LS_CACHE", str(tmp_path / "cache"))
    base = dict(data=str(FIXTURE), epochs=1, batch_size=50, subset=100, test_subset=20, device="cpu", threads=1)
    cfgs = [TrialConfig(**base, seed=0, train_set="mix_all3", regularization="iqa_ls"),
            TrialConfig(**base, seed=1, train_set="mix_noise", regularization="onehot")]
    r = lever_times(cfgs, reps=1)
    assert r["members"] == 2 and r["train_images"] == 100 and r["test_images"] == 200 and r["reps"] == 1
    assert all(len(v) == 1 and v[0] > 0 for v in r["raw"].values())
    a = r["agreement"]
    # on a CPU the batched epoch is the per-member one bit for bit; the vmapped evaluation is within
    # float32 rounding of the members' own
    assert a["data_images_equal"] is True and a["data_targets_max_abs"] == 0.0
    assert a["eval_prob_max_abs"] < 1e-5 and a["eval_acc_max_abs"] <= 0.05
    assert r["data_speedup"] == r["data_s"]["per_member"] / r["data_s"]["batched"]
    assert lever_line(r).startswith("levers, pack of 2: epoch data path ")


def test_conv_formulations_time_three_forms_of_the_same_pack_convolution():
    """bench.gpu_check.conv_formulations (issue 18): the grouped convolution vmap runs and one
    convolution per member compute the same outputs and input gradients; all three forms are timed."""
    from bench.gpu_check import CONV_LAYERS, conv_formulations, conv_line
    r = conv_formulations("cpu", members=3, batch=4, reps=1)
    assert set(r["layers"]) == set(CONV_LAYERS) and r["bf16"] is False
    for layer in r["layers"].values():
        assert set(layer["s"]) == {"grouped", "loop", "one_wide"} and min(layer["s"].values()) > 0
        assert layer["agreement"]["out_max_abs"] < 1e-4 and layer["agreement"]["grad_max_abs"] < 1e-4
    assert conv_line(r).startswith("convolutions, pack of 3 x 4 images, forward + backward: conv1 grouped ")
