"""People on another homeserver: two real Synapses federating on loopback, the real bot.

The bot has a Synapse admin token (as the README recommends), which answers only for the bot's
own server: people on the other server are assessed from what federation shows, their reports
say what cannot be seen, and neither they nor an unreachable server stop a reminder run.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from botdm import adopt_peer, open_dm
from test_bot import wait_until
from test_verify import Clock, element_in_dm, finish_and_check, js_sdk  # noqa: F401

from nerbot.app import NerbotApp
from nerbot.ids import UserId
from nerbot.localdev.accounts import AccountBuilder
from nerbot.localdev.synapse import LocalSynapse
from nerbot.store import Store

pytestmark = pytest.mark.timeout(180)
REMINDER = "!remind snooze 7d"  # the footer of every reminder, in either language
NO_REMINDER_GRACE = {"enabled": True, "grace": "0", "quiet_hours": "", "backoff": ["1d"]}


def admin_token(synapse: LocalSynapse, make_user: Any) -> str:
    admin = make_user("admin", admin=True)
    return synapse.admin_access_token(admin.localpart, admin.password)


def both_servers(remote: LocalSynapse) -> list[str]:
    return ["localhost", remote.server_name]


def bot_messages(peer: Any, bot: NerbotApp, text: str) -> list[tuple[str, str]]:
    """(room, body) of every message from the bot containing ``text`` the peer received."""
    bot_id = bot.config.matrix.user_id
    return [(r.room_id, r.event.body) for r in peer.inbox
            if r.event.sender == bot_id and text in r.event.body]


async def group_with(peer: Any, bot: NerbotApp, others: list[Any], encrypted: bool) -> str:
    """``peer`` opens a group room with the bot and ``others`` (auto-joining peers); returns
    once the bot has seen everyone join."""
    bot_id = bot.config.matrix.user_id
    invite = [bot_id, *(o.user_id for o in others)]
    if encrypted:
        room_id = await peer.create_encrypted_room(invite)
    else:
        response = await peer.client.room_create(name="plain", invite=invite)
        room_id = str(response.room_id)
    assert bot.session is not None
    client = bot.session.client

    def everyone_joined() -> bool:
        room = client.rooms.get(room_id)
        return room is not None and all(u in room.users and u not in room.invited_users
                                        for u in [peer.user_id, *invite])

    assert await wait_until(everyone_joined, 30), "the bot never saw everyone join"
    return str(room_id)


async def reminding_admin_bot(start_bot: Any, make_user: Any, synapse: LocalSynapse,
                             remote: LocalSynapse, **reminders: Any) -> NerbotApp:
    """A bot with an admin token, serving both servers, reminding without grace."""
    bot: NerbotApp = await start_bot(admin_token=admin_token(synapse, make_user),
                                     allowed_servers=both_servers(remote),
                                     reminders={**NO_REMINDER_GRACE, **reminders})
    return bot


async def test_remote_person_gets_backup_status_with_admin_token(
    start_bot: Any, make_user: Any, make_remote_user: Any, make_peer: Any,
    synapse: LocalSynapse, remote_synapse: LocalSynapse, caplog: pytest.LogCaptureFixture,
) -> None:
    bot = await start_bot(admin_token=admin_token(synapse, make_user),
                          backup_check="admin-login",
                          allowed_servers=both_servers(remote_synapse))
    bot_id = bot.config.matrix.user_id
    far = make_remote_user("far")
    peer = await make_peer(far)
    room_id = await open_dm(peer, bot)
    await peer.ask(room_id, "!lang en", bot_id)
    text = await peer.ask(room_id, "!backup-status", bot_id, timeout=60)
    assert "something went wrong" not in text
    assert f"`{peer.device_id}`" in text  # their sessions, seen over federation
    assert "Cross-signing identity: **not set up**" in text
    assert "inferred, not seen" in text
    assert f"You are on another homeserver ({remote_synapse.server_name})" in text
    assert "What I cannot see: your key backup, your recovery key" in text
    assert "admin records" not in text  # no last-use times were claimed
    zh = await peer.ask(room_id, "!lang zh", bot_id)
    assert zh
    text = await peer.ask(room_id, "!backup-status", bot_id, timeout=60)
    assert f"你的账号在另一个服务器上（{remote_synapse.server_name}）" in text
    # The admin-login check never tried to log in as someone of another server.
    assert not [r for r in caplog.records if "Can only" in r.getMessage()]

    # The same bot, in the same run, still sees a local person's backup through the admin API.
    near = await make_peer(make_user("near"))
    near_room = await open_dm(near, bot)
    await near.ask(near_room, "!lang en", bot_id)
    local = await near.ask(near_room, "!backup-status", bot_id, timeout=60)
    assert "Key backup: **off**" in local and "another homeserver" not in local


async def test_scheduled_run_reminds_local_and_remote_people_exactly_once(
    start_bot: Any, make_user: Any, make_remote_user: Any, make_peer: Any,
    synapse: LocalSynapse, remote_synapse: LocalSynapse, tmp_path: Any,
) -> None:
    token = admin_token(synapse, make_user)
    servers = both_servers(remote_synapse)
    data = tmp_path / "bot"
    first = await start_bot(data_dir=data, admin_token=token, allowed_servers=servers)
    near, far = await make_peer(make_user("near")), await make_peer(make_remote_user("far"))
    await group_with(near, first, [far], encrypted=True)
    await first.stop()

    # Restarted with reminders on: the missed scan runs at start, as the scheduler runs it.
    bot = await start_bot(data_dir=data, admin_token=token, allowed_servers=servers,
                          reminders=NO_REMINDER_GRACE)
    assert await wait_until(lambda: bot_messages(near, bot, REMINDER)
                            and bot_messages(far, bot, REMINDER), 60), \
        "each of them must get a reminder"
    [(far_dm, far_text)] = bot_messages(far, bot, REMINDER)
    [(near_dm, near_text)] = bot_messages(near, bot, REMINDER)
    # Nobody chose a language: the bot's own (zh) speaks, and says what it cannot see from here.
    assert f"你的账号在 {remote_synapse.server_name} 上" in far_text
    assert "看不到你的密钥备份、恢复密钥以及每个会话最后使用的时间" in far_text
    assert remote_synapse.server_name not in near_text

    assert bot.reminders is not None and bot.store is not None
    again = await bot.reminders.scan()
    assert again.queued == 0 and again.failed == 0 and again.users == 2
    for peer, dm in ((near, near_dm), (far, far_dm)):
        # The answer to a later question follows any reminder that might have been sent twice.
        await peer.ask(dm, "!remind", bot.config.matrix.user_id)
        assert len(bot_messages(peer, bot, REMINDER)) == 1
        rows = [m for m in bot.store.outbox(UserId(peer.user_id)) if m.kind != "alert"]
        assert [m.status for m in rows] == ["sent"]


async def test_a_dead_homeserver_does_not_stop_the_run_for_the_others(
    start_bot: Any, make_user: Any, make_remote_user: Any, make_peer: Any,
    synapse: LocalSynapse, remote_synapse: LocalSynapse, caplog: pytest.LogCaptureFixture,
) -> None:
    bot = await reminding_admin_bot(start_bot, make_user, synapse, remote_synapse)
    assert bot.reminders is not None
    await bot.reminders.scan()  # the start-up scan's job, done now: nobody to remind yet
    near, far = await make_peer(make_user("near")), await make_peer(make_remote_user("far"))
    # A plain room: nobody asks for the remote person's keys before their server goes down.
    await group_with(near, bot, [far], encrypted=False)
    await far.close()
    remote_synapse.stop()
    try:
        with caplog.at_level(logging.INFO):
            stats = await bot.reminders.scan()
        assert stats.users == 2 and stats.queued == 1 and stats.failed == 1
        assert any(far.user_id in r.getMessage() and "unavailable" in r.getMessage()
                   for r in caplog.records), "the failure names the person"
        assert any("1 failed" in r.getMessage() for r in caplog.records
                   if r.getMessage().startswith("Reminder scan:"))
        assert await wait_until(lambda: bot_messages(near, bot, REMINDER), 30)
    finally:
        await asyncio.to_thread(remote_synapse.start)
    # Their server is back: the next run reaches them too.
    assert bot.store is not None
    for _ in range(20):
        stats = await bot.reminders.scan(deliver=False)
        if stats.failed == 0:
            break
        await asyncio.sleep(1)  # our server waits a moment before it tries theirs again
    assert stats.failed == 0 and stats.queued == 1
    assert [m.kind for m in bot.store.outbox(UserId(far.user_id))] == ["remind"]


async def test_remote_person_new_session_alert(
    start_bot: Any, make_user: Any, make_remote_user: Any, make_peer: Any,
    synapse: LocalSynapse, remote_synapse: LocalSynapse,
) -> None:
    bot = await start_bot(admin_token=admin_token(synapse, make_user),
                          allowed_servers=both_servers(remote_synapse),
                          alerts={"enabled": True, "debounce_seconds": 1})
    bot_id = bot.config.matrix.user_id
    user = make_remote_user("far")
    peer = await make_peer(user)
    room_id = await open_dm(peer, bot)
    await peer.ask(room_id, "!lang en", bot_id)
    builder, account = AccountBuilder(remote_synapse), adopt_peer(remote_synapse, user, peer)
    await asyncio.to_thread(builder.set_up_cross_signing, account)
    await asyncio.to_thread(builder.sign_device, account, peer.device_id)
    assert bot.alerts is not None and bot.store is not None
    await bot.alerts.check(UserId(user.user_id), fresh=True)  # the baseline, whatever sync did
    assert peer.device_id in bot.store.known_devices(UserId(user.user_id))
    # A new session on their server reaches ours as a device-list update over federation.
    added = await asyncio.to_thread(builder.add_device, account, "stranger's laptop")
    alert = await peer.wait_for_message(room_id, sender=bot_id, timeout=30)
    assert "New session on your account" in alert.body
    # Synapse does not share device names over federation by default: the ID is what is seen.
    assert f"`{added.device_id}`" in alert.body
    assert [a["kind"] for a in bot.store.alerts(UserId(user.user_id))] == ["new_sessions"]


async def test_remote_person_verifies_with_the_bot_over_federation(
    js_sdk: str, start_bot: Any, make_user: Any, make_remote_user: Any,  # noqa: F811
    synapse: LocalSynapse, remote_synapse: LocalSynapse,
) -> None:
    clock = Clock()
    bot = await start_bot(clock=clock, admin_token=admin_token(synapse, make_user),
                          allowed_servers=both_servers(remote_synapse))
    async with element_in_dm(bot, make_remote_user("element"), clock, js_sdk) as setup:
        await setup.peer.call("request_dm", user_id=setup.bot_id, room_id=setup.room_id,
                              start_sas=True)
        await finish_and_check(setup)
        record = setup.records()[-1]
        assert record["transport"] == "in_room" and record["result"] == "verified"


async def test_stopping_mid_run_ends_it_cleanly_and_keeps_what_was_not_sent(
    start_bot: Any, make_user: Any, make_remote_user: Any, make_peer: Any,
    synapse: LocalSynapse, remote_synapse: LocalSynapse, caplog: pytest.LogCaptureFixture,
) -> None:
    # One send a minute: after the first reminder the run waits ~60 s for its next slot.
    bot = await reminding_admin_bot(start_bot, make_user, synapse, remote_synapse,
                                    max_sends_per_minute=1)
    near, far = await make_peer(make_user("near")), await make_peer(make_remote_user("far"))
    await group_with(near, bot, [far], encrypted=True)
    assert bot.reminders is not None and bot.reminders.scheduler is not None
    bot.reminders.scheduler.modify_job("reminder-scan", next_run_time=datetime.now(UTC))
    assert await wait_until(lambda: bot_messages(near, bot, REMINDER)
                            or bot_messages(far, bot, REMINDER), 60)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        await bot.stop()  # the run is sleeping in the pacer: cancelled and awaited
        gc.collect()
        await asyncio.sleep(0.1)
    assert not [r for r in caplog.records if "Unclosed" in r.getMessage()]
    store = Store(bot.config.database_path)  # the bot closed its own
    statuses = sorted(m.status for u in (near, far) for m in store.outbox(UserId(u.user_id)))
    store.close()
    assert statuses == ["pending", "sent"]  # the unsent one waits for the next start
