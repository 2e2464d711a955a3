"""``--debug``: the commands show the traceback of an error they report. One switch for every
command module (cli.py sets it, cli.py and app_cli.py read it), kept in the environment so that
a process started from a command sees it too."""
from __future__ import annotations

import os
import sys

ENV = "RLHF_CONSOLE_DEBUG"


def enable() -> None:
    os.environ[ENV] = "1"


def enabled() -> bool:
    return os.environ.get(ENV) == "1"


def trace() -> None:
    """Under --debug, print the traceback of the exception being handled."""
    if enabled() and sys.exc_info()[0] is not None:
        import traceback

        traceback.print_exc()
