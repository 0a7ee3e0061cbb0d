"""Prometheus metrics and a health endpoint (``[metrics]`` in the config; off by default).

``BotMetrics`` owns its own ``CollectorRegistry`` (never prometheus_client's global one), so
two bots in one process, or one per test, never share a counter. Components count through it
(commands in the router, verifications where the service records their end, messages in the
outbox); what is a state rather than an event (people by hygiene state, pending outbox rows,
seconds since the last sync and scan, rate limiting) is read at scrape time by
``StateCollector`` from callables the app hands in.

``MetricsServer`` serves ``/metrics`` (Prometheus text format) and ``/health`` (200 while the
last successful sync is recent, 503 otherwise, with a one-line JSON reason) with aiohttp.web,
bound only to the configured address. It talks no Matrix: the one module outside
``nerbot.matrix`` allowed aiohttp (``tests/unit/test_layers.py``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from nerbot.domain.community import MISMATCH_CODES

logger = logging.getLogger(__name__)

COMMAND_OUTCOMES: Final = ("ok", "usage", "refused", "failed", "unknown", "unavailable")
UNKNOWN_COMMAND: Final = "unknown"  # the label for text that names no command
TRANSPORTS: Final = ("to_device", "room")
VERIFICATION_OUTCOMES: Final = ("verified", "cancelled", "timeout", "mismatch")
MESSAGE_KINDS: Final = ("reminder", "all_good", "alert", "alarm")
TIMEOUT_CODE: Final = "m.timeout"
# A command answers in 0.05 s (from cache) to tens of seconds (a slow federated key query).
COMMAND_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A person compares emoji: seconds to the spec's 10-minute timeout.
VERIFICATION_BUCKETS: Final = (5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
DEFAULT_HEALTH_MAX_SYNC_AGE: Final = 120


def verification_outcome(result: str, cancel_code: str | None) -> str:
    """``verified``, ``timeout``, ``mismatch`` (keys differed) or ``cancelled`` (any other)."""
    if result == "verified":
        return "verified"
    if cancel_code in MISMATCH_CODES:
        return "mismatch"
    if cancel_code == TIMEOUT_CODE or result == "timeout":
        return "timeout"
    return "cancelled"


def transport_label(transport: str) -> str:
    """The metric's transport label: ``to_device`` or ``room`` (stored as ``in_room``)."""
    return "to_device" if transport == "to_device" else "room"


class BotMetrics:
    """The bot's counters and histograms, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._commands = Counter("nerbot_commands", "Commands handled, by command and outcome",
                                 ["command", "outcome"], registry=r)
        self._command_seconds = Histogram(
            "nerbot_command_duration_seconds", "Time a command's handler took",
            ["command"], buckets=COMMAND_BUCKETS, registry=r)
        self._verifications = Counter(
            "nerbot_verifications", "Verifications that really started and ended, by outcome",
            ["transport", "outcome"], registry=r)
        self._verification_seconds = Histogram(
            "nerbot_verification_duration_seconds", "From a verification's start to its end",
            ["transport"], buckets=VERIFICATION_BUCKETS, registry=r)
        self._sent = Counter("nerbot_messages_sent", "Outbox messages delivered, by kind",
                             ["kind"], registry=r)
        self._failed = Counter("nerbot_messages_failed", "Failed outbox send attempts, by kind",
                               ["kind"], registry=r)
        self._alarms = Counter("nerbot_alarms", "Alarms raised, by kind", ["kind"], registry=r)
        # Series that dashboards compare exist from the start at 0 (rate() needs two points,
        # and "0 mismatches" should read 0, not "no data").
        for transport in TRANSPORTS:
            for outcome in VERIFICATION_OUTCOMES:
                self._verifications.labels(transport, outcome)
        for kind in MESSAGE_KINDS:
            self._sent.labels(kind)
            self._failed.labels(kind)

    def command(self, name: str, outcome: str, seconds: float | None = None) -> None:
        """One command handled; ``seconds``: its handler's wall time (None: no handler ran)."""
        self._commands.labels(name, outcome).inc()
        if seconds is not None:
            self._command_seconds.labels(name).observe(seconds)

    def verification(self, transport: str, outcome: str, seconds: float | None) -> None:
        transport = transport_label(transport)
        self._verifications.labels(transport, outcome).inc()
        if seconds is not None:
            self._verification_seconds.labels(transport).observe(max(0.0, seconds))

    def message(self, kind: str, sent: bool) -> None:
        """One outbox send: delivered, or a failed attempt (it may be retried)."""
        label = "reminder" if kind == "remind" else kind  # the outbox stores "remind"
        (self._sent if sent else self._failed).labels(label).inc()

    def alarm(self, kind: str) -> None:
        self._alarms.labels(kind).inc()

    def watch(self, state: StateSources) -> StateCollector:
        """Read ``state`` at every scrape (once per registry)."""
        collector = StateCollector(state)
        self.registry.register(collector)
        return collector

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(frozen=True, slots=True)
class StateSources:
    """Where the gauges come from; each is called at scrape time. None: unknown (no sample)."""

    people: Callable[[], Mapping[str, int]]              # hygiene state → people served
    outbox_pending: Callable[[], int]
    seconds_since_sync: Callable[[], float | None]       # None: never synced
    seconds_since_scan: Callable[[], float | None]       # None: never scanned
    rate_limited: Callable[[], bool | None]


class StateCollector:
    """Gauges computed when Prometheus scrapes; one failing source costs its gauge only."""

    def __init__(self, state: StateSources) -> None:
        self.state = state

    def collect(self) -> Iterable[Metric]:
        state = self.state
        people = GaugeMetricFamily("nerbot_people", "People the bot serves, by hygiene state",
                                   labels=["state"])
        counts = self._read("people", state.people)
        for name, count in sorted((counts or {}).items()):
            people.add_metric([name], count)
        yield people
        pending = self._read("outbox_pending", state.outbox_pending)
        if pending is not None:
            yield GaugeMetricFamily("nerbot_outbox_pending", "Outbox messages not sent yet",
                                    value=pending)
        for name, what, source in (
                ("nerbot_seconds_since_last_sync", "Seconds since the last successful sync",
                 state.seconds_since_sync),
                ("nerbot_seconds_since_last_scan", "Seconds since the last reminder scan",
                 state.seconds_since_scan)):
            seconds = self._read(name, source)
            if seconds is not None and not math.isnan(seconds):
                yield GaugeMetricFamily(name, what, value=seconds)
        limited = self._read("rate_limited", state.rate_limited)
        if limited is not None:
            yield GaugeMetricFamily("nerbot_rate_limited",
                                    "1 while the homeserver rate-limits the bot",
                                    value=1 if limited else 0)

    @staticmethod
    def _read(name: str, source: Callable[[], Any]) -> Any:
        try:
            return source()
        except Exception:  # a scrape must not fail because one source did (say, at stop)
            logger.warning("Metrics: reading %s failed", name, exc_info=True)
            return None


def health(seconds_since_sync: float | None, max_age: float,
           rate_limited: bool | None) -> tuple[int, dict[str, Any]]:
    """``/health``'s status and JSON: healthy while the last successful sync is recent."""
    if seconds_since_sync is None:
        return 503, {"status": "unhealthy", "reason": "no successful sync yet",
                     "last_sync_seconds_ago": None, "rate_limited": rate_limited}
    ago = round(seconds_since_sync, 1)
    if seconds_since_sync > max_age:
        return 503, {"status": "unhealthy",
                     "reason": f"no successful sync for {seconds_since_sync:.0f} s",
                     "last_sync_seconds_ago": ago, "rate_limited": rate_limited}
    return 200, {"status": "ok", "last_sync_seconds_ago": ago, "rate_limited": rate_limited}


class MetricsServer:
    """``/metrics`` and ``/health`` over HTTP on ``host:port`` (port 0: any free port)."""

    def __init__(self, metrics: BotMetrics, host: str, port: int,
                 seconds_since_sync: Callable[[], float | None], max_sync_age: float,
                 rate_limited: Callable[[], bool | None]) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self.seconds_since_sync = seconds_since_sync
        self.max_sync_age = max_sync_age
        self.rate_limited = rate_limited
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        logger.info("Metrics on http://%s:%d/metrics, health on /health",
                    self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, request: web.Request) -> web.Response:
        status, body = health(self.seconds_since_sync(), self.max_sync_age, self.rate_limited())
        return web.Response(status=status, text=json.dumps(body) + "\n",
                            content_type="application/json")
