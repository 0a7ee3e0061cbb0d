"""Messages a sync left out of a room (its timeline ``limited``) are fetched and answered in
order, before the sync's own; real nio parses every body, only the homeserver is a fake."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import nio

from nerbot.matrix import gaps
from nerbot.matrix.events import EventRouter
from nerbot.runner import TaskRunner
from nerbot.store import Store

BOT = "@bot:hs"
ALICE = "@alice:hs"
ROOM = "!busy:hs"


def text(n: int) -> dict[str, Any]:
    return {"type": "m.room.message", "sender": ALICE, "event_id": f"$e{n}",
            "origin_server_ts": 1_000 + n, "content": {"msgtype": "m.text", "body": f"m{n}"}}


class Homeserver:
    """``/messages`` over events 1..``total``, newest first, as Synapse pages them back."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.asked: list[tuple[str | None, str | None]] = []
        self.rooms: dict[str, Any] = {}
        self.olm = None
        self.user_id = BOT

    async def room_messages(self, room_id: str, start: str | None = None,
                            end: str | None = None, limit: int = 10, **_: Any
                            ) -> nio.RoomMessagesResponse | nio.RoomMessagesError:
        self.asked.append((start, end))
        # "t<n>": a page token below event n; a sync position ("s…") stands above them all
        top = int(str(start)[1:]) if str(start).startswith("t") else self.total
        bottom = max(0, top - limit)
        chunk = [text(n) for n in range(top, bottom, -1)]
        body = {"chunk": chunk, "start": start, "end": f"t{bottom}"} if chunk else {
            "chunk": [], "start": start}
        response = nio.RoomMessagesResponse.from_dict(body, room_id)
        assert isinstance(response, nio.RoomMessagesResponse)
        return response


async def test_missed_events_come_oldest_first_across_pages() -> None:
    server = Homeserver(250)
    events = await gaps.missed_events(server, ROOM, "t250", "s0")  # type: ignore[arg-type]
    assert [e.body for e in events] == [f"m{n}" for n in range(1, 251)]  # type: ignore[attr-defined]
    assert server.asked == [("t250", "s0"), ("t150", "s0"), ("t50", "s0"), ("t0", "s0")]


async def test_a_gap_is_fetched_no_further_than_its_limit(monkeypatch: Any) -> None:
    monkeypatch.setattr(gaps, "GAP_MAX_EVENTS", 150)
    events = await gaps.missed_events(Homeserver(1_000), ROOM, "t1000", "s0")  # type: ignore[arg-type]
    assert len(events) == 200 and events[-1].body == "m1000"  # type: ignore[attr-defined]


def sync(limited: bool) -> nio.SyncResponse:
    body = {"next_batch": "s2", "rooms": {"invite": {}, "leave": {}, "join": {ROOM: {
        "state": {"events": []}, "ephemeral": {"events": []}, "account_data": {"events": []},
        "timeline": {"events": [text(n) for n in (11, 12)], "limited": limited,
                     "prev_batch": "t10"}}}},
        "to_device": {"events": []}, "presence": {"events": []}, "account_data": {"events": []},
        "device_lists": {"changed": [], "left": []}}
    response = nio.SyncResponse.from_dict(body)
    assert isinstance(response, nio.SyncResponse)
    return response


def router(server: Homeserver, store: Store, runner: TaskRunner, bodies: list[str]
           ) -> EventRouter:
    async def on_message(room: str, sender: str, event_id: str, body: str, *_: Any) -> None:
        bodies.append(body)

    clock = SimpleNamespace(now_ms=lambda: 5_000)
    return EventRouter(server, store, runner, clock, frozenset(), 5,  # type: ignore[arg-type]
                       on_message=on_message, on_joined=None,  # type: ignore[arg-type]
                       on_undecryptable=None, not_before_ms=0)  # type: ignore[arg-type]



async def feed(events: EventRouter, response: nio.SyncResponse) -> None:
    """As nio does: the event callbacks for the timeline, then the response callback."""
    room = nio.MatrixRoom(ROOM, BOT)
    for event in response.rooms.join[ROOM].timeline.events:
        await events._on_text(room, event)  # type: ignore[arg-type]
    await events._on_sync(response)

async def answered(limited: bool, since: str | None) -> list[str]:
    store, runner, bodies = Store(":memory:"), TaskRunner(), []
    events = router(Homeserver(10), store, runner, bodies)
    events.sync_since = lambda: since
    await feed(events, sync(limited))
    for _ in range(3):  # the gap's task, then the answers it queued
        await runner.settle(5)
    assert store.kept_gaps() == []  # filled: nothing for the next start
    return bodies


async def test_a_cut_short_timeline_is_answered_in_the_order_it_was_sent() -> None:
    assert await answered(limited=True, since="s1") == [f"m{n}" for n in range(1, 13)]
    assert await answered(limited=False, since="s1") == ["m11", "m12"]
    # an initial sync (no position) has no gap: what came before it is not for the bot
    assert await answered(limited=True, since=None) == ["m11", "m12"]


class SlowHomeserver(Homeserver):
    """``/messages`` answers only when told to."""

    def __init__(self, total: int) -> None:
        super().__init__(total)
        self.go = asyncio.Event()

    async def room_messages(self, room_id: str, start: str | None = None,
                            end: str | None = None, limit: int = 10, **kw: Any
                            ) -> nio.RoomMessagesResponse | nio.RoomMessagesError:
        await self.go.wait()
        return await super().room_messages(room_id, start, end, limit, **kw)


async def test_what_comes_while_a_gap_is_fetched_waits_behind_it() -> None:
    """The next sync's message, and one decrypted late, come after the gap's."""
    server, runner, bodies = SlowHomeserver(10), TaskRunner(), []
    events = router(server, Store(":memory:"), runner, bodies)
    events.sync_since = lambda: "s1"
    room = nio.MatrixRoom(ROOM, BOT)
    await feed(events, sync(limited=True))
    await asyncio.sleep(0)  # the gap's /messages is on its way
    later = nio.RoomMessageText.from_dict(text(13))
    await events._on_text(room, later)  # type: ignore[arg-type]
    await events._on_sync(sync(limited=False))
    await events._late_decrypted(ROOM, nio.RoomMessageText.from_dict(text(14)))
    server.go.set()
    for _ in range(3):
        await runner.settle(5)
    assert bodies == [f"m{n}" for n in range(1, 15)]


async def test_a_gap_a_stop_left_unfilled_is_fetched_again_at_the_next_start() -> None:
    """The position moved past the sync at once; its room's messages were only in the gap
    task when the bot stopped. Kept, the next start fetches all of them (sync's own too)."""
    store, runner, bodies = Store(":memory:"), TaskRunner(), []
    events = router(SlowHomeserver(12), store, runner, bodies)  # never answers: the stop
    events.sync_since = lambda: "s1"
    await feed(events, sync(limited=True))
    assert store.kept_gaps() == [(ROOM, "s1", "s2")]
    await runner.stop()
    assert bodies == []

    runner, server = TaskRunner(), Homeserver(12)
    restarted = router(server, store, runner, bodies)
    restarted.resume_gaps()
    for _ in range(3):
        await runner.settle(5)
    assert bodies == [f"m{n}" for n in range(1, 13)]
    assert server.asked[0] == ("s2", "s1") and store.kept_gaps() == []
