"""Shared fixtures: one real Synapse per test session on 127.0.0.1, users, E2EE peers.

The Synapse virtualenv is cached in ``<repo>/.cache/synapse-venv`` (``$NERBOT_SYNAPSE_VENV``
overrides), so only the first run on a machine pays for the install.
"""

from __future__ import annotations

import logging
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from nerbot.localdev.peer import E2EEPeer
from nerbot.localdev.synapse import VENV_ENV_VAR, LocalSynapse, default_venv_dir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TestUser:
    """An account on the session's Synapse (registered, with no devices)."""

    __test__ = False  # not a test class, despite the name

    user_id: str
    localpart: str
    password: str


class MakeUser(Protocol):
    def __call__(self, prefix: str = "u", admin: bool = False) -> TestUser: ...


class MakePeer(Protocol):
    def __call__(
        self, user: TestUser, start: bool = True, device_name: str = "peer",
        auto_join: bool = True,
    ) -> Awaitable[E2EEPeer]: ...


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSynapse]:
    """A started Synapse for the whole session; stopped (by PID) at the end."""
    venv = Path(os.environ[VENV_ENV_VAR]) if os.environ.get(VENV_ENV_VAR) else default_venv_dir()
    server = LocalSynapse(tmp_path_factory.mktemp("synapse"), venv_dir=venv)
    try:
        server.install()
        server.start()
        logger.warning("Synapse %s: install/check %.1f s, start %.1f s",
                       server.url, server.install_seconds, server.start_seconds)
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_user(synapse: LocalSynapse) -> MakeUser:
    """``make_user(prefix="u", admin=False) -> TestUser`` with a unique localpart."""

    def make(prefix: str = "u", admin: bool = False) -> TestUser:
        localpart = f"{prefix}-{uuid.uuid4().hex[:10]}"
        password = secrets.token_urlsafe(12)
        user_id = synapse.register_user(localpart, password, admin=admin)
        return TestUser(user_id, localpart, password)

    return make


@pytest.fixture
async def make_peer(synapse: LocalSynapse, tmp_path: Path) -> AsyncIterator[MakePeer]:
    """``await make_peer(user) -> E2EEPeer``: logged in, syncing (first sync done) by default.

    Every peer made here is closed at teardown.
    """
    peers: list[E2EEPeer] = []

    async def make(
        user: TestUser, start: bool = True, device_name: str = "peer", auto_join: bool = True,
    ) -> E2EEPeer:
        store = tmp_path / f"peer-{user.localpart}-{len(peers)}"
        peer = await E2EEPeer.login(synapse.url, user.user_id, user.password, store,
                                    device_name=device_name, auto_join=auto_join)
        peers.append(peer)
        if start:
            peer.start()
            await peer.wait_synced()
        return peer

    yield make
    for peer in peers:
        await peer.close()
