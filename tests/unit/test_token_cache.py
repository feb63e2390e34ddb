"""The API's token cache: no query per request, yet expired and revoked tokens are refused,
and a revocation reaches every ``serve`` process within a second. Two apps on one SQLite
file stand for two processes on one database (separate engines, separate caches)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from hub.api import token_cache
from hub.api.app import create_app
from hub.api.deps import HubState
from hub.api.token_cache import TokenCache
from hub.auth import Credential, Principal, ensure_dev_credentials, token_id_of
from hub.bus import KafkaCluster
from hub.db import Database, utcnow
from hub.metrics import HubMetrics
from hub.registry import Registry
from hub.schema import upgrade
from hub.settings import Settings
from hub.tokens import issue_token, revoke_token, rotate_token
from tests.databases import migrated_database_url
from tests.unit.test_tokens import acli

ROOT = Path(__file__).resolve().parents[2]
REFUSED = "unknown, expired or revoked token"


@dataclass
class Serve:
    """One API process: its own engine, state (token cache) and client."""

    db: Database
    state: HubState
    client: httpx.AsyncClient

    async def get(self, token: str) -> httpx.Response:
        return await self.client.get("/v1/agencies", headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
async def hubs(tmp_path: Path) -> AsyncIterator[list[Serve]]:
    # The API as production runs it; the settings' own production checks (PostgreSQL,
    # Kafka, https agencies) are bypassed with model_copy, since they are not under test.
    settings = Settings(
        var_dir=tmp_path,
        registry_dir=ROOT / "registry",
        database_url=migrated_database_url(tmp_path),
    ).model_copy(update={"environment": "production"})
    registry = Registry.load(settings.registry_dir)
    serves: list[Serve] = []
    for _ in range(2):
        db = Database(settings.database)
        await upgrade(db)
        state = HubState(settings, db, registry, HubMetrics(), kafka=KafkaCluster("127.0.0.1:1"))
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(state)), base_url="http://hub"
        )
        serves.append(Serve(db, state, client))
    yield serves
    for serve in serves:
        await serve.client.aclose()
        await serve.db.dispose()


@pytest.fixture
def registry() -> Registry:
    return Registry.load(ROOT / "registry")


async def test_a_cached_token_costs_no_query_and_unknown_ones_are_cached_too(
    hubs: list[Serve], registry: Registry
) -> None:
    hub = hubs[0]
    issued = await issue_token(hub.db, registry, "centre", "KK-KOZANI", timedelta(days=1))
    for _ in range(20):
        assert (await hub.get(issued.token)).status_code == 200
    for _ in range(20):
        assert (await hub.get("dsy_cen_0123456789_nope")).status_code == 401
    assert hub.state.tokens.lookups == 2
    assert hub.state.tokens.version_reads <= 2  # 40 requests well inside one half second

    fresh = await issue_token(hub.db, registry, "agency", "dypa", timedelta(days=1))
    assert (await hub.get(fresh.token)).status_code == 200  # works at once


async def test_expired_revoked_and_unknown_tokens_get_the_same_401(
    hubs: list[Serve], registry: Registry
) -> None:
    hub = hubs[0]
    now = utcnow()
    expired = await issue_token(
        hub.db, registry, "centre", "KK-KOZANI", timedelta(hours=1), now=now - timedelta(hours=2)
    )
    revoked = await issue_token(hub.db, registry, "centre", "KK-KOZANI", timedelta(days=1))
    await revoke_token(hub.db, revoked.info.id)
    for token in (expired.token, revoked.token, "dsy_cen_0123456789_nope"):
        response = await hub.get(token)
        assert response.status_code == 401
        assert response.json() == {"detail": REFUSED}
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


async def test_a_cached_token_is_refused_once_it_expires(
    hubs: list[Serve], registry: Registry
) -> None:
    hub = hubs[0]
    # a 1-minute token issued 59.3 s ago: 0.7 s left
    issued = await issue_token(
        hub.db,
        registry,
        "operator",
        "maria.k",
        timedelta(minutes=1),
        now=utcnow() - timedelta(seconds=59.3),
    )
    assert (await hub.get(issued.token)).status_code == 200
    await asyncio.sleep(0.8)
    lookups = hub.state.tokens.lookups
    assert (await hub.get(issued.token)).status_code == 401
    assert hub.state.tokens.lookups == lookups  # the cached expiry said so, no query


async def test_development_credentials_are_refused_in_production(
    hubs: list[Serve], registry: Registry, tmp_path: Path
) -> None:
    hub = hubs[0]
    creds = await ensure_dev_credentials(hub.db, registry, tmp_path / "dev-credentials.json")
    assert (await hub.get(creds["centres"]["KK-KOZANI"])).status_code == 401
    development = HubState(
        Settings(var_dir=tmp_path, registry_dir=ROOT / "registry"),
        hub.db,
        registry,
        HubMetrics(),
        kafka=KafkaCluster("127.0.0.1:1"),
    )
    assert await development.principal_for(creds["centres"]["KK-KOZANI"]) == Principal(
        "centre", "KK-KOZANI"
    )


async def wait_refused(serve: Serve, token: str, since: float, limit_s: float) -> float:
    """Keep calling (as a busy client would) until refused; seconds since ``since``."""
    while True:
        response = await serve.get(token)
        elapsed = time.monotonic() - since
        if response.status_code == 401:
            return elapsed
        assert response.status_code == 200
        assert elapsed < limit_s, f"still accepted {elapsed:.2f} s after the revocation"
        await asyncio.sleep(0.02)


async def test_a_revocation_reaches_every_process_within_a_second(
    hubs: list[Serve], registry: Registry
) -> None:
    issued = await issue_token(hubs[0].db, registry, "centre", "KK-KOZANI", timedelta(days=1))
    other = await issue_token(hubs[0].db, registry, "centre", "KK-FLORINA", timedelta(days=1))
    for serve in hubs:
        for _ in range(3):
            assert (await serve.get(issued.token)).status_code == 200
            assert (await serve.get(other.token)).status_code == 200
        assert serve.state.tokens.lookups == 2  # both cached: the revocation must evict them

    started = time.monotonic()
    await revoke_token(hubs[1].db, issued.info.id)  # as `token revoke` does, from any process
    elapsed = await asyncio.gather(*(wait_refused(s, issued.token, started, 1.0) for s in hubs))
    assert max(elapsed) < 1.0
    for serve in hubs:
        assert (await serve.get(other.token)).status_code == 200


async def test_a_revocation_through_the_cli_reaches_both_apps(
    hubs: list[Serve], tmp_path: Path
) -> None:
    result = await acli(tmp_path, "issue", "--agency", "dypa", "--expires", "1h")
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    for serve in hubs:
        assert (await serve.get(token)).status_code == 200
        assert (await serve.get(token)).status_code == 200
        assert serve.state.tokens.lookups == 1

    token_id = token_id_of(token)
    assert token_id is not None
    revoked = await acli(tmp_path, "revoke", token_id)
    assert revoked.exit_code == 0, revoked.output
    returned = time.monotonic()  # committed before the command returned
    elapsed = await asyncio.gather(*(wait_refused(s, token, returned, 1.0) for s in hubs))
    assert max(elapsed) < 1.0


async def test_rotation_without_grace_refuses_the_old_token_everywhere(
    hubs: list[Serve], registry: Registry
) -> None:
    old = await issue_token(hubs[0].db, registry, "agency", "opeka", timedelta(days=1))
    for serve in hubs:
        assert (await serve.get(old.token)).status_code == 200
    started = time.monotonic()
    new, _ = await rotate_token(hubs[0].db, registry, old.info.id, timedelta(days=1))
    await asyncio.gather(*(wait_refused(s, old.token, started, 1.0) for s in hubs))
    for serve in hubs:
        assert (await serve.get(new.token)).status_code == 200


# --- the cache alone, with a hand-driven clock -----------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_version_is_read_at_most_every_half_second(
    hubs: list[Serve], registry: Registry
) -> None:
    db = hubs[0].db
    issued = await issue_token(db, registry, "centre", "KK-GREVENA", timedelta(days=1))
    clock = Clock()
    cache = TokenCache(db, allow_unexpiring=False, clock=clock)
    for _ in range(50):
        assert await cache.principal_for(issued.token) is not None
    assert (cache.version_reads, cache.lookups) == (1, 1)
    clock.now += 0.49
    await cache.principal_for(issued.token)
    assert cache.version_reads == 1
    clock.now += 0.02
    await asyncio.gather(*(cache.principal_for(issued.token) for _ in range(10)))
    assert (cache.version_reads, cache.lookups) == (2, 1)  # one read for ten waiting requests

    await revoke_token(db, issued.info.id)
    assert await cache.principal_for(issued.token) is not None  # within the half second
    clock.now += 0.5
    assert await cache.principal_for(issued.token) is None
    assert (cache.version_reads, cache.lookups) == (3, 2)


async def test_entries_are_bounded_and_age_out(hubs: list[Serve], registry: Registry) -> None:
    clock = Clock()
    cache = TokenCache(hubs[0].db, allow_unexpiring=False, clock=clock, max_entries=5)
    for n in range(20):
        await cache.principal_for(f"unknown-{n}")
    assert len(cache._unknown) == 5
    lookups = cache.lookups
    await cache.principal_for("unknown-19")
    assert cache.lookups == lookups
    clock.now += 61  # max_age_s: even with no version change, ask again
    await cache.principal_for("unknown-19")
    assert cache.lookups == lookups + 1


async def test_an_answer_read_across_a_clear_is_not_kept(
    hubs: list[Serve], registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lookup that started before a revocation emptied the cache may have read the token
    as valid: it answers the request in flight but must not repopulate the cache."""
    release, entered = asyncio.Event(), asyncio.Event()
    principal = Principal("centre", "KK-KOZANI")

    async def slow_lookup(db: Database, digest: str, *, allow_unexpiring: bool) -> Credential:
        entered.set()
        await release.wait()
        return Credential(principal, None)

    monkeypatch.setattr(token_cache, "lookup_credential", slow_lookup)
    cache = TokenCache(hubs[0].db, allow_unexpiring=True)
    in_flight = asyncio.create_task(cache.principal_for("some-token"))
    # The lookup is under way (a fixed sleep was not always long enough on a busy machine).
    await asyncio.wait_for(entered.wait(), 10)
    cache.clear()  # what a version change does
    release.set()
    assert await in_flight == principal
    assert cache._known == {}
