"""Storage: migrations, idempotent event claims, DMs, languages."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from nerbot.ids import RoomId, UserId
from nerbot.store import Store
from nerbot.store.migrations import build_migrations

ALICE = UserId("@alice:localhost")
BOB = UserId("@bob:localhost")


def test_fresh_database_is_at_latest_schema(tmp_path: Path) -> None:
    store = Store(tmp_path / "nerbot.db")
    assert store.schema_version == len(build_migrations()._migrations)
    store.close()


def test_reopening_applies_nothing_twice(tmp_path: Path) -> None:
    path = tmp_path / "nerbot.db"
    Store(path).close()
    store = Store(path)
    rows = store.db.execute("SELECT name FROM _sqlite_migrations").fetchall()
    assert [r[0] for r in rows] == [m.name for m in build_migrations()._migrations]
    assert len(rows) == len(set(r[0] for r in rows))
    store.close()


def test_event_is_claimed_once_even_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "nerbot.db"
    store = Store(path)
    assert store.claim_event("$e1", 1_000)
    assert not store.claim_event("$e1", 2_000)
    store.close()
    store = Store(path)
    assert not store.claim_event("$e1", 3_000)
    assert store.claim_event("$e2", 3_000)


def test_old_claims_are_pruned() -> None:
    store = Store(":memory:")
    store.claim_event("$old", 0)
    store.claim_event("$new", 8 * 24 * 3600 * 1000)
    assert store.claim_event("$old", 8 * 24 * 3600 * 1000 + 1)


def test_language_defaults_to_none_and_persists() -> None:
    store = Store(":memory:")
    assert store.get_language(ALICE) is None
    store.set_language(ALICE, "en", 5)
    assert store.get_language(ALICE) == "en"
    record = store.get_user(ALICE)
    assert record is not None and record.first_seen_ms == 5


def test_first_seen_is_kept() -> None:
    store = Store(":memory:")
    store.touch_user(ALICE, 10)
    assert store.touch_user(ALICE, 99).first_seen_ms == 10


def test_dm_rooms_map_both_ways_and_replace() -> None:
    store = Store(":memory:")
    store.set_dm_room(ALICE, RoomId("!a:localhost"), 1)
    assert store.get_dm_room(ALICE) == "!a:localhost"
    assert store.user_for_dm_room(RoomId("!a:localhost")) == ALICE
    store.set_dm_room(ALICE, RoomId("!b:localhost"), 2)
    assert store.get_dm_room(ALICE) == "!b:localhost"
    assert store.user_for_dm_room(RoomId("!a:localhost")) is None
    store.forget_dm_room(RoomId("!b:localhost"))
    assert store.get_dm_room(ALICE) is None
    assert store.get_dm_room(BOB) is None


def test_a_room_belongs_to_one_user_only() -> None:
    store = Store(":memory:")
    store.set_dm_room(ALICE, RoomId("!a:localhost"), 1)
    store.set_dm_room(BOB, RoomId("!a:localhost"), 2)
    assert store.user_for_dm_room(RoomId("!a:localhost")) == BOB
    assert store.get_dm_room(ALICE) is None


def test_failed_migration_rolls_back(tmp_path: Path) -> None:
    """A migration that raises leaves no half-applied schema and no applied record."""
    path = tmp_path / "nerbot.db"
    Store(path).close()
    migrations = build_migrations()

    @migrations(name="9999_broken")
    def broken(db) -> None:  # type: ignore[no-untyped-def]
        db["half"].create({"x": int})
        raise RuntimeError("boom")

    from sqlite_utils import Database

    db = Database(path)
    with contextlib.suppress(RuntimeError):
        migrations.apply(db)
    assert "half" not in db.table_names()
    names = [r[0] for r in db.execute("SELECT name FROM _sqlite_migrations").fetchall()]
    assert "9999_broken" not in names
    db.close()
    assert isinstance(sqlite3.sqlite_version, str)


def test_file_database_uses_wal_without_fsync_per_commit(tmp_path: Path) -> None:
    store = Store(tmp_path / "nerbot.db")
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    store.close()


def test_verification_record_from_start_to_end(tmp_path: Path) -> None:
    store = Store(tmp_path / "bot.db")
    alice = UserId("@alice:hs")
    store.verification_started("t1", alice, None, "incoming", "in_room", 1_000)
    store.verification_started("t2", alice, "DEV", "outgoing", "to_device", 2_000)
    assert [r["result"] for r in store.verifications(alice)] == ["pending", "pending"]
    store.verification_ended("t1", "verified", 4_500, device_id="PHONE",
                             master_key_signed=True)
    store.verification_ended("t2", "cancelled", 3_000, cancel_code="m.user")
    first, second = store.verifications(alice)
    assert (first["device_id"], first["result"], first["master_key_signed"],
            first["duration_ms"]) == ("PHONE", "verified", 1, 3_500)
    # no device given at the end: the one known from the start is kept
    assert (second["device_id"], second["result"], second["cancel_code"],
            second["duration_ms"]) == ("DEV", "cancelled", "m.user", 1_000)
    assert store.verification_attempts_since(alice, 1_500) == ["cancelled"]
    assert store.verified_since(alice, 4_000) and not store.verified_since(alice, 5_000)


def test_guide_progress_round_trips_and_a_stranger_has_none() -> None:
    from nerbot.domain.guide import GuideProgress

    store = Store(":memory:")
    assert store.get_guide_progress(ALICE) is None
    progress = GuideProgress(guide="backup", step=2, started_ms=10, updated_ms=20,
                             signed_at_start=frozenset({"DEV1"}),
                             known_at_start=frozenset({"DEV1", "DEV2"}))
    store.save_guide_progress(ALICE, progress)
    assert store.get_guide_progress(ALICE) == progress
    assert store.get_guide_progress(BOB) is None
    store.save_guide_progress(ALICE, GuideProgress(guide="backup", step=3, started_ms=10,
                                                   updated_ms=30))
    again = store.get_guide_progress(ALICE)
    assert again is not None and again.step == 3 and again.signed_at_start == frozenset()
    store.close()
