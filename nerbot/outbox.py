"""Deliver recorded messages exactly once, at a bounded rate.

Reminders and alerts are first written to the ``outbox`` table (with a deterministic
transaction ID) in the same transaction as the state change that decided them; this module
sends what is pending. The room is pinned in the row before each send, so a send interrupted by
a crash is repeated into the same room with the same transaction ID and the homeserver returns
the first event instead of storing a second. A few messages are in flight at once (opening a
DM room is slow), their sends paced at the configured ceiling; nio waits out a 429 with the
server's ``retry_after_ms``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from nerbot.errors import NerbotError
from nerbot.ids import RoomId, UserId
from nerbot.matrix.reachability import UNREACHABLE_ERRORS
from nerbot.metrics import BotMetrics
from nerbot.store import OutboxMessage, Store

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
# Kinds recorded with their room (the admin room's alarms); every other kind goes to the DM of
# the person it is about.
ROOM_KINDS = frozenset({"alarm"})
# Messages in flight at once: opening a DM room takes ~0.4 s on Synapse, so one at a time
# would cap delivery near 2/s whatever the ceiling; the pacer still bounds the send rate.
WORKERS = 8


class DmTransport(Protocol):
    def dm_is_usable(self, room_id: RoomId, user_id: UserId) -> bool: ...

    async def ensure_dm(self, user_id: UserId) -> RoomId: ...

    async def send_notice(self, room_id: RoomId, markdown_text: str,
                          txn_id: str | None = None) -> str | None: ...


@dataclass
class DeliveryStats:
    sent: int = 0
    failed: int = 0
    withdrawn: int = 0  # no longer wanted when their turn came (``still_wanted``)
    seconds: float = 0.0


class Pacer:
    """At most ``per_minute`` sends per minute, evenly spaced (no bursts to trip limits)."""

    def __init__(self, per_minute: int, now: Callable[[], float]) -> None:
        self.interval = 60.0 / per_minute
        self.now = now
        self._next = 0.0

    def delay(self) -> float:
        """Seconds to wait before the next send, and book that slot."""
        now = self.now()
        slot = max(now, self._next)
        self._next = slot + self.interval
        return slot - now


class OutboxSender:
    """Sends pending outbox messages; one delivery run at a time."""

    def __init__(self, store: Store, transport: DmTransport, now_ms: Callable[[], int],
                 per_minute: int, metrics: BotMetrics | None = None,
                 held_kinds: Callable[[], frozenset[str]] = frozenset) -> None:
        self.store = store
        # Kinds that must wait now (reminders in quiet hours): they stay pending, untried, and
        # go out at a later run; messages of other kinds queued behind them are not held up.
        self.held_kinds = held_kinds
        # Asked when a message's turn comes: False withdraws it (a reminder about something
        # fixed while it waited). Set by the app once the reminder service exists.
        self.still_wanted: Callable[[OutboxMessage], Awaitable[bool]] | None = None
        self.metrics = metrics
        self.transport = transport
        self.now_ms = now_ms
        self.pacer = Pacer(per_minute, lambda: asyncio.get_running_loop().time())
        self._lock = asyncio.Lock()

    async def deliver(self) -> DeliveryStats:
        """Send everything pending, each message tried once per run (failures wait for the
        next run instead of spinning); ``WORKERS`` in flight, starts paced at the ceiling."""
        stats = DeliveryStats()
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with self._lock:
            tried: set[str] = set()
            while True:
                batch = [m for m in self.store.pending_messages(limit=500,
                                                                skip_kinds=self.held_kinds())
                         if m.key not in tried]
                if not batch:
                    break
                tried.update(m.key for m in batch)
                queue: asyncio.Queue[OutboxMessage] = asyncio.Queue()
                for message in batch:
                    queue.put_nowait(message)
                await asyncio.gather(*(self._work(queue, stats)
                                       for _ in range(min(WORKERS, len(batch)))))
        stats.seconds = loop.time() - started
        if stats.sent or stats.failed or stats.withdrawn:
            logger.info("Outbox: %d sent, %d failed, %d withdrawn in %.1f s", stats.sent,
                        stats.failed, stats.withdrawn, stats.seconds)
        return stats

    async def _work(self, queue: asyncio.Queue[OutboxMessage], stats: DeliveryStats) -> None:
        while not queue.empty():
            message = queue.get_nowait()
            if message.kind in self.held_kinds():  # quiet hours began during this run
                continue
            if not await self._wanted(message):
                self.store.message_withdrawn(message.key)
                stats.withdrawn += 1
                continue
            sent = await self._send(message)
            if sent is None:
                stats.withdrawn += 1
            elif sent:
                stats.sent += 1
            else:
                stats.failed += 1

    async def _wanted(self, message: OutboxMessage) -> bool:
        if self.still_wanted is None:
            return True
        try:
            return await self.still_wanted(message)
        except Exception:  # a check that fails says nothing against the message
            logger.warning("Outbox: could not check whether %s to %s is still wanted",
                           message.kind, message.user_id, exc_info=True)
            return True

    async def _send(self, message: OutboxMessage) -> bool | None:
        """True: sent; False: this try failed; None: withdrawn since it was read (not sent)."""
        room = message.room_id
        pinned = False
        try:
            if message.kind in ROOM_KINDS:  # addressed to a room, not to the person's DM
                if room is None:
                    raise NerbotError(f"{message.kind} {message.key} has no room")
            elif room is None or not self.transport.dm_is_usable(room, message.user_id):
                room = await self.transport.ensure_dm(message.user_id)  # re-created if left
            if not self.store.message_attempt(message.key, room):
                return None  # withdrawn (e.g. "!remind off") while its turn came
            pinned = True
            await asyncio.sleep(self.pacer.delay())
            event_id = await self.transport.send_notice(room, message.body,
                                                        txn_id=message.txn_id)
        except Exception as exc:  # one bad send must not stop the others; it is retried later
            logger.warning("Outbox: %s to %s failed (attempt %d): %s", message.kind,
                           message.user_id, message.attempts + 1, exc,
                           exc_info=not isinstance(exc, NerbotError | OSError | TimeoutError))
            if not pinned:  # no room to send to (a DM that could not be opened) is a try too
                self.store.message_attempt(message.key, None)
            # An unreachable homeserver says nothing about the message: never give up on it.
            if message.attempts + 1 >= MAX_ATTEMPTS and not isinstance(exc, UNREACHABLE_ERRORS):
                self.store.message_failed(message.key)
            if self.metrics is not None:
                self.metrics.message(message.kind, sent=False)
            return False
        self.store.message_sent(message.key, event_id or "", self.now_ms())
        if self.metrics is not None:
            self.metrics.message(message.kind, sent=True)
        return True
