"""The memory plan (engine/runtime/placement.py) of the GPU preset configs/gpu-0.5b.yaml, on
stated GPU sizes (no GPU needed): it fits 80 GB with the whole-model critic, 24 GB with the
head critic (turning gradient checkpointing on for the actor), and refuses 24 GB with the
whole-model critic, naming the figures."""
from __future__ import annotations

import pytest

from engine.config import load_config
from engine.runtime.placement import PlacementError, check_memory, device_plan, memory_plan, role_memory_gb
from tests.conftest import ROOT

PRESET = ROOT / "configs" / "gpu-0.5b.yaml"
HEAD = ["ppo.critic_trunk=reference", "ppo.critic_lr=1e-3"]


def _cfg(ov=()):
    return load_config(PRESET, list(ov), check_hardware=False)


def test_the_preset_is_the_anchor_shape():
    c = _cfg()
    assert c.actor.model == "tiny:qwen2-0.5b" and c.actor.dtype == "bfloat16"
    assert c.rollout.batch_size == 256 and c.rollout.max_new_tokens == 256 == c.rollout.min_new_tokens
    assert c.rollout.decoder == "static" and c.rollout.cuda_graph == "auto" and c.rollout.reuse_logprobs
    assert all(getattr(c, r).device == "cuda" for r in ("actor", "reference", "critic"))
    assert c.ppo.micro_batch_tokens == 8192
    assert "Qwen/Qwen2.5-0.5B-Instruct" in PRESET.read_text()


def test_fits_80_gb_with_the_whole_critic_without_checkpointing():
    mp = memory_plan(_cfg(), [80.0])
    assert mp.fits() and not any(mp.checkpoint.values())
    assert set(mp.devices.values()) == {"cuda:0"}
    assert 20 < mp.used_gb("cuda:0") < 0.92 * 80
    assert check_memory(_cfg(), [80.0])[0].startswith("memory plan cuda:0:")


def test_fits_24_gb_with_the_head_critic_by_checkpointing_the_actor():
    c = _cfg(HEAD)
    mp = memory_plan(c, [24.0])
    assert mp.fits() and mp.checkpoint == {"actor": True, "critic": False}
    assert mp.roles["critic"] < 1.0
    lines = check_memory(c, [24.0])
    assert any("actor trains with gradient checkpointing" in line for line in lines)
    # without checkpointing the actor's activations alone would not leave room
    full = sum(v for k, v in role_memory_gb(c, "actor", False).items() if k != "activations_full")
    assert full > mp.roles["actor"]


def test_refuses_24_gb_with_the_whole_critic_and_says_the_figure():
    with pytest.raises(PlacementError, match=r"cuda:0: \d+\.\d GB of 24\.0 GB \(does NOT fit"):
        device_plan(_cfg(), [24.0])
    device_plan(_cfg(), [80.0])  # the same plan on 80 GB goes through


def test_the_token_budget_bounds_the_update_activations():
    small = role_memory_gb(_cfg(["ppo.micro_batch_tokens=2048"]), "actor")["activations"]
    large = role_memory_gb(_cfg(["ppo.micro_batch_tokens=16384"]), "actor")["activations"]
    assert large == pytest.approx(8 * small, rel=1e-6)
    # without a budget the scoring pass holds the whole batch's logits at once
    assert role_memory_gb(_cfg(["ppo.micro_batch_tokens=null"]), "reference")["scoring"] > \
        9 * role_memory_gb(_cfg(), "reference")["scoring"]
