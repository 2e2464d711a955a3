"""The actor's update path, fast and unchanged: log-probs and entropy through the LM head in
token chunks (logits recomputed in backward) against the full log-softmax, the fused AdamW
against torch's reference AdamW, optimizer checkpoints across implementations, and the two-phase commit's reused host
copy (rollback restores parameters and optimizer state exactly; the copy never aliases the
live state). Real roles on tiny:llama."""
from __future__ import annotations

import copy

import pytest
import torch

from engine import models as M
from engine.config import load_config
from engine.runtime.role_base import NonFiniteError
from engine.runtime.role_policy import ActorRole
from engine.runtime.role_training import make_adamw
from tests.conftest import TINY

pytestmark = pytest.mark.timeout(600)


def _batch(seed: int = 0, B: int = 4, P: int = 5, R: int = 6) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, R, dtype=torch.long)
    mask[1, 4:] = 0  # a response that ended early
    qmask = torch.ones(B, P, dtype=torch.long)
    qmask[2, :2] = 0  # a left-padded prompt
    return {
        "query_ids": torch.randint(0, 1000, (B, P), generator=g), "query_mask": qmask,
        "response_ids": torch.randint(0, 1000, (B, R), generator=g), "response_mask": mask,
        "old_logprobs": -torch.rand(B, R, generator=g) * 5, "advantages": torch.randn(B, R, generator=g),
        "ref_logprobs": -torch.rand(B, R, generator=g) * 5,
    }


def _state(actor: ActorRole) -> dict:
    params = {k: v.detach().clone() for k, v in actor.model.named_parameters()}
    opt = actor.optimizer.state_dict()
    state = {i: {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in st.items()}
             for i, st in opt["state"].items()}
    return {"params": params, "state": state, "lr": [g["lr"] for g in opt["param_groups"]],
            "sched": actor.scheduler.state_dict()["last_epoch"]}


def _assert_same(a: dict, b: dict) -> None:
    assert a["params"].keys() == b["params"].keys()
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]), k
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        assert a["state"][i].keys() == b["state"][i].keys()
        for k in a["state"][i]:
            assert torch.equal(torch.as_tensor(a["state"][i][k]), torch.as_tensor(b["state"][i][k])), (i, k)
    assert a["lr"] == b["lr"] and a["sched"] == b["sched"]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_head_logprobs_equal_the_full_log_softmax(temperature, monkeypatch):
    """Values and gradients (hidden states, the tied head/embedding weight) of the chunked
    head equal log_softmax-gather and entropy_from_logits of the full float32 logits, with an
    entropy term in the loss and without one (a zero coefficient)."""
    model = M.load_policy("tiny:llama")
    head = model.get_output_embeddings()
    V, H = head.weight.shape
    monkeypatch.setattr(M, "_HEAD_CHUNK_ELEMS", 3 * V)  # chunks of 3 tokens: 4 chunks, one short
    g = torch.Generator().manual_seed(0)
    hidden0 = torch.randn(2, 5, H, generator=g) * 3
    targets = torch.randint(0, V, (2, 5), generator=g)
    a, b = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)

    def run(chunked: bool, ent_coef: float):
        model.zero_grad(set_to_none=True)
        hidden = hidden0.clone().requires_grad_(True)
        if chunked:
            lp, ent = M.head_logprobs(model, hidden, targets, temperature=temperature, return_entropy=True)
        else:
            logits = torch.nn.functional.linear(hidden, head.weight)
            lp, ent = M._logprobs_from_logits(logits, targets, temperature, True, torch.float32)
        ((a * lp).sum() + ent_coef * (b * ent).sum()).backward()
        return lp.detach(), ent.detach(), hidden.grad, head.weight.grad.clone()

    for ent_coef in (0.5, 0.0):
        new, ref = run(True, ent_coef), run(False, ent_coef)
        for x, y, what in zip(new, ref, ("logprobs", "entropy", "hidden grad", "weight grad")):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5, msg=what)
        assert new[3].abs().sum() > 0
    # scoring without grad (rollout.reuse_logprobs, the old log-probs) gives the same values
    with torch.no_grad():
        lp = M.head_logprobs(model, hidden0, targets, temperature=temperature)
    torch.testing.assert_close(lp, ref[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("autocast", [False, True])
def test_sequence_logprobs_backward_as_before(autocast, monkeypatch):
    """The split path (trunk, then the float32 head; the default's path under bf16 autocast)
    gives the same parameter gradients through the chunked head as through the full float32
    logits: to float rounding in float32; under bf16 autocast the trunk's backward rounds
    those tiny differences to bf16, so there the whole gradient agrees to 1 %."""
    model = M.load_policy("tiny:llama")
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 1000, (2, 9), generator=g)
    am = torch.ones_like(ids)
    am[0, :2] = 0
    w = torch.randn(2, 4, generator=g)
    grads, lps = [], []
    for full in (False, True):
        if full:
            monkeypatch.setattr(M, "head_logprobs", _full_head)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            lp, ent, _ = M.sequence_logprobs(model, ids, am, 5, return_entropy=True, return_hidden=True)
        ((w * lp).sum() + 0.1 * ent.sum()).backward()
        lps.append(lp.detach())
        grads.append({k: v.grad.clone() for k, v in model.named_parameters()})
    torch.testing.assert_close(lps[0], lps[1], rtol=1e-5, atol=1e-5)
    if not autocast:
        for k in grads[0]:
            torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-6, msg=k)
    else:
        a = torch.cat([v.flatten() for v in grads[0].values()])
        b = torch.cat([v.flatten() for v in grads[1].values()])
        assert (a - b).norm() / b.norm() < 1e-2


def _full_head(model, hidden, targets, *, temperature=1.0, return_entropy=False, logits_dtype=torch.float32):
    """head_logprobs as it was: the full float32 logits, log-softmax and entropy."""
    head = model.get_output_embeddings()
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        logits = torch.nn.functional.linear(hidden.float(), head.weight.float())
    return M._logprobs_from_logits(logits, targets, float(temperature), return_entropy, logits_dtype)


@pytest.fixture(scope="module")
def cfg():
    return load_config(TINY, ["ppo.lr_schedule=linear", "ppo.weight_decay=0.01", "run.steps=10"])


def test_fused_adamw_equals_the_reference_adamw_and_loads_its_checkpoints():
    torch.manual_seed(0)
    shapes = [(64, 32), (32,), (1000, 16)]
    ref = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    new = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    opt_ref = torch.optim.AdamW(ref, lr=1e-3, weight_decay=0.01)
    opt_new = make_adamw(new, lr=1e-3, weight_decay=0.01)
    assert opt_new.param_groups[0]["fused"] is True and not opt_ref.param_groups[0].get("fused")
    g = torch.Generator().manual_seed(1)

    def step_both_and_compare():  # the same random gradients into both, one step each
        for a, b in zip(ref, new):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        opt_ref.step()
        opt_new.step()
        for a, b in zip(ref, new):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)

    for _ in range(5):
        step_both_and_compare()
    assert all(not torch.equal(a, a.new_zeros(a.shape)) for a in ref)
    # a checkpoint of the reference implementation (fused unset) resumes on the fused kernel
    # and continues the same trajectory
    opt_new.load_state_dict(copy.deepcopy(opt_ref.state_dict()))  # as through torch.save/load
    assert opt_new.param_groups[0]["fused"] is True
    with torch.no_grad():
        for a, b in zip(ref, new):
            b.copy_(a)
    step_both_and_compare()


def test_rollback_restores_parameters_and_optimizer_state_exactly(cfg):
    torch.manual_seed(0)
    actor = ActorRole(cfg)
    assert actor.optimizer.param_groups[0]["fused"] is True
    before = _state(actor)
    actor.call("update", _batch(0), {"step": 1})
    assert actor.call("rollback", {}, {})[1] == {"rolled_back": True}
    _assert_same(_state(actor), before)  # the first update: the optimizer had no state yet
    assert not actor.optimizer.state

    # two committed updates, then one rolled back: back to the state after the second
    for step in (1, 2):
        actor.call("update", _batch(step), {"step": step})
        assert actor.call("commit", {}, {})[1] == {"committed": True}
    after_two = _state(actor)
    assert actor.optimizer.state
    actor.call("update", _batch(3), {"step": 3})
    moved = _state(actor)
    assert any(not torch.equal(moved["params"][k], after_two["params"][k]) for k in moved["params"])
    actor.call("rollback", {}, {})
    _assert_same(_state(actor), after_two)

    # the restored state is the optimizer's own, not the reused host copy: the next update,
    # committed, equals that of an actor that never saw the rolled back one
    actor.call("update", _batch(3), {"step": 3})
    actor.call("commit", {}, {})
    torch.manual_seed(0)
    twin = ActorRole(cfg)
    for step in (1, 2, 3):
        twin.call("update", _batch(step), {"step": step})
        twin.call("commit", {}, {})
    _assert_same(_state(actor), _state(twin))

    # an uncommitted update is rolled back by the next update before it starts
    actor.call("update", _batch(4), {"step": 4})
    actor.call("update", _batch(4), {"step": 4})
    actor.call("commit", {}, {})
    twin.call("update", _batch(4), {"step": 4})
    twin.call("commit", {}, {})
    _assert_same(_state(actor), _state(twin))


def test_a_non_finite_parameter_after_the_step_restores_the_copy(cfg, monkeypatch):
    torch.manual_seed(0)
    actor = ActorRole(cfg)
    actor.call("update", _batch(1), {"step": 1})
    actor.call("commit", {}, {})
    before = _state(actor)
    step = actor.optimizer.step
    name = "model.layers.0.mlp.up_proj.weight"
    target = dict(actor.model.named_parameters())[name]

    calls = []

    def poisoned(*a, **k):  # the update's last optimizer step (4 rows, mini-batches of 2)
        out = step(*a, **k)
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                target.view(-1)[7] = float("nan")
        return out

    monkeypatch.setattr(actor.optimizer, "step", poisoned)
    with pytest.raises(NonFiniteError, match=f"parameter {name} is not finite"):
        actor.call("update", _batch(2), {"step": 2})
    assert len(calls) == 2
    _assert_same(_state(actor), before)
    assert actor.call("rollback", {}, {})[1] == {"rolled_back": False}


def test_a_checkpoint_resumes_the_same_updates(cfg, tmp_path):
    """save after one update, load into a fresh actor: the next updates equal the uninterrupted
    actor's (the fused optimizer's state round-trips through trainer_state.pt)."""
    torch.manual_seed(0)
    a = ActorRole(cfg)
    a.call("update", _batch(1), {"step": 1})
    a.call("commit", {}, {})
    a.call("save", {}, {"path": str(tmp_path)})
    torch.manual_seed(1)  # other initial weights: everything must come from the checkpoint
    b = ActorRole(cfg)
    b.call("load", {}, {"path": str(tmp_path)})
    assert b.optimizer.param_groups[0]["fused"] is True
    for actor in (a, b):
        for step in (2, 3):
            actor.call("update", _batch(step), {"step": step})
            actor.call("commit", {}, {})
    _assert_same(_state(b), _state(a))


def _guarded_update(guard, ref_shift: float, old_shift: float, target: float = 1e-4) -> tuple[dict, int]:
    """One update of 4 rows in mini-batches of 1 (four optimizer steps) at a high learning
    rate, with the batch's reference and rollout log-probs placed relative to the actor's
    own: the update's stats and the optimizer steps taken."""
    cfg = load_config(TINY, ["ppo.actor_lr=1e-3", "ppo.mini_batch_size=1", "ppo.micro_batch_size=1",
                             f"ppo.target_kl={target}", f"ppo.kl_guard={guard}"])
    torch.manual_seed(0)
    actor = ActorRole(cfg)
    b = _batch(0)
    lp = actor.call("logprobs", b, {})[0]["logprobs"]
    b["old_logprobs"], b["ref_logprobs"] = lp + old_shift, lp - ref_shift
    stats = actor.call("update", b, {"step": 1})[1]
    steps = {int(st["step"]) for st in actor.optimizer.state.values()}
    assert len(steps) == 1
    return stats, steps.pop()


def test_kl_guard_stops_the_update_once_the_policy_leaves_the_reference():
    # rollout policy == reference: after the first optimizer step the next mini-batch's KL is
    # above 1e-4 nats and above its KL at rollout (0): the other three steps are skipped
    stats, steps = _guarded_update(1.0, 0.0, 0.0)
    assert (steps, stats["kl_guard_skipped"]) == (1, 3.0)
    assert stats["grad_norm"] > 0
    # off: every step taken, no metric
    stats, steps = _guarded_update("null", 0.0, 0.0)
    assert steps == 4 and "kl_guard_skipped" not in stats
    # a limit far above the KL reached: nothing skipped
    stats, steps = _guarded_update(1000, 0.0, 0.0, target=1.0)
    assert (steps, stats["kl_guard_skipped"]) == (4, 0.0)


def test_kl_guard_lets_a_policy_above_the_limit_move_back():
    """The KL is 1 nat a token above the limit from the start, but the batch was sampled 2 nats
    a token away (the update has moved the policy closer): no step is skipped."""
    stats, steps = _guarded_update(1.0, 1.0, 1.0)
    assert (steps, stats["kl_guard_skipped"]) == (4, 0.0)
