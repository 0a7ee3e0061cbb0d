"""The reminder policy, on hand-made reports and fixed clocks in two time zones."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from nerbot.domain.assessment import (
    DAY_MS,
    GUIDE_FOR,
    SEVERITY_OF,
    AssessmentPolicy,
    Finding,
    FindingKind,
    UserReport,
    assess_user,
)
from nerbot.domain.facts import BackupFacts, BackupState, DeviceFacts, UserFacts
from nerbot.domain.reminders import (
    DEFAULT_REMIND_ON,
    HOUR_MS,
    MINUTE_MS,
    TXN_PREFIX,
    DecisionKind,
    ReminderDecision,
    ReminderHistory,
    ReminderSettings,
    backoff_slack_ms,
    decide,
    finding_key,
    in_quiet_hours,
    next_local_day_ms,
    parse_duration,
    parse_time_of_day,
    quiet_hours_end_ms,
    record_sent,
    reminder_key,
    transaction_id,
)

K = FindingKind
SHANGHAI = ZoneInfo("Asia/Shanghai")
BERLIN = ZoneInfo("Europe/Berlin")
USER = "@alice:hs"

SETTINGS = ReminderSettings()  # defaults: Asia/Shanghai, quiet 22:00–09:00
NO_QUIET = ReminderSettings(quiet_start_minute=0, quiet_end_minute=0)
BERLIN_SETTINGS = ReminderSettings(timezone="Europe/Berlin")
BERLIN_NO_QUIET = ReminderSettings(timezone="Europe/Berlin", quiet_start_minute=0,
                                   quiet_end_minute=0)


def local(zone: ZoneInfo, y: int, mo: int, d: int, h: int = 0, mi: int = 0,
          fold: int = 0) -> int:
    """Epoch ms of a local wall time."""
    moment = datetime(y, mo, d, h, mi, tzinfo=zone, fold=fold)
    return int(moment.timestamp() * 1000)


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> int:
    return int(datetime(y, mo, d, h, mi, tzinfo=UTC).timestamp() * 1000)


def sh(d: int, h: int = 12, mi: int = 0) -> int:
    """A day of March 2024 in Shanghai (noon unless told)."""
    return local(SHANGHAI, 2024, 3, d, h, mi)


NOON = sh(4)
FRESH = ReminderHistory(first_seen_ms=NOON - 10 * DAY_MS)


def report(*kinds: FindingKind, user_id: str = USER) -> UserReport:
    findings = tuple(Finding(k, SEVERITY_OF[k], GUIDE_FOR[k]) for k in kinds)
    return UserReport(user_id, True, True, BackupState.PRESENT, (), findings)


BROKEN = report(K.NO_CROSS_SIGNING, K.NO_BACKUP)
BROKEN_KEY = "no_backup+no_cross_signing"
UNVERIFIED = report(K.UNVERIFIED_SESSIONS)
HEALTHY = report()


def send(rep: UserReport, history: ReminderHistory, now: int,
         settings: ReminderSettings = SETTINGS) -> ReminderHistory:
    """Decide, insist that something is due, and record the send."""
    decision = decide(rep, history, settings, now)
    assert decision.due, decision
    return record_sent(history, decision, now)


# -- settings -----------------------------------------------------------------------------------

def test_defaults_are_the_documented_ones() -> None:
    s = ReminderSettings()
    assert s.remind_on == DEFAULT_REMIND_ON == frozenset(
        {K.NO_CROSS_SIGNING, K.NO_BACKUP, K.NO_SECRET_STORAGE, K.UNVERIFIED_SESSIONS})
    assert K.STALE_SESSIONS not in s.remind_on
    assert s.grace_ms == 24 * HOUR_MS
    assert s.backoff_ms == (DAY_MS, 3 * DAY_MS, 7 * DAY_MS, 30 * DAY_MS)
    assert (s.quiet_start_minute, s.quiet_end_minute) == (22 * 60, 9 * 60)
    assert s.timezone == "Asia/Shanghai" and s.zone == SHANGHAI
    assert s.has_quiet_hours and not NO_QUIET.has_quiet_hours


@pytest.mark.parametrize("kwargs", [
    {"grace_ms": -1},
    {"backoff_ms": ()},
    {"backoff_ms": (0,)},
    {"backoff_ms": (DAY_MS, -1)},
    {"quiet_start_minute": 1440},
    {"quiet_start_minute": -1},
    {"quiet_end_minute": 24 * 60},
    {"timezone": "Nowhere/Atlantis"},
    {"timezone": ""},
    {"timezone": "Europe"},
    {"timezone": "../etc/passwd"},
    {"timezone": "asia/shanghai"},
    {"remind_on": frozenset({"no_backup"})},
])
def test_nonsense_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ReminderSettings(**kwargs)  # type: ignore[arg-type]


def test_settings_take_any_iterable_but_stay_immutable() -> None:
    s = ReminderSettings(remind_on=[K.NO_BACKUP], backoff_ms=[HOUR_MS],  # type: ignore[arg-type]
                         grace_ms=0, timezone="UTC")
    assert s.remind_on == frozenset({K.NO_BACKUP}) and isinstance(s.remind_on, frozenset)
    assert s.backoff_ms == (HOUR_MS,) and isinstance(s.backoff_ms, tuple)
    assert s.zone == ZoneInfo("UTC")


# -- what is pending ----------------------------------------------------------------------------

def test_unknown_account_gets_nothing() -> None:
    gone = UserReport(USER, False, False, BackupState.UNKNOWN, (), ())
    d = decide(gone, replace(FRESH, opted_out=True), SETTINGS, NOON)
    assert (d.kind, d.reason, d.not_before_ms, d.key) == (DecisionKind.NONE, "no_account",
                                                          None, None)


def test_first_reminder_is_due_after_grace() -> None:
    d = decide(BROKEN, FRESH, SETTINGS, NOON)
    assert d.kind is DecisionKind.REMIND and d.reason == "due" and d.due
    assert [f.kind for f in d.findings] == [K.NO_CROSS_SIGNING, K.NO_BACKUP]
    assert d.key == f"{USER}|{BROKEN_KEY}|0|0"
    assert d.txn_id == transaction_id(d.key)
    assert d.not_before_ms == NOON


def test_assessed_user_without_identity_is_reminded_in_report_order() -> None:
    facts = UserFacts(USER, True, False, False,
                      (DeviceFacts("A", "phone", True, False),),
                      BackupFacts(BackupState.ABSENT))
    rep = assess_user(facts, AssessmentPolicy(), NOON)
    d = decide(rep, FRESH, SETTINGS, NOON)
    assert d.kind is DecisionKind.REMIND
    assert [f.kind for f in d.findings] == [f.kind for f in rep.findings]
    assert {f.kind for f in d.findings} == {K.NO_CROSS_SIGNING, K.NO_BACKUP}


def test_healthy_user_never_reminded_gets_nothing() -> None:
    facts = UserFacts(USER, True, True, True, (DeviceFacts("A", "phone", True, True),),
                      BackupFacts(BackupState.PRESENT, "1", secret_storage=True))
    rep = assess_user(facts, AssessmentPolicy(), NOON)
    assert rep.ok
    d = decide(rep, FRESH, SETTINGS, NOON)
    assert (d.kind, d.reason, d.not_before_ms) == (DecisionKind.NONE, "nothing_to_report", None)


def test_stale_sessions_remind_only_when_configured() -> None:
    stale = report(K.STALE_SESSIONS)
    assert decide(stale, FRESH, SETTINGS, NOON).reason == "nothing_to_report"
    on = ReminderSettings(remind_on=DEFAULT_REMIND_ON | {K.STALE_SESSIONS})
    d = decide(stale, FRESH, on, NOON)
    assert d.kind is DecisionKind.REMIND and [f.kind for f in d.findings] == [K.STALE_SESSIONS]
    # a reminder about other things does not mention stale sessions by default
    d = decide(report(K.NO_BACKUP, K.STALE_SESSIONS), FRESH, SETTINGS, NOON)
    assert [f.kind for f in d.findings] == [K.NO_BACKUP]


# -- grace --------------------------------------------------------------------------------------

def test_grace_after_first_seen() -> None:
    history = ReminderHistory(first_seen_ms=NOON - 23 * HOUR_MS)
    d = decide(BROKEN, history, SETTINGS, NOON)
    assert (d.kind, d.reason) == (DecisionKind.NONE, "grace")
    assert d.not_before_ms == NOON + HOUR_MS
    assert d.key is None and d.txn_id is None
    assert [f.kind for f in d.findings] == [K.NO_CROSS_SIGNING, K.NO_BACKUP]  # what is pending
    assert decide(BROKEN, history, SETTINGS, NOON + HOUR_MS - 1).reason == "grace"
    assert decide(BROKEN, history, SETTINGS, NOON + HOUR_MS).kind is DecisionKind.REMIND


def test_grace_ending_in_quiet_hours_waits_for_the_morning() -> None:
    history = ReminderHistory(first_seen_ms=sh(3, 23))
    d = decide(BROKEN, history, SETTINGS, NOON)
    assert d.reason == "grace" and d.not_before_ms == sh(5, 9)


def test_zero_grace_reminds_at_once() -> None:
    settings = ReminderSettings(grace_ms=0)
    assert decide(BROKEN, ReminderHistory(first_seen_ms=NOON), settings, NOON).due


# -- backoff ------------------------------------------------------------------------------------

def test_backoff_sequence_is_1_3_7_30_30_days() -> None:
    history, now = send(BROKEN, FRESH, NOON), NOON
    for period, gap in enumerate([1, 3, 7, 30, 30], start=1):
        step = gap * DAY_MS - backoff_slack_ms(gap * DAY_MS)  # an hour less
        early = decide(BROKEN, history, NO_QUIET, now + step - 1)  # (the hours move back)
        assert (early.kind, early.reason) == (DecisionKind.NONE, "backoff"), period
        assert early.not_before_ms == now + step
        now += step
        d = decide(BROKEN, history, NO_QUIET, now)
        assert d.kind is DecisionKind.REMIND
        assert d.key == reminder_key(USER, BROKEN_KEY, period, period)
        history = record_sent(history, d, now)
    assert history.sent_count == 6 and history.sent_total == 6


def test_a_daily_scan_reaching_someone_earlier_than_the_day_before_still_reminds() -> None:
    """Scans run at one wall-clock time, but a person is reached a few seconds earlier or
    later in each; and a DST change makes a day 23 hours. A "1 day" step still comes the next
    day, not two days later."""
    history = send(BROKEN, FRESH, sh(4, 10, 0) + 20_000)  # reached 20 s into the scan
    assert decide(BROKEN, history, SETTINGS, sh(5, 10, 0) + 10_000).due  # 10 s in, next day
    berlin = ReminderSettings(timezone="Europe/Berlin")  # DST began on 31 March 2024
    sent = local(BERLIN, 2024, 3, 30, 10)
    history = send(BROKEN, FRESH, sent, berlin)
    assert decide(BROKEN, history, berlin, local(BERLIN, 2024, 3, 31, 10)).due  # 23 h later
    assert not decide(BROKEN, history, berlin, sent + 22 * HOUR_MS).due


def test_backoff_ending_in_quiet_hours_is_pushed_to_their_end() -> None:
    settings = ReminderSettings(backoff_ms=(DAY_MS + 2 * HOUR_MS,))  # 25 h with the slack
    history = send(BROKEN, FRESH, sh(4, 21, 30), settings)
    d = decide(BROKEN, history, settings, sh(5, 12))
    assert d.reason == "backoff" and d.not_before_ms == sh(6, 9)
    d = decide(BROKEN, history, settings, sh(5, 22, 45))  # backoff over, now quiet
    assert d.reason == "quiet_hours" and d.not_before_ms == sh(6, 9)
    assert decide(BROKEN, history, settings, sh(6, 9)).kind is DecisionKind.REMIND


# -- quiet hours --------------------------------------------------------------------------------

@pytest.mark.parametrize(("h", "mi", "quiet"), [
    (12, 0, False), (21, 59, False), (22, 0, True), (23, 59, True), (0, 0, True),
    (3, 0, True), (8, 59, True), (9, 0, False),
])
def test_quiet_hours_wrap_midnight(h: int, mi: int, quiet: bool) -> None:
    assert in_quiet_hours(sh(4, h, mi), SETTINGS) is quiet


@pytest.mark.parametrize(("h", "mi", "quiet"), [
    (12, 59, False), (13, 0, True), (13, 59, True), (14, 0, False), (23, 30, False),
])
def test_quiet_hours_within_one_day(h: int, mi: int, quiet: bool) -> None:
    settings = ReminderSettings(quiet_start_minute=13 * 60, quiet_end_minute=14 * 60)
    assert in_quiet_hours(sh(4, h, mi), settings) is quiet


def test_equal_start_and_end_means_no_quiet_hours() -> None:
    settings = ReminderSettings(quiet_start_minute=600, quiet_end_minute=600)
    assert not any(in_quiet_hours(NOON + i * 15 * MINUTE_MS, settings) for i in range(96))
    assert quiet_hours_end_ms(sh(4, 10), settings) == sh(4, 10)


@pytest.mark.parametrize(("now", "end"), [
    (sh(4, 23), sh(5, 9)),
    (sh(4, 22), sh(5, 9)),
    (sh(5, 3), sh(5, 9)),
    (sh(5, 8, 59), sh(5, 9)),
    (local(SHANGHAI, 2024, 2, 29, 23), local(SHANGHAI, 2024, 3, 1, 9)),  # leap day, month end
    (sh(4, 12), sh(4, 12)),  # outside quiet hours: now
])
def test_quiet_hours_end(now: int, end: int) -> None:
    assert quiet_hours_end_ms(now, SETTINGS) == end


def test_in_quiet_hours_the_reminder_waits_for_the_morning() -> None:
    d = decide(BROKEN, FRESH, SETTINGS, sh(4, 23))
    assert (d.kind, d.reason, d.not_before_ms) == (DecisionKind.NONE, "quiet_hours", sh(5, 9))
    assert d.key is None and d.findings == BROKEN.findings


def test_quiet_hours_follow_daylight_saving_in_berlin() -> None:
    # spring forward (2024-03-31): 09:00 CEST is 07:00 UTC; fall back (2024-10-27): 08:00 UTC
    assert quiet_hours_end_ms(local(BERLIN, 2024, 3, 30, 23), BERLIN_SETTINGS) == \
        utc(2024, 3, 31, 7)
    assert quiet_hours_end_ms(local(BERLIN, 2024, 10, 26, 23), BERLIN_SETTINGS) == \
        utc(2024, 10, 27, 8)
    assert in_quiet_hours(utc(2024, 3, 31, 6, 59), BERLIN_SETTINGS)
    assert not in_quiet_hours(utc(2024, 3, 31, 7), BERLIN_SETTINGS)
    assert in_quiet_hours(utc(2024, 10, 27, 7, 59), BERLIN_SETTINGS)


def test_quiet_hours_ending_in_a_dst_gap_end_after_it() -> None:
    # 02:30 does not exist in Berlin on 2024-03-31 (02:00 CET → 03:00 CEST)
    settings = ReminderSettings(timezone="Europe/Berlin", quiet_start_minute=22 * 60,
                                quiet_end_minute=2 * 60 + 30)
    now = local(BERLIN, 2024, 3, 31, 1, 30)
    end = quiet_hours_end_ms(now, settings)
    assert now < end <= now + HOUR_MS and not in_quiet_hours(end, settings)


def test_quiet_hours_ending_in_a_repeated_hour_end_after_now() -> None:
    # 02:00–03:00 happens twice in Berlin on 2024-10-27; quiet hours 01:00–02:30
    settings = ReminderSettings(timezone="Europe/Berlin", quiet_start_minute=60,
                                quiet_end_minute=2 * 60 + 30)
    first_pass = local(BERLIN, 2024, 10, 27, 1, 30)          # CEST, 23:30 UTC
    second_pass = local(BERLIN, 2024, 10, 27, 2, 0, fold=1)  # CET, 01:00 UTC
    assert quiet_hours_end_ms(first_pass, settings) == utc(2024, 10, 27, 0, 30)
    assert in_quiet_hours(second_pass, settings)
    assert quiet_hours_end_ms(second_pass, settings) == utc(2024, 10, 27, 1, 30)


# -- one message per local day ------------------------------------------------------------------

def test_one_message_per_local_day_even_for_a_new_finding_set() -> None:
    history = send(BROKEN, FRESH, sh(4, 23, 30), NO_QUIET)
    d = decide(UNVERIFIED, history, NO_QUIET, sh(4, 23, 45))
    assert (d.kind, d.reason, d.not_before_ms) == (DecisionKind.NONE, "daily_cap", sh(5, 0))
    assert decide(UNVERIFIED, history, NO_QUIET, sh(5, 0) - 1).reason == "daily_cap"
    assert decide(UNVERIFIED, history, NO_QUIET, sh(5, 0, 30)).kind is DecisionKind.REMIND


def test_the_day_is_the_local_day_not_the_utc_day() -> None:
    # 15:30 and 16:30 UTC on the same UTC day are 23:30 and 00:30 in Shanghai: two days
    history = send(BROKEN, FRESH, utc(2024, 3, 4, 15, 30), NO_QUIET)
    assert decide(UNVERIFIED, history, NO_QUIET, utc(2024, 3, 4, 16, 30)).due
    # 16:30 UTC and 15:29 UTC the next UTC day are the same Shanghai day
    history = send(BROKEN, FRESH, utc(2024, 3, 4, 16, 30), NO_QUIET)
    d = decide(UNVERIFIED, history, NO_QUIET, utc(2024, 3, 5, 15, 29))
    assert d.reason == "daily_cap" and d.not_before_ms == utc(2024, 3, 5, 16)


def test_the_next_day_starts_after_quiet_hours() -> None:
    history = send(BROKEN, FRESH, sh(4, 10))
    d = decide(UNVERIFIED, history, SETTINGS, sh(4, 14))
    assert d.reason == "daily_cap" and d.not_before_ms == sh(5, 9)


def test_local_days_follow_daylight_saving() -> None:
    # 2024-03-31 is 23 hours long in Berlin, 2024-10-27 is 25 hours long
    assert next_local_day_ms(local(BERLIN, 2024, 3, 30, 20), BERLIN_NO_QUIET) == \
        utc(2024, 3, 30, 23)
    assert next_local_day_ms(local(BERLIN, 2024, 3, 31, 0, 30), BERLIN_NO_QUIET) == \
        utc(2024, 3, 31, 22)
    assert next_local_day_ms(local(BERLIN, 2024, 10, 27, 0, 30), BERLIN_NO_QUIET) == \
        utc(2024, 10, 27, 23)
    history = send(BROKEN, FRESH, local(BERLIN, 2024, 3, 30, 23, 30), BERLIN_NO_QUIET)
    assert decide(UNVERIFIED, history, BERLIN_NO_QUIET,
                  local(BERLIN, 2024, 3, 30, 23, 59)).reason == "daily_cap"
    assert decide(UNVERIFIED, history, BERLIN_NO_QUIET, local(BERLIN, 2024, 3, 31, 0, 30)).due


# -- user controls ------------------------------------------------------------------------------

@pytest.mark.parametrize("days_later", [0, 1, 30, 365, 3650])
def test_opted_out_is_respected_forever(days_later: int) -> None:
    history = replace(send(BROKEN, FRESH, NOON), opted_out=True)
    now = NOON + days_later * DAY_MS + DAY_MS
    for rep in (BROKEN, UNVERIFIED, HEALTHY):  # no reminder, no all-good note either
        d = decide(rep, history, SETTINGS, now)
        assert (d.kind, d.reason, d.not_before_ms, d.key) == (DecisionKind.NONE, "opted_out",
                                                              None, None)
    assert decide(BROKEN, replace(history, opted_out=False), SETTINGS, now).due


def test_snooze_holds_until_it_expires() -> None:
    history = replace(FRESH, snoozed_until_ms=sh(7, 15))
    d = decide(BROKEN, history, SETTINGS, NOON)
    assert (d.reason, d.not_before_ms) == ("snoozed", sh(7, 15))
    assert decide(BROKEN, history, SETTINGS, sh(7, 15) - 1).reason == "snoozed"
    assert decide(BROKEN, history, SETTINGS, sh(7, 15)).kind is DecisionKind.REMIND
    assert decide(BROKEN, history, SETTINGS, sh(20)).kind is DecisionKind.REMIND  # expired


def test_snooze_ending_at_night_waits_for_the_morning() -> None:
    history = replace(FRESH, snoozed_until_ms=sh(7, 23))
    d = decide(BROKEN, history, SETTINGS, NOON)
    assert (d.reason, d.not_before_ms) == ("snoozed", sh(8, 9))


# -- all good -----------------------------------------------------------------------------------

def test_fixed_everything_gets_exactly_one_all_good_note() -> None:
    history = send(BROKEN, FRESH, NOON)
    same_day = decide(HEALTHY, history, SETTINGS, sh(4, 18))
    assert (same_day.reason, same_day.not_before_ms, same_day.findings) == (
        "daily_cap", sh(5, 9), ())
    d = decide(HEALTHY, history, SETTINGS, sh(5, 9))
    assert (d.kind, d.reason, d.findings) == (DecisionKind.ALL_GOOD, "all_good", ())
    assert d.key == f"{USER}|all_good|1|1" and d.txn_id == transaction_id(d.key)
    history = record_sent(history, d, sh(5, 9))
    assert history.all_good_sent and history.last_sent_ms == sh(5, 9)
    for days in (0, 1, 2, 30, 400):
        later = decide(HEALTHY, history, SETTINGS, sh(5, 12) + days * DAY_MS)
        assert (later.kind, later.reason, later.not_before_ms) == (
            DecisionKind.NONE, "nothing_to_report", None)


def test_all_good_note_respects_snooze_and_quiet_hours() -> None:
    history = send(BROKEN, FRESH, NOON)
    assert decide(HEALTHY, history, SETTINGS, sh(5, 23)).reason == "quiet_hours"
    snoozed = replace(history, snoozed_until_ms=sh(9, 12))
    d = decide(HEALTHY, snoozed, SETTINGS, sh(6, 12))
    assert (d.reason, d.not_before_ms) == ("snoozed", sh(9, 12))


def test_problem_coming_back_after_all_good_starts_a_new_sequence_with_a_new_id() -> None:
    first = decide(BROKEN, FRESH, SETTINGS, NOON)
    history = record_sent(FRESH, first, NOON)
    history = send(HEALTHY, history, sh(5))
    again = decide(BROKEN, history, SETTINGS, sh(6))
    assert again.kind is DecisionKind.REMIND
    assert again.key == f"{USER}|{BROKEN_KEY}|0|2"  # period 0 again: a fresh backoff
    assert again.key != first.key and again.txn_id != first.txn_id
    history = record_sent(history, again, sh(6))
    assert (history.sent_count, history.all_good_sent) == (1, False)
    assert decide(BROKEN, history, SETTINGS, sh(7) - HOUR_MS - 1).reason == "backoff"


# -- changed finding set ------------------------------------------------------------------------

def test_new_finding_set_restarts_backoff_but_keeps_the_daily_cap() -> None:
    history = send(BROKEN, send(BROKEN, FRESH, sh(4)), sh(5))  # periods 0 and 1
    assert decide(BROKEN, history, SETTINGS, sh(7, 10)).reason == "backoff"  # waits for day 8
    assert decide(UNVERIFIED, history, SETTINGS, sh(5, 18)).reason == "daily_cap"
    d = decide(UNVERIFIED, history, SETTINGS, sh(6))
    assert d.kind is DecisionKind.REMIND and d.key == f"{USER}|unverified_sessions|0|2"
    history = record_sent(history, d, sh(6))
    assert (history.finding_key, history.sent_count) == ("unverified_sessions", 1)
    assert decide(UNVERIFIED, history, SETTINGS, sh(7, 11) - 1).reason == "backoff"
    assert decide(UNVERIFIED, history, SETTINGS, sh(7, 11)).key == \
        f"{USER}|unverified_sessions|1|3"


def test_new_devices_in_the_same_finding_set_do_not_restart_backoff() -> None:
    one = UserReport(USER, True, True, BackupState.PRESENT, (),
                     (Finding(K.UNVERIFIED_SESSIONS, SEVERITY_OF[K.UNVERIFIED_SESSIONS],
                              "verify-sessions", ("A",)),))
    two = replace(one, findings=(replace(one.findings[0], device_ids=("A", "B")),))
    history = send(one, FRESH, NOON)
    d = decide(two, history, SETTINGS, sh(5, 10))
    assert d.reason == "backoff"
    assert d.findings[0].device_ids == ("A", "B")  # the pending reminder names both


# -- key storage turned off ---------------------------------------------------------------------

def test_backup_opt_out_suppresses_only_backup_findings() -> None:
    history = replace(FRESH, backup_opted_out=True)
    rep = report(K.NO_BACKUP, K.NO_SECRET_STORAGE, K.UNVERIFIED_SESSIONS)
    d = decide(rep, history, SETTINGS, NOON)
    assert [f.kind for f in d.findings] == [K.UNVERIFIED_SESSIONS]
    assert d.key == f"{USER}|unverified_sessions|0|0"
    only_backup = report(K.NO_BACKUP, K.NO_SECRET_STORAGE)
    assert decide(only_backup, history, SETTINGS, NOON).reason == "nothing_to_report"
    assert decide(only_backup, FRESH, SETTINGS, NOON).kind is DecisionKind.REMIND
    d = decide(report(K.NO_CROSS_SIGNING, K.NO_BACKUP), history, SETTINGS, NOON)
    assert [f.kind for f in d.findings] == [K.NO_CROSS_SIGNING]


def test_turning_key_storage_off_after_a_backup_reminder_closes_it_with_the_note() -> None:
    history = send(report(K.NO_BACKUP), FRESH, NOON)
    history = replace(history, backup_opted_out=True)
    d = decide(report(K.NO_BACKUP), history, SETTINGS, sh(5))
    assert d.kind is DecisionKind.ALL_GOOD and d.findings == ()


# -- order of the checks ------------------------------------------------------------------------

def test_reason_is_the_first_hold_and_not_before_the_latest() -> None:
    tangled = ReminderHistory(first_seen_ms=NOON - HOUR_MS,       # grace until 11:00 tomorrow
                              snoozed_until_ms=sh(6),             # snooze until day 6 noon
                              finding_key=BROKEN_KEY, sent_count=1,
                              last_sent_ms=NOON - HOUR_MS,        # backoff until 11:00 tomorrow
                              sent_total=1)
    d = decide(BROKEN, tangled, SETTINGS, NOON)
    assert (d.reason, d.not_before_ms) == ("grace", sh(6))
    tangled = replace(tangled, first_seen_ms=FRESH.first_seen_ms)
    d = decide(BROKEN, tangled, SETTINGS, NOON)
    assert (d.reason, d.not_before_ms) == ("snoozed", sh(6))
    tangled = replace(tangled, snoozed_until_ms=None)
    d = decide(BROKEN, tangled, SETTINGS, NOON)
    assert (d.reason, d.not_before_ms) == ("backoff", sh(5, 10))  # an hour's slack
    d = decide(UNVERIFIED, tangled, SETTINGS, NOON)  # another set: no backoff, same day
    assert (d.reason, d.not_before_ms) == ("daily_cap", sh(5, 9))
    d = decide(UNVERIFIED, tangled, SETTINGS, sh(5, 3))
    assert (d.reason, d.not_before_ms) == ("quiet_hours", sh(5, 9))


def test_no_account_and_opt_out_come_before_everything() -> None:
    tangled = ReminderHistory(first_seen_ms=NOON, opted_out=True, snoozed_until_ms=sh(9))
    gone = UserReport(USER, False, False, BackupState.UNKNOWN, (), ())
    assert decide(gone, tangled, SETTINGS, sh(4, 23)).reason == "no_account"
    assert decide(BROKEN, tangled, SETTINGS, sh(4, 23)).reason == "opted_out"


SCENARIOS = [
    ("new user", BROKEN, ReminderHistory(first_seen_ms=sh(4, 5)), SETTINGS, sh(4, 0)),
    ("reminded", BROKEN, replace(FRESH, finding_key=BROKEN_KEY, sent_count=2,
                                 last_sent_ms=sh(4, 21, 59), sent_total=2), SETTINGS, sh(4, 0)),
    ("set changed", UNVERIFIED, replace(FRESH, finding_key=BROKEN_KEY, sent_count=1,
                                        last_sent_ms=sh(4, 9, 30), sent_total=1),
     SETTINGS, sh(4, 0)),
    ("fixed", HEALTHY, replace(FRESH, finding_key=BROKEN_KEY, sent_count=1,
                               last_sent_ms=sh(4, 10), sent_total=1), SETTINGS, sh(4, 0)),
    ("snoozed", BROKEN, replace(FRESH, snoozed_until_ms=sh(5, 22, 10)), SETTINGS, sh(4, 0)),
    ("berlin dst", BROKEN, ReminderHistory(first_seen_ms=local(BERLIN, 2024, 3, 30, 6),
                                           snoozed_until_ms=local(BERLIN, 2024, 3, 31, 1)),
     BERLIN_SETTINGS, local(BERLIN, 2024, 3, 30)),
    ("berlin fall back", BROKEN, replace(FRESH, finding_key=BROKEN_KEY, sent_count=1,
                                         last_sent_ms=local(BERLIN, 2024, 10, 26, 21, 30),
                                         sent_total=1),
     BERLIN_SETTINGS, local(BERLIN, 2024, 10, 26)),
]


@pytest.mark.parametrize(("rep", "history", "settings", "start"), [s[1:] for s in SCENARIOS],
                         ids=[s[0] for s in SCENARIOS])
def test_not_before_is_exactly_when_the_message_becomes_due(
        rep: UserReport, history: ReminderHistory, settings: ReminderSettings,
        start: int) -> None:
    checked = 0
    for step in range(4 * 24 * 2):  # every 30 minutes for four days
        now = start + step * 30 * MINUTE_MS
        d = decide(rep, history, settings, now)
        assert d.not_before_ms is not None
        if d.due:
            assert d.not_before_ms == now
            continue
        checked += 1
        assert d.not_before_ms > now
        assert decide(rep, history, settings, d.not_before_ms).due
        assert not decide(rep, history, settings, d.not_before_ms - 1).due
    assert checked > 0


# -- identities ---------------------------------------------------------------------------------

def test_finding_key_is_sorted_and_order_independent() -> None:
    assert finding_key([K.NO_CROSS_SIGNING, K.NO_BACKUP]) == BROKEN_KEY
    assert finding_key([K.NO_BACKUP, K.NO_CROSS_SIGNING, K.NO_BACKUP]) == BROKEN_KEY
    assert finding_key(iter([K.UNVERIFIED_SESSIONS])) == "unverified_sessions"
    assert finding_key([]) == ""


def test_keys_and_transaction_ids_differ_by_every_part() -> None:
    base = (USER, BROKEN_KEY, 0, 0)
    variants = [base, ("@bob:hs", BROKEN_KEY, 0, 0), (USER, "no_backup", 0, 0),
                (USER, BROKEN_KEY, 1, 0), (USER, BROKEN_KEY, 0, 1), (USER, "all_good", 0, 0)]
    keys = [reminder_key(*v) for v in variants]
    txns = [transaction_id(k) for k in keys]
    assert len(set(keys)) == len(set(txns)) == len(variants)


@pytest.mark.parametrize("user_id", [USER, "@bob:example.org", "@ünï|code:hs", "@x:[::1]:8448"])
def test_transaction_ids_are_valid_and_deterministic(user_id: str) -> None:
    key = reminder_key(user_id, BROKEN_KEY, 3, 7)
    txn = transaction_id(key)
    assert re.fullmatch(r"[A-Za-z0-9._~-]+", txn)
    assert txn.startswith(TXN_PREFIX) and len(txn) == len(TXN_PREFIX) + 32
    assert txn == transaction_id(key)
    assert txn == TXN_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:32]


def test_transaction_id_is_the_same_in_a_new_process() -> None:
    key = f"{USER}|{BROKEN_KEY}|0|0"
    assert transaction_id(key) == "nerbot-rem-ecc0c5e372ea8f03186fd3b95dceca8a"  # golden
    code = ("from nerbot.domain.reminders import transaction_id; "
            f"print(transaction_id({key!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONHASHSEED": "12345"})
    assert out.stdout.strip() == transaction_id(key)


def test_a_resend_after_a_crash_reuses_the_transaction_id() -> None:
    first = decide(BROKEN, FRESH, SETTINGS, NOON)
    # the process died after sending, before storing record_sent: the next scan decides again
    again = decide(BROKEN, FRESH, SETTINGS, NOON + 5 * MINUTE_MS)
    assert again.due and again.txn_id == first.txn_id and again.key == first.key
    assert decide(BROKEN, FRESH, SETTINGS, NOON).txn_id != \
        decide(report(K.NO_CROSS_SIGNING, K.NO_BACKUP, user_id="@bob:hs"),
               FRESH, SETTINGS, NOON).txn_id


# -- record_sent --------------------------------------------------------------------------------

def test_record_sent_after_a_reminder() -> None:
    history = replace(FRESH, snoozed_until_ms=NOON - 1, all_good_sent=True)
    d = decide(BROKEN, history, SETTINGS, NOON)
    after = record_sent(history, d, NOON + 7)
    assert after == replace(history, finding_key=BROKEN_KEY, sent_count=1,
                            last_sent_ms=NOON + 7, all_good_sent=False, sent_total=1)


def test_record_sent_refuses_nothing_and_double_recording() -> None:
    with pytest.raises(ValueError):
        record_sent(FRESH, ReminderDecision(DecisionKind.NONE, "grace"), NOON)
    d = decide(BROKEN, FRESH, SETTINGS, NOON)
    once = record_sent(FRESH, d, NOON)
    with pytest.raises(ValueError):
        record_sent(once, d, NOON)
    with pytest.raises(ValueError):  # a decision made from another history
        record_sent(replace(FRESH, sent_total=4), d, NOON)
    good = decide(HEALTHY, once, SETTINGS, sh(5))
    done = record_sent(once, good, sh(5))
    with pytest.raises(ValueError):
        record_sent(done, good, sh(5))


# -- user input ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "ms"), [
    ("90m", 90 * MINUTE_MS), ("1m", MINUTE_MS), ("3h", 3 * HOUR_MS), ("7d", 7 * DAY_MS),
    ("2w", 14 * DAY_MS), ("3H", 3 * HOUR_MS), ("2W", 14 * DAY_MS), (" 3 h ", 3 * HOUR_MS),
    ("\t12d\n", 12 * DAY_MS), ("365d", 365 * DAY_MS), ("52w", 364 * DAY_MS),
    ("525600m", 365 * DAY_MS), ("007d", 7 * DAY_MS),
])
def test_parse_duration(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", [
    "", " ", "3", "h", "3x", "-3h", "+3h", "0h", "0m", "00d", "3.5h", "366d", "53w",
    "8761h", "1e3h", "3h3", "3h 2m", "3 hours", "٣h", "9999999999d", "d3",
])
def test_parse_duration_refuses_bad_input(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("text", "minute"), [
    ("22:00", 1320), ("9:00", 540), (" 09:30 ", 570), ("00:00", 0), ("23:59", 1439),
])
def test_parse_time_of_day(text: str, minute: int) -> None:
    assert parse_time_of_day(text) == minute


@pytest.mark.parametrize("text", ["24:00", "12:60", "12", "12:5", "noon", "-1:00", ""])
def test_parse_time_of_day_refuses_bad_input(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time_of_day(text)
