"""Shared fixtures: one real Synapse per test session on 127.0.0.1, users, E2EE peers."""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nerbot.localdev.peer import E2EEPeer
from nerbot.localdev.synapse import LocalSynapse

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TestUser:
    __test__ = False  # not a test class
    user_id: str
    localpart: str
    password: str


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSynapse]:
    server = LocalSynapse(tmp_path_factory.mktemp("synapse"))
    server.install()
    server.start()
    logger.warning("Synapse: install %.1f s, start %.1f s", server.install_seconds,
                   server.start_seconds)
    yield server
    server.stop()


@pytest.fixture
def make_user(synapse: LocalSynapse) -> Callable[..., TestUser]:
    def make(prefix: str = "u", admin: bool = False) -> TestUser:
        localpart = f"{prefix}-{uuid.uuid4().hex[:8]}"
        password = secrets.token_urlsafe(12)
        user_id = synapse.register_user(localpart, password, admin=admin)
        return TestUser(user_id, localpart, password)
    return make


@pytest.fixture
async def make_peer(
    synapse: LocalSynapse, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[E2EEPeer]]]:
    peers: list[E2EEPeer] = []

    async def make(user: TestUser, start: bool = True) -> E2EEPeer:
        peer = await E2EEPeer.login(synapse.url, user.user_id, user.password,
                                    tmp_path / f"peer-{user.localpart}-{len(peers)}")
        peers.append(peer)
        if start:
            peer.start()
        return peer

    yield make
    for peer in peers:
        await peer.close()
