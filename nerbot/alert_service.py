"""New-session and identity-reset alerts, seconds after ``/sync`` reports a device-list change.

Changes are debounced (one message per user for a burst of logins; one batched key query for
everyone who changed), the keys are fetched fresh, and the pure ``review_sessions`` decides.
Alerts go through the same outbox as reminders, so they are exactly-once too, and each is
counted in the ``alerts`` table.

A user whose keys cannot be had (their homeserver is down) or whose check fails is logged with
their ID and looked at again later, with a growing delay and a bounded number of tries; after
that they wait for ``retry_now`` (the bot's homeserver is back after an outage) or their next
device-list change. The others in the batch go on; nobody is dropped. If the batch's key
query itself fails unexpectedly, everyone in it takes that retry path. The delay grows by the
bot's one backoff rule (``nerbot.matrix.reachability.backoff_delay``).

Who waits for a check is written down as sync reports them (before the sync position moves
past the change) and crossed off once checked: a stop or crash before the check loses no one
(``resume`` at the next start).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from nerbot.domain.alerts import AlertDecision, alert_key, alert_txn_id, review_sessions
from nerbot.domain.facts import KeyFacts
from nerbot.ids import UserId
from nerbot.matrix.reachability import backoff_delay
from nerbot.outbox import OutboxSender
from nerbot.ports import Clock
from nerbot.runner import TaskRunner
from nerbot.store import OutboxMessage, Store

logger = logging.getLogger(__name__)

RETRY_SECONDS = 30.0
MAX_RETRIES = 5


class KeySource(Protocol):
    async def facts(self, user_ids: Iterable[str], fresh: bool = False) -> dict[str, KeyFacts]:
        ...


class AlertText(Protocol):
    def alert(self, user_id: UserId, decision: AlertDecision, noticed_ms: int) -> str: ...


class AlertService:
    def __init__(self, store: Store, keys: KeySource, text: AlertText, outbox: OutboxSender,
                 clock: Clock, runner: TaskRunner, bot_user: UserId, debounce_seconds: float,
                 enabled: bool = True) -> None:
        self.store = store
        self.keys = keys
        self.text = text
        self.outbox = outbox
        self.clock = clock
        self.runner = runner
        self.bot_user = bot_user
        self.debounce_seconds = debounce_seconds
        self.enabled = enabled
        self.retry_seconds = RETRY_SECONDS
        self._waiting: set[str] = set()
        self._tries: dict[str, int] = {}  # failed checks per user since their last success
        # (user, when): new unverified sessions of theirs were counted (the alarm's threshold)
        self.on_new_sessions: Callable[[UserId, int], None] | None = None
        self._parked: set[str] = set()  # out of tries: checked again on retry_now
        # The facts each user's last completed check reviewed: the very same object again (a
        # rescan with nothing changed) has nothing new to say, and costs no database read.
        self._reviewed: dict[str, KeyFacts] = {}

    def resume(self) -> None:
        """Check the people whose change the last run noted but did not check."""
        users = self.store.device_changes()
        if not self.enabled:  # switched off since: nobody will check them
            self.store.clear_device_changes(users)
            return
        if users:
            logger.info("Checking %d user(s) whose device change was not checked before the "
                        "last stop", len(users))
            self.devices_changed(users)

    def devices_changed(self, user_ids: Iterable[str]) -> None:
        """From sync: look at the changed users once the burst has settled, in one batch."""
        if not self.enabled:
            return
        fresh = {u for u in user_ids if u != self.bot_user} - self._waiting
        if not fresh:
            return
        try:
            self.store.note_device_changes(sorted(fresh), self.clock.now_ms())
        except Exception:  # still checked in this run; only a crash before would lose them
            logger.exception("Could not note the device changes of %d user(s)", len(fresh))
        start_timer = not self._waiting
        self._waiting.update(fresh)
        if start_timer:
            self.runner.spawn(self._after_debounce(), name="alert-check")

    async def _after_debounce(self) -> None:
        await asyncio.sleep(self.debounce_seconds)
        started_ms = self.clock.now_ms()
        users = sorted(self._waiting)
        self._waiting.clear()  # a change during the checks starts the next batch
        try:
            facts = await self.keys.facts(users, fresh=True)  # one batched /keys/query
        except Exception:  # not one person's failure: the whole batch is tried again
            logger.exception("Key query for the alert check of %d user(s) failed; all will "
                             "be tried again: %s", len(users), ", ".join(users))
            facts = {}
        alerted = 0
        failed: list[str] = []
        for user_id in users:
            if user_id not in facts:  # their server did not answer (the directory logged it)
                failed.append(user_id)
                continue
            try:
                decision = await self.check(UserId(user_id), facts=facts[user_id],
                                            deliver=False)
            except Exception:
                logger.exception("Alert check for %s failed; it will be tried again", user_id)
                failed.append(user_id)
                continue
            self._tries.pop(user_id, None)
            self._parked.discard(user_id)
            if decision is not None and decision.alert:
                alerted += 1
        logger.log(logging.WARNING if failed else logging.INFO,
                   "Alert check: %d people, %d alerted, %d failed%s", len(users), alerted,
                   len(failed), " (tried again later)" if failed else "")
        # Crossed off: who was checked, unless they changed again since this batch began
        # (noted again, later; perhaps already in the next batch, or waiting for it).
        keep = set(failed) | self._waiting
        try:
            self.store.clear_device_changes((u for u in users if u not in keep), started_ms)
        except Exception:  # checked again after the next start: no alert is sent twice
            logger.exception("Could not cross off %d checked user(s)", len(users))
        if failed:
            self._retry_later(failed)
        if alerted:
            await self.outbox.deliver()

    def _retry_later(self, users: list[str]) -> None:
        again = []
        for user_id in users:
            tries = self._tries[user_id] = self._tries.get(user_id, 0) + 1
            if tries > MAX_RETRIES:
                logger.warning("Alert check for %s failed %d times; waiting for the homeserver "
                               "or their next change", user_id, MAX_RETRIES)
                del self._tries[user_id]
                self._parked.add(user_id)
            else:
                again.append(user_id)
        if not again:
            return
        delay = backoff_delay(self.retry_seconds, min(self._tries[u] for u in again))

        async def retry() -> None:
            await asyncio.sleep(delay)
            self.devices_changed(again)

        self.runner.spawn(retry(), name="alert-retry")

    def retry_now(self) -> None:
        """Check at once everyone whose check failed (the homeserver is back)."""
        users = self._parked | set(self._tries)
        self._parked.clear()
        self._tries.clear()
        if users:
            logger.info("Checking %d user(s) whose alert check failed earlier", len(users))
            self.devices_changed(users)

    def _record(self, user_id: UserId, decision: AlertDecision, now: int, send: bool) -> None:
        """Queue the person's alert (if they get alerts) and count it for the admins (always:
        the report and the alarms watch logins whatever the person chose). Runs in the
        check's transaction, so a replay finds the sessions remembered and counts nothing
        twice."""
        if send:
            key = alert_key(user_id, decision)
            queued = self.store.enqueue(OutboxMessage(
                key=key, user_id=user_id, kind="alert", txn_id=alert_txn_id(key),
                body=self.text.alert(user_id, decision, now), room_id=None, status="pending",
                attempts=0, created_ms=now))
            if not queued:
                return
        devices = [d.device_id for d in decision.new_unsigned]
        if devices:
            self.store.record_alert(user_id, "new_sessions", devices, now)
            if self.on_new_sessions is not None:  # too many in a day: the admins' alarm
                self.on_new_sessions(user_id, now)
        if decision.identity_reset:
            self.store.record_alert(user_id, "identity_reset", [], now)
        logger.info("Alert for %s: %d new unverified session(s)%s%s", user_id, len(devices),
                    ", identity reset" if decision.identity_reset else "",
                    "" if send else " (alerts off: counted, not sent)")

    async def check(self, user_id: UserId, fresh: bool = False,
                    facts: KeyFacts | None = None, deliver: bool = True
                    ) -> AlertDecision | None:
        """Compare the user's sessions and identity with what the bot saw before.

        The reminder scan passes the facts it already has (and delivers once at its end);
        sync-driven checks fetch them fresh.
        """
        if user_id == self.bot_user:
            return None
        if facts is None:
            facts = (await self.keys.facts([user_id], fresh=fresh)).get(user_id)
        if facts is None:  # the user is gone, or the server did not answer for them
            return None
        if self._reviewed.get(user_id) is facts:
            return None
        now = self.clock.now_ms()
        decision = review_sessions(self.store.known_devices(user_id),
                                   self.store.known_master_key(user_id), facts)
        # One commit: a crash leaves the alert queued and counted, or neither and the sessions
        # not yet remembered (the next check decides again), never half of it.
        with self.store.transaction():
            if decision.alert:
                self._record(user_id, decision, now,
                             send=self.enabled and not self.store.alerts_off(user_id))
            if decision.remember_devices:
                self.store.remember_devices(user_id, decision.remember_devices, now)
            if decision.remember_master_key is not None:
                self.store.remember_master_key(user_id, decision.remember_master_key, now)
        self._reviewed[user_id] = facts
        if decision.alert and deliver:
            await self.outbox.deliver()
        return decision
