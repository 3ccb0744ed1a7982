"""The three distortions of Sec. 4.2 (Gaussian blur, white Gaussian noise, JPEG) at levels 1-3.

"For the blur distortion, we use the Gaussian kernels with sigma = 0.7, 1.0, 1.2 for levels from 1 to
3 respectively. With respect to the noise artifacts, white Gaussian noise with variance values
v = 0.005, 0.01, 0.02 are employed. Regarding to JPEG compression, we compress the images with the
JPEG quality factors of 12, 8, 4."

Every distortion is a pure batched function: uint8 N x 3 x H x W in, uint8 of the same shape out, on
the input's device. `distort(images, kind, level, generator=None, **options)` looks the kind up in
the registry `DISTORTIONS`; a new distortion is one `Distortion` entry there (its keyword-only
parameters are its options). Randomness only through an explicit `torch.Generator`. What the paper
leaves open (kernel radius, border rule, noise intensity scale, rounding) is stated in each
function's docstring; the choices are ours.

Filtering uses `separable_correlate_valid`: shifted slices, one multiply or add per tensor op, so
the same input gives the same bits on CPU and CUDA (cuDNN convolutions run in TF32 by default and
in a different summation order; a blurred pixel near x.5 would round differently).
"""
from __future__ import annotations

import inspect
import math
import operator
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision.io as tvio
from kornia.filters import get_gaussian_kernel1d

BLUR_SIGMAS = (0.7, 1.0, 1.2)  # Sec. 4.2: Gaussian kernel sigma (pixels), levels 1-3
NOISE_VARIANCES = (0.005, 0.01, 0.02)  # Sec. 4.2: noise variance v on intensities in [0, 1], levels 1-3
JPEG_QUALITIES = (12, 8, 4)  # Sec. 4.2: JPEG quality factor (libjpeg scale 1-100), levels 1-3

BLUR_TRUNCATE = 3.0  # our choice: kernel radius = ceil(3 sigma) -> sizes 7, 7, 9 (config.blur_truncate)
BLUR_BORDERS = ("reflect", "replicate", "circular")  # torch.nn.functional.pad modes (config.blur_border)
CHUNK = 4096  # images per step of blur and noise: bounds float32 temporaries (~50 MB per copy)


class DistortionError(ValueError):
    """A bad distortion request; the one-line message names the value and what is allowed."""


def _check_images(images) -> None:
    if not isinstance(images, torch.Tensor):
        raise DistortionError(f"images of type {type(images).__name__} are not allowed; "
                              "allowed: a uint8 torch.Tensor N x 3 x H x W")
    if images.dtype != torch.uint8:
        raise DistortionError(f"images dtype={images.dtype} is not allowed; allowed: torch.uint8 (0-255)")
    if images.dim() != 4 or images.shape[1] != 3:
        raise DistortionError(f"images shape={tuple(images.shape)} is not allowed; allowed: N x 3 x H x W")


def separable_correlate_valid(x: torch.Tensor, taps: list[float]) -> torch.Tensor:
    """Correlate the last two dims of float `x` with the symmetric 1-D `taps` along H, then W.

    'Valid' output: (H - k + 1) x (W - k + 1). out = w_0 x_c + sum_t w_t (x_{c-t} + x_{c+t}), one
    IEEE-rounded op per tensor op, so CPU and CUDA agree bit for bit (no TF32, no fused multiply-add).
    """
    k = len(taps)
    r = k // 2
    if k % 2 != 1 or any(taps[r - t] != taps[r + t] for t in range(1, r + 1)):
        raise ValueError(f"taps={taps} are not allowed; allowed: an odd-length symmetric list")
    for dim in (-2, -1):  # H first: its slices are contiguous blocks of whole rows
        n = x.shape[dim] - k + 1
        out = x.narrow(dim, r, n) * taps[r]
        tmp = torch.empty_like(out)
        for t in range(1, r + 1):
            torch.add(x.narrow(dim, r - t, n), x.narrow(dim, r + t, n), out=tmp)
            out.add_(tmp.mul_(taps[r + t]))
        x = out
    return x


def blur_radius(sigma: float, truncate: float = BLUR_TRUNCATE) -> int:
    """Kernel radius r = ceil(truncate * sigma): 3, 3, 4 (sizes 7, 7, 9) for the paper's sigmas."""
    return math.ceil(truncate * sigma)


def gaussian_taps(sigma: float, radius: int) -> list[float]:
    """exp(-n^2 / 2 sigma^2) for n = -radius..radius, normalised to sum 1 in float64, as float32
    values; scipy.ndimage.gaussian_filter(sigma=sigma, radius=radius) uses the same kernel."""
    taps = get_gaussian_kernel1d(2 * radius + 1, float(sigma), dtype=torch.float64)[0]
    taps = 0.5 * (taps + taps.flip(0))  # exactly symmetric, as separable_correlate_valid requires
    return taps.float().tolist()


def gaussian_blur(images: torch.Tensor, sigma: float, *, truncate: float = BLUR_TRUNCATE,
                  border: str = "reflect") -> torch.Tensor:
    """Gaussian blur of standard deviation `sigma` pixels.

    Rule: separable kernel exp(-n^2 / 2 sigma^2), n = -r..r, r = ceil(truncate * sigma) (sizes 7, 7, 9
    for the paper's sigmas at truncate 3), normalised to sum 1; borders padded by r with
    torch.nn.functional.pad `border` ("reflect" mirrors without repeating the edge pixel, like
    scipy's "mirror"; "replicate" = scipy "nearest"; "circular" = scipy "wrap"); computed in float32
    on [0, 255], then torch.round (half to even) and clamped to 0-255.
    """
    _check_images(images)
    if border not in BLUR_BORDERS:
        raise DistortionError(f"blur border={border!r} is not allowed; allowed: {list(BLUR_BORDERS)}")
    if isinstance(truncate, bool) or not (isinstance(truncate, (int, float)) and truncate > 0
                                          and math.isfinite(truncate)):
        raise DistortionError(f"blur truncate={truncate!r} is not allowed; allowed: a finite number > 0")
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise DistortionError(f"blur sigma={sigma!r} is not allowed; allowed: a finite number > 0")
    r = blur_radius(sigma, truncate)
    taps = gaussian_taps(sigma, r)
    if border != "replicate" and min(images.shape[-2:]) <= r:
        raise DistortionError(f"images of size {tuple(images.shape[-2:])} are too small for border="
                              f"{border!r} with kernel radius {r}; allowed: H and W > {r}")
    out = torch.empty_like(images)
    for i in range(0, images.shape[0], CHUNK):
        x = F.pad(images[i:i + CHUNK].float(), (r, r, r, r), mode=border)
        out[i:i + CHUNK] = separable_correlate_valid(x, taps).round_().clamp_(0, 255).to(torch.uint8)
    return out


def noise_from_normal(images: torch.Tensor, variance: float, z: torch.Tensor) -> torch.Tensor:
    """y = clip(x / 255 + sqrt(variance) z, 0, 1), returned as round(255 y); z ~ N(0, 1) given."""
    # multiply, not divide: CUDA turns a division by a scalar into a multiplication by its
    # reciprocal, so multiplying on both devices gives the same bits
    y = images.float().mul_(1.0 / 255.0)
    y.add_(z.to(torch.float32) * math.sqrt(variance)).clamp_(0.0, 1.0)
    return y.mul_(255.0).round_().to(torch.uint8)


def gaussian_noise(images: torch.Tensor, variance: float, generator: torch.Generator | None = None
                   ) -> torch.Tensor:
    """Additive white Gaussian noise of `variance` on intensities in [0, 1] (MATLAB imnoise's
    convention): y = clip(x / 255 + sqrt(v) N(0, 1), 0, 1), stored as round(255 y) (half to even).

    The noise is drawn from `generator` (None = torch's default RNG), chunk by chunk, on the images'
    device; a generator must live on that device. Every call draws fresh noise.
    """
    _check_images(images)
    out = torch.empty_like(images)
    for i in range(0, images.shape[0], CHUNK):
        x = images[i:i + CHUNK]
        z = torch.randn(x.shape, generator=generator, device=images.device, dtype=torch.float32)
        out[i:i + CHUNK] = noise_from_normal(x, variance, z)
    return out


def jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG compression at `quality` (1-100) through libjpeg: encode then decode.

    torchvision.io.encode_jpeg / decode_jpeg on CPU (libjpeg-turbo; baseline, 4:2:0 chroma
    subsampling, the standard tables scaled by quality) give exactly the bytes and pixels of PIL's
    Image.save(format="JPEG", quality=q) + Image.open with PIL's defaults (tests/test_distortions.py
    checks the pixels bit for bit). CUDA images are coded on the CPU and moved back: torchvision's CUDA path
    uses nvJPEG, whose encoder and decoder do not give libjpeg's bits.
    """
    _check_images(images)
    if images.shape[0] == 0:
        return images.clone()
    cpu = images.detach().to("cpu").contiguous()
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs (TorchCodec: not in our stack)
        warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities of TorchVision",
                                category=DeprecationWarning)
        data = tvio.encode_jpeg(list(cpu), quality=int(quality))
        decoded = tvio.decode_jpeg(data, mode=tvio.ImageReadMode.RGB)
    return torch.stack(decoded).to(images.device)


@dataclass(frozen=True)
class Distortion:
    """A registry entry: `fn(images, param, [generator,] **options)` and the per-level parameters."""
    fn: Callable[..., torch.Tensor]
    params: tuple  # the parameter of level 1, 2, 3, ... (Sec. 4.2)
    deterministic: bool  # False: fn takes a generator and every call draws anew
    description: str
    options: tuple[str, ...] = field(init=False)  # fn's keyword-only parameters

    def __post_init__(self):
        kw = tuple(p.name for p in inspect.signature(self.fn).parameters.values()
                   if p.kind is inspect.Parameter.KEYWORD_ONLY)
        object.__setattr__(self, "options", kw)

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(range(1, len(self.params) + 1))


DISTORTIONS: dict[str, Distortion] = {
    "blur": Distortion(gaussian_blur, BLUR_SIGMAS, True, "Gaussian blur, sigma 0.7 / 1.0 / 1.2 px"),
    "noise": Distortion(gaussian_noise, NOISE_VARIANCES, False,
                        "white Gaussian noise, variance 0.005 / 0.01 / 0.02 on [0, 1]"),
    "jpeg": Distortion(jpeg, JPEG_QUALITIES, True, "JPEG (libjpeg), quality 12 / 8 / 4"),
}


def distort(images: torch.Tensor, kind: str, level: int, generator: torch.Generator | None = None,
            **options) -> torch.Tensor:
    """`images` (uint8 N x 3 x H x W) distorted by `kind` at `level` (1-3); uint8, same device.

    `generator` feeds the random kinds (ignored by deterministic ones); `options` are the kind's
    keyword-only parameters (blur: truncate, border); any other option raises DistortionError.
    """
    spec = DISTORTIONS.get(kind) if isinstance(kind, str) else None
    if spec is None:
        raise DistortionError(f"distortion kind={kind!r} is not allowed; allowed: {sorted(DISTORTIONS)}")
    try:
        lv = operator.index(level)  # int, numpy or 0-d torch integer; not 1.0, not True
    except TypeError:
        lv = None
    if isinstance(level, bool) or lv not in spec.levels:
        raise DistortionError(f"{kind} level={level!r} is not allowed; allowed: {list(spec.levels)}")
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise DistortionError(f"{kind} option(s) {unknown} are not allowed; allowed: {list(spec.options)}")
    _check_images(images)
    param = spec.params[lv - 1]
    if spec.deterministic:
        return spec.fn(images, param, **options)
    return spec.fn(images, param, generator, **options)
