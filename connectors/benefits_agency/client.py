"""ΟΠΕΚΑ's referral service in its own words: ``submit_application_support``,
``application_status`` and ``withdraw_application``, SOAP 1.2 with a WS-Security
UsernameToken.

zeep builds and parses the envelopes from the vendored WSDL; aiohttp carries them, through
``AiohttpTransport``. zeep's own async transport is httpx, measured 3-4x slower here under
32 concurrent calls and without a way to cap a response's size (benchmarks/soap_transport.py,
README.md). Every zeep, lxml and aiohttp exception is translated here into RetryableError
or PermanentError; messages name classes and codes, never the answer's content.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from typing import Any

import aiohttp
import zeep
import zeep.exceptions
from lxml import etree
from multidict import CIMultiDictProxy
from zeep.proxy import AsyncServiceProxy
from zeep.transports import Transport
from zeep.wsse.username import UsernameToken

from diasyndesi_sdk.classify import http_failure, soap_fault_failure, transport_failure
from diasyndesi_sdk.errors import ConfigurationError, PermanentError, RetryableError

WSDL = (
    importlib.resources.files(__package__ or "connectors.benefits_agency") / "wsdl" / "opeka.wsdl"
)
"""The vendored WSDL, package data: read through importlib.resources so an installed hub has it."""
BINDING = "{urn:gr:opeka:kk:referrals:v1}OpekaParapompesSoap12Binding"
MAX_RESPONSE_BYTES = 1024 * 1024
SOAP_MEDIA_TYPES = frozenset({"application/soap+xml", "text/xml", "application/xml"})


@dataclass(frozen=True)
class Protocol:
    """ΟΠΕΚΑ's receipt: its protocol number, status code and whether it knew the request."""

    arithmos_protokollou: str
    katastasi: str
    diplotypo: bool


@dataclass(frozen=True)
class ApplicationStatus:
    arithmos_protokollou: str
    katastasi: str


@dataclass(frozen=True)
class Anaklisi:
    """ΟΠΕΚΑ's answer to a withdrawal: whether it had the application (``vrethike``), its
    protocol number and status if so, and whether it knew the withdrawal already."""

    vrethike: bool
    arithmos_protokollou: str | None
    katastasi: str | None
    diplotypo: bool


@dataclass(frozen=True)
class _Reply:
    """The requests-like response zeep's ``process_reply`` reads."""

    status_code: int
    content: bytes
    headers: CIMultiDictProxy[str]
    encoding: str | None = "utf-8"


def _settings() -> zeep.Settings:
    """No DTDs, entities or external references; strict parsing; no huge trees."""
    return zeep.Settings(
        strict=True,
        forbid_dtd=True,
        forbid_entities=True,
        forbid_external=True,
        xml_huge_tree=False,
    )


class AiohttpTransport(Transport):
    """zeep transport over a shared aiohttp session: a timeout per operation, a size cap
    per answer, and no network access for WSDL or XSD loading (the WSDL is vendored)."""

    def __init__(self, session: aiohttp.ClientSession, *, timeout_s: float, max_bytes: int):
        super().__init__(operation_timeout=timeout_s)  # type: ignore[no-untyped-call]
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_bytes = max_bytes

    def _load_remote_data(self, url: str) -> bytes:
        raise ConfigurationError("benefits_agency: remote WSDL/XSD loading is disabled")

    async def post_xml(self, address: str, envelope: Any, headers: dict[str, str]) -> _Reply:
        message = etree.tostring(envelope, xml_declaration=True, encoding="utf-8")
        try:
            async with self._session.post(
                address, data=message, headers=headers, timeout=self._timeout
            ) as response:
                raw = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    raw += chunk
                    if len(raw) > self._max_bytes:
                        raise RetryableError("answer too large", error_class="oversized")
                media = response.content_type
                if response.status != 200 and media not in SOAP_MEDIA_TYPES:
                    # "" : _call names the operation when it re-raises
                    raise http_failure(response.status, response.headers.get("Retry-After"), "")
                if b"<!DOCTYPE" in raw:
                    # SOAP 1.2 forbids a DTD in any message (Part 1, 5.): refuse before
                    # parsing, so bombs and external entities never reach a parser.
                    raise RetryableError(
                        "unsafe XML in answer (DTD)", error_class="unsafe_response"
                    )
                return _Reply(response.status, bytes(raw), response.headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise transport_failure(exc, "") from exc

    async def aclose(self) -> None:
        """The session belongs to the connector, which closes it."""


def _local(name: object) -> str:
    text = getattr(name, "localname", None) or str(name or "")
    return text.rsplit("}", 1)[-1].rsplit(":", 1)[-1]


def classify_fault(fault: zeep.exceptions.Fault, what: str) -> Exception:
    """A SOAP fault through the SDK's one table (Sender: the referral's fault; Receiver: the
    agency's; a WS-Security subcode: the credentials', so the referral waits)."""
    return soap_fault_failure(
        _local(fault.code), [_local(sub) for sub in (fault.subcodes or [])], what
    )


class BenefitsAgencyClient:
    """One zeep client per connector, built once from the vendored WSDL."""

    def __init__(
        self,
        endpoint: str,
        username: str,
        password: str,
        *,
        timeout_s: float,
        session: aiohttp.ClientSession,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        transport = AiohttpTransport(session, timeout_s=timeout_s, max_bytes=max_response_bytes)
        # zeep wants a location and parses it whole here (types inline, no imports).
        with importlib.resources.as_file(WSDL) as wsdl_path:
            self._zeep = zeep.AsyncClient(  # type: ignore[no-untyped-call]
                str(wsdl_path),
                transport=transport,
                settings=_settings(),
                wsse=UsernameToken(username, password, use_digest=True),  # type: ignore[no-untyped-call]
            )
        # create_service() on AsyncClient returns a sync proxy (zeep 4.3.3): build ours.
        self._service = AsyncServiceProxy(  # type: ignore[no-untyped-call]
            self._zeep, self._zeep.wsdl.bindings[BINDING], address=endpoint
        )

    async def submit_application_support(
        self, hub_reference: str, aitisi: dict[str, Any]
    ) -> Protocol:
        """Submit a request for support with an application; a repeat reference returns
        the first protocol number (``diplotypo``)."""
        answer = await self._call(
            "submit", "SubmitApplicationSupport", {**aitisi, "hubReference": hub_reference}
        )
        number, status = answer["arithmosProtokollou"], answer["katastasi"]
        if not isinstance(number, str) or not number or not isinstance(status, str):
            raise RetryableError("submit: malformed answer", error_class="malformed_response")
        return Protocol(number, status, bool(answer["diplotypo"]))

    async def application_status(
        self, *, hub_reference: str | None = None, arithmos_protokollou: str | None = None
    ) -> ApplicationStatus | None:
        """The current status by the hub's reference or ΟΠΕΚΑ's number; None if unknown."""
        query = (
            {"hubReference": hub_reference}
            if hub_reference is not None
            else {"arithmosProtokollou": arithmos_protokollou}
        )
        answer = await self._call("status", "GetApplicationStatus", query)
        if not answer["vrethike"]:
            return None
        number, status = answer["arithmosProtokollou"], answer["katastasi"]
        if not isinstance(number, str) or not number or not isinstance(status, str):
            raise RetryableError("status: malformed answer", error_class="malformed_response")
        return ApplicationStatus(number, status)

    async def withdraw_application(
        self,
        hub_withdrawal_reference: str,
        hub_reference: str,
        hub_referral_id: str,
        *,
        aitia: str,
        olokliri: bool,
        programmata: list[str],
    ) -> Anaklisi:
        """Withdraw the application submitted (or to be submitted) under ``hub_reference``:
        whole (``olokliri``) or the ``programmata`` named. A repeated
        ``hub_withdrawal_reference`` answers ``diplotypo``; ΟΠΕΚΑ keeps a withdrawal of an
        application it has not got yet (``vrethike`` false), which is then registered
        withdrawn."""
        answer = await self._call(
            "withdraw",
            "WithdrawApplication",
            {
                "hubWithdrawalReference": hub_withdrawal_reference,
                "hubReference": hub_reference,
                "hubReferralId": hub_referral_id,
                "aitia": aitia,
                "olokliri": olokliri,
                "programmata": {"kodikosProgrammatos": programmata},
            },
        )
        found, number, status = (
            answer["vrethike"],
            answer["arithmosProtokollou"],
            answer["katastasi"],
        )
        if found and (not isinstance(number, str) or not number):
            raise RetryableError("withdraw: malformed answer", error_class="malformed_response")
        return Anaklisi(
            bool(found),
            number if found else None,
            status if isinstance(status, str) else None,
            bool(answer["diplotypo"]),
        )

    async def _call(self, what: str, operation: str, kwargs: dict[str, Any]) -> Any:
        try:
            return await getattr(self._service, operation)(**kwargs)
        except (RetryableError, PermanentError) as exc:
            raise type(exc)(
                f"{what}: {exc}", error_class=exc.error_class, retry_after_s=exc.retry_after_s
            ) from exc
        except zeep.exceptions.Fault as exc:
            raise classify_fault(exc, what) from None
        except (zeep.exceptions.ValidationError, TypeError) as exc:
            # Raised while building the request: the mapped payload does not fit the WSDL.
            path = getattr(exc, "path", None)
            where = ".".join(str(p) for p in path) if path else type(exc).__name__
            raise PermanentError(
                f"{what}: payload does not fit the WSDL ({where})", error_class="invalid_payload"
            ) from None
        except (
            zeep.exceptions.DTDForbidden,
            zeep.exceptions.EntitiesForbidden,
            zeep.exceptions.ExternalReferenceForbidden,
        ) as exc:
            raise RetryableError(
                f"{what}: unsafe XML in answer ({type(exc).__name__})",
                error_class="unsafe_response",
            ) from None
        except (zeep.exceptions.Error, etree.LxmlError, ValueError, LookupError) as exc:
            # Non-XML, truncated or unexpected answers; `from None` because zeep's messages
            # quote the answer's content, which may carry personal data.
            raise RetryableError(
                f"{what}: malformed answer ({type(exc).__name__})",
                error_class="malformed_response",
            ) from None
