"""Exactly once across a crash: the real CLI, SIGKILLed in the middle of a send run.

The bot runs as ``nerbot run`` in its own process; the test kills it with SIGKILL once some
reminders are sent and others are still pending, restarts it, and then counts on the
homeserver (admin API) that every user received exactly one reminder: none lost, none twice.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

USERS = 6


def write_config(path: Path, synapse: Any, bot_id: str, data_dir: Path) -> None:
    path.write_text(f"""
[matrix]
homeserver = "{synapse.url}"
user_id = "{bot_id}"

[storage]
data_dir = "{data_dir}"

[bot]
language = "en"

[reminders]
enabled = true
scan_every = "6h"
grace = "0"
quiet_hours = ""
max_sends_per_minute = 40

[alerts]
enabled = false
""", encoding="utf-8")


def start(config: Path, password: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NERBOT_PASSWORD": password}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "nerbot", "run", "-c", str(config)],
                                env=env, stdout=out, stderr=subprocess.STDOUT)


def outbox(db: Path) -> list[tuple[str, str, str | None]]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return [(r[0], r[1], r[2]) for r in conn.execute(
                "SELECT user_id, status, room_id FROM outbox ORDER BY created_ms")]
    except sqlite3.OperationalError:  # not migrated yet
        return []


async def wait_for(predicate: Any, seconds: float, what: str) -> None:
    for _ in range(int(seconds * 10)):
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def bot_events(synapse: Any, token: str, room_id: str, bot_id: str) -> int:
    path = (f"/_synapse/admin/v1/rooms/{urllib.parse.quote(room_id)}/messages"
            "?dir=b&limit=100")
    chunk = synapse.request("GET", path, token=token)["chunk"]
    return sum(1 for e in chunk if e["sender"] == bot_id and e["type"] == "m.room.encrypted")


async def test_sigkill_mid_run_neither_duplicates_nor_loses(
    synapse: Any, make_user: Any, tmp_path: Path
) -> None:
    password = secrets.token_urlsafe(12)
    bot_id = synapse.register_user(f"nerbot-{uuid.uuid4().hex[:8]}", password)
    admin = make_user("admin", admin=True)
    admin_token = synapse.admin_access_token(admin.localpart, admin.password)
    users = [make_user("crash") for _ in range(USERS)]
    tokens = [synapse.login(u.user_id, u.password)["access_token"] for u in users]
    room = synapse.request("POST", "/_matrix/client/v3/createRoom",
                           {"invite": [bot_id] + [u.user_id for u in users[1:]]},
                           token=tokens[0])["room_id"]
    for token in tokens[1:]:
        synapse.request("POST", f"/_matrix/client/v3/join/{urllib.parse.quote(room)}", {},
                        token=token)

    data_dir = tmp_path / "bot"
    config, log = tmp_path / "config.toml", tmp_path / "bot.log"
    write_config(config, synapse, bot_id, data_dir)
    db = data_dir / "nerbot.db"

    # First run: the bot joins the room, is never restarted cleanly: it only gets SIGKILL.
    first = start(config, password, log)
    try:
        members = f"/_matrix/client/v3/rooms/{urllib.parse.quote(room)}/joined_members"
        await wait_for(lambda: bot_id in synapse.request("GET", members, token=tokens[0])
                       ["joined"], 60, "the bot to join")
        # Its start-up scan found nobody yet (it joined after); a restart scans again.
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=30)
        with sqlite3.connect(db) as conn:  # make the next start's scan overdue
            conn.execute("DELETE FROM meta WHERE key = 'reminders.last_scan_ms'")

        second = start(config, password, log)
        await wait_for(lambda: sum(1 for r in outbox(db) if r[1] == "sent") >= 2
                       and any(r[1] == "pending" for r in outbox(db)), 90,
                       "a run with some reminders sent and some pending")
        second.send_signal(signal.SIGKILL)
        second.wait(timeout=10)
        before = outbox(db)
        assert len(before) == USERS and any(r[1] == "pending" for r in before)

        third = start(config, password, log)
        await wait_for(lambda: all(r[1] == "sent" for r in outbox(db))
                       and len(outbox(db)) == USERS, 90, "every reminder to be sent")
        third.send_signal(signal.SIGTERM)
        assert third.wait(timeout=30) == 0
    finally:
        for process in (first, locals().get("second"), locals().get("third")):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=10)

    rows = outbox(db)
    assert sorted(r[0] for r in rows) == sorted(u.user_id for u in users)
    for user_id, _, room_id in rows:
        assert room_id is not None
        count = bot_events(synapse, admin_token, room_id, bot_id)
        assert count == 1, f"{user_id} got {count} reminders"
