"""Metrics: what each component counts, the scrape-time gauges, /health, the [metrics] config."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from fakes import RecordingMessenger
from prometheus_client.parser import text_string_to_metric_families
from test_verification_input import ALICE, ALICE_DEV, MINUTE, NOW, TXN, Harness, request

from nerbot.commands.registry import (
    Command,
    CommandContext,
    CommandRegistry,
    CommandRouter,
    IncomingText,
    UsageError,
)
from nerbot.config import MetricsConfig, load_config, parse_config
from nerbot.domain import verification as v
from nerbot.domain.admin_trust import AdminCheck
from nerbot.errors import ConfigError, FactsUnavailable
from nerbot.i18n import Catalog
from nerbot.ids import EventId, RoomId, UserId
from nerbot.metrics import (
    BotMetrics,
    MetricsServer,
    StateSources,
    health,
    verification_outcome,
)
from nerbot.outbox import OutboxSender
from nerbot.store import OutboxMessage, Store

ROOT = Path(__file__).resolve().parents[2]
ENV = {"NERBOT_PASSWORD": "pw-from-env"}
ROOM = RoomId("!room:localhost")
BOB = UserId("@bob:localhost")


def value(metrics: BotMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


# -- commands --------------------------------------------------------------------------------

async def not_admin(user: UserId, sender_key: str | None) -> AdminCheck:
    return AdminCheck.NOT_ADMIN


def counting_router(metrics: BotMetrics) -> CommandRouter:
    async def ok(ctx: CommandContext) -> None:
        await ctx.reply("command.unknown", name="x")

    async def usage(ctx: CommandContext) -> None:
        raise UsageError

    async def unavailable(ctx: CommandContext) -> None:
        raise FactsUnavailable("@carol:elsewhere")

    async def broken(ctx: CommandContext) -> None:
        raise RuntimeError("bug")

    registry = CommandRegistry()
    registry.extend([Command("help", ok), Command("lang", usage),
                     Command("backup-status", unavailable), Command("fingerprint", broken),
                     Command("remind", ok, admin_only=True)])
    return CommandRouter(registry, Catalog.load(default="en"), RecordingMessenger(),
                         lambda user: None, not_admin, metrics=metrics)


async def test_the_router_counts_each_outcome_under_the_commands_name() -> None:
    metrics = BotMetrics()
    router = counting_router(metrics)
    for body in ("!help", "!HELP now", "!lang", "!backup-status", "!fingerprint", "!remind",
                 "!no-such-command-" + "x" * 80, "!another-made-up-one"):
        assert await router.handle(IncomingText(BOB, ROOM, EventId("$e"), body, True))
    assert await router.handle(IncomingText(BOB, ROOM, EventId("$e"), "just chatting", True)) \
        is False
    assert value(metrics, "nerbot_commands_total", command="help", outcome="ok") == 2
    assert value(metrics, "nerbot_commands_total", command="lang", outcome="usage") == 1
    assert value(metrics, "nerbot_commands_total", command="backup-status",
                 outcome="unavailable") == 1
    assert value(metrics, "nerbot_commands_total", command="fingerprint", outcome="failed") == 1
    assert value(metrics, "nerbot_commands_total", command="remind", outcome="refused") == 1
    assert value(metrics, "nerbot_commands_total", command="unknown", outcome="unknown") == 2
    # what people type never becomes a label value (bounded cardinality)
    text = metrics.exposition().decode()
    assert "no-such-command" not in text and "made-up" not in text
    # handler time: for every command whose handler ran, not for refusals or unknown text
    assert value(metrics, "nerbot_command_duration_seconds_count", command="help") == 2
    assert value(metrics, "nerbot_command_duration_seconds_count", command="fingerprint") == 1
    assert value(metrics, "nerbot_command_duration_seconds_count", command="remind") is None
    assert value(metrics, "nerbot_command_duration_seconds_count", command="unknown") is None


# -- outbox ----------------------------------------------------------------------------------

class FlakyTransport:
    """Sends to everyone but Bob."""

    def dm_is_usable(self, room_id: RoomId, user_id: UserId) -> bool:
        return True

    async def ensure_dm(self, user_id: UserId) -> RoomId:
        return RoomId(f"!dm-{user_id}")

    async def send_notice(self, room_id: RoomId, markdown_text: str,
                          txn_id: str | None = None) -> str | None:
        if "bob" in room_id:
            raise RuntimeError("refused")
        return "$sent"


def queue(store: Store, user: str, kind: str) -> None:
    store.enqueue(OutboxMessage(key=f"{user}-{kind}", user_id=UserId(user), kind=kind,
                                txn_id=f"txn-{user}-{kind}", body="hi", room_id=None,
                                status="pending", attempts=0, created_ms=1))


async def test_the_outbox_counts_sends_and_failed_attempts_by_kind() -> None:
    metrics = BotMetrics()
    store = Store(":memory:")
    queue(store, "@alice:localhost", "reminder")
    queue(store, "@alice:localhost", "alert")
    queue(store, str(BOB), "alert")
    assert store.pending_count() == 3
    sender = OutboxSender(store, FlakyTransport(), lambda: 5, per_minute=6000, metrics=metrics)
    stats = await sender.deliver()
    assert (stats.sent, stats.failed) == (2, 1)
    assert value(metrics, "nerbot_messages_sent_total", kind="reminder") == 1
    assert value(metrics, "nerbot_messages_sent_total", kind="alert") == 1
    assert value(metrics, "nerbot_messages_failed_total", kind="alert") == 1
    assert value(metrics, "nerbot_messages_failed_total", kind="reminder") == 0
    assert store.pending_count() == 1  # Bob's, to be tried again


def test_alarms_are_counted_by_kind() -> None:
    metrics = BotMetrics()
    metrics.alarm("homeserver_down")
    metrics.alarm("homeserver_down")
    assert value(metrics, "nerbot_alarms_total", kind="homeserver_down") == 2


# -- verifications ---------------------------------------------------------------------------

@pytest.mark.parametrize(("result", "code", "outcome"), [
    ("verified", None, "verified"),
    ("cancelled", "m.mismatched_sas", "mismatch"),
    ("cancelled", "m.key_mismatch", "mismatch"),
    ("cancelled", "m.mismatched_commitment", "mismatch"),
    ("timeout", "m.timeout", "timeout"),
    ("cancelled", "m.user", "cancelled"),
    ("cancelled", "m.invalid_message", "cancelled"),
])
def test_verification_outcomes(result: str, code: str | None, outcome: str) -> None:
    assert verification_outcome(result, code) == outcome


def counted_harness() -> tuple[Harness, BotMetrics]:
    h = Harness()
    metrics = h.service.metrics = BotMetrics()
    return h, metrics


async def test_a_mismatch_the_person_reports_is_counted_with_its_duration() -> None:
    h, metrics = counted_harness()
    assert value(metrics, "nerbot_verifications_total", transport="to_device",
                 outcome="mismatch") == 0  # there from the start: dashboards read 0
    await h.to_device(ALICE, v.REQUEST, request())
    h.clock.now += 42_000
    await h.to_device(ALICE, v.CANCEL, {"transaction_id": TXN, "code": "m.mismatched_sas",
                                        "reason": "emoji differ"})
    assert value(metrics, "nerbot_verifications_total", transport="to_device",
                 outcome="mismatch") == 1
    assert value(metrics, "nerbot_verification_duration_seconds_sum", transport="to_device") \
        == 42
    # a repeated cancel of an ended verification is not counted again
    await h.to_device(ALICE, v.CANCEL, {"transaction_id": TXN, "code": "m.user", "reason": ""})
    assert value(metrics, "nerbot_verifications_total", transport="to_device",
                 outcome="cancelled") == 0


async def test_a_timeout_is_counted_as_timeout() -> None:
    h, metrics = counted_harness()
    await h.to_device(ALICE, v.REQUEST, request())
    h.clock.now += 11 * MINUTE
    await h.service.tick()
    assert [r["result"] for r in h.store.verifications()] == ["timeout"]
    assert value(metrics, "nerbot_verifications_total", transport="to_device",
                 outcome="timeout") == 1


async def test_verifications_ended_after_a_restart_are_counted_per_transport() -> None:
    h, metrics = counted_harness()
    h.client.device_store = SimpleNamespace(active_user_devices=lambda user: [])  # type: ignore[attr-defined]
    h.store.verification_started("in-room", UserId(ALICE), ALICE_DEV, "outgoing", "in_room",
                                 NOW - 60_000, room_id="!dm:hs")
    h.store.verification_started("finished", UserId(ALICE), ALICE_DEV, "incoming",
                                 "to_device", NOW - 30_000)
    h.store.verification_resume_point("finished", ALICE_DEV,
                                      json.dumps({"sends": [], "master_key_id": None}))
    await h.service.end_interrupted()
    assert value(metrics, "nerbot_verifications_total", transport="room",
                 outcome="cancelled") == 1
    assert value(metrics, "nerbot_verifications_total", transport="to_device",
                 outcome="verified") == 1
    assert value(metrics, "nerbot_verification_duration_seconds_sum", transport="room") == 60
    assert value(metrics, "nerbot_verification_duration_seconds_sum", transport="to_device") \
        == 30


# -- gauges read at scrape time --------------------------------------------------------------

def scrape(metrics: BotMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition text, parsed as Prometheus would."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(metrics.exposition().decode())
            for s in family.samples}


def sources(**changes: Any) -> StateSources:
    fields: dict[str, Any] = {
        "people": lambda: {"ok": 7, "at_risk": 2},
        "outbox_pending": lambda: 3,
        "seconds_since_sync": lambda: 1.5,
        "seconds_since_scan": lambda: 600.0,
        "rate_limited": lambda: False,
    }
    return StateSources(**(fields | changes))


def test_the_collector_reads_its_sources_at_each_scrape() -> None:
    metrics = BotMetrics()
    people = {"ok": 7, "at_risk": 2}
    metrics.watch(sources(people=lambda: people))
    samples = scrape(metrics)
    assert samples[("nerbot_people", (("state", "ok"),))] == 7
    assert samples[("nerbot_people", (("state", "at_risk"),))] == 2
    assert samples[("nerbot_outbox_pending", ())] == 3
    assert samples[("nerbot_seconds_since_last_sync", ())] == 1.5
    assert samples[("nerbot_seconds_since_last_scan", ())] == 600
    assert samples[("nerbot_rate_limited", ())] == 0
    people["ok"] = 8  # read again at the next scrape, not cached
    assert scrape(metrics)[("nerbot_people", (("state", "ok"),))] == 8


def test_unknown_values_have_no_sample_and_a_failing_source_costs_only_its_gauge(
        caplog: pytest.LogCaptureFixture) -> None:
    def closed() -> int:
        raise RuntimeError("store closed")

    metrics = BotMetrics()
    metrics.watch(sources(outbox_pending=closed, seconds_since_scan=lambda: None,
                          rate_limited=lambda: None))
    with caplog.at_level(logging.WARNING, logger="nerbot.metrics"):
        names = {name for name, _ in scrape(metrics)}
    assert "nerbot_outbox_pending" not in names
    assert "nerbot_seconds_since_last_scan" not in names  # never scanned
    assert "nerbot_rate_limited" not in names             # not known
    assert {"nerbot_people", "nerbot_seconds_since_last_sync"} <= names
    assert any("outbox_pending" in r.getMessage() for r in caplog.records)
    metrics = BotMetrics()
    metrics.watch(sources(rate_limited=lambda: True))
    assert scrape(metrics)[("nerbot_rate_limited", ())] == 1


def test_each_bot_has_its_own_registry() -> None:
    first, second = BotMetrics(), BotMetrics()
    first.alarm("x")
    assert value(second, "nerbot_alarms_total", kind="x") is None


# -- /health and /metrics over HTTP ----------------------------------------------------------

def test_health_is_ok_while_the_last_sync_is_recent() -> None:
    assert health(1.23, 120, False) == (
        200, {"status": "ok", "last_sync_seconds_ago": 1.2, "rate_limited": False})
    status, body = health(130.4, 120, True)
    assert status == 503
    assert body["status"] == "unhealthy" and body["reason"] == "no successful sync for 130 s"
    assert body["rate_limited"] is True
    assert health(None, 120, None)[0] == 503


async def test_the_server_answers_metrics_and_health() -> None:
    metrics = BotMetrics()
    metrics.command("help", "ok", 0.2)
    age: list[float | None] = [1.0]
    limited: list[bool | None] = [None]
    server = MetricsServer(metrics, "127.0.0.1", 0, lambda: age[0], 120,
                           rate_limited=lambda: limited[0])
    await server.start()
    try:
        assert server.port != 0
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain")
                text = await response.text()
            assert 'nerbot_commands_total{command="help",outcome="ok"} 1.0' in text
            async with http.get(f"{base}/health") as response:
                assert response.status == 200
                line = await response.text()
            assert line.count("\n") == 1
            assert json.loads(line) == {"status": "ok", "last_sync_seconds_ago": 1.0,
                                        "rate_limited": None}
            age[0], limited[0] = 130.0, True
            async with http.get(f"{base}/health") as response:
                assert response.status == 503
                assert await response.json() == {
                    "status": "unhealthy", "reason": "no successful sync for 130 s",
                    "last_sync_seconds_ago": 130.0, "rate_limited": True}
            async with http.get(f"{base}/other") as response:
                assert response.status == 404
    finally:
        await server.stop()


# -- [metrics] in the config ------------------------------------------------------------------

def metrics_config(section: dict[str, Any], env: dict[str, str] | None = None) -> MetricsConfig:
    return parse_config({"metrics": section}, ENV | (env or {}), Path("/srv")).metrics


def metrics_problems(section: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        metrics_config(section, env)
    return info.value.lines()


def test_metrics_are_off_by_default_and_in_the_example() -> None:
    assert metrics_config({}) == MetricsConfig("", 120)
    assert load_config(ROOT / "config.example.toml", ENV).metrics == MetricsConfig()


@pytest.mark.parametrize(("listen", "host", "port"), [
    ("127.0.0.1:9464", "127.0.0.1", 9464),
    ("0.0.0.0:1", "0.0.0.0", 1),
    ("[::1]:9464", "::1", 9464),
    ("localhost:65535", "localhost", 65535),
    (" metrics.internal:9464 ", "metrics.internal", 9464),
])
def test_valid_listen_addresses(listen: str, host: str, port: int) -> None:
    config = metrics_config({"listen": listen})
    assert (config.host, config.port) == (host, port)


BAD_LISTEN = 'metrics.listen: expected host:port like "127.0.0.1:9464" (port 1 to 65535), ' \
             'or "" for off'


@pytest.mark.parametrize("listen", [
    "9464", ":9464", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536",
    "127.0.0.1:http", "::1:9464", "[::1:9464", "[127.0.0.1]:9464", "300.1.1.1:9464",
    "http://127.0.0.1:9464", "a b:9464", "127.0.0.1:９４６４",
])
def test_invalid_listen_addresses(listen: str) -> None:
    assert metrics_problems({"listen": listen}) == [BAD_LISTEN]


def test_the_environment_overrides_listen() -> None:
    env = {"NERBOT_METRICS_LISTEN": "0.0.0.0:9464"}
    assert metrics_config({"listen": "127.0.0.1:1"}, env).listen == "0.0.0.0:9464"
    assert metrics_config({"listen": "127.0.0.1:1"}, {"NERBOT_METRICS_LISTEN": ""}).listen \
        == "127.0.0.1:1"
    assert metrics_problems({}, {"NERBOT_METRICS_LISTEN": "nonsense"}) == [
        BAD_LISTEN + " (from NERBOT_METRICS_LISTEN)"]


def test_health_age_is_range_checked() -> None:
    assert metrics_config({"health_max_sync_age_seconds": 3}).health_max_sync_age_seconds == 3
    for bad in (0, 86401):
        assert metrics_problems({"health_max_sync_age_seconds": bad}) == [
            "metrics.health_max_sync_age_seconds: must be between 1 and 86400"]
    assert metrics_problems({"listen": 9464}) == [
        "metrics.listen: expected a string, got integer"]
