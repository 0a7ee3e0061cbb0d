"""Log in once, then restore the same device on every start (simplematrixbotlib's Creds/Api).

simplematrixbotlib keeps the access token and device ID in a session file encrypted with a key
derived from the password. If the password changes, that file can no longer be read; we also
keep the device ID in our own database so the password login then reuses the *same* device
(nio passes ``device_id`` to ``/login``) and the crypto store stays valid. A new device is only
ever created on the very first start.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass
from typing import cast

import nio
import simplematrixbotlib as botlib
from cryptography.fernet import InvalidToken

from nerbot.config import Config
from nerbot.datadir import prepare_data_dir
from nerbot.errors import NerbotError
from nerbot.ids import DeviceId
from nerbot.matrix.reachability import UNREACHABLE_ERRORS
from nerbot.matrix.storefix import use_write_ahead_log
from nerbot.store import Store

logger = logging.getLogger(__name__)

DEVICE_ID_META = "device_id"
MAX_RATE_LIMIT_RETRIES = 20
# nio retries a request that cannot reach the server forever by default, waiting ever longer
# (up to a minute) between tries. A couple of quick tries, then the error: the sync loop and
# the app then probe the server every few seconds (``Recovery``) and the outbox retries later.
MAX_CONNECTION_RETRIES = 2


class LoginFailed(NerbotError):
    """The homeserver refused our credentials (not a transient network problem)."""


@dataclass
class MatrixSession:
    """A logged-in, crypto-enabled nio client plus the simplematrixbotlib objects behind it."""

    client: nio.AsyncClient
    api: botlib.Api
    creds: botlib.Creds
    first_login: bool

    @property
    def device_id(self) -> DeviceId:
        return DeviceId(str(self.client.device_id))

    @property
    def access_token(self) -> str:
        return str(self.client.access_token)

    @property
    def device_ed25519(self) -> str:
        return str(self.client.olm.account.identity_keys["ed25519"])

    @property
    def resumes_sync(self) -> bool:
        """Whether nio has a stored sync position: without one, the first sync is not a
        continuation but each room's latest events, however old."""
        return bool(self.client.loaded_sync_token)


def _botlib_config(config: Config) -> botlib.Config:
    settings = botlib.Config()
    settings.encryption_enabled = True
    settings.emoji_verify = False  # blocking input() in the library; we verify ourselves
    settings.ignore_unverified_devices = True  # reminders must reach unverified sessions
    settings.join_on_invite = False  # invites are decided by our own policy
    settings.store_path = str(config.crypto_store_dir) + os.sep
    # simplematrixbotlib's default (0) turns every 429 into an error; let nio wait out the
    # server's retry_after_ms instead, a bounded number of times per request.
    settings.max_limit_exceeded = MAX_RATE_LIMIT_RETRIES
    settings.max_timeouts = MAX_CONNECTION_RETRIES
    return settings


class _LibraryOutput(io.TextIOBase):
    """simplematrixbotlib prints; route its lines into our log instead of stdout."""

    def write(self, text: str) -> int:
        if text.strip():
            logger.info("simplematrixbotlib: %s", text.strip())
        return len(text)


async def open_session(config: Config, store: Store) -> MatrixSession:
    """Restore the stored session or log in (reusing the known device ID).

    The caller made the data directory private before opening the store; it is made private
    again at the end, for what simplematrixbotlib and nio created meanwhile: the crypto store
    directory (0750 by simplematrixbotlib), nio's database and its -wal/-shm, the session file.
    """
    creds = botlib.Creds(
        homeserver=config.matrix.homeserver,
        username=config.matrix.user_id,
        password=config.matrix.password,
        session_stored_file=str(config.session_path),
        device_name=config.matrix.device_name,
    )
    with contextlib.redirect_stdout(_LibraryOutput()):
        try:
            creds.session_read_file()
        except (InvalidToken, ValueError, IndexError):
            logger.warning("Stored session file is unreadable (password changed?); logging in")
            config.session_path.unlink(missing_ok=True)
            creds.session_read_file()
        known_device = store.get_meta(DEVICE_ID_META)
        if not creds.device_id and known_device:
            creds.device_id = known_device
        first_login = not known_device
        api = botlib.Api(creds, _botlib_config(config))
        try:
            try:
                await api.login()
            except ConnectionError as exc:
                # whoami refused the stored token (logged out elsewhere): log in with the
                # password, keeping the device ID so the crypto store still matches.
                logger.warning("Stored access token was rejected (%s); logging in with "
                               "password", str(exc).split(":", 1)[0])
                config.session_path.unlink(missing_ok=True)
                await _close(api)  # its HTTP session must not outlive it
                creds.access_token = None
                creds.device_id = cast(str, known_device)  # None: the server picks a new one
                api = botlib.Api(creds, _botlib_config(config))
                await _login_or_fail(api)
            except UNREACHABLE_ERRORS:
                raise
            except Exception as exc:
                raise LoginFailed(_login_error_text(exc)) from None
            creds.session_write_file()
            client = api.async_client
            if client.olm is None:
                raise NerbotError("end-to-end encryption is not available in this nio "
                                  "installation")
            use_write_ahead_log(client.store)
            os.chmod(config.session_path, 0o600)
            prepare_data_dir(config.storage.data_dir)
            store.set_meta(DEVICE_ID_META, str(client.device_id))
        except BaseException:
            # No session comes of this try: its client's HTTP session is closed now, or every
            # retry while the homeserver is away would leave one more open.
            await _close(api)
            raise
    logger.info("Logged in as %s on device %s (%s)", client.user_id, client.device_id,
                "new device" if first_login else "restored")
    return MatrixSession(client=client, api=api, creds=creds, first_login=first_login)


async def _close(api: botlib.Api) -> None:
    """Close the client ``api.login`` made (if it got that far), whatever state it is in."""
    client = api.async_client
    if client is not None:
        await client.close()


async def _login_or_fail(api: botlib.Api) -> None:
    try:
        await api.login()
    except UNREACHABLE_ERRORS:
        raise
    except Exception as exc:
        raise LoginFailed(_login_error_text(exc)) from None


def _login_error_text(exc: Exception) -> str:
    # nio's LoginError repr contains only errcode/message, never the password.
    arg = exc.args[0] if exc.args else exc
    message = getattr(arg, "message", None) or str(arg)
    code = getattr(arg, "status_code", None) or ""
    return f"login refused by the homeserver: {code} {message}".strip()
