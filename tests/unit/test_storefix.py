"""The nio store shim: no rebinding while bound to our database, full rebinding otherwise."""

from __future__ import annotations

import contextlib
from pathlib import Path

from nio.crypto import OlmAccount, OlmDevice
from nio.store import DefaultStore

from nerbot.matrix.storefix import (
    bind_store_once,
    memoize_store_lookups,
    save_sync_tokens_directly,
    use_write_ahead_log,
    write_trust_files_only_on_change,
)


def stores(tmp_path: Path) -> tuple[DefaultStore, DefaultStore]:
    made = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        store = DefaultStore(f"@{name}:hs", name.upper(), str(tmp_path / name))
        store.save_account(OlmAccount())
        made.append(store)
    return made[0], made[1]


def test_bind_ctx_is_free_while_bound_and_real_otherwise(tmp_path: Path) -> None:
    ours, other = stores(tmp_path)
    assert bind_store_once(ours)
    assert isinstance(ours.database.bind_ctx(ours.models), contextlib.nullcontext)
    ours.save_sync_token("s1")
    # another store in the same process binds the models to its own database for its call...
    other.save_sync_token("other")
    assert other.load_sync_token() == "other"
    # ...and ours still reads and writes its own database afterwards
    assert ours.load_sync_token() == "s1"
    ours.save_sync_token("s2")
    assert ours.load_sync_token() == "s2" and other.load_sync_token() == "other"


def test_models_bound_elsewhere_fall_back_to_a_real_bind(tmp_path: Path) -> None:
    ours, other = stores(tmp_path)
    bind_store_once(ours)
    other.database.bind(other.models)  # someone binds the models permanently elsewhere
    assert not isinstance(ours.database.bind_ctx(ours.models), contextlib.nullcontext)
    ours.save_sync_token("mine")
    assert ours.load_sync_token() == "mine"
    assert other.load_sync_token() != "mine"


def test_account_row_is_read_once_and_known_rooms_are_not_saved_again(tmp_path: Path) -> None:
    ours, _ = stores(tmp_path)
    reads: list[int] = []
    saves: list[set[str]] = []
    real_get, real_save = ours._get_account, ours.save_encrypted_rooms

    def counting_get() -> object:
        reads.append(1)
        return real_get()

    def counting_save(rooms: set[str]) -> None:
        saves.append(set(rooms))
        real_save(rooms)

    ours._get_account, ours.save_encrypted_rooms = counting_get, counting_save
    assert memoize_store_lookups(ours)
    for token in ("s1", "s2", "s3"):
        ours.save_sync_token(token)
    assert len(reads) == 1 and ours.load_sync_token() == "s3"
    ours.save_encrypted_rooms({"!a:hs", "!b:hs"})
    ours.save_encrypted_rooms({"!a:hs"})
    ours.save_encrypted_rooms(set())
    ours.save_encrypted_rooms({"!b:hs", "!c:hs"})
    assert saves == [{"!a:hs", "!b:hs"}, {"!c:hs"}]
    assert ours.load_encrypted_rooms() == {"!a:hs", "!b:hs", "!c:hs"}


def test_missing_account_is_not_remembered(tmp_path: Path) -> None:
    (tmp_path / "fresh").mkdir()
    store = DefaultStore("@c:hs", "C", str(tmp_path / "fresh"))
    memoize_store_lookups(store)
    assert store._get_account() is None
    store.save_account(OlmAccount())
    assert store._get_account() is not None


def test_write_ahead_log_is_on_and_survives_reconnects(tmp_path: Path) -> None:
    ours, _ = stores(tmp_path)
    assert use_write_ahead_log(ours)
    assert ours.database.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert ours.database.execute_sql("PRAGMA synchronous").fetchone()[0] == 1
    ours.database.close()
    ours.database.connect()
    assert ours.database.execute_sql("PRAGMA synchronous").fetchone()[0] == 1
    ours.save_sync_token("after")
    assert ours.load_sync_token() == "after"


def test_sync_token_saved_directly_reads_back_through_nio(tmp_path: Path) -> None:
    ours, other = stores(tmp_path)
    memoize_store_lookups(ours)
    assert save_sync_tokens_directly(ours)
    ours.save_sync_token("s1")
    other.save_sync_token("theirs")
    ours.save_sync_token("s2")  # replaces: one row per account, as with peewee's replace()
    assert ours.load_sync_token() == "s2" and other.load_sync_token() == "theirs"
    rows = ours.database.execute_sql('SELECT COUNT(*) FROM "synctokens"').fetchone()[0]
    assert rows == 1


def test_sync_token_survives_a_reopened_store(tmp_path: Path) -> None:
    ours, _ = stores(tmp_path)
    save_sync_tokens_directly(ours)
    ours.save_sync_token("before-restart")
    ours.database.close()
    reopened = DefaultStore("@a:hs", "A", str(tmp_path / "a"))
    assert reopened.load_sync_token() == "before-restart"


def test_trust_files_are_rewritten_only_when_they_change(tmp_path: Path) -> None:
    ours, _ = stores(tmp_path)
    assert write_trust_files_only_on_change(ours)
    device = OlmDevice("@peer:hs", "PEER", {"ed25519": "ZWQ", "curve25519": "Y3Y"})
    files = {name: Path(getattr(ours, name)._filename) for name in
             ("trust_db", "blacklist_db", "ignore_db")}
    ours.blacklist_device(device)
    assert files["blacklist_db"].read_text().strip()
    before = {name: (p.stat().st_mtime_ns if p.exists() else None) for name, p in files.items()}
    ours.verify_device(device)  # leaves the blacklist (a change), was never ignored (none)
    assert ours.is_device_verified(device) and not ours.is_device_blacklisted(device)
    assert not files["blacklist_db"].read_text().strip()
    assert (files["ignore_db"].stat().st_mtime_ns if files["ignore_db"].exists() else None) \
        == before["ignore_db"]
    reopened = DefaultStore("@a:hs", "A", str(tmp_path / "a"))
    assert reopened.is_device_verified(device) and not reopened.is_device_blacklisted(device)
