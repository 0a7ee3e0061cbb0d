"""An unchanged rescan reads nobody's facts again; a person who made a request is read again."""

from __future__ import annotations

from typing import Any

import pytest

from nerbot.alert_service import AlertService
from nerbot.domain.assessment import DAY_MS, AssessmentPolicy
from nerbot.domain.facts import AdminFacts, BackupFacts, BackupState, DeviceFacts, KeyFacts
from nerbot.domain.freshness import (
    LISTING_VALID_MS,
    MAX_REUSE_MS,
    SETTLE_MS,
    Fetched,
    Listed,
    still_current,
)
from nerbot.hygiene import HygieneService
from nerbot.ids import UserId
from nerbot.matrix.admin import AdminProbe
from nerbot.matrix.keys import KEYS_QUERY, KeyDirectory
from nerbot.runner import TaskRunner
from nerbot.store import Store

NOW = 100 * DAY_MS
SEEN = NOW - 3 * DAY_MS


@pytest.mark.parametrize(("fetched", "listed", "now", "current"), [
    (Fetched(NOW, SEEN), Listed(SEEN, NOW + 10), NOW + 20, True),
    (Fetched(NOW, None), Listed(None, NOW + 10), NOW + 20, True),  # never made a request
    (Fetched(NOW, SEEN), Listed(SEEN + 1, NOW + 10), NOW + 20, False),  # a request since
    (Fetched(NOW, None), Listed(SEEN, NOW + 10), NOW + 20, False),  # first request since
    # active just before the fetch: Synapse may not have recorded every request yet
    (Fetched(NOW, NOW - SETTLE_MS + 1), Listed(NOW - SETTLE_MS + 1, NOW + 10), NOW + 20, False),
    (Fetched(NOW, NOW - SETTLE_MS), Listed(NOW - SETTLE_MS, NOW + 10), NOW + 20, True),
    # a listing speaks only for when it was taken
    (Fetched(NOW, SEEN), Listed(SEEN, NOW), NOW + LISTING_VALID_MS + 1, False),
    # at least once a day, whatever the listing says
    (Fetched(NOW, SEEN), Listed(SEEN, NOW + MAX_REUSE_MS), NOW + MAX_REUSE_MS, False),
])
def test_still_current(fetched: Fetched, listed: Listed, now: int, current: bool) -> None:
    assert still_current(fetched, listed, now) is current


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def now_ms(self) -> int:
        return self.now


class Homeserver:
    """Synapse's user listing, admin API and /keys/query for three people; counts requests."""

    def __init__(self) -> None:
        self.last_seen: dict[str, int | None] = {"@a:hs": SEEN, "@b:hs": SEEN, "@c:hs": None}
        self.show_last_seen = True
        self.paths: list[str] = []
        self.queried: list[str] = []

    async def request(self, method: str, path: str, body: Any = None, **_: Any
                      ) -> tuple[int, dict[str, Any]]:
        self.paths.append(path)
        if path.startswith("/_synapse/admin/v2/users?"):
            users = [{"name": u, **({"last_seen_ts": seen} if self.show_last_seen else {})}
                     for u, seen in self.last_seen.items()]
            return 200, {"users": users}
        if path == KEYS_QUERY:
            self.queried += list(body["device_keys"])
            return 200, {"device_keys": {u: {} for u in body["device_keys"]}}
        if path.endswith("/devices"):
            return 200, {"devices": [{"device_id": "D", "last_seen_ts": 5}]}
        if path.endswith("/accountdata"):
            return 200, {"account_data": {"global": {}}}
        return 404, {}

    def admin_reads(self) -> list[str]:
        return [p for p in self.paths if p.endswith(("/devices", "/accountdata"))]

    def clear(self) -> None:
        self.paths.clear()
        self.queried.clear()


def wired(server: Homeserver, clock: Clock, store: Store | None = None
          ) -> tuple[HygieneService, AdminProbe]:
    """As the app wires them: nobody shares a room with the bot (an all-local scan)."""
    probe = AdminProbe(server, "token", backup_check=False, clock=clock)  # type: ignore[arg-type]
    keys = KeyDirectory(server, shares_room=lambda _user: False)  # type: ignore[arg-type]
    service = HygieneService(keys, probe, AssessmentPolicy(), clock, activity=probe.listed,
                             kept=store)
    return service, probe


async def scan(service: HygieneService, probe: AdminProbe) -> set[str]:
    return set(await service.assess(await probe.local_users()))


async def test_an_unchanged_rescan_reads_nobody_again() -> None:
    server, clock = Homeserver(), Clock()
    service, probe = wired(server, clock)
    assert await scan(service, probe) == {"@a:hs", "@b:hs", "@c:hs"}
    assert sorted(server.queried) == ["@a:hs", "@b:hs", "@c:hs"]
    assert len(server.admin_reads()) == 6
    clock.now += 6 * 3600 * 1000  # hours later: the admin cache alone would have expired
    server.clear()
    assert await scan(service, probe) == {"@a:hs", "@b:hs", "@c:hs"}
    assert server.queried == [] and server.admin_reads() == []


async def test_a_person_who_made_a_request_is_read_again_and_only_they() -> None:
    server, clock = Homeserver(), Clock()
    service, probe = wired(server, clock)
    await scan(service, probe)
    clock.now += 3600 * 1000
    server.last_seen["@b:hs"] = clock.now - 1000  # e.g. set up recovery a second ago
    server.last_seen["@c:hs"] = clock.now - 1000  # their first request ever
    server.clear()
    await scan(service, probe)
    assert sorted(server.queried) == ["@b:hs", "@c:hs"]
    assert len(server.admin_reads()) == 4
    # Read within the settling time of their last request: read once more, then trusted.
    clock.now += SETTLE_MS
    server.clear()
    await scan(service, probe)
    assert sorted(server.queried) == ["@b:hs", "@c:hs"]
    clock.now += SETTLE_MS
    server.clear()
    await scan(service, probe)
    assert server.queried == []


async def test_no_reuse_without_a_recent_listing_or_when_asked_fresh() -> None:
    server, clock = Homeserver(), Clock()
    service, probe = wired(server, clock)
    await scan(service, probe)
    server.clear()
    clock.now += LISTING_VALID_MS + 1  # a command between two scans: the listing is old
    await service.assess(["@a:hs"])
    assert server.queried == ["@a:hs"]
    server.clear()
    await scan(service, probe)
    await service.assess(["@a:hs"], fresh=True)  # a guide's checkpoint
    assert server.queried == ["@a:hs"] and len(server.admin_reads()) == 2


async def test_a_listing_without_last_seen_proves_nothing() -> None:
    server, clock = Homeserver(), Clock()
    server.show_last_seen = False  # an older Synapse
    service, probe = wired(server, clock)
    await scan(service, probe)
    clock.now += 3600 * 1000
    server.clear()
    await scan(service, probe)
    assert sorted(server.queried) == ["@a:hs", "@b:hs", "@c:hs"]


async def test_a_restart_reads_again_only_who_made_a_request_since() -> None:
    """The admin facts outlive the process: the first scan after a restart asks the admin
    API only about people the listing shows active since (keys are one batched query)."""
    server, clock, store = Homeserver(), Clock(), Store(":memory:")
    service, probe = wired(server, clock, store)
    await scan(service, probe)
    assert len(server.admin_reads()) == 6
    clock.now += 3600 * 1000
    server.last_seen["@b:hs"] = clock.now - SETTLE_MS  # b signed in again meanwhile
    server.clear()
    restarted, probe = wired(server, clock, store)  # a new process on the same database
    assert await scan(restarted, probe) == {"@a:hs", "@b:hs", "@c:hs"}
    assert len(server.admin_reads()) == 2
    assert all("/users/%40b%3Ahs/" in path for path in server.admin_reads())
    assert sorted(server.queried) == ["@a:hs", "@b:hs", "@c:hs"]  # the key cache is new
    # Without a recent listing, or fresh, kept facts prove nothing: read as before.
    server.clear()
    again, probe = wired(server, clock, store)
    clock.now += LISTING_VALID_MS + 1
    await again.assess(["@a:hs"])
    assert any(path.startswith("/_synapse/admin/v2/users/%40a%3Ahs") for path in server.paths)


async def test_the_first_syncs_device_changes_leave_kept_facts_to_the_listing() -> None:
    server, clock, store = Homeserver(), Clock(), Store(":memory:")
    service, probe = wired(server, clock, store)
    await scan(service, probe)
    clock.now += 3600 * 1000
    server.clear()
    restarted, probe = wired(server, clock, store)
    restarted.invalidate(["@a:hs", "@b:hs"], keep_admin_facts=True)  # the first sync's list
    await scan(restarted, probe)
    assert server.admin_reads() == []  # nobody made a request: the kept facts stand
    assert {u for u, _, _ in store.load_admin_facts(0)} == {"@a:hs", "@b:hs", "@c:hs"}


async def test_kept_facts_expire_and_go_with_an_invalidation() -> None:
    server, clock, store = Homeserver(), Clock(), Store(":memory:")
    service, probe = wired(server, clock, store)
    await scan(service, probe)
    assert {u for u, _, _ in store.load_admin_facts(0)} == {"@a:hs", "@b:hs", "@c:hs"}
    service.invalidate(["@a:hs"])  # e.g. sync reported a device change
    assert {u for u, _, _ in store.load_admin_facts(0)} == {"@b:hs", "@c:hs"}
    clock.now += MAX_REUSE_MS  # a day later nothing kept can stand: all read again
    server.clear()
    restarted, probe = wired(server, clock, store)
    await scan(restarted, probe)
    assert len(server.admin_reads()) == 6


def test_kept_facts_round_trip_and_a_damaged_row_is_read_again() -> None:
    store = Store(":memory:")
    facts = AdminFacts(exists=True, last_seen_ms={"D": 5, "E": None}, backup=BackupFacts(
        state=BackupState.PRESENT, version="3", secret_storage=True, key_backup_enabled=None,
        legacy_backup_marker=False, storage_opted_out=None))
    store.save_admin_facts([("@a:hs", Fetched(NOW, SEEN), facts),
                            ("@b:hs", Fetched(NOW, None), facts)])
    store.db.execute("UPDATE admin_facts SET facts = '{\"format\": 1}' WHERE user_id = '@b:hs'")
    assert store.load_admin_facts(NOW) == [("@a:hs", Fetched(NOW, SEEN), facts)]
    assert store.load_admin_facts(NOW + 1) == []  # older than asked for: deleted
    assert store.load_admin_facts(0) == []


class CountingStore(Store):
    reads = 0

    def known_devices(self, user_id: UserId) -> dict[str, int]:
        self.reads += 1
        return super().known_devices(user_id)


class Unused:
    async def facts(self, *_: Any, **__: Any) -> None:
        raise AssertionError("the scan passes its facts")

    async def deliver(self) -> None:
        raise AssertionError("the scan delivers once at its end")

    def alert(self, *_: Any) -> str:
        return "New session on your account"


async def test_the_same_facts_are_not_reviewed_twice_for_new_sessions() -> None:
    store, runner = CountingStore(":memory:"), TaskRunner()
    alerts = AlertService(store, Unused(), Unused(), Unused(), Clock(), runner,  # type: ignore[arg-type]
                          UserId("@bot:hs"), debounce_seconds=0)
    facts = KeyFacts("@a:hs", True, True, "M", (DeviceFacts("D1", None, True, False),))
    assert await alerts.check(UserId("@a:hs"), facts=facts, deliver=False) is not None
    assert await alerts.check(UserId("@a:hs"), facts=facts, deliver=False) is None
    assert store.reads == 1  # the rescan's unchanged facts: no database read
    newer = KeyFacts("@a:hs", True, True, "M", (DeviceFacts("D1", None, True, False),
                                                  DeviceFacts("D2", None, True, False)))
    decision = await alerts.check(UserId("@a:hs"), facts=newer, deliver=False)
    assert decision is not None and decision.alert and store.reads == 2
    assert [m.kind for m in store.pending_messages()] == ["alert"]
    await runner.stop()
