"""The sync path shims: the bot's own messages never reach nio; state always does."""

from __future__ import annotations

import copy
from typing import Any

import nio
import pytest

from nerbot.matrix.httpfix import drop_own_echoes, skip_own_echoes_in_syncs

BOT = "@bot:example.org"
ALICE = "@alice:example.org"


def message(sender: str, event_id: str, body: str = "hi") -> dict[str, Any]:
    return {"type": "m.room.message", "sender": sender, "event_id": event_id,
            "origin_server_ts": 1, "content": {"msgtype": "m.text", "body": body}}


def member(sender: str, state_key: str, event_id: str) -> dict[str, Any]:
    return {"type": "m.room.member", "sender": sender, "state_key": state_key,
            "event_id": event_id, "origin_server_ts": 1, "content": {"membership": "join"}}


def sync_body(*events: dict[str, Any]) -> dict[str, Any]:
    return {"next_batch": "s2", "rooms": {"join": {"!r:example.org": {
        "timeline": {"events": list(events), "limited": False, "prev_batch": "p1"},
        "state": {"events": []}}}}}


def test_own_messages_go_and_everything_else_stays() -> None:
    body = sync_body(message(BOT, "$own"), message(ALICE, "$theirs"),
                     member(BOT, BOT, "$own-join"), member(BOT, ALICE, "$invite-by-bot"),
                     {**message(BOT, "$own-encrypted"), "type": "m.room.encrypted"})
    assert drop_own_echoes(body, BOT) == 2
    kept = [e["event_id"] for e in body["rooms"]["join"]["!r:example.org"]["timeline"]["events"]]
    assert kept == ["$theirs", "$own-join", "$invite-by-bot"]


@pytest.mark.parametrize("body", [
    {}, {"rooms": None}, {"rooms": {"join": []}}, {"rooms": {"join": {"!r": None}}},
    {"rooms": {"join": {"!r": {"timeline": None}}}},
    {"rooms": {"join": {"!r": {"timeline": {"events": "x"}}}}},
    {"rooms": {"join": {"!r": {"timeline": {"events": [None, 3, "x"]}}}}},
])
def test_malformed_bodies_are_left_alone(body: dict[str, Any]) -> None:
    before = copy.deepcopy(body)
    assert drop_own_echoes(body, BOT) == 0
    assert body == before


class FakeTransportResponse:
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        self.content_type = "application/json"
        self.content_disposition = None

    async def json(self) -> dict[str, Any]:
        return self.body


async def test_a_client_with_the_shim_never_sees_its_own_messages() -> None:
    client = nio.AsyncClient("https://example.org", BOT)
    client.user_id = BOT  # what login sets
    try:
        skip_own_echoes_in_syncs(client)
        transport = FakeTransportResponse(200, sync_body(message(BOT, "$own"),
                                                         message(ALICE, "$theirs")))
        response = await client.create_matrix_response(nio.SyncResponse, transport)
        assert isinstance(response, nio.SyncResponse)
        events = response.rooms.join["!r:example.org"].timeline.events
        assert [e.event_id for e in events] == ["$theirs"]
        assert response.transport_response is transport
        # anything but a successful sync goes through nio unchanged
        error = await client.create_matrix_response(
            nio.SyncResponse, FakeTransportResponse(500, {"errcode": "M_UNKNOWN",
                                                          "error": "boom"}))
        assert isinstance(error, nio.SyncError)
        whoami = await client.create_matrix_response(
            nio.WhoamiResponse, FakeTransportResponse(200, {"user_id": BOT}))
        assert isinstance(whoami, nio.WhoamiResponse)
    finally:
        await client.close()
