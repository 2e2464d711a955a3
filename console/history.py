"""A run's history read in bounded chunks, and an index over samples.jsonl kept by byte offset.

``ChunkTail`` reads an append-only file from a byte offset, at most ``max_bytes`` at a time, and
returns each complete line with the offset where it starts, so a history of any length is read in
one linear pass without holding the event loop. ``SampleIndex`` keeps, per sample, only its byte
offset and the few numbers the rollouts table sorts and filters on; the text is read back from the
file when a row is drawn, opened or searched, so the whole history stays reachable in little memory.
"""
from __future__ import annotations

import bisect
import json
import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Optional

from engine.files import json_object


class ChunkTail:
    """Complete new lines of an append-only file, with their byte offsets, a chunk at a time."""

    def __init__(self, path: Path, start: int = 0):
        self.path = Path(path)
        self.offset = start          # bytes consumed (including a partial line kept below)
        self._partial = b""
        self._partial_at = start
        self.at_end = False           # the last read reached the end of the file

    @classmethod
    def from_tail(cls, path: Path, keep_bytes: int) -> "ChunkTail":
        """A tail that starts at the first whole line of the last ``keep_bytes`` of the file."""
        t = cls(path)
        try:
            size = os.path.getsize(path)
        except OSError:
            return t
        if size > keep_bytes:
            start = size - keep_bytes
            with open(path, "rb") as f:
                f.seek(start - 1)
                block = f.read(min(keep_bytes, 1 << 16) + 1)
            nl = block.find(b"\n")
            start = start - 1 + nl + 1 if nl >= 0 else size
            t.offset = t._partial_at = start
        return t

    def read(self, max_bytes: Optional[int] = None) -> list[tuple[int, bytes]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(-1 if max_bytes is None else max_bytes)
                self.at_end = max_bytes is None or len(data) < max_bytes or not f.read(1)
        except FileNotFoundError:
            self.at_end = True
            return []
        if not data:
            return []
        self.offset += len(data)
        buf = self._partial + data
        pos = self._partial_at
        out = []
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = buf[start:nl]
            if line.strip():
                out.append((pos + start, line))
            start = nl + 1
        self._partial = buf[start:]
        self._partial_at = pos + start
        return out


def parse_jsonl(lines: Iterable[tuple[int, bytes]]) -> tuple[list[dict], list[int]]:
    objs, offsets = [], []
    for off, ln in lines:
        o = json_object(ln)
        if o is not None:
            objs.append(o)
            offsets.append(off)
    return objs, offsets


def _num(v) -> Optional[float]:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def sample_id(s: dict) -> str:
    return str(s.get("id") or f"{s.get('step')}-{s.get('index')}")


def text_matches(s: dict, needle_lower: str) -> bool:
    return needle_lower in str(s.get("prompt", "")).lower() or needle_lower in str(s.get("response", "")).lower()


class SampleIndex:
    """Every sample of the run, in file order: id, step, index, score, KL and byte offset.

    Ordinals (positions in file order) are stable: new samples only append. ``get(ordinal)``
    reads the whole sample back from samples.jsonl (a small cache keeps the visible rows).
    Samples that came without an offset (tests, or a file that vanished) are kept whole.
    """

    CACHE = 512

    def __init__(self, path: Optional[Path] = None):
        self.path = Path(path) if path else None
        self.ids: list[str] = []
        self.steps: list[int] = []
        self.indexes: list[int] = []
        self.scores: list[Optional[float]] = []
        self.kls: list[Optional[float]] = []
        self.offsets: list[int] = []            # -1: kept in memory (self._whole)
        self.flags: dict[int, tuple[str, ...]] = {}   # suspicious samples: their monitor flags
        self.ordinal: dict[str, int] = {}
        self._whole: dict[int, dict] = {}
        self._cache: OrderedDict[int, dict] = OrderedDict()
        self._fh = None

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, samples: list[dict], offsets: Optional[list[int]] = None) -> list[int]:
        """Append new samples (a sample id already indexed is skipped); their ordinals."""
        new = []
        for i, s in enumerate(samples):
            sid = sample_id(s)
            if sid in self.ordinal:
                continue
            n = len(self.ids)
            self.ordinal[sid] = n
            self.ids.append(sid)
            self.steps.append(int(s.get("step") or 0))
            self.indexes.append(int(s.get("index") or 0))
            self.scores.append(_num(s.get("score")))
            self.kls.append(_num(s.get("kl")))
            flags = tuple(s.get("flags") or ()) + tuple(s.get("step_alerts") or ())
            if flags:  # a reward-hacking monitor flagged it, or tripped at its step
                self.flags[n] = flags
            off = offsets[i] if offsets is not None and self.path is not None else -1
            self.offsets.append(off)
            if off < 0:
                self._whole[n] = s
            new.append(n)
        return new

    def get(self, n: int) -> dict:
        if n in self._whole:
            return self._whole[n]
        s = self._cache.get(n)
        if s is not None:
            self._cache.move_to_end(n)
            return s
        s = self._read(self.offsets[n]) or {"id": self.ids[n], "step": self.steps[n], "index": self.indexes[n],
                                            "score": self.scores[n], "kl": self.kls[n]}
        self._cache[n] = s
        while len(self._cache) > self.CACHE:
            self._cache.popitem(last=False)
        return s

    def by_id(self, sid: str) -> Optional[dict]:
        n = self.ordinal.get(sid)
        return None if n is None else self.get(n)

    def _read(self, offset: int) -> Optional[dict]:
        try:
            if self._fh is None:
                self._fh = open(self.path, "rb")
            self._fh.seek(offset)
            return json.loads(self._fh.readline())
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def matches(self, text: str) -> set[int]:
        """Ordinals of the samples whose prompt or response contains ``text`` (any case).

        One pass over the raw file finds candidate lines (the needle as JSON writes it), then
        each candidate is parsed and checked; samples kept in memory are checked directly.
        """
        needle = text.lower()
        if not needle:
            return set()
        out = {n for n, s in self._whole.items() if text_matches(s, needle)}
        on_disk = [o for o in self.offsets if o >= 0]
        if not on_disk or self.path is None:
            return out
        if not needle.isascii():   # \\u escapes in the file do not lower-case: parse every line
            for n, off in enumerate(self.offsets):
                if off >= 0 and text_matches(self.get(n), needle):
                    out.add(n)
            return out
        key = json.dumps(needle)[1:-1].encode()
        sorted_offs = self.offsets if all(self.offsets[i] <= self.offsets[i + 1]
                                          for i in range(len(self.offsets) - 1)) else None
        try:
            with open(self.path, "rb") as f:
                data = f.read().lower()
        except OSError:
            return out
        seen = set()
        pos = data.find(key)
        while pos >= 0:
            start = data.rfind(b"\n", 0, pos) + 1
            if start not in seen:
                seen.add(start)
                if sorted_offs is not None:
                    i = bisect.bisect_left(sorted_offs, start)
                    n = i if i < len(sorted_offs) and sorted_offs[i] == start else None
                else:
                    n = next((k for k, o in enumerate(self.offsets) if o == start), None)
                if n is not None and text_matches(self.get(n), needle):
                    out.add(n)
            nl = data.find(b"\n", pos)
            if nl < 0:
                break
            pos = data.find(key, nl)
        return out
