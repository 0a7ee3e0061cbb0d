"""The bot's SQLite database: one file in the data directory, migrated forward on open."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sqlite_utils import Database
from sqlite_utils.db import NotFoundError, Table

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
