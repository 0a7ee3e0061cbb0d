"""Emoji verification over Matrix: the to-device and in-room transports around the pure flow.

nio 0.26 has no request/ready/done, no in-room verification and no cross-signing in the MAC,
and its own to-device handler would answer verification events with its (non-interoperable)
SAS. So nio's handler is switched off on our client and every verification event is routed
here: callbacks only parse and hand off; the flow (``nerbot.domain.verification``) decides;
this module sends, records, signs the verified user's master key and tells the conversation.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import nio
from nio.crypto import OlmDevice

from nerbot.domain import verification as v
from nerbot.errors import VerificationRefused
from nerbot.ids import RoomId, UserId
from nerbot.matrix.crosssigning import CrossSigningKeys, device_keys_of, verify_signed_json
from nerbot.matrix.http import MatrixHttp
from nerbot.matrix.sas import SasExchange
from nerbot.ports import Clock
from nerbot.runner import TaskRunner
from nerbot.store import Store

logger = logging.getLogger(__name__)

Transport = Literal["to_device", "in_room"]
EVENT_TYPES = {v.READY, v.START, v.ACCEPT, v.KEY, v.MAC, v.DONE, v.CANCEL}
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
        event_type = source.get("type", "")
        content = source.get("content")
        if not event_type.startswith("m.key.verification.") or not isinstance(content, dict):
            return
        txn = content.get("transaction_id")
        if not isinstance(txn, str) or not txn:
            return
        self.runner.spawn_serial(
            f"verify:{txn}",
            lambda: self._handle("to_device", txn, event_type, event.sender, content, None),
            name=f"verification {event_type}")

    async def _on_room_event(self, room: nio.MatrixRoom, event: nio.Event) -> None:
        if event.sender == self.user_id:
            return  # our own events come back through sync
        source = getattr(event, "source", {}) or {}
        content = source.get("content")
        if not isinstance(content, dict):
            return
        if isinstance(event, nio.RoomMessageUnknown):
            if content.get("msgtype") != v.REQUEST or content.get("to") != self.user_id:
                return
            txn, event_type = str(event.event_id), v.REQUEST
        else:
            event_type = str(source.get("type", ""))
            relates = content.get("m.relates_to")
            if event_type not in EVENT_TYPES or not isinstance(relates, dict):
                return
            txn = str(relates.get("event_id", ""))
        self.runner.spawn_serial(
            f"verify:{txn}",
            lambda: self._handle("in_room", txn, event_type, event.sender, content,
                                 RoomId(room.room_id)),
            name=f"verification {event_type}")

    # -- handling ----------------------------------------------------------------------------

    async def _handle(self, transport: Transport, txn: str, event_type: str, sender: str,
                      content: dict[str, Any], room_id: RoomId | None) -> None:
        now = self.clock.now_ms()
        active = self.active.get(txn)
        logger.debug("Verification event %s for %s from %s (%s)", event_type, txn, sender,
                     "known" if active else "new")
        if active is None:
            if event_type not in (v.REQUEST, v.START):
                if transport == "to_device" and event_type != v.CANCEL:
                    await self._send_to_device(sender, content.get("from_device") or "*", txn,
                                               v.CANCEL, {"code": v.UNKNOWN_TRANSACTION,
                                                          "reason": "Unknown transaction."})
                return
            refusal = self._refusal(sender)
            if refusal is not None:
                logger.info("Refusing verification from %s: %s", sender, refusal)
                if transport == "to_device":
                    await self._send_to_device(sender, content.get("from_device") or "*", txn,
                                               v.CANCEL, {"code": v.USER,
                                                          "reason": "Refused by the bot."})
                if self.ui is not None and refusal != "not_allowed":
                    await self.ui.refused(UserId(sender), refusal)
                return
            active = self._new(transport, txn, UserId(sender), None, "incoming", room_id, now)
            await self._load_keys(active)
            if event_type == v.REQUEST:
                await self._execute(active, active.flow.receive_request(content, now))
                return
        elif transport != active.transport or (room_id and room_id != active.room_id):
            return
        if event_type in (v.READY, v.START):
            await self._load_keys(active)
            device = content.get("from_device")
            if isinstance(device, str) and device not in active.devices:
                await self._load_keys(active, force=True)  # nio would drop this silently
        try:
            actions = active.flow.receive(event_type, sender, content, now)
        except VerificationRefused:  # their device has no valid keys on the server
            actions = active.flow.fail(v.KEY_MISMATCH)
        await self._execute(active, actions)

    def _refusal(self, user_id: str) -> str | None:
        if not self.is_allowed(user_id):
            return "not_allowed"
        since = self.clock.now_ms() - 3600 * 1000
        return self.limits.refusal(self.store.verification_attempts_since(UserId(user_id), since))

    def _new(self, transport: Transport, txn: str, user_id: UserId, device_id: str | None,
             direction: Literal["incoming", "outgoing"], room_id: RoomId | None, now: int
             ) -> Active:
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
        self.store.verification_started(txn, user_id, device_id, direction, transport, now)
        logger.info("Verification %s with %s (%s, %s)", txn, user_id, transport, direction)
        return active

    async def _load_keys(self, active: Active, force: bool = False) -> None:
        """Their devices (self-signature checked) and master key, straight from the server."""
        if active.devices and not force:
            return
        user = active.flow.their_user
        _, response = await self.http.request(
            "POST", "/_matrix/client/v3/keys/query", {"device_keys": {user: []}})
        devices = response.get("device_keys", {}).get(user, {})
        for device_id in devices if isinstance(devices, dict) else []:
            keys = device_keys_of(response, user, device_id)
            ed = keys.get("keys", {}).get(f"ed25519:{device_id}") if keys else None
            if keys is not None and isinstance(ed, str) and verify_signed_json(
                    keys, user, f"ed25519:{device_id}", ed):
                active.devices[device_id] = dict(keys)
        master = response.get("master_keys", {}).get(user)
        active.master_key = master if isinstance(master, dict) else None

    # -- doing --------------------------------------------------------------------------------

    async def _execute(self, active: Active, actions: list[v.Action]) -> None:
        flow = active.flow
        user = UserId(flow.their_user)
        for action in actions:
            if isinstance(action, v.Send):
                await self._send(active, action.event_type, dict(action.content))
            elif isinstance(action, v.ShowSas) and self.ui is not None:
                await self.ui.show_sas(user, action.emoji, action.decimals)
            elif isinstance(action, v.Verified):
                signed = await self._trust(active, action)
                self.store.verification_ended(flow.txn, "verified", self.clock.now_ms(),
                                              device_id=action.device_id,
                                              master_key_signed=signed)
                if self.ui is not None:
                    await self.ui.verified(user, action.device_id, signed)
            elif isinstance(action, v.Cancelled):
                result = "timeout" if action.code == v.TIMEOUT else "cancelled"
                self.store.verification_ended(flow.txn, result, self.clock.now_ms(),
                                              cancel_code=action.code)
                if self.ui is not None:
                    await self.ui.cancelled(user, action.code, action.by_us)
        if flow.finished:
            self.active.pop(flow.txn, None)

    async def _send(self, active: Active, event_type: str, content: dict[str, Any]) -> None:
        flow = active.flow
        if active.transport == "in_room":
            assert active.room_id is not None
            content["m.relates_to"] = {"rel_type": "m.reference", "event_id": flow.txn}
            await self.send_room(active.room_id, event_type, content)
        else:
            await self._send_to_device(flow.their_user, flow.their_device or "*", flow.txn,
                                       event_type, content)

    async def _send_to_device(self, user_id: str, device_id: str, txn: str, event_type: str,
                              content: dict[str, Any]) -> None:
        message = nio.ToDeviceMessage(event_type, user_id, device_id,
                                      {**content, "transaction_id": txn})
        response = await self.client.to_device(message)
        if isinstance(response, nio.ToDeviceError):
            logger.warning("Sending %s to %s failed: %s", event_type, user_id, response.message)

    async def _trust(self, active: Active, verified: v.Verified) -> bool:
        """Sign the verified master key with our user-signing key; trust the device in nio."""
        user = active.flow.their_user
        for olm_device in self.client.device_store.active_user_devices(user):
            if olm_device.id == verified.device_id and not olm_device.verified:
                self.client.verify_device(olm_device)
        keys = self.cross_signing()
        if verified.master_key is None or keys is None or active.master_key is None:
            return False
        signed = keys.sign_master_key(active.master_key, self.user_id)
        _, response = await self.http.request(
            "POST", "/_matrix/client/v3/keys/signatures/upload",
            {user: {verified.master_key: signed}})
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
        await self._load_keys(active)
        return event_id

    async def request_to_device(self, user_id: UserId, device_id: str) -> str:
        """``!verify DEVICE``: a to-device request to one of the person's sessions."""
        self._check_can_start(user_id)
        now = self.clock.now_ms()
        txn = uuid.uuid4().hex
        active = self._new("to_device", txn, user_id, device_id, "outgoing", None, now)
        await self._load_keys(active)
        if device_id not in active.devices:
            self.active.pop(txn, None)
            self.store.verification_ended(txn, "cancelled", now, cancel_code="unknown_device")
            raise VerificationRefused("unknown_device")
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

    async def tick(self) -> None:
        now = self.clock.now_ms()
        for active in list(self.active.values()):
            actions = active.flow.tick(now)
            if actions:
                await self._execute(active, actions)
