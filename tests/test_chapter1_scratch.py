"""Chapter 1: the hand-written maths against autograd, and the four implementations against each other."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from lightning import Callback, Trainer, seed_everything

from dlvision.data import CirclesDataModule
from dlvision.models import MLP
from dlvision.tasks import ScratchClassifier
from dlvision.tasks.scratch import (
    IMPLEMENTATIONS,
    cross_entropy,
    mlp_backward,
    mlp_forward,
    mlp_layers,
    softmax,
)


def random_mlp(gen: torch.Generator, sizes: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    weights = [torch.randn(n_out, n_in, generator=gen, dtype=torch.float64) * 0.5 for n_in, n_out in zip(sizes, sizes[1:])]
    biases = [torch.randn(n_out, generator=gen, dtype=torch.float64) * 0.5 for n_out in sizes[1:]]
    return weights, biases


@pytest.mark.parametrize("trial", range(8))
def test_hand_gradients_equal_autograd_for_random_sizes(trial):
    gen = torch.Generator().manual_seed(trial)
    depth = 1 + trial % 3  # 1 hidden layer (the course) up to 3
    sizes = torch.randint(1, 13, (depth + 2,), generator=gen).tolist()
    sizes[-1] = max(2, sizes[-1])
    n = int(torch.randint(1, 33, (1,), generator=gen))
    weights, biases = random_mlp(gen, sizes)
    x = torch.randn(n, sizes[0], generator=gen, dtype=torch.float64) * 2
    labels = torch.randint(0, sizes[-1], (n,), generator=gen)
    y = F.one_hot(labels, sizes[-1]).double()

    hiddens, y_tilde = mlp_forward(x, weights, biases)
    grad_w, grad_b = mlp_backward(x, hiddens, softmax(y_tilde), y, weights)

    params = [p.clone().requires_grad_() for p in weights + biases]
    _, y_tilde_ag = mlp_forward(x, params[: len(weights)], params[len(weights):])
    loss = F.cross_entropy(y_tilde_ag, labels)
    loss.backward()
    assert torch.allclose(cross_entropy(y_tilde, y), loss.detach(), atol=1e-12)
    for hand, auto in zip(grad_w + grad_b, params):
        assert hand.shape == auto.shape
        assert torch.allclose(hand, auto.grad, rtol=1e-10, atol=1e-12)


def test_softmax_and_cross_entropy_are_stable_and_match_torch():
    y_tilde = torch.tensor([[1000.0, 0.0, -1000.0], [0.1, 0.2, 0.3]], dtype=torch.float64)
    labels = torch.tensor([1, 2])
    assert torch.allclose(softmax(y_tilde), y_tilde.softmax(1))
    assert torch.isfinite(cross_entropy(y_tilde, F.one_hot(labels, 3).double()))
    assert torch.allclose(cross_entropy(y_tilde, F.one_hot(labels, 3).double()), F.cross_entropy(y_tilde, labels))


class Recorder(Callback):
    """Loss and a copy of every parameter after each training step."""

    def __init__(self) -> None:
        self.losses, self.params = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))
        self.params.append([p.detach().clone() for p in pl_module.net.parameters()])


def circles(**kwargs) -> CirclesDataModule:
    return CirclesDataModule(n_train=40, n_test=40, batch_size=10, **kwargs)


def sgd(lr: float):
    return lambda params: torch.optim.SGD(params, lr=lr)


def fit(model, epochs: int, precision="64-true", callbacks=(), data=None, seed=7) -> Trainer:
    seed_everything(seed)  # the same shuffles for every implementation
    trainer = Trainer(max_epochs=epochs, precision=precision, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
                      num_sanity_val_steps=0, accelerator="cpu")
    trainer.fit(model, datamodule=data or circles())
    return trainer


def test_the_four_implementations_give_the_same_losses_and_parameters_step_after_step():
    torch.manual_seed(0)
    net = MLP(2, [10], 2, "tanh", init_std=0.3)
    records = {}
    for impl in IMPLEMENTATIONS:
        recorder = Recorder()
        model = ScratchClassifier(copy.deepcopy(net), impl=impl, optimizer=sgd(0.3))
        trainer = fit(model, epochs=3, callbacks=[recorder])
        assert trainer.global_step == 12  # 4 batches x 3 epochs: the hand-written steps are counted
        records[impl] = recorder
    ref = records["manual"]
    assert len(ref.losses) == 12
    assert ref.losses[-1] < ref.losses[0]  # it learns
    assert not torch.equal(ref.params[0][0], ref.params[-1][0])  # the parameters move
    for impl in ("autograd", "nn", "optim"):
        rec = records[impl]
        assert rec.losses == pytest.approx(ref.losses, rel=1e-12, abs=1e-13), impl
        for step, (mine, theirs) in enumerate(zip(rec.params, ref.params)):
            for a, b in zip(mine, theirs):
                assert a.dtype == torch.float64
                assert torch.allclose(a, b, rtol=1e-11, atol=1e-13), (impl, step)


def test_manual_never_calls_autograd(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("autograd ran in impl=manual")

    monkeypatch.setattr(torch.autograd, "backward", forbidden)
    model = ScratchClassifier(MLP(2, [6], 2, "tanh", init_std=0.3), impl="manual", optimizer=sgd(0.1))
    before = [p.detach().clone() for p in model.parameters()]
    fit(model, epochs=1, precision="32-true")
    assert all(p.grad is None for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # and the other implementations do use it
    with pytest.raises(AssertionError, match="autograd ran"):
        fit(ScratchClassifier(MLP(2, [6], 2), impl="autograd", optimizer=sgd(0.1)), epochs=1, precision="32-true")


@pytest.mark.parametrize("impl", ["manual", "autograd"])
def test_hand_written_forward_equals_the_network(impl):
    net = MLP(5, [7, 3], 4, "tanh")
    model = ScratchClassifier(net, impl=impl, optimizer=sgd(0.1)).eval()
    x = torch.randn(6, 5)
    assert torch.allclose(model(x), net(x), atol=1e-6)
    assert [layer.weight.shape for layer in mlp_layers(net)] == [(7, 5), (3, 7), (4, 3)]
    with pytest.raises(ValueError, match="expects 5 input features per sample, got 4"):
        model(torch.randn(2, 4))


def test_manual_learns_deeper_nets_and_images():
    """impl=manual is not limited to 2-D inputs or one hidden layer: flattened images, 2 hidden layers."""
    net = MLP(12, [8, 8], 3, "tanh", init_std=0.3)
    model = ScratchClassifier(net, impl="manual", optimizer=sgd(0.5))
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    images = torch.randn(60, 1, 3, 4, generator=gen) * 0.3
    images.view(60, -1)[torch.arange(60), labels * 4] += 2.0
    loss0 = F.cross_entropy(model(images), labels).item()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=10, shuffle=True)
    trainer = Trainer(max_epochs=15, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, loader)
    assert F.cross_entropy(model(images), labels).item() < 0.5 * loss0
    assert (model(images).argmax(1) == labels).float().mean() > 0.9


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"impl": "by_hand"}, "unknown impl 'by_hand'"),
        ({"impl": "manual", "net": MLP(2, [4], 2, "relu")}, "tanh MLP"),
        ({"impl": "autograd", "net": torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2))},
         "tanh MLP"),
        ({"impl": "manual", "optimizer": lambda p: torch.optim.Adam(p, lr=0.1)}, "must be torch.optim.SGD, got Adam"),
        ({"impl": "nn", "optimizer": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)}, "without momentum"),
        ({"impl": "autograd", "optimizer": lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=1e-4)},
         "without weight_decay"),
        ({"impl": "manual", "scheduler": lambda o: torch.optim.lr_scheduler.StepLR(o, 10)}, "remove the scheduler"),
        ({"impl": "manual", "optimizer": lambda p: torch.optim.SGD(p, lr=0.0)}, "must be > 0"),
    ],
)
def test_bad_options_are_rejected_with_a_clear_message(kwargs, match):
    kwargs = {"net": MLP(2, [4], 2, "tanh"), "optimizer": sgd(0.1), **kwargs}
    with pytest.raises(ValueError, match=match):
        ScratchClassifier(**kwargs)


def test_nn_and_optim_take_any_network():
    net = MLP(2, [4], 2, "relu")
    for impl in ("nn", "optim"):
        assert ScratchClassifier(copy.deepcopy(net), impl=impl, optimizer=sgd(0.1)).impl == impl
