"""The verification handshake (request → ready → start → accept → key → MAC → done) as a pure
state machine, shared by the to-device and the in-room transports.

It decides; it does no I/O and reads no clock (``now_ms`` is a parameter). Each input returns
the actions to perform: events to send (contents without transport fields — the transport adds
``transaction_id`` or ``m.relates_to``), emoji to show, the verified result, or a cancel. The
SAS maths is injected (``SasMath``), so the machine is tested with two machines talking.

Bot policy, from the product: the bot shows its emoji and numbers, and sends its own MAC only
after the person's valid MAC arrived (their client sends it when they tap "They match").
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

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
        """They asked us to verify: answer ready (if SAS is offered and the request is fresh)."""
        self.last_event_ms = now_ms
        methods = content.get("methods")
        from_device = content.get("from_device")
        timestamp = content.get("timestamp")
        if not isinstance(from_device, str) or not isinstance(methods, list):
            return self._cancel(INVALID_MESSAGE)
        if isinstance(timestamp, int) and (now_ms - timestamp > REQUEST_VALID_MS
                                           or timestamp - now_ms > FUTURE_SKEW_MS):
            return self._cancel(TIMEOUT)
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
