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
