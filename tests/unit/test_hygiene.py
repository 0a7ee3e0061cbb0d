"""The hygiene service's caching: reports are reused only while nothing they depend on changed."""

from __future__ import annotations

from collections.abc import Iterable

from nerbot.domain.assessment import DAY_MS, AssessmentPolicy
from nerbot.domain.facts import AdminFacts, BackupFacts, DeviceFacts, KeyFacts
from nerbot.hygiene import HygieneService


class Clock:
    def __init__(self) -> None:
        self.now = 100 * DAY_MS

    def now_ms(self) -> int:
        return self.now


class Keys:
    def __init__(self) -> None:
        self.facts_by_user = {"@a:hs": KeyFacts("@a:hs", True, True, "M",
                                                (DeviceFacts("A", None, True, True),))}
        self.calls = 0

    async def facts(self, user_ids: Iterable[str], fresh: bool = False) -> dict[str, KeyFacts]:
        self.calls += 1
        return {u: self.facts_by_user[u] for u in user_ids}

    def invalidate(self, user_ids: Iterable[str]) -> None:
        for user in user_ids:
            old = self.facts_by_user[user]
            self.facts_by_user[user] = KeyFacts(old.user_id, old.has_master_key,
                                                old.self_signing_valid, old.master_key, ())


class Admin:
    def __init__(self) -> None:
        self.calls = 0

    async def facts(self, user_id: str) -> AdminFacts:
        self.calls += 1
        return AdminFacts(True, BackupFacts(), {"A": 0})


async def test_reports_are_reused_until_facts_or_day_change() -> None:
    keys, clock = Keys(), Clock()
    service = HygieneService(keys, None, AssessmentPolicy(), clock)
    first = await service.assess_one("@a:hs")
    assert await service.assess_one("@a:hs") is first  # same inputs: same report object
    clock.now += DAY_MS  # idle-day counts change with the day
    assert await service.assess_one("@a:hs") is not first
    second = await service.assess_one("@a:hs")
    service.invalidate(["@a:hs"])
    third = await service.assess_one("@a:hs")
    assert third is not second and third.sessions == ()


async def test_admin_facts_cached_for_a_while_and_fresh_bypasses() -> None:
    keys, clock, admin = Keys(), Clock(), Admin()
    service = HygieneService(keys, admin, AssessmentPolicy(), clock, admin_cache_ms=1000)
    await service.assess_one("@a:hs")
    await service.assess_one("@a:hs")
    assert admin.calls == 1
    await service.assess_one("@a:hs", fresh=True)
    assert admin.calls == 2
    clock.now += 1001
    await service.assess_one("@a:hs")
    assert admin.calls == 3
