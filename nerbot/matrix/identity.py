"""Publish the bot's cross-signing identity, check it on every start, replace it on request.

Modern clients neither trust messages from nor share room keys with devices that are not
cross-signed, and Element cannot start a user verification with an account without a master
key: without this the bot is invisible to verification and second-class in encrypted rooms.
The keys themselves and all signing live in :mod:`nerbot.matrix.crosssigning`; this module is
the async edge that talks to the homeserver.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from nerbot.errors import IdentityError, MatrixRequestError
from nerbot.matrix.crosssigning import (
    CrossSigningKeys,
    JsonDict,
    device_keys_of,
    fingerprint,
    is_device_cross_signed,
    master_key_of,
    self_signing_key_of,
    signatures_upload_body,
    verify_signed_json,
)
from nerbot.matrix.http import MatrixHttp

logger = logging.getLogger(__name__)

KEYS_QUERY = "/_matrix/client/v3/keys/query"
DEVICE_SIGNING_UPLOAD = "/_matrix/client/v3/keys/device_signing/upload"
SIGNATURES_UPLOAD = "/_matrix/client/v3/keys/signatures/upload"

PASSWORD_STAGE = "m.login.password"

RESET_HINT = (
    "the bot cannot sign with cross-signing keys it does not hold. To publish new ones, run "
    "`nerbot reset-identity -c CONFIG --yes`; everyone who verified the bot will then see that "
    "its identity changed and will have to verify it again"
)


class IdentityState(enum.Enum):
    """What starting up (or resetting) did to the bot's identity."""

    CREATED = "created"
    """New keys were published (first start), and the device signed."""
    ALREADY_SET_UP = "already_set_up"
    """Server and key file agree and the device is signed: nothing was changed."""
    DEVICE_RE_SIGNED = "device_re_signed"
    """Same identity, but the device was new (crypto store recreated) or unsigned: signed it."""
    RESET = "reset"
    """The operator replaced the identity with new keys."""


@dataclass(frozen=True, slots=True)
class IdentityResult:
    """The outcome, with the master key people compare when they verify the bot."""

    state: IdentityState
    master_key: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.master_key)


async def query_own_keys(http: MatrixHttp, user_id: str) -> JsonDict:
    """Our own /keys/query entry: device keys and cross-signing keys as the server has them."""
    _, response = await http.request("POST", KEYS_QUERY, {"device_keys": {user_id: []}})
    return response


def _check_own_device(
    response: JsonDict, user_id: str, device_id: str, device_ed25519: str
) -> JsonDict:
    """The server's copy of our device keys, if they are really ours and self-signed.

    Signing whatever the server hands us would vouch for a key the bot does not hold.
    """
    device = device_keys_of(response, user_id, device_id)
    if device is None:
        raise IdentityError(
            f"the homeserver has no keys for the bot's device {device_id}: the device was "
            "deleted or its keys were never uploaded (delete the bot's session and crypto store "
            "to start a new device)")
    key_id = f"ed25519:{device_id}"
    keys = device.get("keys")
    if not isinstance(keys, dict) or keys.get(key_id) != device_ed25519:
        raise IdentityError(
            f"the homeserver's Ed25519 key for the bot's device {device_id} is not the one in "
            "the bot's crypto store; refusing to cross-sign it")
    if not verify_signed_json(device, user_id, key_id, device_ed25519):
        raise IdentityError(
            f"the homeserver's keys for the bot's device {device_id} are not validly signed by "
            "the device itself; refusing to cross-sign them")
    return dict(device)


def _password_auth(user_id: str, password: str, session: str) -> JsonDict:
    return {
        "type": PASSWORD_STAGE,
        "identifier": {"type": "m.id.user", "user": user_id},
        "password": password,
        "session": session,
    }


async def _upload_cross_signing_keys(
    http: MatrixHttp, user_id: str, password: str, keys: CrossSigningKeys
) -> bool:
    """``POST /keys/device_signing/upload``, completing user-interactive auth by password.

    Returns whether UIA was needed (Synapse lets the first upload, and a re-upload of the same
    keys, through without it; replacing keys always needs it).
    """
    body = keys.device_signing_upload_body(user_id)
    status, response = await http.request(
        "POST", DEVICE_SIGNING_UPLOAD, body, ok_statuses=(200, 401))
    if status == 200:
        return False
    session = response.get("session")
    flows = response.get("flows")
    if not isinstance(session, str) or not isinstance(flows, list):
        # A plain 401 (e.g. an expired access token), not an auth challenge.
        raise MatrixRequestError("POST", DEVICE_SIGNING_UPLOAD, status, response)
    stages = [f.get("stages") for f in flows if isinstance(f, dict)]
    if [PASSWORD_STAGE] not in stages:
        raise IdentityError(
            f"the homeserver asks for {stages} to publish cross-signing keys; the bot can only "
            "confirm with its password")
    status, response = await http.request(
        "POST", DEVICE_SIGNING_UPLOAD, {**body, "auth": _password_auth(user_id, password, session)},
        ok_statuses=(200, 401))
    if status != 200:
        errcode = response.get("errcode", "")
        raise IdentityError(
            f"the homeserver did not accept the bot's password to publish cross-signing keys "
            f"({errcode or 'no error code'}); check the configured password")
    return True


async def _upload_signatures(http: MatrixHttp, signed: list[JsonDict]) -> None:
    _, response = await http.request("POST", SIGNATURES_UPLOAD, signatures_upload_body(signed))
    failures = response.get("failures")
    if failures:
        raise IdentityError(f"the homeserver rejected the bot's signatures: {failures}")


async def _sign_own_device(http: MatrixHttp, keys: CrossSigningKeys, device: JsonDict) -> None:
    await _upload_signatures(http, [keys.sign_device(device)])


async def ensure_identity(
    http: MatrixHttp,
    user_id: str,
    device_id: str,
    device_ed25519: str,
    password: str,
    keys_path: Path,
) -> IdentityResult:
    """Publish the identity on first start; afterwards only check it and sign a new device.

    Never replaces keys the server already has: that would silently break every verification
    people made, so mismatches stop the bot with an :class:`IdentityError` for the operator.

    Args:
        device_ed25519: the device's Ed25519 key from the bot's own crypto store, so that the
            bot never cross-signs keys it does not hold.
        password: only used for user-interactive auth if the server asks for it.
    """
    response = await query_own_keys(http, user_id)
    device = _check_own_device(response, user_id, device_id, device_ed25519)
    server_has_master = user_id in (response.get("master_keys") or {})
    server_master = master_key_of(response, user_id)
    keys = CrossSigningKeys.load(keys_path)

    if keys is None:
        if server_has_master:
            raise IdentityError(
                f"the homeserver already has cross-signing keys for {user_id} (master key "
                f"{fingerprint(server_master or '?')}), but their private keys are not in "
                f"{keys_path} (the file is missing); {RESET_HINT}")
        keys = CrossSigningKeys.generate()
        keys.save(keys_path)  # before the upload: published keys must never exist only in memory
        uia = await _upload_cross_signing_keys(http, user_id, password, keys)
        await _sign_own_device(http, keys, device)
        logger.info("Published a new cross-signing identity (master %s, UIA %s)",
                    fingerprint(keys.master_public), "needed" if uia else "not needed")
        return IdentityResult(IdentityState.CREATED, keys.master_public)

    if not server_has_master:
        # Saved but never published (the first start stopped in between): publish them now.
        # Nobody can have verified keys that were never on the server, so nothing breaks.
        await _upload_cross_signing_keys(http, user_id, password, keys)
        await _sign_own_device(http, keys, device)
        logger.info("Published the cross-signing identity from %s (master %s)",
                    keys_path, fingerprint(keys.master_public))
        return IdentityResult(IdentityState.CREATED, keys.master_public)

    if server_master != keys.master_public:
        raise IdentityError(
            f"the homeserver's cross-signing master key for {user_id} "
            f"({fingerprint(server_master or 'malformed')}) is not the one in {keys_path} "
            f"({fingerprint(keys.master_public)}); {RESET_HINT}")
    if self_signing_key_of(response, user_id) != keys.self_signing_public:
        raise IdentityError(
            f"the homeserver's self-signing key for {user_id} is missing or is not the one in "
            f"{keys_path}, although the master key matches (was the key file used elsewhere?); "
            f"{RESET_HINT}")

    if is_device_cross_signed(response, user_id, device_id):
        return IdentityResult(IdentityState.ALREADY_SET_UP, keys.master_public)
    await _sign_own_device(http, keys, device)
    logger.info("Signed the bot's device %s with its self-signing key", device_id)
    return IdentityResult(IdentityState.DEVICE_RE_SIGNED, keys.master_public)


async def reset_identity(
    http: MatrixHttp,
    user_id: str,
    device_id: str,
    device_ed25519: str,
    password: str,
    keys_path: Path,
) -> IdentityResult:
    """Replace the identity with new keys (operator's decision, confirmed in the CLI).

    The new keys go to ``<name>.pending`` first, become the key file only once the server took
    them, and the old file is kept as ``<name>.replaced-<UTC timestamp>`` (0600). A crash after
    the upload therefore never loses the keys the server now has.
    """
    response = await query_own_keys(http, user_id)
    device = _check_own_device(response, user_id, device_id, device_ed25519)
    keys = CrossSigningKeys.generate()
    pending = keys_path.with_name(f"{keys_path.name}.pending")
    keys.save(pending)
    try:
        await _upload_cross_signing_keys(http, user_id, password, keys)
    except BaseException:
        pending.unlink(missing_ok=True)
        raise
    backup = _keep_old_key_file(keys_path)
    os.replace(pending, keys_path)
    await _sign_own_device(http, keys, device)
    logger.warning("Replaced the bot's cross-signing identity: new master %s (old key file kept "
                   "as %s)", fingerprint(keys.master_public), backup)
    return IdentityResult(IdentityState.RESET, keys.master_public)


def _keep_old_key_file(keys_path: Path) -> Path | None:
    """Copy the current key file aside (never overwriting an earlier copy); 0600 from the start."""
    try:
        old = keys_path.read_bytes()
    except FileNotFoundError:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in range(1000):
        suffix = "" if n == 0 else f"-{n}"
        backup = keys_path.with_name(f"{keys_path.name}.replaced-{stamp}{suffix}")
        try:
            fd = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(old)
            fh.flush()
            os.fsync(fh.fileno())
        return backup
    raise IdentityError(f"too many old key files next to {keys_path}")

