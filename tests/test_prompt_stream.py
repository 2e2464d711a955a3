"""One prompt stream from the config (engine.data.prompt_stream): the dry run and the real run
generate from the same prompts, formatted the same way, with data.chat_template on."""
from __future__ import annotations

import pytest

from engine.client import dry_run, launch
from engine.config import load_config, resolve_role_model
from engine.data import prompt_stream
from engine.models import load_tokenizer
from tests.conftest import TINY, tiny_overrides

pytestmark = pytest.mark.timeout(600)


def test_dry_run_and_the_real_run_see_the_same_chat_formatted_prompts(runs_dir, cleanup_runs):
    over = tiny_overrides(runs_dir, "data.chat_template=true", "run.steps=1")
    cfg = load_config(TINY, over)
    tok = load_tokenizer(resolve_role_model(cfg, "actor"))
    expected = prompt_stream(cfg, tok).next_batch()
    assert len(expected) == cfg.rollout.batch_size
    assert all("<|im_start|>user\n" in p and p.endswith("<|im_start|>assistant\n") for p in expected)

    report = dry_run(cfg, printer=lambda line: None)
    assert report["prompts"] == expected

    run = launch(TINY, over)
    cleanup_runs.append(run)
    assert run.wait(timeout=300) == "finished", run.info.get("failure")
    logged = [s["prompt"] for s in run.samples()]
    # samples.jsonl shows the prompt the actor tokenised (cut from the left to the prompt
    # budget), decoded without special tokens: the tail of the same formatted prompt, in order
    shown = [tok.decode(tok(p)["input_ids"], skip_special_tokens=True) for p in expected]
    assert logged and len(logged) <= len(shown)
    for got, full in zip(logged, shown):
        assert full.endswith(got) and got.endswith("\nassistant\n") and "\nuser\n" in got, (got, full)
