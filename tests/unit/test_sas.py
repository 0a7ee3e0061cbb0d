"""The interoperable SAS: two instances run the whole exchange; every failure mode cancels."""

from __future__ import annotations

import pytest
import vodozemac
from nio.crypto import OlmDevice, Sas

from nerbot.i18n.catalog import load_sas_emoji
from nerbot.matrix.sas import MAC_LEGACY, MAC_V2, InteropSas, commitment_of

TXN = "$request-event-id"


def device(user: str, device_id: str) -> tuple[OlmDevice, str]:
    account = vodozemac.Account()
    ed = account.ed25519_key.to_base64()
    return OlmDevice(user, device_id, {"ed25519": ed, "curve25519": account.curve25519_key
                                       .to_base64()}), ed


def pair(alice_master: str | None = "AMASTER", bob_master: str | None = "BMASTER"
         ) -> tuple[InteropSas, InteropSas]:
    a_dev, a_ed = device("@alice:hs", "ALICE")
    b_dev, b_ed = device("@bob:hs", "BOB")
    alice = InteropSas("@alice:hs", "ALICE", a_ed, b_dev, TXN, alice_master, bob_master)
    bob = InteropSas("@bob:hs", "BOB", b_ed, a_dev, TXN, bob_master, alice_master)
    return alice, bob


def run_to_keys(alice: InteropSas, bob: InteropSas, macs: list[str] | None = None) -> None:
    start = alice.make_start({"transaction_id": TXN})
    if macs is not None:
        start["message_authentication_codes"] = macs
        alice.start_content = start
    bob.receive_start(start)
    alice.receive_accept(bob.make_accept())
    bob.receive_key(alice.make_key())
    alice.receive_key(bob.make_key())


def test_full_exchange_verifies_both_devices_and_master_keys() -> None:
    alice, bob = pair()
    run_to_keys(alice, bob)
    assert alice.emoji_indices() == bob.emoji_indices()
    assert len(alice.emoji_indices()) == 7 and all(0 <= i < 64 for i in alice.emoji_indices())
    assert alice.decimals() == bob.decimals()
    assert alice.chosen_mac_method == bob.chosen_mac_method == MAC_V2
    bob.accept_sas()
    alice.receive_mac(bob.make_mac())  # Bob confirmed first
    assert not alice.verified  # Alice's human has not confirmed yet
    alice.accept_sas()
    assert alice.verified and alice.verified_master_key == "BMASTER"
    bob.receive_mac(alice.make_mac())
    assert bob.verified and bob.verified_master_key == "AMASTER"


def test_commitment_is_unpadded_base64_of_sha256() -> None:
    alice, bob = pair()
    start = alice.make_start({"transaction_id": TXN})
    bob.receive_start(start)
    accept = bob.make_accept()
    assert accept["commitment"] == commitment_of(bob.pubkey, start)
    assert len(accept["commitment"]) == 43 and "=" not in accept["commitment"]
    assert any(c not in "0123456789abcdef" for c in accept["commitment"])


def test_in_room_commitment_covers_relates_to() -> None:
    alice, bob = pair()
    relates = {"m.relates_to": {"rel_type": "m.reference", "event_id": TXN}}
    start = alice.make_start(relates)
    assert "transaction_id" not in start and start["m.relates_to"]["event_id"] == TXN
    bob.receive_start(start)
    assert bob.make_accept()["commitment"] == commitment_of(bob.pubkey, start)


def test_legacy_mac_only_when_peer_offers_nothing_else() -> None:
    alice, bob = pair()
    run_to_keys(alice, bob, macs=[MAC_LEGACY])
    assert bob.chosen_mac_method == MAC_LEGACY == alice.chosen_mac_method
    alice.accept_sas()
    bob.accept_sas()
    bob.receive_mac(alice.make_mac())
    assert bob.verified


def test_tampered_mac_is_key_mismatch_and_never_verified() -> None:
    alice, bob = pair()
    run_to_keys(alice, bob)
    alice.accept_sas()
    bob.accept_sas()
    mac = alice.make_mac()
    key_id = "ed25519:ALICE"
    mac["mac"][key_id] = mac["mac"][key_id][::-1]
    bob.receive_mac(mac)
    assert bob.canceled and bob.cancel_code == "m.key_mismatch" and not bob.verified


def test_mac_of_a_wrong_master_key_is_rejected() -> None:
    alice, bob = pair(alice_master="AMASTER", bob_master="BMASTER")
    bob.their_master_key = "SOMEONE_ELSE"  # what Bob believes Alice's identity is
    run_to_keys(alice, bob)
    alice.accept_sas()
    bob.accept_sas()
    bob.receive_mac(alice.make_mac())
    # the MAC for "ed25519:AMASTER" is not a key Bob knows: ignored, device still verified
    assert bob.verified and bob.verified_master_key is None


def test_mac_without_device_key_is_not_enough() -> None:
    alice, bob = pair()
    run_to_keys(alice, bob)
    alice.accept_sas()
    bob.accept_sas()
    mac = alice.make_mac()
    del mac["mac"]["ed25519:ALICE"]
    mac["keys"] = alice._mac(",".join(sorted(mac["mac"])),
                             "MATRIX_KEY_VERIFICATION_MAC@alice:hsALICE@bob:hsBOB" + TXN
                             + "KEY_IDS")
    bob.receive_mac(mac)
    assert bob.canceled and bob.cancel_code == "m.key_mismatch" and not bob.verified


def test_wrong_key_fails_commitment() -> None:
    alice, bob = pair()
    start = alice.make_start({"transaction_id": TXN})
    bob.receive_start(start)
    alice.receive_accept(bob.make_accept())
    bob.receive_key(alice.make_key())
    alice.receive_key({"key": vodozemac.Sas().public_key.to_base64()})
    assert alice.canceled and alice.cancel_code == "m.mismatched_commitment"


@pytest.mark.parametrize("bad", [
    {"method": "m.reciprocate.v1"},
    {"key_agreement_protocols": ["curve25519"]},
    {"message_authentication_codes": ["hmac-sha256"]},
    {"short_authentication_string": ["decimal"]},
    {"hashes": "sha256"},
])
def test_unknown_methods_cancel(bad: dict[str, object]) -> None:
    alice, bob = pair()
    start = {**alice.make_start({"transaction_id": TXN}), **bad}
    bob.receive_start(start)
    assert bob.canceled and bob.cancel_code == "m.unknown_method"


def test_out_of_order_and_malformed_events_cancel() -> None:
    alice, bob = pair()
    bob.receive_start(alice.make_start({"transaction_id": TXN}))
    bob.receive_mac({"mac": {}, "keys": "x"})
    assert bob.cancel_code == "m.unexpected_message"
    alice, bob = pair()
    alice.make_start({"transaction_id": TXN})
    alice.receive_key({"key": "x"})
    assert alice.cancel_code == "m.unexpected_message"  # key before accept
    alice, bob = pair()
    bob.receive_start(alice.make_start({"transaction_id": TXN}))
    bob.receive_key({"key": 42})
    assert bob.cancel_code == "m.invalid_message"
    alice, bob = pair()
    bob.receive_start(alice.make_start({"transaction_id": TXN}))
    bob.receive_key({"key": "not a curve key"})
    assert bob.cancel_code == "m.invalid_message"


def test_mac_before_acceptance_cannot_be_made() -> None:
    alice, bob = pair()
    run_to_keys(alice, bob)
    with pytest.raises(ValueError):
        alice.make_mac()


def test_stock_nio_shows_different_emoji_than_vodozemac_indices() -> None:
    """The bug this module exists for: nio re-packs vodozemac's already-final indices."""
    alice, bob = pair()
    run_to_keys(alice, bob)
    table = load_sas_emoji()
    ours = [table[i].emoji for i in alice.emoji_indices()]
    stock = [e for e, _ in Sas._generate_emoji(alice, alice._extra_info)]
    assert ours != stock
