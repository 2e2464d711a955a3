"""A/B timing of the actor's update on one fixed, recorded batch (issue 12, the update levers).

    python scripts/bench_update.py --config configs/default.yaml [--repeats 3] [--set k=v ...]

Builds the actor role as the runtime does (all cores, the role's own seed), records one batch
(a real rollout of the config's prompts, old log-probs from the actor, seeded random
advantages), commits one update so the optimizer has its state, then times ``update``
interleaved: ``new`` (the code as it is) and ``old`` (the implementations this replaced: torch's
default AdamW, a fresh host copy per update, an elementwise isfinite check, the full float32
log-softmax and entropy through the head), each followed by ``rollback`` so every timed update
starts from the same weights and optimizer state. Printed per variant: the update, and inside
it the two-phase copy, the optimizer steps, the parameter check, and the rest (forwards and
backwards). Both variants' statistics are printed too: they must agree to float rounding.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch


def _old_check(actor):
    from engine.runtime.role_base import NonFiniteError
    from engine.runtime.role_training import local_shard

    def check():
        bad = next((k for k, v in actor.model.named_parameters()
                    if v.requires_grad and not torch.isfinite(local_shard(v.detach())).all()), None)
        if bad:
            raise NonFiniteError(actor.name, "update", f"parameter {bad} is not finite")
    return check


def _old_snapshot(actor):
    from engine.runtime.role_training import to_cpu

    def snap():
        params = {k: v.detach().to("cpu", copy=True) for k, v in actor.model.named_parameters() if v.requires_grad}
        return {"params": params, "optimizer": to_cpu(actor.optimizer.state_dict()),
                "scheduler": copy.deepcopy(actor.scheduler.state_dict())}
    return snap


def _old_head(model, hidden, targets, *, temperature=1.0, return_entropy=False, logits_dtype=torch.float32):
    from engine import models as M

    head = model.get_output_embeddings()
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        logits = torch.nn.functional.linear(hidden.float(), head.weight.float())
    return M._logprobs_from_logits(logits, targets, float(temperature), return_entropy, logits_dtype)


class _Timed:
    def __init__(self):
        self.t: dict[str, float] = {}

    def wrap(self, key, fn):
        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.t[key] = self.t.get(key, 0.0) + time.perf_counter() - t0
        return timed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    args = ap.parse_args()

    from engine import models as M
    from engine.config import load_config
    from engine.data import prompt_stream
    from engine.procs import available_cores
    from engine.runtime.role_base import role_seed
    from engine.runtime.role_policy import ActorRole

    cfg = load_config(args.config, args.overrides)
    torch.set_num_threads(available_cores())
    torch.manual_seed(role_seed(cfg.run.seed, "actor"))
    actor = ActorRole(cfg)
    batch, _ = actor.op_generate({}, {"prompts": prompt_stream(cfg, actor.tokenizer).next_batch(), "step": 1})
    batch["old_logprobs"] = actor.op_logprobs(batch, {})[0]["logprobs"]
    batch["ref_logprobs"] = batch["old_logprobs"].clone()
    batch["advantages"] = torch.randn(batch["response_ids"].shape, generator=torch.Generator().manual_seed(0))
    actor.op_update(batch, {"step": 1})
    actor.op_commit({}, {})

    new_opt = actor.optimizer
    old_opt = torch.optim.AdamW([q for q in actor.model.parameters() if q.requires_grad],
                                lr=cfg.ppo.actor_lr, weight_decay=cfg.ppo.weight_decay)
    old_opt.load_state_dict(copy.deepcopy(new_opt.state_dict()))
    for g in old_opt.param_groups:
        g["fused"] = None
    new_head = M.head_logprobs
    cls = type(actor)

    def use(variant: str, timer: _Timed):
        old = variant == "old"
        actor.optimizer = old_opt if old else new_opt
        actor.scheduler.optimizer = actor.optimizer
        actor.optimizer.step = timer.wrap("optimizer", type(actor.optimizer).step.__get__(actor.optimizer))
        actor._snapshot = timer.wrap("copy", _old_snapshot(actor) if old else cls._snapshot.__get__(actor))
        actor._check_params = timer.wrap("check", _old_check(actor) if old else cls._check_params.__get__(actor))
        M.head_logprobs = _old_head if old else new_head

    print(f"actor update A/B on one recorded batch: {args.config} {' '.join(args.overrides)}; "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}", flush=True)
    res: dict[str, list[dict]] = {"new": [], "old": []}
    for r in range(args.repeats):
        for variant in ("new", "old") if r % 2 == 0 else ("old", "new"):
            timer = _Timed()
            use(variant, timer)
            t0 = time.perf_counter()
            _, stats = actor.op_update(batch, {"step": 2})
            total = time.perf_counter() - t0
            actor.op_rollback({}, {})
            row = {"update": total, **timer.t}
            row["rest"] = total - sum(timer.t.values())
            res[variant].append(row)
            print(f"  {r + 1} {variant}: " + "  ".join(f"{k} {v:.3f}" for k, v in row.items())
                  + f"   policy_loss {stats['policy_loss']:.6f} grad_norm {stats['grad_norm']:.5f}", flush=True)
    keys = ["update", "copy", "optimizer", "check", "rest"]
    print(f"\nmedian seconds over {args.repeats} repeats")
    print(f"{'':10s}" + "".join(f"{k:>11s}" for k in keys))
    med = {v: {k: statistics.median(x[k] for x in rows) for k in keys} for v, rows in res.items()}
    for v in ("old", "new"):
        print(f"{v:10s}" + "".join(f"{med[v][k]:11.3f}" for k in keys))
    print(f"{'new/old':10s}" + "".join(f"{med['new'][k] / med['old'][k]:11.2f}" if med["old"][k] else f"{'-':>11s}"
                                      for k in keys))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
