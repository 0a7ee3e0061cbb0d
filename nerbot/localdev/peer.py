"""A real E2EE Matrix client on matrix-nio that talks to the bot the way a person would.

Used by the integration tests and by ``nerbot demo``. Why a real client instead of mocks: the
bot's job is encryption, so the only meaningful check is that a message a person sends arrives
decrypted and the bot's answer decrypts on the person's side.

Every decrypted message is appended to an inbox as the sync loop sees it, and
:meth:`E2EEPeer.wait_for_message` consumes the oldest unread match. A reply that lands before
the test starts waiting for it is therefore never lost, and tests do not race the sync loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import nio

from nerbot.matrix.transport import ENCRYPTION_STATE

logger = logging.getLogger(__name__)


Message: TypeAlias = "nio.RoomMessageText | nio.RoomMessageNotice"
MessagePredicate: TypeAlias = "Callable[[Message], bool]"

SYNC_TIMEOUT_MS = 30_000


@dataclass
class Received:
    """One decrypted message in a peer's inbox."""

    room_id: str
    event: Message
    consumed: bool = False


class E2EEPeer:
    """One logged-in user with its own device, crypto store and background sync loop.

    Trust model: the peer encrypts to every device in the room (``ignore_unverified_devices``),
    as Element does by default, so tests never need to verify the bot's device first.
    """

    def __init__(self, client: nio.AsyncClient, auto_join: bool = True) -> None:
        """Wrap a logged-in client; prefer :meth:`login`, which does the setup."""
        self.client = client
        self.auto_join = auto_join
        self.inbox: list[Received] = []
        self.undecryptable: list[tuple[str, nio.MegolmEvent]] = []
        # Events older than this are history from the initial sync, not something sent to us
        # while we watch; they never enter the inbox.
        self.since_ms = int(time.time() * 1000)
        self._seen: set[str] = set()
        self._arrived = asyncio.Condition()
        self.synced = asyncio.Event()
        """Set once the first sync after :meth:`start` is processed; stays set."""
        self._sync_task: asyncio.Task[None] | None = None
        self._joining: dict[str, asyncio.Task[None]] = {}
        client.add_event_callback(self._on_message, (nio.RoomMessageText, nio.RoomMessageNotice))
        client.add_event_callback(self._on_undecryptable, nio.MegolmEvent)
        client.add_event_callback(self._on_invite, nio.InviteMemberEvent)
        client.add_response_callback(self._on_sync, nio.SyncResponse)

    @classmethod
    async def login(
        cls,
        homeserver: str,
        user_id: str,
        password: str,
        store_dir: Path,
        device_name: str = "peer",
        auto_join: bool = True,
    ) -> E2EEPeer:
        """Log in as a new device with a crypto store in ``store_dir`` and upload its keys.

        Keys are uploaded right away (not on the first sync) so that the bot can encrypt to
        this device as soon as the login returns.
        """
        store_dir.mkdir(parents=True, exist_ok=True)
        since_ms = int(time.time() * 1000)
        config = nio.AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
        client = nio.AsyncClient(homeserver, user_id, store_path=str(store_dir), config=config)
        response = await client.login(password, device_name=device_name)
        if not isinstance(response, nio.LoginResponse):
            await client.close()
            raise RuntimeError(f"login of {user_id} failed: {response}")
        if client.should_upload_keys:
            uploaded = await client.keys_upload()
            if not isinstance(uploaded, nio.KeysUploadResponse):
                await client.close()
                raise RuntimeError(f"key upload of {user_id} failed: {uploaded}")
        logger.info("Peer %s logged in as device %s", user_id, client.device_id)
        peer = cls(client, auto_join)
        peer.since_ms = since_ms
        return peer

    @classmethod
    async def restore(
        cls,
        homeserver: str,
        user_id: str,
        device_id: str,
        access_token: str,
        store_dir: Path,
        auto_join: bool = True,
    ) -> E2EEPeer:
        """Resume an earlier :meth:`login` (same device, same crypto store, same sync token).

        This is how a long-lived client behaves and keeps the account from piling up a new
        device per run (the demo reuses its user this way). Raises ``RuntimeError`` when the
        token is no longer valid or the store does not match the device; log in again then.
        """
        store_dir.mkdir(parents=True, exist_ok=True)
        config = nio.AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
        client = nio.AsyncClient(homeserver, user_id, device_id=device_id,
                                 store_path=str(store_dir), config=config)
        try:
            client.restore_login(user_id, device_id, access_token)  # nio's way to resume
            whoami = await client.whoami()
            if not isinstance(whoami, nio.WhoamiResponse) or whoami.user_id != user_id \
                    or (whoami.device_id and whoami.device_id != device_id):
                raise RuntimeError(f"stored login of {user_id}/{device_id} is not valid: "
                                   f"{whoami}")
            if not client.olm.account.shared:
                # The store was lost: new identity keys for a device the server already knows
                # would make it a different device to everyone else. Start over instead.
                raise RuntimeError(f"crypto store in {store_dir} does not hold {device_id}")
            if client.should_upload_keys:  # one-time keys running low
                uploaded = await client.keys_upload()
                if not isinstance(uploaded, nio.KeysUploadResponse):
                    raise RuntimeError(f"key upload for restored {device_id} failed: {uploaded}")
        except BaseException:
            await client.close()
            raise
        logger.info("Peer %s restored device %s", user_id, device_id)
        return cls(client, auto_join)

    @property
    def user_id(self) -> str:
        return str(self.client.user_id)

    @property
    def device_id(self) -> str:
        return str(self.client.device_id)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Run the sync loop in a background task owned by this peer (idempotent)."""
        if self._sync_task is not None and not self._sync_task.done():
            return
        self._sync_task = asyncio.get_running_loop().create_task(
            self._sync_loop(), name=f"peer sync {self.user_id}")

    async def _sync_loop(self) -> None:
        """``sync_forever``, restarted if it dies, so one nio hiccup does not hang a test."""
        while True:
            try:
                await self.client.sync_forever(timeout=SYNC_TIMEOUT_MS, full_state=True)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Peer %s: sync loop failed; restarting it", self.user_id)
                await asyncio.sleep(0.5)

    async def wait_synced(self, timeout: float = 30) -> None:
        """Wait for the first sync after :meth:`start`, i.e. until ``client.rooms`` is filled."""
        await asyncio.wait_for(self.synced.wait(), timeout)

    async def close(self, logout: bool = False) -> None:
        """Stop syncing, optionally log the device out (deleting it), and close the client."""
        tasks = [t for t in (self._sync_task, *self._joining.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._sync_task = None
        if logout:
            try:
                await self.client.logout()
            except Exception:
                logger.warning("Peer %s: logout failed", self.user_id, exc_info=True)
        await self.client.close()

    # -- callbacks (run inside nio's sync processing) ----------------------------------------

    async def _on_sync(self, _response: nio.SyncResponse) -> None:
        self.synced.set()

    async def _on_message(self, room: nio.MatrixRoom, event: Message) -> None:
        if event.event_id in self._seen:
            return  # a restarted sync loop can replay a batch
        self._seen.add(event.event_id)
        if event.server_timestamp < self.since_ms:
            logger.debug("Peer %s: skipping history %s", self.user_id, event.event_id)
            return
        async with self._arrived:
            self.inbox.append(Received(room.room_id, event))
            self._arrived.notify_all()

    async def _on_undecryptable(self, room: nio.MatrixRoom, event: nio.MegolmEvent) -> None:
        logger.warning("Peer %s could not decrypt %s from %s in %s (session %s)", self.user_id,
                       event.event_id, event.sender, room.room_id, event.session_id)
        self.undecryptable.append((room.room_id, event))

    async def _on_invite(self, room: nio.MatrixRoom, event: nio.InviteMemberEvent) -> None:
        if not self.auto_join or event.state_key != self.user_id:
            return
        if event.membership != "invite" or room.room_id in self._joining:
            return
        # Joining from a separate task keeps the sync loop flowing while the join happens.
        self._joining[room.room_id] = asyncio.get_running_loop().create_task(
            self._join(room.room_id), name=f"peer join {room.room_id}")

    async def _join(self, room_id: str) -> None:
        for attempt in range(1, 4):
            response = await self.client.join(room_id)
            if isinstance(response, nio.JoinResponse):
                logger.info("Peer %s joined %s", self.user_id, room_id)
                return
            logger.warning("Peer %s: join %s failed (attempt %d): %s", self.user_id, room_id,
                           attempt, response)
            await asyncio.sleep(0.5 * attempt)

    # -- rooms -------------------------------------------------------------------------------

    async def create_encrypted_dm(self, other_user_id: str) -> str:
        """Create an encrypted DM with ``other_user_id`` the way Element does; return its ID.

        The room is also recorded in this user's ``m.direct`` account data, which is what makes
        clients show it as a DM and what a bot may read to recognise one.
        """
        response = await self.client.room_create(
            is_direct=True,
            invite=[other_user_id],
            preset=nio.RoomPreset.trusted_private_chat,
            initial_state=[ENCRYPTION_STATE],
        )
        if not isinstance(response, nio.RoomCreateResponse):
            raise RuntimeError(f"room creation failed: {response}")
        room_id = str(response.room_id)
        await self._add_direct_room(other_user_id, room_id)
        logger.info("Peer %s created encrypted DM %s with %s", self.user_id, room_id,
                    other_user_id)
        return room_id

    async def create_encrypted_room(self, invite: list[str], name: str = "community") -> str:
        """An encrypted group room (not a DM) with the given users invited; return its ID."""
        response = await self.client.room_create(name=name, invite=invite,
                                                 initial_state=[ENCRYPTION_STATE])
        if not isinstance(response, nio.RoomCreateResponse):
            raise RuntimeError(f"room creation failed: {response}")
        return str(response.room_id)

    async def _add_direct_room(self, other_user_id: str, room_id: str) -> None:
        direct: dict[str, list[str]] = {}
        listed = await self.client.list_direct_rooms()
        if isinstance(listed, nio.DirectRoomsResponse):
            direct = {user: list(rooms) for user, rooms in listed.rooms.items()}
        rooms = direct.setdefault(other_user_id, [])
        if room_id not in rooms:
            rooms.append(room_id)
        path = (f"/_matrix/client/v3/user/{urllib.parse.quote(self.user_id, safe='')}"
                "/account_data/m.direct")
        headers = {"Authorization": f"Bearer {self.client.access_token}",
                   "Content-Type": "application/json"}
        answer = await self.client.send("PUT", path, data=json.dumps(direct), headers=headers)
        try:
            if answer.status != 200:
                raise RuntimeError(f"setting m.direct failed: HTTP {answer.status} "
                                   f"{await answer.text()}")
        finally:
            answer.release()

    async def _until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            if loop.time() > deadline:
                raise TimeoutError(what)
            await asyncio.sleep(0.05)

    async def wait_for_join(self, room_id: str, user_id: str, timeout: float = 30) -> None:
        """Wait until this peer's synced room state shows ``user_id`` as joined."""

        def joined() -> bool:
            room = self.client.rooms.get(room_id)
            return (room is not None and user_id in room.users
                    and user_id not in room.invited_users)

        await self._until(joined, timeout,
                          f"{self.user_id} did not see {user_id} join {room_id} in {timeout} s")

    # -- messages ----------------------------------------------------------------------------

    async def _prepare_keys(self, room_id: str) -> None:
        """Make sure nio knows every member's devices, so each one gets the room key."""
        room = self.client.rooms[room_id]
        if room.encrypted and not room.members_synced:
            await self.client.joined_members(room_id)
        if self.client.should_query_keys:
            # The sync loop may have just run the same query: then there is nothing to do.
            with contextlib.suppress(nio.LocalProtocolError):
                await self.client.keys_query()

    async def send_text(self, room_id: str, body: str, timeout: float = 30) -> str:
        """Send an ``m.text`` message (encrypted if the room is); return its event ID."""
        await self._until(lambda: room_id in self.client.rooms, timeout,
                          f"{self.user_id}'s sync never showed room {room_id}")
        await self._prepare_keys(room_id)
        response = await self.client.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": body},
            ignore_unverified_devices=True)
        if not isinstance(response, nio.RoomSendResponse):
            raise RuntimeError(f"sending to {room_id} failed: {response}")
        logger.debug("Peer %s sent %s to %s", self.user_id, response.event_id, room_id)
        return str(response.event_id)

    def messages(self, room_id: str | None = None) -> list[Message]:
        """Every message received so far (read or not), oldest first; for assertions."""
        return [r.event for r in self.inbox if room_id is None or r.room_id == room_id]

    async def wait_for_message(
        self,
        room_id: str,
        sender: str | None = None,
        predicate: MessagePredicate | None = None,
        timeout: float = 30,
    ) -> Message:
        """Consume and return the oldest unread decrypted message that matches.

        ``sender=None`` means anyone but this peer (its own messages echo back through sync).
        Non-matching messages stay unread for later calls. Raises ``TimeoutError``.
        """
        return await self._take(room_id, sender, predicate, timeout, first_index=0)

    async def _take(
        self,
        room_id: str,
        sender: str | None,
        predicate: MessagePredicate | None,
        timeout: float,
        first_index: int,
    ) -> Message:
        def matches(item: Received) -> bool:
            if item.consumed or item.room_id != room_id:
                return False
            event_sender = item.event.sender
            if sender is None and event_sender == self.user_id:
                return False
            if sender is not None and event_sender != sender:
                return False
            return predicate is None or bool(predicate(item.event))

        async def take() -> Message:
            async with self._arrived:
                while True:
                    for item in self.inbox[first_index:]:
                        if matches(item):
                            item.consumed = True
                            return item.event
                    await self._arrived.wait()

        try:
            return await asyncio.wait_for(take(), timeout)
        except TimeoutError:
            unread = [(r.event.sender, r.event.body) for r in self.inbox
                      if r.room_id == room_id and not r.consumed]
            failed = [e.event_id for rid, e in self.undecryptable if rid == room_id]
            raise TimeoutError(
                f"{self.user_id}: no message from {sender or 'others'} in {room_id} within "
                f"{timeout} s; unread there: {unread}; undecryptable: {failed}") from None

    async def ask(self, room_id: str, body: str, sender: str, timeout: float = 30) -> str:
        """Send ``body`` and return the body of the next message from ``sender``.

        Only messages that arrive after the send count: an older unread message from ``sender``
        is not the answer to this question (it stays unread for :meth:`wait_for_message`).
        """
        first_index = len(self.inbox)
        await self.send_text(room_id, body)
        reply = await self._take(room_id, sender, None, timeout, first_index)
        return str(reply.body)
