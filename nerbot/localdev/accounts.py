"""Build Matrix accounts in precise end-to-end-encryption states, fast.

Why: the bot's decisions depend on *other* users' E2EE state (devices with or without keys,
cross-signing, which devices are cross-signed, forged signatures, key backups, secret storage).
Driving real clients into each of those states is slow and imprecise, so this module talks to
the client-server API directly and produces exactly the state a test or benchmark asks for.

These accounts are *state*, not chatting clients: device keys are correctly self-signed with
real Ed25519 keys (``SigningKey``, pycryptodome), but the curve25519 identity keys and the
backup's public key are random 32-byte values, no one-time keys are uploaded, and nothing here
can run Olm or Megolm. Use ``E2EEPeer`` when an account has to send or read encrypted messages.

Everything is synchronous over :meth:`LocalSynapse.request` (urllib): asyncio tests call it
through ``asyncio.to_thread``, benchmarks from threads (:meth:`AccountBuilder.build_many`).
"""

from __future__ import annotations

import base64
import logging
import random
import secrets
import string
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from unpaddedbase64 import encode_base64

from nerbot.localdev.synapse import LocalSynapse, SynapseError
from nerbot.matrix.crosssigning import (
    CrossSigningKeys,
    JsonDict,
    SigningKey,
    sign_json,
    signatures_upload_body,
)

logger = logging.getLogger(__name__)

DEVICE_ALGORITHMS = ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"]
BACKUP_ALGORITHM = "m.megolm_backup.v1.curve25519-aes-sha2"
SECRET_STORAGE_ALGORITHM = "m.secret_storage.v1.aes-hmac-sha2"

FORGED_VIA_SIGNATURES_UPLOAD = "signatures_upload"
"""Route name: Synapse stored a forged signature sent through ``/keys/signatures/upload``."""
FORGED_VIA_DEVICE_KEYS = "device_keys_upload"
"""Route name: the forged signature was embedded in the device's own ``/keys/upload``."""

_CLIENT = "/_matrix/client/v3"


class AccountBuildError(RuntimeError):
    """The server accepted a request but did not do what was asked (e.g. signature failures)."""


@dataclass
class BuiltDevice:
    """One logged-in device; ``device_keys`` is the signed object uploaded (None if not)."""

    device_id: str
    access_token: str = field(repr=False)
    signing_key: SigningKey
    keys_uploaded: bool
    device_keys: JsonDict | None = field(default=None, repr=False)
    cross_signed: bool = False


@dataclass
class BuiltAccount:
    """A registered account and everything the builder did to it."""

    user_id: str
    localpart: str
    password: str = field(repr=False)
    devices: dict[str, BuiltDevice] = field(default_factory=dict)
    cross_signing: CrossSigningKeys | None = None
    backup_version: str | None = None
    secret_storage_key_id: str | None = None


def _random_curve25519() -> str:
    """A stand-in curve25519 public key: never used for Olm (see the module docstring)."""
    return encode_base64(secrets.token_bytes(32))


def _padded_b64(raw: bytes) -> str:
    # Element writes secret-storage iv/mac/ciphertext as padded standard base64.
    return base64.b64encode(raw).decode()


class AccountBuilder:
    """Creates accounts on a :class:`LocalSynapse` and puts them into chosen E2EE states.

    Thread-safe for distinct accounts: every method only touches the account it is given.
    """

    def __init__(self, synapse: LocalSynapse) -> None:
        self.synapse = synapse

    # -- plumbing ------------------------------------------------------------------------------

    def _token(self, account: BuiltAccount) -> str:
        """Any live access token of the account (an error if it has no device)."""
        for device in account.devices.values():
            return device.access_token
        raise AccountBuildError(f"{account.user_id} has no logged-in device; add_device first")

    def _with_token(self, account: BuiltAccount, call: Any) -> Any:
        """Run ``call(token)`` with a device token, or a throwaway login logged out afterwards."""
        if account.devices:
            return call(self._token(account))
        login = self.synapse.login(account.user_id, account.password, "nerbot-accounts-tmp")
        token = str(login["access_token"])
        try:
            return call(token)
        finally:
            self.synapse.logout(token)

    def _post_signatures(self, token: str, objects: list[JsonDict]) -> JsonDict:
        result: JsonDict = self.synapse.request(
            "POST", f"{_CLIENT}/keys/signatures/upload", signatures_upload_body(objects),
            token=token)
        return result

    # -- accounts and devices ------------------------------------------------------------------

    def create(self, localpart: str | None = None, password: str | None = None,
               admin: bool = False) -> BuiltAccount:
        """Register an account (shared-secret admin API); it has no device afterwards."""
        localpart = localpart or f"acct-{uuid.uuid4().hex[:10]}"
        password = password or secrets.token_urlsafe(12)
        user_id = self.synapse.register_user(localpart, password, admin=admin)
        return BuiltAccount(user_id=user_id, localpart=localpart, password=password)

    def add_device(self, account: BuiltAccount, display_name: str = "device",
                   upload_keys: bool = True, device_id: str | None = None) -> BuiltDevice:
        """Log in a new device and, by default, upload correctly self-signed device keys."""
        body: JsonDict = {"type": "m.login.password",
                          "identifier": {"type": "m.id.user", "user": account.user_id},
                          "password": account.password,
                          "initial_device_display_name": display_name}
        if device_id is not None:
            body["device_id"] = device_id
        login = self.synapse.request("POST", f"{_CLIENT}/login", body)
        device = BuiltDevice(device_id=str(login["device_id"]),
                             access_token=str(login["access_token"]),
                             signing_key=SigningKey.generate(), keys_uploaded=False)
        account.devices[device.device_id] = device
        if upload_keys:
            self.upload_device_keys(account, device.device_id)
        return device

    def device_keys_object(self, account: BuiltAccount, device: BuiltDevice) -> JsonDict:
        """The device's ``device_keys`` object, self-signed by its own Ed25519 key."""
        did = device.device_id
        unsigned: JsonDict = {
            "user_id": account.user_id,
            "device_id": did,
            "algorithms": list(DEVICE_ALGORITHMS),
            "keys": {f"curve25519:{did}": _random_curve25519(),
                     f"ed25519:{did}": device.signing_key.public},
        }
        return sign_json(unsigned, account.user_id, f"ed25519:{did}", device.signing_key)

    def upload_device_keys(self, account: BuiltAccount, device_id: str) -> None:
        """``POST /keys/upload`` of the device's self-signed keys (no one-time keys)."""
        device = account.devices[device_id]
        keys = self.device_keys_object(account, device)
        self.synapse.request("POST", f"{_CLIENT}/keys/upload", {"device_keys": keys},
                             token=device.access_token)
        device.device_keys = keys
        device.keys_uploaded = True

    def logout_device(self, account: BuiltAccount, device_id: str) -> None:
        """Log the device out, which deletes it and its keys on the server."""
        device = account.devices.pop(device_id)
        self.synapse.logout(device.access_token)

    # -- cross-signing -------------------------------------------------------------------------

    def set_up_cross_signing(self, account: BuiltAccount) -> CrossSigningKeys:
        """Generate and publish master, self-signing and user-signing keys.

        Synapse 1.163 accepts the first upload without user-interactive auth; a 401 (e.g. keys
        already exist) is answered with password auth, which replaces the identity.
        """
        keys = CrossSigningKeys.generate()
        body = keys.device_signing_upload_body(account.user_id)
        path = f"{_CLIENT}/keys/device_signing/upload"

        def upload(token: str) -> None:
            try:
                self.synapse.request("POST", path, body, token=token)
            except SynapseError as exc:
                session = exc.body.get("session") if isinstance(exc.body, dict) else None
                if exc.status != 401 or not isinstance(session, str):
                    raise
                logger.debug("Cross-signing upload for %s needs auth; using the password",
                             account.user_id)
                auth = {"type": "m.login.password", "session": session,
                        "identifier": {"type": "m.id.user", "user": account.user_id},
                        "password": account.password}
                self.synapse.request("POST", path, {**body, "auth": auth}, token=token)

        self._with_token(account, upload)
        account.cross_signing = keys
        for device in account.devices.values():
            device.cross_signed = False  # a new self-signing key vouches for nothing yet
        return keys

    def sign_device(self, account: BuiltAccount, device_id: str) -> None:
        """Cross-sign one device with the account's self-signing key."""
        keys = account.cross_signing
        device = account.devices[device_id]
        if keys is None:
            raise AccountBuildError(f"{account.user_id} has no cross-signing keys")
        if device.device_keys is None:
            raise AccountBuildError(f"device {device_id} of {account.user_id} has no keys")
        signed = keys.sign_device(device.device_keys)
        result = self._post_signatures(device.access_token, [signed])
        if result.get("failures"):
            raise AccountBuildError(f"signing {account.user_id}/{device_id} failed: "
                                    f"{result['failures']}")
        device.cross_signed = True

    def forge_device_signature(self, account: BuiltAccount, device_id: str) -> str:
        """Attach a signature under the self-signing key's ID made by another key.

        First tried through ``/keys/signatures/upload``; Synapse verifies signatures there and
        answers 200 with ``failures[user][device] = {"errcode": "M_INVALID_SIGNATURE"}``, storing
        nothing. So the device then re-uploads its own device keys (``/keys/upload``) with the
        forged signature embedded: Synapse stores device keys without checking signatures other
        than its own format checks, so ``/keys/query`` serves it to everyone. Returns the route
        that worked (:data:`FORGED_VIA_SIGNATURES_UPLOAD` or :data:`FORGED_VIA_DEVICE_KEYS`).
        """
        keys = account.cross_signing
        device = account.devices[device_id]
        if keys is None or device.device_keys is None:
            raise AccountBuildError(f"{account.user_id}/{device_id} needs cross-signing and keys")
        impostor = SigningKey.generate()
        forged = sign_json(device.device_keys, account.user_id, keys.self_signing.key_id,
                           impostor)
        result = self._post_signatures(device.access_token, [forged])
        failures = result.get("failures")
        if not failures:
            logger.info("Synapse stored a forged signature via /keys/signatures/upload")
            device.cross_signed = False
            return FORGED_VIA_SIGNATURES_UPLOAD
        logger.debug("Synapse refused the forged signature upload: %s", failures)
        self.synapse.request("POST", f"{_CLIENT}/keys/upload", {"device_keys": forged},
                             token=device.access_token)
        device.device_keys = forged
        device.cross_signed = False
        return FORGED_VIA_DEVICE_KEYS

    # -- key backup, account data, secret storage ----------------------------------------------

    def create_backup(self, account: BuiltAccount) -> str:
        """Create a server-side key backup version (random public key); returns the version.

        ``auth_data`` is signed by a device key (the first with uploaded keys) and, as Element
        does, by the master key when the account has cross-signing.
        """
        auth: JsonDict = {"public_key": _random_curve25519()}
        for device in account.devices.values():
            if device.keys_uploaded:
                auth = sign_json(auth, account.user_id, f"ed25519:{device.device_id}",
                                 device.signing_key)
                break
        if account.cross_signing is not None:
            master = account.cross_signing.master
            auth = sign_json(auth, account.user_id, master.key_id, master)
        body = {"algorithm": BACKUP_ALGORITHM, "auth_data": auth}
        result = self._with_token(account, lambda token: self.synapse.request(
            "POST", f"{_CLIENT}/room_keys/version", body, token=token))
        version = str(result["version"])
        account.backup_version = version
        return version

    def delete_backup(self, account: BuiltAccount, version: str) -> None:
        """Delete a backup version (``GET /room_keys/version`` is 404 afterwards)."""
        path = self.synapse.api_path(f"{_CLIENT}/room_keys/version/{{}}", version)
        self._with_token(account, lambda token: self.synapse.request("DELETE", path, token=token))
        if account.backup_version == version:
            account.backup_version = None

    def set_account_data(self, account: BuiltAccount, event_type: str,
                         content: JsonDict) -> None:
        """Set one global account data event."""
        path = self.synapse.api_path(f"{_CLIENT}/user/{{}}/account_data/{{}}",
                                     account.user_id, event_type)
        self._with_token(account, lambda token: self.synapse.request(
            "PUT", path, content, token=token))

    def set_up_secret_storage(self, account: BuiltAccount, store_secrets: bool = True) -> str:
        """Create a default secret storage key as Element does; returns its key ID.

        Writes ``m.secret_storage.key.<id>`` (aes-hmac-sha2 with random iv/mac) and
        ``m.secret_storage.default_key``; with ``store_secrets`` and cross-signing, also the
        three ``m.cross_signing.*`` secrets as (random, undecryptable) encrypted blobs, since
        Element stores those alongside. Nothing here can be decrypted by anyone.
        """
        alphabet = string.ascii_letters + string.digits
        key_id = "".join(secrets.choice(alphabet) for _ in range(32))
        description: JsonDict = {"name": "nerbot test key", "algorithm": SECRET_STORAGE_ALGORITHM,
                                 "iv": _padded_b64(secrets.token_bytes(16)),
                                 "mac": _padded_b64(secrets.token_bytes(32))}
        self.set_account_data(account, f"m.secret_storage.key.{key_id}", description)
        self.set_account_data(account, "m.secret_storage.default_key", {"key": key_id})
        if store_secrets and account.cross_signing is not None:
            for usage in ("master", "self_signing", "user_signing"):
                blob = {"iv": _padded_b64(secrets.token_bytes(16)),
                        "ciphertext": _padded_b64(secrets.token_bytes(48)),
                        "mac": _padded_b64(secrets.token_bytes(32))}
                self.set_account_data(account, f"m.cross_signing.{usage}",
                                      {"encrypted": {key_id: blob}})
        account.secret_storage_key_id = key_id
        return key_id

    # -- rooms ---------------------------------------------------------------------------------

    def join_room(self, account: BuiltAccount, room_id: str) -> None:
        """Join a room the account is invited to (or a public one)."""
        path = self.synapse.api_path(f"{_CLIENT}/join/{{}}", room_id)
        self._with_token(account, lambda token: self.synapse.request(
            "POST", path, {}, token=token))

    # -- many at once --------------------------------------------------------------------------

    @staticmethod
    def plan_many(n: int, seed: int = 0) -> list[tuple[int, bool, list[bool]]]:
        """The deterministic mix for :meth:`build_many`: (devices, cross-signing, signed flags).

        Each user has 1-3 devices; about 60% have cross-signing; of their devices about 80%
        are cross-signed. Users without cross-signing have no signed devices.
        """
        rng = random.Random(seed)
        plan = []
        for _ in range(n):
            devices = rng.randint(1, 3)
            cross = rng.random() < 0.6
            signed = [cross and rng.random() < 0.8 for _ in range(devices)]
            plan.append((devices, cross, signed))
        return plan

    def equip(self, account: BuiltAccount, devices: int, cross: bool, signed: list[bool],
              device_label: str) -> None:
        """Give an account one entry of the :meth:`plan_many` mix: ``devices`` devices with
        keys ("<device_label> 0", …) and, with ``cross``, a cross-signing identity that
        signs the devices flagged in ``signed``."""
        for d in range(devices):
            self.add_device(account, display_name=f"{device_label} {d}")
        if cross:
            self.set_up_cross_signing(account)
            for device_id, flag in zip(list(account.devices), signed, strict=True):
                if flag:
                    self.sign_device(account, device_id)

    def build_many(self, n: int, seed: int = 0, workers: int = 8,
                   prefix: str = "bench") -> list[BuiltAccount]:
        """Build ``n`` accounts in the :meth:`plan_many` mix, ``workers`` users in parallel.

        The mix depends only on ``seed``; localparts get a random run tag so repeated calls on
        one server never collide. Accounts are returned in plan order.
        """
        plan = self.plan_many(n, seed)
        run = uuid.uuid4().hex[:6]

        def build(index: int) -> BuiltAccount:
            devices, cross, signed = plan[index]
            account = self.create(f"{prefix}-{run}-{index:05d}")
            self.equip(account, devices, cross, signed, device_label=f"{prefix} device")
            return account

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            accounts = list(pool.map(build, range(n)))
        seconds = time.monotonic() - started
        logger.info("Built %d accounts in %.2f s (%.1f ms per user, %d workers)", n, seconds,
                    1000 * seconds / max(1, n), workers)
        return accounts
