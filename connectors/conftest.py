"""Fixtures every family's own tests share (``connectors/<family>/tests``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fake_hub import FakeHub


@pytest.fixture
async def hub() -> AsyncIterator[FakeHub]:
    """A stand-in for the hub's status endpoint, recording what a sandbox pushes."""
    fake = FakeHub()
    await fake.start()
    yield fake
    await fake.stop()
