"""Token → principal for one API process, without a query per request, honouring
revocation from any process within a second.

Both answers are cached by token digest: known tokens with their expiry (checked on every
hit) and unknown ones (so a client repeating a bad token costs no query either). Every
change to the credentials table moves a version counter in the same transaction
(``hub/auth.py``); the first request after ``check_every_s`` (0.5 s) reads it, a single
primary-key read, and empties both caches when it moved. A revocation committed at *t* is
therefore refused by every process from *t* + 0.5 s plus one query's time; a token issued
at *t* is never in a negative cache once that check has run, and a fresh random token was
never asked about before anyway. docs/decisions/0010 says why not a plain short TTL.

``max_age_s`` bounds how long any entry lives even if the version never moves (a row
edited by hand without the counter), and ``max_entries`` bounds memory per cache.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

from hub.auth import Principal, credentials_version, hash_token, lookup_credential
from hub.db import Database

V = TypeVar("V")


class TokenCache:
    def __init__(
        self,
        db: Database,
        *,
        allow_unexpiring: bool,
        check_every_s: float = 0.5,
        max_age_s: float = 60.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.allow_unexpiring = allow_unexpiring
        self.check_every_s = check_every_s
        self.max_age_s = max_age_s
        self.max_entries = max_entries
        self._clock = clock
        self._wall = wall_clock
        # digest -> (principal, expiry as a Unix time, cached at); digest -> cached at
        self._known: OrderedDict[str, tuple[Principal, float, float]] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._version: int | None = None
        self._checked_at = -math.inf
        self._generation = 0  # moves whenever the caches are emptied
        self._lock = asyncio.Lock()
        self.lookups = 0  # token reads that went to the database
        self.version_reads = 0

    async def principal_for(self, token: str) -> Principal | None:
        digest = hash_token(token)
        await self._follow_version()
        now = self._clock()
        known = self._known.get(digest)
        if known is not None and now - known[2] < self.max_age_s:
            if known[1] > self._wall():
                return known[0]
            del self._known[digest]  # expired since it was cached
            self._remember(self._unknown, digest, now)
            return None
        unknown_since = self._unknown.get(digest)
        if unknown_since is not None and now - unknown_since < self.max_age_s:
            return None
        generation = self._generation
        self.lookups += 1
        credential = await lookup_credential(
            self.db, digest, allow_unexpiring=self.allow_unexpiring
        )
        if generation != self._generation:
            # The caches were emptied while we read: what we read may predate the change
            # that emptied them, so answer with it but do not keep it.
            return credential.principal if credential else None
        if credential is None:
            self._known.pop(digest, None)
            self._remember(self._unknown, digest, now)
            return None
        self._unknown.pop(digest, None)
        expires = credential.expires_at.timestamp() if credential.expires_at else math.inf
        self._remember(self._known, digest, (credential.principal, expires, now))
        return credential.principal

    def clear(self) -> None:
        self._known.clear()
        self._unknown.clear()
        self._generation += 1

    async def _follow_version(self) -> None:
        if self._clock() - self._checked_at < self.check_every_s:
            return
        async with self._lock:  # one read per interval, however many requests wait
            started = self._clock()
            if started - self._checked_at < self.check_every_s:
                return
            self.version_reads += 1
            version = await credentials_version(self.db)
            if version != self._version:
                self.clear()
                self._version = version
            self._checked_at = started

    def _remember(self, cache: OrderedDict[str, V], digest: str, value: V) -> None:
        cache[digest] = value
        cache.move_to_end(digest)
        while len(cache) > self.max_entries:
            cache.popitem(last=False)
