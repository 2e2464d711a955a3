"""Benchmarks that print figures.

    python -m engine.bench transport [--sizes 1,16,256] [--repeats N]

Each benchmark is a subcommand: a ``bench_<name>(args)`` function plus a ``_register_<name>``
function that adds its subparser; ``build_parser`` lists them (see the place marked for ``step``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time

import torch

MB = 1 << 20


# ----------------------------------------------------------------------------- transport


def _transport_receiver(conn) -> None:
    """Child side: for each message, get a usable tensor, touch one element, acknowledge."""
    from engine.transport import read_tensors

    conn.send("ready")
    while True:
        kind, payload = conn.recv()
        if kind == "stop":
            return
        if kind == "shm":
            value = read_tensors(json.loads(payload))["x"][-1].item()
        elif kind == "pkl":
            value = float(payload[-1])
        else:
            raise ValueError(kind)
        conn.send(value)


def _gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9 if seconds > 0 else float("inf")


def bench_transport(args: argparse.Namespace) -> int:
    from engine.transport import TensorArena, new_run_tag, shm_dir, unlink_run_segments

    sizes = [float(s) for s in str(args.sizes).split(",") if s.strip()]
    repeats = max(1, int(args.repeats))
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_transport_receiver, args=(child,), daemon=True)
    proc.start()
    if not parent.poll(120) or parent.recv() != "ready":
        raise RuntimeError("benchmark receiver process did not start")
    tag = new_run_tag()
    arena = TensorArena(os.getpid(), tag, "bench")
    rows = []
    try:
        for size_mb in sizes:
            n = int(size_mb * MB) // 4
            nbytes = n * 4
            x = torch.randn(n)

            # (a) shared-memory transport: put start -> receiver has a view, read one element, acked
            times = []
            for _ in range(repeats + 1):  # first round is cold: new segment, first mapping
                t0 = time.perf_counter()
                desc = arena.put({"x": x})
                parent.send(("shm", json.dumps(desc)))
                got = parent.recv()
                times.append(time.perf_counter() - t0)
                arena.release(desc)
                assert got == x[-1].item()
            cold, shm = times[0], statistics.median(times[1:])

            # (b) in-process copy
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                y = x.clone()
                times.append(time.perf_counter() - t0)
                del y
            clone = statistics.median(times)

            # (c) pickle over a pipe (numpy array), received and touched by the other process
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                parent.send(("pkl", x.numpy()))
                got = parent.recv()
                times.append(time.perf_counter() - t0)
                assert got == x[-1].item()
            pkl = statistics.median(times)
            rows.append((size_mb, nbytes, shm, cold, clone, pkl))
            del x
        parent.send(("stop", None))
        proc.join(30)
    finally:
        arena.close()
        unlink_run_segments(os.getpid(), tag)
        if proc.is_alive():
            proc.kill()
            proc.join(5)

    print(f"transport benchmark: float32 batches, median of {repeats} repeats "
          f"(transport cold = first put incl. segment creation); shm dir {shm_dir()}; "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")
    header = (f"{'size MB':>8} | {'transport ms':>12} {'GB/s':>7} {'cold ms':>8} | "
              f"{'clone ms':>9} {'GB/s':>7} | {'pickle-pipe ms':>14} {'GB/s':>7}")
    print(header)
    print("-" * len(header))
    for size_mb, nbytes, shm, cold, clone, pkl in rows:
        print(f"{size_mb:>8g} | {shm * 1e3:>12.3f} {_gbps(nbytes, shm):>7.2f} {cold * 1e3:>8.2f} | "
              f"{clone * 1e3:>9.3f} {_gbps(nbytes, clone):>7.2f} | {pkl * 1e3:>14.3f} {_gbps(nbytes, pkl):>7.2f}")
    return 0


def _register_transport(sub) -> None:
    p = sub.add_parser("transport", help="shared-memory transport vs in-process copy vs pickle over a pipe")
    p.add_argument("--sizes", default="1,16,256", help="batch sizes in MB, comma separated (default 1,16,256)")
    p.add_argument("--repeats", type=int, default=10, help="timed repeats per size (default 10)")
    p.set_defaults(func=bench_transport)


# ----------------------------------------------------------------------------- step
# Place for the `step` benchmark: define `bench_step(args)` and `_register_step(sub)` here,
# then add `_register_step` to REGISTRARS below.


REGISTRARS = [_register_transport]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine.bench", description="rlhf-console benchmarks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(
        r.__name__.removeprefix("_register_") for r in REGISTRARS) + "}")
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
