"""The nio store shim: no rebinding while bound to our database, full rebinding otherwise."""

from __future__ import annotations

import contextlib
from pathlib import Path

from nio.crypto import OlmAccount
from nio.store import DefaultStore

from nerbot.matrix.storefix import bind_store_once


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
