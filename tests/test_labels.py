"""Eq. (1) soft targets and the T-map registry."""
import pytest
import torch

from trainables import labels
from trainables.config import NUM_CLASSES

SCORE_MAPS = [name for name, (_, constant) in labels.TMAPS.items() if not constant]
PARAMS = {"identity": [{}], "power": [{"gamma": 0.5}, {"gamma": 2.0}, {"gamma": 4.0}],
          "affine": [{"a": 0.1}, {"a": 0.5}], "logistic": [{}, {"k": 4.0, "s0": 0.3}]}


def test_every_score_map_has_test_params():
    assert set(SCORE_MAPS) == set(PARAMS)


@pytest.mark.parametrize("name,params", [(n, p) for n in PARAMS for p in PARAMS[n]])
def test_tmap_monotone_in_unit_interval_and_one_at_one(name, params):
    s = torch.linspace(0, 1, 1001)
    t = labels.true_class_target(s, name, **params)
    assert torch.all(t > 0) and torch.all(t <= 1)
    assert torch.all(t[1:] >= t[:-1])
    assert float(labels.make_tmap(name, **params)(torch.ones(1))) == pytest.approx(1.0, abs=1e-7)


def test_scores_outside_unit_interval_are_clamped():
    s = torch.tensor([-0.4, 0.0, 0.5, 1.3])
    t = labels.true_class_target(s, "identity", score_floor=1e-3)
    assert t.tolist() == pytest.approx([1e-3, 1e-3, 0.5, 1.0])


@pytest.mark.parametrize("tmap", ["identity", "power", "affine", "logistic", "onehot", "uniform"])
def test_soft_targets_rows_sum_to_one(tmap):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, NUM_CLASSES, (64,), generator=g)
    s = torch.rand(64, generator=g)
    q = labels.soft_targets(y, s, tmap)
    assert q.shape == (64, NUM_CLASSES) and q.dtype == torch.float32
    assert torch.allclose(q.sum(1), torch.ones(64), atol=1e-6)
    assert torch.all(q >= 0)


def test_soft_targets_match_eq1():
    y = torch.tensor([3, 0])
    s = torch.tensor([0.8, 0.25])
    q = labels.soft_targets(y, s, "identity")
    assert q[0, 3] == pytest.approx(0.8) and q[1, 0] == pytest.approx(0.25)
    assert q[0, 0] == pytest.approx(0.2 / 9) and q[1, 5] == pytest.approx(0.75 / 9)


def test_onehot_and_uniform_controls():
    y = torch.tensor([2])
    assert labels.soft_targets(y, None, "onehot").tolist() == [[0, 0, 1] + [0] * 7]
    q = labels.soft_targets(y, None, "uniform", epsilon=0.1)
    assert q[0, 2] == pytest.approx(0.9 + 0.01) and q[0, 0] == pytest.approx(0.01)


def test_callable_tmap_is_accepted():
    q = labels.soft_targets(torch.tensor([1]), torch.tensor([0.5]), lambda s: s * s)
    assert q[0, 1] == pytest.approx(0.25)


def test_score_map_without_scores_is_refused():
    with pytest.raises(ValueError, match="needs IQA scores"):
        labels.soft_targets(torch.tensor([1]), None, "identity")


@pytest.mark.parametrize("name,params,bad", [("power", {"gamma": -1}, "gamma=-1"),
                                             ("affine", {"a": 1.5}, "a=1.5"),
                                             ("nope", {}, "'nope'")])
def test_bad_tmap_is_refused_with_the_value(name, params, bad):
    with pytest.raises(ValueError, match=bad):
        labels.make_tmap(name, **params)


def test_target_stats_counts_targets_below_chance():
    stats = labels.target_stats(torch.tensor([0.05, 0.5, 0.09, 1.0]))
    assert stats["frac_below_chance"] == pytest.approx(0.5)
    assert stats["mean_t"] == pytest.approx(0.41)


def test_soft_cross_entropy_equals_torch_for_soft_and_hard_targets():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 10, generator=g)
    q = torch.softmax(torch.randn(8, 10, generator=g), 1)
    ref = torch.nn.functional.cross_entropy(logits, q)
    assert labels.soft_cross_entropy(logits, q) == pytest.approx(float(ref), rel=1e-6)
