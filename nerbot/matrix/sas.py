"""SAS (emoji) verification maths that interoperates with Element's crypto (matrix-rust-sdk).

``SasExchange`` is one ``m.sas.v1`` exchange, written against the spec on vodozemac's ``Sas`` and
``EstablishedSas`` (the objects nio itself uses), not on nio's ``Sas``. The handshake order and
its timeouts belong to the pure machine in ``nerbot.domain.verification``; this object only
refuses what its own maths cannot do yet (their key before the methods are agreed, a MAC before
the keys) with the spec's cancel codes. Its API speaks event *contents*, so the same object
serves the to-device and the in-room transports (which add ``transaction_id`` or
``m.relates_to`` themselves).

nio 0.26's ``nio.crypto.Sas`` against the spec and Element, and our fix. 1–3 break every
verification with Element (measured against matrix-rust-sdk: other emoji, or ``m.key_mismatch``;
nio talking to nio hides them, as both sides share the bug); 4–6 are gaps against any peer:

1. Emoji: nio re-splits vodozemac's ``SasBytes.emoji_indices`` as if they were the raw HKDF
   bytes, but they already are the seven 6-bit indices (spec: the first 42 bits of the 6 SAS
   bytes), so nio shows other emoji than Element. Fix: use the indices as they are.
2. MAC method: nio announces and accepts only ``hkdf-hmac-sha256`` (whose wire format is
   libolm's broken base64, vodozemac's ``calculate_mac_invalid_base64``) yet computes
   ``calculate_mac``, so Element rejects its MAC. Fix: offer and prefer ``hkdf-hmac-sha256.v2``
   (``calculate_mac``); the legacy method, computed as libolm did, only if nothing else is offered.
3. Commitment: nio sends ``sha256(key ‖ canonical JSON of the start).hexdigest()``; the spec and
   Element use the digest in unpadded base64. Fix: ``commitment_of``, over the start as sent.
4. Cross-signing: nio MACs only the device key and ignores a master key in the other side's MAC,
   so the users' identities never get verified. Fix: MAC our master key (key ID
   ``ed25519:<public key>``) and check theirs when we know it.
5. Failed MAC: nio's ``receive_mac_event`` cancels a MAC that covers no device key, then sets
   ``state = mac_received`` anyway, so ``verified`` can become true. Fix: verified only after a
   MAC whose key-ID list and every known key matched, including their device key.
6. MAC comparison: nio compares MACs with ``!=``. Fix: ``hmac.compare_digest``.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any, Protocol

import vodozemac
from canonicaljson import encode_canonical_json
from unpaddedbase64 import encode_base64

from nerbot.domain import verification as v

JsonDict = dict[str, Any]

SAS_METHOD = v.SAS_V1
KEY_AGREEMENT_V2 = "curve25519-hkdf-sha256"  # Element offers nothing else; nor do we
HASH = "sha256"
MAC_V2 = "hkdf-hmac-sha256.v2"
MAC_LEGACY = "hkdf-hmac-sha256"  # libolm's broken base64; only if the peer offers nothing else
MAC_METHODS = [MAC_V2, MAC_LEGACY]
SAS_STRINGS = ["decimal", "emoji"]
MISMATCHED_COMMITMENT = "m.mismatched_commitment"


class OtherDevice(Protocol):
    """The device being verified, as the MAC needs it (nio's ``OlmDevice`` is one)."""

    @property
    def user_id(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def ed25519(self) -> str: ...


class Stage(enum.Enum):
    """How far the maths got; each incoming event is valid in exactly one stage."""

    CREATED = "created"      # nothing sent or received
    OFFERED = "offered"      # we sent the start; their accept is next
    AGREED = "agreed"        # methods and commitment settled; their key is next
    KEYS = "keys"            # shared secret established: SAS shown, their MAC is next
    MAC_OK = "mac_ok"        # their MAC was valid
    CANCELLED = "cancelled"


def _strings(value: object) -> list[str]:
    return [s for s in value if isinstance(s, str)] if isinstance(value, list) else []


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def commitment_of(public_key: str, start_content: Mapping[str, Any]) -> str:
    """Spec: unpadded base64 of SHA-256(public key ‖ canonical JSON of the start content)."""
    digest = hashlib.sha256(public_key.encode() + encode_canonical_json(dict(start_content)))
    return encode_base64(digest.digest())


class SasExchange:
    """The maths of one SAS exchange with one device of another user (or of our own user).

    Args:
        own_user, own_device, own_ed25519: our side; the MAC vouches for ``own_ed25519``.
        other: the device being verified (user ID, device ID, the Ed25519 key we expect).
        transaction_id: the request's transaction ID (in-room: the request's event ID).
        own_master_key, their_master_key: cross-signing master keys to MAC and to check.
    """

    def __init__(
        self,
        own_user: str,
        own_device: str,
        own_ed25519: str,
        other: OtherDevice,
        transaction_id: str,
        own_master_key: str | None = None,
        their_master_key: str | None = None,
    ) -> None:
        self.own_user, self.own_device, self.own_ed25519 = own_user, own_device, own_ed25519
        self.their_user, self.their_device = str(other.user_id), str(other.id)
        self.their_ed25519 = str(other.ed25519)
        self.transaction_id = transaction_id
        self.own_master_key = own_master_key
        self.their_master_key = their_master_key
        self._sas = vodozemac.Sas()
        self._established: vodozemac.EstablishedSas | None = None
        self._their_key = ""
        self.stage = Stage.CREATED
        self.we_started = False
        self.start_content: JsonDict | None = None
        self.commitment = ""
        self.mac_method = MAC_V2
        self.short_auth_string: list[str] = []
        self.sas_accepted = False
        self.verified_master_key: str | None = None
        self.cancel_code = ""
        self.cancel_reason = ""

    @property
    def public_key(self) -> str:
        return str(self._sas.public_key.to_base64())

    @property
    def canceled(self) -> bool:
        return self.stage is Stage.CANCELLED

    @property
    def verified(self) -> bool:
        """Their MAC was fully valid *and* our side accepted the SAS — never one alone."""
        return self.stage is Stage.MAC_OK and self.sas_accepted

    # -- starting -------------------------------------------------------------------------------

    def make_start(self, transport_fields: Mapping[str, Any]) -> JsonDict:
        """Our start content, exactly as it will be sent (the commitment covers these bytes)."""
        self._require_own(Stage.CREATED)
        content: JsonDict = {
            "from_device": self.own_device,
            "method": SAS_METHOD,
            "key_agreement_protocols": [KEY_AGREEMENT_V2],
            "hashes": [HASH],
            "message_authentication_codes": list(MAC_METHODS),
            "short_authentication_string": list(SAS_STRINGS),
            **transport_fields,
        }
        self.we_started = True
        self.start_content = content
        self.stage = Stage.OFFERED
        return content

    def receive_start(self, content: Mapping[str, Any]) -> None:
        """The other side started: pick the methods and commit to our key over their start."""
        if not self._expect(Stage.CREATED):
            return
        macs = _strings(content.get("message_authentication_codes"))
        strings = _strings(content.get("short_authentication_string"))
        if (content.get("method") != SAS_METHOD
                or KEY_AGREEMENT_V2 not in _strings(content.get("key_agreement_protocols"))
                or HASH not in _strings(content.get("hashes"))
                or not any(m in macs for m in MAC_METHODS) or "emoji" not in strings):
            self._cancel(v.UNKNOWN_METHOD)
            return
        self.start_content = dict(content)
        self.commitment = commitment_of(self.public_key, content)
        # The spec: hkdf-hmac-sha256.v2 MUST be used when both sides support it.
        self.mac_method = MAC_V2 if MAC_V2 in macs else MAC_LEGACY
        self.short_auth_string = [s for s in SAS_STRINGS if s in strings]
        self.stage = Stage.AGREED

    def make_accept(self) -> JsonDict:
        self._require_own(Stage.AGREED)
        if self.we_started:
            raise ValueError("we started this exchange: they accept, not we")
        return {
            "key_agreement_protocol": KEY_AGREEMENT_V2,
            "hash": HASH,
            "message_authentication_code": self.mac_method,
            "short_authentication_string": self.short_auth_string,
            "commitment": self.commitment,
        }

    def receive_accept(self, content: Mapping[str, Any]) -> None:
        if not self._expect(Stage.OFFERED):
            return
        strings = _strings(content.get("short_authentication_string"))
        mac_method = content.get("message_authentication_code")
        commitment = content.get("commitment")
        if (content.get("key_agreement_protocol") != KEY_AGREEMENT_V2
                or content.get("hash") != HASH or mac_method not in MAC_METHODS
                or "emoji" not in strings):
            self._cancel(v.UNKNOWN_METHOD)
            return
        if not isinstance(commitment, str):
            self._cancel(v.INVALID_MESSAGE)
            return
        self.commitment = commitment
        self.mac_method = mac_method
        self.short_auth_string = strings
        self.stage = Stage.AGREED

    # -- keys -----------------------------------------------------------------------------------

    def make_key(self) -> JsonDict:
        self._require_own(Stage.AGREED, Stage.KEYS)
        return {"key": self.public_key}

    def receive_key(self, content: Mapping[str, Any]) -> None:
        """Their ephemeral key: check it against their commitment (if we started), then ECDH."""
        if not self._expect(Stage.AGREED):
            return
        key = content.get("key")
        if not isinstance(key, str):
            self._cancel(v.INVALID_MESSAGE)
            return
        if self.we_started:
            assert self.start_content is not None
            if not _same(commitment_of(key, self.start_content), self.commitment):
                self._cancel(MISMATCHED_COMMITMENT)
                return
        try:
            their_key = vodozemac.Curve25519PublicKey.from_base64(key)
            self._established = self._sas.diffie_hellman(their_key)
        except ValueError:  # vodozemac's KeyException/SasException: not a usable Curve25519 key
            self._cancel(v.INVALID_MESSAGE)
            return
        self._their_key = key
        self.stage = Stage.KEYS

    def _sas_info(self) -> str:
        """The HKDF info for the SAS bytes (spec, ``curve25519-hkdf-sha256``): starter first."""
        ours = (self.own_user, self.own_device, self.public_key)
        theirs = (self.their_user, self.their_device, self._their_key)
        first, second = (ours, theirs) if self.we_started else (theirs, ours)
        return "|".join(("MATRIX_KEY_VERIFICATION_SAS", *first, *second, self.transaction_id))

    def emoji_indices(self) -> list[int]:
        """The seven emoji indices, exactly as vodozemac derives them (nio re-packs them)."""
        return list(self._bytes().emoji_indices)

    def decimals(self) -> tuple[int, int, int]:
        a, b, c = self._bytes().decimals
        return int(a), int(b), int(c)

    def _bytes(self) -> vodozemac.SasBytes:
        return self._established_sas().bytes(self._sas_info())

    # -- MACs -----------------------------------------------------------------------------------

    def accept_sas(self) -> None:
        """Our side says the emoji match (the bot: because the person's valid MAC arrived)."""
        self._require_own(Stage.KEYS, Stage.MAC_OK)
        self.sas_accepted = True

    def make_mac(self) -> JsonDict:
        """MACs of our device key and, when we have one, our master key (cross-signing)."""
        self._require_own(Stage.KEYS, Stage.MAC_OK)
        if not self.sas_accepted:
            raise ValueError("the SAS was not accepted yet")
        info = self._mac_info(self.own_user, self.own_device, self.their_user, self.their_device)
        keys = {f"ed25519:{self.own_device}": self.own_ed25519}
        if self.own_master_key:
            keys[f"ed25519:{self.own_master_key}"] = self.own_master_key
        mac = {key_id: self._mac(value, info + key_id) for key_id, value in keys.items()}
        return {"mac": mac, "keys": self._mac(",".join(sorted(mac)), info + "KEY_IDS")}

    def receive_mac(self, content: Mapping[str, Any]) -> None:
        """Check their MACs; only a fully valid MAC that covers their device key counts."""
        if not self._expect(Stage.KEYS):
            return
        mac = content.get("mac")
        keys_mac = content.get("keys")
        if not isinstance(mac, dict) or not mac or not isinstance(keys_mac, str):
            self._cancel(v.INVALID_MESSAGE)
            return
        info = self._mac_info(self.their_user, self.their_device, self.own_user, self.own_device)
        if not _same(keys_mac, self._mac(",".join(sorted(mac)), info + "KEY_IDS")):
            self._cancel(v.KEY_MISMATCH)
            return
        device_key_id = f"ed25519:{self.their_device}"
        known = {device_key_id: self.their_ed25519}
        if self.their_master_key:
            known[f"ed25519:{self.their_master_key}"] = self.their_master_key
        # A key we do not know of is not trusted, and not fatal (spec).
        checked = {key_id: value for key_id, value in mac.items() if key_id in known}
        if device_key_id not in checked:
            self._cancel(v.KEY_MISMATCH)
            return
        for key_id, value in checked.items():
            if not isinstance(value, str) or not _same(
                    value, self._mac(known[key_id], info + key_id)):
                self._cancel(v.KEY_MISMATCH)
                return
        self.verified_master_key = next(
            (known[key_id] for key_id in checked if key_id != device_key_id), None)
        self.stage = Stage.MAC_OK

    def _mac_info(self, user: str, device: str, other_user: str, other_device: str) -> str:
        """Spec: the MAC's HKDF info, before the key ID (or ``KEY_IDS``) that ends it."""
        return (f"MATRIX_KEY_VERIFICATION_MAC{user}{device}{other_user}{other_device}"
                f"{self.transaction_id}")

    def _mac(self, value: str, info: str) -> str:
        established = self._established_sas()
        if self.mac_method == MAC_V2:
            return str(established.calculate_mac(value, info))
        return str(established.calculate_mac_invalid_base64(value, info))

    # -- states ---------------------------------------------------------------------------------

    def _established_sas(self) -> vodozemac.EstablishedSas:
        if self._established is None:
            raise ValueError("their key has not arrived yet")
        return self._established

    def _expect(self, *stages: Stage) -> bool:
        """For an incoming event: in any other stage it is unexpected, and cancels."""
        if self.stage in stages:
            return True
        if self.stage is not Stage.CANCELLED:
            self._cancel(v.UNEXPECTED_MESSAGE)
        return False

    def _require_own(self, *stages: Stage) -> None:
        """For our own messages: asking at the wrong time is a bug of the caller."""
        if self.stage not in stages:
            raise ValueError(f"not possible in stage {self.stage.value}")

    def _cancel(self, code: str) -> None:
        self.stage = Stage.CANCELLED
        self.cancel_code, self.cancel_reason = code, v.REASONS.get(code, "Cancelled.")
