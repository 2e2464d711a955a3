"""The extension points are registries read in one place: an advantage estimator is one
registered function (engine/estimators.py) that the schema, the checks, ``critic_free`` and the
driver pick up; a dashboard pane is one PaneSpec (console/screens/dashboard.py) that compose,
the narrow split, the focus and tab read."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import torch

from engine import algorithms as A
from engine import estimators as E
from engine.config import ConfigError, active_roles, critic_free, load_config
from engine.runtime.driver import PPODriver


def _cfg(*overrides: str):
    return load_config("tiny", list(overrides), check_hardware=False)


def _messages(err: ConfigError) -> str:
    return str(err)


# ---- estimators ---------------------------------------------------------------------------------

def test_the_builtin_estimators_are_registered_with_their_needs():
    assert E.names() == ("gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")
    assert [n for n in E.names() if E.needs_critic(n)] == ["gae"]
    assert [n for n in E.names() if E.needs_groups(n)] == ["grpo", "dr_grpo", "rloo"]


def _batch(seed=0, B=6, T=5, n=2):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, T)
    mask[0, 3:] = 0
    mask[3, 1:] = 0
    rewards = torch.randn(B, T, generator=g) * mask
    values = torch.randn(B, T, generator=g) * mask
    index = torch.arange(B // n).repeat_interleave(n)
    return rewards, values, mask, index


@pytest.mark.parametrize("whiten_rewards", [False, True])
def test_each_builtin_estimator_computes_what_its_algorithm_does(whiten_rewards):
    """The registry maps each name to its own maths (grpo divides by the std, dr_grpo does not, ...)."""
    rewards, values, mask, index = _batch()
    x = E.EstimatorInputs(rewards=rewards, mask=mask, index=index, values=values, gamma=0.9, lam=0.8,
                          whiten_rewards=whiten_rewards, whiten_advantages=True)
    outcome = rewards.sum(1)
    r = A.whiten(rewards, mask, shift_mean=False) * mask if whiten_rewards else rewards
    gae_adv, gae_ret = A.compute_gae(r, values, mask, 0.9, 0.8)
    expect = {
        "gae": (A.whiten(gae_adv, mask) * mask, gae_ret),
        "grpo": (A.grpo_advantages(outcome, index, mask, norm_by_std=True),) * 2,
        "dr_grpo": (A.grpo_advantages(outcome, index, mask, norm_by_std=False),) * 2,
        "rloo": (A.rloo_advantages(outcome, index, mask),) * 2,
        "reinforce_pp": A.reinforce_pp_advantages(rewards, mask, 0.9),
        "reinforce_pp_baseline": (A.reinforce_pp_baseline_advantages(outcome, index, mask),) * 2,
    }
    outs = {}
    for name, (adv, ret) in expect.items():
        got_adv, got_ret = E.get(name)(x)
        assert torch.equal(got_adv, adv), name
        assert torch.equal(got_ret, ret), name
        outs[name] = got_adv
    assert not torch.equal(outs["grpo"], outs["dr_grpo"])   # the cases above tell them apart


def test_a_name_registered_twice_is_refused_and_registered_leaves_nothing_behind():
    with pytest.raises(ValueError, match="already registered"):
        E.register("gae", lambda x: None, needs_critic=True, needs_groups=False)
    with E.registered("test_tmp", lambda x: None, needs_critic=False, needs_groups=False):
        assert "test_tmp" in E.names()
    assert "test_tmp" not in E.names()
    with pytest.raises(KeyError, match="no advantage estimator 'test_tmp'"):
        E.get("test_tmp")


def _mine(x: E.EstimatorInputs):
    """Every token's advantage is its prompt's group id + 1 (a marker the test can see)."""
    adv = (x.index.float() + 1.0)[:, None].expand_as(x.mask) * x.mask
    return adv, adv * 10


def test_a_registered_estimator_is_accepted_by_the_schema_and_drives_checks_and_roles():
    with pytest.raises(ConfigError) as ei:
        _cfg("ppo.estimator=test_mine", "rollout.n=2")
    assert "ppo.estimator: must be one of gae, grpo" in _messages(ei.value)

    with E.registered("test_mine", _mine, needs_critic=False, needs_groups=True):
        cfg = _cfg("ppo.estimator=TEST_MINE", "rollout.n=2")      # the schema's case folding too
        assert cfg.ppo.estimator == "test_mine"
        assert critic_free(cfg) and "critic" not in active_roles(cfg)
        with pytest.raises(ConfigError) as ei:                   # needs_groups: rollout.n >= 2
            _cfg("ppo.estimator=test_mine", "rollout.n=1")
        assert "rollout.n: must be at least 2 with ppo.estimator: test_mine" in _messages(ei.value)

    with E.registered("test_mine", _mine, needs_critic=True, needs_groups=False):
        cfg = _cfg("ppo.estimator=test_mine", "rollout.n=1")
        assert not critic_free(cfg) and "critic" in active_roles(cfg)

    with pytest.raises(ConfigError):                             # gone again after the block
        _cfg("ppo.estimator=test_mine", "rollout.n=2")


def test_the_driver_dispatches_to_a_registered_estimator():
    seen = []

    def mine(x):
        seen.append(x)
        return _mine(x)

    B, T = 4, 3
    mask = torch.ones(B, T)
    scores = torch.tensor([1.0, 0.0, 0.5, 0.25])
    index = torch.arange(2).repeat_interleave(2)
    lp = torch.zeros(B, T)
    with E.registered("test_mine", mine, needs_critic=False, needs_groups=True):
        cfg = _cfg("ppo.estimator=test_mine", "rollout.n=2")
        fake = SimpleNamespace(cfg=cfg)
        rewards, kl_tok, adv, ret, kl_coef = PPODriver._advantages(
            fake, scores, index, lp, lp, mask, torch.zeros(B, T), torch.ones(B, dtype=torch.bool), 0.05)
    assert len(seen) == 1 and torch.equal(seen[0].index, index)
    assert torch.equal(seen[0].rewards, rewards)                 # the KL-shaped token rewards
    assert torch.equal(rewards.sum(1), scores)                   # (zero KL here: the scores alone)
    assert torch.equal(adv, torch.tensor([[1.0] * T, [1.0] * T, [2.0] * T, [2.0] * T]))
    assert torch.equal(ret, adv * 10)


# ---- dashboard panes ----------------------------------------------------------------------------

def test_a_pane_spec_is_all_a_new_pane_needs(tmp_path, monkeypatch):
    """A pane added to PANES is composed in its column with its title, the narrow layout shows
    its column alone when tab reaches it, and the focus goes to its focus widget."""
    from textual.widgets import Static

    from console import demo
    from console.app import ConsoleApp
    from console.bench import SyntheticRun
    from console.screens import dashboard as D

    class Probe(Static, can_focus=True):
        pass

    extra = D.PaneSpec("probe", "probe-pane", "left", lambda s: Probe("probe", id="probe-pane"))
    monkeypatch.setattr(D, "PANES", D.PANES + (extra,))
    run = SyntheticRun(tmp_path)
    run.write_history(3, t0=1795573000.0)

    async def go():
        app = ConsoleApp("attach", run=run.path, runs_dir=run.path.parent, gpu_probe=demo.no_nvml, blink=False)
        async with app.run_test(size=(80, 24)) as pilot:
            await demo.settle(pilot, timeout=60)
            screen = app.screen
            pane = screen.query_one("#probe-pane")
            assert pane.parent.id == "left" and pane.has_class("pane") and pane.border_title == "probe"
            assert screen.narrow
            while D.PANES[screen.pane].name != "probe":
                await pilot.press("tab")
                await pilot.pause()
            assert screen.query_one("#left").display and not screen.query_one("#right").display
            assert not pane.has_class("-hidden-pane") and screen.query_one("#gpu").has_class("-hidden-pane")
            assert app.focused is pane
            assert screen.sub_title.endswith(f"pane {len(D.PANES)}/{len(D.PANES)}: probe")

    asyncio.run(go())
