"""Holding undecryptable messages: late keys decrypt them, expiry gives one notice per grace."""

from __future__ import annotations

from typing import Any

import nio

from nerbot.matrix.undecryptable import UndecryptableHold


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def now_ms(self) -> int:
        return self.now


class FakeClient:
    """Only what the hold uses: decrypt_event and request_room_key."""

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.requested: list[str] = []

    def decrypt_event(self, event: nio.MegolmEvent) -> nio.Event:
        if event.session_id not in self.keys:
            raise nio.EncryptionError("no session")
        return nio.RoomMessageText.from_dict({
            "event_id": event.event_id, "sender": event.sender, "origin_server_ts": 1,
            "type": "m.room.message", "content": {"msgtype": "m.text", "body": "!help"}})

    async def request_room_key(self, event: nio.MegolmEvent) -> None:
        if event.session_id in self.requested:
            raise nio.LocalProtocolError("already requested")
        self.requested.append(event.session_id)


def megolm(event_id: str, session_id: str, sender: str = "@a:hs") -> nio.MegolmEvent:
    return nio.MegolmEvent.from_dict({
        "event_id": event_id, "sender": sender, "origin_server_ts": 1,
        "type": "m.room.encrypted",
        "content": {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x", "device_id": "D",
                    "sender_key": "k", "session_id": session_id}})


def make_hold() -> tuple[UndecryptableHold, FakeClient, FakeClock, list[Any], list[Any]]:
    client, clock = FakeClient(), FakeClock()
    decrypted: list[Any] = []
    gave_up: list[Any] = []

    async def on_decrypted(room_id: str, event: nio.Event) -> None:
        decrypted.append((room_id, event.event_id))

    async def on_give_up(room_id: str, sender: str) -> None:
        gave_up.append((room_id, sender))

    hold = UndecryptableHold(client, clock, 30, on_decrypted, on_give_up)  # type: ignore[arg-type]
    return hold, client, clock, decrypted, gave_up


async def test_late_key_decrypts_held_event() -> None:
    hold, client, clock, decrypted, gave_up = make_hold()
    await hold.hold("!r", megolm("$1", "s1"))
    assert client.requested == ["s1"]
    await hold.retry()
    assert decrypted == [] and len(hold) == 1
    client.keys.add("s1")
    clock.now += 5_000
    await hold.retry()
    assert decrypted == [("!r", "$1")] and gave_up == [] and len(hold) == 0


async def test_expiry_gives_up_once_per_sender_and_room() -> None:
    hold, client, clock, decrypted, gave_up = make_hold()
    await hold.hold("!r", megolm("$1", "s1"))
    await hold.hold("!r", megolm("$2", "s1"))  # same session: key requested once
    await hold.hold("!r", megolm("$1", "s1"))  # same event twice: held once
    assert client.requested == ["s1"] and len(hold) == 2
    clock.now += 29_999
    await hold.retry()
    assert gave_up == []
    clock.now += 1
    await hold.retry()
    assert gave_up == [("!r", "@a:hs")] and len(hold) == 0 and decrypted == []


async def test_other_senders_get_their_own_notice() -> None:
    hold, _client, clock, _decrypted, gave_up = make_hold()
    await hold.hold("!r", megolm("$1", "s1", "@a:hs"))
    await hold.hold("!r", megolm("$2", "s2", "@b:hs"))
    clock.now += 30_000
    await hold.retry()
    assert sorted(gave_up) == [("!r", "@a:hs"), ("!r", "@b:hs")]
