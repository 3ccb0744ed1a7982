"""The CNN of Table 1 (the TensorFlow CIFAR-10 tutorial model the paper builds on, Sec. 4.1).

conv1 5x5x64 'same' -> max-pool 3x3/2 -> LRN & ReLU -> conv2 5x5x64 'same' -> LRN & ReLU ->
max-pool 3x3/2 -> fc 4096->384 -> fc 384->192 -> fc 192->10 (logits; softmax lives in the loss).
1,756,426 parameters with biases.

Choices the paper leaves open (docs/paper-mapping.md):
- ReLU before LRN (TF tutorial order; max-pool commutes with ReLU, so conv1->pool1->ReLU equals
  the tutorial's conv1->ReLU->pool1);
- pools use TF 'SAME' padding (pad 0 before, 1 after, with -inf), as the TF model did;
- LRN as tf.nn.local_response_normalization(depth_radius=4, bias=1, alpha=0.001/9, beta=0.75);
- `init="tf_cifar10"`: truncated normals of the tutorial (conv std 5e-2, fc1/fc2 std 0.04,
  logits std 1/192; biases 0 / 0.1 / 0.1 / 0.1 / 0) ; `init="torch"`: PyTorch defaults.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainables.config import NUM_CLASSES, TrialConfig

# Table 1 / TF CIFAR-10 tutorial: tf.nn.lrn(depth_radius=4, bias=1.0, alpha=0.001 / 9.0, beta=0.75)
LRN_DEPTH_RADIUS = 4
LRN_BIAS = 1.0
LRN_ALPHA = 0.001 / 9.0  # TF's alpha multiplies the plain sum of squares
LRN_BETA = 0.75


class _LRNFunction(torch.autograd.Function):
    """y = x * d^-beta, d = bias + band(x^2), with a hand-written backward.

    dL/dx = g * d^-beta - 2 beta * x * band^T(g * y / d). Autograd of the elementwise formula keeps
    about a dozen intermediates and makes as many memory passes in backward; this saves d and
    d^-beta and makes four passes plus one 1x1 convolution (the profile of a CPU training step
    had LRN elementwise work at ~15 % of the step, about half of it gone with this).
    `generate_vmap_rule`: works under torch.func.vmap (trainables.packed).
    """
    generate_vmap_rule = True

    @staticmethod
    def forward(x, band, bias, beta):
        d = F.conv2d(x * x, band, torch.full((band.shape[0],), bias, dtype=x.dtype, device=x.device))
        if beta == 0.75:  # d^-0.75 = rsqrt(d) * sqrt(rsqrt(d)); torch's pow(-0.75) is ~10x slower on CPU
            r = torch.rsqrt(d)
            r = r * torch.sqrt(r)
        else:
            r = d.pow(-beta)
        return x * r, d, r

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, band, _, beta = inputs
        y, d, r = output
        ctx.save_for_backward(x, band, y, d, r)
        ctx.beta = beta
        ctx.mark_non_differentiable(d, r)

    @staticmethod
    def backward(ctx, gy, _gd, _gr):
        x, band, y, d, r = ctx.saved_tensors
        u = gy * y
        u = u / d
        v = F.conv2d(u, band.transpose(0, 1))  # band^T (the band is symmetric; kept general)
        gx = gy * r
        gx = gx.addcmul(x, v, value=-2.0 * ctx.beta)
        return gx, None, None, None


class FastLRN(nn.Module):
    """Exact TF local response normalisation as a fixed banded 1x1 convolution over channels.

    out = x / (bias + alpha * sum_{|c'-c|<=r} x_{c'}^2) ** beta. PyTorch's nn.LocalResponseNorm
    computes the same thing through padding + avg_pool3d, which is slow on CPU; a 1x1 conv with a
    0/1 band matrix goes through the same tuned GEMM path as the rest of the model, and the
    backward is written out by hand (_LRNFunction).
    """

    def __init__(self, channels: int, depth_radius=LRN_DEPTH_RADIUS, bias=LRN_BIAS,
                 alpha=LRN_ALPHA, beta=LRN_BETA):
        super().__init__()
        idx = torch.arange(channels)
        band = ((idx[:, None] - idx[None, :]).abs() <= depth_radius).float()
        self.register_buffer("band", band[:, :, None, None] * alpha, persistent=False)
        self.bias, self.beta = bias, beta

    def forward(self, x):
        if torch.is_autocast_enabled(x.device.type):
            # precision="bf16": LRN's sum of squares and its -0.75 power stay float32 (bfloat16's 8-bit
            # mantissa would round them), and its hand-written backward sees one dtype throughout
            with torch.autocast(x.device.type, enabled=False):
                return _LRNFunction.apply(x.float(), self.band, float(self.bias), float(self.beta))[0]
        return _LRNFunction.apply(x, self.band, float(self.bias), float(self.beta))[0]


def torch_lrn(depth_radius=LRN_DEPTH_RADIUS, bias=LRN_BIAS, alpha=LRN_ALPHA, beta=LRN_BETA):
    """PyTorch's LRN with TF's parameters (torch divides alpha by the window size)."""
    size = 2 * depth_radius + 1
    return nn.LocalResponseNorm(size, alpha=alpha * size, beta=beta, k=bias)


def tf_same_pool(x):
    """TF 'SAME' max-pool 3x3/2. On an even size TF pads 0 before and 1 after, which is exactly
    PyTorch's ceil_mode (the last window starts inside the input and is cut at its edge): same
    values and the same argmax, without the -inf padded copy (~10 % of a CPU step). An odd size
    (not in this model) pads 1 before and 1 after."""
    h_odd, w_odd = x.shape[-2] % 2, x.shape[-1] % 2
    if not (h_odd or w_odd):
        return F.max_pool2d(x, 3, 2, ceil_mode=True)
    return F.max_pool2d(F.pad(x, (w_odd, 1, h_odd, 1), value=float("-inf")), 3, 2)


class PaperCNN(nn.Module):
    """Table 1. Input: float N x 3 x 32 x 32 (already normalised); output: N x 10 logits."""

    def __init__(self, num_classes: int = 10, lrn_impl: str = "fast", init: str = "tf_cifar10"):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 5, padding=2)
        self.conv2 = nn.Conv2d(64, 64, 5, padding=2)
        self.fc1 = nn.Linear(8 * 8 * 64, 384)
        self.fc2 = nn.Linear(384, 192)
        self.fc3 = nn.Linear(192, num_classes)
        lrn = {"fast": lambda: FastLRN(64), "torch": torch_lrn}[lrn_impl]
        self.lrn1, self.lrn2 = lrn(), lrn()
        if init == "tf_cifar10":
            self._tf_init()
        elif init != "torch":
            raise ValueError(f"init={init!r} is not allowed; allowed: ['tf_cifar10', 'torch']")

    @torch.no_grad()
    def _tf_init(self):
        # TF tutorial: truncated_normal(stddev) clipped at 2 std; biases as in cifar10.py
        for layer, std, bias in ((self.conv1, 5e-2, 0.0), (self.conv2, 5e-2, 0.1),
                                 (self.fc1, 0.04, 0.1), (self.fc2, 0.04, 0.1),
                                 (self.fc3, 1 / 192.0, 0.0)):
            nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.constant_(layer.bias, bias)

    def forward(self, x):
        x = self.lrn1(F.relu(tf_same_pool(self.conv1(x))))
        x = tf_same_pool(self.lrn2(F.relu(self.conv2(x))))
        # flatten in NHWC order like TF's reshape, so fc1 weights map 1:1 to a TF checkpoint
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)

    def weight_decay_params(self):
        """Sec. 4.2: L2 weight decay on the two hidden fully connected layers (weights only)."""
        return [self.fc1.weight, self.fc2.weight]


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_model(cfg: TrialConfig, device) -> PaperCNN:
    """The Table 1 model of a trial, initialised from its seed, in its memory format."""
    torch.manual_seed(cfg.seed)  # model init is the one draw from the global RNG
    model = PaperCNN(NUM_CLASSES, lrn_impl=cfg.lrn_impl, init=cfg.init).to(device)
    return model.to(memory_format=torch.channels_last) if cfg.channels_last else model


def build_optimizer(cfg: TrialConfig, model: PaperCNN) -> torch.optim.SGD:
    decay = {id(p) for p in model.weight_decay_params()}
    groups = [
        {"params": [p for p in model.parameters() if id(p) in decay], "weight_decay": cfg.fc_weight_decay},
        {"params": [p for p in model.parameters() if id(p) not in decay], "weight_decay": 0.0},
    ]
    # TF: loss + 0.004 * l2_loss(w) = loss + 0.004 * sum(w^2) / 2, whose gradient is 0.004 * w:
    # exactly SGD's coupled weight_decay=0.004.
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
