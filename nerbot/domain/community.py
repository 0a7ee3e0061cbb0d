"""The community report: how the people the bot serves are doing, and whether the bot helps.

Pure: the store hands over rows, this module counts. The same numbers feed ``!report``, the
``nerbot report --json`` document (``REPORT_SCHEMA``; fields are only ever added) and the
metrics' gauges, so the three never disagree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from nerbot.domain.assessment import FindingKind, SessionMark, UserReport
from nerbot.domain.facts import BackupState

DAY_MS = 24 * 3600 * 1000
WEEK_MS = 7 * DAY_MS
# Bumped only if a field changes meaning or goes away (never done so far); new fields do not.
REPORT_SCHEMA = 1
# Cancel codes that mean the two sides saw different keys: the "MITM detection events" the seed
# article says to watch (a person pressing "They don't match", or a MAC over other keys).
MISMATCH_CODES = frozenset({"m.mismatched_sas", "m.key_mismatch", "m.mismatched_commitment"})
# Findings that make someone "at risk" for the campaign measure (idle sessions alone do not).
AT_RISK = frozenset({FindingKind.NO_CROSS_SIGNING, FindingKind.NO_BACKUP,
                     FindingKind.NO_SECRET_STORAGE, FindingKind.UNVERIFIED_SESSIONS})


@dataclass(frozen=True, slots=True)
class HygieneRecord:
    """One person's latest assessment, as kept for the report (no device IDs, no names)."""

    user_id: str
    assessed_ms: int
    cross_signing: bool
    backup: str            # present / absent (seen), likely_absent (inferred), unknown
    recovery: bool | None  # None: not seen
    unverified: int        # sessions with keys, not cross-signed
    inactive: int          # sessions idle past the threshold
    at_risk: bool
    remote: bool


def hygiene_record(report: UserReport, now_ms: int) -> HygieneRecord:
    if report.backup is BackupState.UNKNOWN:
        backup = "likely_absent" if "backup_likely_absent" in report.inferred else "unknown"
    else:
        backup = report.backup.value
    return HygieneRecord(
        user_id=report.user_id, assessed_ms=now_ms, cross_signing=report.cross_signing,
        backup=backup, recovery=report.recovery,
        # Without an identity nothing can verify a session: counted as "no identity" instead.
        unverified=sum(s.mark is SessionMark.UNVERIFIED for s in report.sessions)
        if report.cross_signing else 0,
        inactive=sum(s.mark is SessionMark.INACTIVE for s in report.sessions),
        at_risk=any(f.kind in AT_RISK for f in report.findings), remote=report.remote)


@dataclass(frozen=True, slots=True)
class PeopleCounts:
    """How many people are in each state; ``share`` turns a count into a fraction."""

    people: int = 0
    cross_signing: int = 0
    backup_present: int = 0        # seen
    backup_absent: int = 0         # seen
    backup_likely_absent: int = 0  # inferred (no identity, so almost surely no backup)
    backup_unknown: int = 0        # not visible
    recovery: int = 0              # seen
    no_recovery: int = 0           # seen
    recovery_unknown: int = 0
    with_unverified: int = 0
    with_inactive: int = 0
    unverified_sessions: int = 0
    at_risk: int = 0

    def share(self, count: int) -> float | None:
        return count / self.people if self.people else None

    def gauges(self) -> dict[str, int]:
        """The metrics' ``nerbot_people{state}``: every count but the session total."""
        return {k: v for k, v in asdict(self).items() if k != "unverified_sessions"}


def count_people(records: Iterable[HygieneRecord]) -> PeopleCounts:
    c: Counter[str] = Counter()
    for r in records:
        c["people"] += 1
        c["cross_signing"] += r.cross_signing
        c[f"backup_{r.backup}"] += 1
        c["recovery" if r.recovery else "no_recovery" if r.recovery is False
          else "recovery_unknown"] += 1
        c["with_unverified"] += r.unverified > 0
        c["with_inactive"] += r.inactive > 0
        c["unverified_sessions"] += r.unverified
        c["at_risk"] += r.at_risk
    return PeopleCounts(**{k: c[k] for k in PeopleCounts.__dataclass_fields__})


@dataclass(frozen=True, slots=True)
class VerificationRow:
    user_id: str
    transport: str
    started_ms: int
    result: str             # pending, verified, cancelled, timeout
    cancel_code: str | None


@dataclass(frozen=True, slots=True)
class VerificationCounts:
    started: int = 0
    verified: int = 0
    cancelled: int = 0
    timed_out: int = 0
    mismatches: int = 0
    in_progress: int = 0
    cancel_codes: dict[str, int] = field(default_factory=dict)

    @property
    def success_rate(self) -> float | None:
        """Verified among the ended ones (an unfinished one is neither success nor failure)."""
        ended = self.verified + self.cancelled + self.timed_out
        return self.verified / ended if ended else None


def count_verifications(rows: Iterable[VerificationRow], since_ms: int) -> VerificationCounts:
    started = verified = cancelled = timed_out = mismatches = pending = 0
    codes: Counter[str] = Counter()
    for row in rows:
        if row.started_ms < since_ms:
            continue
        started += 1
        if row.result == "verified":
            verified += 1
        elif row.result == "timeout":
            timed_out += 1
        elif row.result == "cancelled":
            cancelled += 1
            codes[row.cancel_code or "unknown"] += 1
            mismatches += row.cancel_code in MISMATCH_CODES
        else:
            pending += 1
    return VerificationCounts(started, verified, cancelled, timed_out, mismatches, pending,
                              dict(sorted(codes.items())))


@dataclass(frozen=True, slots=True)
class AlertRow:
    user_id: str
    kind: str       # new_sessions / identity_reset
    sessions: int   # how many sessions the alert named
    at_ms: int


@dataclass(frozen=True, slots=True)
class ReminderOutcome:
    """One reminder delivered, and whether that person was fixed within a week of it."""

    user_id: str
    sent_ms: int
    fixed_within_week: bool


@dataclass(frozen=True, slots=True)
class ReminderCounts:
    sent: int = 0
    people_reminded: int = 0
    people_fixed_within_week: int = 0
    turned_off: int = 0   # people with reminders off (now)
    snoozed: int = 0      # people with a snooze running (now)

    @property
    def fix_rate(self) -> float | None:
        return (self.people_fixed_within_week / self.people_reminded
                if self.people_reminded else None)


@dataclass(frozen=True, slots=True)
class TrendPoint:
    day: str
    counts: PeopleCounts


@dataclass(frozen=True, slots=True)
class ReportInputs:
    """Everything the report is made from, as the store has it."""

    now_ms: int
    people: Sequence[HygieneRecord]
    verifications: Sequence[VerificationRow]
    alerts: Sequence[AlertRow]
    reminders: Sequence[ReminderOutcome]
    turned_off: int
    snoozed: int
    snapshots: Mapping[str, PeopleCounts]  # day (UTC, YYYY-MM-DD) → counts that day
    last_scan_ms: int | None = None
    verified_admins: frozenset[str] = frozenset()
    rate_limited: bool | None = None


@dataclass(frozen=True, slots=True)
class CommunityReport:
    generated_ms: int
    last_scan_ms: int | None
    people: PeopleCounts
    verifications_7d: VerificationCounts
    verifications_30d: VerificationCounts
    new_unverified_per_day: dict[str, int]  # the last 7 days, oldest first
    identity_resets_7d: int
    identity_resets_30d: int
    reminders_7d: ReminderCounts
    reminders_30d: ReminderCounts
    week_ago: TrendPoint | None
    four_weeks_ago: TrendPoint | None
    verified_admins: tuple[str, ...]
    rate_limited: bool | None

    def to_json(self) -> dict[str, Any]:
        """The documented, stable document of ``nerbot report --json`` (README: "Report")."""
        def verifications(v: VerificationCounts) -> dict[str, Any]:
            return asdict(v) | {"success_rate": v.success_rate}

        def reminders(r: ReminderCounts) -> dict[str, Any]:
            return asdict(r) | {"fix_rate": r.fix_rate}

        def people(p: PeopleCounts) -> dict[str, Any]:
            shares = {k: p.share(v) for k, v in asdict(p).items()
                      if k not in ("people", "unverified_sessions")}
            return asdict(p) | {"shares": shares}

        def trend(t: TrendPoint | None) -> dict[str, Any] | None:
            return None if t is None else {"day": t.day, "people": people(t.counts)}

        return {
            "schema": REPORT_SCHEMA,
            "generated_at": iso(self.generated_ms),
            "last_scan_at": iso(self.last_scan_ms) if self.last_scan_ms else None,
            "people": people(self.people),
            "verifications": {"last_7_days": verifications(self.verifications_7d),
                              "last_30_days": verifications(self.verifications_30d)},
            "new_unverified_sessions_per_day": self.new_unverified_per_day,
            "identity_resets": {"last_7_days": self.identity_resets_7d,
                                "last_30_days": self.identity_resets_30d},
            "reminders": {"last_7_days": reminders(self.reminders_7d),
                          "last_30_days": reminders(self.reminders_30d)},
            "trend": {"week_ago": trend(self.week_ago),
                      "four_weeks_ago": trend(self.four_weeks_ago)},
            "verified_admins": list(self.verified_admins),
            "rate_limited": self.rate_limited,
        }


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def day_of(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).date().isoformat()


def _reminders(rows: Sequence[ReminderOutcome], since_ms: int, turned_off: int,
               snoozed: int) -> ReminderCounts:
    window = [r for r in rows if r.sent_ms >= since_ms]
    reminded = {r.user_id for r in window}
    fixed = {r.user_id for r in window if r.fixed_within_week}
    return ReminderCounts(len(window), len(reminded), len(fixed), turned_off, snoozed)


def _trend(snapshots: Mapping[str, PeopleCounts], now_ms: int, days: int) -> TrendPoint | None:
    day = day_of(now_ms - days * DAY_MS)
    counts = snapshots.get(day)
    return TrendPoint(day, counts) if counts is not None else None


def build_report(inputs: ReportInputs) -> CommunityReport:
    now = inputs.now_ms
    week, month = now - WEEK_MS, now - 30 * DAY_MS
    today = datetime.fromtimestamp(now / 1000, UTC).date()
    per_day = {(today - timedelta(days=n)).isoformat(): 0 for n in range(6, -1, -1)}
    for alert in inputs.alerts:
        day = day_of(alert.at_ms)
        if alert.kind == "new_sessions" and day in per_day:
            per_day[day] += alert.sessions
    resets = [a.at_ms for a in inputs.alerts if a.kind == "identity_reset"]
    return CommunityReport(
        generated_ms=now,
        last_scan_ms=inputs.last_scan_ms,
        people=count_people(inputs.people),
        verifications_7d=count_verifications(inputs.verifications, week),
        verifications_30d=count_verifications(inputs.verifications, month),
        new_unverified_per_day=per_day,
        identity_resets_7d=sum(t >= week for t in resets),
        identity_resets_30d=sum(t >= month for t in resets),
        reminders_7d=_reminders(inputs.reminders, week, inputs.turned_off, inputs.snoozed),
        reminders_30d=_reminders(inputs.reminders, month, inputs.turned_off, inputs.snoozed),
        week_ago=_trend(inputs.snapshots, now, 7),
        four_weeks_ago=_trend(inputs.snapshots, now, 28),
        verified_admins=tuple(sorted(inputs.verified_admins)),
        rate_limited=inputs.rate_limited,
    )
