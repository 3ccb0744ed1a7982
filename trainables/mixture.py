"""The training mixtures of Sec. 4.2, drawn anew every epoch, as whole-epoch tensor operations.

"In each training epoch, 60% of the pristine training samples are maintained, the rest samples are
corrupted by level 1/2/3 distortions in the ratio of 15% / 15% / 10%." We read the shares as exact
counts per epoch (largest-remainder rounding), assigned to images by a seeded permutation, so each
epoch has exactly the paper's proportions and a fresh draw. For MIX_all3 the paper does not say how
the type is chosen: `all3_draw="balanced"` splits every level equally between the types (random
assignment, counts differ by at most one); `"iid"` draws the type uniformly per image.

Blur and JPEG of a given image are deterministic, so a `DistortionBank` computes them (and their
IQA scores) once per data set and reuses them across epochs, and across trials via a disk cache;
noise is re-drawn each time it is applied and scored on the fly.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from trainables import distortions, iqa
from trainables.config import LEVELS
from trainables.files import atomic_write


def level_counts(n: int, mix) -> list[int]:
    """Exact image counts for (pristine, level 1, 2, 3) summing to n (largest remainder)."""
    raw = [share * n for share in mix]
    counts = [int(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def draw_epoch(n: int, mix, num_types: int, generator: torch.Generator,
               all3_draw: str = "balanced") -> tuple[torch.Tensor, torch.Tensor]:
    """Level (0 = pristine, 1-3) and type index (into the trial's types) of every image."""
    counts = level_counts(n, mix if num_types else (1.0, 0.0, 0.0, 0.0))
    levels = torch.repeat_interleave(torch.arange(4), torch.tensor(counts))
    perm = torch.randperm(n, generator=generator)
    level = torch.empty(n, dtype=torch.long)
    level[perm] = levels
    kind = torch.zeros(n, dtype=torch.long)
    if num_types > 1:
        if all3_draw == "iid":
            kind = torch.randint(num_types, (n,), generator=generator)
        else:  # balanced: within each level, the images (in perm order) take types in turn
            start = 0
            for c in counts:
                idx = perm[start:start + c]
                offset = torch.randint(num_types, (1,), generator=generator)
                kind[idx] = (torch.arange(c) + offset) % num_types
                start += c
        kind[level == 0] = 0
    return level, kind


# What makes a bank entry (distortions.py and iqa.py's code, the level's parameter, the options, the
# libraries): all of it is in the cache key, and the key is stored in the file and checked on load.
BANK_FORMAT = 2  # the layout of a cache file; bump when it changes
_CODE_HASH: str | None = None


def implementation_hash() -> str:
    """sha256 (16 hex) of the source of the modules that compute an entry: any edit of the
    distortions or the IQA metrics invalidates what the old code cached."""
    global _CODE_HASH
    if _CODE_HASH is None:
        h = hashlib.sha256()
        for mod in (distortions, iqa):
            h.update(Path(mod.__file__).read_bytes())
        _CODE_HASH = h.hexdigest()[:16]
    return _CODE_HASH


def _library_versions() -> dict:
    import kornia
    import torchvision
    return {"torch": torch.__version__, "torchvision": torchvision.__version__, "kornia": kornia.__version__}


class DistortionBank:
    """Distorted copies and IQA scores of one image set, per (kind, level).

    Deterministic kinds are computed once and kept (memory: one uint8 copy of the set per entry);
    with `cache_dir` they are also stored on disk, so the next trial process loads instead of
    recomputing. The file is keyed by everything that makes its content (`describe`: the set's
    content `key` and shape, kind, level and its parameter, options, IQA metric, device type, the
    source of distortions.py and iqa.py, torch/torchvision/kornia versions), holds that key, and is
    used only when the stored key, dtypes and shapes are what this bank expects.
    """

    def __init__(self, images: torch.Tensor, key: str, metric: str, options: dict[str, dict],
                 cache_dir: Path | None = None):
        self.images, self.key, self.metric, self.options = images, key, metric, options
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._entries: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def describe(self, kind: str, level: int) -> dict:
        """Everything that determines the entry of (kind, level): its cache key, stored in the file."""
        return {"format": BANK_FORMAT, "set": self.key, "shape": list(self.images.shape),
                "kind": kind, "level": level, "param": distortions.DISTORTIONS[kind].params[level - 1],
                "options": self.options.get(kind, {}), "metric": self.metric,
                "device": self.images.device.type, "code": implementation_hash(), **_library_versions()}

    def _file(self, kind: str, level: int) -> Path | None:
        if self.cache_dir is None:
            return None
        desc = json.dumps(self.describe(kind, level), sort_keys=True)
        h = hashlib.sha256(desc.encode()).hexdigest()[:24]
        return self.cache_dir / "distorted" / f"{kind}{level}-{self.metric}-{h}.pt"

    def _load(self, f: Path, kind: str, level: int):
        """The cached entry if the file holds exactly what this bank would compute, else None."""
        try:
            d = torch.load(f, map_location="cpu", weights_only=True)
            x, s = d["images"], d["scores"]
            n = self.images.shape[0]
            if (json.loads(d["meta"]) == json.loads(json.dumps(self.describe(kind, level)))
                    and x.dtype == torch.uint8 and x.shape == self.images.shape
                    and s.dtype == torch.float32 and tuple(s.shape) == (n,)):
                return x, s
        except Exception:  # a torn, foreign or stale cache file is recomputed, never trusted
            pass
        return None

    def get(self, kind: str, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(distorted uint8 images, scores) of the whole set for a deterministic kind."""
        if (kind, level) not in self._entries:
            f = self._file(kind, level)
            entry = self._load(f, kind, level) if f is not None and f.exists() else None
            if entry is None:
                x = distortions.distort(self.images, kind, level, **self.options.get(kind, {}))
                entry = (x.cpu(), iqa.score(self.metric, x, self.images).cpu())
                if f is not None:
                    doc = {"images": entry[0], "scores": entry[1],
                           "meta": json.dumps(self.describe(kind, level), sort_keys=True)}
                    atomic_write(f, lambda fh: torch.save(doc, fh))
            dev = self.images.device
            self._entries[(kind, level)] = (entry[0].to(dev), entry[1].to(dev))
        return self._entries[(kind, level)]


def build_epoch(images: torch.Tensor, level: torch.Tensor, kind: torch.Tensor, types: tuple[str, ...],
                metric: str, options: dict[str, dict], noise_generator: torch.Generator | None,
                bank: DistortionBank | None = None,
                score_pooling: str = "image") -> tuple[torch.Tensor, torch.Tensor]:
    """This epoch's training images (uint8) and their IQA scores (1 for pristine).

    One vectorised gather per (type, level) group: no per-image Python. `score_pooling="level"` (an
    ablation control, config.SCORE_POOLINGS) gives every image of a group the group's mean score:
    for a deterministic kind with a bank the mean over the whole training set, otherwise (noise, or
    no bank) the mean over this epoch's images of the group.
    """
    out = images.clone()
    scores = torch.ones(images.shape[0], device=images.device)
    level, kind = level.to(images.device), kind.to(images.device)
    pooled = score_pooling == "level"
    for ti, t in enumerate(types):
        deterministic = distortions.DISTORTIONS[t].deterministic
        for lv in LEVELS:
            idx = torch.nonzero((level == lv) & (kind == ti)).flatten()
            if idx.numel() == 0:
                continue
            if deterministic and bank is not None:
                x_all, s_all = bank.get(t, lv)
                out[idx], scores[idx] = x_all[idx], s_all.mean() if pooled else s_all[idx]
            else:
                ref = images[idx]
                x = distortions.distort(ref, t, lv, generator=noise_generator, **options.get(t, {}))
                s = iqa.score(metric, x, ref)
                out[idx], scores[idx] = x, s.mean() if pooled else s
    return out, scores
