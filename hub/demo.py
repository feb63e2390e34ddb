"""``diasyndesi demo``: submit sample referrals to a running hub and watch them propagate."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from diasyndesi_sdk.connector import KEEPALIVE_S
from hub.errors import DiasyndesiError
from hub.samples import sample_referral

DEMO_PROGRAMMES = [
    ["GMI", "UNEMPLOYMENT_REGISTRATION", "SOCIAL_GROCERY", "HELP_AT_HOME"],
    ["JOB_COUNSELLING", "SOUP_KITCHEN"],
    ["HOUSING_ALLOWANCE", "PSYCHOSOCIAL_SUPPORT"],
]
FINAL = {"accepted", "enrolled", "rejected", "waitlisted", "completed"}


async def run_demo(url: str, credentials: Path, count: int, timeout_s: float = 60.0) -> None:
    if not credentials.exists():
        raise DiasyndesiError(f"{credentials} not found: start the hub with `make run` first")
    token = json.loads(credentials.read_text())["centres"]["KK-KOZANI"]
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(
        headers=headers, connector=aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_S)
    ) as session:
        ids = []
        for i in range(count):
            body = sample_referral(programmes=DEMO_PROGRAMMES[i % len(DEMO_PROGRAMMES)])
            async with session.post(
                f"{url}/v1/referrals", json=body, headers={"Idempotency-Key": str(uuid.uuid4())}
            ) as resp:
                answer = await resp.json()
                if resp.status != 202:
                    raise DiasyndesiError(f"submit refused: {resp.status} {answer}")
            ids.append(answer["id"])
            print(f"submitted {answer['id']} → {', '.join(answer['routed'])}")
        deadline = time.monotonic() + timeout_s
        last: dict[str, str] = {}
        while time.monotonic() < deadline:
            done = 0
            for referral_id in ids:
                async with session.get(f"{url}/v1/referrals/{referral_id}") as resp:
                    view: dict[str, Any] = await resp.json()
                line = "; ".join(
                    f"{a['agency']}: {a['delivery']} ({a['attempts']} attempt(s)), "
                    f"status {a['status'] or '—'}, ref {a['reference'] or '—'}"
                    for a in view["agencies"]
                )
                if last.get(referral_id) != line:
                    print(f"{referral_id[:8]}  {line}")
                    last[referral_id] = line
                if all(a["status"] in FINAL for a in view["agencies"]):
                    done += 1
            if done == len(ids):
                print(f"all {len(ids)} referrals delivered and decided")
                return
            await asyncio.sleep(0.5)
        raise DiasyndesiError("demo timed out before every agency answered")
