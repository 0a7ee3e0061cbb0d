"""SAS (emoji) verification maths that interoperates with Element's crypto (matrix-rust-sdk).

nio 0.26's ``Sas`` is right about the state machine and the key agreement, and wrong in three
ways that only show against another implementation (nio talking to nio hides them, because the
bugs are symmetric): it re-packs vodozemac's emoji indices (people would see different emoji),
it announces ``hkdf-hmac-sha256`` while computing the v2 MAC encoding, and it sends the
commitment as hex instead of unpadded base64. It also leaves cross-signing out of the MAC and
can report ``verified`` after a failed MAC. ``InteropSas`` keeps nio's machine and vodozemac
objects and fixes exactly those parts. Its API speaks event *contents*, so the same object
serves the to-device and the in-room transports (which add ``transaction_id`` or
``m.relates_to`` themselves).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from canonicaljson import encode_canonical_json
from nio.crypto import OlmDevice, Sas, SasState
from unpaddedbase64 import encode_base64

JsonDict = dict[str, Any]

SAS_METHOD = "m.sas.v1"
KEY_AGREEMENT_V2 = "curve25519-hkdf-sha256"
HASH = "sha256"
MAC_V2 = "hkdf-hmac-sha256.v2"
MAC_LEGACY = "hkdf-hmac-sha256"  # libolm's broken base64; only if the peer offers nothing else
MAC_METHODS = [MAC_V2, MAC_LEGACY]
SAS_STRINGS = ["decimal", "emoji"]


def _strings(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def commitment_of(public_key: str, start_content: Mapping[str, Any]) -> str:
    """Spec: unpadded base64 of SHA-256(public key ‖ canonical JSON of the start content)."""
    digest = hashlib.sha256(public_key.encode() + encode_canonical_json(dict(start_content)))
    return encode_base64(digest.digest())


class InteropSas(Sas):  # type: ignore[misc]
    """One SAS exchange with one device of another user (or of our own user)."""

    def __init__(
        self,
        own_user: str,
        own_device: str,
        own_fp_key: str,
        other_device: OlmDevice,
        transaction_id: str,
        own_master_key: str | None = None,
        their_master_key: str | None = None,
    ) -> None:
        super().__init__(own_user, own_device, own_fp_key, other_device, transaction_id,
                         list(SAS_STRINGS), list(MAC_METHODS))
        self.own_master_key = own_master_key
        self.their_master_key = their_master_key
        self.start_content: JsonDict | None = None
        self.verified_master_key: str | None = None
        self.mac_received_ok = False

    # -- starting -------------------------------------------------------------------------------

    def make_start(self, transport_fields: Mapping[str, Any]) -> JsonDict:
        """Our start content, exactly as it will be sent (the commitment covers these bytes)."""
        content: JsonDict = {
            "from_device": self.own_device,
            "method": SAS_METHOD,
            "key_agreement_protocols": [KEY_AGREEMENT_V2],
            "hashes": [HASH],
            "message_authentication_codes": list(MAC_METHODS),
            "short_authentication_string": list(SAS_STRINGS),
            **transport_fields,
        }
        self.we_started_it = True
        self.start_content = content
        return content

    def receive_start(self, content: Mapping[str, Any]) -> None:
        """The other side started: check what it offers and remember the commitment input."""
        self.we_started_it = False
        self.state = SasState.started
        self.start_content = dict(content)
        self.commitment = commitment_of(self.pubkey, content)
        agreements = _strings(content.get("key_agreement_protocols"))
        hashes = _strings(content.get("hashes"))
        macs = _strings(content.get("message_authentication_codes"))
        strings = _strings(content.get("short_authentication_string"))
        if (content.get("method") != SAS_METHOD or KEY_AGREEMENT_V2 not in agreements
                or HASH not in hashes or not any(m in macs for m in MAC_METHODS)
                or "emoji" not in strings):
            self._fail(self._unknown_method_error)
            return
        self.chosen_key_agreement = KEY_AGREEMENT_V2
        # The spec: hkdf-hmac-sha256.v2 MUST be used when both sides support it.
        self.chosen_mac_method = MAC_V2 if MAC_V2 in macs else MAC_LEGACY
        self.short_auth_string = [s for s in SAS_STRINGS if s in strings]

    def make_accept(self) -> JsonDict:
        return {
            "key_agreement_protocol": self.chosen_key_agreement,
            "hash": HASH,
            "message_authentication_code": self.chosen_mac_method,
            "short_authentication_string": self.short_auth_string,
            "commitment": self.commitment,
        }

    def receive_accept(self, content: Mapping[str, Any]) -> None:
        if self.state != SasState.created or not self.we_started_it:
            self._fail(self._unexpected_message_error)
            return
        sas = _strings(content.get("short_authentication_string"))
        if (content.get("key_agreement_protocol") != KEY_AGREEMENT_V2
                or content.get("hash") != HASH
                or content.get("message_authentication_code") not in MAC_METHODS
                or "emoji" not in sas or not isinstance(content.get("commitment"), str)):
            self._fail(self._unknown_method_error)
            return
        self.commitment = content["commitment"]
        self.chosen_mac_method = content["message_authentication_code"]
        self.chosen_key_agreement = KEY_AGREEMENT_V2
        self.short_auth_string = list(sas)
        self.state = SasState.accepted

    # -- keys -----------------------------------------------------------------------------------

    def make_key(self) -> JsonDict:
        return {"key": self.pubkey}

    def receive_key(self, content: Mapping[str, Any]) -> None:
        key = content.get("key")
        if self.established_sas is not None or self.state not in (
                SasState.started, SasState.accepted):
            self._fail(self._unexpected_message_error)
            return
        if not isinstance(key, str):
            self._fail(self._invalid_message_error)
            return
        if self.we_started_it:
            assert self.start_content is not None
            if commitment_of(key, self.start_content) != self.commitment:
                self._fail(self._commitment_mismatch_error)
                return
        try:
            self.establish_sas(key)
        except Exception:  # vodozemac rejects a malformed Curve25519 key
            self._fail(self._invalid_message_error)
            return
        self.state = SasState.key_received

    def emoji_indices(self) -> list[int]:
        """vodozemac already yields the seven 6-bit indices; nio re-packs them (wrongly)."""
        assert self.established_sas is not None
        return list(self.established_sas.bytes(self._extra_info).emoji_indices)

    def decimals(self) -> tuple[int, int, int]:
        assert self.established_sas is not None
        a, b, c = self.established_sas.bytes(self._extra_info).decimals
        return int(a), int(b), int(c)

    # -- MACs -----------------------------------------------------------------------------------

    def _mac(self, value: str, info: str) -> str:
        assert self.established_sas is not None
        if self.chosen_mac_method == MAC_V2:
            return str(self.established_sas.calculate_mac(value, info))
        return str(self.established_sas.calculate_mac_invalid_base64(value, info))

    def make_mac(self) -> JsonDict:
        """MACs of our device key and, when we have one, our master key (cross-signing)."""
        if not self.sas_accepted:
            raise ValueError("the SAS was not accepted yet")
        device = self.other_olm_device
        info = (f"MATRIX_KEY_VERIFICATION_MAC{self.own_user}{self.own_device}"
                f"{device.user_id}{device.id}{self.transaction_id}")
        keys = {f"ed25519:{self.own_device}": self.own_fp_key}
        if self.own_master_key:
            keys[f"ed25519:{self.own_master_key}"] = self.own_master_key
        mac = {key_id: self._mac(value, info + key_id) for key_id, value in keys.items()}
        return {"mac": mac, "keys": self._mac(",".join(sorted(mac)), info + "KEY_IDS")}

    def receive_mac(self, content: Mapping[str, Any]) -> None:
        """Check their MACs; only a fully valid MAC covering their device key counts."""
        if self.state != SasState.key_received:
            self._fail(self._unexpected_message_error)
            return
        mac = content.get("mac")
        keys_mac = content.get("keys")
        if not isinstance(mac, dict) or not isinstance(keys_mac, str) or not mac:
            self._fail(self._invalid_message_error)
            return
        device = self.other_olm_device
        info = (f"MATRIX_KEY_VERIFICATION_MAC{device.user_id}{device.id}"
                f"{self.own_user}{self.own_device}{self.transaction_id}")
        if keys_mac != self._mac(",".join(sorted(mac)), info + "KEY_IDS"):
            self._fail(self._key_mismatch_error)
            return
        device_key_id = f"ed25519:{device.id}"
        verified_device = False
        verified_master = None
        for key_id, value in mac.items():
            if key_id == device_key_id:
                expected = device.ed25519
            elif self.their_master_key and key_id == f"ed25519:{self.their_master_key}":
                expected = self.their_master_key
            else:
                continue  # a key we do not know of is not trusted, and not fatal (spec)
            if not isinstance(value, str) or value != self._mac(expected, info + key_id):
                self._fail(self._key_mismatch_error)
                return
            if key_id == device_key_id:
                verified_device = True
            else:
                verified_master = expected
        if not verified_device:
            self._fail(self._key_mismatch_error)
            return
        self.verified_devices = [device.id]
        self.verified_master_key = verified_master
        self.mac_received_ok = True
        self.state = SasState.mac_received

    @property
    def verified(self) -> bool:
        """Verified only after *their* valid MAC and our acceptance — never on the flag alone."""
        return (self.mac_received_ok and self.sas_accepted
                and self.state == SasState.mac_received and bool(self.verified_devices))

    def fail(self, code: str, reason: str) -> None:
        self.state = SasState.canceled
        self.cancel_code, self.cancel_reason = code, reason

    def _fail(self, error: tuple[str, str]) -> None:
        self.fail(*error)
        if error == self._user_mismatch_error:
            self.cancel_code = "m.user_mismatch"  # nio spells it m.user_error
