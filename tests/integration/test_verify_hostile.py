"""Hostile to-device verification requests against the real bot on a real Synapse.

Each request from the issue is sent raw (``PUT /sendToDevice``, through a nio peer's
``to_device``) by a person who shares no room with the bot and by one who does; then a valid
request, which the bot must answer with ready. Everything that did not happen is checked after
something that must follow it happened (the ready, a handler finishing, a log line), never after
a bare sleep. Key queries are counted at the verifier's HTTP seam with a counting proxy.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import nio
import pytest
from botdm import open_dm

from nerbot.app import NerbotApp
from nerbot.domain import verification as v
from nerbot.ids import UserId
from nerbot.localdev.peer import E2EEPeer

pytestmark = pytest.mark.timeout(240)
MINUTE = 60_000


class Clock:
    """Real time plus an offset the test can advance (to refill a sender's limit)."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.offset_ms


class CountingHttp:
    """The verifier's ``MatrixHttp``, counting key queries on the way through."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.key_queries = 0

    async def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        if path.endswith("/keys/query"):
            self.key_queries += 1
        return await self.inner.request(method, path, body, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Handled:
    """Wraps the verifier's ``_handle`` (what intake spawns for an event that passed it)."""

    def __init__(self, bot: NerbotApp) -> None:
        assert bot.verifier is not None
        self.real = bot.verifier._handle
        self.started = self.finished = 0
        bot.verifier._handle = self  # type: ignore[method-assign]

    async def __call__(self, *args: Any) -> None:
        self.started += 1
        try:
            await self.real(*args)
        finally:
            self.finished += 1


class Peer:
    """A nio peer that sends raw verification to-device events and keeps what comes back."""

    def __init__(self, peer: E2EEPeer, bot: NerbotApp) -> None:
        self.peer = peer
        self.bot_id = bot.config.matrix.user_id
        assert bot.session is not None
        self.bot_device = bot.session.device_id
        self.received: list[dict[str, Any]] = []
        peer.client.add_to_device_callback(self._on_to_device, (nio.ToDeviceEvent,))

    async def _on_to_device(self, event: Any) -> None:
        source = getattr(event, "source", {}) or {}
        if str(source.get("type", "")).startswith("m.key.verification."):
            self.received.append(source)

    @property
    def user_id(self) -> str:
        return self.peer.user_id

    async def send(self, event_type: str, content: Any) -> None:
        response = await self.peer.client.to_device(
            nio.ToDeviceMessage(event_type, self.bot_id, self.bot_device, content))
        assert isinstance(response, nio.ToDeviceResponse), response

    def request(self, txn: Any = None, **changes: Any) -> dict[str, Any]:
        content = {"from_device": self.peer.device_id, "methods": [v.SAS_V1],
                   "timestamp": int(time.time() * 1000),
                   "transaction_id": txn or uuid.uuid4().hex, **changes}
        return {k: val for k, val in content.items() if val is not None}

    async def wait_for(self, event_type: str, txn: str, seconds: float = 30) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            for event in self.received:
                if event["type"] == event_type and \
                        event["content"].get("transaction_id") == txn:
                    return event
            assert loop.time() < deadline, f"no {event_type} for {txn}: {self.received}"
            await asyncio.sleep(0.05)

    def hostile(self) -> dict[str, Any]:
        """The issue's requests, each with its own transaction ID (where it has one)."""
        now = int(time.time() * 1000)
        return {
            "empty": {},
            "only a transaction ID": {"transaction_id": uuid.uuid4().hex},
            "methods missing": {k: val for k, val in self.request().items()
                                if k != "methods"},
            "methods not a list": self.request(methods="m.sas.v1"),
            "transaction ID not a string": self.request(transaction_id=12345),
            "from_device of 10,000 characters": self.request(from_device="D" * 10_000),
            "an hour old": self.request(timestamp=now - 60 * MINUTE),
            "an hour ahead": self.request(timestamp=now + 60 * MINUTE),
        }


async def until(condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.05)


async def joined_rooms(bot: NerbotApp) -> set[str]:
    assert bot.http is not None
    _, body = await bot.http.request("GET", "/_matrix/client/v3/joined_rooms")
    return set(body["joined_rooms"])


def loud(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What verification and DM code logged above DEBUG."""
    return [r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG
            and r.name in ("nerbot.matrix.verification", "nerbot.matrix.transport")]


@pytest.mark.parametrize("shares_room", [False, True], ids=["no shared room", "shared room"])
async def test_hostile_requests_leave_no_trace_and_a_valid_one_is_answered(
    start_bot: Callable[..., Any], make_user: Any, make_peer: Any,
    caplog: pytest.LogCaptureFixture, shares_room: bool,
) -> None:
    caplog.set_level(logging.DEBUG, logger="nerbot")
    bot: NerbotApp = await start_bot()
    assert bot.session is not None and bot.store is not None and bot.verifier is not None
    counting = CountingHttp(bot.verifier.http)
    bot.verifier.http = counting  # type: ignore[assignment]
    user = make_user("hostile")
    peer = Peer(await make_peer(user), bot)
    if shares_room:  # a group room the bot opened, not a DM
        room = await bot.session.client.room_create(invite=[user.user_id])
        assert isinstance(room, nio.RoomCreateResponse)
        await peer.peer.wait_for_join(room.room_id, user.user_id)
    rooms_before, known_before = await joined_rooms(bot), set(bot.session.client.rooms)
    assert len(rooms_before) == int(shares_room)

    for content in peer.hostile().values():
        await peer.send(v.REQUEST, content)
    valid = peer.request()
    await peer.send(v.REQUEST, valid)
    # The ready follows the hostile requests: each of them was through intake before it.
    await peer.wait_for(v.READY, valid["transaction_id"])

    assert [e["type"] for e in peer.received] == [v.READY]  # no cancel, no answer to them
    (record,) = bot.store.verifications(UserId(user.user_id))
    assert (record["txn"], record["result"]) == (valid["transaction_id"], "pending")
    assert counting.key_queries == 1  # the valid request's device check, nothing else
    assert loud(caplog) == [f"Verification {valid['transaction_id']} with {user.user_id} "
                            "(to_device, incoming)"]

    # They cancel: recorded; the bot has no DM with them and opens none (it says so at DEBUG).
    await peer.send(v.CANCEL, {"transaction_id": valid["transaction_id"], "code": "m.user",
                               "reason": "changed my mind"})
    await until(lambda: any(f"No DM with {user.user_id}" in r.getMessage()
                            for r in caplog.records), "the bot never decided about a DM")
    (record,) = bot.store.verifications(UserId(user.user_id))
    assert (record["result"], record["cancel_code"]) == ("cancelled", "m.user")
    assert await joined_rooms(bot) == rooms_before
    assert set(bot.session.client.rooms) == known_before
    assert bot.store.get_dm_room(UserId(user.user_id)) is None
    assert len(loud(caplog)) == 1


async def test_a_flood_costs_a_counter_not_queries_rooms_or_rows(
    start_bot: Callable[..., Any], make_user: Any, make_peer: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="nerbot")
    clock = Clock()
    bot: NerbotApp = await start_bot(clock=clock)
    assert bot.session is not None and bot.store is not None and bot.verifier is not None
    limiter = bot.verifier.limiter
    counting = CountingHttp(bot.verifier.http)
    bot.verifier.http = counting  # type: ignore[assignment]
    handled = Handled(bot)
    user = make_user("flood")
    peer = Peer(await make_peer(user), bot)
    other = Peer(await make_peer(make_user("other")), bot)
    rooms_before = await joined_rooms(bot)

    # 500 events: the hostile requests, well-formed requests from a device the server
    # does not know (each one let through costs a key query), and events of no transaction
    # (each one let through costs an m.unknown_transaction cancel).
    def flood() -> Any:
        while True:
            yield from peer.hostile().items()
            yield "ghost device", peer.request(from_device="GHOST")
            yield "unknown transaction", {"transaction_id": uuid.uuid4().hex, "key": "k" * 43}

    started = time.monotonic()
    for name, content in itertools.islice(flood(), 500):
        await peer.send(v.KEY if name == "unknown transaction" else v.REQUEST, content)
    # Someone else's request, sent after the flood, is answered: the bot's to-device stream is
    # in order, so every event of the flood went through intake before it.
    sentinel = other.request()
    await other.send(v.REQUEST, sentinel)
    await other.wait_for(v.READY, sentinel["transaction_id"])
    flood_minutes = (time.monotonic() - started) / 60
    admitted_at_most = limiter.burst + int(limiter.per_minute * flood_minutes) + 1

    # The flooder's limit refills with time (the bot's clock, moved on): their valid request
    # is answered again.
    clock.offset_ms = 2 * MINUTE
    valid = peer.request()
    await peer.send(v.REQUEST, valid)
    await peer.wait_for(v.READY, valid["transaction_id"])
    await until(lambda: handled.finished == handled.started, "handlers still running")

    assert handled.started <= admitted_at_most + 2  # the flood's share, and the two valid ones
    assert 2 <= counting.key_queries <= admitted_at_most + 2
    assert [r["txn"] for r in bot.store.verifications(UserId(user.user_id))] == \
        [valid["transaction_id"]]  # no row from the flood
    assert len(bot.store.verifications()) == 2
    cancels = [e for e in peer.received if e["type"] == v.CANCEL]
    assert len(cancels) <= admitted_at_most
    assert {e["content"]["code"] for e in cancels} <= {v.UNKNOWN_TRANSACTION}
    assert await joined_rooms(bot) == rooms_before == set()
    assert loud(caplog) == [
        f"Verification {sentinel['transaction_id']} with {other.user_id} (to_device, incoming)",
        f"Verification {valid['transaction_id']} with {user.user_id} (to_device, incoming)"]
    assert len(limiter) <= 2  # two senders tracked, whatever the flood


async def test_verify_an_unknown_device_starts_nothing(
    start_bot: Callable[..., Any], make_user: Any, make_peer: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="nerbot")
    bot: NerbotApp = await start_bot(language="en")
    assert bot.store is not None and bot.verifier is not None
    counting = CountingHttp(bot.verifier.http)
    bot.verifier.http = counting  # type: ignore[assignment]
    user = make_user("typo")
    peer = Peer(await make_peer(user), bot)
    room_id = await open_dm(peer.peer, bot)

    reply = await peer.peer.ask(room_id, "!verify NO_SUCH_DEVICE", sender=peer.bot_id)
    assert "cannot find a session" in reply and "NO_SUCH_DEVICE" in reply
    assert bot.store.verifications() == [] and not bot.verifier.active
    assert counting.key_queries == 1 and peer.received == []
    assert not [m for m in loud(caplog) if "Verification" in m]

    # the same command with their real session starts one: request sent, one row
    await peer.peer.ask(room_id, f"!verify {peer.peer.device_id}", sender=peer.bot_id)
    (record,) = bot.store.verifications()
    assert record["device_id"] == peer.peer.device_id and record["direction"] == "outgoing"
    request = await peer.wait_for(v.REQUEST, str(record["txn"]))
    assert request["content"]["from_device"] == bot.verifier.device_id
