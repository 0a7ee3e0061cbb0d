"""Cross-signing JSON signatures, checked against matrix-org's independent signedjson."""

from __future__ import annotations

import copy
import stat
from pathlib import Path
from typing import Any

import pytest
import signedjson.key
import signedjson.sign
from unpaddedbase64 import decode_base64, encode_base64

from nerbot.matrix.crosssigning import (
    CrossSigningKeys,
    SigningKey,
    canonical_json,
    fingerprint,
    is_device_cross_signed,
    master_key_of,
    self_signing_key_of,
    sign_json,
    verify_signed_json,
)

USER = "@nerbot:localhost"


def their_verify_key(public: str) -> Any:
    return signedjson.key.decode_verify_key_bytes(f"ed25519:{public}", decode_base64(public))


def test_our_signature_verifies_with_signedjson() -> None:
    key = SigningKey.generate()
    obj = {"user_id": USER, "keys": {"a": "b"}, "unsigned": {"x": 1}, "n": [1, 2, "三"]}
    signed = sign_json(obj, USER, key.key_id, key)
    signedjson.sign.verify_signed_json(signed, USER, their_verify_key(key.public))


def test_signedjson_signature_verifies_with_ours() -> None:
    their_key = signedjson.key.generate_signing_key("x")
    public = encode_base64(their_key.verify_key.encode())
    their_key.version = public  # key ID "ed25519:<public>", as cross-signing keys use
    obj = signedjson.sign.sign_json({"user_id": USER, "usage": ["master"]}, USER, their_key)
    assert verify_signed_json(obj, USER, f"ed25519:{public}", public)
    obj["usage"] = ["self_signing"]
    assert not verify_signed_json(obj, USER, f"ed25519:{public}", public)


def test_tampering_and_bad_input_fail_closed() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    signed = sign_json({"a": 1}, USER, key.key_id, key)
    assert verify_signed_json(signed, USER, key.key_id, key.public)
    assert not verify_signed_json({**signed, "a": 2}, USER, key.key_id, key.public)
    assert not verify_signed_json(signed, USER, key.key_id, other.public)
    assert not verify_signed_json(signed, "@someone:else", key.key_id, key.public)
    assert not verify_signed_json(signed, USER, "ed25519:missing", key.public)
    assert not verify_signed_json(signed, USER, key.key_id, "not base64!")
    broken = copy.deepcopy(signed)
    broken["signatures"][USER][key.key_id] = "%%%"
    assert not verify_signed_json(broken, USER, key.key_id, key.public)
    assert not verify_signed_json({"signatures": "nonsense"}, USER, key.key_id, key.public)
    # `unsigned` is outside the signature: changing it does not matter, and cannot forge.
    assert verify_signed_json({**signed, "unsigned": {"x": 1}}, USER, key.key_id, key.public)


def test_canonical_json_strips_and_does_not_mutate() -> None:
    obj = {"b": 1, "a": "é", "signatures": {"x": {}}, "unsigned": {"y": 2}}
    before = copy.deepcopy(obj)
    assert canonical_json(obj) == b'{"a":"\xc3\xa9","b":1}'
    assert obj == before


def test_existing_signatures_are_kept() -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    signed = sign_json(sign_json({"k": 1}, USER, a.key_id, a), USER, b.key_id, b)
    assert set(signed["signatures"][USER]) == {a.key_id, b.key_id}
    assert verify_signed_json(signed, USER, a.key_id, a.public)
    assert verify_signed_json(signed, USER, b.key_id, b.public)


def test_key_file_roundtrip_with_0600(tmp_path: Path) -> None:
    keys = CrossSigningKeys.generate()
    path = tmp_path / "sub" / "cross-signing.json"
    keys.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = CrossSigningKeys.load(path)
    assert loaded is not None and loaded.master_public == keys.master_public
    assert loaded.user_signing.public == keys.user_signing.public
    assert CrossSigningKeys.load(tmp_path / "missing.json") is None
    assert keys.master.seed.hex() not in repr(keys)


def test_upload_body_structure_and_signatures() -> None:
    keys = CrossSigningKeys.generate()
    body = keys.device_signing_upload_body(USER)
    master = body["master_key"]
    assert master == {"user_id": USER, "usage": ["master"],
                      "keys": {f"ed25519:{keys.master_public}": keys.master_public}}
    for name, usage in (("self_signing_key", "self_signing"), ("user_signing_key",
                                                              "user_signing")):
        obj = body[name]
        assert obj["usage"] == [usage]
        signedjson.sign.verify_signed_json(obj, USER, their_verify_key(keys.master_public))
    for obj in body.values():
        for key_id in obj["keys"]:
            assert "=" not in key_id


def keys_query_response(keys: CrossSigningKeys, device: dict[str, Any]) -> dict[str, Any]:
    body = keys.device_signing_upload_body(USER)
    return {
        "master_keys": {USER: body["master_key"]},
        "self_signing_keys": {USER: body["self_signing_key"]},
        "device_keys": {USER: {device["device_id"]: device}},
    }


def device_keys(device_id: str = "DEV") -> dict[str, Any]:
    own = SigningKey.generate()
    obj = {"user_id": USER, "device_id": device_id, "algorithms": ["m.megolm.v1.aes-sha2"],
           "keys": {f"ed25519:{device_id}": own.public, f"curve25519:{device_id}": "c"}}
    return sign_json(obj, USER, f"ed25519:{device_id}", own)


def test_device_cross_signed_detection() -> None:
    keys = CrossSigningKeys.generate()
    device = device_keys()
    unsigned = keys_query_response(keys, device)
    assert master_key_of(unsigned, USER) == keys.master_public
    assert self_signing_key_of(unsigned, USER) == keys.self_signing.public
    assert not is_device_cross_signed(unsigned, USER, "DEV")
    signed = keys_query_response(keys, {**keys.sign_device(USER, device), "unsigned": {}})
    assert is_device_cross_signed(signed, USER, "DEV")
    signedjson.sign.verify_signed_json(
        signed["device_keys"][USER]["DEV"], USER, their_verify_key(keys.self_signing.public))
    assert not is_device_cross_signed(signed, USER, "OTHER")
    assert not is_device_cross_signed(signed, "@x:y", "DEV")


def test_forged_device_signature_is_not_cross_signed() -> None:
    keys, forger = CrossSigningKeys.generate(), SigningKey.generate()
    device = device_keys()
    forged = copy.deepcopy(device)
    # A valid-looking signature under the self-signing key's ID, made by another key.
    forged = sign_json(forged, USER, keys.self_signing.key_id, forger)
    assert not is_device_cross_signed(keys_query_response(keys, forged), USER, "DEV")


def test_self_signing_key_not_signed_by_master_is_rejected() -> None:
    keys, impostor = CrossSigningKeys.generate(), CrossSigningKeys.generate()
    device = keys.sign_device(USER, device_keys())
    response = keys_query_response(keys, device)
    response["master_keys"][USER] = impostor.key_object(USER, "master")
    assert self_signing_key_of(response, USER) is None
    assert not is_device_cross_signed(response, USER, "DEV")


def test_sign_master_key_of_another_user() -> None:
    mine, theirs = CrossSigningKeys.generate(), CrossSigningKeys.generate()
    their_master = theirs.key_object("@alice:localhost", "master")
    signed = mine.sign_master_key(USER, their_master)
    signedjson.sign.verify_signed_json(signed, USER, their_verify_key(mine.user_signing.public))


@pytest.mark.parametrize(("key", "expected"), [("abcdefgh", "abcd efgh"), ("abcdef", "abcd ef")])
def test_fingerprint_groups(key: str, expected: str) -> None:
    assert fingerprint(key) == expected
