"""The scan schedule: a scan whose people are held back by quiet hours asks for one more."""

from __future__ import annotations

import asyncio
from datetime import datetime
from zoneinfo import ZoneInfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from fakes import SetClock
from test_fault_isolation import Hygiene, Outbox, Text

from nerbot.config import RemindersConfig
from nerbot.domain.reminders import ReminderSettings
from nerbot.ids import UserId
from nerbot.reminder_service import AFTER_QUIET_JOB, ReminderService
from nerbot.store import Store

SHANGHAI = ZoneInfo("Asia/Shanghai")
ALICE = UserId("@alice:hs")


def at(day: int, hour: int) -> int:
    return int(datetime(2026, 12, day, hour, tzinfo=SHANGHAI).timestamp() * 1000)


async def test_a_scan_in_quiet_hours_schedules_one_more_when_they_end() -> None:
    """``scan_at = "23:00"`` (inside 22:00-09:00) used to remind nobody, ever."""
    store, clock = Store(":memory:"), SetClock(at(7, 23))

    async def audience() -> list[UserId]:
        return [ALICE]

    config = RemindersConfig(policy=ReminderSettings(grace_ms=0), scan_at_minute=23 * 60)
    service = ReminderService(config, store, Hygiene(set()), audience, Text(),  # type: ignore[arg-type]
                              Outbox(), clock)  # type: ignore[arg-type]
    scheduler = service.scheduler = AsyncIOScheduler(timezone=SHANGHAI)
    scheduler.start()
    try:
        stats = await service.scan()
        assert (stats.queued, stats.held) == (0, {"quiet_hours": 1})
        assert stats.after_quiet_ms == at(8, 9)
        job = scheduler.get_job(AFTER_QUIET_JOB)
        assert job is not None and job.next_run_time == datetime(2026, 12, 8, 9,
                                                                 tzinfo=SHANGHAI)
        clock.now = at(8, 9)  # what that scan finds
        stats = await service.scan()
        assert stats.queued == 1 and stats.after_quiet_ms is None
        assert [m.user_id for m in store.pending_messages()] == [ALICE]
    finally:
        scheduler.shutdown(wait=False)


async def test_scans_never_overlap_and_a_scheduled_one_meeting_a_running_one_is_skipped(
) -> None:
    """With ``scan_at = "09:00"`` the scan after quiet hours and the daily one fire together."""
    store, clock, started = Store(":memory:"), SetClock(at(8, 9)), asyncio.Event()
    release, calls = asyncio.Event(), []

    async def audience() -> list[UserId]:
        calls.append(1)
        started.set()
        await release.wait()
        return [ALICE]

    config = RemindersConfig(policy=ReminderSettings(grace_ms=0), scan_at_minute=9 * 60)
    service = ReminderService(config, store, Hygiene(set()), audience, Text(),  # type: ignore[arg-type]
                              Outbox(), clock)  # type: ignore[arg-type]
    first = asyncio.create_task(service._scheduled_scan())
    await started.wait()
    await service._scheduled_scan()  # returns at once: skipped
    retry = asyncio.create_task(service.scan())  # a direct scan waits its turn
    await asyncio.sleep(0)
    assert calls == [1]
    release.set()
    await first
    await retry
    assert calls == [1, 1] and len(store.pending_messages()) == 1
