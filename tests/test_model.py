"""The Table 1 CNN: shapes, parameter count, LRN reformulation."""
import pytest
import torch
import torch.nn.functional as F

from trainables.model import FastLRN, LRN_ALPHA, PaperCNN, num_params, torch_lrn


def test_param_count_matches_table1():
    # 5*5*3*64+64 + 5*5*64*64+64 + 4096*384+384 + 384*192+192 + 192*10+10
    assert num_params(PaperCNN()) == 1_756_426


def test_layer_shapes_follow_table1():
    m = PaperCNN()
    shapes = {}
    for name in ("conv1", "lrn1", "conv2", "lrn2", "fc1", "fc2", "fc3"):
        getattr(m, name).register_forward_hook(lambda mod, i, o, name=name: shapes.__setitem__(name, tuple(o.shape)))
    out = m(torch.randn(2, 3, 32, 32))
    assert shapes["conv1"] == (2, 64, 32, 32)
    assert shapes["lrn1"] == (2, 64, 16, 16)  # after pool1
    assert shapes["conv2"] == (2, 64, 16, 16)
    assert shapes["fc1"] == (2, 384) and shapes["fc2"] == (2, 192) and out.shape == (2, 10)


def test_fast_lrn_equals_torch_lrn_and_tf_formula():
    x = torch.randn(4, 64, 16, 16, dtype=torch.float64) * 3
    fast = FastLRN(64).double()(x)
    ref = torch_lrn()(x)
    assert torch.allclose(fast, ref, atol=1e-5, rtol=0)
    # TF formula written out: sqr_sum over channels c-4..c+4
    sq = F.pad(x * x, (0, 0, 0, 0, 4, 4))
    sqr_sum = sum(sq[:, i:i + 64] for i in range(9))
    tf = x / (1.0 + LRN_ALPHA * sqr_sum) ** 0.75
    assert torch.allclose(fast, tf, atol=1e-10)


def test_fast_and_torch_lrn_models_agree_in_forward_and_backward():
    torch.manual_seed(0)
    a = PaperCNN(lrn_impl="fast")
    b = PaperCNN(lrn_impl="torch")
    b.load_state_dict(a.state_dict())
    x = torch.randn(8, 3, 32, 32)
    ya, yb = a(x), b(x)
    assert torch.allclose(ya, yb, atol=1e-5)
    ya.square().sum().backward()
    yb.square().sum().backward()
    assert torch.allclose(a.conv1.weight.grad, b.conv1.weight.grad, atol=1e-4, rtol=1e-4)


def test_pool_is_tf_same_padding():
    # TF 'SAME' 3x3/2 on 4x4 windows rows/cols {0,1,2} and {2,3}: the max of the last window
    # comes from the bottom-right 2x2 block only.
    from trainables.model import tf_same_pool
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert tf_same_pool(x).flatten().tolist() == [10.0, 11.0, 14.0, 15.0]


def test_tf_init_uses_truncated_normals():
    torch.manual_seed(0)
    m = PaperCNN(init="tf_cifar10")
    assert float(m.conv1.weight.abs().max()) <= 2 * 5e-2 + 1e-7
    assert float(m.fc1.weight.std()) == pytest.approx(0.04 * 0.88, rel=0.05)  # trunc-normal std
    assert torch.all(m.conv2.bias == 0.1) and torch.all(m.fc3.bias == 0)


def test_weight_decay_params_are_the_two_hidden_fc_weights():
    m = PaperCNN()
    assert [p.shape for p in m.weight_decay_params()] == [(384, 4096), (192, 384)]


def test_bad_init_is_refused():
    with pytest.raises(ValueError, match="init='xavier'"):
        PaperCNN(init="xavier")
