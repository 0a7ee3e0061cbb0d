"""nio's crypto store in WAL mode: set through peewee's public API, nio's own code unchanged."""

from __future__ import annotations

from pathlib import Path

from nio.crypto import OlmAccount
from nio.store import DefaultStore

from nerbot.matrix.storefix import use_write_ahead_log


def store_in(tmp_path: Path) -> DefaultStore:
    store = DefaultStore("@a:hs", "A", str(tmp_path))
    store.save_account(OlmAccount())
    return store


def test_write_ahead_log_is_on_and_stays_on_in_the_file(tmp_path: Path) -> None:
    store = store_in(tmp_path)
    assert use_write_ahead_log(store)
    assert store.database.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.database.execute_sql("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    store.save_sync_token("after")
    store.database.close()
    reopened = DefaultStore("@a:hs", "A", str(tmp_path))  # as after a restart
    assert reopened.database.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert reopened.load_sync_token() == "after" and reopened.load_account() is not None


def test_a_store_without_a_file_database_is_left_alone() -> None:
    class NoDatabase:
        database = None

    assert not use_write_ahead_log(NoDatabase())
