"""Emoji verification over Matrix: the to-device and in-room transports around the pure flow.

nio 0.26 has no request/ready/done, no in-room verification and no cross-signing in the MAC,
and its own to-device handler would answer verification events with its (non-interoperable)
SAS. So nio's handler is switched off on our client and every verification event is routed
here: callbacks only parse and hand off; the flow (``nerbot.domain.verification``) decides;
this module sends, records, signs the verified user's master key and tells the conversation.

Hostile input costs a counter, nothing more. Intake, in this order, before any task, key query,
room or row: a per-sender limit (``SenderLimiter``), then ``validate_content`` (types, lengths,
request freshness). What fails is dropped at DEBUG; a malformed later event of one of our own
transactions, from its own partner, cancels it with ``m.invalid_message``. Events from anyone
but a transaction's partner are ignored.

A verification is recorded (and logged at INFO) only once it really started: when the bot sent
ready to a request (or accept to a bare start) from an allowed user whose device the server
knows, or sent its own request after the device check passed. A request that is refused,
ignored or cancelled before that leaves no row.

Messages to the person go to their DM. Only a verification they asked for with ``!verify``
may open one; anything started by an incoming event (to-device or in-room) speaks into an
existing DM or not at all, so nobody's event makes the bot create a room.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import nio
from nio.crypto import OlmDevice

from nerbot.domain import verification as v
from nerbot.domain.community import MISMATCH_CODES
from nerbot.errors import VerificationRefused
from nerbot.ids import RoomId, UserId
from nerbot.matrix.crosssigning import CrossSigningKeys, device_keys_of, verify_signed_json
from nerbot.matrix.http import MatrixHttp
from nerbot.matrix.sas import SasExchange
from nerbot.matrix.transport import is_private_dm
from nerbot.metrics import BotMetrics, verification_outcome
from nerbot.ports import Clock
from nerbot.runner import TaskRunner
from nerbot.store import Store

logger = logging.getLogger(__name__)

Transport = Literal["to_device", "in_room"]
EVENT_TYPES = {v.READY, v.START, v.ACCEPT, v.KEY, v.MAC, v.DONE, v.CANCEL}
PREFIX = "m.key.verification."
TICK_SECONDS = 5.0


class VerificationUI(Protocol):
    """What the conversation shows the person (implemented in nerbot.commands.verify)."""

    async def show_sas(self, user_id: UserId, emoji: tuple[int, ...],
                       decimals: tuple[int, int, int]) -> None: ...
    async def verified(self, user_id: UserId, device_id: str, identity: bool) -> None: ...
    async def cancelled(self, user_id: UserId, code: str, by_us: bool) -> None: ...
    async def refused(self, user_id: UserId, reason: str) -> None: ...


@dataclass
class Active:
    flow: v.VerificationFlow
    transport: Transport
    direction: Literal["incoming", "outgoing"]
    room_id: RoomId | None = None
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)  # their device keys
    master_key: dict[str, Any] | None = None                           # their master key object
    recorded: bool = False  # it really started: the store has its row

    @property
    def open_dm(self) -> bool:
        """May messages about it open a DM? Only when the person asked with ``!verify``."""
        return self.direction == "outgoing"


class VerificationService:
    """All verifications of the bot, in either direction, over either transport."""

    def __init__(
        self,
        client: nio.AsyncClient,
        http: MatrixHttp,
        store: Store,
        clock: Clock,
        runner: TaskRunner,
        cross_signing: Callable[[], CrossSigningKeys | None],
        is_allowed: Callable[[str], bool],
        limits: v.VerificationLimits,
        send_room: Callable[[RoomId, str, dict[str, Any]], Any],
        limiter: v.SenderLimiter | None = None,
        metrics: BotMetrics | None = None,
    ) -> None:
        self.client = client
        self.http = http
        self.store = store
        self.clock = clock
        self.runner = runner
        self.cross_signing = cross_signing
        self.is_allowed = is_allowed
        self.limits = limits
        self.send_room = send_room
        self.limiter = limiter if limiter is not None else v.SenderLimiter.for_limits(limits)
        self.metrics = metrics
        # (user, txn, transport, code) of a verification that ended in an emoji or key
        # mismatch: the admin room's alarm.
        self.on_mismatch: Callable[[UserId, str, str, str], None] | None = None
        self.ui: VerificationUI | None = None
        self.active: dict[str, Active] = {}

    @property
    def user_id(self) -> str:
        return str(self.client.user_id)

    @property
    def device_id(self) -> str:
        return str(self.client.device_id)

    def register(self) -> None:
        # nio would answer starts with its own SAS (wrong commitment/MAC/emoji): switch it off.
        self.client.olm.handle_key_verification = lambda event: None
        self.client.add_to_device_callback(
            self._on_to_device, (nio.KeyVerificationEvent, nio.UnknownToDeviceEvent))
        self.client.add_event_callback(self._on_room_event,
                                       (nio.UnknownEvent, nio.RoomMessageUnknown))
        self.runner.every(TICK_SECONDS, self.tick, name="verification timeouts")

    # -- intake (callbacks: parse and hand off) -----------------------------------------------

    async def _on_to_device(self, event: nio.ToDeviceEvent) -> None:
        source = getattr(event, "source", {}) or {}
        event_type = source.get("type")
        if not isinstance(event_type, str) or not event_type.startswith(PREFIX):
            return
        sender = str(event.sender)
        if not self._admit(sender, event_type):
            return
        content = source.get("content")
        problem = v.validate_content(event_type, content, self.clock.now_ms())
        if problem is not None:
            txn = content.get("transaction_id") if isinstance(content, dict) else None
            self._reject("to_device", txn, event_type, sender, problem, None)
            return
        assert isinstance(content, dict)
        txn = str(content["transaction_id"])
        self.runner.spawn_serial(
            f"verify:{txn}",
            lambda: self._handle("to_device", txn, event_type, sender, content, None),
            name=f"verification {event_type}")

    async def _on_room_event(self, room: nio.MatrixRoom, event: nio.Event) -> None:
        if event.sender == self.user_id:
            return  # our own events come back through sync
        source = getattr(event, "source", {}) or {}
        content = source.get("content")
        if not isinstance(content, dict):
            return
        txn: object
        if isinstance(event, nio.RoomMessageUnknown):
            if content.get("msgtype") != v.REQUEST or content.get("to") != self.user_id:
                return
            txn, event_type = str(event.event_id), v.REQUEST
        else:
            event_type = str(source.get("type", ""))
            relates = content.get("m.relates_to")
            if event_type not in EVENT_TYPES or not isinstance(relates, dict):
                return
            txn = relates.get("event_id")
        sender = str(event.sender)
        if not self._admit(sender, event_type):
            return
        room_id = RoomId(room.room_id)
        problem = v.validate_content(event_type, content, self.clock.now_ms(), in_room=True,
                                     sent_ms=getattr(event, "server_timestamp", None))
        if problem is not None:
            self._reject("in_room", txn, event_type, sender, problem, room_id)
            return
        assert isinstance(txn, str)
        self.runner.spawn_serial(
            f"verify:{txn}",
            lambda: self._handle("in_room", txn, event_type, sender, content, room_id),
            name=f"verification {event_type}")

    def _admit(self, sender: str, event_type: str) -> bool:
        """The per-sender limit, before anything else is done with the event."""
        if self.limiter.allow(sender, self.clock.now_ms()):
            return True
        logger.debug("Dropping %s from %s: over the per-sender limit", event_type, sender)
        return False

    def _reject(self, transport: Transport, txn: object, event_type: str, sender: str,
                problem: str, room_id: RoomId | None) -> None:
        """An event that failed validation: cancel our transaction with its partner, or drop."""
        active = self.active.get(txn) if isinstance(txn, str) else None
        if problem == v.IGNORE or active is None or not self._belongs(active, transport,
                                                                      sender, room_id):
            logger.debug("Ignoring an invalid %s from %s (%s)", event_type, sender, problem)
            return
        assert isinstance(txn, str)

        async def cancel() -> None:
            current = self.active.get(txn)
            if current is not None and self._belongs(current, transport, sender, room_id):
                await self._execute(current, current.flow.fail(problem))

        logger.debug("Invalid %s from %s in %s: cancelling with %s", event_type, sender, txn,
                     problem)
        self.runner.spawn_serial(f"verify:{txn}", cancel, name=f"verification {event_type}")

    @staticmethod
    def _belongs(active: Active, transport: Transport, sender: str,
                 room_id: RoomId | None) -> bool:
        """The event is from this transaction's partner, over its transport (and room)."""
        return (sender == active.flow.their_user and transport == active.transport
                and (room_id is None or room_id == active.room_id))

    # -- handling ----------------------------------------------------------------------------

    async def _handle(self, transport: Transport, txn: str, event_type: str, sender: str,
                      content: dict[str, Any], room_id: RoomId | None) -> None:
        """One validated event (``content`` passed ``validate_content``)."""
        now = self.clock.now_ms()
        active = self.active.get(txn)
        logger.debug("Verification event %s for %s from %s (%s)", event_type, txn, sender,
                     "known" if active else "new")
        if active is None:
            # A bare start (no request first) is a to-device thing of older clients; in a
            # room, a start for a request that is not ours belongs to other people's flow.
            if event_type != v.REQUEST and (event_type != v.START or transport == "in_room"):
                # A transaction the bot recorded is not unknown: a late step of one that has
                # ended (their "done" after ours), or of one a restart interrupted, which
                # ``end_interrupted`` finishes or cancels. Cancelling it here would undo a
                # verification the bot is about to record (measured: a kill right after the
                # person's "They match", then their "done" arriving before the resume).
                if self.store.verification_recorded(txn):
                    code = content.get("code")
                    if event_type == v.CANCEL and self.store.pending_verification(txn):
                        # They gave up on one a restart interrupted: it ends as they said.
                        self.store.verification_ended(
                            txn, "cancelled", now,
                            cancel_code=code if isinstance(code, str) else v.USER)
                    return
                if transport == "to_device" and event_type != v.CANCEL:
                    await self._send_to_device(sender, _reply_device(content), txn,
                                               v.CANCEL, {"code": v.UNKNOWN_TRANSACTION,
                                                          "reason": "Unknown transaction."})
                return
            refusal = self._refusal(sender)
            if refusal is not None:
                await self._refuse(transport, txn, sender, content, refusal)
                return
            active = self._new(transport, txn, UserId(sender), None, "incoming", room_id, now)
            try:
                if event_type == v.REQUEST:
                    await self._answer_request(active, content, now)
                else:  # a bare start (no request first), which older clients send
                    await self._receive(active, event_type, sender, content, now)
            finally:
                if not active.recorded:
                    self.active.pop(txn, None)  # it never started: nothing to remember
            return
        if not self._belongs(active, transport, sender, room_id):
            logger.debug("Ignoring %s for %s from %s: not this verification's partner",
                         event_type, txn, sender)
            return
        await self._receive(active, event_type, sender, content, now)

    async def _receive(self, active: Active, event_type: str, sender: str,
                       content: dict[str, Any], now: int) -> None:
        if event_type in (v.READY, v.START):
            queried = await self._load_keys(active)
            device = content.get("from_device")
            if not queried and isinstance(device, str) and device not in active.devices:
                await self._load_keys(active, force=True)  # a device added since we looked
        try:
            actions = active.flow.receive(event_type, sender, content, now)
        except VerificationRefused:  # their device has no valid keys on the server
            actions = active.flow.fail(v.KEY_MISMATCH)
        await self._execute(active, actions)

    async def _answer_request(self, active: Active, content: dict[str, Any], now: int) -> None:
        """Ready, if SAS is offered and the requesting device is one the server knows."""
        if v.SAS_V1 in content["methods"]:  # else the flow answers m.unknown_method
            await self._load_keys(active)
            if content["from_device"] not in active.devices:
                logger.debug("Ignoring a verification request from %s: no device %r with valid "
                             "keys", active.flow.their_user, content["from_device"])
                return
        await self._execute(active, active.flow.receive_request(content, now))

    async def _refuse(self, transport: Transport, txn: str, sender: str,
                      content: dict[str, Any], refusal: str) -> None:
        if refusal == "not_allowed":
            logger.debug("Refusing verification from %s: not allowed", sender)
        else:
            logger.info("Refusing verification from %s: %s", sender, refusal)
        if transport == "to_device":
            await self._send_to_device(sender, _reply_device(content), txn,
                                       v.CANCEL, {"code": v.USER, "reason": "Refused by the bot."})
        ui = self._ui_for(sender, open_dm=False) if refusal != "not_allowed" else None
        if ui is not None:
            await ui.refused(UserId(sender), refusal)

    def _ui_for(self, user_id: str, open_dm: bool) -> VerificationUI | None:
        """The conversation, if the bot may talk to this person about it now.

        It may open a DM only when ``open_dm`` (they asked with ``!verify``); otherwise only a
        usable existing DM will do (as ``MatrixTransport.dm_is_usable`` judges it, so its
        ``ensure_dm`` reuses that room and never creates one).
        """
        if self.ui is None:
            return None
        if open_dm:
            return self.ui
        room_id = self.store.get_dm_room(UserId(user_id))
        room = self.client.rooms.get(room_id) if room_id is not None else None
        if is_private_dm(room, str(self.client.user_id), user_id):
            return self.ui
        logger.debug("No DM with %s: the verification goes on without messages", user_id)
        return None

    def _refusal(self, user_id: str) -> str | None:
        if not self.is_allowed(user_id):
            return "not_allowed"
        since = self.clock.now_ms() - 3600 * 1000
        return self.limits.refusal(self.store.verification_attempts_since(UserId(user_id), since))

    def _new(self, transport: Transport, txn: str, user_id: UserId, device_id: str | None,
             direction: Literal["incoming", "outgoing"], room_id: RoomId | None, now: int
             ) -> Active:
        """The flow, in memory only: ``_record_start`` writes it down once it really starts."""
        holder: dict[str, Active] = {}

        def sas_factory(their_device: str) -> SasExchange:
            active = holder["active"]
            keys = active.devices.get(their_device)
            if keys is None:
                raise VerificationRefused("unknown_device")
            other = OlmDevice(user_id, their_device, {
                "ed25519": keys["keys"][f"ed25519:{their_device}"],
                "curve25519": keys["keys"].get(f"curve25519:{their_device}", "")})
            their_master = None
            if active.master_key is not None:
                (their_master,) = active.master_key["keys"].values()
            own = self.cross_signing()
            return SasExchange(self.user_id, self.device_id,
                               str(self.client.olm.account.identity_keys["ed25519"]), other, txn,
                               own.master_public if own else None, their_master)

        start_fields: dict[str, Any] = (
            {"transaction_id": txn} if transport == "to_device"
            else {"m.relates_to": {"rel_type": "m.reference", "event_id": txn}})
        flow = v.VerificationFlow(txn, self.user_id, self.device_id, user_id, device_id,
                                  direction == "outgoing", sas_factory, now, start_fields)
        active = holder["active"] = Active(flow, transport, direction, room_id)
        self.active[txn] = active
        return active

    def _record_start(self, active: Active) -> bool:
        """It really started: one row, one INFO line. False if the transaction ID is taken."""
        flow = active.flow
        if not self.store.verification_started(flow.txn, UserId(flow.their_user),
                                               flow.their_device, active.direction,
                                               active.transport, self.clock.now_ms(),
                                               room_id=active.room_id):
            return False
        active.recorded = True
        logger.info("Verification %s with %s (%s, %s)", flow.txn, flow.their_user,
                    active.transport, active.direction)
        return True

    async def _load_keys(self, active: Active, force: bool = False) -> bool:
        """Their devices and master key, once per verification (again with ``force``).

        True if the server was asked just now.
        """
        if active.devices and not force:
            return False
        active.devices, active.master_key = await self._query_keys(active.flow.their_user)
        return True

    async def _query_keys(self, user: str) -> tuple[dict[str, dict[str, Any]],
                                                    dict[str, Any] | None]:
        """Their devices (self-signature checked) and master key, straight from the server."""
        _, response = await self.http.request(
            "POST", "/_matrix/client/v3/keys/query", {"device_keys": {user: []}})
        devices = response.get("device_keys", {}).get(user, {})
        valid: dict[str, dict[str, Any]] = {}
        for device_id in devices if isinstance(devices, dict) else []:
            keys = device_keys_of(response, user, device_id)
            ed = keys.get("keys", {}).get(f"ed25519:{device_id}") if keys else None
            if keys is not None and isinstance(ed, str) and verify_signed_json(
                    keys, user, f"ed25519:{device_id}", ed):
                valid[device_id] = dict(keys)
        master = response.get("master_keys", {}).get(user)
        return valid, master if isinstance(master, dict) else None

    # -- doing --------------------------------------------------------------------------------

    async def _execute(self, active: Active, actions: list[v.Action]) -> None:
        flow = active.flow
        user = UserId(flow.their_user)
        verified = next((a for a in actions if isinstance(a, v.Verified)), None)
        if verified is not None and active.recorded:
            # Their MAC was valid. Before our MAC goes out, write down what a restart needs to
            # finish this on both sides should the bot die before it is recorded and signed.
            sends = [[a.event_type, a.content] for a in actions if isinstance(a, v.Send)]
            master_id = verified.master_key
            self.store.verification_resume_point(flow.txn, verified.device_id, json.dumps(
                {"sends": sends, "master_key_id": master_id,
                 "master_key": active.master_key if master_id else None}))
        for action in actions:
            if isinstance(action, v.Send):
                if action.event_type != v.CANCEL and not active.recorded \
                        and not self._record_start(active):
                    logger.debug("Ignoring verification %s from %s: a transaction ID used "
                                 "before", flow.txn, user)
                    self.active.pop(flow.txn, None)
                    return
                await self._send(active, action.event_type, dict(action.content))
            elif isinstance(action, v.ShowSas):
                ui = self._ui_for(user, active.open_dm)
                if ui is not None:
                    await ui.show_sas(user, action.emoji, action.decimals)
            elif isinstance(action, v.Verified):
                await self._verified(flow.txn, user, action.device_id, action.master_key,
                                     active.master_key, active.open_dm)
            elif isinstance(action, v.Cancelled):
                if not active.recorded:  # it never started: nothing to record or tell
                    logger.debug("Verification request %s from %s not taken up: %s",
                                 flow.txn, user, action.code)
                    continue
                await self._cancelled(flow.txn, user, action.code, action.by_us,
                                      active.open_dm)
        if flow.finished:
            self.active.pop(flow.txn, None)

    async def _verified(self, txn: str, user: UserId, device_id: str, master_key_id: str | None,
                        master_key: dict[str, Any] | None, open_dm: bool) -> None:
        """Their MAC held: trust them, record it, tell them (as far as the DM rule allows)."""
        signed = await self._trust(user, device_id, master_key_id, master_key)
        self._record_end(txn, "verified", None, device_id=device_id, master_key_signed=signed)
        ui = self._ui_for(user, open_dm)
        if ui is not None:
            await ui.verified(user, device_id, signed)

    async def _cancelled(self, txn: str, user: UserId, code: str, by_us: bool,
                         open_dm: bool) -> None:
        """A verification that really started ended without success: record it, tell them."""
        result = "timeout" if code == v.TIMEOUT else "cancelled"
        pending = self._record_end(txn, result, code)
        if code in MISMATCH_CODES and pending is not None and self.on_mismatch is not None:
            self.on_mismatch(user, txn, pending[0], code)  # the other side saw other keys
        ui = self._ui_for(user, open_dm)
        if ui is not None:
            await ui.cancelled(user, code, by_us)

    def _record_end(self, txn: str, result: str, code: str | None,
                    **ended: Any) -> tuple[str, int] | None:
        """Record a verification's end; counted in the metrics only if it was still pending
        (an end recorded twice is counted once). Returns ``(transport, started_ms)`` of the
        pending row, or None."""
        pending = self.store.pending_verification(txn)
        now = self.clock.now_ms()
        self.store.verification_ended(txn, result, now, cancel_code=code, **ended)
        if pending is not None and self.metrics is not None:
            transport, started_ms = pending
            self.metrics.verification(transport, verification_outcome(result, code),
                                      (now - started_ms) / 1000)
        return pending

    async def _send(self, active: Active, event_type: str, content: dict[str, Any]) -> None:
        flow = active.flow
        assert active.transport == "to_device" or active.room_id is not None
        await self._send_on(active.transport, flow.txn, flow.their_user, flow.their_device,
                            active.room_id, event_type, content)

    async def _send_on(self, transport: str, txn: str, user_id: str, device_id: str | None,
                       room_id: str | None, event_type: str, content: dict[str, Any]) -> None:
        """One verification event over its transport (adding the transport's field)."""
        if transport == "in_room":
            if not room_id:
                return  # recorded before rooms were: nothing to address it to
            content["m.relates_to"] = {"rel_type": "m.reference", "event_id": txn}
            await self.send_room(RoomId(room_id), event_type, content)
        else:
            await self._send_to_device(user_id, device_id or "*", txn, event_type, content)

    async def _send_to_device(self, user_id: str, device_id: str, txn: str, event_type: str,
                              content: dict[str, Any]) -> None:
        message = nio.ToDeviceMessage(event_type, user_id, device_id,
                                      {**content, "transaction_id": txn})
        response = await self.client.to_device(message)
        if isinstance(response, nio.ToDeviceError):
            logger.warning("Sending %s to %s failed: %s", event_type, user_id, response.message)

    async def _trust(self, user: str, device_id: str, master_key_id: str | None,
                     master_key: dict[str, Any] | None) -> bool:
        """Sign the verified master key with our user-signing key; trust the device in nio."""
        for olm_device in self.client.device_store.active_user_devices(user):
            if olm_device.id == device_id and not olm_device.verified:
                self.client.verify_device(olm_device)
        keys = self.cross_signing()
        if master_key_id is None or keys is None or master_key is None:
            return False
        signed = keys.sign_master_key(master_key, self.user_id)
        _, response = await self.http.request(
            "POST", "/_matrix/client/v3/keys/signatures/upload",
            {user: {master_key_id: signed}})
        failures = response.get("failures") or {}
        if failures:
            logger.warning("Signing %s's master key was rejected: %s", user, failures)
            return False
        logger.info("Signed %s's master key after verification", user)
        return True

    # -- starting and stopping from the conversation ------------------------------------------

    async def request_in_room(self, user_id: UserId, room_id: RoomId, body: str) -> str:
        """``!verify`` in the DM: an in-room request the person's clients all show."""
        self._check_can_start(user_id)
        now = self.clock.now_ms()
        # In-room requests carry no timestamp: the event's own timestamp serves.
        content = {"msgtype": v.REQUEST, "body": body, "to": user_id,
                   "from_device": self.device_id, "methods": [v.SAS_V1]}
        event_id = str(await self.send_room(room_id, "m.room.message", content))
        active = self._new("in_room", event_id, user_id, None, "outgoing", room_id, now)
        self._record_start(active)
        await self._load_keys(active)
        return event_id

    async def request_to_device(self, user_id: UserId, device_id: str) -> str:
        """``!verify DEVICE``: a to-device request to one of the person's sessions.

        The device is looked up first: for a session the server does not know, nothing starts
        (no request, no row) and ``VerificationRefused("unknown_device")`` says why.
        """
        self._check_can_start(user_id)
        if not v.valid_id(device_id):
            raise VerificationRefused("unknown_device")
        devices, master_key = await self._query_keys(user_id)
        if device_id not in devices:
            logger.debug("!verify by %s: no device %r with valid keys", user_id, device_id)
            raise VerificationRefused("unknown_device")
        self._check_can_start(user_id)  # again: another one may have started meanwhile
        now = self.clock.now_ms()
        txn = uuid.uuid4().hex
        active = self._new("to_device", txn, user_id, device_id, "outgoing", None, now)
        active.devices, active.master_key = devices, master_key
        self._record_start(active)
        await self._send_to_device(user_id, device_id, txn, v.REQUEST,
                                   active.flow.request_content(now))
        return txn

    def _check_can_start(self, user_id: UserId) -> None:
        if any(a.flow.their_user == user_id for a in self.active.values()):
            raise VerificationRefused("busy")
        refusal = self._refusal(user_id)
        if refusal is not None:
            raise VerificationRefused(refusal)

    async def cancel_for(self, user_id: UserId) -> bool:
        cancelled = False
        for active in list(self.active.values()):
            if active.flow.their_user == user_id:
                await self._execute(active, active.flow.user_cancel())
                cancelled = True
        return cancelled

    # -- after a restart ------------------------------------------------------------------------

    async def end_interrupted(self) -> None:
        """End, on both sides, what a crash or a stop left half done (flows live in memory).

        A verification whose partner's MAC was already valid is finished: our MAC and done are
        sent again (a client that has them ignores the repeat) and the person is trusted and
        recorded as verified. Any other is cancelled over its transport, so the person's client
        does not wait ten minutes (and refuse every new request from the bot meanwhile).
        """
        for row in self.store.interrupted_verifications():
            user = UserId(str(row["user_id"]))
            if self.store.pending_verification(str(row["txn"])) is None:
                continue  # ended meanwhile (the person cancelled it)
            try:
                if row["resume"]:
                    resume = json.loads(str(row["resume"]))
                    for event_type, content in resume["sends"]:
                        await self._send_row(row, event_type, content)
                    await self._verified(str(row["txn"]), user, str(row["device_id"]),
                                         resume.get("master_key_id"), resume.get("master_key"),
                                         open_dm=False)
                    logger.info("Finished verification %s with %s after a restart",
                                row["txn"], user)
                    continue
                await self._send_row(row, v.CANCEL, {"code": v.USER,
                                                     "reason": "The bot restarted."})
                await self._cancelled(str(row["txn"]), user, v.USER, True, open_dm=False)
                logger.info("Cancelled verification %s with %s, interrupted by a restart",
                            row["txn"], user)
            except Exception:  # one interrupted verification must not stop the others
                logger.exception("Could not end the interrupted verification %s", row["txn"])

    async def _send_row(self, row: dict[str, Any], event_type: str,
                        content: dict[str, Any]) -> None:
        await self._send_on(str(row["transport"]), str(row["txn"]), str(row["user_id"]),
                            str(row["device_id"]) or None,
                            str(row["room_id"]) if row["room_id"] else None,
                            event_type, dict(content))

    async def tick(self) -> None:
        now = self.clock.now_ms()
        for active in list(self.active.values()):
            actions = active.flow.tick(now)
            if actions:
                await self._execute(active, actions)


def _reply_device(content: dict[str, Any]) -> str:
    """Where a cancel to a sender goes: their ``from_device`` if it is a device ID, else all
    their devices. Unchecked, a list there made nio's request building raise (found by
    fuzzing)."""
    device = content.get("from_device")
    return device if isinstance(device, str) and v.valid_id(device) else "*"
