"""The room index: what nio learnt from syncs survives a restart, so the next start resumes.

Real nio clients process real sync bodies (``receive_response``, as the sync loop runs it); only
the homeserver is absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import nio
import pytest
from fakes import SyncSurface

from nerbot.matrix.reachability import Recovery
from nerbot.matrix.roomindex import RoomIndex
from nerbot.matrix.syncer import SyncLoop
from nerbot.store import Store
from nerbot.store.db import KeptRoom, SyncPosition

BOT = "@nerbot:example.org"
ALICE = "@alice:example.org"
BOB = "@bob:example.org"
DM = "!dm:example.org"
GROUP = "!group:example.org"


def member(user_id: str, membership: str, sender: str = BOT) -> dict[str, Any]:
    return {"type": "m.room.member", "state_key": user_id, "sender": sender,
            "event_id": f"$m-{user_id}-{membership}", "origin_server_ts": 1,
            "content": {"membership": membership}}


ENCRYPTION = {"type": "m.room.encryption", "state_key": "", "sender": BOT, "event_id": "$enc",
              "origin_server_ts": 1, "content": {"algorithm": "m.megolm.v1.aes-sha2"}}


def joined(state: list[dict[str, Any]], timeline: list[dict[str, Any]] | None = None
           ) -> dict[str, Any]:
    return {"state": {"events": state},
            "timeline": {"events": timeline or [], "limited": False, "prev_batch": "p"},
            "ephemeral": {"events": []}, "account_data": {"events": []}}


def sync_body(token: str, join: dict[str, Any] | None = None,
              invite: dict[str, Any] | None = None,
              leave: dict[str, Any] | None = None) -> nio.SyncResponse:
    body = {"next_batch": token,
            "rooms": {"join": join or {}, "invite": invite or {}, "leave": leave or {}},
            "to_device": {"events": []}, "presence": {"events": []},
            "account_data": {"events": []}, "device_lists": {"changed": [], "left": []}}
    response = nio.SyncResponse.from_dict(body)
    assert isinstance(response, nio.SyncResponse), response
    return response


def new_client(device_id: str = "BOTDEVICE") -> nio.AsyncClient:
    client = nio.AsyncClient("http://127.0.0.1:1", BOT, device_id=device_id)
    client.user_id = BOT  # as a login sets it
    return client


async def apply(client: nio.AsyncClient, index: RoomIndex, response: nio.SyncResponse) -> None:
    await client.receive_response(response)  # nio applies it to client.rooms
    await client.run_response_callbacks([response])  # then the index saves it


async def started(store: Store, device_id: str = "BOTDEVICE"
                  ) -> tuple[nio.AsyncClient, RoomIndex, str | None]:
    client = new_client(device_id)
    index = RoomIndex(client, store)
    position = index.resume()
    index.register()
    return client, index, position


async def test_a_restart_gets_back_the_rooms_and_the_position_of_the_last_sync(
        tmp_path: Path) -> None:
    store = Store(tmp_path / "bot.db")
    client, index, position = await started(store)
    assert position is None  # nothing kept: the first sync asks for the full state
    await apply(client, index, sync_body("s1", join={
        DM: joined([member(BOT, "join"), member(ALICE, "invite"), ENCRYPTION]),
        GROUP: joined([member(BOT, "join"), member(BOB, "join", BOB)]),
    }))
    await client.close()

    client, index, position = await started(store)
    assert position == "s1"
    assert index.resumed
    dm, group = client.rooms[DM], client.rooms[GROUP]
    assert dm.encrypted and not group.encrypted
    assert set(dm.users) == {BOT, ALICE} and set(dm.invited_users) == {ALICE}
    assert set(group.users) == {BOT, BOB} and not group.invited_users
    assert not dm.members_synced  # nio asks for the joined members before its first message
    await client.close()


async def test_each_sync_saves_what_changed_and_forgets_the_rooms_left(tmp_path: Path) -> None:
    store = Store(tmp_path / "bot.db")
    client, index, _ = await started(store)
    await apply(client, index, sync_body("s1", join={
        DM: joined([member(BOT, "join"), member(ALICE, "invite"), ENCRYPTION]),
        GROUP: joined([member(BOT, "join"), member(BOB, "join", BOB)]),
    }))
    await client.close()
    client, index, _ = await started(store)
    await apply(client, index, sync_body("s2", join={
        DM: joined([], timeline=[member(ALICE, "join", ALICE)]),  # Alice accepted
    }, leave={GROUP: {"state": {"events": []}, "timeline": {"events": [
        member(BOT, "leave", BOB)], "limited": False, "prev_batch": "p"}}}))
    await client.close()

    client, _, position = await started(store)
    assert position == "s2"
    assert set(client.rooms) == {DM}
    assert set(client.rooms[DM].users) == {BOT, ALICE} and not client.rooms[DM].invited_users
    await client.close()


async def test_a_room_left_while_down_is_gone_from_nio_too(tmp_path: Path) -> None:
    # nio 0.26 does not read a sync's "leave" section: a kept room it does not drop would
    # look usable (the bot among its members) for the whole run.
    store = Store(tmp_path / "bot.db")
    client, index, _ = await started(store)
    await apply(client, index, sync_body("s1", join={
        DM: joined([member(BOT, "join"), member(ALICE, "join", ALICE), ENCRYPTION])}))
    await client.close()
    client, index, _ = await started(store)
    assert DM in client.rooms
    await apply(client, index, sync_body("s2", leave={DM: {"state": {"events": []},
                                                           "timeline": {"events": [
        member(BOT, "leave", ALICE)], "limited": False, "prev_batch": "p"}}}))
    assert DM not in client.rooms
    await client.close()


async def test_a_sync_that_changes_no_membership_writes_no_room(tmp_path: Path) -> None:
    store = Store(tmp_path / "bot.db")
    client, index, _ = await started(store)
    await apply(client, index, sync_body("s1", join={
        GROUP: joined([member(BOT, "join"), member(BOB, "join", BOB)])}))
    written: list[list[str]] = []
    real_save = store.save_rooms

    def spy(position: Any, rooms: Any, gone: Any = (), replace_all: bool = False) -> None:
        rooms = list(rooms)
        written.append([room.room_id for room in rooms])
        real_save(position, rooms, gone, replace_all)

    store.save_rooms = spy  # type: ignore[method-assign]
    message = {"type": "m.room.message", "sender": BOB, "event_id": "$hello",
               "origin_server_ts": 2, "content": {"msgtype": "m.text", "body": "hi"}}
    await apply(client, index, sync_body("s2", join={GROUP: joined([], [message])}))
    await apply(client, index, sync_body("s3", join={
        GROUP: joined([], [member(ALICE, "invite", BOB)])}))
    assert written == [[], [GROUP]]
    assert store.load_rooms()[0] == SyncPosition("BOTDEVICE", "s3")
    await client.close()


async def test_a_full_state_sync_replaces_what_was_kept(tmp_path: Path) -> None:
    store = Store(tmp_path / "bot.db")
    client, index, _ = await started(store)
    await apply(client, index, sync_body("s1", join={GROUP: joined([member(BOT, "join")])}))
    await client.close()
    # Another device (a new login): its first sync is full-state and lists only the DM.
    client, index, position = await started(store, device_id="OTHERDEVICE")
    assert position is None and not client.rooms
    await apply(client, index, sync_body("s9", join={
        DM: joined([member(BOT, "join"), member(ALICE, "join", ALICE), ENCRYPTION])}))
    await client.close()

    client, _, position = await started(store, device_id="OTHERDEVICE")
    assert position == "s9" and set(client.rooms) == {DM}
    await client.close()


def invite_from_alice(is_direct: bool = True) -> dict[str, Any]:
    """A new body each time: nio's parsing takes parts out of the dicts it is given."""
    return {"invite_state": {"events": [
        {"type": "m.room.member", "state_key": BOT, "sender": ALICE,
         "content": {"membership": "invite", "is_direct": is_direct}}]}}


async def test_a_pending_invite_is_kept_with_its_inviter_and_the_next_start_resumes(
        tmp_path: Path) -> None:
    """No later sync brings an invite again (resumed, or full-state from nio's position):
    it is kept with who sent it and whether as a DM, for the start to decide it again."""
    store = Store(tmp_path / "bot.db")
    client, index, _ = await started(store)
    await apply(client, index, sync_body("s1", join={GROUP: joined([member(BOT, "join")])},
                                         invite={DM: invite_from_alice()}))
    await client.close()
    client, index, position = await started(store)
    assert position == "s1" and index.resumed and set(client.rooms) == {GROUP}
    (kept,) = index.pending_invites
    assert (kept.room_id, kept.inviter, kept.is_direct) == (DM, ALICE, True)
    assert client.invited_rooms[DM].inviter == ALICE
    # A sync with nothing new for the room keeps the invite as it was.
    await apply(client, index, sync_body("s2", join={GROUP: joined([])}))
    await client.close()
    client, index, position = await started(store)
    assert position == "s2" and [k.inviter for k in index.pending_invites] == [ALICE]
    # Once joined, the invite is no longer pending.
    await apply(client, index, sync_body("s3", join={
        DM: joined([member(BOT, "join"), member(ALICE, "join", ALICE)])}))
    await client.close()
    client, index, position = await started(store)
    assert position == "s3" and set(client.rooms) == {DM, GROUP}
    assert index.pending_invites == [] and DM not in client.invited_rooms
    await client.close()


async def test_a_kept_invite_is_decided_again_on_a_full_state_start_too(tmp_path: Path) -> None:
    store = Store(tmp_path / "bot.db")
    client, index, _ = await started(store)
    await apply(client, index, sync_body("s1", invite={DM: invite_from_alice()}))
    await client.close()
    client, index, position = await started(store, device_id="OTHERDEVICE")
    assert position is None and [k.room_id for k in index.pending_invites] == [DM]
    # the full-state answer (Synapse's, with nio's position: no old invite in it) keeps it
    await apply(client, index, sync_body("s2", join={GROUP: joined([member(BOT, "join")])}))
    await client.close()
    client, index, position = await started(store, device_id="OTHERDEVICE")
    assert position == "s2" and [k.inviter for k in index.pending_invites] == [ALICE]
    await client.close()


async def test_an_invite_kept_before_its_inviter_was_asks_for_the_full_state(
        tmp_path: Path) -> None:
    store = Store(tmp_path / "bot.db")
    store.save_rooms(SyncPosition("BOTDEVICE", "s1"),
                     [KeptRoom(DM, "invite", False, ((ALICE, False), (BOT, True)))])
    client, index, position = await started(store)
    assert position is None and index.pending_invites == []
    await client.close()


async def test_removed_and_invited_again_within_one_sync_is_an_invite(tmp_path: Path) -> None:
    """Synapse puts such a room in ``leave`` and in ``invite``: it is not a room left."""
    store = Store(tmp_path / "bot.db")
    client, index, _ = await started(store)
    await apply(client, index, sync_body("s1", join={GROUP: joined([member(BOT, "join")])}))
    await apply(client, index, sync_body(
        "s2", invite={GROUP: invite_from_alice(is_direct=False)},
        leave={GROUP: {"state": {"events": []}, "timeline": {"events": [
            member(BOT, "leave", ALICE)], "limited": False, "prev_batch": "p"}}}))
    assert GROUP in client.invited_rooms
    await client.close()
    client, index, _ = await started(store)
    assert [(k.room_id, k.inviter) for k in index.pending_invites] == [(GROUP, ALICE)]
    await client.close()


async def test_a_refused_position_is_forgotten_with_the_kept_rooms(tmp_path: Path) -> None:
    store = Store(tmp_path / "bot.db")
    client, index, _ = await started(store)
    await apply(client, index, sync_body("s1", join={GROUP: joined([member(BOT, "join")])}))
    await client.close()
    client, index, position = await started(store)
    assert position == "s1" and client.rooms
    index.refused()
    assert not client.rooms and not index.resumed
    await client.close()
    client, _, position = await started(store)
    assert position is None
    await client.close()


async def test_a_failed_save_is_made_good_by_the_next_one(tmp_path: Path) -> None:
    store = Store(tmp_path / "bot.db")
    client, index, _ = await started(store)
    await apply(client, index, sync_body("s1", join={GROUP: joined([member(BOT, "join")])}))
    real_save = store.save_rooms

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    store.save_rooms = broken  # type: ignore[method-assign]
    await apply(client, index, sync_body("s2", join={DM: joined([member(BOT, "join")])}))
    assert store.load_rooms()[0] is None  # no position that would skip the DM
    store.save_rooms = real_save  # type: ignore[method-assign]
    await apply(client, index, sync_body("s3"))  # a sync with no news saves everything
    await client.close()
    client, _, position = await started(store)
    assert position == "s3" and set(client.rooms) == {DM, GROUP}
    await client.close()


class ResumingClient(SyncSurface):
    """Refuses the first sync's position (Synapse's 400), then answers."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str | None, bool | None]] = []
        self.loaded_sync_token = "s0"  # nio's own, as old as the kept one

    async def sync(self, timeout: int, sync_filter: Any,  # noqa: ASYNC109 (nio's signature)
                   since: str | None = None, full_state: bool | None = None) -> Any:
        self.calls.append((since, full_state))
        if len(self.calls) == 1:
            error = nio.SyncError("Invalid stream token", "M_UNKNOWN")
            error.transport_response = type("Status", (), {"status": 400})()  # type: ignore
            return error
        if len(self.calls) == 3 and self.loop is not None:
            self.loop.stop()
        return sync_body("s2")


@pytest.mark.parametrize(("kept", "first", "nios_after"), [
    ("s1", ("s1", None), "s0"),  # the kept position, refused: full state from nio's own
    (None, (None, True), ""),  # none kept (older data), nio's own refused: no position at all
])
async def test_a_refused_position_falls_back_to_the_full_state(
        kept: str | None, first: tuple[str | None, bool | None], nios_after: str) -> None:
    client, refused = ResumingClient(), []

    async def probe() -> bool:
        return True

    client.loop = SyncLoop(client, Recovery(probe),  # type: ignore[arg-type]
                           resume_from=kept, on_resume_refused=refused.append)
    await client.loop.run()
    assert client.calls == [first, (None, True), (None, None)]
    assert refused == [kept is None]  # only without any position: the initial sync
    assert client.loaded_sync_token == nios_after


class GoneClient(ResumingClient):
    """The homeserver is away at the first try: not a refusal of the position."""

    async def sync(self, timeout: int, sync_filter: Any,  # noqa: ASYNC109 (nio's signature)
                   since: str | None = None, full_state: bool | None = None) -> Any:
        self.calls.append((since, full_state))
        if len(self.calls) == 1:
            raise aiohttp.ClientConnectionError("homeserver gone")
        if len(self.calls) == 2 and self.loop is not None:
            self.loop.stop()
        return sync_body("s2")


async def test_an_unreachable_homeserver_does_not_cost_the_kept_position() -> None:
    client, refused = GoneClient(), []

    async def probe() -> bool:
        return True

    client.loop = SyncLoop(client, Recovery(probe),  # type: ignore[arg-type]
                           resume_from="s1", on_resume_refused=refused.append)
    await client.loop.run()
    assert client.calls == [("s1", None), ("s1", None)]
    assert refused == []
