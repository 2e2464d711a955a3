"""``python -m engine.config --reference`` prints the configuration reference (markdown);
``python -m engine.config FILE [--set k=v ...]`` validates a file."""
from __future__ import annotations

from typing import Optional, Sequence

from engine.config import ConfigError, load_config, schema_reference_markdown


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m engine.config")
    ap.add_argument("file", nargs="?")
    ap.add_argument("--reference", action="store_true", help="print the configuration reference")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args(argv)
    if a.reference or not a.file:
        print(schema_reference_markdown())
        return 0
    try:
        cfg = load_config(a.file, a.set)
    except ConfigError as e:
        print(str(e))
        return 2
    for n in cfg.notices:
        print(f"note: {n}")
    print(f"{a.file}: valid")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
