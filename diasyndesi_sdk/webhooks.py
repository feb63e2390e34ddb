"""Standard Webhooks signatures (https://www.standardwebhooks.com), both directions.

The municipal social services sign what they push to the hub and verify what the hub sends
them with one shared secret per municipality: HMAC-SHA256 over ``{id}.{timestamp}.{body}``,
sent as ``webhook-id``, ``webhook-timestamp`` (unix seconds) and ``webhook-signature``
(space-separated ``v1,<base64>`` entries; any one match is enough, which is how a sender
rotates its secret). The message id is returned to the caller, who owns the replay store.

Written on hashlib/hmac rather than on the ``standardwebhooks`` package (kept as a dev
dependency: the tests check interoperability with it both ways), because that package
(1.1.0) crashes with ValueError, binascii.Error or UnicodeDecodeError on a malformed signature
entry or a non-UTF-8 body, takes one secret (no rotation), reports failures as free text
rather than a reason we can count, and has no injectable clock. The scheme itself is a few
lines of the standard library.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Final

from diasyndesi_sdk.errors import DiasyndesiError

__all__ = [
    "REASONS",
    "TOLERANCE_S",
    "WebhookError",
    "decode_secret",
    "new_secret",
    "sign",
    "verify",
]

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 (a format prefix, not a secret)
TOLERANCE_S: Final = 300
REASONS: Final = frozenset(
    {
        "missing_headers",
        "bad_timestamp",
        "stale_timestamp",
        "future_timestamp",
        "bad_signature",
        "bad_secret",
    }
)
"""Every reason ``verify`` can give: low-cardinality, safe as a metric label."""

Secrets = str | Sequence[str]


class WebhookError(DiasyndesiError):
    """A signed message was refused; ``reason`` is one of ``REASONS`` (never a value)."""

    def __init__(self, reason: str) -> None:
        assert reason in REASONS, reason
        super().__init__(reason)
        self.reason = reason


def new_secret(n_bytes: int = 32) -> str:
    """A fresh signing secret in the spec's ``whsec_<base64>`` form (24–64 bytes allowed)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(n_bytes)).decode()


def decode_secret(secret: str) -> bytes:
    """The key bytes of a ``whsec_`` secret (prefix optional); call it at start to fail fast."""
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookError("bad_secret") from None
    if len(key) < 16:
        raise WebhookError("bad_secret")
    return key


def _keys(secret: Secrets) -> list[bytes]:
    keys = [decode_secret(s) for s in ([secret] if isinstance(secret, str) else secret)]
    if not keys:
        raise WebhookError("bad_secret")
    return keys


def _mac(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    return hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()


def sign(secret: Secrets, msg_id: str, timestamp: float, body: bytes) -> dict[str, str]:
    """The three headers for ``body``; with several secrets, one signature per secret."""
    ts = int(timestamp)
    signatures = " ".join(
        "v1," + base64.b64encode(_mac(key, msg_id, ts, body)).decode() for key in _keys(secret)
    )
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signatures,
    }


def _candidates(header: str) -> list[bytes]:
    """The decodable ``v1`` signatures of a header; anything else is ignored, not fatal."""
    found: list[bytes] = []
    for entry in header.split()[:16]:  # bound the work a hostile header can cause
        version, sep, encoded = entry.partition(",")
        if version != "v1" or not sep:
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found


def verify(
    secret: Secrets,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance_s: int = TOLERANCE_S,
) -> str:
    """Check a signed message and return its ``webhook-id``; raise ``WebhookError`` if not.

    ``secret`` may be a list (old and new during a rotation): any one key may match.
    The caller must still refuse or absorb an id it has seen (replay within the window).
    """
    keys = _keys(secret)
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id", "").strip()
    raw_ts = lowered.get("webhook-timestamp", "").strip()
    header = lowered.get("webhook-signature", "").strip()
    if not (msg_id and raw_ts and header):
        raise WebhookError("missing_headers")
    if not (raw_ts.isascii() and raw_ts.isdigit() and len(raw_ts) <= 12):
        raise WebhookError("bad_timestamp")
    timestamp = int(raw_ts)
    current = time.time() if now is None else now
    if timestamp < current - tolerance_s:
        raise WebhookError("stale_timestamp")
    if timestamp > current + tolerance_s:
        raise WebhookError("future_timestamp")
    offered = _candidates(header)
    for key in keys:
        expected = _mac(key, msg_id, timestamp, body)
        # A list, not a generator: every candidate is compared, whichever one matches.
        if any([hmac.compare_digest(expected, candidate) for candidate in offered]):
            return msg_id
    raise WebhookError("bad_signature")
