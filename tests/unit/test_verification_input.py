"""Hostile verification input: validation at intake, the per-sender limit, and what the service
does (and does not do) with what fails them: no task, no key query, no row, no room, no DM.

The service runs with its real store (in memory), runner and flow; the client, the HTTP seam and
the conversation are recorders.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import nio
import pytest

from nerbot.domain import verification as v
from nerbot.errors import VerificationRefused
from nerbot.ids import RoomId, UserId
from nerbot.matrix.crosssigning import SigningKey, sign_json
from nerbot.matrix.verification import VerificationService
from nerbot.runner import TaskRunner
from nerbot.store import Store

NOW = 1_700_000_000_000
BOT, BOT_DEV = "@nerbot:hs", "BOTDEV"
ALICE, ALICE_DEV = "@alice:hs", "ALICEDEV"
MALLORY = "@mallory:hs"
STRANGER = "@stranger:elsewhere"
TXN = "txn-1"
MINUTE = 60_000


# -- validate_content ----------------------------------------------------------------------------

SAS_START = {"from_device": "D", "method": v.SAS_V1,
             "key_agreement_protocols": ["curve25519-hkdf-sha256"], "hashes": ["sha256"],
             "message_authentication_codes": ["hkdf-hmac-sha256.v2"],
             "short_authentication_string": ["decimal", "emoji"]}
VALID: dict[str, dict[str, Any]] = {
    v.REQUEST: {"from_device": "D", "methods": [v.SAS_V1], "timestamp": NOW},
    v.READY: {"from_device": "D", "methods": [v.SAS_V1]},
    v.START: SAS_START,
    v.ACCEPT: {"key_agreement_protocol": "curve25519-hkdf-sha256", "hash": "sha256",
               "message_authentication_code": "hkdf-hmac-sha256.v2",
               "short_authentication_string": ["emoji"], "commitment": "c" * 43},
    v.KEY: {"key": "k" * 43},
    v.MAC: {"mac": {"ed25519:D": "m" * 43}, "keys": "k" * 43},
    v.DONE: {},
    v.CANCEL: {"code": "m.user", "reason": "no"},
}
LONG = "x" * (v.MAX_ID_LENGTH + 1)


def to_device(event_type: str, **changes: Any) -> dict[str, Any]:
    content = {**VALID[event_type], "transaction_id": TXN, **changes}
    return {k: val for k, val in content.items() if val is not DROP}


DROP = object()  # a field to leave out


@pytest.mark.parametrize("event_type", sorted(VALID))
def test_valid_content_of_every_type_passes(event_type: str) -> None:
    assert v.validate_content(event_type, to_device(event_type), NOW) is None


@pytest.mark.parametrize("event_type", sorted(VALID))
@pytest.mark.parametrize("bad_txn", [DROP, None, 42, ["t"], "", LONG])
def test_no_usable_transaction_id_is_ignored(event_type: str, bad_txn: object) -> None:
    content = to_device(event_type, transaction_id=bad_txn)
    assert v.validate_content(event_type, content, NOW) == v.IGNORE


@pytest.mark.parametrize("content", [None, [], "text", 7])
def test_content_that_is_not_an_object_is_ignored(content: object) -> None:
    assert v.validate_content(v.REQUEST, content, NOW) == v.IGNORE
    assert v.validate_content(v.KEY, content, NOW) == v.IGNORE


REQUEST_PROBLEMS = {
    "empty": {"from_device": DROP, "methods": DROP, "timestamp": DROP},
    "no from_device": {"from_device": DROP},
    "from_device not a string": {"from_device": 12},
    "from_device empty": {"from_device": ""},
    "from_device of 10,000 characters": {"from_device": "D" * 10_000},
    "no methods": {"methods": DROP},
    "methods not a list": {"methods": v.SAS_V1},
    "methods not strings": {"methods": [v.SAS_V1, 3]},
    "too many methods": {"methods": [v.SAS_V1] * (v.MAX_LIST + 1)},
    "a method too long": {"methods": [LONG]},
    "no timestamp": {"timestamp": DROP},
    "timestamp a string": {"timestamp": str(NOW)},
    "timestamp a float": {"timestamp": float(NOW)},
    "timestamp a boolean": {"timestamp": True},
    "an hour old": {"timestamp": NOW - 60 * MINUTE},
    "an hour ahead": {"timestamp": NOW + 60 * MINUTE},
    "just over 10 minutes old": {"timestamp": NOW - v.REQUEST_VALID_MS - 1},
    "just over 5 minutes ahead": {"timestamp": NOW + v.FUTURE_SKEW_MS + 1},
}


@pytest.mark.parametrize("changes", REQUEST_PROBLEMS.values(), ids=REQUEST_PROBLEMS.keys())
def test_an_invalid_request_is_ignored_never_cancelled(changes: dict[str, Any]) -> None:
    assert v.validate_content(v.REQUEST, to_device(v.REQUEST, **changes), NOW) == v.IGNORE


def test_request_freshness_window_is_inclusive() -> None:
    for timestamp in (NOW - v.REQUEST_VALID_MS, NOW + v.FUTURE_SKEW_MS, NOW):
        assert v.validate_content(v.REQUEST, to_device(v.REQUEST, timestamp=timestamp),
                                  NOW) is None
    # no SAS among the methods is well-formed: the flow answers m.unknown_method
    assert v.validate_content(v.REQUEST, to_device(v.REQUEST, methods=[]), NOW) is None


LATER_PROBLEMS: list[tuple[str, dict[str, Any]]] = [
    (v.READY, {"from_device": DROP}), (v.READY, {"from_device": LONG}),
    (v.READY, {"methods": DROP}), (v.READY, {"methods": "m.sas.v1"}),
    (v.READY, {"methods": [None]}),
    (v.START, {"from_device": DROP}), (v.START, {"from_device": 5}),
    (v.START, {"method": DROP}), (v.START, {"method": ["m.sas.v1"]}),
    (v.START, {"hashes": DROP}), (v.START, {"key_agreement_protocols": "x"}),
    (v.START, {"message_authentication_codes": [LONG]}),
    (v.START, {"short_authentication_string": ["emoji"] * (v.MAX_LIST + 1)}),
    (v.ACCEPT, {"commitment": DROP}), (v.ACCEPT, {"commitment": 5}),
    (v.ACCEPT, {"commitment": LONG}), (v.ACCEPT, {"hash": DROP}),
    (v.ACCEPT, {"key_agreement_protocol": None}),
    (v.ACCEPT, {"message_authentication_code": []}),
    (v.ACCEPT, {"short_authentication_string": "emoji"}),
    (v.KEY, {"key": DROP}), (v.KEY, {"key": ""}), (v.KEY, {"key": 1}), (v.KEY, {"key": LONG}),
    (v.MAC, {"mac": DROP}), (v.MAC, {"mac": {}}), (v.MAC, {"mac": ["m"]}),
    (v.MAC, {"mac": {"ed25519:D": 1}}), (v.MAC, {"mac": {LONG: "m"}}),
    (v.MAC, {"mac": {f"ed25519:{i}": "m" for i in range(v.MAX_MACS + 1)}}),
    (v.MAC, {"keys": DROP}), (v.MAC, {"keys": LONG}),
]


@pytest.mark.parametrize(("event_type", "changes"), LATER_PROBLEMS,
                         ids=[f"{t.rsplit('.', 1)[1]}-{sorted(c)}" for t, c in LATER_PROBLEMS])
def test_an_invalid_later_event_is_an_invalid_message(event_type: str,
                                                      changes: dict[str, Any]) -> None:
    assert v.validate_content(event_type, to_device(event_type, **changes), NOW) == \
        v.INVALID_MESSAGE


def test_a_start_of_another_method_is_well_formed_and_left_to_the_sas() -> None:
    qr = {"from_device": "D", "method": "m.reciprocate.v1", "transaction_id": TXN}
    assert v.validate_content(v.START, qr, NOW) is None


@pytest.mark.parametrize("changes", [{"code": DROP}, {"code": 3}, {"code": LONG},
                                     {"reason": 3}, {"reason": "r" * (v.MAX_REASON + 1)}])
def test_an_invalid_cancel_is_ignored_never_answered(changes: dict[str, Any]) -> None:
    assert v.validate_content(v.CANCEL, to_device(v.CANCEL, **changes), NOW) == v.IGNORE


def test_a_cancel_without_reason_still_cancels() -> None:
    assert v.validate_content(v.CANCEL, to_device(v.CANCEL, reason=DROP), NOW) is None


def test_unknown_verification_types_are_ignored() -> None:
    content = {"transaction_id": TXN}
    assert v.validate_content("m.key.verification.qr", content, NOW) == v.IGNORE


def in_room(event_type: str, **changes: Any) -> dict[str, Any]:
    content = dict(VALID[event_type])
    if event_type == v.REQUEST:
        del content["timestamp"]  # an in-room request's time is its origin_server_ts
        content |= {"msgtype": v.REQUEST, "to": BOT, "body": "verify?"}
    else:
        content["m.relates_to"] = {"rel_type": "m.reference", "event_id": "$req"}
    content |= changes
    return {k: val for k, val in content.items() if val is not DROP}


def test_in_room_events() -> None:
    for event_type in VALID:
        sent = NOW if event_type == v.REQUEST else None
        assert v.validate_content(event_type, in_room(event_type), NOW, in_room=True,
                                  sent_ms=sent) is None, event_type
    request = in_room(v.REQUEST)
    # an in-room request's freshness is its origin_server_ts
    for sent_ms in (None, NOW - 60 * MINUTE, NOW + 60 * MINUTE):
        assert v.validate_content(v.REQUEST, request, NOW, in_room=True,
                                  sent_ms=sent_ms) == v.IGNORE
    for to in (DROP, 5, LONG):
        assert v.validate_content(v.REQUEST, in_room(v.REQUEST, to=to), NOW, in_room=True,
                                  sent_ms=NOW) == v.IGNORE
    for relates in (DROP, "x", {"event_id": "$req"}, {"rel_type": "m.reference"},
                    {"rel_type": "m.reference", "event_id": LONG},
                    {"rel_type": "m.annotation", "event_id": "$req"}):
        content = {**in_room(v.KEY), "m.relates_to": relates}
        if relates is DROP:
            del content["m.relates_to"]
        assert v.validate_content(v.KEY, content, NOW, in_room=True) == v.IGNORE
    assert v.validate_content(v.KEY, in_room(v.KEY, key=5), NOW, in_room=True) == \
        v.INVALID_MESSAGE


# -- SenderLimiter -------------------------------------------------------------------------------

def test_limiter_allows_a_burst_then_the_refill_rate() -> None:
    limiter = v.SenderLimiter(burst=5, per_minute=6)  # one more every 10 s
    assert [limiter.allow(ALICE, NOW) for _ in range(7)] == [True] * 5 + [False] * 2
    assert limiter.allow(MALLORY, NOW)  # per sender
    assert not limiter.allow(ALICE, NOW + 9_999)
    assert limiter.allow(ALICE, NOW + 10_000)
    assert not limiter.allow(ALICE, NOW + 10_000)
    # refused events do not push the refill back
    assert limiter.allow(ALICE, NOW + 20_000)


def test_limiter_for_limits_fits_every_verification_a_person_may_start() -> None:
    assert v.SenderLimiter.for_limits(v.VerificationLimits(max_per_hour=5)).burst == 50
    assert v.SenderLimiter.for_limits(v.VerificationLimits(max_per_hour=1)).burst == 20
    assert v.SenderLimiter.for_limits(v.VerificationLimits(max_per_hour=100)).burst == 1000
    assert Harness(limits=v.VerificationLimits(max_per_hour=7)).service.limiter.burst == 70


def test_limiter_forgets_senders_whose_bucket_is_full_again() -> None:
    limiter = v.SenderLimiter(burst=2, per_minute=60)  # full again 2 s after the last event
    for i in range(100):
        limiter.allow(f"@u{i}:hs", NOW)
    assert len(limiter) == 100
    limiter.allow(ALICE, NOW + 1_999)
    assert len(limiter) == 101
    limiter.allow(ALICE, NOW + 2_000)
    assert len(limiter) == 1  # the hundred idle senders are gone; a full bucket is the default
    assert limiter.allow("@u0:hs", NOW + 2_000) and limiter.allow("@u0:hs", NOW + 2_000)
    assert not limiter.allow("@u0:hs", NOW + 2_000)


def test_limiter_memory_is_bounded_under_many_senders() -> None:
    limiter = v.SenderLimiter(burst=1, per_minute=1, max_senders=50)
    for i in range(1_000):
        limiter.allow(f"@u{i}:hs", NOW)
    assert len(limiter) == 50
    # a sender kept busy is the most recently used, never the one evicted
    assert not limiter.allow("@u999:hs", NOW)


# -- the service ---------------------------------------------------------------------------------

class Recorder:
    """The client's to-device sends, the HTTP seam's requests, the conversation's messages."""

    def __init__(self) -> None:
        self.to_device: list[Any] = []
        self.http: list[tuple[str, str]] = []
        self.ui: list[tuple[str, str]] = []
        self.room_sends: list[tuple[str, str]] = []


class FakeClient:
    user_id = BOT
    device_id = BOT_DEV

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.rooms: dict[str, Any] = {}
        self.olm = SimpleNamespace(account=SimpleNamespace(identity_keys={"ed25519": "botkey"}))

    async def to_device(self, message: Any, tx_id: str | None = None) -> object:
        self.recorder.to_device.append(message)
        return object()


class FakeHttp:
    """/keys/query answers with Alice's one device, self-signed as a real one is."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        key = SigningKey.generate()
        device = {"user_id": ALICE, "device_id": ALICE_DEV,
                  "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
                  "keys": {f"ed25519:{ALICE_DEV}": key.public,
                           f"curve25519:{ALICE_DEV}": "curve"}}
        self.device = sign_json(device, ALICE, f"ed25519:{ALICE_DEV}", key)

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        self.recorder.http.append((method, path))
        users = body["device_keys"] if path.endswith("/keys/query") else {}
        return 200, {"device_keys": {u: ({ALICE_DEV: self.device} if u == ALICE else {})
                                     for u in users}}


class FakeUI:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def show_sas(self, user_id: UserId, emoji: Any, decimals: Any) -> None:
        self.recorder.ui.append(("show_sas", user_id))

    async def verified(self, user_id: UserId, device_id: str, identity: bool) -> None:
        self.recorder.ui.append(("verified", user_id))

    async def cancelled(self, user_id: UserId, code: str, by_us: bool) -> None:
        self.recorder.ui.append((f"cancelled {code}", user_id))

    async def refused(self, user_id: UserId, reason: str) -> None:
        self.recorder.ui.append((f"refused {reason}", user_id))


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def now_ms(self) -> int:
        return self.now


class Harness:
    def __init__(self, limiter: v.SenderLimiter | None = None,
                 limits: v.VerificationLimits | None = None) -> None:
        self.rec = Recorder()
        self.store = Store(":memory:")
        self.runner = TaskRunner()
        self.clock = Clock()
        self.client = FakeClient(self.rec)

        async def send_room(room: RoomId, kind: str, content: dict[str, Any]) -> str:
            self.rec.room_sends.append((room, kind))
            return f"$event{len(self.rec.room_sends)}"

        self.service = VerificationService(
            self.client, FakeHttp(self.rec), self.store, self.clock,  # type: ignore[arg-type]
            self.runner, cross_signing=lambda: None,
            is_allowed=lambda user: user.endswith(":hs"),
            limits=limits or v.VerificationLimits(), send_room=send_room, limiter=limiter)
        self.service.ui = FakeUI(self.rec)

    async def to_device(self, sender: str, event_type: str, content: Any) -> None:
        event = SimpleNamespace(sender=sender, source={"type": event_type, "sender": sender,
                                                       "content": content})
        await self.service._on_to_device(event)  # type: ignore[arg-type]
        await self.runner.drain()

    def sent(self) -> list[tuple[str, str]]:
        return [(m.type, m.content.get("code", "")) for m in self.rec.to_device]

    def give_alice_a_dm(self) -> None:
        self.store.set_dm_room(UserId(ALICE), RoomId("!dm:hs"), NOW)
        self.client.rooms["!dm:hs"] = SimpleNamespace(users={ALICE: None, BOT: None},
                                                      invited_users={})


def request(txn: str = TXN, **changes: Any) -> dict[str, Any]:
    content = {"from_device": ALICE_DEV, "methods": [v.SAS_V1], "timestamp": NOW,
               "transaction_id": txn, **changes}
    return {k: val for k, val in content.items() if val is not DROP}


HOSTILE = {
    "empty": {},
    "only a transaction": {"transaction_id": "t-empty"},
    "methods missing": request("t-m", methods=DROP),
    "methods not a list": request("t-l", methods="m.sas.v1"),
    "transaction not a string": request(txn=DROP) | {"transaction_id": 12345},
    "from_device of 10,000 characters": request("t-d", from_device="D" * 10_000),
    "an hour old": request("t-old", timestamp=NOW - 60 * MINUTE),
    "an hour ahead": request("t-new", timestamp=NOW + 60 * MINUTE),
}


@pytest.mark.parametrize("sender", [ALICE, STRANGER])
@pytest.mark.parametrize("content", HOSTILE.values(), ids=HOSTILE.keys())
async def test_hostile_requests_cost_nothing(sender: str, content: Any,
                                             caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    caplog.set_level(logging.DEBUG, logger="nerbot")
    caplog.clear()  # only what the event causes (creating the store may log its migration)
    await h.to_device(sender, v.REQUEST, content)
    assert h.store.verifications() == []
    assert h.rec.to_device == [] and h.rec.http == [] and h.rec.ui == []
    assert h.service.active == {}
    assert [r for r in caplog.records if r.levelno > logging.DEBUG] == []


async def test_a_valid_request_is_recorded_when_the_bot_answers_ready() -> None:
    h = Harness()
    await h.to_device(ALICE, v.REQUEST, request())
    assert h.sent() == [(v.READY, "")]
    assert h.rec.http == [("POST", "/_matrix/client/v3/keys/query")]  # her device, checked
    (record,) = h.store.verifications()
    assert (record["txn"], record["device_id"], record["direction"], record["result"]) == \
        (TXN, ALICE_DEV, "incoming", "pending")
    assert TXN in h.service.active


async def test_a_request_that_does_not_start_leaves_no_record() -> None:
    h = Harness()
    # no common method: the spec's cancel, and nothing else (no key query, no row)
    await h.to_device(ALICE, v.REQUEST, request("t-qr", methods=["m.qr_code.show.v1"]))
    assert h.sent() == [(v.CANCEL, v.UNKNOWN_METHOD)] and h.rec.http == []
    # a device the server does not know: ignored after the key query
    await h.to_device(ALICE, v.REQUEST, request("t-ghost", from_device="GHOST"))
    assert h.sent() == [(v.CANCEL, v.UNKNOWN_METHOD)] and len(h.rec.http) == 1
    # not allowed: refused with m.user, no key query, no message
    await h.to_device(STRANGER, v.REQUEST, request("t-stranger"))
    assert h.sent()[-1] == (v.CANCEL, v.USER) and len(h.rec.http) == 1
    assert h.store.verifications() == [] and h.service.active == {} and h.rec.ui == []


async def test_a_reused_transaction_id_never_replaces_a_record() -> None:
    h = Harness()
    await h.to_device(ALICE, v.REQUEST, request())
    await h.to_device(ALICE, v.CANCEL, {"transaction_id": TXN, "code": "m.user", "reason": "x"})
    assert [r["result"] for r in h.store.verifications()] == ["cancelled"]
    await h.to_device(ALICE, v.REQUEST, request())  # the same transaction ID again
    assert [r["result"] for r in h.store.verifications()] == ["cancelled"]
    assert h.sent() == [(v.READY, "")] and h.service.active == {}


async def test_an_invalid_later_event_cancels_with_invalid_message() -> None:
    h = Harness()
    h.give_alice_a_dm()
    await h.to_device(ALICE, v.REQUEST, request())
    await h.to_device(ALICE, v.START, {**SAS_START, "from_device": ALICE_DEV, "hashes": "sha256",
                                       "transaction_id": TXN})
    assert h.sent() == [(v.READY, ""), (v.CANCEL, v.INVALID_MESSAGE)]
    (record,) = h.store.verifications()
    assert (record["result"], record["cancel_code"]) == ("cancelled", v.INVALID_MESSAGE)
    assert h.rec.ui == [(f"cancelled {v.INVALID_MESSAGE}", ALICE)]  # in her existing DM


async def test_invalid_events_for_unknown_or_foreign_transactions_are_dropped() -> None:
    h = Harness()
    await h.to_device(ALICE, v.REQUEST, request())
    await h.to_device(ALICE, v.KEY, {"transaction_id": "unknown", "key": 5})
    await h.to_device(MALLORY, v.KEY, {"transaction_id": TXN, "key": 5})
    # valid, but from someone else than her: ignored, her verification goes on
    await h.to_device(MALLORY, v.CANCEL, {"transaction_id": TXN, "code": "m.user", "reason": ""})
    assert h.sent() == [(v.READY, "")]
    assert [r["result"] for r in h.store.verifications()] == ["pending"]
    assert TXN in h.service.active


async def test_messages_go_only_to_an_existing_dm_unless_the_person_asked() -> None:
    h = Harness()
    await h.to_device(ALICE, v.REQUEST, request())
    await h.to_device(ALICE, v.CANCEL, {"transaction_id": TXN, "code": "m.user", "reason": ""})
    assert h.rec.ui == []  # no DM: the bot stays silent (sending would have opened one)
    # refusals too: over the hourly limit, without a DM nothing is said; with one it is
    limited = Harness(limits=v.VerificationLimits(max_per_hour=1))
    await limited.to_device(ALICE, v.REQUEST, request("t1"))
    await limited.to_device(ALICE, v.REQUEST, request("t2"))
    assert limited.sent()[-1] == (v.CANCEL, v.USER) and limited.rec.ui == []
    limited.give_alice_a_dm()
    await limited.to_device(ALICE, v.REQUEST, request("t3"))
    assert limited.rec.ui == [("refused rate", ALICE)]
    # what she asked for with !verify may open the DM
    asked = Harness()
    await asked.service.request_to_device(UserId(ALICE), ALICE_DEV)
    (txn,) = asked.service.active
    await asked.service.cancel_for(UserId(ALICE))
    assert asked.rec.ui == [("cancelled m.user", ALICE)]
    assert [r["txn"] for r in asked.store.verifications()] == [txn]


async def test_verify_an_unknown_device_starts_nothing(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    caplog.set_level(logging.DEBUG, logger="nerbot")
    caplog.clear()  # only what the event causes (creating the store may log its migration)
    for device in ("NO_SUCH_DEVICE", "D" * 10_000, ""):
        with pytest.raises(VerificationRefused) as refused:
            await h.service.request_to_device(UserId(ALICE), device)
        assert refused.value.reason == "unknown_device"
    assert len(h.rec.http) == 1  # one lookup; absurd IDs are not even looked up
    assert h.store.verifications() == [] and h.rec.to_device == [] and h.service.active == {}
    assert [r for r in caplog.records if r.levelno > logging.DEBUG] == []
    txn = await h.service.request_to_device(UserId(ALICE), ALICE_DEV)
    assert h.sent() == [(v.REQUEST, "")] and h.store.verifications()[0]["txn"] == txn


async def test_a_flood_costs_a_counter() -> None:
    h = Harness(limiter=v.SenderLimiter(burst=10, per_minute=30))
    for i in range(500):
        await h.to_device(ALICE, v.REQUEST, request(f"flood{i}", methods="m.sas.v1"))
        await h.to_device(STRANGER, v.REQUEST, request(f"s{i}"))
    assert h.store.verifications() == [] and h.rec.http == []
    assert len(h.rec.to_device) == 10  # the stranger's first ten refusals; then nothing
    assert len(h.service.limiter) == 2
    # valid requests from an allowed sender are bounded by the limiter, then the hourly limit
    valid = Harness(limiter=v.SenderLimiter(burst=10, per_minute=30))
    for i in range(500):
        await valid.to_device(ALICE, v.REQUEST, request(f"v{i}"))
    assert len(valid.rec.http) == 5 and len(valid.store.verifications()) == 5
    assert len(valid.rec.to_device) == 10  # five readies, five refusals
    # the next minute brings the refill, no more
    valid.clock.now += MINUTE
    for i in range(500):
        await valid.to_device(ALICE, v.REQUEST, request(f"w{i}"))
    assert len(valid.rec.to_device) == 20 and len(valid.rec.http) == 5


async def test_in_room_hostile_events_are_dropped_at_intake() -> None:
    h = Harness()
    room = SimpleNamespace(room_id="!dm:hs")

    async def room_event(content: dict[str, Any], server_ts: int, event_type: str) -> None:
        source = {"type": event_type, "sender": ALICE, "content": content,
                  "event_id": f"$e{server_ts}", "origin_server_ts": server_ts}
        event: Any
        if event_type == "m.room.message":
            event = nio.RoomMessageUnknown.from_dict(source)
        else:
            event = nio.UnknownEvent.from_dict(source)
        await h.service._on_room_event(room, event)  # type: ignore[arg-type]
        await h.runner.drain()

    stale = in_room(v.REQUEST, from_device=ALICE_DEV)
    await room_event(stale, NOW - 60 * MINUTE, "m.room.message")
    await room_event({**stale, "methods": "m.sas.v1"}, NOW, "m.room.message")
    await room_event(in_room(v.KEY, key=5), NOW, v.KEY)
    # a start for someone else's request (two other people verifying in a shared room)
    await room_event(in_room(v.START, from_device=ALICE_DEV), NOW, v.START)
    assert h.store.verifications() == [] and h.rec.http == [] and h.service.active == {}
    assert h.rec.room_sends == []
    await room_event(stale, NOW, "m.room.message")
    assert h.rec.room_sends == [("!dm:hs", v.READY)]
    assert [r["transport"] for r in h.store.verifications()] == ["in_room"]


async def test_late_steps_of_a_recorded_transaction_are_not_unknown() -> None:
    """After a restart the bot knows a transaction from its records, not from memory: a late
    "done" must not draw m.unknown_transaction (that cancelled, on the person's side, one the
    restarted bot was finishing), and a cancel of an interrupted one ends it as they said."""
    h = Harness()
    h.store.verification_started("t-ended", UserId(ALICE), ALICE_DEV, "incoming", "to_device",
                                 NOW)
    h.store.verification_ended("t-ended", "verified", NOW)
    h.store.verification_started("t-cut", UserId(ALICE), ALICE_DEV, "incoming", "to_device",
                                 NOW)
    await h.to_device(ALICE, v.DONE, {"transaction_id": "t-ended"})
    await h.to_device(ALICE, v.DONE, {"transaction_id": "t-never"})
    assert h.sent() == [(v.CANCEL, v.UNKNOWN_TRANSACTION)]  # only the one never recorded
    await h.to_device(ALICE, v.CANCEL, {"transaction_id": "t-cut", "code": "m.user",
                                        "reason": "closed"})
    assert [(r["txn"], r["result"]) for r in h.store.verifications()] == [
        ("t-ended", "verified"), ("t-cut", "cancelled")]
    await h.service.end_interrupted()  # nothing left to finish or cancel
    assert h.sent() == [(v.CANCEL, v.UNKNOWN_TRANSACTION)]
    assert [(r["txn"], r["result"]) for r in h.store.verifications()] == [
        ("t-ended", "verified"), ("t-cut", "cancelled")]
    assert h.sent() == [(v.CANCEL, v.UNKNOWN_TRANSACTION)]


@pytest.mark.parametrize("from_device", [["x"], {"a": 1}, 7, "", "D" * 10_000])
async def test_a_cancel_for_an_unknown_transaction_goes_to_a_device_id_or_to_all(
        from_device: object) -> None:
    """The cancel is addressed by the sender's ``from_device`` only when that is a device ID:
    a list there made nio's request building raise (``unhashable type``), found by fuzzing."""
    h = Harness()
    await h.to_device(ALICE, v.DONE, {"transaction_id": "t-never", "from_device": from_device})
    assert h.sent() == [(v.CANCEL, v.UNKNOWN_TRANSACTION)]
    message = h.rec.to_device[0]
    assert message.recipient_device == "*"
    nio.Api.to_device("token", message.type,  # the request nio builds from it
                      {message.recipient: {message.recipient_device: message.content}}, "txn")
