"""Integration fixtures that run the real bot (in-process) against the session's real Synapse."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nerbot.app import NerbotApp
from nerbot.config import Config, parse_config
from nerbot.ports import Clock


@dataclass
class BotAccount:
    user_id: str
    password: str


def bot_config(
    homeserver: str,
    account: BotAccount,
    data_dir: Path,
    admin_token: str | None = None,
    backup_check: str = "off",
    exempt_bot_from_ratelimit: bool = True,
    reminders: dict[str, Any] | None = None,
    alerts: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    admin: dict[str, Any] | None = None,
    **bot: Any,
) -> Config:
    """Reminders and alerts are off unless a test asks for them (they would DM users)."""
    raw: dict[str, Any] = {
        "matrix": {"homeserver": homeserver, "user_id": account.user_id, "device_name": "nerbot"},
        "storage": {"data_dir": str(data_dir)},
        "bot": {"language": "zh", "undecryptable_grace_seconds": 3, **bot},
        "synapse_admin": {"token": admin_token or "", "backup_check": backup_check,
                          "exempt_bot_from_ratelimit": exempt_bot_from_ratelimit},
        "reminders": {"enabled": False, **(reminders or {})},
        "alerts": {"enabled": False, **(alerts or {})},
        "metrics": metrics or {},
        "admin": admin or {},
    }
    return parse_config(raw, {"NERBOT_PASSWORD": account.password}, data_dir.parent)


@pytest.fixture
def bot_account(synapse: Any) -> BotAccount:
    password = secrets.token_urlsafe(12)
    user_id = synapse.register_user(f"nerbot-{uuid.uuid4().hex[:8]}", password)
    return BotAccount(user_id, password)


BotFactory = Callable[..., Awaitable[NerbotApp]]


@pytest.fixture
async def start_bot(
    synapse: Any, bot_account: BotAccount, tmp_path: Path
) -> AsyncIterator[BotFactory]:
    """``await start_bot(**bot_settings)`` → a started bot; every bot is stopped at teardown.

    Calling it again with the same data directory is a restart of the same bot.
    """
    apps: list[NerbotApp] = []

    async def start(
        data_dir: Path | None = None, clock: Clock | None = None, **settings: Any
    ) -> NerbotApp:
        config = bot_config(synapse.url, bot_account, data_dir or tmp_path / "data", **settings)
        app = NerbotApp(config, clock=clock)
        apps.append(app)
        await app.start()
        return app

    yield start
    for app in apps:
        await app.stop()
