"""The runtime for real: supervisor + four worker processes + shared memory + control socket,
on the tiny random Llama with the real SmolLM2 tokenizer and the VADER reward."""
from __future__ import annotations

import math
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine.client import Run, RunError
from engine.procs import parent_pid
from engine.runtime.control import ControlClient
from tests.conftest import ROOT, TINY, assert_run_clean, run_processes_gone, run_segments, start_tiny

pytestmark = pytest.mark.timeout(600)



def test_a_workers_recorded_memory_peak_is_never_below_its_rss():
    """getrusage's high-water mark can lag the rss read just before it (the recorded tiny run
    has the reference at rss 448.6 MB, peak 448.4 MB): the metrics line records the larger."""
    from engine.runtime.supervisor import memory_report

    assert memory_report({"rss_mb": 448.63, "peak_rss_mb": 448.41}) == {"rss_mb": 448.6, "peak_rss_mb": 448.6}
    assert memory_report({"rss_mb": 523.4, "peak_rss_mb": 559.3, "gpu_alloc_mb": 10.0}) == \
        {"rss_mb": 523.4, "peak_rss_mb": 559.3, "gpu_alloc_mb": 10.0}
    assert memory_report({"peak_rss_mb": 100.0}) == {"peak_rss_mb": 100.0}


def test_three_step_run_writes_the_run_directory(runs_dir, cleanup_runs):
    run = start_tiny(runs_dir, cleanup_runs, "run.steps=3", "logging.tensorboard=true")
    assert run.wait(timeout=300) == "finished", run.info.get("failure")
    p = run.path
    assert stat.S_IMODE(p.stat().st_mode) == 0o700
    for f in ("config.yaml", "run.json", "metrics.jsonl", "samples.jsonl", "events.log"):
        assert (p / f).exists(), f
    metrics = list(run.metrics())
    assert [m["step"] for m in metrics] == [1, 2, 3]
    m = metrics[-1]
    for key in ("score_mean", "score_std", "kl", "kl_coef", "policy_loss", "value_loss", "clipfrac",
                "vf_clipfrac", "entropy", "response_len_mean", "tokens_per_s", "memory"):
        assert key in m, key
    for phase in ("rollout", "ref", "reward", "critic", "actor_logprobs", "update", "actor_update", "critic_update", "step"):
        assert m["timings"][phase] >= 0.0, phase
    assert set(m["memory"]) == {"actor", "reference", "critic", "reward"}
    assert all(v["peak_rss_mb"] > 0 for v in m["memory"].values())
    assert all(v["peak_rss_mb"] >= v["rss_mb"] for v in m["memory"].values())
    samples = list(run.samples())
    assert len(samples) == 3 * 4 and {"prompt", "response", "score", "kl", "return", "id"} <= set(samples[0])
    info = run.info
    assert info["state"] == "finished" and info["step"] == 3
    assert set(info["pids"]) == {"actor", "reference", "critic", "reward"}
    assert run.dir.latest_checkpoint().name == "step_3"
    assert list((p / "tensorboard").glob("events.out.tfevents.*"))
    assert "step 3/3 |" in (p / "events.log").read_text()
    assert_run_clean(run)


def test_pause_resume_and_the_control_socket(runs_dir, cleanup_runs):
    run = start_tiny(runs_dir, cleanup_runs, "run.steps=40")
    run.wait_step(1, timeout=300)
    sock = Path(run.info["socket"])
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    # malformed and unknown requests get an error reply and change nothing
    with ControlClient(sock) as c:
        r = c.send_raw(b"this is not json\n")
        assert not r["ok"] and "malformed" in r["error"]
        r = c.request("explode")
        assert not r["ok"] and "unknown op" in r["error"]
        r = c.request("swap_reward")
        assert not r["ok"] and "source" in r["error"]
        assert c.request("status")["state"] == "running"
    r = run.pause()
    assert r["pending"] and "end of step" in r["message"]
    assert run.wait(states=("paused",), timeout=120) == "paused"
    step = run.info["step"]
    time.sleep(1.0)  # four tiny steps' time
    assert run.info["step"] == step, "a paused run must not advance"
    # a checkpoint while paused
    ck = run.checkpoint(wait=True)
    assert ck["ok"] and Path(ck["path"]).name == f"step_{step}"
    run.resume()
    run.wait_step(step + 1, timeout=120)
    run.stop()
    assert run.wait(timeout=120) == "stopped"
    assert run.dir.latest_checkpoint() is not None
    assert_run_clean(run)


def test_swap_reward_live(runs_dir, cleanup_runs, tmp_path, monkeypatch):
    mod = tmp_path / "mods"
    mod.mkdir()
    (mod / "constant_reward.py").write_text("def score(prompts, responses):\n    return [0.25] * len(responses)\n")
    monkeypatch.setenv("PYTHONPATH", f"{mod}{os.pathsep}{os.environ['PYTHONPATH']}")
    run = start_tiny(runs_dir, cleanup_runs, "run.steps=40")
    run.wait_step(1, timeout=300)
    with pytest.raises(RunError, match="stays in place"):
        run.swap_reward("python:no_such_module_xyz:score")
    r = run.swap_reward("python:constant_reward:score")
    assert r["source"] == "python:constant_reward:score" and r["previous"] == "lexicon:vader"
    after = run.info["step"]
    run.wait_step(after + 2, timeout=120)
    scores = [m["score_mean"] for m in run.metrics() if m["step"] > after + 1]
    assert scores and all(abs(s - 0.25) < 1e-6 for s in scores)
    run.stop()
    run.wait(timeout=120)
    assert_run_clean(run)


def test_nan_reward_pauses_and_names_role_and_phase(runs_dir, cleanup_runs, tmp_path, monkeypatch):
    mod = tmp_path / "mods"
    mod.mkdir()
    (mod / "nan_reward.py").write_text(textwrap.dedent("""
        calls = 0
        def score(prompts, responses):
            global calls
            calls += 1
            return [float('nan') if calls == 2 else 0.5 for _ in responses]
    """))
    monkeypatch.setenv("PYTHONPATH", f"{mod}{os.pathsep}{os.environ['PYTHONPATH']}")
    run = start_tiny(runs_dir, cleanup_runs, "run.steps=40", "reward.source=python:nan_reward:score")
    assert run.wait(states=("paused",), timeout=300) == "paused"
    st = run.status()
    assert st["step"] == 1, "the NaN step must not count as done"
    assert "reward" in st["paused_reason"] and "score" in st["paused_reason"]
    assert "nan" in (run.path / "events.log").read_text().lower()
    run.resume()
    run.wait_step(2, timeout=120)
    run.stop()
    run.wait(timeout=120)
    assert_run_clean(run)


# kill -9 of each role (mid-step and mid-checkpoint, then resume): tests/test_faults.py


def test_supervisor_sigkill_leaves_nothing_running_and_stale_segments_are_reaped(runs_dir, cleanup_runs):
    run = start_tiny(runs_dir, cleanup_runs, "run.steps=200")
    run.wait_step(1, timeout=300)
    sup = run.info["supervisor_pid"]
    segs = run_segments(run)
    assert segs, "a running run keeps segments"
    # every role is on the CPU: the workers are forks of the supervisor's fork server (not
    # interpreters that import torch and transformers again), which is the supervisor's child
    workers = list(run.info["pids"].values())
    servers = {parent_pid(w) for w in workers}
    assert len(servers) == 1 and sup not in servers and parent_pid(servers.pop()) == sup, \
        f"workers {workers}: parents {[parent_pid(w) for w in workers]}, supervisor {sup}"
    os.kill(sup, signal.SIGKILL)
    # the fork server dies with the supervisor, the workers with the fork server (PR_SET_PDEATHSIG)
    assert run_processes_gone(run, timeout=30) == []
    assert run.state == "dead"
    # the next rlhf-console start removes the orphaned segments and says so
    out = subprocess.run([sys.executable, "-m", "console.cli", "--runs-dir", str(runs_dir), "runs"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "stale shared-memory segment" in out.stderr
    assert run_segments(run) == []
    assert "dead" in out.stdout


def test_workers_on_a_gpu_are_spawned():
    """CUDA must never be initialised in a process that forks: a plan with a GPU (or no plan, the
    Ray backend's) gets spawn; a CPU plan's fork server is checked above."""
    from engine.runtime.worker import worker_context

    assert worker_context({"actor": ["cuda:0"], "reward": ["cpu"]}).get_start_method() == "spawn"
    assert worker_context({"actor": ["cpu", "cuda:1"]}).get_start_method() == "spawn"
    assert worker_context(None).get_start_method() == "spawn"


def test_the_early_fork_server_guess_from_the_config(tmp_path, monkeypatch):
    """The detached supervisor starts the fork server before its own imports only for a config
    whose roles are all on the CPU: on the local backend, device cpu, or auto with no GPU node."""
    from engine.runtime import start

    def cfg(device="cpu", backend="local", reward_device="cpu"):
        return {"actor": {"device": device, "lora": None}, "critic": {"device": "cpu"},
                "reward": {"device": reward_device}, "runtime": {"backend": backend}}

    monkeypatch.setattr(start, "_GPU_NODES", (str(tmp_path / "nvidia[0-9]*"),))
    assert start.likely_cpu_only(cfg()) is True
    assert start.likely_cpu_only(cfg(device="cuda:0")) is False
    assert start.likely_cpu_only(cfg(reward_device="cuda")) is False
    assert start.likely_cpu_only(cfg(backend="ray")) is False
    assert start.likely_cpu_only(cfg(device="auto")) is True       # no GPU node under tmp_path
    (tmp_path / "nvidia0").touch()
    assert start.likely_cpu_only(cfg(device="auto")) is False      # auto may pick that GPU
    assert start.likely_cpu_only(cfg(device="cpu")) is True
    assert start.likely_cpu_only(None) is None


def test_the_foreground_guess_reads_set_overrides_as_the_loader_does(monkeypatch):
    from engine.runtime import start

    started: list[bool] = []
    monkeypatch.setattr(start, "ensure_fork_server", lambda lora: started.append(lora) or True)
    assert start.start_early_for(TINY, ["actor.device=cuda:0"]) is False and started == []
    assert start.start_early_for(TINY, ["actor.lora={r: 8}"]) is True and started == [True]   # peft preloaded
    assert start.start_early_for(TINY, ["not an override"]) is True and started == [True, False]


@pytest.mark.parametrize("device,started", [("cpu", True), ("cuda:0", False)])
def test_start_early_runs_the_fork_server_only_for_a_cpu_run(tmp_path, device, started):
    (tmp_path / "config.yaml").write_text(
        f"actor:\n  device: {device}\n  lora: null\nruntime:\n  backend: local\n")
    # the server is a child whose command line names multiprocessing's fork server, looked for a
    # few times (one full-suite run saw no such child, for a reason not known; the children are
    # printed when it fails)
    code = ("import sys, time, psutil; from pathlib import Path; from engine.runtime.start import start_early\n"
            "ok = start_early(Path(sys.argv[1]))\n"
            "for _ in range(20):\n"
            "    kids = []\n"
            "    for c in psutil.Process().children():\n"
            "        try:\n"
            "            kids.append((c.status(), ' '.join(c.cmdline())))\n"
            "        except psutil.Error as e:\n"
            "            kids.append(('gone', repr(e)))\n"
            "    if not ok or any('multiprocessing.forkserver' in k for _, k in kids):\n"
            "        break\n"
            "    time.sleep(0.1)\n"
            "print(ok, any('multiprocessing.forkserver' in k for _, k in kids))\n"
            "print(kids, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(started), str(started)], out.stdout + out.stderr


def test_sighup_of_the_launching_session_does_not_stop_training(runs_dir, cleanup_runs):
    cmd = (f"{sys.executable} -m console.cli train --config {TINY} --set run.output_dir={runs_dir} "
           f"--set run.steps=4 --detach; sleep 60")
    # a terminal's shell has SIGHUP at its default; under `nohup` (or any launcher that ignores
    # it) the child would inherit SIG_IGN and never see the hang-up this test sends
    sh = subprocess.Popen(["bash", "-c", cmd], cwd=ROOT, start_new_session=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    t0 = time.time()
    while time.time() - t0 < 300 and not list(runs_dir.glob("*/run.json")):
        time.sleep(0.2)
    run = Run(next(runs_dir.glob("*/run.json")).parent)
    cleanup_runs.append(run)
    run.wait_step(1, timeout=300)
    os.killpg(sh.pid, signal.SIGHUP)  # the terminal goes away
    assert sh.wait(timeout=30) == -signal.SIGHUP, "the launching shell must die of the hang-up"
    assert run.wait(timeout=300) == "finished"
    assert_run_clean(run)


def _metrics_by_step(run):
    return {m["step"]: m for m in run.metrics()}


def test_stop_and_resume_equals_uninterrupted(runs_dir, cleanup_runs):
    steps = 7
    # the pi KL controller, with a small target so its coefficient moves every step: its state
    # goes through the checkpoint
    pi = ("ppo.kl_controller=pi", "ppo.target_kl=0.5")
    a = start_tiny(runs_dir, cleanup_runs, f"run.steps={steps}", "run.name=straight", *pi)
    assert a.wait(timeout=400) == "finished", a.info.get("failure")
    # the coefficient of each step is the controller's after reading that step's own KL
    from engine.algorithms import PIKLController

    ctl = PIKLController(0.05, target_kl=0.5, ki=0.5, kp=0.5, coef_min=1e-4, coef_max=100.0)
    rows = list(a.metrics())
    assert [m["kl_coef"] for m in rows] == pytest.approx([ctl.update(m["kl"]) for m in rows], rel=1e-9)
    assert len({round(m["kl_coef"], 9) for m in rows}) > 1
    b = start_tiny(runs_dir, cleanup_runs, f"run.steps={steps}", "run.name=interrupted", *pi)
    b.wait_step(1, timeout=300)
    b.stop()
    assert b.wait(timeout=120) == "stopped"
    k = b.info["step"]
    assert k < steps - 2
    assert b.dir.latest_checkpoint().name == f"step_{k}"
    b.restart()
    assert b.wait(timeout=400) == "finished", b.info.get("failure")
    ma, mb = _metrics_by_step(a), _metrics_by_step(b)
    assert sorted(mb) == list(range(1, steps + 1))
    for s in range(k + 1, min(k + 3, steps) + 1):
        for key in ("score_mean", "kl", "policy_loss", "value_loss", "entropy", "response_len_mean", "kl_coef"):
            assert mb[s][key] == pytest.approx(ma[s][key], rel=1e-4, abs=1e-5), (s, key)
        # the reward-hacking monitors' history (trends, baselines) is rebuilt from metrics.jsonl
        for key in ("kl_growth", "entropy_trend", "entropy_drop", "length_drift", "repetition"):
            assert (mb[s][key] is None) == (ma[s][key] is None), (s, key)
            if ma[s][key] is not None:
                assert mb[s][key] == pytest.approx(ma[s][key], rel=1e-3, abs=1e-4), (s, key)
        assert [x["monitor"] for x in mb[s]["alerts"]] == [x["monitor"] for x in ma[s]["alerts"]], s
    sa = [x["response"] for x in a.samples() if x["step"] > k]
    sb = [x["response"] for x in b.samples() if x["step"] > k]
    assert sa == sb
    assert_run_clean(b)


def test_invalid_config_starts_nothing(runs_dir, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text().replace("batch_size: 4", "batch_size: 3", 1))
    out = subprocess.run([sys.executable, "-m", "console.cli", "train", "--config", str(bad),
                          "--set", f"run.output_dir={runs_dir}"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 2
    assert "mini_batch_size" in out.stderr and "nothing was started" in out.stderr
    assert list(runs_dir.iterdir()) == []


def test_dry_run_cli_loads_every_role_once_and_writes_nothing(runs_dir):
    # with an attention implementation this CPU cannot run: the fallback is named once, under
    # the role's name once (it was printed as "actor: actor: ..." once)
    out = subprocess.run([sys.executable, "-m", "console.cli", "train", "--config", str(TINY), "--dry_run",
                          "--set", f"run.output_dir={runs_dir}", "--set", "actor.attn_implementation=flash_attention_2"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    for role in ("actor", "reference", "reward", "critic"):
        assert role in out.stdout
    assert "dry run OK" in out.stdout
    assert "actor: flash_attention_2" in out.stdout
    assert "actor: actor:" not in out.stdout + out.stderr
    assert list(runs_dir.iterdir()) == []


def test_foreground_train_prints_steps_and_ctrl_c_checkpoints(runs_dir):
    p = subprocess.Popen([sys.executable, "-m", "console.cli", "train", "--config", str(TINY),
                          "--set", f"run.output_dir={runs_dir}", "--max_steps", "100"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in p.stdout:
            lines.append(line)
            if line.startswith("step 2/100 |"):
                # twice at once, as `timeout -s INT` delivers it (to the child, then to its
                # process group): one request, still a clean stop with a final checkpoint
                p.send_signal(signal.SIGINT)
                p.send_signal(signal.SIGINT)
                break
        out, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    text = "".join(lines) + out
    assert p.returncode == 0, text
    assert "| rollout" in text and "| score" in text and "| kl" in text
    run = Run(next(runs_dir.glob("*/run.json")).parent)
    assert run.info["state"] == "stopped"
    assert run.dir.latest_checkpoint().name == f"step_{run.info['step']}"
    assert "interrupted again" not in (run.path / "events.log").read_text()
    assert_run_clean(run)


def test_colocated_roles_run_in_one_process_with_bf16_autocast(runs_dir, cleanup_runs):
    run = start_tiny(runs_dir, cleanup_runs, "run.steps=2", "runtime.colocate=true",
                      "actor.autocast=bfloat16", "reference.autocast=bfloat16", "critic.autocast=bf16")
    assert run.wait(timeout=300) == "finished", run.info.get("failure")
    assert list(run.info["pids"]) == ["actor+reference+critic+reward"]
    ms = list(run.metrics())
    assert [m["step"] for m in ms] == [1, 2]
    assert all(math.isfinite(m[k]) for m in ms for k in ("policy_loss", "value_loss", "kl", "entropy"))
    assert_run_clean(run)


def test_old_logprobs_reused_from_generation(runs_dir, cleanup_runs):
    """rollout.reuse_logprobs: no second actor pass in scoring; the first mini-batch's ratio is
    1 up to float rounding, so nothing is clipped on a one-epoch, one-mini-batch step."""
    run = start_tiny(runs_dir, cleanup_runs, "run.steps=2", "rollout.reuse_logprobs=true",
                      "ppo.mini_batch_size=4", "ppo.micro_batch_size=4")
    assert run.wait(timeout=300) == "finished", run.info.get("failure")
    ms = list(run.metrics())
    assert [m["step"] for m in ms] == [1, 2]
    for m in ms:
        assert m["timings"]["actor_logprobs"] == 0.0
        assert abs(m["approx_kl"]) < 1e-5 and m["clipfrac"] == 0.0
        assert math.isfinite(m["policy_loss"]) and math.isfinite(m["kl"])
    assert_run_clean(run)


def test_thread_plan_splits_cores_and_honours_the_config():
    from engine.config import load_config
    from engine.runtime.driver import ThreadPlan

    cfg = load_config(TINY)
    p = ThreadPlan.make(cfg, cores=8)
    assert p.generate == {"actor": 8}
    assert p.score == {"actor": 2, "reference": 2, "critic": 2, "reward": 2}
    assert p.update == {"actor": 4, "critic": 4}
    assert not p.serial_score  # four passes on two threads each: the 8 cores, not more
    shared = ThreadPlan.make(load_config(TINY, ["ppo.critic_trunk=reference", "rollout.reuse_logprobs=true"]), cores=8)
    # the reference's pass on 8 threads and the reward's on 1 would ask for 9: one after the
    # other instead, each on every core
    assert shared.serial_score
    assert shared.score == {"actor": 1, "reference": 8, "critic": 1, "reward": 8}
    assert shared.update == {"actor": 8, "critic": 1}
    two = ThreadPlan.make(load_config(TINY), cores=2)  # three trunk passes and the reward on 2 cores
    assert two.serial_score and two.score == {"actor": 2, "reference": 2, "critic": 2, "reward": 2}
    # roles on GPUs keep scoring at once (their threads only feed the devices)
    gpus = {"actor": ["cuda:0"], "reference": ["cuda:1"], "critic": ["cuda:2"], "reward": ["cuda:3"]}
    assert not ThreadPlan.make(load_config(TINY), cores=2, devices=gpus).serial_score
    cfg = load_config(TINY, ["critic.threads=3"])
    p = ThreadPlan.make(cfg, cores=8)
    assert p.score["critic"] == 3 and p.update["critic"] == 3 and p.update["actor"] == 4


def test_critic_as_a_head_on_the_reference_trunk(runs_dir, cleanup_runs):
    """ppo.critic_trunk=reference: the critic is a value head fed the reference's hidden
    states; it learns (value loss falls on a fixed batch), checkpoints and resumes."""
    import torch

    from engine.config import load_config
    from engine.runtime.driver import ThreadPlan
    from engine.runtime.role_critic import CriticRole
    from engine.runtime.role_policy import ReferenceRole

    cfg = load_config(TINY, ["ppo.critic_trunk=reference", "ppo.critic_lr=1e-2", "ppo.epochs=4"])
    plan = ThreadPlan.make(cfg, cores=8)
    assert plan.update == {"actor": 8, "critic": 1}
    # the actor's and the reference's passes on 4 threads each and the reward's on 1 would ask
    # for 9 of the 8 cores: one after the other, each on every core
    assert plan.serial_score and plan.score["reference"] == 8
    ref, critic = ReferenceRole(cfg), CriticRole(cfg)
    assert sum(p.numel() for p in critic.model.parameters()) == ref.model.config.hidden_size + 1
    g = torch.Generator().manual_seed(0)
    batch = {
        "query_ids": torch.randint(0, 1000, (4, 5), generator=g), "query_mask": torch.ones(4, 5, dtype=torch.long),
        "response_ids": torch.randint(0, 1000, (4, 6), generator=g), "response_mask": torch.ones(4, 6, dtype=torch.long),
    }
    out, _ = ref.call("logprobs", batch, {"hidden": True})
    assert out["hidden"].shape == (4, 6, ref.model.config.hidden_size)
    with pytest.raises(ValueError, match="hidden states"):
        critic.call("values", batch, {})
    inputs = {"response_mask": batch["response_mask"], "hidden": out["hidden"]}
    v0 = critic.call("values", inputs, {})[0]["values"]
    assert torch.equal(v0, torch.zeros(4, 6))  # zero-initialised head
    returns = torch.linspace(-1, 1, 24).view(4, 6)
    losses = []
    for step in range(1, 6):
        vals = critic.call("values", inputs, {})[0]["values"]
        losses.append(critic.call("update", {**inputs, "values": vals, "returns": returns}, {"step": step})[1]["value_loss"])
        # an update is one half of the driver's two-phase commit: uncommitted, the next update
        # rolls it back first
        assert critic.call("commit", {}, {})[1] == {"committed": True}
    assert losses[-1] < 0.5 * losses[0], losses

    run = start_tiny(runs_dir, cleanup_runs, "run.steps=4", "ppo.critic_trunk=reference", "ppo.critic_lr=1e-3",
                      "checkpoint.every=2")
    assert run.wait(timeout=300) == "finished", run.info.get("failure")
    ms = list(run.metrics())
    assert [m["step"] for m in ms] == [1, 2, 3, 4]
    assert all(math.isfinite(m["value_loss"]) for m in ms)
    assert any(m["value_mean"] != 0 for m in ms[1:])  # the head moved after the first update
    assert (run.dir.latest_checkpoint() / "critic" / "critic_state.pt").is_file()
    assert_run_clean(run)
