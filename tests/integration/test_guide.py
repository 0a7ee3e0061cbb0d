"""Walkthroughs end to end: real Synapse, the real bot, a real E2EE client doing each step."""

from __future__ import annotations

import asyncio
from typing import Any

from botdm import adopt_peer, cross_signed, open_dm, open_group, start_admin_login_bot

from nerbot.app import NerbotApp
from nerbot.localdev.accounts import AccountBuilder


async def say(peer: Any, bot: NerbotApp, room_id: str, text: str) -> str:
    return str(await peer.ask(room_id, text, bot.config.matrix.user_id, timeout=60))


async def test_backup_guide_asks_about_recovery_it_cannot_see_and_survives_a_restart(
    start_bot: Any, make_user: Any, make_peer: Any, synapse: Any, tmp_path: Any
) -> None:
    """No admin token: the server does not show recovery to the bot. The last step says so and
    asks the person to look and confirm; the cross-signing identity (which current Element
    creates by itself) is never taken as a sign of recovery."""
    data_dir = tmp_path / "bot"
    bot = await start_bot(data_dir=data_dir)
    user = make_user()
    peer = await make_peer(user)
    room_id = await open_dm(peer, bot)
    await say(peer, bot, room_id, "!lang en")

    listing = await say(peer, bot, room_id, "!guide")
    assert "`!guide backup` — Set up recovery ⭐ **recommended for you**" in listing
    assert "`!guide practice`" in listing

    first = await say(peer, bot, room_id, "!guide backup")
    assert first.startswith("**Set up recovery** · step 1 of 11")
    assert "login password is not your recovery key" in first
    second = await say(peer, bot, room_id, "!next")
    assert "· step 2 of 11" in second and "**All settings**" in second  # a client label
    assert "Never click **Dismiss**" in second
    for n in range(3, 12):
        assert f"· step {n} of 11" in await say(peer, bot, room_id, "!next")

    # Element made the identity by itself; still, recovery is not visible: ask, don't infer.
    builder, account = AccountBuilder(synapse), adopt_peer(synapse, user, peer)
    await asyncio.to_thread(builder.set_up_cross_signing, account)
    asked = await say(peer, bot, room_id, "!next")
    assert "not visible to me on this server (not seen)" in asked
    assert "**Change recovery key**" in asked and "`!next confirm`" in asked
    assert "stay on this step" in asked and "✅" not in asked and "❌" not in asked
    assert "· step" not in asked
    assert "· step 10 of 11" in await say(peer, bot, room_id, "!back")
    assert "· step 11 of 11" in await say(peer, bot, room_id, "done")  # plain "done" = !next

    await bot.stop()
    bot = await start_bot(data_dir=data_dir)  # progress lives in SQLite
    assert bot.store is not None
    progress = bot.store.get_guide_progress(user.user_id)
    assert progress is not None and (progress.guide, progress.step) == ("backup", 10)
    done = await say(peer, bot, room_id, "confirm")  # plain "confirm" = !next confirm
    assert "You confirmed that recovery is set up" in done and "(not seen)" in done
    assert "**Done: Set up recovery**" in done and "✅" not in done
    assert "your recovery key is what opens them" in done  # the guide's summary
    assert bot.store.get_guide_progress(user.user_id) is None
    assert [r["result"] for r in bot.store.guide_runs(user.user_id)] == ["finished"]
    assert "no walkthrough in progress" in await say(peer, bot, room_id, "!next")


async def test_backup_checkpoint_sees_recovery_with_the_admin_token(
    start_bot: Any, make_user: Any, make_peer: Any, synapse: Any
) -> None:
    """With the admin token recovery is seen (m.secret_storage.default_key), and with the
    admin-login check the key backup behind it: the step passes only on what the server shows,
    and the person's word changes nothing."""
    bot = await start_admin_login_bot(start_bot, make_user, synapse)
    user = make_user()
    peer = await make_peer(user)
    room_id = await open_dm(peer, bot)
    await say(peer, bot, room_id, "!lang en")
    await say(peer, bot, room_id, "!guide backup")
    for _ in range(10):
        await say(peer, bot, room_id, "!next")
    builder, account = AccountBuilder(synapse), adopt_peer(synapse, user, peer)
    await asyncio.to_thread(builder.set_up_cross_signing, account)  # what Element does itself
    stayed = await say(peer, bot, room_id, "!next confirm")
    assert "❌ Recovery is not complete yet." in stayed and "**no recovery**" in stayed
    assert "stay on this step" in stayed and "not seen" not in stayed
    await asyncio.to_thread(builder.set_up_secret_storage, account)
    no_backup = await say(peer, bot, room_id, "!next")
    assert "recovery is there, but there is **no key backup**" in no_backup
    assert "**Allow key storage**" in no_backup and "stay on this step" in no_backup
    await asyncio.to_thread(builder.create_backup, account)
    passed = await say(peer, bot, room_id, "!next")
    assert "✅ Recovery is set up for your account." in passed
    assert "your account has recovery set up" in passed and "**Done: Set up recovery**" in passed
    assert "not seen" not in passed


async def test_new_device_checkpoint_detects_the_newly_signed_session(
    start_bot: Any, make_user: Any, make_peer: Any, synapse: Any
) -> None:
    bot = await start_bot()
    user = make_user()
    peer = await make_peer(user)
    room_id = await open_dm(peer, bot)
    await say(peer, bot, room_id, "!lang en")
    builder, account = await cross_signed(synapse, user, peer)

    await say(peer, bot, room_id, "!platform mobile")
    first = await say(peer, bot, room_id, "!guide new-device")
    assert "· step 1 of 12" in first and "!platform web" in first
    assert "**Confirm your digital identity**" in first  # Element X's label
    warning = await say(peer, bot, room_id, "!next")
    assert "· step 2 of 12" in warning and "**Can't confirm?**" in warning
    for n in range(3, 12):
        assert f"· step {n} of 12" in await say(peer, bot, room_id, "!next")
    new = await asyncio.to_thread(builder.add_device, account, "new phone")
    stayed = await say(peer, bot, room_id, "!next")
    assert "**still not verified**" in stayed and f"`{new.device_id}` new phone" in stayed
    await asyncio.to_thread(builder.sign_device, account, new.device_id)
    passed = await say(peer, bot, room_id, "!next")
    assert f"your session `{new.device_id}` new phone is now cross-signed" in passed
    assert "· step 12 of 12" in passed


async def test_wrong_names_and_commands_out_of_context_get_helpful_answers(
    start_bot: Any, make_user: Any, make_peer: Any
) -> None:
    bot = await start_bot()  # default language zh
    peer = await make_peer(make_user())
    room_id = await open_dm(peer, bot)
    unknown = await say(peer, bot, room_id, "!guide bakup")
    assert "没有叫 `bakup` 的引导" in unknown and "`!guide backup`" in unknown
    for command in ("!next", "!back", "!stop"):
        assert "你现在没有进行中的引导" in await say(peer, bot, room_id, command)
    assert "!platform web|mobile" in await say(peer, bot, room_id, "!platform tv")
    assert "!next" in await say(peer, bot, room_id, "!next please")  # usage, not a crash
    # Without an active guide "好了" is just chat: the next answer is for the next command.
    await peer.send_text(room_id, "好了")
    assert "分步引导" in await say(peer, bot, room_id, "!guide")
    started = await say(peer, bot, room_id, "!guide verify-user")
    assert "第 1/9 步" in started
    stopped = await say(peer, bot, room_id, "!stop")
    assert "已退出引导" in stopped and "!guide verify-user" in stopped
    assert bot.store is not None
    assert [r["result"] for r in bot.store.guide_runs()] == ["stopped"]


async def test_group_room_gets_a_pointer_and_the_guide_continues_in_the_dm(
    start_bot: Any, make_user: Any, make_peer: Any
) -> None:
    bot = await start_bot()
    bot_id = bot.config.matrix.user_id
    alice, bob = await make_peer(make_user("alice")), await make_peer(make_user("bob"))
    group = await open_group(alice, bot, [bob.user_id])
    pointer = await alice.ask(group, "!guide verify-sessions", bot_id, timeout=60)
    assert alice.user_id in pointer and "私聊" in pointer and "第 1/" not in pointer
    assert bot.store is not None
    dm = bot.store.get_dm_room(alice.user_id)
    assert dm is not None and dm != group
    step = await alice.wait_for_message(dm, sender=bot_id, timeout=60)
    assert "第 1/9 步" in step.body and "**所有设置**" in step.body
    # In the group only ! commands count: "好了" there must not move the guide.
    await alice.send_text(group, "好了")
    second = await say(alice, bot, dm, "好了")
    assert "第 2/9 步" in second
