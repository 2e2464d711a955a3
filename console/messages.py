"""Messages that cross from thread workers to the event loop (one small class each).

Workers never touch widgets: they read files or call the control socket, then post one of
these. Floods coalesce: a newer ``GpuSampled``/``RunsListed`` replaces an older one still queued.
"""
from __future__ import annotations

from typing import Any, Optional

from textual.message import Message


class RunUpdated(Message):
    """New lines in the run directory (history on the first poll, then what is new)."""

    def __init__(self, delta: Any) -> None:
        super().__init__()
        self.delta = delta


class ControlReplied(Message):
    """The runtime answered a request sent on the control socket (or the request failed)."""

    def __init__(self, op: str, ok: bool, message: str, reply: Optional[dict] = None,
                 sent_at: float = 0.0) -> None:
        super().__init__()
        self.op = op
        self.ok = ok
        self.message = message
        self.reply = reply or {}
        self.sent_at = sent_at


class GpuSampled(Message):
    """One reading of NVML (or the reason there is none) plus the roles' host memory."""

    def __init__(self, report: Any) -> None:
        super().__init__()
        self.report = report

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, GpuSampled)


class RunsListed(Message):
    """The runs under the runs directory, each as (path, info, effective state)."""

    def __init__(self, runs: list) -> None:
        super().__init__()
        self.runs = runs

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunsListed)


class ConfigValidated(Message):
    """The engine's verdict on the editor's text (``generation`` orders stale results out)."""

    def __init__(self, result: Any, generation: int) -> None:
        super().__init__()
        self.result = result
        self.generation = generation


class RunLaunched(Message):
    """``engine.client.launch`` returned (run) or raised (error)."""

    def __init__(self, run: Any = None, error: str = "") -> None:
        super().__init__()
        self.run = run
        self.error = error


class LabelWritten(Message):
    """A good/bad judgement was appended to labels.jsonl."""

    def __init__(self, row: dict, error: str = "") -> None:
        super().__init__()
        self.row = row
        self.error = error


class PairsLoaded(Message):
    """Pairs of samples that answer one prompt, read from the run directory (the ones a
    judgement teaches most first: ``engine.judgements.candidate_pairs``)."""

    def __init__(self, pairs: list, error: str = "") -> None:
        super().__init__()
        self.pairs = pairs
        self.error = error


class PairWritten(Message):
    """A pairwise judgement was appended to labels.jsonl (or could not be: ``error``)."""

    def __init__(self, row: dict, error: str = "") -> None:
        super().__init__()
        self.row = row
        self.error = error


class CounterLoaded(Message):
    """The judge counter (``engine.judgements.judge_counter``): the reward's agreement with the
    judgements held out for it and how many more the next refit needs."""

    def __init__(self, counter: dict, error: str = "") -> None:
        super().__init__()
        self.counter = counter
        self.error = error


class RefitReplied(Message):
    """The answer to a refit request (started, or refused with the reason)."""

    def __init__(self, ok: bool, message: str) -> None:
        super().__init__()
        self.ok = ok
        self.message = message
