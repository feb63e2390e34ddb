"""The task supervisor: a task that ends unexpectedly is logged, counted, restarted with a
growing, capped backoff, and the process is not ready while it is down; a graceful stop
restarts nothing."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest

from hub.api.deps import HubState
from hub.api.health import Readiness, create_health_app
from hub.db import Database
from hub.metrics import HubMetrics
from hub.registry import Registry
from hub.settings import Settings
from hub.supervisor import Supervisor

ROOT = Path(__file__).resolve().parents[2]


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def metric(metrics: HubMetrics, line: str) -> bool:
    return line in generate_latest(metrics.registry).decode()


@pytest.fixture
async def health(tmp_path: Path) -> AsyncIterator[tuple[Supervisor, httpx.AsyncClient]]:
    """A supervisor and the /readyz of a process whose readiness is its tasks."""
    metrics = HubMetrics()
    supervisor = Supervisor(metrics, initial_s=0.2, max_s=0.4)
    settings = Settings(var_dir=tmp_path, registry_dir=ROOT / "registry")
    db = Database(settings.database)
    state = HubState(settings, db, Registry.load(settings.registry_dir), metrics, "127.0.0.1:1")

    async def tasks() -> str:
        down = supervisor.down()
        return "ok" if not down else f"down: {', '.join(down)}"

    app = create_health_app(state, Readiness({"tasks": tasks}))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
        yield supervisor, client
    await supervisor.abort()
    await db.dispose()


async def test_a_crashed_task_is_restarted_with_backoff_and_readiness_is_red_meanwhile(
    health: tuple[Supervisor, httpx.AsyncClient],
) -> None:
    supervisor, client = health
    metrics = supervisor.metrics
    starts: list[float] = []
    healthy = asyncio.Event()

    async def flaky() -> None:
        starts.append(time.monotonic())
        if len(starts) <= 3:
            raise ValueError("reference 'ΠΑΠΑΔΟΠΟΥΛΟΥ' too long")  # a message with data
        healthy.set()
        await asyncio.Event().wait()  # runs until cancelled

    assert (await client.get("/readyz")).status_code == 200
    supervisor.start("connector:dypa", flaky)
    await until(lambda: supervisor.down() == ["connector:dypa"])
    answer = await client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["checks"]["tasks"] == "down: connector:dypa"
    assert metric(metrics, 'diasyndesi_task_up{task="connector:dypa"} 0.0')

    await asyncio.wait_for(healthy.wait(), 5)
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(starts)]
    # 0.2 s, then doubled to 0.4 s, then capped at 0.4 s
    assert gaps[0] == pytest.approx(0.2, abs=0.1)
    assert gaps[1] == pytest.approx(0.4, abs=0.1)
    assert gaps[2] == pytest.approx(0.4, abs=0.1)
    assert supervisor.down() == []
    assert supervisor.restarts("connector:dypa") == 3
    assert metric(metrics, 'diasyndesi_task_restarts_total{task="connector:dypa"} 3.0')
    assert metric(metrics, 'diasyndesi_task_up{task="connector:dypa"} 1.0')
    answer = await client.get("/readyz")
    assert answer.status_code == 200
    assert answer.json() == {"ready": True, "checks": {"tasks": "ok"}}
    assert "ΠΑΠΑΔΟΠΟΥΛΟΥ" not in (await client.get("/metrics")).text


async def test_a_task_that_returns_while_it_should_run_is_restarted_too() -> None:
    supervisor = Supervisor(HubMetrics(), initial_s=0.01)
    runs = 0

    async def returns_early() -> None:
        nonlocal runs
        runs += 1
        if runs > 1:
            await asyncio.Event().wait()

    supervisor.start("relay", returns_early)
    await until(lambda: runs == 2)
    assert supervisor.restarts("relay") == 1
    await supervisor.abort()


async def test_graceful_stop_lets_tasks_finish_and_restarts_nothing() -> None:
    supervisor = Supervisor(HubMetrics(), initial_s=0.01)
    stopping = asyncio.Event()
    finished: list[str] = []

    async def worker() -> None:
        await stopping.wait()  # what a component's own stop() does
        await asyncio.sleep(0.05)  # finishing in-flight work
        finished.append("worker")

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            finished.append("stubborn cancelled")

    supervisor.start("projector", worker)
    supervisor.start("poller:opeka", stubborn)
    stopping.set()
    await supervisor.stop(timeout_s=0.5)
    assert finished == ["worker", "stubborn cancelled"]
    assert supervisor.restarts("projector") == 0
    assert supervisor.down() == []


async def test_one_shot_tasks_are_forgotten_when_done_and_retried_when_they_fail() -> None:
    metrics = HubMetrics()
    supervisor = Supervisor(metrics, initial_s=0.01)
    calls = 0

    async def connect() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("refused")

    supervisor.start("producer", connect, oneshot=True)
    await until(lambda: calls == 2)
    await until(lambda: not supervisor._tasks)
    assert metric(metrics, 'diasyndesi_task_restarts_total{task="producer"} 1.0')
    assert "diasyndesi_task_up{" not in generate_latest(metrics.registry).decode()
    assert supervisor.down() == []
    await supervisor.stop()
