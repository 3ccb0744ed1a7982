"""IQA scores against independent references (scikit-image SSIM and PSNR, a scipy GMS)."""
import numpy as np
import pytest
import torch

from trainables import iqa
from trainables.distortions import DISTORTIONS, distort
from trainables.iqa import METRICS, IQAError, score

KIND_LEVELS = [(k, lv) for k, spec in DISTORTIONS.items() for lv in spec.levels]
N_REF = 100  # fixture images compared image by image against the references


@pytest.fixture(scope="module")
def distorted_sets(cifar_mini_images):
    """Every kind and level of the 400 fixture images (noise seeded per level)."""
    return {(k, lv): distort(cifar_mini_images, k, lv, generator=torch.Generator().manual_seed(lv))
            for k, lv in KIND_LEVELS}


def _hwc01(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy().astype(np.float64) / 255.0


def _sk_ssim(a: np.ndarray, b: np.ndarray, channel_axis=None) -> float:
    from skimage.metrics import structural_similarity

    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=1.0, channel_axis=channel_axis)


def _luma01(x: np.ndarray) -> np.ndarray:
    return x @ np.array([0.299, 0.587, 0.114])


def test_ssim_constants_are_wang_2004():
    assert (iqa.SSIM_WINDOW, iqa.SSIM_SIGMA, iqa.SSIM_K1, iqa.SSIM_K2) == (11, 1.5, 0.01, 0.03)
    assert iqa.GMS_C * 255 ** 2 == pytest.approx(170.0)


@pytest.mark.parametrize("metric", sorted(METRICS))
@pytest.mark.parametrize("kind", sorted(DISTORTIONS))
def test_score_is_float32_per_image_on_input_device_within_bounds(cifar_mini_images, distorted_sets,
                                                                  metric, kind):
    s = score(metric, distorted_sets[(kind, 3)], cifar_mini_images)
    lo, hi = METRICS[metric].bounds
    assert s.dtype == torch.float32 and s.shape == (400,) and s.device == cifar_mini_images.device
    assert torch.isfinite(s).all() and (s >= lo).all() and (s < hi).all()


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_pristine_images_score_exactly_one(cifar_mini_images, metric):
    assert torch.equal(score(metric, cifar_mini_images, cifar_mini_images), torch.ones(400))
    # the formula alone (without the all-equal shortcut) gives 1 as well
    assert torch.equal(METRICS[metric].fn(cifar_mini_images, cifar_mini_images), torch.ones(400))


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_pristine_and_distorted_mixed_in_one_batch(cifar_mini_images, distorted_sets, metric):
    x = cifar_mini_images[:20]
    y = distorted_sets[("noise", 1)][:20].clone()
    y[::2] = x[::2]
    s = score(metric, y, x)
    assert torch.equal(s[::2], torch.ones(10)) and (s[1::2] < 1).all()
    assert torch.equal(s[1::2], score(metric, y[1::2], x[1::2]))


@pytest.mark.parametrize("kind,level", KIND_LEVELS)
def test_ssim_matches_skimage_per_rgb_channel(cifar_mini_images, distorted_sets, kind, level):
    x, y = cifar_mini_images[:N_REF], distorted_sets[(kind, level)][:N_REF]
    ours = score("ssim", y, x).double().numpy()
    xr, yr = _hwc01(x), _hwc01(y)
    ref = np.array([_sk_ssim(yr[i], xr[i], channel_axis=2) for i in range(N_REF)])
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind,level", KIND_LEVELS)
def test_ssim_y_matches_skimage_on_bt601_luma(cifar_mini_images, distorted_sets, kind, level):
    x, y = cifar_mini_images[:N_REF], distorted_sets[(kind, level)][:N_REF]
    ours = score("ssim_y", y, x).double().numpy()
    xr, yr = _luma01(_hwc01(x)), _luma01(_hwc01(y))
    ref = np.array([_sk_ssim(yr[i], xr[i]) for i in range(N_REF)])
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", sorted(DISTORTIONS))
def test_gmsm_matches_scipy_prewitt_reference(cifar_mini_images, distorted_sets, kind):
    from scipy.signal import correlate2d

    x, y = cifar_mini_images[:N_REF], distorted_sets[(kind, 2)][:N_REF]
    ours = score("gmsm", y, x).double().numpy()
    kx = np.array([[1, 0, -1]] * 3) / 3.0

    def grad(img):
        return np.hypot(correlate2d(img, kx, mode="valid"), correlate2d(img, kx.T, mode="valid"))

    c = 170.0 / 255 ** 2
    xr, yr = _luma01(_hwc01(x)), _luma01(_hwc01(y))
    ref = []
    for i in range(N_REF):
        g1, g2 = grad(yr[i]), grad(xr[i])
        ref.append(((2 * g1 * g2 + c) / (g1 ** 2 + g2 ** 2 + c)).mean())
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", sorted(DISTORTIONS))
def test_psnr_score_matches_skimage_psnr_over_cap(cifar_mini_images, distorted_sets, kind):
    from skimage.metrics import peak_signal_noise_ratio

    x, y = cifar_mini_images[:N_REF], distorted_sets[(kind, 1)][:N_REF]
    ours = score("psnr", y, x).double().numpy()
    ref = [min(peak_signal_noise_ratio(x[i].numpy(), y[i].numpy(), data_range=255), iqa.PSNR_CAP_DB)
           / iqa.PSNR_CAP_DB for i in range(N_REF)]
    np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)


def test_psnr_caps_tiny_errors_at_one():
    x = torch.full((2, 3, 32, 32), 100, dtype=torch.uint8)
    y = x.clone()
    y[0, 0, 0, 0] = 101  # one grey level in one pixel: PSNR ~ 83 dB > cap
    y[1] += 1  # one grey level everywhere: 48.13 dB
    s = score("psnr", y, x)
    assert s[0] == 1.0 and s[1].item() == pytest.approx(20 * np.log10(255) / 50, abs=1e-6)


@pytest.mark.parametrize("metric", sorted(METRICS))
@pytest.mark.parametrize("kind", sorted(DISTORTIONS))
def test_scores_fall_as_level_rises(cifar_mini_images, distorted_sets, metric, kind):
    s = torch.stack([score(metric, distorted_sets[(kind, lv)], cifar_mini_images) for lv in (1, 2, 3)])
    means = s.mean(1)
    assert means[0] > means[1] > means[2]
    per_image = ((s[0] > s[1]) & (s[1] > s[2])).float().mean()
    assert per_image > 0.98  # measured: 0.995-1.0 on the 400 fixture images


def test_scores_do_not_depend_on_chunking(cifar_mini_images, distorted_sets, monkeypatch):
    y = distorted_sets[("jpeg", 2)][:50]
    x = cifar_mini_images[:50]
    whole = {m: score(m, y, x) for m in METRICS}
    monkeypatch.setattr(iqa, "CHUNK", {"cpu": 7, "cuda": 7})
    for m, s in whole.items():
        assert torch.equal(score(m, y, x), s)


def test_empty_batch_gives_empty_scores():
    x = torch.zeros(0, 3, 32, 32, dtype=torch.uint8)
    s = score("ssim", x, x)
    assert s.shape == (0,) and s.dtype == torch.float32


def _raises_one_line(call, *named):
    with pytest.raises(IQAError) as info:
        call()
    msg = str(info.value)
    assert "\n" not in msg and "allowed" in msg
    for word in named:
        assert word in msg


def test_bad_requests_raise_naming_the_value(cifar_mini_images):
    x = cifar_mini_images[:4]
    assert isinstance(IQAError("x"), ValueError)
    _raises_one_line(lambda: score("vif", x, x), "'vif'", "ssim")
    _raises_one_line(lambda: score("ssim", x, x[:3]), "(4, 3, 32, 32)", "(3, 3, 32, 32)")
    _raises_one_line(lambda: score("ssim", x.float(), x), "float32", "uint8")
    _raises_one_line(lambda: score("psnr", x, x.numpy()), "ndarray")
    _raises_one_line(lambda: score("ssim", x[:, :1], x[:, :1]), "(4, 1, 32, 32)")
    _raises_one_line(lambda: score("ssim", x[..., :10, :10], x[..., :10, :10]), "(4, 3, 10, 10)", "11")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_scores_match_cpu(cifar_mini_images, distorted_sets):
    x = cifar_mini_images
    for (kind, level), y in distorted_sets.items():
        for m in METRICS:
            s = score(m, y.cuda(), x.cuda())
            assert s.device.type == "cuda" and s.dtype == torch.float32
            torch.testing.assert_close(s.cpu(), score(m, y, x), atol=1e-5, rtol=0)
    assert torch.equal(score("ssim", x.cuda(), x.cuda()).cpu(), torch.ones(400))
