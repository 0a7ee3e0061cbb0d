"""The task owner: serial order per key, failures logged not fatal, stop cancels all."""

from __future__ import annotations

import asyncio

import pytest

from nerbot.runner import TaskRunner


async def test_serial_tasks_keep_order() -> None:
    runner = TaskRunner()
    seen: list[int] = []

    def job(i: int, delay: float):  # type: ignore[no-untyped-def]
        async def run() -> None:
            await asyncio.sleep(delay)
            seen.append(i)
        return run

    for i, delay in enumerate([0.05, 0.0, 0.02]):
        runner.spawn_serial("room", job(i, delay), name=f"job{i}")
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
