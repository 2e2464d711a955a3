"""The bundled arithmetic task, the rule rewards and the estimator keys' validation."""
from __future__ import annotations

import pytest

from engine import tasks
from engine.config import validate_text
from engine.data import load_prompts
from engine.rewards import build_reward
from engine.runtime.driver import active_roles
from engine.runtime.supervisor import worker_groups


def test_arithmetic_is_deterministic_and_the_splits_are_disjoint():
    a, b = tasks.arithmetic_problems(), tasks.arithmetic_problems.__wrapped__(tasks.ARITHMETIC_SEED)
    assert a == b  # the same seed: the same problems (also when not cached)
    other = tasks.arithmetic_problems.__wrapped__(7)
    assert [r["expression"] for r in other["heldout"]] != [r["expression"] for r in a["heldout"]]
    train = {r["expression"] for r in a["train"]}
    held = {r["expression"] for r in a["heldout"]}
    assert len(held) == tasks.ARITHMETIC_HELDOUT and len(train) == tasks.ARITHMETIC_SIZE - tasks.ARITHMETIC_HELDOUT
    assert not train & held
    for r in a["train"][:200] + a["heldout"][:200]:  # the answer is the expression's value
        assert int(r["answer"]) == eval(r["expression"])  # our own "a op b" strings
        assert r["prompt"].startswith(f"What is {r['expression']}?")
    # the prompt source serves the train split only
    prompts = load_prompts("bundled:arithmetic", num_prompts=50)
    assert prompts == [r["prompt"] for r in a["train"][:50]]
    assert not {p for p in load_prompts("bundled:arithmetic")} & {r["prompt"] for r in a["heldout"]}


def test_rule_arithmetic_scores_right_wrong_and_format():
    reward = build_reward("rule:arithmetic")
    responses = ["7 + 5 = 12.\nAnswer: 12", "The answer is 12", "Answer: 13", "12 or 13? 13",
                 "no idea", "Answer: 12"]
    answers = ["12", "12", "12", "12", "12", None]
    scores, correct = reward.judge(responses, answers)
    assert scores == pytest.approx([1.1, 1.0, 0.1, 0.0, 0.0, 0.0])
    assert correct == [True, True, False, False, False, False]
    assert reward.score(["p"] * 6, responses, answers) == scores
    exact = build_reward("rule:exact")
    assert exact.judge([" Paris ", "paris.", "x"], ["paris", "paris", None])[0] == [1.0, 0.0, 0.0]


def test_python_reward_receives_the_answers(tmp_path, monkeypatch):
    (tmp_path / "my_rule.py").write_text(
        "def score(prompts, responses, answers):\n"
        "    return [float(a is not None and a in r) for r, a in zip(responses, answers)]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    r = build_reward("python:my_rule:score")
    assert r.uses_answers and r.score(["q", "q"], ["it is 4", "5"], ["4", "4"]) == [1.0, 0.0]


def _errors(text: str) -> dict:
    res = validate_text(text, check_hardware=False)
    return {i.path: i.message for i in res.issues if i.severity == "error"}


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
def test_group_estimator_needs_several_responses(estimator):
    errs = _errors(f"ppo: {{estimator: {estimator}}}\nrollout: {{n: 1}}")
    assert "rollout.n" in errs and estimator in errs["rollout.n"]
    assert not _errors(f"ppo: {{estimator: {estimator}, mini_batch_size: 8}}\nrollout: {{n: 2}}")


def test_estimator_validation_names_the_key():
    # gae needs a critic: colocation groups without one are refused, naming the estimator
    errs = _errors("runtime: {colocate: [[actor, reference], [reward]]}")
    assert "runtime.colocate" in errs and "ppo.estimator" in errs["runtime.colocate"]
    ok = validate_text("ppo: {estimator: reinforce_pp}\nruntime: {colocate: [[actor, reference], [reward]]}",
                       check_hardware=False)
    assert ok.config is not None and active_roles(ok.config) == ("actor", "reference", "reward")
    assert worker_groups(ok.config) == [["actor", "reference"], ["reward"]]
    # mini-batches divide the responses of a step: batch_size * n
    errs = _errors("rollout: {batch_size: 4, n: 3}\nppo: {estimator: rloo, mini_batch_size: 8}")
    assert "ppo.mini_batch_size" in errs and "4 * 3" in errs["ppo.mini_batch_size"]
    assert "ppo.estimator" in _errors("ppo: {estimator: ppo}")
    assert "ppo.loss_agg" in _errors("ppo: {loss_agg: sum}")
    assert "ppo.kl_in" in _errors("ppo: {kl_in: both}")
    # held-out evaluation needs a task with a held-out split
    assert "eval.every" in _errors("eval: {every: 5}")
    assert not _errors("eval: {every: 5}\ndata: {source: 'bundled:arithmetic'}\nreward: {source: 'rule:arithmetic'}")
    assert "reward.source" in _errors("reward: {source: 'rule:nope'}")
    assert "reward.source" in _errors("reward: {source: 'rule:arithmetic'}")  # movie reviews have no answers
