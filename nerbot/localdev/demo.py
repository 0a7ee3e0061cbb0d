"""``nerbot demo``: a throw-away Synapse, the bot and a demo user, for a newcomer's first look.

Everything lives under one work directory (ignored by git) and is reused on the next run: the
Synapse virtualenv is shared with the tests' cache, accounts and passwords are kept in
``demo-accounts.json`` so a rerun logs into the same accounts and the same bot device.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nerbot.app import NerbotApp
from nerbot.config import parse_config
from nerbot.localdev.peer import E2EEPeer
from nerbot.localdev.synapse import LocalSynapse, SynapseError

logger = logging.getLogger(__name__)

BOT_LOCALPART = "nerbot"
DEMO_LOCALPART = "demo"
ADMIN_LOCALPART = "admin"
DEFAULT_PORT = 8008


def _default_port() -> int | None:
    """8008 (what people expect) when it is free, else any free port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Synapse binds
        try:
            sock.bind(("127.0.0.1", DEFAULT_PORT))
        except OSError:
            return None
    return DEFAULT_PORT


def _accounts(workdir: Path) -> dict[str, Any]:
    path = workdir / "demo-accounts.json"
    if path.exists():
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    data = {
        "bot_password": secrets.token_urlsafe(16),
        "demo_password": secrets.token_urlsafe(12),
        "registered": False,
    }
    _save_accounts(workdir, data)
    return data


def _save_accounts(workdir: Path, data: dict[str, Any]) -> None:
    path = workdir / "demo-accounts.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)


def _write_config(workdir: Path, homeserver: str, bot_user: str) -> Path:
    """A real config file, so the person can run ``nerbot run -c`` against the demo server."""
    path = workdir / "config.toml"
    path.write_text(
        "# Written by `nerbot demo`. The password comes from NERBOT_PASSWORD and the admin\n"
        "# token from NERBOT_ADMIN_TOKEN (see demo-accounts.json: bot_password, admin_token).\n"
        f'[matrix]\nhomeserver = "{homeserver}"\nuser_id = "{bot_user}"\n'
        'device_name = "nerbot"\n'
        '[storage]\ndata_dir = "./bot-data"\n'
        '[bot]\nlanguage = "zh"\n',
        encoding="utf-8",
    )
    return path


def _admin_token(synapse: LocalSynapse, accounts: dict[str, Any], workdir: Path) -> str:
    """The demo server admin's access token, kept in demo-accounts.json (blocking).

    The bot gets it as a deployment would (``NERBOT_ADMIN_TOKEN``): it lifts Synapse's rate
    limits for itself at start and reads what only an admin sees. One login, reused by later
    runs while it is valid.
    """
    token = accounts.get("admin_token")
    if token:
        try:
            synapse.request("GET", "/_matrix/client/v3/account/whoami", token=str(token))
            return str(token)
        except SynapseError:
            logger.info("Stored demo admin token is no longer valid; logging in again")
    if not accounts.get("admin_password"):  # new, or a work dir from before the demo had one
        accounts["admin_password"] = secrets.token_urlsafe(16)
        synapse.register_user(ADMIN_LOCALPART, accounts["admin_password"], admin=True)
    token = synapse.admin_access_token(ADMIN_LOCALPART, accounts["admin_password"])
    accounts["admin_token"] = token
    _save_accounts(workdir, accounts)
    return token


async def _demo_peer(
    homeserver: str, user_id: str, accounts: dict[str, Any], workdir: Path
) -> E2EEPeer:
    """The demo user's client, on the same device every run (no pile of stale sessions)."""
    store = workdir / "demo-peer-store"
    saved = accounts.get("demo_session")
    if saved:
        try:
            return await E2EEPeer.restore(homeserver, user_id, saved["device_id"],
                                          saved["access_token"], store)
        except RuntimeError:
            logger.info("Stored demo login is no longer valid; logging in again")
    peer = await E2EEPeer.login(homeserver, user_id, accounts["demo_password"], store,
                                device_name="nerbot demo user")
    accounts["demo_session"] = {"device_id": peer.device_id,
                                "access_token": peer.client.access_token}
    _save_accounts(workdir, accounts)
    return peer


async def run_demo(
    workdir: Path, port: int | None, report: Callable[[str], None], exit_after_reply: bool
) -> int:
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Synapse's default rate limits, as a new install has them; the bot lifts its own.
    synapse = LocalSynapse(workdir / "synapse", port=port or _default_port(),
                           default_rate_limits=True)
    peer: E2EEPeer | None = None
    app: NerbotApp | None = None
    try:
        report("Installing Synapse (first run only, cached afterwards)…")
        install_seconds = await asyncio.to_thread(synapse.install)
        start_seconds = await asyncio.to_thread(synapse.start)
        report(f"Synapse ready at {synapse.url} "
               f"(install {install_seconds:.1f} s, start {start_seconds:.1f} s)")

        accounts = _accounts(workdir)
        server = synapse.server_name
        bot_user = f"@{BOT_LOCALPART}:{server}"
        demo_user = f"@{DEMO_LOCALPART}:{server}"
        if not accounts["registered"]:
            await asyncio.to_thread(
                synapse.register_user, BOT_LOCALPART, accounts["bot_password"], False)
            await asyncio.to_thread(
                synapse.register_user, DEMO_LOCALPART, accounts["demo_password"], False)
            accounts["registered"] = True
            _save_accounts(workdir, accounts)

        admin_token = await asyncio.to_thread(_admin_token, synapse, accounts, workdir)
        config_path = _write_config(workdir, synapse.url, bot_user)
        config = parse_config(
            {
                "matrix": {"homeserver": synapse.url, "user_id": bot_user,
                           "device_name": "nerbot"},
                "storage": {"data_dir": "./bot-data"},
                "bot": {"language": "zh"},
            },
            {"NERBOT_PASSWORD": accounts["bot_password"], "NERBOT_ADMIN_TOKEN": admin_token},
            workdir,
        )
        started = time.monotonic()
        app = NerbotApp(config)
        await app.start()
        bot_ready = time.monotonic() - started

        peer = await _demo_peer(synapse.url, demo_user, accounts, workdir)
        peer.start()
        await asyncio.wait_for(peer.synced.wait(), 60)
        room_id = accounts.get("dm_room")
        if not room_id or room_id not in peer.client.rooms:
            room_id = await peer.create_encrypted_dm(bot_user)
            await peer.wait_for_join(room_id, bot_user)
            await peer.wait_for_message(room_id, sender=bot_user, timeout=60)  # the welcome
            accounts["dm_room"] = room_id
            _save_accounts(workdir, accounts)
        sent = time.monotonic()
        answer = await peer.ask(room_id, "!help", bot_user, timeout=60)
        reply_seconds = time.monotonic() - sent

        report("")
        report(f"{demo_user} sent !help in an encrypted DM; the bot answered (decrypted):")
        report("-" * 72)
        report(answer)
        report("-" * 72)
        report(f"Bot start-up {bot_ready:.1f} s, first reply {reply_seconds:.2f} s after sending; "
               f"start to first reply {time.monotonic() - started:.1f} s.")
        report("")
        report("Log in with any Matrix client (Element Web, Element X, …):")
        report(f"  homeserver: {synapse.url}")
        report(f"  user:       {DEMO_LOCALPART}    password: {accounts['demo_password']}")
        report(f"  the bot:    {bot_user} (config: {config_path})")
        report(f"  server admin: {ADMIN_LOCALPART}    password: {accounts['admin_password']}")
        report("Synapse runs with its default rate limits, as installed; the bot "
               + ("is exempt (its own override, set with the admin token)."
                  if app.rate_limited is False else "could not lift them (see its log)."))
        if exit_after_reply:
            return 0
        report("Running; press Ctrl-C to stop the bot and the homeserver.")
        await _until_stopped()
        return 0
    finally:
        if peer is not None:
            await peer.close()
        if app is not None:
            await app.stop()
        await asyncio.to_thread(synapse.stop)


async def _until_stopped() -> None:
    """Until Ctrl-C (the task is cancelled) or SIGTERM: both end in ``run_demo``'s cleanup,
    which stops the bot and the homeserver it started (a plain SIGTERM left Synapse running)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(RuntimeError, ValueError, NotImplementedError):  # main thread only
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(RuntimeError, ValueError, NotImplementedError):
            loop.remove_signal_handler(signal.SIGTERM)
