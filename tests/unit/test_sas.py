"""The interoperable SAS: two exchanges verify each other, an independent implementation of the
spec agrees with ours (emoji, decimals, commitment, MACs), and every failure mode cancels."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

import pytest
import vodozemac
from Crypto.Protocol import DH
from Crypto.PublicKey import ECC

from nerbot.matrix.sas import MAC_LEGACY, MAC_V2, SasExchange, commitment_of

TXN = "$request-event-id"
BOT, BOT_DEV = "@bot:hs", "BOT"
PEER, PEER_DEV, PEER_ED, PEER_MASTER = "@peer:hs", "PEER", "PEERED25519", "PEERMASTER"


@dataclass(frozen=True)
class Device:
    user_id: str
    id: str
    ed25519: str


def ed25519() -> str:
    return str(vodozemac.Account().ed25519_key.to_base64())


def pair(alice_master: str | None = "AMASTER", bob_master: str | None = "BMASTER",
         bob_believes_alice_master: str | None = None) -> tuple[SasExchange, SasExchange]:
    a_ed, b_ed = ed25519(), ed25519()
    alice = SasExchange("@alice:hs", "ALICE", a_ed, Device("@bob:hs", "BOB", b_ed), TXN,
                        alice_master, bob_master)
    bob = SasExchange("@bob:hs", "BOB", b_ed, Device("@alice:hs", "ALICE", a_ed), TXN,
                      bob_master, bob_believes_alice_master or alice_master)
    return alice, bob


def run_to_keys(alice: SasExchange, bob: SasExchange, macs: list[str] | None = None) -> None:
    start = alice.make_start({"transaction_id": TXN})
    if macs is not None:
        start["message_authentication_codes"] = macs  # the start as sent, commitment included
    bob.receive_start(start)
    alice.receive_accept(bob.make_accept())
    bob.receive_key(alice.make_key())
    alice.receive_key(bob.make_key())
    assert not alice.canceled and not bob.canceled



def accept_for(alice: SasExchange, bob: SasExchange) -> dict[str, Any]:
    """Alice starts, Bob accepts: Bob's accept, not yet delivered."""
    bob.receive_start(alice.make_start({"transaction_id": TXN}))
    return bob.make_accept()

# -- the spec, computed without vodozemac or canonicaljson ----------------------------------------

def unpadded_b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def canonical(content: dict[str, Any]) -> bytes:
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def hkdf_sha256(secret: bytes, info: str, length: int) -> bytes:
    """RFC 5869 with no salt (a zero-filled one) and at most one output block."""
    assert length <= 32
    prk = hmac.new(b"\0" * 32, secret, hashlib.sha256).digest()
    return hmac.new(prk, info.encode() + b"\x01", hashlib.sha256).digest()[:length]


class SpecPeer:
    """The other device, from the spec text with pycryptodome's X25519 and hashlib/hmac."""

    def __init__(self) -> None:
        self._key = ECC.generate(curve="curve25519")
        self.public_key = unpadded_b64(self._key.public_key().export_key(format="raw"))
        self.shared = b""

    def start(self) -> dict[str, Any]:
        return {"from_device": PEER_DEV, "method": "m.sas.v1",
                "key_agreement_protocols": ["curve25519-hkdf-sha256"], "hashes": ["sha256"],
                "message_authentication_codes": [MAC_V2],
                "short_authentication_string": ["decimal", "emoji"], "transaction_id": TXN}

    def agree(self, their_key: str) -> None:
        raw = base64.b64decode(their_key + "=" * (-len(their_key) % 4))
        self.shared = DH.key_agreement(static_priv=self._key, kdf=lambda secret: secret,
                                       static_pub=DH.import_x25519_public_key(raw))

    def sas_bytes(self, info: str) -> bytes:
        return hkdf_sha256(self.shared, info, 6)

    def mac(self, value: str, info: str) -> str:  # hkdf-hmac-sha256.v2
        return unpadded_b64(hmac.new(hkdf_sha256(self.shared, info, 32), value.encode(),
                                     hashlib.sha256).digest())


def spec_emoji(sas: bytes) -> list[int]:
    """Spec: split the first 42 bits of the 6 bytes into 7 groups of 6 bits."""
    bits = "".join(f"{b:08b}" for b in sas)
    return [int(bits[i:i + 6], 2) for i in range(0, 42, 6)]


def spec_decimals(b: bytes) -> tuple[int, int, int]:
    return ((b[0] << 5 | b[1] >> 3) + 1000,
            ((b[1] & 0x7) << 10 | b[2] << 2 | b[3] >> 6) + 1000,
            ((b[3] & 0x3F) << 7 | b[4] >> 1) + 1000)


def bot_and_peer(bot_starts: bool) -> tuple[SasExchange, SpecPeer, str]:
    """Run start → accept → key between our exchange and the spec peer; return the SAS info."""
    peer = SpecPeer()
    bot = SasExchange(BOT, BOT_DEV, "BOTED25519", Device(PEER, PEER_DEV, PEER_ED), TXN,
                      "BOTMASTER", PEER_MASTER)
    if bot_starts:
        start = bot.make_start({"transaction_id": TXN})
        commitment = unpadded_b64(hashlib.sha256(peer.public_key.encode() + canonical(start))
                                  .digest())
        bot.receive_accept({"key_agreement_protocol": "curve25519-hkdf-sha256", "hash": "sha256",
                            "message_authentication_code": MAC_V2,
                            "short_authentication_string": ["decimal", "emoji"],
                            "commitment": commitment})
        bot_key = bot.make_key()["key"]
        bot.receive_key({"key": peer.public_key})  # checks our commitment
        first, second = f"{BOT}|{BOT_DEV}|{bot_key}", f"{PEER}|{PEER_DEV}|{peer.public_key}"
    else:
        start = peer.start()
        bot.receive_start(start)
        accept = bot.make_accept()
        bot.receive_key({"key": peer.public_key})
        bot_key = bot.make_key()["key"]
        expected = hashlib.sha256(bot_key.encode() + canonical(start)).digest()
        assert accept["commitment"] == unpadded_b64(expected)  # what the peer checks
        first, second = f"{PEER}|{PEER_DEV}|{peer.public_key}", f"{BOT}|{BOT_DEV}|{bot_key}"
    assert not bot.canceled
    peer.agree(bot_key)
    return bot, peer, f"MATRIX_KEY_VERIFICATION_SAS|{first}|{second}|{TXN}"


# -- two of ours ----------------------------------------------------------------------------------

def test_two_exchanges_verify_each_other_with_master_keys() -> None:
    alice, bob = pair()
    run_to_keys(alice, bob)
    assert alice.emoji_indices() == bob.emoji_indices()
    assert len(alice.emoji_indices()) == 7 and all(0 <= i < 64 for i in alice.emoji_indices())
    assert alice.decimals() == bob.decimals()
    assert alice.mac_method == bob.mac_method == MAC_V2
    bob.accept_sas()
    alice.receive_mac(bob.make_mac())  # Bob confirmed first
    assert not alice.canceled and not alice.verified  # Alice's side has not confirmed yet
    alice.accept_sas()
    assert alice.verified and alice.verified_master_key == "BMASTER"
    bob.receive_mac(alice.make_mac())
    assert bob.verified and bob.verified_master_key == "AMASTER"


def test_without_cross_signing_the_device_alone_is_verified() -> None:
    alice, bob = pair(alice_master=None, bob_master=None)
    run_to_keys(alice, bob)
    alice.accept_sas()
    bob.accept_sas()
    assert list(alice.make_mac()["mac"]) == ["ed25519:ALICE"]
    bob.receive_mac(alice.make_mac())
    assert bob.verified and bob.verified_master_key is None


def test_in_room_commitment_covers_relates_to() -> None:
    alice, bob = pair()
    relates = {"m.relates_to": {"rel_type": "m.reference", "event_id": TXN}}
    start = alice.make_start(relates)
    assert "transaction_id" not in start and start["m.relates_to"]["event_id"] == TXN
    bob.receive_start(start)
    assert bob.make_accept()["commitment"] == commitment_of(bob.public_key, start)


def test_legacy_mac_only_when_peer_offers_nothing_else() -> None:
    alice, bob = pair()
    run_to_keys(alice, bob, macs=[MAC_LEGACY])
    assert bob.mac_method == MAC_LEGACY == alice.mac_method
    alice.accept_sas()
    bob.accept_sas()
    bob.receive_mac(alice.make_mac())
    assert bob.verified
    alice, bob = pair()
    run_to_keys(alice, bob, macs=[MAC_LEGACY, MAC_V2])
    assert bob.mac_method == MAC_V2 == alice.mac_method


# -- ours against the spec ------------------------------------------------------------------------

@pytest.mark.parametrize("bot_starts", [True, False])
def test_emoji_and_decimals_are_the_spec_derivation(bot_starts: bool) -> None:
    bot, peer, info = bot_and_peer(bot_starts)
    sas = peer.sas_bytes(info)
    assert bot.emoji_indices() == spec_emoji(sas)
    assert bot.decimals() == spec_decimals(sas)
    # nio's bug 1: it re-splits the indices as if they were the bytes — other emoji.
    assert spec_emoji(bytes(bot.emoji_indices())) != bot.emoji_indices()


def test_commitment_is_unpadded_base64_of_sha256_of_key_and_canonical_start() -> None:
    alice, bob = pair()
    start = alice.make_start({"transaction_id": TXN, "extra": {"b": 1, "a": "ü"}})
    bob.receive_start(start)
    commitment = bob.make_accept()["commitment"]
    expected = hashlib.sha256(bob.public_key.encode() + canonical(start)).digest()
    assert commitment == unpadded_b64(expected) == commitment_of(bob.public_key, start)
    assert len(commitment) == 43 and "=" not in commitment
    assert commitment != hashlib.sha256(bob.public_key.encode() + canonical(start)).hexdigest()


def test_macs_are_the_spec_v2_macs_both_ways() -> None:
    bot, peer, _ = bot_and_peer(bot_starts=False)
    ours = f"MATRIX_KEY_VERIFICATION_MAC{BOT}{BOT_DEV}{PEER}{PEER_DEV}{TXN}"
    bot.accept_sas()
    mac = bot.make_mac()
    assert mac == {
        "mac": {"ed25519:BOT": peer.mac("BOTED25519", ours + "ed25519:BOT"),
                "ed25519:BOTMASTER": peer.mac("BOTMASTER", ours + "ed25519:BOTMASTER")},
        "keys": peer.mac("ed25519:BOT,ed25519:BOTMASTER", ours + "KEY_IDS")}
    theirs = f"MATRIX_KEY_VERIFICATION_MAC{PEER}{PEER_DEV}{BOT}{BOT_DEV}{TXN}"
    key_ids = [f"ed25519:{PEER_DEV}", f"ed25519:{PEER_MASTER}", "ed25519:UNKNOWN"]
    bot.receive_mac({
        "mac": {k: peer.mac({key_ids[0]: PEER_ED, key_ids[1]: PEER_MASTER}.get(k, "x"),
                            theirs + k) for k in key_ids},
        "keys": peer.mac(",".join(sorted(key_ids)), theirs + "KEY_IDS")})
    assert bot.verified and bot.verified_master_key == PEER_MASTER


# -- failures -------------------------------------------------------------------------------------

@pytest.mark.parametrize("tamper", ["device MAC", "key IDs MAC", "master MAC"])
def test_tampered_mac_is_key_mismatch_and_never_verified(tamper: str) -> None:
    alice, bob = pair()
    run_to_keys(alice, bob)
    alice.accept_sas()
    bob.accept_sas()
    mac = alice.make_mac()
    if tamper == "key IDs MAC":
        mac["keys"] = mac["keys"][::-1]
    else:
        key_id = "ed25519:ALICE" if tamper == "device MAC" else "ed25519:AMASTER"
        mac["mac"][key_id] = mac["mac"][key_id][::-1]
    bob.receive_mac(mac)
    assert bob.canceled and bob.cancel_code == "m.key_mismatch" and not bob.verified
    bob.receive_mac(alice.make_mac())  # a good MAC after the cancel changes nothing
    assert bob.cancel_code == "m.key_mismatch" and not bob.verified


def test_mac_without_the_device_key_is_key_mismatch() -> None:
    """nio's bug 5: it cancels, then marks the MAC received, and reports verified."""
    bot, peer, _ = bot_and_peer(bot_starts=True)
    bot.accept_sas()
    theirs = f"MATRIX_KEY_VERIFICATION_MAC{PEER}{PEER_DEV}{BOT}{BOT_DEV}{TXN}"
    master_id = f"ed25519:{PEER_MASTER}"
    bot.receive_mac({"mac": {master_id: peer.mac(PEER_MASTER, theirs + master_id)},
                     "keys": peer.mac(master_id, theirs + "KEY_IDS")})
    assert bot.canceled and bot.cancel_code == "m.key_mismatch" and not bot.verified


def test_mac_of_a_master_key_we_do_not_know_is_ignored() -> None:
    alice, bob = pair(bob_believes_alice_master="SOMEONE_ELSE")
    run_to_keys(alice, bob)
    alice.accept_sas()
    bob.accept_sas()
    bob.receive_mac(alice.make_mac())
    # "ed25519:AMASTER" is not a key Bob knows: not trusted, not fatal; the device is verified
    assert bob.verified and bob.verified_master_key is None


def test_wrong_key_is_mismatched_commitment() -> None:
    alice, bob = pair()
    alice.receive_accept(accept_for(alice, bob))
    bob.receive_key(alice.make_key())
    alice.receive_key({"key": vodozemac.Sas().public_key.to_base64()})  # not the committed key
    assert alice.canceled and alice.cancel_code == "m.mismatched_commitment"


def test_accept_with_a_wrong_commitment_is_mismatched_commitment() -> None:
    alice, bob = pair()
    accept = accept_for(alice, bob)
    accept["commitment"] = commitment_of(bob.public_key, {"other": "start"})
    alice.receive_accept(accept)
    bob.receive_key(alice.make_key())
    alice.receive_key(bob.make_key())
    assert alice.canceled and alice.cancel_code == "m.mismatched_commitment"


@pytest.mark.parametrize("bad", [
    {"method": "m.reciprocate.v1"},
    {"key_agreement_protocols": ["curve25519"]},
    {"message_authentication_codes": ["hmac-sha256"]},
    {"short_authentication_string": ["decimal"]},
    {"hashes": "sha256"},
])
def test_start_without_a_common_method_is_unknown_method(bad: dict[str, object]) -> None:
    alice, bob = pair()
    bob.receive_start({**alice.make_start({"transaction_id": TXN}), **bad})
    assert bob.canceled and bob.cancel_code == "m.unknown_method"


@pytest.mark.parametrize("bad", [
    {"key_agreement_protocol": "curve25519"},
    {"hash": "sha512"},
    {"message_authentication_code": "hmac-sha256"},
    {"short_authentication_string": ["decimal"]},
])
def test_accept_without_a_common_method_is_unknown_method(bad: dict[str, object]) -> None:
    alice, bob = pair()
    alice.receive_accept({**accept_for(alice, bob), **bad})
    assert alice.canceled and alice.cancel_code == "m.unknown_method"


def test_mac_before_keys_is_unexpected_message() -> None:
    alice, bob = pair()
    accept = accept_for(alice, bob)
    bob.receive_mac({"mac": {"ed25519:ALICE": "x"}, "keys": "x"})
    assert bob.canceled and bob.cancel_code == "m.unexpected_message" and not bob.verified
    alice.receive_accept(accept)
    alice.receive_mac({"mac": {"ed25519:BOB": "x"}, "keys": "x"})
    assert alice.cancel_code == "m.unexpected_message"


def test_out_of_order_and_malformed_events_cancel() -> None:
    alice, bob = pair()
    alice.make_start({"transaction_id": TXN})
    alice.receive_key({"key": bob.public_key})
    assert alice.cancel_code == "m.unexpected_message"  # key before accept
    alice, bob = pair()
    bob.receive_accept(accept_for(alice, bob))
    assert bob.cancel_code == "m.unexpected_message"  # an accept for a start we did not send
    alice, bob = pair()
    accept_for(alice, bob)
    bob.receive_start(alice.start_content or {})
    assert bob.cancel_code == "m.unexpected_message"  # a second start
    for key in (42, "not a curve key"):
        alice, bob = pair()
        accept_for(alice, bob)
        bob.receive_key({"key": key})
        assert bob.cancel_code == "m.invalid_message"
    alice, bob = pair()
    run_to_keys(alice, bob)
    bob.receive_mac({"mac": {}, "keys": "x"})
    assert bob.cancel_code == "m.invalid_message"


def test_our_own_messages_only_when_possible() -> None:
    alice, bob = pair()
    with pytest.raises(ValueError):
        alice.make_accept()  # nothing to accept
    with pytest.raises(ValueError):
        alice.make_key()  # no methods agreed yet
    run_to_keys(alice, bob)
    with pytest.raises(ValueError):
        alice.make_mac()  # the SAS was not accepted yet
    with pytest.raises(ValueError):
        alice.make_start({})
