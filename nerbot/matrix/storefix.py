"""Make nio's crypto store cheap to call (one small shim over nio, nothing else changed).

nio's ``DefaultStore`` wraps every store method in ``database.bind_ctx(models)``, and peewee
walks the whole model graph on each bind: ~60 % of the bot's CPU per verification went there
(3,480 binds for six verifications; each sync saves the token and encrypted rooms). We bind the
models to the bot's database once and make ``bind_ctx`` a no-op while they are still bound to
it. If anything else rebinds them (another nio store in the same process, as in tests), the
check fails and the original, full ``bind_ctx`` runs, so correctness never depends on the shim.
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
