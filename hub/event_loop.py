"""Which event loop and HTTP parser every process runs on.

uvloop (libuv) and httptools (llhttp) replace asyncio's pure-Python loop and uvicorn's
pure-Python h11 parser: with both, the same `make run` tree answers more requests per CPU
second (decision 0017; `make bench` measures it). ``EVENT_LOOP=asyncio`` goes back to the
standard library loop and h11, for debugging or a platform without the wheels.
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

from hub.errors import ConfigurationError

T = TypeVar("T")

Choice = Literal["uvloop", "asyncio"]


def event_loop_choice() -> Choice:
    """``EVENT_LOOP`` (uvloop by default; asyncio where uvloop is not installed)."""
    value = os.environ.get("EVENT_LOOP", "").strip().lower()
    if value in ("", "uvloop"):
        try:
            import uvloop  # noqa: F401
        except ImportError:
            if value == "uvloop":
                raise ConfigurationError(
                    "EVENT_LOOP=uvloop but uvloop is not installed (pip install uvloop)"
                ) from None
            return "asyncio"
        return "uvloop"
    if value == "asyncio":
        return "asyncio"
    raise ConfigurationError(f"EVENT_LOOP must be uvloop or asyncio, not {value!r}")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the chosen loop."""
    try:
        choice = event_loop_choice()
    except ConfigurationError:
        main.close()
        raise
    if choice == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def http_protocol() -> str:
    """uvicorn's ``http`` setting to go with the loop: httptools beside uvloop."""
    if event_loop_choice() == "uvloop":
        try:
            import httptools  # noqa: F401
        except ImportError:
            return "h11"
        return "httptools"
    return "h11"


def freeze_startup_objects() -> None:
    """Once a long-running process has started: what its imports and start built lives as
    long as the process, so move it out of the garbage collector's sight (``gc.freeze``);
    a full collection then walks only what requests allocate, instead of pausing every
    request in flight for the whole heap (decision 0017)."""
    gc.collect()
    gc.freeze()
