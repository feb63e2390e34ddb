"""The process tree of ``up`` with stand-in children: a child that exits is restarted with a
backoff, a child bound to another is restarted with it, stop ends everyone; and the plan of
``up`` gives the sandbox and the workers the same secrets unless the operator set them."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import SecretStr

from hub.process_tree import ChildSpec, ProcessTree
from hub.sandboxes import agency_env, sandbox_families, sandbox_port
from hub.settings import AgencyConnection, Settings
from hub.up import plan

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


async def always() -> bool:
    return True


def spec(name: str, **extra: object) -> ChildSpec:
    return ChildSpec(name, SLEEPER, dict(os.environ), always, **extra)  # type: ignore[arg-type]


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_children_are_restarted_and_bound_ones_go_with_their_peer() -> None:
    tree = ProcessTree(initial_s=0.2, poll_s=0.02)
    broker = tree.start(spec("broker", last=True))
    worker = tree.start(spec("worker-1", restart_with="broker"))
    await tree.wait_ready(["broker", "worker-1"], 5)
    first_worker, first_broker = worker.pid, broker.pid
    assert first_worker is not None and first_broker is not None

    os.kill(first_worker, 9)
    killed_at = time.monotonic()
    await until(lambda: worker.pid != first_worker and worker.running)
    assert time.monotonic() - killed_at >= 0.2  # the backoff
    assert (worker.restarts, broker.restarts) == (1, 0)

    second_worker = worker.pid
    os.kill(first_broker, 9)
    await until(lambda: broker.pid != first_broker and broker.running)
    await until(lambda: worker.pid != second_worker and worker.running)
    assert worker.restarts == 2  # killed and restarted with the broker

    pids = [c.pid for c in tree.children.values()]
    await tree.stop()
    assert not any(c.running for c in tree.children.values())
    for pid in pids:
        assert pid is not None
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


async def test_a_child_that_must_not_be_restarted_stays_down() -> None:
    tree = ProcessTree(initial_s=0.05, poll_s=0.02)
    child = tree.start(spec("broker", restart=False))
    assert child.pid is not None
    os.kill(child.pid, 9)
    await asyncio.sleep(0.3)
    assert not child.running and child.restarts == 0
    await tree.stop()


def test_up_generates_shared_agency_settings_but_keeps_what_the_operator_set(
    tmp_path: Path,
) -> None:
    settings = Settings(
        var_dir=tmp_path,
        agencies={
            "dypa": AgencyConnection(base_url="http://127.0.0.1:9999"),  # e.g. a fault proxy
            "opeka": AgencyConnection(secret=SecretStr("given-secret")),
        },
    )
    families = sandbox_families(settings)
    assert [f.name for f in families] == [  # the registry's order fixes the default ports
        "benefits_agency",
        "employment_service",
        "social_grocery",
        "municipal_social_service",
        "lifelong_learning",
    ]
    assert [sandbox_port(settings, f) for f in families] == [8101, 8102, 8103, 8104, 8105]
    ports = dict(zip([f.name for f in families], [8201, 8202, 8203, 8204, 8205], strict=True))
    env = agency_env(settings, families, ports)
    assert "AGENCIES__DYPA__BASE_URL" not in env  # the operator's stays
    assert env["AGENCIES__DYPA__SECRET"]  # generated: passed to the sandbox and the worker alike
    assert "AGENCIES__OPEKA__SECRET" not in env
    assert env["AGENCIES__OPEKA__BASE_URL"] == "http://127.0.0.1:8201/soap"
    assert env["AGENCIES__OPEKA__USERNAME"] == "diasyndesi"
    assert env["AGENCIES__KOZANI_SOCIAL_SERVICE__SECRET"].startswith("whsec_")
    assert env["AGENCIES__KARPENISI_SOCIAL_SERVICE__BASE_URL"] == (
        "http://127.0.0.1:8204/karpenisi-social-service"
    )
    # mutual TLS: the certificates are made before either side starts, paths given to both
    assert env["AGENCIES__KOZANI_LIFELONG_LEARNING__BASE_URL"] == "https://127.0.0.1:8205"
    for setting in ("CLIENT_CERT", "CLIENT_KEY", "CA_FILE"):
        assert Path(env[f"AGENCIES__KOZANI_LIFELONG_LEARNING__{setting}"]).is_file()
    whole = plan(settings, ["opeka", "dypa", "kozani-social-grocery"])
    assert whole.env["SANDBOX_PORTS__SOCIAL_GROCERY"] == "8103"
    assert whole.env["KAFKA_BOOTSTRAP_SERVERS"] == f"127.0.0.1:{settings.embedded_broker_port}"
    assert whole.env["CONSUMER__SESSION_TIMEOUT_MS"] == "4000"
    assert [agencies for _, _, agencies in whole.workers] == [
        ["opeka", "dypa", "kozani-social-grocery"]
    ]
    two = plan(settings.model_copy(update={"up_workers": 2}), ["a", "b", "c"])
    assert [agencies for _, _, agencies in two.workers] == [["a", "c"], ["b"]]
