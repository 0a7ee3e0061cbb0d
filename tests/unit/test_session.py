"""Logging in: a homeserver that cannot be reached leaves no HTTP session open behind it."""

from __future__ import annotations

import gc
from pathlib import Path

import aiohttp
import pytest

from nerbot.config import parse_config
from nerbot.matrix.reachability import UNREACHABLE_ERRORS
from nerbot.matrix.session import open_session
from nerbot.store import Store

CLOSED_PORT = 1  # nothing listens on 127.0.0.1:1: a connection there is refused at once


def open_http_sessions() -> set[int]:
    return {id(o) for o in gc.get_objects()
            if isinstance(o, aiohttp.ClientSession) and not o.closed}


async def test_a_failed_password_login_closes_the_clients_http_session(tmp_path: Path) -> None:
    config = parse_config(
        {"matrix": {"user_id": "@bot:hs", "password": "s3cret-pass",
                    "homeserver": f"http://127.0.0.1:{CLOSED_PORT}"},
         "storage": {"data_dir": str(tmp_path / "data")}}, {}, tmp_path)
    config.storage.data_dir.mkdir(mode=0o700)
    store = Store(config.database_path)
    before = open_http_sessions()
    for _ in range(2):  # as ``_when_reachable`` retries: each attempt must clean up after itself
        # ``raised`` keeps the failed attempt's frames, and so its client, alive for the check
        with pytest.raises(UNREACHABLE_ERRORS) as raised:
            await open_session(config, store)
        assert raised.value is not None
        assert open_http_sessions() - before == set()
    store.close()
