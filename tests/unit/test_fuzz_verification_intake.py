"""Fuzzing verification intake with hypothesis: in-room contents, and the real service.

- ``validate_content(..., in_room=True)`` with in-room contents built from the spec's schema
  (a request is an ``m.room.message`` with ``msgtype``, ``body``, ``to``, ``from_device`` and
  ``methods``, its time the event's ``origin_server_ts``; later events carry
  ``m.relates_to: {rel_type: m.reference, event_id}`` instead of ``transaction_id``), each field
  kept, dropped, replaced, mistyped or oversized, extra fields, keys in any order: its verdict
  is silence or ``m.invalid_message``, never a cancel for a request or a cancel, never depends
  on the key order, and matches the to-device verdict for the same fields.
- ``VerificationService`` through its real intake callbacks (``_on_to_device``,
  ``_on_room_event``; in-room events parsed by nio as a sync would), over the fakes of
  ``test_verification_input.py`` (in-memory store, recording client, HTTP seam and
  conversation): stories of to-device and in-room events from Alice (allowed, one known
  device), Mallory (allowed, no device) and a stranger (not allowed), the bot having asked or
  not, Alice having a DM or not, the clock moving on (timeouts), each event built from the
  schema and mutated as above. After every event: nothing escaped (no exception, no failed
  task logged), an event the intake rejects got silence or the cancel ``validate_content``
  named, every cancel sent carries a spec code, the bot sent no MAC or done, no verification is
  recorded "verified" in the store, rows exist only for the one person whose device is known,
  and nobody without a DM (who did not ask) was spoken to, so no room was opened for them.

A valid MAC needs the SAS shared secret, which no generated event has: "verified" must never
happen here (``test_fuzz_parsers.py`` in ``tests/reliability`` checks that exactly the valid
MAC verifies). Deterministic (``derandomize``), no example database; a few seconds.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nio
import vodozemac
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_verification_input import ALICE, ALICE_DEV, BOT, BOT_DEV, MALLORY, NOW, STRANGER, Harness
from verification_spec import FIELDS, IN_ROOM_REQUEST, RELATES, SPEC_CODES, well_typed

from nerbot.domain import verification as v
from nerbot.ids import RoomId, UserId
from nerbot.matrix.sas import commitment_of

# hypothesis keeps its caches under .cache/ (ignored by git), as in tests/reliability
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY",
                      str(Path(__file__).resolve().parents[2] / ".cache" / "hypothesis"))


def fuzz(examples: int) -> settings:
    """The same run every time (derandomized, no example database), no deadline."""
    return settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                    print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


MINUTE = 60_000
UNKNOWN_TYPE = "m.key.verification.unknown"
LATER_TYPES = [v.READY, v.START, v.ACCEPT, v.KEY, v.MAC, v.DONE, v.CANCEL, UNKNOWN_TYPE]
DM, GROUP = "!dm:hs", "!group:hs"
REQUEST_ID = "$request"  # the event ID of an in-room request of Alice's
# A real curve25519 key, so a key event can get through the SAS maths to the emoji.
ALICE_SAS_KEY = vodozemac.Sas().public_key.to_base64()
# Stands for the commitment to ALICE_SAS_KEY over the start the bot sent (known on delivery).
COMMITMENT = "<commitment over the bot's start>"

# Per the spec: each content's fields and their types, without the transport's field.
TO_DEVICE_REQUEST = FIELDS[v.REQUEST]
SCHEMA: dict[str, dict[str, Any]] = {
    **{t: f for t, f in FIELDS.items() if t != v.REQUEST}, UNKNOWN_TYPE: {}}
# What Alice's client would send (the bot's MAC check still fails: no shared secret).
VALID: dict[str, dict[str, Any]] = {
    v.READY: {"from_device": ALICE_DEV, "methods": [v.SAS_V1]},
    v.START: {"from_device": ALICE_DEV, "method": v.SAS_V1,
              "key_agreement_protocols": ["curve25519-hkdf-sha256"], "hashes": ["sha256"],
              "message_authentication_codes": ["hkdf-hmac-sha256.v2"],
              "short_authentication_string": ["decimal", "emoji"]},
    v.ACCEPT: {"commitment": COMMITMENT, "hash": "sha256",
               "key_agreement_protocol": "curve25519-hkdf-sha256",
               "message_authentication_code": "hkdf-hmac-sha256.v2", "method": v.SAS_V1,
               "short_authentication_string": ["decimal", "emoji"]},
    v.KEY: {"key": ALICE_SAS_KEY},
    v.MAC: {"keys": "K" * 43, "mac": {f"ed25519:{ALICE_DEV}": "M" * 43}},
    v.DONE: {},
    v.CANCEL: {"code": "m.user", "reason": "no"},
    UNKNOWN_TYPE: {},
}
VALID_REQUEST = {"from_device": ALICE_DEV, "methods": [v.SAS_V1], "timestamp": NOW,
                 "msgtype": v.REQUEST, "body": "Alice wants to verify", "to": BOT}

UTF8_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
PLAUSIBLE = st.sampled_from([
    ALICE_DEV, BOT_DEV, "OTHERDEV", BOT, ALICE, v.SAS_V1, v.REQUEST, "m.qr_code.show.v1",
    "curve25519-hkdf-sha256", "sha256", "hkdf-hmac-sha256.v2", "emoji", "decimal", "m.user",
    "m.reference", "m.annotation", REQUEST_ID, ALICE_SAS_KEY, "", "A" * 43, "\ud800",
    f"ed25519:{ALICE_DEV}"])
JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                        st.floats(allow_nan=False, allow_infinity=False), UTF8_TEXT, PLAUSIBLE)
JSON = st.recursive(JSON_SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(UTF8_TEXT, inner, max_size=3)), max_leaves=8)
DROP = "<dropped>"  # a field left out (no generated value is this string)


def value_of(kind: Any) -> st.SearchStrategy[Any]:
    """A well-typed (often plausible) value for a schema type."""
    return well_typed(kind, strings=st.one_of(PLAUSIBLE, UTF8_TEXT),
                      ints=st.one_of(st.just(NOW), st.integers(NOW - 20 * MINUTE,
                                                               NOW + 20 * MINUTE),
                                     st.integers(-(2**63), 2**63 - 1)),
                      mac_keys=st.one_of(st.just(f"ed25519:{ALICE_DEV}"), UTF8_TEXT),
                      list_max=4)


def oversized(kind: Any) -> st.SearchStrategy[Any]:
    """Beyond every limit of the intake (IDs 255 characters, lists 32 entries, MACs 32 keys)."""
    if isinstance(kind, list):
        return st.builds(lambda s: [s] * 1_000, PLAUSIBLE)
    if isinstance(kind, dict):
        return st.builds(lambda s: {f"ed25519:{i}": s for i in range(200)}, PLAUSIBLE)
    if kind is int:
        return st.sampled_from([2**64, -(2**64), 10**30])
    return st.builds(lambda c: c * 10_000, st.sampled_from(["A", "é", "😀"]))


@st.composite
def fields(draw: st.DrawFn, schema: dict[str, Any], valid: dict[str, Any],
           keep: int = 4) -> dict[str, Any]:
    """The schema's fields, each kept (from ``valid``), dropped, replaced by a well-typed
    value, mistyped or oversized; extra fields; the keys in a drawn order."""
    out: dict[str, Any] = {}
    for name, kind in schema.items():
        how = draw(st.sampled_from(["keep"] * keep + ["drop", "value", "mistype", "oversize"]))
        if how == "keep" and name in valid:
            out[name] = copy.deepcopy(valid[name])
        elif how == "value":
            out[name] = draw(value_of(kind))
        elif how == "mistype":
            out[name] = draw(JSON)
        elif how == "oversize":
            out[name] = draw(oversized(kind))
    for name, value in draw(st.lists(st.tuples(UTF8_TEXT, JSON), max_size=2)):
        out.setdefault(name, value)
    order = draw(st.permutations(list(out)))
    return {k: out[k] for k in order}


@st.composite
def relates_to(draw: st.DrawFn, event_id: str) -> Any:
    """``m.relates_to`` pointing at ``event_id`` (mostly), or mutated as a field is."""
    how = draw(st.sampled_from(["valid"] * 3 + ["drop", "mistype", "fields"]))
    if how == "valid":
        return {"rel_type": "m.reference", "event_id": event_id}
    if how == "drop":
        return DROP
    if how == "mistype":
        return draw(JSON)
    return draw(fields(RELATES, {"rel_type": "m.reference", "event_id": event_id}, keep=2))


@st.composite
def in_room_contents(draw: st.DrawFn) -> tuple[str, dict[str, Any], int | None]:
    """(event type, in-room content, the event's origin_server_ts)."""
    event_type = draw(st.sampled_from([v.REQUEST, v.REQUEST, *LATER_TYPES]))
    sent_ms = draw(st.one_of(st.just(NOW), st.none(), value_of(int)))
    if event_type == v.REQUEST:
        return event_type, draw(fields(IN_ROOM_REQUEST, VALID_REQUEST)), sent_ms
    content = draw(fields(SCHEMA[event_type], VALID[event_type]))
    relates = draw(relates_to(REQUEST_ID))
    if relates != DROP:
        content["m.relates_to"] = relates
    if draw(st.booleans()):  # the relation anywhere among the keys
        content = dict(reversed(list(content.items())))
    return event_type, content, sent_ms


def reordered(value: Any) -> Any:
    """The same JSON with every object's keys in reverse order."""
    if isinstance(value, dict):
        return {k: reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reordered(item) for item in value]
    return value


def good_relation(content: dict[str, Any]) -> bool:
    relates = content.get("m.relates_to")
    return (isinstance(relates, dict) and relates.get("rel_type") == "m.reference"
            and isinstance(relates.get("event_id"), str)
            and 0 < len(relates["event_id"]) <= 255)




def good_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 255


# The fields a later event cannot do without (a cancel's reason is optional to the bot).
REQUIRED: dict[str, tuple[str, ...]] = {
    v.READY: ("from_device", "methods"),
    v.START: tuple(SCHEMA[v.START]),
    v.ACCEPT: ("commitment", "hash", "key_agreement_protocol", "message_authentication_code",
               "short_authentication_string"),
    v.KEY: ("key",), v.MAC: ("keys", "mac"), v.DONE: (), v.CANCEL: ("code",), UNKNOWN_TYPE: (),
}


def typed(value: object, kind: Any) -> bool:
    """``value`` has the schema's type (strings not empty, at most 255 characters)."""
    if kind is str:
        return good_id(value)
    if isinstance(kind, list):
        return isinstance(value, list) and all(good_id(item) for item in value)
    return (isinstance(value, dict) and bool(value)
            and all(good_id(k) and good_id(item) for k, item in value.items()))


@fuzz(600)
@given(in_room_contents())
@example((v.REQUEST, {k: VALID_REQUEST[k] for k in IN_ROOM_REQUEST}, NOW))
@example((v.KEY, {"m.relates_to": {"event_id": REQUEST_ID, "rel_type": "m.reference"},
                  "key": ALICE_SAS_KEY}, None))
@example((v.MAC, {"mac": {"ed25519:X": "m"}, "keys": "k",
                  "m.relates_to": {"rel_type": "m.reference", "event_id": "\ud800"}}, None))
def test_in_room_contents_get_silence_or_a_spec_cancel(
    case: tuple[str, dict[str, Any], int | None]
) -> None:
    event_type, content, sent_ms = case
    verdict = v.validate_content(event_type, content, NOW, in_room=True, sent_ms=sent_ms)
    assert verdict in (None, v.IGNORE, v.INVALID_MESSAGE), verdict
    # the key order is no part of the content
    assert v.validate_content(event_type, reordered(content), NOW, in_room=True,
                              sent_ms=sent_ms) == verdict
    if event_type in (v.REQUEST, v.CANCEL):  # never answered with a cancel (spec)
        assert verdict in (None, v.IGNORE), verdict
    if event_type == v.REQUEST:
        if verdict is None:  # every required field there, well-typed, and sent just now
            methods = content.get("methods")
            assert good_id(content.get("to")) and good_id(content.get("from_device"))
            assert isinstance(methods, list) and all(good_id(m) for m in methods)
            assert sent_ms is not None and \
                NOW - v.REQUEST_VALID_MS <= sent_ms <= NOW + v.FUTURE_SKEW_MS
        return
    if not good_relation(content):  # nothing ties it to a request: dropped, whatever else
        assert verdict == v.IGNORE, content
        return
    if verdict is None:  # what the spec requires is there, with its type
        required = REQUIRED[event_type]
        if event_type == v.START and content.get("method") != v.SAS_V1:
            required = ("from_device", "method")  # another method: the SAS answers it
        for name in required:
            assert typed(content.get(name), SCHEMA[event_type][name]), (name, content)
    if "transaction_id" not in content:  # the same fields, to-device: the same verdict
        as_to_device = {k: val for k, val in content.items() if k != "m.relates_to"}
        as_to_device["transaction_id"] = content["m.relates_to"]["event_id"]
        relation_extras = {k for k in content["m.relates_to"] if k not in RELATES}
        if not relation_extras:  # (an unknown key inside m.relates_to is not a field)
            assert v.validate_content(event_type, as_to_device, NOW) == verdict


# -- the service --------------------------------------------------------------------------


@dataclass
class Step:
    """One event of a story, or the clock moving on (``advance_ms``) first."""

    transport: str              # "to_device" | "in_room"
    event_type: str
    sender: str
    content: Any
    room: str = DM              # in-room: where it is sent
    sent_offset_ms: int = 0     # in-room: origin_server_ts relative to the bot's clock
    advance_ms: int = 0


@dataclass
class Story:
    transport: str
    bot_asked: bool             # the bot's own request (``!verify``) came first
    has_dm: bool                # Alice has a usable DM with the bot
    steps: list[Step] = field(default_factory=list)


INCOMING = [v.REQUEST, v.START, v.KEY, v.MAC, v.DONE, v.CANCEL]
OUTGOING = [v.READY, v.ACCEPT, v.KEY, v.MAC, v.DONE, v.CANCEL]
LIVE = "<the live transaction>"  # replaced on delivery by the transaction the bot knows


def faithful(transport: str, event_type: str, sender: str = ALICE) -> Step:
    """The event Alice's client would send next, over ``transport``, to the live transaction."""
    if event_type == v.REQUEST:
        names = IN_ROOM_REQUEST if transport == "in_room" else TO_DEVICE_REQUEST
        content = {k: VALID_REQUEST[k] for k in names}
    else:
        content = copy.deepcopy(VALID[event_type])
    if transport == "to_device":
        content["transaction_id"] = LIVE
    elif event_type != v.REQUEST:
        content["m.relates_to"] = {"rel_type": "m.reference", "event_id": LIVE}
    return Step(transport, event_type, sender, content)


@st.composite
def steps(draw: st.DrawFn, story_transport: str, expected: str) -> Step:
    """Mostly the event expected next, as Alice's client sends it (so stories get deep);
    otherwise any type, sender, transport, room or time, its content mutated."""
    if draw(st.integers(0, 9)) < 6:
        return faithful(story_transport, expected)
    transport = draw(st.sampled_from([story_transport] * 3 + ["to_device", "in_room"]))
    event_type = draw(st.sampled_from([expected] * 4 + [v.REQUEST, *LATER_TYPES]))
    sender = draw(st.sampled_from([ALICE] * 4 + [MALLORY, STRANGER]))
    if event_type == v.REQUEST:
        schema = IN_ROOM_REQUEST if transport == "in_room" else TO_DEVICE_REQUEST
        content = draw(fields(schema, VALID_REQUEST))
    else:
        content = draw(fields(SCHEMA[event_type], VALID[event_type]))
    if transport == "to_device":  # every to-device event names its transaction
        txn = draw(st.one_of(st.just(LIVE), st.just(LIVE), st.just(LIVE), st.just(DROP), JSON,
                             st.sampled_from(["other", "x" * 300])))
        if txn != DROP:
            content["transaction_id"] = txn
    elif event_type != v.REQUEST:
        relates = draw(relates_to(LIVE))
        if relates != DROP:
            content["m.relates_to"] = relates
    if transport == "to_device" and draw(st.integers(0, 20)) == 0:
        content = draw(JSON)  # not even an object
    return Step(transport, event_type, sender, content,
                room=draw(st.sampled_from([DM, DM, DM, GROUP])),
                sent_offset_ms=draw(st.sampled_from([0, 0, 0, -MINUTE, -11 * MINUTE,
                                                     6 * MINUTE, -60 * MINUTE])),
                advance_ms=draw(st.sampled_from([0] * 4 + [MINUTE, 11 * MINUTE])))


@st.composite
def stories(draw: st.DrawFn, transport: str) -> Story:
    bot_asked = draw(st.booleans())
    story = Story(transport, bot_asked, draw(st.booleans()))
    sequence = OUTGOING if bot_asked else INCOMING
    count = draw(st.integers(1, len(sequence) + 1))
    story.steps = [draw(steps(transport, sequence[min(i, len(sequence) - 1)]))
                   for i in range(count)]
    return story


ALLOWED_SENDS = {v.READY, v.START, v.ACCEPT, v.KEY, v.CANCEL}  # no MAC, no done: not verified


class Bot:
    """The service over the fakes of ``test_verification_input`` (room sends recorded with
    their contents), and what it sent, said and logged."""

    def __init__(self, story: Story, logged: list[logging.LogRecord]) -> None:
        self.h = Harness()
        self.room_sends: list[tuple[str, str, dict[str, Any]]] = []
        self.logged = logged
        # the transaction Alice's events name: her request's, or the bot's (set when it asks)
        self.live = "txn-alice" if story.transport == "to_device" else REQUEST_ID
        self.requested_in_room = False
        # where the bot may send in-room events: rooms an in-room request came from
        self.request_rooms: set[str] = set()
        if story.has_dm:
            self.h.give_alice_a_dm()
        send_room = self.h.service.send_room

        async def recording(room: RoomId, kind: str, content: dict[str, Any]) -> Any:
            self.room_sends.append((room, kind, copy.deepcopy(content)))
            return await send_room(room, kind, content)

        self.h.service.send_room = recording

    def fill(self, value: Any) -> Any:
        """Replace the placeholders by what is known now (the transaction, the commitment)."""
        if value == LIVE:
            return self.live
        if value == COMMITMENT:
            start = self.bot_start()
            return commitment_of(ALICE_SAS_KEY, start) if start is not None else value
        if isinstance(value, dict):
            return {k: self.fill(item) for k, item in value.items()}
        if isinstance(value, list):
            return [self.fill(item) for item in value]
        return value

    def bot_start(self) -> dict[str, Any] | None:
        starts = [m.content for m in self.h.rec.to_device if m.type == v.START]
        starts += [c for _, kind, c in self.room_sends if kind == v.START]
        return starts[-1] if starts else None

    async def deliver(self, index: int, step: Step) -> str | None:
        """One event through the intake; the verdict ``validate_content`` gives it."""
        now = self.h.clock.now
        content = self.fill(step.content)
        if step.transport == "to_device":
            await self.h.to_device(step.sender, step.event_type, content)
            return v.validate_content(step.event_type, content, now)
        sent_ms = max(0, now + step.sent_offset_ms)
        kind = "m.room.message" if step.event_type == v.REQUEST else step.event_type
        event_id = f"$e{index}"
        if kind == "m.room.message":
            self.request_rooms.add(step.room)
            if not self.requested_in_room:  # the first in-room request is the one she means
                self.requested_in_room, event_id = True, REQUEST_ID
        event = nio.Event.parse_event({"type": kind, "sender": step.sender,
                                       "event_id": event_id, "origin_server_ts": sent_ms,
                                       "content": content})
        if isinstance(event, nio.UnknownEvent | nio.RoomMessageUnknown):  # what nio hands us
            await self.h.service._on_room_event(  # type: ignore[arg-type]
                SimpleNamespace(room_id=step.room), event)
            await self.h.runner.drain()
        return v.validate_content(step.event_type, content, now, in_room=True, sent_ms=sent_ms)

    def sent(self) -> list[tuple[str, str, Any]]:
        """Everything sent so far: (transport, type, code of a cancel)."""
        out = [("to_device", m.type, m.content.get("code")) for m in self.h.rec.to_device]
        out += [("in_room", kind, c.get("code")) for _, kind, c in self.room_sends]
        return out


class Keep(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


@contextmanager
def logged_problems(into: list[logging.LogRecord]) -> Iterator[None]:
    """Warnings and errors of the bot's loggers (a failed task is logged as an error)."""
    handler = Keep(into)
    logger = logging.getLogger("nerbot")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


async def run_story(story: Story, logged: list[logging.LogRecord]) -> Bot:
    bot = Bot(story, logged)
    h = bot.h
    if story.bot_asked:  # !verify: the bot's request goes first
        if story.transport == "to_device":
            bot.live = await h.service.request_to_device(UserId(ALICE), ALICE_DEV)
        else:
            bot.live = await h.service.request_in_room(UserId(ALICE), RoomId(DM), "verify?")
            bot.request_rooms.add(DM)
    for index, step in enumerate(story.steps):
        if step.advance_ms:
            h.clock.now += step.advance_ms
            await h.service.tick()  # what the runner runs every few seconds
        before = len(bot.sent()), len(h.rec.ui), len(h.store.verifications())
        verdict = await bot.deliver(index, step)
        caused = bot.sent()[before[0]:]
        if verdict == v.IGNORE:  # dropped at the intake: silence, no row, no message
            assert caused == [], (step, caused)
            assert len(h.rec.ui) == before[1] and len(h.store.verifications()) == before[2]
        elif verdict is not None:  # malformed: at most the cancel validate_content names
            assert all(c == (step.transport, v.CANCEL, verdict) for c in caused), caused
            assert len(h.store.verifications()) == before[2]
        check_invariants(bot, story)
    return bot


def check_invariants(bot: Bot, story: Story) -> None:
    h = bot.h
    assert not bot.logged, [r.getMessage() for r in bot.logged]
    for transport, kind, code in bot.sent():
        if kind == "m.room.message" or kind == v.REQUEST:
            assert story.bot_asked, "a request the bot was not asked to send"
            continue
        assert kind in ALLOWED_SENDS, (transport, kind)
        if kind == v.CANCEL:
            assert code in SPEC_CODES, code
    assert {room for room, _, _ in bot.room_sends} <= bot.request_rooms, bot.room_sends
    for m in h.rec.to_device:  # only cancels go to anyone but Alice
        assert m.type == v.CANCEL or m.recipient == ALICE, (m.type, m.recipient)
    rows = h.store.verifications()
    assert all(r["result"] != "verified" and not r["master_key_signed"] for r in rows), rows
    assert all(r["user_id"] == ALICE for r in rows), rows
    # nobody is told anything unless they have a DM, or asked (!verify): no room is created
    assert all(user == ALICE for _, user in h.rec.ui), h.rec.ui
    if not (story.has_dm or story.bot_asked):
        assert h.rec.ui == [], h.rec.ui
    assert not any(what == "verified" for what, _ in h.rec.ui), h.rec.ui


def play(story: Story) -> Bot:
    logged: list[logging.LogRecord] = []
    with logged_problems(logged):
        bot = asyncio.run(run_story(story, logged))
    check_invariants(bot, story)
    return bot


def valid_story(transport: str, bot_asked: bool, has_dm: bool = True) -> Story:
    """Alice's client doing everything right up to a MAC the bot cannot accept."""
    sequence = OUTGOING if bot_asked else INCOMING
    return Story(transport, bot_asked, has_dm, [faithful(transport, t) for t in sequence[:4]])


@fuzz(120)
@given(stories("to_device"))
@example(valid_story("to_device", bot_asked=False))
@example(valid_story("to_device", bot_asked=True))
def test_service_intake_to_device_never_verifies_nor_opens_a_room(story: Story) -> None:
    play(story)


@fuzz(120)
@given(stories("in_room"))
@example(valid_story("in_room", bot_asked=False))
@example(valid_story("in_room", bot_asked=True, has_dm=False))
def test_service_intake_in_room_never_verifies_nor_opens_a_room(story: Story) -> None:
    play(story)


def test_the_unmutated_stories_reach_the_emoji_and_end_in_a_key_mismatch() -> None:
    """The stories the fuzz mutates are valid as far as they go (so the fuzz reaches every
    phase): the bot shows the emoji, then cancels the MAC it cannot check with the spec's
    code, and records the verification as cancelled."""
    for transport in ("to_device", "in_room"):
        for bot_asked in (False, True):
            bot = play(valid_story(transport, bot_asked))
            kinds = [kind for t, kind, _ in bot.sent() if t == transport]
            assert ("show_sas", ALICE) in bot.h.rec.ui, (transport, bot_asked, kinds)
            assert bot.sent()[-1] == (transport, v.CANCEL, v.KEY_MISMATCH), bot.sent()
            ((result, code),) = [(r["result"], r["cancel_code"])
                                 for r in bot.h.store.verifications()]
            assert (result, code) == ("cancelled", v.KEY_MISMATCH)
            assert bot.h.rec.ui[-1] == (f"cancelled {v.KEY_MISMATCH}", ALICE)
