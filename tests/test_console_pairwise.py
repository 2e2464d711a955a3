"""The pairwise screen, driven by keys: two responses to one prompt side by side; the preference
lands on the pair that was on the screen when the key was pressed (whatever streams in), skip
writes nothing, and the labels line counts good, bad, pairs and those since the last refit.

A run directory written the way the supervisor writes it (a finished run: no live actor, so
the pairs come from logged samples that share a prompt).
"""
from __future__ import annotations

import json
import time

import pytest

from console import demo
from console.app import ConsoleApp

pytestmark = pytest.mark.timeout(120)


def _sample(step: int, i: int, prompt: str, response: str, score: float) -> dict:
    return {"id": f"{step}-{i}", "step": step, "index": i, "prompt": prompt, "response": response,
            "score": score, "kl": 0.01, "return": score, "length": 5, "eos": True}


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "runs" / "tiny-20261129-120000"
    d.mkdir(parents=True)
    samples = []
    for step in (1, 2, 3):
        for i, prompt in enumerate(("The film was", "I watched this movie")):
            samples.append(_sample(step, i, prompt, f"response {step}-{i} about {prompt.split()[-1]}", 0.1 * step + i))
    samples.append(_sample(3, 2, "A lonely prompt", "nobody else answers it", 0.5))
    (d / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    metrics = [{"step": s, "time": 1000.0 + s, "score_mean": 0.5, "kl": 0.1, "reward_version": 0 if s < 3 else 1,
                "timings": {"step": 1.0}} for s in (1, 2, 3)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (d / "labels.jsonl").write_text(json.dumps({"sample_id": "1-0", "step": 1, "label": "good"}) + "\n"
                                    + json.dumps({"sample_id": "1-1", "step": 1, "label": "bad"}) + "\n")
    (d / "events.log").write_text("")
    (d / "config.yaml").write_text("run: {name: tiny}\n")
    (d / "run.json").write_text(json.dumps({"state": "finished", "step": 3, "steps": 3, "name": d.name,
                                            "created": 1000.0, "reward_version": 1,
                                            "refit": {"state": "accepted", "attempt": 1, "judgement_rows": 1}}))
    return d


def _labels(d) -> list[dict]:
    return [json.loads(ln) for ln in (d / "labels.jsonl").read_text().splitlines() if ln.strip()]


async def _wait(pilot, cond, what: str, timeout: float = 20.0):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def test_pairwise_screen_by_keys(run_dir):
    async def go():
        app = ConsoleApp("attach", run=run_dir, runs_dir=run_dir.parent, gpu_probe=demo.no_nvml,
                         poll_interval=0.1, blink=False)
        async with app.run_test(size=(120, 36)) as pilot:
            dash = app.screen
            await _wait(pilot, lambda: dash.caught_up, "history")
            bar = str(dash.query_one("#labels-bar").render())
            assert "✓ 1 good" in bar and "✗ 1 bad" in bar and "⇄ 0 pairs" in bar
            assert "1 since the last refit" in bar and "reward v1" in bar
            await pilot.press("a")
            await _wait(pilot, lambda: type(app.screen).__name__ == "PairwiseScreen", "pairwise screen")
            pw = app.screen
            await _wait(pilot, lambda: pw.current is not None, "a pair")
            left, right = pw.current
            assert left["prompt"] == right["prompt"] and left["id"] != right["id"]
            # the counter: no judgement is held out for reward v1 yet; a refit needs at least
            # 4 pairs the current reward gets wrong, at an assumed 50 %: 8 pairs, none in
            await _wait(pilot, lambda: "≥8 more" in str(pw.query_one("#pair-counter").render()), "the counter")
            assert "reward v1: no judgement held out for it yet" in str(pw.query_one("#pair-counter").render())
            assert left["response"] in str(pw.query_one("#pair-left-text").render())
            assert right["response"] in str(pw.query_one("#pair-right-text").render())
            # a sample appended meanwhile (a live run) does not change the pair the key acts on
            with open(run_dir / "samples.jsonl", "a") as f:
                f.write(json.dumps(_sample(4, 0, left["prompt"], "a newer response", 0.9)) + "\n")
            await pilot.press("right")
            await _wait(pilot, lambda: len(_labels(run_dir)) == 3, "the pair row")
            row = _labels(run_dir)[-1]
            assert (row["chosen_id"], row["rejected_id"]) == (right["id"], left["id"])
            assert (row["chosen"], row["rejected"], row["prompt"]) == (right["response"], left["response"],
                                                                       left["prompt"])
            assert row["source"] == "human" and row["step"] == max(left["step"], right["step"])
            # the pair was scored by reward v0: it is not held out for v1 and cannot show v1
            # wrong, so the counter does not move
            await _wait(pilot, lambda: (pw.counter or {}).get("pairs") == 1, "the counter recomputed")
            counter = str(pw.query_one("#pair-counter").render())
            assert "no judgement held out for it yet" in counter and "≥8 more" in counter, counter
            second = pw.current
            assert second is not None and {s["id"] for s in second} != {left["id"], right["id"]}
            await pilot.press("s")                     # skip: nothing written
            await pilot.pause(0.2)
            assert len(_labels(run_dir)) == 3
            third = pw.current
            await pilot.press("left")
            await _wait(pilot, lambda: len(_labels(run_dir)) == 4, "the second pair row")
            row = _labels(run_dir)[-1]
            assert (row["chosen_id"], row["rejected_id"]) == (third[0]["id"], third[1]["id"])
            assert "preferred over" in str(pw.query_one("#pair-status").render())
            await pilot.press("escape")
            await _wait(pilot, lambda: app.screen is dash, "back on the dashboard")
            await _wait(pilot, lambda: "⇄ 2 pairs" in str(dash.query_one("#labels-bar").render()), "pair count")
            assert "3 since the last refit" in str(dash.query_one("#labels-bar").render())
            assert "2 pair(s) judged" in dash.answer
            # the sample view shows what the user said about a sample
            table = dash.query_one("#rollouts")
            table.goto(third[0]["id"])
            await pilot.press("enter")
            await _wait(pilot, lambda: type(app.screen).__name__ == "SampleScreen", "sample view")
            assert app.screen.sample["id"] == third[0]["id"] and app.screen.pair == "preferred"
            assert "preferred" in app.export_screenshot()

    import asyncio

    asyncio.run(go())


def test_pairwise_screen_says_why_a_fresh_pair_was_offered(run_dir):
    """A pair the actor wrote from candidates (``Run.sample_pair(candidates=...)``) says why it
    was picked; the counter holds out for reward v1 the judgement made on its samples."""
    why = {"why": "the current reward is least sure", "candidates": 6, "margin": 0.013}
    pair = [{**_sample(3, i, "Picked prompt", f"picked response {i}", 0.5 + 0.013 * i), "id": f"3-pair0{t}",
             "kind": "pair", "pair": 0, "reward_version": 1, "picked": why} for i, t in enumerate("ab")]
    (run_dir / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in pair))

    async def go():
        from console.screens.pairwise import PairwiseScreen

        app = ConsoleApp("attach", run=run_dir, runs_dir=run_dir.parent, gpu_probe=demo.no_nvml,
                         poll_interval=0.1, blink=False)
        async with app.run_test(size=(120, 36)) as pilot:
            await app.push_screen(PairwiseScreen(run_dir))
            pw = app.screen
            await _wait(pilot, lambda: pw.current is not None, "the pair")
            prompt = str(pw.query_one("#pair-prompt").render())
            assert "offered because the current reward is least sure (of 6 responses" in prompt
            hi = max(pw.current, key=lambda s: s["score"])
            await pilot.press("left" if pw.current[0] is hi else "right")
            await _wait(pilot, lambda: "agrees with 1 of 1 judgement(s) held out" in
                        str(pw.query_one("#pair-counter").render()), "the counter")
            # wrong on (0 + 1) / (1 + 2) at best: 4 / (1/3) = 12 held-out pairs, 1 is in
            assert "≥11 more" in str(pw.query_one("#pair-counter").render())

    import asyncio

    asyncio.run(go())
