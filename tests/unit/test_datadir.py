"""The data directory ends up private (0700 directories, 0600 files) whatever the umask and
whoever created it; what the bot cannot make private stops it, and check-config says so."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from nerbot.app import NerbotApp
from nerbot.cli import main
from nerbot.config import parse_config
from nerbot.datadir import check_data_dir, make_private, prepare_data_dir
from nerbot.errors import ConfigError
from nerbot.store import Store

OTHER_UID = 4242  # "the bot runs as another account": the files here are root's (tests run as
                  # root) or the current user's, never this uid's


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    """A common default umask, restored afterwards (the app sets its own, process-wide)."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def modes(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (itself as ".") → its permission bits in octal."""
    found = {".": oct(stat.S_IMODE(root.stat().st_mode))}
    for path in sorted(root.rglob("*")):
        found[str(path.relative_to(root))] = oct(stat.S_IMODE(path.lstat().st_mode))
    return found


def assert_private(root: Path) -> None:
    for name, mode in modes(root).items():
        path = root / name
        expected = "0o700" if path.is_dir() else "0o600"
        assert mode == expected, f"{name} is {mode}"


def open_data_dir(root: Path) -> sqlite3.Connection:
    """What an earlier start under umask 022 left: 0755 directories, 0644 files, and a database
    whose -wal and -shm still exist (the returned connection keeps them)."""
    root.mkdir(mode=0o755)
    (root / "crypto").mkdir(mode=0o750)
    for name in ("session.json", "cross-signing.json", "crypto/nerbot_DEVICE.db"):
        (root / name).write_text("{}")
    conn = sqlite3.connect(root / "nerbot.db")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE earlier (x)")
    conn.commit()
    assert (root / "nerbot.db-wal").exists() and (root / "nerbot.db-shm").exists()
    assert modes(root)["."] == "0o755" and modes(root)["nerbot.db-wal"] == "0o644"
    return conn


def test_an_open_data_dir_is_made_private_with_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "data"
    earlier = open_data_dir(root)
    caplog.set_level(logging.INFO, logger="nerbot")
    changed = prepare_data_dir(root)  # what the app does first on start
    store = Store(root / "nerbot.db")
    store.set_meta("k", "v")
    # ., crypto and its database, session, keys, nerbot.db and its -wal and -shm
    assert len(changed) == 8
    [line] = [r for r in caplog.records if "private" in r.getMessage()]
    assert line.levelno == logging.WARNING and line.name == "nerbot.datadir"
    text = line.getMessage()
    assert text.startswith(f"Data directory {root} was open to group/other; made it private "
                           "(0700 directories, 0600 files): . 0755, crypto 0750, ")
    assert text.endswith("(+3 more)")  # five named, the rest counted: one line, whatever size
    assert_private(root)
    # under this umask simplematrixbotlib would create the crypto store 0750 and nio its files
    # 0644 (the app's own umask prevents that); open_session's second pass takes care of them
    os.makedirs(root / "crypto" / "later", mode=0o750)
    (root / "crypto" / "later" / "file").write_text("x")
    prepare_data_dir(root)
    assert_private(root)
    assert {"nerbot.db-wal", "nerbot.db-shm"} <= set(modes(root))
    store.close()
    earlier.close()


def test_a_new_data_dir_and_database_are_private_from_the_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "new" / "data"
    caplog.set_level(logging.INFO, logger="nerbot")
    assert prepare_data_dir(root) == []
    store = Store(root / "nerbot.db")
    store.claim_event("$e", 1)
    assert {"nerbot.db", "nerbot.db-wal", "nerbot.db-shm"} <= set(modes(root))
    assert_private(root)
    assert not [r for r in caplog.records if "private" in r.getMessage()]
    store.close()


def test_the_store_alone_keeps_its_files_private(tmp_path: Path) -> None:
    """A database from before (0644, with -wal/-shm left by a crash) is tightened by Store."""
    earlier = sqlite3.connect(tmp_path / "nerbot.db")
    earlier.execute("PRAGMA journal_mode=WAL")
    earlier.execute("CREATE TABLE earlier (x)")
    earlier.commit()
    store = Store(tmp_path / "nerbot.db")
    for name in ("nerbot.db", "nerbot.db-wal", "nerbot.db-shm"):
        assert modes(tmp_path)[name] == "0o600", name
    store.close()
    earlier.close()


def test_entries_of_another_account_refuse_the_start_and_change_nothing(tmp_path: Path) -> None:
    root = tmp_path / "data"
    open_data_dir(root).close()
    before = modes(root)
    with pytest.raises(ConfigError) as info:
        make_private(root, uid=OTHER_UID)
    [line] = info.value.lines()
    owner = root.stat().st_uid
    assert line.startswith(f"storage.data_dir: {root} is open to group/other (mode 0755) and "
                           f"owned by uid {owner}, not by the account the bot runs as "
                           f"(uid {OTHER_UID}) (and 5 more entries like it)")
    assert f"chown -R {OTHER_UID} {root}" in line
    assert modes(root) == before


def test_private_entries_of_another_account_are_no_problem(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir(mode=0o700)
    (root / "nerbot.db").write_bytes(b"")
    (root / "nerbot.db").chmod(0o600)
    assert make_private(root, uid=OTHER_UID) == []
    assert check_data_dir(root, uid=OTHER_UID) == []


def test_a_file_where_the_directory_should_be(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("")
    with pytest.raises(ConfigError) as info:
        prepare_data_dir(tmp_path / "data")
    assert info.value.lines() == [f"storage.data_dir: {tmp_path / 'data'} is not a directory"]


def test_symbolic_links_are_neither_followed_nor_changed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o755)
    (outside / "shared.txt").write_text("x")
    root = tmp_path / "data"
    root.mkdir(mode=0o700)
    (root / "link").symlink_to(outside)
    assert make_private(root) == []
    assert modes(outside) == {".": "0o755", "shared.txt": "0o644"}


@pytest.fixture
def root_logger_kept() -> Iterator[None]:
    """``nerbot run`` configures logging for the process; later tests must not inherit it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def write_config(tmp_path: Path, data_dir: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[storage]\ndata_dir = "{data_dir}"\n')
    return path


def test_check_config_notes_what_the_bot_will_make_private_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NERBOT_PASSWORD", "pw")
    root = tmp_path / "data"
    open_data_dir(root).close()
    config = write_config(tmp_path, root)
    assert main(["check-config", "-c", str(config)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"storage.data_dir: {root} is open to group/other (. 0755, ")
    assert out[0].endswith("the bot makes it private (0700 directories, 0600 files) when it "
                           "starts")
    assert out[1] == f"{config}: OK"
    assert modes(root)["."] == "0o755"
    make_private(root)
    assert main(["check-config", "-c", str(config)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{config}: OK"]


def test_check_config_and_run_refuse_what_the_bot_cannot_make_private(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    root_logger_kept: None,
) -> None:
    monkeypatch.setenv("NERBOT_PASSWORD", "pw")
    root = tmp_path / "data"
    open_data_dir(root).close()
    before = modes(root)
    config = write_config(tmp_path, root)
    monkeypatch.setattr(os, "geteuid", lambda: OTHER_UID)
    assert main(["check-config", "-c", str(config)]) == 1
    [problem] = capsys.readouterr().err.splitlines()
    assert problem.startswith(f"storage.data_dir: {root} is open to group/other (mode 0755)")
    assert f"not by the account the bot runs as (uid {OTHER_UID})" in problem
    # the bot says the same and stops (exit 1) before it opens anything
    assert main(["run", "-c", str(config)]) == 1
    assert problem in capsys.readouterr().err.splitlines()
    assert modes(root) == before


async def test_the_app_refuses_before_writing_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    open_data_dir(root).close()
    (root / "nerbot.db").unlink()
    config = parse_config({"storage": {"data_dir": str(root)}}, {"NERBOT_PASSWORD": "pw"},
                          tmp_path)
    monkeypatch.setattr(os, "geteuid", lambda: OTHER_UID)
    app = NerbotApp(config)
    with pytest.raises(ConfigError, match=r"storage\.data_dir: .* cannot make it private"):
        await app.start()
    assert app.store is None and not (root / "nerbot.db").exists()
    await app.stop()
