"""Helpers of the fault suite: the real ``nerbot run`` as a subprocess, seeded kill points,
read-only looks into its database, and waiting for conditions (never bare sleeps).

Imported by the tests here as a sibling module (``from crashkit import ...``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nerbot.localdev.configfile import toml_text

logger = logging.getLogger(__name__)

RUNNING_LINE = "nerbot is running as"  # logged by NerbotApp.start once the first sync is done
SEEDS_ENV = "NERBOT_CRASH_SEEDS"


@dataclass(frozen=True)
class BotAccount:
    user_id: str
    password: str


def seeds(default: list[int]) -> list[int]:
    """The seeds to run: ``$NERBOT_CRASH_SEEDS`` (comma-separated) replays others."""
    chosen = [int(s) for s in os.environ.get(SEEDS_ENV, "").split(",") if s.strip()]
    return chosen or default


def config_dict(homeserver: str, bot_id: str, data_dir: Path, **sections: dict[str, Any]
                ) -> dict[str, Any]:
    """A bot config: language en, reminders and alerts off, generous verification limits
    (the suite verifies and cancels more than 3 times an hour), then ``sections`` merged in."""
    raw: dict[str, dict[str, Any]] = {
        "matrix": {"homeserver": homeserver, "user_id": bot_id, "device_name": "nerbot"},
        "storage": {"data_dir": str(data_dir)},
        "bot": {"language": "en", "undecryptable_grace_seconds": 3},
        "verification": {"max_per_hour": 100, "max_cancels_per_hour": 100},
        "reminders": {"enabled": False},
        "alerts": {"enabled": False},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return raw


class BotProcess:
    """``python -m nerbot run -c config.toml`` with its own data directory and log file.

    ``start`` may be called again after ``kill``/``terminate``: a restart of the same bot.
    Only processes started here are ever signalled, by their own PID.
    """

    def __init__(self, synapse: Any, account: BotAccount, workdir: Path,
                 sections: dict[str, dict[str, Any]]) -> None:
        self.synapse = synapse
        self.account = account
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = workdir / "data"
        self.config_path = workdir / "config.toml"
        self.log_path = workdir / "bot.log"
        self.config_path.write_text(toml_text(config_dict(
            synapse.url, account.user_id, self.data_dir, **sections)), encoding="utf-8")
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def user_id(self) -> str:
        return self.account.user_id

    @property
    def db_path(self) -> Path:
        return self.data_dir / "nerbot.db"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        env = {**os.environ, "NERBOT_PASSWORD": self.account.password}
        with self.log_path.open("ab") as out:
            out.write(f"\n===== start {self.starts + 1} =====\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "nerbot", "run", "-c", str(self.config_path)],
                env=env, stdout=out, stderr=subprocess.STDOUT)
        self.starts += 1
        logger.info("nerbot run started, PID %d (start %d)", self.process.pid, self.starts)

    async def wait_running(self, seconds: float = 90) -> None:
        """Until this start logged that its first sync is done."""
        def running() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"nerbot run exited with {self.process.returncode}:\n"
                                     + self.log_tail())
            return self.log().count(RUNNING_LINE) >= self.starts

        await wait_for(running, seconds, f"start {self.starts} of the bot to be running")

    async def restart(self) -> None:
        self.start()
        await self.wait_running()

    def kill(self) -> None:
        """SIGKILL (by PID) and reap; nothing if not running."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
            logger.info("nerbot run PID %d killed", self.process.pid)

    def terminate(self) -> int:
        """SIGTERM (a clean stop) and the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
        return self.process.wait(timeout=30)

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the bot's database (read-only, WAL lets it run alongside the bot); [] while
        the database or its table does not exist yet."""
        if not self.db_path.exists():
            return []
        try:
            with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5) as conn:
                return list(conn.execute(sql, args))
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise

    def meta(self, key: str) -> str | None:
        rows = self.query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    @property
    def device_id(self) -> str:
        device = self.meta("device_id")
        assert device, "the bot has not logged in yet"
        return device


async def wait_for(predicate: Callable[[], Any], seconds: float, what: str,
                   interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; that value. AssertionError on
    timeout, naming ``what``."""
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(interval)


@dataclass
class KillPlan:
    """Where one seeded run kills the bot; its ``str`` goes into every assertion message so
    a failure names the seed to replay with ``NERBOT_CRASH_SEEDS=<seed>``."""

    seed: int
    rng: random.Random = field(init=False, repr=False)
    choices: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def choose(self, name: str, options: list[Any]) -> Any:
        value = self.rng.choice(options)
        self.choices[name] = value
        return value

    def uniform(self, name: str, low: float, high: float) -> float:
        value = round(self.rng.uniform(low, high), 3)
        self.choices[name] = value
        return value

    def __str__(self) -> str:
        chosen = ", ".join(f"{k}={v}" for k, v in self.choices.items())
        return f"[replay: {SEEDS_ENV}={self.seed}; {chosen}]"


def gap(what: str) -> None:
    """A product gap was observed: the test fails, naming it (never an xfail)."""
    import pytest

    pytest.fail(f"PRODUCT GAP: {what}")


def room_events(synapse: Any, token: str, room_id: str, limit: int = 1000
                ) -> list[dict[str, Any]]:
    """A room's events, oldest first, read through the client API with a member's token."""
    import urllib.parse

    path = (f"/_matrix/client/v3/rooms/{urllib.parse.quote(room_id)}/messages"
            f"?dir=b&limit={limit}")
    chunk: list[dict[str, Any]] = synapse.request("GET", path, token=token)["chunk"]
    return chunk[::-1]


def sent_by(events: list[dict[str, Any]], sender: str) -> list[str]:
    """IDs of the message events (encrypted or not) ``sender`` sent, in timeline order."""
    return [e["event_id"] for e in events if e["sender"] == sender
            and e["type"] in ("m.room.encrypted", "m.room.message")]
