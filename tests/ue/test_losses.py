"""Losses against hand-computed values and torch's own cross entropy."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ue.losses import LOSSES, cross_entropy, ua_clm, ua_clm_beta_schedule, ua_clm_mixed, ual
from ue.registry import UnknownNameError

LN = math.log
EPS = 1e-8

# Three vocab-3 positions whose softmax is exact: logits are logs of the probability ratios.
A = [LN(2), 0.0, 0.0]  # P = (.5, .25, .25): argmax 0, conf .5
B = [0.0, LN(3), 0.0]  # P = (.2, .6, .2):   argmax 1, conf .6
C = [LN(6), LN(3), 0.0]  # P = (.6, .3, .1): argmax 0, conf .6
D = [LN(8), 0.0, 0.0]  # P = (.8, .1, .1): only ever at an ignored position
JUNK = [100.0, -100.0, 5.0]  # last position: the shift drops it
H_A = 1.5 * LN(2)
H_B = -(0.4 * LN(0.2) + 0.6 * LN(0.6))
H_C = -(0.6 * LN(0.6) + 0.3 * LN(0.3) + 0.1 * LN(0.1))


def incorrect_term(conf: float, h: float) -> float:
    return conf * LN(math.tanh(h) + EPS)


def correct_term(conf: float, h: float) -> float:
    return (1 - conf) * LN(1 - math.tanh(h) + EPS)


def causal_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Unshifted (2, 3, 3) logits and (2, 3) labels. After the shift sequence 0 scores A (label 0,
    correct) and B (label 0, wrong: argmax 1); sequence 1 scores C (label 2, wrong) and ignores D."""
    logits = torch.tensor([[A, B, JUNK], [C, D, JUNK]], requires_grad=True)
    labels = torch.tensor([[1, 0, 0], [2, 2, -100]])
    return logits, labels


# --- UA-CLM ---------------------------------------------------------------------------------------


def test_ua_clm_batch_scope_matches_hand_computation() -> None:
    logits, labels = causal_batch()
    expected = -(incorrect_term(0.6, H_B) + incorrect_term(0.6, H_C)) / 2 - correct_term(0.5, H_A)
    assert ua_clm(logits, labels).item() == pytest.approx(expected, rel=1e-5)


def test_ua_clm_shift_equals_sequence_level_on_the_shifted_positions() -> None:
    logits, labels = causal_batch()
    flat = ua_clm(torch.tensor([A, B, C]), torch.tensor([0, 0, 2]))
    torch.testing.assert_close(ua_clm(logits, labels), flat)


def test_ua_clm_sequence_scope_averages_per_sequence_losses() -> None:
    logits, labels = causal_batch()
    seq0 = -incorrect_term(0.6, H_B) - correct_term(0.5, H_A)
    seq1 = -incorrect_term(0.6, H_C)  # no correct token: that mean contributes 0
    per_sequence = ua_clm(logits, labels, reduction_scope="sequence").item()
    assert per_sequence == pytest.approx((seq0 + seq1) / 2, rel=1e-5)
    assert per_sequence != pytest.approx(ua_clm(logits, labels).item(), rel=1e-3)


def test_ua_clm_sequence_scope_skips_sequences_without_tokens() -> None:
    logits = torch.tensor([[A, B, JUNK], [C, D, JUNK]])
    labels = torch.tensor([[1, 0, 0], [-100, -100, -100]])
    expected = -incorrect_term(0.6, H_B) - correct_term(0.5, H_A)
    assert ua_clm(logits, labels, reduction_scope="sequence").item() == pytest.approx(expected, rel=1e-5)


def test_ua_clm_all_correct_and_all_incorrect_batches() -> None:
    logits = torch.tensor([A, C])
    all_correct = -(correct_term(0.5, H_A) + correct_term(0.6, H_C)) / 2
    all_incorrect = -(incorrect_term(0.5, H_A) + incorrect_term(0.6, H_C)) / 2
    assert ua_clm(logits, torch.tensor([0, 0])).item() == pytest.approx(all_correct, rel=1e-5)
    assert ua_clm(logits, torch.tensor([1, 2])).item() == pytest.approx(all_incorrect, rel=1e-5)


def test_ua_clm_gradient_flows_only_to_scored_positions() -> None:
    logits, labels = causal_batch()
    ua_clm(logits, labels).backward()
    grad_norm = logits.grad.norm(dim=-1)
    assert torch.all(grad_norm[[0, 0, 1], [0, 1, 0]] > 0)  # A, B, C
    assert torch.all(grad_norm[[0, 1, 1], [2, 1, 2]] == 0)  # shifted away or label -100


def test_ua_clm_is_finite_for_extreme_logits() -> None:
    logits = (torch.tensor([[A, B, C]]) * 1e4).requires_grad_()
    loss = ua_clm(logits, torch.tensor([[0, 0, 1]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_ua_clm_mixed_is_ce_plus_beta_times_ua_clm() -> None:
    logits, labels = causal_batch()
    expected = cross_entropy(logits, labels) + 0.8 * ua_clm(logits, labels)
    torch.testing.assert_close(ua_clm_mixed(logits, labels, beta=0.8), expected)


def test_ua_clm_beta_schedule_switches_after_twenty_percent() -> None:
    assert [ua_clm_beta_schedule(s, 10) for s in range(4)] == [0.2, 0.2, 0.8, 0.8]
    assert ua_clm_beta_schedule(0, 10, early=0.0, late=1.0, switch=0.0) == 1.0


# --- UAL ------------------------------------------------------------------------------------------


def random_inputs(token_level: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    shape = (3, 5, 7) if token_level else (4, 7)
    logits = torch.randn(shape, generator=gen)
    labels = torch.randint(0, 7, shape[:-1], generator=gen)
    if token_level:
        labels[0, :2] = -100  # a prompt
        labels[2, 3:] = -100  # padding
    return logits, labels


def torch_reference(logits: torch.Tensor, labels: torch.Tensor, **kwargs: float) -> torch.Tensor:
    if logits.dim() == 3:
        logits, labels = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
    return F.cross_entropy(logits, labels, ignore_index=-100, **kwargs)


@pytest.mark.parametrize("token_level", [False, True])
def test_ual_without_smoothing_is_cross_entropy(token_level: bool) -> None:
    logits, labels = random_inputs(token_level)
    torch.testing.assert_close(ual(logits, labels, eps_min=0.0, eps_max=0.0), torch_reference(logits, labels))


@pytest.mark.parametrize("token_level", [False, True])
def test_ual_constant_eps_is_torch_label_smoothing(token_level: bool) -> None:
    logits, labels = random_inputs(token_level)
    expected = torch_reference(logits, labels, label_smoothing=0.1)
    torch.testing.assert_close(ual(logits, labels, eps_min=0.1, eps_max=0.1), expected)
    same_u = torch.full((logits.shape[0],), 0.5)
    torch.testing.assert_close(ual(logits, labels, eps_min=0.0, eps_max=0.2, uncertainty=same_u), expected)


def test_ual_per_sample_eps_matches_row_by_row() -> None:
    logits, labels = random_inputs(token_level=False)
    u = torch.tensor([0.0, 0.25, 0.5, 1.0])
    rows = [
        F.cross_entropy(logits[i : i + 1], labels[i : i + 1], label_smoothing=0.3 * u[i].item())
        for i in range(4)
    ]
    expected = torch.stack(rows).mean()
    torch.testing.assert_close(ual(logits, labels, eps_min=0.0, eps_max=0.3, uncertainty=u), expected)


def test_ual_token_level_applies_each_sequence_eps_to_its_tokens() -> None:
    logits, labels = random_inputs(token_level=True)
    u = torch.tensor([1.0, 0.0, 0.5])
    eps = 0.05 + 0.15 * u
    sums = [
        F.cross_entropy(logits[i, :-1], labels[i, 1:], reduction="sum", label_smoothing=eps[i].item())
        for i in range(3)
    ]
    expected = torch.stack(sums).sum() / (labels[:, 1:] != -100).sum()
    torch.testing.assert_close(ual(logits, labels, eps_min=0.05, eps_max=0.2, uncertainty=u), expected)


# --- CE -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token_level", [False, True])
def test_ce_is_torch_cross_entropy_with_shift_and_ignore_index(token_level: bool) -> None:
    logits, labels = random_inputs(token_level)
    torch.testing.assert_close(cross_entropy(logits, labels), torch_reference(logits, labels))


def test_ce_token_classification_does_not_shift() -> None:
    logits, labels = random_inputs(token_level=True)
    expected = F.cross_entropy(logits.reshape(-1, 7), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(cross_entropy(logits, labels, shift=False), expected)


def test_losses_ignore_extra_batch_keys_including_labels() -> None:
    logits, labels = random_inputs(token_level=True)
    batch = {"input_ids": labels.clamp(min=0), "attention_mask": torch.ones_like(labels), "labels": labels}
    for name in LOSSES:
        loss = LOSSES.get(name)
        torch.testing.assert_close(
            loss(logits, labels, eps_max=0.0, **batch), loss(logits, labels, eps_max=0.0)
        )


@pytest.mark.parametrize("name", ["ce", "ua_clm", "ual"])
def test_all_ignored_batch_gives_zero_with_grad(name: str) -> None:
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = LOSSES.get(name)(logits, torch.full((2, 3), -100), eps_max=0.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


# --- registry and argument checks -----------------------------------------------------------------


def test_registry_names_and_did_you_mean() -> None:
    assert sorted(LOSSES) == ["ce", "ua_clm", "ual"]
    with pytest.raises(UnknownNameError, match=r"Did you mean .*'ua_clm'"):
        LOSSES.get("ua-clm")


@pytest.mark.parametrize("name", ["ce", "ua_clm", "ual"])
@pytest.mark.parametrize(
    ("logits", "labels", "kwargs", "match"),
    [
        (torch.randn(2, 3), torch.tensor([0, 3]), {}, r"labels must be in \[0, 3\)"),
        (torch.randn(2, 3), torch.tensor([0, -5]), {}, "labels must be in"),
        (torch.randn(2, 3), torch.tensor([0.0, 1.0]), {}, "labels must be an integer"),
        (torch.randn(2, 3), torch.tensor([0, 1, 2]), {}, "labels shape"),
        (torch.randn(2, 4, 3), torch.zeros(2, 3, dtype=torch.long), {}, "labels shape"),
        (torch.randn(3), torch.tensor([0, 1, 2]), {}, "logits must be"),
        (torch.randint(0, 3, (2, 3)), torch.tensor([0, 1]), {}, "logits must be a floating"),
        (torch.randn(2, 3), torch.tensor([0, 1]), {"shift": True}, "shift=True needs token-level"),
    ],
)
def test_bad_inputs_name_the_argument(name, logits, labels, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        LOSSES.get(name)(logits, labels, eps_max=0.0, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "needs an `uncertainty` column in \\[0, 1\\]"),
        ({"uncertainty": torch.tensor([0.1, 1.5])}, r"uncertainty must lie in \[0, 1\]"),
        ({"uncertainty": torch.tensor([0.1, float("nan")])}, r"uncertainty must lie in \[0, 1\]"),
        ({"uncertainty": torch.tensor([0.1, 0.2, 0.3])}, r"uncertainty must have shape \(2,\)"),
        ({"uncertainty": torch.tensor([0.1, 0.2]), "eps_min": 0.3}, "eps_min <= eps_max"),
    ],
)
def test_ual_bad_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        ual(torch.randn(2, 3), torch.tensor([0, 1]), **kwargs)


def test_ua_clm_bad_arguments() -> None:
    logits, labels = torch.randn(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="reduction_scope must be one of 'batch', 'sequence'"):
        ua_clm(logits, labels, reduction_scope="token")
    with pytest.raises(ValueError, match="beta must be"):
        ua_clm_mixed(logits, labels, beta=-0.1)
    with pytest.raises(ValueError, match="total_steps"):
        ua_clm_beta_schedule(0, 0)
