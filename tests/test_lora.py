"""A LoRA actor (actor.lora, peft): only the adapter trains, the reference is the actor's own base
with the adapters disabled (no reference worker, no second copy of the weights), checkpoints hold
the adapter in peft's format and resume restores it exactly. Tiny random Llama, VADER reward."""
from __future__ import annotations

import math
import subprocess
import sys
import time

import pytest
import torch

from engine.client import launch
from tests.conftest import ROOT, TINY, assert_run_clean, run_processes_gone, start_tiny, tiny_overrides

pytestmark = pytest.mark.timeout(600)

LORA = "actor.lora={r: 4, alpha: 8, target_modules: [q_proj, v_proj, up_proj, down_proj]}"



def _batch(actor):
    batch, _ = actor.call("generate", {}, {"prompts": ["This movie was", "I really think the",
                                                       "Bad acting and a", "What a"]})
    return batch


def _adapter(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_lora_roles_train_the_adapter_alone_and_the_reference_is_the_base(tmp_path):
    """In process: the adapter is the only trainable part; the actor's reference log-probs (and
    hidden states) equal a separately loaded base model's after the adapter has moved; save and
    load give the adapter (and the critic's) back bitwise, optimizer and all."""
    from engine.config import load_config
    from engine.runtime.role_critic import CriticRole
    from engine.runtime.role_policy import ActorRole, ReferenceRole

    # the adapter's init does not touch the process's random stream: a worker seeded as usual
    # samples the same rollouts as a full fine-tuning actor
    torch.manual_seed(5)
    full = ActorRole(load_config(TINY))
    full_ids = _batch(full)["response_ids"]
    del full
    cfg = load_config(TINY, [LORA, "critic.lora={r: 2}", "ppo.actor_lr=1e-3"])
    torch.manual_seed(5)
    actor = ActorRole(cfg)
    batch = _batch(actor)
    assert torch.equal(batch["response_ids"], full_ids)
    ref, critic = ReferenceRole(cfg), CriticRole(cfg)
    trainable = [n for n, p in actor.model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "v_proj", "up_proj", "down_proj"}
    frozen = [n for n, p in actor.model.named_parameters() if not p.requires_grad]
    assert any("embed_tokens" in n for n in frozen) and any("q_proj.base_layer" in n for n in frozen)
    # the optimizer holds the adapter alone
    assert sum(p.numel() for g in actor.optimizer.param_groups for p in g["params"]) == \
        sum(p.numel() for p in actor.model.parameters() if p.requires_grad) < 20_000
    c_trainable = [n for n, p in critic.model.named_parameters() if p.requires_grad]
    assert all(".lora_" in n or ".modules_to_save." in n for n in c_trainable)
    assert any(".modules_to_save." in n for n in c_trainable)  # the value head trains whole

    lp0 = actor.call("logprobs", batch, {})[0]["logprobs"]
    assert torch.equal(lp0, ref.call("logprobs", batch, {})[0]["logprobs"])  # B = 0: identity at start
    mask = batch["response_mask"].float()
    g = torch.Generator().manual_seed(0)
    for step in (1, 2):
        adv = torch.randn(mask.shape, generator=g) * mask
        actor.call("update", {**batch, "old_logprobs": lp0, "advantages": adv}, {"step": step})
        actor.call("commit", {}, {})
        v = critic.call("values", batch, {})[0]["values"]
        critic.call("update", {**batch, "values": v, "returns": torch.randn(mask.shape, generator=g)}, {"step": step})
        critic.call("commit", {}, {})
    lp1 = actor.call("logprobs", batch, {})[0]["logprobs"]
    assert (lp1 - lp0).abs().max() > 1e-4  # the adapter moved the policy
    mine = actor.call("ref_logprobs", batch, {"hidden": True})[0]
    base = ref.call("logprobs", batch, {"hidden": True})[0]
    assert torch.equal(mine["logprobs"], base["logprobs"])
    assert torch.equal(mine["hidden"], base["hidden"])
    assert torch.equal(actor.call("logprobs", batch, {})[0]["logprobs"], lp1)  # adapters back on

    actor.call("save", {}, {"path": str(tmp_path)})
    critic.call("save", {}, {"path": str(tmp_path)})
    files = {p.name for p in (tmp_path / "actor").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files
    assert not any(f.startswith("model") and f.endswith(".safetensors") for f in files)  # no base weights
    assert (tmp_path / "actor" / "adapter_model.safetensors").stat().st_size < 200_000
    a2, c2 = ActorRole(cfg), CriticRole(cfg)
    a2.call("load", {}, {"path": str(tmp_path)})
    c2.call("load", {}, {"path": str(tmp_path)})
    for one, two in ((actor, a2), (critic, c2)):
        x, y = _adapter(one.model), _adapter(two.model)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
        sx, sy = one.optimizer.state_dict()["state"], two.optimizer.state_dict()["state"]
        assert all(torch.equal(sx[i]["exp_avg"], sy[i]["exp_avg"]) for i in sx)
    assert torch.equal(a2.call("logprobs", batch, {})[0]["logprobs"], lp1)
    # a LoRA checkpoint is not a full fine-tuning one, and the other way round
    plain = load_config(TINY)
    with pytest.raises(RuntimeError, match="holds a LoRA adapter"):
        CriticRole(plain).call("load", {}, {"path": str(tmp_path)})
    with pytest.raises(RuntimeError, match="does not match the model"):
        ActorRole(plain).call("load", {}, {"path": str(tmp_path)})
    (tmp_path / "actor" / "adapter_model.safetensors").unlink()
    with pytest.raises(RuntimeError, match="no LoRA adapter"):
        a2.call("load", {}, {"path": str(tmp_path)})


def test_lora_run_has_no_reference_process(runs_dir, cleanup_runs):
    """End to end on the local backend with the default's critic (a value head on the
    reference's hidden states): three workers (no reference), the reference log-probs and hidden
    states come from the actor's base (KL exactly 0 while the adapter is the identity, at step
    1), the checkpoint holds the adapter in peft's format."""
    run = start_tiny(runs_dir, cleanup_runs, "run.steps=2", LORA, "ppo.actor_lr=1e-3",
                      "ppo.critic_trunk=reference", "ppo.critic_lr=1e-3")  # the default's critic: a head
    assert run.wait(timeout=300) == "finished", run.info.get("failure")
    info = run.info
    assert set(info["pids"]) == {"actor", "critic", "reward"}
    ms = list(run.metrics())
    assert [m["step"] for m in ms] == [1, 2]
    assert set(ms[-1]["memory"]) == {"actor", "critic", "reward"}
    # adapter B = 0 at first: policy == base (up to rounding: the reference's log-probs go
    # through the chunked LM head, the actor's old log-probs through the model's own head)
    assert ms[0]["kl"] == pytest.approx(0.0, abs=1e-5) and abs(ms[1]["kl"]) > 1e-4
    assert all(math.isfinite(m[k]) for m in ms for k in ("policy_loss", "value_loss", "kl", "entropy"))
    assert ms[1]["timings"]["ref"] > 0.0
    assert ms[1]["value_mean"] != 0.0  # the head on the actor's base hidden states learned
    ck = run.dir.latest_checkpoint() / "actor"
    assert (ck / "adapter_model.safetensors").is_file() and (ck / "adapter_config.json").is_file()
    events = (run.path / "events.log").read_text()
    assert "reference is the LoRA actor's base" in events and "trainable of" in events
    assert_run_clean(run)


def test_lora_stop_and_resume_equals_uninterrupted(runs_dir, cleanup_runs):
    """Resume restores the adapter exactly: the same next-step metrics as a run that was never
    stopped, and bitwise the same adapter at the end (the pattern of test_runtime's
    test_stop_and_resume_equals_uninterrupted)."""
    from safetensors.torch import load_file

    steps = 5
    common = (f"run.steps={steps}", LORA, "ppo.actor_lr=1e-3", "checkpoint.every=0")
    a = start_tiny(runs_dir, cleanup_runs, *common, "run.name=straight")
    assert a.wait(timeout=400) == "finished", a.info.get("failure")
    b = start_tiny(runs_dir, cleanup_runs, *common, "run.name=interrupted")
    b.wait_step(1, timeout=300)
    b.stop()
    assert b.wait(timeout=120) == "stopped"
    k = b.info["step"]
    assert k < steps - 1
    assert b.dir.latest_checkpoint().name == f"step_{k}"
    b.restart()
    assert b.wait(timeout=400) == "finished", b.info.get("failure")
    ma = {m["step"]: m for m in a.metrics()}
    mb = {m["step"]: m for m in b.metrics()}
    assert sorted(mb) == list(range(1, steps + 1))
    for s in range(k + 1, min(k + 3, steps) + 1):
        for key in ("score_mean", "kl", "policy_loss", "value_loss", "entropy", "response_len_mean", "grad_norm"):
            assert mb[s][key] == pytest.approx(ma[s][key], rel=1e-4, abs=1e-5), (s, key)
    wa = load_file(a.dir.latest_checkpoint() / "actor" / "adapter_model.safetensors")
    wb = load_file(b.dir.latest_checkpoint() / "actor" / "adapter_model.safetensors")
    assert a.dir.latest_checkpoint().name == b.dir.latest_checkpoint().name == f"step_{steps}"
    assert wa.keys() == wb.keys() and all(torch.equal(wa[n], wb[n]) for n in wa)
    assert any(float(w.abs().max()) > 0 for n, w in wa.items() if "lora_B" in n)  # it trained
    assert_run_clean(b)


@pytest.mark.parametrize("override, path, words", [
    ("actor.lora.r=0", "actor.lora.r", "must be in [1"),
    ("actor.lora.alpha=0", "actor.lora.alpha", "must be in (0"),
    ("actor.lora.dropout=1", "actor.lora.dropout", "must be in [0, 1)"),
    ("actor.lora.target_modules=[q_proj, qkv_proj]", "actor.lora.target_modules", "'qkv_proj' is not a layer of tiny:llama"),
    ("actor.lora.target_modules=[]", "actor.lora.target_modules", "at least one layer"),
    ("actor.lora.rank=8", "actor.lora.rank", "unknown key 'rank'"),
    ("actor.lora=8", "actor.lora", "expected null or a mapping"),
    ("reference.lora.r=8", "reference.lora", "the reference is frozen"),
    ("critic.lora.target_modules=[lm_head]", "critic.lora.target_modules", "'lm_head' is not a layer"),
    ("actor.lora.target_modules=[lm_head]", "actor.lora.target_modules", "the output head takes none"),
])
def test_bad_lora_keys_are_refused_naming_the_key(override, path, words):
    from engine.config import ConfigError, load_config

    with pytest.raises(ConfigError) as e:
        load_config(TINY, [override], check_access=True)
    issues = [i for i in e.value.issues if i.path == path]
    assert issues and words in issues[0].message, str(e.value)


def test_lora_combinations_that_cannot_work_are_refused(runs_dir):
    from engine.config import load_config, validate_text
    from engine.models import LoraTargetError
    from engine.runtime.role_policy import ActorRole

    # the role refuses the same names when it loads (a model the launch check could not read)
    with pytest.raises(LoraTargetError, match=r"actor\.lora\.target_modules: 'lm_head' .* those that do: .*q_proj"):
        ActorRole(load_config(TINY, ["actor.lora.target_modules=[q_proj, lm_head]"]))

    text = TINY.read_text()
    for extra, path in ((["actor.world_size=2", "actor.strategy=fsdp"], "actor.lora"),
                        (["ppo.critic_trunk=reference", "critic.lora.r=2"], "critic.lora")):
        res = validate_text(text, str(TINY), [LORA, *extra])
        assert not res.ok and any(i.path == path for i in res.issues), [str(i) for i in res.issues]
    # the CLI refuses with the key and starts nothing
    out = subprocess.run([sys.executable, "-m", "console.cli", "train", "--config", str(TINY),
                          "--set", f"run.output_dir={runs_dir}", "--set", "actor.lora.target_modules=[qproj]"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "actor.lora.target_modules" in out.stderr and "q_proj" in out.stderr  # names what the model has
    assert list(runs_dir.iterdir()) == []


def test_lora_reference_and_critic_head_share_the_actor_process():
    """The default's critic is a value head on the reference's hidden states: with a LoRA actor
    and no reference worker the head reads the actor's base hidden states, placed with the actor."""
    from engine.config import load_config
    from engine.runtime.driver import ThreadPlan, active_roles
    from engine.runtime.placement import device_plan
    from engine.runtime.supervisor import worker_groups

    cfg = load_config(TINY, [LORA, "ppo.critic_trunk=reference", "ppo.critic_lr=1e-3"], check_hardware=False)
    assert active_roles(cfg) == ("actor", "critic", "reward")
    assert worker_groups(cfg) == [["actor"], ["critic"], ["reward"]]
    assert set(device_plan(cfg, gpu_memory_gb=[])) == {"actor", "critic", "reward"}
    assert device_plan(cfg, gpu_memory_gb=[80.0, 80.0])["critic"] == device_plan(cfg, gpu_memory_gb=[80.0, 80.0])["actor"]
    plan = ThreadPlan.make(cfg, cores=8)
    assert plan.score["actor"] == 8 and "reference" not in plan.score
    together = load_config(TINY, [LORA, "runtime.colocate=true"], check_hardware=False)
    assert worker_groups(together) == [["actor", "critic", "reward"]]
    # a reference with a model of its own is still its own worker
    own = load_config(TINY, [LORA, "reference.model=tiny:llama"], check_hardware=False)
    assert active_roles(own) == ("actor", "reference", "critic", "reward")


def test_lora_on_the_ray_backend_has_no_reference_actor(runs_dir, cleanup_runs):
    """The same on Ray: three role actors, the reference answered by the actor's base."""
    pytest.importorskip("ray")
    from engine.runtime.ray_backend import ray_processes

    before = {pid for pid, _ in ray_processes()}
    run = start_tiny(runs_dir, cleanup_runs, "run.steps=2", LORA, "ppo.actor_lr=1e-3", "runtime.backend=ray")
    assert run.wait(timeout=400) == "finished", run.info.get("failure")
    assert set(run.info["ray"]["nodes"]) == {"actor", "critic", "reward"}
    ms = list(run.metrics())
    assert [m["step"] for m in ms] == [1, 2]
    assert ms[0]["kl"] == pytest.approx(0.0, abs=1e-5) and abs(ms[1]["kl"]) > 1e-4
    assert (run.dir.latest_checkpoint() / "actor" / "adapter_model.safetensors").is_file()
    assert run_processes_gone(run) == []
    t0 = time.time()
    while {pid for pid, _ in ray_processes()} - before and time.time() - t0 < 30:
        time.sleep(0.3)
    assert not {pid for pid, _ in ray_processes()} - before, "Ray processes of the run are left"


def test_console_counts_the_roles_a_lora_run_loads(tmp_path):
    """While a LoRA run starts, the console's header counts the three roles that load."""
    from console.model import RunModel

    m = RunModel(tmp_path)
    m.state = "starting"
    m.events.append("2026-11-29 10:00:00 INFO    run x: starting 3 worker process(es) for actor, critic, reward "
                    "(2 cores); the reference is the LoRA actor's base (adapters disabled)")
    m.events.append("2026-11-29 10:00:01 INFO    actor: loaded in 2.0s")
    s = m.stage()
    assert (s.label, s.done, s.total) == ("loading the models", 1, 3)


def test_two_ddp_ranks_of_a_lora_actor_equal_one_process(runs_dir, cleanup_runs):
    """actor.world_size=2 (ddp) with LoRA: the ranks split the reference pass over the actor's
    base like any scoring pass and the update equals the one-process update."""
    keys = ("score_mean", "kl", "policy_loss", "value_loss", "entropy", "approx_kl", "grad_norm",
            "advantage_mean", "response_len_mean")
    common = ("run.steps=2", LORA, "ppo.actor_lr=1e-3")
    one = launch(TINY, tiny_overrides(runs_dir, *common, "run.name=w1"), wait_ready=False)
    cleanup_runs.append(one)
    two = launch(TINY, tiny_overrides(runs_dir, *common, "run.name=w2", "actor.world_size=2"), wait_ready=False)
    cleanup_runs.append(two)
    assert one.wait(timeout=400) == "finished", one.info.get("failure")
    assert two.wait(timeout=400) == "finished", two.info.get("failure")
    assert set(two.info["pids"]) == {"actor[0]", "actor[1]", "critic", "reward"}
    m1 = {m["step"]: m for m in one.metrics()}
    m2 = {m["step"]: m for m in two.metrics()}
    assert sorted(m2) == [1, 2] and m2[2]["kl"] != 0.0
    diffs = {k: max(abs(m1[s][k] - m2[s][k]) for s in (1, 2)) for k in keys}
    assert all(v <= 1e-4 for v in diffs.values()), diffs
    assert (two.dir.latest_checkpoint() / "actor" / "adapter_model.safetensors").is_file()
    assert_run_clean(two)
