"""Source strings: one grammar (engine/sources.py) for the config, the loaders and the console."""
from __future__ import annotations

import json

import pytest

from console.sources import check_reward_source
from engine import sources
from engine.config import validate_text

REWARD_STRINGS = [
    "bundled:minilm-sentiment", "bundled:nope", "bundled:minilm-sentimen", "lexicon:vader",
    "lexicon:nope", "lexicon:", "python:pkg.mod:score", "pkg.mod:function", "python:mod:Cls.method",
    "python:pkg..mod:f", "python:pkg", "python:1pkg:f", "distilbert-base-uncased",
    "OpenAssistant/reward-model-deberta-v3-base", "org/model-name", "tiny:llama", "hub:imdb",
    "ftp:somewhere", "ftp://somewhere", "just words", "", "   ", "/no/such/folder", "./missing-folder", "a/b/c",
]


def _config_verdict(source: str, where: str = "reward.source") -> bool:
    section, key = where.split(".")
    text = f"{section}:\n  {key}: {json.dumps(source)}\n"
    res = validate_text(text, filename="run.yaml", check_hardware=True)
    return not [i for i in res.issues if i.path == where]


@pytest.mark.parametrize("extra", [False, True])
def test_config_and_console_agree_on_reward_sources(tmp_path, extra):
    strings = list(REWARD_STRINGS)
    if extra:  # a folder that exists, and a file that exists
        (tmp_path / "rm").mkdir()
        (tmp_path / "f.txt").write_text("x")
        strings = [str(tmp_path / "rm"), str(tmp_path / "f.txt"), str(tmp_path / "nope")]
    config = {s: _config_verdict(s) for s in strings}
    console = {s: check_reward_source(s) is None for s in strings}
    assert console == config
    if not extra:  # what the issue found the two disagreeing on
        assert config["pkg.mod:function"] and config["distilbert-base-uncased"]
        assert not config["bundled:nope"] and not config["python:pkg..mod:f"]
        assert config["python:mod:Cls.method"]  # the loader imports dotted attributes


def test_the_message_is_the_same_everywhere():
    for s in ("bundled:minilm-sentimen", "python:pkg..mod:f", "tiny:llama", "just words"):
        msg = sources.problem(s, "reward")
        assert msg and check_reward_source(s) == msg
        res = validate_text(f"reward:\n  source: {json.dumps(s)}\n", filename="run.yaml")
        assert [i.message for i in res.issues if i.path == "reward.source"] == [msg]
    assert "did you mean 'bundled:minilm-sentiment'" in sources.problem("bundled:minilm-sentimen", "reward")


@pytest.mark.parametrize("s,scheme,name", [
    ("bundled:movie-reviews", "bundled", "movie-reviews"),
    ("python:a.b:c", "python", "a.b:c"),
    ("a.b:c", "python", "a.b:c"),
    ("hub:stanfordnlp/imdb", "hub", "stanfordnlp/imdb"),
    ("stanfordnlp/imdb", "hub", "stanfordnlp/imdb"),
    ("./x", "local", "./x"),
    ("~/x", "local", "~/x"),
    ("prompts.jsonl", "local", "prompts.jsonl"),
    ("ftp://x", "ftp", "//x"),
    ("ftp:x", "python", "ftp:x"),  # module:function, as the reward loader reads it
    ("no good", "", "no good"),
])
def test_parse(s, scheme, name):
    src = sources.parse(s)
    assert (src.scheme, src.name) == (scheme, name)


def test_kinds_accept_their_own_schemes(tmp_path):
    assert sources.problem("tiny:llama", "model") is None
    assert "not valid here" in sources.problem("tiny:llama", "data")
    assert "reward sources only" in sources.problem("python:a:b", "model")
    assert sources.problem("hub:imdb", "data") is None
    assert "not valid here" in sources.problem("hub:imdb", "model")
    assert "does not exist" in sources.problem(str(tmp_path / "p.jsonl"), "data")
    (tmp_path / "p.json").write_text("{}")
    assert ".jsonl, .csv or .txt" in sources.problem(str(tmp_path / "p.json"), "data")
    # the config sees the same for prompts and models
    assert not _config_verdict("hub:imdb", "actor.model") and _config_verdict("hub:imdb", "data.source")
    assert not _config_verdict(str(tmp_path / "p.json"), "data.source")


def test_a_new_scheme_is_one_entry(monkeypatch):
    """What another source kind (e.g. a made-up check:NAME reward) needs: one entry in SCHEMES."""
    monkeypatch.setitem(sources.SCHEMES, "check", {"reward": lambda: ("digits", "length")})
    assert sources.problem("check:digits", "reward") is None
    assert "did you mean 'check:length'" in sources.problem("check:lenght", "reward")
    assert "not valid here" in sources.problem("check:digits", "model")
    assert check_reward_source("check:digits") is None and _config_verdict("check:digits")
    assert not _config_verdict("check:nope") and check_reward_source("check:nope")


def test_the_loaders_know_every_name_the_grammar_accepts():
    from engine import data, models
    from engine.rewards import RewardError, build_reward

    for scheme in ("bundled", "tiny"):
        for n in sources.names(scheme, "model"):
            assert f"{scheme}:{n}" in models.BUNDLED_SOURCES
    for n in sources.names("bundled", "data"):
        assert len(data.load_prompts(f"bundled:{n}", num_prompts=2)) == 2
    for n in sources.names("lexicon", "reward"):
        assert build_reward(f"lexicon:{n}")(["a"], ["good"])
    for n in sources.names("rule", "reward"):
        assert build_reward(f"rule:{n}").judge(["4", "5"], ["4", "4"])[1] == [True, False]
    for bad in ("lexicon:nope", "bundled:nope", "python:pkg..mod:f", "just words"):
        assert sources.problem(bad, "reward")
        with pytest.raises(RewardError):
            build_reward(bad)
