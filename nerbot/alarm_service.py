"""Alarms for the operators, in the encrypted admin room: things that may be an attack.

Each alarm is logged (WARNING, or ERROR for the bot's own account) and, when ``[admin] room`` is
an encrypted room the bot is in, recorded in the outbox under a key that names the event (one
verification, one person's day, one foreign session, one foreign identity), so it is posted
exactly once however often it is noticed, and paced like every other message. Alarms say who
and when, never keys or session lists.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from nerbot.domain.community import DAY_MS, day_of, iso
from nerbot.i18n import Catalog
from nerbot.ids import RoomId, UserId
from nerbot.ports import Clock
from nerbot.store import OutboxMessage, Store

logger = logging.getLogger(__name__)

MISMATCH_REASON = {"m.mismatched_sas": "mismatch_sas", "m.key_mismatch": "mismatch_key",
                   "m.mismatched_commitment": "mismatch_commitment"}


class Delivery(Protocol):
    async def deliver(self) -> Any: ...


class AlarmService:
    def __init__(self, store: Store, catalog: Catalog, language: str, clock: Clock,
                 room: RoomId | None, room_state: Callable[[RoomId], str],
                 deliver: Callable[[], None], logins_per_day: int = 1,
                 counted: Callable[[str], None] | None = None) -> None:
        """``room_state``: "encrypted", "unencrypted", "invited" or "absent" (not in it);
        ``deliver``: start an outbox delivery run; ``counted``: the metrics' alarm counter."""
        self.store = store
        self.catalog = catalog
        self.language = language
        self.clock = clock
        self.room = room
        self.room_state = room_state
        self.deliver = deliver
        self.logins_per_day = logins_per_day
        self.counted = counted
        self._told: set[str] = set()  # room problems already logged once
        self._seen: set[str] = set()  # alarms logged this run while there was no room

    def check_room(self) -> RoomId | None:
        """The admin room if alarms can go there now; the reason logged once if not."""
        if self.room is None:
            return None
        state = self.room_state(self.room)
        if state == "encrypted":
            self._told.clear()
            return self.room
        if state not in self._told:
            self._told.add(state)
            if state == "invited":
                logger.info("admin.room %s: invited; alarms go there once the bot has joined",
                            self.room)
            elif state == "unencrypted":
                logger.error("admin.room %s is not encrypted: no alarms are posted there (they "
                             "name people); turn on encryption in the room", self.room)
            else:
                logger.error("admin.room %s: the bot is not a member; invite it (alarms go to "
                             "the log until then)", self.room)
        return None

    def _raise(self, key: str, kind: str, subject: str, text_key: str,
               log: tuple[int, str, tuple[object, ...]], **params: object) -> bool:
        """Log and record one alarm, once per key; True if it was new.

        With the room, the outbox's key makes it once for good; without, once per run.
        """
        room = self.check_room()
        if room is None:
            new = key not in self._seen
            self._seen.add(key)
        else:
            body = self.catalog.t(self.language, f"alarm.{text_key}", **params)
            txn = "nerbot-alarm-" + hashlib.sha256(key.encode()).hexdigest()[:32]
            new = self.store.enqueue(OutboxMessage(
                key=key, user_id=UserId(subject), kind="alarm", txn_id=txn, body=body,
                room_id=room, status="pending", attempts=0, created_ms=self.clock.now_ms()))
        if not new:
            return False
        level, message, args = log
        logger.log(level, "ALARM " + message, *args)
        if self.counted is not None:
            self.counted(kind)
        if room is not None:
            self.deliver()
        return True

    # -- the alarms -------------------------------------------------------------------------

    def mismatch(self, user_id: str, txn: str, transport: str, code: str) -> None:
        t = self.catalog.t
        self._raise(f"alarm:mismatch:{txn}", "mismatch", user_id, "mismatch",
                    (logging.WARNING, "verification mismatch with %s (%s, %s)",
                     (user_id, transport, code)), user=user_id,
                    at=iso(self.clock.now_ms()).replace("T", " "),
                    transport=t(self.language, "alarm.transport_" + (
                        "to_device" if transport == "to_device" else "room")),
                    reason=t(self.language, "alarm." + MISMATCH_REASON.get(code,
                                                                          "mismatch_key")))

    def sessions_counted(self, user_id: UserId, now_ms: int) -> None:
        """New unverified sessions of the user were just counted: over the day's limit?"""
        start = now_ms - now_ms % DAY_MS  # UTC days, like the report's
        self.new_sessions(user_id, day_of(now_ms),
                          self.store.new_sessions_counted(user_id, start, start + DAY_MS))

    def new_sessions(self, user_id: str, day: str, count: int) -> None:
        """``count``: the person's new unverified sessions alerted about on ``day`` so far."""
        if count <= self.logins_per_day:
            return
        self._raise(f"alarm:logins:{user_id}:{day}", "unverified_logins", user_id, "logins",
                    (logging.WARNING, "%s: %d new unverified sessions on %s (threshold %d a "
                     "day)", (user_id, count, day, self.logins_per_day)),
                    user=user_id, day=day, count=count, limit=self.logins_per_day)

    def own_account(self, bot_user: str, own_device: str, devices: Mapping[str, str | None],
                    master_key: str | None, own_master_key: str | None) -> None:
        """Sessions of the bot's account that are not its own, or a foreign master key."""
        for device_id, name in sorted(devices.items()):
            if device_id == own_device:
                continue
            self._raise(f"alarm:own_device:{device_id}", "own_device", bot_user, "own_device",
                        (logging.ERROR, "someone else is logged in as the bot: session %s "
                         "(%s)", (device_id, name or "no name")),
                        bot=bot_user, device=device_id, name=name or "—")
        if master_key and own_master_key and master_key != own_master_key:
            self._raise(f"alarm:own_identity:{master_key}", "own_identity", bot_user,
                        "own_identity", (logging.ERROR, "the bot's cross-signing identity on "
                                         "the server is not its own (master key %s, expected "
                                         "%s)", (master_key, own_master_key)),
                        found=master_key, mine=own_master_key)
