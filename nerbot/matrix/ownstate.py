"""Syncs that leave out the bot's own events, only while that cannot hide its own state.

Why: every event the bot sends wakes its long-poll sync, which then carries nothing but the
bot's own event back; in an emoji verification in a room that was a third of all syncs. A sync
filter with ``not_senders: [bot]`` stops that: Synapse no longer wakes for them. But the same
filter also leaves out the bot's own *state* events (its leave, its invites, a topic it sets;
measured against Synapse: an own leave never arrives, an own state change arrives only with
somebody else's next event), and nio builds room state from them.

So the quiet filter is used only for a sync window in which the bot changed no room state.
Every request the bot makes passes through ``client.send``; ``watch_own_state_changes``
recognises the ones that can change room state by their endpoint and counts them. A quiet
sync is sent only if no such request started since the previous sync was sent, and its
response is refused (``QuietSyncOutdated``, before nio sees it) if one started meanwhile; the
syncer then repeats that sync, from the same token, with the normal filter. A refused response
is as harmless as a lost one: nothing in it was acknowledged.

Own events sent from another login of the bot account are not seen by this watch; the bot
account is meant to be used by the bot alone.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import nio

T = TypeVar("T")

# The client-server endpoints through which a client changes room state (membership included).
STATE_CHANGING_PATH = re.compile(
    r"^/_matrix/client/(?:v3|r0|unstable)/(?:"
    r"createRoom|join/[^/?]+|knock/[^/?]+|"
    r"rooms/[^/?]+/(?:join|leave|forget|invite|kick|ban|unban|upgrade|state/[^?]*|redact/[^?]*)"
    r")(?:\?|$)")
SYNC_PATH = re.compile(r"^/_matrix/client/(?:v3|r0)/sync(?:\?|$)")

Mark = tuple[int, int]  # (state changes started so far, state changes in flight)


class QuietSyncOutdated(Exception):
    """A quiet sync's window may hold the bot's own state events: repeat it unfiltered."""


def changes_room_state(method: str, path: str) -> bool:
    return method.upper() in ("POST", "PUT") and STATE_CHANGING_PATH.match(path) is not None


def sync_filter_of(path: str) -> str | None:
    """The ``filter`` query parameter of a sync request path, if it is one."""
    if SYNC_PATH.match(path) is None:
        return None
    values = parse_qs(urlsplit(path).query).get("filter")
    return values[0] if values else None


class OwnStateWatch:
    """Counts the bot's room-state-changing requests; judges quiet sync windows by them."""

    def __init__(self) -> None:
        self.started = 0
        self.in_flight = 0
        self.quiet_filter: str | None = None  # set by the syncer once uploaded
        self._last_sync_mark: Mark | None = None
        self._change: asyncio.Future[None] | None = None

    def begin(self) -> None:
        self.started += 1
        self.in_flight += 1
        if self._change is not None and not self._change.done():
            self._change.set_result(None)
        self._change = None

    def end(self) -> None:
        self.in_flight -= 1

    def mark(self) -> Mark:
        return (self.started, self.in_flight)

    def unchanged_since(self, mark: Mark | None) -> bool:
        """No state change was in flight at ``mark`` and none has started since."""
        return mark is not None and mark[1] == 0 and mark[0] == self.started

    def quiet_allowed(self) -> bool:
        """May the next sync leave out the bot's own events (judged when it is sent)?"""
        return self.quiet_filter is not None and self.unchanged_since(self._last_sync_mark)

    def sync_sent(self) -> Mark | None:
        """Note that a sync goes out now; the mark of the one before (where its window opens)."""
        previous, self._last_sync_mark = self._last_sync_mark, self.mark()
        return previous

    async def guard(self, request: Awaitable[T], window: Mark | None) -> T:
        """``request`` (a quiet sync), unless a state change could fall into its window."""
        if not self.unchanged_since(window):
            if asyncio.iscoroutine(request):
                request.close()
            raise QuietSyncOutdated()
        pending = asyncio.ensure_future(request)
        if self._change is None or self._change.done():
            self._change = asyncio.get_running_loop().create_future()
        change = self._change
        try:
            await asyncio.wait((pending, change), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not pending.done():
                pending.cancel()  # only an HTTP request: nio has seen nothing of it yet
        finished = pending.done() and not pending.cancelled()
        if finished and self.unchanged_since(window):
            return pending.result()
        if finished:
            pending.exception()  # dropped with the window; retrieved so asyncio does not warn
        raise QuietSyncOutdated()


def watch_own_state_changes(client: nio.AsyncClient, watch: OwnStateWatch) -> None:
    """Route ``client``'s requests past ``watch`` (install after any other ``send`` wrapper)."""
    inner: Callable[..., Awaitable[Any]] = client.send

    async def send(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        if changes_room_state(method, path):
            watch.begin()
            try:
                return await inner(method, path, *args, **kwargs)
            finally:
                watch.end()
        if method.upper() == "GET" and SYNC_PATH.match(path):
            window = watch.sync_sent()
            if watch.quiet_filter is not None and sync_filter_of(path) == watch.quiet_filter:
                return await watch.guard(inner(method, path, *args, **kwargs), window)
        return await inner(method, path, *args, **kwargs)

    client.send = send
