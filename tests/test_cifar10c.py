"""CIFAR-10-C: the official-layout reader, the regenerated corruptions and their cache.

The corruptions are checked against independent references where one is installed here (scipy,
scikit-image, PIL), against golden outputs of the OpenCV and ImageMagick routines the reference
generator calls (tests/fixtures/cifar10c-golden, rebuilt by its make_golden.py), and by the
severity ordering their published parameters give in SSIM to the clean image.
"""
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables import cifar10c as Z
from trainables import corruptions as C
from trainables.data import DataError
from trainables.iqa import score

GOLDEN = Path(__file__).parent / "fixtures" / "cifar10c-golden" / "golden.npz"
RANDOM = [k for k, v in C.CORRUPTIONS.items() if v.random]
DETERMINISTIC = [k for k, v in C.CORRUPTIONS.items() if not v.random]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as z:
        return {k: z[k] for k in z.files}


# ---------------------------------------------------------------- the official layout
def _write_official(folder: Path, names, n: int = 4, seed: int = 0):
    """A miniature CIFAR-10-C: <name>.npy uint8 (5n, 32, 32, 3) and labels.npy (5n,) uint8."""
    rng = np.random.default_rng(seed)
    arrays = {name: rng.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8) for name in names}
    base = rng.integers(0, 10, n).astype(np.uint8)
    for name, arr in arrays.items():
        np.save(folder / f"{name}.npy", arr)
    np.save(folder / "labels.npy", np.tile(base, 5))
    return arrays, base


def _one_line_error(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_reader_round_trips_values_and_labels(tmp_path):
    arrays, base = _write_official(tmp_path, ["gaussian_noise", "contrast"])
    got = Z.read_cifar10c(tmp_path, corruptions=["contrast", "gaussian_noise"], per_severity=4)
    assert got.source.kind == "official files" and got.source.corruptions == ("gaussian_noise", "contrast")
    assert got.source.location == str(tmp_path.resolve())
    assert got.labels.dtype == torch.int64 and got.labels.tolist() == base.tolist()
    for name, arr in arrays.items():
        assert sorted(got.images[name]) == [1, 2, 3, 4, 5]
        for s in C.SEVERITIES:
            x = got.images[name][s]
            assert x.dtype == torch.uint8 and x.shape == (4, 3, 32, 32) and x.is_contiguous()
            assert np.array_equal(_hwc(x), arr[(s - 1) * 4:s * 4])


def test_reader_infers_the_block_size_when_asked(tmp_path):
    _write_official(tmp_path, ["fog"], n=3)
    assert Z.read_cifar10c(tmp_path, ["fog"], per_severity=None).images["fog"][5].shape == (3, 3, 32, 32)


def test_reader_expects_the_published_size_by_default(tmp_path):
    _write_official(tmp_path, ["fog"])
    with pytest.raises(Z.CIFAR10CError) as e:
        Z.read_cifar10c(tmp_path, ["fog"])
    _one_line_error(e, "labels.npy", "(20,)", "(50000,)")


def test_reader_default_needs_all_fifteen_benchmark_files(tmp_path):
    _write_official(tmp_path, ["gaussian_noise", "contrast"])
    with pytest.raises(Z.CIFAR10CError) as e:
        Z.read_cifar10c(tmp_path, per_severity=4)
    _one_line_error(e, "shot_noise.npy", "missing", "uint8 (20, 32, 32, 3)")


def test_reader_refuses_a_missing_file_naming_it(tmp_path):
    _write_official(tmp_path, ["gaussian_noise"])
    with pytest.raises(Z.CIFAR10CError) as e:
        Z.read_cifar10c(tmp_path, ["gaussian_noise", "frost"], per_severity=4)
    _one_line_error(e, str(tmp_path / "frost.npy"), "missing", "expected uint8 (20, 32, 32, 3)")
    assert isinstance(e.value, DataError) and isinstance(e.value, ValueError)


@pytest.mark.parametrize("bad", [np.zeros((19, 32, 32, 3), np.uint8), np.zeros((20, 32, 32, 1), np.uint8),
                                 np.zeros((20, 3, 32, 32), np.uint8), np.zeros((20, 32, 32, 3), np.float32)],
                         ids=["19-images", "1-channel", "channels-first", "float32"])
def test_reader_refuses_a_misshaped_file_naming_it(tmp_path, bad):
    _write_official(tmp_path, ["gaussian_noise", "fog"])
    np.save(tmp_path / "fog.npy", bad)
    with pytest.raises(Z.CIFAR10CError) as e:
        Z.read_cifar10c(tmp_path, ["gaussian_noise", "fog"], per_severity=4)
    _one_line_error(e, str(tmp_path / "fog.npy"), str(bad.shape), "expected uint8 (20, 32, 32, 3)")


def test_reader_refuses_a_file_that_is_not_npy(tmp_path):
    _write_official(tmp_path, ["fog"])
    (tmp_path / "fog.npy").write_bytes(b"not a numpy file")
    with pytest.raises(Z.CIFAR10CError) as e:
        Z.read_cifar10c(tmp_path, ["fog"], per_severity=4)
    _one_line_error(e, "fog.npy", "not a readable .npy")


def test_reader_refuses_bad_labels(tmp_path):
    _write_official(tmp_path, ["fog"])
    labels = np.load(tmp_path / "labels.npy")
    np.save(tmp_path / "labels.npy", labels[:-1])
    with pytest.raises(Z.CIFAR10CError) as e:
        Z.read_cifar10c(tmp_path, ["fog"], per_severity=4)
    _one_line_error(e, "labels.npy", "(19,)")
    changed = labels.copy()
    changed[-1] = (changed[-1] + 1) % 10
    np.save(tmp_path / "labels.npy", changed)
    with pytest.raises(Z.CIFAR10CError) as e:
        Z.read_cifar10c(tmp_path, ["fog"], per_severity=4)
    _one_line_error(e, "severity 5", "repeated per severity")
    (tmp_path / "labels.npy").unlink()
    with pytest.raises(Z.CIFAR10CError) as e:
        Z.read_cifar10c(tmp_path, ["fog"], per_severity=4)
    _one_line_error(e, "labels.npy", "missing")


def test_reader_refuses_unknown_names_and_non_folders(tmp_path):
    with pytest.raises(Z.CIFAR10CError) as e:
        Z.read_cifar10c(tmp_path / "nope")
    _one_line_error(e, "nope", "not a folder")
    _write_official(tmp_path, ["fog"])
    with pytest.raises(Z.CIFAR10CError) as e:
        Z.read_cifar10c(tmp_path, ["fogg"], per_severity=4)
    _one_line_error(e, "fogg")


# ---------------------------------------------------------------- registry and published parameters
def test_registry_covers_the_reference_table():
    assert len(C.REFERENCE_ORDER) == 19 and len(C.BENCHMARK) == 15
    assert set(C.CORRUPTIONS) | set(C.NOT_IMPLEMENTED) == set(C.REFERENCE_ORDER)
    assert not set(C.CORRUPTIONS) & set(C.NOT_IMPLEMENTED)
    assert set(C.NOT_IMPLEMENTED) == {"frost"}
    assert C.SEVERITIES == (1, 2, 3, 4, 5)
    seen = {k for k, v in C.CORRUPTIONS.items() if v.seen}
    assert seen == {"gaussian_noise", "jpeg_compression", "gaussian_blur"}
    extras = {k for k, v in C.CORRUPTIONS.items() if not v.benchmark}
    assert extras == {"speckle_noise", "gaussian_blur", "spatter", "saturate"} == set(C.EXTRAS)
    assert all(len(v.params) == 5 for v in C.CORRUPTIONS.values())


def test_published_parameters_are_the_reference_values():
    # values typed from hendrycks/robustness ImageNet-C/create_c/make_cifar_c.py
    assert C.CORRUPTIONS["gaussian_noise"].params == (0.04, 0.06, 0.08, 0.09, 0.10)
    assert C.CORRUPTIONS["jpeg_compression"].params == (80, 65, 58, 50, 40)
    assert C.CORRUPTIONS["contrast"].params == (0.75, 0.5, 0.4, 0.3, 0.15)
    assert C.CORRUPTIONS["gaussian_blur"].params == (0.4, 0.6, 0.7, 0.8, 1)
    assert C.CORRUPTIONS["shot_noise"].params == (500, 250, 100, 75, 50)
    assert C.CORRUPTIONS["motion_blur"].params == ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))
    assert C.CORRUPTIONS["glass_blur"].params[3] == (0.25, 1, 2)
    assert C.CORRUPTIONS["snow"].params[4] == (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)
    assert C.CORRUPTIONS["elastic_transform"].params[1] == (0.05, 0.2, 0.07)  # x IMSIZE = 32
    # round-off: np.arange(1, 1.06, 0.01) ends at 1.06 and np.arange(1, 1.11, 0.01) at 1.11; the others
    # stop one step short of their stop value
    assert [len(C.zoom_factors(c)) for c in C.ZOOM_BLUR_C] == [7, 12, 16, 21, 26]
    assert np.allclose([C.zoom_factors(c)[-1] for c in C.ZOOM_BLUR_C], [1.06, 1.11, 1.15, 1.20, 1.25])


# ---------------------------------------------------------------- severity ordering in SSIM
MONOTONE = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "zoom_blur", "fog", "brightness",
            "contrast", "pixelate", "jpeg_compression", "speckle_noise", "gaussian_blur"]


@pytest.fixture(scope="module")
def mean_ssim(cifar_mini_images):
    """name -> mean SSIM to the clean image at severities 1..5, 32 fixture images, the same draws
    (generator seed 0) at every severity."""
    x = cifar_mini_images[:32]
    return {name: [float(score("ssim", C.corrupt(x, name, s, _gen(0)), x).mean()) for s in C.SEVERITIES]
            for name in C.CORRUPTIONS}


def test_every_corruption_is_measured(mean_ssim):
    partial = {"glass_blur", "motion_blur", "snow", "elastic_transform", "spatter", "saturate"}
    assert set(mean_ssim) == set(MONOTONE) | partial
    assert all(m[4] < 0.95 for m in mean_ssim.values())


@pytest.mark.parametrize("name", MONOTONE)
def test_higher_severity_gives_lower_mean_ssim(mean_ssim, name):
    m = mean_ssim[name]
    assert all(a > b for a, b in zip(m, m[1:])), m


def test_glass_blur_second_pass_lowers_ssim(mean_ssim):
    # (sigma, delta, passes) = (.05,1,1) (.25,1,1) (.4,1,1) (.25,1,2) (.4,1,2): SSIM is not monotone (the
    # larger sigma of 2 and 3 smooths the local copies, SSIM rises 1 -> 3); a second pass at equal sigma
    # lowers it
    m = mean_ssim["glass_blur"]
    assert m[3] < m[1] and m[4] < m[2], m


def test_motion_blur_orders_by_sigma_and_severity_3_equals_4(mean_ssim, cifar_mini_images):
    # (radius, sigma) = (6,1) (6,1.5) (6,2) (8,2) (9,2.5): ImageMagick's kernel is exp(-i^2/2 sigma^2) over
    # 2 ceil(radius) + 1 taps, so radius 8 instead of 6 at sigma 2 adds taps of weight < 1e-9: the same image
    m = mean_ssim["motion_blur"]
    assert m[0] > m[1] > m[2] > m[4], m
    x = cifar_mini_images[:8]
    assert torch.equal(C.corrupt(x, "motion_blur", 3, _gen(5)), C.corrupt(x, "motion_blur", 4, _gen(5)))


def test_snow_orders_severities_1_to_4(mean_ssim):
    # severity 5 (smaller zoom, more flakes) sits below 3 but on either side of 4 depending on the draws
    m = mean_ssim["snow"]
    assert m[0] > m[1] > m[2] > m[3] and m[4] < m[2], m


def test_elastic_transform_ssim_rises_with_severity(mean_ssim):
    # the published table shrinks the random affine's amplitude (2.56 -> 0.96 px) as alpha grows, and the
    # affine dominates on 32 x 32 images: SSIM to the clean image increases with severity
    m = mean_ssim["elastic_transform"]
    amplitudes = [32 * c[2] for c in C.ELASTIC_C]
    assert amplitudes == sorted(amplitudes, reverse=True)
    assert all(a < b for a, b in zip(m, m[1:])), m


def test_spatter_orders_within_water_and_within_mud(mean_ssim):
    # severities 1-3 are water drops, 4-5 mud: a different effect, so 3 -> 4 need not lower SSIM
    m = mean_ssim["spatter"]
    assert m[0] > m[1] > m[2] and m[3] > m[4], m


def test_saturate_orders_within_desaturation_and_within_saturation(mean_ssim):
    # (a, b) = (.3,0) (.1,0) (1.5,0) (2,.1) (2.5,.2): 1-2 remove saturation, 3-5 add it
    m = mean_ssim["saturate"]
    assert m[0] > m[1] and m[2] > m[3] > m[4], m


# ---------------------------------------------------------------- independent references
def _sk_save(x):
    return np.uint8(np.clip(x, 0, 1) * 255)


@pytest.mark.parametrize("severity", C.SEVERITIES)
def test_gaussian_blur_equals_skimage(cifar_mini_images, severity):
    from skimage.filters import gaussian
    x = cifar_mini_images[:4]
    sigma = C.GAUSSIAN_BLUR_C[severity - 1]
    ref = np.stack([_sk_save(gaussian(img / 255., sigma=sigma, channel_axis=-1)) for img in _hwc(x)])
    assert np.array_equal(_hwc(C.corrupt(x, "gaussian_blur", severity)), ref)


@pytest.mark.parametrize("name", ["brightness", "saturate"])
def test_hsv_corruptions_equal_skimage(cifar_mini_images, name):
    from skimage.color import hsv2rgb, rgb2hsv
    x = cifar_mini_images[:4]
    for s in C.SEVERITIES:
        c = C.CORRUPTIONS[name].params[s - 1]
        ref = []
        for img in _hwc(x):
            hsv = rgb2hsv(img / 255.)
            if name == "brightness":
                hsv[:, :, 2] = np.clip(hsv[:, :, 2] + c, 0, 1)
            else:
                hsv[:, :, 1] = np.clip(hsv[:, :, 1] * c[0] + c[1], 0, 1)
            ref.append(_sk_save(hsv2rgb(hsv)))
        assert np.array_equal(_hwc(C.corrupt(x, name, s)), np.stack(ref)), s


def test_contrast_equals_numpy(cifar_mini_images):
    x = cifar_mini_images[:16]
    for s, c in zip(C.SEVERITIES, C.CONTRAST_C):
        ref = []
        for img in _hwc(x) / 255.:
            means = np.mean(img, axis=(0, 1), keepdims=True)
            ref.append(_sk_save((img - means) * c + means))
        assert np.array_equal(_hwc(C.corrupt(x, "contrast", s)), np.stack(ref)), s


def test_zoom_blur_equals_scipy_zoom(cifar_mini_images):
    from scipy.ndimage import zoom

    def clipped(img, z):
        ch = int(np.ceil(32 / z))
        top = (32 - ch) // 2
        img = zoom(img[top:top + ch, top:top + ch], (z, z, 1), order=1)
        trim = (img.shape[0] - 32) // 2
        return img[trim:trim + 32, trim:trim + 32]

    x = cifar_mini_images[:3]
    for s in (1, 5):
        factors = np.arange(*C.ZOOM_BLUR_C[s - 1])
        ref = []
        for img in _hwc(x):
            f = (img / 255.).astype(np.float32)
            out = np.zeros_like(f)
            for z in factors:
                out += clipped(f, z)
            ref.append(_sk_save((f + out) / (len(factors) + 1)))
        assert np.array_equal(_hwc(C.corrupt(x, "zoom_blur", s)), np.stack(ref)), s


def test_pixelate_and_jpeg_equal_pil(cifar_mini_images):
    from PIL import Image
    x = cifar_mini_images[:8]
    for s in C.SEVERITIES:
        size = int(32 * C.PIXELATE_C[s - 1])
        ref = [np.array(Image.fromarray(img).resize((size, size), Image.BOX).resize((32, 32), Image.BOX))
               for img in _hwc(x)]
        assert np.array_equal(_hwc(C.corrupt(x, "pixelate", s)), np.stack(ref)), s
    for s in (1, 5):
        ref = []
        for img in _hwc(x):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, "JPEG", quality=C.JPEG_COMPRESSION_C[s - 1])
            ref.append(np.array(Image.open(buf)))
        assert np.array_equal(_hwc(C.corrupt(x, "jpeg_compression", s)), np.stack(ref)), s


def test_glass_shuffle_is_the_reference_loop_on_numpy_views(cifar_mini_images):
    # the reference's `x[h, w], x[h', w'] = x[h', w'], x[h, w]` on numpy row views copies, it does not swap
    x = cifar_mini_images[:2]
    offsets = C.glass_offsets(2, (0.4, 1, 2), _gen(3), "cpu")
    ours = x
    for it in range(2):
        ours = C._glass_shuffle(ours, offsets[it])
    for i, img in enumerate(_hwc(x)):
        ref = img.copy()
        for it in range(2):
            for h in range(31, 1, -1):
                for w in range(31, 1, -1):
                    dx, dy = offsets[it, i, h - 2, w - 2].tolist()
                    ref[h, w], ref[h + dy, w + dx] = ref[h + dy, w + dx], ref[h, w]
        assert np.array_equal(_hwc(ours[i:i + 1])[0], ref)


def test_elastic_interpolation_and_smoothing_equal_scipy():
    from scipy.ndimage import map_coordinates
    from skimage.filters import gaussian
    rng = np.random.default_rng(0)
    img = rng.random((32, 32, 3)).astype(np.float32)
    rows, cols = rng.uniform(-40, 72, (32, 32)), rng.uniform(-40, 72, (32, 32))
    ref = np.stack([map_coordinates(img[..., k], [rows.ravel(), cols.ravel()], order=1, mode="reflect")
                    .reshape(32, 32) for k in range(3)])
    ours = C._map_bilinear_reflect(torch.from_numpy(img).permute(2, 0, 1)[None], torch.from_numpy(rows)[None],
                                   torch.from_numpy(cols)[None])[0]
    assert np.array_equal(ours.numpy(), ref)
    u = rng.uniform(-1, 1, (32, 32))
    for sigma in (6.4, 1.92, 0.96):  # sigma 6.4 with truncate 3 reaches past the image: repeated reflections
        ref = gaussian(u, sigma, mode="reflect", truncate=3)
        ours = C._sk_gaussian(torch.from_numpy(u)[None], sigma, "reflect", 3.0)[0]
        assert np.array_equal(ours.numpy(), ref)


@pytest.mark.parametrize("name,sigma_of", [("gaussian_noise", lambda c, x: c),
                                           ("speckle_noise", lambda c, x: c * x),
                                           ("shot_noise", lambda c, x: np.sqrt(x / c))])
def test_noise_has_the_published_scale(name, sigma_of):
    # flat mid-grey images: no clipping, so the residual's std is the noise std (n = 3 x 64 x 64 x 32 values)
    x = torch.full((64, 3, 32, 32), 128, dtype=torch.uint8)
    for s in (1, 5):
        c = C.CORRUPTIONS[name].params[s - 1]
        y = C.corrupt(x, name, s, _gen(s)).double() / 255.
        resid = y - (x.double() / 255.)
        expected = sigma_of(c, 128 / 255.)
        assert abs(float(resid.std()) - expected) < 0.05 * expected, (s, float(resid.std()), expected)


def test_impulse_noise_flips_the_published_share():
    x = torch.full((64, 3, 32, 32), 128, dtype=torch.uint8)
    for s, c in zip(C.SEVERITIES, C.IMPULSE_NOISE_C):
        y = C.corrupt(x, "impulse_noise", s, _gen(s))
        assert set(torch.unique(y).tolist()) <= {0, 128, 255}
        share = float((y != 128).double().mean())
        assert abs(share - c) < 0.1 * c, (s, share)


# ---------------------------------------------------------------- OpenCV / ImageMagick golden outputs
def test_defocus_kernel_and_filter_equal_opencv(golden):
    x = torch.from_numpy(golden["images"]).permute(0, 3, 1, 2).contiguous()
    for k, c in enumerate(C.DEFOCUS_BLUR_C):
        assert np.array_equal(C.defocus_kernel(*c), golden["defocus_kernels"][k]), c
        assert np.array_equal(_hwc(C.defocus_blur(x, c)), golden["defocus"][k]), c


def test_motion_blur_equals_imagemagick(golden):
    x = torch.from_numpy(golden["images"]).permute(0, 3, 1, 2).contiguous()
    angles = torch.from_numpy(golden["motion_angles"])
    for k, (radius, sigma) in enumerate(C.MOTION_BLUR_C):
        assert np.array_equal(_hwc(C.magick_motion_blur(x, radius, sigma, angles)), golden["motion"][k])
    layers = torch.from_numpy(golden["snow_layers"])[:, None]
    for k, (radius, sigma, angle) in enumerate(((8, 3, -130.0), (14, 12, -47.5))):
        angles = torch.full((layers.shape[0],), angle, dtype=torch.float64)
        got = C.magick_motion_blur(layers, radius, sigma, angles)
        assert np.array_equal(got[:, 0].numpy(), golden["snow_motion"][k])


def test_elastic_affine_warp_equals_opencv(golden):
    x = torch.from_numpy((golden["images"] / 255.).astype(np.float32)).permute(0, 3, 1, 2)
    pts1 = np.float32([[26, 26], [26, 6], [6, 6]]).astype(np.float64)
    for jitter, mat in zip(golden["affine_jitter"], golden["affine_matrices"]):
        ours = C._affine_from_points(pts1, (pts1 + jitter).astype(np.float32).astype(np.float64))
        assert np.allclose(ours, mat, rtol=0, atol=1e-12)
    warped = C._cv_warp_affine_reflect101(x, torch.from_numpy(golden["affine_matrices"]))
    assert np.array_equal(_hwc(warped), golden["warp"])


def test_snow_luma_equals_opencv(golden):
    x = torch.from_numpy((golden["images"] / 255.).astype(np.float32)).permute(0, 3, 1, 2)
    assert np.array_equal(C._cv_rgb2gray(x)[:, 0].numpy(), golden["gray"])


def test_spatter_chain_equals_opencv(golden):
    liquid = torch.from_numpy(golden["liquid"])
    canny = C._cv_canny(liquid)
    assert np.array_equal(canny.numpy().astype(np.uint8) * 255, golden["canny"])
    dist = C._cv_distance_l2_mask5(torch.from_numpy(golden["canny"] == 255))
    assert np.array_equal(dist.numpy(), golden["dist"])
    assert np.array_equal(C._cv_blur3_float(torch.from_numpy(golden["dist"])).numpy(), golden["blur_float"])
    level = torch.from_numpy(golden["blur_float"].astype(np.uint8))
    assert np.array_equal(C._cv_equalize_hist(level).numpy(), golden["equalized"])
    emboss = C._cv_filter2d_uint8(torch.from_numpy(golden["equalized"]), C.SPATTER_EMBOSS)
    assert np.array_equal(emboss.numpy(), golden["emboss"])
    assert np.array_equal(C._cv_blur3_uint8(torch.from_numpy(golden["emboss"])).numpy(), golden["blur_uint8"])


# ---------------------------------------------------------------- determinism and refusals
@pytest.mark.parametrize("name", RANDOM)
def test_random_corruptions_repeat_with_the_seed_and_change_with_it(cifar_mini_images, name):
    x = cifar_mini_images[:4]
    a = C.corrupt(x, name, 3, _gen(7))
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, C.corrupt(x, name, 3, _gen(7)))
    assert not torch.equal(a, C.corrupt(x, name, 3, _gen(8)))


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_corruptions_ignore_the_generator(cifar_mini_images, name):
    x = cifar_mini_images[:4]
    a = C.corrupt(x, name, 4, _gen(1))
    assert torch.equal(a, C.corrupt(x, name, 4, _gen(2))) and not torch.equal(a, x)
    assert torch.equal(x, cifar_mini_images[:4])  # input untouched


def test_corrupt_refuses_bad_requests(cifar_mini_images):
    x = cifar_mini_images[:2]
    with pytest.raises(C.CorruptionError, match="frost.*frost photographs"):
        C.corrupt(x, "frost", 1, _gen())
    with pytest.raises(C.CorruptionError, match="severity=6"):
        C.corrupt(x, "fog", 6, _gen())
    with pytest.raises(C.CorruptionError, match="generator=None"):
        C.corrupt(x, "fog", 1)
    with pytest.raises(C.CorruptionError, match="shape"):
        C.corrupt(torch.zeros(2, 3, 28, 28, dtype=torch.uint8), "contrast", 1)
    assert C.corrupt(x[:0], "fog", 1, _gen()).shape == (0, 3, 32, 32)


# ---------------------------------------------------------------- the regenerated set and its cache
def test_build_labels_its_source_and_shapes(cifar_mini_images, tmp_path):
    x, y = cifar_mini_images[:6], torch.arange(6) % 10
    got = Z.build_cifar10c(x, y, ["contrast", "fog"], seed=3, cache_dir=tmp_path)
    assert got.source.kind == "regenerated" and got.source.corruptions == ("fog", "contrast")
    assert got.source.seed == 3 and got.source.implementation == Z.IMPLEMENTATION_VERSION
    assert "regenerated" in got.source.describe() and "lacks" in got.source.describe()
    assert torch.equal(got.labels, y)
    for name in ("fog", "contrast"):
        assert [tuple(got.images[name][s].shape) for s in C.SEVERITIES] == [(6, 3, 32, 32)] * 5
    g = torch.Generator().manual_seed(Z.severity_seed(3, "fog", 2))
    assert torch.equal(got.images["fog"][2], C.fog(x, C.FOG_C[1], g))


def test_build_cache_returns_the_same_bytes_without_recomputing(cifar_mini_images, tmp_path, monkeypatch):
    x, y = cifar_mini_images[:5], torch.zeros(5, dtype=torch.int64)
    first = Z.build_cifar10c(x, y, ["glass_blur", "pixelate"], cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2 and not list(tmp_path.glob("*.tmp"))

    def boom(*a):
        raise AssertionError("recomputed")

    monkeypatch.setattr(Z, "_regenerate", boom)
    again = Z.build_cifar10c(x, y, ["glass_blur", "pixelate"], cache_dir=tmp_path)
    for name in first.images:
        for s in C.SEVERITIES:
            assert torch.equal(first.images[name][s], again.images[name][s])


@pytest.mark.parametrize("tamper", ["pixels", "key", "truncated"])
def test_build_recomputes_a_tampered_cache_file(cifar_mini_images, tmp_path, monkeypatch, tamper):
    x, y = cifar_mini_images[:5], torch.zeros(5, dtype=torch.int64)
    first = Z.build_cifar10c(x, y, ["fog"], cache_dir=tmp_path)
    path, = tmp_path.glob("fog-*.npz")
    with np.load(path) as z:
        key, digest, arr = str(z["key"]), str(z["sha256"]), z["images"].copy()
    if tamper == "pixels":  # same key and stored hash, one pixel changed
        arr[2, 1, 0, 5, 5] ^= 1
        np.savez(path, key=np.array(key), sha256=np.array(digest), images=arr)
    elif tamper == "key":
        np.savez(path, key=np.array("0" * 64), sha256=np.array(digest), images=arr)
    else:
        path.write_bytes(path.read_bytes()[:1000])
    calls = []
    real = Z._regenerate
    monkeypatch.setattr(Z, "_regenerate", lambda *a: calls.append(a[1]) or real(*a))
    again = Z.build_cifar10c(x, y, ["fog"], cache_dir=tmp_path)
    assert calls == ["fog"]
    assert all(torch.equal(first.images["fog"][s], again.images["fog"][s]) for s in C.SEVERITIES)
    with np.load(path) as z:  # rewritten whole
        assert str(z["key"]) == key and np.array_equal(z["images"], np.stack([first.images["fog"][s] for s in
                                                                             C.SEVERITIES]))


def test_build_is_independent_of_the_other_corruptions_and_keyed_by_seed(cifar_mini_images, tmp_path):
    x, y = cifar_mini_images[:4], torch.zeros(4, dtype=torch.int64)
    alone = Z.build_cifar10c(x, y, ["snow"], seed=1, cache_dir=tmp_path / "a")
    mixed = Z.build_cifar10c(x, y, ["contrast", "snow"], seed=1, cache_dir=tmp_path / "b")
    other = Z.build_cifar10c(x, y, ["snow"], seed=2, cache_dir=tmp_path / "a")
    assert all(torch.equal(alone.images["snow"][s], mixed.images["snow"][s]) for s in C.SEVERITIES)
    assert not torch.equal(alone.images["snow"][5], other.images["snow"][5])
    assert len(list((tmp_path / "a").glob("snow-*.npz"))) == 2
    assert Z.cache_key(Z.images_checksum(x), "snow", 1) != Z.cache_key(Z.images_checksum(x[:3]), "snow", 1)


def test_build_uses_the_default_cache_folder(cifar_mini_images, tmp_path, monkeypatch):
    monkeypatch.setenv("IQA_LS_CACHE", str(tmp_path))
    got = Z.build_cifar10c(cifar_mini_images[:2], torch.zeros(2, dtype=torch.int64), ["contrast"])
    assert got.source.location == str((tmp_path / "cifar10c").resolve())
    assert len(list((tmp_path / "cifar10c").glob("contrast-*.npz"))) == 1


def test_build_refuses_bad_requests_before_work(cifar_mini_images, tmp_path):
    x, y = cifar_mini_images[:2], torch.zeros(2, dtype=torch.int64)
    with pytest.raises(Z.CIFAR10CError) as e:
        Z.build_cifar10c(x, y, ["fog", "frost"], cache_dir=tmp_path)
    _one_line_error(e, "frost", "not implemented", "frost photographs")
    for kwargs, needle in [({"corruptions": ["fogg"]}, "fogg"), ({"corruptions": "fog"}, "corruptions='fog'"),
                           ({"corruptions": ["fog", "fog"]}, "repeats"), ({"seed": -1}, "seed=-1"),
                           ({"seed": True}, "seed=True")]:
        with pytest.raises(Z.CIFAR10CError) as e:
            Z.build_cifar10c(x, y, cache_dir=tmp_path, **kwargs)
        _one_line_error(e, needle)
    with pytest.raises(Z.CIFAR10CError, match="images"):
        Z.build_cifar10c(x.float(), y, cache_dir=tmp_path)
    with pytest.raises(Z.CIFAR10CError, match="labels"):
        Z.build_cifar10c(x, y[:1], cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())
