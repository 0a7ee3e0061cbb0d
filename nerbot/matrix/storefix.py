"""Make nio's crypto store cheap to call (one small shim over nio, nothing else changed).

nio's ``DefaultStore`` wraps every store method in ``database.bind_ctx(models)``, and peewee
walks the whole model graph on each bind: ~60 % of the bot's CPU per verification went there
(3,480 binds for six verifications; each sync saves the token and encrypted rooms). We bind the
models to the bot's database once and make ``bind_ctx`` a no-op while they are still bound to
it. If anything else rebinds them (another nio store in the same process, as in tests), the
check fails and the original, full ``bind_ctx`` runs, so correctness never depends on the shim.

``use_write_ahead_log`` puts the same database in WAL mode with ``synchronous=NORMAL``: nio
commits twice per sync (token, encrypted rooms), and in the default rollback journal each commit
costs two fsyncs. In WAL a commit survives a crash or SIGKILL of the bot; only a power cut can
lose the last few commits, which Olm recovers from as from any restored backup (the peer's next
message re-establishes the session).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any


def bind_store_once(store: Any) -> bool:
    """Install the shim on a nio ``MatrixStore``; False if the store has no peewee database."""
    database = getattr(store, "database", None)
    models = getattr(store, "models", None)
    if database is None or not models or not hasattr(database, "bind_ctx"):
        return False
    database.bind(models)
    original = database.bind_ctx

    def bind_ctx(models: Iterable[Any], bind_refs: bool = True, bind_backrefs: bool = True
                 ) -> Any:
        models = list(models)
        if all(getattr(m._meta, "database", None) is database for m in models):
            return contextlib.nullcontext()
        return original(models, bind_refs, bind_backrefs)

    database.bind_ctx = bind_ctx
    return True


def memoize_store_lookups(store: Any) -> bool:
    """Stop nio re-reading its own account row and re-saving known encrypted rooms each sync.

    Every nio store method starts with ``_get_account()`` (a peewee query; a third of the bot's
    CPU per verification went there) although the row never changes once it exists, and each
    sync re-inserts the encrypted rooms of that sync (insert-or-ignore: a no-op for a known
    room). Only a found account is remembered, and only rooms already saved are skipped.
    """
    get_account = getattr(store, "_get_account", None)
    save_rooms = getattr(store, "save_encrypted_rooms", None)
    if get_account is None or save_rooms is None:
        return False
    remembered: list[Any] = []
    saved: set[str] = set()

    def cached_account() -> Any:
        if not remembered:
            account = get_account()
            if account is None:
                return None
            remembered.append(account)
        return remembered[0]

    def save_new_rooms(rooms: Iterable[str]) -> None:
        new = set(rooms) - saved
        if new:
            save_rooms(new)
            saved.update(new)

    store._get_account = cached_account
    store.save_encrypted_rooms = save_new_rooms
    return True


def save_sync_tokens_directly(store: Any) -> bool:
    """Save nio's sync token with one prepared statement instead of peewee's query builder.

    nio saves the token after every sync (``SyncTokens.replace``): building that query cost
    as much CPU as the rest of the store together. The statement is the one peewee sends,
    ``INSERT OR REPLACE`` into the same table (unique per account), on the store's own
    database, so ``load_sync_token`` reads it back unchanged.
    """
    database = getattr(store, "database", None)
    get_account = getattr(store, "_get_account", None)
    if database is None or get_account is None or not hasattr(store, "save_sync_token") or \
            not hasattr(database, "execute_sql"):
        return False
    from nio.store.models import SyncTokens
    meta = SyncTokens._meta
    statement = (f'INSERT OR REPLACE INTO "{meta.table_name}" '
                 f'("{SyncTokens.token.column_name}", "{SyncTokens.account.column_name}") '
                 f"VALUES (?, ?)")

    def save_sync_token(token: str) -> None:
        account = get_account()
        assert account is not None, "nio saves a sync token only once it has an account"
        database.execute_sql(statement, (token, account.id))

    store.save_sync_token = save_sync_token
    return True


TRUST_FILES = ("trust_db", "blacklist_db", "ignore_db")


def write_trust_files_only_on_change(store: Any) -> bool:
    """Stop nio rewriting (and fsyncing) trust files it did not change.

    Marking a device verified removes it from the blacklist and ignore files first, and nio
    rewrites each file atomically, with two fsyncs, even when the device was not in it: three
    file rewrites per verification where one changes anything.
    """
    files: list[Any] = [getattr(store, name, None) for name in TRUST_FILES]
    if not all(hasattr(f, "check") and hasattr(f, "remove") for f in files):
        return False
    for trust_file in files:
        def remove_if_present(key: Any, trust_file: Any = trust_file,
                              remove: Any = trust_file.remove) -> bool:
            return bool(remove(key)) if trust_file.check(key) else False
        trust_file.remove = remove_if_present
    return True


WAL_PRAGMAS = (("journal_mode", "wal"), ("synchronous", 1))  # 1 = NORMAL


def use_write_ahead_log(store: Any) -> bool:
    """Switch nio's store database to WAL; False if it has none (or is in memory)."""
    database = getattr(store, "database", None)
    if database is None or not hasattr(database, "execute_sql") or \
            getattr(database, "database", ":memory:") == ":memory:":
        return False
    pragmas = list(getattr(database, "_pragmas", []))
    for name, value in WAL_PRAGMAS:
        database.execute_sql(f"PRAGMA {name}={value}")
        pragmas = [(n, v) for n, v in pragmas if n != name] + [(name, value)]
    database._pragmas = pragmas  # re-applied if peewee reconnects
    return True
