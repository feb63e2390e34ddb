"""The event loop every process runs on, and the console script's rich-free server commands."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from hub import event_loop
from hub.errors import ConfigurationError


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_uvloop_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EVENT_LOOP", raising=False)
    assert event_loop.event_loop_choice() == "uvloop"
    assert event_loop.run(_loop_module()).startswith("uvloop")
    assert event_loop.http_protocol() == "httptools"


def test_event_loop_asyncio_goes_back_to_the_standard_library(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EVENT_LOOP", "asyncio")
    assert event_loop.run(_loop_module()).startswith("asyncio")
    assert event_loop.http_protocol() == "h11"


def test_an_unknown_event_loop_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENT_LOOP", "trio")
    coro = _loop_module()
    with pytest.raises(ConfigurationError, match="EVENT_LOOP must be uvloop or asyncio"):
        event_loop.run(coro)
    assert coro.cr_frame is None  # closed, so no "never awaited" warning


PROBE = """
import sys
sys.argv = ["diasyndesi", {command!r}, "--help"]
from hub.entry import main
try:
    main()
except SystemExit:
    pass
print("RICH", sys.modules.get("rich") is not None)
"""


@pytest.mark.parametrize(("command", "rich"), [("serve", False), ("worker", False), ("demo", True)])
def test_server_commands_run_without_rich(command: str, rich: bool) -> None:
    out = subprocess.run(  # noqa: S603 - our own interpreter and probe
        [sys.executable, "-c", PROBE.format(command=command)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert f"RICH {rich}" in out
    assert "Usage" in out  # the help still printed, plain


def test_startup_objects_leave_the_collectors_sight() -> None:
    import gc

    gc.unfreeze()
    kept = [object() for _ in range(10)]
    try:
        event_loop.freeze_startup_objects()
        assert gc.get_freeze_count() >= len(kept)
    finally:
        gc.unfreeze()
