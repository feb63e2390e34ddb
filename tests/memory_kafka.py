"""Helpers for running a consumer loop over the in-memory bus (``hub/bus.py``) in a test."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hub.bus import MemoryConsumer, TopicPartition


def stop_when_committed(
    consumer: MemoryConsumer, stop: Callable[[], None], offsets: Mapping[TopicPartition, int]
) -> None:
    """Call ``stop`` (the loop's) as soon as a commit reaches ``offsets``, so that a test sees
    what the loop did until then and no later fetch blurs it."""
    commit = consumer.commit

    async def commit_then_maybe_stop(committed: Any = None) -> None:
        await commit(committed)
        if all(consumer.commits[-1].get(tp) == offset for tp, offset in offsets.items()):
            stop()

    consumer.commit = commit_then_maybe_stop  # type: ignore[method-assign]
