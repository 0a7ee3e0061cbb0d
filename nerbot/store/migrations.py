"""Append-only schema migrations. Never edit or reorder one that has shipped; add a new one."""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

MIGRATION_SET = "nerbot"


def build_migrations() -> Migrations:
    """The ordered migrations; each runs with its applied-record in one transaction."""
    migrations = Migrations(MIGRATION_SET)

    @migrations(name="0001_initial")
    def initial(db: Database) -> None:
        db.table("meta").create({"key": str, "value": str}, pk="key")
        db.table("users").create(
            {"user_id": str, "language": str, "first_seen_ms": int, "updated_ms": int},
            pk="user_id",
        )
        db.table("dm_rooms").create(
            {"user_id": str, "room_id": str, "created_ms": int}, pk="user_id"
        )
        db.table("dm_rooms").create_index(["room_id"], unique=True)
        # Commands already answered: a replayed sync after a crash must not answer twice.
        db.table("handled_events").create({"event_id": str, "handled_ms": int}, pk="event_id")
        db.table("invites").create(
            {"room_id": str, "inviter": str, "accepted": int, "reason": str, "at_ms": int},
        )

    @migrations(name="0002_verifications")
    def verifications(db: Database) -> None:
        db.table("verifications").create(
            {"txn": str, "user_id": str, "device_id": str, "direction": str, "transport": str,
             "started_ms": int, "ended_ms": int, "result": str, "cancel_code": str,
             "master_key_signed": int},
            pk="txn",
        )
        db.table("verifications").create_index(["user_id", "started_ms"])

    @migrations(name="0003_guides")
    def guides(db: Database) -> None:
        db.table("users").add_column("platform", str)
        # One active walkthrough per user; the session baseline is JSON (lists of device IDs).
        db.table("guide_progress").create(
            {"user_id": str, "guide": str, "step": int, "started_ms": int, "updated_ms": int,
             "signed_at_start": str, "known_at_start": str},
            pk="user_id",
        )
        db.table("guide_runs").create(
            {"user_id": str, "guide": str, "started_ms": int, "ended_ms": int, "result": str},
        )
        db.table("guide_runs").create_index(["user_id", "ended_ms"])

    @migrations(name="0004_reminders")
    def reminders(db: Database) -> None:
        # What the reminder policy remembers per user, plus the user's own choices.
        db.table("reminder_state").create(
            {"user_id": str, "opted_out": int, "snoozed_until_ms": int, "finding_key": str,
             "sent_count": int, "sent_total": int, "last_sent_ms": int, "all_good_sent": int,
             "alerts_off": int, "updated_ms": int},
            pk="user_id",
        )
        # Transactional outbox: a message is recorded (with its deterministic transaction ID)
        # in the same transaction as the state change, before it is sent; delivery retries it
        # until the homeserver acknowledged it, reusing the transaction ID.
        db.table("outbox").create(
            {"key": str, "user_id": str, "kind": str, "txn_id": str, "body": str,
             "room_id": str, "status": str, "attempts": int, "created_ms": int,
             "sent_ms": int, "event_id": str},
            pk="key",
        )
        db.table("outbox").create_index(["status", "created_ms"])
        db.table("outbox").create_index(["user_id", "created_ms"])
        # Sessions and identities the bot has seen, so a new one can be told apart.
        db.table("known_devices").create(
            {"user_id": str, "device_id": str, "first_seen_ms": int}, pk=("user_id", "device_id"),
        )
        db.table("known_identities").create(
            {"user_id": str, "master_key": str, "seen_ms": int}, pk="user_id",
        )
        db.table("alerts").create(
            {"user_id": str, "kind": str, "devices": str, "at_ms": int},
        )
        db.table("alerts").create_index(["user_id", "at_ms"])

    @migrations(name="0005_retention_indexes")
    def retention_indexes(db: Database) -> None:
        # The daily prune deletes by age alone; the per-user indexes above cannot serve that.
        # (The outbox's prune uses ``status, created_ms``; claim_event's pruning of answered
        # events was a full scan on every message until now.)
        db.table("verifications").create_index(["started_ms"])
        db.table("alerts").create_index(["at_ms"])
        db.table("handled_events").create_index(["handled_ms"])

    @migrations(name="0006_verification_resume")
    def verification_resume(db: Database) -> None:
        # What a restart needs to end a verification the crash interrupted: the room of an
        # in-room one, and (once their MAC was valid) our MAC and done and what to trust.
        db.table("verifications").add_column("room_id", str)
        db.table("verifications").add_column("resume", str)

    @migrations(name="0007_guide_answer")
    def guide_answer(db: Database) -> None:
        # The transaction ID of a step's answer not yet known to be on the homeserver: stored
        # with the step itself, so a crash between the two is repaired at the next start.
        db.table("guide_progress").add_column("unsent_txn", str)

    @migrations(name="0008_community_report")
    def community_report(db: Database) -> None:
        # The latest assessment of each person served (one row each, replaced), so the report
        # and the metrics count without asking the homeserver; ``backup``: present / absent
        # (seen), likely_absent (inferred), unknown; ``recovery`` NULL when not seen.
        db.table("hygiene").create(
            {"user_id": str, "assessed_ms": int, "cross_signing": int, "backup": str,
             "recovery": int, "unverified": int, "inactive": int, "at_risk": int,
             "remote": int},
            pk="user_id",
        )
        # When someone's "at risk" changed (first look, fixed, at risk again): what "fixed
        # within a week of a reminder" is measured from.
        db.table("hygiene_changes").create({"user_id": str, "at_ms": int, "at_risk": int})
        db.table("hygiene_changes").create_index(["user_id", "at_ms"])
        db.table("hygiene_changes").create_index(["at_ms"])
        # One small snapshot of the community's numbers per day, for the report's trend.
        db.table("hygiene_daily").create({"day": str, "at_ms": int, "counts": str}, pk="day")

    @migrations(name="0009_more_retention_indexes")
    def more_retention_indexes(db: Database) -> None:
        # The daily prune also deletes ended walkthroughs and invites by age alone.
        # (``hygiene_changes`` has had its ``at_ms`` index since 0008.)
        db.table("guide_runs").create_index(["ended_ms"])
        db.table("invites").create_index(["at_ms"])

    @migrations(name="0010_admin_facts")
    def admin_facts(db: Database) -> None:
        # What the admin API said about each local person, when, and their last_seen_ts then:
        # facts still current at a restart (nerbot.domain.freshness) are not read again.
        db.table("admin_facts").create(
            {"user_id": str, "fetched_ms": int, "last_seen_ms": int, "facts": str},
            pk="user_id",
        )

    @migrations(name="0011_guide_step_id")
    def guide_step_id(db: Database) -> None:
        # The step is found again by its ID, so inserting or removing steps in a guide never
        # moves anyone; ``step`` (the position) stays for rows written before this.
        db.table("guide_progress").add_column("step_id", str)

    @migrations(name="0012_room_index")
    def room_index(db: Database) -> None:
        # The bot's rooms and their members as of the sync position in ``meta``
        # (nerbot.matrix.roomindex): a restart resumes syncing from there instead of asking for
        # every room's full state. ``membership`` is the bot's own: join, or invite (pending).
        db.table("rooms").create({"room_id": str, "membership": str, "encrypted": int},
                                 pk="room_id")
        db.table("room_members").create({"room_id": str, "user_id": str, "invited": int},
                                        pk=("room_id", "user_id"))
        # People whose device list sync said changed and whose alert check has not yet run:
        # written before the sync position moves past the change, deleted once checked.
        db.table("device_changes").create({"user_id": str, "noticed_ms": int}, pk="user_id")

    @migrations(name="0013_kept_invites")
    def kept_invites(db: Database) -> None:
        # Of a pending invite to the bot: who sent it and whether as a DM, so that a restart
        # decides it again (neither a resumed nor a full-state sync with a position brings an
        # old invite a second time).
        db.table("rooms").add_column("inviter", str)
        db.table("rooms").add_column("is_direct", int)

    @migrations(name="0014_kept_gaps")
    def kept_gaps(db: Database) -> None:
        # A room whose timeline a sync cut short, between the position the sync started from
        # (``since``) and the one it ended at (``until``): written before the sync position
        # moves on, deleted once the room's messages in between were handed to the bot, so a
        # stop or crash while they are fetched fetches them again at the next start.
        db.table("gaps").create({"room_id": str, "since": str, "until": str,
                                 "noted_ms": int}, pk=("room_id", "since"))

    return migrations
