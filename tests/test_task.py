import math

import pytest
import torch
from lightning import Trainer
from torch import nn

from dlvision import Classifier
from dlvision.data import CirclesDataModule
from dlvision.models import MLP


class FixedLogits(nn.Module):
    """A 'network' whose logits are a fixed function of the input: x itself (N x classes)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x * self.scale


def trainer(**kwargs) -> Trainer:
    return Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                   enable_checkpointing=False, **kwargs)


def test_metrics_match_a_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(50, 8)
    labels = torch.randint(0, 8, (50,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(logits, labels), batch_size=16)
    model = Classifier(FixedLogits(8))
    result = trainer().validate(model, loader, verbose=False)[0]
    expected_loss = -torch.log_softmax(logits, 1)[torch.arange(50), labels].mean().item()
    expected_acc = (logits.argmax(1) == labels).float().mean().item()
    expected_top5 = sum(labels[i] in logits[i].topk(5).indices for i in range(50)) / 50
    assert result["val/loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert result["val/acc"] == pytest.approx(expected_acc)
    assert result["val/acc_top5"] == pytest.approx(expected_top5)
    result = trainer().test(model, loader, verbose=False)[0]
    assert result["test/acc"] == pytest.approx(expected_acc)


def test_no_top5_with_five_classes_or_fewer():
    model = Classifier(FixedLogits(2))
    model.val_metrics.update(torch.randn(4, 2), torch.tensor([0, 1, 1, 0]))
    assert set(model.val_metrics.compute()) == {"val/acc"}


@pytest.mark.parametrize("num_classes", [2, 10, 100])
def test_accuracy_equals_torchmetrics_multiclass_accuracy(num_classes):
    from torchmetrics.classification import MulticlassAccuracy

    from dlvision.tasks.classification import TopKAccuracy

    torch.manual_seed(num_classes)
    ours = TopKAccuracy(num_classes, "val/")
    top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
    top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")
    for n in (7, 64, 33):
        logits, labels = torch.randn(n, num_classes), torch.randint(0, num_classes, (n,))
        ours.update(logits, labels)
        top1.update(logits, labels)
        top5.update(logits, labels)
    result = ours.compute()
    assert result["val/acc"].item() == pytest.approx(top1.compute().item())
    if num_classes > 5:
        assert result["val/acc_top5"].item() == pytest.approx(top5.compute().item())


def test_predict_returns_class_probabilities():
    logits = torch.randn(10, 3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(logits, torch.zeros(10, dtype=torch.long)), batch_size=4)
    probs = torch.cat(trainer().predict(Classifier(FixedLogits(3)), loader))
    torch.testing.assert_close(probs, logits.softmax(1))


def test_training_logs_every_metric_name_and_learns():
    dm = CirclesDataModule(n_train=200, n_test=100, batch_size=10, val_size=0)
    torch.manual_seed(0)
    model = Classifier(MLP(2, [10], 2, init_std=0.3), optimizer=lambda p: torch.optim.SGD(p, lr=0.3))
    t = trainer(max_epochs=30)
    first = trainer().validate(model, dm, verbose=False)[0]["val/acc"]
    t.fit(model, dm)
    metrics = t.callback_metrics
    for name in ("train/loss", "train/acc", "val/loss", "val/acc", "train/lr", "train/loss_step"):
        assert name in metrics, name
    assert metrics["train/lr"].item() == pytest.approx(0.3)
    assert metrics["val/acc"].item() > max(first, 0.8)


def test_plateau_scheduler_gets_its_monitor():
    model = Classifier(
        FixedLogits(3),
        scheduler=lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt),
        scheduler_monitor="val/acc",
    )
    config = model.configure_optimizers()
    assert config["lr_scheduler"]["monitor"] == "val/acc"
    assert isinstance(config["optimizer"], torch.optim.SGD)


def test_class_count_mismatch_between_net_and_data_is_reported():
    dm = CirclesDataModule(n_train=20, n_test=10, val_size=0)
    with pytest.raises(ValueError, match="outputs 3 classes but CirclesDataModule has 2"):
        trainer(max_epochs=1).fit(Classifier(MLP(2, [4], 3)), dm)


def test_net_without_class_count_needs_it_explicitly():
    with pytest.raises(ValueError, match="num_classes"):
        Classifier(nn.Linear(2, 2))
    assert Classifier(nn.Linear(2, 4), num_classes=4).num_classes == 4


def test_channels_last_gives_the_same_outputs_and_compile_is_applied_in_place(monkeypatch):
    from dlvision.models import CourseCNN

    torch.manual_seed(0)
    plain = Classifier(CourseCNN()).eval()
    nhwc = Classifier(CourseCNN(), channels_last=True).eval()
    nhwc.net.load_state_dict(plain.net.state_dict())
    assert nhwc.net.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(nhwc(x), plain(x), rtol=1e-4, atol=1e-5)
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    model = Classifier(CourseCNN(), compile=True)
    assert compiled == [model.net]
    assert set(model.net.state_dict()) == set(plain.net.state_dict())


class ColumnLogits(nn.Module):
    """Images (N, 1, H, 4) to logits: the first row weighted by column, so a mirror image changes them."""

    num_classes = 4

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x[:, 0, 0, :] * torch.tensor([1.0, 2.0, 3.0, 4.0]) * self.scale


def test_label_smoothing_loss_matches_the_reference_and_bad_values_fail():
    torch.manual_seed(0)
    logits, labels = torch.randn(40, 8), torch.randint(0, 8, (40,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(logits, labels), batch_size=16)
    result = trainer().validate(Classifier(FixedLogits(8), label_smoothing=0.1), loader, verbose=False)[0]
    # smoothed target: 0.9 on the label + 0.1 spread over all 8 classes
    log_p = torch.log_softmax(logits, 1)
    expected = -(0.9 * log_p[torch.arange(40), labels] + 0.1 * log_p.mean(1)).mean().item()
    assert result["val/loss"] == pytest.approx(expected, rel=1e-5)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="label_smoothing must be in"):
            Classifier(FixedLogits(8), label_smoothing=bad)


def test_tta_flip_evaluates_the_mean_of_image_and_mirror_image():
    torch.manual_seed(0)
    images, labels = torch.randn(12, 1, 3, 4), torch.randint(0, 4, (12,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=5)
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0])
    expected = (images[:, 0, 0, :] * weights + images[:, 0, 0, :].flip(-1) * weights) / 2
    model = Classifier(ColumnLogits(), tta_flip=True)
    result = trainer().test(model, loader, verbose=False)[0]
    assert result["test/acc"] == pytest.approx((expected.argmax(1) == labels).float().mean().item())
    assert result["test/loss"] == pytest.approx(nn.functional.cross_entropy(expected, labels).item(), rel=1e-5)
    probs = torch.cat(trainer().predict(model, loader))
    torch.testing.assert_close(probs, expected.softmax(1))
    # training steps see the images as they are
    torch.testing.assert_close(model(images), images[:, 0, 0, :] * weights)
    with pytest.raises(ValueError, match="tta_flip needs image batches"):
        model.evaluate(torch.randn(3, 4))
