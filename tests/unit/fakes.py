"""Test doubles shared by the unit tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import nio

from nerbot.domain.admin_trust import AdminCheck
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


def admins_trusted(*admins: str) -> Callable[[UserId, str | None], Awaitable[AdminCheck]]:
    """The router's admin check as if every session of these admins were cross-signed."""
    async def check(user_id: UserId, sender_key: str | None) -> AdminCheck:
        return AdminCheck.TRUSTED if user_id in admins else AdminCheck.NOT_ADMIN
    return check


class SyncSurface:
    """The part of a nio client the sync loop uses, minus ``sync`` (each test's own); the
    loop under test is in ``loop``, for a ``sync`` that ends it."""

    def __init__(self) -> None:
        self.callbacks: list[tuple[Any, Any]] = []
        self.outgoing_to_device_messages: list[Any] = []
        self.should_upload_keys = self.should_query_keys = self.should_claim_keys = False
        self.loaded_sync_token = ""
        self.next_batch: str | None = None
        self.synced = asyncio.Event()
        self.loop: Any = None

    def add_response_callback(self, callback: Any, kind: Any) -> None:
        self.callbacks.append((callback, kind))

    async def upload_filter(self, **_: Any) -> Any:
        return nio.UploadFilterResponse("F1")

    async def run_response_callbacks(self, responses: list[Any]) -> None:
        for response in responses:
            for callback, kind in self.callbacks:
                if isinstance(response, kind):
                    await callback(response)


class SetClock:
    """A clock that reads what the test set."""

    def __init__(self, now: int) -> None:
        self.now = now

    def now_ms(self) -> int:
        return self.now
