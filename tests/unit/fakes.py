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
