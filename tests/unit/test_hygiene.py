"""The hygiene service's caching: reports are reused only while nothing they depend on changed."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable

import pytest

from bench.scale import FACTS_RE
from nerbot.domain.assessment import DAY_MS, AssessmentPolicy, FindingKind
from nerbot.domain.community import HygieneRecord
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



class MalformedAdmin(Admin):
    """``@b:hs``'s answer is malformed (no session map), as a broken admin API might send."""

    async def facts(self, user_id: str) -> AdminFacts:
        if user_id == "@b:hs":
            return AdminFacts(True, BackupFacts(), None)  # type: ignore[arg-type]
        return await super().facts(user_id)


def people(*user_ids: str) -> Federation:
    """Keys for each of ``user_ids``; anyone else is unavailable."""
    keys = Federation()
    keys.facts_by_user = {u: KeyFacts(u, True, True, "M", (DeviceFacts("A", None, True, True),))
                          for u in user_ids}
    return keys


async def test_one_persons_failing_assessment_leaves_the_others_assessed(
        caplog: pytest.LogCaptureFixture) -> None:
    recorded: list[str] = []
    service = HygieneService(people("@a:hs", "@b:hs", "@c:hs"), MalformedAdmin(),
                             AssessmentPolicy(), Clock(),
                             record=lambda new: recorded.extend(r.user_id for r in new))
    with caplog.at_level(logging.INFO, logger="nerbot.hygiene"):
        reports = await service.assess(["@a:hs", "@b:hs", "@c:hs", "@gone:down"])
    assert set(reports) == {"@a:hs", "@c:hs"} and recorded == ["@a:hs", "@c:hs"]
    failed = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in failed] == [
        "Assessment of @b:hs failed; left out, the others go on"]
    [summary] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Facts")]
    assert summary.endswith("0 unchanged since read, 1 unavailable, 1 failed")
    found = FACTS_RE.search(summary)  # bench/scale.py still reads the line
    assert found is not None and found.group(1) == "4" and found.group(5) == "0"
    with pytest.raises(FactsUnavailable):
        await service.assess_one("@b:hs")


class RefusingStore:
    """Records assessments, but refuses ``@b:hs``'s row (and so any batch holding it)."""

    def __init__(self) -> None:
        self.rows: dict[str, HygieneRecord] = {}
        self.refuse = {"@b:hs"}

    def record(self, new: list[HygieneRecord]) -> None:
        if any(r.user_id in self.refuse for r in new):
            raise OSError("disk I/O error")
        self.rows.update((r.user_id, r) for r in new)


async def test_a_failed_record_loses_no_ones_assessment(
        caplog: pytest.LogCaptureFixture) -> None:
    store = RefusingStore()
    service = HygieneService(people("@a:hs", "@b:hs", "@c:hs"), None, AssessmentPolicy(),
                             Clock(), record=store.record)
    with caplog.at_level(logging.WARNING, logger="nerbot.hygiene"):
        reports = await service.assess(["@a:hs", "@b:hs", "@c:hs"])
    assert set(reports) == {"@a:hs", "@b:hs", "@c:hs"}  # everyone's report, recorded or not
    assert set(store.rows) == {"@a:hs", "@c:hs"}  # recorded one by one past the refusal
    assert any("@b:hs not recorded" in r.getMessage() for r in caplog.records)
    store.refuse.clear()  # the disk is back: the next assessment records the one left over
    again = await service.assess(["@a:hs", "@b:hs", "@c:hs"])
    assert again["@a:hs"] is reports["@a:hs"]  # unchanged and recorded: reused as it was
    assert set(store.rows) == {"@a:hs", "@b:hs", "@c:hs"}
