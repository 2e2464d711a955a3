"""The source article's config shape, mapped onto this schema.

A file with top-level ``train_config`` / ``model_config`` / ``data_config`` /
``algorithm_config`` (tests/fixtures/seed_config_local.yaml) is rewritten into the native tree;
each native key keeps the line of the source key it came from, and issues about it name the
source key (``... (mapped to ppo.kl_coef)``). Keys that cannot apply on this machine produce
notices naming the source key and line.
"""
from __future__ import annotations

import os
from typing import Optional

from engine.config.issues import Ctx, Path_, path_str, type_name
from engine.config.issues import show as _show
from engine.config.keys import unknown_key
from engine.config.schema import RolloutConfig

ARTICLE_SECTIONS = ("train_config", "model_config", "data_config", "algorithm_config")
_ARTICLE_ROLES = {"actor": "actor", "ref_policy": "reference", "critic": "critic",
                  "reward_model": "reward"}
_ARTICLE_ROLE_KEYS = ("model_name_or_path", "torch_dtype", "use_flash_attention_2", "fsdp_config",
                      "gradient_checkpointing", "device")
_ARTICLE_FSDP_KEYS = ("use_fsdp", "sharding_strategy", "cpu_offload")
# num_<x>_workers -> the role whose world_size it sets (rollouts are the actor's; None: no ranks)
_ARTICLE_WORKERS = {"num_actor_workers": "actor", "num_rollout_workers": "actor",
                    "num_critic_workers": "critic", "num_ref_workers": "reference",
                    "num_reward_workers": None}
# fsdp_config.sharding_strategy -> (strategy, reshard_after_forward)
_ARTICLE_SHARDING = {"FULL_SHARD": ("fsdp", True), "SHARD_GRAD_OP": ("fsdp", False),
                     "NO_SHARD": ("ddp", None)}
_ARTICLE_TRAIN = {  # source key -> native path (None = handled specially)
    "mode": ("runtime", "backend"),
    "rollout_batch_size": ("rollout", "batch_size"),
    "train_batch_size": None,
    "micro_train_batch_size": ("ppo", "micro_batch_size"),
    "num_rollout_workers": None, "num_reward_workers": None, "num_critic_workers": None,
    "num_ref_workers": None, "num_actor_workers": None,
    "seed": ("run", "seed"),
    "max_steps": ("run", "steps"),
    "ppo_epochs": ("ppo", "epochs"),
}
_ARTICLE_DATA = {
    "dataset_name": ("data", "source"),
    "split": ("data", "split"),
    "text_column": ("data", "column"),
    "max_prompt_length": ("data", "max_prompt_tokens"),
    "num_prompts": ("data", "num_prompts"),
}
_ARTICLE_PPO = {
    "kl_coef": ("ppo", "kl_coef"),
    "cliprange": None,
    "cliprange_value": ("ppo", "value_clip"),
    "vf_coef": ("ppo", "vf_coef"),
    "gamma": ("ppo", "gamma"),
    "lam": ("ppo", "lam"),
    "ppo_epochs": ("ppo", "epochs"),
    "target_kl": ("ppo", "target_kl"),
    "entropy_coef": ("ppo", "entropy_coef"),
    "whiten_rewards": ("ppo", "whiten_rewards"),
}


def from_article(raw: dict, ctx: Ctx) -> dict:
    """Map the source article's config shape onto the native tree. Source lines stay in
    ``ctx.lines`` under their own paths; native paths get the source key's line and an alias."""
    m = _ArticleMapper(ctx)
    for key in raw:
        if key not in ARTICLE_SECTIONS:
            m.unknown((), key, ARTICLE_SECTIONS)
    for section in ("train_config", "model_config", "data_config", "algorithm_config"):
        body = m.mapping(raw.get(section), (section,))
        if body:
            getattr(m, section)(body)
    m.out.setdefault("run", {})["description"] = (
        f"mapped from the source article's config shape ({os.path.basename(ctx.filename)})")
    return m.out


class _ArticleMapper:
    """The native tree (``out``) built from the article's sections, one method per section;
    issues go to ``ctx``."""

    def __init__(self, ctx: Ctx):
        self.ctx = ctx
        self.out: dict = {}

    def put(self, native: Path_, value, src: Path_) -> None:
        node = self.out
        for p in native[:-1]:
            node = node.setdefault(p, {})
        node[native[-1]] = value
        if src in self.ctx.lines:
            self.ctx.lines[native] = self.ctx.lines[src]
        self.ctx.aliases[native] = path_str(src)

    def mapping(self, value, path: Path_) -> Optional[dict]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.ctx.error(path, f"expected a mapping, got {_show(value)} ({type_name(value)})")
            return None
        return value

    def unknown(self, path, key, valid) -> None:
        unknown_key(self.ctx, path, key, list(valid))

    # ---- train_config ---------------------------------------------------------------------
    def train_config(self, tc: dict) -> None:
        ctx, put = self.ctx, self.put
        for k, v in tc.items():
            src = ("train_config", k)
            if k not in _ARTICLE_TRAIN:
                self.unknown(("train_config",), k, list(_ARTICLE_TRAIN))
            elif _ARTICLE_TRAIN[k] is not None:
                put(_ARTICLE_TRAIN[k], v, src)
            elif k.startswith("num_") and k.endswith("_workers"):
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    ctx.error(src, f"expected an integer >= 1, got {_show(v)} ({type_name(v)})")
                elif _ARTICLE_WORKERS[k] is not None:
                    put((_ARTICLE_WORKERS[k], "world_size"), v, src)
                elif v > 1:
                    ctx.notice(src, f"{v} reward workers requested; the reward role runs in one "
                                    f"process, so the extra workers are not started")
        self._batch_sizes(tc)

    def _batch_sizes(self, tc: dict) -> None:
        """ppo.mini_batch_size (and micro_batch_size) from train_batch_size and rollout_batch_size."""
        ctx, put = self.ctx, self.put
        rb = tc.get("rollout_batch_size", RolloutConfig().batch_size)
        if "train_batch_size" in tc:
            tb = tc["train_batch_size"]
            src = ("train_config", "train_batch_size")
            if isinstance(tb, int) and not isinstance(tb, bool) and isinstance(rb, int) \
                    and not isinstance(rb, bool) and tb > rb >= 1:
                put(("ppo", "mini_batch_size"), rb, src)
                ctx.notice(src, f"train_batch_size {tb} is larger than the rollout batch ({rb}); "
                                f"PPO updates use mini-batches of {rb} "
                                f"(ppo.mini_batch_size = min(train_batch_size, rollout_batch_size))")
            else:
                put(("ppo", "mini_batch_size"), tb, src)
        elif isinstance(rb, int) and not isinstance(rb, bool) and "rollout_batch_size" in tc:
            put(("ppo", "mini_batch_size"), rb, ("train_config", "rollout_batch_size"))
        if "micro_train_batch_size" not in tc and "mini_batch_size" in self.out.get("ppo", {}):
            src_alias = ("train_config", "train_batch_size") if "train_batch_size" in tc \
                else ("train_config", "rollout_batch_size")
            put(("ppo", "micro_batch_size"), self.out["ppo"]["mini_batch_size"], src_alias)

    # ---- model_config ---------------------------------------------------------------------
    def model_config(self, mc: dict) -> None:
        for rk, rv in mc.items():
            rpath = ("model_config", rk)
            if rk not in _ARTICLE_ROLES:
                self.unknown(("model_config",), rk, list(_ARTICLE_ROLES))
                continue
            role = _ARTICLE_ROLES[rk]
            rv = self.mapping(rv, rpath)
            if not rv:
                continue
            for k, v in rv.items():
                if k not in _ARTICLE_ROLE_KEYS:
                    self.unknown(rpath, k, _ARTICLE_ROLE_KEYS)
                else:
                    self._role_key(role, rpath + (k,), k, v)

    def _role_key(self, role: str, src: Path_, k: str, v) -> None:
        """One key of a role in model_config (``k`` is one of ``_ARTICLE_ROLE_KEYS``)."""
        ctx, put = self.ctx, self.put
        if k == "model_name_or_path":
            put((role, "source" if role == "reward" else "model"), v, src)
            if role == "reward":
                # The article's reward models have a single scalar head: score = logit 0.
                put(("reward", "score_kind"), "logit", src)
                put(("reward", "score_label"), 0, src)
        elif k == "torch_dtype":
            put((role, "dtype"), v, src)
        elif k == "use_flash_attention_2":
            if not isinstance(v, bool):
                ctx.error(src, f"expected true or false, got {_show(v)} ({type_name(v)})")
            elif v and role == "reward":
                ctx.notice(src, "not used: the reward model loads with its default attention")
            elif v:
                put((role, "attn_implementation"), "flash_attention_2", src)
        elif k == "gradient_checkpointing":
            if role == "reward":
                ctx.notice(src, "not used: the reward model is not trained")
            else:
                put((role, "gradient_checkpointing"), v, src)
        elif k == "device":
            if v not in ("auto", "cpu", None):
                ctx.notice(src, f"device {_show(v)} is kept as 'auto' (CUDA when visible, "
                                f"else CPU); set {role}.device in the native schema to pin it")
            elif v == "cpu":
                put((role, "device"), "cpu", src)
        elif k == "fsdp_config":
            self._fsdp(role, src, v)

    def _fsdp(self, role: str, src: Path_, v) -> None:
        """A role's fsdp_config: use_fsdp and sharding_strategy -> strategy and
        reshard_after_forward; cpu_offload is not used."""
        ctx, put = self.ctx, self.put
        fc = self.mapping(v, src)
        if fc is None:
            return
        for fk in fc:
            if fk not in _ARTICLE_FSDP_KEYS:
                self.unknown(src, fk, _ARTICLE_FSDP_KEYS)
        use = fc.get("use_fsdp", False)
        if not isinstance(use, bool):
            ctx.error(src + ("use_fsdp",),
                      f"expected true or false, got {_show(use)} ({type_name(use)})")
        elif use and role == "reward":
            ctx.notice(src + ("use_fsdp",), "not used: the reward role runs in one process")
        elif use:
            ss = fc.get("sharding_strategy", "FULL_SHARD")
            strat, reshard = _ARTICLE_SHARDING.get(ss, ("fsdp", None))
            if ss not in _ARTICLE_SHARDING:
                ctx.error(src + ("sharding_strategy",),
                          f"must be one of {', '.join(_ARTICLE_SHARDING)}; got {_show(ss)}")
            elif reshard is not None:
                put((role, "reshard_after_forward"), reshard, src + ("sharding_strategy",))
            put((role, "strategy"), strat, src + ("use_fsdp",))
            if fc.get("cpu_offload"):
                ctx.notice(src + ("cpu_offload",),
                           "not used: parameters stay on the rank's device (no FSDP "
                           "CPU offload)")

    # ---- data_config, algorithm_config ----------------------------------------------------
    def data_config(self, dc: dict) -> None:
        for k, v in dc.items():
            if k not in _ARTICLE_DATA:
                self.unknown(("data_config",), k, list(_ARTICLE_DATA))
            else:
                self.put(_ARTICLE_DATA[k], v, ("data_config", k))

    def algorithm_config(self, ac: dict) -> None:
        for k in ac:
            if k != "ppo":
                self.unknown(("algorithm_config",), k, ["ppo"])
        pc = self.mapping(ac.get("ppo"), ("algorithm_config", "ppo"))
        if pc:
            for k, v in pc.items():
                src = ("algorithm_config", "ppo", k)
                if k not in _ARTICLE_PPO:
                    self.unknown(("algorithm_config", "ppo"), k, list(_ARTICLE_PPO))
                elif k == "cliprange":
                    self.put(("ppo", "clip_low"), v, src)
                    self.put(("ppo", "clip_high"), v, src)
                else:
                    self.put(_ARTICLE_PPO[k], v, src)
