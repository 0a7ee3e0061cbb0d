"""Whether a user is due a DM reminder about their findings: a pure policy.

The scheduler assesses each user and asks ``decide``; storage keeps one ``ReminderHistory`` per
user and, after a send, stores what ``record_sent`` returns. Nothing here reads a clock or a
store, so every rule (grace, backoff, quiet hours, one a day, opt-out, snooze, all-good) is
unit-tested with plain numbers. Times are epoch milliseconds; "local" means the configured zone.

Exactly once: every message has a deterministic key (user, finding set, period, serial) and a
Matrix transaction ID derived from it. Until ``record_sent`` is stored, ``decide`` keeps giving
the same key, so a resend after a crash reuses the transaction ID and the homeserver drops the
duplicate. The serial (messages ever sent to the user) keeps keys unique when the same finding
set comes back later, where period alone would repeat.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from nerbot.domain.assessment import DAY_MS, Finding, FindingKind, UserReport

MINUTE_MS = 60 * 1000
HOUR_MS = 60 * MINUTE_MS
WEEK_MS = 7 * DAY_MS
MINUTES_PER_DAY = 24 * 60
MAX_DURATION_MS = 365 * DAY_MS  # longest snooze (or configured duration) accepted

DEFAULT_REMIND_ON = frozenset({
    FindingKind.NO_CROSS_SIGNING,
    FindingKind.NO_BACKUP,
    FindingKind.NO_SECRET_STORAGE,
    FindingKind.UNVERIFIED_SESSIONS,
})
DEFAULT_GRACE_MS = DAY_MS
DEFAULT_BACKOFF_MS = (DAY_MS, 3 * DAY_MS, 7 * DAY_MS, 30 * DAY_MS)  # the last one repeats
DEFAULT_QUIET_START_MINUTE = 22 * 60
DEFAULT_QUIET_END_MINUTE = 9 * 60
DEFAULT_TIMEZONE = "Asia/Shanghai"

# Findings about key storage: not reminded when the user deliberately turned key storage off.
BACKUP_KINDS = frozenset({FindingKind.NO_BACKUP, FindingKind.NO_SECRET_STORAGE})
ALL_GOOD_KEY = "all_good"  # the "finding set" of an all-good note (never a FindingKind value)
TXN_PREFIX = "nerbot-rem-"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


class DecisionKind(enum.Enum):
    NONE = "none"          # send nothing now (``reason`` says why, ``not_before_ms`` when)
    REMIND = "remind"      # send a reminder about ``findings``
    ALL_GOOD = "all_good"  # send the one short "all fixed" note


# The outbox kinds of this policy's messages (a decision's kind value).
REMINDER_KINDS = frozenset({DecisionKind.REMIND.value, DecisionKind.ALL_GOOD.value})


@dataclass(frozen=True, slots=True)
class ReminderSettings:
    """The operator's policy. Quiet hours are local minutes of the day, ``[start, end)``; they
    may wrap midnight, and ``start == end`` means none."""

    remind_on: frozenset[FindingKind] = DEFAULT_REMIND_ON
    grace_ms: int = DEFAULT_GRACE_MS
    backoff_ms: tuple[int, ...] = DEFAULT_BACKOFF_MS
    quiet_start_minute: int = DEFAULT_QUIET_START_MINUTE
    quiet_end_minute: int = DEFAULT_QUIET_END_MINUTE
    timezone: str = DEFAULT_TIMEZONE

    def __post_init__(self) -> None:
        # Accept any iterable from config code, but keep the settings immutable.
        object.__setattr__(self, "remind_on", frozenset(self.remind_on))
        object.__setattr__(self, "backoff_ms", tuple(self.backoff_ms))
        if not all(isinstance(kind, FindingKind) for kind in self.remind_on):
            raise ValueError("remind_on must hold FindingKind values")
        if self.grace_ms < 0:
            raise ValueError(f"grace must not be negative: {self.grace_ms}")
        if not self.backoff_ms:
            raise ValueError("backoff needs at least one interval")
        if any(step <= 0 for step in self.backoff_ms):
            raise ValueError(f"backoff intervals must be positive: {self.backoff_ms}")
        for minute in (self.quiet_start_minute, self.quiet_end_minute):
            if not 0 <= minute < MINUTES_PER_DAY:
                raise ValueError(f"quiet hours minute out of range 0..1439: {minute}")
        _ = self.zone  # fail at start-up, not at the first reminder

    @property
    def zone(self) -> ZoneInfo:
        try:
            return ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
            raise ValueError(f"unknown time zone: {self.timezone!r}") from exc

    @property
    def has_quiet_hours(self) -> bool:
        return self.quiet_start_minute != self.quiet_end_minute


@dataclass(frozen=True, slots=True)
class ReminderHistory:
    """What storage remembers about one user; ``record_sent`` gives the next one after a send.

    ``finding_key``/``sent_count`` describe the last reminder's finding set and how many
    reminders that set has had in a row; ``last_sent_ms`` is the last message of any kind.
    """

    first_seen_ms: int
    opted_out: bool = False               # "!remind off": respected until turned on again
    snoozed_until_ms: int | None = None
    finding_key: str | None = None        # finding set of the last reminder sent
    sent_count: int = 0                   # reminders sent for that set (its backoff position)
    last_sent_ms: int | None = None       # last reminder or all-good note, any set
    all_good_sent: bool = False           # the note for the current "all fixed" state went out
    backup_opted_out: bool = False        # Element's "key storage off", seen in account data
    sent_total: int = 0                   # messages ever sent to the user (keeps keys unique)


@dataclass(frozen=True, slots=True)
class ReminderDecision:
    """What to send now, if anything.

    ``reason``: "no_account", "opted_out", "nothing_to_report" (nothing pending,
    ``not_before_ms`` is None); "grace", "snoozed", "backoff", "daily_cap", "quiet_hours"
    (something is pending: the first rule that holds it back, in that order); "due" (REMIND) or
    "all_good" (ALL_GOOD). ``findings`` are those to mention, also while held back. ``key`` and
    ``txn_id`` are set exactly when something is to be sent. ``not_before_ms`` is the earliest
    moment the pending message can go out (``now`` when due).
    """

    kind: DecisionKind
    reason: str
    findings: tuple[Finding, ...] = ()
    key: str | None = None
    txn_id: str | None = None
    not_before_ms: int | None = None

    @property
    def due(self) -> bool:
        return self.kind is not DecisionKind.NONE


# -- identities ---------------------------------------------------------------------------------

def finding_key(kinds: Iterable[FindingKind]) -> str:
    """The finding set as a stable string, e.g. "no_backup+no_cross_signing" ("" when empty)."""
    return "+".join(sorted({kind.value for kind in kinds}))


def reminder_key(user_id: str, finding_set: str, period: int, serial: int) -> str:
    """The identity of one message. ``period``: reminders already sent for this finding set in
    a row (0 for the first); ``serial``: messages ever sent to the user before this one."""
    return f"{user_id}|{finding_set}|{period}|{serial}"


def transaction_id(key: str) -> str:
    """A Matrix transaction ID for a message key: the same in every process, URL-safe."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return TXN_PREFIX + digest[:32]


# -- local time ---------------------------------------------------------------------------------

def _local(ms: int, zone: ZoneInfo) -> datetime:
    return (_EPOCH + timedelta(milliseconds=ms)).astimezone(zone)


def _ms(moment: datetime) -> int:
    return (moment - _EPOCH) // _ONE_MS


def _at(day: date, minute: int, zone: ZoneInfo, fold: int = 0) -> int:
    wall = time(minute // 60, minute % 60, fold=fold)
    return _ms(datetime.combine(day, wall, tzinfo=zone))


def _minute_of_day(moment: datetime) -> int:
    return moment.hour * 60 + moment.minute


def in_quiet_hours(now_ms: int, settings: ReminderSettings) -> bool:
    if not settings.has_quiet_hours:
        return False
    start, end = settings.quiet_start_minute, settings.quiet_end_minute
    minute = _minute_of_day(_local(now_ms, settings.zone))
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end  # wraps midnight


def quiet_hours_end_ms(now_ms: int, settings: ReminderSettings) -> int:
    """``now_ms`` when outside quiet hours, else the moment they end (their local end time).

    On DST-change days the local end time may not exist or exist twice: the first candidate
    after ``now`` that is outside quiet hours wins, so the result is never inside them.
    """
    if not in_quiet_hours(now_ms, settings):
        return now_ms
    zone = settings.zone
    today = _local(now_ms, zone).date()
    candidates = sorted(
        _at(today + timedelta(days=offset), settings.quiet_end_minute, zone, fold)
        for offset in (0, 1, 2) for fold in (0, 1)
    )
    return next((c for c in candidates if c > now_ms and not in_quiet_hours(c, settings)),
                candidates[-1])  # unreachable: two DST gaps on consecutive days


def held_kinds(now_ms: int, settings: ReminderSettings) -> frozenset[str]:
    """Outbox kinds that must not be sent now: reminders in quiet hours (a backlog queued in
    the evening waits for the morning instead of going out at night)."""
    return REMINDER_KINDS if in_quiet_hours(now_ms, settings) else frozenset()


def next_local_day_ms(ms: int, settings: ReminderSettings) -> int:
    """The start of the local calendar day after the one ``ms`` falls on (the daily cap)."""
    zone = settings.zone
    return _at(_local(ms, zone).date() + timedelta(days=1), 0, zone)


# -- the policy ---------------------------------------------------------------------------------

def reminding_findings(report: UserReport, history: ReminderHistory,
                       settings: ReminderSettings) -> tuple[Finding, ...]:
    """The findings worth a reminder, in report order (most severe first)."""
    return tuple(
        f for f in report.findings
        if f.kind in settings.remind_on
        and not (history.backup_opted_out and f.kind in BACKUP_KINDS)
    )


def _period(history: ReminderHistory, finding_set: str) -> int:
    """Reminders already sent in a row for this set; a new set or episode starts at 0."""
    if history.finding_key == finding_set and not history.all_good_sent:
        return history.sent_count
    return 0


def backoff_slack_ms(step_ms: int) -> int:
    """How much earlier than a backoff step a reminder may go: 1/24 of the step, at most an
    hour. Scans run at the same wall-clock time, but each person is reached a little later or
    earlier in a scan than the day before, and a DST change makes a day 23 hours; without it
    a "1 day" step would often wait for the next day's scan (two days)."""
    return min(HOUR_MS, step_ms // 24)


def _backoff_until(history: ReminderHistory, period: int,
                   settings: ReminderSettings) -> int | None:
    if period == 0 or history.last_sent_ms is None:
        return None
    step = settings.backoff_ms[min(period, len(settings.backoff_ms)) - 1]
    return history.last_sent_ms + step - backoff_slack_ms(step)


def decide(report: UserReport, history: ReminderHistory, settings: ReminderSettings,
           now_ms: int) -> ReminderDecision:
    """Whether to DM the user now. Checks, in order:

    1. no account → NONE; 2. reminders off → NONE (forever, nothing pending);
    3. what is pending: a reminder about the reminding findings, else the all-good note when
       a reminder went out and everything is fixed since, else NONE "nothing_to_report";
    4. what holds it back: grace after first seen, snooze, backoff (same finding set only),
       one message per local calendar day, quiet hours. ``reason`` names the first of these
       that holds; ``not_before_ms`` is the latest of them all, moved out of quiet hours.
    """
    if not report.exists:
        return ReminderDecision(DecisionKind.NONE, "no_account")
    if history.opted_out:
        return ReminderDecision(DecisionKind.NONE, "opted_out")

    findings = reminding_findings(report, history, settings)
    if findings:
        kind, due_reason = DecisionKind.REMIND, "due"
        finding_set = finding_key(f.kind for f in findings)
        period = _period(history, finding_set)
        backoff_until = _backoff_until(history, period, settings)
    elif history.finding_key is not None and not history.all_good_sent:
        kind, due_reason = DecisionKind.ALL_GOOD, "all_good"
        finding_set, period, backoff_until = ALL_GOOD_KEY, history.sent_count, None
    else:
        return ReminderDecision(DecisionKind.NONE, "nothing_to_report")

    holds: tuple[tuple[str, int | None], ...] = (
        ("grace", history.first_seen_ms + settings.grace_ms),
        ("snoozed", history.snoozed_until_ms),
        ("backoff", backoff_until),
        ("daily_cap", None if history.last_sent_ms is None
         else next_local_day_ms(history.last_sent_ms, settings)),
    )
    earliest = max([now_ms, *(until for _, until in holds if until is not None)])
    not_before = quiet_hours_end_ms(earliest, settings)
    if not_before > now_ms:
        reason = next((name for name, until in holds if until is not None and until > now_ms),
                      "quiet_hours")
        return ReminderDecision(DecisionKind.NONE, reason, findings, not_before_ms=not_before)

    key = reminder_key(report.user_id, finding_set, period, history.sent_total)
    return ReminderDecision(kind, due_reason, findings, key, transaction_id(key), now_ms)


def record_sent(history: ReminderHistory, decision: ReminderDecision,
                now_ms: int) -> ReminderHistory:
    """The history after ``decision`` was sent at ``now_ms``.

    ``history`` must be the one the decision was made from: recording twice, or against
    another history, raises ``ValueError`` instead of corrupting the backoff.
    """
    if not decision.due or decision.key is None:
        raise ValueError("nothing was sent: the decision was NONE")
    user_id = decision.key.rsplit("|", 3)[0]
    if decision.kind is DecisionKind.REMIND:
        finding_set = finding_key(f.kind for f in decision.findings)
        period = _period(history, finding_set)
    else:
        finding_set, period = ALL_GOOD_KEY, history.sent_count
    if decision.key != reminder_key(user_id, finding_set, period, history.sent_total):
        raise ValueError("the decision was not made from this history (recorded twice?)")

    if decision.kind is DecisionKind.REMIND:
        return replace(history, finding_key=finding_set, sent_count=period + 1,
                       last_sent_ms=now_ms, all_good_sent=False,
                       sent_total=history.sent_total + 1)
    return replace(history, all_good_sent=True, last_sent_ms=now_ms,
                   sent_total=history.sent_total + 1)


# -- user input ---------------------------------------------------------------------------------

_DURATION = re.compile(r"\s*([0-9]{1,9})\s*([mhdw])\s*", re.IGNORECASE)
_UNIT_MS = {"m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS, "w": WEEK_MS}
_TIME_OF_DAY = re.compile(r"\s*([0-9]{1,2}):([0-9]{2})\s*")


def parse_duration(text: str) -> int:
    """Milliseconds from "90m", "3h", "7d", "2w" (any case, spaces allowed), up to 365 days."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (for example 90m, 3h, 7d, 2w)")
    ms = int(match.group(1)) * _UNIT_MS[match.group(2).lower()]
    if ms <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    if ms > MAX_DURATION_MS:
        raise ValueError(f"duration longer than 365 days: {text!r}")
    return ms


def parse_time_of_day(text: str) -> int:
    """Minutes after local midnight from "HH:MM" (for quiet hours in config)."""
    match = _TIME_OF_DAY.fullmatch(text)
    if match is None or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise ValueError(f"not a time of day: {text!r} (for example 22:00)")
    return int(match.group(1)) * 60 + int(match.group(2))
