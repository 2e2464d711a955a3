"""The device plan (a pure function) and the validation of plans that cannot exist."""
from __future__ import annotations

import pytest

import engine.config as C
from engine.config import ConfigError, load_config, validate_text
from engine.runtime.placement import PlacementError, RoleRequest, device_plan, format_plan, plan_devices
from tests.conftest import TINY

# a 7B-ish actor and critic (weights + grads + AdamW), a bf16 reference, a small reward model
NEEDS = {"actor": 40.0, "reference": 14.0, "critic": 40.0, "reward": 1.0}


def _req(**over):
    return {r: RoleRequest(*over.get(r, ("auto", 1)), need_gb=NEEDS[r]) for r in NEEDS}


def test_one_gpu_holds_every_role():
    assert plan_devices(_req(), [80.0]) == {r: ["cuda:0"] for r in NEEDS}


def test_two_gpus_balance_the_two_trained_roles():
    plan = plan_devices(_req(), [80.0, 80.0])
    assert plan["actor"] != plan["critic"]  # the two biggest roles never share a GPU
    load = {d: sum(NEEDS[r] for r, ds in plan.items() if ds == [d]) for d in ("cuda:0", "cuda:1")}
    assert load == {"cuda:0": 54.0, "cuda:1": 41.0}
    assert plan == {"actor": ["cuda:0"], "reference": ["cuda:0"], "critic": ["cuda:1"], "reward": ["cuda:1"]}


def test_four_and_eight_gpus_give_every_role_its_own():
    for n in (4, 8):
        plan = plan_devices(_req(), [80.0] * n)
        used = [ds[0] for ds in plan.values()]
        assert len(set(used)) == 4 and all(int(d.split(":")[1]) < 4 for d in used), (n, plan)


def test_eight_gpus_with_a_four_rank_actor():
    plan = plan_devices(_req(actor=("auto", 4)), [80.0] * 8)
    assert plan["actor"] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    others = [plan[r][0] for r in ("reference", "critic", "reward")]
    assert len(set(others)) == 3 and not set(others) & set(plan["actor"])


def test_pinned_roles_first_and_uneven_gpus():
    # reference pinned to the small GPU; the actor goes to the big one with the most room left
    plan = plan_devices(_req(reference=("cuda:1", 1)), [80.0, 24.0])
    assert plan["reference"] == ["cuda:1"] and plan["actor"] == ["cuda:0"]
    # a list of allowed GPUs keeps the plan off the others
    assert set(d for ds in plan_devices(_req(), [80.0] * 4, allowed=[2, 3]).values() for d in ds) \
        == {"cuda:2", "cuda:3"}


def test_cpu_roles_and_no_gpu():
    assert plan_devices(_req(), []) == {r: ["cpu"] for r in NEEDS}
    assert plan_devices(_req(actor=("auto", 2)), []) == {"actor": ["cpu", "cpu"], "reference": ["cpu"],
                                                        "critic": ["cpu"], "reward": ["cpu"]}
    assert plan_devices(_req(reward=("cpu", 1)), [80.0])["reward"] == ["cpu"]


def test_head_critic_follows_its_reference():
    req = _req()
    req["critic"] = RoleRequest("auto", 1, 0.1, with_role="reference")
    for n in (1, 2, 4):
        plan = plan_devices(req, [80.0] * n)
        assert plan["critic"] == plan["reference"], n


@pytest.mark.parametrize("req, gpus, allowed, match", [
    (_req(actor=("cuda:2", 1)), [80.0, 80.0], None, r"actor: cuda:2 is not visible \(GPUs: cuda:0..cuda:1\)"),
    (_req(actor=("auto", 3)), [80.0, 80.0], None, r"actor: 3 ranks need 3 GPUs .* 2 are available"),
    (_req(actor=(("cuda:0", "cuda:0"), 2)), [80.0, 80.0], None, r"2 ranks need 2 different GPUs"),
    (_req(actor=(("cuda:0",), 2)), [80.0, 80.0], None, r"1 devices for 2 ranks"),
    (_req(critic=("cuda", 1)), [], None, r"critic: 'cuda' needs a GPU but none is visible"),
    (_req(), [80.0], [3], r"cuda:3 is not visible"),
])
def test_impossible_plans_are_refused(req, gpus, allowed, match):
    with pytest.raises(PlacementError, match=match):
        plan_devices(req, gpus, allowed)


def test_device_plan_of_a_config_and_its_line():
    cfg = load_config(TINY, ["actor.world_size=2"], check_hardware=False)
    plan = device_plan(cfg, gpu_memory_gb=[])
    assert plan["actor"] == ["cpu", "cpu"]
    assert format_plan(plan, cfg) == ("device plan: actor x2 ddp -> cpu, cpu; reference -> cpu; "
                                      "critic -> cpu; reward -> cpu")
    two = device_plan(load_config(TINY, ["actor.world_size=2", "actor.strategy=fsdp"], check_hardware=False),
                      gpu_memory_gb=[24.0, 24.0])
    assert sorted(two["actor"]) == ["cuda:0", "cuda:1"]
    mapped = device_plan(load_config(TINY, ["runtime.devices={actor: cuda:0, critic: cuda:0, reference: cuda:1, "
                                            "reward: cuda:1}"], check_hardware=False), gpu_memory_gb=[24.0, 24.0])
    assert mapped == {"actor": ["cuda:0"], "reference": ["cuda:1"], "critic": ["cuda:0"], "reward": ["cuda:1"]}


# ---- validation: key path and line, nothing started ----------------------------------------

def _errors(text, monkeypatch, gpus=0, overrides=()):
    monkeypatch.setattr(C.probes, "cuda_device_count", lambda: gpus)
    res = validate_text(text, "plan.yaml", overrides)
    return [str(i) for i in res.issues]


def test_validation_names_key_and_line(monkeypatch):
    text = ("runtime:\n"
            "  devices:\n"
            "    actor: cuda:0\n"
            "    refrence: cuda:1\n"
            "    critic: cuda:5\n")
    errs = _errors(text, monkeypatch, gpus=2)
    assert any("plan.yaml:4" in e and "runtime.devices.refrence" in e and "did you mean 'reference'" in e
               for e in errs), errs
    assert any("plan.yaml:5" in e and "runtime.devices.critic" in e and "only 2 CUDA devices" in e
               for e in errs), errs


def test_validation_of_ranks(monkeypatch):
    errs = _errors("actor:\n  world_size: 3\n", monkeypatch, gpus=2)
    assert any("plan.yaml:2" in e and "actor.world_size" in e and "3 GPUs" in e for e in errs), errs
    errs = _errors("actor:\n  world_size: 2\n  device: cuda:1\n", monkeypatch, gpus=2)
    assert any("actor.device" in e and "each rank needs its own GPU" in e for e in errs), errs
    errs = _errors("actor:\n  world_size: 2\nruntime:\n  colocate: true\n", monkeypatch)
    assert any("plan.yaml:2" in e and "cannot be colocated" in e for e in errs), errs
    errs = _errors("runtime:\n  devices: {actor: [cuda:0]}\nactor:\n  world_size: 2\n", monkeypatch, gpus=2)
    assert any("runtime.devices.actor" in e and "lists 1 device but actor.world_size is 2" in e for e in errs), errs
    errs = _errors("actor:\n  world_size: 2\n  strategy: fsdp\nrollout:\n  reuse_logprobs: true\n", monkeypatch)
    assert any("actor.strategy" in e and "reuse_logprobs" in e for e in errs), errs
    # mini-batch 3 / micro-batch 3 = one micro-batch of 3 rows: it cannot be split over two ranks
    errs = _errors("actor:\n  world_size: 2\nppo:\n  mini_batch_size: 3\n  micro_batch_size: 3\n"
                   "rollout:\n  batch_size: 6\n", monkeypatch)
    assert any("actor.world_size" in e and "micro-batches per mini-batch" in e for e in errs), errs
    with pytest.raises(ConfigError, match="runtime.devices.actor"):
        monkeypatch.setattr(C.probes, "cuda_device_count", lambda: 0)
        load_config(TINY, ["runtime.devices={actor: cuda:0}"])


def test_valid_plans_pass(monkeypatch):
    assert _errors("actor:\n  world_size: 2\n  strategy: fsdp\n", monkeypatch, gpus=2) == []
    assert _errors("runtime:\n  devices: {actor: [cuda:0, cuda:1]}\nactor:\n  world_size: 2\n",
                   monkeypatch, gpus=2) == []
    assert _errors("actor:\n  world_size: 2\n", monkeypatch, gpus=0) == []  # two CPU ranks


def test_seed_article_fsdp_config_maps_onto_strategy():
    import pathlib

    seed = pathlib.Path(__file__).parent / "fixtures" / "seed_config_local.yaml"
    text = seed.read_text().replace("num_critic_workers: 1", "num_critic_workers: 2")
    res = validate_text(text, "config_local.yaml", check_hardware=False)
    cfg = res.config
    assert cfg is not None, res.issues
    assert (cfg.actor.strategy, cfg.actor.reshard_after_forward) == ("fsdp", True)       # FULL_SHARD
    assert (cfg.critic.strategy, cfg.critic.reshard_after_forward) == ("fsdp", False)    # SHARD_GRAD_OP
    assert cfg.critic.world_size == 2 and cfg.actor.world_size == 1
    assert not any("FSDP is not used" in str(n) for n in res.notices)
