import math

import pytest
import torch

from alignray.rewards.losses import (
    bradley_terry_loss,
    dpo_implicit_reward,
    dpo_loss,
    haf_loss,
    summed_response_logprobs,
)


def test_bradley_terry_hand_computed():
    # -log σ(1) = log(1 + e^-1) = 0.3132617, -log σ(0) = log 2 = 0.6931472
    loss = bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert loss.item() == pytest.approx(0.5032044, abs=1e-6)


def test_bradley_terry_margin_shifts_the_gap():
    # gaps 1 - 1 = 0 and 0 - 1 = -1: (log 2 + log(1 + e)) / 2
    loss = bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), margin=1.0)
    assert loss.item() == pytest.approx(1.0032044, abs=1e-6)


def test_bradley_terry_is_stable_for_large_gaps_and_checks_shapes():
    loss = bradley_terry_loss(torch.tensor([-1000.0]), torch.tensor([0.0]))
    assert loss.item() == pytest.approx(1000.0)
    with pytest.raises(ValueError, match="shape"):
        bradley_terry_loss(torch.zeros(2), torch.zeros(3))


def test_dpo_hand_computed():
    # log-ratios: chosen -10 - (-11) = 1, rejected -12 - (-11) = -1 → -log σ(0.1 · 2) = log(1 + e^-0.2)
    loss = dpo_loss(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]),
                    torch.tensor([-11.0]), 0.1)
    assert loss.item() == pytest.approx(0.5981389, abs=1e-6)
    assert dpo_implicit_reward(torch.tensor(-10.0), torch.tensor(-11.0), 0.1).item() == pytest.approx(0.1)


def test_haf_loss_is_bt_plus_alpha_dpo():
    loss, parts = haf_loss(
        torch.tensor([1.0]), torch.tensor([0.0]),
        torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.0]),
        alpha=0.2, beta=0.1,
    )
    assert loss.item() == pytest.approx(0.3132617 + 0.2 * 0.5981389, abs=1e-6)
    assert parts["bt_loss"] == pytest.approx(0.3132617, abs=1e-6)
    assert parts["dpo_loss"] == pytest.approx(0.5981389, abs=1e-6)


def test_summed_response_logprobs_reads_shifted_positions():
    # uniform logits over 4 tokens: every token has log-prob -log 4; two response tokens → -2 log 4
    logits = torch.zeros(1, 5, 4)
    input_ids = torch.tensor([[0, 1, 2, 3, 0]])
    response_mask = torch.tensor([[0, 0, 1, 1, 0]])
    assert summed_response_logprobs(logits, input_ids,
                                    response_mask).item() == pytest.approx(-2 * math.log(4))
    # a peaked logit on the right target raises exactly that token's log-prob
    logits[0, 1, 2] = 10.0  # position 1 predicts token 2 (at position 2, a response token)
    expected = -math.log(4) + (10.0 - math.log(math.exp(10.0) + 3))
    assert summed_response_logprobs(logits, input_ids, response_mask).item() == pytest.approx(expected,
                                                                                              abs=1e-5)
