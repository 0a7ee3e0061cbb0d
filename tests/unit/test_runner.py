"""The task owner: serial order per key, failures logged not fatal, stop cancels all."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from nerbot.runner import TaskRunner

T = TypeVar("T")


def recording_job(seen: list[T], item: T, delay: float) -> Callable[[], Awaitable[None]]:
    """A job for ``spawn_serial`` that sleeps ``delay`` and then records ``item``."""
    async def run() -> None:
        await asyncio.sleep(delay)
        seen.append(item)
    return run


async def test_serial_tasks_keep_order() -> None:
    runner = TaskRunner()
    seen: list[int] = []
    for i, delay in enumerate([0.05, 0.0, 0.02]):
        runner.spawn_serial("room", recording_job(seen, i, delay), name=f"job{i}")
    await runner.drain()
    assert seen == [0, 1, 2]
    await runner.stop()


async def test_failed_task_is_logged_and_others_continue(caplog: pytest.LogCaptureFixture) -> None:
    runner = TaskRunner()

    async def fail() -> None:
        raise RuntimeError("boom")

    async def ok() -> str:
        return "fine"

    runner.spawn(fail(), name="failing")
    task = runner.spawn(ok(), name="ok")
    await runner.drain()
    assert task.result() == "fine"
    assert "Task failing failed" in caplog.text
    await runner.stop()


async def test_every_survives_failing_iterations() -> None:
    runner = TaskRunner()
    calls: list[int] = []

    async def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first fails")

    runner.every(0.01, flaky, name="flaky")
    await asyncio.sleep(0.1)
    await runner.stop()
    assert len(calls) >= 3


async def test_stop_cancels_and_refuses_new_work() -> None:
    runner = TaskRunner()
    task = runner.spawn(asyncio.sleep(100), name="sleeper")
    await runner.stop()
    assert task.cancelled()
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        runner.spawn(coro, name="late")


async def test_settle_waits_for_the_reactions_spawned_since_the_last_call() -> None:
    runner = TaskRunner()
    finished: list[str] = []
    runner.spawn_serial("a", recording_job(finished, "a", 0.03), name="a")
    runner.spawn_serial("b", recording_job(finished, "b", 0.01), name="b")
    await runner.settle(5.0)
    assert sorted(finished) == ["a", "b"]
    await runner.settle(5.0)  # nothing new: returns at once
    await runner.stop()


async def test_settle_gives_up_after_the_wait_and_never_waits_twice_for_one_task() -> None:
    runner = TaskRunner()
    gate = asyncio.Event()

    async def slow() -> None:
        await gate.wait()

    runner.spawn_serial("slow", slow, name="slow")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await runner.settle(0.05)
    assert 0.04 <= loop.time() - started < 1.0
    started = loop.time()
    await runner.settle(5.0)  # the slow command was waited for once already
    assert loop.time() - started < 0.5
    gate.set()
    await runner.drain()
    await runner.stop()


async def test_plain_spawns_are_not_reactions() -> None:
    runner = TaskRunner()
    runner.spawn(asyncio.sleep(100), name="long-lived")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await runner.settle(5.0)
    assert loop.time() - started < 0.5
    await runner.stop()
