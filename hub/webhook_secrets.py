"""Where a centre's webhook may point, and how its signing secret is kept.

Secrets: the hub signs every call with the secret it showed the centre once, so it must be
able to read it back: a digest will not do. It is stored encrypted with AES-256-GCM under
``WEBHOOK_SECRET_KEY`` (kept outside the database: a Secret volume, ``_FILE``), the
webhook's id as associated data so a ciphertext copied onto another row does not decrypt.
Development without the setting makes a key once under ``VAR_DIR``; production without it
refuses to register webhooks.

Addresses: development may call loopback and private receivers (a caseworker system on the
same machine). ``ENVIRONMENT=production`` needs ``https://`` and refuses any address that
is not global (private, loopback, link-local, shared, reserved, multicast), checked on the
resolved addresses at registration and again at every call (``PublicResolver``: the call
connects only to the addresses it checked, so a name that changes its answer cannot steer
it inside).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import os
import secrets
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hub.errors import ConfigurationError
from hub.settings import Settings

KEY_FILE = "webhook-secret.key"
NONCE_BYTES = 12


class RefusedAddress(Exception):
    """A webhook URL that may not be called here; the message names why (no value)."""


def secret_key(settings: Settings) -> bytes | None:
    """The key that encrypts webhook secrets; None in production without the setting."""
    if settings.webhook_secret_key is not None:
        return _key(settings.webhook_secret_key.get_secret_value(), "WEBHOOK_SECRET_KEY")
    if settings.environment == "production":
        return None
    path = settings.var_dir / KEY_FILE
    if not path.exists():
        _create_key_file(path)
    # Another process starting at the same moment may have made the file and not yet
    # written it: wait a little for its content rather than read an empty key.
    for _ in range(50):
        text = path.read_text().strip()
        if text:
            break
        time.sleep(0.02)
    return _key(text, str(path))


def _key(encoded: str, where: str) -> bytes:
    """A base64 32-byte key, or a ConfigurationError naming where it came from."""
    try:
        key = base64.b64decode(encoded, validate=True)
    except (ValueError, binascii.Error):
        key = b""
    if len(key) != 32:
        raise ConfigurationError(f"{where} must be a base64-encoded 32-byte key")
    return key


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # two processes starting at once: the first makes it, the other reads it
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as out:
        out.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")


def seal(key: bytes, webhook_id: str, secret: str) -> bytes:
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, secret.encode(), webhook_id.encode())


def unseal(key: bytes, webhook_id: str, sealed: bytes) -> str:
    nonce, ciphertext = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
    return AESGCM(key).decrypt(nonce, ciphertext, webhook_id.encode()).decode()


def check_url(url: str, production: bool) -> str:
    """The URL's host if it may be registered as given; ``RefusedAddress`` if not."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise RefusedAddress("not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RefusedAddress("an http:// or https:// URL with a host is required")
    if parts.username or parts.password:
        raise RefusedAddress("credentials in the URL are not allowed; the calls are signed")
    if production and parts.scheme != "https":
        raise RefusedAddress("production calls webhooks over https:// only")
    if production:
        literal = _literal(parts.hostname)
        if literal is not None and not is_public(literal):
            raise RefusedAddress("production refuses private, loopback and link-local addresses")
    return parts.hostname


async def check_resolves_public(host: str, port: int | None) -> None:
    """Production, at registration: every address the host resolves to must be public."""
    literal = _literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port or 443, type=socket.SOCK_STREAM
            )
        except OSError:
            raise RefusedAddress("the host does not resolve") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses or not all(is_public(a) for a in addresses):
        raise RefusedAddress("production refuses private, loopback and link-local addresses")


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def _literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class PublicResolver(AbstractResolver):
    """aiohttp's resolver, refusing (``OSError``) a name with any non-public address."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for entry in found:
            if not is_public(ipaddress.ip_address(entry["host"])):
                raise OSError(f"webhook host resolves to a non-public address ({host})")
        return found

    async def close(self) -> None:
        await self._inner.close()
