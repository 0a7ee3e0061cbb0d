"""Messages the bot cannot decrypt yet: held, retried when keys arrive, answered after a grace.

Room keys often arrive a moment after the message (another sync, a forwarded key), so failing
at once would tell people "I could not read you" for no reason. Each held event is retried on
every room-key arrival and periodically; only when the grace period ends does the sender get a
short, localized notice (at most one per sender and room per grace period).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nio

from nerbot.ports import Clock

logger = logging.getLogger(__name__)


@dataclass
class HeldEvent:
    room_id: str
    event: nio.MegolmEvent
    deadline_ms: int


class UndecryptableHold:
    """Holds undecryptable ``MegolmEvent`` s until their key arrives or the grace period ends."""

    def __init__(
        self,
        client: nio.AsyncClient,
        clock: Clock,
        grace_seconds: int,
        on_decrypted: Callable[[str, nio.Event], Awaitable[None]],
        on_give_up: Callable[[str, str], Awaitable[None]],
    ) -> None:
        self.client = client
        self.clock = clock
        self.grace_ms = grace_seconds * 1000
        self.on_decrypted = on_decrypted
        self.on_give_up = on_give_up
        self._held: dict[str, HeldEvent] = {}
        self._last_notice: dict[tuple[str, str], int] = {}

    def __len__(self) -> int:
        return len(self._held)

    async def hold(self, room_id: str, event: nio.MegolmEvent) -> None:
        if event.event_id in self._held:
            return
        self._held[event.event_id] = HeldEvent(room_id, event, self.clock.now_ms() + self.grace_ms)
        logger.info("Holding undecryptable event %s from %s in %s (session %s)",
                    event.event_id, event.sender, room_id, event.session_id)
        try:
            await self.client.request_room_key(event)
        except nio.LocalProtocolError:
            pass  # already requested for this session
        except Exception:
            logger.warning("Room key request for %s failed", event.event_id, exc_info=True)

    async def retry(self) -> None:
        """Try every held event again; hand decrypted ones on; give up on expired ones."""
        now = self.clock.now_ms()
        for event_id, held in list(self._held.items()):
            decrypted: nio.Event | None = None
            try:
                result = self.client.decrypt_event(held.event)
                if isinstance(result, nio.Event):
                    decrypted = result
            except nio.EncryptionError:
                decrypted = None
            if decrypted is not None:
                del self._held[event_id]
                logger.info("Late room key arrived; decrypted %s", event_id)
                await self.on_decrypted(held.room_id, decrypted)
            elif now >= held.deadline_ms:
                del self._held[event_id]
                await self._give_up(held, now)

    async def _give_up(self, held: HeldEvent, now: int) -> None:
        key = (held.room_id, held.event.sender)
        logger.warning("Could not decrypt %s from %s within the grace period",
                       held.event.event_id, held.event.sender)
        last = self._last_notice.get(key)
        if last is not None and now - last < self.grace_ms:
            return
        self._last_notice[key] = now
        await self.on_give_up(held.room_id, held.event.sender)
