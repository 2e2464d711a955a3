"""The PPO step: the single controller's view of one iteration.

rollout (actor) -> concurrently: reference logprobs, critic values, reward scores, actor's own
old logprobs -> KL-shaped rewards, GAE, whitening (engine.algorithms) -> concurrently: actor
update and critic update -> metrics and samples.

The driver talks to roles through *endpoints* (``submit(RoleCall)`` -> Future of ``RoleResult``,
engine/runtime/calls.py). The local backend's endpoints are worker processes; the benchmark's
single-process baseline uses ``InlineEndpoint`` and runs phase after phase.
"""
from __future__ import annotations

import copy
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import torch

from engine import algorithms as A
from engine import estimators
from engine import monitors as M
from engine.config import RunConfig, active_roles, reference_in_actor  # noqa: F401 - re-exported: the runtime imports them from here
from engine.procs import available_cores
from engine.records import Sample, TokenTrace, sample_id
from engine.runtime.calls import RoleCall, RoleResult, perform
from engine.runtime.role_base import NonFiniteError

ROLES = ("actor", "reference", "critic", "reward")
TRAINABLE = ("actor", "critic")


class UpdateConsistencyError(RuntimeError):
    """A role could not commit or roll back its update: the roles' states may disagree."""


class InlineEndpoint:
    """Runs role operations in this process, synchronously (the sequential baseline)."""

    def __init__(self, roles: dict[str, Any]):
        self.roles = roles

    def submit(self, call: RoleCall) -> Future:
        fut: Future = Future()
        if call.threads:
            torch.set_num_threads(int(call.threads))
        try:
            fut.set_result(perform(self.roles, call))
        except BaseException as e:  # noqa: BLE001
            fut.set_exception(e)
        return fut


@dataclass
class ThreadPlan:
    """How many intra-op threads each role uses in each phase (CPU)."""

    generate: dict[str, int] = field(default_factory=dict)
    score: dict[str, int] = field(default_factory=dict)
    update: dict[str, int] = field(default_factory=dict)
    # the scoring passes one after another, each on every core: set when running them at once
    # would ask for more threads than there are cores (on 2 cores, the reference's pass and the
    # reward model's then slow each other down more than running in turn costs)
    serial_score: bool = False

    @classmethod
    def make(cls, cfg: RunConfig, cores: Optional[int] = None,
             devices: Optional[dict[str, list[str]]] = None) -> "ThreadPlan":
        from engine.config import explicit_threads

        cores = cores or available_cores()
        # generation runs alone: the actor takes every core. Scoring runs four roles at once,
        # updates two; split the cores between them (never below one). A role whose threads
        # the config sets keeps that number in every phase.
        share4 = max(1, cores // 4)
        share2 = max(1, cores // 2)
        plan = cls(
            generate={"actor": cores},
            score={r: share4 for r in ROLES},
            update={"actor": max(1, cores - share2) if cores > 1 else 1, "critic": share2},
        )
        from engine.config import critic_free

        no_critic = critic_free(cfg)
        shared = cfg.ppo.critic_trunk == "reference" and not no_critic
        in_actor = reference_in_actor(cfg)
        heavy = ([] if in_actor else ["reference"]) + \
            ([] if cfg.rollout.reuse_logprobs and not in_actor else ["actor"]) + \
            ([] if shared or no_critic else ["critic"])
        if in_actor:
            # the actor's process takes both its own and the reference's pass (one after the
            # other): it gets the reference's share as well; no reference worker to plan for
            plan.score = {r: (max(1, cores // len(heavy)) if r in heavy else 1)
                          for r in ROLES if r != "reference"}
        elif len(heavy) < 3:
            # a critic that is a linear head, or old log-probs taken from generation: fewer
            # trunk passes share the scoring phase; the light roles keep one thread
            plan.score = {r: (max(1, cores // len(heavy)) if r in heavy else 1) for r in ROLES}
        if shared or no_critic:  # a head's update, or none: the actor's gets every core
            plan.update = {"actor": cores, "critic": 1}
        scoring = set(heavy) | {"reward"}  # the roles the scoring phase calls at once
        if sum(plan.score[r] for r in scoring) > cores and all(_on_cpu(cfg, r, devices) for r in scoring):
            plan.serial_score = True
            plan.score.update({r: cores for r in scoring})
        for r in ROLES:
            n = explicit_threads(cfg, r)
            if n:
                for phase in (plan.generate, plan.score, plan.update):
                    if r in phase or phase is plan.score:
                        phase[r] = int(n)
        return plan


def _on_cpu(cfg: RunConfig, role: str, devices: Optional[dict[str, list[str]]]) -> bool:
    """Whether ``role`` computes on the CPU: from the device plan when there is one, else from
    its config (``auto`` is the CPU where no CUDA device is visible)."""
    if devices and role in devices:
        return all(str(d).startswith("cpu") for d in devices[role])
    from engine.models import ModelLoadError, resolve_device

    try:
        return resolve_device(getattr(cfg, role).device).type == "cpu"
    except ModelLoadError:  # a GPU that is not there: not the CPU (the role says so when it loads)
        return False


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else 0.0


@dataclass
class StepBatch:
    """One step's rows as its phases fill them in (``PPODriver.step``): the rollout, its scores,
    its advantages."""

    step: int
    prompts: list[str]                 # each prompt rollout.n times
    index: torch.Tensor                # each row's group (its prompt)
    answers: Optional[list]            # each row's reference answer (verifiable tasks), or None
    n_per: int                         # rollout.n
    batch: dict = field(default_factory=dict)   # query/response ids and masks (the rollout)
    gen_lp: Optional[torch.Tensor] = None       # log-probs kept by generation (reuse_logprobs)
    critic_in: dict = field(default_factory=dict)  # what the critic reads (the batch, or hidden states)
    # scoring
    mask: Any = None                   # response mask, float
    old_lp: Any = None
    ref_lp: Any = None
    values: Any = None                 # masked
    scores: Any = None
    correct: Optional[list] = None
    # advantages
    has_eos: Any = None
    seq_kl: Any = None                 # k1 KL per response
    mean_kl: float = 0.0
    kl_next: Any = None                # the KL controller after this step (replaces it on commit)
    kl_tok: Any = None
    adv: Any = None
    ret: Any = None
    kl_coef: float = 0.0


@dataclass
class Observed:
    """What the monitors saw in a step (``PPODriver._monitor_step``)."""

    values: dict                       # metrics values (and repetition_each, per row)
    alerts: list
    flags: list                        # per row
    audits: Optional[list]             # the audit scorer's scores, or None
    prompts: list[str]                 # the decoded prompts


class PPODriver:
    def __init__(self, cfg: RunConfig, endpoints: dict[str, Any], tokenizer, kl_controller,
                 threads: Optional[ThreadPlan] = None, concurrent: bool = True):
        self.cfg = cfg
        self.ep = endpoints
        self.tok = tokenizer
        self.kl_ctl = kl_controller
        self.threads = threads or ThreadPlan.make(cfg)
        self.concurrent = concurrent
        self._pending: Optional[Any] = None  # the KL controller's state after the pending step
        self.monitors, self.audit = make_monitors(cfg)
        from engine.config import critic_free

        self.critic_free = critic_free(cfg)
        self.trainable = [r for r in TRAINABLE if not (r == "critic" and self.critic_free)]
        self.answers: dict[str, str] = {}  # formatted prompt -> reference answer (verifiable tasks)
        # (step, phase) as a step moves on: generating, scoring, advantages, update, monitors,
        # evaluating (the supervisor shows it in the console's header, engine/runtime/stage.py)
        self.on_stage = lambda step, phase: None
        self.heldout: Optional[tuple[list[str], list[str]]] = None  # held-out prompts and answers

    def _call(self, call: RoleCall, phase: str) -> Future:
        """Submit ``call`` with the threads the plan gives its role in ``phase`` (generate,
        score, update)."""
        n = getattr(self.threads, phase).get(call.role)
        return self.ep[call.role].submit(replace(call, threads=n))

    def _gather(self, futs: dict[str, Future]) -> dict[str, RoleResult]:
        out, first_err = {}, None
        for k, f in futs.items():
            try:
                out[k] = f.result()
            except BaseException as e:  # noqa: BLE001 - wait for all, then raise the first
                first_err = first_err or e
        if first_err:
            raise first_err
        return out

    def _run_phase(self, calls: dict[str, RoleCall], phase: str, serial: bool = False) -> dict[str, RoleResult]:
        """The ``calls`` of one phase, at once (or one after another), by the same keys."""
        if self.concurrent and not serial:
            return self._gather({k: self._call(c, phase) for k, c in calls.items()})
        return {k: self._gather({k: self._call(c, phase)})[k] for k, c in calls.items()}

    def _run_one(self, call: RoleCall, phase: str) -> RoleResult:
        return self._run_phase({"one": call}, phase)["one"]

    # ---- the update as a two-phase commit ------------------------------------------------
    def _update_phase(self, calls: dict[str, RoleCall]) -> dict[str, RoleResult]:
        """Run the roles' updates; if any fails, roll back those that succeeded and raise."""
        results: dict[str, RoleResult] = {}
        errors: dict[str, BaseException] = {}
        if self.concurrent:
            futs = {k: self._call(c, "update") for k, c in calls.items()}
            for k, f in futs.items():
                try:
                    results[k] = f.result()
                except BaseException as e:  # noqa: BLE001 - wait for all, then decide
                    errors[k] = e
        else:
            for k, c in calls.items():
                try:
                    results[k] = self._call(c, "update").result()
                except BaseException as e:  # noqa: BLE001
                    errors[k] = e
                    break
        if errors:
            # a failed role has restored its own state; undo the others' updates of this step
            self._send_all([calls[k].role for k in results], "rollback")
            ranked = sorted(errors.values(), key=lambda e: {"died": 0, "timeout": 0, "nonfinite": 1}.get(getattr(e, "kind", "nonfinite"), 2))
            raise ranked[0]
        return results

    def _send_all(self, roles: list[str], op: str) -> None:
        futs = {r: self.ep[r].submit(RoleCall(r, op)) for r in roles}
        for r, f in futs.items():
            try:
                f.result()
            except BaseException as e:
                if getattr(e, "kind", None) in ("died", "timeout"):
                    raise
                raise UpdateConsistencyError(f"{r} could not {op} its update: {e}") from e

    @property
    def pending(self) -> bool:
        return self._pending is not None

    def commit(self) -> None:
        """Make the pending update of the last step permanent in every trainable role."""
        if self._pending is None:
            return
        kl_next = self._pending
        self._send_all(list(self.trainable), "commit")
        self._pending = None
        self.kl_ctl.load_state_dict(kl_next.state_dict())  # the controller moves on commit
        self.monitors.commit()

    def rollback(self) -> None:
        """Undo the pending update of the last step in every trainable role."""
        if self._pending is None:
            return
        self._send_all(list(self.trainable), "rollback")
        self._pending = None
        self.monitors.rollback()

    def _answers_for(self, prompts: list[str]) -> Optional[list[Optional[str]]]:
        if not self.answers:
            return None
        return [self.answers.get(p) for p in prompts]

    def evaluate(self) -> dict:
        """Greedy responses to the held-out prompts, scored by the reward: ``heldout_score``
        (mean score) and, for a rule reward, ``heldout_accuracy`` (fraction answered right)."""
        if not self.heldout:
            return {}
        prompts, answers = self.heldout
        t = time.perf_counter()
        gen = self._run_one(RoleCall("actor", "generate", args={"prompts": prompts, "greedy": True}), "generate")
        batch = {k: v for k, v in gen.tensors.items() if k != "old_logprobs"}
        scored = self._run_one(RoleCall("reward", "score", batch, {"answers": answers}), "score")
        info = scored.info
        res = {"heldout_score": float(scored.tensors["scores"].float().mean()),
               "heldout_n": len(prompts), "heldout_s": round(time.perf_counter() - t, 3)}
        if "correct" in info:
            res["heldout_accuracy"] = sum(bool(c) for c in info["correct"]) / max(1, len(prompts))
        return res

    def _advantages(self, scores, index, old_lp, ref_lp, mask, values, has_eos, kl_value: float):
        """Token rewards, advantages and returns for ``ppo.estimator`` (engine.algorithms);
        ``kl_value``: the KL controller's coefficient for this batch."""
        p = self.cfg.ppo
        adj_scores = scores.clone()
        if p.missing_eos_penalty is not None:
            adj_scores = torch.where(has_eos, adj_scores, adj_scores - float(p.missing_eos_penalty))
        # ppo.kl_in: loss -> the KL is a term of the actor's loss, not of the reward
        kl_coef = float(kl_value) if p.kl_in == "reward" else 0.0
        rewards, kl_tok = A.shape_rewards(adj_scores, old_lp, ref_lp, mask, kl_coef, kind=p.kl_estimator)
        # the estimator by name (engine/estimators.py); the KL-shaped rewards are returned as
        # shaped (gae with ppo.whiten_rewards whitens its own copy)
        adv, ret = estimators.get(p.estimator)(estimators.EstimatorInputs(
            rewards=rewards, mask=mask, index=index, values=values, gamma=p.gamma, lam=p.lam,
            whiten_rewards=p.whiten_rewards, whiten_advantages=p.whiten_advantages))
        return rewards, kl_tok, adv.float(), ret.float(), kl_coef

    def step(self, step: int, prompts: list[str], commit: bool = True) -> tuple[dict, list[dict]]:
        """One PPO step. With ``commit=False`` the actor (and critic) updates stay pending until
        ``commit()`` (or ``rollback()``): the caller records the step first. With ``rollout.n``
        > 1 each prompt is sampled n times in the one generate call; its responses share a
        group id (``index``)."""
        t_step = time.perf_counter()
        timings: dict[str, float] = {}
        eval_before = {}
        if step == 1 and self.heldout and self.cfg.eval.every:  # the starting policy, once
            self.on_stage(step, "evaluating")
            eval_before = self.evaluate()
        s = self._expand(step, prompts)
        self._rollout(s, timings)         # 1. the actor generates
        self._score(s, timings)           # 2. log-probs, values and scores, concurrently
        self._advantage_phase(s, timings)  # 3. the driver's own math
        upd = self._update(s, timings)    # 4. actor and critic updates, one two-phase commit
        self.on_stage(step, "monitors")
        t = time.perf_counter()
        seen = self._monitor_step(s.batch, s.scores, s.mean_kl, upd["actor"].info)
        timings["monitors"] = time.perf_counter() - t
        self._pending = s.kl_next
        if commit:
            self.commit()
        timings["step"] = time.perf_counter() - t_step
        # 5. metrics and samples
        metrics = self._metrics(s, timings, upd, seen, eval_before)
        samples = self._samples(s, seen)
        metrics.pop("repetition_each")
        return metrics, samples

    def _expand(self, step: int, prompts: list[str]) -> "StepBatch":
        """The step's rows: each prompt ``rollout.n`` times, with its group id and answer."""
        n_per = int(self.cfg.rollout.n)
        base_answers = self._answers_for(prompts)
        prompts = [q for q in prompts for _ in range(n_per)]
        index = torch.arange(len(prompts) // n_per).repeat_interleave(n_per)
        answers = [a for a in base_answers for _ in range(n_per)] if base_answers is not None else None
        return StepBatch(step=step, prompts=prompts, index=index, answers=answers, n_per=n_per)

    def _rollout(self, s: "StepBatch", timings: dict) -> None:
        """The actor's responses to the step's prompts (``s.batch``; ``s.gen_lp``: their
        log-probs when generation kept them, rollout.reuse_logprobs)."""
        self.on_stage(s.step, "generating")
        t = time.perf_counter()
        gen = self._run_one(RoleCall("actor", "generate", args={"prompts": s.prompts, "step": s.step}), "generate")
        timings["rollout"] = time.perf_counter() - t
        s.batch = dict(gen.tensors)
        s.gen_lp = s.batch.pop("old_logprobs", None)  # rollout.reuse_logprobs: no second actor pass

    def _score(self, s: "StepBatch", timings: dict) -> None:
        """The scoring phase: the actor's and the reference's log-probs, the critic's values and
        the reward's scores of ``s.batch``, concurrently (or in turn, ``serial_score``)."""
        cfg, p, batch = self.cfg, self.cfg.ppo, s.batch
        self.on_stage(s.step, "scoring")
        t = time.perf_counter()
        shared = p.critic_trunk == "reference" and not self.critic_free
        # a LoRA actor with reference.model null answers for the reference: its base model
        # with the adapters disabled (no reference worker exists)
        ref_call = ("actor", "ref_logprobs") if reference_in_actor(cfg) else ("reference", "logprobs")
        calls = {
            "old": RoleCall("actor", "logprobs", batch),
            "ref": RoleCall(*ref_call, batch, {"hidden": shared}),
            "val": RoleCall("critic", "values", batch),
            "rew": RoleCall("reward", "score", batch, {"answers": s.answers} if s.answers is not None else {}),
        }
        if shared or self.critic_free:  # the head reads the reference's hidden states; or no critic
            del calls["val"]
        if s.gen_lp is not None:
            del calls["old"]
        res = self._run_phase(calls, "score", serial=self.threads.serial_score)
        if s.gen_lp is not None:
            res["old"] = RoleResult({"logprobs": s.gen_lp}, {}, 0.0)
        s.critic_in = batch
        if shared:
            s.critic_in = {"response_mask": batch["response_mask"], "hidden": res["ref"].tensors["hidden"]}
            res["val"] = self._gather({"val": self._call(RoleCall("critic", "values", s.critic_in), "score")})["val"]
        if self.critic_free:
            res["val"] = RoleResult({"values": torch.zeros_like(batch["response_mask"], dtype=torch.float32)}, {}, 0.0)
        timings["scoring"] = time.perf_counter() - t
        timings["actor_logprobs"] = res["old"].seconds
        timings["ref"] = res["ref"].seconds
        if not self.critic_free:  # no critic: no critic phase in the timings (nor a row in the console)
            timings["critic"] = res["val"].seconds
        timings["reward"] = res["rew"].seconds
        s.mask = batch["response_mask"].float()
        s.old_lp = res["old"].tensors["logprobs"]
        s.ref_lp = res["ref"].tensors["logprobs"]
        s.values = res["val"].tensors["values"] * s.mask
        s.scores = res["rew"].tensors["scores"].float()
        s.correct = res["rew"].info.get("correct")

    def _advantage_phase(self, s: "StepBatch", timings: dict) -> None:
        """The KL to the reference, the KL controller's next state, and the batch's rewards,
        advantages and returns (refused when not finite)."""
        self.on_stage(s.step, "advantages")
        t = time.perf_counter()
        mask = s.mask
        eos = self.tok.eos_token_id
        s.has_eos = ((s.batch["response_ids"] == eos) & s.batch["response_mask"].bool()).any(dim=1)
        k1 = A.kl_penalty(s.old_lp, s.ref_lp, "k1") * mask
        s.seq_kl = k1.sum(dim=1)
        s.mean_kl = float(s.seq_kl.mean())
        # the KL controller: a copy moves now and replaces it on commit. One that acts on the
        # current batch (pi) reads this batch's KL before its rewards are shaped; the others
        # shape with their value and move after.
        s.kl_next = copy.deepcopy(self.kl_ctl)
        if getattr(s.kl_next, "acts_on_current", False):
            kl_value = s.kl_next.update(s.mean_kl, mask.shape[0])
        else:
            kl_value = self.kl_ctl.value
            s.kl_next.update(s.mean_kl, mask.shape[0])
        rewards, s.kl_tok, s.adv, s.ret, s.kl_coef = self._advantages(
            s.scores, s.index, s.old_lp, s.ref_lp, mask, s.values, s.has_eos, kl_value)
        for name, tns in (("rewards", rewards), ("advantages", s.adv), ("returns", s.ret)):
            if not torch.isfinite(tns[mask.bool()]).all():
                raise NonFiniteError("driver", "advantage", f"{name} contain NaN/inf")
        timings["advantage"] = time.perf_counter() - t

    def _update(self, s: "StepBatch", timings: dict) -> dict[str, RoleResult]:
        """The actor's and the critic's updates, concurrently, as one two-phase commit."""
        p = self.cfg.ppo
        self.on_stage(s.step, "update")
        t = time.perf_counter()
        actor_in = {**s.batch, "old_logprobs": s.old_lp, "advantages": s.adv}
        if p.kl_in == "loss" or p.kl_guard is not None:
            actor_in["ref_logprobs"] = s.ref_lp
        calls = {"actor": RoleCall("actor", "update", actor_in, {"step": s.step})}
        if not self.critic_free:
            calls["critic"] = RoleCall("critic", "update", {**s.critic_in, "values": s.values, "returns": s.ret},
                                       {"step": s.step})
        upd = self._update_phase(calls)
        timings["update"] = time.perf_counter() - t
        timings["actor_update"] = upd["actor"].seconds
        if "critic" in upd:
            timings["critic_update"] = upd["critic"].seconds
        return upd

    def _metrics(self, s: "StepBatch", timings: dict, upd: dict[str, RoleResult], seen: "Observed",
                 eval_before: dict) -> dict[str, Any]:
        """The step's row of metrics.jsonl (with ``repetition_each``, which the samples read and
        the caller drops); a held-out evaluation when one is due."""
        cfg, p, step, mask = self.cfg, self.cfg.ppo, s.step, s.mask
        scores, adv, ret = s.scores, s.adv, s.ret
        lengths = mask.sum(dim=1)
        n_tokens = int(mask.sum())
        metrics: dict[str, Any] = {
            "step": step,
            "time": time.time(),
            "timings": {k: round(v, 4) for k, v in timings.items()},
            "estimator": p.estimator,
            "rollout_n": s.n_per,
            "score_mean": float(scores.mean()),
            "score_std": float(scores.std()) if scores.numel() > 1 else 0.0,
            "kl": s.mean_kl,
            "kl_coef": s.kl_coef,
            "kl_coef_next": float(s.kl_next.value) if p.kl_in == "reward" else 0.0,
            "kl_penalty_mean": float(s.kl_tok.sum(1).mean()),  # the configured estimator, as shaped
            "response_len_mean": float(lengths.mean()),
            "response_len_max": int(lengths.max()) if lengths.numel() else 0,
            "eos_frac": float(s.has_eos.float().mean()),
            "advantage_mean": float(A.masked_mean(adv, mask)),
            "return_mean": float(A.masked_mean(ret, mask)),
            "tokens": n_tokens,
            "tokens_per_s": n_tokens / timings["step"] if timings["step"] > 0 else 0.0,
            "gen_tokens_per_s": n_tokens / timings["rollout"] if timings["rollout"] > 0 else 0.0,
        }
        if not self.critic_free:
            metrics["value_mean"] = float(A.masked_mean(s.values, mask))
        if s.n_per > 1:  # spread of the scores within a prompt's group (0: nothing to learn from it)
            g = scores.view(-1, s.n_per)
            metrics["group_score_std"] = float(g.std(dim=1).mean())
            metrics["group_all_equal_frac"] = float((g.max(1).values == g.min(1).values).float().mean())
        if s.correct is not None:
            metrics["accuracy"] = sum(bool(c) for c in s.correct) / max(1, len(s.correct))
        metrics.update({k: v for k, v in upd["actor"].info.items()})
        if "critic" in upd:
            metrics.update({k: v for k, v in upd["critic"].info.items()})
        metrics.update(seen.values)
        metrics["alerts"] = seen.alerts
        if eval_before:
            metrics.update({f"{k}_initial": v for k, v in eval_before.items() if k in ("heldout_accuracy", "heldout_score")})
        if self.heldout and cfg.eval.every and (step % cfg.eval.every == 0 or step == cfg.run.steps):
            self.on_stage(step, "evaluating")
            ev = self.evaluate()  # the policy after this step's update
            metrics.update(ev)
            metrics["timings"]["eval"] = round(ev.get("heldout_s", 0.0), 4)
        return metrics

    def _samples(self, s: "StepBatch", seen: "Observed") -> list[dict]:
        """The step's records for samples.jsonl: the first ``rollout.samples_to_log`` rows (whole
        groups with rollout.n > 1) and every row a monitor flagged."""
        p, batch, n_per = self.cfg.ppo, s.batch, s.n_per
        samples = []
        n_log = min(self.cfg.rollout.samples_to_log, len(seen.prompts))
        if n_per > 1 and n_log:  # whole groups: the n responses to a prompt side by side
            n_log = min(len(seen.prompts), -(-n_log // n_per) * n_per)
        step_alerts = [a["monitor"] for a in seen.alerts if a["samples"] is None]
        seq_adv = (s.adv * s.mask).sum(1) / s.mask.sum(1).clamp(min=1.0)  # the response's mean advantage
        for i in sorted(set(range(n_log)) | {i for i, f in enumerate(seen.flags) if f}):  # + every flagged one
            m = batch["response_mask"][i].bool()
            resp_ids = batch["response_ids"][i][m]
            # the response token by token: what the console colours and the report ranks
            trace = TokenTrace.make([self.tok.decode([t]) for t in resp_ids.tolist()], s.old_lp[i][m],
                                    s.ref_lp[i][m], s.kl_tok[i][m], s.adv[i][m], kl_estimator=p.kl_estimator)
            samples.append(Sample(
                id=sample_id(s.step, i), step=s.step, index=i, prompt=seen.prompts[i],
                response=self.tok.decode(resp_ids, skip_special_tokens=True),
                score=float(s.scores[i]), kl=float(s.seq_kl[i]), ret=float(s.ret[i][0]) if m.any() else 0.0,
                length=int(m.sum()), eos=bool(s.has_eos[i]), repetition=seen.values["repetition_each"][i],
                audit=seen.audits[i] if seen.audits is not None else None, flags=seen.flags[i],
                step_alerts=step_alerts, advantage=float(seq_adv[i]), group=int(s.index[i]) if n_per > 1 else None,
                answer=s.answers[i] if s.answers is not None else None,
                correct=bool(s.correct[i]) if s.correct is not None else None, tokens=trace.to_dict(),
            ).to_dict())
        return samples

    def _monitor_step(self, batch, scores, mean_kl: float, actor_stats: dict) -> "Observed":
        """The reward-hacking monitors of this step (engine.monitors), with the audit scorer's
        scores when ``reward.audit`` is set."""
        prompts_txt = self.tok.batch_decode(batch["query_ids"], skip_special_tokens=True)
        mask = batch["response_mask"].bool()
        ids = [row[m].tolist() for row, m in zip(batch["response_ids"], mask)]
        audits, audit_error = None, None
        if self.audit is not None:
            responses = self.tok.batch_decode([torch.tensor(x, dtype=torch.long) for x in ids],
                                              skip_special_tokens=True)
            try:
                audits = self.audit(prompts_txt, responses)
            except Exception as e:  # noqa: BLE001 - a broken audit scorer must not stop training
                audit_error = f"{type(e).__name__}: {e}"
        values, alerts, flags = self.monitors.observe(
            kl=mean_kl, entropy=actor_stats.get("entropy"), lengths=[len(x) for x in ids],
            scores=scores.tolist(), responses=ids, audits=audits)
        values["repetition_each"] = [M.repetition(x, self.monitors.ngram) for x in ids]
        if audit_error:
            values["audit_error"] = audit_error
        return Observed(values, alerts, flags, audits, prompts_txt)


def make_monitors(cfg: RunConfig):
    """The run's monitor tracker (thresholds from ``monitors.*``) and its audit scorer
    (``reward.audit``, built here in the driver's process; None when not configured)."""
    mc = cfg.monitors
    tracker = M.MonitorTracker(
        thresholds={"kl_growth": mc.kl_growth, "entropy_drop": mc.entropy_drop,
                    "length_drift": mc.length_drift, "repetition": mc.repetition,
                    "divergence": mc.divergence},
        window=mc.window, baseline_steps=mc.baseline_steps, ngram=mc.ngram,
        clear_fraction=mc.clear_fraction, trip_steps=mc.trip_steps)
    audit = None
    if cfg.reward.audit:
        from engine.rewards import build_reward

        audit = build_reward(cfg.reward.audit)
    return tracker, audit


def format_step_line(m: dict, total_steps: int) -> str:
    t = m.get("timings", {})
    return (
        f"step {m['step']}/{total_steps} | rollout {t.get('rollout', 0):.1f}s | ref {t.get('ref', 0):.1f}s"
        f" | reward {t.get('reward', 0):.1f}s | critic {t.get('critic', 0):.1f}s | update {t.get('update', 0):.1f}s"
        f" | step {t.get('step', 0):.1f}s | score {m.get('score_mean', 0):.3f} | kl {m.get('kl', 0):.4f}"
    )
