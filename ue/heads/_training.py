"""The fitting loop shared by ALIEN and AdUE (arXiv 2505.15443; defaults from the authors' code).

Adam without weight decay, OneCycle stepped per batch (10% warm-up, cosine, div 25, final div 1e4),
batch 128, float32, shuffled with a fixed seed. Loss = ``BCE(U, e) + alpha * mean((U - anchor)^2)
+ beta * sum ||theta - theta_init||^2``. The epoch kept is the one with the best validation ROC-AUC;
only the ``val`` arrays passed here take part in selection, so a test split never can.

Unlike the reference code, the cached features are held as one float32 tensor and batches are
gathered with a seeded permutation instead of a DataLoader over float64 rows: the same math and
sampling scheme, without per-row collation.
"""

from __future__ import annotations

import copy
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


def _l2sp(params: list[torch.Tensor], init: list[torch.Tensor]) -> torch.Tensor:
    return sum(((p - p0) ** 2).sum() for p, p0 in zip(params, init, strict=True))


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
    on_epoch: EpochCallback | None = None,
) -> FitResult:
    """Train ``module`` in place so that ``score_fn(module(h))`` predicts the error indicator.

    Shapes: hidden (n, d), errors (n,) in {0, 1}, anchor (n,) in [0, 1]; val arrays likewise.
    Returns the state dict of the selected epoch (the last one when no validation data is given or
    no epoch has a finite validation ROC-AUC). ``epochs = 0`` returns the initial state.
    """
    h = torch.as_tensor(np.ascontiguousarray(hidden), dtype=torch.float32)
    e = torch.as_tensor(errors, dtype=torch.float32)
    a = torch.as_tensor(anchor, dtype=torch.float32)
    vh = None if val_hidden is None else torch.as_tensor(np.ascontiguousarray(val_hidden), dtype=torch.float32)
    params = [p for p in module.parameters() if p.requires_grad]
    init = [p.detach().clone() for p in params]
    result = FitResult(state=copy.deepcopy(module.state_dict()), best_epoch=0)
    if epochs == 0:
        return result
    steps = math.ceil(len(h) / batch_size)
    opt = torch.optim.Adam(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * steps, pct_start=0.1, anneal_strategy="cos",
        div_factor=25.0, final_div_factor=1e4,
    )
    gen = torch.Generator().manual_seed(seed)
    best_auc = -math.inf
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout masks
        for epoch in range(1, epochs + 1):
            module.train()
            perm = torch.randperm(len(h), generator=gen)
            total = 0.0
            for i in range(steps):
                idx = perm[i * batch_size : (i + 1) * batch_size]
                u = score_fn(module(h[idx]))
                loss = nn.functional.binary_cross_entropy(u, e[idx])
                if alpha:
                    loss = loss + alpha * ((u - a[idx]) ** 2).mean()
                if beta:
                    loss = loss + beta * _l2sp(params, init)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
            metrics = {"epoch": epoch, "train_loss": total / len(h)}
            if vh is not None:
                metrics["val_roc_auc"] = roc_auc(score_rows(module, score_fn, vh).numpy(), val_errors)
                if math.isfinite(metrics["val_roc_auc"]) and metrics["val_roc_auc"] > best_auc:
                    best_auc = metrics["val_roc_auc"]
                    result.state, result.best_epoch = copy.deepcopy(module.state_dict()), epoch
            result.history.append(metrics)
            if on_epoch is not None:
                on_epoch(epoch, metrics)
    if result.best_epoch == 0:
        result.state, result.best_epoch = copy.deepcopy(module.state_dict()), epochs
    return result
