"""The sync loop: nio's ``sync_forever`` made lean and patient, with backoff for a sick server.

It does what ``sync_forever`` does (sync; alongside, nio's pending to-device messages and key
upload/query/claim), with four differences that matter for CPU:

- the filter is uploaded once and referred to by ID, not re-encoded into every sync's URL;
- side requests get a task only when there is something to send;
- the next sync waits (briefly) for the reactions to the last one, so the bot's own events,
  which every sync would otherwise return one at a time, come back together;
- while the bot changes no room state, syncs use a second filter that leaves out the bot's own
  events altogether, so they no longer wake the long poll (``ownstate.py`` says when that is
  safe).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import nio

from nerbot.matrix.ownstate import OwnStateWatch, QuietSyncOutdated
from nerbot.matrix.session import TRANSIENT_ERRORS

logger = logging.getLogger(__name__)

SYNC_TIMEOUT_MS = 30_000
# What the bot never reads: presence and typing/receipts. Each of those would wake the sync
# loop (and cost a sync's worth of CPU) whenever anyone in a shared room comes online or types.
SYNC_FILTER: dict[str, Any] = {
    "presence": {"not_types": ["*"]},
    "room": {"ephemeral": {"not_types": ["*"]}},
}
MAX_BACKOFF_SECONDS = 60.0


def quiet_filter(user_id: str) -> dict[str, Any]:
    """``SYNC_FILTER``, and none of ``user_id``'s own events in room timelines."""
    room = {**SYNC_FILTER["room"], "timeline": {"not_senders": [user_id]}}
    return {**SYNC_FILTER, "room": room}


# The next sync waits this long at most for the reactions to the last one. What they send
# (the bot's own room events) then comes back in one sync instead of one sync each.
SETTLE_SECONDS = 0.25

Settle = Callable[[float], Awaitable[None]]


class SyncLoop:
    """Keeps syncing until stopped; ``first_sync`` is set once the first response is processed."""

    def __init__(self, client: nio.AsyncClient, settle: Settle | None = None,
                 own_state: OwnStateWatch | None = None) -> None:
        self.client = client
        self.settle = settle
        self.own_state = own_state
        self.first_sync = asyncio.Event()
        self.backoff = 1.0
        self.filter: str | dict[str, Any] = SYNC_FILTER
        self.quiet_syncs = 0
        self.refused_quiet_syncs = 0
        self._stopping = False
        client.add_response_callback(self._on_sync, nio.SyncResponse)
        client.add_response_callback(self._on_sync_error, nio.SyncError)

    def stop(self) -> None:
        self._stopping = True

    async def run(self) -> None:
        while not self._stopping:
            try:
                await self._upload_filter()
                await self._sync_until_stopped()
            except asyncio.CancelledError:
                raise
            except TRANSIENT_ERRORS as exc:
                logger.warning("Homeserver unreachable (%s); retrying in %.0f s",
                               type(exc).__name__, self.backoff)
            except Exception:
                logger.exception("Sync loop failed; restarting in %.0f s", self.backoff)
            if not self._stopping:
                await self._back_off()

    async def _upload_filter(self) -> None:
        if isinstance(self.filter, str):
            return
        # still correct inline, only dearer; uploaded again after the next restart
        uploaded = await self._uploaded(SYNC_FILTER, "sync filter", "sending it inline")
        if uploaded is None:
            return
        self.filter = uploaded
        if self.own_state is not None and self.client.user_id:
            self.own_state.quiet_filter = await self._uploaded(
                quiet_filter(self.client.user_id), "quiet sync filter",
                "every sync uses the normal filter")

    async def _uploaded(self, sync_filter: dict[str, Any], what: str, otherwise: str
                        ) -> str | None:
        """The ID of ``sync_filter`` once uploaded; None (logged) if the server refused it."""
        response = await self.client.upload_filter(**sync_filter)  # keys: nio's parameters
        if isinstance(response, nio.UploadFilterResponse):
            return str(response.filter_id)
        logger.warning("Uploading the %s failed (%s); %s", what,
                       getattr(response, "message", response), otherwise)
        return None

    async def _sync_until_stopped(self) -> None:
        first = True
        while not self._stopping:
            # full_state on the first sync: nio keeps no room state across restarts. The first
            # sync runs alone so that the side requests see the rooms it brings.
            quiet = not first and self.own_state is not None and self.own_state.quiet_allowed()
            sync_filter = self.own_state.quiet_filter if quiet and self.own_state else self.filter
            sync = self.client.sync(0 if first else SYNC_TIMEOUT_MS, sync_filter,
                                    full_state=True if first else None)
            if first:
                await self.client.run_response_callbacks([await sync])
                await self._run_all(self._side_requests())
            else:
                try:
                    await self._run_all([sync, *self._side_requests()])
                except QuietSyncOutdated:
                    # the bot changed room state meanwhile: the same window again, unfiltered
                    self.refused_quiet_syncs += 1
                    logger.debug("Quiet sync refused: own room state changed; syncing again")
                    continue
                self.quiet_syncs += quiet
            first = False
            self.client.synced.set()
            self.client.synced.clear()

    def _side_requests(self) -> list[Coroutine[Any, Any, Any]]:
        """What nio's ``sync_forever`` sends beside each sync, when there is something to send."""
        client = self.client
        requests: list[Coroutine[Any, Any, Any]] = []
        if client.outgoing_to_device_messages:
            requests.append(client.send_to_device_messages())
        if client.should_upload_keys:
            requests.append(client.keys_upload())
        if client.should_query_keys:
            requests.append(client.keys_query())
        if client.should_claim_keys:
            requests.append(client.keys_claim(client.get_users_for_key_claiming()))
        return requests

    async def _run_all(self, requests: list[Coroutine[Any, Any, Any]]) -> None:
        """Run concurrently; each response's callbacks as soon as it arrives."""
        if len(requests) == 1:
            await self.client.run_response_callbacks([await requests[0]])
            return
        tasks = [asyncio.ensure_future(request) for request in requests]
        outdated = False
        try:
            for done in asyncio.as_completed(tasks):
                try:
                    response = await done
                except QuietSyncOutdated:  # the side requests still finish and count
                    outdated = True
                    continue
                if isinstance(response, list):  # send_to_device_messages: one per message
                    await self.client.run_response_callbacks(response)
                else:
                    await self.client.run_response_callbacks([response])
        finally:
            for task in tasks:
                task.cancel()
        if outdated:
            raise QuietSyncOutdated()

    async def _back_off(self) -> None:
        await asyncio.sleep(self.backoff)
        self.backoff = min(self.backoff * 2, MAX_BACKOFF_SECONDS)

    async def _on_sync(self, response: nio.SyncResponse) -> None:
        self.backoff = 1.0
        self.first_sync.set()
        if self.settle is not None:
            await self.settle(SETTLE_SECONDS)

    async def _on_sync_error(self, response: nio.SyncError) -> None:
        # a failed sync is retried at once by the loop; slow it down so a sick server recovers
        logger.warning("Sync failed (%s); retrying in %.0f s", response.message, self.backoff)
        await self._back_off()
