"""Chaos run: how does one real ``diasyndesi up`` cope with a flaky agency, an outage of
another and a SIGKILL of its whole process tree, all in one run?

Reuses the black-box fault harness (``tests/faults/harness.py``): ``up`` runs as a subprocess
with its own VAR_DIR, free ports and stderr logs; referrals go in over HTTP; faults are set
through the sandboxes' ``/_sandbox/faults`` knobs; at the end three ledgers are reconciled
(hub read model, sandbox side effects, dead letters).

1. ``up`` starts with retry topics short enough to finish within the run
   (``RETRY__TOPIC_DELAYS_S='[2, 10, 30]'``), sandbox decisions after 0.5 s and a grocery
   large enough never to waitlist.
2. Baseline, same run, no faults: ``--baseline`` four-agency referrals (KK-KOZANI, GMI +
   UNEMPLOYMENT_REGISTRATION + SOCIAL_GROCERY + HELP_AT_HOME) at ``--rate``; delivery rate =
   pairs delivered / (first submit → last ``delivered_at`` in the read model).
3. Faulted: ΔΥΠΑ fails 20% of calls with 503 for the whole phase; ``--count`` referrals at
   ``--rate``; ``--outage-after`` seconds in, the grocery has a 30 s outage (503 with
   Retry-After); at 40% accepted the whole ``up`` tree is SIGKILLed and restarted on the
   same VAR_DIR while the client keeps submitting (failed POSTs retried with the same
   Idempotency-Key). The sandboxes live inside ``up`` and do not persist their fault knobs,
   so after the restart the ΔΥΠΑ knob and the rest of the grocery outage (same end time) are
   set again.
4. Quiescence (``GET /v1/ops/connectors``: nothing pending or retrying, bounded by
   ``--settle-timeout``), then reconciliation: lost, duplicate side effects, duplicates the
   agencies absorbed, dead letters by (agency, error_class) from ``GET /v1/ops/dlq``, and the
   drain: recovery = the later of "restart ready" and "grocery outage over"; drain time =
   recovery → last pair settled (``delivered_at`` / ``dead_lettered_at``, hub clock); drain
   rate = pairs settled in that window per second, against the baseline rate.

Exit status: 0 all reconciled; 1 something lost or duplicated; 2 other reconciliation
failure (unsettled, read model and agency disagree, …). Every process started is stopped.

Usage: ``.venv/bin/python benchmarks/chaos.py [--count 2000] [--rate 40]``
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.faults.harness import (  # noqa: E402
    SETTLED,
    Client,
    HubProcess,
    Ports,
    Reconciliation,
    Submitted,
    reconcile,
)

Pair = tuple[str, str]
OPEN_STATES = ("pending", "retrying")
LOG_NEEDLES = {
    "scheduled retry": "delivery failed; scheduled retry",
    "dead-lettered": "delivery failed; dead-lettered",
    "circuit breaker": "circuit breaker",
    "not published": "not published",
    "re-driv": "re-driv",
    "Traceback": "Traceback",
}


def parse_at(raw: str | None) -> datetime | None:
    if not raw:
        return None
    at = datetime.fromisoformat(raw)
    return at if at.tzinfo else at.replace(tzinfo=UTC)


class Clock:
    """Monotonic → wall (UTC), so client-side instants compare with the hub's timestamps."""

    def __init__(self) -> None:
        self.mono0 = time.monotonic()
        self.wall0 = datetime.now(UTC)

    def wall(self, mono: float) -> datetime:
        return self.wall0 + timedelta(seconds=mono - self.mono0)


async def ops_get(client: Client, path: str, **params: Any) -> Any:
    async with client.session.get(
        f"{client.hub.api_url}/v1/ops/{path}",
        params={k: str(v) for k, v in params.items()},
        headers={"Authorization": f"Bearer {client.operator_token}"},
    ) as response:
        response.raise_for_status()
        return await response.json()


async def wait_quiet(client: Client, expected_pairs: int, timeout_s: float) -> tuple[bool, float]:
    """Poll the per-agency delivery counts (one cheap call, not one GET per referral) until
    every expected pair is delivered or dead-lettered; returns (settled, seconds)."""
    started = time.monotonic()
    while True:
        try:
            rows = await ops_get(client, "connectors")
            counts: Counter[str] = Counter()
            for row in rows:
                counts.update(row["deliveries"])
            settled = sum(counts[s] for s in SETTLED)
            if settled >= expected_pairs and not any(counts[s] for s in OPEN_STATES):
                return True, time.monotonic() - started
        except (aiohttp.ClientError, TimeoutError):
            pass
        if time.monotonic() - started > timeout_s:
            return False, time.monotonic() - started
        await asyncio.sleep(1.0)


async def dead_letter_records(client: Client, agencies: set[str]) -> tuple[list[dict], bool]:
    """Open dead letters from ``GET /v1/ops/dlq``, per agency (the endpoint caps at 1000 and
    has no paging; True when a cap was hit, i.e. the list may be incomplete)."""
    found: list[dict[str, Any]] = []
    capped = False
    for agency in sorted(agencies):
        batch = await ops_get(client, "dlq", agency=agency, limit=1000)
        capped |= len(batch) >= 1000
        found.extend(batch)
    return found, capped


def settle_times(
    states: dict[Pair, dict[str, Any]], dlq: list[dict[str, Any]]
) -> dict[Pair, datetime]:
    """When each pair settled: ``delivered_at``, else the dead letter's ``dead_lettered_at``."""
    dead_at = {(d["referral_id"], d["agency"]): parse_at(d["dead_lettered_at"]) for d in dlq}
    out: dict[Pair, datetime] = {}
    for pair, state in states.items():
        at = parse_at(state.get("delivered_at")) if state.get("delivery") == "delivered" else None
        at = at or (dead_at.get(pair) if state.get("delivery") == "dead_lettered" else None)
        if at is not None:
            out[pair] = at
    return out


def pairs_of(submitted: list[Submitted]) -> set[Pair]:
    return {(s.referral_id, agency) for s in submitted for agency in s.routed}


async def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.dir or tempfile.mkdtemp(prefix="diasyndesi-chaos-"))
    hub = HubProcess(
        run_dir / "var",
        Ports.free(),
        run_dir / "logs",
        extra_env={
            "RETRY__TOPIC_DELAYS_S": "[2, 10, 30]",
            "SANDBOX_DECISION_DELAY_S": "0.5",
            "SANDBOX_OPTIONS__SOCIAL_GROCERY__CAPACITY": "1000000",
        },
    )
    clients: list[Client] = []
    try:
        first_ready_s = await asyncio.to_thread(hub.start)
        print(f"up ready in {first_ready_s:.1f} s; logs in {hub.log_dir}", flush=True)
        clock = Clock()

        # ---- phase 1: unfaulted baseline ------------------------------------------------
        base = Client(hub)
        clients.append(base)
        base_start = datetime.now(UTC)
        await base.submit_many("base", args.baseline, rate_per_s=args.rate, seed0=100_000)
        base_pairs = pairs_of(base.stats.submitted)
        ok, base_wait = await wait_quiet(base, len(base_pairs), args.settle_timeout)
        if not ok:
            print(f"baseline did not settle in {base_wait:.0f} s", flush=True)
            return 2
        base_states = await base.hub_states({rid for rid, _ in base_pairs})
        base_delivered = [
            parse_at(base_states[p].get("delivered_at"))
            for p in base_pairs
            if base_states.get(p, {}).get("delivery") == "delivered"
        ]
        base_last = max(at for at in base_delivered if at is not None)
        base_rate = len(base_delivered) / (base_last - base_start).total_seconds()
        print(f"baseline: {len(base_delivered)} pairs at {base_rate:.1f}/s", flush=True)

        # ---- phase 2: faulted -----------------------------------------------------------
        chaos = Client(hub)
        clients.append(chaos)
        dypa_knobs = {"fail_rate": args.dypa_fail_rate, "status": 503}
        await chaos.set_faults("dypa", **dypa_knobs)
        chaos_start = time.monotonic()
        flowing = asyncio.create_task(
            chaos.submit_many("chaos", args.count, rate_per_s=args.rate, seed0=0)
        )
        await asyncio.sleep(args.outage_after)
        await chaos.set_faults("kozani-social-grocery", outage_s=args.outage_s, status=503)
        outage_end = time.monotonic() + args.outage_s
        print(
            f"grocery outage {args.outage_s:.0f} s from t={args.outage_after:.1f}",
            flush=True,
        )

        kill_at = int(args.count * args.kill_at)
        while len(chaos.stats.submitted) < kill_at:
            if flowing.done():
                break
            await asyncio.sleep(0.02)
        accepted_before_kill = len(chaos.stats.submitted)
        killed = time.monotonic()
        await asyncio.to_thread(hub.kill)
        restart_s = await asyncio.to_thread(hub.start)
        ready = hub.started_at
        # The sandboxes restarted with ``up``: their knobs are gone. Set them again.
        await chaos.set_faults("dypa", **dypa_knobs)
        remaining = outage_end - time.monotonic()
        if remaining > 0:
            await chaos.set_faults("kozani-social-grocery", outage_s=remaining, status=503)
        print(
            f"killed at {accepted_before_kill} accepted (t={killed - chaos_start:.1f}), "
            f"ready again after {restart_s:.1f} s; outage remaining {max(remaining, 0):.1f} s",
            flush=True,
        )
        await asyncio.wait_for(flowing, args.settle_timeout)
        last_accept = max(s.accepted_at for s in chaos.stats.submitted)
        print(f"all {args.count} accepted by t={last_accept - chaos_start:.1f}", flush=True)

        chaos_pairs = pairs_of(chaos.stats.submitted)
        quiet, quiet_s = await wait_quiet(
            chaos, len(base_pairs) + len(chaos_pairs), args.settle_timeout
        )
        await chaos.set_faults("dypa")  # the run is over: clear the knob
        states = await chaos.hub_states({rid for rid, _ in chaos_pairs})
        records = await chaos.sandbox_records()
        dlq, dlq_capped = await dead_letter_records(chaos, {a for _, a in chaos_pairs})
        ours = {rid for rid, _ in chaos_pairs}
        dlq = [d for d in dlq if d["referral_id"] in ours]
        report: Reconciliation = reconcile(
            "chaos", chaos.stats, states, records, dlq, drain_s=quiet_s, settled=quiet
        )
        base_report = reconcile(
            "baseline", base.stats, base_states, records, [], drain_s=base_wait, settled=True
        )

        # ---- drain ----------------------------------------------------------------------
        recovery = max(ready, outage_end)
        recovery_wall = clock.wall(recovery)
        settled_at = settle_times(states, dlq)
        last_settled = max(settled_at.values())
        drain_s = (last_settled - recovery_wall).total_seconds()
        in_drain = sum(1 for at in settled_at.values() if at >= recovery_wall)
        drain_rate = in_drain / drain_s if drain_s > 0 else float("nan")
        accepted_by_recovery = {
            (s.referral_id, a)
            for s in chaos.stats.submitted
            if s.accepted_at <= recovery
            for a in s.routed
        }
        backlog = sum(
            1 for p in accepted_by_recovery if p not in settled_at or settled_at[p] > recovery_wall
        )
        arrived_after = len(chaos_pairs) - len(accepted_by_recovery)

        # ---- ledgers --------------------------------------------------------------------
        dlq_pairs = {(d["referral_id"], d["agency"]) for d in dlq}
        read_model_dead = {p for p, s in states.items() if s.get("delivery") == "dead_lettered"}
        by_reason = Counter((d["agency"], d["error_class"]) for d in dlq)
        extra_effects = sum(n - 1 for n in report.duplicated.values())
        logs = {name: len(hub.stderr_lines(needle)) for name, needle in LOG_NEEDLES.items()}

        lines = [
            f"chaos run: {args.count} referrals x 4 agencies at {args.rate:g}/s; "
            f"dypa {args.dypa_fail_rate:.0%} 503 throughout; grocery {args.outage_s:.0f} s "
            f"outage at t={args.outage_after:g} s; whole `up` tree SIGKILLed at "
            f"{accepted_before_kill} accepted (t={killed - chaos_start:.1f} s), ready again "
            f"after {restart_s:.1f} s",
            f"pairs                      {report.pairs} (all settled: {report.settled}, "
            f"quiet {quiet_s:.1f} s after the last accept)",
            f"side effects               {report.side_effects}",
            f"lost                       {len(report.lost)}",
            f"duplicate side effects     {len(report.duplicated)} pairs ({extra_effects} extra)",
            f"duplicates absorbed        {report.duplicates_absorbed} (agencies answered a repeated"
            " key with the original)",
            f"dead letters (/v1/ops/dlq) {len(dlq)}"
            + (" (capped at 1000 per agency)" if dlq_capped else ""),
        ]
        for (agency, error_class), n in sorted(by_reason.items()):
            reason = next(
                (
                    d["reason"]
                    for d in dlq
                    if (d["agency"], d["error_class"]) == (agency, error_class)
                ),
                None,
            )
            lines.append(f"  {agency:26} {error_class:22} {n:5}  e.g. {reason!r:.80}")
        if dlq_pairs != read_model_dead:
            lines.append(
                f"  ledger mismatch: read model dead_lettered={len(read_model_dead)}, "
                f"dlq={len(dlq_pairs)}, only in read model={len(read_model_dead - dlq_pairs)}, "
                f"only in dlq={len(dlq_pairs - read_model_dead)}"
            )
        calls: Counter[str] = Counter()
        retried: Counter[str] = Counter()
        for (_, agency), state in states.items():
            calls[agency] += state.get("attempts", 0)
            retried[agency] += state.get("attempts", 0) > 1
        lines.append(
            "calls per agency           "
            + ", ".join(f"{a} {calls[a]} ({retried[a]} pairs retried)" for a in sorted(calls))
        )
        lines += [
            f"recovery                   t={recovery - chaos_start:.1f} s (restart ready "
            f"t={ready - chaos_start:.1f}, outage over t={outage_end - chaos_start:.1f}); "
            f"last accept t={last_accept - chaos_start:.1f}",
            f"backlog at recovery        {backlog} pairs open; {arrived_after} more pairs "
            "accepted after it",
            f"drain after recovery       {drain_s:.1f} s to the last pair settled",
            f"rate during drain          {drain_rate:.1f} pairs/s ({in_drain} pairs settled)",
            f"unfaulted rate (same run)  {base_rate:.1f} pairs/s ({len(base_delivered)} pairs, "
            f"{args.baseline} referrals at {args.rate:g}/s)",
            f"drain / unfaulted          {drain_rate / base_rate:.2f}",
            f"client                     {chaos.stats.non_202} POSTs retried "
            f"({dict(chaos.stats.answers)}); keys with two referrals: "
            f"{len(report.keys_with_two_referrals)}",
            f"stderr (WARNING+)          {logs}",
            f"baseline reconciliation    {base_report.summary()}",
        ]
        # Every delivered pair must also get the agency's answer back (pushed or polled).
        status_wait = time.monotonic()
        missing: Counter[str] = Counter()
        while time.monotonic() - status_wait < args.status_timeout:
            latest = await chaos.hub_states({rid for rid, _ in chaos_pairs})
            missing = Counter(
                agency
                for (_, agency), state in latest.items()
                if state.get("delivery") == "delivered" and state.get("status") is None
            )
            if not missing:
                break
            await asyncio.sleep(5)
        lines.append(
            f"statuses missing           {sum(missing.values())} {dict(missing)} "
            f"(after waiting {time.monotonic() - status_wait:.0f} s)"
        )
        if not report.ok:
            lines.append(f"reconciliation             {report.summary()}")
            lines.append(report.details())
        lines.append(f"logs                       {hub.log_dir}")
        print("\n".join(lines), flush=True)

        if report.lost or report.duplicated or base_report.lost or base_report.duplicated:
            return 1
        if missing:
            return 3
        return 0 if report.ok and base_report.ok else 2
    finally:
        for client in clients:
            await client.close()
        hub.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="faulted referrals")
    parser.add_argument("--rate", type=float, default=40.0, help="referrals per second")
    parser.add_argument("--baseline", type=int, default=300, help="unfaulted referrals")
    parser.add_argument("--dypa-fail-rate", type=float, default=0.2)
    parser.add_argument("--outage-s", type=float, default=30.0, help="grocery outage")
    parser.add_argument("--outage-after", type=float, default=3.0, help="s into the phase")
    parser.add_argument("--kill-at", type=float, default=0.4, help="fraction accepted")
    parser.add_argument("--settle-timeout", type=float, default=600.0)
    parser.add_argument("--status-timeout", type=float, default=240.0, help="s to wait for answers")
    parser.add_argument("--dir", help="run directory (default: a new temp dir)")
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
