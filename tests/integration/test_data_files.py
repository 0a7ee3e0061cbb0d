"""The real bot's data directory on disk: private whatever the umask and whoever created it."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.asyncio


@pytest.fixture
def umask_022() -> Iterator[None]:
    """A common default umask while the test runs; the process's own is restored afterwards."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def entries(root: Path) -> dict[str, tuple[str, str]]:
    """Every entry under ``root`` (itself as ".") → (kind, mode in octal); links not followed."""
    found = {".": ("dir", oct(stat.S_IMODE(root.stat().st_mode)))}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
        found[str(path.relative_to(root))] = (kind, oct(stat.S_IMODE(st.st_mode)))
    return found


def assert_private(root: Path) -> None:
    found = entries(root)
    loose = {name: (kind, mode) for name, (kind, mode) in found.items()
             if mode != ("0o700" if kind == "dir" else "0o600")}
    assert loose == {}, f"not private: {loose}"


async def test_every_file_the_bot_writes_is_private(
    start_bot: Any, tmp_path: Path, umask_022: None, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)  # an operator's mkdir, or a container volume
    (data_dir / "crypto").mkdir(mode=0o750)  # as simplematrixbotlib makes it
    assert entries(data_dir)["."] == ("dir", "0o755")
    caplog.set_level(logging.INFO, logger="nerbot")

    bot = await start_bot(data_dir=data_dir)
    assert bot.session is not None and bot.store is not None
    names = set(entries(data_dir))
    crypto = {n for n in names if n.startswith("crypto/")}
    # nio's store (in WAL mode, with its -wal/-shm), the session, the keys, our database
    assert {n for n in crypto if n.endswith(".db")} and \
        {n for n in crypto if n.endswith(".db-wal")}, crypto
    assert {"session.json", "cross-signing.json", "nerbot.db", "nerbot.db-wal",
            "nerbot.db-shm"} <= names
    assert_private(data_dir)
    [line] = [r.getMessage() for r in caplog.records if "made it private" in r.getMessage()]
    assert line.startswith(f"Data directory {data_dir} was open to group/other") \
        and ". 0755, crypto 0750" in line
    for _ in range(50):  # the daily prune's first run follows the start at once
        if [r for r in caplog.records if r.getMessage().startswith("Retention (180 days)")]:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the retention task did not run at start")

    # a restart resumes from the stored sync position, and finds nothing to change
    await bot.stop()
    caplog.clear()
    bot = await start_bot(data_dir=data_dir)
    assert bot.session is not None and bot.session.resumes_sync
    assert_private(data_dir)
    assert not [r for r in caplog.records if "made it private" in r.getMessage()]
