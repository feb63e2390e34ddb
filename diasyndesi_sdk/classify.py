"""The one failure-classification table of every family: what an HTTP status, a SOAP fault
or a transport exception means for a delivery.

- **retryable**: the agency may take the same delivery later (timeouts, 5xx, 429);
- **permanent**: it never will as sent (4xx, a SOAP Sender fault, a TLS failure);
- **credentials**: the hub's credentials were refused (401, 403, a WS-Security fault). The
  operator must fix them, and the referral waits for that rather than being dead-lettered,
  so the delivery is retried (``error_class="auth_rejected"``).

Before this table each client had its own copy and they disagreed (403 was permanent for
REST and retryable for SOAP; ``Retry-After`` was parsed two ways). A family may still give
one status its own meaning (a 409 "message id reused"), by handling it before calling here.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable
from email.utils import parsedate_to_datetime
from enum import StrEnum

from diasyndesi_sdk.errors import DeliveryError, PermanentError, RetryableError

__all__ = [
    "AUTH_SUBCODES",
    "HTTP_STATUSES",
    "Verdict",
    "credentials_refused",
    "http_failure",
    "retry_after",
    "soap_fault_failure",
    "transport_failure",
]


class Verdict(StrEnum):
    RETRYABLE = "retryable"
    PERMANENT = "permanent"
    CREDENTIALS = "credentials"


HTTP_STATUSES: dict[int, Verdict] = {
    401: Verdict.CREDENTIALS,
    403: Verdict.CREDENTIALS,
    408: Verdict.RETRYABLE,
    425: Verdict.RETRYABLE,
    429: Verdict.RETRYABLE,
    500: Verdict.RETRYABLE,
    502: Verdict.RETRYABLE,
    503: Verdict.RETRYABLE,
    504: Verdict.RETRYABLE,
}
"""Every other status of 300 and above is permanent."""

SOAP_FAULT_CODES: dict[str, Verdict] = {
    "Sender": Verdict.PERMANENT,  # SOAP 1.2: the caller's mistake
    "Client": Verdict.PERMANENT,  # SOAP 1.1's name for it
    "Receiver": Verdict.RETRYABLE,  # the agency's
    "Server": Verdict.RETRYABLE,
}
"""Any other code (VersionMismatch, MustUnderstand, DataEncodingUnknown) is a protocol
mismatch between hub and agency, a configuration matter, never the referral's fault:
retryable as ``soap_protocol_fault``."""

AUTH_SUBCODES = frozenset(
    {"FailedAuthentication", "InvalidSecurity", "InvalidSecurityToken", "FailedCheck"}
)
"""WS-Security fault subcodes (WSS 1.1 §12): the credentials, not the referral, are wrong."""


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            moment = parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            return None
        return max(0.0, moment - (time.time() if now is None else now))


def credentials_refused(what: str, detail: str = "") -> RetryableError:
    """The agency refused the hub's credentials: the operator's to fix; the referral waits."""
    suffix = f" ({detail})" if detail else ""
    return RetryableError(f"{_at(what)}credentials refused{suffix}", error_class="auth_rejected")


def http_failure(status: int, retry_after_header: str | None, what: str) -> DeliveryError:
    """A failed HTTP status as a delivery error; the class name is metric-safe."""
    verdict = HTTP_STATUSES.get(status, Verdict.PERMANENT)
    if verdict is Verdict.CREDENTIALS:
        return credentials_refused(what, f"HTTP {status}")
    message = f"{_at(what)}agency answered {status}"
    if verdict is Verdict.RETRYABLE:
        return RetryableError(
            message, error_class=f"http_{status}", retry_after_s=retry_after(retry_after_header)
        )
    return PermanentError(message, error_class=f"http_{status}")


def soap_fault_failure(code: str, subcodes: Iterable[str], what: str) -> DeliveryError:
    """A SOAP fault (local names of its code and subcodes) as a delivery error."""
    subs = set(subcodes)
    label = "/".join([code, *sorted(subs)])
    if subs & AUTH_SUBCODES:
        return credentials_refused(what, label)
    verdict = SOAP_FAULT_CODES.get(code)
    if verdict is Verdict.PERMANENT:
        return PermanentError(f"{_at(what)}agency fault {label}", error_class="soap_client_fault")
    if verdict is Verdict.RETRYABLE:
        return RetryableError(f"{_at(what)}agency fault {label}", error_class="soap_server_fault")
    return RetryableError(f"{_at(what)}agency fault {label}", error_class="soap_protocol_fault")


def transport_failure(exc: BaseException, what: str) -> DeliveryError:
    """A transport exception as a delivery error: a TLS failure (a certificate expired,
    unreadable or from another CA, a handshake refused) is permanent ``tls``; a timeout or
    any other connection failure is retryable. The message names the class, never the
    exception's text (it can quote a path or a host's certificate)."""
    tls = _tls_error(exc)
    if tls is not None:
        # OpenSSL's reason (CERTIFICATE_VERIFY_FAILED, TLSV1_ALERT_UNKNOWN_CA…): safe to
        # show, and what the operator needs; the message text itself may name a path.
        reason = getattr(tls, "reason", None) or type(tls).__name__
        return PermanentError(f"{_at(what)}TLS refused ({reason})", error_class="tls")
    if isinstance(exc, TimeoutError):
        return RetryableError(f"{_at(what)}timed out", error_class="timeout")
    return RetryableError(f"{_at(what)}{type(exc).__name__}", error_class="connection")


def _at(what: str) -> str:
    """The call a message is about (``"register: "``); empty when the caller adds it."""
    return f"{what}: " if what else ""


def _tls_error(exc: BaseException) -> BaseException | None:
    """The certificate or handshake failure in ``exc``'s chain (aiohttp wraps ssl's errors),
    or None, also when the connection was only cut short mid-TLS (a network matter)."""
    seen: BaseException | None = exc
    found: BaseException | None = None
    for _ in range(6):
        if seen is None:
            break
        if isinstance(seen, _CUT_SHORT):
            return None
        if isinstance(seen, ssl.SSLError) or type(seen).__name__ in _TLS_CLASS_NAMES:
            found = seen if getattr(seen, "reason", None) or found is None else found
        seen = seen.__cause__ or seen.__context__
    return found


_CUT_SHORT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


# aiohttp's TLS errors, by name so the table needs no aiohttp import (a SOAP-only family
# need not load it). ClientConnectorCertificateError does not subclass ssl.SSLError.
_TLS_CLASS_NAMES = frozenset(
    {
        "ClientSSLError",
        "ClientConnectorSSLError",
        "ClientConnectorCertificateError",
        "ServerFingerprintMismatch",
    }
)
