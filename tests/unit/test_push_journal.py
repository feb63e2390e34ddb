"""The sandbox agencies' durable status pushes: what was owed when a sandbox died is pushed
after it starts again, and nothing the hub already took is pushed twice."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from connectors.sandbox_kit import PushJournal, StatusPusher
from tests.fake_hub import FakeHub


def test_pending_lists_only_steps_not_taken(tmp_path: Path) -> None:
    journal = PushJournal(tmp_path / "p.jsonl")
    journal.add("a", "ref-1", "R1", [(1.0, "received"), (2.0, "accepted")])
    journal.add("b", "ref-2", "R2", [(1.0, "received")])
    journal.done("a", 0)
    journal.done("b", 0)
    assert journal.pending() == [("a", "ref-1", "R1", [(1, 2.0, "accepted")])]


def test_a_first_start_without_a_journal_compacts_nothing(tmp_path: Path) -> None:
    journal = PushJournal(tmp_path / "not-yet" / "p.jsonl")
    journal.compact()
    assert journal.pending() == []
    assert not journal.path.exists()


def test_torn_last_line_is_skipped_and_compact_keeps_only_what_is_owed(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    journal = PushJournal(path)
    journal.add("a", "ref-1", "R1", [(1.0, "received"), (2.0, "accepted")])
    journal.add("b", "ref-2", "R2", [(1.0, "received")])
    journal.done("b", 0)
    with path.open("a") as fh:
        fh.write('{"op": "done", "id": "a", "st')  # killed mid-write
    journal.compact()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [entry["id"] for entry in lines] == ["a"]
    assert lines[0]["steps"] == [[1.0, "received"], [2.0, "accepted"]]
    journal.done("a", 0)
    assert journal.pending() == [("a", "ref-1", "R1", [(1, 2.0, "accepted")])]


async def test_a_restarted_pusher_delivers_what_it_still_owed(tmp_path: Path) -> None:
    path = tmp_path / "dypa.pushes.jsonl"
    hub = FakeHub()
    await hub.start()
    try:
        # First life: the hub is unreachable, so the first step is given up (and stays owed).
        dead = StatusPusher(
            "dypa", "http://127.0.0.1:9", "t", attempts=1, backoff_s=0.01, journal=path
        )
        await dead.start()
        task = dead.schedule("ref-1", "DYPA-1", [(0.0, "received"), (0.05, "accepted")])
        assert task is not None
        await task
        await dead.close()
        assert hub.pushes == []

        # Second life, same journal, hub reachable: both steps arrive, in order, once.
        alive = StatusPusher("dypa", hub.url, "t", attempts=3, backoff_s=0.01, journal=path)
        await alive.start()
        await hub.wait_for(2)
        await asyncio.sleep(0.1)
        await alive.close()
        assert [body["status"] for _, _, body in hub.pushes] == ["received", "accepted"]
        assert PushJournal(path).pending() == []

        # Third life: nothing is owed, nothing is pushed again.
        again = StatusPusher("dypa", hub.url, "t", attempts=3, backoff_s=0.01, journal=path)
        await again.start()
        await asyncio.sleep(0.2)
        await again.close()
        assert len(hub.pushes) == 2
    finally:
        await hub.stop()


async def test_a_refused_push_is_not_owed_again(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    hub = FakeHub(default_status=404)
    await hub.start()
    try:
        pusher = StatusPusher("dypa", hub.url, "t", attempts=3, backoff_s=0.01, journal=path)
        await pusher.start()
        task = pusher.schedule("ref-1", "DYPA-1", [(0.0, "received")])
        assert task is not None
        await task
        await pusher.close()
        assert len(hub.pushes) == 1
        assert PushJournal(path).pending() == []
    finally:
        await hub.stop()


async def test_an_answer_is_scheduled_once_across_repeats_and_restarts(tmp_path: Path) -> None:
    """A sandbox killed between recording a referral and journalling its answer owes it:
    the hub's repeat of the same delivery schedules it then, and only then (the fault
    suite's whole-tree SIGKILL lost one such answer)."""
    hub = FakeHub()
    await hub.start()
    path = tmp_path / "dypa.pushes.jsonl"
    try:
        first = StatusPusher("dypa", hub.url, "token", journal=path)
        await first.start()
        assert first.answer_once("ref-1", "R1", [(0.0, "received")]) is not None
        assert first.answer_once("ref-1", "R1", [(0.0, "received")]) is None  # a repeat
        await hub.wait_for(1)
        for _ in range(100):  # the hub took it; wait for the journal to say so
            if not PushJournal(path).pending():
                break
            await asyncio.sleep(0.01)
        await first.close()

        again = StatusPusher("dypa", hub.url, "token", journal=path)  # the sandbox restarted
        await again.start()
        assert again.answer_once("ref-1", "R1", [(0.0, "received")]) is None  # answered before
        # recorded, then killed before its answer was journalled: the repeat makes good
        assert again.answer_once("ref-2", "R2", [(0.0, "received")]) is not None
        await hub.wait_for(2)
        await again.close()
    finally:
        await hub.stop()
    assert [body["referral_id"] for _, _, body in hub.pushes] == ["ref-1", "ref-2"]
