"""The bot's SQLite database: one file in the data directory, migrated forward on open."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlite_utils import Database
from sqlite_utils.db import NotFoundError, Table

from nerbot.datadir import create_private_file, keep_private
from nerbot.domain.community import (
    WEEK_MS,
    AlertRow,
    HygieneRecord,
    PeopleCounts,
    ReminderOutcome,
    VerificationRow,
    count_people,
)
from nerbot.domain.facts import AdminFacts, BackupFacts, BackupState
from nerbot.domain.freshness import Fetched
from nerbot.domain.guide import GuideProgress
from nerbot.domain.reminders import REMINDER_KINDS, ReminderHistory
from nerbot.ids import RoomId, UserId
from nerbot.store.migrations import MIGRATION_SET, build_migrations

logger = logging.getLogger(__name__)

DAY_MS = 24 * 3600 * 1000
# How long the ID of an answered event is kept: as long as a replay could bring the event back
# (``Store.claim_event`` says why a week is plenty). Not ``storage.keep_days``: these IDs are
# no record of anything, only a guard against answering twice.
HANDLED_EVENTS_KEEP_MS = 7 * DAY_MS
# The outbox statuses that are final; a row in any other ("pending") is never pruned.
FINAL_STATUSES = ("sent", "failed", "withdrawn")
# Outbox kinds a person's own choices withdraw while still pending (never sent after them).
ALERT_KINDS = frozenset({"alert"})


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A message recorded before sending; ``status`` is "pending" until the server took it."""

    key: str
    user_id: UserId
    kind: str
    txn_id: str
    body: str
    room_id: RoomId | None
    status: str
    attempts: int
    created_ms: int
    sent_ms: int | None = None
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one retention run deleted, per kind of record."""

    verifications: int = 0
    alerts: int = 0
    messages: int = 0  # delivered or given up; never a pending one
    answered_events: int = 0
    guide_runs: int = 0  # walkthroughs that ended; an active one is progress, never pruned
    invites: int = 0
    hygiene_changes: int = 0


@dataclass(frozen=True, slots=True)
class UserRecord:
    """What the bot remembers about a person it has talked to."""

    user_id: UserId
    language: str | None
    first_seen_ms: int


SYNC_POSITION_META = "sync_position"


@dataclass(frozen=True)
class SyncPosition:
    """Where the bot's syncing stopped, for the device that synced: to-device messages are
    per device, so another device's position would skip some of them."""

    device_id: str
    next_batch: str


@dataclass(frozen=True)
class KeptRoom:
    """A room as the bot knows it from sync: its own membership (join, or a pending invite),
    whether it is encrypted, and who is in it (user ID, invited rather than joined)."""

    room_id: str
    membership: str
    encrypted: bool
    members: tuple[tuple[str, bool], ...]
    inviter: str | None = None  # of a pending invite (None in rows from before 0013)
    is_direct: bool = False     # the invite asked for a DM


class Store:
    """Typed access to the bot's tables. Every method is one short transaction.

    Callers pass ``now_ms`` explicitly so that time stays a parameter (testable, no clock reads
    hidden in storage).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = None if path == ":memory:" else Path(path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # 0600 before SQLite opens it: SQLite creates the -wal and -shm files (lazily, at
            # any time) with the database file's mode, whatever the umask.
            create_private_file(self.path)
            self.db = Database(self.path)
            self.db.execute("PRAGMA journal_mode=WAL")
            # Commits survive a crash or SIGKILL without an fsync each (only a power cut can
            # undo the last ones; every write here is idempotent or re-decided on replay).
            self.db.execute("PRAGMA synchronous=NORMAL")
        else:
            self.db = Database(memory=True)
        self.db.execute("PRAGMA foreign_keys=ON")
        self._tables: dict[str, Table] = {}
        migrations = build_migrations()
        pending = [m.name for m in migrations.pending(self.db)]
        migrations.apply(self.db)
        if pending:
            logger.info("Database migrated: applied %s", ", ".join(pending))
        if self.path is not None:  # left by a crash, from before the bot made them private
            keep_private(self.path, *(self.path.with_name(self.path.name + suffix)
                                      for suffix in ("-wal", "-shm", "-journal")))

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Several of the methods below as one commit (they nest as savepoints inside it).

        For writes that must survive a crash together or not at all: a recorded alert and the
        record counting it, or everything one scan learns about one person.
        """
        with self.db.atomic():
            yield

    def _table(self, name: str) -> Table:
        """One ``Table`` per name: ``db[name]`` asks SQLite for the list of views each time."""
        if name not in self._tables:
            table = self.db[name]
            assert isinstance(table, Table)
            self._tables[name] = table
        return self._tables[name]

    @property
    def schema_version(self) -> int:
        """How many migrations have been applied (monotonic; tells operators what they run)."""
        row = self.db.execute(
            "SELECT count(*) FROM _sqlite_migrations WHERE migration_set = ?", [MIGRATION_SET]
        ).fetchone()
        return int(row[0])

    # -- meta -------------------------------------------------------------------------------

    # The lookups below run on every message the bot sends or handles; plain SELECTs, as
    # sqlite-utils' ``Table.get`` re-reads the table's schema on each call.

    def _one(self, sql: str, args: list[Any]) -> tuple[Any, ...] | None:
        row = self.db.execute(sql, args).fetchone()
        return tuple(row) if row is not None else None

    def get_meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", [key])
        return str(row[0]) if row is not None else None

    def set_meta(self, key: str, value: str) -> None:
        with self.db.atomic():
            self._table("meta").upsert({"key": key, "value": value}, pk="key")

    # -- users ------------------------------------------------------------------------------

    def get_user(self, user_id: UserId) -> UserRecord | None:
        row = self._one("SELECT user_id, language, first_seen_ms FROM users WHERE user_id = ?",
                        [user_id])
        if row is None:
            return None
        return UserRecord(UserId(row[0]), row[1], int(row[2]))

    def touch_user(self, user_id: UserId, now_ms: int) -> UserRecord:
        """Record that the bot has seen this user (first-seen time is kept from the first call)."""
        existing = self.get_user(user_id)
        if existing is not None:
            return existing
        with self.db.atomic():
            self.db.execute("INSERT OR IGNORE INTO users (user_id, language, first_seen_ms, "
                            "updated_ms) VALUES (?, NULL, ?, ?)", [user_id, now_ms, now_ms])
        record = self.get_user(user_id)
        assert record is not None
        return record

    def set_language(self, user_id: UserId, language: str, now_ms: int) -> None:
        self.touch_user(user_id, now_ms)
        with self.db.atomic():
            self._table("users").update(user_id, {"language": language, "updated_ms": now_ms})

    def get_language(self, user_id: UserId) -> str | None:
        record = self.get_user(user_id)
        return record.language if record else None

    def set_platform(self, user_id: UserId, platform: str, now_ms: int) -> None:
        self.touch_user(user_id, now_ms)
        with self.db.atomic():
            self._table("users").update(user_id, {"platform": platform, "updated_ms": now_ms})

    def get_platform(self, user_id: UserId) -> str | None:
        try:
            return self._table("users").get(user_id).get("platform")
        except NotFoundError:
            return None

    # -- walkthroughs -----------------------------------------------------------------------

    def get_guide_progress(self, user_id: UserId) -> GuideProgress | None:
        row = self._one("SELECT guide, step, started_ms, updated_ms, signed_at_start, "
                        "known_at_start, step_id FROM guide_progress WHERE user_id = ?",
                        [user_id])
        if row is None:
            return None
        guide, step, started_ms, updated_ms, signed_at_start, known_at_start, step_id = row
        return GuideProgress(
            guide=guide, step=int(step), started_ms=int(started_ms), updated_ms=int(updated_ms),
            signed_at_start=frozenset(json.loads(signed_at_start or "[]")),
            known_at_start=frozenset(json.loads(known_at_start or "[]")),
            step_id=None if step_id is None else str(step_id),
        )

    def save_guide_progress(self, user_id: UserId, progress: GuideProgress,
                            unsent_txn: str | None = None) -> None:
        """Store the step (its position and ``step_id``); ``unsent_txn``: its answer is about
        to be sent with this txn ID."""
        with self.db.atomic():
            self._table("guide_progress").upsert(
                {"user_id": user_id, "guide": progress.guide, "step": progress.step,
                 "step_id": progress.step_id,
                 "started_ms": progress.started_ms, "updated_ms": progress.updated_ms,
                 "signed_at_start": json.dumps(sorted(progress.signed_at_start)),
                 "known_at_start": json.dumps(sorted(progress.known_at_start)),
                 "unsent_txn": unsent_txn},
                pk="user_id",
            )

    def guide_answer_sent(self, user_id: UserId, txn: str) -> None:
        with self.db.atomic():
            self.db.execute("UPDATE guide_progress SET unsent_txn = NULL "
                            "WHERE user_id = ? AND unsent_txn = ?", [user_id, txn])

    def unsent_guide_answers(self) -> list[tuple[UserId, str]]:
        """People whose current step's answer may not have reached them (a crash came first)."""
        rows = self.db.execute("SELECT user_id, unsent_txn FROM guide_progress "
                               "WHERE unsent_txn IS NOT NULL").fetchall()
        return [(UserId(user), str(txn)) for user, txn in rows]

    def unsent_guide_txn(self, user_id: UserId) -> str | None:
        row = self._one("SELECT unsent_txn FROM guide_progress WHERE user_id = ?", [user_id])
        return str(row[0]) if row is not None and row[0] is not None else None

    def end_guide(self, user_id: UserId, result: str, now_ms: int) -> GuideProgress | None:
        """Clear the active guide and record how it ended ("finished", "stopped", "replaced")."""
        progress = self.get_guide_progress(user_id)
        if progress is None:
            return None
        with self.db.atomic():
            self._table("guide_runs").insert(
                {"user_id": user_id, "guide": progress.guide, "started_ms": progress.started_ms,
                 "ended_ms": now_ms, "result": result})
            self.db.execute("DELETE FROM guide_progress WHERE user_id = ?", [user_id])
        return progress

    def guide_runs(self, user_id: UserId | None = None) -> list[dict[str, object]]:
        where, args = ("user_id = ?", [user_id]) if user_id else (None, None)
        return [dict(r) for r in self._table("guide_runs").rows_where(where, args,
                                                                      order_by="ended_ms")]

    # -- reminders ---------------------------------------------------------------------------

    def reminder_history(self, user_id: UserId, first_seen_ms: int) -> ReminderHistory:
        """The policy's memory of one user (defaults for a user never reminded)."""
        row = self._reminder_state(user_id)
        if row is None:
            return ReminderHistory(first_seen_ms=first_seen_ms)
        return ReminderHistory(
            first_seen_ms=first_seen_ms,
            opted_out=bool(row["opted_out"]),
            snoozed_until_ms=row["snoozed_until_ms"],
            finding_key=row["finding_key"],
            sent_count=int(row["sent_count"] or 0),
            last_sent_ms=row["last_sent_ms"],
            all_good_sent=bool(row["all_good_sent"]),
            sent_total=int(row["sent_total"] or 0),
        )

    # The scan reads and writes this table for every person: plain SQL, as sqlite-utils'
    # ``Table.get``/``upsert`` re-read the schema (about 25 queries a person).
    _REMINDER_COLUMNS = ("user_id", "opted_out", "snoozed_until_ms", "finding_key",
                         "sent_count", "sent_total", "last_sent_ms", "all_good_sent",
                         "alerts_off", "updated_ms")

    def _reminder_state(self, user_id: UserId) -> dict[str, Any] | None:
        row = self._one(f"SELECT {', '.join(self._REMINDER_COLUMNS)} FROM reminder_state "
                        "WHERE user_id = ?", [user_id])
        return None if row is None else dict(zip(self._REMINDER_COLUMNS, row, strict=True))

    def _reminder_row(self, user_id: UserId) -> dict[str, Any]:
        row = self._reminder_state(user_id)
        if row is not None:
            return row
        return {"user_id": user_id, "opted_out": 0, "snoozed_until_ms": None,
                "finding_key": None, "sent_count": 0, "sent_total": 0,
                "last_sent_ms": None, "all_good_sent": 0, "alerts_off": 0, "updated_ms": None}

    def _save_reminder_row(self, row: dict[str, Any]) -> None:
        columns = self._REMINDER_COLUMNS
        self.db.execute(f"INSERT OR REPLACE INTO reminder_state ({', '.join(columns)}) "
                        f"VALUES ({', '.join('?' for _ in columns)})", [row[c] for c in columns])

    def set_reminder_choice(self, user_id: UserId, now_ms: int, *,
                            opted_out: bool | None = None,
                            snoozed_until_ms: int | Literal["keep"] | None = "keep",
                            alerts_off: bool | None = None) -> int:
        """The user's own choices (``!remind``, ``!alerts``); kept until they change them.

        What a choice forbids and is still pending goes with it, in the same commit: turning
        reminders off or snoozing them withdraws pending reminders, turning alerts off
        pending alerts (a backlog can take hours to send). Returns how many were withdrawn.
        """
        withdraw: set[str] = set()
        if opted_out or snoozed_until_ms not in ("keep", None):
            withdraw |= REMINDER_KINDS
        if alerts_off:
            withdraw |= ALERT_KINDS
        row = self._reminder_row(user_id)
        if opted_out is not None:
            row["opted_out"] = int(opted_out)
        if snoozed_until_ms != "keep":
            row["snoozed_until_ms"] = snoozed_until_ms
        if alerts_off is not None:
            row["alerts_off"] = int(alerts_off)
        row["updated_ms"] = now_ms
        kinds = sorted(withdraw)
        with self.db.atomic():
            self._save_reminder_row(row)
            if not kinds:
                return 0
            cursor = self.db.execute(
                "UPDATE outbox SET status = 'withdrawn' WHERE user_id = ? AND status = 'pending'"
                f" AND kind IN ({', '.join('?' for _ in kinds)})", [user_id, *kinds])
            return int(cursor.rowcount)

    def close_reminder_episode(self, user_id: UserId) -> None:
        """A reminder withdrawn because everything was fixed before it went out: the person
        heard of no problem, so no "all fixed" note is owed either."""
        with self.db.atomic():
            self.db.execute("UPDATE reminder_state SET all_good_sent = 1 WHERE user_id = ?",
                            [user_id])

    def alerts_off(self, user_id: UserId) -> bool:
        return bool(self._reminder_row(user_id)["alerts_off"])

    def enqueue(self, message: OutboxMessage, history: ReminderHistory | None = None) -> bool:
        """Record a message to send, and (for reminders) the policy state after it, at once.

        False if a message with this key was already recorded: the decision was taken before
        (a replayed scan), so nothing new is queued and the state is not advanced twice.
        """
        with self.db.atomic():
            cursor = self.db.execute(
                "INSERT OR IGNORE INTO outbox (key, user_id, kind, txn_id, body, room_id, "
                "status, attempts, created_ms) VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?)",
                [message.key, message.user_id, message.kind, message.txn_id, message.body,
                 message.room_id, message.created_ms])
            if cursor.rowcount != 1:
                return False
            if history is not None:
                row = self._reminder_row(message.user_id)
                row.update({"finding_key": history.finding_key,
                            "sent_count": history.sent_count, "sent_total": history.sent_total,
                            "last_sent_ms": history.last_sent_ms,
                            "all_good_sent": int(history.all_good_sent),
                            "updated_ms": message.created_ms})
                self._save_reminder_row(row)
        return True

    @staticmethod
    def _outbox(row: dict[str, Any]) -> OutboxMessage:
        return OutboxMessage(
            key=row["key"], user_id=UserId(row["user_id"]), kind=row["kind"],
            txn_id=row["txn_id"], body=row["body"],
            room_id=RoomId(row["room_id"]) if row["room_id"] else None, status=row["status"],
            attempts=int(row["attempts"] or 0), created_ms=int(row["created_ms"]),
            sent_ms=row["sent_ms"], event_id=row["event_id"])

    def pending_messages(self, limit: int = 1000,
                         skip_kinds: frozenset[str] = frozenset()) -> list[OutboxMessage]:
        kinds = sorted(skip_kinds)
        where = "status = 'pending'" + (
            f" AND kind NOT IN ({', '.join('?' for _ in kinds)})" if kinds else "")
        rows = self._table("outbox").rows_where(where, kinds, order_by="created_ms",
                                                limit=limit)
        return [self._outbox(r) for r in rows]

    def pending_count(self) -> int:
        """How many outbox messages are not sent yet (a metrics gauge)."""
        row = self._one("SELECT count(*) FROM outbox WHERE status = 'pending'", [])
        return int(row[0]) if row else 0

    def outbox(self, user_id: UserId | None = None) -> list[OutboxMessage]:
        where, args = ("user_id = ?", [user_id]) if user_id else (None, None)
        return [self._outbox(r) for r in self._table("outbox").rows_where(
            where, args, order_by="created_ms")]

    def message_attempt(self, key: str, room_id: RoomId | None) -> bool:
        """Pin the room before the send, so a resend after a crash goes to the same room
        (None: a try that found no room to send to). False when the message is no longer
        pending (withdrawn while its turn came): then it must not be sent."""
        with self.db.atomic():
            return self.db.execute("UPDATE outbox SET room_id = ?, attempts = attempts + 1 "
                                   "WHERE key = ? AND status = 'pending'",
                                   [room_id, key]).rowcount == 1

    def message_sent(self, key: str, event_id: str, now_ms: int) -> None:
        with self.db.atomic():
            self.db.execute("UPDATE outbox SET status = 'sent', event_id = ?, sent_ms = ? "
                            "WHERE key = ?", [event_id, now_ms, key])

    def message_withdrawn(self, key: str) -> None:
        """No longer to be sent (what it is about changed while it waited)."""
        with self.db.atomic():
            self.db.execute("UPDATE outbox SET status = 'withdrawn' WHERE key = ? "
                            "AND status = 'pending'", [key])

    def message_failed(self, key: str) -> None:
        """Given up (the user no longer exists, or the room refuses us)."""
        with self.db.atomic():
            self.db.execute("UPDATE outbox SET status = 'failed' WHERE key = ? "
                            "AND status = 'pending'", [key])

    # -- sessions and identities seen ---------------------------------------------------------

    def known_devices(self, user_id: UserId) -> dict[str, int]:
        """Device ID → when the bot first saw it; empty for a user never looked at."""
        rows = self.db.execute("SELECT device_id, first_seen_ms FROM known_devices "
                               "WHERE user_id = ?", [user_id]).fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def remember_devices(self, user_id: UserId, device_ids: Iterable[str], now_ms: int) -> None:
        with self.db.atomic():
            self.db.conn.executemany(
                "INSERT OR IGNORE INTO known_devices (user_id, device_id, first_seen_ms) "
                "VALUES (?, ?, ?)", [(user_id, d, now_ms) for d in device_ids])

    def known_master_key(self, user_id: UserId) -> str | None:
        """None: never looked at this user; "": looked, no cross-signing identity then."""
        row = self.db.execute("SELECT master_key FROM known_identities WHERE user_id = ?",
                              [user_id]).fetchone()
        return None if row is None else str(row[0] or "")

    def remember_master_key(self, user_id: UserId, master_key: str, now_ms: int) -> None:
        with self.db.atomic():
            self.db.execute("INSERT OR REPLACE INTO known_identities (user_id, master_key, "
                            "seen_ms) VALUES (?, ?, ?)", [user_id, master_key, now_ms])

    def record_alert(self, user_id: UserId, kind: str, devices: Iterable[str],
                     now_ms: int) -> None:
        with self.db.atomic():
            self._table("alerts").insert({"user_id": user_id, "kind": kind,
                                          "devices": ",".join(sorted(devices)), "at_ms": now_ms})

    def new_sessions_counted(self, user_id: UserId, since_ms: int, until_ms: int) -> int:
        """How many new unverified sessions of the user the alerts counted in that time."""
        rows = self.db.execute(
            "SELECT devices FROM alerts WHERE user_id = ? AND kind = 'new_sessions' "
            "AND at_ms >= ? AND at_ms < ?", [user_id, since_ms, until_ms]).fetchall()
        return sum(len([d for d in str(r[0] or "").split(",") if d]) for r in rows)

    def alerts(self, user_id: UserId | None = None) -> list[dict[str, object]]:
        where, args = ("user_id = ?", [user_id]) if user_id else (None, None)
        return [dict(r) for r in self._table("alerts").rows_where(where, args, order_by="at_ms")]

    # -- direct messages --------------------------------------------------------------------

    def get_dm_room(self, user_id: UserId) -> RoomId | None:
        row = self._one("SELECT room_id FROM dm_rooms WHERE user_id = ?", [user_id])
        return RoomId(row[0]) if row is not None else None

    def user_for_dm_room(self, room_id: RoomId) -> UserId | None:
        row = self._one("SELECT user_id FROM dm_rooms WHERE room_id = ? LIMIT 1", [room_id])
        return UserId(row[0]) if row is not None else None

    def set_dm_room(self, user_id: UserId, room_id: RoomId, now_ms: int) -> None:
        """Remember the DM with a user (one per user; a newer DM replaces the old one)."""
        with self.db.atomic():
            self.db.execute("DELETE FROM dm_rooms WHERE room_id = ? AND user_id != ?",
                            [room_id, user_id])
            self._table("dm_rooms").upsert(
                {"user_id": user_id, "room_id": room_id, "created_ms": now_ms}, pk="user_id"
            )

    def dm_rooms(self) -> dict[UserId, RoomId]:
        """Every person's DM with the bot (what the bot's ``m.direct`` must list)."""
        rows = self.db.execute("SELECT user_id, room_id FROM dm_rooms").fetchall()
        return {UserId(u): RoomId(r) for u, r in rows}

    def forget_dm_room(self, room_id: RoomId) -> None:
        with self.db.atomic():
            self.db.execute("DELETE FROM dm_rooms WHERE room_id = ?", [room_id])

    # -- messages a sync left out (nerbot.matrix.gaps) ----------------------------------------

    def note_gap(self, room_id: str, since: str, until: str, now_ms: int) -> None:
        with self.db.atomic():
            self.db.execute("INSERT OR REPLACE INTO gaps (room_id, since, until, noted_ms) "
                            "VALUES (?, ?, ?, ?)", [room_id, since, until, now_ms])

    def forget_gap(self, room_id: str, since: str) -> None:
        with self.db.atomic():
            self.db.execute("DELETE FROM gaps WHERE room_id = ? AND since = ?",
                            [room_id, since])

    def kept_gaps(self) -> list[tuple[str, str, str]]:
        """(room, since, until) of gaps a stop or crash left unfilled, oldest first."""
        rows = self.db.execute("SELECT room_id, since, until FROM gaps "
                               "ORDER BY noted_ms, room_id").fetchall()
        return [(str(r), str(s), str(u)) for r, s, u in rows]

    # -- idempotent event handling ----------------------------------------------------------

    def claim_event(self, event_id: str, now_ms: int) -> bool:
        """Mark an event handled; False if it already was (a replay must not answer twice).

        IDs older than ``HANDLED_EVENTS_KEEP_MS`` go, here (indexed, so cheap) and in the daily
        ``prune``. That is as long as a replay could bring an event back: the sync position a
        start resumes from is saved once a sync's events were handed to the bot (the room
        index), so a restart resumes after them (a crash or power cut in between replays a
        sync or the last few seconds); within a run, the
        undecryptable-message hold re-delivers for at most an hour; and a start without a
        stored sync position, whose first sync brings each room's latest events however old,
        ignores everything from before that start (``NerbotApp.start``).
        """
        with self.db.atomic():
            cursor = self.db.execute(
                "INSERT OR IGNORE INTO handled_events (event_id, handled_ms) VALUES (?, ?)",
                [event_id, now_ms],
            )
            claimed = cursor.rowcount == 1
            if claimed:
                self._forget_answered(now_ms)
        return claimed

    def _forget_answered(self, now_ms: int) -> int:
        cursor = self.db.execute("DELETE FROM handled_events WHERE handled_ms < ?",
                                 [now_ms - HANDLED_EVENTS_KEEP_MS])
        return int(cursor.rowcount)

    # -- retention --------------------------------------------------------------------------

    def prune(self, now_ms: int, keep_days: int) -> Pruned:
        """Delete records older than ``keep_days`` (and answered-event IDs older than a week).

        Records: verifications (by start; one lasts minutes), alerts, outbox rows that are
        delivered or given up (by when they were queued), walkthroughs that ended (by when they
        ended), invites (by when they came), and the changes of someone's "at risk" (by when
        they were seen). The report's "fixed within a week of a reminder" looks only at changes
        after a reminder that is itself kept, so it never needs a pruned change: a kept
        reminder was queued at or after the cutoff, and it counts changes after it was sent.

        Never pruned, whatever their age: pending outbox rows (delivery still owes them), and
        the state decisions are made with: ``reminder_state`` (choices, back-off, the last
        reminder's findings), ``known_devices`` and ``known_identities`` (what alerts compare
        against), users, DM rooms, walkthrough progress (``guide_progress``: an active guide),
        each person's latest assessment (``hygiene``: one row each, dropped when they are no
        longer served). ``hygiene_daily`` is one row of community counts per day, nobody's
        data: kept for the report's trend. A deleted outbox key cannot be queued again by a
        replayed decision: the decision's outcome (reminder serial, sessions seen) is stored
        with the row and kept.
        """
        cutoff = now_ms - keep_days * DAY_MS
        placeholders = ", ".join("?" for _ in FINAL_STATUSES)

        def older(table: str, column: str) -> int:
            return int(self.db.execute(f"DELETE FROM {table} WHERE {column} < ?",
                                       [cutoff]).rowcount)

        with self.db.atomic():
            pruned = Pruned(
                verifications=older("verifications", "started_ms"),
                alerts=older("alerts", "at_ms"),
                messages=self.db.execute(
                    f"DELETE FROM outbox WHERE status IN ({placeholders}) AND created_ms < ?",
                    [*FINAL_STATUSES, cutoff]).rowcount,
                answered_events=self._forget_answered(now_ms),
                guide_runs=older("guide_runs", "ended_ms"),
                invites=older("invites", "at_ms"),
                hygiene_changes=older("hygiene_changes", "at_ms"),
            )
        logger.info("Retention (%d days): removed %d verification(s), %d alert(s), "
                    "%d sent or failed message(s), %d answered-event ID(s), %d ended guide "
                    "run(s), %d invite(s), %d at-risk change(s)", keep_days,
                    pruned.verifications, pruned.alerts, pruned.messages,
                    pruned.answered_events, pruned.guide_runs, pruned.invites,
                    pruned.hygiene_changes)
        return pruned

    # -- the community report ---------------------------------------------------------------

    def record_assessments(self, records: Iterable[HygieneRecord]) -> None:
        """Each person's latest assessment, and a change row when their "at risk" flipped."""
        with self.db.atomic():
            for r in records:
                before = self._one("SELECT at_risk FROM hygiene WHERE user_id = ?", [r.user_id])
                self.db.execute(
                    "INSERT OR REPLACE INTO hygiene (user_id, assessed_ms, cross_signing, "
                    "backup, recovery, unverified, inactive, at_risk, remote) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [r.user_id, r.assessed_ms, int(r.cross_signing), r.backup,
                     None if r.recovery is None else int(r.recovery), r.unverified, r.inactive,
                     int(r.at_risk), int(r.remote)])
                if before is None or bool(before[0]) != r.at_risk:
                    self.db.execute("INSERT INTO hygiene_changes (user_id, at_ms, at_risk) "
                                    "VALUES (?, ?, ?)", [r.user_id, r.assessed_ms,
                                                         int(r.at_risk)])

    def forget_assessments_except(self, user_ids: Iterable[str]) -> int:
        """People no longer served (left every room, deactivated) drop out of the numbers,
        and what the admin API said about them is forgotten."""
        keep = set(user_ids)
        gone = [u for (u,) in self.db.execute("SELECT user_id FROM hygiene").fetchall()
                if u not in keep]
        unserved = [u for (u,) in self.db.execute("SELECT user_id FROM admin_facts").fetchall()
                    if u not in keep]
        with self.db.atomic():
            self.db.conn.executemany("DELETE FROM hygiene WHERE user_id = ?",
                                     [(u,) for u in gone])
            self.db.conn.executemany("DELETE FROM admin_facts WHERE user_id = ?",
                                     [(u,) for u in unserved])
        return len(gone)

    # -- admin facts kept across restarts ---------------------------------------------------

    def save_admin_facts(self, items: Iterable[tuple[str, Fetched, AdminFacts]]) -> None:
        """What the admin API said about each person, with when and their last_seen_ts then."""
        rows = [(user_id, fetched.at_ms, fetched.last_seen_ms, _admin_facts_json(facts))
                for user_id, fetched, facts in items]
        if rows:
            with self.db.atomic():
                self.db.conn.executemany(
                    "INSERT OR REPLACE INTO admin_facts (user_id, fetched_ms, last_seen_ms, "
                    "facts) VALUES (?, ?, ?, ?)", rows)

    def load_admin_facts(self, not_before_ms: int) -> list[tuple[str, Fetched, AdminFacts]]:
        """The kept admin facts fetched at ``not_before_ms`` or later; older rows (they can no
        longer stand for anyone) and rows that do not parse are deleted."""
        kept: list[tuple[str, Fetched, AdminFacts]] = []
        unusable: list[str] = []
        rows = self.db.execute(
            "SELECT user_id, fetched_ms, last_seen_ms, facts FROM admin_facts").fetchall()
        for user_id, fetched_ms, last_seen_ms, text in rows:
            facts = _admin_facts_from_json(text) if fetched_ms >= not_before_ms else None
            if facts is None:
                unusable.append(user_id)
                continue
            kept.append((str(user_id), Fetched(int(fetched_ms), last_seen_ms), facts))
        self.forget_admin_facts(unusable)
        return kept

    def forget_admin_facts(self, user_ids: Iterable[str]) -> None:
        users = [(u,) for u in user_ids]
        if users:
            with self.db.atomic():
                self.db.conn.executemany("DELETE FROM admin_facts WHERE user_id = ?", users)

    # -- device-list changes not yet checked (nerbot.alert_service) ---------------------------

    def note_device_changes(self, user_ids: Iterable[str], now_ms: int) -> None:
        """Noted, or noted again with the later time (a check that started before it must
        not cross it off)."""
        rows = [(u, now_ms) for u in user_ids]
        if rows:
            with self.db.atomic():
                self.db.conn.executemany(
                    "INSERT OR REPLACE INTO device_changes (user_id, noticed_ms) VALUES (?, ?)",
                    rows)

    def device_changes(self) -> list[str]:
        return [str(u) for (u,) in self.db.execute(
            "SELECT user_id FROM device_changes ORDER BY noticed_ms, user_id")]

    def clear_device_changes(self, user_ids: Iterable[str],
                             noticed_before_ms: int | None = None) -> None:
        """Cross off changes noticed before ``noticed_before_ms`` (all, without it). Strictly
        before: one noticed in the same millisecond may be newer than the check."""
        until = noticed_before_ms if noticed_before_ms is not None else 2**62
        rows = [(u, until) for u in user_ids]
        if rows:
            with self.db.atomic():
                self.db.conn.executemany(
                    "DELETE FROM device_changes WHERE user_id = ? AND noticed_ms < ?", rows)

    # -- room index (nerbot.matrix.roomindex) ------------------------------------------------

    def save_rooms(self, position: SyncPosition, rooms: Iterable[KeptRoom],
                   gone: Iterable[str] = (), replace_all: bool = False) -> None:
        """The rooms a sync changed, and the position after it, in one transaction: a crash
        leaves the position and the rooms of one same sync (the next start replays from there)."""
        rooms = list(rooms)
        gone_rows = [(room_id,) for room_id in gone]
        with self.db.atomic():
            conn = self.db.conn
            if replace_all:
                conn.execute("DELETE FROM rooms")
                conn.execute("DELETE FROM room_members")
            else:
                conn.executemany("DELETE FROM rooms WHERE room_id = ?", gone_rows)
                conn.executemany("DELETE FROM room_members WHERE room_id = ?", gone_rows)
                conn.executemany("DELETE FROM room_members WHERE room_id = ?",
                                 [(room.room_id,) for room in rooms])
            conn.executemany(
                "INSERT OR REPLACE INTO rooms (room_id, membership, encrypted, inviter, "
                "is_direct) VALUES (?, ?, ?, ?, ?)",
                [(room.room_id, room.membership, int(room.encrypted), room.inviter,
                  int(room.is_direct)) for room in rooms])
            conn.executemany(
                "INSERT OR REPLACE INTO room_members (room_id, user_id, invited) "
                "VALUES (?, ?, ?)",
                [(room.room_id, user_id, int(invited))
                 for room in rooms for user_id, invited in room.members])
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                         (SYNC_POSITION_META, json.dumps(dataclasses.asdict(position))))

    def load_rooms(self) -> tuple[SyncPosition | None, list[KeptRoom]]:
        """The saved position and the rooms as of it; no position if none was saved or the
        saved one does not parse (then the rooms are no use either)."""
        try:
            raw = json.loads(self.get_meta(SYNC_POSITION_META) or "null")
            position = SyncPosition(str(raw["device_id"]), str(raw["next_batch"]))
        except (ValueError, TypeError, KeyError):
            return None, []
        members: dict[str, list[tuple[str, bool]]] = {}
        for room_id, user_id, invited in self.db.execute(
                "SELECT room_id, user_id, invited FROM room_members ORDER BY room_id, user_id"):
            members.setdefault(str(room_id), []).append((str(user_id), bool(invited)))
        rooms = [KeptRoom(str(room_id), str(membership), bool(encrypted),
                          tuple(members.get(str(room_id), ())),
                          None if inviter is None else str(inviter), bool(is_direct))
                 for room_id, membership, encrypted, inviter, is_direct in self.db.execute(
                     "SELECT room_id, membership, encrypted, inviter, is_direct FROM rooms "
                     "ORDER BY room_id")]
        return position, rooms

    def forget_sync_position(self) -> None:
        """The next start asks for the full state (the rooms are replaced with its answer)."""
        with self.db.atomic():
            self.db.conn.execute("DELETE FROM meta WHERE key = ?", (SYNC_POSITION_META,))

    def hygiene_records(self) -> list[HygieneRecord]:
        rows = self.db.execute(
            "SELECT user_id, assessed_ms, cross_signing, backup, recovery, unverified, "
            "inactive, at_risk, remote FROM hygiene ORDER BY user_id").fetchall()
        return [HygieneRecord(str(u), int(at), bool(cs), str(b),
                              None if rec is None else bool(rec), int(unv), int(ina),
                              bool(risk), bool(rem))
                for u, at, cs, b, rec, unv, ina, risk, rem in rows]

    def hygiene_state_counts(self) -> dict[str, int]:
        """People served per hygiene state (the metrics' ``nerbot_people`` gauge)."""
        return count_people(self.hygiene_records()).gauges()

    def save_daily_snapshot(self, day: str, counts: PeopleCounts, now_ms: int) -> None:
        """Today's numbers (replaced through the day; the last one of a day stays)."""
        with self.db.atomic():
            self.db.execute("INSERT OR REPLACE INTO hygiene_daily (day, at_ms, counts) "
                            "VALUES (?, ?, ?)", [day, now_ms, json.dumps(
                                dataclasses.asdict(counts), sort_keys=True)])

    def daily_snapshots(self, days: Iterable[str]) -> dict[str, PeopleCounts]:
        wanted = list(days)
        marks = ", ".join("?" for _ in wanted)
        rows = self.db.execute(f"SELECT day, counts FROM hygiene_daily WHERE day IN ({marks})",
                               wanted).fetchall()
        fields = PeopleCounts.__dataclass_fields__
        return {str(day): PeopleCounts(**{k: int(v) for k, v in json.loads(counts).items()
                                          if k in fields})
                for day, counts in rows}

    def verification_rows(self, since_ms: int) -> list[VerificationRow]:
        rows = self.db.execute(
            "SELECT user_id, transport, started_ms, result, cancel_code FROM verifications "
            "WHERE started_ms >= ? ORDER BY started_ms", [since_ms]).fetchall()
        return [VerificationRow(str(u), str(t), int(s), str(r), c) for u, t, s, r, c in rows]

    def alert_rows(self, since_ms: int) -> list[AlertRow]:
        rows = self.db.execute("SELECT user_id, kind, devices, at_ms FROM alerts "
                               "WHERE at_ms >= ? ORDER BY at_ms", [since_ms]).fetchall()
        return [AlertRow(str(u), str(k), len([d for d in str(devices or "").split(",") if d]),
                         int(at)) for u, k, devices, at in rows]

    def reminder_outcomes(self, since_ms: int) -> list[ReminderOutcome]:
        """Reminders delivered since then, each with: fixed within a week after it?"""
        rows = self.db.execute(
            "SELECT o.user_id, o.sent_ms, EXISTS (SELECT 1 FROM hygiene_changes h "
            "  WHERE h.user_id = o.user_id AND h.at_risk = 0 AND h.at_ms > o.sent_ms "
            "  AND h.at_ms <= o.sent_ms + ?) "
            "FROM outbox o WHERE o.kind = 'remind' AND o.status = 'sent' "
            "AND o.sent_ms >= ? ORDER BY o.sent_ms", [WEEK_MS, since_ms]).fetchall()
        return [ReminderOutcome(str(u), int(at), bool(fixed)) for u, at, fixed in rows]

    def reminder_choices(self, now_ms: int) -> tuple[int, int]:
        """People who turned reminders off, and people with a snooze running, now."""
        row = self.db.execute(
            "SELECT COALESCE(SUM(opted_out != 0), 0), "
            "COALESCE(SUM(opted_out = 0 AND snoozed_until_ms > ?), 0) FROM reminder_state",
            [now_ms]).fetchone()
        return int(row[0]), int(row[1])

    def verified_users(self, user_ids: Iterable[str]) -> set[str]:
        """Those of ``user_ids`` whose identity the bot signed after a verification with them."""
        wanted = list(user_ids)
        if not wanted:
            return set()
        marks = ", ".join("?" for _ in wanted)
        rows = self.db.execute(
            f"SELECT DISTINCT user_id FROM verifications WHERE result = 'verified' "
            f"AND master_key_signed = 1 AND user_id IN ({marks})", wanted).fetchall()
        return {str(r[0]) for r in rows}

    # -- verifications ----------------------------------------------------------------------

    def verification_started(self, txn: str, user_id: UserId, device_id: str | None,
                             direction: str, transport: str, now_ms: int,
                             room_id: str | None = None) -> bool:
        """Record a verification that really started; False if ``txn`` is recorded already.

        An existing record is never replaced: a reused transaction ID must not erase a
        verification's history, nor reset the per-user limits that count these rows.
        """
        with self.db.atomic():
            cursor = self.db.execute(
                "INSERT OR IGNORE INTO verifications (txn, user_id, device_id, direction, "
                "transport, started_ms, ended_ms, result, cancel_code, master_key_signed, "
                "room_id, resume) VALUES (?, ?, ?, ?, ?, ?, NULL, 'pending', NULL, 0, ?, NULL)",
                [txn, user_id, device_id or "", direction, transport, now_ms, room_id])
            return cursor.rowcount == 1

    def verification_ended(self, txn: str, result: str, now_ms: int,
                           cancel_code: str | None = None, device_id: str | None = None,
                           master_key_signed: bool = False) -> None:
        with self.db.atomic():
            self.db.execute(
                "UPDATE verifications SET ended_ms = ?, result = ?, cancel_code = ?, "
                "master_key_signed = ?, device_id = COALESCE(NULLIF(?, ''), device_id), "
                "resume = NULL WHERE txn = ?",
                [now_ms, result, cancel_code, int(master_key_signed), device_id or "", txn])

    def verification_recorded(self, txn: str) -> bool:
        return self._one("SELECT 1 FROM verifications WHERE txn = ?", [txn]) is not None

    def pending_verification(self, txn: str) -> tuple[str, int] | None:
        """``(transport, started_ms)`` of a verification not ended yet; None if there is none."""
        row = self._one("SELECT transport, started_ms FROM verifications "
                        "WHERE txn = ? AND result = 'pending'", [txn])
        return (str(row[0]), int(row[1])) if row else None

    def verification_resume_point(self, txn: str, device_id: str, resume: str) -> None:
        """Their MAC was valid: what to send and to trust if we crash before it is done."""
        with self.db.atomic():
            self.db.execute("UPDATE verifications SET resume = ?, device_id = ? "
                            "WHERE txn = ? AND result = 'pending'", [resume, device_id, txn])

    def interrupted_verifications(self) -> list[dict[str, Any]]:
        """Verifications still pending: at start, the ones a crash or stop interrupted."""
        rows = self.db.execute(
            "SELECT txn, user_id, device_id, transport, room_id, resume FROM verifications "
            "WHERE result = 'pending' ORDER BY started_ms").fetchall()
        keys = ("txn", "user_id", "device_id", "transport", "room_id", "resume")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def verifications(self, user_id: UserId | None = None) -> list[dict[str, object]]:
        where, args = ("user_id = ?", [user_id]) if user_id else (None, None)
        rows = self._table("verifications").rows_where(where, args, order_by="started_ms")
        return [dict(r) | {"duration_ms": (r["ended_ms"] - r["started_ms"])
                           if r["ended_ms"] else None} for r in rows]

    def verified_since(self, user_id: UserId, since_ms: int) -> bool:
        """Has a verification with this user succeeded since then (the practice guide asks)?"""
        row = self.db.execute(
            "SELECT 1 FROM verifications WHERE user_id = ? AND result = 'verified' "
            "AND ended_ms >= ? LIMIT 1", [user_id, since_ms]).fetchone()
        return row is not None

    def verification_attempts_since(self, user_id: UserId, since_ms: int) -> list[str]:
        """Results of the user's verifications started since then (for rate limits)."""
        rows = self.db.execute(
            "SELECT result FROM verifications WHERE user_id = ? AND started_ms >= ? "
            "ORDER BY started_ms", [user_id, since_ms]).fetchall()
        return [str(r[0]) for r in rows]

    # -- invites ----------------------------------------------------------------------------

    def record_invite(
        self, room_id: RoomId, inviter: UserId, accepted: bool, reason: str, now_ms: int
    ) -> None:
        with self.db.atomic():
            self._table("invites").insert(
                {"room_id": room_id, "inviter": inviter, "accepted": int(accepted),
                 "reason": reason, "at_ms": now_ms}
            )

    def invites(self) -> list[dict[str, object]]:
        return list(self._table("invites").rows)


ADMIN_FACTS_FORMAT = 1


def _admin_facts_json(facts: AdminFacts) -> str:
    backup = facts.backup
    return json.dumps({
        "format": ADMIN_FACTS_FORMAT, "exists": facts.exists,
        "last_seen_ms": facts.last_seen_ms,
        "backup": {"state": backup.state.value, "version": backup.version,
                   "secret_storage": backup.secret_storage,
                   "key_backup_enabled": backup.key_backup_enabled,
                   "legacy_backup_marker": backup.legacy_backup_marker,
                   "storage_opted_out": backup.storage_opted_out}})


def _admin_facts_from_json(text: object) -> AdminFacts | None:
    """None for anything but what ``_admin_facts_json`` wrote (then the row is read again
    from the homeserver): a row from another format never becomes a wrong fact."""
    try:
        raw = json.loads(text) if isinstance(text, str) else None
        if not isinstance(raw, dict) or raw.get("format") != ADMIN_FACTS_FORMAT:
            return None
        backup, seen = raw["backup"], raw["last_seen_ms"]
        flags = ("secret_storage", "key_backup_enabled", "legacy_backup_marker",
                 "storage_opted_out")
        if not (isinstance(raw["exists"], bool) and isinstance(seen, dict)
                and all(isinstance(k, str) and (v is None or type(v) is int)
                        for k, v in seen.items())
                and (backup["version"] is None or isinstance(backup["version"], str))
                and all(backup[f] is None or isinstance(backup[f], bool) for f in flags)):
            return None
        return AdminFacts(exists=raw["exists"], last_seen_ms=dict(seen), backup=BackupFacts(
            state=BackupState(backup["state"]), version=backup["version"],
            **{f: backup[f] for f in flags}))
    except (ValueError, KeyError, TypeError):
        return None
