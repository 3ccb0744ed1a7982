"""trainables.data: every source kind gives the same uint8 tensors; hashing, caching, subsets, errors.

Runs offline on the committed PNG fixture (tests/fixtures/cifar10-mini: 40/20 real CIFAR-10 images
per class). Tests marked full_data use the full JPEG copy in ../shared/data/cifar10-jpeg and skip
without it. Every cache dir is a tmp_path.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torchvision
from torchvision.io import ImageReadMode, decode_png, encode_png

from trainables import data

FIXTURE = Path(__file__).parent / "fixtures" / "cifar10-mini"
FULL = Path(__file__).parents[2] / "shared" / "data" / "cifar10-jpeg"
COUNTS = {"train": 400, "test": 200}  # 40 / 20 per class
FULL_SHA256 = {  # from ../shared/data/cifar10-jpeg/README.md
    "train": "b8b06195ce06fca9a6528216bb027ee63681a08cf93d2ade61bc526c41068101",
    "test": "bffa9114599cfc799b7b7faadba5683696c18e2f74b3b49944ebc9096b2ee89d",
}
# The test helpers decode with torchvision.io (deprecated in 0.29 in favour of TorchCodec).
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


def full_data(test):
    """Marks a test as needing the full copy and skips it where that copy is absent."""
    skip = pytest.mark.skipif(not FULL.is_dir(), reason=f"{FULL} is absent")
    return pytest.mark.full_data(skip(test))


@pytest.fixture(autouse=True)
def fresh_memo():
    data.clear_memo()
    yield
    data.clear_memo()


def sha256_of(*files: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return "sha256:" + h.hexdigest()


def reference_pixels(parquet: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixture decoded image by image with decode_png: independent of the loader's batching."""
    t = pq.read_table(parquet)
    imgs = [decode_png(torch.frombuffer(bytearray(r["bytes"]), dtype=torch.uint8), ImageReadMode.RGB)
            for r in t.column("img").to_pylist()]
    return torch.stack(imgs), torch.tensor(t.column("label").to_pylist(), dtype=torch.int64)


def write_batches(folder: Path) -> Path:
    """A cifar-10-batches-py folder in the real format (python pickles, bytes keys) from the fixture."""
    folder.mkdir(parents=True)
    names = list(data.CIFAR10_CLASSES)
    for split, files in data.PICKLE_FILES.items():
        x, y = reference_pixels(FIXTURE / f"{split}.parquet")
        for i, (xs, ys) in enumerate(zip(x.chunk(len(files)), y.chunk(len(files)))):
            d = {b"batch_label": f"batch {i}".encode(), b"labels": ys.tolist(),
                 b"data": xs.reshape(len(xs), 3072).numpy(), b"filenames": [b"x.png"] * len(xs)}
            (folder / files[i]).write_bytes(pickle.dumps(d, protocol=2))
    meta = {b"label_names": [n.encode() for n in names], b"num_vis": 3072, b"num_cases_per_batch": 80}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def write_parquet(path: Path, images: list[bytes], labels: list[int], metadata=None) -> Path:
    schema = pa.schema([("img", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("label", pa.int64())], metadata=metadata)
    rows = [{"bytes": b, "path": f"{i}.img"} for i, b in enumerate(images)]
    pq.write_table(pa.table({"img": rows, "label": labels}, schema=schema), path)
    return path


def assert_split(s: data.Split, n: int) -> None:
    assert s.images.dtype == torch.uint8 and s.images.shape == (n, 3, 32, 32)
    assert s.images.is_contiguous() and s.images.device.type == "cpu"
    assert s.labels.dtype == torch.int64 and s.labels.shape == (n,)
    assert s.labels.bincount(minlength=10).tolist() == [n // 10] * 10
    assert s.class_names == data.CIFAR10_CLASSES
    assert s.checksum.startswith("sha256:") and len(s.checksum) == 7 + 64


# ------------------------------------------------------------------ source kinds
@pytest.mark.parametrize("split", data.SPLITS)
def test_parquet_folder_gives_uint8_images_and_int64_labels(tmp_path, split):
    s = data.load_split(str(FIXTURE), split, tmp_path)
    assert_split(s, COUNTS[split])
    assert s.source == str(FIXTURE.resolve())
    assert s.checksum == sha256_of(FIXTURE / f"{split}.parquet")
    x, y = reference_pixels(FIXTURE / f"{split}.parquet")
    assert torch.equal(s.images, x) and torch.equal(s.labels, y)  # file order kept


@pytest.mark.parametrize("given", ["train.parquet", "test.parquet"])
def test_single_parquet_file_finds_the_other_split(tmp_path, given):
    for split in data.SPLITS:
        s = data.load_split(str(FIXTURE / given), split, tmp_path)
        assert_split(s, COUNTS[split])
        assert s.checksum == sha256_of(FIXTURE / f"{split}.parquet")


def test_png_fixture_matches_pil_decode(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    s = data.load_split(str(FIXTURE), "test", tmp_path)
    rows = pq.read_table(FIXTURE / "test.parquet").column("img").to_pylist()
    ref = np.stack([np.asarray(Image.open(io.BytesIO(r["bytes"])).convert("RGB")) for r in rows])
    assert torch.equal(s.images, torch.from_numpy(ref).permute(0, 3, 1, 2))


def test_jpeg_parquet_uses_batched_decode_and_matches_pil(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    x, y = reference_pixels(FIXTURE / "test.parquet")
    blobs = []
    for img in x.permute(0, 2, 3, 1).numpy():
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=75)
        blobs.append(buf.getvalue())
    for split in data.SPLITS:  # a folder needs both files
        write_parquet(tmp_path / f"{split}.parquet", blobs, y.tolist())
    s = data.load_split(str(tmp_path), "test", tmp_path / "cache")
    assert_split(s, 200)
    ref = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
    diff = (s.images.int() - torch.from_numpy(ref).permute(0, 3, 1, 2).int()).abs()
    assert diff.max() <= 1  # same libjpeg family; IDCT rounding may differ by one level


@pytest.mark.parametrize("nested", [False, True])
def test_pickle_folder_gives_same_pixels_as_parquet(tmp_path, nested):
    batches = write_batches(tmp_path / "src" / "cifar-10-batches-py")
    spec = batches.parent if nested else batches
    assert data.resolve_source(str(spec)) == str(batches.resolve())
    for split in data.SPLITS:
        p = data.load_split(str(spec), split, tmp_path / "cache")
        q = data.load_split(str(FIXTURE), split, tmp_path / "cache")
        assert_split(p, COUNTS[split])
        assert torch.equal(p.images, q.images) and torch.equal(p.labels, q.labels)
        assert p.checksum == sha256_of(*(batches / f for f in data.PICKLE_FILES[split]))


class RecordingLock:
    """Stands in for filelock.FileLock and records whether it is held."""
    held: list = []

    def __init__(self, path, *a, **k):
        self.path = path

    def __enter__(self):
        RecordingLock.held.append(self.path)

    def __exit__(self, *exc):
        RecordingLock.held.remove(self.path)


def test_cifar10_spec_downloads_once_under_the_lock(tmp_path, monkeypatch):
    import filelock

    calls = []

    class FakeCIFAR10:  # "downloads" by writing the real pickle format from the fixture
        def __init__(self, root, train, download):
            assert download and RecordingLock.held, "download outside the file lock"
            calls.append(train)
            folder = Path(root) / "cifar-10-batches-py"
            if not folder.exists():
                write_batches(folder)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    monkeypatch.setattr(filelock, "FileLock", RecordingLock)
    train = data.load_split("cifar10", "train", tmp_path)
    data.clear_memo()
    test = data.load_split("cifar10", "test", tmp_path)
    assert_split(train, 400) and assert_split(test, 200)
    assert train.source == "cifar10" and calls == [True, False]  # second load: files already there
    assert (tmp_path / "torchvision" / "cifar-10-batches-py" / "test_batch").is_file()
    assert not RecordingLock.held


def test_cifar10_offline_error_says_what_to_pass(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure\nin name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(data.DataError, match=r"cannot download CIFAR-10 \(.*name resolution.*\); pass --data") as e:
        data.load_split("cifar10", "train", tmp_path)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ hashing, cache, memo
def test_checksum_changes_when_the_file_changes(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(FIXTURE, src)
    before = data.load_split(str(src), "test", tmp_path / "cache")
    t = pq.read_table(src / "test.parquet")
    pq.write_table(t.slice(1), src / "test.parquet")  # drop the first image
    after = data.load_split(str(src), "test", tmp_path / "cache")
    assert after.checksum != before.checksum and after.checksum == sha256_of(src / "test.parquet")
    assert len(after.labels) == 199 and torch.equal(after.images, before.images[1:])


def test_decoded_cache_is_written_atomically(tmp_path, monkeypatch):
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(data.os, "replace", lambda a, b: (replaced.append((Path(a), Path(b))), real_replace(a, b)))
    s = data.load_split(str(FIXTURE), "train", tmp_path)
    final = tmp_path / "decoded" / f"{s.checksum.removeprefix('sha256:')}-train.npz"
    [(tmp, dst)] = replaced
    assert dst == final and tmp.parent == final.parent and tmp != final
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name]  # no temp file left


def test_failed_cache_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def disk_full(fh, **arrays):
        fh.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(data.np, "savez", disk_full)
    with pytest.warns(UserWarning, match="could not write the decoded cache"):
        s = data.load_split(str(FIXTURE), "test", tmp_path)
    assert_split(s, 200)
    assert list((tmp_path / "decoded").iterdir()) == []


@pytest.mark.parametrize("kind", ["parquet", "pickle"])
def test_second_process_reads_the_cache_without_decoding(tmp_path, monkeypatch, kind):
    spec = str(FIXTURE) if kind == "parquet" else str(write_batches(tmp_path / "cifar-10-batches-py"))
    first = data.load_split(spec, "train", tmp_path / "cache")
    data.clear_memo()  # what a fresh process sees

    def no_decode(*a, **k):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(data, "_decode_parquet", no_decode)
    monkeypatch.setattr(data, "_decode_pickles", no_decode)
    second = data.load_split(spec, "train", tmp_path / "cache")
    assert second is not first
    assert torch.equal(second.images, first.images) and torch.equal(second.labels, first.labels)


def test_same_split_twice_in_a_process_is_the_same_tensors(tmp_path, monkeypatch):
    first = data.load_split(str(FIXTURE), "test", tmp_path)
    monkeypatch.setattr(data, "_read_cache", lambda p: pytest.fail("re-read the cache"))
    again = data.load_split(str(FIXTURE) + "/", "test", tmp_path)  # same resolved source
    assert again is first and again.images is first.images


@pytest.mark.parametrize("garbage", [b"", b"not a zip at all", b"PK\x03\x04truncated"])
def test_corrupt_cache_file_is_ignored_and_rewritten(tmp_path, garbage):
    s = data.load_split(str(FIXTURE), "test", tmp_path)
    cache_file = tmp_path / "decoded" / f"{s.checksum.removeprefix('sha256:')}-test.npz"
    cache_file.write_bytes(garbage)
    data.clear_memo()
    again = data.load_split(str(FIXTURE), "test", tmp_path)
    assert torch.equal(again.images, s.images)
    with np.load(cache_file) as z:
        assert np.array_equal(z["images"], s.images.numpy())


# ------------------------------------------------------------------ stratified subsets
def test_stratified_subset_keeps_class_counts():
    labels = reference_pixels(FIXTURE / "train.parquet")[1]
    idx = data.stratified_subset(labels, 100, seed=0)
    assert idx.dtype == torch.int64 and torch.equal(idx, idx.sort().values) and len(idx.unique()) == 100
    assert labels[idx].bincount().tolist() == [10] * 10


def test_stratified_subset_gives_leftovers_to_largest_fractions():
    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 2)  # n=5: exact quotas 2.5, 1.5, 1.0
    idx = data.stratified_subset(labels, 5, seed=3)
    assert labels[idx].bincount().tolist() == [3, 1, 1]  # tie 0.5/0.5 goes to the lower class
    assert torch.equal(data.stratified_subset(labels, 10, seed=3), torch.arange(10))


def test_stratified_subset_is_deterministic_per_seed_and_differs_across_seeds():
    labels = reference_pixels(FIXTURE / "test.parquet")[1]
    a = data.stratified_subset(labels, 50, seed=1)
    assert torch.equal(a, data.stratified_subset(labels, 50, seed=1))
    assert not torch.equal(a, data.stratified_subset(labels, 50, seed=2))


@pytest.mark.parametrize("n", [0, -3, 201])
def test_stratified_subset_rejects_bad_n(n):
    labels = torch.arange(200) % 10
    with pytest.raises(data.DataError, match=rf"n={n}\b.*1\.\.200"):
        data.stratified_subset(labels, n, seed=0)


# ------------------------------------------------------------------ bad inputs
def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(data.DataError, match="nowhere.*does not exist.*allowed"):
        data.load_split(str(missing), "train", tmp_path)


def test_folder_without_data_names_it(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DataError, match="empty.*no CIFAR-10 data"):
        data.resolve_source(str(tmp_path / "empty"))


@pytest.mark.parametrize("as_folder", [False, True])
def test_truncated_parquet_is_a_data_error(tmp_path, as_folder):
    for split in data.SPLITS:
        shutil.copy(FIXTURE / f"{split}.parquet", tmp_path / f"{split}.parquet")
    blob = (FIXTURE / "train.parquet").read_bytes()
    (tmp_path / "train.parquet").write_bytes(blob[: len(blob) // 2])
    spec = tmp_path if as_folder else tmp_path / "train.parquet"
    with pytest.raises(data.DataError, match="train.parquet.*not a readable parquet") as e:
        data.load_split(str(spec), "test", tmp_path / "cache")
    assert "\n" not in str(e.value)


def test_truncated_parquet_found_only_at_decode_is_a_data_error(tmp_path, monkeypatch):
    # a file that passes the cheap footer check yet fails to read (e.g. truncated after validation)
    monkeypatch.setattr(data, "_check_parquet", lambda p: None)
    blob = (FIXTURE / "test.parquet").read_bytes()
    (tmp_path / "train.parquet").write_bytes(blob[: len(blob) // 2])
    shutil.copy(FIXTURE / "test.parquet", tmp_path / "test.parquet")
    with pytest.raises(data.DataError, match="train.parquet"):
        data.load_split(str(tmp_path), "train", tmp_path / "cache")


def test_bad_split_names_it(tmp_path):
    with pytest.raises(data.DataError, match=r"split='val'.*\['train', 'test'\]"):
        data.load_split(str(FIXTURE), "val", tmp_path)


def test_single_file_without_sibling_or_split_name(tmp_path):
    shutil.copy(FIXTURE / "train.parquet", tmp_path / "train.parquet")
    with pytest.raises(data.DataError, match="no sibling 'test.parquet'"):
        data.resolve_source(str(tmp_path / "train.parquet"))
    shutil.copy(FIXTURE / "train.parquet", tmp_path / "cifar.parquet")
    with pytest.raises(data.DataError, match="cifar.parquet.*neither 'train' nor 'test'"):
        data.resolve_source(str(tmp_path / "cifar.parquet"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(data.DataError, match="notes.txt.*not a .parquet"):
        data.resolve_source(str(tmp_path / "notes.txt"))


def test_wrong_image_size_is_a_data_error(tmp_path):
    small = encode_png(torch.zeros(3, 16, 16, dtype=torch.uint8)).numpy().tobytes()
    for split in data.SPLITS:
        write_parquet(tmp_path / f"{split}.parquet", [small] * 4, [0, 1, 2, 3])
    with pytest.raises(data.DataError, match=r"shape \[\(3, 16, 16\)\].*allowed: \(3, 32, 32\)"):
        data.load_split(str(tmp_path), "train", tmp_path / "cache")


def test_corrupt_image_bytes_are_a_data_error(tmp_path):
    for split in data.SPLITS:
        write_parquet(tmp_path / f"{split}.parquet", [b"\xff\xd8\xff\xe0 broken jpeg"] * 2, [0, 1])
    with pytest.raises(data.DataError, match="cannot decode the images"):
        data.load_split(str(tmp_path), "test", tmp_path / "cache")


def test_incomplete_batches_folder_lists_missing_files(tmp_path):
    batches = write_batches(tmp_path / "cifar-10-batches-py")
    (batches / "data_batch_3").unlink()
    with pytest.raises(data.DataError, match=r"lacks \['data_batch_3'\]"):
        data.resolve_source(str(tmp_path))


def test_resolve_source_is_canonical_and_cheap(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_decode_parquet", lambda *a: pytest.fail("resolve_source decoded"))
    assert data.resolve_source("cifar10") == "cifar10"
    assert data.resolve_source(str(FIXTURE)) == str(FIXTURE.resolve())
    assert data.resolve_source(str(FIXTURE / "test.parquet")) == str((FIXTURE / "test.parquet").resolve())


def test_default_cache_dir_env_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("IQA_LS_CACHE", str(tmp_path / "c"))
    assert data.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("IQA_LS_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.default_cache_dir() == tmp_path / ".cache" / "iqa-ls"


# ------------------------------------------------------------------ the full JPEG copy
@pytest.fixture(scope="module")
def full_splits(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return {split: data.load_split(str(FULL), split, cache) for split in data.SPLITS}


@full_data
def test_full_copy_has_cifar10_counts_and_readme_checksums(full_splits):
    for split, n in (("train", 50_000), ("test", 10_000)):
        s = full_splits[split]
        assert_split(s, n)
        assert s.checksum == "sha256:" + FULL_SHA256[split]


@full_data
def test_full_copy_jpeg_decode_matches_the_pil_made_fixture(full_splits, tmp_path):
    # the fixture holds the first 40/20 images per class, decoded by PIL and stored losslessly
    for split, k in (("train", 40), ("test", 20)):
        s, mini = full_splits[split], data.load_split(str(FIXTURE), split, tmp_path)
        idx = torch.cat([torch.nonzero(s.labels == c).flatten()[:k] for c in range(10)])
        assert torch.equal(s.images[idx], mini.images)
