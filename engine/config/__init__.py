"""Run configuration: one YAML file describes a run; this package reads and checks it.

It is read with line numbers kept for every key, converted into frozen (pydantic) dataclasses
and checked as a whole: every problem is reported together, each naming the key path, the file
line (or the ``--set`` override it came from) and what was expected. Nothing here imports torch
unless a check needs to know about CUDA.

One module per job:

- :mod:`~engine.config.schema` — the sections and keys: types, ranges, choices, defaults,
  descriptions (adding a key is one line there, then regenerate the reference);
- :mod:`~engine.config.issues` — ConfigIssue / ConfigError and where an issue is located;
- :mod:`~engine.config.loading` — YAML with lines and duplicate keys (ruamel.yaml), ``--set``
  overrides, pydantic's errors in this project's words, load/dump;
- :mod:`~engine.config.checks` — rules across keys and against the machine, launch checks;
- :mod:`~engine.config.article` — the source article's config shape mapped onto the schema;
- :mod:`~engine.config.reference` — the markdown reference (``python -m engine.config --reference``).

Public API::

    load_config(path, overrides=(), *, check_hardware=True) -> RunConfig      # raises ConfigError
    validate_text(text, filename="<config>", overrides=(), check_hardware=True) -> ValidationResult
    apply_overrides(cfg, overrides, *, check_hardware=True) -> RunConfig      # raises ConfigError
    config_to_dict(cfg) -> dict;  dump_config(cfg) -> str
    resolve_role_model(cfg, role) -> str;  role_config(cfg, role);  colocation_groups(cfg)
    schema_reference_markdown() -> str

Notices (things that do not stop a run but that the user should know, e.g. "FSDP has no effect
on one device") are returned in ``ValidationResult.notices`` and attached to a loaded config as
``cfg.notices`` (a tuple of :class:`ConfigIssue`; the field is excluded from equality, repr and
dumps, so two configs with the same values compare equal wherever they were loaded from).
"""
from __future__ import annotations

from engine.config.issues import ConfigError, ConfigIssue
from engine.config.loading import (
    MAX_CONFIG_BYTES,
    ValidationResult,
    apply_overrides,
    check_launchable,
    config_to_dict,
    dump_config,
    list_presets,
    load_config,
    preset_path,
    validate_text,
)
from engine.config.probes import bnb_cpu_unsupported_reason, cuda_device_count  # tests replace them in .probes
from engine.config.reference import schema_reference_markdown
from engine.config.schema import (
    ATTN_IMPLEMENTATIONS,
    DEFAULT_MODEL,
    DEFAULT_PROMPTS,
    DEFAULT_REWARD,
    DTYPES,
    MODEL_ROLES,
    PRESETS_DIR,
    QUANTIZATIONS,
    ROLES,
    TRAINED_ROLES,
    CheckpointConfig,
    DataConfig,
    LoggingConfig,
    LoraSettings,
    MonitorsConfig,
    PPOConfig,
    RefitSettings,
    RewardConfig,
    RoleConfig,
    RolloutConfig,
    RunConfig,
    RunSection,
    RuntimeConfig,
    active_roles,
    colocation_groups,
    critic_free,
    explicit_threads,
    reference_in_actor,
    resolve_role_model,
    role_config,
    role_device_request,
)

__all__ = [
    "ROLES", "MODEL_ROLES", "TRAINED_ROLES", "DTYPES", "PRESETS_DIR",
    "RunSection", "RoleConfig", "RewardConfig", "DataConfig", "RolloutConfig", "PPOConfig",
    "RuntimeConfig", "LoggingConfig", "CheckpointConfig", "MonitorsConfig", "RunConfig", "LoraSettings",
    "RefitSettings",
    "ConfigIssue", "ConfigError", "ValidationResult",
    "load_config", "validate_text", "apply_overrides", "config_to_dict", "dump_config",
    "resolve_role_model", "role_config", "colocation_groups", "critic_free", "active_roles",
    "reference_in_actor", "explicit_threads", "role_device_request",
    "schema_reference_markdown", "list_presets", "preset_path", "cuda_device_count",
    "check_launchable", "bnb_cpu_unsupported_reason",
    "ATTN_IMPLEMENTATIONS", "QUANTIZATIONS", "DEFAULT_MODEL", "DEFAULT_PROMPTS", "DEFAULT_REWARD",
    "MAX_CONFIG_BYTES",
]
