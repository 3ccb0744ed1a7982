"""CIFAR-10 (Sec. 4.1: 50,000 train / 10,000 test images, 10 classes) as one uint8 tensor per split.

`load_split(source, split)` returns a `Split`: images uint8 N x 3 x 32 x 32 (CPU, contiguous),
labels int64 N, the class names and a sha256 of the source file(s). Source specs:

- "cifar10": torchvision's download into <cache>/torchvision (under a file lock), read as below;
- a `cifar-10-batches-py` folder, or a folder containing one (the python pickles);
- a folder with train.parquet and test.parquet, or one .parquet file (the other split is the
  sibling with "train"<->"test" swapped in the file name), Hugging Face layout: column `img`
  (struct bytes/path, PNG or JPEG) and `label` int64, class names in the schema metadata.

Checksums: when a `SHA256SUMS` file (the output of `sha256sum FILE...`) sits in the data folder, or a
`<file>.sha256` beside a data file, every data file it lists is verified before use; a mismatch
(a damaged, truncated or replaced file) is a DataError naming the file and both hashes. Without
one, nothing is verified, but every run still records the sha256 it read (`Split.checksum`).

Decoding happens once per content hash: the arrays go to <cache>/decoded/<sha256>-<split>.npz
(written atomically, only after the split passed its checks), with what made them (`cache_meta`:
source hash, decoder and its code, torchvision) stored inside and checked on load; a split is
loaded once per process. `stratified_subset` draws a seeded,
class-balanced subset. Every failure is a one-line DataError naming the value and what is allowed.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from trainables.files import atomic_write

SPLITS = ("train", "test")
IMAGE_SHAPE = (3, 32, 32)  # CIFAR-10, Sec. 4.1
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
PICKLE_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
BATCHES_DIR = "cifar-10-batches-py"
ALLOWED = ("'cifar10', a cifar-10-batches-py folder (or a folder containing one), "
           "a folder with train.parquet and test.parquet, or a .parquet file")
_HASH_CHUNK = 1 << 20  # bytes read per step while hashing
CHECKSUM_FILE = "SHA256SUMS"  # `sha256sum` format: "<64 hex>  <file name>" per line


class DataError(ValueError):
    """A bad data source, split or subset size; the message names the value and what is allowed."""


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no truth value; identity is equality
class Split:
    images: torch.Tensor  # uint8, N x 3 x 32 x 32, contiguous, CPU
    labels: torch.Tensor  # int64, N
    source: str  # the resolved spec it came from (resolve_source)
    checksum: str  # "sha256:<hex>" of the source file(s) of this split
    class_names: tuple[str, ...]


# Per-process memos. Both are keyed by content (or by a stat signature that changes with it), so
# they can never hand back stale data to a later trial in the same Ray worker.
_LOADED: dict[tuple, Split] = {}
_HASHES: dict[tuple, str] = {}


def clear_memo() -> None:
    """Forget loaded splits and file hashes (tests; nothing else needs it)."""
    _LOADED.clear()
    _HASHES.clear()


def default_cache_dir() -> Path:
    """$IQA_LS_CACHE, else ~/.cache/iqa-ls: downloads, decoded arrays (and other modules' caches)."""
    return Path(os.environ.get("IQA_LS_CACHE") or Path.home() / ".cache" / "iqa-ls").expanduser()


# ------------------------------------------------------------------ source specs
def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"split={split!r} is not allowed; allowed: {list(SPLITS)}")


def _sibling(path: Path) -> tuple[str, Path]:
    """(split of `path`, path of the other split) from the file name."""
    name = path.name
    for mine, other in (("train", "test"), ("test", "train")):
        if mine in name:
            return mine, path.with_name(name.replace(mine, other))
    raise DataError(f"cannot tell the split of {str(path)!r}: its file name contains neither "
                    f"'train' nor 'test'; allowed: {ALLOWED}")


def _check_parquet(path: Path) -> None:
    # The footer read is cheap and catches truncated files before any decoding work.
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{str(path)!r} is not a readable parquet file ({_one_line(e)}); "
                        f"allowed: {ALLOWED}") from None
    if "img" not in names or "label" not in names:
        raise DataError(f"{str(path)!r} has columns {names}; allowed: Hugging Face layout "
                        f"with columns 'img' (struct bytes/path) and 'label'")


def resolve_source(source: str) -> str:
    """Validate a source spec without decoding; return it canonical ("cifar10" or an absolute path)."""
    if source == "cifar10":
        return source
    if not isinstance(source, str) or not source:
        raise DataError(f"data source {source!r} is not allowed; allowed: {ALLOWED}")
    p = Path(source).expanduser().resolve()
    if not p.exists():
        raise DataError(f"data source {source!r} does not exist; allowed: {ALLOWED}")
    if p.is_file():
        if p.suffix != ".parquet":
            raise DataError(f"data source {source!r} is a file but not a .parquet; allowed: {ALLOWED}")
        _, other = _sibling(p)
        if not other.is_file():
            raise DataError(f"data source {source!r} has no sibling {other.name!r} for the other "
                            f"split; allowed: {ALLOWED}")
        verify_checksums([p, other])
        _check_parquet(p)
        _check_parquet(other)
        return str(p)
    for folder in (p, p / BATCHES_DIR):
        if (folder / "batches.meta").exists() or (folder / "test_batch").exists():
            missing = [f for f in ("batches.meta",) + PICKLE_FILES["train"] + PICKLE_FILES["test"]
                       if not (folder / f).is_file()]
            if missing:
                raise DataError(f"cifar-10-batches-py folder {str(folder)!r} lacks {missing}; "
                                f"allowed: {ALLOWED}")
            verify_checksums([folder / f for f in ("batches.meta",) + PICKLE_FILES["train"]
                              + PICKLE_FILES["test"]])
            return str(folder)
    if (p / "train.parquet").is_file() and (p / "test.parquet").is_file():
        verify_checksums([p / "train.parquet", p / "test.parquet"])
        _check_parquet(p / "train.parquet")
        _check_parquet(p / "test.parquet")
        return str(p)
    raise DataError(f"folder {source!r} holds no CIFAR-10 data; allowed: {ALLOWED}")


def _listed_sha256(folder: Path) -> dict[str, str]:
    """file name -> expected sha256 hex from `folder/SHA256SUMS` ({} when there is none)."""
    manifest = folder / CHECKSUM_FILE
    if not manifest.is_file():
        return {}
    listed = {}
    for i, line in enumerate(manifest.read_text(errors="replace").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.fullmatch(r"\s*([0-9a-fA-F]{64}) [ *](.+?)\s*", line)
        if not m:
            raise DataError(f"line {i} of {str(manifest)!r} is {line[:80]!r}; allowed: '<64 hex digits>  "
                            f"<file name>' per line (the output of sha256sum)")
        listed[Path(m.group(2)).name] = m.group(1).lower()
    return listed


def verify_checksums(files: list[Path]) -> None:
    """Check `files` against a SHA256SUMS in their folder or a `<file>.sha256` beside each, where
    present; a file listed nowhere is not checked. Hashes are memoised per (path, size, mtime)."""
    manifests: dict[Path, dict[str, str]] = {}
    for f in files:
        if f.parent not in manifests:
            manifests[f.parent] = _listed_sha256(f.parent)
        expected, where = manifests[f.parent].get(f.name), f.parent / CHECKSUM_FILE
        single = f.with_name(f.name + ".sha256")
        if expected is None and single.is_file():
            words = single.read_text(errors="replace").split()
            if not words or not re.fullmatch(r"[0-9a-fA-F]{64}", words[0]):
                raise DataError(f"{str(single)!r} does not start with a sha256; allowed: '<64 hex digits>"
                                f"[  <file name>]'")
            expected, where = words[0].lower(), single
        if expected is None:
            continue
        actual = _checksum([f]).split(":", 1)[1]
        if actual != expected:
            raise DataError(f"data file {str(f)!r} has sha256 {actual} but {str(where)!r} lists {expected}; "
                            f"allowed: the file as listed (damaged, truncated or replaced: copy it again)")


def _split_files(resolved: str, split: str) -> tuple[str, list[Path]]:
    """("pickle" | "parquet", the files of `split`) for a resolved local source."""
    p = Path(resolved)
    if p.is_file():
        mine, other = _sibling(p)
        return "parquet", [p if mine == split else other]
    if (p / "batches.meta").exists():
        return "pickle", [p / f for f in PICKLE_FILES[split]]
    return "parquet", [p / f"{split}.parquet"]


def split_rows(source: str, split: str) -> int | None:
    """The number of images of `split`, read without decoding (a parquet file's footer); None when it
    cannot be known so cheaply (pickled batches, or 'cifar10' before its download)."""
    _check_split(split)
    resolved = resolve_source(source)
    if resolved == "cifar10":
        return None
    kind, files = _split_files(resolved, split)
    return pq.ParquetFile(files[0]).metadata.num_rows if kind == "parquet" else None


def split_checksum(source: str, split: str) -> str | None:
    """The sha256 of `split`'s files (what `load_split(...).checksum` holds), read without decoding;
    None for 'cifar10' before its download."""
    _check_split(split)
    resolved = resolve_source(source)
    return None if resolved == "cifar10" else _checksum(_split_files(resolved, split)[1])


def _download_cifar10(cache_dir: Path) -> Path:
    """Torchvision's CIFAR-10 pickles under cache_dir, downloaded once across processes."""
    from filelock import FileLock
    import torchvision

    root = cache_dir / "torchvision"
    folder = root / BATCHES_DIR
    root.mkdir(parents=True, exist_ok=True)
    files = ("batches.meta",) + PICKLE_FILES["train"] + PICKLE_FILES["test"]
    with FileLock(str(cache_dir / "cifar10-download.lock")):
        # Skip torchvision when the files are there: its constructor re-md5s and unpickles all
        # 180 MB on every call; our own content hash already guards what we read.
        if not all((folder / f).is_file() for f in files):
            try:
                for train in (True, False):
                    torchvision.datasets.CIFAR10(root=str(root), train=train, download=True)
            except Exception as e:  # no internet shows up as URLError, OSError or RuntimeError
                raise DataError(f"cannot download CIFAR-10 ({_one_line(e)}); pass --data with a local "
                                f"cifar-10-batches-py folder or a parquet folder/file") from None
    return folder


# ------------------------------------------------------------------ hashing and the decoded cache
def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def _checksum(files: list[Path]) -> str:
    """sha256 over the bytes of `files` in order, memoised per (path, size, mtime_ns)."""
    key = tuple((str(f), (s := f.stat()).st_size, s.st_mtime_ns) for f in files)
    if key not in _HASHES:
        h = hashlib.sha256()
        for f in files:
            with open(f, "rb") as fh:
                while chunk := fh.read(_HASH_CHUNK):
                    h.update(chunk)
        _HASHES[key] = "sha256:" + h.hexdigest()
    return _HASHES[key]


DECODED_FORMAT = 2  # the layout of a decoded cache file; bump when it changes


def cache_meta(checksum: str, split: str, kind: str) -> str:
    """Everything that makes a decoded cache file's content, stored in it and checked on load: the
    source bytes (their sha256), the split, the decoder path and its code, and torchvision (whose
    libjpeg/libpng decode the images)."""
    import torchvision
    return json.dumps({"format": DECODED_FORMAT, "source": checksum, "split": split, "decoder": kind,
                       "code": _DECODER_CODE[kind], "torchvision": torchvision.__version__}, sort_keys=True)


def _read_cache(path: Path, meta: str | None = None):
    try:
        with np.load(path) as z:
            images, labels = torch.from_numpy(z["images"]), torch.from_numpy(z["labels"])
            stored = str(z["meta"]) if "meta" in z.files else None
    except Exception:  # any unreadable cache (truncated zip, bad header, missing key): rebuild it
        return None
    ok = (images.dtype == torch.uint8 and images.dim() == 4 and tuple(images.shape[1:]) == IMAGE_SHAPE
          and labels.dtype == torch.int64 and labels.shape == (images.shape[0],)
          and (meta is None or stored == meta))  # another decoder, torchvision or source: decode again
    return (images, labels) if ok else None


def _write_cache(path: Path, images: torch.Tensor, labels: torch.Tensor, meta: str = "") -> None:
    # crash-safe: a concurrent reader sees the old file or the whole new one, never a half-written one
    atomic_write(path, lambda fh: np.savez(fh, images=images.numpy(), labels=labels.numpy(), meta=np.array(meta)))


# ------------------------------------------------------------------ decoders
def _decode_pickles(files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for f in files:
        try:
            with open(f, "rb") as fh:
                d = pickle.load(fh, encoding="bytes")  # CIFAR's python-2 pickles; local files only
            x = np.asarray(d.get(b"data", d.get("data")), dtype=np.uint8)
            y = d.get(b"labels", d.get("labels"))
            images.append(x.reshape(-1, *IMAGE_SHAPE))  # rows are 3072 bytes in CHW order
            labels.append(np.asarray(y, dtype=np.int64))
        except Exception as e:
            raise DataError(f"cannot read CIFAR-10 batch {str(f)!r} ({_one_line(e)}); allowed: "
                            f"a python pickle with 'data' (N x 3072 uint8) and 'labels'") from None
        if len(images[-1]) != len(labels[-1]):
            raise DataError(f"CIFAR-10 batch {str(f)!r} has {len(images[-1])} images but "
                            f"{len(labels[-1])} labels; allowed: equal counts")
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _decode_parquet(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    try:
        table = pq.read_table(path, columns=["img", "label"])
        raw = pc.struct_field(table.column("img"), "bytes").combine_chunks().cast(pa.large_binary())
        label_col = table.column("label")
        labels = torch.from_numpy(label_col.cast(pa.int64()).to_numpy().copy())  # arrow memory is read-only
    except (pa.ArrowException, OSError, KeyError) as e:
        raise DataError(f"cannot read {str(path)!r} ({_one_line(e)}); allowed: Hugging Face layout "
                        f"with columns 'img' (struct bytes/path) and 'label' int64") from None
    if raw.null_count or label_col.null_count:
        raise DataError(f"{str(path)!r} has rows without image bytes or label; allowed: none")
    # One copy of the byte buffer, then zero-copy views per image: no per-image bytes objects.
    _, offs_buf, data_buf = raw.buffers()
    offs = np.frombuffer(offs_buf, dtype=np.int64)[raw.offset: raw.offset + len(raw) + 1]
    data = torch.from_numpy(np.frombuffer(data_buf, dtype=np.uint8)[offs[0]: offs[-1]].copy())
    offs = (offs - offs[0]).tolist()
    blobs = [data[a:b] for a, b in zip(offs[:-1], offs[1:])]
    starts = torch.tensor(offs[:-1], dtype=torch.int64)
    if len(blobs) == 0 or bool((torch.tensor(offs[1:]) - starts < 2).any()):
        raise DataError(f"{str(path)!r} holds no images or empty image bytes; allowed: PNG or JPEG bytes")
    is_jpeg = bool(((data[starts] == 0xFF) & (data[starts + 1] == 0xD8)).all())  # JPEG SOI marker
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities",
                                    category=DeprecationWarning)  # torchvision 0.29 -> TorchCodec
            if is_jpeg:  # the batched list API: one call for the whole split
                decoded = decode_jpeg(blobs, mode=ImageReadMode.RGB)
            else:  # PNG (the Hugging Face copy): decode_image has no list form
                decoded = [decode_image(b, mode=ImageReadMode.RGB) for b in blobs]
    except RuntimeError as e:
        raise DataError(f"cannot decode the images of {str(path)!r} ({_one_line(e)}); "
                        f"allowed: PNG or JPEG bytes") from None
    shapes = {tuple(x.shape) for x in decoded}
    if shapes - {IMAGE_SHAPE}:
        raise DataError(f"{str(path)!r} holds images of shape {sorted(shapes - {IMAGE_SHAPE})}; "
                        f"allowed: {IMAGE_SHAPE} (CIFAR-10)")
    return torch.stack(decoded), labels


def _source_hash(fn) -> str:
    import inspect
    return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]


# the decoders' code as this module was loaded (part of the decoded cache's key, cache_meta)
_DECODER_CODE = {"pickle": _source_hash(_decode_pickles), "parquet": _source_hash(_decode_parquet)}


def _class_names(kind: str, files: list[Path]) -> tuple[str, ...]:
    try:
        if kind == "pickle":
            with open(files[0].parent / "batches.meta", "rb") as fh:
                meta = pickle.load(fh, encoding="bytes")
            names = meta.get(b"label_names", meta.get("label_names"))
            return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
        meta = pq.read_schema(files[0]).metadata or {}
        return tuple(json.loads(meta[b"class_names"])) if b"class_names" in meta else CIFAR10_CLASSES
    except Exception as e:
        raise DataError(f"cannot read the class names of {str(files[0].parent)!r} ({_one_line(e)}); "
                        f"allowed: batches.meta 'label_names' or parquet metadata 'class_names' "
                        f"(a JSON list)") from None


# ------------------------------------------------------------------ public entry points
def load_split(source: str, split: str, cache_dir: str | os.PathLike | None = None) -> Split:
    """One split of `source` (see the module docstring), decoded at most once per content hash."""
    _check_split(split)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    resolved = resolve_source(source)
    local = str(_download_cifar10(cache)) if resolved == "cifar10" else resolved
    kind, files = _split_files(local, split)
    checksum = _checksum(files)
    key = (resolved, split, str(cache.resolve()), checksum)
    if key in _LOADED:
        return _LOADED[key]
    cache_file = cache / "decoded" / f"{checksum.split(':', 1)[1]}-{split}.npz"
    meta = cache_meta(checksum, split, kind)
    arrays = _read_cache(cache_file, meta)
    fresh = arrays is None
    if fresh:
        arrays = _decode_pickles(files) if kind == "pickle" else _decode_parquet(files[0])
    images, labels = arrays
    names = _class_names(kind, files)
    if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < len(names)):
        raise DataError(f"labels of {resolved!r} ({split}) span {int(labels.min())}..{int(labels.max())}; "
                        f"allowed: 0..{len(names) - 1} ({len(names)} class names)")
    if fresh:  # written only once the split is known good: a refused source leaves no cache behind
        try:
            _write_cache(cache_file, images, labels, meta)
        except OSError as e:  # a read-only cache only costs speed
            warnings.warn(f"could not write the decoded cache {cache_file} ({_one_line(e)})")
    _LOADED[key] = Split(images.contiguous(), labels, resolved, checksum, names)
    return _LOADED[key]


def stratified_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Sorted int64 indices of `n` items keeping class shares; same (labels, n, seed), same indices.

    Each class gets floor(n * share); the n - sum(floors) leftover slots go to the classes with the
    largest fractional parts (ties: lower class index), so the quotas are a pure function of counts.
    """
    labels = labels.cpu()
    total = labels.numel()
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= total:
        raise DataError(f"subset size n={n!r} is out of range; allowed: 1..{total}")
    classes, counts = torch.unique(labels, return_counts=True)
    quota = (n * counts) // total
    frac = (n * counts) % total
    leftover = n - int(quota.sum())
    order = sorted(range(len(classes)), key=lambda i: (-int(frac[i]), i))
    quota[order[:leftover]] += 1
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c, k in zip(classes.tolist(), quota.tolist()):
        members = torch.nonzero(labels == c).flatten()
        picked.append(members[torch.randperm(len(members), generator=g)[:k]])
    return torch.sort(torch.cat(picked)).values.to(torch.int64)
