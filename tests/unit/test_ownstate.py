"""When a sync may leave out the bot's own events: the endpoint rule and the window rule.

The request below ``watch_own_state_changes`` is a stand-in (this is about ordering, not
HTTP); tests/integration/test_bot.py checks the same against a real Synapse.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nio.api import Api

from nerbot.matrix.ownstate import (
    OwnStateWatch,
    QuietSyncOutdated,
    changes_room_state,
    sync_filter_of,
    watch_own_state_changes,
)

TOKEN = "syt_token"
ROOM = "!room:example.org"
USER = "@alice:example.org"


@pytest.mark.parametrize(("method", "path"), [
    Api.room_create(TOKEN, invite=[USER])[:2],
    Api.join(TOKEN, ROOM)[:2],
    Api.join(TOKEN, "#alias:example.org")[:2],
    Api.room_leave(TOKEN, ROOM)[:2],
    Api.room_forget(TOKEN, ROOM)[:2],
    Api.room_invite(TOKEN, ROOM, USER)[:2],
    Api.room_kick(TOKEN, ROOM, USER)[:2],
    Api.room_ban(TOKEN, ROOM, USER)[:2],
    Api.room_unban(TOKEN, ROOM, USER)[:2],
    Api.room_put_state(TOKEN, ROOM, "m.room.topic", {"topic": "t"})[:2],
    Api.room_put_state(TOKEN, ROOM, "m.room.member", {}, state_key=USER)[:2],
    Api.room_redact(TOKEN, ROOM, "$event", "txn")[:2],
    ("POST", "/_matrix/client/v3/knock/%21room%3Aexample.org"),
    ("POST", "/_matrix/client/r0/rooms/%21r%3Ax/upgrade"),
])
def test_requests_that_can_change_room_state(method: str, path: str) -> None:
    assert changes_room_state(method, path.split("?access_token")[0])
    assert changes_room_state(method, path)


@pytest.mark.parametrize(("method", "path"), [
    Api.room_send(TOKEN, ROOM, "m.room.message", {}, "txn")[:2],
    Api.sync(TOKEN, since="s1", timeout=30000, filter="1"),
    Api.keys_query(TOKEN, {USER})[:2],
    Api.to_device(TOKEN, "m.room_key", {}, "txn")[:2],
    Api.room_get_state(TOKEN, ROOM),
    Api.room_read_markers(TOKEN, ROOM, "$e")[:2],
    Api.upload_filter(TOKEN, USER, room={})[:2],
    ("GET", "/_matrix/client/v3/rooms/%21r%3Ax/state/m.room.topic/"),
    ("PUT", "/_matrix/client/v3/rooms/%21r%3Ax/send/m.room.message/state%2Ftxn"),
])
def test_requests_that_cannot(method: str, path: str) -> None:
    assert not changes_room_state(method, path)


def test_sync_filter_is_read_from_the_sync_path_only() -> None:
    assert sync_filter_of(Api.sync(TOKEN, since="s1", timeout=1, filter="12")[1]) == "12"
    assert sync_filter_of(Api.sync(TOKEN, since="s1")[1]) is None
    assert sync_filter_of("/_matrix/client/v3/user/x/filter?filter=12") is None


class FakeClient:
    """Only ``send``: a request answered when the test says so."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.answers: dict[str, asyncio.Future[str]] = {}

    async def send(self, method: str, path: str, *args: Any, **kwargs: Any) -> str:
        self.requests.append((method, path))
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.answers[path] = answer
        return await answer

    def answer(self, path: str, value: str = "ok") -> None:
        self.answers[path].set_result(value)


QUIET = "7"
QUIET_SYNC = Api.sync(TOKEN, since="s1", timeout=30000, filter=QUIET)[1]
NORMAL_SYNC = Api.sync(TOKEN, since="s1", timeout=30000, filter="6")[1]
LEAVE = Api.room_leave(TOKEN, ROOM)[1]


def watched() -> tuple[FakeClient, OwnStateWatch]:
    client = FakeClient()
    watch = OwnStateWatch()
    watch.quiet_filter = QUIET
    watch_own_state_changes(client, watch)
    return client, watch


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def sync(client: FakeClient, path: str) -> asyncio.Task[Any]:
    task = asyncio.ensure_future(client.send("GET", path))
    await settle()
    return task


async def synced(client: FakeClient) -> None:
    """One normal sync, answered: the window every test starts from."""
    first = await sync(client, NORMAL_SYNC)
    client.answer(NORMAL_SYNC)
    await first


async def left(client: FakeClient) -> None:
    """The bot leaves a room (a state change), answered."""
    leave = asyncio.ensure_future(client.send("POST", LEAVE))
    await settle()
    client.answer(LEAVE)
    await leave


async def test_quiet_sync_passes_when_the_bot_changed_no_state() -> None:
    client, watch = watched()
    assert not watch.quiet_allowed(), "no sync yet: nothing to judge the window by"
    await synced(client)
    assert watch.quiet_allowed()
    quiet = await sync(client, QUIET_SYNC)
    client.answer(QUIET_SYNC, "events")
    assert await quiet == "events"


async def test_state_change_during_a_quiet_sync_drops_it_at_once() -> None:
    client, watch = watched()
    await synced(client)
    quiet = await sync(client, QUIET_SYNC)
    leave = asyncio.ensure_future(client.send("POST", LEAVE))
    await settle()
    assert quiet.done(), "the long poll is not waited out"
    with pytest.raises(QuietSyncOutdated):
        await quiet
    assert client.answers[QUIET_SYNC].cancelled(), "the HTTP request itself was cancelled"
    assert not watch.quiet_allowed()
    client.answer(LEAVE)
    await leave
    assert not watch.quiet_allowed(), "the leave falls into the next window: not quiet either"
    await synced(client)  # what the syncer does next
    assert watch.quiet_allowed()


async def test_quiet_sync_after_a_state_change_is_refused_without_a_request() -> None:
    client, _watch = watched()
    await synced(client)
    await left(client)
    sent = len(client.requests)
    with pytest.raises(QuietSyncOutdated):
        await client.send("GET", QUIET_SYNC)
    assert len(client.requests) == sent


async def test_state_change_in_flight_when_the_previous_sync_went_out() -> None:
    client, watch = watched()
    leave = asyncio.ensure_future(client.send("POST", LEAVE))
    await settle()
    first = await sync(client, NORMAL_SYNC)  # sent while the leave is under way
    client.answer(LEAVE)
    await leave
    client.answer(NORMAL_SYNC)
    await first
    assert not watch.quiet_allowed(), "the leave may land after the first sync's window"


async def test_normal_syncs_are_never_refused() -> None:
    client, _watch = watched()
    first = await sync(client, NORMAL_SYNC)
    leave = asyncio.ensure_future(client.send("POST", LEAVE))
    await settle()
    client.answer(LEAVE)
    client.answer(NORMAL_SYNC, "all of it")
    assert await first == "all of it"
    await leave


async def test_errors_of_a_quiet_sync_are_passed_on() -> None:
    client, _watch = watched()
    await synced(client)
    quiet = await sync(client, QUIET_SYNC)
    client.answers[QUIET_SYNC].set_exception(TimeoutError("slow"))
    with pytest.raises(TimeoutError):
        await quiet


async def test_answer_and_state_change_together_still_refused() -> None:
    client, _watch = watched()
    await synced(client)
    quiet = await sync(client, QUIET_SYNC)
    client.answer(QUIET_SYNC, "window may hide the leave")
    leave = asyncio.ensure_future(client.send("POST", LEAVE))
    with pytest.raises(QuietSyncOutdated):
        await quiet
    client.answer(LEAVE)
    await leave


def test_quiet_filter_leaves_out_only_the_bots_own_timeline_events() -> None:
    from nerbot.matrix.syncer import SYNC_FILTER, quiet_filter
    quiet = quiet_filter("@bot:example.org")
    assert quiet["room"]["timeline"] == {"not_senders": ["@bot:example.org"]}
    assert quiet["presence"] == SYNC_FILTER["presence"]
    assert quiet["room"]["ephemeral"] == SYNC_FILTER["room"]["ephemeral"]
    assert "timeline" not in SYNC_FILTER["room"], "the normal filter is unchanged"
