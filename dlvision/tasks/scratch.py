"""Chapter 1: the tanh MLP trained four ways, from hand-written back-propagation to ``torch.optim``.

COURSE.md section 1 writes the same network and the same SGD four times, each time handing one
more piece to PyTorch. ``ScratchClassifier(impl=...)`` holds the four, so that one config switch
selects them and every other part (data, metrics, logging, checkpoints, pictures) stays the same:

- ``manual``:   forward, softmax, cross-entropy, back-propagation and the SGD update all written
  here with tensor operations (``mlp_forward``, ``cross_entropy``, ``mlp_backward``, ``sgd_update``),
  under ``torch.no_grad()``: autograd never runs.
- ``autograd``: the same hand-written forward and loss; ``backward()`` computes the gradients; the
  SGD update is still written by hand (under ``no_grad``) and the gradients are zeroed after it.
- ``nn``:       the network is ``nn.Sequential(Linear, Tanh, Linear)`` (``dlvision.models.MLP``),
  the loss ``nn.CrossEntropyLoss`` on the logits (softmax only for display); the update by hand.
- ``optim``:    the same with ``torch.optim.SGD``: this is ``dlvision.Classifier`` unchanged.

The parameters always live in the ``nn.Linear`` layers of the MLP (``W`` is ``layer.weight``,
n_out x n_in, exactly the course's Wₕ (n_h x n_x) and Wᵧ (n_y x n_h)), so the four start from the
same numbers from the same seed, and give the same losses and parameters step after step.

The loss of a batch is the mean of the per-sample losses (as ``nn.CrossEntropyLoss``), so the
course's per-sample gradient ∇ỹ = ŷ − y becomes (ŷ − y) / N for a batch of N rows.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from dlvision.tasks.classification import Classifier, default_optimizer

IMPLEMENTATIONS = ("manual", "autograd", "nn", "optim")
Implementation = Literal["manual", "autograd", "nn", "optim"]


# ----- the maths of COURSE.md section 1, as plain functions on tensors ----------------------------
# Shapes: x is (N, n_x); weights[l] is (n_out, n_in) and biases[l] is (n_out,), as in nn.Linear.
# With one hidden layer, weights = [Wₕ, Wᵧ] and biases = [bₕ, bᵧ]; hiddens = [h].


def mlp_forward(
    x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """h̃ = x Wₕᵀ + bₕ, h = tanh(h̃), ..., ỹ = h Wᵧᵀ + bᵧ. Returns the hidden activations and ỹ.

    The activations ``h`` of every hidden layer are kept: the backward pass needs them.
    """
    hiddens = []
    h = x
    for W, b in zip(weights[:-1], biases[:-1]):
        h_tilde = h @ W.T + b
        h = torch.tanh(h_tilde)
        hiddens.append(h)
    y_tilde = h @ weights[-1].T + biases[-1]
    return hiddens, y_tilde


def softmax(y_tilde: torch.Tensor) -> torch.Tensor:
    """ŷᵢ = exp(ỹᵢ) / Σⱼ exp(ỹⱼ), row by row (the maximum is subtracted first: same value, no overflow)."""
    z = y_tilde - y_tilde.max(dim=1, keepdim=True).values
    e = torch.exp(z)
    return e / e.sum(dim=1, keepdim=True)


def cross_entropy(y_tilde: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """l = −Σᵢ yᵢ ỹᵢ + log Σᵢ exp(ỹᵢ) for one-hot rows ``y``, averaged over the batch."""
    m = y_tilde.max(dim=1, keepdim=True).values
    log_sum_exp = m.squeeze(1) + torch.log(torch.exp(y_tilde - m).sum(dim=1))
    return (-(y * y_tilde).sum(dim=1) + log_sum_exp).mean()


def accuracy(y_tilde: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose largest output is the true class."""
    return (y_tilde.argmax(dim=1) == labels).double().mean()


def mlp_backward(
    x: torch.Tensor,
    hiddens: list[torch.Tensor],
    y_hat: torch.Tensor,
    y: torch.Tensor,
    weights: list[torch.Tensor],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Back-propagation by hand: the gradients of the mean cross-entropy for every W and b.

    With one hidden layer these are the course's formulas (for a batch of N rows, see the module
    docstring for the 1/N): ∇ỹ = (ŷ − y)/N; ∇Wᵧ = ∇ỹᵀ h; ∇bᵧ = Σ ∇ỹ; ∇h̃ = (1 − h²) ⊙ (∇ỹ Wᵧ);
    ∇Wₕ = ∇h̃ᵀ x; ∇bₕ = Σ ∇h̃. Deeper tanh networks repeat the last three lines layer by layer.
    """
    grad = (y_hat - y) / x.shape[0]  # ∇ỹ: the gradient with respect to the last pre-activation
    inputs = [x, *hiddens]  # the input of each linear layer: x, then every h
    grad_weights: list[torch.Tensor] = [torch.empty(0)] * len(weights)
    grad_biases: list[torch.Tensor] = [torch.empty(0)] * len(weights)
    for layer in reversed(range(len(weights))):
        grad_weights[layer] = grad.T @ inputs[layer]  # ∇W = ∇(pre-activation)ᵀ · (layer input)
        grad_biases[layer] = grad.sum(dim=0)  # ∇b = Σ over the batch
        if layer > 0:
            h = inputs[layer]
            grad = (1 - h**2) * (grad @ weights[layer])  # ∇h̃ = (1 − h²) ⊙ (∇(next) W), tanh' = 1 − tanh²
    return grad_weights, grad_biases


def sgd_update(params: list[torch.Tensor], grads: list[torch.Tensor], lr: float) -> None:
    """Plain SGD, in place: p ← p − η ∇p (call it under ``torch.no_grad()``)."""
    for p, g in zip(params, grads):
        p -= lr * g


def mlp_layers(net: nn.Module) -> list[nn.Linear]:
    """The Linear layers of a tanh MLP (``dlvision.models.MLP``), checking that it is one.

    ``manual`` and ``autograd`` rewrite the forward pass (and ``manual`` the backward pass) of
    exactly this structure: [Flatten] -> (Linear -> Tanh) * k -> Linear.
    """
    modules = [m for m in net.children() if not isinstance(m, nn.Flatten)] if isinstance(net, nn.Sequential) else []
    linears = modules[0::2]
    activations = modules[1::2]
    if (
        len(modules) % 2 != 1
        or not all(type(m) is nn.Linear for m in linears)
        or not all(isinstance(m, nn.Tanh) for m in activations)
    ):
        raise ValueError(
            f"impl=manual and impl=autograd write the forward pass of a tanh MLP by hand, "
            f"[Flatten] -> (Linear -> Tanh)* -> Linear (dlvision.models.MLP with activation: tanh); "
            f"got {type(net).__name__}: {[type(m).__name__ for m in net.children()]}. "
            f"Use impl: nn or impl: optim for other networks"
        )
    return linears


class StepCounter(torch.optim.Optimizer):
    """The optimizer Lightning sees when the update is written by hand: it holds the learning rate
    (read at every step, logged as ``train/lr``), and its ``step()`` changes nothing.

    Calling it after the hand-written update is what makes Lightning count the step (global step,
    logging every n steps, ``max_steps``, checkpoint names) under manual optimization.
    """

    def __init__(self, params, lr: float) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        return closure() if closure is not None else None


class ScratchClassifier(Classifier):
    """``dlvision.Classifier`` whose training step is written in one of four ways (``impl``).

    ``impl: optim`` is the Classifier as it is (automatic optimization, any optimizer and
    scheduler). ``manual``, ``autograd`` and ``nn`` write plain SGD by hand (Lightning's manual
    optimization): they take the learning rate from ``optimizer``, which must then be
    ``torch.optim.SGD`` without momentum or weight decay, and no scheduler. ``manual`` and
    ``autograd`` need a tanh MLP (``dlvision.models.MLP``); ``nn`` takes any network.
    Validation, test and prediction are shared (``manual``/``autograd`` through the hand-written
    forward pass).
    """

    def __init__(
        self,
        net: nn.Module,
        impl: Implementation = "optim",
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        scheduler_monitor: str = "val/loss",
        num_classes: int | None = None,
        steps_per_execution: int = 1,
    ) -> None:
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"unknown impl {impl!r}: choose one of {', '.join(IMPLEMENTATIONS)}")
        if impl in ("manual", "autograd"):
            mlp_layers(net)  # fails now, with the reason, if the network is not a tanh MLP
        lr = None if impl == "optim" else self._plain_sgd_lr(impl, optimizer, scheduler)
        super().__init__(net, optimizer, scheduler, scheduler_interval, scheduler_monitor, num_classes,
                         steps_per_execution=steps_per_execution)
        self.impl = impl
        self.lr = lr
        self.automatic_optimization = impl == "optim" and steps_per_execution == 1

    @staticmethod
    def _plain_sgd_lr(impl: str, optimizer: OptimizerCallable, scheduler: LRSchedulerCallable | None) -> float:
        """The learning rate of the configured optimizer, which must be plain SGD."""
        hand = f"impl={impl} writes plain SGD by hand"
        if scheduler is not None:
            raise ValueError(f"{hand} with a constant learning rate: remove the scheduler or use impl: optim")
        probe = optimizer([nn.Parameter(torch.zeros(1))])
        if type(probe) is not torch.optim.SGD:
            raise ValueError(
                f"{hand}: the optimizer only gives the learning rate and must be torch.optim.SGD, "
                f"got {type(probe).__name__} (use impl: optim to train with it)"
            )
        group = probe.param_groups[0]
        extras = {k: group.get(k) for k in ("momentum", "weight_decay", "nesterov", "maximize") if group.get(k)}
        if extras:
            raise ValueError(f"{hand} without {', '.join(extras)}: got {extras} (use impl: optim for them)")
        lr = float(group["lr"])
        if not lr > 0:
            raise ValueError(f"the learning rate must be > 0, got {lr}")
        return lr

    # ----- the parameters under the course's names ------------------------------------------------
    def weights_and_biases(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """[Wₕ, ..., Wᵧ] and [bₕ, ..., bᵧ]: the tensors of the MLP's Linear layers themselves."""
        layers = mlp_layers(self.net)
        return [layer.weight for layer in layers], [layer.bias for layer in layers]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.impl in ("manual", "autograd"):
            weights, biases = self.weights_and_biases()
            x = x.flatten(1)
            if x.shape[1] != weights[0].shape[1]:
                raise ValueError(
                    f"the MLP expects {weights[0].shape[1]} input features per sample, got {x.shape[1]}: "
                    f"set model.init_args.net.init_args.in_features"
                )
            return mlp_forward(x, weights, biases)[1]
        return self.net(x)

    # ----- training ---------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.impl != "optim" and self.trainer.world_size > 1:
            raise ValueError(
                f"impl={self.impl} updates the parameters by hand on one device; "
                f"train on {self.trainer.world_size} devices with impl: optim"
            )

    def configure_optimizers(self):
        if self.impl == "optim":
            return super().configure_optimizers()
        return StepCounter(self.parameters(), lr=self.lr)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        if self.impl == "optim" or self.steps_per_execution > 1:
            return super().training_step(batch, batch_idx)
        x, y = batch
        y_tilde, loss = self.hand_written_step(x, y)
        self.record_step("train", y_tilde, y, loss)
        self.optimizers().step()  # changes nothing: lets Lightning count the step
        return loss

    def manual_training_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.impl == "optim":
            return super().manual_training_step(x, y)
        y_tilde, loss = self.hand_written_step(x, y)
        self.optimizers().step()
        return y_tilde, loss

    def hand_written_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step the ``impl`` way; returns the logits and the loss of the batch."""
        lr = self.optimizers().param_groups[0]["lr"]
        if self.impl == "manual":
            y_tilde, loss = self.manual_step(x, y, lr)
        elif self.impl == "autograd":
            y_tilde, loss = self.autograd_step(x, y, lr)
        else:
            y_tilde, loss = self.nn_step(x, y, lr)
        return y_tilde, loss

    @torch.no_grad()  # 1. everything by hand: autograd is off for the whole step
    def manual_step(self, x: torch.Tensor, labels: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        weights, biases = self.weights_and_biases()
        x = x.flatten(1)
        hiddens, y_tilde = mlp_forward(x, weights, biases)  # = self(x), keeping the hidden activations
        y = F.one_hot(labels, self.num_classes).to(y_tilde.dtype)
        y_hat = softmax(y_tilde)
        loss = cross_entropy(y_tilde, y)
        grad_weights, grad_biases = mlp_backward(x, hiddens, y_hat, y, weights)
        sgd_update(weights + biases, grad_weights + grad_biases, lr)
        return y_tilde, loss

    def autograd_step(self, x: torch.Tensor, labels: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        # 2. the same forward and loss, the gradients from autograd
        weights, biases = self.weights_and_biases()
        _, y_tilde = mlp_forward(x.flatten(1), weights, biases)
        y = F.one_hot(labels, self.num_classes).to(y_tilde.dtype)
        loss = cross_entropy(y_tilde, y)
        self.manual_backward(loss)  # loss.backward(), through Lightning (precision plugins)
        with torch.no_grad():
            params = weights + biases
            sgd_update(params, [p.grad for p in params], lr)
            for p in params:
                p.grad.zero_()
        return y_tilde.detach(), loss.detach()

    def nn_step(self, x: torch.Tensor, labels: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        # 3. torch.nn: the Sequential and nn.CrossEntropyLoss on the logits; the update by hand
        y_tilde = self.net(x)
        loss = self.criterion(y_tilde, labels)
        self.manual_backward(loss)
        with torch.no_grad():
            for p in self.net.parameters():
                if p.grad is not None:
                    p -= lr * p.grad
        self.net.zero_grad()
        return y_tilde.detach(), loss.detach()
