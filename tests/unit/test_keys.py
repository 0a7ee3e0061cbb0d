"""Turning /keys/query responses into facts: every signature checked, each only once."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from nerbot.domain.facts import KeyFacts
from nerbot.errors import MatrixRequestError
from nerbot.matrix.crosssigning import CrossSigningKeys, SigningKey, sign_json, verify_signature
from nerbot.matrix.keys import KeyDirectory, SignatureCache, facts_from_response

USER = "@a:hs"


def device_keys(device_id: str, key: SigningKey, name: str = "phone") -> dict[str, Any]:
    obj = {"user_id": USER, "device_id": device_id, "algorithms": [],
           "keys": {f"ed25519:{device_id}": key.public, f"curve25519:{device_id}": "c" * 43}}
    signed = sign_json(obj, USER, f"ed25519:{device_id}", key)
    signed["unsigned"] = {"device_display_name": name}
    return signed


def response(cs: CrossSigningKeys | None, devices: dict[str, dict[str, Any]]) -> dict[str, Any]:
    body: dict[str, Any] = {"device_keys": {USER: devices}}
    if cs is not None:
        upload = cs.device_signing_upload_body(USER)
        body["master_keys"] = {USER: upload["master_key"]}
        body["self_signing_keys"] = {USER: upload["self_signing_key"]}
    return body


def test_facts_from_response_checks_every_link() -> None:
    cs = CrossSigningKeys.generate()
    a, b, c = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    signed = {**cs.sign_device(device_keys("A", a)), "unsigned": {"device_display_name": "phone"}}
    bogus_self_signature = device_keys("C", c)
    bogus_self_signature["keys"]["ed25519:C"] = SigningKey.generate().public
    resp = response(cs, {"A": signed, "B": device_keys("B", b), "C": bogus_self_signature,
                         "D": {"user_id": USER, "device_id": "D"}})
    facts = facts_from_response(resp, USER, SignatureCache())
    by_id = {d.device_id: d for d in facts.devices}
    assert facts.has_master_key and facts.self_signing_valid
    assert by_id["A"].cross_signed and by_id["A"].display_name == "phone"
    assert by_id["B"].has_identity_keys and not by_id["B"].cross_signed
    assert not by_id["C"].has_identity_keys  # its own signature does not hold
    assert not by_id["D"].has_identity_keys and not by_id["D"].cross_signed


def test_no_cross_signing() -> None:
    facts = facts_from_response(response(None, {"A": device_keys("A", SigningKey.generate())}),
                                USER, SignatureCache())
    assert not facts.has_master_key and not facts.self_signing_valid
    assert not facts.devices[0].cross_signed and facts.devices[0].has_identity_keys


def test_signature_cache_checks_each_signature_once() -> None:
    cs = CrossSigningKeys.generate()
    resp = response(cs, {"A": cs.sign_device(device_keys("A", SigningKey.generate()))})
    checked: list[bytes] = []

    def counting(message: bytes, signature: str, key: Any) -> bool:
        checked.append(message)
        return verify_signature(message, signature, key)

    cache = SignatureCache(counting)
    first = facts_from_response(resp, USER, cache)
    assert len(checked) == 3  # master→ssk, device self-signature, ssk→device
    assert facts_from_response(resp, USER, cache) == first and len(checked) == 3


def test_signature_cache_is_keyed_on_content() -> None:
    key = SigningKey.generate()
    signed = sign_json({"a": 1}, USER, key.key_id, key)
    cache = SignatureCache()
    assert cache.verify(signed, USER, key.key_id, key.public)
    tampered = {**signed, "a": 2}
    assert not cache.verify(tampered, USER, key.key_id, key.public)


class FakeHttp:
    """Answers /keys/query from a table and counts requests (the seam below KeyDirectory)."""

    def __init__(self, table: dict[str, dict[str, Any]]) -> None:
        self.table = table
        self.batches: list[list[str]] = []

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                      **_: Any) -> tuple[int, dict[str, Any]]:
        assert body is not None
        users = list(body["device_keys"])
        self.batches.append(users)
        return 200, {"device_keys": {u: self.table.get(u, {}) for u in users}}


async def test_directory_batches_caches_and_distrusts_strangers() -> None:
    table = {f"@u{i}:hs": {} for i in range(5)}
    http = FakeHttp(table)
    room_mates = {"@u0:hs", "@u1:hs", "@u2:hs", "@u3:hs"}
    directory = KeyDirectory(http, shares_room=lambda u: u in room_mates,  # type: ignore[arg-type]
                             batch_size=2)
    first = await directory.facts(table)
    assert all(isinstance(f, KeyFacts) for f in first.values())
    assert [len(b) for b in http.batches] == [2, 2, 1]
    http.batches.clear()
    await directory.facts(table)
    assert http.batches == [["@u4:hs"]]  # only the user sharing no room is re-queried
    http.batches.clear()
    directory.invalidate(["@u1:hs"])
    await directory.facts(["@u0:hs", "@u1:hs"])
    assert http.batches == [["@u1:hs"]]
    http.batches.clear()
    await directory.facts(["@u0:hs"], fresh=True)
    assert http.batches == [["@u0:hs"]]


class UnreachableServers(FakeHttp):
    """Like Synapse when a remote server is down: its users are missing and it is in failures,
    unless the server answered from its own device-list cache. A batch naming ``@boom`` fails."""

    def __init__(self, table: dict[str, dict[str, Any]], down: set[str],
                 cached: set[str]) -> None:
        super().__init__(table)
        self.down, self.cached = down, cached

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                      **_: Any) -> tuple[int, dict[str, Any]]:
        assert body is not None
        users = list(body["device_keys"])
        self.batches.append(users)
        if "@boom:hs" in users:
            raise MatrixRequestError(method, path, 502, {"errcode": "M_UNKNOWN"})
        listed = {u for u in users if u.split(":", 1)[1] not in self.down or u in self.cached}
        return 200, {"device_keys": {u: self.table.get(u, {}) for u in listed},
                     "failures": {s: {"status": 503} for s in self.down}}


async def test_unreachable_users_are_left_out_not_reported_without_keys() -> None:
    a = SigningKey.generate()
    table = {"@a:hs": {"A": device_keys("A", a)}, "@r:far": {}, "@c:far": {},
             "@boom:hs": {}, "@z:hs": {}}
    http = UnreachableServers(table, down={"far"}, cached={"@c:far"})
    directory = KeyDirectory(http, shares_room=lambda u: True,  # type: ignore[arg-type]
                             batch_size=2)
    facts = await directory.facts(["@a:hs", "@r:far", "@c:far", "@boom:hs", "@z:hs"])
    # @r: its server is down and nothing is cached; @boom's whole batch (with @c) failed.
    assert set(facts) == {"@a:hs", "@z:hs"}
    assert facts["@a:hs"].devices[0].has_identity_keys
    assert directory.cached("@r:far") is None  # nothing cached: asked again next time
    again = await directory.facts(["@c:far"])
    assert set(again) == {"@c:far"}  # answered from the server's cache despite the failure


async def test_a_failed_batch_names_every_user_it_left_out(
        caplog: pytest.LogCaptureFixture) -> None:
    users = ["@boom:hs", "@x:hs", "@y:far"]
    http = UnreachableServers({u: {} for u in users}, down=set(), cached=set())
    directory = KeyDirectory(http, shares_room=lambda u: True)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="nerbot.matrix.keys"):
        assert await directory.facts(users) == {}
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("Key query for 3 user(s) failed (MatrixRequestError: ")
    assert line.endswith("their keys are unavailable: @boom:hs, @x:hs, @y:far")


def test_a_huge_list_of_users_is_named_up_to_a_cap_and_counted_beyond() -> None:
    from nerbot.matrix.keys import LOGGED_USERS, _named

    many = [f"@u{i}:hs" for i in range(LOGGED_USERS + 3)]
    assert _named(many).endswith(f"@u{LOGGED_USERS - 1}:hs and 3 more")
    assert _named(many[:2]) == "@u0:hs, @u1:hs"
