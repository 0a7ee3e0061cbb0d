"""The hygiene service: gather facts (keys, optionally admin), assess, cache until things change.

Async edge around the pure assessment. It knows sources only through two small protocols, so
the assessment never learns where a fact came from.

The admin API answers only for the bot's own server, so it is asked only about local users;
people on other servers are assessed from what federation shows (their keys), and their
reports say what cannot be seen from here. A user whose facts cannot be had is left out of the
result (logged with their ID), never assessed from half the facts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from nerbot.domain.assessment import DAY_MS, AssessmentPolicy, UserReport, assess_user
from nerbot.domain.community import HygieneRecord, hygiene_record
from nerbot.domain.facts import AdminFacts, KeyFacts, combine
from nerbot.errors import FactsUnavailable
from nerbot.ports import Clock

logger = logging.getLogger(__name__)

ADMIN_CACHE_MS = 10 * 60 * 1000


class KeySource(Protocol):
    async def facts(self, user_ids: Iterable[str], fresh: bool = False) -> dict[str, KeyFacts]:
        ...

    def invalidate(self, user_ids: Iterable[str]) -> None: ...


class AdminSource(Protocol):
    async def facts(self, user_id: str) -> AdminFacts: ...


class HygieneService:
    """Per-user reports for any set of users, as cheaply as the caches allow."""

    def __init__(
        self,
        keys: KeySource,
        admin: AdminSource | None,
        policy: AssessmentPolicy,
        clock: Clock,
        admin_cache_ms: int = ADMIN_CACHE_MS,
        is_local: Callable[[str], bool] = lambda _user: True,
        record: Callable[[list[HygieneRecord]], None] | None = None,
    ) -> None:
        """``record``: keeps each new assessment for the community report (the store)."""
        self.record = record
        self.keys = keys
        self.admin = admin
        self.is_local = is_local
        self.policy = policy
        self.clock = clock
        self.admin_cache_ms = admin_cache_ms
        self._admin_cache: dict[str, tuple[int, AdminFacts]] = {}
        # A report is reused while its inputs are the very same objects and the day (which
        # idle-day counts depend on) has not changed: an unchanged scan costs dict lookups.
        self._reports: dict[str, tuple[KeyFacts, AdminFacts | None, int, UserReport]] = {}

    def invalidate(self, user_ids: Iterable[str]) -> None:
        users = list(user_ids)
        self.keys.invalidate(users)
        for user_id in users:
            self._admin_cache.pop(user_id, None)
            self._reports.pop(user_id, None)

    async def _admin_facts(self, user_ids: list[str], fresh: bool
                           ) -> tuple[dict[str, AdminFacts], set[str]]:
        """Admin facts of the local users among ``user_ids``, and whose could not be read."""
        if self.admin is None:
            return {}, set()
        admin = self.admin
        now = self.clock.now_ms()
        result: dict[str, AdminFacts] = {}
        missing = []
        for user_id in user_ids:
            if not self.is_local(user_id):
                continue  # Synapse's admin API knows only its own users
            hit = None if fresh else self._admin_cache.get(user_id)
            if hit is not None and now - hit[0] < self.admin_cache_ms:
                result[user_id] = hit[1]
            else:
                missing.append(user_id)
        fetched = await asyncio.gather(*(admin.facts(u) for u in missing),
                                       return_exceptions=True)
        failed: set[str] = set()
        for user_id, facts in zip(missing, fetched, strict=True):
            if isinstance(facts, BaseException):
                if not isinstance(facts, Exception):
                    raise facts  # cancellation and friends are not a user's failure
                cause = facts.exceptions[0] if isinstance(facts, ExceptionGroup) else facts
                logger.warning("Admin facts for %s unavailable: %s: %s", user_id,
                               type(cause).__name__, cause)
                failed.add(user_id)
                continue
            self._admin_cache[user_id] = (now, facts)
            result[user_id] = facts
        return result, failed

    async def assess(self, user_ids: Iterable[str], fresh: bool = False
                     ) -> dict[str, UserReport]:
        """Reports for every user whose facts could be had; the others are left out."""
        users = list(dict.fromkeys(user_ids))
        async with asyncio.TaskGroup() as group:  # no request outlives a failed sibling
            keys_task = group.create_task(self.keys.facts(users, fresh=fresh))
            admin_task = group.create_task(self._admin_facts(users, fresh))
        keys, (admin, admin_failed) = keys_task.result(), admin_task.result()
        now = self.clock.now_ms()
        day = now // DAY_MS
        reports: dict[str, UserReport] = {}
        new: list[HygieneRecord] = []
        for user_id in users:
            key_facts, admin_facts = keys.get(user_id), admin.get(user_id)
            if key_facts is None or user_id in admin_failed:
                continue
            memo = self._reports.get(user_id)
            if memo is not None and memo[0] is key_facts and memo[1] is admin_facts \
                    and memo[2] == day:
                reports[user_id] = memo[3]
                continue
            facts = combine(key_facts, admin_facts, remote=not self.is_local(user_id))
            report = assess_user(facts, self.policy, now)
            self._reports[user_id] = (key_facts, admin_facts, day, report)
            reports[user_id] = report
            if report.exists:
                new.append(hygiene_record(report, now))
        if new and self.record is not None:  # an unchanged report was recorded before
            self.record(new)
        return reports

    async def assess_one(self, user_id: str, fresh: bool = False) -> UserReport:
        """One user's report; raises ``FactsUnavailable`` when it cannot be made now."""
        report = (await self.assess([user_id], fresh=fresh)).get(user_id)
        if report is None:
            raise FactsUnavailable(user_id)
        return report
