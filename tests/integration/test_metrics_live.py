"""Metrics and health against the real bot and the real Synapse: a real E2EE person's ``!help``
is counted on /metrics; /health turns 503 while Synapse is stopped and 200 once it is back."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from botdm import open_dm
from prometheus_client.parser import text_string_to_metric_families

from nerbot.localdev.synapse import LocalSynapse, free_port

pytestmark = pytest.mark.timeout(240)
MAX_SYNC_AGE = 3  # seconds: the outage shows within seconds


def help_count(text: str) -> float:
    """``nerbot_commands_total{command="help",outcome="ok"}``, 0 when absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "nerbot_commands_total" \
                    and sample.labels == {"command": "help", "outcome": "ok"}:
                return sample.value
    return 0.0


async def health_until(http: aiohttp.ClientSession, url: str, status: int,
                       seconds: float) -> dict[str, Any]:
    """Poll ``/health`` until it answers ``status``; its JSON then (fails at the deadline)."""
    deadline = time.monotonic() + seconds
    seen: list[tuple[int, str]] = []
    while True:
        async with http.get(url) as response:
            text = await response.text()
            if response.status == status:
                body: dict[str, Any] = json.loads(text)
                return body
            seen.append((response.status, text))
        assert time.monotonic() < deadline, f"/health never answered {status}: {seen[-3:]}"
        await asyncio.sleep(0.2)


async def test_metrics_count_a_real_command_and_health_follows_an_outage(
    start_bot: Any, make_user: Any, make_peer: Any, synapse: LocalSynapse,
) -> None:
    port = free_port()
    bot = await start_bot(metrics={"listen": f"127.0.0.1:{port}",
                                   "health_max_sync_age_seconds": MAX_SYNC_AGE})
    bot_id = bot.config.matrix.user_id
    base = f"http://127.0.0.1:{port}"
    peer = await make_peer(make_user())
    room_id = await open_dm(peer, bot)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.get(f"{base}/metrics") as response:
            assert response.status == 200
            before = help_count(await response.text())
        assert before == 0
        assert "!help" in await peer.ask(room_id, "!help", bot_id, timeout=60)
        async with http.get(f"{base}/metrics") as response:
            text = await response.text()
        assert help_count(text) == 1
        assert "nerbot_seconds_since_last_sync" in text and "nerbot_outbox_pending" in text

        # An idle bot long-polls (30 s), so "recent" with a 3 s limit needs a fresh sync: wait.
        ok = await health_until(http, f"{base}/health", 200, 60)
        assert ok["status"] == "ok" and ok["last_sync_seconds_ago"] <= MAX_SYNC_AGE

        await asyncio.to_thread(synapse.stop)
        try:
            down = await health_until(http, f"{base}/health", 503, 60)
            assert down["status"] == "unhealthy"
            assert down["reason"].startswith("no successful sync for ")
        finally:
            await asyncio.to_thread(synapse.start)
        # back: the bot probes every 2 s and catches up with an immediate sync
        up = await health_until(http, f"{base}/health", 200, 60)
        assert up["status"] == "ok"
    assert "!help" in await peer.ask(room_id, "!help", bot_id, timeout=60)
