"""``--dry-run``: load all four roles and run rollout -> reference -> reward -> critic once.

No backward pass and no update. Prints per-role load time, phase time and memory, so a user can
check a config (models resolvable, dtypes and devices valid, memory enough) in one go.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import torch

from engine.config import RunConfig, resolve_role_model
from engine.runtime.backend import backend_spec
from engine.runtime.role_base import memory_stats
from engine.runtime.roles import ROLE_CLASSES


def dry_run(cfg: RunConfig, printer: Optional[Callable[[str], None]] = None) -> dict:
    out = printer or print
    from engine.runtime.worker import quiet_hf_logging

    quiet_hf_logging()
    import dataclasses

    from engine.data import prompt_stream
    from engine.models import load_tokenizer
    from engine.runtime.placement import device_plan, format_plan

    plan = device_plan(cfg)
    out(format_plan(plan, cfg))
    from engine.runtime.placement import check_memory

    for line in check_memory(cfg):  # with GPUs: each GPU's estimated use (device_plan refused a misfit)
        out(line)
    ranked = [r for r, devs in plan.items() if len(devs) > 1]
    if ranked:
        out(f"  ({', '.join(ranked)}: the dry run loads rank 0 alone, on {', '.join(plan[r][0] for r in ranked)}; "
            f"the run starts {' and '.join(f'{len(plan[r])} ranks of the {r}' for r in ranked)})")
    how = backend_spec(cfg.runtime.backend).describe(cfg.runtime)
    if how:
        out(how)
    cfg = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, devices=None), **{
        r: dataclasses.replace(getattr(cfg, r), device=plan[r][0]) for r in plan})
    torch.manual_seed(cfg.run.seed)
    from engine.runtime.driver import reference_in_actor

    in_actor = reference_in_actor(cfg)
    if in_actor:
        out("reference: the LoRA actor's base model with the adapters disabled (no reference worker)")
    report = {"plan": plan}
    roles = _load_roles(cfg, plan, report, out)
    # the first batch the run itself would generate from (data.chat_template applied the same way)
    prompts = prompt_stream(cfg, load_tokenizer(resolve_role_model(cfg, "actor"))).next_batch()
    report["prompts"] = prompts
    gen = _run_once(cfg, roles, prompts, report, in_actor)
    peak = memory_stats(torch.device("cpu")).get("peak_rss_mb", 0.0)
    _summary(cfg, report, prompts, gen, peak, in_actor, out)
    report["peak_rss_mb"] = peak
    for r in roles.values():
        src = getattr(r, "source", None)
        if src is not None:
            src.close()
    return report


def _load_roles(cfg: RunConfig, plan: dict, report: dict, out: Callable[[str], None]) -> dict:
    """Each active role built here, timed and measured into ``report``, with its precision set
    as the run sets it."""
    from engine.runtime.driver import active_roles

    roles = {}
    for name in active_roles(cfg):
        before = memory_stats(torch.device("cpu")).get("rss_mb", 0.0)
        t = time.perf_counter()
        roles[name] = ROLE_CLASSES[name](
            cfg, progress=lambda m, n=name: out(f"  {m}" if m.startswith(f"{n}:") else f"  {n}: {m}"))
        after = memory_stats(roles[name].device)
        report[name] = {"load_s": time.perf_counter() - t, "rss_added_mb": after.get("rss_mb", 0.0) - before,
                        "device": str(roles[name].device),
                        "model": cfg.reward.source if name == "reward" else resolve_role_model(cfg, name)}
        if "gpu_alloc_mb" in after:
            report[name]["gpu_alloc_mb"] = after["gpu_alloc_mb"]
        out(f"loaded {name:<9} {report[name]['model']} on {report[name]['device']} in {report[name]['load_s']:.1f}s")
    # each role's precision, chosen as the run chooses it (auto: measured once per machine)
    from engine.precision import plan as precision_plan

    chosen = precision_plan(cfg, plan, progress=out)
    for name, rp in chosen.items():
        if name in roles and rp.autocast:
            roles[name].call("precision", {}, {"autocast": rp.autocast})
        out(rp.line())
    report["precision"] = {r: rp.to_json() for r, rp in chosen.items()}
    return roles


def _run_once(cfg: RunConfig, roles: dict, prompts: list, report: dict, in_actor: bool) -> dict:
    """One rollout of ``prompts`` and its scoring by every role, each phase timed into ``report``;
    the actor's generation result."""
    from engine.runtime.driver import active_roles

    t = time.perf_counter()
    batch, gen = roles["actor"].call("generate", {}, {"prompts": prompts})
    report["actor"]["phase_s"] = time.perf_counter() - t
    report["actor"]["phase"] = "rollout"
    shared = cfg.ppo.critic_trunk == "reference"
    hidden = None
    live = active_roles(cfg)
    for name, op in (("reference", "logprobs"), ("reward", "score"), ("critic", "values")):
        if name == "critic" and "critic" not in live:  # a critic-free estimator
            continue
        t = time.perf_counter()
        args = {"hidden": True} if name == "reference" and shared else {}
        inputs = {**batch, "hidden": hidden} if name == "critic" and shared else batch
        with torch.no_grad():
            if name == "reference" and in_actor:
                res, _ = roles["actor"].call("ref_logprobs", inputs, args)
                report[name] = {"load_s": 0.0, "rss_added_mb": 0.0, "device": report["actor"]["device"],
                                "model": report["actor"]["model"] + " (actor's base)"}
            else:
                res, _ = roles[name].call(op, inputs, args)
        if name == "reference" and shared:
            hidden = res["hidden"]
        report[name]["phase_s"] = time.perf_counter() - t
        report[name]["phase"] = op
        if name == "reward":
            report["scores"] = [round(float(x), 4) for x in res["scores"]]
    return gen


def _summary(cfg: RunConfig, report: dict, prompts: list, gen: dict, peak: float, in_actor: bool,
             out: Callable[[str], None]) -> None:
    from engine.runtime.driver import active_roles

    live = active_roles(cfg)
    out("")
    out(f"{'role':<10} {'phase':<9} {'time':>8} {'load':>8} {'memory':>12}")
    for name in ("actor", "reference", "reward", "critic"):
        if name == "critic" and "critic" not in live:
            continue
        r = report[name]
        mem = f"{r['gpu_alloc_mb']:.0f} MB gpu" if "gpu_alloc_mb" in r else f"{r['rss_added_mb']:.0f} MB rss"
        out(f"{name:<10} {r['phase']:<9} {r['phase_s']:>7.2f}s {r['load_s']:>7.1f}s {mem:>12}")
    out(f"batch {len(prompts)} prompts, {gen.get('response_tokens', 0)} response tokens; "
        f"mean score {sum(report['scores']) / max(1, len(report['scores'])):.3f}; peak RSS {peak:.0f} MB")
    if "critic" not in live:
        out(f"dry run OK: {', '.join(live)} loaded and ran once (no backward, no update); "
            f"ppo.estimator {cfg.ppo.estimator} starts no critic")
    else:
        out("dry run OK: all four roles loaded and ran once (no backward, no update)" if not in_actor else
            "dry run OK: actor (also the reference), critic and reward loaded and ran once (no backward, no update)")
