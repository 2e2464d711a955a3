"""Critic-free estimators and loss aggregation of engine.algorithms, against hand-computed values."""
import math

import pytest
import torch

from engine import algorithms as A

D = torch.float64


def t(x, dtype=D):
    return torch.tensor(x, dtype=dtype)


# mask: row 0 has 3 valid tokens, row 1 has 2, row 2 has 1, row 3 has 3 (T = 3)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)


def test_grpo_groups_hand_computed():
    # group 7: scores 1, 3 -> mean 2, unbiased std sqrt(2); group 2: scores 0, 0 -> equal -> 0
    scores, index = t([1.0, 3.0, 0.0, 0.0]), torch.tensor([7, 7, 2, 2])
    adv = A.grpo_advantages(scores, index, MASK, eps=0.0)
    s2 = math.sqrt(2.0)
    expect = t([[-1 / s2] * 3, [1 / s2, 1 / s2, 0], [0, 0, 0], [0, 0, 0]])
    assert adv.dtype == D
    torch.testing.assert_close(adv, expect)
    # eps is added to the std
    adv = A.grpo_advantages(scores, index, MASK, eps=0.5)
    assert adv[0, 0].item() == pytest.approx(-1 / (s2 + 0.5))


def test_grpo_group_of_one_and_dr_grpo():
    scores, index = t([2.0, 4.0, 5.0, 6.0]), torch.tensor([0, 1, 1, 1])
    # group 0 alone: mean 0, std 1 -> 2 / (1 + eps); group 1: mean 5, std 1 -> -1, 0, 1
    adv = A.grpo_advantages(scores, index, MASK, eps=1e-6)
    assert adv[0, 0].item() == pytest.approx(2.0 / (1 + 1e-6))
    torch.testing.assert_close(adv[1:, 0], t([-1 / (1 + 1e-6), 0.0, 1 / (1 + 1e-6)]))
    # Dr.GRPO: no division: group of one keeps its score, group 1: -1, 0, 1 exactly
    dr = A.grpo_advantages(scores, index, MASK, norm_by_std=False)
    torch.testing.assert_close(dr, t([[2, 2, 2], [-1, -1, 0], [0, 0, 0], [1, 1, 1]]))


def test_rloo_hand_computed():
    scores, index = t([1.0, 2.0, 6.0, 10.0]), torch.tensor([0, 1, 1, 1])
    # group 1 (2, 6, 10): mean 6, n = 3 -> (s - 6) * 3/2 = -6, 0, 6  (= s - mean of the others)
    adv = A.rloo_advantages(scores, index, MASK)
    torch.testing.assert_close(adv, t([[1, 1, 1], [-6, -6, 0], [0, 0, 0], [6, 6, 6]]))
    # the leave-one-out form, computed from the scores: each row's score minus the mean of the
    # other rows of its group (group 0 has no other row: its score is kept)
    s = scores.tolist()
    for i in (1, 2, 3):
        others = [s[j] for j in (1, 2, 3) if j != i]
        assert adv[i, 0].item() == pytest.approx(s[i] - sum(others) / len(others))


def test_reinforce_pp_baseline_hand_computed():
    scores, index = t([1.0, 3.0, 5.0, 5.0]), torch.tensor([0, 0, 1, 1])
    adv = A.reinforce_pp_baseline_advantages(scores, index, MASK)
    # before whitening: row0 -1 (3 tokens), row1 +1 (2 tokens), rows 2, 3: 0 (4 tokens)
    vals = [-1.0] * 3 + [1.0] * 2 + [0.0] * 4
    mu = sum(vals) / 9
    sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / 8)
    expect = t([[(-1 - mu) / sd] * 3, [(1 - mu) / sd] * 2 + [0], [-mu / sd, 0, 0], [-mu / sd] * 3])
    torch.testing.assert_close(adv, expect, rtol=1e-6, atol=1e-7)
    # a group of one: mean 0, so its score passes through (then whitening)
    one = A.reinforce_pp_baseline_advantages(t([3.0, 1.0]), torch.tensor([0, 1]), torch.ones(2, 1, dtype=torch.bool))
    torch.testing.assert_close(one, t([[1 / math.sqrt(2)], [-1 / math.sqrt(2)]]), rtol=1e-6, atol=1e-7)


def test_reinforce_pp_returns_hand_computed():
    rewards = t([[0.1, 0.2, 1.0], [0.5, 2.0, 99.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # int mask; the 99 is padding and never read
    adv, ret = A.reinforce_pp_advantages(rewards, mask, gamma=0.5)
    # row0: G2 = 1, G1 = 0.2 + 0.5, G0 = 0.1 + 0.35; row1: G1 = 2, G0 = 0.5 + 1
    torch.testing.assert_close(ret, t([[0.45, 0.7, 1.0], [1.5, 2.0, 0.0]]))
    vals = [0.45, 0.7, 1.0, 1.5, 2.0]
    mu = sum(vals) / 5
    sd = math.sqrt(sum((v - mu) ** 2 for v in vals) / 4)
    torch.testing.assert_close(adv[0], t([(v - mu) / sd for v in vals[:3]]), rtol=1e-6, atol=1e-7)
    assert adv[1, 2].item() == 0.0


def test_t_equals_one_and_bool_masks():
    m = torch.tensor([[True], [True], [False]])
    scores, index = t([1.0, 3.0, 8.0]), torch.tensor([0, 0, 0])
    # group mean 4, std sqrt(13); the third row has no valid token: 0
    adv = A.grpo_advantages(scores, index, m, eps=0.0)
    torch.testing.assert_close(adv, t([[-3 / math.sqrt(13)], [-1 / math.sqrt(13)], [0.0]]))
    adv, ret = A.reinforce_pp_advantages(t([[2.0], [4.0], [7.0]]), m, gamma=1.0)
    torch.testing.assert_close(ret, t([[2.0], [4.0], [0.0]]))
    torch.testing.assert_close(adv, t([[-1 / math.sqrt(2)], [1 / math.sqrt(2)], [0.0]]), rtol=1e-6, atol=1e-7)


def test_float32_stays_float32_and_index_errors():
    adv = A.grpo_advantages(torch.tensor([1.0, 2.0]), torch.tensor([0, 0]), torch.ones(2, 2))
    assert adv.dtype == torch.float32
    with pytest.raises(ValueError, match="integer group ids"):
        A.rloo_advantages(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]), torch.ones(2, 2))


def test_agg_loss_modes_hand_computed():
    loss = t([[1.0, 2.0, 3.0], [4.0, 5.0, 1e9], [7.0, 1e9, 1e9]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    assert A.agg_loss(loss, mask, "token-mean").item() == pytest.approx(22 / 6)
    assert A.agg_loss(loss, mask, "seq-mean-token-sum").item() == pytest.approx((6 + 9 + 7) / 3)
    assert A.agg_loss(loss, mask, "seq-mean-token-mean").item() == pytest.approx((2 + 4.5 + 7) / 3)
    assert A.agg_loss(loss, mask, "seq-mean-token-sum-norm").item() == pytest.approx((6 + 9 + 7) / 3 / 3)
    # T = 1 and an empty row: the empty row adds nothing, an all-empty mask gives 0
    one = t([[2.0], [5.0]])
    m1 = torch.tensor([[True], [False]])
    for mode in A.LOSS_AGG_MODES:
        assert A.agg_loss(one, m1, mode).item() == pytest.approx(2.0)
        assert A.agg_loss(one, torch.zeros(2, 1, dtype=torch.bool), mode).item() == 0.0
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        A.agg_loss(one, m1, "sum")


def test_policy_loss_uses_agg_mode():
    lp = t([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], D).requires_grad_(True)
    adv = t([[1.0, 1.0, 1.0], [3.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # ratio 1 everywhere: per-token loss = -A; token-mean -(3 + 3) / 4, seq-mean-token-mean -(1 + 3) / 2
    tm, _ = A.policy_loss(lp, lp.detach(), adv, mask)
    sm, _ = A.policy_loss(lp, lp.detach(), adv, mask, loss_agg="seq-mean-token-mean")
    assert tm.item() == pytest.approx(-1.5) and sm.item() == pytest.approx(-2.0)
    sm.backward()
    assert torch.isfinite(lp.grad).all()
