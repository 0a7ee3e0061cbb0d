"""The bot's cross-signing keys and Matrix JSON signing (nio has no cross-signing).

Built only from what nio already depends on: Ed25519 signing from pycryptodome, signature
verification through vodozemac (as nio's own ``verify_json`` does), canonical JSON from
matrix-org's canonicaljson. No hand-written crypto primitives.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import vodozemac
from canonicaljson import encode_canonical_json
from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa
from unpaddedbase64 import decode_base64, encode_base64

JsonDict = dict[str, Any]
USAGES = ("master", "self_signing", "user_signing")


@dataclass(frozen=True)
class SigningKey:
    """One Ed25519 private key (32-byte seed) with its unpadded-base64 public key."""

    seed: bytes = field(repr=False)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(bytes(ECC.generate(curve="Ed25519").seed))

    @property
    def _key(self) -> Any:
        return ECC.construct(curve="Ed25519", seed=self.seed)

    @property
    def public(self) -> str:
        return encode_base64(self._key.public_key().export_key(format="raw"))

    @property
    def key_id(self) -> str:
        return f"ed25519:{self.public}"

    def sign(self, message: bytes) -> str:
        return encode_base64(eddsa.new(self._key, "rfc8032").sign(message))


@dataclass(frozen=True)
class CrossSigningKeys:
    """Master, self-signing and user-signing keys of one user (the bot)."""

    master: SigningKey
    self_signing: SigningKey
    user_signing: SigningKey

    @classmethod
    def generate(cls) -> CrossSigningKeys:
        return cls(SigningKey.generate(), SigningKey.generate(), SigningKey.generate())

    @property
    def master_public(self) -> str:
        return self.master.public

    @classmethod
    def load(cls, path: Path) -> CrossSigningKeys | None:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return cls(*(SigningKey(decode_base64(raw[usage])) for usage in USAGES))

    def save(self, path: Path) -> None:
        """Write atomically with mode 0600 (the file is the bot's identity)."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = {usage: encode_base64(getattr(self, usage).seed) for usage in USAGES}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".cross-signing-")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        os.chmod(path, 0o600)

    # -- objects to upload --------------------------------------------------------------------

    def key_object(self, user_id: str, usage: str) -> JsonDict:
        key: SigningKey = getattr(self, usage)
        obj: JsonDict = {"user_id": user_id, "usage": [usage], "keys": {key.key_id: key.public}}
        if usage != "master":
            obj = sign_json(obj, user_id, self.master.key_id, self.master)
        return obj

    def device_signing_upload_body(self, user_id: str) -> JsonDict:
        """Body of ``POST /keys/device_signing/upload`` (sub-keys signed by the master key)."""
        return {
            "master_key": self.key_object(user_id, "master"),
            "self_signing_key": self.key_object(user_id, "self_signing"),
            "user_signing_key": self.key_object(user_id, "user_signing"),
        }

    def sign_device(self, user_id: str, device_keys: JsonDict) -> JsonDict:
        """Our device keys (as the server has them) with our self-signing signature added."""
        obj = {k: v for k, v in device_keys.items() if k != "unsigned"}
        return sign_json(obj, user_id, self.self_signing.key_id, self.self_signing)

    def sign_master_key(self, user_id: str, other_master_key: JsonDict) -> JsonDict:
        """Another user's master key signed with our user-signing key (we verified them)."""
        obj = {k: v for k, v in other_master_key.items() if k != "unsigned"}
        return sign_json(obj, user_id, self.user_signing.key_id, self.user_signing)


def canonical_json(obj: JsonDict) -> bytes:
    """Canonical JSON of ``obj`` without ``signatures`` and ``unsigned`` (what gets signed)."""
    return bytes(encode_canonical_json(
        {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}))


def sign_json(obj: JsonDict, user_id: str, key_id: str, key: SigningKey) -> JsonDict:
    """A copy of ``obj`` with our signature merged into ``signatures[user_id][key_id]``."""
    signed = copy.deepcopy(obj)
    signature = key.sign(canonical_json(obj))
    signed.setdefault("signatures", {}).setdefault(user_id, {})[key_id] = signature
    return signed


def verify_signed_json(obj: JsonDict, user_id: str, key_id: str, public_key: str) -> bool:
    """True only if ``obj`` carries a valid signature by ``public_key`` under that key ID."""
    try:
        signature = obj["signatures"][user_id][key_id]
        vodozemac.Ed25519PublicKey.from_base64(public_key).verify_signature(
            canonical_json(obj), vodozemac.Ed25519Signature.from_base64(signature))
    except (KeyError, TypeError, AttributeError, ValueError):
        # vodozemac's KeyException and SignatureException are ValueErrors.
        return False
    return True


def fingerprint(public_key: str) -> str:
    """The key in blocks of four, the way operators publish and people compare it."""
    return " ".join(public_key[i:i + 4] for i in range(0, len(public_key), 4))


# -- reading /keys/query responses ------------------------------------------------------------


def _single_key(obj: JsonDict | None) -> str | None:
    if not isinstance(obj, dict):
        return None
    keys = obj.get("keys")
    if not isinstance(keys, dict) or len(keys) != 1:
        return None
    (key_id, public), = keys.items()
    return public if key_id == f"ed25519:{public}" else None


def master_key_of(response: JsonDict, user_id: str) -> str | None:
    return _single_key(response.get("master_keys", {}).get(user_id))


def self_signing_key_of(response: JsonDict, user_id: str) -> str | None:
    """The user's self-signing key, only if it is validly signed by their master key."""
    master = master_key_of(response, user_id)
    ssk_obj = response.get("self_signing_keys", {}).get(user_id)
    ssk = _single_key(ssk_obj)
    if master is None or ssk is None:
        return None
    if not verify_signed_json(ssk_obj, user_id, f"ed25519:{master}", master):
        return None
    return ssk


def is_device_cross_signed(response: JsonDict, user_id: str, device_id: str) -> bool:
    """The device keys carry a valid signature by the user's (master-signed) self-signing key."""
    ssk = self_signing_key_of(response, user_id)
    device = response.get("device_keys", {}).get(user_id, {}).get(device_id)
    if ssk is None or not isinstance(device, dict):
        return False
    return verify_signed_json(device, user_id, f"ed25519:{ssk}", ssk)
