"""The sync loop: nio's ``sync_forever`` with backoff, so an unreachable server is survived."""

from __future__ import annotations

import asyncio
import logging

import nio

from nerbot.matrix.session import TRANSIENT_ERRORS

logger = logging.getLogger(__name__)

SYNC_TIMEOUT_MS = 30_000
# What the bot never reads: presence and typing/receipts. Each of those would wake the sync
# loop (and cost a sync's worth of CPU) whenever anyone in a shared room comes online or types.
SYNC_FILTER = {
    "presence": {"not_types": ["*"]},
    "room": {"ephemeral": {"not_types": ["*"]}},
}
MAX_BACKOFF_SECONDS = 60.0


class SyncLoop:
    """Keeps syncing until stopped; ``first_sync`` is set once the first response is processed."""

    def __init__(self, client: nio.AsyncClient) -> None:
        self.client = client
        self.first_sync = asyncio.Event()
        self.backoff = 1.0
        self._stopping = False
        client.add_response_callback(self._on_sync, nio.SyncResponse)
        client.add_response_callback(self._on_sync_error, nio.SyncError)

    def stop(self) -> None:
        self._stopping = True
        self.client.stop_sync_forever()

    async def run(self) -> None:
        while not self._stopping:
            try:
                # full_state on the first sync: nio keeps no room state across restarts.
                await self.client.sync_forever(timeout=SYNC_TIMEOUT_MS, full_state=True,
                                               sync_filter=SYNC_FILTER,
                                               first_sync_filter=SYNC_FILTER)
            except asyncio.CancelledError:
                raise
            except TRANSIENT_ERRORS as exc:
                logger.warning("Homeserver unreachable (%s); retrying in %.0f s",
                               type(exc).__name__, self.backoff)
            except Exception:
                logger.exception("Sync loop failed; restarting in %.0f s", self.backoff)
            await self._back_off()

    async def _back_off(self) -> None:
        await asyncio.sleep(self.backoff)
        self.backoff = min(self.backoff * 2, MAX_BACKOFF_SECONDS)

    async def _on_sync(self, response: nio.SyncResponse) -> None:
        self.backoff = 1.0
        self.first_sync.set()

    async def _on_sync_error(self, response: nio.SyncError) -> None:
        # nio's loop retries a failed sync immediately; slow it down so a sick server recovers.
        logger.warning("Sync failed (%s); retrying in %.0f s", response.message, self.backoff)
        await self._back_off()
