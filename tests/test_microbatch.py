"""ppo.micro_batch_tokens: length-bucketed micro-batches under a token budget give the unsplit
mini-batch's gradients (actor and critic) and scores (log-probs, hidden states, values) on the
tiny random Llama, and the bucketing itself keeps every micro-batch within the budget."""
from __future__ import annotations

import pytest
import torch

from engine.runtime import microbatch as MB
from tests.conftest import TINY

B, P, R = 8, 7, 9


def _batch(vocab: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts (1..7 tokens) and right-padded responses (1..9 tokens)."""
    g = torch.Generator().manual_seed(5)
    q_len = torch.tensor([7, 1, 3, 6, 2, 7, 4, 5])
    r_len = torch.tensor([9, 2, 5, 1, 8, 3, 9, 4])
    qm = (torch.arange(P)[None] >= (P - q_len)[:, None]).long()
    rm = (torch.arange(R)[None] < r_len[:, None]).long()
    qi = torch.randint(3, vocab, (B, P), generator=g) * qm
    ri = torch.randint(3, vocab, (B, R), generator=g) * rm
    return {"query_ids": qi, "query_mask": qm, "response_ids": ri, "response_mask": rm,
            "old_logprobs": -torch.rand(B, R, generator=g) * 3 - 5,
            "ref_logprobs": -torch.rand(B, R, generator=g) * 3 - 5,
            "advantages": torch.randn(B, R, generator=g),
            "values": torch.randn(B, R, generator=g) * 0.1,
            "returns": torch.randn(B, R, generator=g)}


def _cfg(extra):
    from engine.config import load_config

    return load_config(TINY, ["rollout.batch_size=8", "ppo.mini_batch_size=8", "ppo.entropy_coef=0.01",
                              "ppo.kl_in=loss", "ppo.kl_loss_coef=0.1", *extra])


def _grads(role, batch) -> dict[str, torch.Tensor]:
    got = {}

    def capture(*a, **k):
        for n, q in role.model.named_parameters():
            if q.grad is not None:
                got[n] = q.grad.detach().clone()
        return 0.0

    role._clip_and_step = capture
    role.call("update", batch, {"step": 1})
    return got


def test_buckets_stay_within_the_budget_and_cover_every_row_once():
    qm = torch.tensor([[0, 0, 1], [1, 1, 1], [0, 1, 1], [0, 0, 1]])
    rm = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]])
    qs, rs = MB.spans(qm, rm)
    assert qs.tolist() == [1, 3, 2, 1] and rs.tolist() == [2, 4, 1, 3]
    rows = torch.tensor([3, 0, 1, 2])
    parts = MB.token_micro_batches(rows, qs, rs, budget=8)
    assert sorted(int(r) for p in parts for r in p) == [0, 1, 2, 3]
    for p in parts:
        assert len(p) * MB.padded_len(p, qs, rs) <= 8 or len(p) == 1
    assert len(parts) > 1
    # a row longer than the budget is a micro-batch of its own
    assert [p.tolist() for p in MB.token_micro_batches(torch.tensor([1]), qs, rs, budget=3)] == [[1]]
    sub = MB.sub_batch({"query_ids": qm * 7, "query_mask": qm, "response_ids": rm * 9, "response_mask": rm},
                       torch.tensor([0, 2]), qs, rs)
    assert sub["query_mask"].tolist() == [[0, 1], [1, 1]] and sub["response_mask"].tolist() == [[1, 1], [1, 0]]


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_actor_update_by_token_budget_has_the_unsplit_gradient(loss_agg):
    from engine.runtime.role_policy import ActorRole

    whole = ActorRole(_cfg(["ppo.micro_batch_size=8", f"ppo.loss_agg={loss_agg}"]))
    batch = _batch(whole.model.config.vocab_size)
    g_whole = _grads(whole, batch)
    split = ActorRole(_cfg(["ppo.micro_batch_size=8", "ppo.micro_batch_tokens=40", f"ppo.loss_agg={loss_agg}"]))
    calls = []
    import engine.models as M

    real = M.sequence_logprobs

    def spy(model, ids, *a, **k):
        calls.append(tuple(ids.shape))
        return real(model, ids, *a, **k)

    M.sequence_logprobs = spy
    try:
        g_split = _grads(split, batch)
    finally:
        M.sequence_logprobs = real
    assert len(calls) >= 3 and all(b * t <= 40 or b == 1 for b, t in calls)  # really bucketed
    assert max(t for _, t in calls) < P + R or any(b < B for b, _ in calls)
    assert g_whole.keys() == g_split.keys() and g_whole
    for n in g_whole:
        torch.testing.assert_close(g_split[n], g_whole[n], atol=1e-6, rtol=1e-4, msg=n)
    # the same rows in micro-batches of 2 weighted by rows (the micro_batch_size path) differ
    # for a token mean over unequal lengths: the budget path's exact weights are what matches
    if loss_agg == "token-mean":
        rows2 = ActorRole(_cfg(["ppo.micro_batch_size=2", f"ppo.loss_agg={loss_agg}"]))
        g2 = _grads(rows2, batch)
        assert any(not torch.allclose(g2[n], g_whole[n], atol=1e-6, rtol=1e-4) for n in g_whole)


def test_critic_values_and_update_by_token_budget_match_the_unsplit_pass():
    from engine.runtime.role_critic import CriticRole

    whole = CriticRole(_cfg(["ppo.micro_batch_size=8"]))
    batch = _batch(50)
    v_whole = whole.call("values", batch, {})[0]["values"]
    split = CriticRole(_cfg(["ppo.micro_batch_size=8", "ppo.micro_batch_tokens=40"]))
    v_split = split.call("values", batch, {})[0]["values"]
    m = batch["response_mask"].bool()
    torch.testing.assert_close(v_split[m], v_whole[m], atol=1e-5, rtol=1e-5)
    assert (v_split[~m] == 0).all()
    g_whole, g_split = _grads(whole, batch), _grads(split, batch)
    for n in g_whole:
        torch.testing.assert_close(g_split[n], g_whole[n], atol=1e-6, rtol=1e-4, msg=n)


def test_a_head_critic_updates_under_a_token_budget():
    """ppo.critic_trunk=reference: the critic gets the reference's hidden states and no query
    tokens, so a token budget must not cut its update by query spans (it raised KeyError
    'query_mask' and the run paused at step 1); it updates by rows, as without the budget."""
    from engine.runtime.role_critic import CriticRole

    g = torch.Generator().manual_seed(3)
    b = _batch(50)
    hidden = torch.randn(B, R, CriticRole(_cfg(["ppo.critic_trunk=reference"])).model.head.in_features, generator=g)
    head_in = {"response_mask": b["response_mask"], "hidden": hidden, "values": b["values"], "returns": b["returns"]}
    grads = []
    for extra in ([], ["ppo.micro_batch_tokens=40"]):
        role = CriticRole(_cfg(["ppo.critic_trunk=reference", "ppo.micro_batch_size=2", *extra]))
        torch.nn.init.normal_(role.model.head.weight, generator=torch.Generator().manual_seed(1))
        grads.append(_grads(role, dict(head_in)))
    assert grads[0] and set(grads[0]) == set(grads[1])
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], msg=n)


def test_reference_scoring_by_token_budget_matches_the_unsplit_pass():
    from engine.runtime.role_policy import ReferenceRole

    whole = ReferenceRole(_cfg([]))
    split = ReferenceRole(_cfg(["ppo.micro_batch_tokens=40"]))
    batch = _batch(whole.model.config.vocab_size)
    a = whole.call("logprobs", batch, {"hidden": True})[0]
    b = split.call("logprobs", batch, {"hidden": True})[0]
    m = batch["response_mask"].bool()
    assert a["hidden"].shape == b["hidden"].shape and a["logprobs"].shape == b["logprobs"].shape
    torch.testing.assert_close(b["logprobs"][m], a["logprobs"][m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b["hidden"][m], a["hidden"][m], atol=1e-5, rtol=1e-5)


def test_the_budget_key_is_checked():
    from engine.config import validate_text

    assert validate_text("ppo:\n  micro_batch_tokens: 4096\n").ok
    bad = validate_text("ppo:\n  micro_batch_tokens: 0\n")
    assert not bad.ok and any(e.path == "ppo.micro_batch_tokens" for e in bad.issues)
