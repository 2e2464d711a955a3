"""A sample, token by token: a real tiny run writes each logged response's tokens (piece,
log-prob under the actor and the reference, KL, advantage) into samples.jsonl; the sample view
colours them by one layer at a time (``l`` cycles it) with the selected token's values in a line;
the report lists the tokens that moved most. Older samples (no ``tokens``) still read and show."""
from __future__ import annotations

import asyncio
import json
import math
import re

import pytest

from console import demo
from console.app import ConsoleApp
from console.widgets.tokens import LAYERS, TokenView, fmt, layer_colour
from engine.records import Sample, TokenTrace
from engine.report import moved_tokens, write_report
from tests.conftest import kill_run, start_tiny

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """configs/tiny.yaml (k1 KL, GAE), three steps, four logged samples a step."""
    runs_dir = tmp_path_factory.mktemp("runs")
    started: list = []
    run = start_tiny(runs_dir, started, "run.steps=3")
    try:
        assert run.wait(timeout=280) == "finished", run.info.get("failure")
        yield run
    finally:
        for r in started:
            kill_run(r)


def _lines(run) -> list[dict]:
    return [json.loads(ln) for ln in (run.path / "samples.jsonl").read_text().splitlines() if ln.strip()]


def test_each_logged_sample_carries_its_tokens_one_entry_per_response_token(tiny_run):
    lines = _lines(tiny_run)
    assert len(lines) == 3 * 4
    for s in lines:
        t = TokenTrace.from_dict(s["tokens"])
        assert len(t) == s["length"] > 0, s["id"]
        for layer, _ in LAYERS:
            assert len(getattr(t, layer)) == s["length"], (s["id"], layer)
        # every token's text, decoded alone, is in the sample's own decoding of the response
        # (but a special token, which that decoding skips, or part of a multi-byte character)
        for piece in t.piece:
            if "\ufffd" not in piece and not re.fullmatch(r"<[^<>]*>", piece):
                assert piece.strip() in s["response"], (s["id"], piece)
        assert all(lp < 0 for lp in t.logprob + t.ref_logprob)


def test_token_kl_is_the_k1_estimate_and_sums_to_the_samples_kl(tiny_run):
    for s in _lines(tiny_run):
        t = TokenTrace.from_dict(s["tokens"])
        assert t.kl_estimator == "k1"            # configs/tiny.yaml's ppo.kl_estimator
        for i in range(len(t)):
            # log-probs are rounded to 4 decimals each, the KL to 4 significant digits
            assert abs(t.kl[i] - (t.logprob[i] - t.ref_logprob[i])) <= 1.0001e-4 + 5e-4 * abs(t.kl[i]), (s["id"], i)
        # the sample's kl is the unrounded k1 sum over its response; its advantage the tokens' mean
        assert sum(t.kl) == pytest.approx(s["kl"], abs=1e-6 * len(t) + 1e-3 * sum(abs(x) for x in t.kl))
        assert sum(t.advantage) / len(t) == pytest.approx(s["advantage"], abs=1e-3 * max(1.0, abs(s["advantage"])))
    # the advantages of a GAE run differ from token to token (a response-level copy would not)
    assert any(len(set(TokenTrace.from_dict(s["tokens"]).advantage)) > 1 for s in _lines(tiny_run))


def test_older_samples_without_tokens_still_read_and_malformed_ones_say_what_is_wrong():
    old = {"id": "3-1", "step": 3, "index": 1, "prompt": "p", "response": "r", "score": 0.5, "kl": 0.01,
           "return": 0.2, "length": 8, "eos": False}
    s = Sample.from_dict(old)
    assert s.tokens is None and "tokens" not in s.to_dict()     # and written back without one
    good = TokenTrace.make(["a", "b"], [-1.0, -2.0], [-1.5, -2.0], [0.5, 0.0], [0.1, -0.1]).to_dict()
    assert TokenTrace.from_dict(good).kl == [0.5, 0.0]
    with pytest.raises(ValueError, match=r"tokens\.kl: 1 values for 2 tokens"):
        TokenTrace.from_dict({**good, "kl": [0.5]})
    with pytest.raises(ValueError, match=r"tokens\.piece"):
        TokenTrace.from_dict({k: v for k, v in good.items() if k != "piece"})


async def _wait(pilot, cond, what: str, timeout: float = 30.0):
    import time

    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def _text(app, selector: str) -> str:
    return str(app.screen.query_one(selector).content)


def test_sample_view_colours_the_tokens_by_the_layer_l_cycles_and_shows_the_selected_tokens_values(tiny_run):
    last = _lines(tiny_run)[-1]                      # the newest sample: the table's selection
    t = TokenTrace.from_dict(last["tokens"])

    async def go():
        app = ConsoleApp("attach", run=tiny_run.path, runs_dir=tiny_run.path.parent, gpu_probe=demo.no_nvml,
                         poll_interval=0.1, blink=False)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.screen
            await _wait(pilot, lambda: screen.caught_up and screen.query_one("#rollouts").row_count == 12, "history")
            await pilot.press("enter")
            await _wait(pilot, lambda: type(app.screen).__name__ == "SampleScreen", "the sample view")
            await pilot.pause()
            assert app.screen.sample["id"] == last["id"]
            view = app.screen.query_one(TokenView)
            assert "log-prob under the actor" in _text(app, "#sample-token-legend")
            line = _text(app, "#sample-token-cursor")
            assert f"token 1/{len(t)} {t.piece[0]!r}" in line and f"log-prob {t.logprob[0]:.4f}" in line
            await pilot.press("right", "right")
            await pilot.pause()
            line = _text(app, "#sample-token-cursor")
            assert view.cursor == 2 and f"token 3/{len(t)} {t.piece[2]!r}" in line
            assert f"log-prob {t.logprob[2]:.4f}" in line and f"ref {t.ref_logprob[2]:.4f}" in line
            assert f"KL k1 {fmt(t.kl[2])}" in line and f"adv {fmt(t.advantage[2])}" in line
            for n, (layer, what) in enumerate(LAYERS):
                if n:
                    await pilot.press("l")
                    await pilot.pause()
                assert view.layer_name == layer and what in _text(app, "#sample-token-legend")
                # each token's background is its value in this layer, from the file
                values = getattr(t, layer)
                scale = max(abs(v) for v in values)
                spans = view.render_tokens().spans
                for i in range(len(t)):
                    r, g, b = layer_colour(layer, values[i], scale)
                    assert spans[i].style.bgcolor.triplet == (r, g, b), (layer, i)
            await pilot.press("l")                           # round again to the actor's log-prob
            await pilot.press("end")
            await pilot.pause()
            assert view.layer_name == "logprob" and view.cursor == len(t) - 1
            assert f"log-prob {t.logprob[-1]:.4f} (p {math.exp(t.logprob[-1]):.3g})" in _text(app, "#sample-token-cursor")

    asyncio.run(go())


def test_a_sample_without_tokens_shows_its_plain_response_and_no_layer_key(tmp_path):
    from console.screens.sample import SampleScreen

    old = {"id": "3-1", "step": 3, "index": 1, "prompt": "a prompt", "response": "an old response", "score": 0.5}
    broken = {**old, "id": "3-2", "tokens": {"piece": ["an", " old"], "logprob": [-1.0], "ref_logprob": [-1.0, -2.0],
                                             "kl": [0.0, 0.0], "advantage": [0.0, 0.0]}}

    async def go():
        run = demo.copy_recorded_run(tmp_path / "runs", "finished")
        app = ConsoleApp("attach", run=run, runs_dir=run.parent, gpu_probe=demo.no_nvml, blink=False)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            app.push_screen(SampleScreen(old))
            await pilot.pause()
            assert not app.screen.query(TokenView) and "an old response" in _text(app, "#sample-response")
            assert app.screen.check_action("layer", ()) is False      # hidden from the footer
            await pilot.press("l")
            assert not app.screen.query(TokenView)
            app.pop_screen()
            app.push_screen(SampleScreen(broken))
            await pilot.pause()
            assert "an old response" in _text(app, "#sample-response")
            assert "tokens.logprob: 1 values for 2 tokens" in _text(app, "#sample-token-error")

    asyncio.run(go())


def test_report_lists_the_last_steps_tokens_with_the_largest_kl_and_advantage(tiny_run, tmp_path):
    lines = [s for s in _lines(tiny_run) if s["step"] == 3]
    toks = [(s["id"], i, TokenTrace.from_dict(s["tokens"])) for s in lines for i in range(s["length"])]
    top_kl = max(toks, key=lambda x: abs(x[2].kl[x[1]]))
    top_adv = max(toks, key=lambda x: abs(x[2].advantage[x[1]]))
    moved = moved_tokens([Sample.from_dict(s) for s in _lines(tiny_run)])
    assert moved["step"] == 3 and moved["estimator"] == "k1"
    assert abs(moved["kl"][0]["kl"]) == abs(top_kl[2].kl[top_kl[1]])
    assert abs(moved["advantage"][0]["advantage"]) == abs(top_adv[2].advantage[top_adv[1]])
    for layer in ("kl", "advantage"):
        mags = [abs(r[layer]) for r in moved[layer]]
        assert mags == sorted(mags, reverse=True) and len(mags) == 8
        assert all(sum(r["sample"] == s["id"] for r in moved[layer]) <= 3 for s in lines)
    md = write_report(tiny_run.path, tmp_path / "report").read_text()
    section = md[md.index("## Tokens that moved most: step 3"):]
    first_kl = section[section.index("Largest |KL|"):].splitlines()[4]
    r = moved["kl"][0]
    assert first_kl.startswith(f"| {r['sample']} | {r['position'] + 1} | ") and f"⟦{r['piece']}⟧" in first_kl
    assert "Largest |advantage|" in section


def test_report_of_a_run_without_tokens_has_no_token_section(tmp_path):
    run = demo.copy_recorded_run(tmp_path / "runs", "finished")
    md = write_report(run, tmp_path / "report").read_text()
    assert "## Samples:" in md and "Tokens that moved most" not in md
