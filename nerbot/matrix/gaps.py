"""Messages a sync left out: a room's timeline cut short (``limited``).

A sync carries only the latest few events of each room (Synapse: 10, unless the filter says
otherwise). When more happened since the position the sync started from (the bot was down, or
many messages came at once), the timeline is ``limited`` and the rest is only to be had from
``/messages``, back from the timeline's ``prev_batch`` to that position. Without this, a command
followed by ten other messages while the bot was down was never answered.
"""

from __future__ import annotations

import logging

import nio

logger = logging.getLogger(__name__)

GAP_PAGE = 100
# Per room and gap. Older messages are left (logged): a room that busy has moved on, and an
# outage of days must not turn into thousands of answers.
GAP_MAX_EVENTS = 500
# What the bot answers or holds for decryption; state changes came with the sync's state.
GAP_TYPES = ["m.room.message", "m.room.encrypted"]


async def missed_events(client: nio.AsyncClient, room_id: str, start: str,
                        since: str) -> list[nio.Event]:
    """The messages between ``since`` (the position the sync started from) and ``start``
    (the sync's timeline's ``prev_batch``; for a gap an earlier run left unfilled, the position
    that sync ended at), oldest first; nio has decrypted those it has keys for. A failed
    request ends the fetch with what was had (logged)."""
    events: list[nio.Event] = []
    while True:
        response = await client.room_messages(room_id, start=start, end=since,
                                              limit=GAP_PAGE,
                                              message_filter={"types": GAP_TYPES})
        if not isinstance(response, nio.RoomMessagesResponse):
            logger.warning("Fetching the messages a sync left out of %s failed: %s", room_id,
                           getattr(response, "message", response))
            break
        events.extend(response.chunk)
        if not response.chunk or not response.end or response.end == start:
            break
        if len(events) >= GAP_MAX_EVENTS:
            logger.warning("More than %d messages in %s since the last sync: older ones are "
                           "left unanswered", GAP_MAX_EVENTS, room_id)
            break
        start = response.end
    events.reverse()
    return events
