"""The console's subcommands for ``rlhf-console`` (cli.py calls ``add_parsers`` and ``run_home``).

    rlhf-console [--runs-dir DIR]                 home: runs and presets
    rlhf-console CONFIG.yaml [--runs-dir DIR]     the editor on that file (same as ``edit``)
    rlhf-console [--runs-dir DIR] attach [RUN]    the dashboard of RUN (default: the newest run)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _runs_dir_arg(p) -> None:
    # also accepted after the subcommand (``rlhf-console X.yaml --runs-dir R``); SUPPRESS keeps
    # the top-level value when it is not given here
    p.add_argument("--runs-dir", dest="runs_dir", default=argparse.SUPPRESS,
                   help="where runs live; the editor launches runs there (default: ./runs)")


def add_parsers(sub) -> None:
    a = sub.add_parser("attach", help="open the console's dashboard on a run (default: the newest)")
    a.add_argument("run", nargs="?", help="run name (or prefix) under the runs folder, or a run directory")
    _runs_dir_arg(a)
    a.set_defaults(func=run_attach)
    e = sub.add_parser("edit", help="open the console's config editor on a YAML file")
    e.add_argument("config", help="config YAML (created from nothing if it does not exist)")
    _runs_dir_arg(e)
    e.set_defaults(func=run_edit)


def _app(start: str, args, **kw):
    from console.app import ConsoleApp

    return ConsoleApp(start, runs_dir=getattr(args, "runs_dir", "runs"), **kw)


def _run(app) -> int:
    result = app.run()
    if isinstance(result, str) and result:
        print(result)
    rc = app.return_code
    return int(rc or 0)


def run_home(args) -> int:
    return _run(_app("home", args))


def run_edit(args) -> int:
    return _run(_app("edit", args, config=Path(args.config)))


def run_attach(args) -> int:
    from engine.client import RunError, attach, list_runs

    runs_dir = getattr(args, "runs_dir", "runs")
    if args.run:
        try:
            run = attach(args.run, runs_dir)
        except RunError as e:
            from console.debug import trace

            trace()
            print(f"rlhf-console: {e}", file=sys.stderr)
            return 2
    else:
        runs = list_runs(runs_dir)
        if not runs:
            print(f"rlhf-console: no runs under {runs_dir}/", file=sys.stderr)
            return 2
        run = runs[-1]
    return _run(_app("attach", args, run=run.path))
