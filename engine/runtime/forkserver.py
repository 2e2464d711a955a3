"""The fork server of a CPU run: what it imports once, before it forks the role workers.

:func:`engine.runtime.worker.worker_context` starts the workers of a run whose roles are all on
the CPU from a ``multiprocessing`` fork server that imports this module first. Each worker is then
a fork of a process that already holds torch, transformers (with the classes the roles load:
tokenizers, causal LMs, sequence classifiers) and the engine's role code, instead of a fresh
interpreter that imports them again. Nothing here initialises CUDA or starts a thread pool
(import only): a fork must not inherit either.

Importing this module binds the importing process's life to its parent, so only the fork server
imports it. The server is the supervisor's child and dies with it (``PR_SET_PDEATHSIG``), and each
worker dies with the server the same way: a supervisor killed with SIGKILL takes its workers with
it, as it does with spawned workers. A SIGTERM sent to the run's process group is for the workers
(each cleans up its shared memory and exits) and the supervisor; the server ignores it and ends
with the supervisor.
"""
from __future__ import annotations

import signal

from engine.procs import die_with_parent
from engine.runtime.preload import preload

die_with_parent()
signal.signal(signal.SIGTERM, signal.SIG_IGN)
preload()
