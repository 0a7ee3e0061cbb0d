"""One person's failure never stops a batch: the scan and the alert checks go on for the rest."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest

from nerbot.alert_service import AlertService
from nerbot.app import NerbotApp
from nerbot.config import RemindersConfig, parse_config
from nerbot.domain.alerts import AlertDecision
from nerbot.domain.assessment import AssessmentPolicy, UserReport, assess_user
from nerbot.domain.facts import DeviceFacts, KeyFacts, UserFacts
from nerbot.domain.reminders import ReminderDecision, ReminderSettings
from nerbot.ids import RoomId, UserId
from nerbot.matrix.admin import AdminProbe
from nerbot.matrix.transport import DirectRooms
from nerbot.outbox import DeliveryStats
from nerbot.reminder_service import ReminderService
from nerbot.runner import TaskRunner
from nerbot.store import Store

NOW = 400 * 24 * 3600 * 1000 + 12 * 3600 * 1000  # midday UTC, outside quiet hours
A, B, C, D = (UserId(f"@{n}:hs") for n in "abcd")


class Clock:
    def now_ms(self) -> int:
        return NOW


def at_risk(user_id: str) -> UserReport:
    """No cross-signing identity: always worth a reminder."""
    facts = UserFacts(user_id, True, False, False, (DeviceFacts("X", "phone", True, False),))
    return assess_user(facts, AssessmentPolicy(), NOW)


class Hygiene:
    """Reports for everyone but ``unavailable`` (as if their homeserver did not answer)."""

    def __init__(self, unavailable: set[str]) -> None:
        self.unavailable = unavailable

    async def assess(self, user_ids: list[str], fresh: bool = False) -> dict[str, UserReport]:
        return {u: at_risk(u) for u in user_ids if u not in self.unavailable}


class Text:
    def reminder(self, user_id: UserId, decision: ReminderDecision, report: UserReport) -> str:
        return f"reminder for {user_id}"

    def all_good(self, user_id: UserId) -> str:
        return "all good"

    def alert(self, user_id: UserId, decision: AlertDecision, noticed_ms: int) -> str:
        return f"alert for {user_id}"


class Outbox:
    def __init__(self) -> None:
        self.runs = 0

    async def deliver(self) -> DeliveryStats:
        self.runs += 1
        return DeliveryStats()


async def test_scan_goes_on_past_unavailable_and_failing_people(
        caplog: pytest.LogCaptureFixture) -> None:
    store = Store(":memory:")

    async def audience() -> list[UserId]:
        return [A, B, C, D]

    async def observe(user_id: UserId) -> object:
        if user_id == C:
            raise RuntimeError("alert bookkeeping broke for this one person")
        return None

    config = RemindersConfig(policy=ReminderSettings(grace_ms=0))
    service = ReminderService(config, store, Hygiene({B}), audience, Text(), Outbox(),  # type: ignore[arg-type]
                              Clock(), observe_keys=observe)
    with caplog.at_level(logging.INFO, logger="nerbot.reminder_service"):
        stats = await service.scan()
    assert (stats.users, stats.queued, stats.failed) == (4, 2, 2)
    assert sorted(m.user_id for m in store.pending_messages()) == [A, D]
    assert any("@c:hs failed" in r.getMessage() for r in caplog.records)
    summary = [r for r in caplog.records if r.getMessage().startswith("Reminder scan: 4 users")]
    assert len(summary) == 1 and "2 failed" in summary[0].getMessage()
    assert summary[0].levelno == logging.WARNING
    # Next scan: B is reachable again and is reminded; A and D are not reminded twice.
    service.hygiene = Hygiene(set())
    stats = await service.scan()
    assert sorted(m.user_id for m in store.pending_messages()) == [A, B, D]


async def until(condition: Callable[[], bool], seconds: float = 10) -> None:
    """Wait for background work to reach a state (fails the test after ``seconds``)."""
    for _ in range(int(seconds / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


class Keys:
    """Key facts; users in ``down`` are left out, as the directory does for a dead server."""

    def __init__(self, down: set[str]) -> None:
        self.down = down
        self.asked: list[list[str]] = []

    async def facts(self, user_ids: Iterable[str], fresh: bool = False,
                    reuse: Collection[str] = ()) -> dict[str, KeyFacts]:
        users = list(user_ids)
        self.asked.append(users)
        return {u: KeyFacts(u, True, True, "M", (DeviceFacts(f"N{len(self.asked)}", "new",
                                                             True, False),))
                for u in users if u not in self.down}


async def test_alert_checks_retry_the_unavailable_and_go_on_for_the_rest() -> None:
    store, runner, outbox = Store(":memory:"), TaskRunner(), Outbox()
    keys = Keys(down={B})
    alerts = AlertService(store, keys, Text(), outbox, Clock(), runner, UserId("@bot:hs"),  # type: ignore[arg-type]
                          debounce_seconds=0)
    alerts.retry_seconds = 0.01
    for user in (A, B):  # a baseline: the first look at a user never alerts
        store.remember_devices(user, ["OLD"], 1)
        store.remember_master_key(user, "M", 1)
    alerts.devices_changed([A, B])
    await until(lambda: len(keys.asked) >= 2)  # the retry of B must follow
    assert keys.asked[0] == [A, B] and keys.asked[1] == [B]
    assert [m.user_id for m in store.pending_messages()] == [A]
    keys.down.clear()  # B's server is back: the next retry finds the new session
    await until(lambda: len(store.pending_messages()) >= 2)
    assert sorted(m.user_id for m in store.pending_messages()) == [A, B]
    assert alerts._tries == {}
    await runner.stop()


async def test_alert_retries_are_bounded() -> None:
    from nerbot import alert_service

    store, runner = Store(":memory:"), TaskRunner()
    keys = Keys(down={B})
    alerts = AlertService(store, keys, Text(), Outbox(), Clock(), runner, UserId("@bot:hs"),  # type: ignore[arg-type]
                          debounce_seconds=0)
    alerts.retry_seconds = 0.001
    alerts.devices_changed([B])
    await until(lambda: len(keys.asked) >= 2 and B not in alerts._tries)
    assert len(keys.asked) == alert_service.MAX_RETRIES + 1 and alerts._tries == {}
    await runner.stop()


class TickingClock:
    """Each reading a millisecond later than the last."""

    def __init__(self) -> None:
        self.now = NOW

    def now_ms(self) -> int:
        self.now += 1
        return self.now


async def test_a_change_not_yet_checked_at_a_stop_is_checked_after_the_start() -> None:
    # The next start's sync resumes past the change: only the note can bring it back.
    store, runner, clock = Store(":memory:"), TaskRunner(), TickingClock()
    for user in (A, B):
        store.remember_devices(user, ["OLD"], 1)
        store.remember_master_key(user, "M", 1)
    keys = Keys(down={B})
    alerts = AlertService(store, keys, Text(), Outbox(), clock, runner, UserId("@bot:hs"),  # type: ignore[arg-type]
                          debounce_seconds=60)
    alerts.devices_changed([A])
    assert store.device_changes() == [A]  # noted at once, checked after the debounce
    await runner.stop()  # the process stops during the debounce

    runner = TaskRunner()
    alerts = AlertService(store, keys, Text(), Outbox(), clock, runner, UserId("@bot:hs"),  # type: ignore[arg-type]
                          debounce_seconds=0)
    alerts.retry_seconds = 60
    alerts.devices_changed([B])  # B's server does not answer: B stays noted
    alerts.resume()
    await until(lambda: [m.user_id for m in store.pending_messages()] == [A])
    await until(lambda: store.device_changes() == [B])
    assert keys.asked[0] == [A, B]  # one batch: what was noted and what is new
    await runner.stop()


async def test_a_change_during_a_slow_check_is_not_crossed_off_by_it() -> None:
    # Batch 1 checks A slowly; A changes again and batch 2 takes A; batch 1 ends first. Until
    # batch 2 ends, A's second change must stay noted (a crash then must not lose it).
    store, runner, clock = Store(":memory:"), TaskRunner(), TickingClock()
    gates = [asyncio.Event(), asyncio.Event()]

    class SlowKeys(Keys):
        calls = 0

        async def facts(self, user_ids: Iterable[str], fresh: bool = False,
                        reuse: Collection[str] = ()) -> dict[str, KeyFacts]:
            gate = gates[self.calls]
            self.calls += 1
            await gate.wait()
            return await super().facts(user_ids, fresh, reuse)

    keys = SlowKeys(down=set())
    alerts = AlertService(store, keys, Text(), Outbox(), clock, runner, UserId("@bot:hs"),  # type: ignore[arg-type]
                          debounce_seconds=0)
    alerts.devices_changed([A])
    await until(lambda: keys.calls == 1)  # batch 1 waits at its gate
    alerts.devices_changed([A])  # changed again: batch 2, also at its gate
    await until(lambda: keys.calls == 2)
    gates[0].set()
    await until(lambda: len(keys.asked) == 1)  # batch 1 checked A
    await asyncio.sleep(0.01)
    assert store.device_changes() == [A]
    gates[1].set()
    await until(lambda: len(keys.asked) == 2)
    await until(lambda: store.device_changes() == [])
    await runner.stop()


class CrashingStore(Store):
    """Dies between queuing an alert and counting it, as a SIGKILL there would."""

    crash = True

    def record_alert(self, user_id: UserId, kind: str, devices: Iterable[str],
                     now_ms: int) -> None:
        if self.crash:
            raise RuntimeError("killed here")
        super().record_alert(user_id, kind, devices, now_ms)


async def test_an_alert_is_queued_and_counted_together_or_not_at_all() -> None:
    store, runner = CrashingStore(":memory:"), TaskRunner()
    alerts = AlertService(store, Keys(down=set()), Text(), Outbox(), Clock(), runner,  # type: ignore[arg-type]
                          UserId("@bot:hs"), debounce_seconds=0)
    store.remember_devices(A, ["OLD"], 1)
    store.remember_master_key(A, "M", 1)
    with pytest.raises(RuntimeError, match="killed here"):
        await alerts.check(A)
    # Nothing of the decision stuck: no message, no count, the new session not remembered.
    assert store.outbox() == [] and store.alerts() == []
    assert set(store.known_devices(A)) == {"OLD"}
    store.crash = False  # "after the restart" the same check decides again and records it all
    await alerts.check(A)
    assert [m.user_id for m in store.pending_messages()] == [A]
    assert [(r["kind"], r["devices"]) for r in store.alerts()] == [("new_sessions", "N2")]
    assert set(store.known_devices(A)) == {"OLD", "N2"}
    await runner.stop()


class BrokenKeys(Keys):
    """The batched key query fails unexpectedly (a bug, not an unreachable server) once."""

    def __init__(self) -> None:
        super().__init__(down=set())
        self.broken = True

    async def facts(self, user_ids: Iterable[str], fresh: bool = False,
                    reuse: Collection[str] = ()) -> dict[str, KeyFacts]:
        if self.broken:
            self.broken = False
            self.asked.append(list(user_ids))
            raise KeyError("unexpected")
        return await super().facts(user_ids, fresh, reuse)


async def test_a_failing_key_query_puts_the_whole_alert_batch_on_the_retry_path(
        caplog: pytest.LogCaptureFixture) -> None:
    store, runner = Store(":memory:"), TaskRunner()
    keys = BrokenKeys()
    alerts = AlertService(store, keys, Text(), Outbox(), Clock(), runner, UserId("@bot:hs"),  # type: ignore[arg-type]
                          debounce_seconds=0)
    alerts.retry_seconds = 0.001
    for user in (A, B):
        store.remember_devices(user, ["OLD"], 1)
        store.remember_master_key(user, "M", 1)
    with caplog.at_level(logging.INFO, logger="nerbot.alert_service"):
        alerts.devices_changed([A, B])
        await until(lambda: len(store.pending_messages()) == 2)
    assert keys.asked == [[A, B], [A, B]]  # the failed batch, then its retry: nobody dropped
    summaries = [r for r in caplog.records if r.getMessage().startswith("Alert check:")]
    assert [r.getMessage() for r in summaries] == [
        "Alert check: 2 people, 0 alerted, 2 failed (tried again later)",
        "Alert check: 2 people, 2 alerted, 0 failed"]
    assert [r.levelno for r in summaries] == [logging.WARNING, logging.INFO]
    await runner.stop()


async def test_an_all_local_run_that_cannot_list_its_people_is_retried_after_the_outage(
        tmp_path: Path) -> None:
    config = parse_config({"matrix": {"user_id": "@bot:hs", "password": "s3cret-pass"},
                           "reminders": {"scope": "all-local", "grace": "0"}},
                          {"NERBOT_ADMIN_TOKEN": "admin-token"}, tmp_path)
    app = NerbotApp(config)
    http = Listing([A, B])
    app.admin_probe = AdminProbe(http, "admin-token", backup_check=False)  # type: ignore[arg-type]
    store = Store(":memory:")
    service = ReminderService(config.reminders, store, Hygiene(set()), app._audience, Text(),  # type: ignore[arg-type]
                              Outbox(), Clock())
    http.down = True
    with pytest.raises(aiohttp.ClientConnectionError):
        await service.scan()  # the user listing failed: nobody was looked at
    await service.retry_failed()  # the homeserver is still away: tried, failed, still due
    assert store.pending_messages() == []
    http.down = False
    await service.retry_failed()  # what the app does when the homeserver is back
    assert sorted(m.user_id for m in store.pending_messages()) == [A, B]
    assert not service.last_run_failed and service.last_failed == 0


class Listing:
    """Synapse's admin user listing (one page), or no connection while ``down``."""

    def __init__(self, users: list[str]) -> None:
        self.users = users
        self.down = False

    async def request(self, method: str, path: str, body: object = None,
                      **_: object) -> tuple[int, dict[str, object]]:
        if self.down:
            raise aiohttp.ClientConnectionError("Connection refused")
        assert path.startswith("/_synapse/admin/v2/users?")
        return 200, {"users": [{"name": u} for u in self.users]}


class AccountData:
    """``m.direct`` account data on a homeserver that can go away."""

    def __init__(self) -> None:
        self.down = False
        self.direct: dict[str, list[str]] = {}
        self.puts = 0

    async def request(self, method: str, path: str, body: object = None,
                      **_: object) -> tuple[int, dict[str, object]]:
        if self.down:
            raise aiohttp.ClientConnectionError("Connection refused")
        assert path.endswith("/account_data/m.direct")
        if method == "PUT":
            assert isinstance(body, dict)
            self.direct, self.puts = body, self.puts + 1
        return 200, dict(self.direct)


async def test_an_m_direct_write_that_failed_in_an_outage_is_done_on_reconnection(
        tmp_path: Path) -> None:
    config = parse_config({"matrix": {"user_id": "@bot:hs", "password": "s3cret-pass"}}, {},
                          tmp_path)
    app = NerbotApp(config)
    store, http = Store(":memory:"), AccountData()
    direct = DirectRooms(http, "@bot:hs", store, batch_seconds=0)  # type: ignore[arg-type]
    app.transport = SimpleNamespace(direct=direct)  # type: ignore[assignment]
    http.down = True
    store.set_dm_room(A, RoomId("!dm:hs"), NOW)
    direct.changed()  # a new DM during the outage: its write fails
    await until(lambda: direct._pending is not None and direct._pending.done())
    assert http.puts == 0
    http.down = False
    app._on_reconnected()  # the sync loop's first success after the outage
    await until(lambda: http.puts == 1)
    assert http.direct == {A: ["!dm:hs"]}
    await app.runner.stop()
