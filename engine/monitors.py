"""Reward-hacking monitors: pure computations over one step's samples and the run's history.

Numbers and lists in, numbers and lists out: no I/O, no models, no config objects (the driver
feeds them; ``engine/runtime/driver.py`` holds a ``MonitorTracker`` and writes what it returns
into metrics.jsonl and samples.jsonl).

What is measured every step (keys of the metrics row):

* ``kl_growth`` -- the least-squares slope of the mean KL (nats per response) over the last
  ``window`` steps, in nats per step. A policy running away from the reference fast.
* ``entropy`` (already in the row, from the actor's update), ``entropy_trend`` -- its slope over
  the last ``window`` steps (nats per step) -- and ``entropy_drop`` -- how far it has fallen below
  its baseline, as a share of the baseline: ``(baseline - now) / baseline``.
* ``length_drift`` -- the mean response length against its baseline:
  ``(now - baseline) / baseline`` (positive: longer, negative: shorter).
* ``repetition`` -- the batch mean of each response's share of repeated token n-grams:
  ``(n-grams - distinct n-grams) / n-grams`` (0 for a response with no n-gram twice, near 1 for
  one token over and over). A response above the threshold is flagged ``repetition``.
* with an audit scorer (``reward.audit``): ``audit_mean`` (its mean score), ``audit_corr`` (the
  Pearson correlation of reward and audit scores over the batch) and ``divergence``: the share of
  the step's samples whose reward score is above the *baseline mean reward* while their audit
  score is below the *baseline mean audit score* -- the reward says "better than when training
  started", the second opinion says "worse". Those samples are flagged ``divergence``.

The baseline is the mean over the run's first ``baseline_steps`` steps (the policy before it
has learned much); for the reward score in ``divergence`` it is the first ``baseline_steps``
steps scored by the current reward (``reward_changed`` after a swap; ``reward_version`` in the
rows on resume). Monitors that need it, or a trend, are ``None`` (not measured) until enough
steps exist.

Alerts have hysteresis, so one noisy step neither raises nor drops a warning. A monitor is
*over* its threshold when its value passes it (``kl_growth``, ``entropy_drop``, ``repetition``,
``divergence``: above; ``length_drift``: above in absolute value). It *trips* once it has been
over on ``trip_steps`` steps in a row, and then stays tripped -- one alert in every step's row --
until its value falls below its *clear threshold*, ``clear_fraction`` x the threshold (in
absolute value for ``length_drift``), or is no longer measured. A threshold of ``None`` turns
that monitor's alerts off (the value is still recorded). The per-sample flags (``repetition``,
``divergence``) carry no hysteresis: a sample is flagged by its own value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

MONITORS = ("kl_growth", "entropy_drop", "length_drift", "repetition", "divergence")


def repetition(tokens: Sequence[int], n: int) -> float:
    """Share of repeated n-grams in one response: ``(count - distinct) / count`` over its
    ``len(tokens) - n + 1`` n-grams; 0.0 when the response has fewer than ``n`` tokens."""
    if n < 1:
        raise ValueError(f"n-gram size must be at least 1, got {n}")
    total = len(tokens) - n + 1
    if total <= 0:
        return 0.0
    grams = {tuple(tokens[i:i + n]) for i in range(total)}
    return (total - len(grams)) / total


def slope(values: Sequence[float]) -> Optional[float]:
    """Least-squares slope of ``values`` against 0, 1, 2, ... (units per step); None for fewer
    than two values."""
    k = len(values)
    if k < 2:
        return None
    mx = (k - 1) / 2
    my = sum(values) / k
    num = sum((i - mx) * (v - my) for i, v in enumerate(values))
    den = sum((i - mx) ** 2 for i in range(k))
    return num / den


def relative_change(now: float, baseline: float) -> Optional[float]:
    """``(now - baseline) / |baseline|``; None when the baseline is zero (no scale to compare)."""
    if baseline == 0:
        return None
    return (now - baseline) / abs(baseline)


def pearson(xs: Sequence[float], ys: Sequence[float]) -> Optional[float]:
    """Pearson correlation; None when either side is constant or there are fewer than 2 pairs."""
    k = len(xs)
    if k != len(ys):
        raise ValueError(f"pearson: {k} values against {len(ys)}")
    if k < 2:
        return None
    mx, my = sum(xs) / k, sum(ys) / k
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / math.sqrt(sxx * syy)


def diverging(scores: Sequence[float], audits: Sequence[float], score_base: float,
              audit_base: float) -> list[bool]:
    """Per sample: reward score above its baseline mean while the audit score is below its own."""
    return [s > score_base and a < audit_base for s, a in zip(scores, audits)]


def trips(name: str, value: Optional[float], threshold: Optional[float]) -> bool:
    """Whether monitor ``name`` with ``value`` passes ``threshold`` (None on either side: no)."""
    if value is None or threshold is None:
        return False
    if name == "length_drift":
        return abs(value) > threshold
    return value > threshold


def clears(name: str, value: Optional[float], clear: Optional[float]) -> bool:
    """Whether monitor ``name`` with ``value`` is below its clear threshold ``clear`` (in
    absolute value for ``length_drift``); a value that is not measured (None) clears too."""
    if value is None or clear is None:
        return True
    if name == "length_drift":
        return abs(value) < clear
    return value < clear


def hysteresis(name: str, value: Optional[float], threshold: Optional[float], clear: Optional[float],
               tripped: bool, over: int, trip_steps: int) -> tuple[bool, int]:
    """One step of a monitor's alert state: ``(tripped, over)`` after ``value``, from the state
    before it. ``over`` counts the steps in a row the monitor has been over ``threshold`` while
    not tripped; it trips when that count reaches ``trip_steps``. A tripped monitor stays tripped
    until ``clears(name, value, clear)``. ``threshold`` None: never tripped."""
    if threshold is None:
        return False, 0
    if tripped:
        return (False, 0) if clears(name, value, clear) else (True, 0)
    over = over + 1 if trips(name, value, threshold) else 0
    return (True, 0) if over >= trip_steps else (False, over)


def check_hysteresis(clear_fraction: float, trip_steps: int) -> None:
    """The alert settings a tracker accepts; ValueError naming the bad one."""
    if not (isinstance(clear_fraction, (int, float)) and 0 < clear_fraction < 1):
        raise ValueError(f"monitors.clear_fraction must be above 0 and below 1 (a monitor clears "
                         f"below clear_fraction x its threshold, so the clear threshold must be "
                         f"under the trip threshold); got {clear_fraction!r}")
    if not (isinstance(trip_steps, int) and not isinstance(trip_steps, bool) and trip_steps >= 1):
        raise ValueError(f"monitors.trip_steps must be an integer of at least 1; got {trip_steps!r}")


def _mean(xs: Iterable[float]) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


@dataclass
class StepSummary:
    """What a later step needs to know about an earlier one."""
    kl: float
    entropy: Optional[float]
    length: float
    score: float
    audit: Optional[float] = None


@dataclass
class MonitorTracker:
    """The monitors' memory over a run: the committed steps' summaries.

    ``observe`` computes a step's monitors against the steps committed before it, and keeps the
    step's summary and alert state as pending; ``commit`` adds them to the history, ``rollback``
    drops them (a step that is retried is not counted twice). ``thresholds`` maps monitor names
    (``MONITORS``) to a threshold or None; ``clear_fraction`` and ``trip_steps`` give the
    hysteresis (module docstring).
    """
    thresholds: dict
    window: int = 20
    baseline_steps: int = 5
    ngram: int = 3
    clear_fraction: float = 0.75
    trip_steps: int = 3
    history: list[StepSummary] = field(default_factory=list)
    tripped: set = field(default_factory=set)  # monitors tripped at the last committed step
    over: dict = field(default_factory=dict)   # monitor -> steps in a row over its threshold, not yet tripped
    started: list = field(default_factory=list)  # alerts of the last commit that were not on before
    cleared: list = field(default_factory=list)  # monitors the last commit brought under their clear threshold
    reward_from: int = 0  # history index where the current reward began (its own score baseline)
    _pending: Optional[tuple[StepSummary, list, set, dict]] = None

    def __post_init__(self) -> None:
        check_hysteresis(self.clear_fraction, self.trip_steps)

    def clear_threshold(self, name: str) -> Optional[float]:
        """The value under which tripped monitor ``name`` clears (None: the monitor is off)."""
        th = self.thresholds.get(name)
        return None if th is None else th * self.clear_fraction

    def observe(self, *, kl: float, entropy: Optional[float], lengths: Sequence[float],
                scores: Sequence[float], responses: Sequence[Sequence[int]],
                audits: Optional[Sequence[float]] = None) -> tuple[dict, list[dict], list[list[str]]]:
        """One step: (values for the metrics row, alerts, per-sample flags).

        ``responses`` are the response token ids (no padding), ``lengths`` their lengths,
        ``scores`` the reward scores, ``audits`` the audit scores (None: no audit scorer).
        An alert is ``{"monitor", "value", "threshold", "clear", "samples"}`` for every monitor
        tripped at this step (``samples``: how many samples of the step carry that monitor's flag;
        None for a monitor of the whole step).
        """
        n = len(scores)
        length = _mean(lengths) or 0.0
        summary = StepSummary(kl=float(kl), entropy=None if entropy is None else float(entropy),
                              length=length, score=_mean(scores) or 0.0,
                              audit=_mean(audits) if audits is not None else None)
        past = self.history
        recent = past[-(self.window - 1):] if self.window > 1 else []
        base = past[:self.baseline_steps] if len(past) >= self.baseline_steps else None
        values: dict = {}

        values["kl_growth"] = slope([s.kl for s in recent] + [summary.kl]) \
            if len(recent) + 1 >= min(3, self.window) else None
        ents = [s.entropy for s in recent if s.entropy is not None]
        values["entropy_trend"] = (slope(ents + [summary.entropy]) if summary.entropy is not None
                                   and len(ents) + 1 >= min(3, self.window) else None)
        b_ent = _mean(s.entropy for s in base) if base else None
        values["entropy_drop"] = ((b_ent - summary.entropy) / b_ent
                                  if b_ent and summary.entropy is not None else None)
        values["length_drift"] = relative_change(length, _mean(s.length for s in base)) if base else None

        rep = [repetition(list(r), self.ngram) for r in responses]
        values["repetition"] = _mean(rep) if rep else 0.0
        flags: list[list[str]] = [[] for _ in range(n)]
        th_rep = self.thresholds.get("repetition")
        if th_rep is not None:
            for i, r in enumerate(rep):
                if r > th_rep:
                    flags[i].append("repetition")

        if audits is not None:
            values["audit_mean"] = summary.audit
            values["audit_corr"] = pearson(list(scores), list(audits))
            values["divergence"] = None
            b_audit = _mean(s.audit for s in base) if base else None
            # the reward's baseline is its own first steps: a swapped-in reward has another scale
            r_base = past[self.reward_from:self.reward_from + self.baseline_steps]
            if b_audit is not None and len(r_base) == self.baseline_steps:
                div = diverging(scores, audits, _mean(s.score for s in r_base), b_audit)
                values["divergence"] = sum(div) / n if n else 0.0
                for i, d in enumerate(div):
                    if d:
                        flags[i].append("divergence")

        alerts, tripped, over = [], set(), {}
        for name in MONITORS:
            v, th, clear = values.get(name), self.thresholds.get(name), self.clear_threshold(name)
            on, over[name] = hysteresis(name, v, th, clear, name in self.tripped,
                                        self.over.get(name, 0), self.trip_steps)
            if on:
                tripped.add(name)
                per_sample = name in ("repetition", "divergence")
                alerts.append({"monitor": name, "value": v, "threshold": th, "clear": clear,
                               "samples": sum(name in f for f in flags) if per_sample else None})
        self._pending = (summary, alerts, tripped, over)
        return values, alerts, flags

    def commit(self) -> None:
        """Count the observed step; ``started`` / ``cleared`` say which warnings it turned on/off."""
        if self._pending is None:
            return
        summary, alerts, now, over = self._pending
        self.started = [a for a in alerts if a["monitor"] not in self.tripped]
        self.cleared = sorted(self.tripped - now)
        self.tripped, self.over = now, over
        self.history.append(summary)
        self._pending = None

    def rollback(self) -> None:
        self._pending = None

    def reward_changed(self) -> None:
        """The reward was swapped: its score baseline restarts after the steps scored so far
        (divergence is not measured until ``baseline_steps`` steps of the new reward exist)."""
        self.reward_from = len(self.history) + (1 if self._pending is not None else 0)

    def restore(self, rows: Sequence[dict]) -> None:
        """Rebuild the history from metrics.jsonl rows (a resumed run)."""
        self.history = [StepSummary(kl=float(r.get("kl", 0.0)), entropy=r.get("entropy"),
                                    length=float(r.get("response_len_mean", 0.0)),
                                    score=float(r.get("score_mean", 0.0)), audit=r.get("audit_mean"))
                        for r in rows]
        self.tripped = {a.get("monitor") for a in (rows[-1].get("alerts") or [])} if rows else set()
        self.over = {}
        for name in MONITORS:   # steps in a row over the threshold at the end, for a monitor not tripped
            n = 0
            while (name not in self.tripped and n < len(rows)
                   and trips(name, rows[-1 - n].get(name), self.thresholds.get(name))):
                n += 1
            self.over[name] = n
        versions = [r.get("reward_version") for r in rows]   # rows of a run whose reward was swapped
        self.reward_from = next((i for i in range(len(versions) - 1, 0, -1)
                                 if versions[i] != versions[i - 1]), 0)
        self.started, self.cleared, self._pending = [], [], None


def describe_alert(alert: dict, step: int) -> str:
    """The event-log line for a monitor that starts tripping."""
    v, th = alert["value"], alert["threshold"]
    what = {"kl_growth": "KL growth (nats/step)", "entropy_drop": "entropy drop (share of baseline)",
            "length_drift": "response length drift (share of baseline)",
            "repetition": "repeated n-grams (batch mean share)",
            "divergence": "samples whose reward rose while the audit score fell (share)"}[alert["monitor"]]
    cmp = f"|{v:+.3f}| > {th:g}" if alert["monitor"] == "length_drift" else f"{v:.3f} > {th:g}"
    tail = f"; {alert['samples']} sample(s) flagged" if alert.get("samples") is not None else ""
    clear = alert.get("clear")
    until = f"; stays on until it is below {clear:g}" if isinstance(clear, (int, float)) else ""
    return (f"reward-hacking monitor '{alert['monitor']}' tripped at step {step}: {what} "
            f"{cmp}{tail}{until} (suspicious filter in the rollouts pane)")


def replay(rows: Sequence[dict], thresholds: dict, *, clear_fraction: float,
           trip_steps: int) -> dict[str, list[int]]:
    """Per monitor, the steps it is tripped when the values recorded in metrics rows (one per
    step, in order) go through the hysteresis with these settings. The values do not depend on
    the settings, so this is what the run would have shown with them."""
    check_hysteresis(clear_fraction, trip_steps)
    state = {name: (False, 0) for name in MONITORS}
    out: dict[str, list[int]] = {name: [] for name in MONITORS}
    for r in rows:
        for name in MONITORS:
            th = thresholds.get(name)
            state[name] = hysteresis(name, r.get(name), th, None if th is None else th * clear_fraction,
                                     *state[name], trip_steps)
            if state[name][0]:
                out[name].append(int(r.get("step") or 0))
    return out


def step_ranges(steps: Sequence[int]) -> str:
    """``[5, 7, 11, 12, 13]`` -> ``"5, 7, 11–13"``."""
    runs: list[list[int]] = []
    for st in sorted(set(steps)):
        if runs and st == runs[-1][1] + 1:
            runs[-1][1] = st
        else:
            runs.append([st, st])
    return ", ".join(str(a) if a == b else f"{a}–{b}" for a, b in runs)


def summarise_alerts(rows: Sequence[dict]) -> dict[str, dict]:
    """Per monitor over metrics rows: the steps it was tripped (in a run recorded before the
    hysteresis: the steps it was over its threshold), its peak value there, the threshold, and how
    many samples it flagged (None for monitors of the whole step)."""
    out: dict[str, dict] = {}
    for r in rows:
        for a in r.get("alerts") or []:
            s = out.setdefault(a["monitor"], {"steps": [], "peak": None, "threshold": a.get("threshold"),
                                              "samples": None})
            s["steps"].append(int(r.get("step") or 0))
            v = a.get("value")
            if isinstance(v, (int, float)):
                mag = abs(v) if a["monitor"] == "length_drift" else v
                s["peak"] = mag if s["peak"] is None else max(s["peak"], mag)
            if a.get("samples") is not None:
                s["samples"] = (s["samples"] or 0) + int(a["samples"])
    return out
