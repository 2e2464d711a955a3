"""The reward role: scores decoded responses with the run's reward source, and swaps that source
live (a new one is built and probed before the old one is closed)."""
from __future__ import annotations

import math
from typing import Any

import torch

from engine.config import RunConfig, resolve_role_model
from engine.runtime.role_base import NonFiniteError, Result, Role, Tensors


class RewardRole(Role):
    name = "reward"

    def __init__(self, cfg: RunConfig, progress=None):
        super().__init__(cfg, progress)
        from engine.models import load_tokenizer

        self.tokenizer = load_tokenizer(resolve_role_model(cfg, "actor"), progress=self.progress)
        self.source_spec = cfg.reward.source
        self.source = self._build(cfg.reward.source)

    def _build(self, spec: str):
        return build_reward_source(self.cfg, spec, str(self.device), self.progress)

    def decode(self, tensors: Tensors) -> tuple[list[str], list[str]]:
        tok = self.tokenizer
        prompts = tok.batch_decode(tensors["query_ids"], skip_special_tokens=True)
        responses = []
        for row, m in zip(tensors["response_ids"], tensors["response_mask"]):
            responses.append(tok.decode(row[m.bool()], skip_special_tokens=True))
        return prompts, responses

    def op_score(self, tensors: Tensors, args: dict) -> Result:
        from engine.rewards import RewardError

        prompts, responses = self.decode(tensors)
        answers = args.get("answers")  # each row's reference answer (verifiable tasks)
        info: dict[str, Any] = {}
        if hasattr(self.source, "judge"):
            raw, correct = self.source.judge(responses, answers)
            info["correct"] = [bool(c) for c in correct]
        elif getattr(self.source, "uses_answers", False):
            raw = self.source.score(prompts, responses, answers)
        elif args.get("components") and hasattr(self.source, "components"):
            base, pref = self.source.components(prompts, responses)   # a learned preference on a base
            raw = self.source.combine(base, pref).tolist()
            info["base"], info["preference"] = base.tolist(), pref.tolist()
        else:
            raw = self.source.score(prompts, responses)
        if len(raw) != len(prompts):
            raise RewardError(f"reward source '{self.source_spec}' returned {len(raw)} scores for {len(prompts)} samples")
        scores = torch.tensor([float(x) for x in raw], dtype=torch.float32)
        bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
        if bad:
            raise NonFiniteError("reward", "score", f"source '{self.source_spec}' returned {scores[bad[0]].item()} for sample {bad[0]}")
        return {"scores": scores}, info

    def op_swap(self, tensors: Tensors, args: dict) -> Result:
        spec = str(args["source"])
        try:
            new = self._build(spec)  # raises on failure: the old source stays in place
            probe_reward_source(new, spec)
        except SystemExit as e:  # a module that calls sys.exit() at import must not end the worker
            raise RuntimeError(f"reward source '{spec}' called sys.exit({e.code!r}) while loading") from None
        old, self.source, self.source_spec = self.source, new, spec
        try:
            old.close()
        except Exception:  # noqa: BLE001 - the old source is being replaced anyway
            pass
        return {}, {"source": spec}


def build_reward_source(cfg: RunConfig, spec: str, device: str, progress=None):
    """The reward source ``spec`` built with the run's reward settings."""
    from engine.rewards import build_reward

    r = cfg.reward
    return build_reward(
        spec, device=device, dtype=r.dtype, quantization=r.quantization,
        score_label=r.score_label, score_kind=r.score_kind, score_text=r.score_text,
        max_length=r.max_length, batch_size=r.batch_size, progress=progress,
    )


def probe_reward_source(source, spec: str) -> float:
    """Score one probe sample, so that a source that loads but cannot score is refused too."""
    probe = source.score(["This movie"], [" was fine."])
    if len(probe) != 1 or not math.isfinite(float(probe[0])):
        raise ValueError(f"reward source '{spec}' loaded but returned {probe!r} for a probe sample")
    return float(probe[0])

