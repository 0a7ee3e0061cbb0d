"""Test doubles shared by the unit tests."""

from __future__ import annotations

from nerbot.ids import RoomId, UserId


class DmRecorder:
    """A ``Messenger`` that keeps every DM's text and sends nothing."""

    def __init__(self) -> None:
        self.dms: list[str] = []

    async def send_notice(self, room_id: RoomId, markdown: str,
                          txn_id: str | None = None) -> str | None:
        return None

    async def send_dm(self, user_id: UserId, markdown: str,
                      txn_id: str | None = None) -> RoomId:
        self.dms.append(markdown)
        return RoomId("!dm:hs")


class RecordingMessenger:
    """A ``Messenger`` that records every message as (room or "dm:<user>", text)."""

    def __init__(self, dm_room: str = "!dm:localhost") -> None:
        self.sent: list[tuple[str, str]] = []
        self.dm_room = dm_room

    async def send_notice(self, room_id: RoomId, markdown: str,
                          txn_id: str | None = None) -> str | None:
        self.sent.append((room_id, markdown))
        return "$sent"

    async def send_dm(self, user_id: UserId, markdown: str,
                      txn_id: str | None = None) -> RoomId:
        self.sent.append((f"dm:{user_id}", markdown))
        return RoomId(self.dm_room)
