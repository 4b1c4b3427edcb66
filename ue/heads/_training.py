"""The fitting loop shared by ALIEN and AdUE (arXiv 2505.15443; defaults from the authors' code).

Adam without weight decay, OneCycle stepped per batch (10% warm-up, cosine, div 25, final div 1e4),
batch 128, float32, shuffled with a fixed seed. Loss = ``BCE(U, e) + alpha * mean((U - anchor)^2)
+ beta * sum ||theta - theta_init||^2``. The epoch kept is the one with the best validation ROC-AUC;
only the ``val`` arrays passed here take part in selection, so a test split never can. With
``patience`` (the authors train up to 50 epochs and stop once val ROC-AUC has not improved for 5),
training ends early; the one-cycle schedule still spans all ``epochs``, so a stopped fit is the same
trajectory as the full one, cut short.

Unlike the reference code, the cached features are held as one float32 tensor and batches are
gathered with a seeded permutation instead of a DataLoader over float64 rows: the same math and
sampling scheme, without per-row collation. The optimiser is :class:`AdamOneCycle`, which applies
the updates of ``torch.optim.Adam`` under ``OneCycleLR`` to one flat parameter vector, with the
L2-SP gradient ``2 beta (theta - theta_init)`` added to it directly instead of through autograd
(tested against the torch pair in ``tests/ue/test_head_training.py``). A step is a few dozen small
ops, so its cost is mostly per-op overhead: the gradients accumulate straight into one flat buffer
(no per-step ``cat``), the L2-SP drift reuses a preallocated buffer, and the Adam update is one
fused kernel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ue.metrics import roc_auc

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class FitResult:
    """What a fit kept: the selected state and the per-epoch history."""

    state: dict[str, torch.Tensor]
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)


def score_rows(module: nn.Module, score_fn: ScoreFn, hidden: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Eval-mode scores (n,) of hidden states (n, d), computed in chunks without autograd."""
    was_training = module.training
    module.eval()
    with torch.inference_mode():
        out = torch.cat([score_fn(module(hidden[i : i + chunk])) for i in range(0, len(hidden), chunk)])
    module.train(was_training)
    return out


class AdamOneCycle:
    """Adam without weight decay under a one-cycle schedule, on parameters viewed as one flat vector.

    Applies exactly the updates of ``torch.optim.Adam(params, lr)`` stepped with
    ``torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps, pct_start, anneal_strategy="cos",
    div_factor, final_div_factor)`` (its defaults cycle Adam's beta1 between 0.95 and 0.85), in one
    fused kernel per step. Constructing ``torch.optim`` objects imports ``torch._dynamo``
    (1.5-2 s in every fresh Ray worker); this class needs none of it.

    The parameters become views into :attr:`flat` and their ``.grad`` views into :attr:`grad`, so
    autograd accumulates every gradient into that one vector (zero it with :meth:`zero_grad`).
    The update is ``torch._fused_adam_``, the kernel behind ``torch.optim.Adam(fused=True)``.
    """

    betas = (0.95, 0.85)  # beta1 at the ends and at the peak of the cycle (OneCycleLR's momentum bounds)
    beta2, eps = 0.999, 1e-8

    def __init__(
        self, params: list[torch.Tensor], *, lr: float, total_steps: int, pct_start: float = 0.1,
        div_factor: float = 25.0, final_div_factor: float = 1e4,
    ) -> None:
        self.params = params
        self.flat = torch.cat([p.detach().reshape(-1) for p in params])
        self.grad = torch.zeros_like(self.flat)
        offset = 0
        for p in params:
            p.data = self.flat[offset : offset + p.numel()].view_as(p)
            p.grad = self.grad[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        self.exp_avg = torch.zeros_like(self.flat)
        self.exp_avg_sq = torch.zeros_like(self.flat)
        self._step = torch.zeros((), dtype=torch.float32)  # the fused kernel reads the step count as a tensor
        self.steps_done = 0
        self.cycle = OneCycle(lr=lr, total_steps=total_steps, pct_start=pct_start, div_factor=div_factor,
                              final_div_factor=final_div_factor)

    def zero_grad(self) -> None:
        """Zero :attr:`grad` (and so every parameter's ``.grad``) before the next backward pass."""
        self.grad.zero_()

    def release(self) -> None:
        """Give every parameter its own storage again and drop the ``.grad`` views."""
        for p in self.params:
            p.data = p.data.clone()
            p.grad = None

    def schedule(self, step: int) -> tuple[float, float]:
        """(lr, beta1) of the update after ``step`` earlier updates (see :meth:`OneCycle.schedule`)."""
        return self.cycle.schedule(step)

    def step(self) -> None:
        """One Adam update of :attr:`flat` with the gradient in :attr:`grad`."""
        lr, beta1 = self.schedule(self.steps_done)
        self.steps_done += 1
        self._step.fill_(self.steps_done)
        fused_adam_step(self.flat, self.grad, self.exp_avg, self.exp_avg_sq, self._step, lr=lr, beta1=beta1)


def fused_adam_step(
    flat: torch.Tensor | list[torch.Tensor], grad: torch.Tensor | list[torch.Tensor],
    exp_avg: torch.Tensor | list[torch.Tensor], exp_avg_sq: torch.Tensor | list[torch.Tensor],
    step: torch.Tensor | list[torch.Tensor], *, lr: float, beta1: float,
) -> None:
    """One in-place Adam update of the contiguous vector(s) ``flat`` (``step``: updates so far, this
    one included); a list updates each vector with the same lr and beta1, each exactly as alone."""
    def listed(x: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
        return x if isinstance(x, list) else [x]

    torch._fused_adam_(
        listed(flat), listed(grad), listed(exp_avg), listed(exp_avg_sq), [], listed(step), lr=lr, beta1=beta1,
        beta2=AdamOneCycle.beta2, weight_decay=0.0, eps=AdamOneCycle.eps, amsgrad=False, maximize=False,
    )


class OneCycle:
    """The lr and beta1 of ``OneCycleLR(max_lr=lr, total_steps, pct_start, anneal_strategy="cos", div_factor,
    final_div_factor)`` at every step, without a torch optimiser."""

    def __init__(
        self, *, lr: float, total_steps: int, pct_start: float = 0.1, div_factor: float = 25.0,
        final_div_factor: float = 1e4,
    ) -> None:
        self.lr, self.total_steps = lr, total_steps
        self.start_lr = lr / div_factor
        self.final_lr = self.start_lr / final_div_factor
        self.peak = float(pct_start * total_steps) - 1  # the warm-up's last step, as OneCycleLR places it

    def schedule(self, step: int) -> tuple[float, float]:
        """(lr, beta1) of the update after ``step`` earlier updates.

        Warm-up from ``lr / div_factor`` to ``lr`` over steps 0..peak, then annealing to the final lr
        by step ``total_steps - 1``. OneCycleLR divides by zero when the warm-up ends at step 0
        (e.g. 10 steps with ``pct_start = 0.1``); here that step is the peak.
        """
        if step > self.total_steps:
            raise ValueError(f"step {step} past the schedule's {self.total_steps} steps")
        high, low = AdamOneCycle.betas
        if step <= self.peak:
            pct = step / self.peak if self.peak > 0 else 1.0
            return _cos_anneal(self.start_lr, self.lr, pct), _cos_anneal(high, low, pct)
        pct = (step - self.peak) / (self.total_steps - 1 - self.peak)
        return _cos_anneal(self.lr, self.final_lr, pct), _cos_anneal(low, high, pct)


def _cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def train_error_head(
    module: nn.Module,
    *,
    score_fn: ScoreFn,
    hidden: np.ndarray,
    errors: np.ndarray,
    anchor: np.ndarray,
    val_hidden: np.ndarray | None,
    val_errors: np.ndarray | None,
    alpha: float,
    beta: float,
    lr: float,
    epochs: int,
    batch_size: int,
    seed: int,
    patience: int | None = None,
    on_epoch: EpochCallback | None = None,
) -> FitResult:
    """Train ``module`` in place so that ``score_fn(module(h))`` predicts the error indicator.

    Shapes: hidden (n, d), errors (n,) in {0, 1}, anchor (n,) in [0, 1]; val arrays likewise.
    Returns the state dict of the selected epoch (the last one when no validation data is given or
    no epoch has a finite validation ROC-AUC). ``epochs = 0`` returns the initial state.
    ``patience``: stop after that many epochs in a row without a better validation ROC-AUC (counted
    from the first finite one, so it needs val arrays; None trains every epoch).
    """
    h = torch.as_tensor(np.ascontiguousarray(hidden), dtype=torch.float32)
    e = torch.as_tensor(errors, dtype=torch.float32)
    a = torch.as_tensor(anchor, dtype=torch.float32)
    vh = None if val_hidden is None else torch.as_tensor(np.ascontiguousarray(val_hidden), dtype=torch.float32)
    result = FitResult(state=_snapshot(module), best_epoch=0)
    if epochs == 0:
        return result
    steps = math.ceil(len(h) / batch_size)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = AdamOneCycle(params, lr=lr, total_steps=epochs * steps)
    init, drift = opt.flat.clone(), torch.empty_like(opt.flat)
    gen = torch.Generator().manual_seed(seed)
    best_auc = -math.inf
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout masks
        for epoch in range(1, epochs + 1):
            module.train()
            perm = torch.randperm(len(h), generator=gen)
            total = torch.zeros((), dtype=torch.float64)
            for i in range(steps):
                idx = perm[i * batch_size : (i + 1) * batch_size]
                u = score_fn(module(torch.index_select(h, 0, idx)))
                eb = torch.index_select(e, 0, idx)
                loss = nn.functional.binary_cross_entropy(u, eb)
                if alpha:
                    loss = loss + alpha * ((u - torch.index_select(a, 0, idx)) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                if beta:  # L2-SP: beta * ||theta - theta_init||^2, its gradient added by hand
                    torch.sub(opt.flat, init, out=drift)
                    opt.grad.add_(drift, alpha=2.0 * beta)
                    loss = loss.detach() + beta * torch.dot(drift, drift)
                opt.step()
                total += loss.detach() * len(idx)
            metrics = {"epoch": epoch, "train_loss": float(total) / len(h)}
            if vh is not None:
                metrics["val_roc_auc"] = roc_auc(score_rows(module, score_fn, vh).numpy(), val_errors)
                if math.isfinite(metrics["val_roc_auc"]) and metrics["val_roc_auc"] > best_auc:
                    best_auc = metrics["val_roc_auc"]
                    result.state, result.best_epoch = _snapshot(module), epoch
            result.history.append(metrics)
            if on_epoch is not None:
                on_epoch(epoch, metrics)
            if patience is not None and result.best_epoch and epoch - result.best_epoch >= patience:
                break
    if result.best_epoch == 0:
        result.state, result.best_epoch = _snapshot(module), epochs
    opt.release()
    return result


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
