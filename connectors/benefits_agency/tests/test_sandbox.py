"""The ΟΠΕΚΑ sandbox must behave like a real SOAP agency, checked from the outside with a
plain zeep client against its published WSDL (as any other consumer would)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import zeep
import zeep.exceptions
from fastapi import FastAPI
from zeep.wsse.username import UsernameToken

from connectors.benefits_agency.sandbox.app import WSDL, BenefitsSandboxConfig, create_app
from hub.samples import make_amka
from hub.servers import RunningServer, start_server

PASSWORD = "opeka-sandbox-pw-1"
BINDING = "{urn:gr:opeka:kk:referrals:v1}OpekaParapompesSoap12Binding"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
AMKA = make_amka(date(1975, 1, 1), 1234)


def token(username: str, password: str, *, use_digest: bool = False) -> UsernameToken:
    """zeep is untyped; mypy checks this folder, so the one untyped call is wrapped here."""
    return UsernameToken(username, password, use_digest=use_digest)  # type: ignore[no-untyped-call]


TOKEN = token("diasyndesi", PASSWORD)


def aitisi(hub_reference: str = "dsy-outside-1", **aitoun: Any) -> dict[str, Any]:
    return {
        "hubReference": hub_reference,
        "hubReferralId": "00000000-0000-4000-8000-000000000001",
        "kentroKoinotitas": "KK-KOZANI",
        "aitoumenaProgrammata": {"kodikosProgrammatos": ["EEE", "EPIDOMA_STEGASIS"]},
        "aitoun": {
            "typosTaytopoiisis": "AMKA",
            "arithmosTaytopoiisis": AMKA,
            "eponymo": "Παπαδοπούλου",
            "onoma": "Μαρία",
            "imerominiaGennisis": "1975-01-01",
            **aitoun,
        },
    }


@pytest.fixture
async def sandbox() -> AsyncIterator[tuple[FastAPI, RunningServer]]:
    app = create_app(BenefitsSandboxConfig(password=PASSWORD, decision_delay_s=0.2))
    server = await start_server(app, "127.0.0.1", 0, "opeka-sandbox-test")
    yield app, server
    await server.stop()


Outside = Callable[..., Awaitable[Any]]


@pytest.fixture
def outside(sandbox: tuple[FastAPI, RunningServer]) -> Iterator[Outside]:
    """A plain zeep client built from the served WSDL. zeep is synchronous, so it is built
    and called in a thread: on the loop thread it would block the sandbox it talks to."""
    clients: list[zeep.Client] = []
    url = sandbox[1].url

    def build(wsse: Any) -> Any:
        client = zeep.Client(f"{url}/soap?wsdl", wsse=wsse)  # type: ignore[no-untyped-call]
        clients.append(client)
        return client.create_service(BINDING, f"{url}/soap")  # type: ignore[no-untyped-call]

    async def make(wsse: Any = TOKEN) -> Any:
        return await asyncio.to_thread(build, wsse)

    yield make
    for client in clients:
        client.transport.session.close()


async def call(service: Any, operation: str, **kwargs: Any) -> Any:
    return await asyncio.to_thread(lambda: getattr(service, operation)(**kwargs))


async def post_raw(server: RunningServer, body: bytes, content_type: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{server.url}/soap", data=body, headers={"Content-Type": content_type}
        ) as response,
    ):
        return response.status, await response.text()


async def test_wsdl_is_the_vendored_file(sandbox: tuple[FastAPI, RunningServer]) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{sandbox[1].url}/soap?wsdl") as response,
    ):
        assert response.status == 200
        assert await response.read() == WSDL.read_bytes()


async def test_outside_client_submits_and_reads_status_greek_intact(
    sandbox: tuple[FastAPI, RunningServer], outside: Outside
) -> None:
    service = await outside()
    answer = await call(service, "SubmitApplicationSupport", **aitisi())
    assert re.fullmatch(r"OPEKA/\d{4}/\d{7}", answer.arithmosProtokollou)
    assert answer.katastasi == "KATAXORITHIKE"
    assert answer.diplotypo is False
    status = await call(service, "GetApplicationStatus", hubReference="dsy-outside-1")
    assert status.vrethike is True
    assert status.arithmosProtokollou == answer.arithmosProtokollou
    assert status.katastasi == "KATAXORITHIKE"
    received = sandbox[0].state.ledger.received()
    assert len(received) == 1
    assert received[0]["idempotency_key"] == "dsy-outside-1"
    assert received[0]["payload"]["aitoun"]["eponymo"] == "Παπαδοπούλου"
    assert received[0]["payload"]["aitoumenaProgrammata"]["kodikosProgrammatos"] == [
        "EEE",
        "EPIDOMA_STEGASIS",
    ]
    await asyncio.sleep(0.25)
    by_number = await call(
        service, "GetApplicationStatus", arithmosProtokollou=answer.arithmosProtokollou
    )
    assert by_number.katastasi == "EGKRITHIKE"
    assert by_number.hubReference == "dsy-outside-1"


async def test_same_reference_returns_the_same_protocol_number(
    sandbox: tuple[FastAPI, RunningServer], outside: Outside
) -> None:
    service = await outside(token("diasyndesi", PASSWORD, use_digest=True))
    first = await call(service, "SubmitApplicationSupport", **aitisi())
    again = await call(service, "SubmitApplicationSupport", **aitisi())
    assert again.arithmosProtokollou == first.arithmosProtokollou
    assert again.diplotypo is True
    assert sandbox[0].state.ledger.stats() == {"received": 2, "accepted": 1, "duplicates": 1}
    with pytest.raises(zeep.exceptions.Fault) as caught:
        await call(service, "SubmitApplicationSupport", **aitisi(onoma="Ελένη"))
    assert caught.value.code == "env:Sender"
    assert caught.value.detail.findtext(".//{urn:gr:opeka:kk:referrals:v1}kodikos") == "DIPLOTYPO"


async def test_unknown_reference_is_not_found(outside: Outside) -> None:
    status = await call(await outside(), "GetApplicationStatus", hubReference="dsy-never-sent")
    assert status.vrethike is False
    assert status.arithmosProtokollou is None


@pytest.mark.parametrize(
    ("wsse", "subcode"),
    [
        (None, "InvalidSecurity"),
        (token("diasyndesi", "wrong-password"), "FailedAuthentication"),
        (token("someone-else", PASSWORD), "FailedAuthentication"),
        (token("diasyndesi", "wrong", use_digest=True), "FailedAuthentication"),
    ],
)
async def test_missing_or_wrong_token_is_a_sender_fault(
    sandbox: tuple[FastAPI, RunningServer], outside: Outside, wsse: Any, subcode: str
) -> None:
    with pytest.raises(zeep.exceptions.Fault) as caught:
        await call(await outside(wsse), "SubmitApplicationSupport", **aitisi())
    assert caught.value.code == "env:Sender"
    assert [q.localname for q in caught.value.subcodes] == [subcode]
    assert sandbox[0].state.ledger.stats()["received"] == 0


async def test_invalid_amka_is_a_sender_fault_naming_the_field(
    sandbox: tuple[FastAPI, RunningServer], outside: Outside
) -> None:
    with pytest.raises(zeep.exceptions.Fault) as caught:
        await call(
            await outside(), "SubmitApplicationSupport", **aitisi(arithmosTaytopoiisis="1" * 11)
        )
    assert caught.value.code == "env:Sender"
    detail = caught.value.detail
    assert (
        detail.findtext(".//{urn:gr:opeka:kk:referrals:v1}pedio") == "aitoun/arithmosTaytopoiisis"
    )
    assert "1" * 11 not in caught.value.message
    assert sandbox[0].state.ledger.stats()["received"] == 0


async def test_schema_violation_is_a_sender_fault(
    sandbox: tuple[FastAPI, RunningServer], outside: Outside
) -> None:
    with pytest.raises(zeep.exceptions.Fault) as caught:
        await call(await outside(), "SubmitApplicationSupport", **aitisi(afm="12"))
    assert caught.value.code == "env:Sender"
    assert caught.value.detail.findtext(".//{urn:gr:opeka:kk:referrals:v1}kodikos") == "EPIKYROSI"


async def test_injected_server_failure_is_a_receiver_fault(
    sandbox: tuple[FastAPI, RunningServer], outside: Outside
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{sandbox[1].url}/_sandbox/faults", json={"fail_rate": 1.0, "status": 500}
        ) as response,
    ):
        assert response.status == 200
    with pytest.raises(zeep.exceptions.Fault) as caught:
        await call(await outside(), "SubmitApplicationSupport", **aitisi())
    assert caught.value.code == "env:Receiver"


async def test_soap11_and_wrong_content_type_are_refused(
    sandbox: tuple[FastAPI, RunningServer],
) -> None:
    soap11 = (
        b'<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body/></e:Envelope>'
    )
    status, text = await post_raw(sandbox[1], soap11, "application/soap+xml")
    assert status == 500
    assert "env:VersionMismatch" in text
    status, text = await post_raw(sandbox[1], soap11, "text/plain")
    assert status == 400
    assert "env:Sender" in text


async def test_request_with_external_entity_is_refused_without_reading_the_file(
    sandbox: tuple[FastAPI, RunningServer], tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("MARKER-7f3a-SANDBOX", encoding="utf-8")
    body = (
        f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file://{secret}">]>'
        f'<env:Envelope xmlns:env="{SOAP12}"><env:Body>&x;</env:Body></env:Envelope>'
    ).encode()
    status, text = await post_raw(sandbox[1], body, "application/soap+xml")
    assert status == 400
    assert "env:Sender" in text
    assert "MARKER-7f3a-SANDBOX" not in text


async def test_inspection_routes_report_what_was_received(
    sandbox: tuple[FastAPI, RunningServer], outside: Outside
) -> None:
    await call(await outside(), "SubmitApplicationSupport", **aitisi())
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{sandbox[1].url}/_sandbox/stats") as response:
            assert await response.json() == {"received": 1, "accepted": 1, "duplicates": 0}
        async with session.get(f"{sandbox[1].url}/_sandbox/received") as response:
            (entry,) = await response.json()
    assert set(entry) == {
        "idempotency_key",
        "referral_id",
        "payload",
        "received_at",
        "duplicate",
        "withdrawn_at",
        "withdrawn_programmes",
    }
    assert entry["referral_id"] == "00000000-0000-4000-8000-000000000001"
    assert entry["duplicate"] is False


async def test_injected_receiver_fault_keeps_the_retry_after(
    sandbox: tuple[FastAPI, RunningServer],
) -> None:
    knobs = {"fail_rate": 1.0, "status": 500, "retry_after_s": 3}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{sandbox[1].url}/_sandbox/faults", json=knobs) as response,
    ):
        assert response.status == 200
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{sandbox[1].url}/soap",
            data=b"<x/>",
            headers={"Content-Type": "application/soap+xml"},
        ) as answer,
    ):
        assert answer.status == 500
        assert answer.headers["Retry-After"] == "3"
        assert "env:Receiver" in await answer.text()
