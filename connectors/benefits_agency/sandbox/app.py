"""Sandbox of the benefits agency (ΟΠΕΚΑ): SOAP 1.2, document/literal, WS-Security.

It serves the same vendored WSDL the connector ships (three operations: submit, status,
withdraw), checks every request against the
WSDL's own schema and a UsernameToken, and answers SOAP 1.2 faults the way the Greek
public sector's services do (AADE RgWsPublic2): ``Sender`` for the caller's mistakes,
``Receiver`` for its own. It cannot push status: the hub polls ``GetApplicationStatus``.
Static WSDL + lxml rather than spyne: spyne does not import on Python 3.12+.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib.resources
import secrets
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import Response
from lxml import etree
from pydantic import BaseModel, ConfigDict, Field, field_validator
from stdnum.gr import amka

from connectors.sandbox_kit import (
    Faults,
    IdempotencyKeyReused,
    NonEmptySecret,
    ReceivedRecord,
    SandboxLedger,
    add_sandbox_routes,
    apply_faults,
    quiet_fastapi,
    utc_now,
)

__all__ = ["WSDL", "BenefitsSandboxConfig", "HostileAnswer", "create_app"]

WSDL = importlib.resources.files("connectors.benefits_agency") / "wsdl" / "opeka.wsdl"
"""The WSDL the connector ships (package data), served as ΟΠΕΚΑ would publish it."""
TNS = "urn:gr:opeka:kk:referrals:v1"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
DIGEST = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
    "#PasswordDigest"
)
SOAP_CONTENT_TYPE = "application/soap+xml; charset=utf-8"
MAX_REQUEST_BYTES = 256 * 1024
DIGEST_FRESHNESS = timedelta(minutes=5)

# The agency's decision codes, by the hub word the sandbox is configured with.
DECISIONS = {
    "accepted": "EGKRITHIKE",
    "rejected": "APORRIFTHIKE",
    "under_review": "SE_ELEGXO",
    "needs_documents": "ANAMONI_DIKAIOLOGITIKON",
}


class BenefitsSandboxConfig(BaseModel):
    """Settings of one ΟΠΕΚΑ sandbox; the WS-Security password is a `SecretStr`."""

    model_config = ConfigDict(extra="forbid")

    username: str = "diasyndesi"
    password: NonEmptySecret
    decision_delay_s: float = Field(default=2.0, ge=0.0)
    decision: str = "accepted"
    state_file: Path | None = None

    @field_validator("decision")
    @classmethod
    def _known_decision(cls, value: str) -> str:
        if value not in DECISIONS:
            raise ValueError(f"decision must be one of {sorted(DECISIONS)}")
        return value


class HostileAnswer(BaseModel):
    """What `malformed_rate` sends instead of an answer (`POST /_sandbox/malformed`)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["html", "bomb", "xxe", "oversized", "truncated"] = "html"
    xxe_target: str = "/etc/hostname"
    oversized_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)


def _parser() -> etree.XMLParser:
    """Hardened: no DTD loading, no entity expansion, no network, no huge trees."""
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def _request_schema() -> etree.XMLSchema:
    """The WSDL's embedded XSD, so the sandbox validates exactly what it publishes."""
    wsdl = etree.ElementTree(etree.fromstring(WSDL.read_bytes(), _parser()))
    node = wsdl.find(
        "{http://schemas.xmlsoap.org/wsdl/}types/{http://www.w3.org/2001/XMLSchema}schema"
    )
    assert node is not None, "vendored WSDL lost its schema"
    return etree.XMLSchema(node)


class SoapFault(Exception):
    """Answered as a SOAP 1.2 Fault: 400 for ``Sender``, 500 for ``Receiver`` (SOAP 1.2 HTTP)."""

    def __init__(
        self,
        code: str,
        kodikos: str,
        perigrafi: str,
        *,
        subcode: str | None = None,
        pedio: str | None = None,
    ) -> None:
        super().__init__(perigrafi)
        self.code, self.subcode = code, subcode
        self.kodikos, self.perigrafi, self.pedio = kodikos, perigrafi, pedio

    def response(self) -> Response:
        nsmap = {"env": SOAP12, "wsse": WSSE, "opeka": TNS}
        env = etree.Element(f"{{{SOAP12}}}Envelope", nsmap=nsmap)
        fault = etree.SubElement(etree.SubElement(env, f"{{{SOAP12}}}Body"), f"{{{SOAP12}}}Fault")
        code = etree.SubElement(fault, f"{{{SOAP12}}}Code")
        etree.SubElement(code, f"{{{SOAP12}}}Value").text = f"env:{self.code}"
        if self.subcode:
            sub = etree.SubElement(code, f"{{{SOAP12}}}Subcode")
            etree.SubElement(sub, f"{{{SOAP12}}}Value").text = self.subcode
        reason = etree.SubElement(fault, f"{{{SOAP12}}}Reason")
        text = etree.SubElement(reason, f"{{{SOAP12}}}Text")
        text.set("{http://www.w3.org/XML/1998/namespace}lang", "el")
        text.text = self.perigrafi
        detail = etree.SubElement(
            etree.SubElement(fault, f"{{{SOAP12}}}Detail"), f"{{{TNS}}}SfalmaOpeka"
        )
        etree.SubElement(detail, f"{{{TNS}}}kodikos").text = self.kodikos
        if self.pedio:
            etree.SubElement(detail, f"{{{TNS}}}pedio").text = self.pedio
        etree.SubElement(detail, f"{{{TNS}}}perigrafi").text = self.perigrafi
        status = 400 if self.code == "Sender" else 500
        return _soap_response(env, status)


def _soap_response(envelope: etree._Element, status: int = 200) -> Response:
    body = etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")
    return Response(body, status_code=status, media_type=SOAP_CONTENT_TYPE)


def _envelope(*children: etree._Element) -> etree._Element:
    env = etree.Element(f"{{{SOAP12}}}Envelope", nsmap={"env": SOAP12, "opeka": TNS})
    body = etree.SubElement(env, f"{{{SOAP12}}}Body")
    body.extend(children)
    return env


def _answer(name: str, fields: dict[str, str]) -> etree._Element:
    node = etree.Element(f"{{{TNS}}}{name}")
    for key, value in fields.items():
        etree.SubElement(node, f"{{{TNS}}}{key}").text = value
    return node


def _auth_failed(text: str) -> SoapFault:
    return SoapFault("Sender", "AUTH", text, subcode="wsse:FailedAuthentication")


def _check_token(header: etree._Element | None, username: str, password: str) -> None:
    """WS-Security UsernameToken, PasswordText or PasswordDigest (Nonce + Created)."""
    token = None if header is None else header.find(f"{{{WSSE}}}Security/{{{WSSE}}}UsernameToken")
    if token is None:
        raise SoapFault(
            "Sender",
            "AUTH",
            "Λείπει το WS-Security UsernameToken",
            subcode="wsse:InvalidSecurity",
        )
    user = token.findtext(f"{{{WSSE}}}Username") or ""
    pw_node = token.find(f"{{{WSSE}}}Password")
    given = "" if pw_node is None else (pw_node.text or "")
    if pw_node is not None and pw_node.get("Type") == DIGEST:
        nonce, created = token.findtext(f"{{{WSSE}}}Nonce"), token.findtext(f"{{{WSU}}}Created")
        try:
            raw_nonce = base64.b64decode(nonce or "", validate=True)
            when = datetime.fromisoformat((created or "").replace("Z", "+00:00"))
        except (binascii.Error, ValueError):
            raise _auth_failed("Μη έγκυρο PasswordDigest") from None
        if when.tzinfo is None or abs(utc_now() - when) > DIGEST_FRESHNESS:
            raise _auth_failed("Ληγμένο UsernameToken")
        digest = hashlib.sha1(raw_nonce + (created or "").encode() + password.encode())  # noqa: S324 - the WSS profile's algorithm
        expected = base64.b64encode(digest.digest()).decode()
    else:
        expected = password
    user_ok = secrets.compare_digest(user.encode(), username.encode())
    pw_ok = secrets.compare_digest(given.encode(), expected.encode())
    if not (user_ok and pw_ok):
        raise _auth_failed("Λάθος όνομα χρήστη ή κωδικός")


def _to_dict(node: etree._Element) -> Any:
    """An element as plain data for the ledger (repeated children become lists)."""
    children = list(node)
    if not children:
        return node.text
    out: dict[str, Any] = {}
    for child in children:
        key = etree.QName(child).localname
        value = _to_dict(child)
        if key in out:
            out[key] = [*out[key], value] if isinstance(out[key], list) else [out[key], value]
        elif key in {"kodikosProgrammatos", "kategoria"}:
            out[key] = [value]
        else:
            out[key] = value
    return out


def _hostile(answer: HostileAnswer) -> Response:
    """Answers that must never crash or leak through a hardened client."""
    if answer.mode == "bomb":
        lol = "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
        body = (
            f'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol0 "lol">{lol}]>'
            f'<env:Envelope xmlns:env="{SOAP12}"><env:Body>&lol9;</env:Body></env:Envelope>'
        )
    elif answer.mode == "xxe":
        body = (
            f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file://{answer.xxe_target}">]>'
            f'<env:Envelope xmlns:env="{SOAP12}" xmlns:o="{TNS}"><env:Body>'
            "<o:SubmitApplicationSupportResponse><o:arithmosProtokollou>&x;"
            "</o:arithmosProtokollou></o:SubmitApplicationSupportResponse>"
            "</env:Body></env:Envelope>"
        )
    elif answer.mode == "oversized":
        padding = "<!-- " + "x" * answer.oversized_bytes + " -->"
        body = f'<env:Envelope xmlns:env="{SOAP12}">{padding}<env:Body/></env:Envelope>'
    elif answer.mode == "truncated":
        body = f'<env:Envelope xmlns:env="{SOAP12}"><env:Body><o:Submit'
    else:
        return Response("<html><body>Gateway</body></html>", media_type="text/html")
    return Response(body, media_type=SOAP_CONTENT_TYPE)


def create_app(config: BenefitsSandboxConfig) -> FastAPI:
    """Build the ΟΠΕΚΑ sandbox; `app.state` exposes ledger, faults and hostile to tests."""
    ledger = SandboxLedger(config.state_file)
    faults = Faults()
    schema = _request_schema()
    wsdl_bytes = WSDL.read_bytes()
    password = config.password.get_secret_value()
    decision_delay = timedelta(seconds=config.decision_delay_s)
    app = quiet_fastapi(title="ΟΠΕΚΑ sandbox (benefits agency, SOAP 1.2)")
    app.state.ledger = ledger
    app.state.faults = faults
    app.state.hostile = HostileAnswer()
    add_sandbox_routes(app, ledger, faults)

    @app.post("/_sandbox/malformed", tags=["sandbox"])
    async def sandbox_malformed(answer: HostileAnswer) -> dict[str, Any]:
        """Choose what `malformed_rate` sends: html, bomb, xxe, oversized or truncated."""
        app.state.hostile = answer
        return answer.model_dump()

    def katastasi(rec: ReceivedRecord) -> str:
        # Time-based, computed when asked: the decision happens whether or not anyone polls.
        if ledger.withdrawn_at(rec.idempotency_key) is not None:
            return "ANAKLITHIKE"
        decided = utc_now() - rec.received_at >= decision_delay
        return DECISIONS[config.decision] if decided else "KATAXORITHIKE"

    def submit(op: etree._Element) -> etree._Element:
        data = _to_dict(op)
        aitoun = data["aitoun"]
        if aitoun["typosTaytopoiisis"] == "AMKA" and not amka.is_valid(
            aitoun["arithmosTaytopoiisis"]
        ):
            raise SoapFault(
                "Sender", "EPIKYROSI", "Μη έγκυρος ΑΜΚΑ", pedio="aitoun/arithmosTaytopoiisis"
            )
        year = utc_now().year
        try:
            rec, is_new = ledger.record(
                data["hubReference"],
                data["hubReferralId"],
                data,
                lambda n: f"OPEKA/{year}/{n:07d}",
            )
        except IdempotencyKeyReused:
            raise SoapFault(
                "Sender",
                "DIPLOTYPO",
                "Το hubReference χρησιμοποιήθηκε με άλλα στοιχεία",
                pedio="hubReference",
            ) from None
        assert rec.reference is not None
        return _answer(
            "SubmitApplicationSupportResponse",
            {
                "arithmosProtokollou": rec.reference,
                "katastasi": katastasi(rec),
                "diplotypo": "false" if is_new else "true",
                "imerominiaKataxorisis": rec.received_at.isoformat(),
            },
        )

    def status(op: etree._Element) -> etree._Element:
        by_key = op.findtext(f"{{{TNS}}}hubReference")
        number = op.findtext(f"{{{TNS}}}arithmosProtokollou")
        rec = ledger.get(by_key) if by_key else ledger.by_reference(number or "")
        if rec is None or rec.reference is None:
            return _answer("GetApplicationStatusResponse", {"vrethike": "false"})
        return _answer(
            "GetApplicationStatusResponse",
            {
                "vrethike": "true",
                "arithmosProtokollou": rec.reference,
                "hubReference": rec.idempotency_key,
                "katastasi": katastasi(rec),
            },
        )

    def withdraw(op: etree._Element) -> etree._Element:
        """Kept even for an application not received yet (journalled): it is then
        registered withdrawn (ANAKLITHIKE) when it comes."""
        data = _to_dict(op)
        programmes = (data.get("programmata") or {}).get("kodikosProgrammatos", [])
        try:
            rec, is_new = ledger.withdraw(
                data["hubWithdrawalReference"],
                data["hubReference"],
                data["hubReferralId"],
                programmes,
                whole=data["olokliri"] == "true",
                reason=data["aitia"],
            )
        except IdempotencyKeyReused:
            raise SoapFault(
                "Sender",
                "DIPLOTYPO",
                "Το hubWithdrawalReference χρησιμοποιήθηκε με άλλα στοιχεία",
                pedio="hubWithdrawalReference",
            ) from None
        original = ledger.get(rec.delivery_key)
        fields = {"vrethike": "false" if original is None else "true"}
        if original is not None and original.reference is not None:
            fields["arithmosProtokollou"] = original.reference
            fields["katastasi"] = katastasi(original)
        elif rec.whole:
            fields["katastasi"] = "ANAKLITHIKE"
        fields["diplotypo"] = "false" if is_new else "true"
        return _answer("WithdrawApplicationResponse", fields)

    operations = {
        "SubmitApplicationSupport": submit,
        "GetApplicationStatus": status,
        "WithdrawApplication": withdraw,
    }

    def handle(raw: bytes) -> Response:
        if len(raw) > MAX_REQUEST_BYTES:
            raise SoapFault("Sender", "MEGETHOS", "Πολύ μεγάλο αίτημα")
        try:
            env = etree.fromstring(raw, _parser())
        except etree.XMLSyntaxError:
            raise SoapFault("Sender", "XML", "Μη έγκυρο XML") from None
        if env.getroottree().docinfo.doctype:
            raise SoapFault("Sender", "XML", "Δεν επιτρέπεται DTD")
        if env.tag == f"{{{SOAP11}}}Envelope":
            raise SoapFault("VersionMismatch", "SOAP", "Υποστηρίζεται μόνο SOAP 1.2")
        body = env.find(f"{{{SOAP12}}}Body")
        if env.tag != f"{{{SOAP12}}}Envelope" or body is None or len(body) != 1:
            raise SoapFault("Sender", "SOAP", "Μη έγκυρος φάκελος SOAP 1.2")
        _check_token(env.find(f"{{{SOAP12}}}Header"), config.username, password)
        op = body[0]
        name = etree.QName(op)
        if name.namespace != TNS or name.localname not in operations:
            raise SoapFault("Sender", "LEITOURGIA", "Άγνωστη λειτουργία")
        if not schema.validate(op):
            error = schema.error_log.last_error
            where = error.path.rsplit("/", 1)[-1] if error is not None and error.path else None
            raise SoapFault("Sender", "EPIKYROSI", "Το αίτημα δεν συμφωνεί με το WSDL", pedio=where)
        return _soap_response(_envelope(operations[name.localname](op)))

    @app.get("/soap", tags=["soap"])
    async def wsdl(request: Request) -> Response:
        """The WSDL (`GET /soap?wsdl`), as agencies publish theirs."""
        if "wsdl" not in request.query_params:
            return Response("use ?wsdl", status_code=404, media_type="text/plain")
        return Response(wsdl_bytes, media_type="text/xml; charset=utf-8")

    @app.post("/soap", tags=["soap"])
    async def soap(request: Request) -> Response:
        """SOAP 1.2 endpoint for both operations; faults injected by the knobs come first."""
        await request.body()  # the whole request first: a real agency keeps working on it
        # even when the caller disconnects mid-call (a SIGKILLed worker), so faults come after
        if (fault := await apply_faults(faults)) is not None:
            if fault.status_code == 200 and fault.media_type == "text/html":
                return _hostile(app.state.hostile)
            if fault.status_code == 500:  # the agency's application failed: SOAP says so
                soap_fault = SoapFault("Receiver", "ESOTERIKO", "Προσωρινό σφάλμα").response()
            elif fault.status_code == 400:  # a refusal by the service itself: SOAP says Sender
                soap_fault = SoapFault("Sender", "EPIKYROSI", "Το αίτημα απορρίφθηκε").response()
            else:
                return fault  # 503 / 504 / 429 come from the gateway in front, not from SOAP
            if "retry-after" in fault.headers:
                soap_fault.headers["Retry-After"] = fault.headers["retry-after"]
            return soap_fault
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/soap+xml":
            return SoapFault("Sender", "SOAP", "Αναμένεται application/soap+xml").response()
        try:
            return handle(await request.body())
        except SoapFault as fault_:
            return fault_.response()
        except Exception:  # the agency's own bug: a Receiver fault, never a stack trace
            return SoapFault("Receiver", "ESOTERIKO", "Εσωτερικό σφάλμα").response()

    return app
