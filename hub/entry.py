"""The ``diasyndesi`` console script (and ``python -m hub``).

The long-running commands (``up``, ``serve``, ``worker``, ``sandbox``) write plain logs and
never draw with rich, yet structlog imports rich whenever it is installed (typer brings it):
about 7 MB and 60 ms in every process of the ``make run`` tree. For those commands rich is
hidden before anything imports it, and typer is told so (``TYPER_USE_RICH=0``); the other
commands (``demo``, ``status``…) keep it.
"""

from __future__ import annotations

import os
import sys

SERVER_COMMANDS = frozenset({"up", "serve", "worker", "sandbox"})


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in SERVER_COMMANDS and "rich" not in sys.modules:
        sys.modules["rich"] = None  # type: ignore[assignment]  # import rich → ImportError
        os.environ.setdefault("TYPER_USE_RICH", "0")
    from hub.cli import app

    app(prog_name="diasyndesi")
