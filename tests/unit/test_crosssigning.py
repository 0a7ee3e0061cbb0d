"""Cross-signing keys and signed JSON, checked against matrix-org's independent signedjson.

signedjson (PyNaCl underneath) is what Synapse itself uses to check these signatures, so
agreeing with it in both directions is the evidence that our canonical JSON, key IDs and
base64 are right, not merely self-consistent.
"""

from __future__ import annotations

import copy
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import signedjson.key
import signedjson.sign
from canonicaljson import encode_canonical_json
from unpaddedbase64 import decode_base64, encode_base64

from nerbot.errors import IdentityError
from nerbot.matrix.crosssigning import (
    CrossSigningKeys,
    SigningKey,
    canonical_json,
    fingerprint,
    is_device_cross_signed,
    master_key_of,
    self_signing_key_of,
    sign_json,
    signatures_upload_body,
    verify_signed_json,
)

USER = "@nerbot:localhost"
ALICE = "@alice:localhost"


def their_verify_key(public: str) -> Any:
    """signedjson's verify key for one of our public keys, named the cross-signing way."""
    return signedjson.key.decode_verify_key_bytes(f"ed25519:{public}", decode_base64(public))


def their_signing_key() -> tuple[Any, str]:
    """A signedjson (PyNaCl) signing key whose key ID is ``ed25519:<public>``."""
    key = signedjson.key.generate_signing_key("tmp")
    public = encode_base64(key.verify_key.encode())
    key.version = public
    return key, public


def assert_signedjson_accepts(obj: dict[str, Any], user: str, public: str) -> None:
    signedjson.sign.verify_signed_json(obj, user, their_verify_key(public))


def assert_signedjson_rejects(obj: dict[str, Any], user: str, public: str) -> None:
    with pytest.raises(signedjson.sign.SignatureVerifyException):
        signedjson.sign.verify_signed_json(obj, user, their_verify_key(public))


# -- signatures, both directions ---------------------------------------------------------------


def test_our_signature_verifies_with_signedjson() -> None:
    key = SigningKey.generate()
    obj = {"user_id": USER, "keys": {"b": "2", "a": "1"}, "n": [1, 2, "三", {"z": None}],
           "unsigned": {"device_display_name": "x"}, "emoji": "🔑"}
    signed = sign_json(obj, USER, key.key_id, key)
    assert_signedjson_accepts(signed, USER, key.public)
    assert verify_signed_json(signed, USER, key.key_id, key.public)


def test_signedjson_signature_verifies_with_ours() -> None:
    theirs, public = their_signing_key()
    obj = signedjson.sign.sign_json(
        {"user_id": USER, "usage": ["master"], "k": "é", "unsigned": {"x": 1}}, USER, theirs)
    key_id = f"ed25519:{public}"
    assert set(obj["signatures"][USER]) == {key_id}
    assert verify_signed_json(obj, USER, key_id, public)
    tampered = {**obj, "usage": ["self_signing"]}
    assert not verify_signed_json(tampered, USER, key_id, public)


def test_tampering_fails_in_both_implementations() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    signed = sign_json({"a": 1, "b": {"c": [1, 2]}}, USER, key.key_id, key)
    for tampered in ({**signed, "a": 2}, {**signed, "b": {"c": [2, 1]}}, {**signed, "new": 0}):
        assert not verify_signed_json(tampered, USER, key.key_id, key.public)
        assert_signedjson_rejects(tampered, USER, key.public)
    # The right signature checked against another key.
    assert not verify_signed_json(signed, USER, key.key_id, other.public)
    # Another user's name, a key ID that is not there.
    assert not verify_signed_json(signed, ALICE, key.key_id, key.public)
    assert not verify_signed_json(signed, USER, other.key_id, key.public)


def test_unsigned_is_outside_the_signature() -> None:
    key = SigningKey.generate()
    signed = sign_json({"a": 1, "unsigned": {"x": 1}}, USER, key.key_id, key)
    # Changing or removing `unsigned` does not break the signature...
    assert verify_signed_json({**signed, "unsigned": {"x": 2}}, USER, key.key_id, key.public)
    assert verify_signed_json({k: v for k, v in signed.items() if k != "unsigned"},
                              USER, key.key_id, key.public)
    # ...so content moved into `unsigned` is no longer covered by it,
    moved = {"signatures": signed["signatures"], "unsigned": {"a": 1}}
    assert not verify_signed_json(moved, USER, key.key_id, key.public)
    assert_signedjson_rejects(moved, USER, key.public)
    # and a signature hidden in `unsigned` counts for nothing.
    hidden = {"a": 1, "unsigned": {"signatures": signed["signatures"]}}
    assert not verify_signed_json(hidden, USER, key.key_id, key.public)


@pytest.mark.parametrize("bad_signature", ["%%%", "", "AAAA", "abc=", 42, None, ["x"]])
def test_malformed_signature_is_false_not_an_exception(bad_signature: Any) -> None:
    key = SigningKey.generate()
    signed = sign_json({"a": 1}, USER, key.key_id, key)
    signed["signatures"][USER][key.key_id] = bad_signature
    assert not verify_signed_json(signed, USER, key.key_id, key.public)


@pytest.mark.parametrize("bad_public", [
    "not base64!", "", "AAAA", "A" * 42 + "==",
    "A" * 44,  # 33 bytes: vodozemac 0.10 panics (BaseException) on exactly this length
])
def test_malformed_public_key_is_false_not_an_exception(bad_public: str) -> None:
    key = SigningKey.generate()
    signed = sign_json({"a": 1}, USER, key.key_id, key)
    assert not verify_signed_json(signed, USER, key.key_id, bad_public)


@pytest.mark.parametrize("bad_object", [
    None, [], "text", 3, {}, {"signatures": "nonsense"}, {"signatures": {USER: []}},
    {"signatures": {USER: None}}, {"a": float("nan"), "signatures": {USER: {"k": "AAAA"}}},
])
def test_malformed_objects_are_false_not_an_exception(bad_object: Any) -> None:
    key = SigningKey.generate()
    assert not verify_signed_json(bad_object, USER, key.key_id, key.public)


def test_signing_keeps_existing_signatures_and_does_not_mutate() -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    theirs, their_public = their_signing_key()
    original = signedjson.sign.sign_json({"k": 1}, ALICE, theirs)
    before = copy.deepcopy(original)
    once = sign_json(original, USER, a.key_id, a)
    twice = sign_json(once, USER, b.key_id, b)
    assert original == before and "@nerbot:localhost" not in once["signatures"][ALICE]
    assert set(twice["signatures"]) == {ALICE, USER}
    assert set(twice["signatures"][USER]) == {a.key_id, b.key_id}
    assert_signedjson_accepts(twice, ALICE, their_public)
    assert_signedjson_accepts(twice, USER, a.public)
    assert_signedjson_accepts(twice, USER, b.public)


def test_canonical_json_strips_top_level_only_and_does_not_mutate() -> None:
    obj = {"b": 1, "a": "é", "nested": {"signatures": 1, "unsigned": 2},
           "signatures": {"x": {}}, "unsigned": {"y": 2}}
    before = copy.deepcopy(obj)
    out = canonical_json(obj)
    assert out == ('{"a":"é","b":1,"nested":{"signatures":1,"unsigned":2}}').encode()
    assert out == encode_canonical_json({"b": 1, "a": "é", "nested": obj["nested"]})
    assert obj == before


# -- the key file ------------------------------------------------------------------------------


@pytest.fixture
def umask() -> Iterator[Any]:
    """Lets a test set the process umask; restores it afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o277])
def test_key_file_is_exactly_0600_and_round_trips(tmp_path: Path, umask: Any, mask: int) -> None:
    umask(mask)
    keys = CrossSigningKeys.generate()
    path = tmp_path / "new-dir" / "cross-signing.json"
    keys.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700 & ~mask
    loaded = CrossSigningKeys.load(path)
    assert loaded == keys
    assert (loaded.master_public, loaded.self_signing_public, loaded.user_signing_public) == (
        keys.master_public, keys.self_signing_public, keys.user_signing_public)
    assert os.listdir(path.parent) == ["cross-signing.json"]  # no temp files left behind


def test_key_file_format_and_overwrite_tightens_mode(tmp_path: Path) -> None:
    path = tmp_path / "cross-signing.json"
    path.write_text("{}")
    path.chmod(0o644)
    keys = CrossSigningKeys.generate()
    keys.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = json.loads(path.read_text())
    assert set(raw) == {"master", "self_signing", "user_signing"}
    for usage, seed in raw.items():
        assert "=" not in seed and len(decode_base64(seed)) == 32
        assert decode_base64(seed) == getattr(keys, usage).seed


def test_missing_and_broken_key_files(tmp_path: Path) -> None:
    assert CrossSigningKeys.load(tmp_path / "missing.json") is None
    broken = tmp_path / "broken.json"
    for content in ("not json", "[]", '{"master": "AAAA"}',
                    json.dumps({"master": "A" * 43, "self_signing": "!", "user_signing": "B"})):
        broken.write_text(content)
        with pytest.raises(IdentityError, match=r"broken\.json"):
            CrossSigningKeys.load(broken)


def test_private_material_never_in_repr(tmp_path: Path) -> None:
    keys = CrossSigningKeys.generate()
    text = repr(keys) + str(keys) + repr(keys.master)
    for key in (keys.master, keys.self_signing, keys.user_signing):
        assert encode_base64(key.seed) not in text
        assert key.seed.hex() not in text
        assert key.public in text
    with pytest.raises(ValueError, match="32 bytes"):
        SigningKey(b"short")


# -- what gets uploaded -----------------------------------------------------------------------


def test_device_signing_upload_body_structure_and_signatures() -> None:
    keys = CrossSigningKeys.generate()
    body = keys.device_signing_upload_body(USER)
    assert set(body) == {"master_key", "self_signing_key", "user_signing_key"}
    assert body["master_key"] == {"user_id": USER, "usage": ["master"],
                                  "keys": {f"ed25519:{keys.master_public}": keys.master_public}}
    master_id = f"ed25519:{keys.master_public}"
    for name, usage, public in (
        ("self_signing_key", "self_signing", keys.self_signing_public),
        ("user_signing_key", "user_signing", keys.user_signing_public),
    ):
        obj = body[name]
        assert obj["user_id"] == USER and obj["usage"] == [usage]
        assert obj["keys"] == {f"ed25519:{public}": public}
        assert list(obj["signatures"]) == [USER] and list(obj["signatures"][USER]) == [master_id]
        assert_signedjson_accepts(obj, USER, keys.master_public)
        assert verify_signed_json(obj, USER, master_id, keys.master_public)
    for obj in body.values():
        for key_id, public in obj["keys"].items():
            assert "=" not in key_id and "=" not in public and len(public) == 43
        for sigs in obj.get("signatures", {}).values():
            assert all("=" not in sig and len(sig) == 86 for sig in sigs.values())


def device_keys(device_id: str = "DEV", user: str = USER) -> dict[str, Any]:
    """A device's keys as /keys/query returns them, self-signed by the device key."""
    own = SigningKey.generate()
    obj = {"user_id": user, "device_id": device_id,
           "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
           "keys": {f"ed25519:{device_id}": own.public, f"curve25519:{device_id}": "c" * 43}}
    signed = sign_json(obj, user, f"ed25519:{device_id}", own)
    signed["unsigned"] = {"device_display_name": "nerbot"}
    return signed


def test_sign_device_keeps_self_signature_and_drops_unsigned() -> None:
    keys = CrossSigningKeys.generate()
    device = device_keys()
    signed = keys.sign_device(device)
    assert "unsigned" not in signed and "unsigned" in device
    assert set(signed["signatures"][USER]) == {"ed25519:DEV", keys.self_signing.key_id}
    assert_signedjson_accepts(signed, USER, keys.self_signing_public)
    device_key = device["keys"]["ed25519:DEV"]
    signedjson.sign.verify_signed_json(
        signed, USER, signedjson.key.decode_verify_key_bytes("ed25519:DEV",
                                                             decode_base64(device_key)))
    with pytest.raises(ValueError):
        keys.sign_device({"keys": {}})


def test_sign_master_key_of_another_user() -> None:
    mine, theirs = CrossSigningKeys.generate(), CrossSigningKeys.generate()
    their_master = {**theirs.key_object(ALICE, "master"), "unsigned": {"x": 1}}
    their_master = sign_json(their_master, ALICE, "ed25519:ALICEDEV", SigningKey.generate())
    signed = mine.sign_master_key(their_master, USER)
    assert "unsigned" not in signed
    assert set(signed["signatures"]) == {ALICE, USER}
    assert list(signed["signatures"][USER]) == [mine.user_signing.key_id]
    assert_signedjson_accepts(signed, USER, mine.user_signing_public)


def test_signatures_upload_body_files_objects_by_owner_and_name() -> None:
    mine, theirs = CrossSigningKeys.generate(), CrossSigningKeys.generate()
    device = mine.sign_device(device_keys("DEV1"))
    their_master = mine.sign_master_key(theirs.key_object(ALICE, "master"), USER)
    body = signatures_upload_body([device, their_master])
    assert body == {USER: {"DEV1": device}, ALICE: {theirs.master_public: their_master}}
    with pytest.raises(ValueError):
        signatures_upload_body([{"user_id": USER, "keys": {"a": "b", "c": "d"}}])
    with pytest.raises(ValueError):
        signatures_upload_body([{"device_id": "X"}])


# -- reading /keys/query -----------------------------------------------------------------------


def keys_query_response(keys: CrossSigningKeys, *devices: dict[str, Any]) -> dict[str, Any]:
    body = keys.device_signing_upload_body(USER)
    return {
        "failures": {},
        "master_keys": {USER: body["master_key"]},
        "self_signing_keys": {USER: body["self_signing_key"]},
        "device_keys": {USER: {d["device_id"]: d for d in devices}},
    }


def test_device_cross_signed_detection() -> None:
    keys = CrossSigningKeys.generate()
    device = device_keys()
    unsigned = keys_query_response(keys, device)
    assert master_key_of(unsigned, USER) == keys.master_public
    assert self_signing_key_of(unsigned, USER) == keys.self_signing_public
    assert not is_device_cross_signed(unsigned, USER, "DEV")
    signed = keys_query_response(keys, {**keys.sign_device(device), "unsigned": {"n": 1}})
    assert is_device_cross_signed(signed, USER, "DEV")
    assert not is_device_cross_signed(signed, USER, "OTHER")
    assert not is_device_cross_signed(signed, ALICE, "DEV")
    assert not is_device_cross_signed({}, USER, "DEV")


def test_forged_device_signature_is_not_cross_signed() -> None:
    keys, forger = CrossSigningKeys.generate(), SigningKey.generate()
    # Valid-looking base64 under the self-signing key's ID, but made by a different key.
    forged = sign_json(device_keys(), USER, keys.self_signing.key_id, forger)
    assert len(decode_base64(forged["signatures"][USER][keys.self_signing.key_id])) == 64
    assert not is_device_cross_signed(keys_query_response(keys, forged), USER, "DEV")


def test_device_object_must_name_its_own_user_and_device() -> None:
    keys = CrossSigningKeys.generate()
    signed = keys.sign_device(device_keys("DEV"))
    response = keys_query_response(keys, signed)
    response["device_keys"][USER]["OTHERDEV"] = signed  # the same object under another ID
    assert is_device_cross_signed(response, USER, "DEV")
    assert not is_device_cross_signed(response, USER, "OTHERDEV")


def test_self_signing_key_not_signed_by_master_is_rejected() -> None:
    keys, impostor = CrossSigningKeys.generate(), CrossSigningKeys.generate()
    device = keys.sign_device(device_keys())
    # Someone else's master key: our self-signing key carries no signature of theirs.
    response = keys_query_response(keys, device)
    response["master_keys"][USER] = impostor.key_object(USER, "master")
    assert self_signing_key_of(response, USER) is None
    assert not is_device_cross_signed(response, USER, "DEV")
    # Our master key, but the self-signing key signed by some other key under its key ID.
    response = keys_query_response(keys, device)
    ssk = response["self_signing_keys"][USER]
    del ssk["signatures"]
    response["self_signing_keys"][USER] = sign_json(ssk, USER, keys.master.key_id,
                                                    impostor.master)
    assert self_signing_key_of(response, USER) is None
    assert not is_device_cross_signed(response, USER, "DEV")
    # And with no signature at all.
    del response["self_signing_keys"][USER]["signatures"]
    assert not is_device_cross_signed(response, USER, "DEV")


@pytest.mark.parametrize("mangle", [
    lambda m: m.update(usage=["self_signing"]),
    lambda m: m.update(user_id=ALICE),
    lambda m: m["keys"].update({"ed25519:other": "other"}),
    lambda m: m.update(keys={"ed25519:abc": "def"}),
    lambda m: m.clear(),
    lambda m: m.update(keys={"ed25519:" + "A" * 44: "A" * 44}),  # 33 bytes, named consistently
])
def test_malformed_master_keys_are_ignored(mangle: Any) -> None:
    keys = CrossSigningKeys.generate()
    device = keys.sign_device(device_keys())
    response = keys_query_response(keys, device)
    mangle(response["master_keys"][USER])
    assert master_key_of(response, USER) is None
    assert not is_device_cross_signed(response, USER, "DEV")


@pytest.mark.parametrize(("key", "expected"), [
    ("abcdefgh", "abcd efgh"), ("abcdef", "abcd ef"), ("", ""),
    ("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefg",
     "0123 4567 89AB CDEF GHIJ KLMN OPQR STUV WXYZ abcd efg"),
])
def test_fingerprint_groups(key: str, expected: str) -> None:
    assert fingerprint(key) == expected
    assert fingerprint(key).replace(" ", "") == key
