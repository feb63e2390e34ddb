"""What a sandbox agency received, kept across restarts (a JSON-lines journal), and its
own idempotency: a repeat key answers the first answer, a reused key with another body is
refused. Withdrawals are journalled in the same file: one for a referral the agency does
not have yet is remembered, so the referral arriving later is never activated."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)


def utc_now() -> datetime:
    """Timezone-aware now; the hub's contract requires offsets on every timestamp."""
    return datetime.now(UTC)


# --------------------------------------------------------------------------- ledger


class IdempotencyKeyReused(Exception):
    """A known idempotency key arrived with a different body (Stripe answers 422 to this)."""

    def __init__(self, idempotency_key: str) -> None:
        super().__init__("idempotency key reused with a different body")
        self.idempotency_key = idempotency_key


@dataclass(frozen=True, slots=True)
class ReceivedRecord:
    """One call as the agency saw it; `reference` is the agency's own number for it.

    The payload is kept as the compact JSON it is journalled as, and parsed when asked for:
    a sandbox remembers every call it ever got, and as dictionaries they were most of its
    memory under load (~12 MB per 1,000 four-agency referrals)."""

    idempotency_key: str
    referral_id: str
    payload_json: str
    received_at: datetime
    duplicate: bool
    reference: str | None = None

    @staticmethod
    def encode(payload: dict[str, Any]) -> str:
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))

    @property
    def payload(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.payload_json)
        return parsed

    def public(self) -> dict[str, Any]:
        """The shape promised by `GET /_sandbox/received` (the README's sandbox contract)."""
        return {
            "idempotency_key": self.idempotency_key,
            "referral_id": self.referral_id,
            "payload": self.payload,
            "received_at": self.received_at.isoformat(),
            "duplicate": self.duplicate,
        }

    def to_json_line(self) -> str:
        return json.dumps({**self.public(), "reference": self.reference}, ensure_ascii=False)

    @classmethod
    def from_json_line(cls, line: str) -> ReceivedRecord:
        raw = json.loads(line)
        return cls(
            idempotency_key=str(raw["idempotency_key"]),
            referral_id=str(raw["referral_id"]),
            payload_json=cls.encode(dict(raw["payload"])),
            received_at=datetime.fromisoformat(raw["received_at"]),
            duplicate=bool(raw["duplicate"]),
            reference=raw.get("reference"),
        )


@dataclass(frozen=True, slots=True)
class WithdrawalRecord:
    """One withdrawal call as the agency saw it: which referral (by the key it was, or will
    be, delivered under), which programmes (the agency's codes), whether it ends the case."""

    withdrawal_key: str
    delivery_key: str
    referral_id: str
    programmes: tuple[str, ...]
    whole: bool
    reason: str
    received_at: datetime
    duplicate: bool
    known: bool
    """The agency had the referral when the withdrawal came (else it overtook it)."""

    def public(self) -> dict[str, Any]:
        """The shape of `GET /_sandbox/withdrawals`."""
        return {
            "withdrawal_key": self.withdrawal_key,
            "delivery_key": self.delivery_key,
            "referral_id": self.referral_id,
            "programmes": list(self.programmes),
            "whole": self.whole,
            "reason": self.reason,
            "received_at": self.received_at.isoformat(),
            "duplicate": self.duplicate,
            "known": self.known,
        }

    def to_json_line(self) -> str:
        return json.dumps({"op": "withdraw", **self.public()}, ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> WithdrawalRecord:
        return cls(
            withdrawal_key=str(raw["withdrawal_key"]),
            delivery_key=str(raw["delivery_key"]),
            referral_id=str(raw["referral_id"]),
            programmes=tuple(str(p) for p in raw["programmes"]),
            whole=bool(raw["whole"]),
            reason=str(raw["reason"]),
            received_at=datetime.fromisoformat(raw["received_at"]),
            duplicate=bool(raw["duplicate"]),
            known=bool(raw["known"]),
        )


class SandboxLedger:
    """What the agency received, with idempotency enforced per key.

    Every call to `record` is appended to the received list (repeats flagged
    `duplicate=True`), so tests can count duplicates the hub caused. Operations are
    synchronous and guarded by a lock, so they are atomic on one event loop and safe
    even from threads. With `state_file`, each entry is appended as a JSON line and
    replayed on construction: a restarted agency still knows the keys it accepted.
    """

    def __init__(self, state_file: Path | None = None) -> None:
        self._state_file = state_file
        self._lock = threading.Lock()
        self._entries: list[ReceivedRecord] = []
        self._by_key: dict[str, ReceivedRecord] = {}
        self._by_reference: dict[str, ReceivedRecord] = {}
        self._withdrawals: list[WithdrawalRecord] = []
        self._by_withdrawal_key: dict[str, WithdrawalRecord] = {}
        # delivery key -> when its case ended (None: only some programmes withdrawn so far)
        # and every programme withdrawn from it
        self._withdrawn: dict[str, tuple[datetime | None, list[str]]] = {}
        if state_file is not None and state_file.exists():
            self._load(state_file)

    def _load(self, state_file: Path) -> None:
        skipped = 0
        with state_file.open(encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    raw = json.loads(line)
                    if raw.get("op") == "withdraw":
                        self._remember_withdrawal(WithdrawalRecord.from_json(raw))
                    else:
                        self._remember(ReceivedRecord.from_json_line(line))
                except (ValueError, KeyError, TypeError):
                    skipped += 1  # a torn last line after a crash; the rest is still good
        log.info("sandbox_ledger_loaded", entries=len(self._entries), skipped=skipped)

    def _remember(self, rec: ReceivedRecord) -> None:
        self._entries.append(rec)
        if not rec.duplicate:
            self._by_key[rec.idempotency_key] = rec
            if rec.reference is not None:
                self._by_reference[rec.reference] = rec

    def _remember_withdrawal(self, rec: WithdrawalRecord) -> None:
        self._withdrawals.append(rec)
        if rec.duplicate:
            return
        self._by_withdrawal_key[rec.withdrawal_key] = rec
        ended, programmes = self._withdrawn.get(rec.delivery_key, (None, []))
        if rec.whole and ended is None:
            ended = rec.received_at
        self._withdrawn[rec.delivery_key] = (ended, [*programmes, *rec.programmes])

    def _persist(self, rec: ReceivedRecord | WithdrawalRecord) -> None:
        if self._state_file is None:
            return
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        with self._state_file.open("a", encoding="utf-8") as fh:
            fh.write(rec.to_json_line() + "\n")

    def record(
        self,
        idempotency_key: str,
        referral_id: str,
        payload: dict[str, Any],
        make_reference: Callable[[int], str] | None = None,
    ) -> tuple[ReceivedRecord, bool]:
        """Record one call; return the original record and whether this call was new.

        `make_reference(n)` builds the agency's number for the n-th accepted call (1-based)
        and is only called for new keys. Raises `IdempotencyKeyReused` (recording nothing)
        when a known key comes with a different payload.
        """
        with self._lock:
            original = self._by_key.get(idempotency_key)
            if original is not None:
                if original.payload != payload:
                    raise IdempotencyKeyReused(idempotency_key)
                dup = ReceivedRecord(
                    idempotency_key,
                    original.referral_id,
                    original.payload_json,  # equal: one string for both
                    utc_now(),
                    True,
                    None,
                )
                self._persist(dup)
                self._remember(dup)
                return original, False
            reference = make_reference(len(self._by_key) + 1) if make_reference else None
            rec = ReceivedRecord(
                idempotency_key,
                referral_id,
                ReceivedRecord.encode(payload),
                utc_now(),
                False,
                reference,
            )
            self._persist(rec)
            self._remember(rec)
            return rec, True

    def withdraw(
        self,
        withdrawal_key: str,
        delivery_key: str,
        referral_id: str,
        programmes: Iterable[str],
        *,
        whole: bool,
        reason: str,
    ) -> tuple[WithdrawalRecord, bool]:
        """Record one withdrawal call; return the original record and whether it was new.

        Idempotent per ``withdrawal_key`` (a repeat is recorded ``duplicate=True``; the same
        key with another body raises ``IdempotencyKeyReused``). A withdrawal of a referral
        the agency does not have (``known=False``) is remembered all the same: the referral
        arriving later under ``delivery_key`` is born withdrawn (``withdrawn_at``)."""
        codes = tuple(programmes)
        with self._lock:
            original = self._by_withdrawal_key.get(withdrawal_key)
            if original is not None:
                if (original.delivery_key, original.programmes, original.whole) != (
                    delivery_key,
                    codes,
                    whole,
                ):
                    raise IdempotencyKeyReused(withdrawal_key)
                dup = WithdrawalRecord(
                    withdrawal_key,
                    delivery_key,
                    referral_id,
                    codes,
                    whole,
                    reason,
                    utc_now(),
                    True,
                    delivery_key in self._by_key,
                )
                self._persist(dup)
                self._remember_withdrawal(dup)
                return original, False
            rec = WithdrawalRecord(
                withdrawal_key,
                delivery_key,
                referral_id,
                codes,
                whole,
                reason,
                utc_now(),
                False,
                delivery_key in self._by_key,
            )
            self._persist(rec)
            self._remember_withdrawal(rec)
            return rec, True

    def withdrawn_at(self, delivery_key: str) -> datetime | None:
        """When the case delivered (or to be delivered) under ``delivery_key`` ended."""
        return self._withdrawn.get(delivery_key, (None, []))[0]

    def get(self, idempotency_key: str) -> ReceivedRecord | None:
        return self._by_key.get(idempotency_key)

    def by_reference(self, reference: str) -> ReceivedRecord | None:
        return self._by_reference.get(reference)

    def accepted(self) -> Iterable[ReceivedRecord]:
        return list(self._by_key.values())

    def received(self) -> list[dict[str, Any]]:
        """Every call, with ``withdrawn_at`` (when its case ended, or null) and the
        programmes withdrawn from it so far."""
        out = []
        for rec in self._entries:
            ended, programmes = self._withdrawn.get(rec.idempotency_key, (None, []))
            out.append(
                {
                    **rec.public(),
                    "withdrawn_at": ended.isoformat() if ended else None,
                    "withdrawn_programmes": programmes,
                }
            )
        return out

    def withdrawals(self) -> list[dict[str, Any]]:
        """Every withdrawal call, repeats flagged ``duplicate``."""
        return [rec.public() for rec in self._withdrawals]

    def stats(self) -> dict[str, int]:
        accepted = len(self._by_key)
        return {
            "received": len(self._entries),
            "accepted": accepted,
            "duplicates": len(self._entries) - accepted,
        }

    def reset(self) -> None:
        """Forget everything, on disk too (tests only)."""
        with self._lock:
            self._entries.clear()
            self._by_key.clear()
            self._by_reference.clear()
            self._withdrawals.clear()
            self._by_withdrawal_key.clear()
            self._withdrawn.clear()
            if self._state_file is not None and self._state_file.exists():
                self._state_file.write_text("", encoding="utf-8")
