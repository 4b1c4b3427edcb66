"""Packed fitting: K configurations of one trained head (ALIEN or AdUE, arXiv 2505.15443) in one loop.

A step of one fit is a few dozen small ops, so on a CPU its cost is mostly per-op overhead. A pack
holds the K heads' parameters stacked, (K, ...), and runs every layer for all of them in one batched
matmul (``torch.bmm`` / ``torch.baddbmm``), so a step costs about what one fit's step costs while K
heads train.

Each configuration keeps everything :func:`ue.heads._training.train_error_head` gives it alone:

- its own batches and dropout masks: configurations of the same ``seed`` draw one permutation per
  epoch (from ``torch.Generator().manual_seed(seed)``) and one dropout mask per layer and step (from
  a generator seeded like the global one of a single fit), and share them, exactly as K single fits
  of that seed would each draw them;
- its own Adam state, updated by the same fused kernel on its own contiguous row, under its own
  one-cycle schedule over its own ``epochs``;
- its own L2-SP anchor (its initial parameters), alpha, beta and lr;
- its own epoch selection on val ROC-AUC and its own ``patience``; a configuration that is done
  (its epochs, patience, or dropped by ``on_epoch``) leaves the pack, which shrinks.

The products and the loss's backward are written to round exactly as one fit's do (the weight
gradient as ``F.linear`` computes it, BCE's mean as ATen's), so on one machine a pack's parameters,
val ROC-AUC and chosen epochs are bit-identical to the separate fits (``tests/ue/test_packed.py``
asserts agreement to 1e-6, which other BLAS builds should also meet). ``train_loss`` adds the
L2-SP term to each config's loss as one fit does.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ue.heads._training import FitResult, OneCycle, ScoreFn, fused_adam_step
from ue.heads.modules import Classifier
from ue.metrics import roc_auc

PackCallback = Callable[[int, dict[int, dict[str, float]]], Collection[int] | None]
"""``on_epoch(epoch, {config index: metrics})`` after every epoch; returns the configs to stop now."""
_ACTIVATIONS = {"tanh": torch.tanh, "gelu": nn.functional.gelu, "relu": torch.relu}
_VAL_CHUNK = 8192


@dataclass(frozen=True)
class PackedConfig:
    """One configuration of a pack: the settings a single ``train_error_head`` call takes."""

    alpha: float
    beta: float
    lr: float
    epochs: int
    seed: int
    patience: int | None = None


def train_error_heads(
    modules: Sequence[Classifier],
    configs: Sequence[PackedConfig],
    *,
    score_fn: ScoreFn,
    hidden: np.ndarray,
    errors: np.ndarray,
    anchor: np.ndarray,
    val_hidden: np.ndarray | None,
    val_errors: np.ndarray | None,
    batch_size: int,
    on_epoch: PackCallback | None = None,
) -> list[FitResult]:
    """Train K copies of one classification module together; result ``k`` is what
    ``train_error_head(modules[k], ..., **configs[k])`` returns (see the module docstring).

    Shapes: hidden (n, d), errors (n,) in {0, 1}, anchor (n,) in [0, 1]; val arrays likewise.
    ``modules``: the K initial modules (one spec, e.g. copies of the model's classifier, or random
    initialisations), left untouched. ``on_epoch`` may stop configurations (successive halving); a
    stopped one keeps its best epoch so far.
    """
    if len(modules) != len(configs) or not configs:
        raise ValueError(f"a pack needs one module per config, got {len(modules)} modules, {len(configs)} configs")
    specs = {m.spec for m in modules}
    if len(specs) != 1:
        raise ValueError(f"a pack trains one classifier architecture, got {len(specs)}: {sorted(map(str, specs))}")
    h = torch.as_tensor(np.ascontiguousarray(hidden), dtype=torch.float32)
    e = torch.as_tensor(errors, dtype=torch.float32)
    a = torch.as_tensor(anchor, dtype=torch.float32)
    vh = None if val_hidden is None else torch.as_tensor(np.ascontiguousarray(val_hidden), dtype=torch.float32)
    results = [FitResult(state=_module_state(m), best_epoch=0) for m in modules]
    live = [k for k, c in enumerate(configs) if c.epochs > 0]
    if not live:
        return results
    steps = math.ceil(len(h) / batch_size)
    pack = _Pack(modules[0].spec, live, [modules[k] for k in live], [configs[k] for k in live], steps)
    seeds = sorted({configs[k].seed for k in live})
    perm_gens = {s: torch.Generator().manual_seed(s) for s in seeds}
    mask_gens = {s: torch.Generator().manual_seed(s) for s in seeds}
    best = dict.fromkeys(live, -math.inf)
    last_epoch = dict.fromkeys(live, 0)
    for epoch in range(1, max(configs[k].epochs for k in live) + 1):
        group_seeds = sorted({configs[k].seed for k in pack.ids})
        perms = {s: torch.randperm(len(h), generator=perm_gens[s]) for s in group_seeds}
        group = torch.tensor([group_seeds.index(configs[k].seed) for k in pack.ids])
        totals = torch.zeros(len(pack.ids), dtype=torch.float64)
        for i in range(steps):
            idx = [perms[s][i * batch_size : (i + 1) * batch_size] for s in group_seeds]
            totals += pack.step(h, e, a, idx, group, score_fn, [mask_gens[s] for s in group_seeds]) * len(idx[0])
        val_scores = None if vh is None else pack.scores(vh, score_fn)
        metrics: dict[int, dict[str, float]] = {}
        for row, k in enumerate(pack.ids):
            m = {"epoch": epoch, "train_loss": float(totals[row]) / len(h)}
            if val_scores is not None:
                m["val_roc_auc"] = roc_auc(val_scores[row].numpy(), val_errors)
                if math.isfinite(m["val_roc_auc"]) and m["val_roc_auc"] > best[k]:
                    best[k] = m["val_roc_auc"]
                    results[k].state, results[k].best_epoch = pack.state(row), epoch
            results[k].history.append(m)
            last_epoch[k] = epoch
            metrics[k] = m
        dropped = set(on_epoch(epoch, metrics) or ()) if on_epoch is not None else set()
        done = [k for k in pack.ids if k in dropped or epoch == configs[k].epochs or _patience_out(
            configs[k].patience, results[k].best_epoch, epoch)]
        for k in done:
            if results[k].best_epoch == 0:
                results[k].state, results[k].best_epoch = pack.state(pack.ids.index(k)), last_epoch[k]
        pack.remove(done)
        if not pack.ids:
            break
    return results


def _patience_out(patience: int | None, best_epoch: int, epoch: int) -> bool:
    return patience is not None and best_epoch > 0 and epoch - best_epoch >= patience


def _module_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class _Pack:
    """The stacked parameters, gradients and Adam state of the configurations still training.

    Row ``r`` of :attr:`flat` is config ``ids[r]``'s parameters flattened in ``module.parameters()``
    order, as one fit's ``AdamOneCycle.flat`` holds them; each layer's weight is a (K, ...) view into
    it whose ``.grad`` is a view into :attr:`grad`, so backward accumulates there.
    """

    def __init__(
        self, spec: object, ids: list[int], modules: list[Classifier], configs: list[PackedConfig], steps: int
    ) -> None:
        self.spec = spec
        self.layout = [(name, tuple(p.shape)) for name, p in modules[0].named_parameters()]
        self.flat = torch.stack([torch.cat([p.detach().float().reshape(-1) for p in m.parameters()]) for m in modules])
        self.init = self.flat.clone()
        self.grad = torch.zeros_like(self.flat)
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(self.flat), torch.zeros_like(self.flat)
        self.ids = list(ids)
        self.configs = configs
        self.cycles = [OneCycle(lr=c.lr, total_steps=c.epochs * steps) for c in configs]
        self.steps_done = 0
        self._step = torch.zeros((), dtype=torch.float32)
        self._bind()

    def _bind(self) -> None:
        self.params: dict[str, torch.Tensor] = {}
        offset, k = 0, len(self.flat)
        for name, shape in self.layout:
            n = math.prod(shape)
            p = torch.zeros(())
            p.data = self.flat[:, offset : offset + n].view(k, *shape)
            p.requires_grad_(True)
            p.grad = self.grad[:, offset : offset + n].view(k, *shape)
            self.params[name] = p
            offset += n
        self.alpha = torch.tensor([c.alpha for c in self.configs], dtype=torch.float32)
        self.beta_t = torch.tensor([c.beta for c in self.configs], dtype=torch.float32)
        self.beta_groups = _groups({r: c.beta for r, c in enumerate(self.configs) if c.beta})
        by_cycle = _groups({r: (c.lr, c.epochs) for r, c in enumerate(self.configs)})
        self.cycle_groups = [(self.cycles[rows[0]], rows) for _, rows in by_cycle]
        self.row = {name: [getattr(self, name)[r] for r in range(k)] for name in ("flat", "grad", "exp_avg",
                                                                                   "exp_avg_sq")}

    def remove(self, ids: Collection[int]) -> None:
        """Drop configs ``ids`` (original indices) from the pack."""
        if not ids:
            return
        keep = [r for r, k in enumerate(self.ids) if k not in ids]
        self.ids = [self.ids[r] for r in keep]
        self.configs = [self.configs[r] for r in keep]
        self.cycles = [self.cycles[r] for r in keep]
        for name in ("flat", "init", "grad", "exp_avg", "exp_avg_sq"):
            setattr(self, name, getattr(self, name)[keep].clone())
        self._bind()

    def state(self, row: int) -> dict[str, torch.Tensor]:
        """Config ``ids[row]``'s state dict, copied."""
        return {name: self.params[name].detach()[row].clone() for name, _ in self.layout}

    def forward(
        self, x: torch.Tensor, group: torch.Tensor, masks: Callable[[], torch.Tensor] | None
    ) -> torch.Tensor:
        """Logits (K, B, C) of each seed group's inputs ``x`` (G, B, d), config ``r`` reading group
        ``group[r]``; ``masks()`` gives the next dropout mask per group (G, B, d); None: eval mode or
        no dropout."""
        spec, p, k = self.spec, self.params, len(self.ids)
        if spec.kind != "bert_pooler" and spec.input_dropout and masks is not None:
            x = x * masks()
        x = _per_config(x, group, k)
        if spec.kind != "linear":
            x = _ACTIVATIONS[spec.activation](_linear(x, p["dense.weight"], p["dense.bias"]))
            if masks is not None:
                x = x * _per_config(masks(), group, k)
        return _linear(x, p["out_proj.weight"], p.get("out_proj.bias"))

    def step(
        self, h: torch.Tensor, e: torch.Tensor, a: torch.Tensor, idx: list[torch.Tensor], group: torch.Tensor,
        score_fn: ScoreFn, gens: list[torch.Generator],
    ) -> torch.Tensor:
        """One training step of every config on its seed group's batch ``idx[group[r]]``; returns each
        config's float32 loss (K,) at the parameters before the update."""
        k, rows = len(self.ids), len(idx[0])
        x = torch.stack([torch.index_select(h, 0, i) for i in idx])
        eb = _per_config(torch.stack([torch.index_select(e, 0, i) for i in idx]), group, k)
        ab = _per_config(torch.stack([torch.index_select(a, 0, i) for i in idx]), group, k)
        p = self.spec.dropout

        def masks() -> torch.Tensor:
            # nn.Dropout on CPU: bernoulli_(1 - p) on a tensor of the input's shape, divided by 1 - p.
            drawn = torch.stack([torch.empty(rows, x.shape[-1]).bernoulli_(1 - p, generator=g) for g in gens])
            return drawn.div_(1 - p)

        u = score_fn(self.forward(x, group, masks if p > 0 else None))
        bce = _BCEMean.apply(u, eb)
        loss = bce + self.alpha * ((u - ab) ** 2).mean(1)
        self.grad.zero_()
        with warnings.catch_warnings():
            # The (K, ...) gradient views are strided by a config's row: by design, not a slow path here.
            warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")
            loss.sum().backward()
        loss = loss.detach()
        # L2-SP: the gradient 2 beta (theta - theta_init) added by hand, as in one fit; one foreach
        # call per distinct beta, one fused Adam call per distinct (lr, epochs): the same kernels on
        # the same rows as K separate calls, at a fraction of the dispatches.
        drift = self.flat - self.init
        loss = loss + self.beta_t * (drift * drift).sum(1)
        grad, flat, exp_avg, exp_avg_sq = (self.row[n] for n in ("grad", "flat", "exp_avg", "exp_avg_sq"))
        for beta, rows in self.beta_groups:
            torch._foreach_add_([grad[r] for r in rows], list(drift[rows].unbind()), alpha=2.0 * beta)
        self._step.fill_(self.steps_done + 1)
        for cycle, rows in self.cycle_groups:
            lr, beta1 = cycle.schedule(self.steps_done)
            fused_adam_step([flat[r] for r in rows], [grad[r] for r in rows], [exp_avg[r] for r in rows],
                            [exp_avg_sq[r] for r in rows], [self._step] * len(rows), lr=lr, beta1=beta1)
        self.steps_done += 1
        return loss

    def scores(self, hidden: torch.Tensor, score_fn: ScoreFn) -> torch.Tensor:
        """Eval-mode scores (K, n) of every config on ``hidden`` (n, d)."""
        one = torch.zeros(len(self.ids), dtype=torch.long)
        with torch.inference_mode():
            return torch.cat([score_fn(self.forward(hidden[None, i : i + _VAL_CHUNK], one, None))
                              for i in range(0, len(hidden), _VAL_CHUNK)], dim=1)


def _groups(values: dict[int, object]) -> list[tuple[object, list[int]]]:
    """Rows grouped by equal value, in order of first appearance."""
    out: dict[object, list[int]] = {}
    for row, value in values.items():
        out.setdefault(value, []).append(row)
    return list(out.items())


def _per_config(by_group: torch.Tensor, group: torch.Tensor, k: int) -> torch.Tensor:
    """(G, ...) per seed group -> (K, ...) per config (a view when every config shares one seed)."""
    if len(by_group) == 1:
        return by_group.expand(k, *by_group.shape[1:])
    return torch.index_select(by_group, 0, group)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` per config: x (K, B, i), weight (K, o, i), bias (K, o) or None -> (K, B, o)."""
    return _StackedLinear.apply(x, weight, bias)


class _StackedLinear(torch.autograd.Function):
    """K linear layers at once, each rounding exactly as ``F.linear`` alone does.

    Autograd's own backward of a batched matmul computes the weight gradient as ``x^T @ grad``, a
    different gemm from ``F.linear``'s ``grad^T @ x``; its last bits differ, and over thousands of
    Adam steps that drift can move a chosen epoch. This backward uses ``F.linear``'s products, per
    config. When every config reads the same input (``x`` expanded from one (B, i)), the forward is
    one (B, i) x (i, K o) matmul.
    """

    @staticmethod
    def forward(ctx: object, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        k, o = weight.shape[0], weight.shape[1]
        if x.stride(0) == 0:
            out = torch.mm(x[0], weight.reshape(k * o, -1).t()).view(-1, k, o).transpose(0, 1)
            out = (out if bias is None else out + bias.unsqueeze(1)).contiguous()
        elif bias is None:
            out = torch.bmm(x, weight.transpose(1, 2))
        else:
            out = torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(grad.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(1) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


class _BCEMean(torch.autograd.Function):
    """Per config ``F.binary_cross_entropy(u[k], e[k])`` (mean over the batch): u, e (K, B) -> (K,).

    The backward is ATen's for ``reduction="mean"``, ``(u - e) / max((1 - u) u, 1e-12)`` divided by
    B; a batched mean would multiply by ``1 / B`` first, which rounds differently when B is not a
    power of two (an epoch's last batch).
    """

    @staticmethod
    def forward(ctx: object, u: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(u, e)
        return nn.functional.binary_cross_entropy(u, e, reduction="none").mean(1)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        u, e = ctx.saved_tensors
        grad_u = grad.unsqueeze(1) * (u - e) / torch.clamp_min((1 - u) * u, 1e-12)
        return grad_u.div_(u.shape[1]), None
