"""Waiting for the homeserver: probe it while it is unreachable, back off while it errs.

Two different situations, one helper. A homeserver that does not answer at all (connection
refused or reset, a time-out) is probed every few seconds with the cheapest request there is,
``GET /_matrix/client/versions`` (as matrix-js-sdk's keep-alive does), so the bot is back within
seconds of the server, not after the next step of a doubling backoff. A homeserver that answers
with errors is given room with a doubling delay. Anything else (a disk error, a bug) is neither
and is not treated as an outage.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable

import aiohttp

from nerbot.errors import MatrixRequestError

logger = logging.getLogger(__name__)

UNREACHABLE_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectionError, ConnectionError, TimeoutError)
"""What a request raises when the homeserver cannot be reached (never a disk error)."""

PROBE_SECONDS = 2.0
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0

Probe = Callable[[], Awaitable[bool]]
Sleep = Callable[[float], Awaitable[None]]


def backoff_delay(first: float, step: int, cap: float = math.inf) -> float:
    """The bot's one doubling backoff: the wait before try ``step`` (1, 2, 3, ...) is
    ``first``, then twice that, four times, ..., never more than ``cap``."""
    return min(first * 2.0 ** min(max(step - 1, 0), 64), cap)


class Recovery:
    """The bot's one way of waiting for its homeserver (sync loop, login, setup)."""

    def __init__(self, probe: Probe, probe_seconds: float = PROBE_SECONDS,
                 max_backoff_seconds: float = MAX_BACKOFF_SECONDS,
                 sleep: Sleep = asyncio.sleep) -> None:
        self.probe = probe
        self.probe_seconds = probe_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.errors = 0  # consecutive error answers since the last success
        self._sleep = sleep

    @property
    def delay(self) -> float:
        """How long the next ``back_off`` waits."""
        return backoff_delay(FIRST_BACKOFF_SECONDS, self.errors + 1, self.max_backoff_seconds)

    def reset(self) -> None:
        """A request succeeded: the next error starts the backoff from the beginning."""
        self.errors = 0

    async def back_off(self) -> None:
        """Wait after an error answer; each consecutive one waits twice as long (capped)."""
        await self._sleep(self.delay)
        self.errors += 1

    async def wait_until_reachable(self) -> int:
        """Probe until the homeserver answers; returns how many probes failed."""
        failed = 0
        while not await self.probe():
            failed += 1
            await self._sleep(self.probe_seconds)
        self.reset()
        return failed


def versions_probe(request: Callable[[], Awaitable[object]]) -> Probe:
    """A probe that is true when ``request`` (a ``/versions`` call) gets a real answer.

    A 5xx counts as no answer: behind a reverse proxy, a homeserver that is down shows as
    502/503/504.
    """

    async def probe() -> bool:
        try:
            await request()
        except UNREACHABLE_ERRORS:
            return False
        except MatrixRequestError as exc:
            logger.debug("Homeserver probe: HTTP %d", exc.status)
            return exc.status < 500
        return True

    return probe
