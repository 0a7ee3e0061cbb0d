"""Sending: notices in rooms and encrypted DMs (opened or reused, recorded in ``m.direct``)."""

from __future__ import annotations

import asyncio
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
                            encrypted: bool = False) -> None:
        """After a join, nio learns the room only with the next sync; sending earlier fails.

        With ``encrypted``, also wait until nio has seen the room's encryption state.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds

        def ready() -> bool:
            room = self.client.rooms.get(room_id)
            return room is not None and (not encrypted or bool(room.encrypted))

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
        """The stored DM still has the bot in it and the user joined or invited."""
        room = self.client.rooms.get(room_id)
        if room is None:
            return False
        return user_id in room.users or user_id in room.invited_users

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
            await self.record_direct(user_id, room_id)
            logger.info("Opened a DM with %s: %s", user_id, room_id)
            await self.wait_for_room(room_id, encrypted=True)
            return room_id

    async def record_direct(self, user_id: UserId, room_id: RoomId) -> None:
        """Add the room to the bot's ``m.direct`` account data (clients show it as a DM)."""
        me = urllib.parse.quote(str(self.client.user_id))
        path = f"/_matrix/client/v3/user/{me}/account_data/m.direct"
        try:
            _, direct = await self.http.request("GET", path)
        except MatrixRequestError as exc:
            if exc.status != 404:
                raise
            direct = {}
        rooms = [r for r in direct.get(user_id, []) if isinstance(r, str)]
        if room_id in rooms:
            return
        direct[user_id] = [*rooms, room_id]
        await self.http.request("PUT", path, direct)
