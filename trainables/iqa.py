"""Full-reference image quality scores s(x) of Eq. (1): one float32 score per image, batched.

Sec. 3: "we adopt the SSIM [7] as the IQA measure"; the other metrics are for ablations. The paper
does not say which SSIM variant it ran; `ssim` is Wang et al. (2004) with the convention of
tf.image.ssim (the paper's stack is TensorFlow, Sec. 4.1): 11 x 11 Gaussian window of sigma 1.5,
K1 = 0.01, K2 = 0.03, intensities / 255 (data range 1), 'valid' window positions only, population
statistics, mean of the SSIM map per RGB channel, then mean over channels.

`score(metric, distorted, reference)` takes uint8 N x 3 x H x W pairs on any device, works through
them CHUNK[device] images at a time and returns float32 [N] on the input device; a distorted image
bit-identical to its reference scores exactly 1.0 under every metric. Metrics are registered by name
in `METRICS`. Filtering uses distortions.separable_correlate_valid (bit-identical on CPU and CUDA,
no TF32), so CUDA scores differ from CPU ones only through the summation order of means (~1e-7).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from trainables.distortions import gaussian_taps, separable_correlate_valid

SSIM_WINDOW = 11  # Wang et al. 2004: 11 x 11 circular-symmetric Gaussian window
SSIM_SIGMA = 1.5  # Wang et al. 2004: window standard deviation (pixels)
SSIM_K1 = 0.01  # Wang et al. 2004: C1 = (K1 L)^2
SSIM_K2 = 0.03  # Wang et al. 2004: C2 = (K2 L)^2
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 Y, as rgb2gray in Wang's and Xue's reference code
GMS_C = 170.0 / 255.0 ** 2  # Xue et al. 2014: T = 170 on [0, 255]; it meets squared gradients: / 255^2
PSNR_CAP_DB = 50.0  # our choice: score = min(PSNR, 50 dB) / 50; 50 dB = RMS error of 0.81 grey levels
# Images per step. On CPU the filtering is memory-bound: a 64-image chunk keeps its temporaries in
# cache and scores 20k images 4x faster than 4096 (1.3 s vs 5.3 s, SSIM, 2-core EPYC, torch 2.14.1);
# on CUDA large chunks keep the GPU busy.
CHUNK = {"cpu": 64, "cuda": 4096}

_SSIM_TAPS = gaussian_taps(SSIM_SIGMA, SSIM_WINDOW // 2)


class IQAError(ValueError):
    """A bad IQA request; the one-line message names the value and what is allowed."""


def _unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 intensities in [0, 1] (multiplied, as in distortions.noise_from_normal)."""
    return x.float().mul_(1.0 / 255.0)


def _luma(x01: torch.Tensor) -> torch.Tensor:
    """BT.601 Y of [0, 1] RGB, N x 1 x H x W, not rounded."""
    wr, wg, wb = LUMA_WEIGHTS
    return x01[:, 0:1] * wr + x01[:, 1:2] * wg + x01[:, 2:3] * wb


def _ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM over 'valid' window positions, per channel, then over channels; x, y on [0, 1].

    The second moments are taken about the reference's mean per image and channel (variances and
    covariance do not depend on the shift) so that E[x^2] - mu^2 cancels less in float32. Written so
    that x == y gives numerator == denominator bit for bit (2 a == a + a in floating point).
    """
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2  # data range L = 1
    n_ch = x.shape[1]
    shift = y.mean((2, 3), keepdim=True)
    x, y = x - shift, y - shift
    stats = separable_correlate_valid(torch.cat([x, y, x * x, y * y, x * y], 1), _SSIM_TAPS)
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.split(n_ch, 1)
    var_x, var_y, cov = e_xx - mu_x * mu_x, e_yy - mu_y * mu_y, e_xy - mu_x * mu_y  # population
    mu_x, mu_y = mu_x + shift, mu_y + shift
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    num = (2 * mu_xy + c1) * (2 * cov + c2)
    den = (mu_xx + mu_yy + c1) * (var_x + var_y + c2)
    return (num / den).mean((2, 3)).mean(1)


def ssim(distorted: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return _ssim(_unit(distorted), _unit(reference))


def ssim_y(distorted: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return _ssim(_luma(_unit(distorted)), _luma(_unit(reference)))


def _prewitt_magnitude(y: torch.Tensor) -> torch.Tensor:
    """|grad| with Prewitt filters [1 0 -1] x [1 1 1] / 3 (and transposed), 'valid' positions."""
    dx = y[..., :, :-2] - y[..., :, 2:]
    gx = (dx[..., :-2, :] + dx[..., 1:-1, :] + dx[..., 2:, :]) * (1.0 / 3.0)
    dy = y[..., :-2, :] - y[..., 2:, :]
    gy = (dy[..., :, :-2] + dy[..., :, 1:-1] + dy[..., :, 2:]) * (1.0 / 3.0)
    return torch.sqrt(gx * gx + gy * gy)


def gmsm(distorted: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude similarity mean (Xue et al. 2014, GMSM): mean over the valid region of
    (2 g_d g_r + c) / (g_d^2 + g_r^2 + c) on BT.601 luma in [0, 1], c = 170 / 255^2. Unlike GMSD's
    reference code we do not average-pool and downsample by 2 first: CIFAR images are 32 x 32."""
    g_d = _prewitt_magnitude(_luma(_unit(distorted)))
    g_r = _prewitt_magnitude(_luma(_unit(reference)))
    gms = (2 * (g_d * g_r) + GMS_C) / (g_d * g_d + g_r * g_r + GMS_C)
    return gms.mean((1, 2, 3))


def psnr(distorted: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """min(PSNR, PSNR_CAP_DB) / PSNR_CAP_DB, PSNR = 10 log10(1 / MSE) over all pixels and channels on
    [0, 1]; the squared error is summed exactly in integers, so MSE = 0 (identical) gives 1."""
    d = distorted.to(torch.int32) - reference.to(torch.int32)
    mse = (d * d).flatten(1).sum(1).double() / (d[0].numel() * 255.0 ** 2)
    return (-10.0 * torch.log10(mse)).clamp(max=PSNR_CAP_DB).div(PSNR_CAP_DB).float()


@dataclass(frozen=True)
class Metric:
    """A registry entry: `fn(distorted, reference)` on uint8 N x 3 x H x W -> float32 [N]."""
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    description: str
    bounds: tuple[float, float]  # the range of the score; 1 = identical to the reference
    min_size: int  # smallest H and W the metric is defined for


METRICS: dict[str, Metric] = {
    "ssim": Metric(ssim, "SSIM (Wang et al. 2004), per RGB channel then averaged, as tf.image.ssim",
                   (-1.0, 1.0), SSIM_WINDOW),
    "ssim_y": Metric(ssim_y, "SSIM on BT.601 luma, as Wang's reference code", (-1.0, 1.0), SSIM_WINDOW),
    "gmsm": Metric(gmsm, "gradient magnitude similarity mean (Xue et al. 2014) on luma", (0.0, 1.0), 3),
    "psnr": Metric(psnr, f"PSNR in dB / {PSNR_CAP_DB:g}, capped at 1", (0.0, 1.0), 1),
}


def score(metric: str, distorted: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """IQA score of each distorted image against its reference: float32 [N] on the input device."""
    spec = METRICS.get(metric) if isinstance(metric, str) else None
    if spec is None:
        raise IQAError(f"IQA metric={metric!r} is not allowed; allowed: {sorted(METRICS)}")
    for name, x in (("distorted", distorted), ("reference", reference)):
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8:
            what = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise IQAError(f"{name} images of {what} are not allowed; allowed: uint8 torch.Tensor")
        if x.dim() != 4 or x.shape[1] != 3 or min(x.shape[-2:]) < spec.min_size:
            raise IQAError(f"{name} shape={tuple(x.shape)} is not allowed for {metric}; "
                           f"allowed: N x 3 x H x W with H, W >= {spec.min_size}")
    if distorted.shape != reference.shape or distorted.device != reference.device:
        raise IQAError(f"distorted {tuple(distorted.shape)} on {distorted.device} does not match reference "
                       f"{tuple(reference.shape)} on {reference.device}; allowed: same shape and device")
    out = torch.empty(distorted.shape[0], dtype=torch.float32, device=distorted.device)
    chunk = CHUNK.get(distorted.device.type, 64)
    for i in range(0, distorted.shape[0], chunk):
        d, r = distorted[i:i + chunk], reference[i:i + chunk]
        same = (d == r).flatten(1).all(1)
        out[i:i + chunk] = torch.where(same, 1.0, spec.fn(d, r).float())
    return out
