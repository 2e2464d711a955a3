"""The dashboard of one run: header, timings, GPU, curves, rollouts, events.

History comes from the run directory (a thread worker polls it with JsonlTail every
``poll_interval`` seconds, so it works for finished runs and for several viewers); requests go
over the control socket in thread workers and come back as ``ControlReplied`` messages. The
event loop only merges deltas into the model and redraws the plots on a 1 s timer.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Input
from textual.worker import get_current_worker

from console.messages import ControlReplied, GpuSampled, LabelWritten, RefitReplied, RunUpdated
from console.model import CONTROL_STATES, ENDED_STATES, RunFollower, RunModel
from console.sources import check_reward_source
from console.widgets.curves import Curves
from console.widgets.events_pane import EventsPane
from console.widgets.gpu_pane import GpuPane
from console.widgets.hack_warning import HackWarning
from console.widgets.labels_bar import LabelsBar
from console.widgets.rollouts import SUSPICIOUS, RolloutsTable
from console.widgets.run_header import RunHeader
from console.widgets.timings import TimingsPane

SENDING = {
    "pause": "pause: sending… (takes effect at the end of the current step)",
    "resume": "resume: sending…",
    "checkpoint": "checkpoint: requested, saving at the end of the current step…",
    "swap_reward": "reward swap: loading '{arg}'…",
    "stop": "stop: sending…",
}


@dataclass(frozen=True)
class PaneSpec:
    """One pane of the dashboard. ``name``: its border title (and the pane's name in the
    header when tab moves to it); ``id``: the widget's DOM id (its CSS is ``#<id>`` in
    dashboard.tcss); ``column``: ``right`` (curves, rollouts, events) or ``left`` (timings,
    GPU) in the wide layout; ``make(screen)``: the widget, built in ``compose``; ``focus``:
    the id of the widget inside it that takes the focus when tab reaches it (default: the
    pane itself)."""

    name: str
    id: str
    column: str
    make: Callable[["DashboardScreen"], Widget]
    focus: str = ""

    @property
    def selector(self) -> str:
        return f"#{self.id}"

    @property
    def focus_selector(self) -> str:
        return f"#{self.focus or self.id}"


def _rollouts_pane(screen: "DashboardScreen") -> Widget:
    return Vertical(
        HackWarning(id="hack-warning"),
        LabelsBar(id="labels-bar"),
        RolloutsTable(screen.model.samples, screen.model.labels, id="rollouts"),
        Input(placeholder="find in prompts and responses (enter: next, esc: close)", id="search"),
        id="rollouts-pane")


# The panes in tab order. The right column comes first so that the narrow (stacked) layout
# starts with the curves and the rollouts; the wide layout docks the left column to the left.
PANES: tuple[PaneSpec, ...] = (
    PaneSpec("curves", "curves", "right", lambda s: Curves(id="curves")),
    PaneSpec("rollouts", "rollouts-pane", "right", _rollouts_pane, focus="rollouts"),
    PaneSpec("events", "events", "right", lambda s: EventsPane(id="events")),
    PaneSpec("timings", "timings", "left", lambda s: TimingsPane(id="timings")),
    PaneSpec("GPU · memory", "gpu", "left", lambda s: GpuPane(id="gpu")),
)
COLUMNS = ("right", "left")      # composed in this order (#right, #left)


class DashboardScreen(Screen):
    HELP_TITLE = "dashboard"
    HELP_KIND = "dashboard"
    AUTO_FOCUS = "#rollouts"

    BINDINGS = [
        Binding("question_mark", "app.help", "help", key_display="?", id="dashboard.help",
                tooltip="Every key of this screen and what it does"),
        Binding("p", "pause", "pause", id="dashboard.pause",
                tooltip="Pause the run; it takes effect at the end of the current step"),
        Binding("p", "resume", "resume", id="dashboard.resume", tooltip="Resume the paused run"),
        Binding("c", "checkpoint", "checkpoint", id="dashboard.checkpoint",
                tooltip="Save a checkpoint now (at the end of the current step)"),
        Binding("r", "swap_reward", "reward", id="dashboard.swap_reward",
                tooltip="Swap the reward model or function of the live run (asks for the source)"),
        Binding("x", "stop", "stop", id="dashboard.stop",
                tooltip="Stop the run at the end of the step, with a checkpoint (asks first)"),
        Binding("d,q", "detach", "detach", id="dashboard.detach",
                tooltip="Leave the dashboard; training continues (re-attach later)"),
        Binding("g", "label('good')", "good", id="dashboard.label_good",
                tooltip="Mark the selected sample good (appended to labels.jsonl)"),
        Binding("b", "label('bad')", "bad", id="dashboard.label_bad",
                tooltip="Mark the selected sample bad (appended to labels.jsonl)"),
        Binding("a", "pairwise", "pairs", id="dashboard.pairwise",
                tooltip="Compare two responses to one prompt side by side and prefer one (labels.jsonl)"),
        Binding("R", "refit", "refit", key_display="R", id="dashboard.refit",
                tooltip="Refit the reward model from the judgements; swapped in at a step boundary only "
                        "if it is not worse (progress in the events pane)"),
        Binding("enter", "open_sample", "open", id="dashboard.open_sample",
                tooltip="Show the selected sample in full"),
        Binding("l,left_square_bracket", "jump('low')", "lowest", key_display="l/[", id="dashboard.lowest",
                tooltip="Jump to the sample with the lowest score"),
        Binding("h,right_square_bracket", "jump('high')", "highest", key_display="h/]", id="dashboard.highest",
                tooltip="Jump to the sample with the highest score"),
        Binding("slash", "search", "search", key_display="/", id="dashboard.search",
                tooltip="Find text in prompts and responses"),
        Binding("n", "search_next", "next match", id="dashboard.search_next", show=False,
                tooltip="Next sample matching the search"),
        Binding("v", "curves('next')", "next plots", id="dashboard.curves_next", show=False,
                tooltip="Show the next plots in the curves pane (as many as fit, each readable)"),
        Binding("w", "curves('window')", "window", id="dashboard.curves_window", show=False,
                tooltip="Curves: the last 200 steps or the whole run"),
        Binding("t", "curves('time')", "x axis", id="dashboard.curves_time", show=False,
                tooltip="Curves: x by step or by minutes since the start"),
        Binding("m", "curves('metrics')", "all metrics", id="dashboard.curves_metrics", show=False,
                tooltip="Curves pane: every recorded metric with a sparkline, or back to the plots"),
        Binding("tab", "pane(1)", "next pane", key_display="tab", id="dashboard.next_pane", show=False,
                tooltip="Next pane (at 80 columns the panes take turns filling the screen)"),
        Binding("shift+tab", "pane(-1)", "previous pane", show=False, id="dashboard.previous_pane",
                tooltip="Previous pane"),
        Binding("s", "sort", "sort", id="dashboard.sort", show=False,
                tooltip="Sort the rollouts: newest last, score ↓, score ↑, |KL| ↓, labelled first"),
        Binding("f", "filter", "filter", id="dashboard.filter", show=False,
                tooltip="Filter the rollouts: all, good, bad, unlabelled, search matches, suspicious"),
        Binding("exclamation_mark", "suspicious", "suspicious", key_display="!", id="dashboard.suspicious", show=False,
                tooltip="Rollouts: only the samples a reward-hacking monitor flagged (again: all)"),
    ]

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)
        self.model: RunModel = RunModel(self.path)
        self.pending: dict[str, str] = {}
        self.answer = ""
        self.loaded = False         # the first part of the history is in: the dashboard answers keys
        self.caught_up = False      # the whole history on disk has been read
        self._posted = 0
        self._applied = 0
        self.gpu_report = None
        self._drawn = -1
        self._search = ""
        # index in PANES: the pane shown (narrow) or focused (wide); first the one AUTO_FOCUS is in
        self.pane = next(i for i, p in enumerate(PANES) if p.focus_selector == self.AUTO_FOCUS)
        self._gpu_pids: dict = {}
        self._bar_drawn = False

    # ---- layout ---------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield RunHeader(id="run-header")
        with VerticalScroll(id="body", can_focus=False):
            for column in COLUMNS:
                with Vertical(id=column):
                    for spec in PANES:
                        if spec.column == column:
                            w = spec.make(self)
                            w.add_class("pane")
                            w.border_title = spec.name
                            yield w
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        app = self.app
        self.model.clock = getattr(app, "clock", time.time)
        self.query_one("#search", Input).display = False
        self.query_one("#search", Input).cursor_blink = getattr(app, "blink", True)
        self.query_one(RunHeader).show(self.model, self.pending, self.answer)
        self.sub_title = self.model.name
        self._follow()
        self._gpu()
        self.set_interval(1.0, self._tick)

    def on_unmount(self) -> None:
        self.model.samples.close()       # the index's read handle on samples.jsonl

    def ready_for_snapshot(self) -> bool:
        return self.loaded and self.caught_up and self.gpu_report is not None

    # ---- workers ----------------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="follow", exit_on_error=False)
    def _follow(self) -> None:
        worker = get_current_worker()
        interval = float(getattr(self.app, "poll_interval", 0.5))
        follower = RunFollower(self.path)
        told_caught_up = False
        while not worker.is_cancelled:
            delta = follower.poll()
            if delta or (delta.caught_up and not told_caught_up):
                told_caught_up = told_caught_up or delta.caught_up
                self._posted += 1
                self.post_message(RunUpdated(delta))
            if not delta.caught_up:
                # history: the next chunk as soon as the screen has taken this one (never a
                # backlog of chunks in front of the user's keys)
                t0 = time.monotonic()
                while self._applied < self._posted and time.monotonic() - t0 < 2.0 and not worker.is_cancelled:
                    time.sleep(0.005)
                continue
            # slower once the run has ended; faster while a request waits for its state change
            wait = interval * 4 if follower.state in ENDED_STATES else interval
            start = time.monotonic()
            while time.monotonic() - start < wait:
                if worker.is_cancelled:
                    return
                if self.pending and time.monotonic() - start >= 0.1:
                    break
                time.sleep(0.02)

    @work(thread=True, exclusive=True, group="gpu", exit_on_error=False)
    def _gpu(self) -> None:
        from console.gpu import NvmlProbe, live_cpu, live_rss

        worker = get_current_worker()
        probe = getattr(self.app, "gpu_probe", None) or NvmlProbe().read
        while not worker.is_cancelled:
            report = probe()
            report.live_rss = live_rss(dict(self._gpu_pids))
            report.live_cpu = live_cpu(dict(self._gpu_pids))
            self.post_message(GpuSampled(report))
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                if worker.is_cancelled:
                    return
                time.sleep(0.05)

    @work(thread=True, group="control", exit_on_error=False)
    def _send(self, op: str, arg: str = "") -> None:
        from engine.client import Run, RunError

        t0 = time.perf_counter()
        run = Run(self.path)
        try:
            if op == "pause":
                r = run.pause()
            elif op == "resume":
                r = run.resume()
            elif op == "checkpoint":
                r = run.checkpoint(wait=True)
            elif op == "swap_reward":
                r = run.swap_reward(arg)
            elif op == "stop":
                r = run.stop()
            else:  # pragma: no cover
                raise RunError(f"unknown request {op}")
            self.post_message(ControlReplied(op, True, str(r.get("message") or "ok"), r, t0))
        except RunError as e:
            self.post_message(ControlReplied(op, False, str(e), None, t0))
        except Exception as e:  # noqa: BLE001 - shown, never a crash
            self.post_message(ControlReplied(op, False, f"{type(e).__name__}: {e}", None, t0))

    @work(thread=True, group="refit", exit_on_error=False)
    def _send_refit(self) -> None:
        from engine.client import Run

        try:
            r = Run(self.path).refit_reward()
            self.post_message(RefitReplied(True, str(r.get("message"))))
        except Exception as e:  # noqa: BLE001 - shown, never a crash
            self.post_message(RefitReplied(False, str(e)))

    def on_refit_replied(self, message: RefitReplied) -> None:
        self.pending.pop("refit", None)
        self.answer = ("✓ " if message.ok else "✗ refit: ") + message.message
        if not message.ok:
            self.notify(message.message, title="refit refused", severity="error")
        self.refresh_bindings()
        self._show_header()

    @work(thread=True, group="labels", exit_on_error=False)
    def _write_label(self, sample_id: str, step: int, verdict: str) -> None:
        from engine.client import Run

        try:
            row = Run(self.path).label(sample_id, verdict)
            self.post_message(LabelWritten(row))
        except Exception as e:  # noqa: BLE001
            self.post_message(LabelWritten({"sample_id": sample_id, "label": verdict}, f"{type(e).__name__}: {e}"))

    # ---- messages ---------------------------------------------------------------------------------
    def on_run_updated(self, message: RunUpdated) -> None:
        d = message.delta
        m = self.model
        before = m.state
        m.apply(d)
        self._applied += 1
        self.loaded = True
        self.caught_up = self.caught_up or d.caught_up
        self._gpu_pids = dict(m.pids)
        if m.new_samples or d.labels:
            table = self.query_one(RolloutsTable)
            table.add(m.new_samples)
            if any(n in m.samples.flags for n in m.new_samples):
                self.refresh_bindings()           # "!" (suspicious) has something to show now
            for lab in d.labels:
                if lab.sample_id:          # a mark (a pair has no sample_id of its own)
                    table.set_label(str(lab.sample_id), str(lab.label))
            self._rollouts_title()
        if d.events:
            self.query_one(EventsPane).add_lines(d.events)
        if d.labels or d.info is not None or not self._bar_drawn:
            self._bar_drawn = True
            self.query_one(LabelsBar).show(m)
        if d.state is not None and d.state != before:
            self._state_changed(before, d.state)
        self._show_header()

    def _state_changed(self, before: str, state: str) -> None:
        p = self.pending
        if state == "paused" and "pause" in p:
            p.pop("pause")
            self.answer = f"✓ paused after step {self.model.step}"
        if state == "running" and "resume" in p:
            p.pop("resume")
            self.answer = f"✓ resumed at step {self.model.step}"
        if state in ENDED_STATES:
            if "stop" in p:
                self.answer = f"✓ {state} at step {self.model.step}"
            p.clear()
        self.refresh_bindings()

    def on_control_replied(self, message: ControlReplied) -> None:
        op, p = message.op, self.pending
        r = message.reply
        if not message.ok:
            p.pop(op, None)
            self.answer = f"✗ {op.replace('_', ' ')}: {message.message}"
            self.notify(message.message, title=f"{op.replace('_', ' ')} refused", severity="error")
        elif op == "pause":
            if self.model.state == "paused":       # the state change beat the reply here
                p.pop("pause", None)
                self.answer = f"✓ paused after step {self.model.step}"
            elif r.get("pending"):
                p["pause"] = f"{message.message} — the pause takes effect at the end of the current step"
            else:
                p.pop("pause", None)
                self.answer = f"✓ {message.message}"
        elif op == "resume":
            if self.model.state == "paused":
                p["resume"] = f"{message.message}…"
            else:
                p.pop("resume", None)
                self.answer = f"✓ resumed at step {self.model.step}"
        elif op == "checkpoint":
            p.pop("checkpoint", None)
            where = Path(str(r.get("path", ""))).name
            self.answer = f"✓ checkpoint saved at step {r.get('step')} ({where})"
        elif op == "swap_reward":
            p.pop("swap_reward", None)
            secs = r.get("seconds")
            self.answer = (f"✓ reward is now '{r.get('source')}' (was '{r.get('previous')}')"
                           + (f", loaded in {secs:.1f}s" if isinstance(secs, (int, float)) else ""))
        elif op == "stop":
            if self.model.state in ENDED_STATES:
                p.pop("stop", None)
            else:
                p["stop"] = f"{message.message}…"
        self.refresh_bindings()
        self._show_header()

    def on_gpu_sampled(self, message: GpuSampled) -> None:
        self.gpu_report = message.report
        self.query_one(GpuPane).render_report(self.gpu_report, self.model)

    def on_label_written(self, message: LabelWritten) -> None:
        row = message.row
        if message.error:
            self.notify(message.error, title="label not written", severity="error")
            return
        self.model.labels[str(row["sample_id"])] = row["label"]
        self.query_one(RolloutsTable).set_label(str(row["sample_id"]), row["label"])
        self.answer = f"✓ sample {row['sample_id']} marked {row['label']} (labels.jsonl)"
        self._show_header()

    # ---- drawing ----------------------------------------------------------------------------------
    def _rollouts_title(self) -> None:
        table = self.query_one(RolloutsTable)
        pane = self.query_one("#rollouts-pane")
        pane.border_title = "rollouts"
        pane.border_subtitle = table.describe() + ("" if self.caught_up else " · loading history…")

    def _show_header(self) -> None:
        self.query_one(RunHeader).show(self.model, self.pending, self.answer, narrow=self.narrow)
        table = self.query_one(RolloutsTable)
        self.query_one(HackWarning).show(self.model, filtered=table.filter == SUSPICIOUS)

    def _tick(self) -> None:
        if self.model.version != self._drawn:
            self.redraw_now()
        elif self.model.alive:
            self._show_header()

    def redraw_now(self) -> None:
        self._drawn = self.model.version
        self.query_one(TimingsPane).redraw(self.model)
        self.query_one(Curves).redraw(self.model)
        self.query_one(GpuPane).render_report(self.gpu_report, self.model)
        self._show_header()

    # ---- keys -------------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple) -> Optional[bool]:
        m = self.model
        controllable = m.alive and m.state in CONTROL_STATES
        if action == "pause":
            if m.state == "paused" or "resume" in self.pending:
                return False  # the resume binding shows instead
            return True if controllable and "pause" not in self.pending and "stop" not in self.pending else None
        if action == "resume":
            if m.state != "paused" and "resume" not in self.pending:
                return False
            return True if controllable and "resume" not in self.pending and "stop" not in self.pending else None
        if action == "refit":
            busy = (m.info.refit or {}).get("state") == "running"
            return True if controllable and not busy and "refit" not in self.pending else None
        if action == "pairwise":
            return True if len(m.samples) or m.alive else None
        if action in ("checkpoint", "swap_reward"):
            return True if controllable and action not in self.pending and "stop" not in self.pending else None
        if action == "stop":
            return True if m.alive and m.state != "stopping" and "stop" not in self.pending else None
        if action in ("label", "open_sample", "jump"):
            return True if self.is_mounted and self.query_one(RolloutsTable).row_count else None
        if action in ("search", "sort", "filter"):     # also when the filter shows no row
            return True if len(m.samples) else None
        if action == "suspicious":
            return True if m.samples.flags else None
        if action == "search_next":
            return True if self._search else None
        return True

    def _request(self, op: str, arg: str = "") -> None:
        self.pending[op] = SENDING[op].format(arg=arg)
        self.answer = ""
        self.refresh_bindings()
        self._show_header()
        self._send(op, arg)

    def action_pause(self) -> None:
        self._request("pause")

    def action_resume(self) -> None:
        self._request("resume")

    def action_checkpoint(self) -> None:
        self._request("checkpoint")

    def action_swap_reward(self) -> None:
        from console.screens.prompt import PromptScreen

        current = self.model.info.reward_source or ""

        def done(source: Optional[str]) -> None:
            if source:
                self._request("swap_reward", source)

        self.app.push_screen(PromptScreen(
            "Swap the reward of the live run to:", value="", placeholder=current or "lexicon:vader",
            help="bundled:NAME · lexicon:vader · python:module:function · a folder · org/name",
            check=check_reward_source, blink=getattr(self.app, "blink", True)), done)

    def action_refit(self) -> None:
        self.pending["refit"] = "refit: starting… (progress in the events pane)"
        self.answer = ""
        self.refresh_bindings()
        self._show_header()
        self._send_refit()

    def action_pairwise(self) -> None:
        from console.screens.pairwise import PairwiseScreen

        def done(n: Optional[int]) -> None:
            if n:
                self.answer = f"✓ {n} pair(s) judged (labels.jsonl)"
                self._show_header()

        self.app.push_screen(PairwiseScreen(self.path, alive=self.model.alive), done)

    def action_stop(self) -> None:
        from console.screens.confirm import ConfirmScreen

        def done(yes: Optional[bool]) -> None:
            if yes:
                self._request("stop")

        self.app.push_screen(ConfirmScreen(
            f"Stop {self.model.name} at the end of the current step (with a checkpoint)?", "Stop", "Keep running"), done)

    def action_detach(self) -> None:
        self.workers.cancel_all()
        stack = self.app.screen_stack
        if len(stack) > 2 and getattr(stack[-2], "HELP_KIND", "") == "home":
            self.app.pop_screen()
        else:
            m = self.model
            if m.alive:
                msg = (f"detached from {m.name}; training continues ({m.state}). "
                       f"Re-attach: rlhf-console attach {m.name}")
            else:
                msg = f"left {m.name} ({m.state})"
            self.app.exit(message=msg)

    def write_label(self, sample: dict, verdict: str) -> None:
        self._write_label(str(sample.get("id")), int(sample.get("step") or 0), verdict)

    def action_label(self, verdict: str) -> None:
        s = self.query_one(RolloutsTable).current()
        if s is not None:
            self.write_label(s, verdict)

    def action_open_sample(self) -> None:
        from console.screens.sample import SampleScreen

        s = self.query_one(RolloutsTable).current()
        if s is not None:
            table = self.query_one(RolloutsTable)
            sid = str(s.get("id"))
            self.app.push_screen(SampleScreen(s, self.model.labels.get(sid, ""), search=table.search,
                                              pair=self.model.pair_marks.get(sid, "")))

    @on(RolloutsTable.Opened)
    def _row_opened(self, event: RolloutsTable.Opened) -> None:
        event.stop()
        self.action_open_sample()

    def action_curves(self, what: str) -> None:
        c = self.query_one(Curves)
        if what == "next":
            c.show_metrics = False
            c.page += 1
        elif what == "window":
            c.windowed = not c.windowed
        elif what == "time":
            c.by_time = not c.by_time
        elif what == "metrics":
            c.show_metrics = not c.show_metrics
        c.redraw(self.model)

    # ---- panes ------------------------------------------------------------------------------------
    @property
    def narrow(self) -> bool:
        return self.has_class("-narrow")

    def show_pane(self, i: int) -> None:
        """Narrow: only pane ``i`` fills the body; wide: every pane shows and ``i`` gets the focus."""
        self.pane = i % len(PANES)
        spec = PANES[self.pane]
        for j, other in enumerate(PANES):
            self.query_one(other.selector).set_class(self.narrow and j != self.pane, "-hidden-pane")
        for column in COLUMNS:      # narrow: only the column that holds the pane
            self.query_one(f"#{column}").display = not self.narrow or column == spec.column
        w = self.query_one(spec.focus_selector)
        if w.focusable:
            w.focus()
        self.query_one("#body").scroll_home(animate=False)
        self.sub_title = f"{self.model.name} · pane {self.pane + 1}/{len(PANES)}: {spec.name}"
        self._show_header()

    def action_pane(self, delta: int) -> None:
        self.show_pane(self.pane + delta)
        if self.narrow:
            self.answer = f"pane {self.pane + 1}/{len(PANES)}: {PANES[self.pane].name} (tab: next)"
            self._show_header()
        self.redraw_now()

    def on_resize(self) -> None:
        self.call_after_refresh(self.show_pane, self.pane)

    def action_sort(self) -> None:
        table = self.query_one(RolloutsTable)
        self.answer = f"rollouts sorted by {table.cycle_sort()} (s: next order)"
        self._rollouts_title()
        self._show_header()

    def action_filter(self) -> None:
        table = self.query_one(RolloutsTable)
        self.answer = f"rollouts: {table.cycle_filter()} (f: next filter)"
        self._rollouts_title()
        self._show_header()

    def action_suspicious(self) -> None:
        table = self.query_one(RolloutsTable)
        if table.show_suspicious():
            self.answer = (f"rollouts: the {table.row_count:,} suspicious samples (⚠: flagged by a "
                           f"reward-hacking monitor; ! again: all)")
        else:
            self.answer = "rollouts: all (! : only the suspicious ones)"
        self._rollouts_title()
        self._show_header()

    def action_jump(self, which: str) -> None:
        table = self.query_one(RolloutsTable)
        key = table.extreme(highest=(which == "high"))
        if key is not None:
            table.goto(key)
            table.focus()

    def action_search(self) -> None:
        inp = self.query_one("#search", Input)
        inp.display = True
        inp.value = self._search
        inp.focus()

    def action_search_next(self) -> None:
        self._find(self._search)

    def _find(self, text: str) -> None:
        table = self.query_one(RolloutsTable)
        key = table.find(text) if text else None
        self._rollouts_title()
        if key is None:
            if text:
                self.answer = f"no sample contains '{text}'"
                self._show_header()
            return
        table.goto(key)
        self.answer = f"found '{text}' in sample {key} — {len(table.matches):,} matches (n: next, f: filter)"
        self._show_header()

    @on(Input.Submitted, "#search")
    def _search_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._search = event.value.strip()
        self._find(self._search)
        self.refresh_bindings()

    def on_key(self, event) -> None:
        inp = self.query_one("#search", Input)
        if event.key == "escape" and inp.has_focus:
            event.stop()
            inp.display = False
            self.query_one(RolloutsTable).focus()
