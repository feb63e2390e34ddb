"""The AsyncAPI 3 document of ``kk.status.v1`` for outside consumers: current with the models,
structurally sound (every ``$ref`` resolves inside the document; the operation reads the
channel's message; the payload and headers are valid JSON Schema), and true of what the hub
really publishes: a record encoded by the bus validates against it, a wrong one does not."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest
import yaml

from hub.events import encode
from schemas.asyncapi import ASYNCAPI_PATH, render_asyncapi
from schemas.codes import EnrollmentStatus
from schemas.events import STATUS_CHANGED, TOPIC_STATUS, StatusChanged


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(ASYNCAPI_PATH.read_text(encoding="utf-8"))
    return loaded


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def validator(document: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    """A validator of one component schema, its refs resolved inside the document."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return jsonschema.Draft202012Validator(schema)


def test_the_file_is_current() -> None:
    assert ASYNCAPI_PATH.read_text(encoding="utf-8") == render_asyncapi(), (
        "run `diasyndesi schemas export`"
    )


def test_the_document_is_structurally_sound(document: dict[str, Any]) -> None:
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] and document["info"]["version"]
    assert [c["address"] for c in document["channels"].values()] == [TOPIC_STATUS]
    for ref in refs(document):
        resolve(document, ref)
    for operation in document["operations"].values():
        assert operation["action"] in ("send", "receive")
        channel = resolve(document, operation["channel"]["$ref"])
        for message_ref in operation["messages"]:
            assert message_ref["$ref"].startswith(operation["channel"]["$ref"] + "/messages/")
            name = message_ref["$ref"].rsplit("/", 1)[1]
            assert name in channel["messages"]
            resolve(document, channel["messages"][name]["$ref"])
    for message in document["components"]["messages"].values():
        for part in ("payload", "headers"):
            schema = resolve(document, message[part]["$ref"])
            jsonschema.Draft202012Validator.check_schema(schema)
    for schema in document["components"]["schemas"].values():
        jsonschema.Draft7Validator.check_schema(schema)  # AsyncAPI's own schema dialect


def test_what_the_hub_publishes_matches_it(document: dict[str, Any]) -> None:
    data = StatusChanged(
        referral_id="0b8f4a47-1d7e-4f3e-9a42-2d0c8c5f1e11",
        agency="dypa",
        status=EnrollmentStatus.ACCEPTED,
        reference="DYPA-2026-000001",
        occurred_at=datetime.now(UTC),
    )
    record = encode(TOPIC_STATUS, STATUS_CHANGED, data, key=data.referral_id)
    [message] = document["components"]["messages"].values()
    assert message["name"] == STATUS_CHANGED
    payload = json.loads(record.value)
    validator(document, "StatusChanged").validate(payload)
    headers = {name: value.decode() for name, value in record.headers}
    validator(document, "CloudEventsHeaders").validate(headers)
    assert record.key == data.referral_id.encode()

    wrong = {**payload, "status": "lunch"}
    assert not validator(document, "StatusChanged").is_valid(wrong)
    assert not validator(document, "CloudEventsHeaders").is_valid({**headers, "ce_type": "x"})
