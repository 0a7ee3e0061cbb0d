"""The bot's cross-signing identity against a real Synapse: create, keep, refuse, reset."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from nerbot.cli import main
from nerbot.errors import IdentityError
from nerbot.matrix.crosssigning import fingerprint, is_device_cross_signed, master_key_of
from nerbot.matrix.identity import IdentityState
from nerbot.store import Store


def keys_of(synapse: Any, token: str, user_id: str) -> dict[str, Any]:
    result: dict[str, Any] = synapse.request(
        "POST", "/_matrix/client/v3/keys/query", {"device_keys": {user_id: []}}, token=token)
    return result


def write_config(path: Path, synapse: Any, user_id: str, data_dir: Path) -> Path:
    path.write_text(
        f'[matrix]\nhomeserver = "{synapse.url}"\nuser_id = "{user_id}"\n'
        f'[storage]\ndata_dir = "{data_dir}"\n')
    return path


async def test_identity_is_created_once_and_kept(start_bot: Any, tmp_path: Path) -> None:
    bot = await start_bot()
    assert bot.identity is not None and bot.identity.state is IdentityState.CREATED
    master = bot.identity.master_key
    keys_file = bot.config.cross_signing_keys_path
    assert oct(keys_file.stat().st_mode & 0o777) == "0o600"
    await bot.stop()
    bot = await start_bot()
    assert bot.identity is not None
    assert bot.identity.state is IdentityState.ALREADY_SET_UP
    assert bot.identity.master_key == master


async def test_missing_private_keys_stop_the_bot_with_a_clear_message(
    start_bot: Any
) -> None:
    bot = await start_bot()
    await bot.stop()
    bot.config.cross_signing_keys_path.unlink()
    with pytest.raises(IdentityError) as info:
        await start_bot()
    assert "reset-identity" in str(info.value)
    assert "is missing" in str(info.value)


async def test_recreated_crypto_store_gets_its_new_device_signed(
    start_bot: Any, synapse: Any, make_user: Any, make_peer: Any
) -> None:
    bot = await start_bot()
    old_device = bot.session.device_id if bot.session else None
    data_dir = bot.config.storage.data_dir
    await bot.stop()
    shutil.rmtree(data_dir / "crypto")
    bot.config.session_path.unlink()
    store = Store(data_dir / "nerbot.db")
    store.db.execute("DELETE FROM meta WHERE key = 'device_id'")
    store.db.conn.commit()
    store.close()
    bot = await start_bot()
    assert bot.session is not None and bot.identity is not None
    assert bot.session.device_id != old_device
    assert bot.identity.state is IdentityState.DEVICE_RE_SIGNED
    other = await make_peer(make_user())
    response = keys_of(synapse, other.client.access_token, bot.config.matrix.user_id)
    assert is_device_cross_signed(response, bot.config.matrix.user_id, bot.session.device_id)


async def test_fingerprint_and_reset_identity_cli(
    start_bot: Any, synapse: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, make_user: Any, make_peer: Any,
) -> None:
    bot = await start_bot()
    user_id = bot.config.matrix.user_id
    old_master = bot.identity.master_key if bot.identity else ""
    await bot.stop()
    config = write_config(tmp_path / "config.toml", synapse, user_id,
                          bot.config.storage.data_dir)
    monkeypatch.setenv("NERBOT_PASSWORD", bot.config.matrix.password)

    assert main(["fingerprint", "-c", str(config)]) == 0
    assert capsys.readouterr().out.strip() == fingerprint(old_master)

    assert await _in_thread(main, ["reset-identity", "-c", str(config)]) == 2
    assert "WARNING" in capsys.readouterr().err
    other = await make_peer(make_user())
    assert master_key_of(keys_of(synapse, other.client.access_token, user_id),
                         user_id) == old_master

    assert await _in_thread(main, ["reset-identity", "-c", str(config), "--yes"]) == 0
    out = capsys.readouterr().out
    response = keys_of(synapse, other.client.access_token, user_id)
    new_master = master_key_of(response, user_id)
    assert new_master is not None and new_master != old_master
    assert fingerprint(new_master) in out
    assert list(bot.config.storage.data_dir.glob("cross-signing.json.replaced-*"))
    bot = await start_bot()
    assert bot.identity is not None and bot.identity.master_key == new_master
    assert bot.identity.state is IdentityState.ALREADY_SET_UP
    assert bot.session is not None
    assert is_device_cross_signed(response, user_id, bot.session.device_id)


async def _in_thread(fn: Any, argv: list[str]) -> int:
    """The CLI runs its own event loop, so call it from a worker thread."""
    import asyncio

    result: int = await asyncio.to_thread(fn, argv)
    return result
