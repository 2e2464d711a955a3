"""Responsiveness under load: ``python -m console.bench``.

A synthetic run directory gets 10 steps a second (one metrics line, eight samples and an events
line per step, the default's shape) from a writer thread, and a small stand-in control socket answers pause/resume the
way the supervisor does (the state flips at the next step boundary). The dashboard runs headless
(``App.run_test``) and we measure, as figures:

  * key → acknowledge: from ``pilot.press("p")`` to the runtime's reply arriving as a message,
    and to the new state showing on the dashboard (run.json → follower → screen);
  * key → local action: ``h``/``l`` (jump to the highest/lowest score) until the cursor moved;
  * frames: screen updates composed per second while the run streams;
  * keeping up: the step the dashboard shows vs the step on disk; the event loop's worst stall;
  * attaching: with ``--history-steps N`` the run has N steps of history written before the console
    attaches; ``attach_s`` is the time from starting the app until the dashboard shows the run and
    answers a key, ``history_s`` until the whole history is in (curves, every sample reachable).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from engine.records import MetricsRow, Sample
from engine.standin import StandInRun

STEPS_PER_S = 10.0
SAMPLES_PER_STEP = 8


class SyntheticRun:
    """A run directory written by the engine's own writer (a :class:`engine.standin.StandInRun`:
    run.json, metrics and sample lines, events.log) at ``rate`` steps a second, with its control
    socket answering pause/resume the way the supervisor does (the state flips at the next step)."""

    def __init__(self, root: Path, rate: float = STEPS_PER_S):
        self.path = root / "bench-20260101-000000"
        self.path.mkdir(parents=True)
        self.rd = StandInRun(self.path)
        self.rate = rate
        self.step = 0
        self.state = "running"
        self._lock = threading.Lock()
        self._pause_req = False
        self._stop = threading.Event()
        self.sock = self.rd.socket
        self._created = time.time() - 1.0
        here = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "recorded_run"
        cfgs = sorted(here.glob("*/config.yaml"))
        self.rd.config.write_text(cfgs[0].read_text() if cfgs else "run:\n  steps: 100000\n")
        for f in (self.rd.metrics, self.rd.samples, self.rd.labels, self.rd.events):
            f.touch()
        self._write_state()

    def write_history(self, steps: int, t0: float | None = None) -> None:
        """``steps`` steps written at once, before anything attaches, two seconds apart from
        ``t0`` (default: ending now)."""
        t0 = time.time() - steps * 2.0 if t0 is None else t0
        for _ in range(steps):
            when = t0 + self.step * 2.0
            m, samples, event = self._step_rows(when)
            self.rd.record_step(m, samples)
            self.rd.log_event(event, when=when)
        self._created = t0
        self._write_state()

    def _write_state(self) -> None:
        self.rd.write_state(
            name=self.path.name, state=self.state, step=self.step, steps=100000, created=self._created,
            supervisor_pid=os.getpid(), socket=str(self.sock), pids={"actor": os.getpid()},
            reward_source="lexicon:vader")

    # ---- the writer -------------------------------------------------------------------------------
    def _one_step(self) -> None:
        m, samples, event = self._step_rows(time.time())
        self.rd.record_step(m, samples)
        self.rd.log_event(event)

    def _step_rows(self, now: float) -> tuple[MetricsRow, list[Sample], str]:
        self.step += 1
        s = self.step
        rnd = random.Random(s)
        t = {k: rnd.uniform(0.001, 0.03) for k in ("rollout", "actor_logprobs", "ref", "critic", "reward",
                                                    "scoring", "advantage", "actor_update", "critic_update", "update")}
        t["step"] = sum(t.values())
        m = MetricsRow(step=s, time=now, timings=t, memory={"actor": {"rss_mb": 500.0, "peak_rss_mb": 520.0}},
                       values={"score_mean": 0.5 + 0.1 * rnd.random(), "score_std": 0.1,
                               "kl": rnd.uniform(-0.01, 0.01), "kl_coef": 0.05, "response_len_mean": 8.0,
                               "policy_loss": rnd.uniform(-0.01, 0.01), "value_loss": rnd.uniform(0.0, 0.2),
                               "clipfrac": 0.0, "entropy": 10.0, "tokens_per_s": 100.0})
        samples = [
            Sample(id=f"{s}-{i}", step=s, index=i, prompt=f"prompt {s}-{i} about a movie",
                   response=" ".join(rnd.choice(("good", "bad", "plot", "actor", "scene", "long")) for _ in range(8)),
                   score=rnd.random(), kl=rnd.uniform(-0.01, 0.01), ret=0.3, length=8, eos=False)
            for i in range(SAMPLES_PER_STEP)
        ]
        return m, samples, f"step {s}/100000 | synthetic"

    def _writer(self) -> None:
        period = 1.0 / self.rate
        nxt = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                if self.state == "running":
                    self._one_step()
                if self._pause_req and self.state == "running":
                    self.state = "paused"
                elif not self._pause_req and self.state == "paused":
                    self.state = "running"
                self._write_state()
            nxt += period
            self._stop.wait(max(0.0, nxt - time.monotonic()))

    # ---- the control requests, served on the stand-in's control socket ---------------------------------
    def _handle(self, req: dict) -> dict:
        op = req.get("op")
        with self._lock:
            if op == "pause":
                self._pause_req = True
                return {"ok": True, "pending": True, "message": f"pausing at the end of step {self.step + 1}"}
            if op == "resume":
                self._pause_req = False
                return {"ok": True, "pending": False, "message": "resuming"}
            if op == "status":
                return {"ok": True, "state": self.state, "step": self.step}
        return {"ok": False, "error": f"the bench does not do {op!r}"}

    def start(self) -> None:
        self.rd.serve(self._handle, hello=lambda: {"state": self.state, "step": self.step})
        threading.Thread(target=self._writer, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self.rd.close()


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


async def _bench(run: SyntheticRun, seconds: float, trials: int, size: tuple[int, int],
                 history: int = 0, attach_timeout: float = 120.0) -> dict:
    from console.app import ConsoleApp
    from console.messages import ControlReplied

    replies: list[tuple[str, float]] = []

    def hook(msg):
        if isinstance(msg, ControlReplied):
            replies.append((msg.op, time.perf_counter()))

    t_start = time.perf_counter()
    attached = threading.Event()

    def watchdog():      # the event loop may be too busy to notice the timeout itself
        if not attached.wait(attach_timeout):
            print(f"attach_s: >{attach_timeout:g} (gave up: the dashboard was not interactive by then)", flush=True)
            run.close()
            shutil.rmtree(run.path.parent, ignore_errors=True)
            os._exit(1)

    threading.Thread(target=watchdog, daemon=True).start()
    app = ConsoleApp("attach", run=run.path, runs_dir=run.path.parent, blink=False)
    frames = [0]
    original = app._display

    def counting_display(screen, renderable):
        if renderable is not None:
            frames[0] += 1
        return original(screen, renderable)

    app._display = counting_display  # count composed screen updates (headless: not written out)
    out: dict = {}
    async with app.run_test(size=size, message_hook=hook) as pilot:
        screen = app.screen
        while not (getattr(screen, "loaded", False) and screen.model.step > 0):
            await asyncio.sleep(0.005)
            if time.perf_counter() - t_start > attach_timeout:
                out["attach_s"] = None
                out["gave_up_s"] = attach_timeout
                app.exit()
                return out
        # and it answers a key: ``w`` (curves window) has run its action; not ``pilot.press``,
        # which also waits for the whole queue to drain (the history still streaming in)
        curves = screen.query_one("#curves")
        if hasattr(curves, "windowed"):
            before = curves.windowed
            press = asyncio.ensure_future(pilot.press("w"))
            while curves.windowed == before:
                await asyncio.sleep(0.002)
            out["attach_s"] = time.perf_counter() - t_start
            await press
            await pilot.press("w")
        else:   # a console without the key (measuring an older version): a press, waited for
            await pilot.press("end")
            out["attach_s"] = time.perf_counter() - t_start
        attached.set()
        while not (screen.model.step >= history and getattr(screen, "caught_up", True)):
            await asyncio.sleep(0.01)
            if time.perf_counter() - t_start > attach_timeout:
                break
        out["history_s"] = time.perf_counter() - t_start

        # event-loop stalls while the run streams
        stalls: list[float] = []
        stop = asyncio.Event()

        async def ticker():
            while not stop.is_set():
                t = time.perf_counter()
                await asyncio.sleep(0.01)
                stalls.append(time.perf_counter() - t - 0.01)

        tick = asyncio.create_task(ticker())
        frames[0] = 0
        start = time.perf_counter()
        await pilot.pause(seconds)
        elapsed = time.perf_counter() - start
        out["fps"] = frames[0] / elapsed
        out["stall_max_ms"] = max(stalls) * 1000 if stalls else 0.0
        out["stall_p99_ms"] = _pct(stalls, 0.99) * 1000 if stalls else 0.0
        out["lag_steps"] = run.step - screen.model.step
        out["disk_steps"] = run.step
        out["shown_steps"] = screen.model.step

        # key -> acknowledge (pause / resume), key -> state shown
        ack, shown = [], []
        for _ in range(trials):
            for op, want in (("pause", "paused"), ("resume", "running")):
                replies.clear()
                t = time.perf_counter()
                await pilot.press("p")
                while not replies:
                    await asyncio.sleep(0.002)
                ack.append(replies[0][1] - t)
                while screen.model.state != want:
                    await asyncio.sleep(0.005)
                shown.append(time.perf_counter() - t)
                while screen.pending:
                    await asyncio.sleep(0.005)
        out["ack_ms"] = [x * 1000 for x in ack]
        out["shown_ms"] = [x * 1000 for x in shown]

        # key -> local action (jump highest / lowest)
        local = []
        table = screen.query_one("#rollouts")
        for i in range(trials * 2):
            key = "h" if i % 2 == 0 else "l"
            before = table.cursor_row
            t = time.perf_counter()
            await pilot.press(key)
            while table.cursor_row == before and time.perf_counter() - t < 2:
                await asyncio.sleep(0.001)
            local.append((time.perf_counter() - t) * 1000)
        out["local_ms"] = local
        stop.set()
        await tick
        app.exit()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m console.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="how long to stream before the key trials")
    ap.add_argument("--trials", type=int, default=10, help="pause+resume round trips")
    ap.add_argument("--rate", type=float, default=STEPS_PER_S, help="synthetic steps per second")
    ap.add_argument("--size", default="120x40", help="terminal size, WxH")
    ap.add_argument("--history-steps", type=int, default=0,
                    help=f"steps of history ({SAMPLES_PER_STEP} samples each) written before the console attaches")
    ap.add_argument("--attach-timeout", type=float, default=120.0, help="give up attaching after this many seconds")
    a = ap.parse_args(argv)
    w, h = (int(x) for x in a.size.lower().split("x"))
    root = Path(tempfile.mkdtemp(prefix="rlhfc-bench-"))
    run = SyntheticRun(root, a.rate)
    if a.history_steps:
        run.write_history(a.history_steps)
    history = run.step
    size_mb = sum(f.stat().st_size for f in run.path.iterdir() if f.is_file()) / 1e6
    run.start()
    try:
        r = asyncio.run(_bench(run, a.seconds, a.trials, (w, h), history, a.attach_timeout))
    finally:
        run.close()
        shutil.rmtree(root, ignore_errors=True)
    if a.history_steps:
        print(f"history: {history} steps, {history * SAMPLES_PER_STEP} samples, {size_mb:.1f} MB on disk")
    if r.get("attach_s") is None:
        print(f"attach_s: >{r['gave_up_s']:g} (gave up: the dashboard was not interactive by then)")
        return 1
    print(f"attach_s: {r['attach_s']:.3f}")
    print(f"history_s: {r['history_s']:.3f}")

    def fig(xs):
        return f"median {statistics.median(xs):7.1f} ms   p90 {_pct(xs, 0.9):7.1f} ms   max {max(xs):7.1f} ms   (n={len(xs)})"

    print(f"console bench: synthetic run at {a.rate:g} steps/s ({SAMPLES_PER_STEP} samples/step), "
          f"dashboard {w}x{h}, headless, {os.cpu_count()} cores")
    print(f"  frames composed        {r['fps']:7.1f} /s   over {a.seconds:g}s of streaming")
    print(f"  keeping up             dashboard at step {r['shown_steps']}, disk at step {r['disk_steps']} "
          f"(lag {r['lag_steps']} steps; the follower polls every 0.5 s)")
    print(f"  event-loop stall       p99 {r['stall_p99_ms']:7.1f} ms   max {r['stall_max_ms']:7.1f} ms")
    print(f"  key p → ack (reply)    {fig(r['ack_ms'])}")
    print(f"  key p → state shown    {fig(r['shown_ms'])}   (includes waiting for the step boundary)")
    print(f"  key h/l → cursor moved {fig(r['local_ms'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
