"""Sending: notices in rooms and encrypted DMs (opened or reused, recorded in ``m.direct``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from typing import Any

import nio

from nerbot.errors import MatrixRequestError, NerbotError
from nerbot.ids import RoomId, UserId
from nerbot.matrix.http import MatrixHttp
from nerbot.matrix.render import NoticeRenderer
from nerbot.ports import Clock
from nerbot.store import Store

logger = logging.getLogger(__name__)

ENCRYPTION_STATE = {
    "type": "m.room.encryption",
    "state_key": "",
    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
}


class SendFailed(NerbotError):
    """The homeserver refused a message."""


class MatrixTransport:
    """The bot's ``Messenger``: every message it sends goes through here.

    Sends use ``ignore_unverified_devices=True``: the people who most need a reminder are
    exactly those whose sessions are unverified.
    """

    def __init__(
        self, client: nio.AsyncClient, http: MatrixHttp, store: Store, clock: Clock
    ) -> None:
        self.client = client
        self.http = http
        self.store = store
        self.clock = clock
        self.renderer = NoticeRenderer()
        self.direct = DirectRooms(http, str(client.user_id), store)
        self._room_locks: dict[str, asyncio.Lock] = {}
        self._dm_locks: dict[str, asyncio.Lock] = {}

    async def send_notice(self, room_id: RoomId, markdown_text: str,
                          txn_id: str | None = None) -> str | None:
        return await self.send_content(room_id, self.renderer.render(markdown_text),
                                       txn_id=txn_id)

    async def send_content(
        self, room_id: RoomId, content: dict[str, Any], event_type: str = "m.room.message",
        txn_id: str | None = None,
    ) -> str:
        """Send one event; serialised per room so group sessions are shared once.

        A given ``txn_id`` makes the send idempotent: the homeserver answers a repeated
        ``PUT …/send/{type}/{txnId}`` with the first event instead of storing a second one.
        Rate limits (429) are waited out by nio with the server's ``retry_after_ms``.
        """
        lock = self._room_locks.setdefault(room_id, asyncio.Lock())
        # A DM must never go out in plain text: nio encrypts only once its sync has processed
        # the room's m.room.encryption state, which can lag behind the room itself.
        must_encrypt = self.store.user_for_dm_room(room_id) is not None
        async with lock:
            await self.wait_for_room(room_id, encrypted=must_encrypt)
            response = await self.client.room_send(
                room_id, event_type, content, tx_id=txn_id, ignore_unverified_devices=True
            )
        if isinstance(response, nio.RoomSendResponse):
            return str(response.event_id)
        raise SendFailed(f"sending to {room_id} failed: {getattr(response, 'message', response)}")

    async def wait_for_room(self, room_id: RoomId, wait_seconds: float = 30.0,
                            encrypted: bool = False, member: UserId | None = None) -> None:
        """After a join, nio learns the room only with the next sync; sending earlier fails.

        With ``encrypted``, also wait until nio has seen the room's encryption state; with
        ``member``, until it has seen them joined or invited (a sync that raced the room's
        creation can bring the room without the invite, and nio shares the room key only
        with the members it knows: the first message would be unreadable for them).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds

        def ready() -> bool:
            room = self.client.rooms.get(room_id)
            return room is not None and (not encrypted or bool(room.encrypted)) and (
                member is None or member in room.users or member in room.invited_users)

        while not ready():
            if loop.time() > deadline:
                state = "known" if room_id in self.client.rooms else "not known"
                raise SendFailed(f"room {room_id} is {state} but not ready as an encrypted "
                                 f"room after {wait_seconds:.0f} s" if encrypted else
                                 f"room {room_id} is not known after {wait_seconds:.0f} s")
            await asyncio.sleep(0.05)

    # -- direct messages --------------------------------------------------------------------

    async def send_dm(self, user_id: UserId, markdown_text: str,
                      txn_id: str | None = None) -> RoomId:
        room_id = await self.ensure_dm(user_id)
        await self.send_notice(room_id, markdown_text, txn_id=txn_id)
        return room_id

    def dm_is_usable(self, room_id: RoomId, user_id: UserId) -> bool:
        """The stored DM still has the bot in it, the user joined or invited, and nobody else."""
        return is_private_dm(self.client.rooms.get(room_id), str(self.client.user_id), user_id)

    async def ensure_dm(self, user_id: UserId) -> RoomId:
        """Reuse the user's DM with the bot, or open a new encrypted one."""
        lock = self._dm_locks.setdefault(user_id, asyncio.Lock())
        async with lock:
            existing = self.store.get_dm_room(user_id)
            if existing is not None and self.dm_is_usable(existing, user_id):
                return existing
            response = await self.client.room_create(
                is_direct=True,
                invite=[user_id],
                preset=nio.RoomPreset.trusted_private_chat,
                initial_state=[ENCRYPTION_STATE],
            )
            if not isinstance(response, nio.RoomCreateResponse):
                raise SendFailed(f"could not open a DM with {user_id}: {response}")
            room_id = RoomId(response.room_id)
            self.store.set_dm_room(user_id, room_id, self.clock.now_ms())
            self.direct.changed()
            logger.info("Opened a DM with %s: %s", user_id, room_id)
            await self.wait_for_room(room_id, encrypted=True, member=user_id)
            return room_id

    async def close(self) -> None:
        """Write what ``m.direct`` still lacks before the HTTP session closes."""
        await self.direct.close()


def is_private_dm(room: nio.MatrixRoom | None, bot: str, owner: str) -> bool:
    """Whether only ``owner`` (joined or invited) and the bot are in the room: the one place
    the owner's sessions, findings, emoji and guide steps may be posted. A recorded DM that
    someone else joined or was invited to is a group room from then on (an invitee may join
    and read on); a new DM is opened for the owner."""
    if room is None:
        return False
    members = set(room.users) | set(room.invited_users)
    return owner in members and members <= {bot, owner}


DIRECT_BATCH_SECONDS = 1.0


class DirectRooms:
    """The bot's ``m.direct`` account data, written from the database in batches.

    ``dm_rooms`` is the truth; ``m.direct`` only tells the bot's people's clients (and other
    sessions of the bot, which it has none of) which rooms are DMs. Rewriting the whole map per
    new DM was quadratic over a campaign (two requests each, growing with the map), so a burst
    of new DMs is one ``PUT`` a second, and entries someone else put there are kept. At start
    (and after a crash before a batch went out) ``reconcile`` writes the map if it lacks rooms.
    """

    def __init__(self, http: MatrixHttp, user_id: str, store: Store,
                 batch_seconds: float = DIRECT_BATCH_SECONDS) -> None:
        self.http = http
        self.path = (f"/_matrix/client/v3/user/{urllib.parse.quote(user_id)}"
                     "/account_data/m.direct")
        self.store = store
        self.batch_seconds = batch_seconds
        self.writes = 0  # PUTs sent (the bench counts them)
        self._foreign: dict[str, list[str]] | None = None  # what the server had, read once
        self._dirty = False
        self._lock = asyncio.Lock()
        self._pending: asyncio.Task[None] | None = None

    def changed(self) -> None:
        """A DM was recorded: write the map within ``batch_seconds`` (one write per burst)."""
        self._dirty = True
        if self._pending is None or self._pending.done():
            self._pending = asyncio.get_running_loop().create_task(self._write_soon())

    async def _write_soon(self) -> None:
        await asyncio.sleep(self.batch_seconds)
        try:
            await self.flush()
        except Exception as exc:  # the next DM (or the next start) writes it again
            self._dirty = True
            logger.warning("Writing m.direct failed: %s", exc)

    async def _read(self) -> dict[str, list[str]]:
        try:
            _, direct = await self.http.request("GET", self.path)
        except MatrixRequestError as exc:
            if exc.status != 404:
                raise
            direct = {}
        return {str(user): [r for r in rooms if isinstance(r, str)]
                for user, rooms in direct.items() if isinstance(rooms, list)}

    def _wanted(self, base: dict[str, list[str]]) -> dict[str, list[str]]:
        wanted = {user: list(rooms) for user, rooms in base.items()}
        for user, room in self.store.dm_rooms().items():
            rooms = wanted.setdefault(user, [])
            if room not in rooms:
                rooms.append(room)
        return wanted

    async def flush(self) -> None:
        async with self._lock:
            if not self._dirty:
                return
            if self._foreign is None:
                self._foreign = await self._read()
            wanted = self._wanted(self._foreign)
            self._dirty = False  # a DM recorded from here on sets it again
            try:
                await self.http.request("PUT", self.path, wanted)
            except BaseException:
                self._dirty = True
                raise
            self._foreign = wanted
            self.writes += 1

    async def close(self) -> None:
        """The last batch now, not a second later (on stop)."""
        pending = self._pending
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending
        try:
            await self.flush()
        except Exception as exc:  # written at the next start (reconcile)
            logger.warning("Writing m.direct on stop failed: %s", exc)

    async def reconcile(self) -> None:
        """At start: add the DMs the server's ``m.direct`` lacks (one read, at most one write)."""
        async with self._lock:
            self._foreign = await self._read()
            if self._wanted(self._foreign) != self._foreign:
                self._dirty = True
        await self.flush()
