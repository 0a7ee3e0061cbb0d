"""Owns every background task: tracked, logged when it fails, cancelled on stop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

logger = logging.getLogger(__name__)


class TaskRunner:
    """Callbacks hand work here instead of doing it inline, so the sync loop never stalls.

    ``spawn_serial`` chains tasks with the same key (e.g. one room) so that a user's commands
    run in the order they were sent. Those are reactions to synced events: ``settle`` lets the
    sync loop wait for the ones spawned since it last asked.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tails: dict[str, asyncio.Task[Any]] = {}
        self._unsettled: set[asyncio.Task[Any]] = set()
        self._stopping = False

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        if self._stopping:
            coro.close()
            raise RuntimeError("runner is stopping")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def spawn_serial(
        self, key: str, factory: Callable[[], Awaitable[Any]], name: str
    ) -> asyncio.Task[Any]:
        previous = self._tails.get(key)

        async def run_after_previous() -> None:
            if previous is not None and not previous.done():
                await asyncio.wait([previous])
            await factory()

        task = self.spawn(run_after_previous(), name)
        self._tails[key] = task
        self._unsettled.add(task)
        task.add_done_callback(self._unsettled.discard)

        def forget_tail(done: asyncio.Task[Any]) -> None:
            if self._tails.get(key) is done:
                del self._tails[key]

        task.add_done_callback(forget_tail)
        return task

    async def settle(self, wait_seconds: float) -> None:
        """Wait (at most ``wait_seconds``) for the reactions spawned since the last call.

        Each reaction is waited for once: one that outlives the wait (a slow command) never
        holds up a later call.
        """
        pending, self._unsettled = self._unsettled, set()
        if pending:
            await asyncio.wait(pending, timeout=wait_seconds)

    def every(
        self, seconds: float, fn: Callable[[], Awaitable[Any]], name: str
    ) -> asyncio.Task[Any]:
        """Run ``fn`` periodically; one failing iteration is logged and the loop goes on."""

        async def loop() -> None:
            while True:
                try:
                    await fn()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("Periodic task %s failed; continuing", name)
                await asyncio.sleep(seconds)

        return self.spawn(loop(), name)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.error("Task %s failed", task.get_name(), exc_info=exc)

    async def stop(self) -> None:
        """Cancel everything still running and wait for it to finish."""
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tails.clear()

    async def drain(self, wait_seconds: float = 30.0) -> None:
        """Wait for the currently running tasks (used by graceful shutdown and tests)."""
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        if tasks:
            await asyncio.wait(tasks, timeout=wait_seconds)
