"""No secret in the logs, with logging at DEBUG through a full run.

The run: a first start (password login, cross-signing keys created and published), the
operator's ``reset-identity`` (the upload that needs user-interactive auth by password: this
Synapse lets the very first upload through without it), a restart with a Synapse admin token
and ``backup_check = "admin-login"``, ``!backup-status`` from a person on Element's crypto
with recovery set up (the bot logs in *as* them through the admin API, reads their backup and
logs that token out), and a full emoji verification with that person.

Logging is set up the way the CLI does at DEBUG (``configure_logging``: one stderr handler with
the redacting filter), and then every library logger (nio, nio.crypto, aiohttp, peewee,
apscheduler, asyncio, simplematrixbotlib) is opened to DEBUG as well, past the caps the bot
sets (``quiet_libraries``). Two checks:

- the records as shipped: every record a logger lets through at the levels the bot sets
  (``nerbot.logs._LIBRARY_LEVELS``), its message, arguments and traceback, before any
  redaction: no secret at all;
- the output: what the CLI's handler wrote to stderr with everything at DEBUG, after the
  redacting filter (the last line of defence): no secret.

Secrets: the bot's password, its access token, the admin token, every token the admin-login
check obtained (captured by wrapping the bot's own ``MatrixHttp.request``), and the private
seeds of both cross-signing identities (before and after the reset), in base64 (padded or not,
URL-safe too), hex and as Python bytes, and the person's recovery key (their client set up
recovery as Element does: secret storage and a key backup, which the admin-login check then
sees; the key itself never leaves their client, so this only proves nothing odd happened).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from crashkit import wait_for

import nerbot.app
from nerbot import cli, logs
from nerbot.app import NerbotApp
from nerbot.localdev.jspeer import JsPeer
from nerbot.matrix.http import MatrixHttp

pytestmark = pytest.mark.timeout(180)

LIBRARIES = ("nio", "nio.crypto", "nio.client", "nio.responses", "aiohttp", "aiohttp.client",
             "aiohttp.access", "peewee", "apscheduler", "asyncio", "simplematrixbotlib",
             "urllib3", "canonicaljson")
TEST_TOOLING = ("nerbot.localdev", "conftest", "crashkit", "test_")  # the harness, not the bot


class Keep(logging.Handler):
    """Every record, untouched (the redacting filter runs on its own copy in the handler)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(copy.copy(record))


@pytest.fixture
def debug_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[Keep]:
    """The CLI's logging at DEBUG plus a raw capture; libraries opened to DEBUG; restored."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level,
             {name: logging.getLogger(name).level for name in LIBRARIES})
    logs.configure_logging("DEBUG")  # replaces the root handlers, as the CLI does
    keep = Keep()
    root.addHandler(keep)
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG)
    monkeypatch.setattr(nerbot.app, "quiet_libraries", lambda: None)  # stay open on start
    try:
        yield keep
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)


def shipped_level(name: str) -> int:
    """The level a logger has once the bot capped the libraries (``quiet_libraries``)."""
    caps: dict[str, int] = getattr(logs, "_LIBRARY_LEVELS", {})
    best = ""
    for prefix in caps:
        if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > len(best):
            best = prefix
    return caps[best] if best else logging.DEBUG


def forms(secret: str | bytes) -> list[str]:
    """How a secret could show up in text."""
    if isinstance(secret, str):
        return [secret]
    b64 = base64.b64encode(secret).decode()
    return [b64, b64.rstrip("="), base64.urlsafe_b64encode(secret).decode().rstrip("="),
            secret.hex(), repr(secret)[2:-1]]


def seeds(path: Path) -> list[bytes]:
    """The private Ed25519 seeds in a keys file (unpadded base64, one per usage)."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    return [base64.b64decode(value + "=" * (-len(value) % 4)) for value in raw.values()]


LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ([^:\s]+): ")


def without_tooling(output: str) -> str:
    """The handler's output minus the records of the test harness (the js peer's protocol
    lines carry the person's own secrets); continuation lines go with their record."""
    kept: list[str] = []
    skipping = False
    for line in output.splitlines():
        match = LINE.match(line)
        if match:
            skipping = match.group(1).startswith(TEST_TOOLING)
        if not skipping:
            kept.append(line)
    return "\n".join(kept)


def text_of(record: logging.LogRecord) -> str:
    parts = [str(record.msg), repr(record.args)]
    try:
        parts.append(record.getMessage())
    except Exception as exc:  # a record that cannot format is still searched raw
        parts.append(repr(exc))
    if record.exc_info and record.exc_info[1] is not None:
        parts.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(parts)


async def test_no_secret_in_debug_logs_through_a_full_run(
    jspeer_ready: None, debug_logging: Keep, start_bot: Any, bot_account: Any,
    make_user: Any, synapse: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    admin = make_user("admin", admin=True)
    admin_token = synapse.admin_access_token(admin.localpart, admin.password)
    data_dir = tmp_path / "bot"
    admin_login = {"synapse_admin": {"token": admin_token, "backup_check": "admin-login"}}

    # First start: password login, identity created and published.
    first: NerbotApp = await start_bot(data_dir=data_dir, **admin_login)
    assert first.session is not None
    tokens = {first.session.access_token}
    keys_path = first.config.cross_signing_keys_path
    old_seeds = seeds(keys_path)
    await first.stop()

    # The operator replaces the identity: an upload with user-interactive auth by password.
    assert await cli._reset_identity(first.config, confirmed=True) == cli.EXIT_OK
    new_seeds = seeds(keys_path)
    assert set(new_seeds).isdisjoint(old_seeds)

    bot: NerbotApp = await start_bot(data_dir=data_dir, **admin_login)
    assert bot.session is not None and bot.http is not None
    tokens.add(bot.session.access_token)
    obtained: list[str] = []
    real_request = bot.http.request

    async def spy(method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        status, payload = await real_request(method, path, body, **kw)
        token = payload.get("access_token") if isinstance(payload, dict) else None
        if isinstance(token, str):
            obtained.append(token)
        return status, payload

    bot.http.request = spy  # type: ignore[method-assign]  # the bot's own client, not nio's
    assert isinstance(bot.http, MatrixHttp)

    person = make_user("element")
    peer = await JsPeer.start(name=person.localpart)
    try:
        await peer.login(person.homeserver_url, person.user_id, person.password,
                         device_name="Element")
        await peer.call("bootstrap_cross_signing", password=person.password)
        # Element's "set up recovery": a recovery key, secret storage and a key backup.
        recovery = await peer.call("bootstrap_recovery")
        recovery_key = str(recovery["recovery_key"])
        bot_id, device = bot.config.matrix.user_id, bot.session.device_id
        room_id = str((await peer.call("create_dm", user_id=bot_id))["room_id"])
        await peer.call("wait_member", room_id=room_id, user_id=bot_id, timeout=30)
        await peer.call("track", user_id=bot_id, device_id=device, timeout=30)
        await peer.call("send_text", room_id=room_id, body="!backup-status",
                        reply_from=bot_id, expect=peer.device_id, timeout=60)
        assert obtained, "the admin-login check obtained no token"

        await peer.call("request_device", user_id=bot_id, device_id=device, start_sas=True)
        await peer.next_event("sas", timeout=30)
        await peer.call("confirm", match=True)
        await peer.next_event("done", timeout=30)
        store = bot.store
        assert store is not None
        await wait_for(lambda: [r["result"] for r in store.verifications()] == ["verified"],
                       15, "the bot to record the verification")
    finally:
        await peer.close()
    await bot.stop()
    await asyncio.sleep(0)
    output = capsys.readouterr().err

    secrets: dict[str, list[str]] = {
        "password": forms(bot_account.password),
        "admin token": forms(admin_token),
        "the person's recovery key": [recovery_key, recovery_key.replace(" ", "")],
        **{f"bot access token {i}": forms(t) for i, t in enumerate(sorted(tokens))},
        **{f"admin-login token {i}": forms(t) for i, t in enumerate(obtained)},
        **{f"old cross-signing seed {i}": forms(s) for i, s in enumerate(old_seeds)},
        **{f"cross-signing seed {i}": forms(s) for i, s in enumerate(new_seeds)},
    }
    records = [r for r in debug_logging.records if not r.name.startswith(TEST_TOOLING)]
    assert len(records) > 100 and any(r.name.startswith("nio") for r in records) \
        and any(r.name.startswith("peewee") for r in records), "DEBUG logging was not on"
    assert "DEBUG" in output and "nerbot" in output, "the CLI handler wrote nothing"

    uia = [r for r in records if r.name == "nerbot.matrix.http" and isinstance(r.args, tuple)
           and r.args[1:] == ("/_matrix/client/v3/keys/device_signing/upload", 401)]
    assert uia, "the reset did not go through user-interactive auth"

    shipped = [r for r in records if r.levelno >= shipped_level(r.name)]
    leaks = [f"{what} in a {r.levelname} record of {r.name}: {text_of(r)[:300]!r}"
             for r in shipped for what, variants in secrets.items()
             if any(v in text_of(r) for v in variants)]
    assert not leaks, "\n".join(leaks[:10])

    bots_output = without_tooling(output)
    assert " DEBUG nerbot.matrix." in bots_output, "the bot's DEBUG lines are missing"
    leaked = [what for what, variants in secrets.items()
              if any(v in bots_output for v in variants)]
    assert not leaked, f"in the DEBUG output after redaction: {leaked}"
    # What the caps and the filter are for: raw library records below the caps that held one.
    capped = sorted({what for r in records if r.levelno < shipped_level(r.name)
                     for what, variants in secrets.items()
                     if any(v in text_of(r) for v in variants)})
    with capsys.disabled():
        sys.stderr.write(f"\n[secrets] {len(records)} records ({len(shipped)} as shipped), "
                         f"{len(output)} characters of DEBUG output, "
                         f"{sum(map(len, secrets.values()))} secret forms: none found; "
                         f"held only by library records the bot caps: {capped}\n")
