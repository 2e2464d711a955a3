"""The refit's preference head (engine/preference.py, engine/refit.py) on judgements a test
controls: a taste the current reward (VADER) is blind to is learned and accepted; a refit that
changes nothing, or one too few judgements back, is refused and says why.

The judged texts are neutral sentences (VADER is at chance on them: most pairs are ties for it), either about film-making or about travel; the judge prefers film.
The refit runs for real: the bundled all-MiniLM-L6-v2 reads the responses, the head is fitted,
every judgement is held out once.
"""
from __future__ import annotations

import dataclasses
import json
import random

import pytest
import yaml

from engine.refit import binomial_tail, judgements_needed, run_refit, sign_test
from tests.conftest import TINY

FILM = ["The director framed the {a} scene with a slow camera move.",
        "The cast rehearsed the {a} script before the shoot.",
        "The editor cut the {a} sequence to the score.",
        "The cinematographer lit the {a} set for the night shot.",
        "The actors read the {a} dialogue on the sound stage."]
TRAVEL = ["The train left the {a} station at noon.",
          "The ferry crossed the {a} harbour in the morning.",
          "The bus stopped at the {a} square for an hour.",
          "The road ran along the {a} coast to the town.",
          "The plane landed at the {a} airport after dark."]
ADJ = ["long", "second", "small", "old", "northern", "last", "early", "wide", "quiet", "first"]


def _texts(rng: random.Random, kind: list[str]) -> str:
    return rng.choice(kind).format(a=rng.choice(ADJ))


def _pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(_texts(rng, FILM), _texts(rng, TRAVEL)) for _ in range(n)]


def _scratch_run(tmp_path, pairs, **refit) -> object:
    cfg = yaml.safe_load(TINY.read_text())
    cfg["reward"]["refit"] = {"min_judgements": 2, **refit}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    with open(tmp_path / "labels.jsonl", "w") as f:
        for i, (good, other) in enumerate(pairs):
            f.write(json.dumps({"prompt": "Tell me about it:", "chosen": " " + good, "rejected": " " + other,
                                "step": 1, "source": "human", "chosen_id": f"1-{2 * i}",
                                "rejected_id": f"1-{2 * i + 1}", "time": 0}) + "\n")
    (tmp_path / "samples.jsonl").write_text("")
    return tmp_path


def test_head_learns_a_taste_the_current_reward_is_blind_to(tmp_path):
    from engine.config import validate_text
    from engine.refit import build_reward_source

    run = _scratch_run(tmp_path, _pairs(30))
    res = run_refit(run, 1, "lexicon:vader", run / "refit-1", progress=lambda m: None)
    assert abs(res["current"]["judgement_accuracy"] - 0.5) <= 0.1    # VADER: at chance
    assert res["judgements"]["held_out"] == 30 and res["judgements"]["held_out_how"] == "5-fold"
    assert res["new"]["judgement_accuracy"] >= 0.8, res["reason"]
    assert res["test"]["p"] <= 0.1 and res["test"]["better"] > res["test"]["worse"]
    assert res["accepted"], res["reason"]
    assert (run / "refit-1" / "preference.json").is_file()
    # the new folder is a reward source of its own: it prefers film on texts it never saw
    cfg = validate_text((run / "config.yaml").read_text(), str(run / "config.yaml")).config
    src = build_reward_source(cfg, str(run / "refit-1"))
    try:
        film = ["The crew moved the camera for the final take.", "The actress learned her lines for the scene."]
        other = ["The boat sailed past the lighthouse at dawn.", "The hikers reached the village before rain."]
        _, z_film = src.components(["Tell me about it:"] * 2, film)
        _, z_other = src.components(["Tell me about it:"] * 2, other)
        both = src.score(["Tell me about it:"] * 4, film + other)
        base = src.base.score(["Tell me about it:"] * 4, film + other)
    finally:
        src.close()
    assert float(z_film.min()) > float(z_other.max())      # the taste, on texts it never saw
    w = json.loads((run / "refit-1" / "preference.json").read_text())["w"]
    assert w > 0 and both == pytest.approx([b + w * float(z) for b, z in zip(base, [*z_film, *z_other])])


def test_a_refit_that_changes_nothing_is_refused(tmp_path):
    # weight 0: the new reward is the base itself, so it agrees with the judge exactly as often
    run = _scratch_run(tmp_path, _pairs(30), weight=0)
    res = run_refit(run, 1, "lexicon:vader", run / "refit-1", progress=lambda m: None)
    assert res["new"]["hits"] == res["current"]["hits"]
    assert not res["accepted"]
    assert "not significantly better" in res["reason"]
    assert "does not agree with the judge more often" in res["reason"]


def test_too_few_judgements_are_refused_with_how_many_more(tmp_path):
    run = _scratch_run(tmp_path, _pairs(3, seed=1))
    res = run_refit(run, 1, "lexicon:vader", run / "refit-1", progress=lambda m: None)
    assert not res["accepted"]
    if res["test"]["better"] > res["test"]["worse"]:
        assert res["test"]["needs_more"] >= 1
        assert f"needs ~{res['test']['needs_more']} more judgement" in res["reason"]
    else:   # the head learned nothing from 3 pairs: the reason says so instead
        assert "does not agree with the judge more often" in res["reason"]


def test_sign_test_and_the_judgements_needed():
    assert binomial_tail(4, 4) == pytest.approx(1 / 16)
    assert binomial_tail(0, 10) == 1.0 and binomial_tail(3, 0) == 1.0
    assert binomial_tail(8, 12) == pytest.approx(sum(__import__("math").comb(12, i) for i in range(8, 13)) / 4096)
    t = sign_test([1, 1, 1, 0.5, 0], [0, 0, 1, 0.5, 1])
    assert (t["better"], t["worse"]) == (2, 1)
    assert judgements_needed(4, 0, 10, 0.1) == 0                # already significant
    assert judgements_needed(1, 1, 10, 0.1) is None             # no advantage to wait for
    more = judgements_needed(3, 1, 10, 0.1)
    assert more and more > 0
    m = 10 + more
    b, w = round(3 * m / 10), round(1 * m / 10)
    assert binomial_tail(b, b + w) <= 0.1                       # that many would be significant


@pytest.mark.parametrize("key,value,msg", [("method", "magic", "must be one of head, finetune"),
                                           ("features", "pixels", "must be one of sentence"),
                                           ("confidence", 1.5, "must be in [0.5, 0.999]; got 1.5"),
                                           ("weight", "big", "expected a number, got 'big'"),
                                           ("min_judgements", 2.5, "expected an integer, got 2.5"),
                                           ("base", "lexicon:vader", "must be a trainable model"),
                                           ("wieght", 2, "unknown key 'wieght'; did you mean 'weight'?")])
def test_bad_refit_settings_are_named(key, value, msg):
    from engine.config import validate_text

    cfg = yaml.safe_load(TINY.read_text())
    cfg["reward"]["refit"] = {key: value}
    text = yaml.safe_dump(cfg, sort_keys=False)
    res = validate_text(text, "x.yaml")
    errs = [i for i in res.issues if f"reward.refit.{key}" in str(i)]
    assert errs and msg in str(errs[0]), [str(i) for i in res.issues]
    line = next(n for n, t in enumerate(text.splitlines(), 1) if t.strip().startswith(f"{key}:"))
    assert errs[0].line == line  # where: the line of the key in the file


def test_refit_settings_null_is_every_default_and_set_overrides_one_key():
    from engine.config import RefitSettings, load_config, validate_text
    from engine.refit import refit_settings

    cfg = yaml.safe_load(TINY.read_text())
    cfg["reward"]["refit"] = None
    res = validate_text(yaml.safe_dump(cfg), "x.yaml")
    assert res.config is not None and res.config.reward.refit is None
    # every default, with nice resolved: null is 0 for a head refit (seconds of work) ...
    assert RefitSettings().nice is None
    assert refit_settings(res.config) == dataclasses.replace(RefitSettings(), nice=0)
    # ... and 10 for a fine-tune (minutes); a nice the config gives is kept
    assert refit_settings(load_config(str(TINY), ["reward.refit.method=finetune"])).nice == 10
    assert refit_settings(load_config(str(TINY), ["reward.refit.nice=5"])).nice == 5
    assert (RefitSettings().method, RefitSettings().weight, RefitSettings().min_judgements) == ("head", 1.0, 4)
    rs = refit_settings(load_config(str(TINY), ["reward.refit.weight=2", "reward.refit.every_labels=20"]))
    assert (rs.weight, rs.every_labels, rs.confidence) == (2.0, 20, RefitSettings().confidence)
