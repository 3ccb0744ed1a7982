"""The distortions of Sec. 4.2 against independent references (PIL's libjpeg, scipy's Gaussian filter)."""
import io

import numpy as np
import pytest
import torch

from trainables import distortions as D
from trainables.distortions import DISTORTIONS, DistortionError, distort

KIND_LEVELS = [(k, lv) for k, spec in DISTORTIONS.items() for lv in spec.levels]
# torch.nn.functional.pad mode -> scipy.ndimage mode with the same border rule
SCIPY_MODE = {"reflect": "mirror", "replicate": "nearest", "circular": "wrap"}


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_paper_levels_are_three_per_kind():
    assert D.BLUR_SIGMAS == (0.7, 1.0, 1.2)
    assert D.NOISE_VARIANCES == (0.005, 0.01, 0.02)
    assert D.JPEG_QUALITIES == (12, 8, 4)
    assert all(spec.levels == (1, 2, 3) for spec in DISTORTIONS.values())
    flags = {k: s.deterministic for k, s in DISTORTIONS.items()}
    assert flags == {"blur": True, "noise": False, "jpeg": True}


@pytest.mark.parametrize("kind,level", KIND_LEVELS)
def test_distort_gives_uint8_of_same_shape_and_device_and_changes_images(cifar_mini_images, kind, level):
    x = cifar_mini_images[:64]
    y = distort(x, kind, level, generator=_seeded(0))
    assert y.dtype == torch.uint8 and y.shape == x.shape and y.device == x.device
    assert torch.equal(x, cifar_mini_images[:64])  # input untouched
    changed = (y != x).flatten(1).any(1)
    assert changed.all()


@pytest.mark.parametrize("kind", sorted(DISTORTIONS))
def test_empty_batch_gives_empty_batch(kind):
    x = torch.zeros(0, 3, 32, 32, dtype=torch.uint8)
    assert distort(x, kind, 1, generator=_seeded(0)).shape == x.shape


@pytest.mark.parametrize("kind", [k for k, s in DISTORTIONS.items() if s.deterministic])
def test_deterministic_kinds_repeat_exactly(cifar_mini_images, kind):
    x = cifar_mini_images[:32]
    assert torch.equal(distort(x, kind, 2), distort(x, kind, 2, generator=_seeded(5)))


@pytest.mark.parametrize("level", [1, 2, 3])
def test_jpeg_equals_pil_bit_for_bit(cifar_mini_images, level):
    from PIL import Image

    q = D.JPEG_QUALITIES[level - 1]
    ours = distort(cifar_mini_images, "jpeg", level)
    ref = []
    for img in cifar_mini_images:
        buf = io.BytesIO()
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=q)
        ref.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    ref = torch.from_numpy(np.stack(ref)).permute(0, 3, 1, 2)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("level", [1, 2, 3])
def test_noise_variance_matches_level_on_mid_grey(level):
    x = torch.full((64, 3, 32, 32), 128, dtype=torch.uint8)  # 128/255 +- 3.5 sd of v=0.02: no clipping
    y = distort(x, "noise", level, generator=_seeded(level))
    e = (y.double() - x.double()) / 255.0
    v = D.NOISE_VARIANCES[level - 1]
    assert e.var().item() == pytest.approx(v, rel=0.03)
    assert abs(e.mean().item()) < 0.01 * v ** 0.5


def test_noise_same_seed_same_noise_other_seed_other_noise(cifar_mini_images):
    x = cifar_mini_images[:16]
    a = distort(x, "noise", 2, generator=_seeded(1))
    b = distort(x, "noise", 2, generator=_seeded(1))
    c = distort(x, "noise", 2, generator=_seeded(2))
    assert torch.equal(a, b)
    assert (a != c).float().mean() > 0.5


def test_noise_is_fresh_on_every_call_and_default_rng_works(cifar_mini_images):
    x = cifar_mini_images[:16]
    g = _seeded(3)
    assert not torch.equal(distort(x, "noise", 1, generator=g), distort(x, "noise", 1, generator=g))
    assert distort(x, "noise", 1).shape == x.shape


def test_noise_from_normal_is_the_stated_formula():
    x = torch.tensor([0, 10, 128, 250, 255], dtype=torch.uint8).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    z = torch.tensor([-1.0, 0.5, 0.0, 2.0, 1.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    y = D.noise_from_normal(x, 0.01, z)
    expect = np.clip(np.array([0, 10, 128, 250, 255]) / 255 + 0.1 * np.array([-1, 0.5, 0, 2, 1]), 0, 1)
    assert y[0, 0, 0].tolist() == np.round(expect * 255).astype(int).tolist()


def test_blur_kernel_sizes_follow_truncate():
    assert [2 * D.blur_radius(s) + 1 for s in D.BLUR_SIGMAS] == [7, 7, 9]
    assert [2 * D.blur_radius(s, truncate=2.0) + 1 for s in D.BLUR_SIGMAS] == [5, 5, 7]
    taps = D.gaussian_taps(1.2, 4)
    n = np.arange(-4, 5)
    ref = np.exp(-n ** 2 / (2 * 1.2 ** 2))
    np.testing.assert_allclose(taps, ref / ref.sum(), rtol=1e-6)


@pytest.mark.parametrize("border", sorted(SCIPY_MODE))
@pytest.mark.parametrize("level", [1, 2, 3])
@pytest.mark.parametrize("truncate", [3.0, 2.0])
def test_blur_matches_scipy_gaussian_filter(cifar_mini_images, level, border, truncate):
    from scipy.ndimage import gaussian_filter

    x = cifar_mini_images[:100]
    ours = distort(x, "blur", level, truncate=truncate, border=border).numpy().astype(int)
    sigma = D.BLUR_SIGMAS[level - 1]
    radius = int(np.ceil(truncate * sigma))
    ref = gaussian_filter(x.numpy().astype(np.float64), sigma, mode=SCIPY_MODE[border], radius=radius,
                          axes=(2, 3))
    ref = np.clip(np.round(ref), 0, 255).astype(int)
    assert np.abs(ours - ref).max() <= 1
    assert (ours == ref).mean() > 0.999  # only float32 vs float64 ties at x.5 may differ


def test_blur_options_change_the_result(cifar_mini_images):
    x = cifar_mini_images[:8]
    base = distort(x, "blur", 3)
    assert not torch.equal(base, distort(x, "blur", 3, border="replicate"))
    assert not torch.equal(base, distort(x, "blur", 3, truncate=1.0))


def test_results_do_not_depend_on_chunking(cifar_mini_images, monkeypatch):
    x = cifar_mini_images[:50]
    whole = {k: distort(x, k, 2, generator=_seeded(0)) for k in ("blur", "jpeg")}
    monkeypatch.setattr(D, "CHUNK", 7)
    for k, y in whole.items():
        assert torch.equal(distort(x, k, 2, generator=_seeded(0)), y)


def test_a_new_distortion_is_one_registry_entry(cifar_mini_images, monkeypatch):
    def invert(images, strength):
        return 255 - images if strength else images.clone()

    monkeypatch.setitem(DISTORTIONS, "invert", D.Distortion(invert, (1,), True, "colour inversion"))
    x = cifar_mini_images[:4]
    assert torch.equal(distort(x, "invert", 1), 255 - x)
    with pytest.raises(DistortionError, match="level=2"):
        distort(x, "invert", 2)


def _raises_one_line(call, *named):
    with pytest.raises(DistortionError) as info:
        call()
    msg = str(info.value)
    assert "\n" not in msg and "allowed" in msg
    for word in named:
        assert word in msg
    return msg


def test_bad_requests_raise_naming_the_value(cifar_mini_images):
    x = cifar_mini_images[:2]
    assert isinstance(DistortionError("x"), ValueError)
    _raises_one_line(lambda: distort(x, "fog", 1), "'fog'", "blur")
    for bad in (0, 4, True, 1.0, "1"):
        _raises_one_line(lambda: distort(x, "blur", bad), repr(bad))
    _raises_one_line(lambda: distort(x.float(), "jpeg", 1), "float32", "uint8")
    _raises_one_line(lambda: distort(x[0], "jpeg", 1), "(3, 32, 32)")
    _raises_one_line(lambda: distort(x[:, :1], "noise", 1), "(2, 1, 32, 32)")
    _raises_one_line(lambda: distort(x.numpy(), "noise", 1), "ndarray")
    _raises_one_line(lambda: distort(x, "noise", 1, truncate=3.0), "truncate")
    _raises_one_line(lambda: distort(x, "blur", 1, trunc=3.0), "trunc", "border")
    _raises_one_line(lambda: distort(x, "blur", 1, border="constant"), "'constant'", "reflect")
    _raises_one_line(lambda: distort(x, "blur", 1, truncate=0), "truncate=0")
    _raises_one_line(lambda: distort(x[..., :3, :3], "blur", 1), "(3, 3)")


def test_accepts_numpy_and_torch_integer_levels(cifar_mini_images):
    x = cifar_mini_images[:2]
    ref = distort(x, "blur", 2)
    assert torch.equal(distort(x, "blur", np.int64(2)), ref)
    assert torch.equal(distort(x, "blur", torch.tensor(2)), ref)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_results_equal_cpu_results(cifar_mini_images):
    x = cifar_mini_images
    xc = x.cuda()
    for border in SCIPY_MODE:
        for level in (1, 2, 3):
            y = distort(xc, "blur", level, border=border)
            assert y.device == xc.device and torch.equal(y.cpu(), distort(x, "blur", level, border=border))
    for level in (1, 2, 3):
        y = distort(xc, "jpeg", level)
        assert y.device == xc.device and torch.equal(y.cpu(), distort(x, "jpeg", level))
    z = torch.randn(x.shape, generator=_seeded(0))
    for v in D.NOISE_VARIANCES:
        assert torch.equal(D.noise_from_normal(xc, v, z.cuda()).cpu(), D.noise_from_normal(x, v, z))
    g = torch.Generator(device="cuda").manual_seed(0)
    y = distort(xc, "noise", 3, generator=g)
    assert y.device == xc.device and y.dtype == torch.uint8
