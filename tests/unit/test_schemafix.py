"""The compiled validation must say exactly what nio's jsonschema validation says.

Differential: every nio schema against realistic events and responses and thousands of their
mutants (a key removed, a value of another type, a bad user ID), comparing the verdict and the
defaults filled in.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import jsonschema
import nio
import nio.crypto.olm_machine
import nio.events.misc
import nio.responses
import nio.schemas
import pytest
from nio.schemas import Schemas

from nerbot.matrix import schemafix

SCHEMAS = {name: value for name, value in vars(Schemas).items()
           if not name.startswith("_") and isinstance(value, dict)}

USER = "@alice:example.org"
TXN = "txn1"
START = {"from_device": "DEV", "method": "m.sas.v1", "transaction_id": TXN,
         "key_agreement_protocols": ["curve25519-hkdf-sha256"], "hashes": ["sha256"],
         "message_authentication_codes": ["hkdf-hmac-sha256.v2"],
         "short_authentication_string": ["emoji", "decimal"]}
ENCRYPTED_ROOM = {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgAEn", "device_id": "DEV",
                  "sender_key": "c2VuZGVy", "session_id": "c2Vzc2lvbg"}
TIMELINE_EVENT = {"type": "m.room.encrypted", "event_id": "$ev", "sender": USER,
                  "origin_server_ts": 1700000000000, "content": ENCRYPTED_ROOM,
                  "unsigned": {"age": 5}}
MESSAGE = {"type": "m.room.message", "event_id": "$m", "sender": USER,
           "origin_server_ts": 1700000000000,
           "content": {"msgtype": "m.text", "body": "!verify", "format": "org.matrix.custom.html",
                       "formatted_body": "<p>!verify</p>"}}
MEMBER = {"type": "m.room.member", "event_id": "$j", "sender": USER, "state_key": USER,
          "origin_server_ts": 1700000000000,
          "content": {"membership": "join", "displayname": "Alice"}}
ENCRYPTION = {"type": "m.room.encryption", "event_id": "$c", "sender": USER, "state_key": "",
              "origin_server_ts": 1700000000000,
              "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
REQUEST_IN_ROOM = {"type": "m.room.message", "event_id": "$r", "sender": USER,
                   "origin_server_ts": 1700000000000,
                   "content": {"msgtype": "m.key.verification.request", "body": "verify",
                               "to": "@bot:example.org", "from_device": "DEV",
                               "methods": ["m.sas.v1"]}}
TO_DEVICE = [
    {"type": "m.key.verification.start", "sender": USER, "content": START},
    {"type": "m.key.verification.accept", "sender": USER,
     "content": {"transaction_id": TXN, "commitment": "Y29tbWl0", "hash": "sha256",
                 "key_agreement_protocol": "curve25519-hkdf-sha256",
                 "message_authentication_code": "hkdf-hmac-sha256.v2",
                 "short_authentication_string": ["emoji", "decimal"]}},
    {"type": "m.key.verification.key", "sender": USER,
     "content": {"transaction_id": TXN, "key": "a2V5"}},
    {"type": "m.key.verification.mac", "sender": USER,
     "content": {"transaction_id": TXN, "keys": "a2V5cw", "mac": {"ed25519:DEV": "bWFj"}}},
    {"type": "m.key.verification.cancel", "sender": USER,
     "content": {"transaction_id": TXN, "code": "m.user", "reason": "no"}},
    {"type": "m.room.encrypted", "sender": USER,
     "content": {"algorithm": "m.olm.v1.curve25519-aes-sha2", "sender_key": "c2VuZGVy",
                 "ciphertext": {"Y3VydmU": {"type": 0, "body": "Ym9keQ"}}}},
    {"type": "m.room_key_request", "sender": USER,
     "content": {"action": "request", "requesting_device_id": "DEV", "request_id": "r1",
                 "body": {"algorithm": "m.megolm.v1.aes-sha2", "room_id": "!r:example.org",
                          "sender_key": "c2VuZGVy", "session_id": "c2Vzc2lvbg"}}},
]
DECRYPTED_OLM = {"type": "m.room_key", "sender": USER, "recipient": "@bot:example.org",
                 "keys": {"ed25519": "ZWQ"}, "recipient_keys": {"ed25519": "ZWQy"},
                 "content": {"algorithm": "m.megolm.v1.aes-sha2", "room_id": "!r:example.org",
                             "session_id": "c2Vzc2lvbg", "session_key": "a2V5"}}
DECRYPTED_MEGOLM = {"type": "m.key.verification.key", "room_id": "!r:example.org",
                    "content": {"key": "a2V5", "m.relates_to": {"rel_type": "m.reference",
                                                               "event_id": "$r"}}}
SYNC = {
    "next_batch": "s72595_4483_1934",
    "rooms": {
        "join": {"!r:example.org": {
            "timeline": {"events": [TIMELINE_EVENT, MESSAGE, REQUEST_IN_ROOM],
                         "limited": False, "prev_batch": "t34"},
            "state": {"events": [MEMBER, ENCRYPTION]},
            "ephemeral": {"events": []}, "account_data": {"events": []},
            "summary": {"m.joined_member_count": 2, "m.heroes": [USER]},
            "unread_notifications": {"highlight_count": 0, "notification_count": 1}}},
        "invite": {"!i:example.org": {"invite_state": {"events": [
            {"type": "m.room.member", "sender": USER, "state_key": "@bot:example.org",
             "content": {"membership": "invite"}}]}}},
        "leave": {},
    },
    "to_device": {"events": TO_DEVICE},
    "device_lists": {"changed": [USER], "left": []},
    "device_one_time_keys_count": {"signed_curve25519": 50},
    "account_data": {"events": [{"type": "m.direct", "content": {USER: ["!r:example.org"]}}]},
    "presence": {"events": []},
}
KEYS_QUERY = {
    "failures": {},
    "device_keys": {USER: {"DEV": {
        "user_id": USER, "device_id": "DEV",
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {"curve25519:DEV": "Y3VydmU", "ed25519:DEV": "ZWQ"},
        "signatures": {USER: {"ed25519:DEV": "c2ln"}},
        "unsigned": {"device_display_name": "Element Web"}}}},
    "master_keys": {USER: {"user_id": USER, "usage": ["master"], "keys": {"ed25519:M": "M"}}},
}
KEYS_CLAIM = {"failures": {}, "one_time_keys": {USER: {"DEV": {"signed_curve25519:AAAA": {
    "key": "a2V5", "signatures": {USER: {"ed25519:DEV": "c2ln"}}}}}}}
OTHERS = [
    {"event_id": "$sent"},
    {"room_id": "!r:example.org"},
    {"one_time_key_counts": {"signed_curve25519": 50}},
    {"user_id": USER, "access_token": "tok", "device_id": "DEV", "home_server": "example.org"},
    {"joined": {USER: {"display_name": "Alice", "avatar_url": None}}},
    {"errcode": "M_LIMIT_EXCEEDED", "error": "Too many requests", "retry_after_ms": 300},
    {"chunk": [MESSAGE, MEMBER], "start": "a", "end": "b"},
    {"devices": [{"device_id": "DEV", "display_name": "Web", "last_seen_ip": "127.0.0.1",
                  "last_seen_ts": 1700000000000}]},
]
CORPUS: list[Any] = [SYNC, KEYS_QUERY, KEYS_CLAIM, MESSAGE, MEMBER, ENCRYPTION,
                     REQUEST_IN_ROOM, TIMELINE_EVENT, DECRYPTED_OLM, DECRYPTED_MEGOLM,
                     *TO_DEVICE, *OTHERS, {}, [], "text", 7, None]
REPLACEMENTS: list[Any] = [None, 7, 1.5, True, "x", "not-a-user", [], {}, ["x"]]


def mutants(value: Any, depth: int = 0) -> Iterator[Any]:
    """The value with one thing wrong: a key gone, or one value replaced by another type."""
    if depth > 6:
        return
    if isinstance(value, dict):
        for key in value:
            yield {k: v for k, v in value.items() if k != key}
            for child in mutants(value[key], depth + 1):
                yield {**value, key: child}
    elif isinstance(value, list):
        for index, item in enumerate(value[:2]):
            for child in mutants(item, depth + 1):
                yield [*value[:index], child, *value[index + 1:]]
    if depth:
        for other in REPLACEMENTS:
            if type(other) is not type(value) or other != value:
                yield other


def verdict(validate: Any, instance: Any, schema: dict[str, Any]) -> tuple[str, Any]:
    instance = copy.deepcopy(instance)
    try:
        validate(instance, schema)
    except (jsonschema.ValidationError, jsonschema.SchemaError):
        return "invalid", None
    except Exception as exc:  # jsonschema crashes on some non-objects; see the test below
        return f"crash:{type(exc).__name__}", None
    return "valid", instance  # with defaults filled in


@pytest.fixture(scope="module")
def original() -> Any:
    current = nio.schemas.validate_json
    return current.original if isinstance(current, schemafix.CompiledValidation) else current


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_compiled_agrees_with_jsonschema(name: str, original: Any) -> None:
    schema = SCHEMAS[name]
    compiled = schemafix.CompiledValidation(original)
    accepted = [i for i in CORPUS if verdict(original, i, schema)[0] == "valid"]
    cases = [*CORPUS, *(m for i in accepted for m in mutants(i))]
    checked = 0
    for instance in cases[:4000]:
        expected = verdict(original, instance, schema)
        got = verdict(compiled, instance, schema)
        if expected[0].startswith("crash"):
            assert got[0] == "invalid", (name, instance, expected, got)
        else:
            assert got == expected, (name, instance, expected, got)
        checked += 1
    assert checked >= len(CORPUS)


def test_corpus_reaches_the_schemas_the_bot_lives_on(original: Any) -> None:
    """The mutants only mean something if the base instances pass the schemas that matter."""
    for name in ("sync", "to_device", "room_message_text", "room_megolm_encrypted",
                 "key_verification_start", "key_verification_accept", "key_verification_key",
                 "key_verification_mac", "key_verification_cancel", "keys_query",
                 "room_megolm_decrypted", "olm_event", "room_membership",
                 "room_encryption", "room_event_id", "keys_claim"):
        assert name in SCHEMAS, name
        assert any(verdict(original, i, SCHEMAS[name])[0] == "valid" for i in CORPUS), name


def test_bad_input_is_a_validation_error_not_a_crash(original: Any) -> None:
    compiled = schemafix.CompiledValidation(original)
    with pytest.raises(jsonschema.ValidationError):
        compiled({"rooms": "not an object", "next_batch": "s"}, Schemas.sync)
    with pytest.raises(jsonschema.ValidationError):
        compiled({"type": "m.key.verification.start", "sender": USER,
                  "content": {**START, "transaction_id": 5}}, Schemas.key_verification_start)


def test_nested_defaults_are_filled_like_nio() -> None:
    compiled = schemafix.CompiledValidation(nio.schemas.validate_json)
    response = {"next_batch": "s", "rooms": {"join": {"!r:example.org": {"timeline": {
        "events": [], "limited": False, "prev_batch": "p"}}}}}
    compiled(response, Schemas.sync)
    room = response["rooms"]["join"]["!r:example.org"]
    assert room["state"] == {"events": []} and room["ephemeral"] == {"events": []}
    assert response["to_device"] == {"events": []}


def test_a_schema_fastjsonschema_rejects_stays_on_jsonschema() -> None:
    seen: list[Any] = []
    compiled = schemafix.CompiledValidation(lambda i, s: seen.append((i, s)))
    compiled({"flows": [{"stages": []}]}, Schemas.delete_devices)  # nio's one invalid schema
    assert seen == [({"flows": [{"stages": []}]}, Schemas.delete_devices)]


def test_install_replaces_every_nio_import_once() -> None:
    installed = schemafix.install()
    assert schemafix.install() is installed
    for module in (nio.schemas, nio.responses, nio.crypto.olm_machine, nio.events.misc):
        assert module.validate_json is installed
    # and nio still turns a bad event into a BadEvent, as before
    bad = nio.Event.parse_event({"type": "m.room.message", "sender": USER,
                                 "event_id": "$x", "origin_server_ts": 1,
                                 "content": {"msgtype": "m.text", "body": 5}})
    assert isinstance(bad, nio.BadEvent)
