"""The stage of the step in progress (engine/runtime/stage.py): generation reports each token,
the stage is published to run.json at most once a second, a real run's status and run.json
carry it (tokens generated, update mini-batches done), and the console's header shows it."""
from __future__ import annotations

import asyncio
import json
import os
import time

import pytest
import torch

from console import demo
from engine.models import generate, load_policy, load_tokenizer, reporting_tokens
from engine.runtime.rundir import RunDir
from engine.runtime.stage import StepStage
from tests.conftest import start_tiny

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("decoder", ["static", "hf"])
def test_generate_reports_every_decoding_step_inside_reporting_tokens(decoder):
    tok = load_tokenizer("tiny:llama")
    model = load_policy("tiny:llama")
    enc = tok(["The movie was", "I think"], return_tensors="pt", padding=True)
    said: list[tuple[int, int]] = []
    with reporting_tokens(lambda k, n: said.append((k, n))):
        resp, _ = generate(model, tok, enc["input_ids"], enc["attention_mask"], max_new_tokens=12,
                           min_new_tokens=12, decoder=decoder, generator_seed=0)
    assert resp.shape[1] == 12
    assert said == [(k, 12) for k in range(1, 13)]
    # outside the block nothing is reported, and the tokens are the same as without a report
    said.clear()
    again, _ = generate(model, tok, enc["input_ids"], enc["attention_mask"], max_new_tokens=12,
                        min_new_tokens=12, decoder=decoder, generator_seed=0)
    assert said == [] and torch.equal(again, resp)


def test_stage_is_published_at_most_once_per_interval_and_only_for_its_phase():
    now = [100.0]
    published: list = []
    st = StepStage(published.append, min_interval=1.0, clock=lambda: now[0])
    st.phase(3, "generating")
    assert st.flush() and published[-1]["phase"] == "generating" and published[-1]["step"] == 3
    for k in range(1, 10):            # a report per token, 0.1 s apart: one write in the second
        now[0] += 0.1
        st.progress("actor", "generate", k, 24, "tokens")
        st.flush()
    assert len(published) == 1
    now[0] += 0.2
    assert st.flush() and published[-1]["done"] == 9 and published[-1]["total"] == 24
    assert not st.flush(force=False)  # nothing new
    st.progress("actor", "update", 1, 4, "mini-batches")   # not the phase in progress: ignored
    st.progress("critic", "generate", 5, 24, "tokens")
    assert st.current()["done"] == 9
    now[0] += 5.0
    st.phase(3, "update")
    st.progress("actor", "update", 2, 4, "mini-batches")
    assert st.flush()
    last = published[-1]
    assert (last["phase"], last["done"], last["total"], last["unit"]) == ("update", 2, 4, "mini-batches")
    assert last["since"] == 100.0 and last["phase_since"] == now[0]   # the step's start is kept
    st.clear()
    now[0] += 1.0
    assert st.flush() and published[-1] is None


def test_a_running_step_publishes_its_stage_with_tokens_and_mini_batches(runs_dir, cleanup_runs, monkeypatch):
    """A real tiny run: the status reply shows generation's tokens and the update's mini-batches
    while a step runs; run.json gets the stage too, and no stale stage once the run is over."""
    monkeypatch.setenv("RLHF_CONSOLE_STAGE_EVERY_S", "0")   # every report: a tiny step is short
    run = start_tiny(runs_dir, cleanup_runs, "run.steps=6", "checkpoint.every=0", "rollout.max_new_tokens=32",
                     "rollout.min_new_tokens=32", "ppo.mini_batch_size=1")
    run.wait_started(timeout=240)
    seen, in_file = [], []
    t0 = time.time()
    while run.state == "running" and time.time() - t0 < 240:
        try:
            st = run.request("status", timeout=5).get("step_stage")
        except Exception:  # noqa: BLE001 - the run may end between two polls
            break
        if st:
            seen.append(st)
        info = run.info
        if info.get("step_stage") and info.get("state") == "running":
            in_file.append(info["step_stage"])
        time.sleep(0.02)
    assert run.wait(timeout=120) == "finished"
    gen = [s for s in seen if s["phase"] == "generating" and s.get("unit") == "tokens"]
    upd = [s for s in seen if s["phase"] == "update" and s.get("unit") == "mini-batches"]
    assert gen and all(s["total"] == 32 and 1 <= s["done"] <= 32 for s in gen), seen[:20]
    assert upd and all(s["total"] == 4 and 1 <= s["done"] <= 4 for s in upd), seen[:20]
    assert {s["phase"] for s in seen} >= {"generating", "update"}
    assert all(1 <= s["step"] <= 6 for s in seen)
    assert in_file, "run.json never carried the stage of a running step"
    assert run.info.get("step_stage") is None


def _running_run(root) -> RunDir:
    path = root / "runs" / "slow-20261129-000000"
    path.mkdir(parents=True)
    (path / "config.yaml").write_text((demo.recorded_run_dir() / "config.yaml").read_text())
    for f in ("metrics.jsonl", "samples.jsonl", "labels.jsonl", "events.log"):
        (path / f).touch()
    (path / "run.json").write_text(json.dumps({"name": path.name, "state": "running", "step": 2, "steps": 300,
                                               "created": time.time() - 120, "supervisor_pid": os.getpid()}))
    return RunDir(path)


def test_the_header_shows_what_the_step_in_progress_is_doing(tmp_path):
    from console.app import ConsoleApp

    rd = _running_run(tmp_path)
    now = time.time()

    async def go():
        app = ConsoleApp("attach", run=rd.path, runs_dir=rd.path.parent, gpu_probe=demo.no_nvml,
                         poll_interval=0.05, blink=False)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.screen
            header = screen.query_one("#run-header")
            while not screen.loaded:
                await pilot.pause(0.05)
            assert "step 3:" not in str(header.render())          # no stage recorded yet
            rd.write_state(step_stage={"step": 3, "phase": "generating", "done": 12, "total": 24, "unit": "tokens",
                                       "since": now - 20, "phase_since": now - 14})
            await pilot.pause(0.4)
            assert "step 3: generating 12/24 tokens 0m1" in str(header.render())
            rd.write_state(step_stage={"step": 3, "phase": "update", "done": 1, "total": 4, "unit": "mini-batches",
                                       "since": now - 20, "phase_since": now})
            await pilot.pause(0.4)
            assert "step 3: update 1/4 mini-batches" in str(header.render())
            rd.write_state(step_stage={"step": 3, "phase": "scoring", "since": now - 20, "phase_since": now})
            await pilot.pause(0.4)
            assert "step 3: scoring" in str(header.render())
            rd.write_state(step=3)                                 # that step is recorded: its stage is old
            await pilot.pause(0.4)
            assert "step 3:" not in str(header.render())
            rd.write_state(state="paused", step_stage={"step": 4, "phase": "scoring", "since": now, "phase_since": now})
            await pilot.pause(0.4)
            assert "step 4:" not in str(header.render())          # only while running

    asyncio.run(go())
