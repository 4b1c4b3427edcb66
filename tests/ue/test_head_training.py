"""The trained heads' fitting loop equals the authors' recipe written with torch.optim and autograd:
Adam + OneCycleLR stepped per batch, L2-SP through autograd (arXiv 2505.15443)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ue.heads._math import normalised_entropy
from ue.heads._training import AdamOneCycle, train_error_head
from ue.heads.modules import Classifier, ClassifierSpec


@pytest.mark.parametrize(("total", "pct"), [(50, 0.1), (7, 0.3), (400, 0.1)])
def test_adam_one_cycle_matches_torch_adam_under_one_cycle_lr(total, pct):
    torch.manual_seed(0)
    shapes = [(3, 5), (5,), (2, 3)]
    ours_params = [torch.randn(s) for s in shapes]
    ref_params = [nn.Parameter(p.clone()) for p in ours_params]
    opt = torch.optim.Adam(ref_params, lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=total, pct_start=pct,
                                                anneal_strategy="cos", div_factor=25.0, final_div_factor=1e4)
    ours = AdamOneCycle(ours_params, lr=3e-3, total_steps=total, pct_start=pct)
    for step in range(total):
        lr, beta1 = ours.schedule(step)
        assert lr == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        assert beta1 == pytest.approx(opt.param_groups[0]["betas"][0], rel=1e-12)
        grads = [torch.randn(s) for s in shapes]
        for p, g in zip(ref_params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        sched.step()
        for mine, g in zip(ours_params, grads, strict=True):
            mine.grad.copy_(g)  # a view into ours.grad
        ours.step()
    for mine, ref in zip(ours_params, ref_params, strict=True):
        torch.testing.assert_close(mine, ref.detach(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="past the schedule"):
        ours.schedule(total + 1)


def test_a_warm_up_that_ends_at_the_first_step_starts_at_the_peak():
    """OneCycleLR raises ZeroDivisionError for 10 steps at pct_start 0.1 (an epoch of 1,280 rows)."""
    ours = AdamOneCycle([torch.zeros(3)], lr=1e-2, total_steps=10, pct_start=0.1)
    assert ours.schedule(0) == pytest.approx((1e-2, 0.85))
    lrs = [ours.schedule(step)[0] for step in range(10)]
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    assert ours.schedule(9) == pytest.approx((1e-2 / 25 / 1e4, 0.95))
    ours.grad.fill_(1.0)
    ours.step()
    assert torch.all(ours.flat < 0)


def _reference_fit(module, hidden, errors, anchor, *, alpha, beta, lr, epochs, batch_size, seed):
    """The loop as the authors wrote it: torch.optim.Adam + OneCycleLR, L2-SP through autograd."""
    h, e, a = (torch.as_tensor(x, dtype=torch.float32) for x in (hidden, errors, anchor))
    params = [p for p in module.parameters() if p.requires_grad]
    init = [p.detach().clone() for p in params]
    steps = math.ceil(len(h) / batch_size)
    opt = torch.optim.Adam(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps, pct_start=0.1,
                                                anneal_strategy="cos", div_factor=25.0, final_div_factor=1e4)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(epochs):
            module.train()
            perm = torch.randperm(len(h), generator=gen)
            total = 0.0
            for i in range(steps):
                idx = perm[i * batch_size : (i + 1) * batch_size]
                u = normalised_entropy(module(h[idx]))
                loss = nn.functional.binary_cross_entropy(u, e[idx]) + alpha * ((u - a[idx]) ** 2).mean()
                loss = loss + beta * sum(((p - p0) ** 2).sum() for p, p0 in zip(params, init, strict=True))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
            losses.append(total / len(h))
    return module.state_dict(), losses


@pytest.mark.parametrize("kind", ["linear", "two_layer", "bert_pooler"])
def test_train_error_head_follows_the_reference_loop_step_for_step(kind):
    torch.manual_seed(1)
    clf = Classifier(ClassifierSpec(kind, 16, 3, dropout=0.1))
    rng = np.random.default_rng(2)
    hidden = rng.normal(size=(300, 16)).astype(np.float32)
    errors = (rng.random(300) < 0.3).astype(np.float32)
    anchor = rng.random(300).astype(np.float32)
    kwargs = {"alpha": 0.1, "beta": 0.5, "lr": 1e-2, "epochs": 3, "batch_size": 32, "seed": 5}

    reference = Classifier(clf.spec)
    reference.load_state_dict(clf.state_dict())
    init = {k: v.clone() for k, v in clf.state_dict().items()}
    ref_state, ref_losses = _reference_fit(reference, hidden, errors, anchor, **kwargs)
    result = train_error_head(clf, score_fn=normalised_entropy, hidden=hidden, errors=errors, anchor=anchor,
                              val_hidden=None, val_errors=None, **kwargs)

    assert result.best_epoch == 3  # no validation data: the last epoch
    assert [h["train_loss"] for h in result.history] == pytest.approx(ref_losses, rel=1e-5)
    # The two loops order their float32 operations differently (fused vs foreach Adam, L2-SP by hand vs
    # autograd), and Adam divides by sqrt(v): a last-bit difference in a small gradient becomes a step
    # difference of up to ~lr * 1e-4 on some CPUs (2.3e-6 seen after 30 steps at lr 1e-2). A wrong
    # loop (schedule, L2-SP factor, anchor term) moves the weights by a share of their whole drift
    # (>= 0.05 here), so differences are judged against that drift: at most 1e-3 of it.
    for name, value in ref_state.items():
        drift = float((value - init[name]).abs().max())
        assert drift > 1e-2  # every tensor really moved, so the bound below means something
        torch.testing.assert_close(result.state[name], value, rtol=0, atol=1e-3 * drift)
        torch.testing.assert_close(clf.state_dict()[name], value, rtol=0, atol=1e-3 * drift)
        assert clf.state_dict()[name].untyped_storage().nbytes() == value.numel() * 4  # not a view any more


@pytest.mark.parametrize("params", [{"epochs": 20.0}, {"batch_size": 128.0}, {"epochs": True}])
def test_a_non_integer_epoch_count_or_batch_size_is_refused_by_name(params, linear_classifier, splits):
    from ue.heads import build_head

    head = build_head("alien", classifier=linear_classifier, **params)
    with pytest.raises(ValueError, match=f"{next(iter(params))}=.* must be an integer"):
        head.fit(splits["train"], splits["val"])


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_patience_cuts_the_full_trajectory_where_val_roc_auc_stopped_improving(patience):
    rng = np.random.default_rng(3)
    hidden = rng.normal(size=(400, 16)).astype(np.float32)
    errors = (hidden[:, 0] + rng.normal(size=400) > 1.0).astype(np.float32)
    val_hidden = rng.normal(size=(200, 16)).astype(np.float32)
    val_errors = (val_hidden[:, 0] + 2 * rng.normal(size=200) > 1.0).astype(np.int64)
    kwargs = {"score_fn": normalised_entropy, "hidden": hidden, "errors": errors, "anchor": np.full(400, 0.5),
              "val_hidden": val_hidden, "val_errors": val_errors, "alpha": 0.0, "beta": 0.0, "lr": 3e-2,
              "epochs": 15, "batch_size": 64, "seed": 0}

    def fit(**extra):
        torch.manual_seed(1)
        return train_error_head(Classifier(ClassifierSpec("linear", 16, 3)), **kwargs, **extra)

    full = fit()
    aucs = [h["val_roc_auc"] for h in full.history]
    # Hand-computed stop: the first epoch that is `patience` epochs past the best so far.
    stop = next((t for t in range(1, 16) if t - (1 + int(np.argmax(aucs[:t]))) >= patience), 15)
    assert stop < 15  # the case really stops early
    cut = fit(patience=patience)
    assert len(cut.history) == stop and cut.history == full.history[:stop]
    assert cut.best_epoch == 1 + int(np.argmax(aucs[:stop]))
    if cut.best_epoch == full.best_epoch:
        for name, value in full.state.items():
            torch.testing.assert_close(cut.state[name], value, rtol=0, atol=0)


def test_patience_needs_a_positive_integer(linear_classifier, splits):
    from ue.heads import build_head

    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="patience=.* must be null or an integer >= 1"):
            build_head("alien", classifier=linear_classifier, patience=bad).fit(splits["train"], splits["val"])
