import pytest
import torch
from torch import nn

from dlvision.models import MLP, CourseCNN


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_course_cnn_has_exactly_the_course_parameter_count():
    net = CourseCNN()
    assert count(net) == 1_191_170
    assert count(net.fc4) == 1_025_000


@pytest.mark.parametrize("size", [28, 32])
def test_course_cnn_output_shape_for_crops_and_full_images(size):
    net = CourseCNN(num_classes=7)
    assert net(torch.randn(3, 3, size, size)).shape == (3, 7)


def test_course_cnn_rejects_images_of_the_wrong_size():
    with pytest.raises(ValueError, match="28x28 to 32x32"):
        CourseCNN()(torch.randn(1, 3, 64, 64))


def test_course_cnn_batch_norm_follows_every_convolution():
    net = CourseCNN(batch_norm=True)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [bn.num_features for bn in bns] == [32, 64, 64]
    for block in net.features:
        assert isinstance(block[0], nn.Conv2d) and isinstance(block[1], nn.BatchNorm2d)


def test_course_cnn_dropout_switch_and_p_one_zeroes_fc4_in_training():
    assert not any(isinstance(m, nn.Dropout) for m in CourseCNN().modules())
    net = CourseCNN(dropout=1.0).train()
    out = net(torch.randn(4, 3, 32, 32))
    # with p = 1 everything entering fc5 is zero: logits equal fc5's bias
    torch.testing.assert_close(out, net.fc5.bias.expand(4, -1))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        CourseCNN(dropout=1.5)


def test_mlp_shapes_parameters_and_course_initialisation():
    torch.manual_seed(0)
    net = MLP(in_features=784, hidden=[100], num_classes=10, init_std=0.3)
    assert net(torch.rand(5, 1, 28, 28)).shape == (5, 10)
    assert count(net) == 784 * 100 + 100 + 100 * 10 + 10
    weights = torch.cat([p.flatten() for p in net.parameters()])
    assert abs(weights.std().item() - 0.3) < 0.01
    assert isinstance(net[2], nn.Tanh)


def test_mlp_bad_settings_fail_clearly():
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        MLP(activation="swish")
    with pytest.raises(ValueError, match="in_features"):
        MLP(in_features=2)(torch.randn(3, 5))
    with pytest.raises(ValueError, match="positive"):
        MLP(hidden=[0])
