"""The verification handshake (request → ready → start → accept → key → MAC → done) as a pure
state machine, shared by the to-device and the in-room transports.

It decides; it does no I/O and reads no clock (``now_ms`` is a parameter). Each input returns
the actions to perform: events to send (contents without transport fields — the transport adds
``transaction_id`` or ``m.relates_to``), emoji to show, the verified result, or a cancel. The
SAS maths is injected (``SasMath``), so the machine is tested with two machines talking.

Bot policy, from the product: the bot shows its emoji and numbers, and sends its own MAC only
after the person's valid MAC arrived (their client sends it when they tap "They match").

Intake guards, also pure: ``validate_content`` checks an event's fields before anything else
looks at it, and ``SenderLimiter`` bounds how many verification events one sender gets
handled, so a flood costs the bot a counter and nothing else.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

REQUEST = "m.key.verification.request"
READY = "m.key.verification.ready"
START = "m.key.verification.start"
ACCEPT = "m.key.verification.accept"
KEY = "m.key.verification.key"
MAC = "m.key.verification.mac"
DONE = "m.key.verification.done"
CANCEL = "m.key.verification.cancel"
SAS_V1 = "m.sas.v1"

# Spec timeouts: a request is valid for 10 minutes; a verification times out after 10 minutes
# without an event. (nio uses 60 s between events: far too short for people comparing emoji.)
REQUEST_VALID_MS = 10 * 60 * 1000
INACTIVITY_MS = 10 * 60 * 1000
# A request timestamp may be a little in the future (clock skew): the spec allows 5 minutes.
FUTURE_SKEW_MS = 5 * 60 * 1000

USER = "m.user"
TIMEOUT = "m.timeout"
UNKNOWN_TRANSACTION = "m.unknown_transaction"
UNKNOWN_METHOD = "m.unknown_method"
UNEXPECTED_MESSAGE = "m.unexpected_message"
KEY_MISMATCH = "m.key_mismatch"
USER_MISMATCH = "m.user_mismatch"
INVALID_MESSAGE = "m.invalid_message"
ACCEPTED = "m.accepted"

REASONS = {
    USER: "The user cancelled the verification.",
    TIMEOUT: "The verification timed out.",
    UNKNOWN_TRANSACTION: "Unknown transaction.",
    UNKNOWN_METHOD: "No common verification method.",
    UNEXPECTED_MESSAGE: "Unexpected message.",
    KEY_MISMATCH: "The keys did not match.",
    USER_MISMATCH: "The message came from another user.",
    INVALID_MESSAGE: "Invalid message.",
    ACCEPTED: "Another device accepted the request.",
    "m.mismatched_commitment": "Mismatched commitment.",
    "m.mismatched_sas": "The emoji did not match.",
}


class SasMath(Protocol):
    """The SAS maths for one exchange (``nerbot.matrix.sas.SasExchange``)."""

    @property
    def canceled(self) -> bool: ...
    cancel_code: str
    cancel_reason: str
    verified_master_key: str | None

    def make_start(self, transport_fields: dict[str, Any]) -> dict[str, Any]: ...
    def receive_start(self, content: dict[str, Any]) -> None: ...
    def make_accept(self) -> dict[str, Any]: ...
    def receive_accept(self, content: dict[str, Any]) -> None: ...
    def make_key(self) -> dict[str, Any]: ...
    def receive_key(self, content: dict[str, Any]) -> None: ...
    def emoji_indices(self) -> list[int]: ...
    def decimals(self) -> tuple[int, int, int]: ...
    def accept_sas(self) -> None: ...
    def make_mac(self) -> dict[str, Any]: ...
    def receive_mac(self, content: dict[str, Any]) -> None: ...
    @property
    def verified(self) -> bool: ...


class Phase(enum.Enum):
    REQUESTED = "requested"
    READY = "ready"
    STARTED = "started"
    KEYS = "keys_exchanged"
    CONFIRMED = "confirmed"   # their MAC was valid and we sent ours
    DONE = "done"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Send:
    event_type: str
    content: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ShowSas:
    emoji: tuple[int, ...]
    decimals: tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class Verified:
    """Their device (and, when MACed, their master key) passed; we sent our MAC."""

    device_id: str
    master_key: str | None


@dataclass(frozen=True, slots=True)
class Finished:
    """Both sides sent done."""


@dataclass(frozen=True, slots=True)
class Cancelled:
    code: str
    reason: str
    by_us: bool


Action = Send | ShowSas | Verified | Finished | Cancelled
SasFactory = Callable[[str], SasMath]  # their device ID → a fresh SAS for this transaction


@dataclass
class VerificationFlow:
    """One verification with one person. ``their_device`` is learnt from ready/start if unknown.

    Args:
        we_requested: the bot sent the request (``!verify``) rather than answering one.
        sas_factory: builds the SAS maths once the other device is known.
    """

    txn: str
    our_user: str
    our_device: str
    their_user: str
    their_device: str | None
    we_requested: bool
    sas_factory: SasFactory
    created_ms: int
    # Transport fields the start must carry (transaction_id or m.relates_to): the commitment
    # covers the start exactly as sent, so they are part of it from the beginning.
    start_fields: dict[str, Any] = field(default_factory=dict)
    phase: Phase = Phase.REQUESTED
    last_event_ms: int = 0
    sas: SasMath | None = None
    sent_done: bool = False
    got_done: bool = False
    result: Verified | None = None
    cancel: Cancelled | None = None
    _our_start: bool = field(default=False)
    _sent_mac: bool = field(default=False)
    _their_mac_ok: bool = field(default=False)

    def __post_init__(self) -> None:
        self.last_event_ms = self.created_ms

    # -- starting points ------------------------------------------------------------------------

    def request_content(self, now_ms: int) -> dict[str, Any]:
        """Our request (the transport adds ``to``/``body``/``msgtype`` for in-room)."""
        return {"from_device": self.our_device, "methods": [SAS_V1], "timestamp": now_ms}

    @property
    def finished(self) -> bool:
        return self.phase in (Phase.DONE, Phase.CANCELLED)

    def receive_request(self, content: dict[str, Any], now_ms: int) -> list[Action]:
        """They asked us to verify: answer ready (if SAS is offered).

        The transport validated the request (``validate_content``: fields, types, freshness).
        Should one get here anyway, a malformed or stale request is ignored as the spec says:
        the flow ends with nothing to send.
        """
        self.last_event_ms = now_ms
        methods = content.get("methods")
        from_device = content.get("from_device")
        timestamp = content.get("timestamp")
        stale = isinstance(timestamp, int) and not _fresh(timestamp, now_ms)
        if not valid_id(from_device) or not _strings(methods) or stale:
            self.phase = Phase.CANCELLED
            return []
        assert isinstance(from_device, str) and isinstance(methods, list)
        if SAS_V1 not in methods:
            return self._cancel(UNKNOWN_METHOD)
        self.their_device = from_device
        self.phase = Phase.READY
        return [Send(READY, {"from_device": self.our_device, "methods": [SAS_V1]})]

    # -- events from them -----------------------------------------------------------------------

    def receive(self, event_type: str, sender: str, content: dict[str, Any], now_ms: int
                ) -> list[Action]:
        """One event of this transaction from the other side."""
        if self.finished:
            return []
        if sender != self.their_user:
            return self._cancel(USER_MISMATCH)
        from_device = content.get("from_device")
        if (event_type in (READY, START) and isinstance(from_device, str)
                and self.their_device is not None and from_device != self.their_device):
            return []  # another of their devices: the first one to answer owns the flow
        self.last_event_ms = now_ms
        handler = {
            READY: self._on_ready, START: self._on_start, ACCEPT: self._on_accept,
            KEY: self._on_key, MAC: self._on_mac, DONE: self._on_done, CANCEL: self._on_cancel,
        }.get(event_type)
        if handler is None:
            return []  # a verification event we do not handle (e.g. QR): ignore, per spec
        return handler(content)

    def _on_ready(self, content: dict[str, Any]) -> list[Action]:
        if not self.we_requested or self.phase is not Phase.REQUESTED:
            return self._cancel(UNEXPECTED_MESSAGE)
        methods = content.get("methods")
        from_device = content.get("from_device")
        if not isinstance(from_device, str) or not isinstance(methods, list):
            return self._cancel(INVALID_MESSAGE)
        if SAS_V1 not in methods:
            return self._cancel(UNKNOWN_METHOD)
        self.their_device = from_device
        self.phase = Phase.READY
        sas = self.sas = self.sas_factory(from_device)
        self._our_start = True
        return [Send(START, sas.make_start(dict(self.start_fields)))]

    def _on_start(self, content: dict[str, Any]) -> list[Action]:
        from_device = content.get("from_device")
        if not isinstance(from_device, str):
            return self._cancel(INVALID_MESSAGE)
        if self.phase is Phase.READY and self._our_start:
            # Both started: the spec keeps the start of the lexicographically smaller
            # (user ID, device ID); the other one is dropped.
            if (self.our_user, self.our_device) < (self.their_user, from_device):
                return []
            self._our_start = False
        elif self.phase not in (Phase.REQUESTED, Phase.READY):
            return self._cancel(UNEXPECTED_MESSAGE)
        self.their_device = from_device
        sas = self.sas = self.sas_factory(from_device)
        sas.receive_start(content)
        if sas.canceled:
            return self._cancel_from_sas()
        self.phase = Phase.STARTED
        return [Send(ACCEPT, sas.make_accept())]

    def _on_accept(self, content: dict[str, Any]) -> list[Action]:
        if self.sas is None or not self._our_start or self.phase is not Phase.READY:
            return self._cancel(UNEXPECTED_MESSAGE)
        self.sas.receive_accept(content)
        if self.sas.canceled:
            return self._cancel_from_sas()
        self.phase = Phase.STARTED
        return [Send(KEY, self.sas.make_key())]

    def _on_key(self, content: dict[str, Any]) -> list[Action]:
        if self.sas is None or self.phase is not Phase.STARTED:
            return self._cancel(UNEXPECTED_MESSAGE)
        self.sas.receive_key(content)
        if self.sas.canceled:
            return self._cancel_from_sas()
        self.phase = Phase.KEYS
        actions: list[Action] = []
        if not self._our_start:
            actions.append(Send(KEY, self.sas.make_key()))
        actions.append(ShowSas(tuple(self.sas.emoji_indices()), self.sas.decimals()))
        return actions

    def _on_mac(self, content: dict[str, Any]) -> list[Action]:
        if self.sas is None or self.phase is not Phase.KEYS or self._their_mac_ok:
            return self._cancel(UNEXPECTED_MESSAGE)
        self.sas.receive_mac(content)
        if self.sas.canceled:
            return self._cancel_from_sas()
        self._their_mac_ok = True
        if self._sent_mac:
            return self._complete([])
        # Their valid MAC means their person tapped "They match": now we confirm too.
        return self.confirm()

    def confirm(self) -> list[Action]:
        """Our side confirms the emoji match: send our MAC (and done, once theirs was valid).

        The bot calls this only through ``_on_mac``; a test peer playing the person calls it.
        """
        if self.sas is None or self.phase is not Phase.KEYS or self._sent_mac:
            return []
        self.sas.accept_sas()
        self._sent_mac = True
        actions: list[Action] = [Send(MAC, self.sas.make_mac())]
        return self._complete(actions) if self._their_mac_ok else actions

    def _complete(self, actions: list[Action]) -> list[Action]:
        assert self.sas is not None and self.their_device is not None
        if not self.sas.verified:
            return self._cancel(KEY_MISMATCH)
        self.result = Verified(self.their_device, self.sas.verified_master_key)
        self.phase = Phase.CONFIRMED
        self.sent_done = True
        actions += [Send(DONE, {}), self.result]
        if self.got_done:
            self.phase = Phase.DONE
            actions.append(Finished())
        return actions

    def _on_done(self, content: dict[str, Any]) -> list[Action]:
        self.got_done = True
        if self.phase is Phase.CONFIRMED:
            self.phase = Phase.DONE
            return [Finished()]
        if self.phase is Phase.KEYS:
            return []  # their done may overtake their MAC in the room; wait for the MAC
        return self._cancel(UNEXPECTED_MESSAGE)

    def _on_cancel(self, content: dict[str, Any]) -> list[Action]:
        code = content.get("code")
        reason = content.get("reason")
        self.phase = Phase.CANCELLED
        self.cancel = Cancelled(code if isinstance(code, str) else USER,
                                reason if isinstance(reason, str) else "", by_us=False)
        return [self.cancel]

    # -- from our side --------------------------------------------------------------------------

    def tick(self, now_ms: int) -> list[Action]:
        """Timeouts: a request unanswered for 10 minutes, or 10 minutes without an event."""
        if self.finished:
            return []
        waiting_for_ready = self.phase is Phase.REQUESTED
        if (waiting_for_ready and now_ms - self.created_ms > REQUEST_VALID_MS) or (
                now_ms - self.last_event_ms > INACTIVITY_MS):
            return self._cancel(TIMEOUT)
        return []

    def user_cancel(self) -> list[Action]:
        if self.finished:
            return []
        return self._cancel(USER)

    def fail(self, code: str) -> list[Action]:
        """Cancel with a spec code decided outside the machine (e.g. keys unusable)."""
        if self.finished:
            return []
        return self._cancel(code)

    def _cancel_from_sas(self) -> list[Action]:
        assert self.sas is not None
        return self._cancel(self.sas.cancel_code or UNEXPECTED_MESSAGE)

    def _cancel(self, code: str) -> list[Action]:
        reason = REASONS.get(code, "Cancelled.")
        self.phase = Phase.CANCELLED
        self.cancel = Cancelled(code, reason, by_us=True)
        return [Send(CANCEL, {"code": code, "reason": reason}), self.cancel]


@dataclass(frozen=True, slots=True)
class VerificationLimits:
    """Per-user limits: the bot must not become a tool to spam or probe people."""

    max_per_hour: int = 5
    max_cancels_per_hour: int = 3

    def refusal(self, results_last_hour: list[str]) -> str | None:
        """None when a new verification may start, else why not ("rate" or "cooldown")."""
        cancels = sum(1 for r in results_last_hour if r == "cancelled")
        if cancels >= self.max_cancels_per_hour:
            return "cooldown"
        if len(results_last_hour) >= self.max_per_hour:
            return "rate"
        return None


# -- intake validation ---------------------------------------------------------------------------

IGNORE: Final = "ignore"
"""``validate_content``'s verdict for an event to drop without an answer."""

MAX_ID_LENGTH = 255   # user IDs (spec: at most 255 bytes), device and transaction IDs, event IDs
MAX_LIST = 32         # entries in a list of methods or algorithms
MAX_MACS = 32         # key IDs in a MAC event
MAX_REASON = 1024     # a cancel's human-readable reason
# What one verification takes from the other side, with room to spare: request or ready,
# start, accept or key, key, MAC, done, a cancel.
EVENTS_PER_VERIFICATION = 10


def _encodable(value: object, depth: int = 0) -> bool:
    """Every string in ``value`` (keys too) is valid Unicode text (encodable as UTF-8)."""
    if depth > 8:
        return False  # deeper than any verification content: not one of ours
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_encodable(k, depth + 1) and _encodable(v, depth + 1)
                   for k, v in value.items())
    if isinstance(value, list):
        return all(_encodable(item, depth + 1) for item in value)
    return True


def valid_id(value: object) -> bool:
    """A non-empty string of sane length (an ID, a method name, a key, a MAC)."""
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH


def _strings(value: object) -> bool:
    return (isinstance(value, list) and len(value) <= MAX_LIST
            and all(valid_id(item) for item in value))


def _fresh(timestamp: object, now_ms: int) -> bool:
    """Within the spec's window: at most 10 minutes old, at most 5 minutes ahead."""
    return (isinstance(timestamp, int) and not isinstance(timestamp, bool)
            and now_ms - REQUEST_VALID_MS <= timestamp <= now_ms + FUTURE_SKEW_MS)


def _ready_ok(content: dict[str, Any]) -> bool:
    return valid_id(content.get("from_device")) and _strings(content.get("methods"))


def _start_ok(content: dict[str, Any]) -> bool:
    if not valid_id(content.get("from_device")) or not valid_id(content.get("method")):
        return False
    if content["method"] != SAS_V1:
        return True  # a method we do not do is well-formed: the SAS answers m.unknown_method
    return all(_strings(content.get(name)) for name in (
        "key_agreement_protocols", "hashes", "message_authentication_codes",
        "short_authentication_string"))


def _accept_ok(content: dict[str, Any]) -> bool:
    return (all(valid_id(content.get(name)) for name in (
        "key_agreement_protocol", "hash", "message_authentication_code", "commitment"))
        and _strings(content.get("short_authentication_string")))


def _key_ok(content: dict[str, Any]) -> bool:
    return valid_id(content.get("key"))


def _mac_ok(content: dict[str, Any]) -> bool:
    mac = content.get("mac")
    return (isinstance(mac, dict) and 0 < len(mac) <= MAX_MACS
            and all(valid_id(k) and valid_id(val) for k, val in mac.items())
            and valid_id(content.get("keys")))


def _cancel_ok(content: dict[str, Any]) -> bool:
    reason = content.get("reason", "")
    return valid_id(content.get("code")) and isinstance(reason, str) and len(reason) <= MAX_REASON


_CHECKS: dict[str, Callable[[dict[str, Any]], bool]] = {
    READY: _ready_ok, START: _start_ok, ACCEPT: _accept_ok, KEY: _key_ok, MAC: _mac_ok,
    DONE: lambda content: True, CANCEL: _cancel_ok,
}


def validate_content(event_type: str, content: object, now_ms: int, *,
                     in_room: bool = False, sent_ms: int | None = None) -> str | None:
    """None if a verification event may be handled, else what to do with it.

    ``IGNORE``: drop it without an answer: it cannot be tied to a transaction (no usable
    ``transaction_id`` / ``m.relates_to``), it is a request (the spec ignores requests that are
    malformed, more than 10 minutes old or more than 5 minutes ahead), a cancel (never answered
    with a cancel) or a type the bot does not handle. Otherwise a spec cancel code
    (``m.invalid_message``) for the transport to send if the transaction is one of ours.

    Args:
        in_room: the event came in a room: ``m.relates_to`` ties it to the request, and a request
            is an ``m.room.message`` whose freshness is its ``sent_ms`` (``origin_server_ts``).
    """
    if not isinstance(content, dict):
        return IGNORE
    # What cannot be tied to a transaction is dropped before anything else is judged: an
    # answer would cancel a verification the event does not belong to.
    if in_room and event_type != REQUEST:
        relates = content.get("m.relates_to")
        if (not isinstance(relates, dict) or relates.get("rel_type") != "m.reference"
                or not valid_id(relates.get("event_id"))):
            return IGNORE
    elif not in_room and not valid_id(content.get("transaction_id")):
        return IGNORE
    if not _encodable(content):
        # A lone surrogate ("\ud800", which JSON.stringify produces) is not Unicode text:
        # the SAS maths would fail on it later, after the transaction is already ours.
        return IGNORE if event_type in (REQUEST, CANCEL) else INVALID_MESSAGE
    if event_type == REQUEST:
        timestamp = sent_ms if in_room else content.get("timestamp")
        to_ok = valid_id(content.get("to")) if in_room else True
        return None if to_ok and _ready_ok(content) and _fresh(timestamp, now_ms) else IGNORE
    check = _CHECKS.get(event_type)
    if check is None:
        return IGNORE  # e.g. QR code events: the spec lets a client ignore what it does not do
    if check(content):
        return None
    return IGNORE if event_type == CANCEL else INVALID_MESSAGE


# -- per-sender intake limit ---------------------------------------------------------------------

@dataclass
class SenderLimiter:
    """A token bucket per sender for incoming verification events, checked before any work.

    Each sender may send ``burst`` events at once and ``per_minute`` more every minute. A real
    verification takes about six events from the other side, and ``for_limits`` (the service's
    default) sizes the burst for every verification a person may start in an hour, so people
    never notice; a flood is dropped at the counter. Memory stays bounded: a sender whose
    bucket has refilled is forgotten (a full bucket is what a new sender gets anyway), and
    beyond ``max_senders`` tracked senders the longest idle one is forgotten.
    """

    burst: int = 20
    per_minute: float = 30.0
    max_senders: int = 10_000
    # sender → (tokens, when they were counted); kept in order of last use, oldest first
    _buckets: dict[str, tuple[float, int]] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def for_limits(cls, limits: VerificationLimits) -> SenderLimiter:
        """Room for every verification ``limits`` lets one person start in an hour, at once."""
        return cls(burst=max(cls.burst, EVENTS_PER_VERIFICATION * limits.max_per_hour))

    @property
    def refill_ms(self) -> float:
        """How long an empty bucket takes to be full again."""
        return self.burst * 60_000 / self.per_minute

    def allow(self, sender: str, now_ms: int) -> bool:
        """Count one event from ``sender``; False if it is over the limit (drop it)."""
        self._forget_refilled(now_ms)
        tokens, at_ms = self._buckets.pop(sender, (float(self.burst), now_ms))
        tokens = min(float(self.burst),
                     tokens + max(0, now_ms - at_ms) * self.per_minute / 60_000)
        allowed = tokens >= 1
        self._buckets[sender] = (tokens - 1 if allowed else tokens, now_ms)
        if len(self._buckets) > self.max_senders:
            del self._buckets[next(iter(self._buckets))]
        return allowed

    def _forget_refilled(self, now_ms: int) -> None:
        refill = self.refill_ms
        while self._buckets:
            oldest = next(iter(self._buckets))
            if now_ms - self._buckets[oldest][1] < refill:
                return
            del self._buckets[oldest]

    def __len__(self) -> int:
        """How many senders are tracked."""
        return len(self._buckets)
