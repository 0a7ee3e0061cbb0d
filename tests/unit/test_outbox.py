"""The outbox's promises about when a recorded message is *not* sent (or stops being tried)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from fakes import SetClock
from test_fault_isolation import Text, at_risk

from nerbot.config import RemindersConfig
from nerbot.domain.assessment import UserReport
from nerbot.domain.facts import BackupState
from nerbot.domain.reminders import REMINDER_KINDS, ReminderSettings, held_kinds
from nerbot.ids import RoomId, UserId
from nerbot.matrix.transport import SendFailed
from nerbot.outbox import MAX_ATTEMPTS, WORKERS, OutboxSender
from nerbot.reminder_service import RECHECK_AFTER_MS, ReminderService
from nerbot.store import OutboxMessage, Store

ALICE = UserId("@alice:hs")
BOB = UserId("@bob:hs")


class Transport:
    """Opens DMs for everyone but ``no_dm_for``; records what was sent where."""

    def __init__(self, no_dm_for: frozenset[str] = frozenset(),
                 unreachable: bool = False) -> None:
        self.no_dm_for = no_dm_for
        self.unreachable = unreachable
        self.opened: list[str] = []
        self.sent: list[tuple[str, str]] = []

    def dm_is_usable(self, room_id: RoomId, user_id: UserId) -> bool:
        return True

    async def ensure_dm(self, user_id: UserId) -> RoomId:
        self.opened.append(user_id)
        if self.unreachable:
            raise ConnectionRefusedError("connection refused")
        if user_id in self.no_dm_for:
            raise SendFailed(f"could not open a DM with {user_id}")
        return RoomId(f"!dm-{user_id}")

    async def send_notice(self, room_id: RoomId, markdown_text: str,
                          txn_id: str | None = None) -> str | None:
        self.sent.append((room_id, markdown_text))
        return "$sent"


def queue(store: Store, user: str, kind: str, at: int = 1) -> str:
    key = f"{user}-{kind}-{at}"
    store.enqueue(OutboxMessage(key=key, user_id=UserId(user), kind=kind, txn_id=f"txn-{key}",
                                body=f"{kind} for {user}", room_id=None, status="pending",
                                attempts=0, created_ms=at))
    return key


def status(store: Store) -> dict[str, tuple[str, int]]:
    return {m.key: (m.status, m.attempts) for m in store.outbox()}


async def test_a_dm_that_cannot_be_opened_is_a_failed_try_and_is_given_up_in_the_end() -> None:
    """It used to stay pending with 0 tries: a new room was asked for every 5 minutes, forever."""
    store = Store(":memory:")
    key = queue(store, str(BOB), "remind")
    transport = Transport(no_dm_for=frozenset({BOB}))
    sender = OutboxSender(store, transport, lambda: 5, per_minute=6000)
    for attempt in range(1, MAX_ATTEMPTS):
        await sender.deliver()
        assert status(store)[key] == ("pending", attempt)
    await sender.deliver()
    assert status(store)[key] == ("failed", MAX_ATTEMPTS)
    await sender.deliver()
    assert len(transport.opened) == MAX_ATTEMPTS and transport.sent == []


async def test_an_unreachable_homeserver_never_makes_a_message_given_up() -> None:
    store = Store(":memory:")
    key = queue(store, str(BOB), "remind")
    sender = OutboxSender(store, Transport(unreachable=True), lambda: 5, per_minute=6000)
    for _ in range(MAX_ATTEMPTS + 2):
        await sender.deliver()
    assert status(store)[key] == ("pending", MAX_ATTEMPTS + 2)


async def test_held_kinds_stay_pending_and_do_not_hold_up_the_messages_behind_them() -> None:
    store = Store(":memory:")
    reminders = [queue(store, f"@p{i}:hs", "remind", at=i) for i in range(600)]
    alert = queue(store, str(ALICE), "alert", at=1_000)  # behind more than a batch of 500
    transport = Transport()
    held = {"now": REMINDER_KINDS}
    sender = OutboxSender(store, transport, lambda: 5, per_minute=60_000,
                          held_kinds=lambda: held["now"])
    stats = await sender.deliver()
    assert (stats.sent, stats.failed) == (1, 0) and transport.sent == [
        (f"!dm-{ALICE}", f"alert for {ALICE}")]
    assert {status(store)[k] for k in reminders} == {("pending", 0)}
    held["now"] = frozenset()  # the morning
    stats = await sender.deliver()
    assert stats.sent == 600 and status(store)[alert] == ("sent", 1)


def test_reminders_are_held_exactly_in_quiet_hours() -> None:
    settings = ReminderSettings(timezone="Asia/Shanghai")  # quiet 22:00-09:00
    zone = ZoneInfo("Asia/Shanghai")

    def at(hour: int, minute: int = 0) -> int:
        return int(datetime(2026, 12, 7, hour, minute, tzinfo=zone).timestamp() * 1000)

    assert held_kinds(at(21, 59), settings) == frozenset()
    assert held_kinds(at(22), settings) == REMINDER_KINDS
    assert held_kinds(at(3), settings) == REMINDER_KINDS
    assert held_kinds(at(9), settings) == frozenset()
    assert "alert" not in REMINDER_KINDS


def test_a_persons_choices_withdraw_what_they_forbid_and_nothing_else() -> None:
    store = Store(":memory:")
    remind, all_good = queue(store, str(ALICE), "remind"), queue(store, str(ALICE), "all_good")
    alert, bobs = queue(store, str(ALICE), "alert"), queue(store, str(BOB), "remind")
    assert store.set_reminder_choice(ALICE, 10, alerts_off=False) == 0
    assert store.set_reminder_choice(ALICE, 10, opted_out=True) == 2
    assert status(store) == {remind: ("withdrawn", 0), all_good: ("withdrawn", 0),
                             alert: ("pending", 0), bobs: ("pending", 0)}
    assert store.set_reminder_choice(ALICE, 11, alerts_off=True) == 1
    assert status(store)[alert] == ("withdrawn", 0)
    assert store.set_reminder_choice(BOB, 12, snoozed_until_ms=99) == 1
    assert [m.key for m in store.pending_messages()] == []
    # withdrawn is final: pruned like sent and failed once old
    store.prune(10 ** 13, keep_days=1)
    assert store.outbox() == []


# -- a reminder that waited is checked against fresh facts ------------------------------------

class Facts:
    """Everyone at risk but ``healthy``; counts who was assessed."""

    def __init__(self, healthy: set[str]) -> None:
        self.healthy = healthy
        self.assessed: list[str] = []

    async def assess(self, user_ids: list[str], fresh: bool = False) -> dict[str, UserReport]:
        self.assessed += user_ids
        return {u: UserReport(u, True, True, BackupState.PRESENT, (), ()) if u in self.healthy
                else at_risk(u) for u in user_ids if u != "@gone:hs"}


def reminders(facts: Facts, now: int) -> ReminderService:
    return ReminderService(RemindersConfig(), Store(":memory:"), facts, None,  # type: ignore[arg-type]
                           None, None, SetClock(now))  # type: ignore[arg-type]


def waiting(user: str, kind: str, created_ms: int) -> OutboxMessage:
    return OutboxMessage(key=f"{user}-{kind}", user_id=UserId(user), kind=kind, txn_id="t",
                         body="b", room_id=None, status="pending", attempts=0,
                         created_ms=created_ms)


async def test_a_reminder_about_something_fixed_while_it_waited_is_no_longer_due() -> None:
    queued, later = 0, RECHECK_AFTER_MS
    facts = Facts(healthy={str(ALICE)})
    service = reminders(facts, later)
    assert not await service.still_due(waiting(ALICE, "remind", queued))   # fixed overnight
    assert await service.still_due(waiting(BOB, "remind", queued))         # still at risk
    assert not await service.still_due(waiting(BOB, "all_good", queued))   # broke again
    assert await service.still_due(waiting(ALICE, "all_good", queued))
    assert await service.still_due(waiting("@gone:hs", "remind", queued))  # no facts: as is
    assert facts.assessed == [ALICE, BOB, BOB, ALICE, "@gone:hs"]
    # fresh reminders and other kinds are not assessed again
    assert await service.still_due(waiting(ALICE, "remind", later - RECHECK_AFTER_MS + 1))
    assert await service.still_due(waiting(ALICE, "alert", queued))
    assert len(facts.assessed) == 5


async def test_the_outbox_withdraws_what_is_no_longer_wanted_and_sends_if_it_cannot_tell(
) -> None:
    store = Store(":memory:")
    fixed, due, unsure = (queue(store, user, "remind") for user in ("@a:hs", "@b:hs", "@c:hs"))

    async def still_wanted(message: OutboxMessage) -> bool:
        if message.user_id == "@c:hs":
            raise RuntimeError("homeserver away")
        return message.user_id != "@a:hs"

    transport = Transport()
    sender = OutboxSender(store, transport, lambda: 5, per_minute=60_000)
    sender.still_wanted = still_wanted
    stats = await sender.deliver()
    assert (stats.sent, stats.failed, stats.withdrawn) == (2, 0, 1)
    assert status(store) == {fixed: ("withdrawn", 0), due: ("sent", 1), unsure: ("sent", 1)}


async def test_a_reminder_withdrawn_as_fixed_is_not_followed_by_an_all_fixed_note() -> None:
    """The person never heard of the problem: "all fixed, thank you" would puzzle them."""
    store, clock, transport = Store(":memory:"), SetClock(0), Transport()
    facts = Facts(healthy=set())

    async def audience() -> list[UserId]:
        return [ALICE]

    outbox = OutboxSender(store, transport, clock.now_ms, per_minute=60_000)
    service = ReminderService(RemindersConfig(policy=ReminderSettings(
        grace_ms=0, quiet_start_minute=0, quiet_end_minute=0)), store, facts, audience,
        Text(), outbox, clock)  # type: ignore[arg-type]
    outbox.still_wanted = service.still_due
    assert (await service.scan(deliver=False)).queued == 1
    facts.healthy, clock.now = {str(ALICE)}, 2 * RECHECK_AFTER_MS  # fixed while it waited
    assert (await outbox.deliver()).withdrawn == 1
    clock.now += 2 * 24 * 3600 * 1000
    stats = await service.scan()
    assert stats.queued == 0 and stats.held == {"nothing_to_report": 1}
    assert transport.sent == []


async def test_a_message_withdrawn_while_its_turn_comes_is_not_sent() -> None:
    store = Store(":memory:")
    key = queue(store, str(BOB), "remind")

    class TurnedOff(Transport):
        async def ensure_dm(self, user_id: UserId) -> RoomId:  # "!remind off" meanwhile
            store.set_reminder_choice(user_id, 5, opted_out=True)
            return await super().ensure_dm(user_id)

    transport = TurnedOff()
    stats = await OutboxSender(store, transport, lambda: 5, per_minute=60_000).deliver()
    assert (stats.sent, stats.failed, stats.withdrawn) == (0, 0, 1)
    assert transport.sent == [] and status(store)[key] == ("withdrawn", 0)


async def test_quiet_hours_beginning_during_a_run_hold_what_is_left() -> None:
    store = Store(":memory:")
    keys = [queue(store, f"@p{i}:hs", "remind", at=i) for i in range(20)]
    transport = Transport()

    def held() -> frozenset[str]:  # 22:00 comes after the fifth send
        return REMINDER_KINDS if len(transport.sent) >= 5 else frozenset()

    sender = OutboxSender(store, transport, lambda: 5, per_minute=60_000, held_kinds=held)
    stats = await sender.deliver()
    # at most the sends other workers had begun when the fifth went out
    assert stats.sent == len(transport.sent) <= 5 + WORKERS - 1
    assert [status(store)[k][0] for k in keys].count("pending") == 20 - stats.sent
