"""Put the bot's cross-signing identity on the server, check it on every start, reset on request.

Modern clients (spec v1.18) neither show messages from nor send room keys to devices that are
not cross-signed, so a bot without this is deaf and invisible in encrypted rooms.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nerbot.errors import IdentityError, MatrixRequestError
from nerbot.matrix.crosssigning import (
    CrossSigningKeys,
    JsonDict,
    is_device_cross_signed,
    master_key_of,
    verify_signed_json,
)
from nerbot.matrix.http import MatrixHttp

logger = logging.getLogger(__name__)

KEYS_QUERY = "/_matrix/client/v3/keys/query"
DEVICE_SIGNING_UPLOAD = "/_matrix/client/v3/keys/device_signing/upload"
SIGNATURES_UPLOAD = "/_matrix/client/v3/keys/signatures/upload"

RESET_HINT = (
    "run `nerbot reset-identity -c CONFIG --yes` to replace them; everyone who verified the "
    "bot will then see that its identity changed and must verify it again"
)


class IdentityState(enum.Enum):
    CREATED = "created"
    ALREADY_SET_UP = "already_set_up"
    DEVICE_RE_SIGNED = "device_re_signed"
    RESET = "reset"


@dataclass(frozen=True, slots=True)
class IdentityResult:
    state: IdentityState
    master_key: str


async def query_own_keys(http: MatrixHttp, user_id: str) -> JsonDict:
    _, response = await http.request("POST", KEYS_QUERY, {"device_keys": {user_id: []}})
    return response


def _check_own_device(response: JsonDict, user_id: str, device_id: str, ed25519: str) -> JsonDict:
    """The server's copy of our device keys must be ours and self-signed, or we must not sign."""
    device = response.get("device_keys", {}).get(user_id, {}).get(device_id)
    if not isinstance(device, dict):
        raise IdentityError(f"the homeserver has no keys for the bot's device {device_id}; "
                            "the device may have been deleted (remove the data directory's "
                            "session and crypto store to start a new device)")
    key_id = f"ed25519:{device_id}"
    if device.get("keys", {}).get(key_id) != ed25519 or not verify_signed_json(
        device, user_id, key_id, ed25519
    ):
        raise IdentityError(f"the homeserver's keys for device {device_id} do not match the "
                            "bot's crypto store")
    return device


async def _upload_with_uia(http: MatrixHttp, user_id: str, password: str, body: JsonDict) -> None:
    """``/keys/device_signing/upload`` with user-interactive auth by password when asked."""
    status, response = await http.request("POST", DEVICE_SIGNING_UPLOAD, body,
                                          ok_statuses=(200, 401))
    if status == 200:
        return
    flows = [f.get("stages", []) for f in response.get("flows", [])]
    if not any(stages == ["m.login.password"] for stages in flows):
        raise IdentityError(f"the homeserver wants {flows} to upload cross-signing keys; "
                            "only password authentication is supported")
    auth = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user_id},
        "password": password,
        "session": response.get("session"),
    }
    try:
        await http.request("POST", DEVICE_SIGNING_UPLOAD, {**body, "auth": auth})
    except MatrixRequestError as exc:
        raise IdentityError(f"uploading cross-signing keys was refused: {exc.errcode}") from None


async def _upload_signatures(http: MatrixHttp, user_id: str, signed: dict[str, Any]) -> None:
    _, response = await http.request("POST", SIGNATURES_UPLOAD, {user_id: signed})
    failures = response.get("failures") or {}
    if failures:
        raise IdentityError(f"the homeserver rejected the bot's signatures: {failures}")


async def _sign_device(
    http: MatrixHttp, keys: CrossSigningKeys, user_id: str, device_id: str, device: JsonDict
) -> None:
    await _upload_signatures(http, user_id, {device_id: keys.sign_device(user_id, device)})


async def ensure_identity(
    http: MatrixHttp,
    user_id: str,
    device_id: str,
    device_ed25519: str,
    password: str,
    keys_path: Path,
) -> IdentityResult:
    """Create the identity on first start; afterwards only check it (and sign a new device)."""
    response = await query_own_keys(http, user_id)
    device = _check_own_device(response, user_id, device_id, device_ed25519)
    server_master = master_key_of(response, user_id)
    keys = CrossSigningKeys.load(keys_path)

    if keys is None and server_master is None:
        keys = CrossSigningKeys.generate()
        await _upload_with_uia(http, user_id, password, keys.device_signing_upload_body(user_id))
        keys.save(keys_path)
        await _sign_device(http, keys, user_id, device_id, device)
        logger.info("Created the bot's cross-signing identity")
        return IdentityResult(IdentityState.CREATED, keys.master_public)

    if keys is None:
        raise IdentityError(
            "the homeserver has cross-signing keys for the bot but the bot does not have their "
            f"private keys ({keys_path} is missing); {RESET_HINT}")
    if server_master != keys.master_public:
        what = "no cross-signing keys" if server_master is None else "different cross-signing keys"
        raise IdentityError(
            f"the homeserver has {what} for the bot than the ones in {keys_path}; {RESET_HINT}")

    if is_device_cross_signed(response, user_id, device_id):
        return IdentityResult(IdentityState.ALREADY_SET_UP, keys.master_public)
    await _sign_device(http, keys, user_id, device_id, device)
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
    """Replace the identity: upload new keys (UIA), then keep them, then sign the device."""
    response = await query_own_keys(http, user_id)
    device = _check_own_device(response, user_id, device_id, device_ed25519)
    keys = CrossSigningKeys.generate()
    await _upload_with_uia(http, user_id, password, keys.device_signing_upload_body(user_id))
    if keys_path.exists():
        backup = keys_path.with_name(f"{keys_path.name}.replaced-{int(time.time())}")
        keys_path.replace(backup)
        backup.chmod(0o600)
    keys.save(keys_path)
    await _sign_device(http, keys, user_id, device_id, device)
    logger.warning("Replaced the bot's cross-signing identity")
    return IdentityResult(IdentityState.RESET, keys.master_public)
