"""The hygiene service's caching: reports are reused only while nothing they depend on changed."""

from __future__ import annotations

from collections.abc import Collection, Iterable

import pytest

from nerbot.domain.assessment import DAY_MS, AssessmentPolicy, FindingKind
from nerbot.domain.facts import AdminFacts, BackupFacts, BackupState, DeviceFacts, KeyFacts
from nerbot.errors import FactsUnavailable, MatrixRequestError
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

    async def facts(self, user_ids: Iterable[str], fresh: bool = False,
                    reuse: Collection[str] = ()) -> dict[str, KeyFacts]:
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


class Federation(Keys):
    """Keys for a local and a remote user; ``@gone:down`` is on a server that does not answer."""

    def __init__(self) -> None:
        super().__init__()
        self.facts_by_user["@r:far"] = KeyFacts("@r:far", True, True, "R",
                                                (DeviceFacts("R", None, True, False),))

    async def facts(self, user_ids: Iterable[str], fresh: bool = False,
                    reuse: Collection[str] = ()) -> dict[str, KeyFacts]:
        self.calls += 1
        return {u: self.facts_by_user[u] for u in user_ids if u in self.facts_by_user}


class LocalOnlyAdmin(Admin):
    """Like Synapse's admin API: 400 for another server's user; ``@b:hs`` fails once."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    async def facts(self, user_id: str) -> AdminFacts:
        self.asked.append(user_id)
        if not user_id.endswith(":hs"):
            raise MatrixRequestError("GET", "/users", 400, {"error": "Can only look up local"})
        if user_id == "@b:hs" and self.asked.count(user_id) == 1:
            raise MatrixRequestError("GET", "/users", 500, {})
        return await super().facts(user_id)


def federation_service() -> tuple[HygieneService, LocalOnlyAdmin]:
    keys, admin = Federation(), LocalOnlyAdmin()
    keys.facts_by_user["@b:hs"] = keys.facts_by_user["@a:hs"]
    service = HygieneService(keys, admin, AssessmentPolicy(), Clock(),
                             is_local=lambda u: u.endswith(":hs"))
    return service, admin


async def test_admin_api_is_asked_about_local_users_only() -> None:
    service, admin = federation_service()
    reports = await service.assess(["@a:hs", "@r:far"])
    assert admin.asked == ["@a:hs"]
    local, remote = reports["@a:hs"], reports["@r:far"]
    assert local.activity_known and not local.remote
    assert remote.remote and not remote.activity_known
    assert remote.backup is BackupState.UNKNOWN and "backup_not_visible" in remote.inferred
    assert [f.kind for f in remote.findings] == [FindingKind.UNVERIFIED_SESSIONS]


async def test_one_users_failure_leaves_the_others_assessed() -> None:
    service, _ = federation_service()
    reports = await service.assess(["@a:hs", "@b:hs", "@r:far", "@gone:down"])
    assert set(reports) == {"@a:hs", "@r:far"}  # @b: admin API failed; @gone: no keys
    assert set(await service.assess(["@b:hs"])) == {"@b:hs"}  # tried again, not cached
    with pytest.raises(FactsUnavailable) as raised:
        await service.assess_one("@gone:down")
    assert raised.value.user_id == "@gone:down"
