"""What a CPU run's fork server imports once, before it forks the role workers (see
``engine.runtime.forkserver``, which imports this at its start, and ``engine.runtime.warm``, the
warm launcher, which imports it too). Importing this module does nothing else.

Nothing here initialises CUDA or starts a thread pool (import only): a fork must not inherit
either.
"""
from __future__ import annotations

import importlib

# what a worker imports to build its role; a module that fails here is imported (and its error
# reported) by the worker that needs it
MODULES = (
    "torch",
    "transformers",
    "safetensors.torch",
    "engine.config",
    "engine.transport",
    "engine.models",
    "engine.rewards",
    "engine.decoding",
    "engine.runtime.roles",
    "engine.runtime.ranks",
    "engine.runtime.worker",
)
# transformers imports its classes lazily, on first use: these are the ones the roles use
TRANSFORMERS = (
    "AutoConfig", "AutoTokenizer", "PreTrainedTokenizerFast", "GenerationConfig",
    "AutoModelForCausalLM", "AutoModelForSequenceClassification", "LlamaConfig", "LlamaForCausalLM",
)


def preload() -> None:
    """Import :data:`MODULES` and the transformers classes in :data:`TRANSFORMERS`; a failure is
    left for the worker that needs the module to import and report."""
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - see MODULES
            pass
    try:
        import transformers

        for attr in TRANSFORMERS:
            getattr(transformers, attr)
    except Exception:  # noqa: BLE001 - see MODULES
        pass
