"""T maps and soft targets: Eq. (1) of the paper, plus the controls it did not run.

Eq. (1): q'(k|x) = T(s(x)) for k = y, (1 - T(s(x))) / (K - 1) otherwise; s is the IQA score, T maps
it into (0, 1]. Sec. 3 uses s = SSIM and T = identity. Scores outside [0, 1] (SSIM can be negative)
are clamped to [score_floor, 1] before T, so every T below sees s in (0, 1] and returns (0, 1].

Every regularisation is a T map here: "onehot" (the paper's "Original") is T = 1 and "uniform"
(classic label smoothing, Szegedy et al. 2016, q(y) = 1 - eps + eps/K) is a constant T, so one
soft-target builder serves all of Table 2 and the ablations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

DEFAULT_SCORE_FLOOR = 1e-3  # config.TrialConfig.score_floor; keeps identity's T(s) > 0


@dataclass(frozen=True)
class TMap:
    """A named map T: scores in (0, 1] -> targets in (0, 1]; `fn` is batched and pure."""
    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    constant: bool = False  # ignores the score (onehot, uniform)

    def __call__(self, s: torch.Tensor) -> torch.Tensor:
        return self.fn(s)


def _identity():
    return lambda s: s


def _power(gamma: float = 2.0):
    if not gamma > 0:
        raise ValueError(f"power gamma={gamma!r} is not allowed; allowed: gamma > 0")
    return lambda s: s.pow(gamma)


def _affine(a: float = 0.3):
    # "affine floor": a + (1 - a) s; never below a, so heavy distortion still keeps a confidence
    if not 0.0 <= a < 1.0:
        raise ValueError(f"affine a={a!r} is not allowed; allowed: 0 <= a < 1")
    return lambda s: a + (1.0 - a) * s


def _logistic(k: float = 10.0, s0: float = 0.5):
    # sigmoid(k (s - s0)) normalised so that T(1) = 1; strictly positive everywhere
    if not k > 0:
        raise ValueError(f"logistic k={k!r} is not allowed; allowed: k > 0")
    top = 1.0 / (1.0 + math.exp(-k * (1.0 - s0)))
    # float32 division can round sigmoid(k (1 - s0)) / top to 1.0000001 at s = 1; T must stay in
    # (0, 1]: clamp above at 1 and below at the smallest positive float (sigmoid underflows for large k)
    return lambda s: (torch.sigmoid(k * (s - s0)) / top).clamp(torch.finfo(s.dtype).tiny, 1.0)


def _onehot():
    return lambda s: torch.ones_like(s)


def _uniform(epsilon: float = 0.1, num_classes: int = 10):
    # classic label smoothing: q(y) = 1 - eps + eps / K, the rest eps / K = (1 - q(y)) / (K - 1)
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"uniform epsilon={epsilon!r} is not allowed; allowed: 0 <= epsilon < 1")
    t = 1.0 - epsilon + epsilon / num_classes
    return lambda s: torch.full_like(s, t)


# name -> (factory(**params) -> fn, constant?)
TMAPS: dict[str, tuple[Callable[..., Callable], bool]] = {
    "identity": (_identity, False),  # the paper (Sec. 3)
    "power": (_power, False),
    "affine": (_affine, False),
    "logistic": (_logistic, False),
    "onehot": (_onehot, True),  # the paper's "Original"
    "uniform": (_uniform, True),  # classic label smoothing control
}


def make_tmap(name: str | Callable | TMap, **params) -> TMap:
    """A TMap from a registry name and its keyword parameters (or wrap a callable)."""
    if isinstance(name, TMap):
        return name
    if callable(name):
        return TMap(getattr(name, "__name__", "custom"), name)
    if name not in TMAPS:
        raise ValueError(f"tmap={name!r} is not allowed; allowed: {sorted(TMAPS)}")
    factory, constant = TMAPS[name]
    return TMap(name, factory(**params), constant)


def clamp_scores(scores: torch.Tensor, floor: float = DEFAULT_SCORE_FLOOR) -> torch.Tensor:
    """The stated rule for scores outside [0, 1]: clamp into [floor, 1]."""
    return scores.float().clamp(floor, 1.0)


def soft_targets(labels: torch.Tensor, scores: torch.Tensor | None, tmap="identity",
                 num_classes: int = 10, score_floor: float = DEFAULT_SCORE_FLOOR,
                 **tmap_params) -> torch.Tensor:
    """Eq. (1): [N, K] float32 rows that sum to 1. `scores` may be None for constant maps."""
    t_map = make_tmap(tmap, **tmap_params)
    if scores is None:
        if not t_map.constant:
            raise ValueError(f"tmap={t_map.name!r} needs IQA scores; got scores=None")
        scores = torch.ones(labels.shape[0], device=labels.device)
    t = true_class_target(scores, t_map, score_floor)
    return targets_from_t(labels, t, num_classes)


def true_class_target(scores: torch.Tensor, tmap, score_floor: float = DEFAULT_SCORE_FLOOR,
                      **tmap_params) -> torch.Tensor:
    """T(clamp(s)) for each image: the target probability of the true class."""
    return make_tmap(tmap, **tmap_params)(clamp_scores(scores, score_floor))


def targets_from_t(labels: torch.Tensor, t: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    t = t.float()
    q = ((1.0 - t) / (num_classes - 1)).unsqueeze(1).expand(-1, num_classes).clone()
    q.scatter_(1, labels.view(-1, 1), t.view(-1, 1))
    return q


def target_stats(t: torch.Tensor, num_classes: int = 10) -> dict[str, float]:
    """Per-batch record: mean T and the share of images whose true-class target fell below 1/K
    (the label then says "not this class": a real hazard of Eq. 1 under heavy distortion)."""
    return {"mean_t": float(t.mean()), "frac_below_chance": float((t < 1.0 / num_classes).float().mean())}


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_k q_k log p_k (the soft-target loss of TF's
    softmax_cross_entropy_with_logits, which the paper's TF setup would have used)."""
    return -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
