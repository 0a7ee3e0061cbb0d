"""Reminders and alerts end to end: real Synapse, the real bot, real E2EE clients.

The bot's clock is real time plus an offset the test moves forward (days, never real sleeps);
scans are run by calling the service, as the scheduler would.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from botdm import cross_signed, open_dm, open_group

from nerbot.app import NerbotApp
from nerbot.config import parse_config
from nerbot.ids import UserId
from nerbot.localdev.accounts import AccountBuilder
from nerbot.localdev.synapse import LocalSynapse
from nerbot.reminder_service import LAST_SCAN_META

SHANGHAI = ZoneInfo("Asia/Shanghai")
DAY_MS = 24 * 3600 * 1000
REMINDER = "friendly reminder"


class OffsetClock:
    """Real time plus an offset that only moves forward (messages keep real timestamps)."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.offset_ms

    def advance(self, ms: int) -> None:
        self.offset_ms += ms

    def to_local(self, days_ahead: int, hour: int, minute: int = 0) -> None:
        """Jump to hour:minute Shanghai time, ``days_ahead`` local days after today."""
        now = datetime.fromtimestamp(self.now_ms() / 1000, SHANGHAI)
        target = (now + timedelta(days=days_ahead)).replace(hour=hour, minute=minute,
                                                            second=0, microsecond=0)
        self.offset_ms += int(target.timestamp() * 1000) - self.now_ms()


async def user_with_dm(bot: NerbotApp, make_user: Any, make_peer: Any
                       ) -> tuple[Any, Any, str]:
    user = make_user()
    peer = await make_peer(user)
    room_id = await open_dm(peer, bot)
    await peer.ask(room_id, "!lang en", bot.config.matrix.user_id)
    return user, peer, room_id


async def reminding_bot(start_bot: Any, make_user: Any, make_peer: Any
                        ) -> tuple[OffsetClock, NerbotApp, str, Any, Any, str]:
    """A bot reminding with no grace, no quiet hours and a one-day backoff, plus one user."""
    clock = OffsetClock()
    bot = await start_bot(clock=clock, reminders={"grace": "0", "quiet_hours": "",
                                                   "backoff": ["1d"]})
    user, peer, room_id = await user_with_dm(bot, make_user, make_peer)
    return clock, bot, bot.config.matrix.user_id, user, peer, room_id


def reminders_of(bot: NerbotApp, user_id: str) -> list[Any]:
    assert bot.store is not None
    return [m for m in bot.store.outbox(UserId(user_id)) if m.kind != "alert"]


async def scan(bot: NerbotApp) -> Any:
    assert bot.reminders is not None
    return await bot.reminders.scan()


async def test_one_reminder_per_due_period_and_none_in_quiet_hours(
    start_bot: Any, make_user: Any, make_peer: Any
) -> None:
    clock = OffsetClock()
    bot = await start_bot(clock=clock, reminders={
        "grace": "1h", "backoff": ["1d", "3d"], "quiet_hours": "22:00-09:00"})
    bot_id = bot.config.matrix.user_id
    user, peer, room_id = await user_with_dm(bot, make_user, make_peer)

    clock.to_local(days_ahead=1, hour=12)
    first = await scan(bot)
    assert first.queued == 1 and first.delivery is not None and first.delivery.sent == 1
    message = await peer.wait_for_message(room_id, sender=bot_id, timeout=30)
    assert message.decrypted, "a reminder must never travel in plain text"
    assert REMINDER in message.body and "**no cross-signing identity**" in message.body
    assert "`!guide backup`" in message.body and "!remind snooze 7d" in message.body

    again = await scan(bot)  # same period: nothing new
    assert again.queued == 0 and again.held.get("backoff") == 1

    clock.to_local(days_ahead=1, hour=23)  # backoff over (1 day), but quiet hours
    quiet = await scan(bot)
    assert quiet.queued == 0 and quiet.held.get("quiet_hours") == 1
    state = await peer.ask(room_id, "!remind", bot_id)
    assert "The next reminder could come on" in state and "09:00" in state

    clock.to_local(days_ahead=1, hour=9, minute=30)
    second = await scan(bot)
    assert second.queued == 1
    message = await peer.wait_for_message(room_id, sender=bot_id, timeout=30)
    assert REMINDER in message.body
    sent = reminders_of(bot, user.user_id)
    assert [m.status for m in sent] == ["sent", "sent"]
    assert len({m.txn_id for m in sent}) == 2 and all(m.room_id == room_id for m in sent)


async def test_snooze_and_opt_out_are_respected(
    start_bot: Any, make_user: Any, make_peer: Any
) -> None:
    clock, bot, bot_id, user, peer, room_id = await reminding_bot(start_bot, make_user,
                                                                  make_peer)
    assert "no reminders until" in await peer.ask(room_id, "!remind snooze 2d", bot_id)
    assert "`soon` is not a duration" in await peer.ask(room_id, "!remind snooze soon", bot_id)
    assert (await scan(bot)).held == {"snoozed": 1}
    assert "snoozed" in await peer.ask(room_id, "!remind", bot_id)
    clock.advance(2 * DAY_MS + 60_000)
    assert (await scan(bot)).queued == 1
    assert REMINDER in (await peer.wait_for_message(room_id, sender=bot_id)).body

    assert "no more reminders" in await peer.ask(room_id, "!remind off", bot_id)
    for _ in range(3):  # off means off, however long
        clock.advance(40 * DAY_MS)
        assert (await scan(bot)).held == {"opted_out": 1}
    assert "**off**" in await peer.ask(room_id, "!remind", bot_id)
    assert "on again" in await peer.ask(room_id, "!remind on", bot_id)
    assert (await scan(bot)).queued == 1
    assert len(reminders_of(bot, user.user_id)) == 2


async def test_fixing_the_problem_stops_reminders_with_one_all_good_note(
    start_bot: Any, make_user: Any, make_peer: Any, synapse: Any
) -> None:
    clock, bot, bot_id, user, peer, room_id = await reminding_bot(start_bot, make_user,
                                                                  make_peer)
    assert (await scan(bot)).queued == 1
    await peer.wait_for_message(room_id, sender=bot_id)

    await cross_signed(synapse, user, peer)
    assert bot.hygiene is not None
    bot.hygiene.invalidate([user.user_id])  # (sync would too; not what this test is about)
    clock.advance(DAY_MS + 60_000)
    assert (await scan(bot)).queued == 1
    note = await peer.wait_for_message(room_id, sender=bot_id)
    assert "All fixed" in note.body
    for _ in range(3):
        clock.advance(40 * DAY_MS)
        assert (await scan(bot)).held == {"nothing_to_report": 1}
    assert [m.kind for m in reminders_of(bot, user.user_id)] == ["remind", "all_good"]
    assert "nothing to remind you about" in await peer.ask(room_id, "!remind", bot_id)


async def test_a_dm_the_user_left_is_re_created(
    start_bot: Any, make_user: Any, make_peer: Any
) -> None:
    clock, bot, bot_id, user, peer, room_id = await reminding_bot(start_bot, make_user,
                                                                  make_peer)
    friend = await make_peer(make_user("friend"))
    group = await open_group(peer, bot, [friend.user_id])  # shared: still served
    pointer = await peer.ask(group, "!remind", bot_id)  # pending problems: DM only
    assert "encrypted direct chat" in pointer and "Pending" not in pointer
    assert (await scan(bot)).queued == 2  # the user and their friend
    await peer.wait_for_message(room_id, sender=bot_id, predicate=lambda m: REMINDER in m.body)
    await peer.client.room_leave(room_id)
    assert bot.transport is not None
    for _ in range(100):
        if not bot.transport.dm_is_usable(room_id, user.user_id):
            break
        await asyncio.sleep(0.1)
    clock.advance(DAY_MS + 60_000)
    assert (await scan(bot)).queued == 2
    assert bot.store is not None
    new_room = bot.store.get_dm_room(user.user_id)
    assert new_room is not None and new_room != room_id
    message = await peer.wait_for_message(new_room, sender=bot_id, timeout=30)
    assert REMINDER in message.body and message.decrypted
    assert [m.room_id for m in reminders_of(bot, user.user_id)] == [room_id, new_room]


async def test_a_rate_limit_is_waited_out_and_nothing_is_lost(
    start_bot: Any, make_user: Any, make_peer: Any, synapse: Any,
    caplog: pytest.LogCaptureFixture
) -> None:
    clock = OffsetClock()
    bot = await start_bot(clock=clock, reminders={"grace": "0", "quiet_hours": "",
                                                   "max_sends_per_minute": 6000})
    bot_id = bot.config.matrix.user_id
    people = [await user_with_dm(bot, make_user, make_peer) for _ in range(3)]
    admin = make_user("admin", admin=True)
    token = synapse.admin_access_token(admin.localpart, admin.password)
    synapse.request("POST", f"/_synapse/admin/v1/users/{urllib.parse.quote(bot_id)}/"
                    "override_ratelimit", {"messages_per_second": 1, "burst_count": 1},
                    token=token)
    caplog.set_level(logging.WARNING, logger="nio")
    started = time.monotonic()
    result = await scan(bot)
    elapsed = time.monotonic() - started
    assert result.queued == 3 and result.delivery is not None and result.delivery.sent == 3
    assert any("429" in r.getMessage() for r in caplog.records
               if r.name.startswith("nio")), "no 429 was provoked"
    assert elapsed >= 1.0  # the retry waited the server's retry_after_ms
    for user, peer, room_id in people:
        message = await peer.wait_for_message(room_id, sender=bot_id)
        assert REMINDER in message.body and message.decrypted
        assert [m.status for m in reminders_of(bot, user.user_id)] == ["sent"]


async def test_new_sessions_alert_once_per_burst_and_identity_reset(
    start_bot: Any, make_user: Any, make_peer: Any, synapse: Any
) -> None:
    bot = await start_bot(alerts={"enabled": True, "debounce_seconds": 2})
    bot_id = bot.config.matrix.user_id
    user, peer, room_id = await user_with_dm(bot, make_user, make_peer)
    builder, account = await cross_signed(synapse, user, peer)
    assert bot.store is not None and bot.alerts is not None
    await bot.alerts.check(UserId(user.user_id), fresh=True)  # the baseline, whatever sync did
    assert peer.device_id in bot.store.known_devices(UserId(user.user_id))

    burst = [await asyncio.to_thread(builder.add_device, account, f"laptop {i}")
             for i in range(3)]
    alert = await peer.wait_for_message(room_id, sender=bot_id, timeout=30)
    assert "New session on your account" in alert.body and "(3)" in alert.body
    for device in burst:
        assert f"`{device.device_id}` laptop" in alert.body
    assert "!guide new-device" in alert.body and "!guide verify-sessions" in alert.body
    with pytest.raises(TimeoutError):  # one message for the burst, not three
        await peer.wait_for_message(room_id, sender=bot_id, timeout=4)

    single = await asyncio.to_thread(builder.add_device, account, "phone")
    alert = await peer.wait_for_message(room_id, sender=bot_id, timeout=30)
    assert f"`{single.device_id}` phone" in alert.body and "(1)" in alert.body
    assert all(d.device_id not in alert.body for d in burst)

    await asyncio.to_thread(builder.set_up_cross_signing, account)  # identity reset
    reset = await peer.wait_for_message(room_id, sender=bot_id, timeout=30)
    assert "encryption identity was reset" in reset.body
    kinds = [(a["kind"], a["devices"]) for a in bot.store.alerts(UserId(user.user_id))]
    assert kinds == [("new_sessions", ",".join(sorted(d.device_id for d in burst))),
                     ("new_sessions", single.device_id), ("identity_reset", "")]

    assert "no more new-session alerts" in await peer.ask(room_id, "!alerts off", bot_id)
    tablet = await asyncio.to_thread(builder.add_device, account, "tablet")
    # Still counted for the admins' report and alarms, but not sent to the person: once the
    # check has counted it, a command answered after it is the bot's next message.
    for _ in range(300):
        if len(bot.store.alerts(UserId(user.user_id))) == 4:
            break
        await asyncio.sleep(0.1)
    assert bot.store.alerts(UserId(user.user_id))[-1]["devices"] == tablet.device_id
    before = len(peer.messages(room_id))
    await peer.ask(room_id, "!alerts", bot_id)
    assert [m for m in peer.messages(room_id)[before:] if tablet.device_id in m.body] == []
    assert not [m for m in bot.store.outbox(UserId(user.user_id)) if m.status == "pending"]


async def test_missed_scans_run_once_at_start(
    start_bot: Any, make_user: Any, make_peer: Any, tmp_path: Any,
    caplog: pytest.LogCaptureFixture
) -> None:
    clock = OffsetClock()
    data_dir = tmp_path / "bot"
    settings = {"enabled": True, "scan_every": "6h", "grace": "0", "quiet_hours": "",
                "backoff": ["1d"]}
    bot = await start_bot(data_dir=data_dir, clock=clock, reminders=settings)
    user, peer, room_id = await user_with_dm(bot, make_user, make_peer)
    assert bot.reminders is not None
    await bot.reminders.scan()  # the user is now a room-mate: reminded once
    assert len(reminders_of(bot, user.user_id)) == 1
    await bot.stop()

    clock.advance(30 * 3600 * 1000)  # five scans missed while down
    caplog.set_level(logging.INFO, logger="nerbot.reminder_service")
    caplog.clear()
    bot = await start_bot(data_dir=data_dir, clock=clock, reminders=settings)
    assert bot.store is not None
    for _ in range(100):
        last = bot.store.get_meta(LAST_SCAN_META)
        if last is not None and int(last) >= clock.now_ms() - 60_000:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1)
    scans = [r for r in caplog.records if r.getMessage().startswith("Reminder scan:")]
    assert len(scans) == 1, "missed scans must coalesce into one"
    assert len(reminders_of(bot, user.user_id)) == 2
    message = await peer.wait_for_message(room_id, sender=bot.config.matrix.user_id,
                                          predicate=lambda m: REMINDER in m.body, timeout=30)
    assert REMINDER in message.body


async def test_admin_wide_scan_reaches_users_in_no_shared_room_and_sees_new_sessions(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Its own homeserver: "every local user" must not mean every user of the other tests.
    synapse = LocalSynapse(tmp_path / "hs")
    await asyncio.to_thread(synapse.start)
    bot: NerbotApp | None = None
    try:
        builder = AccountBuilder(synapse)
        admin = await asyncio.to_thread(builder.create, admin=True)
        token = synapse.admin_access_token(admin.localpart, admin.password)
        bot_id = synapse.register_user("nerbot", "bot-pass-1234")
        clock = OffsetClock()
        config = parse_config(
            {"matrix": {"homeserver": synapse.url, "user_id": bot_id},
             "storage": {"data_dir": str(tmp_path / "bot")},
             "synapse_admin": {"token": token},
             "reminders": {"enabled": False, "scope": "all-local", "grace": "0",
                           "quiet_hours": ""}},
            {"NERBOT_PASSWORD": "bot-pass-1234"}, tmp_path)
        bot = NerbotApp(config, clock=clock)
        await bot.start()
        loner = await asyncio.to_thread(builder.create)  # shares no room with the bot
        await asyncio.to_thread(builder.add_device, loner, "phone")
        await asyncio.to_thread(builder.set_up_cross_signing, loner)
        audience = await bot._audience()
        assert set(audience) == {admin.user_id, loner.user_id}  # never the bot itself
        first = await scan(bot)
        assert first.users == 2 and bot.store is not None
        [reminder] = reminders_of(bot, loner.user_id)  # unverified session "phone"
        assert reminder.status == "sent" and reminder.room_id is not None
        assert set(bot.store.known_devices(UserId(loner.user_id))) == set(loner.devices)

        new = await asyncio.to_thread(builder.add_device, loner, "stranger")
        await scan(bot)  # sync never reports this user's devices: the scan notices
        [alert] = [m for m in bot.store.outbox(UserId(loner.user_id)) if m.kind == "alert"]
        assert f"`{new.device_id}` stranger" in alert.body and alert.status == "sent"

        # Later, nobody did anything: Synapse's listing shows the same last_seen_ts. Facts read
        # minutes after it are trusted (those read right after a request are read once more),
        # and the rescan after that reads nobody's keys or account data again.
        clock.advance(10 * 60 * 1000)
        await scan(bot)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="nerbot.hygiene"):
            await scan(bot)
        [facts] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Facts")]
        assert facts.endswith(", 2 unchanged since read, 0 unavailable, 0 failed"), facts
        # A restart keeps what the admin API said: its first scan does not ask about them again.
        await bot.stop()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="nerbot.hygiene"):
            bot = NerbotApp(config, clock=clock)
            await bot.start()
            assert bot.admin_probe is not None
            asked: list[str] = []
            read_facts = bot.admin_probe.facts

            async def counted(user_id: str) -> Any:
                asked.append(user_id)
                return await read_facts(user_id)

            bot.admin_probe.facts = counted  # type: ignore[method-assign]
            await scan(bot)
        messages = [r.getMessage() for r in caplog.records]
        assert "Admin facts of 2 people kept from the last run" in messages
        assert loner.user_id not in asked, asked
        [facts] = [m for m in messages if m.startswith("Facts")]
        assert ", 0 unavailable, 0 failed" in facts and not reminders_of(bot, loner.user_id)[1:]
        # A new login is a request of theirs: the listing moves, the next scan reads them again.
        assert bot.admin_probe is not None
        def last_seen() -> int | None:
            assert bot is not None and bot.admin_probe is not None
            listed = bot.admin_probe.listed(loner.user_id)
            assert listed is not None  # Synapse's listing shows last_seen_ts
            return listed.last_seen_ms

        before = last_seen()
        thief = await asyncio.to_thread(builder.add_device, loner, "thief")
        for _ in range(300):  # Synapse writes last-seen times in batches (every 5 s)
            await bot.admin_probe.local_users()
            if last_seen() != before:
                break
            await asyncio.sleep(0.1)
        assert last_seen() != before
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="nerbot.hygiene"):
            await scan(bot)
        [facts] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Facts")]
        # the admin only
        assert facts.endswith(", 1 unchanged since read, 0 unavailable, 0 failed"), facts
        alerts = [m for m in bot.store.outbox(UserId(loner.user_id)) if m.kind == "alert"]
        assert any(f"`{thief.device_id}` thief" in m.body for m in alerts)
    finally:
        if bot is not None:
            await bot.stop()
        await asyncio.to_thread(synapse.stop)
