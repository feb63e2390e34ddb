"""CloudEvents 1.0 envelope for every record on Kafka.

Binary content mode of the Kafka protocol binding: attributes travel as ``ce_*`` headers,
the data is the JSON body, the Kafka key is the referral id (never personal data).
Encoding and decoding go through the ``cloudevents`` SDK so outside consumers agree with us.
See docs/decisions/0003-cloudevents-binary-mode.md.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from pydantic import BaseModel, ValidationError

from hub.errors import DiasyndesiError
from schemas.events import EVENT_MODELS

SOURCE = "/diasyndesi/hub"
_FORMAT = JSONFormat()


class PoisonRecord(DiasyndesiError):
    """A record that is not a CloudEvent we understand; it is skipped and counted."""


@dataclass(frozen=True)
class OutgoingRecord:
    """A record ready for the producer: what the outbox stores and the relay sends."""

    topic: str
    key: bytes
    headers: list[tuple[str, bytes]]
    value: bytes


@dataclass(frozen=True)
class Event:
    """A decoded CloudEvent with its data validated against the canonical model."""

    id: str
    type: str
    source: str
    time: datetime
    subject: str | None
    data: BaseModel


def new_event_id() -> str:
    return str(uuid.uuid4())


def encode(
    topic: str,
    event_type: str,
    data: BaseModel,
    *,
    key: str,
    event_id: str | None = None,
    time: datetime | None = None,
    source: str = SOURCE,
) -> OutgoingRecord:
    """Wrap canonical data in a CloudEvent (binary mode) keyed by ``key``."""
    attributes: dict[str, Any] = {
        "id": event_id or new_event_id(),
        "source": source,
        "type": event_type,
        "specversion": "1.0",
        "time": time or datetime.now(UTC),
        "subject": key,
        "datacontenttype": "application/json",
    }
    payload = orjson.loads(data.model_dump_json())
    message = ce_kafka.to_binary(CloudEvent(attributes, payload), _FORMAT)
    value = orjson.dumps(payload)  # compact UTF-8, Greek kept as is
    return OutgoingRecord(
        topic=topic,
        key=key.encode(),
        headers=sorted(message.headers.items()),
        value=value,
    )


def decode(headers: Iterable[tuple[str, bytes]], key: bytes | None, value: bytes | None) -> Event:
    """Parse a Kafka record into an Event, or raise PoisonRecord naming what is wrong."""
    header_map: Mapping[str, bytes] = {name: raw for name, raw in headers}
    # The SDK would invent an id and a time for a record without them; an invented id
    # would give every redelivery a new idempotency key, so such records are poison.
    missing = [
        h for h in ("ce_id", "ce_source", "ce_specversion", "ce_type") if h not in header_map
    ]
    if missing:
        raise PoisonRecord(f"record lacks header(s): {', '.join(missing)}")
    try:
        message = ce_kafka.KafkaMessage(headers=dict(header_map), key=key, value=value or b"")
        event = ce_kafka.from_binary(message, _FORMAT)
    except Exception as exc:  # the SDK raises several unrelated types
        raise PoisonRecord(f"not a CloudEvent: {type(exc).__name__}") from exc
    event_type = event.get_type()
    model = EVENT_MODELS.get(event_type)
    if model is None:
        raise PoisonRecord(f"unknown event type {event_type[:100]!r}")
    raw = event.get_data()
    try:
        data = (
            model.model_validate(raw)
            if isinstance(raw, dict)
            else model.model_validate_json(raw or b"")
        )
    except ValidationError as exc:
        raise PoisonRecord(f"{event_type} data invalid: {exc.error_count()} error(s)") from None
    time = event.get_time() or datetime.now(UTC)
    return Event(
        id=event.get_id(),
        type=event_type,
        source=event.get_source(),
        time=time.astimezone(UTC),
        subject=event.get_subject(),
        data=data,
    )
