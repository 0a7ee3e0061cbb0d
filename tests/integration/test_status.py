"""``!backup-status`` end to end: real Synapse, the real bot, real E2EE clients."""

from __future__ import annotations

import asyncio
from typing import Any

from botdm import cross_signed, open_dm, open_group, start_admin_login_bot

from nerbot.app import NerbotApp


async def status(peer: Any, bot: NerbotApp, room_id: str, args: str = "") -> str:
    return str(await peer.ask(room_id, f"!backup-status {args}".strip(),
                              bot.config.matrix.user_id, timeout=60))


def create_backup(synapse: Any, token: str) -> str:
    body = {"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
            "auth_data": {"public_key": "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo"}}
    return str(synapse.request("POST", "/_matrix/client/v3/room_keys/version", body,
                               token=token)["version"])


async def test_user_without_cross_signing_gets_full_report_with_inference(
    start_bot: Any, make_user: Any, make_peer: Any
) -> None:
    bot = await start_bot()
    peer = await make_peer(make_user())
    room_id = await open_dm(peer, bot)
    await peer.ask(room_id, "!lang en", bot.config.matrix.user_id)
    text = await status(peer, bot, room_id)
    assert "Cross-signing identity: **not set up**" in text
    assert "almost certainly have no backup" in text and "inferred, not seen" in text
    assert f"`{peer.device_id}`" in text and "**not verified**" in text
    assert "!guide backup" in text


async def test_admin_login_backup_check_sees_backup_on_and_off(
    start_bot: Any, make_user: Any, make_peer: Any, synapse: Any
) -> None:
    bot = await start_admin_login_bot(start_bot, make_user, synapse)
    peer = await make_peer(make_user())
    room_id = await open_dm(peer, bot)
    await peer.ask(room_id, "!lang en", bot.config.matrix.user_id)
    text = await status(peer, bot, room_id)
    assert "Key backup: **off**" in text
    assert "Session activity comes from the server's admin records." in text
    version = create_backup(synapse, peer.client.access_token)
    text = await status(peer, bot, room_id)
    assert f"Key backup: on (version {version})" in text
    # The backup check logs in as the user through the admin API: no device may be left over.
    devices = synapse.request("GET", "/_matrix/client/v3/devices",
                              token=peer.client.access_token)["devices"]
    assert [d["device_id"] for d in devices] == [peer.device_id]


async def test_inactive_session_is_flagged_with_admin_api(
    start_bot: Any, make_user: Any, make_peer: Any, synapse: Any
) -> None:
    admin = make_user("admin", admin=True)
    token = synapse.admin_access_token(admin.localpart, admin.password)

    class Future:
        """The bot's clock 120 days ahead: every session looks 120 days idle."""

        def now_ms(self) -> int:
            import time
            return int(time.time() * 1000) + 120 * 24 * 3600 * 1000

    first = await start_bot(admin_token=token)  # first start recorded with the real clock
    await first.stop()
    bot = await start_bot(admin_token=token, clock=Future())
    peer = await make_peer(make_user())
    room_id = await open_dm(peer, bot)
    await peer.ask(room_id, "!lang en", bot.config.matrix.user_id)
    text = await status(peer, bot, room_id)
    assert f"`{peer.device_id}`" in text and "inactive for 120 days" in text


async def test_group_room_gets_no_details_and_others_are_refused(
    start_bot: Any, make_user: Any, make_peer: Any
) -> None:
    bot = await start_bot()
    bot_id = bot.config.matrix.user_id
    alice, bob = await make_peer(make_user("alice")), await make_peer(make_user("bob"))
    group = await open_group(alice, bot, [bob.user_id])
    public = await alice.ask(group, "!backup-status", bot_id, timeout=60)
    assert (alice.user_id in public and "direct chat" not in public) or "私聊" in public
    assert alice.device_id not in public
    # the details went to a DM the bot opened with alice
    dm = bot.store.get_dm_room(alice.user_id) if bot.store else None
    assert dm is not None and dm != group
    details = await alice.wait_for_message(dm, sender=bot_id, timeout=60)
    assert f"`{alice.device_id}`" in details.body
    # bob sees the short answer only
    seen = await bob.wait_for_message(group, sender=bot_id,
                                      predicate=lambda m: alice.user_id in m.body)
    assert alice.device_id not in seen.body
    # a non-admin asking about someone else is refused, politely
    refusal = await bob.ask(group, f"!backup-status {alice.user_id}", bot_id)
    assert "管理员" in refusal and alice.device_id not in refusal


async def test_admin_gets_clear_answer_for_unknown_user_and_bad_argument(
    start_bot: Any, make_user: Any, make_peer: Any, synapse: Any
) -> None:
    admin_user = make_user("boss")
    bot = await start_bot(admins=[admin_user.user_id])
    peer = await make_peer(admin_user)
    await cross_signed(synapse, admin_user, peer)  # admin commands need a signed session
    room_id = await open_dm(peer, bot)
    server = bot.config.matrix.user_id.split(":", 1)[1]
    answer = await status(peer, bot, room_id, f"@nobody-here:{server}")
    assert answer == f"在这个服务器上找不到 `@nobody-here:{server}`。"
    assert "不是 Matrix 用户 ID" in await status(peer, bot, room_id, "nobody")
    other = await make_peer(make_user())
    text = await status(peer, bot, room_id, other.user_id)
    assert f"**{other.user_id} 的加密状态**" in text and f"`{other.device_id}`" in text


def count_key_queries(bot: NerbotApp) -> list[list[str]]:
    """The users of every /keys/query the bot's key directory sends from now on."""
    assert bot.directory is not None
    http, sent = bot.directory.http, []

    class Counting:
        async def request(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
            if path.endswith("/keys/query") and body is not None:
                sent.append(sorted(body["device_keys"]))
            return await http.request(method, path, body, **kw)

    bot.directory.http = Counting()  # type: ignore[assignment]
    return sent


async def test_cache_is_invalidated_when_a_new_device_appears(
    start_bot: Any, make_user: Any, make_peer: Any
) -> None:
    bot = await start_bot()
    user = make_user()
    peer = await make_peer(user)
    await open_dm(peer, bot)  # shares a room with the bot, so device changes reach it
    assert bot.hygiene is not None and bot.directory is not None
    first = await bot.hygiene.assess_one(user.user_id)
    assert [s.device.device_id for s in first.sessions] == [peer.device_id]
    queries = count_key_queries(bot)  # counted at the seam below the directory
    again = await bot.hygiene.assess_one(user.user_id)
    assert again == first and queries == []  # cache hit
    second = await make_peer(user)  # a new login with keys
    for _ in range(200):
        if bot.directory.cached(user.user_id) is None:
            break
        await asyncio.sleep(0.05)
    assert bot.directory.cached(user.user_id) is None, "sync did not invalidate the entry"
    report = await bot.hygiene.assess_one(user.user_id)
    assert {s.device.device_id for s in report.sessions} == {peer.device_id, second.device_id}
    assert queries == [[user.user_id]]



async def cross_signed_user_with_second_device(
    start_bot: Any, make_user: Any, make_peer: Any, synapse: Any, name: str
) -> tuple[NerbotApp, Any, str, Any, Any, Any]:
    """A user whose peer session is cross-signed, plus an unsigned second session ``name``."""

    bot = await start_bot()
    user = make_user()
    peer = await make_peer(user)
    room_id = await open_dm(peer, bot)
    await peer.ask(room_id, "!lang en", bot.config.matrix.user_id)
    builder, account = await cross_signed(synapse, user, peer)
    extra = await asyncio.to_thread(builder.add_device, account, name)
    return bot, peer, room_id, builder, account, extra


async def test_one_signed_and_one_unsigned_session(
    start_bot: Any, make_user: Any, make_peer: Any, synapse: Any
) -> None:
    bot, peer, room_id, _, _, extra = await cross_signed_user_with_second_device(
        start_bot, make_user, make_peer, synapse, "old laptop")
    text = await status(peer, bot, room_id)
    assert "Cross-signing identity: set up" in text
    lines = {line.split("`")[1]: line for line in text.splitlines() if line.count("`") >= 2
             and "!guide" not in line}
    assert lines[peer.device_id].endswith("— verified")
    assert "old laptop" in lines[extra.device_id]
    assert lines[extra.device_id].endswith("— **not verified**")
    assert f"({extra.device_id})" in text and "!guide verify-sessions" in text


async def test_forged_signature_does_not_count_as_cross_signed(
    start_bot: Any, make_user: Any, make_peer: Any, synapse: Any
) -> None:
    bot, peer, room_id, builder, account, victim = await cross_signed_user_with_second_device(
        start_bot, make_user, make_peer, synapse, "forged")
    user_id = account.user_id
    await asyncio.to_thread(builder.forge_device_signature, account, victim.device_id)
    # the server really serves a signature under the self-signing key's ID for that device
    served = synapse.request("POST", "/_matrix/client/v3/keys/query",
                             {"device_keys": {user_id: []}},
                             token=peer.client.access_token)
    ssk_id = next(iter(served["self_signing_keys"][user_id]["keys"]))
    assert ssk_id in served["device_keys"][user_id][victim.device_id]["signatures"][user_id]
    text = await status(peer, bot, room_id)
    victim_line = next(line for line in text.splitlines() if f"`{victim.device_id}`" in line)
    assert victim_line.endswith("— **not verified**")


async def test_key_storage_turned_off_on_purpose_is_respected(
    start_bot: Any, make_user: Any, make_peer: Any, synapse: Any
) -> None:
    """Element's ``m.key_backup`` = ``{"enabled": false}`` silences backup, and says so."""
    import urllib.parse


    bot = await start_admin_login_bot(start_bot, make_user, synapse)
    user = make_user()
    peer = await make_peer(user)
    room_id = await open_dm(peer, bot)
    await peer.ask(room_id, "!lang en", bot.config.matrix.user_id)
    # A signed identity, so backup and recovery are all that is left to flag.
    await cross_signed(synapse, user, peer)
    text = await status(peer, bot, room_id)
    assert "Key backup: **off**" in text and "Send `!guide backup`" in text
    assert "You turned key storage off" not in text

    path = (f"/_matrix/client/v3/user/{urllib.parse.quote(user.user_id, safe='')}"
            "/account_data/m.key_backup")
    synapse.request("PUT", path, {"enabled": False}, token=peer.client.access_token)
    text = await status(peer, bot, room_id)  # asks with fresh=True: no stale admin cache
    assert ("You turned key storage off in your client on purpose (seen in your account data)"
            in text)
    assert "Key backup: **off**" not in text and "Recovery key" not in text
    assert "**Next step:**" not in text and "Send `!guide backup`" not in text
    assert "Cross-signing identity: set up" in text
    assert f"`{peer.device_id}`" in text and text.count("!guide backup") == 1


async def test_recovery_is_the_finding_when_cross_signing_and_backup_exist(
    start_bot: Any, make_user: Any, make_peer: Any, synapse: Any
) -> None:
    """Current Element makes the identity and the backup by itself: what people still lack
    is recovery (``m.secret_storage.default_key``), and with the admin token the bot sees it."""

    bot = await start_admin_login_bot(start_bot, make_user, synapse)
    user = make_user()
    peer = await make_peer(user)
    room_id = await open_dm(peer, bot)
    await peer.ask(room_id, "!lang en", bot.config.matrix.user_id)
    builder, account = await cross_signed(synapse, user, peer)
    version = await asyncio.to_thread(builder.create_backup, account)
    text = await status(peer, bot, room_id)
    assert "Cross-signing identity: set up" in text
    assert f"Key backup: on (version {version})" in text
    assert "Recovery: **not set up**" in text
    assert "Send `!guide backup`" in text and "Everything looks good" not in text

    await asyncio.to_thread(builder.set_up_secret_storage, account)
    text = await status(peer, bot, room_id)
    assert "Recovery: set up" in text and "Recovery: **not set up**" not in text
    assert "Everything looks good" in text and "!guide backup" not in text


async def test_recovery_unseen_without_admin_token_is_said_plainly(
    start_bot: Any, make_user: Any, make_peer: Any, synapse: Any
) -> None:
    """No admin token: recovery is not inferred from the identity; the report says it cannot
    see it and tells the person where to look in Element."""

    bot = await start_bot()
    user = make_user()
    peer = await make_peer(user)
    room_id = await open_dm(peer, bot)
    await peer.ask(room_id, "!lang en", bot.config.matrix.user_id)
    builder, account = await cross_signed(synapse, user, peer)
    await asyncio.to_thread(builder.set_up_secret_storage, account)  # invisible to this bot
    text = await status(peer, bot, room_id)
    assert "Cross-signing identity: set up" in text
    assert "Recovery (recovery key): not visible to me on this server (not seen)" in text
    assert "**Get recovery key**" in text
    assert "Recovery: set up" not in text and "Everything looks good" not in text
