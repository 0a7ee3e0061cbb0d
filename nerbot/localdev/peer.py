"""A real E2EE Matrix client on nio that talks to the bot the way a person would.

Used by the integration tests and by ``nerbot demo``. Messages are collected into an inbox as
they are decrypted, and ``wait_for_message`` consumes them in order, so a reply that arrives
before the test starts waiting is never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias

import nio

logger = logging.getLogger(__name__)

ENCRYPTION_STATE = {
    "type": "m.room.encryption",
    "state_key": "",
    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
}

Message: TypeAlias = "nio.RoomMessageText | nio.RoomMessageNotice"


class E2EEPeer:
    """One logged-in user with its own device and crypto store."""

    def __init__(self, client: nio.AsyncClient, auto_join: bool = True) -> None:
        self.client = client
        self.auto_join = auto_join
        self.inbox: list[tuple[str, Message]] = []
        self._arrived = asyncio.Condition()
        self._sync_task: asyncio.Task[Any] | None = None
        self.synced = asyncio.Event()
        client.add_response_callback(self._on_sync, nio.SyncResponse)
        client.add_event_callback(self._on_message, (nio.RoomMessageText, nio.RoomMessageNotice))
        client.add_event_callback(self._on_invite, nio.InviteMemberEvent)

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
        store_dir.mkdir(parents=True, exist_ok=True)
        config = nio.AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
        client = nio.AsyncClient(homeserver, user_id, store_path=str(store_dir), config=config)
        response = await client.login(password, device_name=device_name)
        if not isinstance(response, nio.LoginResponse):
            await client.close()
            raise RuntimeError(f"login of {user_id} failed: {response}")
        if client.should_upload_keys:
            await client.keys_upload()
        return cls(client, auto_join)

    @classmethod
    async def restore(
        cls, homeserver: str, user_id: str, device_id: str, access_token: str, store_dir: Path,
        auto_join: bool = True,
    ) -> E2EEPeer:
        """Reuse an earlier login (same device, same crypto store) instead of a new device."""
        config = nio.AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
        client = nio.AsyncClient(homeserver, user_id, store_path=str(store_dir), config=config)
        client.restore_login(user_id, device_id, access_token)
        response = await client.whoami()
        if not isinstance(response, nio.WhoamiResponse) or response.device_id != device_id:
            await client.close()
            raise RuntimeError(f"stored login of {user_id} is no longer valid")
        return cls(client, auto_join)

    @property
    def user_id(self) -> str:
        return str(self.client.user_id)

    @property
    def device_id(self) -> str:
        return str(self.client.device_id)

    def start(self) -> None:
        self._sync_task = asyncio.get_running_loop().create_task(
            self.client.sync_forever(timeout=30000, full_state=True), name=f"peer {self.user_id}")

    async def close(self, logout: bool = False) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._sync_task
        if logout:
            with contextlib.suppress(Exception):
                await self.client.logout()
        await self.client.close()

    async def _on_sync(self, response: nio.SyncResponse) -> None:
        self.synced.set()

    async def _on_message(self, room: nio.MatrixRoom, event: Message) -> None:
        async with self._arrived:
            self.inbox.append((room.room_id, event))
            self._arrived.notify_all()

    async def _on_invite(self, room: nio.MatrixRoom, event: nio.InviteMemberEvent) -> None:
        if self.auto_join and event.state_key == self.user_id and event.membership == "invite":
            await self.client.join(room.room_id)

    async def create_encrypted_dm(self, other_user_id: str) -> str:
        response = await self.client.room_create(
            is_direct=True, invite=[other_user_id], preset=nio.RoomPreset.trusted_private_chat,
            initial_state=[ENCRYPTION_STATE])
        if not isinstance(response, nio.RoomCreateResponse):
            raise RuntimeError(f"room creation failed: {response}")
        room_id = str(response.room_id)
        path = f"/_matrix/client/v3/user/{self.user_id}/account_data/m.direct"
        await self.client.send("PUT", path, data=f'{{"{other_user_id}": ["{room_id}"]}}',
                               headers={"Authorization": f"Bearer {self.client.access_token}",
                                        "Content-Type": "application/json"})
        return room_id

    async def _until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                raise TimeoutError(what)
            await asyncio.sleep(0.05)

    async def wait_for_join(self, room_id: str, user_id: str, timeout: float = 30) -> None:
        def joined() -> bool:
            room = self.client.rooms.get(room_id)
            return room is not None and user_id in room.users and \
                user_id not in room.invited_users
        await self._until(joined, timeout, f"{user_id} did not join {room_id}")

    async def send_text(self, room_id: str, body: str) -> str:
        await self._until(lambda: room_id in self.client.rooms, 30, f"room {room_id} unknown")
        if self.client.should_query_keys:
            await self.client.keys_query()
        response = await self.client.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": body},
            ignore_unverified_devices=True)
        if not isinstance(response, nio.RoomSendResponse):
            raise RuntimeError(f"send failed: {response}")
        return str(response.event_id)

    async def wait_for_message(
        self,
        room_id: str,
        sender: str | None = None,
        predicate: Callable[[Message], bool] | None = None,
        timeout: float = 30,
    ) -> Message:
        """The next (oldest unread) message in the room matching sender and predicate."""

        def take() -> Message | None:
            for index, (rid, event) in enumerate(self.inbox):
                if rid != room_id or (sender is not None and event.sender != sender):
                    continue
                if predicate is not None and not predicate(event):
                    continue
                del self.inbox[index]
                return event
            return None

        async def wait() -> Message:
            async with self._arrived:
                while True:
                    found = take()
                    if found is not None:
                        return found
                    await self._arrived.wait()

        return await asyncio.wait_for(wait(), timeout)

    async def ask(self, room_id: str, body: str, sender: str, timeout: float = 30) -> str:
        await self.send_text(room_id, body)
        reply = await self.wait_for_message(room_id, sender=sender, timeout=timeout)
        return str(reply.body)
