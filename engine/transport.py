"""Shared-memory tensor transport: the data plane between PPO worker processes.

Tensors (token ids, masks, logprobs, values, scores, advantages, returns) move between the
supervisor and its ``spawn``-started workers through named shared-memory segments owned by the
run.  Control messages carry only a *descriptor*: a JSON-serialisable dict of names, shapes, dtypes
and offsets -- never pickled tensors.  The receiver gets zero-copy views into the segment.

Segments
--------
A segment is a plain file in the shm directory (``/dev/shm``; ``$RLHF_CONSOLE_SHM_DIR`` overrides
it, for tests) created with ``os.open`` + ``os.ftruncate`` + ``os.posix_fallocate`` and mapped
with ``mmap``.  ``multiprocessing.shared_memory`` is deliberately not used: in Python 3.11 its
resource tracker unlinks (and warns about) segments wrongly across ``spawn`` processes.
Space is reserved up front with ``posix_fallocate`` so a full ``/dev/shm`` raises
:class:`TransportError` at ``put`` time instead of killing the process with SIGBUS later.

Names are ``rlhfc_<ownerpid>_<runtag>_<role>_<seq>``:

* ``ownerpid`` -- pid of the run owner (the supervisor), *not* of the process that wrote it, so
  the supervisor can remove everything of its run (:func:`unlink_run_segments`) and a later start
  can recognise segments whose owner is gone (:func:`reap_stale_segments`);
* ``runtag`` -- short token of the run (``[A-Za-z0-9-]``, e.g. :func:`new_run_tag`, 8 hex chars);
* ``role`` -- the writing role (``actor``, ``critic``, ...; ``[A-Za-z0-9-]``);
* ``seq`` -- a counter; creation uses ``O_EXCL`` and skips taken numbers, so two arenas with the
  same role never clash (use one arena per role and process anyway, for readable names).

Descriptor
----------
``TensorArena.put`` returns::

    {"segment": "rlhfc_123_1a2b3c4d_actor_0" | None, "size": 4096, "ticket": 7,
     "tensors": [{"key": "ids", "dtype": "int64", "shape": [4, 16], "offset": 0, "nbytes": 512},
                 {"key": "h", "dtype": "float16", "shape": [2], "cuda_ipc": {...}},  # CUDA IPC
                 ...]}

``segment`` is ``None`` when no tensor went through shared memory (all were CUDA IPC).
``ticket`` identifies this ``put`` in the writing arena (used by ``release``).

Release / reuse protocol
------------------------
1. The writer calls ``desc = arena.put(tensors)`` and sends ``desc`` in a control message.
2. The receiver calls ``read_tensors(desc)`` (zero-copy views) or ``read_tensors(desc, copy=True)``
   (owned tensors) and uses / copies what it keeps.
3. The receiver tells the writer it is done (by the caller's own control message -- an ack, or
   the reply that carries its results).  Only then does the writer call ``arena.release(desc)``.
4. A released segment goes back to the arena's small free pool; a later ``put`` that fits reuses
   it (overwriting it), otherwise a new, bigger segment is created and too-small free ones are
   unlinked.  The pool keeps at most ``max_free`` released segments; extra ones are unlinked.
5. ``arena.close()`` unlinks every segment the arena created, in use or free.

Zero-copy views returned by ``read_tensors`` must not be used after step 3: the writer may then
overwrite the memory.  (They never dangle: the mapping stays alive as long as a view exists, and
unlinking only removes the name; the memory is freed when the last mapping goes away.)  Callers
that keep tensors beyond the acknowledgement must use ``copy=True``.

Cleanup on every exit path
--------------------------
* normal end / exception: ``arena.close()``; in addition every arena registers a
  ``weakref.finalize`` that unlinks its segments when the arena is garbage-collected or at
  interpreter exit (also in ``spawn`` children, which leave through ``sys.exit``);
* SIGTERM: :func:`install_cleanup` (atexit + chained SIGTERM handler);
* a worker killed with SIGKILL: the supervisor calls :func:`unlink_run_segments` (names carry
  the supervisor's pid, so this finds what the dead worker created);
* the supervisor itself killed: the next start calls :func:`reap_stale_segments`, which removes
  ``rlhfc_*`` segments whose owner process is gone (pid-reuse aware) and returns their names.

Cleanup hooks only act in the process that created the arena (a forked child inheriting them
does nothing), so a fork cannot unlink its parent's segments.

CUDA IPC
--------
``put(..., cuda_ipc=True)`` sends CUDA tensors as CUDA IPC handles obtained from
``torch.multiprocessing.reductions.reduce_tensor``; the handle parts are encoded as JSON (bytes as
base64) and ``read_tensors`` rebuilds the tensor with ``rebuild_cuda_tensor``.  The writer keeps
the CUDA tensor alive until ``release``.  A CUDA descriptor should be read by exactly one
consumer process (torch's IPC reference counting assumes one rebuild per share).  Without
``cuda_ipc`` CUDA tensors are copied to host and travel through the segment.
"""

from __future__ import annotations

import atexit
import base64
import errno
import mmap
import os
import signal
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from engine.segments import (
    SEGMENT_PREFIX,
    TransportError,
    _check_token,
    _unlink,
    list_segments,
    new_run_tag,
    parse_segment_name,
    reap_stale_segments,
    segment_name,
    shm_dir,
    unlink_run_segments,
)

__all__ = [
    "TransportError",
    "TensorArena",
    "read_tensors",
    "unlink_run_segments",
    "reap_stale_segments",
    "install_cleanup",
    "new_run_tag",
    "shm_dir",
    "segment_name",
    "parse_segment_name",
    "list_segments",
    "drop_reader_cache",
    "SEGMENT_PREFIX",
    "ALIGNMENT",
]

ALIGNMENT = 64  # byte alignment of every tensor inside a segment
_PAGE = mmap.PAGESIZE

_DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name)
    for name in (
        "bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
        "float16", "bfloat16", "float32", "float64", "complex64", "complex128",
        "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
    )
    if isinstance(getattr(torch, name, None), torch.dtype)
}
_DTYPE_NAMES = {dt: name for name, dt in _DTYPES.items()}


# ----------------------------------------------------------------------------- writer


def _align(n: int, a: int = ALIGNMENT) -> int:
    return (n + a - 1) // a * a


@dataclass
class _Segment:
    name: str
    size: int
    mm: mmap.mmap
    buf: torch.Tensor  # uint8 view of the whole mapping
    ticket: int | None = None  # ticket of the put currently occupying it; None when free


@dataclass
class _ArenaState:
    """What the cleanup hooks need; no reference back to the arena (for weakref.finalize)."""

    creator_pid: int
    names: set[str] = field(default_factory=set)

    def unlink_all(self) -> list[str]:
        if os.getpid() != self.creator_pid:  # inherited by a fork: not ours to remove
            return []
        removed = [n for n in sorted(self.names) if _unlink(n)]
        self.names.clear()
        return removed


class TensorArena:
    """Writer side: packs dicts of tensors into shared-memory segments of one run.

    ``TensorArena(owner_pid, run_tag, role)``; ``owner_pid`` is the supervisor's pid (the run
    owner), whichever process the arena lives in.  See the module docstring for the protocol.
    """

    def __init__(self, owner_pid: int, run_tag: str, role: str, *, max_free: int = 4):
        self.owner_pid = int(owner_pid)
        self.run_tag = _check_token("run_tag", run_tag)
        self.role = _check_token("role", role)
        self.max_free = max(0, int(max_free))
        self._lock = threading.RLock()
        self._seq = 0
        self._ticket = 0
        self._segments: dict[str, _Segment] = {}
        self._free: list[str] = []
        self._tickets: dict[int, tuple[str | None, list[torch.Tensor]]] = {}
        self._closed = False
        self._state = _ArenaState(os.getpid())
        self._finalizer = weakref.finalize(self, self._state.unlink_all)

    # -- introspection
    @property
    def segment_names(self) -> list[str]:
        """Names of all segments this arena currently owns (in use or free)."""
        with self._lock:
            return sorted(self._segments)

    @property
    def free_segment_names(self) -> list[str]:
        with self._lock:
            return list(self._free)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "TensorArena":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"TensorArena(owner_pid={self.owner_pid}, run_tag={self.run_tag!r}, role={self.role!r}, "
                f"segments={len(self._segments)}, free={len(self._free)})")

    # -- segments
    def _create_segment(self, size: int) -> _Segment:
        size = max(_PAGE, (size + _PAGE - 1) // _PAGE * _PAGE)
        directory = shm_dir()
        for _ in range(10_000):
            name = segment_name(self.owner_pid, self.run_tag, self.role, self._seq)
            self._seq += 1
            path = os.path.join(directory, name)
            self._state.names.add(name)  # before creation: a signal in between still cleans up
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                self._state.names.discard(name)
                continue
            except OSError as e:
                self._state.names.discard(name)
                raise TransportError(f"cannot create shared-memory segment {path}: {e}") from e
            try:
                os.ftruncate(fd, size)
                try:
                    os.posix_fallocate(fd, 0, size)
                except OSError as e:
                    if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                        raise
                mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            except OSError as e:
                _unlink(name)
                self._state.names.discard(name)
                hint = " (shared memory full? /dev/shm is small in containers: --shm-size)" if e.errno == errno.ENOSPC else ""
                raise TransportError(f"cannot allocate {size} bytes for segment {path}: {e}{hint}") from e
            finally:
                os.close(fd)
            seg = _Segment(name, size, mm, torch.frombuffer(mm, dtype=torch.uint8))
            self._segments[name] = seg
            return seg
        raise TransportError(f"no free segment name for {self.run_tag}/{self.role}")

    def _drop_segment(self, name: str) -> None:
        seg = self._segments.pop(name, None)
        _unlink(name)
        self._state.names.discard(name)
        if name in self._free:
            self._free.remove(name)
        # The mapping is not closed explicitly: views made by torch.frombuffer do not pin the
        # buffer export, so mmap.close() could leave dangling tensors.  Dropping the reference
        # unmaps it once nothing uses it.
        del seg

    def _acquire(self, size: int) -> _Segment:
        fitting = [n for n in self._free if self._segments[n].size >= size]
        if fitting:
            name = min(fitting, key=lambda n: self._segments[n].size)
            self._free.remove(name)
            return self._segments[name]
        # Grow: free segments too small for this batch are unlikely to be useful again.
        for name in list(self._free):
            self._drop_segment(name)
        return self._create_segment(size)

    # -- API
    def put(self, tensors: dict[str, torch.Tensor], *, cuda_ipc: bool = False) -> dict:
        """Write ``tensors`` into one segment; return the JSON-able descriptor.

        CPU tensors of any dtype (incl. bfloat16, bool, 0-dim, empty) go through shared memory.
        CUDA tensors are sent as IPC handles when ``cuda_ipc`` is true, else copied to host.
        Non-contiguous tensors are made contiguous.  Autograd history is not transferred.
        """
        if not isinstance(tensors, dict):
            raise TransportError(f"put() takes a dict of tensors, got {type(tensors).__name__}")
        with self._lock:
            if self._closed:
                raise TransportError("put() on a closed TensorArena")
            host: list[tuple[str, torch.Tensor]] = []
            entries: list[dict] = []
            keep: list[torch.Tensor] = []
            for key, t in tensors.items():
                if not isinstance(key, str):
                    raise TransportError(f"tensor keys must be str, got {key!r}")
                if not isinstance(t, torch.Tensor):
                    raise TransportError(f"value for {key!r} is {type(t).__name__}, not a torch.Tensor")
                if t.layout != torch.strided:
                    raise TransportError(f"tensor {key!r} has layout {t.layout}; only dense tensors are supported")
                if t.dtype not in _DTYPE_NAMES:
                    raise TransportError(f"tensor {key!r} has unsupported dtype {t.dtype}")
                t = t.detach()
                if t.is_cuda and cuda_ipc:
                    ipc_t = t.contiguous()
                    keep.append(ipc_t)
                    entries.append({"key": key, "dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                                    "cuda_ipc": _encode_cuda_ipc(ipc_t)})
                    continue
                if t.device.type != "cpu":
                    t = t.cpu()
                host.append((key, t.contiguous()))

            # Layout: every tensor at an ALIGNMENT-aligned offset.
            layout = []
            offset = 0
            for key, t in host:
                nbytes = t.numel() * t.element_size()
                layout.append((key, t, offset, nbytes))
                offset = _align(offset + nbytes)
            total = offset

            seg = self._acquire(total) if host else None
            self._ticket += 1
            ticket = self._ticket
            try:
                for key, t, off, nbytes in layout:
                    if nbytes:
                        seg.buf[off:off + nbytes].copy_(t.reshape(-1).view(torch.uint8))
                    entries.append({"key": key, "dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                                    "offset": off, "nbytes": nbytes})
            except BaseException:
                if seg is not None:
                    self._free.append(seg.name)
                raise
            if seg is not None:
                seg.ticket = ticket
            self._tickets[ticket] = (seg.name if seg else None, keep)
            order = {k: i for i, k in enumerate(tensors)}
            entries.sort(key=lambda e: order[e["key"]])
            return {"segment": seg.name if seg else None, "size": seg.size if seg else 0,
                    "ticket": ticket, "tensors": entries}

    def release(self, descriptor: dict) -> None:
        """Mark the segment of ``descriptor`` reusable (call once the receiver has acknowledged).

        Raises :class:`TransportError` for a descriptor this arena did not produce or already
        released (a double release could otherwise free a segment reused by a later ``put``).
        """
        if not isinstance(descriptor, dict):
            raise TransportError("release() takes the descriptor returned by put()")
        with self._lock:
            if self._closed:
                return
            ticket = descriptor.get("ticket")
            entry = self._tickets.pop(ticket, None) if isinstance(ticket, int) else None
            if entry is None:
                raise TransportError(
                    f"release(): ticket {ticket!r} (segment {descriptor.get('segment')!r}) is not in use "
                    f"in this arena (never put here, or already released)")
            name, keep = entry
            keep.clear()  # CUDA IPC tensors: the consumer is done with them
            if name is None or name not in self._segments:
                return
            seg = self._segments[name]
            seg.ticket = None
            self._free.append(name)
            while len(self._free) > self.max_free:
                smallest = min(self._free, key=lambda n: self._segments[n].size)
                self._drop_segment(smallest)

    def close(self) -> list[str]:
        """Unlink every segment this arena created; return their names.  Idempotent."""
        with self._lock:
            self._closed = True
            removed = self._state.unlink_all()
            self._segments.clear()
            self._free.clear()
            self._tickets.clear()
            return removed


# ----------------------------------------------------------------------------- CUDA IPC


def _enc(v: Any) -> Any:
    if isinstance(v, bytes):
        return {"b64": base64.b64encode(v).decode("ascii")}
    if isinstance(v, torch.Size):
        return list(v)
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, torch.dtype):
        return _DTYPE_NAMES[v]
    if isinstance(v, torch.device):
        return v.index if v.index is not None else 0
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TransportError(f"cannot encode CUDA IPC field of type {type(v).__name__}")


def _dec_bytes(v: Any) -> Any:
    if isinstance(v, dict) and set(v) == {"b64"}:
        return base64.b64decode(v["b64"])
    return v


_STORAGE_CLASSES = {"TypedStorage": torch.storage.TypedStorage, "UntypedStorage": torch.UntypedStorage}


def _encode_cuda_ipc(t: torch.Tensor) -> dict:
    from torch.multiprocessing.reductions import rebuild_cuda_tensor, reduce_tensor

    rebuild, args = reduce_tensor(t)
    if rebuild is not rebuild_cuda_tensor:
        raise TransportError(f"unexpected reduction {rebuild!r} for a CUDA tensor")
    (_tensor_cls, size, stride, tensor_offset, storage_cls, dtype, device, handle,
     storage_size_bytes, storage_offset_bytes, _requires_grad, ref_counter_handle,
     ref_counter_offset, event_handle, event_sync_required) = args
    if storage_cls.__name__ not in _STORAGE_CLASSES:
        raise TransportError(f"unexpected storage class {storage_cls!r}")
    return {
        "size": _enc(size), "stride": _enc(stride), "tensor_offset": int(tensor_offset),
        "storage_cls": storage_cls.__name__, "dtype": _enc(dtype), "device": _enc(device),
        "handle": _enc(handle), "storage_size_bytes": int(storage_size_bytes),
        "storage_offset_bytes": int(storage_offset_bytes),
        "ref_counter_handle": _enc(ref_counter_handle), "ref_counter_offset": int(ref_counter_offset),
        "event_handle": _enc(event_handle), "event_sync_required": bool(event_sync_required),
    }


def _decode_cuda_ipc(key: str, ipc: Any) -> torch.Tensor:
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    try:
        storage_cls = _STORAGE_CLASSES[ipc["storage_cls"]]
        dtype = _DTYPES[ipc["dtype"]]
        return rebuild_cuda_tensor(
            torch.Tensor, torch.Size(ipc["size"]), tuple(ipc["stride"]), int(ipc["tensor_offset"]),
            storage_cls, dtype, int(ipc["device"]), _dec_bytes(ipc["handle"]),
            int(ipc["storage_size_bytes"]), int(ipc["storage_offset_bytes"]), False,
            _dec_bytes(ipc["ref_counter_handle"]), int(ipc["ref_counter_offset"]),
            _dec_bytes(ipc["event_handle"]), bool(ipc["event_sync_required"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise TransportError(f"tensor {key!r}: malformed cuda_ipc entry ({e!r})") from e


# ----------------------------------------------------------------------------- reader


@dataclass
class _Mapping:
    ino: int
    dev: int
    size: int
    mm: mmap.mmap


_READER_CACHE: "OrderedDict[str, _Mapping]" = OrderedDict()
_READER_LOCK = threading.Lock()
_READER_CACHE_MAX = 32


def drop_reader_cache() -> None:
    """Forget every cached mapping of this process (views already handed out stay valid)."""
    with _READER_LOCK:
        _READER_CACHE.clear()


def _prune_reader_cache(keep: str) -> None:
    # Mappings of unlinked/replaced segments would pin memory: drop them (views keep theirs).
    directory = shm_dir()
    for name in list(_READER_CACHE):
        if name == keep:
            continue
        m = _READER_CACHE[name]
        try:
            st = os.stat(os.path.join(directory, name))
            if st.st_ino == m.ino and st.st_dev == m.dev:
                continue
        except FileNotFoundError:
            pass
        del _READER_CACHE[name]
    while len(_READER_CACHE) > _READER_CACHE_MAX:
        _READER_CACHE.popitem(last=False)


def _map_segment(name: str, need: int) -> _Mapping:
    path = os.path.join(shm_dir(), name)
    with _READER_LOCK:
        cached = _READER_CACHE.get(name)
        if cached is not None:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                del _READER_CACHE[name]
                raise TransportError(f"segment {name} does not exist (already unlinked, or the writer died)") from None
            if st.st_ino == cached.ino and st.st_dev == cached.dev and cached.size >= need:
                _READER_CACHE.move_to_end(name)
                return cached
            del _READER_CACHE[name]
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise TransportError(f"segment {name} does not exist (already unlinked, or the writer died)") from None
        except OSError as e:
            raise TransportError(f"cannot open segment {path}: {e}") from e
        try:
            st = os.fstat(fd)
            if st.st_size < need:
                raise TransportError(f"segment {name} is {st.st_size} bytes, descriptor needs {need}")
            mm = mmap.mmap(fd, st.st_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        m = _Mapping(st.st_ino, st.st_dev, st.st_size, mm)
        _READER_CACHE[name] = m
        _prune_reader_cache(keep=name)
        return m


def _int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TransportError(f"descriptor field {what} must be an int, got {v!r}")
    return v


def _validate(descriptor: Any) -> tuple[str | None, int, list[dict]]:
    if not isinstance(descriptor, dict):
        raise TransportError(f"descriptor must be a dict, got {type(descriptor).__name__}")
    for k in ("segment", "size", "tensors"):
        if k not in descriptor:
            raise TransportError(f"descriptor lacks {k!r}")
    name = descriptor["segment"]
    size = _int(descriptor["size"], "size")
    tensors = descriptor["tensors"]
    if name is not None and (not isinstance(name, str) or parse_segment_name(name) is None):
        raise TransportError(f"descriptor names no valid segment: {name!r}")
    if size < 0:
        raise TransportError(f"descriptor size {size} is negative")
    if not isinstance(tensors, list):
        raise TransportError("descriptor 'tensors' must be a list")
    seen = set()
    for e in tensors:
        if not isinstance(e, dict):
            raise TransportError(f"tensor entry must be a dict, got {e!r}")
        key = e.get("key")
        if not isinstance(key, str):
            raise TransportError(f"tensor entry without a str key: {e!r}")
        if key in seen:
            raise TransportError(f"duplicate tensor key {key!r}")
        seen.add(key)
        dtype = e.get("dtype")
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise TransportError(f"tensor {key!r}: unknown dtype {dtype!r}")
        shape = e.get("shape")
        if not isinstance(shape, list) or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in shape):
            raise TransportError(f"tensor {key!r}: bad shape {shape!r}")
        if "cuda_ipc" in e:
            continue
        off = _int(e.get("offset"), f"{key}.offset")
        nbytes = _int(e.get("nbytes"), f"{key}.nbytes")
        numel = 1
        for s in shape:
            numel *= s
        itemsize = _DTYPES[dtype].itemsize
        if nbytes != numel * itemsize:
            raise TransportError(f"tensor {key!r}: nbytes {nbytes} != {numel} x {itemsize} for shape {shape} {dtype}")
        if off < 0 or off + nbytes > size:
            raise TransportError(f"tensor {key!r}: bytes [{off}, {off + nbytes}) outside the segment of {size} bytes")
        if off % itemsize:
            raise TransportError(f"tensor {key!r}: offset {off} not aligned to {itemsize}")
        if nbytes and name is None:
            raise TransportError(f"tensor {key!r} has data but the descriptor names no segment")
    return name, size, tensors


def read_tensors(descriptor: dict, *, copy: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a descriptor made by :meth:`TensorArena.put` (possibly in another process).

    With ``copy=False`` (default) they are zero-copy views into the shared segment: valid only
    until the receiver acknowledges (the writer may then reuse the memory).  Callers that keep
    tensors must pass ``copy=True`` to get owned tensors.  The mapping of a segment is cached per
    process (and re-opened if the segment was replaced); views keep their mapping alive.
    """
    name, size, entries = _validate(descriptor)
    mapping = None
    if name is not None and any("cuda_ipc" not in e for e in entries):
        mapping = _map_segment(name, size)
    out: dict[str, torch.Tensor] = {}
    for e in entries:
        key, dtype, shape = e["key"], _DTYPES[e["dtype"]], e["shape"]
        if "cuda_ipc" in e:
            t = _decode_cuda_ipc(key, e["cuda_ipc"])
            if t.dtype != dtype or list(t.shape) != shape:
                raise TransportError(f"tensor {key!r}: CUDA IPC tensor is {t.dtype}{list(t.shape)}, descriptor says {dtype}{shape}")
            out[key] = t.clone() if copy else t
            continue
        nbytes = e["nbytes"]
        if nbytes == 0:
            out[key] = torch.empty(shape, dtype=dtype)
            continue
        raw = torch.frombuffer(mapping.mm, dtype=torch.uint8, count=nbytes, offset=e["offset"])
        t = raw.view(dtype).reshape(shape)
        out[key] = t.clone() if copy else t
    return out


# ----------------------------------------------------------------------------- cleanup


_SIGTERM_LOCK = threading.Lock()


def install_cleanup(target: "TensorArena | Callable[[], Any]") -> Callable[[], None]:
    """Run ``target`` (an arena's ``close`` or any callable) at exit and on SIGTERM.

    Registers an atexit hook and a SIGTERM handler that runs the cleanup, then chains to the
    previous SIGTERM handler if it was a Python callable; if it was the default action (or
    ``SIG_IGN``/unknown) the process exits with status 128+15 via ``SystemExit(143)``, so
    ``finally`` blocks and other atexit hooks still run.  The cleanup runs at most once and only
    in the installing process (not in forks).  Must be called from the main thread to install
    the signal handler (elsewhere only atexit is registered).  Returns the idempotent cleanup
    callable, which the caller may also invoke directly.
    """
    fn = target.close if isinstance(target, TensorArena) else target
    if not callable(fn):
        raise TypeError("install_cleanup() takes a TensorArena or a callable")
    pid = os.getpid()
    done = threading.Event()

    def cleanup() -> None:
        if os.getpid() != pid or done.is_set():
            return
        done.set()
        fn()

    atexit.register(cleanup)
    if threading.current_thread() is threading.main_thread():
        with _SIGTERM_LOCK:
            previous = signal.getsignal(signal.SIGTERM)

            def on_sigterm(signum, frame):
                try:
                    cleanup()
                finally:
                    if callable(previous):
                        previous(signum, frame)
                    else:
                        raise SystemExit(128 + signum)

            signal.signal(signal.SIGTERM, on_sigterm)
    return cleanup
