"""Shared-memory transport: real spawn processes, real /dev/shm."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time

import pytest
import torch

from engine.transport import (
    TensorArena,
    TransportError,
    install_cleanup,
    list_segments,
    new_run_tag,
    read_tensors,
    reap_stale_segments,
    shm_dir,
    unlink_run_segments,
)

CTX = mp.get_context("spawn")
WAIT_S = 60  # generous: children import torch on a busy 2-core machine


# ----------------------------------------------------------------------------- helpers


@pytest.fixture
def tag():
    """A unique run tag; fails the test if any segment named with it is left behind."""
    t = new_run_tag()
    yield t
    leftover = list_segments(run_tag=t)
    for name in leftover:
        os.unlink(os.path.join(shm_dir(), name))
    assert leftover == [], f"segments left behind: {leftover}"


def sample_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "ids": torch.randint(0, 50_000, (4, 33), generator=g),
        "mask": torch.rand(4, 33, generator=g) > 0.3,
        "logprobs": torch.randn(4, 33, generator=g),
        "bf16": torch.randn(3, 5, generator=g).to(torch.bfloat16),
        "f16": torch.randn(7, generator=g).to(torch.float16),
        "f64": torch.randn(2, 3, 4, dtype=torch.float64, generator=g),
        "i32": torch.arange(-5, 6, dtype=torch.int32),
        "u8": torch.arange(0, 255, 3, dtype=torch.uint8),
        "scalar": torch.tensor(2.5),
        "scalar_int": torch.tensor(7),
        "empty": torch.empty(0, 4),
        "empty_bool": torch.zeros(0, dtype=torch.bool),
        "noncontig": torch.arange(20.0).reshape(4, 5).t(),
    }


def checksum(tensors: dict[str, torch.Tensor]) -> dict:
    return {k: [str(t.dtype), list(t.shape), float(t.double().sum()), float((t.double() * 1.5).abs().max()) if t.numel() else 0.0]
            for k, t in tensors.items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def mapped_ranges(name: str) -> list[tuple[int, int]]:
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            if line.rstrip().endswith("/" + name):
                lo, hi = line.split()[0].split("-")
                out.append((int(lo, 16), int(hi, 16)))
    return out


def recv(conn, what: str):
    assert conn.poll(WAIT_S), f"child did not answer ({what})"
    return conn.recv()


def stop(proc) -> None:
    if proc.is_alive():
        proc.kill()
    proc.join(10)


# ----------------------------------------------------------------------------- child targets


def child_reader_server(conn) -> None:
    """Reads descriptors sent as JSON; answers checksums, holds views, peeks into held views."""
    held: dict[str, torch.Tensor] = {}
    while True:
        msg = conn.recv()
        cmd = msg["cmd"]
        if cmd == "stop":
            conn.send("bye")
            return
        desc = json.loads(msg["desc"])
        if cmd == "checksum":
            conn.send(checksum(read_tensors(desc)))
        elif cmd == "hold":
            held = read_tensors(desc)
            conn.send(checksum(held))
        elif cmd == "peek":
            conn.send(held[msg["key"]].tolist())
        elif cmd == "read_missing":
            try:
                read_tensors(desc)
                conn.send("no error")
            except TransportError as e:
                conn.send(f"TransportError: {e}")
        elif cmd == "cuda":
            t = read_tensors(desc)
            conn.send(checksum({k: v.cpu() for k, v in t.items()}))
            del t
            torch.cuda.synchronize()


def child_make_segments(conn, owner_pid, tag: str, n: int) -> None:
    """Creates n segments (owner ``owner_pid``, or itself if None), reports their names, waits."""
    arena = TensorArena(owner_pid if owner_pid is not None else os.getpid(), tag, "actor")
    names = [arena.put({"x": torch.full((1000,), float(i))})["segment"] for i in range(n)]
    conn.send(names)
    time.sleep(WAIT_S)


def child_cleanup_then(conn, owner_pid: int, tag: str, mode: str) -> None:
    """install_cleanup, create segments, then raise / wait for SIGTERM."""
    if mode == "sigterm_chained":
        def previous(signum, frame):
            os._exit(7)  # proves it was called: only after our cleanup ran
        signal.signal(signal.SIGTERM, previous)
    arena = TensorArena(owner_pid, tag, "critic")
    install_cleanup(arena)
    names = [arena.put({"v": torch.randn(64), "s": torch.tensor(1.0)})["segment"] for _ in range(3)]
    conn.send(names)
    if mode == "raise":
        raise RuntimeError("boom (expected by the test)")
    time.sleep(WAIT_S)


# ----------------------------------------------------------------------------- in-process


def test_roundtrip_dtypes_shapes_and_views(tag):
    batch = sample_batch()
    with TensorArena(os.getpid(), tag, "actor") as arena:
        desc = arena.put(batch)
        desc = json.loads(json.dumps(desc))  # must be plain JSON
        assert desc["segment"].startswith(f"rlhfc_{os.getpid()}_{tag}_actor_")
        assert all(e["offset"] % 64 == 0 for e in desc["tensors"])
        views = read_tensors(desc)
        assert_same(views, {k: v.contiguous() for k, v in batch.items()})
        copies = read_tensors(desc, copy=True)
        assert_same(copies, views)

        # zero-copy: non-empty views point into this process's mapping of the segment
        ranges = mapped_ranges(desc["segment"])
        assert ranges
        for k, v in views.items():
            if v.numel():
                assert any(lo <= v.data_ptr() < hi for lo, hi in ranges), k
        for k, v in copies.items():
            if v.numel():
                assert not any(lo <= v.data_ptr() < hi for lo, hi in ranges), k
        # a second reader view sees writes through the first (same shared pages), copies don't
        again = read_tensors(desc)
        views["logprobs"][0, 0] = 123.0
        assert again["logprobs"][0, 0].item() == 123.0
        assert copies["logprobs"][0, 0].item() != 123.0
    assert list_segments(run_tag=tag) == []


def test_reuse_after_release(tag):
    arena = TensorArena(os.getpid(), tag, "critic", max_free=2)
    try:
        a = arena.put({"x": torch.ones(2000)})
        b = arena.put({"x": torch.ones(2000)})  # a still in use: new segment
        assert a["segment"] != b["segment"]
        arena.release(a)
        c = arena.put({"x": torch.full((100,), 3.0), "m": torch.ones(5, dtype=torch.bool)})
        assert c["segment"] == a["segment"]  # reused after release
        assert torch.equal(read_tensors(c)["x"], torch.full((100,), 3.0))
        with pytest.raises(TransportError):
            arena.release(a)  # stale ticket: would free c's segment
        arena.release(b)
        arena.release(c)
        with pytest.raises(TransportError):
            arena.release(c)  # double release
        assert len(arena.free_segment_names) == 2
        # grow: nothing free is big enough -> new segment, too-small free ones unlinked
        big = arena.put({"x": torch.ones(1_000_000)})
        assert big["segment"] not in (a["segment"], b["segment"])
        assert arena.segment_names == [big["segment"]]
        assert list_segments(run_tag=tag) == [big["segment"]]
        arena.release(big)
        # pool cap
        ds = [arena.put({"x": torch.ones(10)}) for _ in range(4)]
        for d in ds:
            arena.release(d)
        assert len(arena.free_segment_names) <= 2
        assert len(list_segments(run_tag=tag)) <= 2
    finally:
        arena.close()


def test_close_leaves_nothing_and_reader_notices(tag):
    arena = TensorArena(os.getpid(), tag, "reward")
    descs = [arena.put({"x": torch.randn(n)}) for n in (10, 10_000, 100_000)]
    arena.release(descs[0])
    read_tensors(descs[1])  # cached mapping
    assert len(list_segments(run_tag=tag)) == 3
    removed = arena.close()
    assert sorted(removed) == sorted(d["segment"] for d in descs)
    assert list_segments(run_tag=tag) == []
    assert arena.close() == []  # idempotent
    with pytest.raises(TransportError, match="does not exist"):
        read_tensors(descs[1])
    with pytest.raises(TransportError):
        arena.put({"x": torch.ones(1)})


def test_reader_remaps_replaced_segment(tag):
    a1 = TensorArena(os.getpid(), tag, "actor")
    d1 = a1.put({"x": torch.ones(16)})
    assert read_tensors(d1)["x"].sum().item() == 16
    a1.close()
    with TensorArena(os.getpid(), tag, "actor") as a2:  # same name again, new inode
        d2 = a2.put({"x": torch.full((16,), 2.0)})
        assert d2["segment"] == d1["segment"]
        assert read_tensors(d2)["x"].sum().item() == 32


def test_bad_descriptors(tag):
    with TensorArena(os.getpid(), tag, "actor") as arena:
        good = arena.put({"x": torch.arange(10, dtype=torch.float32)})

        def bad(**changes):
            d = json.loads(json.dumps(good))
            entry = changes.pop("entry", {})
            d.update(changes)
            d["tensors"][0].update(entry)
            return d

        cases = [
            ("must be a dict", [1, 2]),
            ("lacks", {"segment": good["segment"]}),
            ("unknown dtype", bad(entry={"dtype": "float128"})),
            ("unknown dtype", bad(entry={"dtype": ["float32"]})),
            ("outside the segment", bad(entry={"offset": good["size"] - 8})),
            ("outside the segment", bad(entry={"offset": -64})),
            ("nbytes", bad(entry={"nbytes": 12})),
            ("bad shape", bad(entry={"shape": [-1]})),
            ("not aligned", bad(entry={"offset": 2})),
            ("no valid segment", bad(segment="../../etc/passwd")),
            ("does not exist", bad(segment=f"rlhfc_{os.getpid()}_{tag}_nosuch_0")),
            ("descriptor needs", bad(size=good["size"] * 4)),
        ]
        for expected, desc in cases:
            with pytest.raises(TransportError, match=expected):
                read_tensors(desc)
        with pytest.raises(TransportError):
            arena.put({"x": [1, 2, 3]})
        with pytest.raises(TransportError):
            TensorArena(os.getpid(), "bad_tag", "actor")
        with pytest.raises(TransportError):
            arena.release({"segment": good["segment"], "ticket": 999})


def test_reap_respects_live_owner_and_pid_reuse(tag):
    # Fake segments owned by this (live) process: one fresh, one older than this process's
    # start (as if our pid had been recycled from the segment's dead owner).
    d = shm_dir()
    fresh = f"rlhfc_{os.getpid()}_{tag}_actor_0"
    recycled = f"rlhfc_{os.getpid()}_{tag}_actor_1"
    for name in (fresh, recycled):
        with open(os.path.join(d, name), "wb") as f:
            f.write(b"\0" * 64)
    past = time.time() - 10 * 24 * 3600
    os.utime(os.path.join(d, recycled), (past, past))
    removed = reap_stale_segments()
    assert recycled in removed
    assert fresh not in removed
    assert list_segments(run_tag=tag) == [fresh]
    assert unlink_run_segments(os.getpid(), tag) == [fresh]


# ----------------------------------------------------------------------------- processes


def test_child_reads_json_descriptor_zero_copy(tag):
    parent, child = CTX.Pipe()
    proc = CTX.Process(target=child_reader_server, args=(child,), daemon=True)
    proc.start()
    try:
        with TensorArena(os.getpid(), tag, "actor") as arena:
            batch = sample_batch()
            desc = arena.put(batch)
            parent.send({"cmd": "checksum", "desc": json.dumps(desc)})
            assert recv(parent, "checksum") == checksum({k: v.contiguous() for k, v in batch.items()})

            # zero-copy across processes: a write into the shared segment after the child
            # took its views (before release) is visible in the child's views
            d2 = arena.put({"x": torch.zeros(8), "y": torch.zeros(3, dtype=torch.bfloat16)})
            parent.send({"cmd": "hold", "desc": json.dumps(d2)})
            recv(parent, "hold")
            mine = read_tensors(d2)
            mine["x"][3] = 42.0
            mine["y"][1] = 1.5
            parent.send({"cmd": "peek", "desc": "null", "key": "x"})
            assert recv(parent, "peek")[3] == 42.0
            parent.send({"cmd": "peek", "desc": "null", "key": "y"})
            assert recv(parent, "peek")[1] == 1.5
            arena.release(desc)
            arena.release(d2)

            # reuse: the child's cached mapping of a reused segment sees the new contents
            d3 = arena.put({"ids": torch.arange(100)})
            assert d3["segment"] in (desc["segment"], d2["segment"])
            parent.send({"cmd": "checksum", "desc": json.dumps(d3)})
            assert recv(parent, "reuse")["ids"][2] == float(sum(range(100)))
        parent.send({"cmd": "read_missing", "desc": json.dumps(d3)})
        assert "does not exist" in recv(parent, "missing")
        parent.send({"cmd": "stop"})
        recv(parent, "stop")
        proc.join(WAIT_S)
        assert proc.exitcode == 0
    finally:
        stop(proc)


def test_sigkilled_writer_then_unlink_run_segments(tag):
    parent, child = CTX.Pipe()
    proc = CTX.Process(target=child_make_segments, args=(child, os.getpid(), tag, 3), daemon=True)
    proc.start()
    try:
        names = recv(parent, "names")
        assert sorted(names) == list_segments(os.getpid(), tag)
        proc.kill()
        proc.join(WAIT_S)
        assert proc.exitcode == -signal.SIGKILL
        assert list_segments(os.getpid(), tag) == sorted(names)  # SIGKILL cleans nothing
        assert not set(names) & set(reap_stale_segments())  # owner (we) alive: kept
        assert unlink_run_segments(os.getpid(), tag) == sorted(names)
        assert list_segments(run_tag=tag) == []
    finally:
        stop(proc)


def test_reap_stale_segments_of_dead_owner(tag):
    with TensorArena(os.getpid(), tag, "reward") as live:
        live_desc = live.put({"x": torch.ones(4)})
        parent, child = CTX.Pipe()
        proc = CTX.Process(target=child_make_segments, args=(child, None, tag, 2), daemon=True)
        proc.start()
        try:
            names = recv(parent, "names")
            assert all(n.startswith(f"rlhfc_{proc.pid}_{tag}_") for n in names)
            assert not set(names) & set(reap_stale_segments())  # owner alive: kept
            proc.kill()
            proc.join(WAIT_S)
            removed = reap_stale_segments()
            assert set(names) <= set(removed)
            assert live_desc["segment"] not in removed
            assert list_segments(run_tag=tag) == [live_desc["segment"]]
        finally:
            stop(proc)
    assert list_segments(run_tag=tag) == []


@pytest.mark.parametrize("mode,exitcode", [("raise", 1), ("sigterm", 128 + 15), ("sigterm_chained", 7)])
def test_install_cleanup_on_exception_and_sigterm(tag, mode, exitcode):
    parent, child = CTX.Pipe()
    proc = CTX.Process(target=child_cleanup_then, args=(child, os.getpid(), tag, mode), daemon=True)
    proc.start()
    try:
        names = recv(parent, "names")
        assert len(names) == 3 and len(set(names)) == 3
        if mode.startswith("sigterm"):
            assert set(names) <= set(list_segments(os.getpid(), tag))
            proc.terminate()
        proc.join(WAIT_S)
        assert proc.exitcode == exitcode
        assert list_segments(run_tag=tag) == []
    finally:
        stop(proc)


def test_cuda_ipc_roundtrip(tag):
    if not torch.cuda.is_available():
        pytest.skip("CUDA IPC needs a GPU")
    parent, child = CTX.Pipe()
    proc = CTX.Process(target=child_reader_server, args=(child,), daemon=True)
    proc.start()
    try:
        with TensorArena(os.getpid(), tag, "actor") as arena:
            batch = {"h": torch.randn(4, 8, device="cuda").to(torch.bfloat16),
                     "ids": torch.arange(12, device="cuda").reshape(3, 4),
                     "cpu": torch.ones(5)}
            desc = arena.put(batch, cuda_ipc=True)
            kinds = {e["key"]: "cuda_ipc" in e for e in desc["tensors"]}
            assert kinds == {"h": True, "ids": True, "cpu": False}
            torch.cuda.synchronize()
            parent.send({"cmd": "cuda", "desc": json.dumps(desc)})
            assert recv(parent, "cuda") == checksum({k: v.cpu() for k, v in batch.items()})
            arena.release(desc)
            # without cuda_ipc a CUDA tensor is copied to host
            d2 = arena.put({"h": batch["h"]})
            assert "cuda_ipc" not in d2["tensors"][0]
            assert torch.equal(read_tensors(d2)["h"], batch["h"].cpu())
        parent.send({"cmd": "stop"})
        recv(parent, "stop")
    finally:
        stop(proc)


def test_cuda_ipc_flag_with_cpu_tensors_uses_shared_memory(tag):
    """runtime.cuda_ipc is on in the presets: on CPU the workers' puts take the host path."""
    with TensorArena(os.getpid(), tag, "critic") as arena:
        batch = {"hidden": torch.randn(2, 3, 4), "mask": torch.ones(2, 3, dtype=torch.bool)}
        desc = arena.put(batch, cuda_ipc=True)
        assert desc["segment"] is not None
        assert all("cuda_ipc" not in e and "offset" in e for e in desc["tensors"])
        back = read_tensors(desc, copy=True)
        assert all(torch.equal(back[k], v) for k, v in batch.items())
        arena.release(desc)
