"""``diasyndesi up`` is production in miniature: a process tree of the broker, ``serve``, a
worker and the sandbox agencies. The real command, as a user runs it: a five-agency
referral is delivered everywhere, a SIGKILLed worker is restarted and delivers again, and
one Ctrl+C (SIGINT) stops every process of the tree."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.faults.harness import EVERY_FAMILY, Client, HubProcess, Ports, cmdline, pid_alive


@pytest.fixture
async def up(tmp_path: Path) -> AsyncIterator[HubProcess]:
    process = HubProcess(tmp_path / "var", Ports.free(), tmp_path / "logs")
    try:
        yield process
    finally:
        await asyncio.to_thread(process.stop)


async def delivered_everywhere(client: Client, key: str, seed: int) -> None:
    sub = await client.submit(key, seed)
    assert len(sub.routed) == len(EVERY_FAMILY)  # one agency of each family
    pairs = {(sub.referral_id, agency) for agency in sub.routed}
    states, _, settled = await client.wait_settled(pairs, timeout_s=60)
    assert settled and {s["delivery"] for s in states.values()} == {"delivered"}, states


async def test_up_runs_a_process_tree_that_restarts_a_killed_worker_and_stops_on_ctrl_c(
    up: HubProcess,
) -> None:
    ready_s = await asyncio.to_thread(up.start)
    tree = {pid: cmdline(pid) for pid in up.tree()}
    kinds = sorted(
        next(k for k in ("tansu", " serve", " worker ", " sandbox") if k in line)
        for line in tree.values()
    )
    assert kinds == [" sandbox", " serve", " worker ", "tansu"], tree
    print(f"`up` ready in {ready_s:.1f} s")

    client = Client(up)
    try:
        await delivered_everywhere(client, "up-1", 1)

        [worker] = up.child_pids(" worker ")
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not (new := [p for p in up.child_pids(" worker ") if p != worker]):
            assert time.monotonic() < deadline, "the killed worker was not restarted"
            await asyncio.sleep(0.1)
        log = up.stderr_log().read_text()
        assert re.search(r"child exited\s+child=worker-1 exit_code=-9 restart_in_s=", log), log
        await delivered_everywhere(client, "up-2", 2)  # by the restarted worker
    finally:
        await client.close()

    everyone = up.tree()
    assert new[0] in everyone
    assert up.process is not None
    os.kill(up.process.pid, signal.SIGINT)  # what Ctrl+C in its terminal sends
    code = await asyncio.to_thread(up.process.wait, 30)
    assert code == 0, up.log_tail()
    deadline = time.monotonic() + 5
    while alive := [pid for pid in everyone if pid_alive(pid)]:
        assert time.monotonic() < deadline, f"orphans after Ctrl+C: {alive}"
        await asyncio.sleep(0.05)
