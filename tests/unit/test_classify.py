"""The one classification table (diasyndesi_sdk/classify.py) every family uses: HTTP
statuses, SOAP faults and transport exceptions become the same three verdicts."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import aiohttp
import pytest

from diasyndesi_sdk.classify import (
    credentials_refused,
    http_failure,
    retry_after,
    soap_fault_failure,
    transport_failure,
)
from diasyndesi_sdk.errors import PermanentError, RetryableError


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retryable_with_their_hint(status: int) -> None:
    error = http_failure(status, "7", "register")
    assert isinstance(error, RetryableError)
    assert (error.error_class, error.retry_after_s) == (f"http_{status}", 7.0)
    assert str(error) == f"register: agency answered {status}"


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_wait_for_the_operator(status: int) -> None:
    # 403 used to be permanent for REST and retryable for SOAP: one answer now.
    error = http_failure(status, None, "register")
    assert isinstance(error, RetryableError)
    assert error.error_class == "auth_rejected"


@pytest.mark.parametrize("status", [300, 400, 404, 409, 413, 422, 501])
def test_everything_else_is_permanent(status: int) -> None:
    error = http_failure(status, "5", "register")
    assert isinstance(error, PermanentError)
    assert error.error_class == f"http_{status}"


def test_retry_after_in_both_forms() -> None:
    now = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert retry_after(later, now=now.timestamp()) == 90.0
    assert retry_after(format_datetime(now - timedelta(hours=1), usegmt=True), now.timestamp()) == 0
    assert retry_after("120") == 120.0
    assert retry_after("-3") == 0.0
    assert retry_after("soon") is None
    assert retry_after(None) is None


def test_soap_faults() -> None:
    sender = soap_fault_failure("Sender", [], "submit")
    assert isinstance(sender, PermanentError) and sender.error_class == "soap_client_fault"
    receiver = soap_fault_failure("Receiver", [], "submit")
    assert isinstance(receiver, RetryableError) and receiver.error_class == "soap_server_fault"
    version = soap_fault_failure("VersionMismatch", [], "submit")
    assert isinstance(version, RetryableError) and version.error_class == "soap_protocol_fault"
    auth = soap_fault_failure("Sender", ["FailedAuthentication"], "submit")
    assert isinstance(auth, RetryableError) and auth.error_class == "auth_rejected"
    assert str(auth) == "submit: credentials refused (Sender/FailedAuthentication)"


def test_transport_failures() -> None:
    timeout = transport_failure(TimeoutError(), "register")
    assert isinstance(timeout, RetryableError) and timeout.error_class == "timeout"
    refused = transport_failure(aiohttp.ClientConnectionError("refused"), "register")
    assert isinstance(refused, RetryableError) and refused.error_class == "connection"
    dropped = transport_failure(ssl.SSLEOFError(8, "EOF occurred"), "register")
    assert isinstance(dropped, RetryableError) and dropped.error_class == "connection"


def test_a_tls_failure_is_permanent_and_quotes_nothing() -> None:
    secret_path = "/run/secrets/kdvm-client.key"
    bad = ssl.SSLCertVerificationError(1, f"certificate verify failed ({secret_path})")
    error = transport_failure(bad, "enrol")
    assert isinstance(error, PermanentError) and error.error_class == "tls"
    assert secret_path not in str(error)
    # aiohttp wraps the ssl error; the chain is followed
    try:
        try:
            raise bad
        except ssl.SSLError as inner:
            raise aiohttp.ClientError("wrapped") from inner
    except aiohttp.ClientError as wrapped:
        assert transport_failure(wrapped, "enrol").error_class == "tls"


def test_credentials_refused_without_a_call_name() -> None:
    assert str(credentials_refused("", "HTTP 401")) == "credentials refused (HTTP 401)"
