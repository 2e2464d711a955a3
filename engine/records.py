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


# ------------------------------------------------------------------------- the metrics catalogue
@dataclass(frozen=True)
class Metric:
    """One metric of ``metrics.jsonl``: its key, unit ("" for a plain number or ratio), what it
    measures, and where it is plotted: ``group`` is the title of the plot it shares on the
    dashboard ("" = no plot; the ``m`` page lists every numeric metric anyway) and ``legend``
    names it within that plot when the plot draws several."""

    name: str
    unit: str
    description: str
    group: str = ""
    legend: str = ""

    @property
    def title(self) -> str:
        """The metric's title on a plot of its own: its group's, with the legend in front when
        the group plots several metrics ("policy loss")."""
        if not self.group:
            return self.name
        alone = sum(1 for m in METRICS if m.group == self.group) == 1
        return self.group if alone else f"{self.legend} {self.group}"


def _m(name, unit, description, group="", legend="") -> Metric:
    return Metric(name, unit, description, group, legend)


# Every key a step's row holds (the driver, the actor's and critic's updates, the monitors, the
# held-out evaluation and the supervisor write them). Plot groups appear on the dashboard in the
# order of their first metric here. A new metric: one line here, then write it.
METRICS: tuple[Metric, ...] = (
    _m("step", "", "The PPO step (1-based)."),
    _m("time", "s", "Epoch seconds when the step's row was written."),
    _m("timings", "s", "Seconds per phase of the step (rollout, scoring, advantage, update, ...; step = the whole step)."),
    _m("memory", "MB", "Resident memory per role's worker (rss_mb, peak_rss_mb, GPU memory where there is one)."),
    _m("estimator", "", "The advantage estimator of the step (ppo.estimator)."),
    _m("rollout_n", "", "Responses sampled per prompt (rollout.n)."),
    _m("reward_version", "", "The reward version that scored the step (0: the config's; a swap or refit adds one)."),
    _m("alerts", "", "The reward-hacking monitors over their threshold at this step."),
    # the rollout and its scores
    _m("score_mean", "", "Mean reward score of the step's responses.", "score", "score"),
    _m("heldout_accuracy", "", "Greedy accuracy on the held-out split after the step's update (eval.every).",
       "held-out accuracy", "held-out (greedy)"),
    _m("accuracy", "", "Share of the step's sampled responses a rule reward found right.",
       "held-out accuracy", "train (sampled)"),
    _m("score_std", "", "Standard deviation of the step's scores."),
    _m("group_score_std", "", "Mean over prompts of the scores' standard deviation within a prompt's group (rollout.n > 1)."),
    _m("group_all_equal_frac", "", "Share of prompts whose responses all scored the same (nothing to learn from them)."),
    _m("heldout_score", "", "Mean score of the greedy answers on the held-out split (eval.every)."),
    _m("heldout_n", "", "Held-out prompts evaluated."),
    _m("heldout_s", "s", "Seconds the held-out evaluation took."),
    _m("heldout_accuracy_initial", "", "Held-out accuracy of the starting policy (written with step 1)."),
    _m("heldout_score_initial", "", "Held-out score of the starting policy (written with step 1)."),
    # KL to the reference
    _m("kl", "nats", "Mean over responses of the summed k1 KL to the reference (log pi - log pi_ref).", "KL", "KL"),
    _m("kl_penalty_mean", "nats", "Mean over responses of the summed per-token KL of ppo.kl_estimator, as it shaped the rewards."),
    _m("kl_loss", "", "The k3 KL term of the actor loss (ppo.kl_in: loss)."),
    _m("kl_guard_skipped", "", "Optimizer steps the KL guard skipped (ppo.kl_guard)."),
    _m("approx_kl", "", "Approximate KL between the old and the updated policy over the update."),
    # responses
    _m("response_len_mean", "tokens", "Mean response length.", "response length", "tokens"),
    _m("response_len_max", "tokens", "Longest response of the step."),
    _m("eos_frac", "", "Share of responses that ended with EOS (not cut at max_new_tokens)."),
    _m("tokens", "tokens", "Response tokens of the step."),
    # the update
    _m("policy_loss", "", "The actor's clipped policy loss, averaged over its micro-batches.", "loss", "policy"),
    _m("value_loss", "", "The critic's clipped value loss.", "loss", "value"),
    _m("entropy", "nats", "Mean per-token entropy of the policy over the update.", "entropy", "entropy"),
    _m("clipfrac", "", "Share of tokens whose policy ratio was clipped."),
    _m("dual_clipfrac", "", "Share of tokens the dual clip bounded (ppo.dual_clip_c)."),
    _m("vf_clipfrac", "", "Share of tokens whose value was clipped (ppo.value_clip)."),
    _m("advantage_mean", "", "Mean advantage over valid tokens."),
    _m("return_mean", "", "Mean return over valid tokens."),
    _m("value_mean", "", "Mean critic value over valid tokens (no critic: not written)."),
    _m("lr", "", "The actor's learning rate after the step."),
    # speed
    _m("tokens_per_s", "tokens/s", "Response tokens per second of the whole step.", "throughput", "tokens/s"),
    _m("gen_tokens_per_s", "tokens/s", "Response tokens per second of the rollout.", "throughput", "gen tokens/s"),
    _m("kl_coef", "", "The KL coefficient (beta) that shaped this step's rewards.", "KL coefficient", "β"),
    _m("kl_coef_next", "", "The KL coefficient the controller set for the next step."),
    _m("grad_norm", "", "The actor's gradient norm before clipping.", "grad norm", "actor"),
    _m("critic_grad_norm", "", "The critic's gradient norm before clipping.", "grad norm", "critic"),
    # reward-hacking monitors (engine/monitors.py)
    _m("kl_growth", "nats/step", "Slope of the KL over the monitors' window."),
    _m("entropy_trend", "nats/step", "Slope of the entropy over the monitors' window."),
    _m("entropy_drop", "", "Relative drop of the entropy from the baseline steps."),
    _m("length_drift", "", "Relative change of the mean response length from the baseline steps."),
    _m("repetition", "", "Mean share of repeated n-grams in the responses."),
    _m("divergence", "", "Share of samples whose reward rose while the audit score fell (reward.audit)."),
    _m("audit_mean", "", "Mean score of the audit scorer (reward.audit)."),
    _m("audit_corr", "", "Correlation of the reward's and the audit scorer's scores."),
    _m("audit_error", "", "Why the audit scorer failed at this step (text)."),
)

CATALOGUE: dict[str, Metric] = {m.name: m for m in METRICS}
PLOT_GROUPS: tuple[str, ...] = tuple(dict.fromkeys(m.group for m in METRICS if m.group))


def metric(name: str) -> Metric:
    """The catalogue's entry for ``name``; KeyError naming engine/records.py when there is none."""
    try:
        return CATALOGUE[name]
    except KeyError:
        raise KeyError(f"metric '{name}' is not in the catalogue (engine/records.py METRICS); add it there") from None


def plot_group(group: str) -> tuple[Metric, ...]:
    """The metrics plotted together under ``group``, in catalogue order."""
    found = tuple(m for m in METRICS if m.group == group)
    if not found:
        raise KeyError(f"no plot group '{group}' in the catalogue (engine/records.py METRICS)")
    return found


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
    # a fresh pair to judge (``Run.sample_pair``): its kind, the reward version that scored it and,
    # when it was picked from candidates, why (``engine.judgements.pick_pair``) and, under a
    # learned preference, the two parts of its score
    kind: Optional[str] = optional()
    pair: Optional[int] = optional()
    reward_version: Optional[int] = optional()
    picked: Optional[dict] = optional()
    score_base: Optional[float] = optional()
    preference: Optional[float] = optional()

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
