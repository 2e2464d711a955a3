"""``rlhf-console train-rm``: train a reward model (labelled text or preference pairs).

Examples::

    rlhf-console train-rm                              # the default bundled:minilm-sentiment
    rlhf-console train-rm --data prefs.jsonl --out rm/  # Bradley-Terry on chosen/rejected pairs
    rlhf-console train-rm --data labelled.jsonl --kind labels --out rm/

The output folder can be used directly as ``reward.source: /path/to/folder``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.assets import AssetError
from engine.data import BUNDLED_MOVIE_REVIEWS, DataError
from engine.reward_training import (
    DEFAULT_BASE,
    DEFAULT_RM_SETTINGS,
    TASKS,
    RewardTrainingError,
    default_output_dir,
    train_reward_model,
)

HELP = "train a reward model (labelled text or preference pairs)"


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def _nonneg_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {s!r}")
    return v


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}")
    return v


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    d = DEFAULT_RM_SETTINGS
    p.add_argument("--data", default=BUNDLED_MOVIE_REVIEWS, metavar="FILE.jsonl|" +
                   BUNDLED_MOVIE_REVIEWS,
                   help="training data: JSONL of {text,label} rows or {prompt?,chosen,rejected} "
                        f"pairs, or {BUNDLED_MOVIE_REVIEWS} (default)")
    p.add_argument("--kind", choices=TASKS, default=None,
                   help="labels (cross-entropy) or preferences (Bradley-Terry); auto-detected "
                        "from the JSONL keys if omitted")
    p.add_argument("--base", default=DEFAULT_BASE, metavar="MODEL",
                   help=f"base model: {DEFAULT_BASE} (default) or a folder / hub id")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (written atomically). Default: for the bundled data the "
                        "cache folder that bundled:minilm-sentiment loads (replacing it); "
                        "for FILE.jsonl, FILE-reward-model/ next to it")
    p.add_argument("--train-rows", type=_positive_int, default=None, metavar="N",
                   help=f"training rows (bundled default {d['train_rows']}; file: all not held out)")
    p.add_argument("--eval-rows", type=_nonneg_int, default=None, metavar="N",
                   help="held-out rows (bundled default 500 IMDB reviews; file: 10%%, at most 500)")
    p.add_argument("--epochs", type=_positive_int, default=d["epochs"])
    p.add_argument("--lr", type=_positive_float, default=d["lr"])
    p.add_argument("--batch-size", type=_positive_int, default=d["batch_size"])
    p.add_argument("--max-length", type=_positive_int, default=d["max_length"],
                   help="max tokens per text (default %(default)s)")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train-rm`` on an ``argparse`` subparsers object."""
    p = subparsers.add_parser("train-rm", help=HELP, description=HELP + ". " + (
        "The saved folder can be used as reward.source."))
    return configure_parser(p)


def run(args: argparse.Namespace) -> int:
    """Run ``train-rm``; returns the exit code (0 ok, 2 bad input, 1 other failure)."""
    data = str(args.data)
    out = Path(args.out) if args.out else default_output_dir(data)
    try:
        result = train_reward_model(
            data, kind=args.kind, base=args.base, out=out, train_rows=args.train_rows,
            eval_rows=args.eval_rows, epochs=args.epochs, lr=args.lr,
            batch_size=args.batch_size, max_length=args.max_length, seed=args.seed,
            threads=args.threads, show_bar=not getattr(args, "no_progress", False),
        )
    except (DataError, RewardTrainingError) as e:
        print(f"train-rm: error: {e}", file=sys.stderr)
        return 2
    except AssetError as e:
        print(f"train-rm: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("train-rm: interrupted; nothing was written", file=sys.stderr)
        return 130
    metric = "accuracy" if result.task == "labels" else "pairs ranked correctly"
    acc = "n/a (no held-out rows)" if result.accuracy is None else f"{result.accuracy:.4f}"
    print(f"task: {result.task}  train rows: {result.train_rows}  held-out rows: "
          f"{result.eval_rows}")
    print(f"held-out {metric}: {acc}")
    print(f"time: {result.seconds:.0f} s")
    print(f"saved: {result.path}")
    print(f"use it with  reward.source: {result.path}")
    return 0


def main(argv=None) -> int:  # for `python -m console.train_rm_cmd`
    parser = argparse.ArgumentParser(prog="rlhf-console train-rm", description=HELP)
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
