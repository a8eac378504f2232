"""Chapter 2: the CNN's dropout/BN switches, the architecture analysis and the fully-convolutional CNN."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dlvision.models import CourseCNN, FullyConvolutionalCNN, analyse, to_fully_convolutional
from dlvision.models.analysis import conv_output_size, format_table

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_dropout_switch_from_0_to_1(p):
    torch.manual_seed(0)
    net = CourseCNN(dropout=p).train()
    out = net(torch.rand(8, 3, 32, 32))
    assert torch.isfinite(out).all()
    if p == 1.0:  # everything before fc5 is dropped: the output is fc5's bias, and gradients still flow
        torch.testing.assert_close(out, net.fc5.bias.expand(8, -1))
        out.sum().backward()
        assert net.fc5.bias.grad is not None
    net.eval()
    x = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(net(x), net(x))  # eval: no dropout


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_dropout_outside_zero_one_fails_clearly(p):
    with pytest.raises(ValueError, match=r"dropout must be a probability in \[0, 1\]"):
        CourseCNN(dropout=p)


def test_batch_norm_switch_puts_bn_right_after_each_convolution():
    net = CourseCNN(batch_norm=True)
    for block in net.features:
        assert [type(m) for m in block] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in CourseCNN(batch_norm=False).modules())


def test_analysis_of_the_course_cnn_matches_the_course():
    layers = {layer.name: layer for layer in analyse(CourseCNN(), (3, 32, 32))}
    assert sum(layer.params for layer in layers.values()) == 1_191_170
    assert layers["fc4"].params == 1_025_000
    assert layers["features.0.0"].params == 3 * 32 * 25 + 32
    shapes = {name: layers[name].output_shape for name in ("features.0.0", "features.0.2", "features.1.2", "features.2.2", "fc5")}
    assert shapes == {"features.0.0": (32, 32, 32), "features.0.2": (32, 16, 16), "features.1.2": (64, 8, 8),
                      "features.2.2": (64, 4, 4), "fc5": (10,)}
    # l_k = l_{k-1} + (f_k - 1) * prod(strides): 5, 6, 14, 16, 32, 36 pixels, then everything
    fields = [layers[n].receptive_field.split()[0] for n in
              ("features.0.0", "features.0.2", "features.1.0", "features.1.2", "features.2.0", "features.2.2")]
    assert fields == ["5x5", "6x6", "14x14", "16x16", "32x32", "36x36"]
    assert layers["fc4"].receptive_field == "all"
    table = format_table(list(layers.values()), (3, 32, 32))
    assert "1,191,170" in table and "1,025,000" in table


def test_output_size_formula_agrees_with_pytorch():
    for size in (28, 32, 7, 9, 15):
        for module in (nn.Conv2d(1, 1, 5, 1, 2), nn.Conv2d(1, 1, 3, 2, 0), nn.MaxPool2d(2, 2),
                       nn.MaxPool2d(2, 2, ceil_mode=True), nn.MaxPool2d(3, 2, 1, ceil_mode=True)):
            k, s, p = (module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0],
                       module.stride if isinstance(module.stride, int) else module.stride[0],
                       module.padding if isinstance(module.padding, int) else module.padding[0])
            expected = module(torch.zeros(1, 1, size, size)).shape[-1]
            assert conv_output_size(size, k, s, p, ceil_mode=getattr(module, "ceil_mode", False)) == expected


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("size", [32, 28])
def test_fully_convolutional_cnn_gives_the_same_outputs(batch_norm, size):
    torch.manual_seed(0)
    cnn = CourseCNN(batch_norm=batch_norm, dropout=0.5)
    if batch_norm:  # non-trivial running statistics
        cnn.train()
        cnn(torch.rand(16, 3, 32, 32))
    cnn.eval()
    fcn = to_fully_convolutional(cnn).eval()
    assert isinstance(fcn, FullyConvolutionalCNN)
    assert sum(p.numel() for p in fcn.parameters()) == sum(p.numel() for p in cnn.parameters())
    x = torch.rand(5, 3, size, size)
    out = fcn(x)
    assert out.shape == (5, 10, 1, 1)
    torch.testing.assert_close(out.flatten(1), cnn(x), atol=1e-5, rtol=1e-5)


def test_fully_convolutional_cnn_returns_a_spatial_map_of_class_scores_on_larger_images():
    torch.manual_seed(0)
    cnn = CourseCNN().eval()
    fcn = to_fully_convolutional(cnn).eval()
    big = torch.rand(2, 3, 64, 64)
    scores = fcn(big)
    assert scores.shape == (2, 10, 5, 5)  # 64 -> 8x8 feature map -> 5x5 windows of 4x4
    with pytest.raises(ValueError, match="fully-convolutional"):
        cnn(big)
    # reference: slide the original fc4/fc5 (Linear layers) over every 4x4 window of the feature map
    features = cnn.features(big)
    for i in range(5):
        for j in range(5):
            window = features[:, :, i : i + 4, j : j + 4].flatten(1)
            expected = cnn.fc5(torch.relu(cnn.fc4(window)))
            torch.testing.assert_close(scores[:, :, i, j], expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="CourseCNN"):
        to_fully_convolutional(nn.Linear(2, 2))


def test_analysis_works_for_the_other_models_of_the_project():
    from dlvision.models import MLP

    mlp = MLP(in_features=2, hidden=(10,), num_classes=2)
    layers = analyse(mlp, (2,))
    assert sum(layer.params for layer in layers) == sum(p.numel() for p in mlp.parameters())
    assert all(layer.receptive_field == "-" for layer in layers)


def test_summary_command_prints_the_table_for_a_config(capsys, tmp_path, monkeypatch):
    from dlvision.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["summary", "--config", str(ROOT / "configs/cnn.yaml")]) == 0
    out = capsys.readouterr().out
    assert "CourseCNN on inputs of 3 x 32 x 32" in out and "total weights to learn: 1,191,170" in out
    assert "36x36" in out
    assert main(["summary", "--config", str(ROOT / "configs/cnn.yaml"), "--config", str(ROOT / "configs/cnn/batchnorm.yaml"),
                 "--input-size", "3", "64", "64", "--fcn"]) == 0
    out = capsys.readouterr().out
    assert "BatchNorm2d" in out and "10 x 5 x 5" in out
    assert main(["summary", "--config", str(ROOT / "configs/mnist_mlp.yaml")]) == 0
    assert "MLP on inputs of" in capsys.readouterr().out
    assert main(["summary"]) == 2
