"""The interfaces domain and command code use to act on the world; matrix/ implements them."""

from __future__ import annotations

from typing import Protocol

from nerbot.ids import RoomId, UserId


class Messenger(Protocol):
    """Sends messages. Implemented on nio in ``nerbot.matrix.transport``."""

    async def send_notice(self, room_id: RoomId, markdown: str,
                          txn_id: str | None = None) -> str | None:
        """Send a notice (rendered from markdown) to a room; return its event ID.

        A given ``txn_id`` makes a repeat of the same send a no-op on the homeserver."""
        ...

    async def send_dm(self, user_id: UserId, markdown: str,
                      txn_id: str | None = None) -> RoomId:
        """Send a notice to the user's encrypted DM, opening (or reusing) it."""
        ...


class Clock(Protocol):
    """Wall-clock time in milliseconds; injected so tests control time."""

    def now_ms(self) -> int: ...
