"""Shared fixtures: one real Synapse per test session on 127.0.0.1, users, E2EE peers.

The Synapse virtualenv is cached in ``<repo>/.cache/synapse-venv`` (``$NERBOT_SYNAPSE_VENV``
overrides), so only the first run on a machine pays for the install.

The session server (``localhost``) also listens for federation on 127.0.0.1:8448, where other
servers look for a name without a port. Tests that need people on another server use
``remote_synapse`` / ``make_remote_user``: a second server, ``127.0.0.1:<port>``, started on
first use. Only one test session on a machine can own 8448; a second concurrent session runs
without federation, and only its federation tests fail (saying so).
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
from nerbot.localdev.synapse import (
    DEFAULT_FEDERATION_PORT,
    VENV_ENV_VAR,
    LocalSynapse,
    PortInUseError,
    default_venv_dir,
    port_is_free,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TestUser:
    """A registered account with no devices, on ``homeserver_url`` (the session's Synapse or
    the remote one), so ``make_peer`` logs it in at the right server."""

    __test__ = False  # not a test class, despite the name

    user_id: str
    localpart: str
    password: str
    homeserver_url: str


class MakeUser(Protocol):
    def __call__(self, prefix: str = "u", admin: bool = False) -> TestUser: ...


class MakePeer(Protocol):
    def __call__(
        self, user: TestUser, start: bool = True, device_name: str = "peer",
        auto_join: bool = True,
    ) -> Awaitable[E2EEPeer]: ...


def _venv_dir() -> Path:
    return Path(os.environ[VENV_ENV_VAR]) if os.environ.get(VENV_ENV_VAR) else default_venv_dir()


def _start(server: LocalSynapse) -> None:
    """Install (or reuse) and start ``server``, stopping it again if the start fails."""
    try:
        server.install()
        server.start()
    except BaseException:
        server.stop()
        raise


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSynapse]:
    """A started Synapse for the whole session; stopped (by PID) at the end.

    It federates on 127.0.0.1:8448 when that port is free. When another test session holds
    it, this one starts without federation rather than failing every test; ``remote_synapse``
    then fails the tests that need federation, naming the port.
    """
    data_dir = tmp_path_factory.mktemp("synapse")
    federation_port: int | None = DEFAULT_FEDERATION_PORT
    if not port_is_free(DEFAULT_FEDERATION_PORT):
        logger.warning("Port %d is taken (another test session?): the session Synapse runs "
                       "without federation", DEFAULT_FEDERATION_PORT)
        federation_port = None
    server = LocalSynapse(data_dir, venv_dir=_venv_dir(), federation_port=federation_port)
    try:
        _start(server)
    except PortInUseError as exc:  # taken between our probe and Synapse's bind
        if exc.port != DEFAULT_FEDERATION_PORT:
            raise
        logger.warning("%s\nStarting the session Synapse without federation", exc)
        server = LocalSynapse(data_dir, venv_dir=_venv_dir())
        _start(server)
    try:
        logger.warning("Synapse %s: install/check %.1f s, start %.1f s, federation port %s",
                       server.url, server.install_seconds, server.start_seconds,
                       server.federation_port)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def remote_synapse(
    synapse: LocalSynapse, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalSynapse]:
    """A second homeserver, ``127.0.0.1:<port>``, federating with ``synapse``.

    Session-scoped but started only when a test asks for it; stopped (by PID) at the end.
    """
    if synapse.federation_port != DEFAULT_FEDERATION_PORT:
        pytest.fail(f"the session Synapse could not take port {DEFAULT_FEDERATION_PORT} for "
                    "federation (held by another test session?), so no server can reach "
                    f"{synapse.server_name!r}; free port {DEFAULT_FEDERATION_PORT} and rerun")
    server = LocalSynapse.remote(tmp_path_factory.mktemp("remote-synapse"),
                                 venv_dir=synapse.venv_dir)
    _start(server)
    try:
        logger.warning("Remote Synapse %s (%s): start %.1f s", server.url, server.server_name,
                       server.start_seconds)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def default_limits_synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSynapse]:
    """A Synapse with its default rate limits, as a new install has them (only logins per
    address are raised: every test person logs in from 127.0.0.1). One per test module that
    asks for it, stopped (by PID) at the module's end; it never federates, so it does not
    compete with the session server for port 8448. Register users and get an admin token
    through it as through ``synapse``."""
    server = LocalSynapse(tmp_path_factory.mktemp("default-limits-synapse"),
                          venv_dir=_venv_dir(), default_rate_limits=True)
    _start(server)
    try:
        logger.warning("Synapse with default rate limits %s: start %.1f s", server.url,
                       server.start_seconds)
        yield server
    finally:
        server.stop()


def _user_maker(server: LocalSynapse) -> MakeUser:
    def make(prefix: str = "u", admin: bool = False) -> TestUser:
        localpart = f"{prefix}-{uuid.uuid4().hex[:10]}"
        password = secrets.token_urlsafe(12)
        user_id = server.register_user(localpart, password, admin=admin)
        return TestUser(user_id, localpart, password, server.url)

    return make


@pytest.fixture
def make_user(synapse: LocalSynapse) -> MakeUser:
    """``make_user(prefix="u", admin=False) -> TestUser`` with a unique localpart."""
    return _user_maker(synapse)


@pytest.fixture
def make_remote_user(remote_synapse: LocalSynapse) -> MakeUser:
    """``make_remote_user(prefix="u", admin=False) -> TestUser`` on ``remote_synapse``."""
    return _user_maker(remote_synapse)


@pytest.fixture
async def make_peer(tmp_path: Path) -> AsyncIterator[MakePeer]:
    """``await make_peer(user) -> E2EEPeer``: logged in, syncing (first sync done) by default.

    The peer logs in at the user's own server (``TestUser.homeserver_url``), so the same
    fixture serves users of ``make_user`` and ``make_remote_user``. Every peer made here is
    closed at teardown.
    """
    peers: list[E2EEPeer] = []

    async def make(
        user: TestUser, start: bool = True, device_name: str = "peer", auto_join: bool = True,
    ) -> E2EEPeer:
        store = tmp_path / f"peer-{user.localpart}-{len(peers)}"
        peer = await E2EEPeer.login(user.homeserver_url, user.user_id, user.password, store,
                                    device_name=device_name, auto_join=auto_join)
        peers.append(peer)
        if start:
            peer.start()
            await peer.wait_synced()
        return peer

    yield make
    for peer in peers:
        await peer.close()
