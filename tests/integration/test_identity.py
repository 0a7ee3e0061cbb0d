"""The bot's cross-signing identity against a real Synapse: create, keep, refuse, reset."""

from __future__ import annotations

import asyncio
import json
import shutil
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nio
import pytest
import signedjson.key
import signedjson.sign
from unpaddedbase64 import decode_base64

from nerbot.cli import main
from nerbot.errors import IdentityError, MatrixRequestError
from nerbot.matrix.crosssigning import (
    CrossSigningKeys,
    JsonDict,
    fingerprint,
    is_device_cross_signed,
    master_key_of,
)
from nerbot.matrix.http import MatrixHttp
from nerbot.matrix.identity import IdentityResult, IdentityState, ensure_identity, reset_identity
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


async def test_run_exits_with_identity_code_when_keys_cannot_be_used(
    start_bot: Any, synapse: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bot = await start_bot()
    await bot.stop()
    bot.config.cross_signing_keys_path.unlink()
    config = write_config(tmp_path / "config.toml", synapse, bot.config.matrix.user_id,
                          bot.config.storage.data_dir)
    monkeypatch.setenv("NERBOT_PASSWORD", bot.config.matrix.password)
    assert await _in_thread(main, ["run", "-c", str(config)]) == 3
    err = capsys.readouterr().err
    assert "reset-identity" in err and "cross-signing" in err


# -- ensure_identity / reset_identity called directly, on real nio devices -----------------------
#
# The bot's wiring (app, CLI) is exercised above; these drive the two functions themselves so a
# failure points at the identity logic, and check every result from ANOTHER account's point of
# view with signedjson (matrix-org's implementation, the one Synapse uses), not with our code.


class RecordingHttp(MatrixHttp):
    """A MatrixHttp that remembers each request's path, whether it carried UIA, and the status."""

    def __init__(self, homeserver: str, access_token: str | None = None) -> None:
        super().__init__(homeserver, access_token)
        self.calls: list[tuple[str, bool, int]] = []

    async def request(self, method: str, path: str, body: JsonDict | None = None,
                      **kwargs: Any) -> tuple[int, JsonDict]:
        try:
            status, response = await super().request(method, path, body, **kwargs)
        except MatrixRequestError as exc:
            self.calls.append((path, bool(body and "auth" in body), exc.status))
            raise
        self.calls.append((path, bool(body and "auth" in body), status))
        return status, response

    def uploads(self) -> list[tuple[bool, int]]:
        """``(with_auth, status)`` of every cross-signing key upload since the last call."""
        found = [(auth, status) for path, auth, status in self.calls if path == DEVICE_SIGNING]
        self.calls.clear()
        return found


DEVICE_SIGNING = "/_matrix/client/v3/keys/device_signing/upload"


@dataclass
class BotDevice:
    """One nio login with its own e2e store: a device of the bot account with uploaded keys."""

    client: nio.AsyncClient
    http: RecordingHttp

    @property
    def device_id(self) -> str:
        return str(self.client.device_id)

    @property
    def ed25519(self) -> str:
        return str(self.client.olm.account.identity_keys["ed25519"])


@pytest.fixture
async def nio_login(synapse: Any, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """``await nio_login(user) -> BotDevice``: a fresh store, login, keys_upload."""
    devices: list[BotDevice] = []

    async def login(user: Any) -> BotDevice:
        store = tmp_path / f"nio-{user.localpart}-{len(devices)}"
        store.mkdir()
        config = nio.AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False)
        client = nio.AsyncClient(synapse.url, user.user_id, store_path=str(store), config=config)
        response = await client.login(user.password, device_name="nerbot-identity-test")
        assert isinstance(response, nio.LoginResponse), response
        uploaded = await client.keys_upload()
        assert isinstance(uploaded, nio.KeysUploadResponse), uploaded
        device = BotDevice(client, RecordingHttp(synapse.url, client.access_token))
        devices.append(device)
        return device

    yield login
    for device in devices:
        await device.http.close()
        await device.client.close()


async def observer_http(synapse: Any, make_user: Any) -> MatrixHttp:
    """Another account's view of the server (no keys of its own needed for /keys/query)."""
    other = make_user("observer")
    login = await asyncio.to_thread(synapse.login, other.user_id, other.password)
    return MatrixHttp(synapse.url, str(login["access_token"]))


async def query(http: MatrixHttp, user_id: str) -> JsonDict:
    _, response = await http.request("POST", "/_matrix/client/v3/keys/query",
                                      {"device_keys": {user_id: []}})
    return response


def signedjson_verify(obj: JsonDict, user_id: str, key_id: str, public: str) -> None:
    """Raises unless matrix-org's signedjson accepts ``obj``'s signature by ``public``."""
    verify_key = signedjson.key.decode_verify_key_bytes(key_id, decode_base64(public))
    signedjson.sign.verify_signed_json(obj, user_id, verify_key)


def assert_published(view: JsonDict, user_id: str, master: str, *device_ids: str) -> None:
    """master → self-signing key → each device, checked with signedjson alone."""
    master_obj = view["master_keys"][user_id]
    assert master_obj["keys"] == {f"ed25519:{master}": master}
    assert master_obj["usage"] == ["master"] and master_obj["user_id"] == user_id
    ssk_obj = view["self_signing_keys"][user_id]
    assert ssk_obj["usage"] == ["self_signing"]
    ((ssk_id, ssk),) = ssk_obj["keys"].items()
    signedjson_verify(ssk_obj, user_id, f"ed25519:{master}", master)
    assert user_id not in view.get("user_signing_keys", {})  # only the owner sees that one
    for device_id in device_ids:
        device = view["device_keys"][user_id][device_id]
        signedjson_verify(device, user_id, ssk_id, ssk)
        own = device["keys"][f"ed25519:{device_id}"]
        signedjson_verify(device, user_id, f"ed25519:{device_id}", own)  # its own, kept
        assert is_device_cross_signed(view, user_id, device_id)


async def test_identity_lifecycle_on_synapse(
    synapse: Any, make_user: Any, nio_login: Any, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    bot = make_user("idbot")
    keys_path = tmp_path / "keys" / "cross-signing.json"
    observer = await observer_http(synapse, make_user)
    try:
        first = await nio_login(bot)

        async def ensure(device: BotDevice) -> IdentityResult:
            return await ensure_identity(device.http, bot.user_id, device.device_id,
                                         device.ed25519, bot.password, keys_path)

        # 1. First start: keys created, saved 0600, published, device signed.
        created = await ensure(first)
        assert created.state is IdentityState.CREATED
        assert created.fingerprint == fingerprint(created.master_key)
        # Synapse (MSC3967) takes the first upload without user-interactive auth.
        assert first.http.uploads() == [(False, 200)]
        assert stat.S_IMODE(keys_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(keys_path.parent.stat().st_mode) == 0o700
        saved = CrossSigningKeys.load(keys_path)
        assert saved is not None and saved.master_public == created.master_key
        view = await query(observer, bot.user_id)
        assert_published(view, bot.user_id, created.master_key, first.device_id)
        # The owner also sees the user-signing key, signed by the master key.
        own_view = await query(first.http, bot.user_id)
        usk_obj = own_view["user_signing_keys"][bot.user_id]
        assert usk_obj["keys"] == {f"ed25519:{saved.user_signing_public}":
                                   saved.user_signing_public}
        signedjson_verify(usk_obj, bot.user_id, f"ed25519:{created.master_key}",
                          created.master_key)

        # 2. Next start: nothing changes, nothing is uploaded.
        again = await ensure(first)
        assert again == IdentityResult(IdentityState.ALREADY_SET_UP, created.master_key)
        assert first.http.uploads() == []
        assert master_key_of(await query(observer, bot.user_id), bot.user_id) == \
            created.master_key

        # 3. Private keys lost: the bot refuses and tells the operator what to do.
        keys_path.unlink()
        with pytest.raises(IdentityError, match="reset-identity") as info:
            await ensure(first)
        assert created.master_key[:4] in str(info.value)
        assert not keys_path.exists()

        # 4. The operator resets: new keys on the server (UIA by password), saved locally.
        reset = await reset_identity(first.http, bot.user_id, first.device_id, first.ed25519,
                                     bot.password, keys_path)
        assert reset.state is IdentityState.RESET
        assert reset.master_key != created.master_key
        assert first.http.uploads() == [(False, 401), (True, 200)]
        view = await query(observer, bot.user_id)
        assert master_key_of(view, bot.user_id) == reset.master_key
        assert_published(view, bot.user_id, reset.master_key, first.device_id)
        reloaded = CrossSigningKeys.load(keys_path)
        assert reloaded is not None and reloaded.master_public == reset.master_key
        assert stat.S_IMODE(keys_path.stat().st_mode) == 0o600
        assert list(keys_path.parent.iterdir()) == [keys_path]  # no backup: there was no file
        assert (await ensure(first)).state is IdentityState.ALREADY_SET_UP

        # 5. A new device (crypto store recreated): same identity, the new device gets signed.
        second = await nio_login(bot)
        assert second.device_id != first.device_id
        assert not is_device_cross_signed(await query(observer, bot.user_id), bot.user_id,
                                          second.device_id)
        re_signed = await ensure(second)
        assert re_signed == IdentityResult(IdentityState.DEVICE_RE_SIGNED, reset.master_key)
        assert second.http.uploads() == []
        view = await query(observer, bot.user_id)
        assert_published(view, bot.user_id, reset.master_key, first.device_id, second.device_id)
        assert (await ensure(second)).state is IdentityState.ALREADY_SET_UP

        # 6. Resetting with a key file present keeps the old one aside, 0600.
        newest = await reset_identity(second.http, bot.user_id, second.device_id,
                                      second.ed25519, bot.password, keys_path)
        backups = list(keys_path.parent.glob("cross-signing.json.replaced-*"))
        assert len(backups) == 1 and stat.S_IMODE(backups[0].stat().st_mode) == 0o600
        old = CrossSigningKeys.load(backups[0])
        assert old is not None and old.master_public == reset.master_key
        view = await query(observer, bot.user_id)
        assert master_key_of(view, bot.user_id) == newest.master_key
        assert is_device_cross_signed(view, bot.user_id, second.device_id)
        # The first device was signed by the replaced self-signing key only: it needs re-signing.
        assert not is_device_cross_signed(view, bot.user_id, first.device_id)
        assert (await ensure(first)).state is IdentityState.DEVICE_RE_SIGNED

        # Neither the password nor any private key ever reached the logs.
        assert "Published a new cross-signing identity" in caplog.text  # logs were captured
        assert bot.password not in caplog.text
        for path in keys_path.parent.iterdir():
            for seed in json.loads(path.read_text()).values():
                assert seed not in caplog.text
    finally:
        await observer.close()


async def test_server_keys_that_are_not_ours_are_refused(
    synapse: Any, make_user: Any, nio_login: Any, tmp_path: Path,
) -> None:
    bot = make_user("idbot")
    device = await nio_login(bot)
    path = tmp_path / "cross-signing.json"
    await ensure_identity(device.http, bot.user_id, device.device_id, device.ed25519,
                          bot.password, path)
    CrossSigningKeys.generate().save(path)  # a key file from some other identity
    with pytest.raises(IdentityError, match="reset-identity"):
        await ensure_identity(device.http, bot.user_id, device.device_id, device.ed25519,
                              bot.password, path)
    # A device key that is not the one in our crypto store is never cross-signed.
    with pytest.raises(IdentityError, match="crypto store"):
        await ensure_identity(device.http, bot.user_id, device.device_id,
                              CrossSigningKeys.generate().master_public, bot.password, path)


async def test_wrong_password_on_reset_changes_nothing(
    synapse: Any, make_user: Any, nio_login: Any, tmp_path: Path,
) -> None:
    bot = make_user("idbot")
    device = await nio_login(bot)
    path = tmp_path / "cross-signing.json"
    created = await ensure_identity(device.http, bot.user_id, device.device_id, device.ed25519,
                                    bot.password, path)
    before = path.read_bytes()
    with pytest.raises(IdentityError, match="password"):
        await reset_identity(device.http, bot.user_id, device.device_id, device.ed25519,
                             "wrong password", path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cross-signing.json", "nio-" +
                                                          bot.localpart + "-0"]
    _, view = await device.http.request("POST", "/_matrix/client/v3/keys/query",
                                         {"device_keys": {bot.user_id: []}})
    assert master_key_of(view, bot.user_id) == created.master_key


async def test_keys_saved_but_never_published_are_published_on_next_start(
    synapse: Any, make_user: Any, nio_login: Any, tmp_path: Path,
) -> None:
    """A first start that stopped between saving and uploading must not strand the bot."""
    bot = make_user("idbot")
    device = await nio_login(bot)
    path = tmp_path / "cross-signing.json"
    keys = CrossSigningKeys.generate()
    keys.save(path)
    result = await ensure_identity(device.http, bot.user_id, device.device_id, device.ed25519,
                                   bot.password, path)
    assert result == IdentityResult(IdentityState.CREATED, keys.master_public)
    assert device.http.uploads() == [(False, 200)]
    _, view = await device.http.request("POST", "/_matrix/client/v3/keys/query",
                                         {"device_keys": {bot.user_id: []}})
    assert is_device_cross_signed(view, bot.user_id, device.device_id)
    # Uploading the very same keys again is a no-op for Synapse (no UIA either).
    _, body = await device.http.request("POST", DEVICE_SIGNING,
                                        keys.device_signing_upload_body(bot.user_id))
    assert body == {}
