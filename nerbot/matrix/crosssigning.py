"""The bot's own cross-signing identity and Matrix signed JSON.

Why this exists: matrix-nio has no cross-signing at all, yet modern clients (Element on Rust
crypto) treat a device that is not cross-signed as unverified, and cannot even start a user
verification with an account that has no master key. So the bot keeps its own master,
self-signing and user-signing keys, publishes them, and signs its device with them.

Built only from libraries nio already brings, with no hand-written crypto: Ed25519 signing from
pycryptodome (RFC 8032), signature verification through vodozemac (exactly as nio's
``OlmMachine.verify_json`` does), canonical JSON from matrix-org's canonicaljson, unpadded base64
from matrix-org's unpaddedbase64. Everything here is pure except the key file's I/O.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeGuard

import vodozemac
from canonicaljson import encode_canonical_json
from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa
from unpaddedbase64 import decode_base64, encode_base64

from nerbot.errors import IdentityError

logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]

USAGES: tuple[str, str, str] = ("master", "self_signing", "user_signing")
"""The three cross-signing key usages, also the field names in the key file."""

SEED_BYTES = 32
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


@dataclass(frozen=True)
class SigningKey:
    """One Ed25519 private key, kept as its 32-byte RFC 8032 seed.

    The seed never appears in ``repr`` (so never in logs or tracebacks); only the public key does.
    """

    seed: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.seed) != SEED_BYTES:
            raise ValueError(f"an Ed25519 seed has {SEED_BYTES} bytes, not {len(self.seed)}")

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(bytes(ECC.generate(curve="Ed25519").seed))

    @cached_property
    def _ecc(self) -> Any:
        # Deriving the key from the seed is the costly part of each signature: once per key.
        return ECC.construct(curve="Ed25519", seed=self.seed)

    @cached_property
    def public(self) -> str:
        """The public key as unpadded base64 (the form Matrix uses everywhere)."""
        return encode_base64(self._ecc.public_key().export_key(format="raw"))

    @property
    def key_id(self) -> str:
        """``ed25519:<public>``: cross-signing keys are named by their own public key."""
        return f"ed25519:{self.public}"

    def sign(self, message: bytes) -> str:
        """An Ed25519 signature of ``message`` as unpadded base64."""
        return encode_base64(eddsa.new(self._ecc, "rfc8032").sign(message))

    def __repr__(self) -> str:
        return f"SigningKey({self.key_id})"


@dataclass(frozen=True)
class CrossSigningKeys:
    """The bot's master, self-signing and user-signing private keys.

    The master key is the identity people verify; the self-signing key vouches for the bot's own
    devices; the user-signing key vouches for other users the bot has verified. Losing the file
    means the identity has to be replaced (everyone who verified the bot must verify it again).
    """

    master: SigningKey
    self_signing: SigningKey
    user_signing: SigningKey

    @classmethod
    def generate(cls) -> CrossSigningKeys:
        return cls(SigningKey.generate(), SigningKey.generate(), SigningKey.generate())

    # -- public halves ------------------------------------------------------------------------

    @property
    def master_public(self) -> str:
        return self.master.public

    @property
    def self_signing_public(self) -> str:
        return self.self_signing.public

    @property
    def user_signing_public(self) -> str:
        return self.user_signing.public

    # -- the key file -------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path) -> CrossSigningKeys | None:
        """The keys from ``path``, or None if there is no such file.

        Raises:
            IdentityError: the file exists but is not a key file (never guessed around: a
                damaged identity needs an operator, not a silently new one).
        """
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IdentityError(f"cannot read the cross-signing key file {path}: "
                                f"{type(exc).__name__}") from None
        try:
            keys = cls(*(SigningKey(decode_base64(raw[usage])) for usage in USAGES))
        except (KeyError, TypeError, ValueError):
            # No exception text: it could quote key material.
            raise IdentityError(f"{path} is not a valid cross-signing key file (expected "
                                f"unpadded-base64 32-byte seeds for {', '.join(USAGES)})"
                                ) from None
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            logger.warning("The cross-signing key file %s is readable by others (mode %o); "
                           "it should be 0600", path, mode)
        return keys

    def save(self, path: Path) -> None:
        """Write the seeds to ``path`` atomically, readable by the owner only (0600).

        A temporary file in the same directory is created 0600 from the start, synced, and
        renamed over ``path``, so a crash never leaves a half-written identity behind.
        """
        parent = path.parent
        parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = json.dumps({usage: encode_base64(getattr(self, usage).seed) for usage in USAGES})
        tmp = parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                os.fchmod(fh.fileno(), 0o600)  # the umask may have dropped bits; make it exact
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.chmod(path, 0o600)
        _fsync_dir(parent)

    # -- objects to upload --------------------------------------------------------------------

    def key_object(self, user_id: str, usage: str) -> JsonDict:
        """The public cross-signing key object for ``usage`` (sub-keys signed by the master)."""
        if usage not in USAGES:
            raise ValueError(f"unknown cross-signing key usage {usage!r}")
        key: SigningKey = getattr(self, usage)
        obj: JsonDict = {"user_id": user_id, "usage": [usage], "keys": {key.key_id: key.public}}
        if usage != "master":
            obj = sign_json(obj, user_id, self.master.key_id, self.master)
        return obj

    def device_signing_upload_body(self, user_id: str) -> JsonDict:
        """The body of ``POST /keys/device_signing/upload`` (without the ``auth`` part)."""
        return {
            "master_key": self.key_object(user_id, "master"),
            "self_signing_key": self.key_object(user_id, "self_signing"),
            "user_signing_key": self.key_object(user_id, "user_signing"),
        }

    def sign_device(self, device_keys: Mapping[str, Any]) -> JsonDict:
        """One of our devices' keys, as /keys/query returned them, signed by our self-signing key.

        ``unsigned`` is dropped and every existing signature (the device's own) kept: the server
        compares the rest with its stored copy and rejects any difference.
        """
        user_id = device_keys.get("user_id")
        if not isinstance(user_id, str) or not isinstance(device_keys.get("device_id"), str):
            raise ValueError("device keys need a user_id and a device_id")
        obj = {k: v for k, v in device_keys.items() if k != "unsigned"}
        return sign_json(obj, user_id, self.self_signing.key_id, self.self_signing)

    def sign_master_key(self, other_master_key: Mapping[str, Any], user_id: str) -> JsonDict:
        """Another user's master key signed with our user-signing key: "the bot verified them".

        Args:
            other_master_key: their master key object as /keys/query returned it.
            user_id: the bot's own user ID (the signer), not theirs.
        """
        obj = {k: v for k, v in other_master_key.items() if k != "unsigned"}
        return sign_json(obj, user_id, self.user_signing.key_id, self.user_signing)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename durable; not every filesystem lets a directory be opened for this.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- signed JSON (appendix "Signing JSON") ----------------------------------------------------


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    """The bytes a Matrix signature covers: canonical JSON without ``signatures``/``unsigned``."""
    return bytes(encode_canonical_json(
        {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    ))


def sign_json(obj: Mapping[str, Any], user_id: str, key_id: str, private_key: SigningKey
              ) -> JsonDict:
    """A copy of ``obj`` with a signature added under ``signatures[user_id][key_id]``.

    Existing signatures (other keys, other users) are kept; ``obj`` is not modified.
    """
    signed: JsonDict = copy.deepcopy(dict(obj))
    signature = private_key.sign(canonical_json(obj))
    signatures = signed.get("signatures")
    if not isinstance(signatures, dict):
        signatures = signed["signatures"] = {}
    by_user = signatures.get(user_id)
    if not isinstance(by_user, dict):
        by_user = signatures[user_id] = {}
    by_user[key_id] = signature
    return signed


def parse_public_key(public_key_b64: object) -> Any | None:
    """A vodozemac Ed25519 key, or None unless it is canonical unpadded base64 of 32 bytes."""
    if not _is_unpadded_base64_of(public_key_b64, PUBLIC_KEY_BYTES):
        return None
    try:
        return vodozemac.Ed25519PublicKey.from_base64(public_key_b64)
    except vodozemac.KeyException:
        return None


def verify_signature(message: bytes, signature: object, public_key: Any) -> bool:
    """Check one Ed25519 signature over ``message`` with a parsed key; never raises."""
    if not _is_unpadded_base64_of(signature, SIGNATURE_BYTES):
        return False
    try:
        public_key.verify_signature(message, vodozemac.Ed25519Signature.from_base64(signature))
    except (vodozemac.SignatureException, vodozemac.KeyException, ValueError):
        return False
    return True


def verify_signed_json(obj: Any, user_id: str, key_id: str, public_key_b64: str) -> bool:
    """True only if ``obj`` carries a valid signature by ``public_key_b64`` under ``key_id``.

    Fails closed and never raises: a missing signature, malformed base64, a key of the wrong
    length, a wrong key or changed content are all simply False.
    """
    try:
        signature = obj["signatures"][user_id][key_id]
        key = parse_public_key(public_key_b64)
        if key is None:
            return False
        return verify_signature(canonical_json(obj), signature, key)
    except (KeyError, TypeError, AttributeError, ValueError, RecursionError):
        # Not a JSON object of the expected shape, or not encodable as canonical JSON.
        return False


def _is_unpadded_base64_of(value: object, length: int) -> TypeGuard[str]:
    """Whether ``value`` is canonical unpadded base64 of exactly ``length`` bytes.

    Checked before anything reaches vodozemac: vodozemac 0.10 *panics* (a BaseException, which
    no ``except Exception`` stops) on a base64 public key of 33 bytes, and keys come from other
    users via the homeserver.
    """
    if not isinstance(value, str) or not value.isascii():
        return False
    try:
        raw = decode_base64(value)
    except ValueError:  # binascii.Error
        return False
    return len(raw) == length and encode_base64(raw) == value


def signatures_upload_body(objects: Iterable[Mapping[str, Any]]) -> JsonDict:
    """The body of ``POST /keys/signatures/upload`` for already signed objects.

    Each object is filed under its owner's user ID, then under its device ID (device keys) or,
    for a cross-signing key, under its public key, as the endpoint expects.
    """
    body: JsonDict = {}
    for obj in objects:
        user_id = obj.get("user_id")
        if not isinstance(user_id, str):
            raise ValueError("a signed object needs a user_id")
        device_id = obj.get("device_id")
        if isinstance(device_id, str):
            name = device_id
        else:
            public = _single_public_key(obj)
            if public is None:
                raise ValueError("a signed object is neither device keys nor a cross-signing key")
            name = public
        body.setdefault(user_id, {})[name] = dict(obj)
    return body


def fingerprint(public_b64: str) -> str:
    """The key in space-separated blocks of four, the form operators publish and people compare."""
    return " ".join(public_b64[i:i + 4] for i in range(0, len(public_b64), 4))


# -- reading /keys/query responses ------------------------------------------------------------


def _single_public_key(obj: Any) -> str | None:
    """The one ``ed25519:<pub>: <pub>`` entry of a cross-signing key object, if well formed.

    Only a real 32-byte key is returned, so callers may hand it to vodozemac safely.
    """
    if not isinstance(obj, Mapping):
        return None
    keys = obj.get("keys")
    if not isinstance(keys, Mapping) or len(keys) != 1:
        return None
    ((key_id, public),) = keys.items()
    if not _is_unpadded_base64_of(public, PUBLIC_KEY_BYTES) or key_id != f"ed25519:{public}":
        return None
    return public


def _cross_signing_key(
    response: Mapping[str, Any], section: str, user_id: str, usage: str
) -> tuple[str, Mapping[str, Any]] | None:
    by_user = response.get(section)
    obj = by_user.get(user_id) if isinstance(by_user, Mapping) else None
    if not isinstance(obj, Mapping) or obj.get("user_id") != user_id:
        return None
    usages = obj.get("usage")
    if not isinstance(usages, list) or usage not in usages:
        return None
    public = _single_public_key(obj)
    return None if public is None else (public, obj)


def master_key_of(response: Mapping[str, Any], user_id: str) -> str | None:
    """The user's master public key in a /keys/query response (None: none, or malformed)."""
    found = _cross_signing_key(response, "master_keys", user_id, "master")
    return None if found is None else found[0]


Verifier = Callable[[Any, str, str, str], bool]


def self_signing_key_of(
    response: Mapping[str, Any], user_id: str, verify: Verifier | None = None
) -> str | None:
    """The user's self-signing public key, only if it is validly signed by their master key.

    An unsigned or wrongly signed self-signing key vouches for nothing, so it is reported as
    absent rather than handed to a caller who might trust it.
    """
    master = master_key_of(response, user_id)
    found = _cross_signing_key(response, "self_signing_keys", user_id, "self_signing")
    if master is None or found is None:
        return None
    public, obj = found
    if not (verify or verify_signed_json)(obj, user_id, f"ed25519:{master}", master):
        return None
    return public


def device_keys_of(response: Mapping[str, Any], user_id: str, device_id: str
                   ) -> Mapping[str, Any] | None:
    """One device's keys from a /keys/query response, only if they name that user and device."""
    by_user = response.get("device_keys")
    devices = by_user.get(user_id) if isinstance(by_user, Mapping) else None
    device = devices.get(device_id) if isinstance(devices, Mapping) else None
    if (not isinstance(device, Mapping) or device.get("user_id") != user_id
            or device.get("device_id") != device_id):
        return None
    return device


def is_device_cross_signed(
    response: Mapping[str, Any], user_id: str, device_id: str, verify: Verifier | None = None
) -> bool:
    """Whether the device's keys carry a valid signature by the user's self-signing key.

    Checked cryptographically along the whole chain: master → self-signing key → device. (The
    master key itself is only trustworthy once someone verified it; that is not decided here.)
    """
    check = verify or verify_signed_json
    ssk = self_signing_key_of(response, user_id, check)
    device = device_keys_of(response, user_id, device_id)
    if ssk is None or device is None:
        return False
    return check(device, user_id, f"ed25519:{ssk}", ssk)
