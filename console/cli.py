"""``rlhf-console``: the console (no arguments), and the headless commands.

    rlhf-console                         the console: runs and presets
    rlhf-console CONFIG.yaml             the console's config editor on that file
    rlhf-console attach [RUN]            the console's dashboard on a run
    rlhf-console train --config FILE     a run in the foreground (one line per step; Ctrl-C
                                         stops with a checkpoint); --detach to background it
    rlhf-console runs                    list runs with state, step, last score
    rlhf-console pause|resume|stop|checkpoint RUN
    rlhf-console swap-reward RUN SOURCE
    rlhf-console label RUN SAMPLE_ID good|bad
    rlhf-console prefer RUN CHOSEN_ID REJECTED_ID
    rlhf-console refit-reward RUN        refit the reward model from the run's judgements
    rlhf-console train-rm ...            train a reward model

Every command reports the project's own errors (a bad config, a run that cannot start, a model
that cannot load, ...) as one message and a non-zero exit code; ``--debug`` (anywhere on the
command line) shows the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from console import debug
from engine.config import ConfigError, load_config

DEFAULT_RUNS = "runs"


def _err(msg: str) -> int:
    debug.trace()
    print(f"rlhf-console: {msg}", file=sys.stderr)
    return 2


def _reap_stale(runs_dir: str = DEFAULT_RUNS) -> None:
    from engine.client import human_size, reap_stale, reap_stale_checkpoints

    try:
        removed = reap_stale()
    except Exception:  # noqa: BLE001 - never block a command on housekeeping
        removed = []
    if removed:
        print(f"rlhf-console: removed {len(removed)} stale shared-memory segment(s) of runs whose "
              f"processes are gone", file=sys.stderr)
    try:
        folders = reap_stale_checkpoints(runs_dir)
    except Exception:  # noqa: BLE001
        folders = []
    for folder, size in folders:
        print(f"rlhf-console: removed the half-written checkpoint {folder.parent.parent.name}/checkpoints/"
              f"{folder.name} ({human_size(size)}) of a run whose supervisor is gone", file=sys.stderr)


def _load(args, check_access: bool = False) -> "object":
    overrides = list(args.set or [])
    if getattr(args, "log_dir", None):
        overrides.append(f"logging.log_dir={args.log_dir}")
    if getattr(args, "tensorboard_dir", None):
        overrides += [f"logging.tensorboard_dir={args.tensorboard_dir}", "logging.tensorboard=true"]
    if getattr(args, "max_steps", None):
        overrides.append(f"run.steps={args.max_steps}")
    cfg = load_config(args.config, overrides, check_access=check_access)
    for n in getattr(cfg, "notices", None) or []:
        print(f"note: {n}", file=sys.stderr)
    return cfg


# ---- train ----------------------------------------------------------------------------------
class _TerminalOut:
    """Prints a foreground run's lines; when the terminal goes away (EIO/EPIPE after tmux
    kill-session, a closed SSH window), points stdout/stderr at the run's supervisor.log so no
    later write fails, and raises once so the supervisor notes it and stops printing."""

    def __init__(self, log_path):
        self.log_path = log_path
        self.lost = False

    def __call__(self, line: str) -> None:
        if self.lost:
            return
        try:
            print(line, flush=True)
        except (OSError, ValueError):
            self.lost = True
            self.detach()
            raise

    def detach(self) -> None:
        try:
            fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError:
            fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)

    def final(self, line: str) -> None:
        try:
            self(line)
        except (OSError, ValueError):
            pass


def cmd_train(args) -> int:
    from engine.client import Run, RunError, create_run_dir, dry_run, launch, prestart, run_here

    if not (args.detach or args.dry_run):
        import signal

        # a closed terminal (SIGHUP) never stops a foreground run; Ctrl-C still does (set before
        # the fork server starts: its workers inherit it)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        prestart(args.config, list(args.set or []))
    try:
        cfg = _load(args, check_access=True)
    except ConfigError as e:
        debug.trace()
        print(str(e), file=sys.stderr)
        print("rlhf-console: the config is invalid; nothing was started", file=sys.stderr)
        return 2
    if args.dry_run:
        dry_run(cfg)
        return 0
    if args.detach:
        try:
            run = launch(cfg, detach=True, wait_ready=True)
        except RunError as e:
            return _err(str(e))
        print(f"run {run.name} started in the background: {run.path}")
        print(f"  watch: rlhf-console attach {run.name}    stop: rlhf-console stop {run.name}")
        return 0
    try:
        rd = create_run_dir(cfg)
    except ConfigError as e:
        debug.trace()
        print(str(e), file=sys.stderr)
        print("rlhf-console: the run cannot start; nothing was started", file=sys.stderr)
        return 2
    out = _TerminalOut(rd.supervisor_log)
    out.final(f"run {rd.name}: {rd.path}  (Ctrl-C stops at the end of the step, with a checkpoint)")
    code = run_here(rd, printer=out)
    st = Run(rd.path).dir.read_info()
    out.final(f"run {rd.name}: {st.state} at step {st.step}" + (f" — {st.failure}" if st.failure else ""))
    return code


# ---- runs and control -------------------------------------------------------------------------
def cmd_runs(args) -> int:
    from engine.client import list_runs

    runs = list_runs(args.runs_dir)
    if not runs:
        print(f"no runs under {args.runs_dir}/")
        return 0
    print(f"{'run':<40} {'state':<9} {'step':>9} {'score':>7}  started")
    for r in runs:
        st = r.dir.read_info()
        score = st.last_score
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(st.created or 0))
        print(f"{r.name:<40} {r.state:<9} {str(st.step) + '/' + str(st.steps if st.steps is not None else '?'):>9} "
              f"{(f'{score:.3f}' if isinstance(score, (int, float)) else '-'):>7}  {started}")
        why = {"failed": st.failure, "paused": st.pause_info and st.message,
               "stopped": st.checkpoint_error and st.message}.get(r.state)
        if why:  # what went wrong, when something did
            print(f"    {why}")
    return 0


def _attach(args):
    from engine.client import RunError, attach

    try:
        return attach(args.run, args.runs_dir)
    except RunError as e:
        debug.trace()
        print(f"rlhf-console: {e}", file=sys.stderr)
        return None


def cmd_control(args) -> int:
    from engine.client import RunError

    run = _attach(args)
    if run is None:
        return 2
    try:
        if args.command == "resume" and not run.alive:
            run.restart()
            print(f"run {run.name}: resumed from its latest checkpoint in a new supervisor (step {run.dir.read_info().step})")
            if run.resume_note:
                print(f"run {run.name}: note: {run.resume_note}")
            return 0
        if args.command == "checkpoint":
            r = run.checkpoint(wait=True)
            print(f"run {run.name}: checkpoint saved at step {r.get('step')}: {r.get('path')}")
            return 0
        if args.command == "stop":
            r = run.stop(grace_s=args.grace)
        else:
            r = getattr(run, args.command)()
        print(f"run {run.name}: {r.get('message', 'ok')}")
        return 0
    except RunError as e:
        return _err(f"{run.name}: {e}")


def cmd_swap_reward(args) -> int:
    from engine.client import RunError

    run = _attach(args)
    if run is None:
        return 2
    try:
        r = run.swap_reward(args.source)
    except RunError as e:
        return _err(f"{run.name}: {e}")
    print(f"run {run.name}: reward is now '{r['source']}' (was '{r.get('previous')}')")
    return 0


def cmd_label(args) -> int:
    from engine.client import RunError

    run = _attach(args)
    if run is None:
        return 2
    try:
        row = run.label(args.sample_id, args.verdict)
    except RunError as e:
        return _err(str(e))
    print(f"run {run.name}: sample {row['sample_id']} (step {row['step']}) marked {row['label']}")
    return 0


def cmd_prefer(args) -> int:
    from engine.client import RunError

    run = _attach(args)
    if run is None:
        return 2
    try:
        row = run.prefer(args.chosen_id, args.rejected_id)
    except RunError as e:
        return _err(str(e))
    print(f"run {run.name}: sample {row['chosen_id']} preferred over {row['rejected_id']}")
    return 0


def cmd_refit_reward(args) -> int:
    from engine.client import RunError

    run = _attach(args)
    if run is None:
        return 2
    from engine.files import LineTail

    tail = LineTail(run.dir.events)
    try:
        tail.read_lines()  # what came before the request
        r = run.refit_reward()
        print(f"run {run.name}: {r['message']}")
        if args.no_wait:
            return 0
        attempt = r["attempt"]
        tag = f"refit {attempt}: "
        entry = None
        while True:
            for line in tail.read_lines():
                if tag in line:
                    print(line)
            reg = run.reward_versions()
            entry = next((x for x in reg["refits"] if x.get("attempt") == attempt), None)
            decided = entry is not None and entry.get("state") != "running"
            swapped = any(v.get("attempt") == attempt for v in reg["versions"])
            if decided and (entry.get("state") != "accepted" or swapped or not run.alive):
                break
            if not run.alive and not decided:
                return _err(f"{run.name}: the run ended ({run.state}) before refit {attempt} was decided")
            time.sleep(0.5)
        for line in tail.read_lines():
            if tag in line or "reward v" in line:
                print(line)
    except RunError as e:
        return _err(f"{run.name}: {e}")
    if entry.get("state") == "accepted":
        v = next(v for v in run.reward_versions()["versions"] if v.get("attempt") == attempt) \
            if swapped else None
        print(f"run {run.name}: refit {attempt} accepted" + (f": reward v{v['version']} from step {v['from_step']}"
                                                              if v else "") + f" ({entry.get('reason')})")
        return 0
    print(f"run {run.name}: refit {attempt} {entry.get('state')}: {entry.get('reason')}")
    return 3


def cmd_report(args) -> int:
    from engine.report import summarise, write_report

    run = _attach(args)
    if run is None:
        return 2
    try:
        md = write_report(run.path, args.out)
    except ValueError as e:
        return _err(str(e))
    s = summarise(list(run.metrics()))
    print(f"report: {md}  (plots beside it)")
    print(f"score {s['score_start']:.3f} -> {s['score_end']:.3f} (first/last {s['window']} steps), "
          f"KL {s['kl_start']:.3f} -> {s['kl_end']:.3f}, {s['steps']} steps in {s['minutes']:.1f} min")
    return 0


def cmd_validate(args) -> int:
    try:
        cfg = _load(args, check_access=True)
    except ConfigError as e:
        debug.trace()
        print(str(e), file=sys.stderr)
        return 2
    print(f"{args.config}: valid ({cfg.run.name}, {cfg.run.steps} steps)")
    return 0


def cmd_doctor(args) -> int:
    """What this machine is and what a run will choose on it; non-zero with one line per problem."""
    from pathlib import Path

    from engine.config import PRESETS_DIR
    from engine.doctor import format_report, run_doctor

    path = args.config or str(PRESETS_DIR / "default.yaml")
    try:
        cfg = load_config(path, list(args.set or []))
    except ConfigError as e:
        debug.trace()
        print(str(e), file=sys.stderr)
        return 2
    rep = run_doctor(cfg, recalibrate=args.recalibrate, progress=lambda m: print(m, flush=True))
    if args.json:
        import dataclasses
        import json

        Path(args.json).write_text(json.dumps(dataclasses.asdict(rep), indent=2, default=str) + "\n")
    for line in format_report(rep, path):
        print(line)
    return 1 if rep.problems else 0


# ---- parser ---------------------------------------------------------------------------------
def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", required=True, help="run config YAML")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rlhf-console", description="Real RLHF (PPO) on one machine, from a terminal.")
    ap.add_argument("--runs-dir", default=os.environ.get("RLHF_CONSOLE_RUNS", DEFAULT_RUNS), help="where runs live (default: ./runs)")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error (accepted anywhere on the command line)")
    sub = ap.add_subparsers(dest="command")

    t = sub.add_parser("train", help="train from a config (foreground unless --detach)")
    _add_config_args(t)
    t.add_argument("--log-dir", "--log_dir", dest="log_dir", help="folder that holds run directories")
    t.add_argument("--tensorboard-dir", "--tensorboard_dir", dest="tensorboard_dir", help="write TensorBoard events here")
    t.add_argument("--max-steps", "--max_steps", dest="max_steps", type=int, help="override run.steps")
    t.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true", help="load the roles and run one rollout + scoring, no update")
    t.add_argument("--detach", action="store_true", help="start the supervisor in the background and return")
    t.set_defaults(func=cmd_train)

    v = sub.add_parser("validate", help="validate a config and exit")
    _add_config_args(v)
    v.set_defaults(func=cmd_validate)

    d = sub.add_parser("doctor", help="explain this machine: CPU/GPU, the precision each role will use "
                                      "(measured once, cached), the cache, the default's expected step time; "
                                      "exits non-zero with one line per problem a run would hit")
    d.add_argument("--config", "-c", help="the config to check (default: configs/default.yaml)")
    d.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    d.add_argument("--recalibrate", action="store_true", help="measure bf16 against float32 again")
    d.add_argument("--json", help="also write the report to this JSON file")
    d.set_defaults(func=cmd_doctor)

    r = sub.add_parser("runs", help="list runs")
    r.set_defaults(func=cmd_runs)

    for name, hlp in (("pause", "pause a run at the end of its step"), ("resume", "resume a paused run, or restart a stopped one from its latest checkpoint"),
                      ("stop", "stop a run at the end of its step (with a checkpoint)"), ("checkpoint", "checkpoint a run now")):
        c = sub.add_parser(name, help=hlp)
        c.add_argument("run")
        if name == "stop":
            c.add_argument("--grace", type=float, metavar="SECONDS",
                           help="kill workers that have not answered after this long (default: "
                                "max(60 s, 3 x the longest step))")
        c.set_defaults(func=cmd_control)

    rp = sub.add_parser("report", help="markdown report and PNG plots of a run")
    rp.add_argument("run")
    rp.add_argument("--out", help="folder for the report (default: RUN/report)")
    rp.set_defaults(func=cmd_report)

    s = sub.add_parser("swap-reward", help="load a new reward model or function into a live run")
    s.add_argument("run")
    s.add_argument("source")
    s.set_defaults(func=cmd_swap_reward)

    lb = sub.add_parser("label", help="mark a sample of a run good or bad (labels.jsonl)")
    lb.add_argument("run", help="run name (or prefix) or run directory")
    lb.add_argument("sample_id", help="the sample's id (STEP-INDEX, as the rollouts pane shows it)")
    lb.add_argument("verdict", choices=("good", "bad"))
    lb.set_defaults(func=cmd_label)

    pf = sub.add_parser("prefer", help="prefer one sample of a run over another (a pair in labels.jsonl)")
    pf.add_argument("run", help="run name (or prefix) or run directory")
    pf.add_argument("chosen_id", help="the sample preferred")
    pf.add_argument("rejected_id", help="the sample it is preferred over")
    pf.set_defaults(func=cmd_prefer)

    rf = sub.add_parser("refit-reward", help="refit the reward model of a live run from its judgements; "
                                             "swapped in at a step boundary only if it is not worse")
    rf.add_argument("run", help="run name (or prefix) or run directory")
    rf.add_argument("--no-wait", action="store_true", help="start it and return (progress in the event log)")
    rf.set_defaults(func=cmd_refit_reward)

    try:
        from console import train_rm_cmd

        train_rm_cmd.add_parser(sub)
    except ImportError:  # pragma: no cover
        pass
    try:
        from console import app_cli

        app_cli.add_parsers(sub)
    except ImportError:
        pass
    return ap


def _project_error(e: BaseException) -> bool:
    """An error raised on purpose by this project (engine/console), with a message for users."""
    mod = type(e).__module__ or ""
    return mod.split(".")[0] in ("engine", "console")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debugging = "--debug" in argv
    if debugging:
        debug.enable()
    argv = [a for a in argv if a != "--debug"]
    try:
        return _main(argv)
    except KeyboardInterrupt:
        if debugging:
            raise
        print("rlhf-console: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as e:
        if debugging:
            raise
        if isinstance(e, ConfigError):
            print(str(e), file=sys.stderr)
            return 2
        msg = str(e).strip() or type(e).__name__
        if _project_error(e):
            print(f"rlhf-console: {msg}", file=sys.stderr)
        elif isinstance(e, OSError):
            print(f"rlhf-console: {e.strerror or msg}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        else:
            print(f"rlhf-console: unexpected error: {type(e).__name__}: {msg} (run the command again "
                  f"with --debug to see the traceback)", file=sys.stderr)
        return 1


def _main(argv: list) -> int:
    ap = build_parser()
    # `rlhf-console CONFIG.yaml` opens the console's editor on that file
    i = 0
    while i < len(argv) and argv[i].startswith("-"):  # skip leading options (--runs-dir X)
        i += 2 if argv[i] == "--runs-dir" else 1
    if i < len(argv) and argv[i].endswith((".yaml", ".yml")):
        argv = argv[:i] + ["edit"] + argv[i:]
    args = ap.parse_args(argv)
    _reap_stale(getattr(args, "runs_dir", DEFAULT_RUNS))
    if not getattr(args, "command", None):
        try:
            from console import app_cli
        except ImportError:
            ap.print_help()
            return 0
        return app_cli.run_home(args)
    if not hasattr(args, "func"):
        ap.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
