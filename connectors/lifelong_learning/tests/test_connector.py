"""The connector against the real sandbox over real mutual TLS: receipts, idempotency,
and how every failure is classified (certificates above all)."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
import trustme
from aiohttp import web

from connectors.lifelong_learning.client import LifelongLearningClient
from connectors.sandbox_kit.certs import DevCerts, write_pair
from diasyndesi_sdk.http import http_session, transport_errors
from hub.errors import PermanentError, RetryableError
from schemas.codes import EnrollmentStatus

from .conftest import ConnectorFactory, Sandbox, delivery

LAST_YEAR = datetime(2025, 1, 1, tzinfo=UTC)


async def test_enrols_and_returns_the_centre_reference(
    sandbox: Sandbox, make_connector: ConnectorFactory
) -> None:
    receipt = await (await make_connector()).deliver(delivery())
    assert receipt.reference == "KDBM-KOZ-000001"
    assert receipt.status is EnrollmentStatus.ACCEPTED
    assert receipt.duplicate is False
    status, received = await sandbox.call("GET", "/_sandbox/received")
    assert status == 200
    assert received[0]["idempotency_key"] == delivery().idempotency_key
    assert received[0]["payload"]["learner"]["family_name"] == "Χαλίλ"  # UTF-8, not transliterated


async def test_repeat_key_gives_the_same_reference_as_duplicate(
    sandbox: Sandbox, make_connector: ConnectorFactory
) -> None:
    connector = await make_connector()
    first, again = await connector.deliver(delivery()), await connector.deliver(delivery())
    assert (again.reference, again.duplicate) == (first.reference, True)
    assert sandbox.stats() == {"received": 2, "accepted": 1, "duplicates": 1}


async def test_same_key_with_another_body_is_permanent_422(
    make_connector: ConnectorFactory,
) -> None:
    connector = await make_connector()
    await connector.deliver(delivery())
    other = delivery(body={**delivery().payload, "courses": ["DIGITAL_SKILLS"]})
    with pytest.raises(PermanentError) as caught:
        await connector.deliver(other)
    assert caught.value.error_class == "http_422"


async def test_decisions_follow_the_sequence(make_connector: ConnectorFactory) -> None:
    connector = await make_connector()
    receipts = [await connector.deliver(delivery(n)) for n in range(1, 6)]
    accepted, rejected, waitlisted = "accepted", "rejected", "waitlisted"
    expected = [accepted, accepted, rejected, waitlisted, waitlisted]
    assert [str(r.status) for r in receipts] == expected


# --------------------------------------------------------------------------- certificates


async def test_no_client_certificate_is_refused_as_tls(sandbox: Sandbox, certs: DevCerts) -> None:
    anonymous = ssl.create_default_context(cafile=certs.ca_file)
    async with http_session(4, ssl_context=anonymous) as session:
        client = LifelongLearningClient(sandbox.server.url, 5, session)
        with pytest.raises(PermanentError) as caught:
            await client.enrol(delivery().payload, delivery().idempotency_key)
    assert caught.value.error_class == "tls"
    assert sandbox.stats()["received"] == 0


async def test_client_certificate_from_another_ca_is_tls(
    sandbox: Sandbox, certs: DevCerts, make_connector: ConnectorFactory
) -> None:
    connector = await make_connector(certs.wrong_ca_client)
    with pytest.raises(PermanentError) as caught:
        await connector.deliver(delivery())
    assert caught.value.error_class == "tls"
    assert str(caught.value) == "enrol: TLS refused (TLSV1_ALERT_UNKNOWN_CA)"  # no path, no secret
    assert sandbox.stats()["received"] == 0


async def test_expired_client_certificate_is_tls(
    sandbox: Sandbox, certs: DevCerts, make_connector: ConnectorFactory
) -> None:
    leaf = certs.authority.issue_cert(
        common_name="diasyndesi-hub", not_before=LAST_YEAR - timedelta(days=90), not_after=LAST_YEAR
    )
    connector = await make_connector(write_pair(certs.ca_file.parent, "expired", leaf))
    with pytest.raises(PermanentError) as caught:
        await connector.deliver(delivery())
    assert caught.value.error_class == "tls"
    assert "CERTIFICATE_EXPIRED" in str(caught.value)
    assert sandbox.stats()["received"] == 0


async def test_centre_certificate_we_do_not_trust_is_tls(
    sandbox: Sandbox, certs: DevCerts, make_connector: ConnectorFactory
) -> None:
    stranger = certs.ca_file.parent / "stranger-ca.pem"
    trustme.CA().cert_pem.write_to_path(stranger)
    connector = await make_connector(ca_file=stranger)
    with pytest.raises(PermanentError) as caught:
        await connector.deliver(delivery())
    assert (caught.value.error_class, str(caught.value)) == (
        "tls",
        "enrol: TLS refused (CERTIFICATE_VERIFY_FAILED)",
    )


@pytest.mark.parametrize(
    ("cause", "wrapped"),
    [
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), True),
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), False),
    ],
    ids=["reset", "eof", "bare-eof"],
)
async def test_a_connection_cut_short_is_the_network_not_the_certificate(
    cause: OSError, wrapped: bool
) -> None:
    """A reset or an EOF tells nothing about certificates; only an alert or a 401 does."""
    with pytest.raises(RetryableError) as caught:
        async with transport_errors("enrol"):
            if wrapped:
                raise aiohttp.ClientOSError() from cause
            raise cause
    assert caught.value.error_class == "connection"


async def test_answer_without_an_enrolment_id_is_malformed(certs: DevCerts) -> None:
    async def answer(_: web.Request) -> web.Response:
        return web.json_response({"status": "accepted"}, status=201)

    app = web.Application()
    app.router.add_post("/v1/enrolments", answer)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(*certs.server)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls).start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    try:
        client_tls = ssl.create_default_context(cafile=certs.ca_file)
        async with http_session(4, ssl_context=client_tls) as session:
            client = LifelongLearningClient(url, 5, session)
            with pytest.raises(RetryableError) as caught:
                await client.enrol(delivery().payload, delivery().idempotency_key)
    finally:
        await runner.cleanup()
    assert caught.value.error_class == "malformed_response"


# --------------------------------------------------------------------------- other failures
