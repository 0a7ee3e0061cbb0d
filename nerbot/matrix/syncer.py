"""The sync loop: nio's ``sync_forever``, patient with a sick or missing homeserver.

It does what ``sync_forever`` does (sync; alongside, nio's pending to-device messages and key
upload/query/claim), with these differences:

- the filter (no presence, typing or receipts: the bot reads none) is uploaded once and
  referred to by ID;
- side requests get a task only when there is something to send;
- the next sync waits (briefly) for the reactions to the last one, so the bot's own events come
  back together instead of one sync each;
- the very first sync of the process resumes from the position the room index kept
  (``nerbot.matrix.roomindex``), or, without one, asks for the full state; after an error the
  loop resumes from nio's token like any other sync;
- an unreachable homeserver is probed every few seconds (``Recovery``), so syncing resumes
  within seconds of its return (the first sync then catches up without a long poll), and
  ``on_reconnected`` lets the app retry the background work that failed meanwhile. A
  homeserver that answers with errors gets a doubling backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import nio

from nerbot.matrix.reachability import UNREACHABLE_ERRORS, Recovery

logger = logging.getLogger(__name__)

SYNC_TIMEOUT_MS = 30_000
# What the bot never reads: presence and typing/receipts (each would wake the sync loop
# whenever anyone in a shared room comes online or types), rooms' account data, and room state
# other than membership and encryption (all nio's crypto and the bot use). The state filter
# halves the first sync after a start, when every room's state comes at once: with 6,000 DMs,
# 24,000 state events instead of 48,000 for nio to validate (measured: 4.1 s instead of 8.5 s,
# 135 MB peak instead of 195 MB). Timeline events, state changes among them, are not filtered.
SYNC_FILTER: dict[str, Any] = {
    "presence": {"not_types": ["*"]},
    "room": {
        "ephemeral": {"not_types": ["*"]},
        "account_data": {"not_types": ["*"]},
        "state": {"types": ["m.room.member", "m.room.encryption"]},
    },
}

# The next sync waits this long at most for the reactions to the last one. What they send
# (the bot's own room events) then comes back in one sync instead of one sync each.
SETTLE_SECONDS = 0.25

Settle = Callable[[float], Awaitable[None]]


class SyncLoop:
    """Keeps syncing until stopped; ``first_sync`` is set once the first response is processed."""

    def __init__(self, client: nio.AsyncClient, recovery: Recovery,
                 settle: Settle | None = None,
                 on_reconnected: Callable[[], None] | None = None,
                 resume_from: str | None = None,
                 on_resume_refused: Callable[[bool], None] | None = None) -> None:
        self.client = client
        self.resume_from = resume_from
        self.on_resume_refused = on_resume_refused
        self.recovery = recovery
        self.settle = settle
        self.on_reconnected = on_reconnected
        self.first_sync = asyncio.Event()
        self.last_success: float | None = None  # time.monotonic() of the last sync processed
        self.filter: str | dict[str, Any] = SYNC_FILTER
        self._synced_once = False
        # The position the latest sync started from (nio's rule: the one given, else the last
        # sync's, else the one nio stored); None for an initial sync.
        self.since: str | None = None
        self._reconnecting = False
        self._stopping = False
        client.add_response_callback(self._on_sync, nio.SyncResponse)
        client.add_response_callback(self._on_sync_error, nio.SyncError)

    def stop(self) -> None:
        self._stopping = True

    def seconds_since_success(self) -> float | None:
        """Seconds since the last successful sync was processed; None before the first.
        An idle bot long-polls, so up to ``SYNC_TIMEOUT_MS`` is normal."""
        return None if self.last_success is None else time.monotonic() - self.last_success

    async def run(self) -> None:
        while not self._stopping:
            try:
                await self._upload_filter()
                await self._sync_until_stopped()
            except asyncio.CancelledError:
                raise
            except UNREACHABLE_ERRORS as exc:
                logger.warning("Homeserver unreachable (%s); checking every %.0f s",
                               type(exc).__name__, self.recovery.probe_seconds)
                self._reconnecting = True
                failed = await self.recovery.wait_until_reachable()
                logger.info("Homeserver answers again (%d failed probes); syncing", failed)
                continue
            except Exception:
                logger.exception("Sync loop failed; restarting in %.0f s", self.recovery.delay)
            if not self._stopping:
                await self.recovery.back_off()

    async def _upload_filter(self) -> None:
        if isinstance(self.filter, str):
            return
        response = await self.client.upload_filter(**SYNC_FILTER)  # keys: nio's parameters
        if isinstance(response, nio.UploadFilterResponse):
            self.filter = str(response.filter_id)
        else:  # still correct inline, only dearer; uploaded again after the next restart
            logger.warning("Uploading the sync filter failed (%s); sending it inline",
                           getattr(response, "message", response))

    async def _sync_until_stopped(self) -> None:
        while not self._stopping:
            if not self._synced_once:
                await self._first_sync()
            else:
                # Back from an outage: catch up at once (timeout 0, as matrix-js-sdk does),
                # rather than with a long poll that waits for something new to happen.
                timeout = 0 if self._reconnecting else SYNC_TIMEOUT_MS
                self.since = self._position()
                await self._run_all([self.client.sync(timeout, self.filter),
                                     *self._side_requests()])
            self.client.synced.set()
            self.client.synced.clear()

    async def _first_sync(self) -> None:
        """The first sync resumes from ``resume_from`` (the rooms it does not bring are known
        from the room index), or asks for the full state; it runs alone so the side requests
        see the rooms it brings.

        A method of its own so that the response (with thousands of DMs, every room's state,
        the parsed events and the raw body: ~90 MB) is freed on return; as a local of the
        loop it stayed referenced for the life of the process."""
        started = time.monotonic()
        since = self.resume_from
        self.since = self._position(since)
        if since is not None:
            sync = await self.client.sync(0, self.filter, since=since)
        else:  # nio adds its own stored position, if it has one
            sync = await self.client.sync(0, self.filter, full_state=True)
        if _refused(sync) and (since is not None or self.client.loaded_sync_token):
            # Ours first: the loop comes back here for the full state from nio's own stored
            # position. A homeserver that lost its history (restored from an old backup, or
            # reset) refuses that one too: then an initial sync, with no position at all.
            logger.warning("The homeserver refused the %s sync position (%s); asking for the "
                           "full state %s", "kept" if since is not None else "stored",
                           getattr(sync, "message", sync),
                           "from nio's" if since is not None else "without one")
            initial = since is None
            self.resume_from = None
            if initial:
                self.client.loaded_sync_token = ""
            if self.on_resume_refused is not None:
                self.on_resume_refused(initial)
            return
        rooms = getattr(sync, "rooms", None)
        if isinstance(sync, nio.SyncResponse) and rooms is not None:
            logger.info("First sync (%s): %d joined rooms, %d invites, %.1f s",
                        "resumed" if since is not None else "full state",
                        len(rooms.join), len(rooms.invite), time.monotonic() - started)
        await self.client.run_response_callbacks([sync])
        await self._run_all(self._side_requests())

    def _position(self, since: str | None = None) -> str | None:
        """Where ``client.sync`` will start from, as nio 0.26 picks it."""
        client = self.client
        return since or client.next_batch or client.loaded_sync_token or None

    def _side_requests(self) -> list[Coroutine[Any, Any, Any]]:
        """What nio's ``sync_forever`` sends beside each sync, when there is something to send."""
        client = self.client
        requests: list[Coroutine[Any, Any, Any]] = []
        if client.outgoing_to_device_messages:
            requests.append(client.send_to_device_messages())
        if client.should_upload_keys:
            requests.append(_unless_done(lambda: client.should_upload_keys, client.keys_upload))
        if client.should_query_keys:
            requests.append(_unless_done(lambda: client.should_query_keys, client.keys_query))
        if client.should_claim_keys:
            requests.append(client.keys_claim(client.get_users_for_key_claiming()))
        return requests

    async def _run_all(self, requests: list[Coroutine[Any, Any, Any]]) -> None:
        """Run concurrently; each response's callbacks as soon as it arrives.

        A failure ends the others and is raised once they are gone (none outlives the loop).
        """
        if not requests:
            return
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(request) for request in requests]
                for done in asyncio.as_completed(tasks):
                    response = await done
                    if isinstance(response, list):  # send_to_device_messages: one per message
                        await self.client.run_response_callbacks(response)
                    elif response is not None:  # (None: a side request found nothing to do)
                        await self.client.run_response_callbacks([response])
        except ExceptionGroup as failed:  # the loop handles one error, whatever its siblings
            raise _first(failed) from None

    async def _on_sync(self, response: nio.SyncResponse) -> None:
        self.last_success = time.monotonic()
        self._synced_once = True
        self.recovery.reset()
        self.first_sync.set()
        if self._reconnecting:
            self._reconnecting = False
            if self.on_reconnected is not None:
                self.on_reconnected()
        if self.settle is not None:
            await self.settle(SETTLE_SECONDS)

    async def _on_sync_error(self, response: nio.SyncError) -> None:
        # a failed sync is retried at once by the loop; slow it down so a sick server recovers
        logger.warning("Sync failed (%s); retrying in %.0f s", response.message,
                       self.recovery.delay)
        await self.recovery.back_off()


async def _unless_done(needed: Callable[[], bool],
                       request: Callable[[], Awaitable[Any]]) -> Any:
    """The request, or None if something else did its work after it was planned (a message
    being sent runs its own key query): nio raises ``LocalProtocolError`` for a key query or
    upload with nothing to do, and the sync loop restarted over it. Checked and started with
    no ``await`` between them, so nothing can slip in."""
    return await request() if needed() else None


def _refused(response: object) -> bool:
    """The homeserver will not take this sync position (Synapse: 400 "Invalid stream token").
    Anything else (a server error, 401, 403, 429, a proxy's 404) is the loop's usual business
    and costs no kept position."""
    if not isinstance(response, nio.SyncError):
        return False
    return getattr(response.transport_response, "status", None) == 400


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first
