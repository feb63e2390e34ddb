"""Which transport should carry ΟΠΕΚΑ's SOAP calls? Measured, not assumed.

Runs the ΟΠΕΚΑ sandbox in a separate process on loopback and calls SubmitApplicationSupport
``--count`` times at 1, 8 and 32 concurrent callers with:

  a) zeep ``AsyncClient`` with its own httpx transport,
  b) sync zeep ``Client`` + a requests Session, in a 32-thread pool (``asyncio.to_thread``),
  c) zeep for envelopes + aiohttp for transport (the connector's ``AiohttpTransport``).

Prints requests/s per option and concurrency, the median of ``--runs`` runs.
Usage: ``.venv/bin/python benchmarks/soap_transport.py [--count 400] [--runs 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import requests
import zeep
from requests.adapters import HTTPAdapter
from zeep.proxy import AsyncServiceProxy
from zeep.transports import AsyncTransport, Transport
from zeep.wsse.username import UsernameToken

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connectors.benefits_agency.client import (  # noqa: E402
    BINDING,
    WSDL,
    BenefitsAgencyClient,
    _settings,
)
from hub.broker import free_port  # noqa: E402
from hub.samples import make_amka  # noqa: E402

WSDL_PATH = str(WSDL)  # package data, on disk in a checkout

USER, PASSWORD = "diasyndesi", "bench-password-1"
SERVER = """
import asyncio
from connectors.benefits_agency.sandbox.app import BenefitsSandboxConfig, create_app
from hub.servers import start_server
async def main():
    app = create_app(BenefitsSandboxConfig(password={pw!r}, decision_delay_s=0))
    await start_server(app, "127.0.0.1", {port}, "opeka-bench")
    await asyncio.Event().wait()
asyncio.run(main())
"""
_keys = itertools.count()


def aitisi() -> dict[str, Any]:
    from datetime import date

    return {
        "hubReferralId": "00000000-0000-4000-8000-000000000001",
        "kentroKoinotitas": "KK-KOZANI",
        "aitoumenaProgrammata": {"kodikosProgrammatos": ["EEE"]},
        "aitoun": {
            "typosTaytopoiisis": "AMKA",
            "arithmosTaytopoiisis": make_amka(date(1975, 1, 1), 1234),
            "eponymo": "Παπαδοπούλου",
            "onoma": "Μαρία",
            "imerominiaGennisis": "1975-01-01",
        },
    }


def kwargs() -> dict[str, Any]:
    return {**aitisi(), "hubReference": f"bench-{next(_keys)}"}


async def run(call: Callable[[], Awaitable[Any]], count: int, concurrency: int) -> float:
    remaining = iter(range(count))

    async def worker() -> None:
        for _ in remaining:
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - started)


def main(count: int, runs: int) -> None:
    """The sandbox runs in its own process so it does not share the client's event loop."""
    port = free_port()
    server = subprocess.Popen(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", SERVER.format(pw=PASSWORD, port=port)], cwd=ROOT
    )
    endpoint = f"http://127.0.0.1:{port}/soap"
    try:
        for _ in range(100):
            try:
                requests.get(f"{endpoint}?wsdl", timeout=1).raise_for_status()
                break
            except requests.RequestException:
                time.sleep(0.1)
        asyncio.run(measure(endpoint, count, runs))
        stats = requests.get(f"http://127.0.0.1:{port}/_sandbox/stats", timeout=5).json()
        print(f"sandbox accepted {stats['accepted']} submissions, {stats['duplicates']} duplicates")
    finally:
        server.terminate()
        server.wait(5)


async def measure(endpoint: str, count: int, runs: int) -> None:
    wsse = UsernameToken(USER, PASSWORD, use_digest=True)
    # a) zeep AsyncClient over httpx
    httpx_client = zeep.AsyncClient(
        WSDL_PATH,
        transport=AsyncTransport(operation_timeout=10),
        settings=_settings(),
        wsse=wsse,
    )
    httpx_service = AsyncServiceProxy(
        httpx_client, httpx_client.wsdl.bindings[BINDING], address=endpoint
    )
    # b) sync zeep Client + requests, in threads
    session = requests.Session()
    session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=32))
    sync_client = zeep.Client(
        WSDL_PATH,
        transport=Transport(session=session, operation_timeout=10),
        settings=_settings(),
        wsse=wsse,
    )
    sync_service = sync_client.create_service(BINDING, endpoint)
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=32))
    # c) zeep envelopes + aiohttp transport (the connector's client)
    aio_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
    aio_client = BenefitsAgencyClient(endpoint, USER, PASSWORD, timeout_s=10, session=aio_session)

    options: dict[str, Callable[[], Awaitable[Any]]] = {
        "a) zeep AsyncClient (httpx)": lambda: httpx_service.SubmitApplicationSupport(**kwargs()),
        "b) zeep Client + requests, threads": lambda: asyncio.to_thread(
            lambda: sync_service.SubmitApplicationSupport(**kwargs())
        ),
        "c) zeep + aiohttp transport": lambda: aio_client.submit_application_support(
            f"bench-{next(_keys)}", aitisi()
        ),
    }
    try:
        print(f"{'option':38} {'1':>8} {'8':>8} {'32':>8}   (req/s, median of {runs})")
        for name, call in options.items():
            await run(call, 50, 8)  # warm up connections and caches
            medians = []
            for concurrency in (1, 8, 32):
                rates = [await run(call, count, concurrency) for _ in range(runs)]
                medians.append(statistics.median(rates))
            print(f"{name:38} " + " ".join(f"{m:8.0f}" for m in medians), flush=True)
    finally:
        await httpx_client.transport.aclose()
        await aio_session.close()
        session.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    main(args.count, args.runs)
