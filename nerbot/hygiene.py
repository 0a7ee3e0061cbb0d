"""The hygiene service: gather facts (keys, optionally admin), assess, cache until things change.

Async edge around the pure assessment. It knows sources only through two small protocols, so
the assessment never learns where a fact came from.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Protocol

from nerbot.domain.assessment import DAY_MS, AssessmentPolicy, UserReport, assess_user
from nerbot.domain.facts import AdminFacts, KeyFacts, combine
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
    ) -> None:
        self.keys = keys
        self.admin = admin
        self.policy = policy
        self.clock = clock
        self.admin_cache_ms = admin_cache_ms
        self._admin_cache: dict[str, tuple[int, AdminFacts]] = {}
        # A report is reused while its inputs are the very same objects and the day (which
        # idle-day counts depend on) has not changed: an unchanged scan costs dict lookups.
        self._reports: dict[str, tuple[KeyFacts, AdminFacts | None, int, UserReport]] = {}

    @property
    def admin_enabled(self) -> bool:
        return self.admin is not None

    def invalidate(self, user_ids: Iterable[str]) -> None:
        users = list(user_ids)
        self.keys.invalidate(users)
        for user_id in users:
            self._admin_cache.pop(user_id, None)
            self._reports.pop(user_id, None)

    async def _admin_facts(self, user_ids: list[str], fresh: bool) -> dict[str, AdminFacts]:
        if self.admin is None:
            return {}
        admin = self.admin
        now = self.clock.now_ms()
        result: dict[str, AdminFacts] = {}
        missing = []
        for user_id in user_ids:
            hit = None if fresh else self._admin_cache.get(user_id)
            if hit is not None and now - hit[0] < self.admin_cache_ms:
                result[user_id] = hit[1]
            else:
                missing.append(user_id)
        fetched = await asyncio.gather(*(admin.facts(u) for u in missing))
        for user_id, facts in zip(missing, fetched, strict=True):
            self._admin_cache[user_id] = (now, facts)
            result[user_id] = facts
        return result

    async def assess(self, user_ids: Iterable[str], fresh: bool = False
                     ) -> dict[str, UserReport]:
        users = list(dict.fromkeys(user_ids))
        keys, admin = await asyncio.gather(
            self.keys.facts(users, fresh=fresh), self._admin_facts(users, fresh))
        now = self.clock.now_ms()
        day = now // DAY_MS
        reports: dict[str, UserReport] = {}
        for user_id in users:
            key_facts, admin_facts = keys[user_id], admin.get(user_id)
            memo = self._reports.get(user_id)
            if memo is not None and memo[0] is key_facts and memo[1] is admin_facts \
                    and memo[2] == day:
                reports[user_id] = memo[3]
                continue
            report = assess_user(combine(key_facts, admin_facts), self.policy, now)
            self._reports[user_id] = (key_facts, admin_facts, day, report)
            reports[user_id] = report
        return reports

    async def assess_one(self, user_id: str, fresh: bool = False) -> UserReport:
        return (await self.assess([user_id], fresh=fresh))[user_id]
