"""The bot's SQLite database: one file in the data directory, migrated forward on open."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from sqlite_utils import Database
from sqlite_utils.db import NotFoundError, Table

from nerbot.domain.guide import GuideProgress
from nerbot.ids import RoomId, UserId
from nerbot.store.migrations import MIGRATION_SET, build_migrations

logger = logging.getLogger(__name__)

# Handled-event records older than this are pruned; a sync replay never reaches that far back.
HANDLED_EVENTS_KEEP_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class UserRecord:
    """What the bot remembers about a person it has talked to."""

    user_id: UserId
    language: str | None
    first_seen_ms: int


class Store:
    """Typed access to the bot's tables. Every method is one short transaction.

    Callers pass ``now_ms`` explicitly so that time stays a parameter (testable, no clock reads
    hidden in storage).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = None if path == ":memory:" else Path(path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = Database(self.path)
            self.db.execute("PRAGMA journal_mode=WAL")
        else:
            self.db = Database(memory=True)
        self.db.execute("PRAGMA foreign_keys=ON")
        migrations = build_migrations()
        pending = [m.name for m in migrations.pending(self.db)]
        migrations.apply(self.db)
        if pending:
            logger.info("Database migrated: applied %s", ", ".join(pending))

    def close(self) -> None:
        self.db.close()

    def _table(self, name: str) -> Table:
        table = self.db[name]
        assert isinstance(table, Table)
        return table

    @property
    def schema_version(self) -> int:
        """How many migrations have been applied (monotonic; tells operators what they run)."""
        row = self.db.execute(
            "SELECT count(*) FROM _sqlite_migrations WHERE migration_set = ?", [MIGRATION_SET]
        ).fetchone()
        return int(row[0])

    # -- meta -------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        try:
            return str(self._table("meta").get(key)["value"])
        except NotFoundError:
            return None

    def set_meta(self, key: str, value: str) -> None:
        with self.db.atomic():
            self._table("meta").upsert({"key": key, "value": value}, pk="key")

    # -- users ------------------------------------------------------------------------------

    def get_user(self, user_id: UserId) -> UserRecord | None:
        try:
            row = self._table("users").get(user_id)
        except NotFoundError:
            return None
        return UserRecord(UserId(row["user_id"]), row["language"], int(row["first_seen_ms"]))

    def touch_user(self, user_id: UserId, now_ms: int) -> UserRecord:
        """Record that the bot has seen this user (first-seen time is kept from the first call)."""
        existing = self.get_user(user_id)
        if existing is not None:
            return existing
        with self.db.atomic():
            self._table("users").insert(
                {"user_id": user_id, "language": None, "first_seen_ms": now_ms,
                 "updated_ms": now_ms},
                pk="user_id",
                ignore=True,
            )
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
        try:
            row = self._table("guide_progress").get(user_id)
        except NotFoundError:
            return None
        return GuideProgress(
            guide=row["guide"], step=int(row["step"]), started_ms=int(row["started_ms"]),
            updated_ms=int(row["updated_ms"]),
            signed_at_start=frozenset(json.loads(row["signed_at_start"] or "[]")),
            known_at_start=frozenset(json.loads(row["known_at_start"] or "[]")),
        )

    def save_guide_progress(self, user_id: UserId, progress: GuideProgress) -> None:
        with self.db.atomic():
            self._table("guide_progress").upsert(
                {"user_id": user_id, "guide": progress.guide, "step": progress.step,
                 "started_ms": progress.started_ms, "updated_ms": progress.updated_ms,
                 "signed_at_start": json.dumps(sorted(progress.signed_at_start)),
                 "known_at_start": json.dumps(sorted(progress.known_at_start))},
                pk="user_id",
            )

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

    # -- direct messages --------------------------------------------------------------------

    def get_dm_room(self, user_id: UserId) -> RoomId | None:
        try:
            return RoomId(self._table("dm_rooms").get(user_id)["room_id"])
        except NotFoundError:
            return None

    def user_for_dm_room(self, room_id: RoomId) -> UserId | None:
        rows = list(self._table("dm_rooms").rows_where("room_id = ?", [room_id], limit=1))
        return UserId(rows[0]["user_id"]) if rows else None

    def set_dm_room(self, user_id: UserId, room_id: RoomId, now_ms: int) -> None:
        """Remember the DM with a user (one per user; a newer DM replaces the old one)."""
        with self.db.atomic():
            self.db.execute("DELETE FROM dm_rooms WHERE room_id = ? AND user_id != ?",
                            [room_id, user_id])
            self._table("dm_rooms").upsert(
                {"user_id": user_id, "room_id": room_id, "created_ms": now_ms}, pk="user_id"
            )

    def forget_dm_room(self, room_id: RoomId) -> None:
        with self.db.atomic():
            self.db.execute("DELETE FROM dm_rooms WHERE room_id = ?", [room_id])

    # -- idempotent event handling ----------------------------------------------------------

    def claim_event(self, event_id: str, now_ms: int) -> bool:
        """Mark an event handled; False if it already was (a replay must not answer twice)."""
        with self.db.atomic():
            cursor = self.db.execute(
                "INSERT OR IGNORE INTO handled_events (event_id, handled_ms) VALUES (?, ?)",
                [event_id, now_ms],
            )
            claimed = cursor.rowcount == 1
            if claimed:
                self.db.execute(
                    "DELETE FROM handled_events WHERE handled_ms < ?",
                    [now_ms - HANDLED_EVENTS_KEEP_MS],
                )
        return claimed

    # -- verifications ----------------------------------------------------------------------

    def verification_started(self, txn: str, user_id: UserId, device_id: str | None,
                             direction: str, transport: str, now_ms: int) -> None:
        with self.db.atomic():
            self._table("verifications").upsert(
                {"txn": txn, "user_id": user_id, "device_id": device_id or "",
                 "direction": direction, "transport": transport, "started_ms": now_ms,
                 "ended_ms": None, "result": "pending", "cancel_code": None,
                 "master_key_signed": 0}, pk="txn")

    def verification_ended(self, txn: str, result: str, now_ms: int,
                           cancel_code: str | None = None, device_id: str | None = None,
                           master_key_signed: bool = False) -> None:
        updates: dict[str, object] = {"ended_ms": now_ms, "result": result,
                                      "cancel_code": cancel_code,
                                      "master_key_signed": int(master_key_signed)}
        if device_id:
            updates["device_id"] = device_id
        with self.db.atomic():
            self._table("verifications").update(txn, updates)

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
