"""Human feedback in a live run: the reward versions (``rewards/versions.json``), a reward swap
at a step boundary, the refit process that retrains the reward model from the run's judgements,
and fresh response pairs to judge.

Work that must happen between two steps (a swap, a pair) is queued here and run by the loop at
the step boundary (``run_boundary_jobs``), so every step is scored by one reward version. The
refit runs in its own process (``engine/runtime/refit_proc.py``: forked from the run's fork
server where it has one, else spawned), one at a time; its result is read by
``_watch_refit``, which queues the swap when the new model is accepted.
"""
from __future__ import annotations

import json
import random
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from engine.config import dump_config
from engine.files import append_jsonl, atomic_write_json
from engine.runtime.calls import RoleCall
from engine.runtime.worker import WorkerError

if TYPE_CHECKING:  # pragma: no cover
    from engine.runtime.supervisor import Supervisor


class FeedbackService:
    """Reward versions, swaps, refits and pairs of one run.

    ``host`` is the run's supervisor; this reads its ``cfg``, ``rd``, ``step``, ``state``,
    ``driver`` and ``pool``, and calls its ``log``, ``log_safe``, ``write_state`` and
    ``broadcast``. ``cv`` is the supervisor's condition: the boundary queue shares it with the
    pause/stop requests the loop waits on."""

    def __init__(self, host: "Supervisor", cv: threading.Condition):
        self.host = host
        self.cv = cv
        # the reward version scoring each step, swaps and pair requests waiting for the step
        # boundary, the refit process (one at a time)
        self.reward_source = ""
        self.reward_version = 0
        self._boundary_q: list[dict] = []
        self._refit: Optional[dict] = None
        self._refit_lock = threading.Lock()
        self._judgements_at_refit = 0
        self._labels_seen: tuple = (-1, 0)   # (labels.jsonl size, judgement rows) for every_labels
        self.prompts: list[str] = []
        self.tokenizer = None
        self._pairs_made = 0

    def swap_reward(self, req: dict) -> dict:
        source = req.get("source")
        if not isinstance(source, str) or not source.strip():
            return {"ok": False, "error": "swap_reward needs a non-empty 'source' string"}
        w = self.host.pool.by_role["reward"]
        self.host.log(f"swapping reward to '{source}' ...")
        from engine.runtime.probe import probe_reward

        # first in a throw-away process: a crash, sys.exit or hang there cannot touch the run
        ok, why = probe_reward(dump_config(self.host.cfg), source, float(self.host.cfg.runtime.worker_timeout_s))
        if not ok:
            self.host.log(f"reward swap to '{source}' refused, keeping '{self.reward_source}': {why}", "WARNING")
            return {"ok": False, "error": f"could not load '{source}': {why}; the previous reward "
                                          f"'{self.reward_source}' stays in place"}
        del w
        # the live worker loads it at the step boundary, so every step is scored by one version
        return self.at_boundary({"op": "swap", "source": source, "kind": "swap"},
                                float(self.host.cfg.runtime.worker_timeout_s) + 3600.0)

    # ---- work done at the step boundary (reward swaps, fresh pairs) -----------------------
    def at_boundary(self, job: dict, timeout: float) -> dict:
        job["event"] = threading.Event()
        with self.cv:
            if self.host.state in ("finished", "failed", "stopped"):
                return {"ok": False, "error": f"the run is {self.host.state}"}
            self._boundary_q.append(job)
            self.cv.notify_all()
        if not job["event"].wait(timeout):
            return {"ok": False, "error": f"no step boundary within {timeout:.0f}s"}
        return job["result"]

    def run_boundary_jobs(self) -> None:
        with self.cv:
            jobs, self._boundary_q = self._boundary_q, []
        for job in jobs:
            try:
                if job["op"] == "swap":
                    job["result"] = self.apply_swap(job["source"], job["kind"], job.get("extra") or {})
                else:
                    job["result"] = self.sample_pair(job.get("prompt"), int(job.get("n", 2)), job.get("candidates"))
            except WorkerError:
                job["result"] = {"ok": False, "error": "a worker failed"}
                job["event"].set()
                raise
            except Exception as e:  # noqa: BLE001 - answered, never a crash of the run
                job["result"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            job["event"].set()

    def fail_boundary_jobs(self, why: str) -> None:
        with self.cv:
            jobs, self._boundary_q = self._boundary_q, []
        for job in jobs:
            job["result"] = {"ok": False, "error": why}
            job["event"].set()

    def apply_swap(self, source: str, kind: str, extra: dict) -> dict:
        """Load ``source`` into the live reward worker (between steps); a new reward version."""
        w = self.host.pool.by_role["reward"]
        try:
            secs = self.host.pool.submit(w, RoleCall("reward", "swap", args={"source": source})).result().seconds
        except WorkerError as e:
            if e.kind == "died":
                raise
            self.host.log(f"reward swap to '{source}' failed, keeping '{self.reward_source}' "
                          f"(v{self.reward_version}): {e}", "WARNING")
            return {"ok": False, "error": f"could not load '{source}': {e}; the previous reward "
                                          f"'{self.reward_source}' stays in place"}
        old, self.reward_source = self.reward_source, source
        if self.host.driver is not None:  # its scores have another scale: divergence gets a new baseline
            self.host.driver.monitors.reward_changed()
        reg = self.registry()
        version = max([v.get("version", 0) for v in reg["versions"]] + [self.reward_version]) + 1
        self.reward_version = version
        reg["versions"].append({"version": version, "source": source, "kind": kind, "from_step": self.host.step + 1,
                                "previous": old, "time": time.time(), **extra})
        self.save_registry(reg)
        self.host.write_state(reward_source=source, reward_version=version)
        self.host.log(f"reward v{version} in place from step {self.host.step + 1}: swapped from '{old}' to "
                      f"'{source}' in {secs:.1f}s" + (f" (refit {extra['attempt']})" if "attempt" in extra else ""))
        self.host.broadcast({"event": "reward", "version": version, "source": source, "step": self.host.step})
        return {"ok": True, "source": source, "previous": old, "seconds": secs, "version": version,
                "message": f"reward v{version} '{source}' in place from step {self.host.step + 1}"}

    def sample_pair(self, prompt: Optional[str], n: int = 2, candidates: Optional[int] = None) -> dict:
        """``n`` (2 by default) fresh responses of the actor to one prompt (a random prompt of the
        run's data unless given), scored by the current reward and appended to samples.jsonl,
        to be judged against each other. ``candidates``: generate that many and offer the pair a
        judgement teaches most (``engine.judgements.pick_pair``: base and learned preference
        disagree, else the reward is least sure); each offered sample records why in ``picked``."""
        from engine.judgements import pick_pair

        if prompt is None:
            if not self.prompts:
                return {"ok": False, "error": "the run has no prompts loaded yet"}
            prompt = random.Random(f"{self.host.cfg.run.seed}-pair-{self._pairs_made}").choice(self.prompts)
        k = self._pairs_made
        self._pairs_made += 1
        gen = max(n, candidates or 0)
        actor = self.host.pool.endpoints["actor"]
        batch = dict(actor.submit(RoleCall("actor", "generate", args={"prompts": [prompt] * gen,
                                                                      "step": self.host.step})).result().tensors)
        batch.pop("old_logprobs", None)
        scored = self.host.pool.endpoints["reward"].submit(
            RoleCall("reward", "score", batch, {"components": bool(candidates)})).result()
        scores, info = scored.tensors["scores"].tolist(), scored.info or {}
        tok = self.tokenizer
        prompts_txt = tok.batch_decode(batch["query_ids"], skip_special_tokens=True)
        eos = tok.eos_token_id
        texts = [tok.decode(batch["response_ids"][i][batch["response_mask"][i].bool()], skip_special_tokens=True)
                 for i in range(gen)]
        rows, picked = list(range(n)), None
        if candidates:
            i, j, picked = pick_pair(scores, texts, info.get("base"), info.get("preference"))
            rows = [i, j]
        out = []
        for tag, i in zip("abcdefghijklmnop", rows):
            m = batch["response_mask"][i].bool()
            ids = batch["response_ids"][i]
            row = {"id": f"{self.host.step}-pair{k}{tag}", "step": self.host.step, "index": i, "kind": "pair",
                   "pair": k, "reward_version": self.reward_version, "prompt": prompts_txt[i],
                   "response": texts[i], "score": float(scores[i]),
                   "kl": None, "return": None, "length": int(m.sum()),
                   "eos": bool(((ids == eos) & m).any())}
            if picked is not None:
                row["picked"] = picked
            if "base" in info:
                row["score_base"], row["preference"] = float(info["base"][i]), float(info["preference"][i])
            out.append(row)
        for row in out:
            append_jsonl(self.host.rd.samples, row)
        self.host.broadcast({"event": "samples", "step": self.host.step, "samples": out})
        return {"ok": True, "samples": out, "message": " / ".join(o["id"] for o in out)}

    # ---- reward versions and refits -------------------------------------------------------
    @property
    def rewards_dir(self) -> Path:
        return self.host.rd.path / "rewards"

    def registry(self) -> dict:
        try:
            reg = json.loads((self.rewards_dir / "versions.json").read_text())
        except (OSError, ValueError):
            reg = {}
        reg.setdefault("versions", [])
        reg.setdefault("refits", [])
        return reg

    def save_registry(self, reg: dict) -> None:
        self.rewards_dir.mkdir(exist_ok=True)
        atomic_write_json(self.rewards_dir / "versions.json", reg)

    def refit_status(self) -> Optional[dict]:
        r = self._refit
        return None if r is None else {"state": "running", "attempt": r["attempt"], "started": r["started"]}

    def judgement_rows(self) -> int:
        from engine.judgements import count_rows

        try:
            size = self.host.rd.labels.stat().st_size
        except OSError:
            return self._labels_seen[1]
        if size != self._labels_seen[0]:
            self._labels_seen = (size, count_rows(self.host.rd.path))
        return self._labels_seen[1]

    def maybe_auto_refit(self) -> None:
        from engine.refit import refit_settings

        every = refit_settings(self.host.cfg).every_labels
        if not every or self._refit is not None:
            return
        new = self.judgement_rows() - self._judgements_at_refit
        if new >= every:
            self.start_refit(f"{new} new judgement(s), reward.refit.every_labels = {every}")

    def start_refit(self, why: str) -> dict:
        from engine.procs import fork_server_pid
        from engine.refit import refit_settings
        from engine.runtime.refit_proc import RefitProcess

        with self._refit_lock:
            if self._refit is not None:
                return {"ok": False, "error": f"refit {self._refit['attempt']} is still running"}
            if self.host.cfg is None or "reward" not in self.host.pool.by_role:
                return {"ok": False, "error": "the run has not started yet"}
            rs = refit_settings(self.host.cfg)
            reg = self.registry()
            attempt = len(reg["refits"]) + 1
            rows = self.judgement_rows()
            self.rewards_dir.mkdir(exist_ok=True)
            out = self.rewards_dir / f"refit-{attempt}"
            result = self.rewards_dir / f"refit-{attempt}.json"
            argv = [str(self.host.rd.path), "--attempt", str(attempt), "--current", self.reward_source,
                    "--out", str(out), "--result", str(result)]
            nice = int(rs.nice)
            # progress lines come back to the event log; library warnings go to supervisor.log
            proc = RefitProcess(argv, log_path=str(self.host.rd.supervisor_log), nice=nice,
                                server=fork_server_pid())
            self._refit = {"attempt": attempt, "proc": proc, "started": time.time(), "out": out}
            self._judgements_at_refit = rows
            reg["refits"].append({"attempt": attempt, "state": "running", "started": time.time(),
                                  "from_step": self.host.step, "current_source": self.reward_source,
                                  "current_version": self.reward_version, "judgement_rows": rows, "why": why})
            self.save_registry(reg)
            self.host.write_state(refit={"state": "running", "attempt": attempt, "judgement_rows": rows})
        self.host.log(f"refit {attempt}: started ({why}) from reward v{self.reward_version} "
                      f"'{self.reward_source}' with {rows} judgement(s), in a separate process ({proc.how}, "
                      f"nice {nice}, pid {proc.pid})")
        threading.Thread(target=self._watch_refit, args=(attempt, proc, result), name="refit",
                         daemon=True).start()
        return {"ok": True, "pending": True, "attempt": attempt,
                "message": f"refit {attempt} started on {rows} judgement(s); progress in the event log"}

    def _watch_refit(self, attempt: int, proc, result_path: Path) -> None:
        try:
            for line in proc.lines():
                line = line.rstrip()
                if line:
                    self.host.log_safe(f"refit {attempt}: {line}")
            code = proc.wait()
            proc.close()  # the pipe's reading end
            try:
                res = json.loads(result_path.read_text())
            except (OSError, ValueError):
                res = {"accepted": False, "reason": f"the refit process ended (exit code {code}) "
                                                    f"without a result"}
            reg = self.registry()
            for r in reg["refits"]:
                if r.get("attempt") == attempt:
                    r.update({k: v for k, v in res.items() if k != "time"},
                             state="accepted" if res.get("accepted") else ("failed" if res.get("error") else "refused"),
                             finished=time.time())
            self.save_registry(reg)
            if res.get("accepted"):
                self.host.log(f"refit {attempt}: accepted: {res['reason']}; swapping it in at the next step boundary")
                with self.cv:
                    self._boundary_q.append({"op": "swap", "source": res["source"], "kind": "refit",
                                             "extra": {"attempt": attempt, "current": res.get("current"),
                                                       "new": res.get("new")},
                                             "event": threading.Event()})
                    self.cv.notify_all()
            else:
                self.host.log(f"refit {attempt}: refused, keeping reward v{self.reward_version} "
                              f"'{self.reward_source}': {res.get('reason')}", "WARNING")
            self.host.write_state(refit={"state": "accepted" if res.get("accepted") else "refused",
                                         "attempt": attempt, "reason": res.get("reason"),
                                    "judgement_rows": self._judgements_at_refit})
        except Exception as e:  # noqa: BLE001 - a refit never takes the run down
            self.host.log_safe(f"refit {attempt}: error: {type(e).__name__}: {e}", "ERROR")
        finally:
            with self._refit_lock:
                self._refit = None

    def stop_refit(self) -> None:
        r = self._refit
        if r is None:
            return
        proc = r["proc"]
        if proc.poll() is None:
            proc.terminate()
            if proc.wait(5) is None:
                proc.kill()
                proc.wait(5)
        for tmp in self.rewards_dir.glob(f".{r['out'].name}.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)


    # ---- start and resume ----------------------------------------------------------------
    def start(self, tokenizer, prompts: list[str]) -> None:
        """The roles are loaded: version 0 is the config's reward unless the registry has one."""
        cfg = self.host.cfg
        self.prompts, self.tokenizer = prompts, tokenizer
        reg = self.registry()
        if not reg["versions"]:
            reg["versions"].append({"version": 0, "source": cfg.reward.source, "kind": "config", "from_step": 1,
                                    "time": time.time()})
            self.save_registry(reg)

    def resume(self, st: dict) -> None:
        """The reward a checkpoint (its ``state.json``: ``st``) was taken with, back in place."""
        self.reward_version = int(st.get("reward_version") or 0)
        if st.get("reward_source") and st["reward_source"] != self.host.cfg.reward.source:
            # a swapped-in reward (a refit, swap-reward) survives the resume
            try:
                self.host.pool.submit(self.host.pool.by_role["reward"],
                                      RoleCall("reward", "swap", args={"source": st["reward_source"]})).result()
                self.reward_source = st["reward_source"]
            except WorkerError as e:
                if e.kind == "died":
                    raise
                self.reward_source, self.reward_version = self.host.cfg.reward.source, 0
                self.host.log(f"the checkpoint was taken with reward '{st['reward_source']}', which cannot be "
                              f"loaded ({e}); resuming with the config's '{self.host.cfg.reward.source}'", "WARNING")
        self.host.write_state(reward_source=self.reward_source, reward_version=self.reward_version)
        refits = self.registry()["refits"]
        self._judgements_at_refit = int(refits[-1].get("judgement_rows") or 0) if refits else 0
