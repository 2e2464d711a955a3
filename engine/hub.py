"""The Hugging Face hub as this project sees it: switched off, reachable, or holding a repo in
the local cache. The one home of these checks (used by the config's source checks and by
model loading); nothing here imports torch or transformers.
"""
from __future__ import annotations

import os
import socket
import time
from urllib.parse import urlparse

_TRUE = ("1", "true", "yes", "on")
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
_PROBE: dict = {}
_PROBE_TTL_S = 60.0


def hub_offline() -> bool:
    """Hub access is switched off: one of HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE /
    HF_DATASETS_OFFLINE is set to a true value (read from the environment each time)."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in _OFFLINE_VARS)


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub endpoint accepts a TCP connection (the answer is kept for a minute)."""
    now = time.monotonic()
    endpoint = hub_endpoint()
    hit = _PROBE.get(endpoint)
    if hit is not None and now - hit[1] < _PROBE_TTL_S:
        return hit[0]
    url = urlparse(endpoint)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            ok = True
    except OSError:
        ok = False
    _PROBE[endpoint] = (ok, now)
    return ok


def hf_cache_dir() -> str:
    hub = os.environ.get("HF_HUB_CACHE")
    if hub:
        return hub
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(home, "hub")


def hf_cache_has(kind: str, repo_id: str) -> bool:
    """Whether the local HF cache holds ``repo_id`` (``kind`` is "models" or "datasets")."""
    return os.path.isdir(os.path.join(hf_cache_dir(), f"{kind}--{repo_id.replace('/', '--')}"))
