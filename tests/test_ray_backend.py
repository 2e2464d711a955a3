"""The Ray backend for real: Ray actors hosting the roles, a local Ray instance started and
stopped by the run, and a two-node Ray cluster on this machine with roles placed by custom
resources. Tiny random Llama, real tokenizer, VADER reward, as in test_runtime."""
from __future__ import annotations

import os
import signal
import time

import pytest

ray = pytest.importorskip("ray")

from engine.client import RunError, launch  # noqa: E402
from engine.runtime.ray_backend import ray_processes  # noqa: E402
from tests.conftest import TINY, run_processes_gone, tiny_overrides  # noqa: E402

pytestmark = pytest.mark.timeout(600)

# metrics that are measurements of time, not results of the computation
_NOT_COMPARED = {"step", "time", "tokens_per_s", "gen_tokens_per_s"}


def _ray_pids() -> set[int]:
    return {pid for pid, _ in ray_processes()}


def _new_ray_processes(before: set[int], timeout: float = 30.0) -> set[int]:
    t0 = time.time()
    while True:
        left = _ray_pids() - before
        if not left or time.time() - t0 > timeout:
            return left
        time.sleep(0.3)


def test_tiny_gives_the_same_metrics_on_local_and_ray_and_leaves_no_ray_process(runs_dir, cleanup_runs):
    before = _ray_pids()
    # tiny.yaml: float32, seed 0; the two runs go side by side (the thread plan is the same)
    local = launch(TINY, tiny_overrides(runs_dir, "run.steps=3", "run.name=local"), wait_ready=False)
    cleanup_runs.append(local)
    on_ray = launch(TINY, tiny_overrides(runs_dir, "run.steps=3", "run.name=onray", "runtime.backend=ray"),
                    wait_ready=False)
    cleanup_runs.append(on_ray)
    assert local.wait(timeout=400) == "finished", local.info.get("failure")
    assert on_ray.wait(timeout=400) == "finished", on_ray.info.get("failure")

    info = on_ray.info
    assert info["backend"] == "ray" and local.info["backend"] == "local"
    assert info["ray"]["started_here"] is True and info["ray"]["address"] is None
    assert set(info["ray"]["nodes"]) == {"actor", "reference", "critic", "reward"}
    events = (on_ray.path / "events.log").read_text()
    assert "ray: started a local Ray instance" in events and "ray: local Ray instance stopped" in events

    a, b = list(local.metrics()), list(on_ray.metrics())
    assert [m["step"] for m in a] == [m["step"] for m in b] == [1, 2, 3]
    worst: dict[str, float] = {}
    for ma, mb in zip(a, b):
        keys = {k for k, v in ma.items() if isinstance(v, (int, float)) and not isinstance(v, bool)} - _NOT_COMPARED
        assert keys and keys == {k for k, v in mb.items() if isinstance(v, (int, float)) and not isinstance(v, bool)} - _NOT_COMPARED
        for k in keys:
            worst[k] = max(worst.get(k, 0.0), abs(float(ma[k]) - float(mb[k])))
    print("max |local - ray| per metric over 3 steps:", {k: f"{v:.2e}" for k, v in sorted(worst.items())})
    assert {"score_mean", "kl", "policy_loss", "value_loss", "entropy", "grad_norm"} <= set(worst)
    # the same float32 operations in the same order in both backends: equal to the bit (0.0 for
    # every metric measured, as docs/performance.md says), so any difference is a defect
    bad = {k: v for k, v in worst.items() if v != 0.0}
    assert not bad, f"local and ray differ: {bad}"
    # the same samples, too (same generations, same scores)
    sa, sb = list(local.samples()), list(on_ray.samples())
    assert [s["response"] for s in sa] == [s["response"] for s in sb]

    # nothing of Ray is left: the actors' processes and the raylet/GCS the run started
    assert run_processes_gone(on_ray) == []
    assert _new_ray_processes(before) == set(), "a raylet or gcs_server of the run is still alive"


# --------------------------------------------------------------------------------- a cluster

@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes on this machine, told apart by the custom resources node_a and node_b."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"node_a": 2},
                                                      "include_dashboard": False})
    try:
        worker = c.add_node(num_cpus=1, resources={"node_b": 2})
        c.wait_for_nodes()
        c.node_a, c.node_b = c.head_node.node_id, worker.node_id
        yield c
    finally:
        c.shutdown()


_PLACED = ("runtime.backend=ray", "runtime.ray_resources.actor.node_a=1", "runtime.ray_resources.critic.node_a=1",
           "runtime.ray_resources.reference.node_b=1", "runtime.ray_resources.reward.node_b=1")


def test_two_node_cluster_places_roles_on_their_nodes_and_the_controls_work(
        cluster, runs_dir, cleanup_runs, tmp_path, monkeypatch):
    mod = tmp_path / "mods"
    mod.mkdir()
    (mod / "constant_reward.py").write_text("def score(prompts, responses):\n    return [0.25] * len(responses)\n")
    # the supervisor passes its PYTHONPATH on to the actors (runtime_env), wherever they run
    monkeypatch.setenv("PYTHONPATH", f"{mod}{os.pathsep}{os.environ['PYTHONPATH']}")
    run = launch(TINY, tiny_overrides(runs_dir, "run.steps=200", f"runtime.ray_address={cluster.address}", *_PLACED))
    cleanup_runs.append(run)
    info = run.info
    nodes = info["ray"]["nodes"]
    assert info["ray"]["started_here"] is False
    assert nodes["actor"] == nodes["critic"] == cluster.node_a
    assert nodes["reference"] == nodes["reward"] == cluster.node_b
    assert cluster.node_a != cluster.node_b

    # the control socket works as with the local backend: pause, checkpoint, swap, resume, stop
    run.wait_step(1, timeout=300)
    run.pause()
    run.wait(states=("paused",), timeout=120)
    ck = run.checkpoint(wait=True)
    assert ck["ok"] and (run.path / "checkpoints" / f"step_{ck['step']}" / "state.json").exists()
    with pytest.raises(RunError, match="stays in place"):
        run.swap_reward("python:no_such_module_xyz:score")
    assert run.swap_reward("python:constant_reward:score")["previous"] == "lexicon:vader"
    run.resume()
    after = run.info["step"]
    run.wait_step(after + 2, timeout=300)
    scores = [m["score_mean"] for m in run.metrics() if m["step"] > after]
    assert scores and all(abs(s - 0.25) < 1e-6 for s in scores)
    run.stop()
    assert run.wait(timeout=300) == "stopped"
    assert run.dir.latest_checkpoint() is not None
    assert run_processes_gone(run) == []
    # joining a cluster leaves it running
    assert ray_processes(), "the cluster the run joined must still be running"
    assert "disconnected from the cluster (left running)" in (run.path / "events.log").read_text()


def test_kill_9_of_a_role_actor_fails_the_run_and_names_the_role(cluster, runs_dir, cleanup_runs):
    # the reward in an actor of its own, the other roles sharing one (two Ray workers to start)
    run = launch(TINY, tiny_overrides(runs_dir, "run.steps=200", f"runtime.ray_address={cluster.address}",
                                      "runtime.backend=ray", "runtime.colocate=[[actor, reference, critic], [reward]]"))
    cleanup_runs.append(run)
    run.wait_step(1, timeout=300)
    os.kill(run.info["pids"]["reward"], signal.SIGKILL)
    assert run.wait(timeout=120) == "failed"
    info = run.info
    print("failure:", info["failure"])
    assert info["failed_role"] == "reward"
    assert info["failure"].startswith("reward: ") and "Ray actor" in info["failure"]
    assert "worker failure: reward" in (run.path / "events.log").read_text()
    assert run_processes_gone(run) == []


def test_a_resource_no_node_offers_fails_at_once_with_the_key_named(cluster, runs_dir, cleanup_runs):
    run = launch(TINY, tiny_overrides(runs_dir, "runtime.backend=ray", f"runtime.ray_address={cluster.address}",
                                      "runtime.ray_resources.reward.gpu_box=1"), wait_ready=False)
    cleanup_runs.append(run)
    assert run.wait(timeout=120) == "failed"
    assert "runtime.ray_resources.reward.gpu_box" in run.info["failure"]
    assert run_processes_gone(run) == []



def test_worker_timeout_kills_the_actor_and_names_role_and_operation(cluster, runs_dir, cleanup_runs,
                                                                     tmp_path, monkeypatch):
    mod = tmp_path / "mods"
    mod.mkdir()
    (mod / "sleepy_reward.py").write_text("import time\n\ndef score(prompts, responses):\n"
                                         "    time.sleep(600)\n    return [0.0] * len(responses)\n")
    monkeypatch.setenv("PYTHONPATH", f"{mod}{os.pathsep}{os.environ['PYTHONPATH']}")
    # the roles that do not hang share one actor (two Ray workers to start, not four)
    run = launch(TINY, tiny_overrides(runs_dir, "runtime.backend=ray", f"runtime.ray_address={cluster.address}",
                                      "runtime.colocate=[[actor, reference, critic], [reward]]",
                                      "reward.source=python:sleepy_reward:score", "runtime.worker_timeout_s=5"))
    cleanup_runs.append(run)
    assert run.wait(timeout=120) == "failed"
    failure = run.info["failure"]
    assert "reward.score" in failure and "runtime.worker_timeout_s = 5s" in failure
    assert run_processes_gone(run) == [], "the timed-out actor must be killed"


def test_two_ranks_of_the_actor_as_two_ray_actors_equal_one_local_process(cluster, runs_dir, cleanup_runs):
    # reference: the local backend, one actor process; the same config with actor.world_size=2
    # on Ray: two actors in one torch.distributed group (gloo), placed on the two nodes
    one = launch(TINY, tiny_overrides(runs_dir, "run.steps=2", "run.name=one"), wait_ready=False)
    cleanup_runs.append(one)
    # the other three roles share one actor (three Ray workers to start, not five)
    two = launch(TINY, tiny_overrides(runs_dir, "run.steps=2", "run.name=two", "actor.world_size=2",
                                      "runtime.backend=ray", f"runtime.ray_address={cluster.address}",
                                      "runtime.colocate=[[actor], [reference, critic, reward]]",
                                      "runtime.ray_resources.actor.node_a=1"), wait_ready=False)
    cleanup_runs.append(two)
    assert one.wait(timeout=400) == "finished", one.info.get("failure")
    assert two.wait(timeout=400) == "finished", two.info.get("failure")
    info = two.info
    assert {"actor[0]", "actor[1]"} <= set(info["pids"]) and info["pids"]["actor[0]"] != info["pids"]["actor[1]"]
    assert info["ray"]["nodes"]["actor[0]"] == info["ray"]["nodes"]["actor[1]"] == cluster.node_a
    worst: dict[str, float] = {}
    for ma, mb in zip(one.metrics(), two.metrics()):
        for k in ("score_mean", "kl", "policy_loss", "value_loss", "entropy", "grad_norm", "clipfrac",
                  "approx_kl", "advantage_mean", "return_mean", "value_mean"):
            worst[k] = max(worst.get(k, 0.0), abs(float(ma[k]) - float(mb[k])))
    print("max |local 1 rank - ray 2 ranks| over 2 steps:", {k: f"{v:.2e}" for k, v in sorted(worst.items())})
    assert len(list(two.metrics())) == 2
    assert all(v == 0.0 for v in worst.values()), worst   # two ranks' gradient sum equals the one process's
    assert run_processes_gone(two) == []
