"""The reminder scan: assess everyone the bot serves, let the policy decide, record, deliver.

Runs on APScheduler's ``AsyncIOScheduler`` in the bot's own event loop (every N or daily at a
time of day). Decisions come from the pure policy (``nerbot.domain.reminders``); each due
message is recorded in the outbox together with the policy state in one transaction *before*
it is sent, so a crash at any point neither loses nor duplicates a reminder (see
``nerbot.outbox``). A scan missed while the bot was down runs once at start, not once per
missed interval (the last scan time is kept in the database).

One person never stops the run for the others: someone whose facts cannot be had (their
homeserver is down) or whose step fails is logged with their ID, counted in the scan's summary
and looked at again at the next scan.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from nerbot.config import RemindersConfig
from nerbot.domain.assessment import DAY_MS, UserReport
from nerbot.domain.reminders import (
    REMINDER_KINDS,
    DecisionKind,
    ReminderDecision,
    ReminderHistory,
    decide,
    record_sent,
    reminding_findings,
)
from nerbot.ids import UserId
from nerbot.outbox import DeliveryStats, OutboxSender
from nerbot.ports import Clock
from nerbot.store import OutboxMessage, Store

logger = logging.getLogger(__name__)

LAST_SCAN_META = "reminders.last_scan_ms"
# A reminder that waited longer than this for its turn (quiet hours, failed tries, the tail of
# a very large campaign) is checked against fresh facts before it goes out. Not sooner: each
# check is a key query and two admin requests, and a 6,000-DM campaign takes ~35 minutes at
# 3/s with Synapse already the limit (bench/scale.py).
RECHECK_AFTER_MS = 60 * 60 * 1000
AFTER_QUIET_JOB = "reminder-scan-after-quiet-hours"
RETRY_SECONDS = 300


class Assessor(Protocol):
    async def assess(self, user_ids: list[str], fresh: bool = False
                     ) -> dict[str, UserReport]: ...


class ReminderText(Protocol):
    def reminder(self, user_id: UserId, decision: ReminderDecision, report: UserReport) -> str:
        ...

    def all_good(self, user_id: UserId) -> str: ...


@dataclass
class ScanStats:
    users: int = 0
    queued: int = 0
    failed: int = 0  # people whose facts could not be had or whose step failed
    held: dict[str, int] = dataclasses.field(default_factory=dict)
    # When the first person held back only by quiet hours may be reminded (a scan then).
    after_quiet_ms: int | None = None
    scan_seconds: float = 0.0
    delivery: DeliveryStats | None = None


class ReminderService:
    """Owns the scan schedule; the policy decides, the outbox delivers."""

    def __init__(self, config: RemindersConfig, store: Store, hygiene: Assessor,
                 audience: Callable[[], Awaitable[list[UserId]]], text: ReminderText,
                 outbox: OutboxSender, clock: Clock,
                 observe_keys: Callable[[UserId], Awaitable[object]] | None = None,
                 monotonic: Callable[[], float] | None = None,
                 on_scanned: Callable[[list[UserId]], None] | None = None) -> None:
        self.config = config
        self.store = store
        self.hygiene = hygiene
        self.audience = audience
        self.text = text
        self.outbox = outbox
        self.clock = clock
        self.observe_keys = observe_keys  # new-session detection for users sync doesn't cover
        self.on_scanned = on_scanned  # everyone served was looked at (the report's snapshot)
        self.scheduler: Any = None
        self._monotonic = monotonic or time.monotonic
        self._running: set[asyncio.Task[Any]] = set()  # scheduled runs, cancelled on stop
        self._scanning = asyncio.Lock()
        self.last_failed = 0  # people the last scan could not look at
        # The last scan could not even find or assess its people (e.g. the homeserver was
        # away during the admin API's user listing): ``retry_failed`` runs it again.
        self.last_run_failed = False

    # -- deciding ------------------------------------------------------------------------------

    def _history(self, user_id: UserId, report: UserReport, now: int) -> ReminderHistory:
        record = self.store.touch_user(user_id, now)  # grace counts from the first look
        return dataclasses.replace(
            self.store.reminder_history(user_id, record.first_seen_ms),
            backup_opted_out="backup_opted_out" in report.notes)

    async def still_due(self, message: OutboxMessage) -> bool:
        """Whether a reminder that waited is still worth sending: not when what it is about
        was fixed meanwhile (or, for the "all fixed" note, broke again). Other kinds, fresh
        reminders, and facts that cannot be had leave it as it is."""
        now = self.clock.now_ms()
        if message.kind not in REMINDER_KINDS or now - message.created_ms < RECHECK_AFTER_MS:
            return True
        report = (await self.hygiene.assess([message.user_id])).get(message.user_id)
        if report is None:
            return True
        history = self._history(message.user_id, report, now)
        reminding = bool(reminding_findings(report, history, self.config.policy))
        due = reminding if message.kind == DecisionKind.REMIND.value else not reminding
        if not due:
            logger.info("Reminder to %s withdrawn: %s since it was queued", message.user_id,
                        "at risk again" if reminding else "fixed")
            if not reminding:  # (an "all fixed" note at risk again: the next scan reminds)
                self.store.close_reminder_episode(message.user_id)
        return due

    def decision_for(self, user_id: UserId, report: UserReport) -> ReminderDecision:
        """What the policy would do now (``!remind`` shows it); queues and sends nothing."""
        now = self.clock.now_ms()
        return decide(report, self._history(user_id, report, now), self.config.policy, now)

    def queue(self, user_id: UserId, report: UserReport) -> ReminderDecision:
        """Decide for one user and, if due, record the message and the new state at once."""
        with self.store.transaction():  # one commit per person, whatever is written
            return self._queue(user_id, report)

    def _queue(self, user_id: UserId, report: UserReport) -> ReminderDecision:
        now = self.clock.now_ms()
        history = self._history(user_id, report, now)
        decision = decide(report, history, self.config.policy, now)
        if not decision.due:
            return decision
        assert decision.key is not None and decision.txn_id is not None
        body = (self.text.reminder(user_id, decision, report)
                if decision.kind is DecisionKind.REMIND else self.text.all_good(user_id))
        message = OutboxMessage(key=decision.key, user_id=user_id, kind=decision.kind.value,
                                txn_id=decision.txn_id, body=body, room_id=None,
                                status="pending", attempts=0, created_ms=now)
        self.store.enqueue(message, record_sent(history, decision, now))
        return decision

    async def scan(self, deliver: bool = True) -> ScanStats:
        """One full pass: assess everyone served, queue what is due, then send it. Scans run
        one at a time (a retry or the scan after quiet hours may meet a scheduled one)."""
        async with self._scanning:
            return await self._scan(deliver)

    async def _scan(self, deliver: bool) -> ScanStats:
        stats = ScanStats()
        started = self._monotonic()
        try:
            users = await self.audience()
            reports = await self.hygiene.assess(list(users))
        except Exception:
            self.last_run_failed = True  # nobody was looked at: retried after an outage
            raise
        self.last_run_failed = False
        for user_id in users:
            report = reports.get(user_id)
            if report is None:  # the hygiene service logged why
                stats.failed += 1
                continue
            try:
                if self.observe_keys is not None:
                    await self.observe_keys(user_id)
                decision = self.queue(user_id, report)
            except Exception:  # this person is looked at again next scan; the others go on
                logger.exception("Reminder scan: %s failed; the scan goes on", user_id)
                stats.failed += 1
                continue
            if decision.due:
                stats.queued += 1
            else:
                stats.held[decision.reason] = stats.held.get(decision.reason, 0) + 1
                if decision.reason == "quiet_hours" and decision.not_before_ms is not None:
                    stats.after_quiet_ms = min(stats.after_quiet_ms or decision.not_before_ms,
                                               decision.not_before_ms)
        stats.users = len(users)
        self.last_failed = stats.failed
        stats.scan_seconds = self._monotonic() - started
        self.store.set_meta(LAST_SCAN_META, str(self.clock.now_ms()))
        if self.on_scanned is not None:
            self.on_scanned(users)
        logger.log(logging.WARNING if stats.failed else logging.INFO,
                   "Reminder scan: %d users, %d queued, held %s, %d failed (%.1f s)",
                   stats.users, stats.queued, stats.held, stats.failed, stats.scan_seconds)
        if stats.after_quiet_ms is not None:
            self._scan_at(stats.after_quiet_ms)
        if deliver:
            stats.delivery = await self.outbox.deliver()
        return stats

    def _scan_at(self, at_ms: int) -> None:
        """One more scan when quiet hours end: people held back only by them would otherwise
        wait for the next scheduled scan, and one inside quiet hours (``scan_at = "23:00"``,
        or every 24 h from a start at night) would never reach them."""
        if self.scheduler is None or not self.scheduler.running:
            return
        when = datetime.fromtimestamp(at_ms / 1000, tz=self.config.policy.zone)
        self.scheduler.add_job(self._scheduled_scan, DateTrigger(run_date=when),
                               id=AFTER_QUIET_JOB, replace_existing=True,
                               misfire_grace_time=None)
        logger.info("Reminder scan: people held back by quiet hours; another scan at %s",
                    when.isoformat(timespec="minutes"))

    # -- scheduling ------------------------------------------------------------------------

    def scan_overdue(self) -> bool:
        """A scan was missed (or never ran): run one now, however many were missed."""
        last = self.store.get_meta(LAST_SCAN_META)
        period = DAY_MS if self.config.scan_at_minute is not None else self.config.scan_every_ms
        return last is None or self.clock.now_ms() - int(last) >= period

    def start(self) -> None:
        """Schedule scans in the running loop; pending sends and a missed scan run at once."""
        if self.config.scan_at_minute is not None:
            hour, minute = divmod(self.config.scan_at_minute, 60)
            trigger: Any = CronTrigger(hour=hour, minute=minute,
                                       timezone=self.config.policy.zone)
        else:
            trigger = IntervalTrigger(seconds=self.config.scan_every_ms / 1000)
        scheduler = self.scheduler = AsyncIOScheduler(timezone=self.config.policy.zone)
        # coalesce + one instance: a late or slow scan is never run twice over itself.
        scheduler.add_job(self._scheduled_scan, trigger, id="reminder-scan", coalesce=True,
                          max_instances=1, misfire_grace_time=None)
        # Sends that failed (server down, room refused) are retried soon, not at the next scan.
        scheduler.add_job(self._retry_pending, IntervalTrigger(seconds=RETRY_SECONDS),
                          id="outbox-retry", coalesce=True, max_instances=1)
        overdue = self.scan_overdue()
        scheduler.add_job(self._startup, id="reminder-startup", kwargs={"scan": overdue})
        scheduler.start()

    async def _startup(self, scan: bool) -> None:
        await self._guarded(self.outbox.deliver())  # what a crash left pending goes first
        if scan:
            await self._guarded(self.scan())

    async def retry_failed(self) -> None:
        """Scan again if the last scan missed people or failed as a whole (e.g. during a
        homeserver outage); the policy's state makes a repeat harmless for everyone it
        already reached."""
        if self.last_failed or self.last_run_failed:
            await self._guarded(self.scan())

    async def _retry_pending(self) -> None:
        if self.store.pending_messages(limit=1):
            await self._guarded(self.outbox.deliver())

    async def _scheduled_scan(self) -> None:
        if self._scanning.locked():  # one running now covers this one
            logger.info("Reminder scan: one is already running; this one is skipped")
            return
        await self._guarded(self.scan())

    async def _guarded(self, work: Awaitable[Any]) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            await work
        except Exception:  # a failed scan is logged and retried next time, never fatal
            logger.exception("Reminder run failed")
        finally:
            self._running.discard(task)  # type: ignore[arg-type,unused-ignore]

    async def stop(self) -> None:
        """Stop scheduling and end a run in progress before the client under it closes
        (a run left going would open a new HTTP session on a closed client)."""
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self.scheduler = None
        running = list(self._running)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

