"""Fixtures for the fault suite: the real bot in-process or as ``nerbot run`` subprocesses.

The session Synapse, ``make_user`` and ``make_peer`` come from ``tests/conftest.py``. The
helpers of ``tests/integration`` (``botdm.py``) are importable here as sibling modules, the way
the integration tests import them: that directory is put on ``sys.path`` below.

Unlike ``tests/integration/conftest.py`` the bots here take every config section, and their
verification limits are raised (the suite starts and cancels more than a person would).
"""

from __future__ import annotations

import os
import secrets
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
# hypothesis keeps its caches under .cache/ (ignored by git) rather than in .hypothesis/
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY",
                      str(HERE.parents[1] / ".cache" / "hypothesis"))
sys.path.insert(0, str(HERE.parent / "integration"))  # botdm.py, as its own tests import it
sys.path.insert(0, str(HERE))  # crashkit.py for every module here, whatever the import mode
sys.path.insert(0, str(HERE.parent / "unit"))  # fakes.py, the unit tests' test doubles

from crashkit import BotAccount, BotProcess, config_dict  # noqa: E402

from nerbot.app import NerbotApp  # noqa: E402
from nerbot.config import parse_config  # noqa: E402
from nerbot.localdev.jspeer import ensure_installed, node_available  # noqa: E402
from nerbot.ports import Clock  # noqa: E402


@pytest.fixture(scope="session")
def jspeer_ready() -> None:
    """matrix-js-sdk with Element's Rust crypto, installed from the committed lock file."""
    assert node_available(), "node and npm are required (.ci/run installs them)"
    ensure_installed()  # the default pair (js-sdk 36, as tests/integration/test_verify.py)


@pytest.fixture
def bot_account(synapse: Any) -> BotAccount:
    password = secrets.token_urlsafe(12)
    user_id = synapse.register_user(f"nerbot-{uuid.uuid4().hex[:8]}", password)
    return BotAccount(user_id, password)


@pytest.fixture
async def start_bot(synapse: Any, bot_account: BotAccount, tmp_path: Path
                    ) -> AsyncIterator[Callable[..., Any]]:
    """``await start_bot(clock=None, data_dir=None, **sections)`` → a started in-process bot.

    ``sections`` are config sections (``bot={...}``, ``verification={...}``, ...) merged over
    the suite's defaults (language en, reminders and alerts off). Stopped at teardown.
    """
    apps: list[NerbotApp] = []

    async def start(clock: Clock | None = None, data_dir: Path | None = None,
                    **sections: dict[str, Any]) -> NerbotApp:
        directory = data_dir or tmp_path / "bot"
        raw = config_dict(synapse.url, bot_account.user_id, directory, **sections)
        config = parse_config(raw, {"NERBOT_PASSWORD": bot_account.password}, tmp_path)
        app = NerbotApp(config, clock=clock)
        apps.append(app)
        await app.start()
        return app

    yield start
    for app in apps:
        await app.stop()


@pytest.fixture
def bot_process(synapse: Any, bot_account: BotAccount, tmp_path: Path
                ) -> Iterator[Callable[..., BotProcess]]:
    """``bot_process(**sections)`` → a :class:`BotProcess` (``nerbot run`` in a subprocess),
    not started yet. Every process still running at teardown is killed by its own PID."""
    made: list[BotProcess] = []

    def make(**sections: dict[str, Any]) -> BotProcess:
        process = BotProcess(synapse, bot_account, tmp_path / f"bot{len(made)}", sections)
        made.append(process)
        return process

    yield make
    for process in made:
        process.kill()
