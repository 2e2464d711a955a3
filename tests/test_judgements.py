"""Judgements and reward versions without a live run: rows land on the samples named (and an
unknown id writes nothing), the newest mark of a sample wins, the held-out share is the newest
judgements, the refit verdict, and the report's reward-version section and swap lines."""
from __future__ import annotations

import json

import pytest

from engine.client import Run, RunError
from engine.files import read_jsonl
from engine.judgements import candidate_pairs, judge_counter, min_discordant, pick_pair, read_judgements
from engine.refit import split_judgements, training_rows, verdict


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "run.json").write_text(json.dumps({"state": "finished", "step": 3, "name": "run", "created": 1000.0}))
    samples = [{"id": f"{s}-{i}", "step": s, "index": i, "prompt": f"prompt {i % 2}", "response": f"r{s}{i}",
                "score": 0.1 * i} for s in (1, 2) for i in range(4)]
    (d / "samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in samples))
    (d / "labels.jsonl").write_text("")
    return d


def test_marks_and_pairs_land_on_the_samples_named(run_dir):
    run = Run(run_dir)
    with pytest.raises(RunError, match="no sample '9-9'"):
        run.label("9-9", "good")
    with pytest.raises(RunError, match="two different samples"):
        run.prefer("1-0", "1-0")
    assert (run_dir / "labels.jsonl").read_text() == ""
    run.label("2-1", "good")
    pair = run.prefer("2-3", "1-1")
    assert (pair["chosen_id"], pair["rejected_id"], pair["chosen"], pair["rejected"]) == ("2-3", "1-1", "r23", "r11")
    assert pair["prompt"] == "prompt 1" and pair["step"] == 2 and pair["source"] == "human"
    assert "rejected_prompt" not in pair                        # both answer one prompt
    run.label("2-1", "bad")                                     # the newest mark wins
    run.label("1-2", "good")
    j = read_judgements(run_dir)
    assert (j.good, j.bad, len(j.pairs), j.rows) == (1, 1, 1, 4)
    order = [x.get("sample_id") or "pair" for x in j.ordered()]
    assert order == ["pair", "2-1", "1-2"]
    train, held = split_judgements(j.ordered(), 0.25)
    assert [x.get("sample_id") for x in held] == ["1-2"] and len(train) == 2
    rows = training_rows(j.ordered(), "prompt+response")
    assert rows[0].chosen == "prompt 1 r23" and rows[1].text == "prompt 1 r21" and rows[1].good is False
    assert training_rows(j.ordered(), "response")[2].text == "r12"
    # pairs still to judge: same prompt, not judged yet
    pairs = candidate_pairs(read_jsonl(run_dir / "samples.jsonl"), {frozenset(("2-3", "1-1"))})
    assert pairs and all(a["prompt"] == b["prompt"] for a, b in pairs)
    assert frozenset(("2-3", "1-1")) not in {frozenset((a["id"], b["id"])) for a, b in pairs}


def _s(sid, step, prompt, score, response=None):
    return {"id": sid, "step": step, "prompt": prompt, "response": response or f"text {sid}", "score": score}


def test_candidate_pairs_offer_the_pairs_the_reward_is_least_sure_about_first():
    samples = [_s("1-0", 1, "p", 0.10), _s("1-1", 1, "p", 0.90), _s("1-2", 1, "p", 0.12),
               _s("2-0", 2, "q", 0.50), _s("2-1", 2, "q", 0.80), _s("3-0", 3, "q", 0.51)]
    # step 3 was scored by reward v1, steps 1-2 by v0: scores of two versions are not compared
    pairs = candidate_pairs(samples, versions={1: 0, 2: 0, 3: 1})
    ids = [tuple(sorted((a["id"], b["id"]))) for a, b in pairs]
    assert ids[:3] == [("1-0", "1-2"), ("2-0", "2-1"), ("1-1", "1-2")]    # |d| 0.02, 0.30, 0.78
    assert ids[3] == ("1-0", "1-1") and set(ids[4:]) == {("2-0", "3-0"), ("2-1", "3-0")}
    # with one version everywhere, 2-0 / 3-0 (0.01 apart) is the least sure of all
    assert tuple(sorted((pairs[0][0]["id"], pairs[0][1]["id"]))) != ("2-0", "3-0")
    first = candidate_pairs(samples)[0]
    assert {first[0]["id"], first[1]["id"]} == {"2-0", "3-0"}
    # pairs scored by the reward in place come first (only they can show it wrong)
    both_v1 = [_s("3-1", 3, "p", 0.2), _s("3-2", 3, "p", 0.9)]
    pairs = candidate_pairs(samples + both_v1, versions={1: 0, 2: 0, 3: 1}, current=1)
    assert {pairs[0][0]["id"], pairs[0][1]["id"]} == {"3-1", "3-2"}                # |d| 0.7, but v1
    assert {pairs[1][0]["id"], pairs[1][1]["id"]} == {"1-0", "1-2"}


def test_pick_pair_prefers_a_base_preference_conflict_then_the_closest_scores():
    texts = ["a", "b", "c", "d"]
    i, j, why = pick_pair([0.1, 0.9, 0.5, 0.52], texts)
    assert {i, j} == {2, 3} and why["why"] == "the current reward is least sure" and why["candidates"] == 4
    assert why["margin"] == pytest.approx(0.02)
    # a learned preference in place: 0 and 1 are ranked one way by the base, the other by the
    # preference (the conflict is strongest there), although 2 and 3 are closer overall
    base, pref = [0.9, 0.1, 0.5, 0.5], [-1.0, 1.0, 0.1, 0.12]
    scores = [b + 0.2 * z for b, z in zip(base, pref)]
    i, j, why = pick_pair(scores, texts, base, pref)
    assert {i, j} == {0, 1} and "disagree" in why["why"]
    # base and preference agree on every pair: back to the closest scores
    i, j, why = pick_pair([0.1, 0.5, 0.52, 0.9], texts, [0.1, 0.5, 0.52, 0.9], [0.0, 1.0, 1.1, 2.0])
    assert {i, j} == {1, 2} and "least sure" in why["why"]
    # two identical responses are never the pair, even with equal scores
    i, j, _ = pick_pair([0.5, 0.5, 0.7], ["same", "same", "other"])
    assert {i, j} in ({0, 2}, {1, 2})
    with pytest.raises(ValueError, match="at least 2"):
        pick_pair([0.5], ["x"])


def test_judge_counter_holds_out_the_judgements_made_since_the_reward_was_put_in_place(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "config.yaml").write_text("reward: {refit: {confidence: 0.95}}\n")
    # v0 scored steps 1-2, v1 (a refit) steps 3-4
    (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward_version": int(s > 2)}) + "\n"
                                             for s in (1, 2, 3, 4)))
    samples = [_s(f"{s}-{i}", s, "p", 0.1 * i + 0.01 * s) for s in (1, 2, 3, 4) for i in range(3)]
    (d / "samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in samples))
    (d / "labels.jsonl").write_text("")
    (d / "run.json").write_text(json.dumps({"state": "running", "step": 4, "name": "run", "reward_version": 1}))
    run = Run(d)
    run.prefer("1-2", "1-0")                    # judged under v0: not held out for v1
    run.prefer("3-2", "3-1")                    # v1 agrees (0.2 > 0.1)
    run.prefer("4-0", "4-2")                    # v1 disagrees
    run.prefer("3-0", "4-1")                    # both v1: v1 disagrees (0.03 < 0.14)
    c = judge_counter(d)
    assert (c["reward_version"], c["held_out"], c["agree"], c["pairs"]) == (1, 3, 1, 4)
    assert c["agreement"] == pytest.approx(1 / 3) and c["confidence"] == 0.95
    # no refit refused yet: a lower bound. At 95 % a refit must win 5 judgements the current
    # reward loses; it loses (2 + 1) / (3 + 2) of them, so 9 pairs held out for it, 3 are in (the
    # pair judged under v0 cannot show v1 wrong)
    assert min_discordant(0.95) == 5 and min_discordant(0.9) == 4
    assert c["needs_more"] == 9 - 3 and "at least" in c["needs_how"]
    # a refused refit said ~7 more, 2 judgements ago
    (d / "rewards").mkdir()
    (d / "rewards" / "versions.json").write_text(json.dumps({"versions": [], "refits": [
        {"attempt": 2, "state": "refused", "judgement_rows": 2, "test": {"needs_more": 7},
         "current": {"judgement_accuracy": 0.5}, "new": {"judgement_accuracy": 0.75},
         "judgements": {"held_out": 2}}]}))
    c = judge_counter(d)
    assert c["needs_more"] == 5 and c["last_refit"]["attempt"] == 2
    assert c["last_refit"]["judgement_accuracy"] == 0.75


def _acc(hits, original=None):
    return {"judgement_accuracy": sum(hits) / len(hits), "judgements": len(hits), "hits": hits,
            "original_accuracy": original}


def test_refit_verdict():
    cur = _acc([0, 1, 0, 1, 0, 0, 1, 0], 0.80)
    ok, why, test = verdict(cur, _acc([1, 1, 1, 1, 1, 1, 1, 0], 0.79), 0.02)   # better on 4, worse on 0
    assert ok and (test["better"], test["worse"]) == (4, 0) and test["p"] == 1 / 16, why
    ok, why, _ = verdict(cur, _acc([1, 1, 1, 1, 1, 1, 1, 0], 0.70), 0.02)
    assert not ok and "worse on the original held-out set" in why
    ok, why, test = verdict(cur, _acc([1, 1, 1, 1, 0, 0, 1, 0], 0.80), 0.02)   # better on 2: not significant
    assert not ok and "not significantly better" in why and f"needs ~{test['needs_more']} more" in why
    ok, why, _ = verdict(cur, dict(cur), 0.02)                                 # a refit that changes nothing
    assert not ok and "does not agree with the judge more often" in why
    ok, why, _ = verdict(cur, _acc([0, 0, 0, 0, 0, 0, 0, 0], 0.90), 0.02)
    assert not ok


def test_report_lists_reward_versions_and_marks_the_swap(run_dir, tmp_path):
    from engine.report import swap_steps, write_report

    metrics = [{"step": s, "time": 1000.0 + s, "timings": {"step": 1.0}, "score_mean": 0.5, "kl": 0.1,
                "kl_coef": 0.05, "reward_version": 0 if s < 4 else 1} for s in range(1, 7)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (run_dir / "rewards").mkdir()
    ev = {"current": {"judgement_accuracy": 0.5, "original_accuracy": 0.667},
          "new": {"judgement_accuracy": 1.0, "original_accuracy": 0.75}}
    (run_dir / "rewards" / "versions.json").write_text(json.dumps({
        "versions": [{"version": 0, "source": "lexicon:vader", "kind": "config", "from_step": 1},
                     {"version": 1, "source": "/x/rewards/refit-2", "kind": "refit", "attempt": 2, "from_step": 4, **ev}],
        "refits": [{"attempt": 1, "from_step": 2, "state": "refused", "reason": "worse on the held-out judgements",
                    "judgements": {"train": 9, "held_out": 3}},
                   {"attempt": 2, "from_step": 3, "state": "accepted", "reason": "at least as good",
                    "judgements": {"train": 12, "held_out": 4}, **ev}]}))
    assert swap_steps(metrics) == [4]
    md = write_report(run_dir, tmp_path / "report").read_text()
    assert "## Reward versions" in md
    assert "| v1 | 4 | refit 2 | `/x/rewards/refit-2` | 0.500 → 1.000 | 0.667 → 0.750 |" in md
    assert "| 1 | 2 | 9 / 3 | refused | worse on the held-out judgements |" in md
