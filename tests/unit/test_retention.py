"""Retention: records older than ``storage.keep_days`` go daily, recent ones and everything
the bot still decides with stay (an active walkthrough, a person's latest assessment, the
daily community counts); the prune and the reads are served by indexes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from nerbot.app import NerbotApp
from nerbot.config import parse_config
from nerbot.domain.community import WEEK_MS, HygieneRecord, PeopleCounts
from nerbot.domain.guide import GuideProgress
from nerbot.domain.reminders import ReminderHistory
from nerbot.ids import RoomId, UserId
from nerbot.store import OutboxMessage, Store
from nerbot.store.db import DAY_MS, Pruned

ALICE = UserId("@alice:hs")
BOB = UserId("@bob:hs")
NOW = 1_000 * DAY_MS


def message(key: str, created_ms: int) -> OutboxMessage:
    return OutboxMessage(key=key, user_id=ALICE, kind="remind", txn_id=f"txn-{key}",
                         body="hello", room_id=None, status="pending", attempts=0,
                         created_ms=created_ms)


def days_ago(days: float) -> int:
    return NOW - int(days * DAY_MS)


def filled_store() -> Store:
    """Two of everything: one older than 180 days, one recent; plus state that is never old."""
    store = Store(":memory:")
    store.verification_started("old", ALICE, "D", "incoming", "to_device", days_ago(200))
    store.verification_ended("old", "verified", days_ago(200) + 60_000)
    store.verification_started("new", ALICE, "D", "incoming", "to_device", days_ago(10))
    store.record_alert(ALICE, "new_sessions", ["D1"], days_ago(181))
    store.record_alert(ALICE, "new_sessions", ["D2"], days_ago(179))
    # (opted out before the messages were queued: turning off withdraws pending ones)
    store.set_reminder_choice(ALICE, days_ago(900), opted_out=True)
    for key, age in (("sent-old", 200), ("failed-old", 300), ("pending-old", 400),
                     ("sent-new", 1)):
        store.enqueue(message(key, days_ago(age)),
                      ReminderHistory(first_seen_ms=0, finding_key="f", sent_count=1,
                                      sent_total=4, last_sent_ms=days_ago(age)))
    store.message_sent("sent-old", "$a", days_ago(200))
    store.message_failed("failed-old")
    store.message_sent("sent-new", "$b", days_ago(1))
    store.remember_devices(ALICE, ["D1"], days_ago(900))
    store.remember_master_key(ALICE, "M", days_ago(900))
    store.claim_event("$answered-8-days-ago", days_ago(8))
    store.claim_event("$answered-6-days-ago", days_ago(6))
    # walkthroughs: one ended long ago, one ended lately, and Bob's, started long ago, active
    for guide, started, ended in (("backup", 300, 250), ("practice", 20, 19)):
        store.save_guide_progress(ALICE, GuideProgress(guide, 0, days_ago(started),
                                                       days_ago(started)))
        store.end_guide(ALICE, "finished", days_ago(ended))
    store.save_guide_progress(BOB, GuideProgress("backup", 2, days_ago(400), days_ago(400)))
    store.record_invite(RoomId("!old:hs"), ALICE, True, "allowed", days_ago(365))
    store.record_invite(RoomId("!new:hs"), ALICE, False, "server not allowed", days_ago(3))
    # Alice at risk long ago, fixed long ago; at risk again lately; Bob's first look, long ago
    for at, at_risk, who in ((400, True, ALICE), (390, False, ALICE), (30, True, ALICE),
                             (500, True, BOB)):
        store.record_assessments([record(who, days_ago(at), at_risk)])
    store.save_daily_snapshot("1999-01-01", PeopleCounts(people=2), days_ago(900))
    return store


def record(user_id: str, at_ms: int, at_risk: bool) -> HygieneRecord:
    return HygieneRecord(user_id, at_ms, not at_risk, "present", True, 0, 0, at_risk, False)


def hygiene_changes(store: Store) -> list[tuple[str, int, int]]:
    rows = store.db.execute("SELECT user_id, at_ms, at_risk FROM hygiene_changes "
                            "ORDER BY at_ms").fetchall()
    return [(str(u), int(at), int(risk)) for u, at, risk in rows]


def test_old_records_go_recent_ones_and_state_stay(caplog: pytest.LogCaptureFixture) -> None:
    store = filled_store()
    caplog.set_level(logging.INFO, logger="nerbot.store")
    assert store.prune(NOW, keep_days=180) == Pruned(
        verifications=1, alerts=1, messages=2, answered_events=1, guide_runs=1, invites=1,
        hygiene_changes=3)
    assert [v["txn"] for v in store.verifications()] == ["new"]
    assert [a["devices"] for a in store.alerts()] == ["D2"]
    # a pending message stays whatever its age: delivery still owes it
    assert {m.key: m.status for m in store.outbox()} == {"pending-old": "pending",
                                                         "sent-new": "sent"}
    assert [m.key for m in store.pending_messages()] == ["pending-old"]
    # what the policies decide with is state, not a record: never pruned
    assert store.known_devices(ALICE) == {"D1": days_ago(900)}
    assert store.known_master_key(ALICE) == "M"
    history = store.reminder_history(ALICE, 0)
    assert history.opted_out and history.sent_total == 4 and history.finding_key == "f"
    # walkthroughs that ended long ago go; one that ended lately stays, and so does an active
    # one, however long ago it started
    assert [r["guide"] for r in store.guide_runs()] == ["practice"]
    progress = store.get_guide_progress(BOB)
    assert progress is not None and (progress.guide, progress.step) == ("backup", 2)
    assert [i["room_id"] for i in store.invites()] == ["!new:hs"]
    # at-risk changes: the old ones go; each person's latest assessment stays (it decides
    # whether the next one is a change), and so do the daily counts (the report's trend)
    assert hygiene_changes(store) == [(ALICE, days_ago(30), 1)]
    assert {r.user_id: r.at_risk for r in store.hygiene_records()} == {ALICE: True, BOB: True}
    assert list(store.daily_snapshots(["1999-01-01"])) == ["1999-01-01"]
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Retention")]
    assert line == ("Retention (180 days): removed 1 verification(s), 1 alert(s), 2 sent or "
                    "failed message(s), 1 answered-event ID(s), 1 ended guide run(s), "
                    "1 invite(s), 3 at-risk change(s)")
    # a second run the same day finds nothing more
    assert store.prune(NOW, keep_days=180) == Pruned()


def test_keep_days_decides_for_records() -> None:
    store = filled_store()
    store.prune(NOW, keep_days=7)
    assert store.verifications() == []
    assert [m.key for m in store.outbox()] == ["pending-old", "sent-new"]
    assert [a["devices"] for a in store.alerts()] == []
    assert store.guide_runs() == [] and store.get_guide_progress(BOB) is not None
    assert [i["room_id"] for i in store.invites()] == ["!new:hs"]
    assert hygiene_changes(store) == []
    assert len(store.hygiene_records()) == 2


def test_fixed_within_a_week_of_a_kept_reminder_survives_the_prune() -> None:
    """The report counts changes after a reminder that is itself kept: such a reminder was
    queued after the cutoff, so the change it needs is newer than the cutoff too. Right at the
    edge: a reminder queued on the last kept day, the fix a day after it was sent."""
    store = Store(":memory:")
    queued = days_ago(180)
    store.record_assessments([record(ALICE, queued - DAY_MS, True)])
    store.enqueue(message("edge", queued))
    store.message_sent("edge", "$edge", queued + 60_000)
    store.record_assessments([record(ALICE, queued + DAY_MS, False)])
    before = store.reminder_outcomes(0)
    assert [o.fixed_within_week for o in before] == [True]
    assert store.prune(NOW, keep_days=180).hygiene_changes == 1  # the first look, before
    assert store.reminder_outcomes(0) == before
    # a day later the reminder and its fix are older than the cutoff: both go
    store.prune(NOW + DAY_MS + WEEK_MS, keep_days=180)
    assert store.reminder_outcomes(0) == [] and hygiene_changes(store) == []


def test_answered_event_ids_are_kept_a_week_whatever_keep_days() -> None:
    """As long as a replay could bring an event back (Store.claim_event says why)."""
    store = filled_store()
    assert store.prune(NOW, keep_days=3650).answered_events == 1
    assert not store.claim_event("$answered-6-days-ago", NOW)  # still a replay: not again
    assert store.claim_event("$answered-8-days-ago", NOW)  # gone: could not come back anyway


def test_the_old_message_key_cannot_be_queued_again_by_a_replayed_decision() -> None:
    """The prune forgets a sent row's key; the decision it recorded (the reminder serial) is
    kept, so the same key is never decided again."""
    store = filled_store()
    store.prune(NOW, keep_days=180)
    assert store.reminder_history(ALICE, 0).sent_total == 4


def test_a_database_from_before_gets_the_indexes(tmp_path: Path) -> None:
    path = tmp_path / "nerbot.db"
    Store(path).close()
    store = Store(path)
    assert store.schema_version >= 5  # 0005 added the indexes; later migrations keep them
    indexed = {table: {tuple(r[0] for r in store.db.execute(
        f"SELECT name FROM pragma_index_info('{index[1]}')").fetchall())
        for index in store.db.execute(f"PRAGMA index_list('{table}')").fetchall()}
        for table in ("verifications", "alerts", "handled_events", "outbox", "guide_runs",
                      "invites", "hygiene_changes")}
    assert ("started_ms",) in indexed["verifications"]
    assert ("at_ms",) in indexed["alerts"]
    assert ("handled_ms",) in indexed["handled_events"]
    assert ("status", "created_ms") in indexed["outbox"]
    assert ("ended_ms",) in indexed["guide_runs"]
    assert ("at_ms",) in indexed["invites"]
    assert ("at_ms",) in indexed["hygiene_changes"]
    store.close()


def plans_of(store: Store, action: object) -> dict[str, str]:
    """Each statement ``action`` runs on the tables that grow → its query plan."""
    statements: list[str] = []
    store.db.conn.set_trace_callback(statements.append)
    try:
        assert callable(action)
        action()
    finally:
        store.db.conn.set_trace_callback(None)
    growing = ("verifications", "alerts", "outbox", "handled_events", "guide_runs", "invites",
               "hygiene_changes")
    plans = {}
    for sql in statements:
        words = sql.lower().translate(str.maketrans('[]"', "   ")).split()
        if not any(w in growing for w in words) or words[0] not in ("select", "delete",
                                                                    "update"):
            continue
        rows = store.db.execute("EXPLAIN QUERY PLAN " + sql).fetchall()
        plans[sql] = " / ".join(str(r[3]) for r in rows)
    return plans


@pytest.mark.parametrize("action", [
    lambda s: s.prune(NOW, 180),
    lambda s: s.claim_event("$new", NOW),
    lambda s: s.pending_messages(),
    lambda s: s.outbox(ALICE),
    lambda s: s.alerts(ALICE),
    lambda s: s.verifications(ALICE),
    lambda s: s.verification_attempts_since(ALICE, days_ago(1)),
    lambda s: s.verified_since(ALICE, days_ago(1)),
    lambda s: s.message_sent("sent-new", "$c", NOW),
    lambda s: s.guide_runs(ALICE),
    lambda s: s.reminder_outcomes(days_ago(30)),
], ids=["prune", "claim_event", "pending_messages", "outbox", "alerts", "verifications",
        "verification_attempts_since", "verified_since", "message_sent", "guide_runs",
        "reminder_outcomes"])
def test_the_prune_and_the_reads_use_indexes(action: object) -> None:
    store = filled_store()
    assert callable(action)
    plans = plans_of(store, lambda: action(store))
    assert plans, "no statement on the growing tables was seen"
    for sql, plan in plans.items():
        assert "USING" in plan and "SCAN" not in plan, f"{sql}: {plan}"


async def test_the_running_bot_prunes_with_the_configured_period() -> None:
    config = parse_config({"storage": {"keep_days": 30}}, {"NERBOT_PASSWORD": "pw"},
                          Path("/srv/nerbot"))

    class Clock:
        def now_ms(self) -> int:
            return NOW

    app = NerbotApp(config, clock=Clock())
    app.store = filled_store()
    await app._prune()  # what the daily "retention" task runs
    assert [v["txn"] for v in app.store.verifications()] == ["new"]
    assert [m.key for m in app.store.outbox()] == ["pending-old", "sent-new"]
    assert app.store.alerts() == []
    app.store.close()
