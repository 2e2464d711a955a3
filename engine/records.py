"""The run directory's records, typed: ``run.json`` (:class:`RunInfo`), one line of
``metrics.jsonl`` (:class:`MetricsRow`), of ``samples.jsonl`` (:class:`Sample`) and of
``labels.jsonl`` (:class:`Label`). The field names live here and nowhere else: the writer
(engine/runtime/rundir.py, the supervisor, engine.client) and every reader (the console, the
report, the bench) go through these classes.

Reading is tolerant, so old files keep working and new fields are easy to add:

- a key a record does not name is kept in ``extra`` and written back unchanged;
- a missing key takes the field's default;
- :class:`MetricsRow` holds every metric that is not ``step``/``time``/``timings``/``memory``
  in ``values`` (any name: another metric is a new key in the dict, not a new field here).

Writing is strict where it helps: :meth:`Record.check_names` refuses a name that is not a
field (a typo in a ``write_state(...)`` call is an error, not a new key nobody reads).
Adding a field: give it a default (old files do not have it) and write it in the writer.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Optional, TypeVar

R = TypeVar("R", bound="Record")
_MISSING = object()


@dataclass
class Record:
    """Base of the run-directory records: ``from_dict`` / ``to_dict`` keep unknown keys."""

    extra: dict = field(default_factory=dict, repr=False, compare=False)

    _names: ClassVar[Optional[frozenset]] = None

    @classmethod
    def names(cls) -> frozenset:
        """The file's keys this record names (not ``extra``)."""
        if cls.__dict__.get("_names") is None:
            cls._names = frozenset(f.name for f in dataclasses.fields(cls) if f.name != "extra")
        return cls._names

    @classmethod
    def check_names(cls, keys: Iterable[str]) -> None:
        unknown = sorted(set(keys) - cls.names())
        if unknown:
            raise KeyError(f"{', '.join(map(repr, unknown))} is not a field of {cls.__name__} "
                           f"(engine/records.py); add it there first")

    @classmethod
    def from_dict(cls: type[R], d: Optional[dict]) -> R:
        d = d or {}
        names = cls.names()
        rec = cls(**{k: v for k, v in d.items() if k in names})
        rec.extra = {k: v for k, v in d.items() if k not in names}
        return rec

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "extra" and not (f.metadata.get("omit_if_none") and getattr(self, f.name) is None)}
        out.update(self.extra)
        return out


def optional(default=None):
    """A field written only when it has a value (``None`` leaves the key out of the file)."""
    return field(default=default, metadata={"omit_if_none": True})


# ------------------------------------------------------------------------------------ run.json
@dataclass
class RunInfo(Record):
    """``run.json``: what a run is and where it stands (the supervisor rewrites it atomically)."""

    state: str = "unknown"                  # starting/running/paused/stopping/finished/failed/stopped
    name: str = ""
    created: Optional[float] = optional()         # epoch seconds
    updated: Optional[float] = optional()         # epoch seconds of the last write
    steps: Optional[int] = optional()             # the run's length (run.steps)
    step: int = 0                           # steps done
    step_stage: Optional[dict] = optional()       # the step in progress: step, phase, done/total/unit, since
    supervisor_pid: Optional[int] = optional()
    socket: Optional[str] = optional()            # the control socket while the supervisor lives
    run_tag: Optional[str] = optional()           # names the run's shared-memory segments
    backend: Optional[str] = optional()           # "local" or "ray"
    reward_source: Optional[str] = optional()
    reward_version: Optional[int] = optional()    # the reward version scoring now (0: the config's)
    refit: Optional[dict] = optional()            # the last refit: state, attempt, reason, judgement_rows
    pids: dict = field(default_factory=dict)   # worker label -> pid
    devices: Optional[dict] = optional()          # role -> devices
    precision: Optional[dict] = optional()        # role -> {autocast per phase, dtype, decoder_packing, measured, why}
    ray: Optional[dict] = optional()
    checkpoint_dir: Optional[str] = optional()    # checkpoints elsewhere (checkpoint.dir)
    last_score: Optional[float] = optional()
    last_kl: Optional[float] = optional()
    last_checkpoint: Optional[str] = optional()
    last_checkpoint_step: Optional[int] = optional()
    message: Optional[str] = optional()           # why it paused / stopped
    pause_info: Optional[dict] = optional()       # role / phase / error / step of a fault that paused it
    failure: Optional[str] = optional()
    failed_role: Optional[str] = optional()
    failed_op: Optional[str] = optional()
    timeout_s: Optional[float] = optional()       # the worker timeout a failed run ran past
    checkpoint_error: Optional[str] = optional()
    killed: Optional[list] = optional()           # workers killed on a stop that did not answer


# ---------------------------------------------------------------------------------- metrics.jsonl
@dataclass
class MetricsRow(Record):
    """One line of ``metrics.jsonl``: one PPO step. ``values`` holds every metric by name
    (``score_mean``, ``kl``, ``policy_loss``, ... and whatever a new version adds)."""

    step: int = 0
    time: Optional[float] = None
    timings: dict = field(default_factory=dict)   # phase -> seconds; "step" is the whole step
    memory: dict = field(default_factory=dict)    # role -> {rss_mb, peak_rss_mb, ...}
    values: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "MetricsRow":
        d = d or {}
        return cls(step=int(d.get("step") or 0), time=d.get("time"), timings=d.get("timings") or {},
                   memory=d.get("memory") or {},
                   values={k: v for k, v in d.items() if k not in ("step", "time", "timings", "memory")})

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"step": self.step, "time": self.time, "timings": self.timings}
        if self.memory:
            out["memory"] = self.memory
        out.update(self.values)
        return out

    def get(self, name: str, default=None):
        """A metric by name (``step``, ``time``, ``timings`` and ``memory`` too), like the line's dict."""
        if name in ("step", "time", "timings", "memory"):
            return getattr(self, name)
        return self.values.get(name, default)

    def __contains__(self, name: str) -> bool:
        return name in ("step", "time", "timings", "memory") or name in self.values

    def __getitem__(self, name: str):
        """``row["kl"]``, like the line's dict (KeyError when the line has no such key)."""
        v = self.get(name, _MISSING)
        if v is _MISSING:
            raise KeyError(name)
        return v

    def timing(self, phase: str) -> Optional[float]:
        v = self.timings.get(phase)
        return float(v) if isinstance(v, (int, float)) else None


def metric_names(rows: Iterable[dict]) -> list[str]:
    """Every metric name in ``rows`` (plain dicts of metrics.jsonl), first-seen order."""
    seen: dict[str, None] = {}
    for r in rows:
        for k in r:
            if k not in ("step", "time", "timings", "memory"):
                seen.setdefault(k)
    return list(seen)


# ---------------------------------------------------------------------------------- samples.jsonl
@dataclass
class Sample(Record):
    """One line of ``samples.jsonl``: one rollout of one step."""

    id: str = ""                 # "<step>-<index>"
    step: int = 0
    index: int = 0
    prompt: str = ""
    response: str = ""
    score: Optional[float] = None
    kl: Optional[float] = None
    # "return" is a Python keyword: the file's key is "return", the attribute is ``ret``
    ret: Optional[float] = None
    length: Optional[int] = None
    eos: Optional[bool] = None
    # reward-hacking monitors (engine/monitors.py)
    repetition: Optional[float] = None     # share of repeated n-grams in the response
    audit: Optional[float] = optional()    # the audit scorer's score (reward.audit set)
    flags: list = field(default_factory=list)        # monitors this sample trips
    step_alerts: list = field(default_factory=list)  # monitors its step tripped
    # estimators (ppo.estimator) and verifiable tasks
    advantage: Optional[float] = optional()  # the response's mean advantage over its tokens
    group: Optional[int] = optional()        # rollout.n > 1: the prompt's group within the step
    answer: Optional[str] = optional()       # the prompt's reference answer (bundled:arithmetic)
    correct: Optional[bool] = optional()     # a rule reward: the response's answer is right
    # the response token by token (:class:`TokenTrace`, written as its dict; older files lack it)
    tokens: Optional[dict] = optional()

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "Sample":
        d = dict(d or {})
        if "return" in d:
            d["ret"] = d.pop("return")
        return super().from_dict(d)

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["return"] = out.pop("ret")
        return out


def sample_id(step: int, index: int) -> str:
    return f"{int(step)}-{int(index)}"


TOKEN_LAYERS = ("logprob", "ref_logprob", "kl", "advantage")
TOKEN_DIGITS = 4


@dataclass
class TokenTrace:
    """A response token by token, the ``tokens`` key of a ``samples.jsonl`` line: each list has
    one entry per response token (EOS included when the response has one).

    ``piece``: the token decoded on its own; ``logprob``: log pi(token) under the actor that
    sampled it; ``ref_logprob``: under the reference; ``kl``: the per-token KL estimate of
    ``ppo.kl_estimator`` (``kl_estimator``; k1 is ``logprob - ref_logprob``) that shaped the
    rewards; ``advantage``: the token's advantage as the actor's update used it. Log-probs
    are rounded to :data:`TOKEN_DIGITS` decimals, KL and advantage (often tiny) to as many
    significant digits."""

    piece: list = field(default_factory=list)
    logprob: list = field(default_factory=list)
    ref_logprob: list = field(default_factory=list)
    kl: list = field(default_factory=list)
    advantage: list = field(default_factory=list)
    kl_estimator: str = "k1"

    def __len__(self) -> int:
        return len(self.piece)

    @classmethod
    def make(cls, pieces, logprob, ref_logprob, kl, advantage, kl_estimator: str = "k1",
             digits: int = TOKEN_DIGITS) -> "TokenTrace":
        """From decoded pieces and four equally long sequences of numbers (lists or 1-D tensors)."""
        def num(xs, significant: bool = False) -> list:
            xs = xs.tolist() if hasattr(xs, "tolist") else list(xs)
            if significant:
                return [float(f"{float(x):.{digits}g}") for x in xs]
            return [round(float(x), digits) for x in xs]

        t = cls(piece=[str(p) for p in pieces], logprob=num(logprob), ref_logprob=num(ref_logprob),
                kl=num(kl, True), advantage=num(advantage, True), kl_estimator=str(kl_estimator))
        return t.check()

    def check(self) -> "TokenTrace":
        n = len(self.piece)
        for name in TOKEN_LAYERS:
            xs = getattr(self, name)
            if not isinstance(xs, list) or len(xs) != n:
                got = f"{len(xs)} values" if isinstance(xs, list) else type(xs).__name__
                raise ValueError(f"tokens.{name}: {got} for {n} tokens (every list needs one entry per token)")
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs):
                raise ValueError(f"tokens.{name}: every entry must be a number")
        return self

    @classmethod
    def from_dict(cls, d) -> "TokenTrace":
        """A ``tokens`` value read back; ValueError naming the key when it is malformed."""
        if not isinstance(d, dict):
            raise ValueError(f"tokens: expected an object, got {type(d).__name__}")
        pieces = d.get("piece")
        if not isinstance(pieces, list):
            raise ValueError("tokens.piece: missing or not a list")
        t = cls(piece=[str(p) for p in pieces], kl_estimator=str(d.get("kl_estimator") or "k1"),
                **{k: d.get(k) for k in TOKEN_LAYERS})
        return t.check()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def value(self, layer: str, i: int) -> float:
        return getattr(self, layer)[i]


# ---------------------------------------------------------------------------------- labels.jsonl
LABEL_VERDICTS = ("good", "bad")


@dataclass
class Label(Record):
    """One line of ``labels.jsonl``: a judgement (engine/judgements.py makes and reads them).

    A mark: ``sample_id``, ``label`` (good/bad), ``step``, ``source``, ``note``. A pair: the
    preferred and the other response to one prompt, texts copied in so that the line is a
    training example on its own (``prompt``, ``chosen``, ``rejected``, ``chosen_id``,
    ``rejected_id``; ``rejected_prompt`` only when the two answer different prompts). Another
    kind of judgement adds its fields here with ``optional()``; old lines still read."""

    sample_id: Optional[str] = optional()   # a mark: the sample judged
    step: int = 0
    label: Optional[str] = optional()       # a mark: good / bad
    source: Optional[str] = optional()      # who judged ("human")
    note: Optional[str] = optional()
    time: Optional[float] = None
    prompt: Optional[str] = optional()      # a pair: the prompt both responses answer
    chosen: Optional[str] = optional()
    rejected: Optional[str] = optional()
    chosen_id: Optional[str] = optional()
    rejected_id: Optional[str] = optional()
    rejected_prompt: Optional[str] = optional()

    @property
    def is_pair(self) -> bool:
        return self.chosen is not None and self.rejected is not None

    @property
    def is_mark(self) -> bool:
        return self.sample_id is not None and self.label in LABEL_VERDICTS

    def check(self) -> "Label":
        if self.is_pair:
            if self.chosen_id is not None and self.chosen_id == self.rejected_id:
                raise ValueError(f"a pair needs two different samples; got {self.chosen_id!r} twice")
        elif self.label not in LABEL_VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(map(repr, LABEL_VERDICTS))}, got {self.label!r}")
        return self
