"""nio callbacks: parse, filter and hand off. Nothing slow runs inline (it would stall sync)."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable

import nio

from nerbot.ids import EventId, RoomId, UserId, server_of
from nerbot.matrix.gaps import missed_events
from nerbot.matrix.transport import is_private_dm
from nerbot.matrix.undecryptable import UndecryptableHold
from nerbot.ports import Clock
from nerbot.runner import TaskRunner
from nerbot.store import Store

logger = logging.getLogger(__name__)

JOIN_ATTEMPTS = 3
JOIN_RETRY_SECONDS = 1.0

# room, sender, event, body, is_dm, and the sending session's identity key (None unencrypted)
MessageHandler = Callable[[RoomId, UserId, EventId, str, bool, str | None], Awaitable[None]]
JoinHandler = Callable[[RoomId, UserId, bool], Awaitable[None]]


class EventRouter:
    """Registers the bot's callbacks on the nio client *before* the first sync.

    simplematrixbotlib's own ``Bot.main`` syncs once before registering callbacks, which throws
    away every command sent while the bot was down; registering first and resuming from the
    stored sync token answers them instead.
    """

    def __init__(
        self,
        client: nio.AsyncClient,
        store: Store,
        runner: TaskRunner,
        clock: Clock,
        inviter_servers: frozenset[str],
        grace_seconds: int,
        on_message: MessageHandler,
        on_joined: JoinHandler,
        on_undecryptable: Callable[[RoomId, UserId], Awaitable[None]],
        not_before_ms: int,
        on_devices_changed: Callable[[list[str], bool], None] | None = None,
    ) -> None:
        """``on_devices_changed(users, first)``: ``first`` for the process's first sync; when
        that sync is full-state (no kept position), Synapse lists everyone the bot shares a
        room with, changed or not."""
        self.client = client
        self.store = store
        self.runner = runner
        self.clock = clock
        self.inviter_servers = inviter_servers
        self.on_message = on_message
        self.on_joined = on_joined
        self.not_before_ms = not_before_ms
        self.on_devices_changed = on_devices_changed
        self._invites_in_flight: set[str] = set()
        self._invites_seen: set[str] = set()  # rooms whose invite a sync of this run brought
        self._room_mates: frozenset[str] | None = None
        self._synced = False
        # The position the sync being processed started from (set by the app: the sync loop
        # knows it); None when it had none (an initial sync: there is no gap to fill).
        self.sync_since: Callable[[], str | None] = lambda: None
        # This sync's messages, dispatched once the whole sync is in: a room whose timeline it
        # cut short gets the messages it left out first, in order (``nerbot.matrix.gaps``).
        self._arrived: list[tuple[str, nio.Event]] = []
        # Rooms whose missing messages are being fetched: later messages of the room (next
        # syncs, late decryptions) wait in the newest fetch's list, to keep the order sent.
        self._behind_gap: dict[str, list[nio.Event]] = {}
        self.hold = UndecryptableHold(
            client, clock, grace_seconds,
            on_decrypted=self._late_decrypted,
            on_give_up=lambda room_id, sender: on_undecryptable(RoomId(room_id), UserId(sender)),
        )

    def register(self) -> None:
        self.client.add_event_callback(self._on_invite, nio.InviteMemberEvent)
        self.client.add_event_callback(self._on_text, nio.RoomMessageText)
        self.client.add_event_callback(self._on_megolm, nio.MegolmEvent)
        self.client.add_event_callback(self._on_member, nio.RoomMemberEvent)
        self.client.add_to_device_callback(
            self._on_room_key, (nio.RoomKeyEvent, nio.ForwardedRoomKeyEvent)
        )
        self.client.add_response_callback(self._on_sync, nio.SyncResponse)

    async def _on_sync(self, response: nio.SyncResponse) -> None:
        self._dispatch_arrived(response)
        self._room_mates = None  # nio has applied this sync's memberships: recount on demand
        first, self._synced = not self._synced, True
        changed = [str(u) for u in response.device_list.changed]
        if changed and self.on_devices_changed is not None:
            logger.debug("Device lists changed for %d users%s", len(changed),
                         " (first sync)" if first else "")
            self.on_devices_changed(changed, first)

    def shares_room(self, user_id: str) -> bool:
        """Whether the user has joined a room the bot is in (then sync tells us of their
        device changes; it does not for people only invited, such as everyone who has not
        yet accepted the bot's reminder DM).

        One set of everyone in the bot's rooms, rebuilt at most once per sync: a scan asks for
        thousands of people, and the bot may be in thousands of DMs.
        """
        if self._room_mates is None:
            self._room_mates = frozenset(user for room in self.client.rooms.values()
                                         for user in room.users
                                         if user not in room.invited_users)
        return user_id in self._room_mates

    @property
    def user_id(self) -> str:
        return str(self.client.user_id)

    def is_dm(self, room: nio.MatrixRoom, sender: str) -> bool:
        """Whether ``sender`` wrote in their own DM with the bot: a room recorded as their DM
        (opened by the bot, or their ``is_direct`` invite) with nobody else in it. A room that
        merely has two members is not (a third may join at any time), nor a recorded DM that
        someone else joined or was invited to, nor anyone's DM but the sender's: answers
        about someone's sessions are posted only where nobody else reads."""
        return self.store.user_for_dm_room(RoomId(room.room_id)) == sender and \
            is_private_dm(room, self.user_id, sender)

    # -- invites ----------------------------------------------------------------------------

    async def _on_invite(self, room: nio.MatrixRoom, event: nio.InviteMemberEvent) -> None:
        if event.state_key != self.user_id or event.membership != "invite":
            return
        self._invites_seen.add(room.room_id)
        self._decide_soon(room.room_id, event.sender, bool(event.content.get("is_direct")))

    def decide_kept_invite(self, room_id: str, inviter: str, is_direct: bool) -> None:
        """An invite pending at the last stop (``RoomIndex.pending_invites``), after the
        first sync: no sync brings it again. Nothing if this run's syncs brought it, the bot
        is in the room by now, or the invite is gone (withdrawn while the bot was down: the
        first sync's ``leave`` took it out of nio's invited rooms)."""
        if room_id in self._invites_seen or room_id in self.client.rooms or \
                room_id not in self.client.invited_rooms:
            return
        self._decide_soon(room_id, inviter, is_direct)

    def _decide_soon(self, room_id: str, inviter: str, is_direct: bool) -> None:
        if room_id in self._invites_in_flight:
            return
        self._invites_in_flight.add(room_id)
        self.runner.spawn(self._decide_invite(RoomId(room_id), UserId(inviter), is_direct),
                          name=f"invite {room_id}")

    async def _decide_invite(self, room_id: RoomId, inviter: UserId, is_direct: bool) -> None:
        try:
            now = self.clock.now_ms()
            if server_of(inviter) not in self.inviter_servers:
                logger.warning("Rejecting invite to %s from %s: server not allowed",
                               room_id, inviter)
                await self.client.room_leave(room_id)
                self.store.record_invite(room_id, inviter, False, "server not allowed", now)
                return
            response = await self._join(room_id)
            if not isinstance(response, nio.JoinResponse):
                logger.warning("Joining %s failed: %s", room_id, response)
                return
            logger.info("Joined %s on invite from %s", room_id, inviter)
            self.store.record_invite(room_id, inviter, True, "allowed", now)
            if is_direct:
                self.store.set_dm_room(inviter, room_id, now)
            await self.on_joined(room_id, inviter, is_direct)
        finally:
            self._invites_in_flight.discard(room_id)

    async def _join(self, room_id: RoomId) -> object:
        """Join, trying again a few times: over federation the inviting server may not be
        ready to let us in at the first try (measured: "You are not invited", then fine)."""
        response: object = None
        for attempt in range(JOIN_ATTEMPTS):
            response = await self.client.join(room_id)
            if isinstance(response, nio.JoinResponse):
                return response
            if attempt + 1 < JOIN_ATTEMPTS:
                logger.info("Joining %s failed (%s); trying again", room_id,
                            getattr(response, "message", response))
                await asyncio.sleep(JOIN_RETRY_SECONDS * (attempt + 1))
        return response

    async def _on_member(self, room: nio.MatrixRoom, event: nio.RoomMemberEvent) -> None:
        if event.membership in ("leave", "ban") and event.state_key != self.user_id:
            owner = self.store.user_for_dm_room(RoomId(room.room_id))
            if owner == event.state_key:
                logger.info("%s left their DM %s; a new one will be opened when needed",
                            owner, room.room_id)
                self.store.forget_dm_room(RoomId(room.room_id))

    # -- messages ---------------------------------------------------------------------------

    async def _on_text(self, room: nio.MatrixRoom, event: nio.RoomMessageText) -> None:
        self._arrived.append((room.room_id, event))  # dispatched when the sync is in

    def _dispatch_arrived(self, response: nio.SyncResponse) -> None:
        arrived, self._arrived = self._arrived, []
        since = self.sync_since()  # none: an initial sync, whose history is not for the bot
        gaps = {room_id: info.timeline.prev_batch
                for room_id, info in response.rooms.join.items()
                if info.timeline.limited and info.timeline.prev_batch} if since else {}
        for room_id, prev_batch in gaps.items():  # (a room's newer gap queues behind)
            assert since is not None
            # Kept until filled: the sync position moves past this sync right after this.
            self.store.note_gap(room_id, since, str(response.next_batch), self.clock.now_ms())
            self._fill_soon(room_id, prev_batch, since)
        for room_id, event in arrived:
            self._dispatch_in_order(room_id, event)

    def resume_gaps(self) -> None:
        """Gaps a stop or crash left unfilled: all the room's messages between the two sync
        positions are fetched again (the ones answered already are skipped). Called before
        the first sync, so that its messages wait behind them."""
        for room_id, since, until in self.store.kept_gaps():
            logger.info("Fetching again the messages of %s an earlier run did not get to",
                        room_id)
            self._fill_soon(room_id, until, since)

    def _fill_soon(self, room_id: str, start: str, since: str) -> None:
        behind: list[nio.Event] = []
        self._behind_gap[room_id] = behind
        self.runner.spawn_serial(
            room_id, functools.partial(self._fill_gap, room_id, start, since, behind),
            name=f"gap {room_id}")

    def _dispatch_in_order(self, room_id: str, event: nio.Event) -> None:
        behind = self._behind_gap.get(room_id)
        if behind is not None:
            behind.append(event)
        else:
            self._dispatch(room_id, event)

    async def _fill_gap(self, room_id: str, start: str, since: str,
                        behind: list[nio.Event]) -> None:
        """The messages the sync left out, then those that came after them (the sync's own,
        later syncs', late decryptions); each answer is queued behind this task (same room,
        ``spawn_serial``), so they are answered in the order they were sent."""
        try:
            missed = await missed_events(self.client, room_id, start, since)
        except Exception:  # the messages after the gap are still answered
            logger.exception("Fetching the messages a sync left out of %s failed", room_id)
            missed = []
        finally:
            if self._behind_gap.get(room_id) is behind:  # no newer gap waits behind this one
                del self._behind_gap[room_id]
        if missed:
            logger.info("%d message(s) in %s came only after the sync (its timeline was cut "
                        "short)", len(missed), room_id)
        for event in missed:
            if isinstance(event, nio.MegolmEvent):
                self._hold(room_id, event)
            elif isinstance(event, nio.RoomMessageText):
                self._dispatch(room_id, event)
        for event in behind:
            self._dispatch(room_id, event)
        self.store.forget_gap(room_id, since)  # handed over (or given up: logged above)

    def _dispatch(self, room_id: str, event: nio.Event) -> None:
        if event.sender == self.user_id or not isinstance(event, nio.RoomMessageText):
            return
        if event.server_timestamp < self.not_before_ms:
            return  # history from before the bot's first start is not addressed to it
        if not self.store.claim_event(event.event_id, self.clock.now_ms()):
            return  # already answered before a restart
        room = self.client.rooms.get(room_id)
        is_dm = self.is_dm(room, event.sender) if room is not None else False
        sender_key = self._sending_session(room_id, event)
        self.runner.spawn_serial(
            room_id,
            lambda: self.on_message(
                RoomId(room_id), UserId(event.sender), EventId(event.event_id), event.body,
                is_dm, sender_key),
            name=f"message {event.event_id}",
        )

    def _sending_session(self, room_id: str, event: nio.Event) -> str | None:
        """The identity key of the session that sent a decrypted message, if Olm vouches for it.

        A room key that came straight from its sender over Olm binds the key's messages to that
        session's identity key (nio files the session under it). A *forwarded* key says only
        what the forwarder claims, so its messages name no session.
        """
        if not event.decrypted or not event.sender_key or not event.session_id:
            return None
        olm = self.client.olm
        session = (olm.inbound_group_store.get(room_id, event.sender_key, event.session_id)
                   if olm is not None else None)
        if session is None or session.forwarding_chain:
            return None
        return str(event.sender_key)

    async def _on_megolm(self, room: nio.MatrixRoom, event: nio.MegolmEvent) -> None:
        self._hold(room.room_id, event)

    def _hold(self, room_id: str, event: nio.MegolmEvent) -> None:
        if event.sender == self.user_id or event.server_timestamp < self.not_before_ms:
            return
        self.runner.spawn(self.hold.hold(room_id, event), name=f"hold {event.event_id}")

    async def _late_decrypted(self, room_id: str, event: nio.Event) -> None:
        self._dispatch_in_order(room_id, event)

    async def _on_room_key(self, event: nio.ToDeviceEvent) -> None:
        if len(self.hold):
            self.runner.spawn(self.hold.retry(), name="retry undecryptable")
