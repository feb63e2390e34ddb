"""The skeleton every HTTP-based family shares, written once: one pooled session opened at
``start`` and closed at ``stop``, and one client object built on it."""

from __future__ import annotations

import ssl
from abc import abstractmethod
from collections.abc import Callable
from typing import Generic, TypeVar

import aiohttp

from diasyndesi_sdk.connector import Connector
from diasyndesi_sdk.http import http_session
from schemas.codes import EnrollmentStatus

__all__ = ["PooledConnector", "enrollment_status"]

ClientT = TypeVar("ClientT")


class PooledConnector(Connector, Generic[ClientT]):
    """A family's connector says how to check its settings (``check``), how to build its
    client on the session (``make_client``) and, for mutual TLS, its ``ssl_context``; then
    ``deliver`` (and ``status_of``) use ``self.client``."""

    _session: aiohttp.ClientSession | None = None
    _client: ClientT | None = None

    def check(self) -> None:
        """Refuse settings that cannot work (a ConfigurationError naming the agency)."""

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of the pool (a client certificate); None: the default."""
        return None

    @abstractmethod
    def make_client(self, session: aiohttp.ClientSession) -> ClientT:
        """The agency's client on the pooled ``session``."""

    def username_client(
        self, client_class: Callable[..., ClientT], session: aiohttp.ClientSession
    ) -> ClientT:
        """``client_class(base_url, username, secret, timeout_s=, session=)``: the client of a
        family that authenticates with a username and a secret (WS-Security, OAuth2 client
        credentials); the username defaults to ``diasyndesi``."""
        connection = self.connection
        return client_class(
            connection.base_url,
            connection.username or "diasyndesi",
            connection.secret.get_secret_value(),
            timeout_s=connection.timeout_s,
            session=session,
        )

    @property
    def client(self) -> ClientT:
        assert self._client is not None, f"{type(self).__name__} used before start()"
        return self._client

    async def start(self) -> None:
        self.check()
        context = self.ssl_context()
        self._session = http_session(self.max_connections, ssl_context=context)
        self._client = self.make_client(self._session)

    async def stop(self) -> None:
        self._client = None
        if self._session is not None:
            await self._session.close()
            self._session = None


def enrollment_status(answer: str) -> EnrollmentStatus | None:
    """An agency's status word, when it is one of the hub's; else unknown (None)."""
    return EnrollmentStatus(answer) if answer in EnrollmentStatus.__members__.values() else None
