"""Alerts (pure review), the outbox's pacing and storage, and the reminder/alert config."""

from __future__ import annotations

from pathlib import Path

import pytest

from nerbot.config import Config, parse_config
from nerbot.domain.alerts import alert_key, alert_txn_id, review_sessions
from nerbot.domain.assessment import FindingKind
from nerbot.domain.facts import DeviceFacts, KeyFacts
from nerbot.domain.reminders import DAY_MS, ReminderHistory
from nerbot.errors import ConfigError
from nerbot.ids import RoomId, UserId
from nerbot.outbox import Pacer
from nerbot.store import OutboxMessage, Store

ALICE = UserId("@alice:hs")


def facts(*devices: DeviceFacts, master: str | None = "M1") -> KeyFacts:
    return KeyFacts(ALICE, master is not None, master is not None, master, devices)


def dev(device_id: str, signed: bool = False, keys: bool = True) -> DeviceFacts:
    return DeviceFacts(device_id, f"name {device_id}", keys, signed)


# -- alerts --------------------------------------------------------------------------------


def test_first_look_is_only_a_baseline() -> None:
    decision = review_sessions({}, None, facts(dev("A"), dev("B")))
    assert not decision.alert and decision.remember_devices == ("A", "B")
    assert decision.remember_master_key == "M1"
    # a user without any identity is remembered as looked-at ("")
    assert review_sessions({}, None, facts(dev("A"), master=None)).remember_master_key == ""


def test_new_unsigned_sessions_alert_signed_and_keyless_do_not() -> None:
    known = {"A": 1}
    decision = review_sessions(known, "M1", facts(dev("A"), dev("B"), dev("C", signed=True),
                                                  dev("D", keys=False)))
    assert [d.device_id for d in decision.new_unsigned] == ["B"]
    # D has no keys yet: judged when its keys arrive, so not remembered now
    assert decision.remember_devices == ("B", "C") and decision.remember_master_key is None
    again = review_sessions({"A": 1, "B": 2, "C": 2}, "M1",
                            facts(dev("A"), dev("B"), dev("C", signed=True), dev("D")))
    assert [d.device_id for d in again.new_unsigned] == ["D"]


def test_identity_reset_is_a_changed_master_key_only() -> None:
    reset = review_sessions({"A": 1}, "M1", facts(dev("A"), master="M2"))
    assert reset.identity_reset and reset.remember_master_key == "M2" and reset.alert
    first_identity = review_sessions({"A": 1}, "", facts(dev("A"), master="M1"))
    assert not first_identity.identity_reset and first_identity.remember_master_key == "M1"
    removed = review_sessions({"A": 1}, "M1", facts(dev("A"), master=None))
    assert not removed.identity_reset and removed.remember_master_key is None


def test_alert_keys_are_deterministic_per_session_set() -> None:
    one = review_sessions({"A": 1}, "M1", facts(dev("A"), dev("C"), dev("B")))
    two = review_sessions({"A": 1}, "M1", facts(dev("B"), dev("C"), dev("A")))
    assert alert_key(ALICE, one) == alert_key(ALICE, two) == "alert|@alice:hs|B|C"
    assert alert_txn_id(alert_key(ALICE, one)) == alert_txn_id(alert_key(ALICE, two))
    other = review_sessions({"A": 1}, "M1", facts(dev("A"), dev("B")))
    assert alert_key(ALICE, other) != alert_key(ALICE, one)


# -- pacing -------------------------------------------------------------------------------


def test_pacer_spaces_sends_evenly_at_the_ceiling() -> None:
    now = [100.0]
    pacer = Pacer(per_minute=120, now=lambda: now[0])
    assert [pacer.delay() for _ in range(3)] == [0.0, 0.5, 1.0]
    now[0] = 110.0  # idle for a while: no burst credit, the next one goes at once
    assert pacer.delay() == 0.0 and pacer.delay() == 0.5


# -- storage ------------------------------------------------------------------------------


def message(key: str, created: int = 1) -> OutboxMessage:
    return OutboxMessage(key=key, user_id=ALICE, kind="remind", txn_id=f"t-{key}", body="hi",
                         room_id=None, status="pending", attempts=0, created_ms=created)


def test_enqueue_is_once_per_key_and_advances_state_atomically() -> None:
    store = Store(":memory:")
    history = ReminderHistory(first_seen_ms=0, finding_key="no_backup", sent_count=1,
                              last_sent_ms=5, sent_total=1)
    assert store.enqueue(message("k1"), history)
    assert not store.enqueue(message("k1"), ReminderHistory(first_seen_ms=0, sent_count=9))
    stored = store.reminder_history(ALICE, first_seen_ms=0)
    assert (stored.finding_key, stored.sent_count, stored.sent_total) == ("no_backup", 1, 1)
    [pending] = store.pending_messages()
    assert pending.room_id is None and pending.attempts == 0
    store.message_attempt("k1", RoomId("!dm:hs"))
    store.message_attempt("k1", RoomId("!dm:hs"))
    [again] = store.pending_messages()
    assert again.room_id == "!dm:hs" and again.attempts == 2 and again.txn_id == "t-k1"
    store.message_sent("k1", "$ev", 9)
    assert store.pending_messages() == [] and store.outbox(ALICE)[0].event_id == "$ev"


def test_user_choices_survive_policy_updates() -> None:
    store = Store(":memory:")
    store.set_reminder_choice(ALICE, 1, opted_out=True, snoozed_until_ms=50)
    store.enqueue(message("k1"), ReminderHistory(first_seen_ms=0, sent_count=1, sent_total=1))
    history = store.reminder_history(ALICE, 0)
    assert history.opted_out and history.snoozed_until_ms == 50 and history.sent_total == 1
    store.set_reminder_choice(ALICE, 2, alerts_off=True)
    assert store.alerts_off(ALICE) and store.reminder_history(ALICE, 0).opted_out
    store.set_reminder_choice(ALICE, 3, opted_out=False, snoozed_until_ms=None)
    assert not store.reminder_history(ALICE, 0).opted_out
    assert store.reminder_history(ALICE, 0).snoozed_until_ms is None


def test_known_devices_and_identities() -> None:
    store = Store(":memory:")
    assert store.known_devices(ALICE) == {} and store.known_master_key(ALICE) is None
    store.remember_devices(ALICE, ["A", "B"], 10)
    store.remember_devices(ALICE, ["B", "C"], 20)
    assert store.known_devices(ALICE) == {"A": 10, "B": 10, "C": 20}
    store.remember_master_key(ALICE, "", 10)
    assert store.known_master_key(ALICE) == ""
    store.remember_master_key(ALICE, "M", 11)
    assert store.known_master_key(ALICE) == "M"


# -- config -------------------------------------------------------------------------------


def config(**reminders: object) -> Config:
    raw = {"matrix": {"user_id": "@bot:hs", "password": "s3cret-pass"},
           "reminders": reminders}
    return parse_config(raw, {}, Path("/tmp"))


def test_reminder_defaults_and_overrides() -> None:
    default = config()
    assert default.reminders.policy.timezone == "Asia/Shanghai"
    assert default.reminders.policy.backoff_ms == (DAY_MS, 3 * DAY_MS, 7 * DAY_MS, 30 * DAY_MS)
    custom = config(grace="0", quiet_hours="", scan_at="10:30", backoff=["2d"],
                    remind_about=["stale_sessions"])
    r = custom.reminders
    assert r.policy.grace_ms == 0 and not r.policy.has_quiet_hours
    assert r.scan_at_minute == 630 and r.policy.backoff_ms == (2 * DAY_MS,)
    assert r.policy.remind_on == {FindingKind.STALE_SESSIONS}


@pytest.mark.parametrize(("key", "value", "problem"), [
    ("scan_every", "1m", "reminders.scan_every"),
    ("scan_every", "soon", "reminders.scan_every"),
    ("scan_at", "25:00", "reminders.scan_at"),
    ("scope", "everyone", "reminders.scope"),
    ("scope", "all-local", "reminders.scope"),  # needs an admin token
    ("remind_about", ["no_bakup"], "reminders.remind_about[0]"),
    ("backoff", [], "reminders.backoff"),
    ("backoff", ["1d", "x"], "reminders.backoff[1]"),
    ("quiet_hours", "22-9", "reminders.quiet_hours"),
    ("timezone", "Mars/Olympus", "reminders.timezone"),
    ("max_sends_per_minute", 0, "reminders.max_sends_per_minute"),
    ("enabled", "yes", "reminders.enabled"),
])
def test_bad_reminder_config_is_named_by_key(key: str, value: object, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config(**{key: value})
    assert problem in [k for k, _ in raised.value.problems], raised.value.problems


# -- words ----------------------------------------------------------------------------------


def test_reminder_and_alert_texts_name_sessions_dates_and_guides() -> None:
    from zoneinfo import ZoneInfo

    from nerbot.commands.remind import MessageText
    from nerbot.domain.alerts import review_sessions
    from nerbot.domain.assessment import AssessmentPolicy, assess_user
    from nerbot.domain.facts import UserFacts
    from nerbot.domain.reminders import ReminderSettings, decide
    from nerbot.i18n import Catalog

    store = Store(":memory:")
    march_1 = 1_772_323_200_000  # 2026-03-01 00:00 UTC = 08:00 in Shanghai
    store.touch_user(ALICE, march_1)
    store.remember_devices(ALICE, ["OLD"], march_1)
    text = MessageText(Catalog.load(), store, ZoneInfo("Asia/Shanghai"))
    facts = UserFacts(ALICE, True, True, True,
                      (DeviceFacts("GOOD", "laptop", True, True),
                       DeviceFacts("OLD", "old phone", True, False)))
    report = assess_user(facts, AssessmentPolicy(), march_1)
    decision = decide(report, ReminderHistory(first_seen_ms=0),
                      ReminderSettings(grace_ms=0, quiet_start_minute=0, quiet_end_minute=0),
                      march_1)
    store.set_language(ALICE, "zh", 1)
    zh = text.reminder(ALICE, decision, report)
    assert "**未验证**" in zh and "`OLD` old phone（我在 2026-03-01 第一次看到它）" in zh
    assert "`!guide verify-sessions`" in zh and "!remind off" in zh and "GOOD" not in zh
    store.set_language(ALICE, "en", 2)
    now = KeyFacts(ALICE, True, True, "M2", (DeviceFacts("NEW", "stranger", True, False),))
    alert = review_sessions({"GOOD": 1}, "M1", now)
    en = text.alert(ALICE, alert, march_1)
    assert "`NEW` stranger — noticed 2026-03-01 08:00" in en
    assert "identity was reset" in en and "!alerts off" in en


def test_a_remote_persons_reminder_says_what_cannot_be_seen_from_here() -> None:
    from zoneinfo import ZoneInfo

    from nerbot.commands.remind import MessageText
    from nerbot.domain.assessment import AssessmentPolicy, assess_user
    from nerbot.domain.facts import UserFacts
    from nerbot.domain.reminders import ReminderSettings, decide
    from nerbot.i18n import Catalog

    remote = UserId("@r:far.example")
    store = Store(":memory:")
    store.touch_user(remote, DAY_MS)
    text = MessageText(Catalog.load(), store, ZoneInfo("Asia/Shanghai"))
    facts = UserFacts(remote, True, False, False, (DeviceFacts("R", "phone", True, False),),
                      remote=True)
    report = assess_user(facts, AssessmentPolicy(), 2 * DAY_MS)
    decision = decide(report, ReminderHistory(first_seen_ms=0),
                      ReminderSettings(grace_ms=0, quiet_start_minute=0, quiet_end_minute=0),
                      2 * DAY_MS)
    assert decision.due
    store.set_language(remote, "en", 1)
    en = text.reminder(remote, decision, report)
    assert "Your account is on far.example" in en
    assert "your key backup, your recovery key and when each session was last used stay on " \
           "your server" in en
    store.set_language(remote, "zh", 2)
    zh = text.reminder(remote, decision, report)
    assert "你的账号在 far.example 上" in zh
    assert "看不到你的密钥备份、恢复密钥以及每个会话最后使用的时间" in zh


def test_a_missed_scan_is_overdue_after_one_period_of_the_configured_schedule() -> None:
    import dataclasses

    from nerbot.config import RemindersConfig
    from nerbot.reminder_service import LAST_SCAN_META, ReminderService

    class Clock:
        now = 10 * DAY_MS

        def now_ms(self) -> int:
            return self.now

    store, clock = Store(":memory:"), Clock()

    def service(config: RemindersConfig) -> ReminderService:
        return ReminderService(config, store, None, None, None, None, clock)  # type: ignore[arg-type]

    every_6h = RemindersConfig(scan_every_ms=6 * 3600 * 1000)
    daily = dataclasses.replace(every_6h, scan_at_minute=600)
    assert service(every_6h).scan_overdue()  # never scanned
    store.set_meta(LAST_SCAN_META, str(clock.now))
    clock.now += 7 * 3600 * 1000
    assert service(every_6h).scan_overdue()
    assert not service(daily).scan_overdue()  # daily at 10:00: 7 h is not a missed scan
    clock.now += 18 * 3600 * 1000
    assert service(daily).scan_overdue()
