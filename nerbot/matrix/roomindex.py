"""The bot's rooms and memberships, kept in our database, so a restart resumes syncing.

nio keeps no rooms across restarts, so every start used to ask for the full state of every
room: with 6,340 DMs that one response took Synapse 102 s to build. nio already stores its sync
position; what it cannot do on its own is know the rooms that have no news since then (a
resumed sync brings only rooms with new events, and ``room_send`` refuses a room nio does not
know). This index keeps, per room, what the bot's sync filter lets through anyway (the bot's
own membership, encryption, and who is joined or invited), written after every sync together
with the position it belongs to. At the next start those rooms are handed to nio as
``MatrixRoom`` objects in ``client.rooms`` (nio's public room model, which its own sync fills
the same way) and the first sync resumes from the saved position.

nio then works as it does for rooms it learnt from a sync: a room it knows only from here is
not marked ``members_synced``, so before its first encrypted message nio asks the homeserver for
the joined members (keeping the invitees it knows: the reason they are kept here), and the
encryption flag comes from here and from nio's own list of encrypted rooms. nio 0.26 does not
read a sync's ``leave`` section; rooms the bot left or was removed from are taken out of
``client.rooms`` here, as nio's ``room_forget`` does (a kept room would otherwise look usable
for the whole run).

A full-state sync is still used when no usable position is kept: on the first start, for
another device, or when the homeserver refuses the position. An invite to the bot still
pending at a stop (not decided yet, or its join failed) is kept with its inviter and whether
it asked for a DM: no later sync brings it again, so the start decides it again
(``pending_invites``), whichever way the first sync went.
"""

from __future__ import annotations

import contextlib
import logging

import nio

from nerbot.store.db import KeptRoom, Store, SyncPosition

logger = logging.getLogger(__name__)

JOINED = "join"
INVITED = "invite"


def kept_room(room: nio.MatrixRoom, membership: str = JOINED,
              is_direct: bool = False) -> KeptRoom:
    members = tuple(sorted((str(user_id), user_id in room.invited_users)
                           for user_id in room.users))
    inviter = getattr(room, "inviter", None) if membership == INVITED else None
    return KeptRoom(str(room.room_id), membership, bool(room.encrypted), members,
                    None if inviter is None else str(inviter), is_direct)


def invited_room(kept: KeptRoom, own_user_id: str) -> nio.MatrixInvitedRoom:
    """The ``MatrixInvitedRoom`` nio built from the invite's stripped state."""
    room = nio.MatrixInvitedRoom(kept.room_id, own_user_id)
    room.inviter = kept.inviter
    for user_id, invited in kept.members:
        room.add_member(user_id, None, None, invited)
    return room


def matrix_room(kept: KeptRoom, own_user_id: str, encrypted_rooms: set[str]) -> nio.MatrixRoom:
    """The ``MatrixRoom`` nio would have built from this room's state (membership and
    encryption: all the bot's sync filter lets through)."""
    room = nio.MatrixRoom(kept.room_id, own_user_id,
                          kept.encrypted or kept.room_id in encrypted_rooms)
    for user_id, invited in kept.members:
        room.add_member(user_id, None, None, invited)
    return room


class RoomIndex:
    """Saves the rooms each sync changed; hands them back to nio at the next start."""

    def __init__(self, client: nio.AsyncClient, store: Store) -> None:
        self.client = client
        self.store = store
        self.resumed = False
        self._replace_next = True  # the first sync of a start that did not resume is full
        self._saved: dict[str, int] = {}  # room ID → hash of its kept form, as saved
        self._direct: dict[str, bool] = {}  # room ID → its invite to the bot asked for a DM
        # Invites to the bot pending at the last stop, for the start to decide again.
        self.pending_invites: list[KeptRoom] = []

    def register(self) -> None:
        # Event callbacks run while nio applies a sync, response callbacks after.
        self.client.add_event_callback(self._on_invite, nio.InviteMemberEvent)
        self.client.add_response_callback(self._on_sync, nio.SyncResponse)

    async def _on_invite(self, room: nio.MatrixRoom, event: nio.InviteMemberEvent) -> None:
        if event.state_key == str(self.client.user_id) and event.membership == INVITED:
            self._direct[str(room.room_id)] = bool(event.content.get("is_direct"))

    def resume(self) -> str | None:
        """Put the kept rooms into nio and return the position to sync from, or None when the
        first sync must ask for the full state."""
        position, rooms = self.store.load_rooms()
        device_id = str(self.client.device_id)
        invites = [room for room in rooms if room.membership == INVITED]
        self.pending_invites = [room for room in invites if room.inviter is not None]
        own = str(self.client.user_id)
        for kept in self.pending_invites:  # kept in the index by every kind of first sync
            self.client.invited_rooms[kept.room_id] = invited_room(kept, own)
            self._direct[kept.room_id] = kept.is_direct
        if self.pending_invites:
            # Usually an invite that came just before a stop; one the bot can never join (its
            # server gone) is tried again at every start until the inviter withdraws it.
            logger.info("%d invite(s) to the bot pending at the last stop: deciding them "
                        "again after the first sync", len(self.pending_invites))
        if position is None:
            return None
        if position.device_id != device_id:
            logger.info("Kept rooms belong to device %s, not %s: asking for the full state",
                        position.device_id, device_id)
            return None
        if len(invites) > len(self.pending_invites):  # kept before their inviter was
            logger.warning("Invite(s) to the bot pending at the last stop without their "
                           "inviter (%s): asking for the full state",
                           ", ".join(r.room_id for r in invites if r.inviter is None)[:300])
            return None
        encrypted_rooms = set(self.client.encrypted_rooms)
        for kept in rooms:
            self._saved[kept.room_id] = hash(kept)
            if kept.membership == INVITED:
                continue  # in nio's invited rooms already
            room = matrix_room(kept, own, encrypted_rooms)
            self.client.rooms[kept.room_id] = room
            if room.encrypted and self.client.olm is not None:
                self.client.olm.update_tracked_users(room)  # as nio's sync does per room
        self.resumed = True
        self._replace_next = False
        logger.info("Resuming sync with %d kept rooms", len(rooms))
        return position.next_batch

    def refused(self) -> None:
        """The homeserver did not take the kept position: the next sync is full-state, and
        its answer replaces the kept rooms."""
        self.client.rooms.clear()
        self._saved.clear()
        self.resumed = False
        self._replace_next = True
        with contextlib.suppress(Exception):  # the full-state answer replaces it anyway
            self.store.forget_sync_position()

    async def _on_sync(self, response: nio.SyncResponse) -> None:
        position = SyncPosition(str(self.client.device_id), str(response.next_batch))
        gone = self._forget_left(response)
        changed = self._everything() if self._replace_next else self._changes(response)
        try:
            self.store.save_rooms(position, changed, gone, replace_all=self._replace_next)
        except Exception:
            # Then the next sync saves every room nio knows, replacing the index. Until one
            # save works the kept position is gone, and a start asks for the full state.
            logger.exception("Could not save the room index")
            self._replace_next = True
            self._saved.clear()
            with contextlib.suppress(Exception):
                self.store.forget_sync_position()
            return
        self._replace_next = False
        self._saved.update((room.room_id, hash(room)) for room in changed)

    def _forget_left(self, response: nio.SyncResponse) -> list[str]:
        """Rooms the bot left, was removed from, or whose invite it rejected or lost. nio 0.26
        does not read a sync's ``leave`` section and would keep them, with the bot among the
        members, for the rest of the run; they go as nio's ``room_forget`` would have them go."""
        # A room can be in ``leave`` and in ``join`` or ``invite`` at once: the bot was
        # removed and then invited (or joined) again within the same sync.
        left = [room_id for room_id in response.rooms.leave
                if room_id not in response.rooms.join]
        gone = [room_id for room_id in left if room_id not in response.rooms.invite]
        for room_id in left:  # invited again: an invite now, as the sync's invite section says
            self.client.rooms.pop(room_id, None)
            self._saved.pop(room_id, None)
        for room_id in gone:
            self.client.invited_rooms.pop(room_id, None)
        return gone

    def _changes(self, response: nio.SyncResponse) -> list[KeptRoom]:
        """The rooms this sync brought whose kept form changed (a message in a room with
        thousands of members rewrites nothing)."""
        rooms, invited = self.client.rooms, self.client.invited_rooms
        brought = [kept_room(rooms[room_id]) for room_id in response.rooms.join
                   if room_id in rooms]
        brought += [kept_room(invited[room_id], INVITED, self._direct.get(room_id, False))
                    for room_id in response.rooms.invite
                    if room_id in invited and room_id not in rooms]
        return [room for room in brought if self._saved.get(room.room_id) != hash(room)]

    def _everything(self) -> list[KeptRoom]:
        """Every room nio knows the bot to be in or invited to (left rooms are gone from
        nio's model as the syncs report them)."""
        rooms = [kept_room(room) for room in self.client.rooms.values()]
        joined = {room.room_id for room in rooms}
        rooms += [kept_room(room, INVITED, self._direct.get(room.room_id, False))
                  for room in self.client.invited_rooms.values() if room.room_id not in joined]
        return rooms
