"""Files written so that a crash never leaves a half-written one, and read while they are being
written: the one home of these primitives for the whole engine (and the console's editor).

- whole files: :func:`atomic_write_text` / :func:`atomic_write_json` (temp file, fsync, rename);
- JSONL: :func:`append_jsonl` (one complete line per write), :func:`iter_jsonl` (strict for
  user data, tolerant for files still being appended to), :func:`read_jsonl`, :class:`JsonlTail`;
- folders: :func:`durable_rename`, :func:`publish_folder` (build in a temp folder beside the
  target, then rename it into place), :func:`file_lock` (the ``filelock`` library);
- sizes: :func:`tree_size`, :func:`human_size`.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import filelock


def atomic_write_text(path: Path, text: str, mode: Optional[int] = None) -> None:
    """Write ``text`` to a temp file beside ``path``, fsync, rename. ``mode`` defaults to the
    existing file's mode (0644 for a new file)."""
    path = Path(path)
    if mode is None:
        mode = (path.stat().st_mode & 0o777) if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        fsync_dir(path.parent)  # the rename itself survives a power loss
    except OSError:
        pass


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that the names created or renamed in it survive a power loss."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (and ``root`` itself), deepest first."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def durable_rename(src: Path, dst: Path) -> None:
    """Rename a finished folder (or file) into place so that a power loss can never leave a
    renamed but empty one: its contents are fsynced before the rename, the parent after."""
    src, dst = Path(src), Path(dst)
    if src.is_dir():
        fsync_tree(src)
    else:
        fd = os.open(src, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.replace(src, dst)
    fsync_dir(dst.parent)


def tree_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def append_jsonl(path: Path, obj: Any) -> None:
    line = json.dumps(obj, separators=(",", ":"), allow_nan=True) + "\n"
    # O_APPEND with a single write keeps lines whole even with several writers
    view = memoryview(line.encode())
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            while view:  # a short write is followed by the one that names the error
                n = os.write(fd, view)
                if n <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
                view = view[n:]
        except OSError:
            try:
                os.ftruncate(fd, start)  # no partial line left behind (disk full, size limit)
            except OSError:
                pass
            raise
    finally:
        os.close(fd)


def json_object(line) -> Optional[dict]:
    """One line of a run-directory JSONL file as an object, or None when it is not one (the
    tolerant rule every reader of those files follows)."""
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


class JsonlError(ValueError):
    """A line of a JSONL file that strict reading refuses (names the file, line and column)."""


def iter_jsonl(path, *, strict: bool = False,
               error: type[Exception] = JsonlError) -> Iterator[tuple[int, dict]]:
    """Yield ``(line number, object)`` for each JSON-object line of a JSONL file.

    ``strict=False`` (run-directory files, appended to while they are read): a missing file is
    empty, a last line without its newline is still being written and is skipped, a line that
    is not a JSON object is skipped. ``strict=True`` (data a user hands in): a missing file,
    text that is not UTF-8, invalid JSON, a line that is not an object and a file with no
    object at all each raise ``error`` naming the file and line.
    """
    path = Path(path)
    if strict and not path.is_file():
        raise error(f"{path}: no such file")
    seen = False
    try:
        f = open(path, encoding="utf-8", errors="strict" if strict else "replace")
    except FileNotFoundError:
        return
    with f:
        lineno = 0
        while True:
            try:
                line = f.readline()
            except UnicodeDecodeError as e:
                raise error(f"{path}: line {lineno + 1}: not UTF-8 text ({e.reason})") from e
            if not line:
                break
            lineno += 1
            if not strict and not line.endswith("\n"):
                break  # a line still being written
            if not line.strip():
                continue
            if not strict:
                obj = json_object(line)
                if obj is not None:
                    yield lineno, obj
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}: line {lineno} col {e.colno}: invalid JSON: {e.msg}") from None
            if not isinstance(obj, dict):
                raise error(f"{path}: line {lineno}: expected a JSON object per line, got "
                            f"{type(obj).__name__}")
            seen = True
            yield lineno, obj
    if strict and not seen:
        raise error(f"{path}: the file is empty (no JSON objects)")


def read_jsonl(path) -> list[dict]:
    """Every complete JSON-object line of a run-directory file (tolerant: see :func:`iter_jsonl`)."""
    return [obj for _, obj in iter_jsonl(path)]


class LineTail:
    """Incremental reader of an append-only text file: complete new lines since the last read."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset = 0
        self._partial = b""

    def read_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        if not data:
            return []
        self.offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()  # b"" when data ended with a newline
        return [ln.decode("utf-8", "replace") for ln in lines if ln.strip()]


class JsonlTail(LineTail):
    """Incremental reader of an append-only JSONL file (history first, then new lines)."""

    def read_new(self) -> list[dict]:
        return [o for o in map(json_object, self.read_lines()) if o is not None]


@contextlib.contextmanager
def file_lock(path, on_wait: Optional[Callable[[], None]] = None):
    """Hold an exclusive lock on ``path`` (created if missing, left in place) across processes.
    ``on_wait`` is called once when another process holds it, before waiting for it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(path), thread_local=False, preserve_lock_file=True)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        if on_wait is not None:
            on_wait()
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def make_readable(folder: Path) -> None:
    """``mkdtemp`` makes 0700 folders: give a folder and its contents the usual umask-based modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for p in Path(folder).rglob("*"):
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def publish_folder(target: Path, write: Callable[[Path], None]) -> Path:
    """Build a folder atomically: ``write(tmp)`` fills a temp folder beside ``target``, which is
    then given the usual permissions and renamed into place (an existing ``target`` is moved
    aside first and removed after). A failure leaves no temp folder and ``target`` as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(tmp)
        make_readable(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
