"""The hygiene service: gather facts (keys, optionally admin), assess, cache until things change.

Async edge around the pure assessment. It knows sources only through two small protocols, so
the assessment never learns where a fact came from.

Facts of people the bot shares no room with are re-read at each scan unless Synapse's user
listing shows no request of theirs since they were read (``nerbot.domain.freshness``): an
unchanged rescan of thousands of local people then costs no request per person.

The admin API answers only for the bot's own server, so it is asked only about local users;
people on other servers are assessed from what federation shows (their keys), and their
reports say what cannot be seen from here. A user whose facts cannot be had is left out of the
result (logged with their ID), never assessed from half the facts; so is one whose assessment
fails. The summary line counts both. A report that cannot be recorded is still returned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Protocol, TypeVar

from nerbot.domain.assessment import DAY_MS, AssessmentPolicy, UserReport, assess_user
from nerbot.domain.community import HygieneRecord, hygiene_record
from nerbot.domain.facts import AdminFacts, KeyFacts, combine
from nerbot.domain.freshness import (
    MAX_REUSE_MS,
    Fetched,
    Listed,
    speaks_for_now,
    still_current,
)
from nerbot.errors import FactsUnavailable
from nerbot.ports import Clock

logger = logging.getLogger(__name__)

ADMIN_CACHE_MS = 10 * 60 * 1000
T = TypeVar("T")


class KeySource(Protocol):
    async def facts(self, user_ids: Iterable[str], fresh: bool = False,
                    reuse: Collection[str] = ()) -> dict[str, KeyFacts]:
        """``reuse``: users whose cached facts stand even if they share no room with us."""

    def invalidate(self, user_ids: Iterable[str]) -> None: ...


class AdminSource(Protocol):
    async def facts(self, user_id: str) -> AdminFacts: ...


class KeptAdminFacts(Protocol):
    """Where admin facts outlive the process (the store), so a restart's scan reads again
    only the people who made a request since."""

    def save_admin_facts(self, items: Iterable[tuple[str, Fetched, AdminFacts]]) -> None: ...

    def load_admin_facts(self, not_before_ms: int) -> list[tuple[str, Fetched, AdminFacts]]:
        ...

    def forget_admin_facts(self, user_ids: Iterable[str]) -> None: ...


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
        activity: Callable[[str], Listed | None] | None = None,
        kept: KeptAdminFacts | None = None,
    ) -> None:
        """``record``: keeps each new assessment for the community report (the store).
        ``activity``: a local user as the latest user listing showed them (the admin probe),
        None when it did not (or showed no ``last_seen_ts``). ``kept``: admin facts saved by
        an earlier process, and where to save new ones (they stand only with ``activity``)."""
        self.activity = activity
        self.kept = kept if activity is not None else None
        self._fetched: dict[str, Fetched] = {}
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
        if self.kept is not None:
            self._load_kept(self.kept)

    def _load_kept(self, kept: KeptAdminFacts) -> None:
        """Facts an earlier process read, as if read by this one: the listing decides, as
        for any other, whether they still stand (``still_current``)."""
        try:
            rows = kept.load_admin_facts(self.clock.now_ms() - MAX_REUSE_MS)
        except Exception as exc:  # nothing lost: everyone is read from the homeserver
            logger.warning("Kept admin facts could not be loaded (%s: %s); reading everyone "
                           "again", type(exc).__name__, exc)
            return
        for user_id, fetched, facts in rows:
            self._fetched[user_id] = fetched
            self._admin_cache[user_id] = (fetched.at_ms, facts)
        if rows:
            logger.info("Admin facts of %d people kept from the last run", len(rows))

    def invalidate(self, user_ids: Iterable[str], keep_admin_facts: bool = False) -> None:
        """Their devices changed: read their keys again, and (unless ``keep_admin_facts``:
        the user listing decides) what the admin API said."""
        users = list(user_ids)
        self.keys.invalidate(users)
        for user_id in users:
            self._reports.pop(user_id, None)
            if not keep_admin_facts:
                self._admin_cache.pop(user_id, None)
                self._fetched.pop(user_id, None)
        if self.kept is not None and not keep_admin_facts:
            self._write_kept(lambda kept: kept.forget_admin_facts(users))

    def _unchanged(self, users: list[str], now: int, fresh: bool
                   ) -> tuple[set[str], dict[str, Fetched]]:
        """Who made no request since their facts were fetched, and, for the others, what to
        remember once they are fetched now."""
        if self.activity is None:
            return set(), {}
        unchanged: set[str] = set()
        refetched: dict[str, Fetched] = {}
        for user_id in users:
            listed = self.activity(user_id)
            if listed is None or not speaks_for_now(listed, now):
                continue  # nothing to compare with now, nor to remember for later
            before = None if fresh else self._fetched.get(user_id)
            if before is not None and still_current(before, listed, now):
                unchanged.add(user_id)
            else:
                refetched[user_id] = Fetched(now, listed.last_seen_ms)
        return unchanged, refetched

    async def _admin_facts(self, user_ids: list[str], fresh: bool, reuse: Collection[str] = ()
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
            if hit is not None and (now - hit[0] < self.admin_cache_ms or user_id in reuse):
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
        unchanged, refetched = self._unchanged(users, self.clock.now_ms(), fresh)
        started = time.monotonic()
        async with asyncio.TaskGroup() as group:  # no request outlives a failed sibling
            keys_task = group.create_task(_timed(
                self.keys.facts(users, fresh=fresh, reuse=unchanged)))
            admin_task = group.create_task(_timed(self._admin_facts(users, fresh, unchanged)))
        (keys, keys_seconds), ((admin, admin_failed), admin_seconds) = (
            keys_task.result(), admin_task.result())
        facts_seconds = time.monotonic() - started
        to_keep: list[tuple[str, Fetched, AdminFacts]] = []
        for user_id, fetched in refetched.items():
            if user_id in keys and user_id not in admin_failed:
                self._fetched[user_id] = fetched
                if user_id in admin:
                    to_keep.append((user_id, fetched, admin[user_id]))
        if to_keep and self.kept is not None:
            self._write_kept(lambda kept: kept.save_admin_facts(to_keep))
        now = self.clock.now_ms()
        day = now // DAY_MS
        reports: dict[str, UserReport] = {}
        new: list[HygieneRecord] = []
        unavailable = failed = 0
        for user_id in users:
            key_facts, admin_facts = keys.get(user_id), admin.get(user_id)
            if key_facts is None or user_id in admin_failed:
                unavailable += 1  # the directory or the admin step logged who and why
                continue
            memo = self._reports.get(user_id)
            if memo is not None and memo[0] is key_facts and memo[1] is admin_facts \
                    and memo[2] == day:
                reports[user_id] = memo[3]
                continue
            try:
                facts = combine(key_facts, admin_facts, remote=not self.is_local(user_id))
                report = assess_user(facts, self.policy, now)
                record = hygiene_record(report, now) if report.exists else None
            except Exception:  # this person is left out (and tried again next time)
                logger.exception("Assessment of %s failed; left out, the others go on",
                                 user_id)
                failed += 1
                continue
            self._reports[user_id] = (key_facts, admin_facts, day, report)
            reports[user_id] = report
            if record is not None:
                new.append(record)
        # Where a scan's time goes: the admin API is asked per person, /keys/query in batches.
        # (bench/scale.py parses this line: new fields go at its end.)
        logger.log(logging.INFO if len(users) > 1 else logging.DEBUG,
                   "Facts for %d people in %.1f s: keys %.1f s, admin API %.1f s, %d unchanged "
                   "since read, %d unavailable, %d failed", len(users), facts_seconds,
                   keys_seconds, admin_seconds, len(unchanged), unavailable, failed)
        if new and self.record is not None:  # an unchanged report was recorded before
            self._record_new(self.record, new)
        return reports

    def _write_kept(self, write: Callable[[KeptAdminFacts], None]) -> None:
        """Kept facts only save requests after a restart: failing to write them costs that
        saving, never an assessment."""
        assert self.kept is not None
        try:
            write(self.kept)
        except Exception as exc:
            logger.warning("Keeping admin facts for the next run failed (%s: %s)",
                           type(exc).__name__, exc)

    def _record_new(self, record: Callable[[list[HygieneRecord]], None],
                    new: list[HygieneRecord]) -> None:
        """Record the new assessments; if the batch cannot be written, each person on their
        own. Whoever still fails keeps their report but is recorded at their next assessment
        (their memo is dropped), so nobody's assessment is lost to someone else's."""
        try:
            record(new)
            return
        except Exception as exc:
            if len(new) == 1:
                self._not_recorded(new[0].user_id, exc)
                return
            logger.warning("Recording %d assessments failed (%s: %s); recording them one by "
                           "one", len(new), type(exc).__name__, exc)
        for one in new:
            try:
                record([one])
            except Exception as exc:
                self._not_recorded(one.user_id, exc)

    def _not_recorded(self, user_id: str, exc: Exception) -> None:
        logger.warning("Assessment of %s not recorded for the report (%s: %s); recorded at "
                       "their next assessment", user_id, type(exc).__name__, exc)
        self._reports.pop(user_id, None)

    async def assess_one(self, user_id: str, fresh: bool = False) -> UserReport:
        """One user's report; raises ``FactsUnavailable`` when it cannot be made now."""
        report = (await self.assess([user_id], fresh=fresh)).get(user_id)
        if report is None:
            raise FactsUnavailable(user_id)
        return report


async def _timed(work: Awaitable[T]) -> tuple[T, float]:
    started = time.monotonic()
    result = await work
    return result, time.monotonic() - started
