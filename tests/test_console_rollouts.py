"""The rollouts table is keyed by sample id: what the user selected stays selected, and labels
land on it, whatever streams in; the whole history is reachable, sortable and filterable.

A synthetic run directory (console.bench.SyntheticRun, written the way the supervisor writes it)
with more samples than the old 1,000-row table held; steps are appended while the keys are pressed.
"""
from __future__ import annotations

import asyncio
import json

import pytest

from console import demo
from console.app import ConsoleApp
from console.bench import SAMPLES_PER_STEP, SyntheticRun
from console.history import ChunkTail, SampleIndex

pytestmark = pytest.mark.timeout(180)


def read_labels(run: SyntheticRun) -> list[dict]:
    return [json.loads(ln) for ln in (run.path / "labels.jsonl").read_text().splitlines() if ln.strip()]


async def wait_for(pilot, cond, timeout: float = 30.0, what: str = ""):
    import time

    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await pilot.pause(0.05)


@pytest.fixture
def synthetic(tmp_path):
    run = SyntheticRun(tmp_path)
    run.write_history(140)                 # 1,120 samples: more than the old table's 1,000 rows
    return run


def _app(run):
    return ConsoleApp("attach", run=run.path, runs_dir=run.path.parent, gpu_probe=demo.no_nvml,
                      poll_interval=0.1, blink=False)


def test_label_lands_on_the_chosen_sample_while_50_steps_stream_in(synthetic):
    run = synthetic

    async def go():
        app = _app(run)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.screen
            table = screen.query_one("#rollouts")
            await wait_for(pilot, lambda: screen.caught_up and table.row_count == 140 * SAMPLES_PER_STEP, what="history")
            assert table.follow and table.current()["id"] == f"140-{SAMPLES_PER_STEP - 1}"
            await pilot.press("up", "up", "up")          # leave the newest row: stop following
            chosen = table.current()["id"]
            assert chosen == f"140-{SAMPLES_PER_STEP - 4}" and not table.follow
            for k in range(50):                          # 50 steps stream in while the user acts
                run._one_step()
                run._write_state()
                if k == 25:
                    await wait_for(pilot, lambda: screen.model.step >= 160, what="new steps shown")
                    assert table.current()["id"] == chosen
                    await pilot.press("g")
                if k % 10 == 0:
                    await pilot.pause(0.05)
            await wait_for(pilot, lambda: len(screen.model.samples) == 190 * SAMPLES_PER_STEP, what="50 steps")
            await wait_for(pilot, lambda: any(r["sample_id"] == chosen for r in read_labels(run)), what="label row")
            rows = read_labels(run)
            assert [(r["sample_id"], r["label"]) for r in rows] == [(chosen, "good")]
            assert table.current()["id"] == chosen       # the cursor never moved off the sample
            await pilot.press("b")
            await wait_for(pilot, lambda: len(read_labels(run)) == 2, what="second label")
            assert read_labels(run)[1]["sample_id"] == chosen
            await pilot.press("enter")                   # the detail view opens the same sample
            await wait_for(pilot, lambda: type(app.screen).__name__ == "SampleScreen", what="detail")
            assert app.screen.sample["id"] == chosen

    asyncio.run(go())


def test_whole_history_reachable_sort_filter_and_search(synthetic):
    run = synthetic

    async def go():
        app = _app(run)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.screen
            table = screen.query_one("#rollouts")
            await wait_for(pilot, lambda: screen.caught_up and table.row_count == 140 * SAMPLES_PER_STEP, what="history")
            await pilot.press("home")                    # the very first sample is still there
            assert table.current()["id"] == "1-0"
            await pilot.press("s")                       # score, highest first
            idx = screen.model.samples
            best = max(range(len(idx)), key=lambda n: idx.scores[n])
            assert table.cursor_row == table.row_of(0) and table.ordinal_at(0) == best
            chosen = table.current()["id"]               # selection kept through the sort ("1-0")
            assert chosen == "1-0"
            for _ in range(5):                           # new steps insert into the sorted view
                run._one_step()
            run._write_state()
            await wait_for(pilot, lambda: len(idx) == 145 * SAMPLES_PER_STEP, what="5 steps")
            assert table.current()["id"] == chosen
            scores = [idx.scores[table.ordinal_at(r)] for r in range(table.row_count)]
            assert scores == sorted(scores, reverse=True)
            await pilot.press("g")
            await wait_for(pilot, lambda: screen.model.labels.get(chosen) == "good", what="label")
            await pilot.press("f")                       # filter: good only
            assert table.row_count == 1 and table.current()["id"] == chosen
            # search: a word only a few samples have, found from the first sample on
            with open(run.path / "samples.jsonl", "a") as f:
                f.write(json.dumps({"id": "146-0", "step": 146, "index": 0, "prompt": "a movie",
                                    "response": "a Zanzibar ending", "score": 0.5, "kl": 0.0}) + "\n")
            await wait_for(pilot, lambda: "146-0" in idx.ordinal, what="the odd sample")
            await pilot.press("f", "f", "f")             # bad (no row), unlabelled, matches→all (no search yet)
            assert table.filter == 0 and table.row_count == len(idx)
            await pilot.press("slash", *"zanzibar", "enter")
            assert table.current()["id"] == "146-0" and table.matches == {idx.ordinal["146-0"]}
            await pilot.press("escape")
            await pilot.press("f", "f", "f", "f")        # good, bad, unlabelled, and now "matches"
            assert table.row_count == 1 and table.current()["id"] == "146-0"
            line = "".join(seg.text for seg in table.render_line(1))
            assert "Zanzibar" in line and any(
                seg.style and seg.style.bold for seg in table.render_line(1) if "Zanzibar" in seg.text)

    asyncio.run(go())


def test_chunk_tail_and_index_read_back_by_offset(tmp_path):
    p = tmp_path / "samples.jsonl"
    rows = [{"id": f"{i}-0", "step": i, "index": 0, "prompt": f"p{i}", "response": "Ünïcode \"q\"" if i == 3 else "r",
             "score": i / 10, "kl": 0.0} for i in range(1, 8)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"id": "8-0", "st')
    t = ChunkTail(p)
    got = []
    while True:
        chunk = t.read(50)                               # smaller than one line: still whole lines
        got += chunk
        if t.at_end:
            break
    assert len(got) == 7 and all(p.read_bytes()[off:off + len(ln)] == ln for off, ln in got)
    idx = SampleIndex(p)
    idx.add([json.loads(ln) for _, ln in got], [off for off, _ in got])
    assert idx.get(2)["response"] == 'Ünïcode "q"' and idx.by_id("7-0")["prompt"] == "p7"
    assert idx.matches('"Q"') == {2} and idx.matches("ünï") == {2} and idx.matches("p5") == {4}
    assert idx.add([rows[0]]) == []                      # an id already indexed is not added twice
    keep = len(json.dumps(rows[-1])) + len('{"id": "8-0", "st') + 5
    tail = ChunkTail.from_tail(p, keep)                  # events: the last lines only, whole
    lines = tail.read()
    assert lines and lines[0][1].startswith(b'{"id": "7-0"') and tail._partial.startswith(b'{"id": "8-0"')
