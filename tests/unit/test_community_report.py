"""The community report's counting, admin trust and the alarms, on fakes and an in-memory store."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from nerbot.alarm_service import AlarmService
from nerbot.commands.report import render_community_report
from nerbot.domain.admin_trust import AdminCheck, check_admin_session
from nerbot.domain.assessment import AssessmentPolicy, assess_user
from nerbot.domain.community import (
    DAY_MS,
    HygieneRecord,
    count_people,
    day_of,
    hygiene_record,
)
from nerbot.domain.facts import BackupFacts, BackupState, DeviceFacts, KeyFacts, UserFacts
from nerbot.i18n import Catalog
from nerbot.ids import RoomId, UserId
from nerbot.metrics import BotMetrics
from nerbot.report_service import collect_report, snapshot_today
from nerbot.store import OutboxMessage, Store

NOW = 500 * DAY_MS + 12 * 3600 * 1000
ROOM = RoomId("!admins:hs")


def record(user: str, *, cs: bool = True, backup: str = "present", recovery: bool | None = True,
           unverified: int = 0, at_ms: int = NOW) -> HygieneRecord:
    at_risk = not cs or backup in ("absent", "likely_absent") or recovery is False \
        or unverified > 0
    return HygieneRecord(user, at_ms, cs, backup, recovery, unverified, 0, at_risk, False)


def test_hygiene_record_keeps_seen_and_inferred_apart() -> None:
    device = DeviceFacts("D1", "phone", True, False)
    no_identity = assess_user(UserFacts("@a:hs", True, False, False, (device,)),
                              AssessmentPolicy(), NOW)
    r = hygiene_record(no_identity, NOW)
    assert (r.cross_signing, r.backup, r.recovery, r.unverified, r.at_risk) == (
        False, "likely_absent", None, 0, True)  # no identity: nothing to verify a session with
    seen = assess_user(UserFacts("@b:hs", True, True, True, (device,),
                                 BackupFacts(BackupState.ABSENT, secret_storage=False)),
                       AssessmentPolicy(), NOW)
    r = hygiene_record(seen, NOW)
    assert (r.backup, r.recovery, r.unverified, r.at_risk) == ("absent", False, 1, True)


def test_counts_shares_and_rates() -> None:
    people = [record("@a:hs"), record("@b:hs", cs=False, backup="likely_absent",
                                      recovery=None),
              record("@c:hs", unverified=2), record("@d:hs", backup="unknown", recovery=False)]
    counts = count_people(people)
    assert (counts.people, counts.cross_signing, counts.backup_present,
            counts.backup_likely_absent, counts.backup_unknown) == (4, 3, 2, 1, 1)
    assert (counts.recovery, counts.no_recovery, counts.recovery_unknown) == (2, 1, 1)
    assert (counts.with_unverified, counts.unverified_sessions, counts.at_risk) == (1, 2, 3)
    assert counts.share(counts.cross_signing) == 0.75
    assert count_people([]).share(0) is None


def test_verifications_alerts_reminders_and_trend_from_the_store() -> None:
    store = Store(":memory:")
    user, other = UserId("@a:hs"), UserId("@b:hs")
    for txn, result, code, started in (
            ("t1", "verified", None, NOW - DAY_MS), ("t2", "cancelled", "m.mismatched_sas",
                                                    NOW - 2 * DAY_MS),
            ("t3", "timeout", "m.timeout", NOW - 10 * DAY_MS),
            ("t4", "cancelled", "m.user", NOW - 40 * DAY_MS), ("t5", "pending", None, NOW)):
        store.verification_started(txn, user, "D", "incoming", "to_device", started)
        if result != "pending":
            store.verification_ended(txn, result, started + 1000, cancel_code=code)
    store.record_alert(user, "new_sessions", ["X", "Y"], NOW - 3600_000)
    store.record_alert(user, "identity_reset", [], NOW - 8 * DAY_MS)
    # Two reminders: one person fixed within the week, the other only after it.
    store.record_assessments([record(user, recovery=False, at_ms=NOW - 20 * DAY_MS),
                              record(other, recovery=False, at_ms=NOW - 20 * DAY_MS)])
    for who in (user, other):
        store.enqueue(OutboxMessage(f"r-{who}", who, "remind", f"x-{who}", "b", None,
                                    "pending", 0, NOW - 20 * DAY_MS))
        store.message_sent(f"r-{who}", "$e", NOW - 20 * DAY_MS)
    store.record_assessments([record(user, at_ms=NOW - 15 * DAY_MS)])
    store.record_assessments([record(other, at_ms=NOW - 5 * DAY_MS)])
    store.set_reminder_choice(other, NOW, snoozed_until_ms=NOW + DAY_MS)
    store.save_daily_snapshot(day_of(NOW - 7 * DAY_MS),
                              count_people([record(user, recovery=False)]), NOW - 7 * DAY_MS)
    snapshot_today(store, NOW)
    report = collect_report(store, NOW, [user, "@admin:hs"])
    assert (report.verifications_7d.started, report.verifications_7d.verified,
            report.verifications_7d.mismatches, report.verifications_7d.in_progress) == (
        3, 1, 1, 1)
    assert report.verifications_30d.timed_out == 1 and report.verifications_30d.started == 4
    assert report.verifications_7d.success_rate == 0.5
    assert report.new_unverified_per_day[day_of(NOW - 3600_000)] == 2
    assert sum(report.new_unverified_per_day.values()) == 2
    assert (report.identity_resets_7d, report.identity_resets_30d) == (0, 1)
    r = report.reminders_30d
    assert (r.sent, r.people_reminded, r.people_fixed_within_week, r.snoozed) == (2, 2, 1, 1)
    assert report.reminders_7d.sent == 0 and r.fix_rate == 0.5
    assert report.week_ago is not None and report.week_ago.counts.no_recovery == 1
    assert report.four_weeks_ago is None
    assert report.people.people == 2 and report.people.at_risk == 0
    document = report.to_json()
    assert document["schema"] == 1
    assert document["people"]["shares"]["cross_signing"] == 1.0
    assert document["verifications"]["last_7_days"]["cancel_codes"] == {
        "m.mismatched_sas": 1}
    assert document["trend"]["four_weeks_ago"] is None
    for lang in ("zh", "en"):
        text = render_community_report(Catalog.load(), lang, report, [user])
        assert "D" not in text.split("\n", 2)[2].split() and "X" not in text  # no sessions
        assert "2" in text


def test_forgetting_people_no_longer_served() -> None:
    store = Store(":memory:")
    store.record_assessments([record("@a:hs"), record("@b:hs")])
    assert store.forget_assessments_except(["@a:hs"]) == 1
    assert [r.user_id for r in store.hygiene_records()] == ["@a:hs"]


@pytest.mark.parametrize(("admin", "key", "devices", "expected"), [
    (False, "K1", [("K1", True)], AdminCheck.NOT_ADMIN),
    (True, None, [("K1", True)], AdminCheck.NOT_ENCRYPTED),
    (True, "K1", None, AdminCheck.NO_IDENTITY),
    (True, "K9", [("K1", True)], AdminCheck.UNKNOWN_SESSION),
    (True, "K2", [("K1", True), ("K2", False)], AdminCheck.UNSIGNED_SESSION),
    (True, "K1", [("K1", True), ("K2", False)], AdminCheck.TRUSTED),
    # a stranger's device copying the signed session's public key changes nothing
    (True, "K1", [("K1", False), ("K1", True)], AdminCheck.TRUSTED),
])
def test_admin_session_check(admin: bool, key: str | None,
                             devices: list[tuple[str, bool]] | None,
                             expected: AdminCheck) -> None:
    facts = None if devices is None else KeyFacts(
        "@boss:hs", True, True, "M",
        tuple(DeviceFacts(f"D{i}", None, True, signed, curve25519=curve)
              for i, (curve, signed) in enumerate(devices)))
    assert check_admin_session(admin, key, facts) is expected


def test_no_identity_is_no_identity_even_with_devices() -> None:
    facts = KeyFacts("@boss:hs", False, False, None, (DeviceFacts("D", None, True, False,
                                                                  curve25519="K"),))
    assert check_admin_session(True, "K", facts) is AdminCheck.NO_IDENTITY


class Clock:
    def now_ms(self) -> int:
        return NOW


def alarms(store: Store, state: str = "encrypted", **kw: Any) -> tuple[AlarmService, list[int],
                                                                       BotMetrics]:
    deliveries: list[int] = []
    metrics = BotMetrics()
    service = AlarmService(store, Catalog.load(), "en", Clock(), ROOM, lambda room: state,
                           deliver=lambda: deliveries.append(1), counted=metrics.alarm, **kw)
    return service, deliveries, metrics


def alarm_count(metrics: BotMetrics, kind: str) -> float:
    value = metrics.registry.get_sample_value("nerbot_alarms_total", {"kind": kind})
    return value or 0.0


def test_each_alarm_is_queued_once_for_the_admin_room(caplog: pytest.LogCaptureFixture) -> None:
    store = Store(":memory:")
    service, deliveries, metrics = alarms(store)
    with caplog.at_level(logging.WARNING, logger="nerbot.alarm_service"):
        for _ in range(2):
            service.mismatch("@a:hs", "txn1", "to_device", "m.mismatched_sas")
            service.own_account("@bot:hs", "MINE", {"MINE": "nerbot", "EVIL": None}, "M2", "M1")
    rows = store.outbox()
    assert sorted(m.key for m in rows) == ["alarm:mismatch:txn1", "alarm:own_device:EVIL",
                                           "alarm:own_identity:M2"]
    assert all(m.room_id == ROOM and m.kind == "alarm" for m in rows)
    assert len(deliveries) == 3 and alarm_count(metrics, "mismatch") == 1
    mismatch = next(m.body for m in rows if "mismatch" in m.key)
    assert "@a:hs" in mismatch and "emoji did not match" in mismatch
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and all("ALARM" in r.getMessage() for r in errors)


def test_logins_alarm_above_the_daily_threshold_only() -> None:
    store = Store(":memory:")
    service, _, _ = alarms(store, logins_per_day=2)
    user = UserId("@a:hs")
    store.record_alert(user, "new_sessions", ["A", "B"], NOW - 1000)
    service.sessions_counted(user, NOW)
    assert store.outbox() == []  # two a day is allowed here
    store.record_alert(user, "new_sessions", ["C"], NOW)
    service.sessions_counted(user, NOW)
    service.sessions_counted(user, NOW)
    (row,) = store.outbox()
    assert row.key == f"alarm:logins:{user}:{day_of(NOW)}" and "3 new unverified" in row.body


@pytest.mark.parametrize("state", ["unencrypted", "absent"])
def test_no_alarm_in_a_room_that_cannot_take_it(state: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    store = Store(":memory:")
    service, deliveries, metrics = alarms(store, state=state)
    with caplog.at_level(logging.WARNING, logger="nerbot.alarm_service"):
        service.mismatch("@a:hs", "t", "in_room", "m.key_mismatch")
        service.mismatch("@a:hs", "t", "in_room", "m.key_mismatch")
        assert service.check_room() is None
    assert store.outbox() == [] and deliveries == []
    assert alarm_count(metrics, "mismatch") == 1  # logged and counted once, not posted
    room_lines = [r for r in caplog.records if "admin.room" in r.getMessage()]
    assert len(room_lines) == 1 and room_lines[0].levelno == logging.ERROR


def test_reminder_sends_are_counted_as_reminders() -> None:
    metrics = BotMetrics()
    metrics.message("remind", sent=True)
    assert metrics.registry.get_sample_value("nerbot_messages_sent_total",
                                             {"kind": "reminder"}) == 1
