"""The CIFAR-10-C corruptions (Hendrycks & Dietterich, ICLR 2019) as batched tensor functions.

Reference: hendrycks/robustness, `ImageNet-C/create_c/make_cifar_c.py` (the generator of the
published CIFAR-10-C files; "the reference" below). Its severity tables are copied here as named
constants, each next to the reference function it comes from; `docs/cifar10c.md` lists every
corruption with its parameters, how it is computed here and every deviation from the reference.

Every function is `fn(images, param, generator) -> images`: uint8 N x 3 x 32 x 32 in and out, on
the images' device, `param` one row of its severity table, randomness only from `generator` (a
`torch.Generator` on the images' device; deterministic corruptions ignore it). The reference works
per image in float64 or float32 (whichever its numpy code produces: both are kept here, per
corruption) on [0, 1] or [0, 255] and saves `np.uint8(result)`, which truncates; so do we. The
random draws follow the reference's distributions (torch's generator, not numpy's: the published
files cannot be reproduced bit for bit, only their recipe). Where the reference calls a library
routine (scikit-image, scipy, OpenCV, PIL, ImageMagick) the routine's arithmetic is written out
here as that library's source does it, so that given the same draws every corruption gives the
bytes the reference gives: tests/test_cifar10c.py checks the scipy, scikit-image and PIL ones
against those libraries and the OpenCV and ImageMagick ones against their stored outputs
(tests/fixtures/cifar10c-golden); tests/fixtures/cifar10c-golden/compare_reference.py runs the
reference's own functions on our draws. Only torch, torchvision (libjpeg) and numpy run here.

`CORRUPTIONS` is the registry (name -> `Corruption`), `SEVERITIES = (1, ..., 5)`, and
`NOT_IMPLEMENTED` names what is left out and why. `corrupt(images, name, severity, generator)`
looks a corruption up and checks its arguments.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from trainables.distortions import jpeg as _libjpeg

SEVERITIES = (1, 2, 3, 4, 5)
IMAGE_SIZE = 32  # the reference hard-codes CIFAR's 32 x 32 (loops, crops, IMSIZE)

# ---------------------------------------------------------------- severity tables of the reference
# Each is the list `c = [...][severity - 1]` of the reference function named in the comment
# (ImageNet-C/create_c/make_cifar_c.py), severities 1..5 in order.
GAUSSIAN_NOISE_C = (0.04, 0.06, .08, .09, .10)  # gaussian_noise: noise std on [0, 1]
SHOT_NOISE_C = (500, 250, 100, 75, 50)  # shot_noise: Poisson rate per unit intensity
IMPULSE_NOISE_C = (.01, .02, .03, .05, .07)  # impulse_noise: s&p amount (skimage random_noise)
SPECKLE_NOISE_C = (.06, .1, .12, .16, .2)  # speckle_noise: std of the multiplicative noise
GAUSSIAN_BLUR_C = (.4, .6, 0.7, .8, 1)  # gaussian_blur: sigma (px)
# glass_blur: sigma, max_delta, iterations
GLASS_BLUR_C = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))
# defocus_blur: disk radius, alias_blur
DEFOCUS_BLUR_C = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))
MOTION_BLUR_C = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))  # motion_blur: ImageMagick radius, sigma
ZOOM_BLUR_C = ((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01),
               (1, 1.26, 0.01))  # zoom_blur: np.arange(start, stop, step) of zoom factors
SNOW_C = ((0.1, 0.2, 1, 0.6, 8, 3, 0.95),
          (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
          (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
          (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
          (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))  # snow: loc, scale, zoom, threshold, radius, sigma, blend
# frost: weights of the image and of the frost photograph (frost is not implemented)
FROST_C = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))
FOG_C = ((.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))  # fog: fractal weight, wibbledecay
SPATTER_C = ((0.62, 0.1, 0.7, 0.7, 0.5, 0),
             (0.65, 0.1, 0.8, 0.7, 0.5, 0),
             (0.65, 0.3, 1, 0.69, 0.5, 0),
             (0.65, 0.1, 0.7, 0.69, 0.6, 1),
             (0.65, 0.1, 0.5, 0.68, 0.6, 1))  # spatter: loc, scale, sigma, threshold, intensity, mud
CONTRAST_C = (.75, .5, .4, .3, 0.15)  # contrast: factor about the per-channel mean
BRIGHTNESS_C = (.05, .1, .15, .2, .3)  # brightness: added to HSV value
SATURATE_C = ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))  # saturate: HSV saturation * a + b
JPEG_COMPRESSION_C = (80, 65, 58, 50, 40)  # jpeg_compression: PIL quality
PIXELATE_C = (0.95, 0.9, 0.85, 0.75, 0.65)  # pixelate: PIL BOX resize to int(32 c) and back
ELASTIC_C = ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
             (0.1, 0.03, 0.03))  # elastic_transform: (alpha, sigma, affine) as multiples of IMSIZE = 32

# ---------------------------------------------------------------- constants of the libraries it calls
SK_GAUSSIAN_TRUNCATE = 4.0  # skimage.filters.gaussian default truncate (scipy gaussian_filter)
ELASTIC_TRUNCATE = 3.0  # elastic_transform passes truncate=3 to skimage gaussian
IMPULSE_SALT_VS_PEPPER = 0.5  # skimage.util.random_noise default salt_vs_pepper
MAGICK_SQ2PI = 2.50662827463100024161235523934010416269302368164062  # ImageMagick MagickSQ2PI
MAGICK_QUANTUM_RANGE = 65535  # ImageMagick Q16 (Debian's and Ubuntu's libmagickwand-6.q16)
CV_AB_BITS, CV_INTER_BITS = 10, 5  # OpenCV warpAffine: fixed-point matrix bits, 1/32 px sub-pixel grid
PIL_PRECISION_BITS = 32 - 8 - 2  # PIL libImaging/Resample.c PRECISION_BITS (8-bit resampling)
LUMA_RGB2GRAY = (0.299, 0.587, 0.114)  # OpenCV COLOR_RGB2GRAY (R2YF, G2YF, B2YF), float32
DEFOCUS_DISK_HALF = 8  # reference disk(): kernel support -8..8 for radius <= 8


class CorruptionError(ValueError):
    """A bad corruption request; the one-line message names the value and what is allowed."""


# ---------------------------------------------------------------- shared helpers
def _check_images(images) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        what = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise CorruptionError(f"images of {what} are not allowed; allowed: a uint8 torch.Tensor "
                              f"N x 3 x {IMAGE_SIZE} x {IMAGE_SIZE}")
    if images.dim() != 4 or tuple(images.shape[1:]) != (3, IMAGE_SIZE, IMAGE_SIZE):
        raise CorruptionError(f"images shape={tuple(images.shape)} is not allowed; allowed: "
                              f"N x 3 x {IMAGE_SIZE} x {IMAGE_SIZE} (the reference's severities are "
                              f"set for CIFAR's size)")


def _unit(images: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
    """np.array(x) / 255. (float64); `.astype(np.float32)` after it where the reference does."""
    return (images.to(torch.float64) / 255.0).to(dtype)


def _save(x01: torch.Tensor) -> torch.Tensor:
    """np.uint8(np.clip(x, 0, 1) * 255): clip, scale in x's own dtype, truncate."""
    return (x01.clamp(0.0, 1.0) * 255).trunc_().to(torch.uint8)


def _uniform(shape, low: float, high: float, generator, device) -> torch.Tensor:
    """numpy's uniform(low, high): low + (high - low) * U[0, 1), float64."""
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    return low + (high - low) * u


def _border_index(n: int, r: int, mode: str, device) -> torch.Tensor:
    """Source index of each of the n + 2r positions of an axis padded by r, scipy.ndimage's modes:
    "nearest" (edge repeated), "reflect" (d c b a | a b c d | d c b a), "mirror" (d c b | a b c d |
    c b a; OpenCV's BORDER_REFLECT_101). Any r, also r >= n (the pattern repeats)."""
    i = torch.arange(-r, n + r, device=device)
    if mode == "nearest":
        return i.clamp(0, n - 1)
    if mode == "reflect":
        i = i.remainder(2 * n)
        return torch.where(i >= n, 2 * n - 1 - i, i)
    if mode == "mirror":
        if n == 1:
            return torch.zeros_like(i)
        i = i.remainder(2 * n - 2)
        return torch.where(i >= n, 2 * n - 2 - i, i)
    raise ValueError(f"border mode {mode!r}; allowed: nearest, reflect, mirror")


def _scipy_gaussian_taps(sigma: float, truncate: float) -> np.ndarray | None:
    """scipy.ndimage.gaussian_filter1d's weights (float64), computed as scipy 1.17 computes them:
    radius int(truncate * sigma + 0.5), exp(-0.5 / sigma^2 * x^2), divided by numpy's sum (older
    scipy evaluated the exponent as a polynomial: a last-bit difference in some weights). None
    where scipy skips the axis (sigma <= 1e-15)."""
    if sigma <= 1e-15:
        return None
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x ** 2)
    return phi / phi.sum()


def _correlate_sym(x: torch.Tensor, taps: np.ndarray, dim: int, mode: str) -> torch.Tensor:
    """scipy.ndimage.correlate1d with a symmetric kernel along `dim`, in scipy's order of
    operations (ni_filters.c: out = x_0 w_0, then += (x_-t + x_t) w_t for t = r down to 1)."""
    r = len(taps) // 2
    n = x.shape[dim]
    xp = x.index_select(dim, _border_index(n, r, mode, x.device))
    out = xp.narrow(dim, r, n) * float(taps[r])
    for t in range(r, 0, -1):
        out = out + (xp.narrow(dim, r - t, n) + xp.narrow(dim, r + t, n)) * float(taps[r - t])
    return out


def _sk_gaussian(x: torch.Tensor, sigma: float, mode: str = "nearest",
                 truncate: float = SK_GAUSSIAN_TRUNCATE) -> torch.Tensor:
    """skimage.filters.gaussian(x, sigma, mode, truncate) on float ... x H x W (channels not
    mixed: the reference's multichannel=True): scipy's gaussian_filter along H, then W, each
    pass computed in float64 and stored in x's dtype (scipy's output array keeps the input's)."""
    taps = _scipy_gaussian_taps(sigma, truncate)
    if taps is None:
        return x.clone()
    h = _correlate_sym(x.to(torch.float64), taps, -2, mode).to(x.dtype)
    return _correlate_sym(h.to(torch.float64), taps, -1, mode).to(x.dtype)


def _zoom_matrix(z: float, device) -> tuple[torch.Tensor, int]:
    """The reference's clipped_zoom along one axis as a 32 x ch matrix of linear-interpolation
    weights (scipy.ndimage.zoom order=1: input coordinate k (ch - 1) / (out - 1) for output k,
    out = round(ch z)), trimmed to the central 32 rows; and the crop start `top`."""
    h = IMAGE_SIZE
    ch = int(np.ceil(h / z))
    top = (h - ch) // 2
    out = int(round(ch * z))
    trim = (out - h) // 2
    k = np.arange(trim, trim + h, dtype=np.float64)
    coord = k * ((ch - 1) / (out - 1)) if out > 1 else np.zeros_like(k)
    i0 = np.floor(coord).astype(np.int64)
    t = coord - i0
    m = np.zeros((h, ch), dtype=np.float64)
    m[np.arange(h), np.minimum(i0, ch - 1)] += 1.0 - t
    inside = i0 + 1 <= ch - 1  # scipy's 'constant' mode: a neighbour past the edge counts as cval 0
    m[np.arange(h)[inside], i0[inside] + 1] += t[inside]
    return torch.from_numpy(m).to(device), top


def _clipped_zoom(x: torch.Tensor, z: float) -> torch.Tensor:
    """clipped_zoom(img, z) of the reference on float ... x 32 x 32 (computed in float64 as
    scipy does, returned in x's dtype as scipy returns the input's dtype)."""
    m, top = _zoom_matrix(z, x.device)
    ch = m.shape[1]
    crop = x[..., top:top + ch, top:top + ch].to(torch.float64)
    return (m @ crop @ m.T).to(x.dtype)


# ---------------------------------------------------------------- HSV as scikit-image computes it
def _rgb2hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """skimage.color.rgb2hsv on float64 N x 3 x H x W: (h, s, v), each N x H x W."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    v = x.amax(1)
    delta = v - x.amin(1)
    zero = delta == 0
    safe = torch.where(zero, torch.ones_like(delta), delta)
    s = torch.where(zero, torch.zeros_like(delta), delta / torch.where(v == 0, torch.ones_like(v), v))
    # red, then green, then blue where it is the max (later assignments win, as in skimage)
    h = torch.where(b == v, 4.0 + (r - g) / safe,
                    torch.where(g == v, 2.0 + (b - r) / safe, (g - b) / safe))
    h = torch.fmod(h / 6.0, 1.0)
    h = torch.where(h < 0, h + 1.0, h)  # numpy's % for a positive divisor
    h = torch.where(zero, torch.zeros_like(h), h)
    return h, s, v


def _hsv2rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """skimage.color.hsv2rgb: N x H x W channels -> float64 N x 3 x H x W."""
    hi = torch.floor(h * 6)
    f = h * 6 - hi
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    hi = hi.to(torch.uint8).remainder(6).to(torch.int64)
    table = torch.stack([torch.stack(c, 1) for c in
                         ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))], 0)
    return table.gather(0, hi[None, :, None].expand(1, -1, 3, -1, -1))[0]


# ---------------------------------------------------------------- noise
def gaussian_noise(images, c, generator=None):
    """reference gaussian_noise: clip(x / 255 + N(0, c), 0, 1) * 255 (float64)."""
    x = _unit(images)
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float64)
    return _save(x + c * z)


def shot_noise(images, c, generator=None):
    """reference shot_noise: clip(Poisson(x c) / c, 0, 1) * 255 (float64)."""
    x = _unit(images)
    k = torch.poisson(x * c, generator=generator)
    return _save(k / c)


def impulse_noise(images, c, generator=None):
    """reference impulse_noise = skimage random_noise(mode='s&p', amount=c): each value (pixel and
    channel) independently flipped with probability c, to 1 or 0 with probability 1/2 each."""
    x = _unit(images)
    flipped = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float64) < c
    salted = torch.rand(x.shape, generator=generator, device=x.device,
                        dtype=torch.float64) < IMPULSE_SALT_VS_PEPPER
    x = torch.where(flipped & salted, torch.ones_like(x), x)
    x = torch.where(flipped & ~salted, torch.zeros_like(x), x)
    return _save(x)


def speckle_noise(images, c, generator=None):
    """reference speckle_noise: clip(x + x N(0, c), 0, 1) * 255 (float64)."""
    x = _unit(images)
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float64)
    return _save(x + x * (c * z))


# ---------------------------------------------------------------- blur
def gaussian_blur(images, c, generator=None):
    """reference gaussian_blur: skimage gaussian(x / 255, sigma=c, multichannel=True): scipy's
    Gaussian (radius int(4 c + 0.5)) with edge repetition ('nearest'), float64."""
    return _save(_sk_gaussian(_unit(images), c))


def _glass_shuffle(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """One pass of the reference's "locally shuffle pixels" loop, for max_delta = 1.

    The loop visits h, w = 31 .. 2 (descending) and runs `x[h, w], x[h', w'] = x[h', w'], x[h, w]`
    with (h', w') = (h + dy, w + dx), dx, dy in {-1, 0}. On numpy views that tuple assignment
    copies x[h', w'] into x[h, w] and leaves x[h', w'] as it was (the second assignment reads the
    view of x[h, w] after the first wrote it), so the published files hold copies, not swaps;
    and every source (h', w') lies above or left of (h, w), i.e. not yet visited in this pass.
    The pass is therefore one gather from the pass's input: out[h, w] = x[h + dy, w + dx].
    offsets: int64 N x 30 x 30 x 2 holding (dx, dy) for h, w = 2..31."""
    n = x.shape[0]
    side = IMAGE_SIZE - 2
    grid = torch.arange(2, IMAGE_SIZE, device=x.device)
    src_h = grid.view(1, side, 1) + offsets[..., 1]
    src_w = grid.view(1, 1, side) + offsets[..., 0]
    flat = (src_h * IMAGE_SIZE + src_w).view(n, 1, side * side).expand(-1, x.shape[1], -1)
    out = x.clone()
    out[:, :, 2:, 2:] = x.flatten(2).gather(2, flat).view(n, x.shape[1], side, side)
    return out


def glass_offsets(n: int, c, generator, device) -> torch.Tensor:
    """The (dx, dy) draws of glass_blur: np.random.randint(-d, d) per visited pixel and pass,
    int64 iterations x N x 30 x 30 x 2."""
    _, d, iterations = c
    side = IMAGE_SIZE - 2
    return torch.randint(-d, d, (iterations, n, side, side, 2), generator=generator, device=device)


def glass_blur_from_offsets(images, c, offsets):
    """glass_blur given its draws (see `glass_offsets`)."""
    sigma, d, iterations = c
    if d != 1:
        raise CorruptionError(f"glass_blur max_delta={d!r} is not allowed; allowed: 1 (the published "
                              f"table; the gather in _glass_shuffle equals the reference's loop only for 1)")
    x = _save(_sk_gaussian(_unit(images), sigma))  # np.uint8(gaussian(x / 255.) * 255)
    for it in range(iterations):
        x = _glass_shuffle(x, offsets[it])
    return _save(_sk_gaussian(_unit(x), sigma))


def glass_blur(images, c, generator=None):
    """reference glass_blur: Gaussian (sigma), uint8, local pixel copies to the up/left
    neighbourhood (`_glass_shuffle`), Gaussian again."""
    return glass_blur_from_offsets(images, c, glass_offsets(images.shape[0], c, generator, images.device))


def _cv_gaussian_kernel3(sigma: float) -> np.ndarray:
    """cv2.getGaussianKernel(3, sigma, CV_32F): exp(-x^2 / 2 sigma^2) cast to float32, normalised
    by their double sum, cast to float32 again."""
    t = np.array([math.exp(-0.5 / (sigma * sigma) * x * x) for x in (-1.0, 0.0, 1.0)], dtype=np.float32)
    return (t.astype(np.float64) * (1.0 / float(t.astype(np.float64).sum()))).astype(np.float32)


def defocus_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The reference's disk(radius, alias_blur) for radius <= 8, float32 17 x 17: the aliased disk
    X^2 + Y^2 <= r^2 normalised to sum 1, blurred by cv2.GaussianBlur(ksize=(3, 3),
    sigmaX=alias_blur) (separable, float32, rows then columns; the disk sits far from the
    array's border, so GaussianBlur's border rule never touches it)."""
    if radius > DEFOCUS_DISK_HALF:
        raise CorruptionError(f"defocus radius={radius!r} is not allowed; allowed: <= {DEFOCUS_DISK_HALF}")
    L = np.arange(-DEFOCUS_DISK_HALF, DEFOCUS_DISK_HALF + 1)
    X, Y = np.meshgrid(L, L)
    disk = np.array((X ** 2 + Y ** 2) <= radius ** 2, dtype=np.float32)
    disk /= np.sum(disk)
    g = _cv_gaussian_kernel3(alias_blur)
    padded = np.pad(disk, 1)
    rows = (padded[:, 1:-1] * g[1] + (padded[:, :-2] + padded[:, 2:]) * g[0]).astype(np.float32)
    return (rows[1:-1] * g[1] + (rows[:-2] + rows[2:]) * g[0]).astype(np.float32)


def defocus_blur(images, c, generator=None):
    """reference defocus_blur: cv2.filter2D of x / 255 (float64) with disk(c) per channel, border
    BORDER_REFLECT_101; computed here as a direct correlation with the kernel's non-zero core."""
    k = defocus_kernel(*c).astype(np.float64)
    nz = np.nonzero(k)
    r = int(max(np.abs(nz[0] - DEFOCUS_DISK_HALF).max(), np.abs(nz[1] - DEFOCUS_DISK_HALF).max()))
    core = k[DEFOCUS_DISK_HALF - r:DEFOCUS_DISK_HALF + r + 1, DEFOCUS_DISK_HALF - r:DEFOCUS_DISK_HALF + r + 1]
    x = _unit(images)
    idx = _border_index(IMAGE_SIZE, r, "mirror", x.device)
    xp = x.index_select(2, idx).index_select(3, idx)
    out = torch.zeros_like(x)
    for i in range(2 * r + 1):
        for j in range(2 * r + 1):
            if core[i, j] != 0.0:
                out = out + xp[:, :, i:i + IMAGE_SIZE, j:j + IMAGE_SIZE] * float(core[i, j])
    return _save(out)


def magick_motion_blur(layer: torch.Tensor, radius: float, sigma: float, angle: torch.Tensor) -> torch.Tensor:
    """ImageMagick 6 MotionBlurImage (magick/effect.c) on uint8 N x C x H x W, one angle (degrees)
    per image: width = 2 ceil(radius) + 1 taps of a one-sided Gaussian exp(-i^2 / 2 sigma^2),
    normalised; tap i reads the pixel at offset (ceil(i cos a - 0.5), ceil(i sin a - 0.5)) (x, y),
    edge pixels repeated outside the image (the default virtual-pixel method); summed in double on
    the Q16 scale (v * 257), ClampToQuantum (+0.5, truncate), then written as an 8-bit PNG
    (ScaleQuantumToAny(q, 255) = trunc(255 q / 65535), non-HDRI 6.9.11; some other ImageMagick
    versions round there instead, +1 on about half the values)."""
    width = int(2.0 * math.ceil(radius) + 1.0)  # GetOptimalKernelWidth1D for radius > 0
    s = sigma if abs(sigma) >= 1.0e-12 else 1.0e-12  # MagickSigma (MagickEpsilon)
    kernel = [math.exp(-(float(i * i)) / (2.0 * s * s)) / (MAGICK_SQ2PI * s) for i in range(width)]
    norm = 0.0
    for v in kernel:
        norm += v
    kernel = [v / norm for v in kernel]
    n, ch, hgt, wid = layer.shape
    rad = (math.pi * angle.to(torch.float64)) / 180.0  # DegreesToRadians
    px, py = width * torch.sin(rad), width * torch.cos(rad)
    hyp = torch.hypot(px, py)
    ys = torch.arange(hgt, device=layer.device).view(1, hgt, 1)
    xs = torch.arange(wid, device=layer.device).view(1, 1, wid)
    src = layer.to(torch.float64) * 257.0  # ScaleCharToQuantum
    flat = src.flatten(2)
    acc = torch.zeros_like(src)
    for i in range(width):
        ox = torch.ceil((i * py) / hyp - 0.5).to(torch.int64).view(n, 1, 1)
        oy = torch.ceil((i * px) / hyp - 0.5).to(torch.int64).view(n, 1, 1)
        pos = (ys + oy).clamp(0, hgt - 1) * wid + (xs + ox).clamp(0, wid - 1)
        acc = acc + kernel[i] * flat.gather(2, pos.view(n, 1, hgt * wid).expand(-1, ch, -1)).view_as(src)
    q = torch.where(acc <= 0, torch.zeros_like(acc),
                    torch.where(acc >= MAGICK_QUANTUM_RANGE, torch.full_like(acc, MAGICK_QUANTUM_RANGE),
                                torch.trunc(acc + 0.5))).to(torch.int64)
    # 8-bit PNG export: ScaleQuantumToAny(q, 255) of non-HDRI ImageMagick 6.9.11, which truncates
    return torch.trunc((255.0 * q.to(torch.float64)) / MAGICK_QUANTUM_RANGE).to(torch.uint8)


def motion_blur(images, c, generator=None):
    """reference motion_blur: Wand's motion_blur(radius, sigma, angle ~ U(-45, 45)) on the 8-bit
    image (ImageMagick, via `magick_motion_blur`)."""
    angle = _uniform((images.shape[0],), -45.0, 45.0, generator, images.device)
    return magick_motion_blur(images, c[0], c[1], angle)


def zoom_factors(c) -> np.ndarray:
    """The reference's np.arange(start, stop, step) of zoom factors, float quirks included (it
    holds 7, 12, 16, 21, 26 factors for severities 1..5: round-off puts 1.06 and 1.11 inside the first
    two ranges, not 1.16, 1.21, 1.26 inside the others)."""
    return np.arange(*c)


def zoom_blur(images, c, generator=None):
    """reference zoom_blur: (x + sum of clipped_zoom(x, z)) / (len(z) + 1) in float32."""
    x = _unit(images, torch.float32)
    out = torch.zeros_like(x)
    factors = zoom_factors(c)
    for z in factors:
        out += _clipped_zoom(x, float(z))
    return _save((x + out) / (len(factors) + 1))


# ---------------------------------------------------------------- weather
def _snow_layer(base: torch.Tensor, c, angle: torch.Tensor) -> torch.Tensor:
    """The reference's snow layer from its N(loc, scale) draws `base` (float64 N x 1 x 32 x 32):
    zoom, threshold, 8-bit, ImageMagick motion blur, / 255."""
    layer = _clipped_zoom(base, c[2])
    layer = torch.where(layer < c[3], torch.zeros_like(layer), layer)
    layer = (layer.clamp(0, 1) * 255).trunc().to(torch.uint8)  # PIL 'L' image of astype(np.uint8)
    return magick_motion_blur(layer, c[4], c[5], angle).to(torch.float64) / 255.0


def _fma32(a: torch.Tensor, b: float, c: torch.Tensor) -> torch.Tensor:
    """float32 fused multiply-add a * b + c, rounded once (the float32 product is exact in float64)."""
    return (a.to(torch.float64) * b + c.to(torch.float64)).to(torch.float32)


def _cv_rgb2gray(x: torch.Tensor) -> torch.Tensor:
    """cv2.cvtColor(x, COLOR_RGB2GRAY) on float32 N x 3 x H x W -> N x 1 x H x W, in the order of
    OpenCV 4.10's vector code: fma(B, wb, fma(R, wr, G * wg)) with float32 weights."""
    wr, wg, wb = (float(np.float32(w)) for w in LUMA_RGB2GRAY)
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return _fma32(b, wb, _fma32(r, wr, g * np.float32(wg).item()))


def snow(images, c, generator=None):
    """reference snow: a thresholded, zoomed N(loc, scale) layer motion-blurred at an angle
    ~ U(-135, -45), added twice (as is and rotated 180 degrees) to the image brightened towards
    1.5 luma + 0.5."""
    n = images.shape[0]
    base = c[0] + c[1] * torch.randn((n, 1, IMAGE_SIZE, IMAGE_SIZE), generator=generator,
                                     device=images.device, dtype=torch.float64)
    angle = _uniform((n,), -135.0, -45.0, generator, images.device)
    layer = _snow_layer(base, c, angle)
    x = _unit(images, torch.float32)
    bright = torch.maximum(x, _cv_rgb2gray(x) * 1.5 + 0.5)
    x = c[6] * x + (1 - c[6]) * bright
    return _save(x.to(torch.float64) + layer + layer.flip(-2, -1))


def plasma_fractal(n: int, wibbledecay: float, generator, device, mapsize: int = IMAGE_SIZE) -> torch.Tensor:
    """The reference's plasma_fractal (diamond-square) for n maps at once: float64 n x size x size
    on [0, 1]; each step's perturbations wibble * U(-wibble, wibble), wibble = 100 / decay^k."""
    m = torch.zeros((n, mapsize, mapsize), dtype=torch.float64, device=device)
    stepsize, wibble = mapsize, 100.0

    def wibbled_mean(a):
        return a / 4 + wibble * _uniform(a.shape, -wibble, wibble, generator, device)

    while stepsize >= 2:
        half = stepsize // 2
        corner = m[:, 0::stepsize, 0::stepsize]
        sq = corner + torch.roll(corner, -1, 1)
        sq = sq + torch.roll(sq, -1, 2)
        m[:, half::stepsize, half::stepsize] = wibbled_mean(sq)
        dr = m[:, half::stepsize, half::stepsize].clone()
        ul = m[:, 0::stepsize, 0::stepsize].clone()
        lt = (dr + torch.roll(dr, 1, 1)) + (ul + torch.roll(ul, -1, 2))
        m[:, 0::stepsize, half::stepsize] = wibbled_mean(lt)
        tt = (dr + torch.roll(dr, 1, 2)) + (ul + torch.roll(ul, -1, 1))
        m[:, half::stepsize, 0::stepsize] = wibbled_mean(tt)
        stepsize //= 2
        wibble /= wibbledecay
    m = m - m.amin((1, 2), keepdim=True)
    return m / m.amax((1, 2), keepdim=True)


def fog(images, c, generator=None):
    """reference fog: x + c0 * plasma fractal (same on all channels), rescaled by max / (max + c0)
    with max the image's maximum (float64)."""
    x = _unit(images)
    max_val = x.amax((1, 2, 3), keepdim=True)
    x = x + c[0] * plasma_fractal(x.shape[0], c[1], generator, x.device)[:, None]
    return _save(x * max_val / (max_val + c[0]))


# ---------------------------------------------------------------- digital
def contrast(images, c, generator=None):
    """reference contrast: (x - m) c + m, m the per-image, per-channel mean (float64). numpy's
    mean over axes (0, 1) of an H x W x 3 array adds the pixels one after another (the channel axis
    is the inner loop), so m is a sequential sum here too (cumsum; torch.mean sums pairwise and
    lands on another last bit, which moves ~0.05 % of the saved values by 1)."""
    x = _unit(images)
    means = (x.flatten(2).cumsum(-1)[..., -1:] / (x.shape[2] * x.shape[3])).unsqueeze(-1)
    return _save((x - means) * c + means)


def brightness(images, c, generator=None):
    """reference brightness: HSV value + c, clipped to [0, 1] (scikit-image's HSV, float64)."""
    h, s, v = _rgb2hsv(_unit(images))
    return _save(_hsv2rgb(h, s, (v + c).clamp(0.0, 1.0)))


def saturate(images, c, generator=None):
    """reference saturate: HSV saturation * c0 + c1, clipped to [0, 1] (scikit-image's HSV)."""
    h, s, v = _rgb2hsv(_unit(images))
    return _save(_hsv2rgb(h, (s * c[0] + c[1]).clamp(0.0, 1.0), v))


def jpeg_compression(images, c, generator=None):
    """reference jpeg_compression: PIL save(quality=c) and decode; libjpeg through torchvision,
    which gives PIL's bits (trainables.distortions.jpeg; tests/test_distortions.py checks it)."""
    return _libjpeg(images, int(c))


def _pil_box_matrix(in_size: int, out_size: int) -> np.ndarray:
    """PIL's BOX resampling along one axis (libImaging/Resample.c precompute_coeffs and
    normalize_coeffs_8bpc) as an out x in matrix of its fixed-point integer coefficients."""
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    mat = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = [1.0 if -0.5 < (x + xmin - center + 0.5) * ss <= 0.5 else 0.0 for x in range(xmax)]
        ww = sum(w)
        for x in range(xmax):
            k = w[x] / ww if ww != 0.0 else w[x]
            mat[xx, x + xmin] = int(0.5 + k * (1 << PIL_PRECISION_BITS))
    return mat


def _pil_resample(x: torch.Tensor, mat_h: torch.Tensor, mat_w: torch.Tensor) -> torch.Tensor:
    """PIL's two-pass 8-bit resampling: horizontal pass to uint8, then vertical, each
    clip8((2^21 + sum k v) >> 22); exact integers in float64."""
    half = float(1 << (PIL_PRECISION_BITS - 1))
    one = float(1 << PIL_PRECISION_BITS)
    x = x.to(torch.float64)
    x = torch.floor((x @ mat_w.T + half) / one).clamp_(0, 255)
    return torch.floor((mat_h @ x + half) / one).clamp_(0, 255)


def pixelate(images, c, generator=None):
    """reference pixelate: PIL resize to int(32 c) with BOX, then back to 32 with BOX."""
    small = int(IMAGE_SIZE * c)
    down = torch.from_numpy(_pil_box_matrix(IMAGE_SIZE, small)).to(images.device)
    up = torch.from_numpy(_pil_box_matrix(small, IMAGE_SIZE)).to(images.device)
    x = _pil_resample(images, down, down)
    return _pil_resample(x, up, up).to(torch.uint8)


def _affine_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """cv2.getAffineTransform: the 2 x 3 M with M [x y 1]^T = dst for the three point pairs
    (OpenCV solves the same 6 x 6 system by LU in double)."""
    a = np.zeros((6, 6))
    b = np.zeros(6)
    for i in range(3):
        a[2 * i, 0:2], a[2 * i, 2] = src[i], 1.0
        a[2 * i + 1, 3:5], a[2 * i + 1, 5] = src[i], 1.0
        b[2 * i], b[2 * i + 1] = dst[i]
    return np.linalg.solve(a, b).reshape(2, 3)


def _cv_warp_affine_reflect101(x: torch.Tensor, mats: torch.Tensor) -> torch.Tensor:
    """cv2.warpAffine(x, M, (32, 32), flags=INTER_LINEAR, borderMode=BORDER_REFLECT_101) for
    float32 N x C x 32 x 32 and forward matrices N x 2 x 3 (float64), as OpenCV computes it
    (imgwarp.cpp WarpAffineInvoker + remapBilinear): M inverted in double, source coordinates in
    fixed point (cvRound(. * 1024) + 16) >> 5 on a 1/32-pixel grid, bilinear weights from that
    grid, float32 sums, out-of-image neighbours mirrored."""
    n, ch, hgt, wid = x.shape
    m = mats.to(torch.float64)
    d = m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]
    d = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
    a11, a22 = m[:, 1, 1] * d, m[:, 0, 0] * d
    a12, a21 = m[:, 0, 1] * -d, m[:, 1, 0] * -d
    b1 = -a11 * m[:, 0, 2] - a12 * m[:, 1, 2]
    b2 = -a21 * m[:, 0, 2] - a22 * m[:, 1, 2]
    scale = float(1 << CV_AB_BITS)
    round_delta = (1 << CV_AB_BITS) // (1 << CV_INTER_BITS) // 2
    cols = torch.arange(wid, device=x.device, dtype=torch.float64)
    rows = torch.arange(hgt, device=x.device, dtype=torch.float64)
    adelta = torch.round(a11[:, None] * cols * scale).to(torch.int64)  # cvRound: half to even
    bdelta = torch.round(a21[:, None] * cols * scale).to(torch.int64)
    x0 = torch.round((a12[:, None] * rows + b1[:, None]) * scale).to(torch.int64) + round_delta
    y0 = torch.round((a22[:, None] * rows + b2[:, None]) * scale).to(torch.int64) + round_delta
    shift = CV_AB_BITS - CV_INTER_BITS
    gx = (x0[:, :, None] + adelta[:, None, :]) >> shift  # N x H x W in 1/32 px
    gy = (y0[:, :, None] + bdelta[:, None, :]) >> shift
    tab = 1 << CV_INTER_BITS
    sx, sy = gx >> CV_INTER_BITS, gy >> CV_INTER_BITS
    fx = (gx & (tab - 1)).to(torch.float32) / tab
    fy = (gy & (tab - 1)).to(torch.float32) / tab
    w = ((1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx)

    def mirror(i, size):  # BORDER_REFLECT_101 (borderInterpolate), any distance
        period = 2 * size - 2
        i = i.remainder(period)
        return torch.where(i >= size, period - i, i)

    xs0, xs1 = mirror(sx, wid), mirror(sx + 1, wid)
    ys0, ys1 = mirror(sy, hgt), mirror(sy + 1, hgt)
    flat = x.flatten(2)

    def at(yy, xx):
        return flat.gather(2, (yy * wid + xx).view(n, 1, -1).expand(-1, ch, -1)).view(n, ch, hgt, wid)

    out = at(ys0, xs0) * w[0][:, None] + at(ys0, xs1) * w[1][:, None]
    out = out + at(ys1, xs0) * w[2][:, None]
    return out + at(ys1, xs1) * w[3][:, None]


def _map_bilinear_reflect(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """scipy.ndimage.map_coordinates(order=1, mode='reflect') per channel: x float32 N x C x H x W,
    rows/cols float64 N x H x W; computed in float64, returned in float32 as scipy returns it."""
    n, ch, hgt, wid = x.shape
    r0, c0 = torch.floor(rows), torch.floor(cols)
    tr, tc = rows - r0, cols - c0
    r0, c0 = r0.to(torch.int64), c0.to(torch.int64)

    def sym(i, size):
        i = i.remainder(2 * size)
        return torch.where(i >= size, 2 * size - 1 - i, i)

    flat = x.to(torch.float64).flatten(2)

    def at(rr, cc):
        idx = (sym(rr, hgt) * wid + sym(cc, wid)).view(n, 1, -1).expand(-1, ch, -1)
        return flat.gather(2, idx).view(n, ch, hgt, wid)

    tr, tc = tr[:, None], tc[:, None]
    top = (1 - tc) * at(r0, c0) + tc * at(r0, c0 + 1)
    bottom = (1 - tc) * at(r0 + 1, c0) + tc * at(r0 + 1, c0 + 1)
    return ((1 - tr) * top + tr * bottom).to(torch.float32)


def elastic_draws(n: int, c, generator, device):
    """The draws of elastic_transform: the affine points' jitter U(-affine, affine) (n x 3 x 2)
    and the two displacement fields U(-1, 1) (n x 32 x 32 each), float64."""
    a = IMAGE_SIZE * c[2]
    jitter = _uniform((n, 3, 2), -a, a, generator, device)
    dx = _uniform((n, IMAGE_SIZE, IMAGE_SIZE), -1.0, 1.0, generator, device)
    dy = _uniform((n, IMAGE_SIZE, IMAGE_SIZE), -1.0, 1.0, generator, device)
    return jitter, dx, dy


def elastic_from_draws(images, c, jitter, dx, dy):
    """elastic_transform given its draws (see `elastic_draws`)."""
    alpha, sigma = IMAGE_SIZE * c[0], IMAGE_SIZE * c[1]
    n = images.shape[0]
    x = _unit(images, torch.float32)
    center = np.float32([IMAGE_SIZE, IMAGE_SIZE]) // 2
    size = IMAGE_SIZE // 3
    pts1 = np.float32([center + size, [center[0] + size, center[1] - size], center - size])
    pts2 = pts1[None] + jitter.cpu().numpy().astype(np.float32)  # float32 sum, as the reference
    mats = np.stack([_affine_from_points(pts1.astype(np.float64), p.astype(np.float64)) for p in pts2]) \
        if n else np.zeros((0, 2, 3))
    x = _cv_warp_affine_reflect101(x, torch.from_numpy(mats).to(images.device))

    def field(u):  # (gaussian(U, sigma, mode='reflect', truncate=3) * alpha).astype(np.float32)
        return (_sk_gaussian(u, sigma, "reflect", ELASTIC_TRUNCATE) * alpha).to(torch.float32)

    ddx, ddy = field(dx).to(torch.float64), field(dy).to(torch.float64)
    grid = torch.arange(IMAGE_SIZE, device=images.device, dtype=torch.float64)
    rows = grid.view(1, -1, 1) + ddy
    cols = grid.view(1, 1, -1) + ddx
    return _save(_map_bilinear_reflect(x, rows, cols))


def elastic_transform(images, c, generator=None):
    """reference elastic_transform: a random affine warp of the three points (26, 26), (26, 6),
    (6, 6) (OpenCV warpAffine, mirrored border), then displacement by Gaussian-smoothed uniform
    fields scaled by alpha (scipy map_coordinates, order 1, mode 'reflect'); float32."""
    jitter, dx, dy = elastic_draws(images.shape[0], c, generator, images.device)
    return elastic_from_draws(images, c, jitter, dx, dy)


# ---------------------------------------------------------------- spatter (OpenCV pieces)
CANNY_LOW, CANNY_HIGH = 50, 150  # reference spatter: cv2.Canny(liquid_layer, 50, 150)
CANNY_TG22 = 13573  # OpenCV canny.cpp: tan(22.5 deg) * 2^15, rounded
DIST_L2_MASK5 = (1.0, 1.4, 2.1969)  # OpenCV getDistanceTransformMask(52): DIST_L2, 5 x 5 chamfer (float32)
DIST_TRUNC = 20  # reference spatter: cv2.threshold(dist, 20, 20, THRESH_TRUNC)
WATER_RGB = (175, 238, 238)  # reference spatter: "pale turquoise", added to channels 0, 1, 2 (R, G, B)
MUD_RGB = (63, 42, 20)  # reference spatter: "mud brown"
SPATTER_EMBOSS = ((-2, -1, 0), (-1, 1, 1), (0, 1, 2))  # reference spatter: filter2D kernel
BOX_SHIFT = 23  # OpenCV box_filter ColumnSum<ushort, uchar>: fixed-point division by the window size


def _pad_border(x: torch.Tensor, r: int, mode: str, value=None) -> torch.Tensor:
    """Pad the last two dims by r: a scipy/OpenCV border `mode`, or the constant `value`."""
    if value is not None:
        return torch.nn.functional.pad(x, (r, r, r, r), value=value)
    idx_h = _border_index(x.shape[-2], r, mode, x.device)
    idx_w = _border_index(x.shape[-1], r, mode, x.device)
    return x.index_select(-2, idx_h).index_select(-1, idx_w)


def _cv_canny(src: torch.Tensor) -> torch.Tensor:
    """cv2.Canny(src, 50, 150) (aperture 3, L1 gradient) on uint8 N x H x W -> bool edges, as
    OpenCV 4 computes it: Sobel with replicated borders, |dx| + |dy|, non-maximum suppression by
    the sector of (dx, dy) (tan 22.5 deg in fixed point; ties kept on one side only), pixels > 150
    seed edges that grow through 8-connected pixels > 50 that survived suppression."""
    p = _pad_border(src.to(torch.int64), 1, "nearest")
    dx = (p[:, :-2, 2:] + 2 * p[:, 1:-1, 2:] + p[:, 2:, 2:]) \
        - (p[:, :-2, :-2] + 2 * p[:, 1:-1, :-2] + p[:, 2:, :-2])
    dy = (p[:, 2:, :-2] + 2 * p[:, 2:, 1:-1] + p[:, 2:, 2:]) \
        - (p[:, :-2, :-2] + 2 * p[:, :-2, 1:-1] + p[:, :-2, 2:])
    mag = dx.abs() + dy.abs()
    mp = torch.nn.functional.pad(mag, (1, 1, 1, 1))  # magnitudes outside the image are 0

    def at(di, dj):  # mag at (i + di, j + dj)
        return mp[:, 1 + di:mp.shape[1] - 1 + di, 1 + dj:mp.shape[2] - 1 + dj]

    ax, ay = dx.abs(), dy.abs() << 15
    tg22x = ax * CANNY_TG22
    tg67x = tg22x + (ax << 16)
    horizontal = ay < tg22x
    vertical = ~horizontal & (ay > tg67x)
    s_neg = (dx ^ dy) < 0  # s = -1: the diagonal runs from (i - 1, j + 1) to (i + 1, j - 1)
    keep_h = (mag > at(0, -1)) & (mag >= at(0, 1))
    keep_v = (mag > at(-1, 0)) & (mag >= at(1, 0))
    keep_d = torch.where(s_neg, (mag > at(-1, 1)) & (mag > at(1, -1)), (mag > at(-1, -1)) & (mag > at(1, 1)))
    keep = torch.where(horizontal, keep_h, torch.where(vertical, keep_v, keep_d))
    candidate = (mag > CANNY_LOW) & keep
    edges = candidate & (mag > CANNY_HIGH)
    while True:  # hysteresis: grow the seeds through 8-connected candidates
        near = torch.nn.functional.max_pool2d(edges[:, None].to(torch.float32), 3, 1, 1)[:, 0] > 0
        grown = candidate & near
        grown |= edges
        if torch.equal(grown, edges):
            return edges
        edges = grown


def _cv_distance_l2_mask5(src_zero: torch.Tensor) -> torch.Tensor:
    """cv2.distanceTransform(src, DIST_L2, 5) -> float32, min(., 20) folded in: the 5 x 5 chamfer
    distance (weights 1, 1.4, 2.1969 as float32) to the nearest zero pixel of src (`src_zero`
    marks them), as the IPP path of opencv-python's wheels computes it (checked against
    cv2 4.10): a forward and a backward raster pass, each pixel the minimum of its neighbours'
    float32 sums, outside pixels unreachable. (OpenCV's own code, used without IPP, sums 16-bit
    fixed-point weights instead: other last digits.) Rows are vectorised; the within-row
    recurrence runs left to right (right to left) as in the raster pass, over the batch."""
    n, hgt, wid = src_zero.shape
    hv, diag, long_ = (float(np.float32(w)) for w in DIST_L2_MASK5)
    far = float(np.finfo(np.float32).max)
    b = 2
    tmp = torch.full((n, hgt + 2 * b, wid + 2 * b), far, dtype=torch.float32, device=src_zero.device)

    def look(r, dj):  # tmp at padded row r, columns j + dj
        return tmp[:, r, b + dj:b + dj + wid]

    for i in range(hgt):  # forward pass: rows above, then the left neighbour
        r = b + i
        t = torch.stack([look(r - 2, -1) + long_, look(r - 2, 1) + long_, look(r - 1, -2) + long_,
                         look(r - 1, -1) + diag, look(r - 1, 0) + hv, look(r - 1, 1) + diag,
                         look(r - 1, 2) + long_]).amin(0)
        t = torch.where(src_zero[:, i], torch.zeros_like(t), t)
        for j in range(1, wid):
            t[:, j] = torch.minimum(t[:, j], t[:, j - 1] + hv)
        tmp[:, r, b:b + wid] = t
    for i in range(hgt - 1, -1, -1):  # backward pass: rows below, then the right neighbour
        r = b + i
        t = torch.stack([look(r, 0), look(r + 2, 1) + long_, look(r + 2, -1) + long_,
                         look(r + 1, 2) + long_, look(r + 1, 1) + diag, look(r + 1, 0) + hv,
                         look(r + 1, -1) + diag, look(r + 1, -2) + long_]).amin(0)
        for j in range(wid - 2, -1, -1):
            t[:, j] = torch.minimum(t[:, j], t[:, j + 1] + hv)
        tmp[:, r, b:b + wid] = t
    return tmp[:, b:b + hgt, b:b + wid].clamp(max=float(DIST_TRUNC))


def _cv_blur3_float(x: torch.Tensor) -> torch.Tensor:
    """cv2.blur(x, (3, 3)) on float32 N x H x W: 3 x 3 sums in double, times 1/9 in double, to
    float32; mirrored borders. (OpenCV slides a running sum; nine float32 values of at most 20
    sum exactly in double whatever the order, so the result is the same.)"""
    p = _pad_border(x.to(torch.float64), 1, "mirror")
    s = sum(p[:, i:i + x.shape[1], j:j + x.shape[2]] for i in range(3) for j in range(3))
    return (s * (1.0 / 9.0)).to(torch.float32)


def _cv_blur3_uint8(x: torch.Tensor) -> torch.Tensor:
    """cv2.blur(x, (3, 3)) on uint8 N x H x W: integer 3 x 3 sums s, ((s + 4) * 932068) >> 23
    (OpenCV's fixed-point division by 9, equal to rounding s / 9), mirrored borders."""
    p = _pad_border(x.to(torch.int64), 1, "mirror")
    s = sum(p[:, i:i + x.shape[1], j:j + x.shape[2]] for i in range(3) for j in range(3))
    d = 9
    scalef = float(1 << BOX_SHIFT) / d
    div_scale = math.floor(scalef)
    div_delta = d // 2
    if scalef - div_scale < 0.5:
        div_delta += 1
    else:
        div_scale += 1
    return (((s + div_delta) * div_scale) >> BOX_SHIFT).to(torch.uint8)


def _cv_equalize_hist(x: torch.Tensor) -> torch.Tensor:
    """cv2.equalizeHist on uint8 N x H x W: lut[i] = round(cumulative count above the lowest used
    level * 255 / (total - count of that level)) in float32, lowest level -> 0; a one-level image
    stays as it is."""
    n = x.shape[0]
    flat = x.flatten(1).to(torch.int64)
    total = flat.shape[1]
    hist = torch.zeros((n, 256), dtype=torch.int64, device=x.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat))
    levels = torch.arange(256, device=x.device)
    first = torch.where(hist > 0, levels, 256).amin(1, keepdim=True)
    first_count = hist.gather(1, first.clamp(max=255))
    rest = (total - first_count).clamp(min=1).to(torch.float32)  # total - hist[first]
    scale = torch.tensor(255.0, dtype=torch.float32, device=x.device) / rest  # float32, as OpenCV
    above = torch.where(levels > first, hist, torch.zeros_like(hist)).cumsum(1)
    lut = torch.round(above.to(torch.float32) * scale).clamp(0, 255)
    lut = torch.where(levels >= first, lut, torch.zeros_like(lut))
    single = first_count == total
    lut = torch.where(single, first.to(lut.dtype).expand(-1, 256), lut)
    return lut.gather(1, flat).to(torch.uint8).view_as(x)


def _cv_filter2d_uint8(x: torch.Tensor, kernel) -> torch.Tensor:
    """cv2.filter2D(x, CV_8U, kernel) with an integer 3 x 3 kernel: correlation, mirrored borders,
    exact integer sums saturated to 0..255."""
    p = _pad_border(x.to(torch.int64), 1, "mirror")
    out = sum(int(kernel[i][j]) * p[:, i:i + x.shape[1], j:j + x.shape[2]]
              for i in range(3) for j in range(3) if kernel[i][j])
    return out.clamp(0, 255).to(torch.uint8)


def _float_to_uint8_wrap(x: torch.Tensor) -> torch.Tensor:
    """numpy's float -> uint8 cast on x86-64: truncate to int32, keep the low byte (so 300 -> 44)."""
    return (x.trunc().to(torch.int64) & 0xFF).to(torch.uint8)


def spatter_from_draws(images, c, base):
    """spatter given its N(loc, scale) draws `base` (float64 N x 32 x 32)."""
    x = _unit(images, torch.float32)
    liquid = _sk_gaussian(base, c[2])
    liquid = torch.where(liquid < c[3], torch.zeros_like(liquid), liquid)
    if c[5] == 0:  # water: liquid layer with embossed, equalised edge distances
        layer = _float_to_uint8_wrap(liquid * 255)
        dist = _cv_distance_l2_mask5(_cv_canny(layer))
        dist = _cv_blur3_float(dist).trunc().to(torch.uint8)  # .astype(np.uint8)
        dist = _cv_equalize_hist(dist)
        dist = _cv_filter2d_uint8(dist, SPATTER_EMBOSS)
        dist = _cv_blur3_uint8(dist).to(torch.float32)
        m = layer.to(torch.float32) * dist  # GRAY2BGRA: the same m on B, G, R; alpha 1 is dropped
        m = m / m.amax((1, 2), keepdim=True)  # 0 / 0 -> nan where the layer is empty, as in the reference
        m = m * np.float32(c[4]).item()
        color = torch.tensor([np.float32(v / 255.) for v in WATER_RGB], device=x.device).view(1, 3, 1, 1)
        out = (x + m[:, None] * color).clamp(0, 1) * 255
        return torch.nan_to_num(out, nan=0.0).trunc().to(torch.uint8)  # np.uint8(nan) is 0 on x86-64
    m = (liquid > c[3]).to(torch.float32)  # mud
    m = _sk_gaussian(m, c[4])
    m = torch.where(m < 0.8, torch.zeros_like(m), m)[:, None]
    color = torch.tensor([np.float32(v / 255.) for v in MUD_RGB], device=x.device).view(1, 3, 1, 1) * m
    return _save(x * (1 - m) + color)


def spatter(images, c, generator=None):
    """reference spatter: a Gaussian-smoothed N(loc, scale) liquid layer, thresholded; water
    (severities 1-3): drops tinted pale turquoise, shaded by the equalised, embossed distance to
    the layer's Canny edges; mud (4-5): a smoothed mask blended with mud brown."""
    base = c[0] + c[1] * torch.randn((images.shape[0], IMAGE_SIZE, IMAGE_SIZE), generator=generator,
                                     device=images.device, dtype=torch.float64)
    return spatter_from_draws(images, c, base)


# ---------------------------------------------------------------- registry
@dataclass(frozen=True)
class Corruption:
    """A registry entry: `fn(images, param, generator)` and the parameter of severities 1..5."""
    fn: Callable[..., torch.Tensor]
    params: tuple  # one entry per severity 1..5, copied from the reference
    seen: bool  # True: one of our training distortions (Gaussian noise, JPEG, Gaussian blur)
    random: bool  # False: the same images give the same bytes whatever the generator
    benchmark: bool  # True: one of the 15 of the CIFAR-10-C benchmark; False: the 4 extras
    deviation: str = ""  # what can differ from the reference's own run besides the random draws


_SEEN = {"gaussian_noise", "jpeg_compression", "gaussian_blur"}  # issue 14: our mixtures' distortions

CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": Corruption(gaussian_noise, GAUSSIAN_NOISE_C, True, True, True),
    "shot_noise": Corruption(shot_noise, SHOT_NOISE_C, False, True, True),
    "impulse_noise": Corruption(impulse_noise, IMPULSE_NOISE_C, False, True, True),
    "defocus_blur": Corruption(defocus_blur, DEFOCUS_BLUR_C, False, False, True,
                               "cv2.filter2D's DFT (17 x 17 kernel) done as a direct float64 correlation "
                               "with the kernel's non-zero core; same bytes in our checks"),
    "glass_blur": Corruption(glass_blur, GLASS_BLUR_C, False, True, True),
    "motion_blur": Corruption(motion_blur, MOTION_BLUR_C, False, True, True,
                              "ImageMagick 6.9.11 Q16's MotionBlurImage and 8-bit export (truncating); an "
                              "ImageMagick that rounds at export gives +1 on about half the values"),
    "zoom_blur": Corruption(zoom_blur, ZOOM_BLUR_C, False, False, True),
    "snow": Corruption(snow, SNOW_C, False, True, True,
                       "motion blur as motion_blur's; luma in OpenCV 4.10's (AVX2) fused multiply-add order"),
    "fog": Corruption(fog, FOG_C, False, True, True),
    "brightness": Corruption(brightness, BRIGHTNESS_C, False, False, True),
    "contrast": Corruption(contrast, CONTRAST_C, False, False, True),
    "elastic_transform": Corruption(elastic_transform, ELASTIC_C, False, True, True,
                                    "OpenCV's warpAffine (1/32-pixel fixed-point bilinear) as OpenCV 4.10 "
                                    "computes it; the affine solved by numpy's LU, not OpenCV's"),
    "pixelate": Corruption(pixelate, PIXELATE_C, False, False, True),
    "jpeg_compression": Corruption(jpeg_compression, JPEG_COMPRESSION_C, True, False, True),
    "speckle_noise": Corruption(speckle_noise, SPECKLE_NOISE_C, False, True, False),
    "gaussian_blur": Corruption(gaussian_blur, GAUSSIAN_BLUR_C, True, False, False),
    "spatter": Corruption(spatter, SPATTER_C, False, True, False,
                          "distanceTransform as opencv-python 4.10's IPP path (float32 sums); OpenCV "
                          "without IPP sums fixed-point weights (other last digits)"),
    "saturate": Corruption(saturate, SATURATE_C, False, False, False),
}
assert _SEEN == {k for k, v in CORRUPTIONS.items() if v.seen}

NOT_IMPLEMENTED: dict[str, str] = {
    "frost": "blends crops of the reference's six frost photographs (frost1.png ... frost6.jpg, "
             "ImageNet-C/create_c/), which are not in this repository or its dependencies",
}

# The order of the reference's table (make_cifar_c.py's OrderedDict): 15 benchmark, then 4 extras.
REFERENCE_ORDER = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
                   "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
                   "elastic_transform", "pixelate", "jpeg_compression",
                   "speckle_noise", "gaussian_blur", "spatter", "saturate")
BENCHMARK = REFERENCE_ORDER[:15]
EXTRAS = REFERENCE_ORDER[15:]


def corrupt(images: torch.Tensor, name: str, severity: int, generator: torch.Generator | None = None
            ) -> torch.Tensor:
    """`images` (uint8 N x 3 x 32 x 32) corrupted by `name` at `severity` (1-5); uint8, same device.

    Random corruptions need `generator` (a torch.Generator on the images' device)."""
    spec = CORRUPTIONS.get(name) if isinstance(name, str) else None
    if spec is None:
        why = f" ({NOT_IMPLEMENTED[name]})" if name in NOT_IMPLEMENTED else ""
        raise CorruptionError(f"corruption={name!r} is not available{why}; allowed: {sorted(CORRUPTIONS)}")
    try:
        sev = operator.index(severity)
    except TypeError:
        sev = None
    if isinstance(severity, bool) or sev not in SEVERITIES:
        raise CorruptionError(f"{name} severity={severity!r} is not allowed; allowed: {list(SEVERITIES)}")
    _check_images(images)
    if spec.random and not isinstance(generator, torch.Generator):
        raise CorruptionError(f"{name} is random: generator={generator!r} is not allowed; allowed: a "
                              f"torch.Generator on {images.device}")
    if spec.random and generator.device.type != images.device.type:
        raise CorruptionError(f"{name}: generator on {generator.device} is not allowed for images on "
                              f"{images.device}; allowed: a generator on the images' device")
    if images.shape[0] == 0:
        return images.clone()
    return spec.fn(images, spec.params[sev - 1], generator)
