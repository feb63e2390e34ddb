"""Standard Webhooks signing (diasyndesi_sdk/webhooks.py): our own checks, and
interoperability with the reference `standardwebhooks` package both ways, since
municipalities may use it."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from diasyndesi_sdk.webhooks import REASONS, WebhookError, decode_secret, new_secret, sign, verify

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
BODY = b'{"referral_id":"ref-1","status":"received","notes":"\xce\xb3\xce\xb5\xce\xb9\xce\xb1"}'
NOW = 1_790_000_000.0
Tamper = Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]]


def reason_of(secret: str | list[str], headers: dict[str, str], body: bytes = BODY) -> str:
    with pytest.raises(WebhookError) as caught:
        verify(secret, headers, body, now=NOW)
    assert caught.value.reason in REASONS
    assert str(caught.value) == caught.value.reason
    return caught.value.reason


def test_round_trip_returns_the_message_id() -> None:
    headers = sign(SECRET, "msg_1", NOW, BODY)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-timestamp"] == str(int(NOW))
    assert headers["webhook-signature"].startswith("v1,")
    assert verify(SECRET, headers, BODY, now=NOW) == "msg_1"


def test_header_names_are_case_insensitive() -> None:
    headers = {k.title(): v for k, v in sign(SECRET, "msg_1", NOW, BODY).items()}
    assert verify(SECRET, headers, BODY, now=NOW) == "msg_1"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, b: (h, b + b" "),
        lambda h, b: ({**h, "webhook-id": "msg_2"}, b),
        lambda h, b: ({**h, "webhook-timestamp": str(int(NOW) + 1)}, b),
    ],
    ids=["body", "id", "timestamp"],
)
def test_tampering_is_a_bad_signature(tamper: Tamper) -> None:
    headers, body = tamper(sign(SECRET, "msg_1", NOW, BODY), BODY)
    assert reason_of(SECRET, headers, body) == "bad_signature"


def test_wrong_secret_is_a_bad_signature() -> None:
    headers = sign(new_secret(), "msg_1", NOW, BODY)
    assert reason_of(SECRET, headers) == "bad_signature"


def test_stale_and_future_timestamps_are_refused() -> None:
    assert reason_of(SECRET, sign(SECRET, "m", NOW - 301, BODY)) == "stale_timestamp"
    assert reason_of(SECRET, sign(SECRET, "m", NOW + 301, BODY)) == "future_timestamp"
    # inside the five-minute window both ways
    assert verify(SECRET, sign(SECRET, "m", NOW - 299, BODY), BODY, now=NOW) == "m"
    assert verify(SECRET, sign(SECRET, "m", NOW + 299, BODY), BODY, now=NOW) == "m"


@pytest.mark.parametrize("value", ["", "soon", "1.5e9", "-1", "١٢٣", "9" * 20])
def test_malformed_timestamp(value: str) -> None:
    headers = {**sign(SECRET, "m", NOW, BODY), "webhook-timestamp": value}
    expected = "missing_headers" if not value else "bad_timestamp"
    assert reason_of(SECRET, headers) == expected


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_headers(missing: str) -> None:
    headers = sign(SECRET, "m", NOW, BODY)
    del headers[missing]
    assert reason_of(SECRET, headers) == "missing_headers"
    assert reason_of(SECRET, {}) == "missing_headers"


def test_any_one_signature_in_the_list_is_enough() -> None:
    good = sign(SECRET, "m", NOW, BODY)["webhook-signature"]
    other = sign(new_secret(), "m", NOW, BODY)["webhook-signature"]
    junk = "v1 v1,@@@ v1,abc v2,AAAA nonsense"
    headers = {**sign(SECRET, "m", NOW, BODY), "webhook-signature": f"{junk} {other} {good}"}
    assert verify(SECRET, headers, BODY, now=NOW) == "m"
    headers["webhook-signature"] = f"{junk} {other}"
    assert reason_of(SECRET, headers) == "bad_signature"


def test_rotation_accepts_old_and_new_secret() -> None:
    old, new = new_secret(), new_secret()
    assert verify([new, old], sign(old, "m", NOW, BODY), BODY, now=NOW) == "m"
    assert verify([new, old], sign(new, "m", NOW, BODY), BODY, now=NOW) == "m"
    # a sender mid-rotation signs with both; a receiver knowing either accepts it
    both = sign([old, new], "m", NOW, BODY)
    assert len(both["webhook-signature"].split()) == 2
    assert verify(old, both, BODY, now=NOW) == verify(new, both, BODY, now=NOW) == "m"
    assert reason_of(new, sign(old, "m", NOW, BODY)) == "bad_signature"


@pytest.mark.parametrize("secret", ["", "whsec_", "whsec_!!!", "whsec_" + "A" * 8])
def test_bad_secret(secret: str) -> None:
    with pytest.raises(WebhookError) as caught:
        decode_secret(secret)
    assert caught.value.reason == "bad_secret"
    assert reason_of(secret, sign(SECRET, "m", NOW, BODY)) == "bad_secret"
    assert reason_of([], sign(SECRET, "m", NOW, BODY)) == "bad_secret"


def test_new_secret_has_the_spec_format() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert len(decode_secret(secret)) == 32
    assert new_secret() != secret
    assert decode_secret(secret.removeprefix("whsec_")) == decode_secret(secret)


def test_non_utf8_body_is_only_a_bad_signature() -> None:
    headers = sign(SECRET, "m", NOW, b"\xff\xfe")
    assert verify(SECRET, headers, b"\xff\xfe", now=NOW) == "m"
    assert reason_of(SECRET, headers, b"\xff\xff") == "bad_signature"


# --------------------------------------------------------------------------- interop


def test_reference_package_signatures_verify_with_ours() -> None:
    now = int(time.time())
    signature = Webhook(SECRET).sign("msg_ext", datetime.fromtimestamp(now, UTC), BODY.decode())
    headers = {
        "webhook-id": "msg_ext",
        "webhook-timestamp": str(now),
        "webhook-signature": signature,
    }
    assert verify(SECRET, headers, BODY) == "msg_ext"
    with pytest.raises(WebhookError, match="bad_signature"):
        verify(SECRET, headers, BODY + b"x")


def test_our_signatures_verify_with_the_reference_package() -> None:
    headers = sign(SECRET, "msg_ours", time.time(), BODY)
    assert Webhook(SECRET).verify(BODY, headers) == json.loads(BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(BODY + b" ", headers)
    rotated = sign([new_secret(), SECRET], "msg_ours", time.time(), BODY)
    Webhook(SECRET).verify(BODY, rotated, json_parse=False)


def test_new_secret_is_accepted_by_the_reference_package() -> None:
    secret = new_secret()
    headers = sign(secret, "msg_new", time.time(), BODY)
    assert Webhook(secret).verify(BODY, headers)["status"] == "received"
