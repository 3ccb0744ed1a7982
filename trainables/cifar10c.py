"""CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019): the official files, or the corruptions regenerated.

Both entry points return a `Cifar10C`: `images[corruption][severity]` is a uint8 N x 3 x 32 x 32
CPU tensor (severities 1..5), `labels` int64 N, and `source` says where it came from ("official
files" or "regenerated") and which corruptions it holds.

- `read_cifar10c(folder)` reads the published layout: one `<corruption>.npy` per corruption,
  uint8 5n x 32 x 32 x 3 holding severities 1..5 in blocks of n (n = 10,000, the CIFAR-10 test
  set), and `labels.npy` (5n labels, the same n repeated per severity). Every file is checked
  (present, .npy header, dtype, shape, labels consistent) before any image is read; a bad one is
  a one-line CIFAR10CError naming it and what is expected.
- `build_cifar10c(images, labels)` makes the corruptions of `trainables.corruptions` from clean
  test images with the reference's severity tables, seeded per (seed, corruption, severity), and
  caches each corruption on disk under a key of everything that determines its bytes (input
  checksum, corruption, parameters, seed, IMPLEMENTATION_VERSION, chunking, library versions, CPU
  capability); a cache file is written atomically and used only if its stored key, shape, dtype
  and content hash all check out, else it is recomputed.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision

from trainables.corruptions import (BENCHMARK, CORRUPTIONS, IMAGE_SIZE, NOT_IMPLEMENTED, REFERENCE_ORDER,
                                    SEVERITIES)
from trainables.data import DataError, default_cache_dir
from trainables.files import atomic_write

OFFICIAL_PER_SEVERITY = 10_000  # CIFAR-10-C: the 10,000 CIFAR-10 test images per severity
LABELS_FILE = "labels.npy"
NUM_CLASSES = 10  # CIFAR-10
# Bump when a corruption's output bytes change for the same inputs (cache keys include it).
IMPLEMENTATION_VERSION = 1
BUILD_CHUNK = 1000  # images per corruption call; the draws of a chunk follow the previous chunk's
CACHE_SUBDIR = "cifar10c"
KIND_OFFICIAL, KIND_REGENERATED = "official files", "regenerated"


class CIFAR10CError(DataError):
    """A bad CIFAR-10-C folder, file or build request; the message names it and what is expected."""


@dataclass(frozen=True)
class Source:
    """Where a Cifar10C came from: `kind` is "official files" or "regenerated"."""
    kind: str
    corruptions: tuple[str, ...]  # the corruptions it holds, in the reference's order
    location: str  # the folder read, or the cache folder written
    seed: int | None = None  # regenerated only
    implementation: int | None = None  # IMPLEMENTATION_VERSION, regenerated only

    def describe(self) -> str:
        """One line for logs and tables, e.g. "regenerated (18 corruptions, seed 0, implementation 1)"."""
        extra = "" if self.kind == KIND_OFFICIAL else \
            f", seed {self.seed}, implementation {self.implementation}"
        missing = [c for c in BENCHMARK if c not in self.corruptions]
        lacks = f"; lacks {', '.join(missing)}" if missing else ""
        names = ", ".join(self.corruptions)
        return f"{self.kind} ({len(self.corruptions)} corruptions{extra}{lacks}): {names}"


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no truth value
class Cifar10C:
    images: dict[str, dict[int, torch.Tensor]]  # corruption -> severity -> uint8 N x 3 x 32 x 32
    labels: torch.Tensor  # int64 N, the same for every corruption and severity
    source: Source


def _ordered(names) -> tuple[str, ...]:
    return tuple(sorted(names, key=REFERENCE_ORDER.index))


def _check_names(corruptions, allowed, what: str) -> tuple[str, ...]:
    if isinstance(corruptions, str) or not hasattr(corruptions, "__iter__"):
        raise CIFAR10CError(f"corruptions={corruptions!r} is not allowed; allowed: None or a list of names "
                            f"from {list(allowed)}")
    names = list(corruptions)
    bad = [c for c in names if c not in allowed]
    if bad:
        why = "; ".join(f"{c} is not implemented: {NOT_IMPLEMENTED[c]}" for c in bad if c in NOT_IMPLEMENTED)
        raise CIFAR10CError(f"corruption(s) {bad} are not {what}{' (' + why + ')' if why else ''}; "
                            f"allowed: {list(allowed)}")
    if not names or len(set(names)) != len(names):
        raise CIFAR10CError(f"corruptions={names!r} is not allowed; allowed: a non-empty list "
                            f"without repeats")
    return _ordered(names)


# ---------------------------------------------------------------- official files
def _npy_header(path: Path) -> tuple[tuple, np.dtype]:
    """(shape, dtype) from a .npy header, without reading the data."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # not a .npy, truncated header, object array, ...
        why = " ".join(f"{type(e).__name__}: {e}".split())
        raise CIFAR10CError(f"CIFAR-10-C file {str(path)!r} is not a readable .npy array ({why}); "
                            f"expected a numpy .npy file") from None
    if not isinstance(arr, np.ndarray):
        raise CIFAR10CError(f"CIFAR-10-C file {str(path)!r} holds {type(arr).__name__}; "
                            f"expected one .npy array")
    return arr.shape, arr.dtype


def read_cifar10c(folder, corruptions=None, per_severity: int | None = OFFICIAL_PER_SEVERITY) -> Cifar10C:
    """The official CIFAR-10-C files in `folder` (see the module docstring).

    corruptions: None reads the 15 benchmark corruptions (all required) and whichever of the 4
    extras are present; a list reads exactly those (each required). per_severity: images per
    severity block (10,000 in the published files; None: inferred from labels.npy)."""
    root = Path(folder).expanduser() if isinstance(folder, (str, os.PathLike)) else None
    if root is None or not root.is_dir():
        raise CIFAR10CError(f"CIFAR-10-C folder {folder!r} is not a folder; expected a folder with one "
                            f"<corruption>.npy per corruption and {LABELS_FILE}")
    if per_severity is not None and (isinstance(per_severity, bool) or not isinstance(per_severity, int)
                                     or per_severity < 1):
        raise CIFAR10CError(f"per_severity={per_severity!r} is not allowed; allowed: an int >= 1 or None")
    if corruptions is None:
        names = _ordered(list(BENCHMARK) + [c for c in REFERENCE_ORDER[15:] if (root / f"{c}.npy").is_file()])
    else:
        names = _check_names(corruptions, REFERENCE_ORDER, "CIFAR-10-C corruptions")
    # check every file before reading any image
    labels_path = root / LABELS_FILE
    if not labels_path.is_file():
        raise CIFAR10CError(f"CIFAR-10-C labels file {str(labels_path)!r} is missing; expected an integer "
                            f".npy of 5 x {per_severity or 'n'} labels")
    shape, dtype = _npy_header(labels_path)
    n = per_severity if per_severity is not None else (shape[0] // len(SEVERITIES) if len(shape) == 1 else 0)
    if len(shape) != 1 or dtype.kind not in "iu" or n < 1 or shape[0] != len(SEVERITIES) * n:
        raise CIFAR10CError(f"CIFAR-10-C labels file {str(labels_path)!r} has shape {shape} dtype {dtype}; "
                            f"expected an integer array of shape ({len(SEVERITIES) * n if n else '5 n'},): "
                            f"the labels of severities 1-5 in blocks of {n or 'n'}")
    expected = (len(SEVERITIES) * n, IMAGE_SIZE, IMAGE_SIZE, 3)
    for name in names:
        path = root / f"{name}.npy"
        if not path.is_file():
            raise CIFAR10CError(f"CIFAR-10-C file {str(path)!r} is missing; expected uint8 {expected} "
                                f"(severities 1-5 in blocks of {n})")
        shape, dtype = _npy_header(path)
        if tuple(shape) != expected or dtype != np.uint8:
            raise CIFAR10CError(f"CIFAR-10-C file {str(path)!r} has shape {tuple(shape)} dtype {dtype}; "
                                f"expected uint8 {expected} (severities 1-5 in blocks of {n})")
    raw = np.load(labels_path, allow_pickle=False).astype(np.int64)
    blocks = raw.reshape(len(SEVERITIES), n)
    if not (blocks == blocks[0]).all():
        bad = int(np.nonzero((blocks != blocks[0]).any(1))[0][0]) + 1
        raise CIFAR10CError(f"CIFAR-10-C labels file {str(labels_path)!r}: severity {bad}'s block "
                            f"differs from severity 1's; expected the same {n} labels repeated per severity")
    if raw.min() < 0 or raw.max() >= NUM_CLASSES:
        raise CIFAR10CError(f"CIFAR-10-C labels file {str(labels_path)!r} holds labels {int(raw.min())}.."
                            f"{int(raw.max())}; expected 0..{NUM_CLASSES - 1}")
    images = {}
    for name in names:
        arr = np.load(root / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        blocks_hwc = (arr[(s - 1) * n:s * n] for s in SEVERITIES)
        images[name] = {s: torch.from_numpy(np.ascontiguousarray(b.transpose(0, 3, 1, 2)))
                        for s, b in zip(SEVERITIES, blocks_hwc)}
    source = Source(KIND_OFFICIAL, names, str(root.resolve()))
    return Cifar10C(images, torch.from_numpy(blocks[0].copy()), source)


# ---------------------------------------------------------------- regenerated
def images_checksum(images: torch.Tensor) -> str:
    """"sha256:<hex>" of a uint8 image tensor's shape and bytes."""
    x = images.detach().to("cpu").contiguous()
    h = hashlib.sha256(repr(tuple(x.shape)).encode())
    h.update(x.numpy().tobytes())
    return "sha256:" + h.hexdigest()


def severity_seed(seed: int, corruption: str, severity: int) -> int:
    """The torch.Generator seed of one (corruption, severity): independent of which other
    corruptions a build asks for, so a subset gives the same bytes as the full set."""
    digest = hashlib.sha256(f"cifar10c/{seed}/{corruption}/{severity}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def cache_key(checksum: str, corruption: str, seed: int) -> str:
    """sha256 hex over everything that determines a corruption's bytes for these inputs."""
    spec = CORRUPTIONS[corruption]
    fields = {
        "input": checksum,
        "corruption": corruption,
        "params": repr(spec.params),
        "seed": seed,
        "implementation": IMPLEMENTATION_VERSION,
        "chunk": BUILD_CHUNK,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "cpu": torch.backends.cpu.get_cpu_capability(),  # vectorised math kernels differ by ISA
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _content_hash(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _load_cached(path: Path, key: str, shape: tuple):
    """The cached uint8 array if the file's key, shape, dtype and content hash check out, else None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            stored_key, stored_hash, arr = str(z["key"]), str(z["sha256"]), z["images"]
    except Exception:  # missing, truncated, not an npz, a missing member: recompute
        return None
    if stored_key != key or arr.dtype != np.uint8 or arr.shape != shape or _content_hash(arr) != stored_hash:
        return None
    return arr


def _write_cached(path: Path, key: str, arr: np.ndarray) -> None:
    # crash-safe: a reader sees the old file or the whole new one
    atomic_write(path, lambda fh: np.savez(fh, key=np.array(key), sha256=np.array(_content_hash(arr)), images=arr))


def _regenerate(images: torch.Tensor, corruption: str, seed: int) -> np.ndarray:
    """uint8 5 x N x 3 x 32 x 32: every severity of one corruption, BUILD_CHUNK images per call."""
    spec = CORRUPTIONS[corruption]
    out = np.empty((len(SEVERITIES),) + tuple(images.shape), dtype=np.uint8)
    for k, sev in enumerate(SEVERITIES):
        g = torch.Generator().manual_seed(severity_seed(seed, corruption, sev))
        for i in range(0, images.shape[0], BUILD_CHUNK):
            out[k, i:i + BUILD_CHUNK] = spec.fn(images[i:i + BUILD_CHUNK], spec.params[sev - 1], g).numpy()
    return out


def build_cifar10c(images: torch.Tensor, labels: torch.Tensor, corruptions=None, seed: int = 0,
                   cache_dir=None) -> Cifar10C:
    """CIFAR-10-C regenerated from clean uint8 N x 3 x 32 x 32 `images` (e.g. the CIFAR-10 test set,
    `trainables.data.load_split(src, "test").images`) with their `labels`.

    corruptions: None = every implemented one (`trainables.corruptions.CORRUPTIONS`, the
    reference's order); a name in NOT_IMPLEMENTED is refused with its reason. Computed on the CPU;
    cached per corruption under `cache_dir` (None: <IQA_LS_CACHE or ~/.cache/iqa-ls>/cifar10c)."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4 \
            or tuple(images.shape[1:]) != (3, IMAGE_SIZE, IMAGE_SIZE) or images.shape[0] == 0:
        what = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) \
            else type(images).__name__
        raise CIFAR10CError(f"images of {what} are not allowed; allowed: a uint8 torch.Tensor N x 3 x "
                            f"{IMAGE_SIZE} x {IMAGE_SIZE}, N >= 1")
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool \
            or labels.shape != (images.shape[0],):
        what = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) \
            else type(labels).__name__
        raise CIFAR10CError(f"labels of {what} are not allowed; allowed: an integer torch.Tensor of shape "
                            f"({images.shape[0]},)")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise CIFAR10CError(f"seed={seed!r} is not allowed; allowed: an int >= 0")
    names = _ordered(CORRUPTIONS) if corruptions is None else \
        _check_names(corruptions, _ordered(CORRUPTIONS), "available to regenerate")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir() / CACHE_SUBDIR
    x = images.detach().to("cpu").contiguous()
    checksum = images_checksum(x)
    shape = (len(SEVERITIES),) + tuple(x.shape)
    out = {}
    for name in names:
        key = cache_key(checksum, name, seed)
        path = cache / f"{name}-{key[:24]}.npz"
        arr = _load_cached(path, key, shape)
        if arr is None:
            arr = _regenerate(x, name, seed)
            try:
                _write_cached(path, key, arr)
            except OSError as e:  # a read-only cache only costs time
                warnings.warn(f"could not write the CIFAR-10-C cache {path} ({type(e).__name__}: {e})")
        out[name] = {s: torch.from_numpy(arr[k]) for k, s in enumerate(SEVERITIES)}
    source = Source(KIND_REGENERATED, names, str(cache.resolve()), seed, IMPLEMENTATION_VERSION)
    return Cifar10C(out, labels.detach().to("cpu", torch.int64).clone(), source)
