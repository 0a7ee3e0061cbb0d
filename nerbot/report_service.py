"""Gather the community report from the database: the same for ``!report`` and the CLI.

Reads only the bot's own database (no homeserver), so ``nerbot report`` works on the data
directory of a stopped bot, and the report costs a few SQL queries however large the community.
"""

from __future__ import annotations

from collections.abc import Iterable

from nerbot.domain.community import (
    DAY_MS,
    CommunityReport,
    ReportInputs,
    build_report,
    count_people,
    day_of,
)
from nerbot.reminder_service import LAST_SCAN_META
from nerbot.store import Store

RATE_LIMITED_META = "ratelimit.state"      # "limited" / "exempt", written at start
WINDOW_DAYS = 30


def collect_report(store: Store, now_ms: int, admins: Iterable[str],
                   rate_limited: bool | None = None) -> CommunityReport:
    """``rate_limited``: the running bot's view; None falls back to what the last start saw."""
    since = now_ms - WINDOW_DAYS * DAY_MS
    turned_off, snoozed = store.reminder_choices(now_ms)
    last_scan = store.get_meta(LAST_SCAN_META)
    if rate_limited is None:
        state = store.get_meta(RATE_LIMITED_META)
        rate_limited = None if state is None else state == "limited"
    admins = list(admins)
    return build_report(ReportInputs(
        now_ms=now_ms,
        people=store.hygiene_records(),
        verifications=store.verification_rows(since),
        alerts=store.alert_rows(since),
        reminders=store.reminder_outcomes(since),
        turned_off=turned_off,
        snoozed=snoozed,
        snapshots=store.daily_snapshots(day_of(now_ms - d * DAY_MS) for d in (7, 28)),
        last_scan_ms=int(last_scan) if last_scan else None,
        verified_admins=frozenset(store.verified_users(admins)),
        rate_limited=rate_limited,
    ))


def snapshot_today(store: Store, now_ms: int) -> None:
    """Keep today's numbers for the trend (one row per day, the day's last one wins)."""
    store.save_daily_snapshot(day_of(now_ms), count_people(store.hygiene_records()), now_ms)
