"""The bot end to end: a real Synapse, the real bot, real E2EE clients (nio) talking to it."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import nio
import pytest
import signedjson.key
import signedjson.sign
import unpaddedbase64
from botdm import open_dm

from nerbot.localdev.peer import ENCRYPTION_STATE
from nerbot.store import Store
from nerbot.store.db import SyncPosition

pytestmark = pytest.mark.asyncio


def http_json(url: str, token: str, method: str = "GET", body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


async def test_help_in_encrypted_dm_is_decrypted_and_localized(
    start_bot: Any, make_user: Any, make_peer: Any
) -> None:
    bot = await start_bot()
    peer = await make_peer(make_user())
    room_id = await open_dm(peer, bot)
    await peer.send_text(room_id, "!help")
    reply = await peer.wait_for_message(room_id, sender=bot.config.matrix.user_id)
    assert reply.decrypted, "the bot's answer must arrive encrypted"
    assert "可用命令" in reply.body  # default language zh
    for command in ("!help", "!lang", "!fingerprint"):
        assert command in reply.body
    assert bot.store is not None and bot.store.get_dm_room(peer.user_id) == room_id


async def test_lang_switches_to_english_and_unknown_command_gets_hint(
    start_bot: Any, make_user: Any, make_peer: Any
) -> None:
    bot = await start_bot()
    bot_id = bot.config.matrix.user_id
    peer = await make_peer(make_user())
    room_id = await open_dm(peer, bot)
    assert await peer.ask(room_id, "!lang en", bot_id) == \
        "OK, I will write to you in English from now on."
    assert "Commands:" in await peer.ask(room_id, "!help", bot_id)
    hint = await peer.ask(room_id, "!frobnicate", bot_id)
    assert "`!frobnicate`" in hint and "!help" in hint
    assert "Usage" in await peer.ask(room_id, "!lang klingon", bot_id)


async def test_bot_ignores_its_own_messages(start_bot: Any, make_user: Any, make_peer: Any) -> None:
    bot = await start_bot()
    bot_id = bot.config.matrix.user_id
    peer = await make_peer(make_user())
    room_id = await open_dm(peer, bot)
    assert bot.transport is not None
    await bot.transport.send_notice(room_id, "!help")
    echoed = await peer.wait_for_message(room_id, sender=bot_id)
    assert echoed.body == "!help"
    with pytest.raises(asyncio.TimeoutError):
        await peer.wait_for_message(room_id, sender=bot_id, timeout=3)


async def test_sync_uses_an_uploaded_filter_and_keeps_room_state(
    start_bot: Any, make_user: Any, make_peer: Any
) -> None:
    import nio

    bot = await start_bot()
    bot_id = bot.config.matrix.user_id
    assert bot.syncer is not None and bot.session is not None
    assert isinstance(bot.syncer.filter, str), "the filter is referred to by its ID"
    seen: list[tuple[str, str]] = []

    async def record(room: nio.MatrixRoom, event: nio.Event) -> None:
        seen.append((event.sender, type(event).__name__))

    bot.session.client.add_event_callback(record, (nio.RoomMessage, nio.RoomMemberEvent))
    peer = await make_peer(make_user())
    room_id = await open_dm(peer, bot)
    assert await peer.ask(room_id, "!help", bot_id)  # the bot answered: a message of its own
    # a second question: the bot's sync has passed its own first answer by the time it answers
    assert await peer.ask(room_id, "!fingerprint", bot_id)
    assert (peer.user_id, "RoomMessageText") in seen, "the person's message was decrypted"
    room = bot.session.client.rooms[room_id]
    assert room.encrypted and peer.user_id in room.users and bot_id in room.users


async def wait_until(condition: Any, seconds: float = 10) -> bool:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return bool(condition())


async def test_disallowed_inviter_is_rejected(
    start_bot: Any, make_user: Any, make_peer: Any
) -> None:
    bot = await start_bot(allowed_servers=["elsewhere.example"])
    bot_id = bot.config.matrix.user_id
    peer = await make_peer(make_user())
    room_id = await peer.create_encrypted_dm(bot_id)
    assert bot.store is not None
    for _ in range(100):
        if bot.store.invites():
            break
        await asyncio.sleep(0.1)
    (record,) = bot.store.invites()
    assert record["room_id"] == room_id and record["accepted"] == 0
    assert record["inviter"] == peer.user_id
    members = await peer.client.joined_members(room_id)
    assert bot_id not in [m.user_id for m in members.members]
    # the invite was rejected, not left pending
    state = http_json(f"{peer.client.homeserver}/_matrix/client/v3/rooms/"
                      f"{urllib.parse.quote(room_id)}/state/m.room.member/"
                      f"{urllib.parse.quote(bot_id)}", peer.client.access_token)
    assert state["membership"] == "leave"


async def test_restarts_keep_one_device_and_keep_decrypting(
    start_bot: Any, make_user: Any, make_peer: Any, tmp_path: Path
) -> None:
    bot = await start_bot()
    bot_id = bot.config.matrix.user_id
    device = bot.session.device_id if bot.session else None
    peer = await make_peer(make_user())
    room_id = await open_dm(peer, bot)
    for _ in range(3):
        await bot.stop()
        bot = await start_bot()
        assert bot.session is not None and bot.session.device_id == device
        assert bot.identity is not None and bot.identity.state.value == "already_set_up"
        assert "可用命令" in await peer.ask(room_id, "!help", bot_id)
    assert bot.session is not None
    devices = http_json(f"{bot.config.matrix.homeserver}/_matrix/client/v3/devices",
                        bot.session.access_token)["devices"]
    assert [d["device_id"] for d in devices] == [device]


async def test_a_restart_resumes_syncing_and_every_kept_room_still_works(
    start_bot: Any, make_user: Any, make_peer: Any
) -> None:
    """The first sync after a restart resumes from the kept position (no full state): the
    rooms it does not bring come from the room index, invitees included; a room the bot was
    removed from meanwhile is gone."""
    bot = await start_bot()
    bot_id = bot.config.matrix.user_id
    talker = await make_peer(make_user())
    talk_room = await open_dm(talker, bot)
    shy = await make_peer(make_user(), auto_join=False)  # has not accepted the bot's DM yet
    assert bot.transport is not None
    shy_room = await bot.transport.send_dm(shy.user_id, "first")
    kicker = await make_peer(make_user())
    created = await kicker.client.room_create(  # private_chat: the invited bot is no admin
        is_direct=True, invite=[bot_id], preset=nio.RoomPreset.private_chat,
        initial_state=[ENCRYPTION_STATE])
    assert isinstance(created, nio.RoomCreateResponse)
    kick_room = str(created.room_id)
    await kicker.wait_for_join(kick_room, bot_id)
    await kicker.wait_for_message(kick_room, sender=bot_id)  # the welcome
    assert bot.store is not None and bot.store.get_dm_room(kicker.user_id) == kick_room
    await bot.stop()
    newcomer = await make_peer(make_user())
    new_room = await newcomer.create_encrypted_dm(bot_id)  # invited while the bot is down
    assert isinstance(await kicker.client.room_kick(kick_room, bot_id), nio.RoomKickResponse)

    bot = await start_bot()
    assert bot.room_index is not None and bot.room_index.resumed
    assert bot.transport is not None
    assert "可用命令" in await talker.ask(talk_room, "!help", bot_id)  # a room with no news
    # The DM is reused, and its room key goes to the invitee nio knows only from the index.
    assert await bot.transport.send_dm(shy.user_id, "second") == shy_room
    assert isinstance(await shy.client.join(shy_room), nio.JoinResponse)
    bodies = [(await shy.wait_for_message(shy_room, sender=bot_id, timeout=60)).body
              for _ in range(2)]
    assert bodies == ["first", "second"]
    await newcomer.wait_for_join(new_room, bot_id)  # the invite came with the resumed sync
    assert "nerbot" in (await newcomer.wait_for_message(new_room, sender=bot_id)).body
    # Removed while down: the kept room is no use any more, so the next DM is a new room.
    assert bot.session is not None and kick_room not in bot.session.client.rooms
    again = await bot.transport.send_dm(kicker.user_id, "again")
    assert again != kick_room
    assert (await kicker.wait_for_message(again, sender=bot_id, timeout=60)).body == "again"


async def test_a_kept_position_the_homeserver_refuses_falls_back_to_the_full_state(
    start_bot: Any, make_user: Any, make_peer: Any
) -> None:
    bot = await start_bot()
    bot_id = bot.config.matrix.user_id
    peer = await make_peer(make_user())
    room_id = await open_dm(peer, bot)
    await bot.stop()
    store = Store(bot.config.database_path)
    position, rooms = store.load_rooms()
    assert position is not None and room_id in {room.room_id for room in rooms}
    store.save_rooms(SyncPosition(position.device_id, "not-a-stream-token"), [])
    store.close()

    bot = await start_bot()  # Synapse answers 400 "Invalid stream token"
    assert bot.room_index is not None and not bot.room_index.resumed
    assert "可用命令" in await peer.ask(room_id, "!help", bot_id)
    assert bot.store is not None
    position, _ = bot.store.load_rooms()
    assert position is not None and position.next_batch != "not-a-stream-token"


async def test_commands_sent_while_down_are_answered_after_start(
    start_bot: Any, make_user: Any, make_peer: Any
) -> None:
    bot = await start_bot()
    bot_id = bot.config.matrix.user_id
    peer = await make_peer(make_user())
    room_id = await open_dm(peer, bot)
    await bot.stop()
    await peer.send_text(room_id, "!lang en")
    await peer.send_text(room_id, "!help")
    for n in range(12):  # more than the 10 events a sync brings of a room: the commands are
        await peer.send_text(room_id, f"chatter {n}")  # only to be had from /messages
    await start_bot()
    first = await peer.wait_for_message(room_id, sender=bot_id, timeout=60)
    second = await peer.wait_for_message(room_id, sender=bot_id, timeout=60)
    assert first.body == "OK, I will write to you in English from now on."
    assert "Commands:" in second.body  # answered in order, after the language switch
    with pytest.raises(asyncio.TimeoutError):  # and each exactly once
        await peer.wait_for_message(room_id, sender=bot_id, timeout=3)


async def test_a_dm_someone_else_was_added_to_gets_no_ones_sessions(
    start_bot: Any, make_user: Any, make_peer: Any
) -> None:
    """Alice adds Bob to her DM with the bot: from then on it is a group room for both of
    them. Their session lists go to DMs of their own; the room gets only pointers."""
    bot = await start_bot()
    bot_id = bot.config.matrix.user_id
    alice, bob = await make_peer(make_user("alice")), await make_peer(make_user("bob"))
    room_id = await open_dm(alice, bot)
    invited = await alice.client.room_invite(room_id, bob.user_id)
    assert isinstance(invited, nio.RoomInviteResponse), invited
    await alice.wait_for_join(room_id, bob.user_id)
    for asker in (bob, alice):
        pointer = await asker.ask(room_id, "!backup-status", bot_id, timeout=60)
        assert asker.user_id in pointer and "私聊" in pointer and asker.device_id not in pointer
        assert bot.store is not None
        dm = bot.store.get_dm_room(asker.user_id)
        assert dm is not None and dm != room_id
        report = await asker.wait_for_message(dm, sender=bot_id, timeout=60)
        assert asker.device_id in report.body


async def test_bot_device_is_cross_signed_as_seen_by_another_user(
    start_bot: Any, make_user: Any, make_peer: Any
) -> None:
    bot = await start_bot()
    bot_id = bot.config.matrix.user_id
    assert bot.session is not None
    other = await make_peer(make_user())
    keys = http_json(f"{bot.config.matrix.homeserver}/_matrix/client/v3/keys/query",
                     other.client.access_token, "POST", {"device_keys": {bot_id: []}})
    master = keys["master_keys"][bot_id]
    ssk = keys["self_signing_keys"][bot_id]
    device = keys["device_keys"][bot_id][bot.session.device_id]
    (master_pub,) = master["keys"].values()
    (ssk_pub,) = ssk["keys"].values()

    def verify(obj: dict[str, Any], pub: str) -> None:
        key = signedjson.key.decode_verify_key_bytes(
            f"ed25519:{pub}", unpaddedbase64.decode_base64(pub))
        signedjson.sign.verify_signed_json(obj, bot_id, key)  # raises if invalid

    verify(ssk, master_pub)
    verify(device, ssk_pub)
    assert bot.master_fingerprint().replace(" ", "") == master_pub


async def test_undecryptable_message_gets_a_notice_after_the_grace_period(
    start_bot: Any, make_user: Any, make_peer: Any
) -> None:
    bot = await start_bot(undecryptable_grace_seconds=2)
    bot_id = bot.config.matrix.user_id
    peer = await make_peer(make_user())
    room_id = await open_dm(peer, bot)
    # An encrypted event whose Megolm session nobody ever shares with the bot.
    fake = {
        "algorithm": "m.megolm.v1.aes-sha2",
        "ciphertext": "AwgAEnACgAkLmt6qF84IK++J7UDH2Za1YVchHyprqTqsg2yyOwAtHaZTwyNg37afzg8f3r9"
                      "IsN9r4RNFg7MaZencUJe4qvELiDiopUjy5wYVDAtqdBzer5bWRD9ldxp1FLgbQvBcjkkyw",
        "device_id": peer.device_id,
        "sender_key": peer.client.olm.account.identity_keys["curve25519"],
        "session_id": "c4+O+eXPf0qze1bUlH4Etf6ifzpbG3YeDEreTVm+JZU",
    }
    # Sent raw: nio's room_send would encrypt it again.
    http_json(f"{peer.client.homeserver}/_matrix/client/v3/rooms/{urllib.parse.quote(room_id)}"
              f"/send/m.room.encrypted/fake-{uuid.uuid4().hex}", peer.client.access_token,
              "PUT", fake)
    notice = await peer.wait_for_message(room_id, sender=bot_id, timeout=30)
    assert peer.user_id in notice.body and "无法读取" in notice.body


async def test_dm_helper_opens_reuses_and_records_m_direct(
    start_bot: Any, make_user: Any, make_peer: Any
) -> None:
    bot = await start_bot()
    bot_id = bot.config.matrix.user_id
    peer = await make_peer(make_user())
    assert bot.transport is not None and bot.session is not None
    room_id = await bot.transport.send_dm(peer.user_id, "hello from the bot")
    message = await peer.wait_for_message(room_id, sender=bot_id, timeout=30)
    assert message.body == "hello from the bot" and message.decrypted
    assert await bot.transport.ensure_dm(peer.user_id) == room_id
    me = urllib.parse.quote(bot_id)
    url = f"{bot.config.matrix.homeserver}/_matrix/client/v3/user/{me}/account_data/m.direct"
    for _ in range(100):  # written in batches, a second after the DM at most
        if bot.transport.direct.writes:
            break
        await asyncio.sleep(0.05)
    assert http_json(url, bot.session.access_token)[peer.user_id] == [room_id]
    # A stop writes the batch at once; the next start finds nothing to add.
    other = await make_peer(make_user())
    other_room = await bot.transport.send_dm(other.user_id, "hello")
    await bot.transport.close()
    direct = http_json(url, bot.session.access_token)
    assert direct[peer.user_id] == [room_id] and direct[other.user_id] == [other_room]


async def test_bot_survives_homeserver_restart(
    start_bot: Any, make_user: Any, make_peer: Any, synapse: Any
) -> None:
    bot = await start_bot()
    bot_id = bot.config.matrix.user_id
    peer = await make_peer(make_user())
    room_id = await open_dm(peer, bot)
    await asyncio.to_thread(synapse.stop)
    await asyncio.sleep(3)
    await asyncio.to_thread(synapse.start)
    reply = await peer.ask(room_id, "!help", bot_id, timeout=120)
    assert "可用命令" in reply


async def test_no_secret_reaches_the_logs(
    start_bot: Any, make_user: Any, make_peer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    bot = await start_bot()
    bot_id = bot.config.matrix.user_id
    peer = await make_peer(make_user())
    room_id = await open_dm(peer, bot)
    await peer.ask(room_id, "!help", bot_id)
    await bot.stop()
    await start_bot()  # a restore path too
    assert bot.session is not None
    text = caplog.text
    assert "Logged in as" in text  # the log was captured at all
    assert bot.config.matrix.password not in text
    assert bot.session.access_token not in text
    keys = bot.config.cross_signing_keys_path.read_text()
    for seed in json.loads(keys).values():
        assert seed not in text


async def test_joins_an_encrypted_group_room_on_invite_and_answers(
    start_bot: Any, make_user: Any, make_peer: Any
) -> None:
    bot = await start_bot()
    bot_id = bot.config.matrix.user_id
    alice, bob = await make_peer(make_user("alice")), await make_peer(make_user("bob"))
    room_id = await alice.create_encrypted_room([bot_id, bob.user_id])
    await alice.wait_for_join(room_id, bot_id)
    await alice.wait_for_join(room_id, bob.user_id)
    welcome = await alice.wait_for_message(room_id, sender=bot_id)
    assert welcome.decrypted and "nerbot" in welcome.body
    reply = await alice.ask(room_id, "!help", bot_id)
    assert "可用命令" in reply
    # everyone in the room can read the bot (its device is trusted by their clients' rules)
    seen_by_bob = await bob.wait_for_message(
        room_id, sender=bot_id, predicate=lambda m: "可用命令" in m.body)
    assert seen_by_bob.decrypted
    assert bot.store is not None and bot.store.get_dm_room(alice.user_id) is None
