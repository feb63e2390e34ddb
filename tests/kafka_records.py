"""A consumed Kafka record as aiokafka hands it over, for tests that script a consumer."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
